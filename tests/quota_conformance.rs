//! The quota conformance cases (`postern::store::quota::conformance`, compiled in through the
//! `conformance` feature that the dev-dependency on this package turns on) against every backend:
//! the embedded SQLite store, one `redis-server`, and a three-master Redis Cluster made with
//! `redis-cli --cluster create`; the brake conformance cases (`store::brakes::conformance`)
//! against the same servers. Plus: Redis stopped and restarted under a live store, a Cluster
//! master killed and restarted under a live store's health check, the persistence settings
//! read at start, and a hold release retried across a Redis restart.
//!
//! The servers are started here on free loopback ports with their files in temporary
//! directories, and killed when the test ends. Nothing is skipped: without `redis-server` and
//! `redis-cli` on PATH the Redis tests fail and say what to install.

use postern::store::brakes;
use postern::store::quota::builder::{
    Counters, QuotaBackend, QuotaStoreConfig, open_counters, open_quota_store,
};
use postern::store::quota::embedded::EmbeddedQuota;
use postern::store::quota::{
    Persistence, QuotaError, QuotaHold, QuotaKey, QuotaStore, conformance, release_retrying,
};
use postern::testutil::TempDir;
use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "install it (Debian: apt-get install redis-server redis-tools); \
                            the Redis quota tests do not skip";

/// A fresh, existing directory for one test's files, removed on drop.
fn temp_dir(what: &str) -> TempDir {
    let dir = TempDir::new(&format!("quota-{what}"));
    std::fs::create_dir_all(dir.path()).expect("create temp dir");
    dir
}

