//! The directory named by `[store]`, opened for `postern serve` or for an admin command: the
//! one place that knows both backends, so that the listener sees an `Arc<dyn Directory>` and
//! the CLI a `Box<dyn AdminStore>` whatever the config says. The delivery log moves with the
//! directory ([`open_delivery_log`]): a SQLite file of this machine with the embedded store,
//! the shared database's table with PostgreSQL.

use super::cached::{CachedDirectory, DirectoryCache};
use super::delivery_log::{LogError, LogStore, SqliteLog};
use super::postgres::{PgTls, PgTlsFiles, PostgresSettings, PostgresStore, SecretKeys};
use super::{Directory, DirectoryAdmin, DkimAdmin, DkimKeyStore, EmbeddedStore, StoreError};
use crate::config::{Config, ConfigError, StoreBackendName, StoreConfig};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;

/// Environment variable with the PostgreSQL password when neither the URL nor
/// `store.password_file` gives one (libpq's name).
pub const PASSWORD_ENV: &str = "PGPASSWORD";

/// What the admin commands need of a directory: every administration trait.
pub trait AdminStore: DirectoryAdmin + DkimAdmin {}

impl<T: DirectoryAdmin + DkimAdmin> AdminStore for T {}

/// What `postern serve` asks, and the cache in front of it if any (for the `LISTEN` task).
pub type ServingDirectory = (Arc<dyn Directory>, Option<Arc<DirectoryCache>>);

/// An opened directory of either backend.
#[derive(Debug, Clone)]
pub enum ConfiguredStore {
    /// `backend = "embedded"`.
    Embedded(EmbeddedStore),
    /// `backend = "postgres"`.
    Postgres(PostgresStore),
}

/// Why the directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A `[store]` value that cannot be used (a key file that does not read): exit 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The delivery log's file cannot be opened.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Connections of the delivery log's own pool: one writer thread, one query at a time.
const LOG_POOL_SIZE: usize = 2;

/// Opens the delivery log for `postern serve`'s writer: the SQLite file (created as needed)
/// with the embedded store, the directory's database with PostgreSQL (a pool of its own,
/// connected lazily, so a replica starts while PostgreSQL is down). Call it on the thread
/// that will use the log: outside a runtime the PostgreSQL log runs its statements on a
/// runtime of its own.
///
/// # Errors
/// [`OpenError::Log`] for a file that cannot be used; [`OpenError::Config`] for a `[store]`
/// key file that cannot be read.
pub fn open_delivery_log(
    config: &Config,
    metrics: Option<&crate::metrics::Metrics>,
) -> Result<Box<dyn LogStore>, OpenError> {
    match config.store.backend {
        StoreBackendName::Embedded => Ok(Box::new(SqliteLog::open(&config.delivery_log_path())?)),
        StoreBackendName::Postgres => {
            let mut settings = postgres_settings(&config.store)?;
            settings.pool_size = LOG_POOL_SIZE;
            let store = PostgresStore::open(&settings)?;
            if let Some(metrics) = metrics {
                store.observe(metrics.clone());
            }
            Ok(Box::new(store))
        }
    }
}

/// Opens the delivery log for `postern log`: `None` when the embedded log's file does not
/// exist yet (nothing is created); with PostgreSQL the database must answer and be at this
/// Postern's schema version.
///
/// # Errors
/// As [`open_delivery_log`], and [`StoreError::Schema`] or [`StoreError::Backend`] from the
/// check.
pub fn open_existing_delivery_log(config: &Config) -> Result<Option<Box<dyn LogStore>>, OpenError> {
    match config.store.backend {
        StoreBackendName::Embedded => Ok(SqliteLog::open_existing(&config.delivery_log_path())?
            .map(|log| Box::new(log) as Box<dyn LogStore>)),
        StoreBackendName::Postgres => {
            let mut settings = postgres_settings(&config.store)?;
            settings.pool_size = 1;
            let store = PostgresStore::open(&settings)?;
            store.check_blocking()?;
            Ok(Some(Box::new(store)))
        }
    }
}

