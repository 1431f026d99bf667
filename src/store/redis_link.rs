//! The connection to Redis that the quota store and the brake store share: one server through
//! the auto-reconnecting [`ConnectionManager`], or a Redis Cluster; every call with a deadline.
//!
//! Besides running scripts, the link answers two questions about the backend itself:
//! - [`RedisLink::health`], for `/readyz`: can every key Postern may use be served now? On one
//!   server a `PING` says so. On a Cluster a ping to any node does not (a master that is down
//!   leaves its slots unserved while the other masters answer): every master must answer
//!   `CLUSTER INFO` with `cluster_state:ok` and all 16,384 slots `ok`, because quota and brake
//!   keys hash over the whole slot space (one hash tag per address, account or subnet).
//! - [`RedisLink::persistence`], at start: does the backend keep its counts across a restart
//!   (`appendonly`, `save`)? Managed services may refuse `CONFIG GET`; that is `Unknown`.
//!
//! Every round trip of [`RedisLink::invoke`] and [`RedisLink::health`] is timed into
//! `postern_redis_operation_seconds` when the link has the server's [`Metrics`]
//! ([`RedisLink::with_metrics`]); the caller names the operation from a fixed set.
//!
//! What this module does not do: no key layout, no scripts of its own.

use crate::metrics::Metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{FromRedisValue, RedisError, ScriptInvocation, Value};
use std::time::{Duration, Instant};

/// Slots in a Redis Cluster (its hash space, fixed by the protocol).
pub const CLUSTER_SLOTS: u32 = 16_384;

/// What went wrong on the link. Messages are one line and name no secret (URLs are not
/// repeated: they may carry a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisLinkError {
    /// Redis could not answer: unreachable, timed out, an error reply.
    #[error("redis: {0}")]
    Unavailable(String),
    /// A URL or node list that cannot be used.
    #[error("redis: {0}")]
    Invalid(String),
}

/// Whether the backend keeps counts across its own restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Append-only file on (every master): at most the last second is lost.
    AppendOnly,
    /// Snapshots only (`save` rules, no AOF): the writes since the last snapshot are lost.
    Snapshots,
    /// Neither: a restart forgets every count and hold.
    None,
    /// The server refused `CONFIG GET` (managed services) or did not answer.
    Unknown,
    /// Not Redis: the embedded store's SQLite file, synced on every commit.
    LocalFile,
}

