//! Opening the configured quota backend: [`QuotaStoreConfig`] says which backend and with
//! which settings, [`open_quota_store`] opens it and hands back the trait object, and
//! [`open_counters`] also the brake store that goes with it (in process beside the embedded
//! store, on the same Redis connection beside Redis). This is the one place that names the
//! backends, so that the trait modules stay below them and callers (the server, `postern quota
//! show`, the benchmarks) never pick one themselves.
//!
//! The `[quota]` section of the configuration file (`crate::config::QuotaConfig`) is turned
//! into a [`QuotaStoreConfig`] by the server; this module does not read configuration files.

use super::embedded::EmbeddedQuota;
use super::redis::RedisQuota;
use super::{Persistence, QuotaError, QuotaHold, QuotaKey, QuotaSettings, QuotaStore, Usage};
use crate::store::brakes::memory::MemoryBrakes;
use crate::store::brakes::redis::RedisBrakes;
use crate::store::brakes::{
    BrakeError, BrakeStore, LoginBrake, LoginLimits, LoginSource, MessageRate,
};
use crate::store::redis_link::RedisLink;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// How long [`open_quota_store_or_connect_later`] waits between two connection attempts.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// Default time a Redis call may take before it is [`QuotaError::Unavailable`].
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the counts live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaBackend {
    /// A SQLite file of its own (not the directory store's file; it is refused).
    Embedded {
        /// The database file, created if absent (e.g. `var/quota.db`).
        path: PathBuf,
    },
    /// One Redis server, e.g. `redis://10.0.0.5:6379/` (`rediss://` is not built in).
    Redis {
        /// The server's URL.
        url: String,
    },
    /// A Redis Cluster: some of its nodes' URLs; the rest is discovered.
    RedisCluster {
        /// Seed nodes, e.g. `redis://10.0.0.5:7000/`.
        nodes: Vec<String>,
    },
}

/// Everything [`open_quota_store`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaStoreConfig {
    /// The backend.
    pub backend: QuotaBackend,
    /// Window, buckets, hold expiry.
    pub settings: QuotaSettings,
    /// Redis only: connect and response timeout of each call (default 500 ms).
    pub redis_timeout: Duration,
    /// Redis only: the AUTH password (the URL may name the ACL user).
    pub redis_password: Option<RedisPassword>,
    /// Redis only: where the link times its round trips (`postern serve`'s metrics).
    pub metrics: Option<crate::metrics::Metrics>,
}

/// A Redis password, which no `Debug` output (a config dump, an error) shows.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisPassword(pub String);

impl std::fmt::Debug for RedisPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisPassword(<redacted>)")
    }
}

impl QuotaStoreConfig {
    /// A config with default settings and timeout.
    pub fn new(backend: QuotaBackend) -> Self {
        Self {
            backend,
            settings: QuotaSettings::default(),
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            redis_password: None,
            metrics: None,
        }
    }
}

/// The quota store and the brake store of one backend.
#[derive(Clone)]
pub struct Counters {
    /// Daily recipient quotas.
    pub quota: Arc<dyn QuotaStore>,
    /// The brakes the fleet counts together.
    pub brakes: Arc<dyn BrakeStore>,
}

/// Opens the configured backend. Redis backends connect now, so a wrong address or a server
/// that is down is reported at start; afterwards they reconnect by themselves.
///
/// # Errors
/// [`QuotaError::Invalid`] for a URL that does not parse; [`QuotaError::Unavailable`] if the
/// file cannot be opened or Redis cannot be reached within the timeout.
pub async fn open_quota_store(
    config: &QuotaStoreConfig,
) -> Result<Arc<dyn QuotaStore>, QuotaError> {
    Ok(open_counters(config).await?.quota)
}

