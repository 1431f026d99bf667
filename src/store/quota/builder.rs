//! Opening the configured quota backend: [`QuotaStoreConfig`] says which backend and with
//! which settings, [`open_quota_store`] opens it and hands back the trait object. This is the
//! one place that names the backends, so that the trait module stays below them and callers
//! (the server, `postern quota show`, the benchmarks) never pick one themselves.
//!
//! The `[quota]` section of the configuration file (`crate::config::QuotaConfig`) is turned
//! into a [`QuotaStoreConfig`] by the server; this module does not read configuration files.

use super::embedded::EmbeddedQuota;
use super::redis::RedisQuota;
use super::{QuotaError, QuotaSettings, QuotaStore};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults() {
        let c = QuotaStoreConfig::new(QuotaBackend::Redis {
            url: "redis://127.0.0.1/".into(),
        });
        assert_eq!(c.redis_timeout, Duration::from_millis(500));
        assert_eq!(c.settings, QuotaSettings::default());
    }
}