impl Persistence {
    /// The label value of `postern_quota_backend_persistence{mode}`.
    pub fn label(self) -> &'static str {
        match self {
            Persistence::AppendOnly => "aof",
            Persistence::Snapshots => "rdb",
            Persistence::None => "none",
            Persistence::Unknown => "unknown",
            Persistence::LocalFile => "file",
        }
    }

    /// Every label value, for a gauge with exactly one of them at 1.
    pub const ALL: [Persistence; 5] = [
        Persistence::AppendOnly,
        Persistence::Snapshots,
        Persistence::None,
        Persistence::Unknown,
        Persistence::LocalFile,
    ];

    /// The persistence of one server from its `appendonly` and `save` settings.
    pub fn from_settings(appendonly: &str, save: &str) -> Self {
        if appendonly.eq_ignore_ascii_case("yes") {
            Persistence::AppendOnly
        } else if save.trim().is_empty() {
            Persistence::None
        } else {
            Persistence::Snapshots
        }
    }

    /// The persistence of a cluster: as weak as its weakest master.
    fn weakest(self, other: Self) -> Self {
        let rank = |p: Self| match p {
            Persistence::Unknown => 0,
            Persistence::None => 1,
            Persistence::Snapshots => 2,
            Persistence::AppendOnly | Persistence::LocalFile => 3,
        };
        if rank(other) < rank(self) {
            other
        } else {
            self
        }
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// One connection (or cluster connection) with its call deadline. Cheap to clone: clones
/// share the connection.
#[derive(Clone)]
pub struct RedisLink {
    conn: Conn,
    timeout: Duration,
    /// Where round trips are timed; `None` outside `postern serve` (CLI, tests).
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("kind", &self.kind())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: RedisError) -> RedisLinkError {
    RedisLinkError::Unavailable(e.to_string())
}

fn bad_reply(e: impl std::fmt::Display) -> RedisLinkError {
    RedisLinkError::Unavailable(format!("unexpected reply: {e}"))
}

fn timed_out(timeout: Duration) -> RedisLinkError {
    RedisLinkError::Unavailable(format!("no answer within {} ms", timeout.as_millis()))
}

impl RedisLink {
    /// Connects to one Redis server at `url`.
    ///
    /// # Errors
    /// [`RedisLinkError::Invalid`] for a URL that does not parse; `Unavailable` if the server
    /// cannot be reached within `timeout`.
    pub async fn open_single(
        url: &str,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, RedisLinkError> {
        use redis::IntoConnectionInfo;
        let mut info = url
            .into_connection_info()
            .map_err(|e| RedisLinkError::Invalid(format!("url: {e}")))?;
        if let Some(password) = password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client =
            redis::Client::open(info).map_err(|e| RedisLinkError::Invalid(format!("url: {e}")))?;
        // Reconnection happens in the background; few retries, short delays: a call never
        // waits for them longer than `timeout` anyway.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager =
            tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| timed_out(timeout))?
                .map_err(unavailable)?;
        Ok(Self {
            conn: Conn::Single(manager),
            timeout,
            metrics: None,
        })
    }

    /// Connects to a Redis Cluster through some of its nodes.
    ///
    /// # Errors
    /// [`RedisLinkError::Invalid`] for no nodes or a URL that does not parse; `Unavailable`
    /// if the cluster cannot be reached within `timeout`.
    pub async fn open_cluster(
        nodes: &[String],
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, RedisLinkError> {
        if nodes.is_empty() {
            return Err(RedisLinkError::Invalid("no cluster nodes".to_string()));
        }
        let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str));
        if let Some(password) = password {
            builder = builder.password(password);
        }
        let client = builder
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()
            .map_err(|e| RedisLinkError::Invalid(format!("cluster nodes: {e}")))?;
        let conn = tokio::time::timeout(timeout, client.get_async_connection())
            .await
            .map_err(|_| timed_out(timeout))?
            .map_err(unavailable)?;
        Ok(Self {
            conn: Conn::Cluster(conn),
            timeout,
            metrics: None,
        })
    }

    /// `single` or `cluster`, for logs.
    pub fn kind(&self) -> &'static str {
        match self.conn {
            Conn::Single(_) => "single",
            Conn::Cluster(_) => "cluster",
        }
    }

    /// The same link, timing its round trips into `metrics`.
    pub fn with_metrics(mut self, metrics: Option<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Times one round trip as `operation` (one of [`crate::metrics::REDIS_OPERATIONS`]).
    async fn observed<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T, RedisLinkError>>,
    ) -> Result<T, RedisLinkError> {
        let start = Instant::now();
        let result = call.await;
        if let Some(metrics) = &self.metrics {
            metrics.redis_operation(operation, result.is_ok(), start.elapsed().as_secs_f64());
        }
        result
    }

    /// Runs a script invocation within the deadline; `operation` names it for the metrics.
    ///
    /// # Errors
    /// `Unavailable` for no answer in time or any error reply.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, RedisLinkError> {
        let run = async {
            match self.conn.clone() {
                Conn::Single(mut m) => invocation.invoke_async::<T>(&mut m).await,
                Conn::Cluster(mut cl) => invocation.invoke_async::<T>(&mut cl).await,
            }
        };
        self.observed(operation, async {
            tokio::time::timeout(self.timeout, run)
                .await
                .map_err(|_| timed_out(self.timeout))?
                .map_err(unavailable)
        })
        .await
    }

    /// Whether every key can be served now (see the module documentation).
    ///
    /// # Errors
    /// `Unavailable`, saying which node or which slots are missing.
    pub async fn health(&self) -> Result<(), RedisLinkError> {
        let run = async {
            match self.conn.clone() {
                Conn::Single(mut m) => redis::cmd("PING")
                    .query_async::<String>(&mut m)
                    .await
                    .map(drop)
                    .map_err(unavailable),
                Conn::Cluster(mut cl) => {
                    let infos = on_every_master(&mut cl, redis::cmd("CLUSTER").arg("INFO")).await?;
                    infos
                        .iter()
                        .try_for_each(|(node, info)| cluster_info_ok(node, info))
                }
            }
        };
        self.observed("health", async {
            tokio::time::timeout(self.timeout, run)
                .await
                .map_err(|_| timed_out(self.timeout))?
        })
        .await
    }

    /// The weakest persistence among the server or the cluster's masters.
    pub async fn persistence(&self) -> Persistence {
        let run = async {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg("appendonly").arg("save");
            let replies: Vec<Value> = match self.conn.clone() {
                Conn::Single(mut m) => vec![cmd.query_async::<Value>(&mut m).await.ok()?],
                Conn::Cluster(mut cl) => on_every_master_values(&mut cl, &cmd)
                    .await
                    .ok()?
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect(),
            };
            replies
                .iter()
                .map(persistence_of_reply)
                .reduce(Persistence::weakest)
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .ok()
            .flatten()
            .unwrap_or(Persistence::Unknown)
    }
}