/// Opens the configured backend's quota store and its brake store.
///
/// # Errors
/// As [`open_quota_store`].
pub async fn open_counters(config: &QuotaStoreConfig) -> Result<Counters, QuotaError> {
    let password = config.redis_password.as_ref().map(|p| p.0.as_str());
    let link = match &config.backend {
        QuotaBackend::Embedded { path } => {
            let (path, settings) = (path.clone(), config.settings);
            let store = tokio::task::spawn_blocking(move || EmbeddedQuota::open(&path, settings))
                .await
                .map_err(|e| QuotaError::Unavailable(format!("quota open task failed: {e}")))??;
            return Ok(Counters {
                quota: Arc::new(store),
                brakes: Arc::new(MemoryBrakes::new()),
            });
        }
        QuotaBackend::Redis { url } => {
            RedisLink::open_single(url, password, config.redis_timeout).await?
        }
        QuotaBackend::RedisCluster { nodes } => {
            RedisLink::open_cluster(nodes, password, config.redis_timeout).await?
        }
    };
    let link = link.with_metrics(config.metrics.clone());
    let quota = RedisQuota::connected(link.clone(), config.settings).await?;
    Ok(Counters {
        quota: Arc::new(quota),
        brakes: Arc::new(RedisBrakes::new(link)),
    })
}

/// Opens the configured backend like [`open_counters`], except that a Redis backend that
/// cannot be reached yet is not an error: `postern serve` must start (unready) when Redis is
/// down, not exit and wait for a supervisor to try again. Both stores then answer every call
/// with an unavailable error (RCPT gets 451, AUTH 454, `/readyz` 503) while a background task
/// tries to connect every [`RECONNECT_INTERVAL`]; once it has, calls go to the connected
/// stores, which reconnect by themselves from then on.
///
/// # Errors
/// [`QuotaError::Invalid`] for a URL that does not parse; [`QuotaError::Unavailable`] for an
/// embedded file that cannot be opened (a local fault no wait cures).
pub async fn open_counters_or_connect_later(
    config: &QuotaStoreConfig,
) -> Result<Counters, QuotaError> {
    match (&config.backend, open_counters(config).await) {
        (QuotaBackend::Embedded { .. }, opened) | (_, opened @ Ok(_)) => opened,
        (_, Err(invalid @ QuotaError::Invalid(_))) => Err(invalid),
        (_, Err(QuotaError::Unavailable(why))) => {
            tracing::warn!(error = %why, "quota backend not reachable at start: not ready until it is");
            let connecting = Connecting::start(config.clone(), why);
            Ok(Counters {
                quota: Arc::new(ConnectingQuota(connecting.clone())),
                brakes: Arc::new(ConnectingBrakes(connecting)),
            })
        }
    }
}

/// A Redis backend that was not reachable at start: unavailable until the background task of
/// [`Connecting::start`] has connected.
struct Connecting {
    connected: OnceLock<Counters>,
    settings: QuotaSettings,
    /// Why the latest connection attempt failed, for the callers' warnings.
    last_error: Mutex<String>,
}

/// The quota side of [`Connecting`].
struct ConnectingQuota(Arc<Connecting>);

/// The brake side of [`Connecting`].
struct ConnectingBrakes(Arc<Connecting>);

impl Connecting {
    /// The shared state, and the task that connects it. The task holds only a weak
    /// reference: it ends when both stores are dropped, or once connected.
    fn start(config: QuotaStoreConfig, first_error: String) -> Arc<Self> {
        let store = Arc::new(Self {
            connected: OnceLock::new(),
            settings: config.settings,
            last_error: Mutex::new(first_error),
        });
        let weak: Weak<Self> = Arc::downgrade(&store);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECONNECT_INTERVAL).await;
                let attempt = open_counters(&config).await;
                let Some(store) = weak.upgrade() else {
                    return;
                };
                match attempt {
                    Ok(connected) => {
                        let _ = store.connected.set(connected);
                        tracing::info!("quota backend connected");
                        return;
                    }
                    Err(e) => {
                        *store.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string()
                    }
                }
            }
        });
        store
    }

    /// The connected stores, or why there are none yet.
    fn counters(&self) -> Result<&Counters, String> {
        self.connected.get().ok_or_else(|| {
            let why = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
            format!("not connected yet: {why}")
        })
    }
}

impl ConnectingQuota {
    fn store(&self) -> Result<&Arc<dyn QuotaStore>, QuotaError> {
        self.0
            .counters()
            .map(|c| &c.quota)
            .map_err(QuotaError::Unavailable)
    }
}

impl ConnectingBrakes {
    fn store(&self) -> Result<&Arc<dyn BrakeStore>, BrakeError> {
        self.0
            .counters()
            .map(|c| &c.brakes)
            .map_err(BrakeError::Unavailable)
    }
}

