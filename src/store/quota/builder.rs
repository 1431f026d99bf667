//! Opening the configured quota backend: [`QuotaStoreConfig`] says which backend and with
//! which settings, [`open_quota_store`] opens it and hands back the trait object. This is the
//! one place that names the backends, so that the trait module stays below them and callers
//! (the server, `postern quota show`, the benchmarks) never pick one themselves.
//!
//! The `[quota]` section of the configuration file (`crate::config::QuotaConfig`) is turned
//! into a [`QuotaStoreConfig`] by the server; this module does not read configuration files.

use super::embedded::EmbeddedQuota;
use super::redis::RedisQuota;
use super::{QuotaError, QuotaHold, QuotaKey, QuotaSettings, QuotaStore, Usage};
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
}

impl QuotaStoreConfig {
    /// A config with default settings and timeout.
    pub fn new(backend: QuotaBackend) -> Self {
        Self {
            backend,
            settings: QuotaSettings::default(),
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
        }
    }
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
    match &config.backend {
        QuotaBackend::Embedded { path } => {
            let (path, settings) = (path.clone(), config.settings);
            let store = tokio::task::spawn_blocking(move || EmbeddedQuota::open(&path, settings))
                .await
                .map_err(|e| QuotaError::Unavailable(format!("quota open task failed: {e}")))??;
            Ok(Arc::new(store))
        }
        QuotaBackend::Redis { url } => Ok(Arc::new(
            RedisQuota::open_single(url, config.settings, config.redis_timeout).await?,
        )),
        QuotaBackend::RedisCluster { nodes } => Ok(Arc::new(
            RedisQuota::open_cluster(nodes, config.settings, config.redis_timeout).await?,
        )),
    }
}

/// Opens the configured backend like [`open_quota_store`], except that a Redis backend that
/// cannot be reached yet is not an error: `postern serve` must start (unready) when Redis is
/// down, not exit and wait for a supervisor to try again. The store then answers every call
/// with [`QuotaError::Unavailable`] (RCPT gets 451, `/readyz` 503) while a background task
/// tries to connect every [`RECONNECT_INTERVAL`]; once it has, calls go to the connected store,
/// which reconnects by itself from then on.
///
/// # Errors
/// [`QuotaError::Invalid`] for a URL that does not parse; [`QuotaError::Unavailable`] for an
/// embedded file that cannot be opened (a local fault no wait cures).
pub async fn open_quota_store_or_connect_later(
    config: &QuotaStoreConfig,
) -> Result<Arc<dyn QuotaStore>, QuotaError> {
    match (&config.backend, open_quota_store(config).await) {
        (QuotaBackend::Embedded { .. }, opened) | (_, opened @ Ok(_)) => opened,
        (_, Err(invalid @ QuotaError::Invalid(_))) => Err(invalid),
        (_, Err(QuotaError::Unavailable(why))) => {
            tracing::warn!(error = %why, "quota backend not reachable at start: not ready until it is");
            Ok(ConnectingQuota::start(config.clone(), why))
        }
    }
}

/// A Redis quota store that was not reachable at start: unavailable until the background
/// task of [`ConnectingQuota::start`] has connected.
struct ConnectingQuota {
    connected: OnceLock<Arc<dyn QuotaStore>>,
    settings: QuotaSettings,
    /// Why the latest connection attempt failed, for the callers' warnings.
    last_error: Mutex<String>,
}

impl ConnectingQuota {
    /// The store, and the task that connects it. The task holds only a weak reference: it
    /// ends when the store is dropped, or once connected.
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
                let attempt = open_quota_store(&config).await;
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

    /// The connected store, or why there is none yet.
    fn store(&self) -> Result<&Arc<dyn QuotaStore>, QuotaError> {
        self.connected.get().ok_or_else(|| {
            let why = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
            QuotaError::Unavailable(format!("not connected yet: {why}"))
        })
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

    fn settings(&self) -> QuotaSettings {
        self.settings
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
        let store = open_quota_store_or_connect_later(&config).await.unwrap();
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
        let bad = QuotaStoreConfig::new(QuotaBackend::Redis {
            url: "not a url".into(),
        });
        assert!(matches!(
            open_quota_store_or_connect_later(&bad).await,
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
