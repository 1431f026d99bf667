//! `[store]`: where the directory lives. `backend = "embedded"` (the default) is today's SQLite
//! file at `path`; `backend = "postgres"` is a PostgreSQL database shared by a fleet, reached at
//! `url`, with the password from the URL, `password_file` or `PGPASSWORD`, and DKIM private
//! keys sealed under `secret_key_file` (see `store/postgres/sealing.rs` for the rotation with
//! `previous_secret_key_files`).
//!
//! The URL is parsed while the file is read ([`DatabaseUrl`]) and never printed: it may hold
//! the password, so neither its `Debug` form nor an error about it repeats it.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Directory backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackendName {
    /// One SQLite file on this machine.
    #[default]
    Embedded,
    /// A PostgreSQL database shared by a fleet.
    Postgres,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` or `postgres`.
    #[serde(default)]
    pub backend: StoreBackendName,
    /// SQLite database file of the embedded store (created if absent); required with
    /// `backend = "embedded"`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `postgres://USER@HOST:PORT/DB`; required with `backend = "postgres"`.
    #[serde(default)]
    pub url: Option<DatabaseUrl>,
    /// A file whose first line is the database password, when the URL has none (else
    /// `PGPASSWORD`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// 32 random bytes in base64 (`openssl rand -base64 32`): seals the DKIM private keys in
    /// PostgreSQL. Required with `backend = "postgres"`.
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// Earlier secret keys, accepted for opening keys sealed before a rotation.
    #[serde(default)]
    pub previous_secret_key_files: Vec<PathBuf>,
    /// Connections per process to PostgreSQL.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Longest wait for a PostgreSQL connection or answer; then AUTH answers 454.
    #[serde(
        default = "default_store_timeout",
        with = "super::duration::serde_text"
    )]
    pub timeout: Duration,
    /// How long a replica may answer a directory lookup (a login, senders, a hosting account,
    /// limits) from memory (`store/cached.rs`); `"0s"` turns the cache off. At most
    /// [`crate::config::MAX_STORE_CACHE_TTL`]. Used with `backend = "postgres"` only.
    #[serde(default = "default_cache_ttl", with = "super::duration::serde_text")]
    pub cache_ttl: Duration,
}

/// Longest `[store] cache_ttl`: the bound on how stale an answer may be should both the
/// change notifications and the generation check fail unnoticed.
pub const MAX_STORE_CACHE_TTL: Duration = Duration::from_secs(60);

fn default_cache_ttl() -> Duration {
    Duration::from_secs(5)
}

fn default_pool_size() -> usize {
    16
}
fn default_store_timeout() -> Duration {
    Duration::from_secs(3)
}

/// A PostgreSQL connection URL, parsed; its `Debug` form names the server, never the password.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct DatabaseUrl(pub tokio_postgres::Config);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", server_name(&self.0))
    }
}

impl TryFrom<String> for DatabaseUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        parse_postgres_url(&text).map(Self)
    }
}

/// Parses a connection URL without repeating it in the error: it may hold a password.
///
/// # Errors
/// A message saying what is wrong, never the URL.
pub fn parse_postgres_url(url: &str) -> Result<tokio_postgres::Config, String> {
    let pg: tokio_postgres::Config = url.parse().map_err(|_| {
        "not a PostgreSQL connection URL such as postgres://postern@db.example:5432/postern \
         (the value is not repeated here: it may hold a password)"
            .to_string()
    })?;
    if pg.get_dbname().is_none() {
        return Err("the URL names no database (postgres://USER@HOST:PORT/DB)".to_string());
    }
    if pg.get_user().is_none() {
        return Err("the URL names no user (postgres://USER@HOST:PORT/DB)".to_string());
    }
    Ok(pg)
}

/// `user@host:port/db` of a connection config, for messages and logs.
pub fn server_name(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        pg.get_user().unwrap_or("?"),
        pg.get_dbname().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_never_repeated() {
        let url = parse_postgres_url("postgres://postern:hunter2@db.example:6543/dir").unwrap();
        assert_eq!(server_name(&url), "postern@db.example:6543/dir");
        let shown = format!("{:?}", DatabaseUrl(url));
        assert_eq!(shown, "DatabaseUrl(postern@db.example:6543/dir)");
        for bad in [
            "postgres://u:hunter2@host:notaport/db",
            "mysql://u:hunter2@host/db",
        ] {
            let e = parse_postgres_url(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = parse_postgres_url("postgres://u:hunter2@host:5432").unwrap_err();
        assert!(
            e.contains("names no database") && !e.contains("hunter2"),
            "{e}"
        );
    }
}
