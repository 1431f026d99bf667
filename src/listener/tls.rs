//! The server's TLS configuration: certificate and key from PEM files, or a self-signed
//! certificate generated at first start for development; an optional second, ECDSA pair;
//! session resumption.
//!
//! TLS 1.2 and 1.3 only (RFC 8996 retired 1.0 and 1.1), rustls with the aws-lc-rs provider.
//! The generated certificate (rcgen's default key: ECDSA P-256) is kept next to the store so
//! clients that pin it keep working across restarts.
//!
//! Two pairs (`[tls] ecdsa_cert`/`ecdsa_key` beside `cert`/`key`), as Postfix's
//! `smtpd_tls_eccert_file`: [`CertificateChoice`] serves the ECDSA chain to a client whose
//! hello offers a signature scheme the ECDSA key can make (rustls has already narrowed the
//! offered schemes to the cipher suites both sides have), the main chain to the others. Every
//! pair is checked at load: the key must be the certificate's, and the ECDSA pair must hold
//! an ECDSA key; errors name the config key.
//!
//! Resumption, for clients that reconnect for every message: stateless tickets (rustls's
//! aws-lc-rs `Ticketer`: AES-256-CBC + HMAC-SHA256 under random keys that rotate every 6 hours,
//! a ticket lives 12 hours) for TLS 1.3 and for TLS 1.2 clients that ask for one, and an
//! in-memory session cache (`[tls] session_cache` entries) for TLS 1.2 clients without ticket
//! support. Both are per process: a replica cannot open another replica's ticket, nor one of
//! its own from before a restart, and such a client gets a full handshake (no error). Sharing
//! ticket keys across a fleet would need a key distribution of its own; behind a balancer that
//! spreads reconnects over N replicas, about 1/N of them resume.

use crate::config::Config;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::{SignatureAlgorithm, crypto::CryptoProvider};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up. [`TlsSetupError::Read`] and [`TlsSetupError::Content`] are config
/// problems, and their messages start with the dotted config key to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read.
    #[error("{key}: {path}: {source}")]
    Read {
        /// The config key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no usable certificate or key, or not the key its certificate names.
    #[error("{key}: {path}: {what}")]
    Content {
        /// The config key that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the configuration (the protocol versions, the ticket keys).
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the development certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    /// The development certificate could not be written.
    #[error("writing the self-signed certificate: {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl TlsSetupError {
    /// Whether the operator must fix a `[tls]` key (else the machine: a disk, randomness).
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Read { .. } | Self::Content { .. })
    }
}

/// The config keys of one certificate pair, for the errors.
struct PairKeys {
    cert: &'static str,
    key: &'static str,
}

const MAIN_PAIR: PairKeys = PairKeys {
    cert: "tls.cert",
    key: "tls.key",
};

const ECDSA_PAIR: PairKeys = PairKeys {
    cert: "tls.ecdsa_cert",
    key: "tls.ecdsa_key",
};

/// Builds the acceptor from the config (generating a development certificate if none is set).
///
/// # Errors
/// The files are unreadable or invalid, a key is not its certificate's, or the generated
/// certificate cannot be written.
pub fn acceptor(config: &Config) -> Result<TlsAcceptor, TlsSetupError> {
    let (cert_path, key_path) = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => self_signed(config)?,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let main = load_pair(&cert_path, &key_path, &MAIN_PAIR, &provider)?;
    let ecdsa = match (&config.tls.ecdsa_cert, &config.tls.ecdsa_key) {
        (Some(cert), Some(key)) => {
            let pair = load_pair(cert, key, &ECDSA_PAIR, &provider)?;
            let algorithm = pair.key.algorithm();
            if algorithm != SignatureAlgorithm::ECDSA {
                return Err(TlsSetupError::Content {
                    key: ECDSA_PAIR.key,
                    path: key.clone(),
                    what: format!("an {algorithm:?} key, not ECDSA"),
                });
            }
            Some(Arc::new(pair))
        }
        _ => None,
    };
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CertificateChoice {
            ecdsa,
            main: Arc::new(main),
        }));
    server.session_storage = session_storage(config.tls.session_cache);
    if config.tls.session_tickets {
        server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    }
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The stateful session store: `entries` sessions, or none.
fn session_storage(entries: usize) -> Arc<dyn StoresServerSessions> {
    if entries == 0 {
        Arc::new(NoServerSessionStorage {})
    } else {
        ServerSessionMemoryCache::new(entries)
    }
}

/// Chooses the chain for one client: the ECDSA pair when there is one and the client takes
/// one of its signature schemes, else the main pair.
#[derive(Debug)]
struct CertificateChoice {
    ecdsa: Option<Arc<CertifiedKey>>,
    main: Arc<CertifiedKey>,
}

impl ResolvesServerCert for CertificateChoice {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        match &self.ecdsa {
            Some(ecdsa) if ecdsa.key.choose_scheme(schemes).is_some() => Some(ecdsa.clone()),
            _ => Some(self.main.clone()),
        }
    }
}

/// Reads one pair and checks that the key is the certificate's.
fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    keys: &PairKeys,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsSetupError> {
    let certs = load_certs(cert_path, keys.cert)?;
    let key = load_key(key_path, keys.key)?;
    let content = |what: String| TlsSetupError::Content {
        key: keys.key,
        path: key_path.to_path_buf(),
        what,
    };
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| content(format!("unusable private key: {e}")))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().map_err(|e| {
        content(format!(
            "not the key of the certificate in {} ({}): {e}",
            keys.cert,
            cert_path.display()
        ))
    })?;
    Ok(pair)
}

/// Path of the development certificate: `tls/` beside the store file (in the spool
/// directory with a PostgreSQL directory).
fn self_signed(config: &Config) -> Result<(PathBuf, PathBuf), TlsSetupError> {
    let dir = config.local_dir().join("tls");
    let cert_path = dir.join("self-signed.crt");
    let key_path = dir.join("self-signed.key");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    std::fs::create_dir_all(&dir).map_err(|source| TlsSetupError::Write {
        path: dir.clone(),
        source,
    })?;
    let names = vec![config.server.hostname.clone(), "localhost".to_string()];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, generated.cert.pem()).map_err(|source| TlsSetupError::Write {
        path: cert_path.clone(),
        source,
    })?;
    tracing::warn!(cert = %cert_path.display(), "no [tls] certificate configured: generated a self-signed one (development only)");
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsSetupError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| TlsSetupError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(bytes)
        .map_err(|source| TlsSetupError::Write {
            path: path.to_path_buf(),
            source,
        })
}

fn load_certs(
    path: &Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::Content {
            key,
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Content {
            key,
            path: path.to_path_buf(),
            what: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path, key: &'static str) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsSetupError::Content {
            key,
            path: path.to_path_buf(),
            what: e.to_string(),
        })?
        .ok_or_else(|| TlsSetupError::Content {
            key,
            path: path.to_path_buf(),
            what: "no PRIVATE KEY block found".into(),
        })
}