/// One reply per master, keyed by node address. Any master that cannot be reached is an error.
async fn on_every_master_values(
    cl: &mut ClusterConnection,
    cmd: &redis::Cmd,
) -> Result<Vec<(String, Value)>, RedisLinkError> {
    let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let reply = cl
        .route_command(cmd.clone(), routing)
        .await
        .map_err(unavailable)?;
    let Value::Map(pairs) = reply else {
        return Err(RedisLinkError::Unavailable(format!(
            "unexpected reply to {}: {reply:?}",
            command_name(cmd)
        )));
    };
    pairs
        .into_iter()
        .map(|(node, value)| {
            let node = String::from_redis_value(node).map_err(bad_reply)?;
            if let Value::ServerError(e) = &value {
                return Err(RedisLinkError::Unavailable(format!("{node}: {e:?}")));
            }
            Ok((node, value))
        })
        .collect()
}

/// `cmd`'s text reply from every master.
async fn on_every_master(
    cl: &mut ClusterConnection,
    cmd: &redis::Cmd,
) -> Result<Vec<(String, String)>, RedisLinkError> {
    on_every_master_values(cl, cmd)
        .await?
        .into_iter()
        .map(|(node, v)| Ok((node, String::from_redis_value(v).map_err(bad_reply)?)))
        .collect()
}

fn command_name(cmd: &redis::Cmd) -> String {
    cmd.args_iter()
        .next()
        .and_then(|a| match a {
            redis::Arg::Simple(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        })
        .unwrap_or_default()
}

/// A master's `CLUSTER INFO` says every slot is served.
fn cluster_info_ok(node: &str, info: &str) -> Result<(), RedisLinkError> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let state = field("cluster_state").unwrap_or("missing");
    let slots_ok = field("cluster_slots_ok").and_then(|v| v.parse::<u32>().ok());
    if state == "ok" && slots_ok == Some(CLUSTER_SLOTS) {
        return Ok(());
    }
    Err(RedisLinkError::Unavailable(format!(
        "cluster node {node}: cluster_state {state}, {} of {CLUSTER_SLOTS} slots ok",
        slots_ok.map_or_else(|| "?".to_string(), |n| n.to_string())
    )))
}

/// `CONFIG GET appendonly save` as a flat list or a map (RESP3) of name and value.
fn persistence_of_reply(reply: &Value) -> Persistence {
    let pairs: Vec<(String, String)> = match reply {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| match pair {
                [k, v] => Some((text(k)?, text(v)?)),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        _ => return Persistence::Unknown,
    };
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match (get("appendonly"), get("save")) {
        (Some(aof), Some(save)) => Persistence::from_settings(aof, save),
        _ => Persistence::Unknown,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistence_from_settings() {
        assert_eq!(
            Persistence::from_settings("yes", ""),
            Persistence::AppendOnly
        );
        assert_eq!(
            Persistence::from_settings("no", "3600 1 300 100"),
            Persistence::Snapshots
        );
        assert_eq!(Persistence::from_settings("no", ""), Persistence::None);
        let flat = Value::Array(vec![
            Value::BulkString(b"save".to_vec()),
            Value::BulkString(b"".to_vec()),
            Value::BulkString(b"appendonly".to_vec()),
            Value::BulkString(b"yes".to_vec()),
        ]);
        assert_eq!(persistence_of_reply(&flat), Persistence::AppendOnly);
        assert_eq!(
            persistence_of_reply(&Value::Array(vec![])),
            Persistence::Unknown
        );
        assert_eq!(
            Persistence::AppendOnly.weakest(Persistence::None),
            Persistence::None
        );
        assert_eq!(
            Persistence::Snapshots.weakest(Persistence::Unknown),
            Persistence::Unknown
        );
    }

    #[test]
    fn cluster_info_needs_state_ok_and_every_slot() {
        let ok = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\n";
        assert_eq!(cluster_info_ok("n", ok), Ok(()));
        let fail = "cluster_state:fail\r\ncluster_slots_ok:10923\r\n";
        assert_eq!(
            cluster_info_ok("127.0.0.1:7001", fail),
            Err(RedisLinkError::Unavailable(
                "cluster node 127.0.0.1:7001: cluster_state fail, 10923 of 16384 slots ok".into()
            ))
        );
        // `cluster-require-full-coverage no` keeps the state ok while slots are down.
        let partial = "cluster_state:ok\r\ncluster_slots_ok:10923\r\n";
        assert!(cluster_info_ok("n", partial).is_err());
    }
}
