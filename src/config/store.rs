//! `[store]`: where the directory lives. `backend = "embedded"` (the default) is today's SQLite
//! file at `path`; `backend = "postgres"` is a PostgreSQL database shared by a fleet, reached at
//! `url`, with the password from the URL, `password_file` or `PGPASSWORD`, and DKIM private
//! keys sealed under `secret_key_file` (see `store/postgres/sealing.rs` for the rotation with
//! `previous_secret_key_files`).
//!
//! The URL is parsed while the file is read ([`DatabaseUrl`]) and never printed: it may hold
//! the password, so neither its `Debug` form nor an error about it repeats it.
//!
//! # TLS to PostgreSQL
//! `tls` takes libpq's `sslmode` names and meanings ([`PgTlsMode`]); the default is
//! `verify-full`: the directory holds password hashes and sealed DKIM keys and is reached over
//! the network, and libpq's own default (`prefer`) lets anyone on the path read or change it
//! unnoticed. A URL may carry `sslmode=` (managed PostgreSQL services hand out such URLs): it
//! counts as `tls` when that key is absent, and a `tls` that says otherwise is refused, so there
//! is one answer. The other libpq `ssl*` URL parameters are refused with the key to use
//! instead (`ca_file`, `client_cert_file`, `client_key_file`). The files are read when the store
//! is opened (`store/postgres/tls.rs`).

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

/// How a connection to PostgreSQL uses TLS: libpq's `sslmode` values, with their meanings.
/// libpq's `allow` (plaintext first) is not offered: it is never the right choice here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgTlsMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, else plaintext; the certificate is not checked.
    Prefer,
    /// TLS or no connection; the certificate is not checked (unless `ca_file` is set: then as
    /// `verify-ca`, as libpq does with a root certificate file).
    Require,
    /// TLS with a certificate issued by a trusted CA, for any host name.
    VerifyCa,
    /// TLS with a certificate issued by a trusted CA for the host name of the URL.
    #[default]
    VerifyFull,
}

impl PgTlsMode {
    /// The libpq name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            Self::Disable,
            Self::Prefer,
            Self::Require,
            Self::VerifyCa,
            Self::VerifyFull,
        ]
        .into_iter()
        .find(|mode| mode.name() == name)
    }

    /// Whether the server's certificate is checked against CA certificates.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
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
    /// TLS to PostgreSQL; absent: the URL's `sslmode`, else `verify-full` (see the module docs).
    #[serde(default)]
    pub tls: Option<PgTlsMode>,
    /// PEM file of the CA certificates that issue the server's certificate; absent: the
    /// system's CA store (the `verify-*` modes only).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the server (mutual TLS), with `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// How long a replica may answer a directory lookup (a login, senders, a hosting account,
    /// limits) from memory (`store/cached.rs`); `"0s"` turns the cache off. At most
    /// [`crate::config::MAX_STORE_CACHE_TTL`]. Used with `backend = "postgres"` only.
    #[serde(default = "default_cache_ttl", with = "super::duration::serde_text")]
    pub cache_ttl: Duration,
}

impl StoreConfig {
    /// The TLS mode in force: `tls`, else the URL's `sslmode`, else `verify-full`. A conflict
    /// between the two is refused by the config check.
    pub fn tls_mode(&self) -> PgTlsMode {
        self.tls
            .or_else(|| self.url.as_ref().and_then(|url| url.sslmode))
            .unwrap_or_default()
    }
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
pub struct DatabaseUrl {
    /// Everything but the TLS mode (whose `ssl_mode` is left at the driver's default).
    pub pg: tokio_postgres::Config,
    /// The URL's `sslmode=`, when it has one.
    pub sslmode: Option<PgTlsMode>,
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", server_name(&self.pg))
    }
}

impl TryFrom<String> for DatabaseUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        parse_postgres_url(&text)
    }
}

/// The libpq TLS parameters Postern takes from keys of `[store]` instead.
const SSL_PARAMETERS_AS_KEYS: [(&str, &str); 3] = [
    ("sslrootcert", "store.ca_file"),
    ("sslcert", "store.client_cert_file"),
    ("sslkey", "store.client_key_file"),
];

