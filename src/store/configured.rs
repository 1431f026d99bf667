//! The directory named by `[store]`, opened for `postern serve` or for an admin command: the
//! one place that knows both backends, so that the listener sees an `Arc<dyn Directory>` and
//! the CLI a `Box<dyn AdminStore>` whatever the config says.

use super::postgres::{PgTls, PgTlsFiles, PostgresSettings, PostgresStore, SecretKeys};
use super::{Directory, DirectoryAdmin, DkimAdmin, DkimKeyStore, EmbeddedStore, StoreError};
use crate::config::{Config, ConfigError, StoreBackendName, StoreConfig};
use std::path::Path;
use std::sync::Arc;

/// Environment variable with the PostgreSQL password when neither the URL nor
/// `store.password_file` gives one (libpq's name).
pub const PASSWORD_ENV: &str = "PGPASSWORD";

/// What the admin commands need of a directory: every administration trait.
pub trait AdminStore: DirectoryAdmin + DkimAdmin {}

impl<T: DirectoryAdmin + DkimAdmin> AdminStore for T {}

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
}

/// The first line of a password file, named by its key on failure; never its content.
fn read_password(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "store.password_file: {}: cannot read: {e}",
            path.display()
        ))
    })?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(ConfigError(format!(
            "store.password_file: {}: the first line is empty",
            path.display()
        )));
    }
    Ok(line.to_string())
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
        Some(path) => Some(read_password(path)?),
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

    /// The run-time questions of `postern serve`.
    pub fn directory(&self) -> Arc<dyn Directory> {
        match self {
            Self::Embedded(store) => Arc::new(store.clone()),
            Self::Postgres(store) => Arc::new(store.clone()),
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
