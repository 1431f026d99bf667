//! The server's TLS configuration: certificate and key from PEM files, or a self-signed
//! certificate generated at first start for development.
//!
//! TLS 1.2 and 1.3 only (RFC 8996 retired 1.0 and 1.1), rustls with the aws-lc-rs provider.
//! The generated certificate is kept next to the store so clients that pin it keep working
//! across restarts.

use crate::config::Config;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the certificate and key together.
    #[error("certificate and key do not form a usable pair: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the development certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

/// Builds the acceptor from the config (generating a development certificate if none is set).
///
/// # Errors
/// The files are unreadable or invalid, or the generated certificate cannot be written.
pub fn acceptor(config: &Config) -> Result<TlsAcceptor, TlsSetupError> {
    let (cert_path, key_path) = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => self_signed(config)?,
    };
    let certs = load_certs(&cert_path)?;
    let key = load_key(&key_path)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(server)))
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
    std::fs::create_dir_all(&dir).map_err(|source| TlsSetupError::Read {
        path: dir.clone(),
        source,
    })?;
    let names = vec![config.server.hostname.clone(), "localhost".to_string()];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, generated.cert.pem()).map_err(|source| TlsSetupError::Read {
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
        .map_err(|source| TlsSetupError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(bytes).map_err(|source| TlsSetupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::Content {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Content {
            path: path.to_path_buf(),
            what: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsSetupError::Content {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?
        .ok_or_else(|| TlsSetupError::Content {
            path: path.to_path_buf(),
            what: "no PRIVATE KEY block found".into(),
        })
}