/// The PostgreSQL settings of a `[store]` with `backend = "postgres"`: the URL's password,
/// else `password_file`'s, else `PGPASSWORD`; the secret keys and the TLS files, read now.
///
/// # Errors
/// [`ConfigError`] naming the key whose file cannot be used.
pub fn postgres_settings(store: &StoreConfig) -> Result<PostgresSettings, ConfigError> {
    let (Some(url), Some(secret_key_file)) = (&store.url, &store.secret_key_file) else {
        return Err(ConfigError(
            "store: backend = \"postgres\" needs url and secret_key_file".to_string(),
        ));
    };
    let password = match &store.password_file {
        Some(path) => Some(crate::config::secret_file::first_line(
            "store.password_file",
            path,
        )?),
        None => std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()),
    };
    let current = super::postgres::sealing::SecretKey::read(secret_key_file)
        .map_err(|e| ConfigError(format!("store.secret_key_file: {e}")))?;
    let previous = store
        .previous_secret_key_files
        .iter()
        .map(|p| super::postgres::sealing::SecretKey::read(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError(format!("store.previous_secret_key_files: {e}")))?;
    let files = PgTlsFiles {
        ca_file: store.ca_file.clone(),
        client: store
            .client_cert_file
            .clone()
            .zip(store.client_key_file.clone()),
    };
    let tls = PgTls::new(store.tls_mode(), &files).map_err(|e| ConfigError(e.to_string()))?;
    Ok(PostgresSettings {
        pg: url.pg.clone(),
        password,
        secret_keys: SecretKeys::new(current, previous),
        pool_size: store.pool_size,
        timeout: store.timeout,
        tls,
    })
}

impl ConfiguredStore {
    /// Opens the directory `[store]` names. PostgreSQL is not contacted yet.
    ///
    /// # Errors
    /// [`OpenError::Config`] for a key file that cannot be used; [`OpenError::Store`] when the
    /// embedded file cannot be opened.
    pub fn open(config: &Config) -> Result<Self, OpenError> {
        match (config.store.backend, &config.store.path) {
            (StoreBackendName::Embedded, Some(path)) => {
                Ok(Self::Embedded(EmbeddedStore::open(path)?))
            }
            (StoreBackendName::Embedded, None) => Err(ConfigError(
                "store.path: required with store.backend = \"embedded\"".to_string(),
            )
            .into()),
            (StoreBackendName::Postgres, _) => Ok(Self::Postgres(PostgresStore::open(
                &postgres_settings(&config.store)?,
            )?)),
        }
    }

    /// Opens the directory for an admin command: PostgreSQL must answer and be at this
    /// Postern's schema version.
    ///
    /// # Errors
    /// As [`ConfiguredStore::open`], and [`StoreError::Schema`] or [`StoreError::Backend`]
    /// from the check.
    pub fn open_checked(config: &Config) -> Result<Self, OpenError> {
        let store = Self::open(config)?;
        if let Self::Postgres(pg) = &store {
            pg.check_blocking()?;
        }
        Ok(store)
    }

    /// The run-time questions of `postern serve`, asked of the store itself.
    pub fn directory(&self) -> Arc<dyn Directory> {
        match self {
            Self::Embedded(store) => Arc::new(store.clone()),
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// The run-time questions of `postern serve`, through a [`DirectoryCache`] of `cache_ttl`
    /// for PostgreSQL (returned too, for the `LISTEN` task to tell it what it hears). No cache
    /// for the embedded store (local reads, no notifications: see `store/cached.rs`) or with
    /// `cache_ttl = "0s"`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the cache's key cannot be made.
    pub fn serving_directory(
        &self,
        cache_ttl: Duration,
        metrics: &Metrics,
    ) -> Result<ServingDirectory, StoreError> {
        match self {
            Self::Postgres(_) if !cache_ttl.is_zero() => {
                let cache = Arc::new(DirectoryCache::new(cache_ttl)?);
                let cached = CachedDirectory::new(self.directory(), cache.clone(), metrics.clone());
                Ok((Arc::new(cached), Some(cache)))
            }
            _ => Ok((self.directory(), None)),
        }
    }

    /// The signer's keys.
    pub fn dkim_keys(&self) -> Arc<dyn DkimKeyStore> {
        match self {
            Self::Embedded(store) => Arc::new(store.clone()),
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// The administration traits.
    pub fn admin(self) -> Box<dyn AdminStore> {
        match self {
            Self::Embedded(store) => Box::new(store),
            Self::Postgres(store) => Box::new(store),
        }
    }
}