/// A loopback port nobody listens on; with `bus`, port + 10000 (the cluster bus) is free too.
/// Ports handed out once are not handed out again by this process.
fn free_port(bus: bool) -> u16 {
    static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if bus && (port > 55_000 || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err()) {
            continue;
        }
        let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
        if taken.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// One `redis-server` child, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start(port: u16, dir: &Path, cluster: bool) -> Self {
        Self::start_with(port, dir, cluster, &["--save", "", "--appendonly", "no"])
    }

    /// A server with `settings` (persistence and the like) instead of the defaults above.
    fn start_with(port: u16, dir: &Path, cluster: bool, settings: &[&str]) -> Self {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(settings)
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .args(["--logfile", "redis.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server is not on PATH: {INSTALL_HINT}")
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let mut server = Self {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        server.wait_ready();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                panic!(
                    "redis-server on port {} exited ({status}):\n{log}",
                    self.port
                );
            }
            let pong = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} not ready: {pong:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three cluster-enabled servers joined into one cluster with three masters.
struct RedisCluster {
    servers: Vec<RedisServer>,
    _dir: TempDir,
}

impl RedisCluster {
    fn start() -> Self {
        let dir = temp_dir("cluster");
        let servers: Vec<RedisServer> = (0..3)
            .map(|i| {
                let node_dir = dir.join(format!("node{i}"));
                std::fs::create_dir_all(&node_dir).expect("node dir");
                RedisServer::start(free_port(true), &node_dir, true)
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for s in &servers {
            create.arg(format!("127.0.0.1:{}", s.port));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = match create.output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-cli is not on PATH: {INSTALL_HINT}")
            }
            Err(e) => panic!("cannot run redis-cli: {e}"),
        };
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { servers, _dir: dir };
        cluster.wait_ok();
        cluster
    }

    fn nodes(&self) -> Vec<String> {
        self.servers.iter().map(RedisServer::url).collect()
    }

    /// Every node says `cluster_state:ok` and knows three masters.
    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for s in &self.servers {
            loop {
                let info = redis::Client::open(s.url())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") && info.contains("cluster_size:3") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster not ok on port {}:\n{info}",
                    s.port
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn redis_config(backend: QuotaBackend) -> QuotaStoreConfig {
    QuotaStoreConfig {
        settings: conformance::settings(),
        ..QuotaStoreConfig::new(backend)
    }
}

async fn open(backend: QuotaBackend) -> Arc<dyn QuotaStore> {
    open_quota_store(&redis_config(backend))
        .await
        .expect("open quota store")
}

async fn open_both(backend: QuotaBackend) -> Counters {
    open_counters(&redis_config(backend))
        .await
        .expect("open quota and brake stores")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_conformance() {
    let dir = temp_dir("embedded");
    let path = dir.join("quota.db");
    let a = open(QuotaBackend::Embedded { path: path.clone() }).await;
    // A second handle is a second connection, as another process would have.
    let b = EmbeddedQuota::open(&path, conformance::settings()).expect("open");
    conformance::run_all(a.as_ref(), &b, "it-").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_single_conformance() {
    let dir = temp_dir("single");
    let server = RedisServer::start(free_port(false), dir.path(), false);
    let a = open_both(QuotaBackend::Redis { url: server.url() }).await;
    let b = open_both(QuotaBackend::Redis { url: server.url() }).await;
    conformance::run_all(a.quota.as_ref(), b.quota.as_ref(), "it-").await;
    brakes::conformance::run_all(a.brakes.as_ref(), b.brakes.as_ref(), "it-").await;
    assert_eq!(a.quota.persistence().await, Persistence::None);

    // Keys carry the hash tag and expire by themselves.
    let mut con = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect");
    let ttl: i64 = redis::cmd("PTTL")
        .arg("{q:addr:it-race@conformance.test}:b")
        .query(&mut con)
        .expect("pttl");
    let retention = conformance::settings().retention_ms();
    assert!(
        ttl > 0 && ttl <= i64::try_from(retention).unwrap(),
        "ttl {ttl}"
    );
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).expect("keys");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("{q:") || k.starts_with("{b:")),
        "unexpected keys: {keys:?}"
    );
    // Brake keys expire by themselves too: a login set a window after its newest attempt.
    let ttl: i64 = redis::cmd("PTTL")
        .arg("{b:l:it-window.0}:c:it-window.1")
        .query(&mut con)
        .expect("pttl");
    assert!(ttl > 0 && ttl <= 10_001, "login set ttl {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_conformance() {
    let cluster = RedisCluster::start();
    let a = open_both(QuotaBackend::RedisCluster {
        nodes: cluster.nodes(),
    })
    .await;
    // The second handle knows only one node and discovers the rest.
    let b = open_both(QuotaBackend::RedisCluster {
        nodes: cluster.nodes()[2..].to_vec(),
    })
    .await;
    conformance::run_all(a.quota.as_ref(), b.quota.as_ref(), "it-").await;
    brakes::conformance::run_all(a.brakes.as_ref(), b.brakes.as_ref(), "it-").await;
    assert_eq!(a.quota.persistence().await, Persistence::None);

    // The cases' keys are spread over more than one master.
    let mut masters_with_keys = 0;
    for s in &cluster.servers {
        let mut con = redis::Client::open(s.url())
            .and_then(|c| c.get_connection())
            .expect("connect");
        let n: i64 = redis::cmd("DBSIZE").query(&mut con).expect("dbsize");
        if n > 0 {
            masters_with_keys += 1;
        }
    }
    assert!(
        masters_with_keys >= 2,
        "keys on {masters_with_keys} master(s)"
    );
}

/// Redis goes away: calls fail fast with `Unavailable` (never an allow); Redis comes back on
/// the same port: the same store handle works again without help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_then_back() {
    let dir = temp_dir("restart");
    let port = free_port(false);
    let mut server = RedisServer::start(port, dir.path(), false);
    let store = open(QuotaBackend::Redis { url: server.url() }).await;
    let k = QuotaKey::Hosting("restart".into());
    let t = conformance::T0;
    assert!(matches!(
        store.hold(&k, "a", 10, t).await,
        Ok(QuotaHold::Held { .. })
    ));

    server.stop();
    for i in 0..3 {
        let started = Instant::now();
        let r = store.hold(&k, "a", 10, t).await;
        let took = started.elapsed();
        assert!(
            matches!(r, Err(QuotaError::Unavailable(_))),
            "call {i} with redis down: {r:?}"
        );
        assert!(
            took < Duration::from_millis(1_500),
            "call {i} took {took:?}"
        );
        assert!(store.ping().await.is_err());
    }

    let server = RedisServer::start(port, dir.path(), false);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.hold(&k, "b", 10, t).await {
            // A fresh server without persistence: the key starts over.
            Ok(outcome) => {
                assert_eq!(outcome, QuotaHold::Held { used: 0, held: 1 });
                break;
            }
            Err(QuotaError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery after restart of {}: {e}", server.url()),
        }
    }
    store.ping().await.expect("ping after recovery");
}

/// Opening against a port nobody listens on fails quickly and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_open() {
    let port = free_port(false);
    let started = Instant::now();
    let r = open_quota_store(&redis_config(QuotaBackend::Redis {
        url: format!("redis://127.0.0.1:{port}/"),
    }))
    .await;
    assert!(
        matches!(r, Err(QuotaError::Unavailable(_))),
        "{:?}",
        r.err()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let r = open_quota_store(&redis_config(QuotaBackend::Redis {
        url: "not a url".into(),
    }))
    .await;
    assert!(matches!(r, Err(QuotaError::Invalid(_))), "{:?}", r.err());
}

/// Waits up to 30 s for `ping` to give `want` (a cluster notices a dead master only after its
/// node timeout, and a client its return only after a slot refresh).
async fn wait_for_health(store: &dyn QuotaStore, want: bool, what: &str) -> Option<QuotaError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = store.ping().await;
        if health.is_ok() == want {
            return health.err();
        }
        assert!(Instant::now() < deadline, "{what}: still {health:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Cluster master without a replica is killed: its slots are unserved, so the store is
/// unhealthy (although the other masters answer a ping); restarted on the same port with its
/// node file, it serves them again and the store is healthy, with the same handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_health_follows_slot_coverage() {
    let mut cluster = RedisCluster::start();
    let store = open(QuotaBackend::RedisCluster {
        nodes: cluster.nodes(),
    })
    .await;
    store.ping().await.expect("healthy at start");

    let (port, dir) = (cluster.servers[1].port, cluster.servers[1].dir.clone());
    cluster.servers[1].stop();
    let why = wait_for_health(store.as_ref(), false, "master down").await;
    let why = why.expect("an error").to_string();
    assert!(
        why.starts_with("quota service unavailable: redis: "),
        "{why}"
    );
    // The other masters still answer a plain ping: that is not enough for readiness.
    let mut other = redis::Client::open(cluster.servers[0].url())
        .and_then(|c| c.get_connection())
        .expect("connect to a live master");
    let pong: String = redis::cmd("PING").query(&mut other).expect("ping");
    assert_eq!(pong, "PONG");

    cluster.servers[1] = RedisServer::start(port, &dir, true);
    cluster.wait_ok();
    wait_for_health(store.as_ref(), true, "master back").await;
}

/// `appendonly` and `save` as the servers have them; `CONFIG` renamed away (as managed
/// services do) is `Unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_persistence_settings() {
    let cases: [(&[&str], Persistence); 4] = [
        (&["--save", "", "--appendonly", "no"], Persistence::None),
        (
            &["--save", "3600 1", "--appendonly", "no"],
            Persistence::Snapshots,
        ),
        (
            &["--save", "", "--appendonly", "yes"],
            Persistence::AppendOnly,
        ),
        (
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--rename-command",
                "CONFIG",
                "",
            ],
            Persistence::Unknown,
        ),
    ];
    for (settings, want) in cases {
        let dir = temp_dir("persistence");
        let server = RedisServer::start_with(free_port(false), dir.path(), false, settings);
        let store = open(QuotaBackend::Redis { url: server.url() }).await;
        assert_eq!(store.persistence().await, want, "{settings:?}");
    }
    let dir = temp_dir("persistence-embedded");
    let store = open(QuotaBackend::Embedded {
        path: dir.join("quota.db"),
    })
    .await;
    assert_eq!(store.persistence().await, Persistence::LocalFile);
}

/// A release that meets a stopped Redis is retried: once Redis is back (with its append-only
/// file, so the holds are still there) the retry releases them, long before `hold_ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_retried_across_a_redis_restart() {
    let dir = temp_dir("release-retry");
    let port = free_port(false);
    let durable: &[&str] = &[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ];
    let mut server = RedisServer::start_with(port, dir.path(), false, durable);
    let store = open(QuotaBackend::Redis { url: server.url() }).await;
    let k = QuotaKey::Address("retry@conformance.test".into());
    let t = conformance::T0;
    for _ in 0..2 {
        assert!(matches!(
            store.hold(&k, "tx", 10, t).await,
            Ok(QuotaHold::Held { .. })
        ));
    }
    server.stop();
    assert!(matches!(
        store.release(&k, "tx").await,
        Err(QuotaError::Unavailable(_))
    ));
    let retrying = {
        let (store, k) = (store.clone(), k.clone());
        let delays = [Duration::from_millis(200); 100];
        tokio::spawn(async move { release_retrying(store.as_ref(), &k, "tx", &delays).await })
    };
    // The first retries meet the stopped server.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!retrying.is_finished(), "gave up while Redis was down");
    let _server = RedisServer::start_with(port, dir.path(), false, durable);
    let released = retrying
        .await
        .expect("task")
        .expect("released after the restart");
    assert_eq!(released, 2);
    let usage = store.usage(&k, 10, t).await.expect("usage");
    assert_eq!((usage.used, usage.held), (0, 0));
}