#[async_trait::async_trait]
impl BrakeStore for ConnectingBrakes {
    async fn take_message(
        &self,
        identity: &str,
        rate: MessageRate,
        now_ms: u64,
    ) -> Result<bool, BrakeError> {
        self.store()?.take_message(identity, rate, now_ms).await
    }

    async fn login_state(
        &self,
        source: &LoginSource,
        limits: LoginLimits,
        now_ms: u64,
    ) -> Result<LoginBrake, BrakeError> {
        self.store()?.login_state(source, limits, now_ms).await
    }

    async fn begin_login(
        &self,
        source: &LoginSource,
        attempt: &str,
        limits: LoginLimits,
        now_ms: u64,
    ) -> Result<LoginBrake, BrakeError> {
        self.store()?
            .begin_login(source, attempt, limits, now_ms)
            .await
    }

    async fn forget_login(&self, source: &LoginSource, attempt: &str) -> Result<(), BrakeError> {
        self.store()?.forget_login(source, attempt).await
    }
}

#[async_trait::async_trait]
impl QuotaStore for ConnectingQuota {
    async fn hold(
        &self,
        key: &QuotaKey,
        hold_id: &str,
        limit: u32,
        now_ms: u64,
    ) -> Result<QuotaHold, QuotaError> {
        self.store()?.hold(key, hold_id, limit, now_ms).await
    }

    async fn commit(&self, key: &QuotaKey, hold_id: &str, now_ms: u64) -> Result<u32, QuotaError> {
        self.store()?.commit(key, hold_id, now_ms).await
    }

    async fn release(&self, key: &QuotaKey, hold_id: &str) -> Result<u32, QuotaError> {
        self.store()?.release(key, hold_id).await
    }

    async fn refund(&self, key: &QuotaKey, n: u32, now_ms: u64) -> Result<u32, QuotaError> {
        self.store()?.refund(key, n, now_ms).await
    }

    async fn usage(&self, key: &QuotaKey, limit: u32, now_ms: u64) -> Result<Usage, QuotaError> {
        self.store()?.usage(key, limit, now_ms).await
    }

    async fn ping(&self) -> Result<(), QuotaError> {
        self.store()?.ping().await
    }

    async fn persistence(&self) -> Persistence {
        match self.store() {
            Ok(store) => store.persistence().await,
            Err(_) => Persistence::Unknown,
        }
    }

    fn settings(&self) -> QuotaSettings {
        self.0.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_redis_is_unavailable_then_invalid_url_is_an_error() {
        // A port nothing listens on: bind one and drop it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = QuotaStoreConfig::new(QuotaBackend::Redis {
            url: format!("redis://127.0.0.1:{port}/"),
        });
        config.redis_timeout = Duration::from_millis(200);
        assert!(matches!(
            open_quota_store(&config).await,
            Err(QuotaError::Unavailable(_))
        ));
        let Counters {
            quota: store,
            brakes,
        } = open_counters_or_connect_later(&config).await.unwrap();
        let key: QuotaKey = "addr:a@example.org".parse().unwrap();
        match store.hold(&key, "t1", 10, 1).await {
            Err(QuotaError::Unavailable(why)) => {
                assert!(why.starts_with("not connected yet: "), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.ping().await,
            Err(QuotaError::Unavailable(_))
        ));
        assert_eq!(store.settings(), QuotaSettings::default());
        assert_eq!(store.persistence().await, Persistence::Unknown);
        let rate = MessageRate {
            per_minute: std::num::NonZeroU32::new(5).unwrap(),
        };
        assert!(matches!(
            brakes.take_message("addr:a@example.org", rate, 1).await,
            Err(BrakeError::Unavailable(_))
        ));
        let bad = QuotaStoreConfig::new(QuotaBackend::Redis {
            url: "not a url".into(),
        });
        assert!(matches!(
            open_counters_or_connect_later(&bad).await,
            Err(QuotaError::Invalid(_))
        ));
    }

    #[test]
    fn config_defaults() {
        let c = QuotaStoreConfig::new(QuotaBackend::Redis {
            url: "redis://127.0.0.1/".into(),
        });
        assert_eq!(c.redis_timeout, Duration::from_millis(500));
        assert_eq!(c.settings, QuotaSettings::default());
    }
}