/// Takes `sslmode` out of a URL's query (tokio-postgres knows only three of libpq's modes),
/// refusing the `ssl*` parameters that have keys of their own; returns the rest of the URL.
fn take_sslmode(url: &str) -> Result<(String, Option<PgTlsMode>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut sslmode = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "sslmode" {
            let mode = PgTlsMode::from_name(value).ok_or_else(|| {
                format!(
                    "sslmode={} in the URL: must be disable, prefer, require, verify-ca or \
                     verify-full",
                    crate::printable::escape_controls(value)
                )
            })?;
            sslmode = Some(mode);
        } else if let Some((_, instead)) = SSL_PARAMETERS_AS_KEYS.iter().find(|(k, _)| *k == key) {
            return Err(format!(
                "{key} in the URL is not read: set {instead} instead"
            ));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, sslmode))
}

/// Parses a connection URL without repeating it in the error: it may hold a password.
///
/// # Errors
/// A message saying what is wrong, never the URL.
pub fn parse_postgres_url(url: &str) -> Result<DatabaseUrl, String> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !is_url && url.contains("sslmode") {
        // The key=value form: Postern does not parse it itself, and tokio-postgres would
        // take only some modes; one place for the mode keeps one answer.
        return Err("sslmode in a key=value connection string: set store.tls instead".to_string());
    }
    let (url, sslmode) = if is_url {
        take_sslmode(url)?
    } else {
        (url.to_string(), None)
    };
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
    Ok(DatabaseUrl { pg, sslmode })
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
        assert_eq!(server_name(&url.pg), "postern@db.example:6543/dir");
        let shown = format!("{url:?}");
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

    #[test]
    fn sslmode_is_taken_from_the_url() {
        let url = parse_postgres_url("postgres://u:hunter2@db.example/dir").unwrap();
        assert_eq!(url.sslmode, None);
        for (mode, expected) in [
            ("disable", PgTlsMode::Disable),
            ("prefer", PgTlsMode::Prefer),
            ("require", PgTlsMode::Require),
            ("verify-ca", PgTlsMode::VerifyCa),
            ("verify-full", PgTlsMode::VerifyFull),
        ] {
            let text = format!("postgresql://u@db.example/dir?connect_timeout=5&sslmode={mode}");
            let url = parse_postgres_url(&text).unwrap();
            assert_eq!(url.sslmode, Some(expected), "{mode}");
            assert_eq!(expected.name(), mode);
            // The other parameters are still the driver's.
            assert_eq!(url.pg.get_connect_timeout(), Some(&Duration::from_secs(5)));
        }
        let url = parse_postgres_url("postgres://u@db.example/dir?sslmode=require").unwrap();
        assert_eq!(url.sslmode, Some(PgTlsMode::Require));
        assert_eq!(server_name(&url.pg), "u@db.example:5432/dir");
        for (text, message) in [
            (
                "postgres://u:hunter2@db/dir?sslmode=allow",
                "sslmode=allow in the URL: must be",
            ),
            (
                "postgres://u:hunter2@db/dir?sslmode=",
                "sslmode= in the URL: must be",
            ),
            (
                "postgres://u:hunter2@db/dir?sslrootcert=/ca.pem",
                "sslrootcert in the URL is not read: set store.ca_file instead",
            ),
            (
                "postgres://u:hunter2@db/dir?sslmode=require&sslkey=/k.pem",
                "sslkey in the URL is not read: set store.client_key_file instead",
            ),
            (
                "host=db user=u password=hunter2 dbname=dir sslmode=require",
                "sslmode in a key=value connection string: set store.tls instead",
            ),
        ] {
            let e = parse_postgres_url(text).unwrap_err();
            assert!(e.starts_with(message), "{text}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        // The key=value form without sslmode is still the driver's.
        let url = parse_postgres_url("host=db user=u dbname=dir").unwrap();
        assert_eq!(
            (server_name(&url.pg), url.sslmode),
            ("u@db:5432/dir".into(), None)
        );
    }
}
