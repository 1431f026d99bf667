//! TLS to PostgreSQL with libpq's modes (`[store] tls`, see `config/store.rs`), over the
//! crate's one rustls (aws-lc-rs provider): a `tokio_postgres::tls::MakeTlsConnect` of our
//! own, used by every connection (the pool, the `LISTEN` connection, `migrate` and the admin
//! commands all open the store with the same [`PgTls`]).
//!
//! # Why not a crate
//! `tokio-postgres-rustls` would do the handshake, but not libpq's modes: `prefer` and
//! `require` accept any certificate and `verify-ca` checks the chain but not the name, which
//! are certificate verifiers of our own either way. What is left (a stream wrapper and the
//! channel binding hash) is a few lines, and its releases need not follow ours of rustls.
//!
//! # The modes
//! tokio-postgres decides whether TLS is asked for and whether a refusal is fatal (its
//! `SslMode`: `disable`, `prefer`, `require`); the verifier here decides what a certificate
//! must be: nothing (`prefer`, `require`), issued by a trusted CA (`verify-ca`; `require` with a
//! `ca_file`, as libpq does with a root certificate file), or that and for the URL's host
//! (`verify-full`). The trusted CAs are `ca_file`'s, else the system's store (libpq's
//! `sslrootcert=system`): a managed PostgreSQL with a public CA works without a file, one with
//! a private CA needs its CA file. Over a Unix socket TLS is never used, as with libpq.
//!
//! # Channel binding
//! The stream gives tokio-postgres the `tls-server-end-point` binding (RFC 5929: the server
//! certificate's hash, with the hash of its signature algorithm, SHA-256 for MD5 and SHA-1),
//! so SCRAM-SHA-256-PLUS is used whenever the server offers it: a man in the middle holding
//! a certificate we accept still cannot relay the password exchange. Certificates signed with
//! Ed25519 or RSA-PSS have no such hash (PostgreSQL cannot compute one either), and then plain
//! SCRAM-SHA-256 is used. `channel_binding=require` in the URL makes it mandatory.

use crate::any_certificate::AnyCertificate;
use crate::config::PgTlsMode;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls::{Error as TlsError, SignatureScheme};
use sha2::Digest;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Files of `[store]` for TLS, as configured.
#[derive(Debug, Clone, Default)]
pub struct PgTlsFiles {
    /// `ca_file`.
    pub ca_file: Option<PathBuf>,
    /// `client_cert_file` and `client_key_file`.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// A TLS setting that cannot be used: names the `[store]` key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {why}")]
pub struct PgTlsError {
    /// The dotted key, e.g. `store.ca_file`.
    pub key: &'static str,
    /// What is wrong, naming the file.
    pub why: String,
}

fn error(key: &'static str, why: String) -> PgTlsError {
    PgTlsError { key, why }
}

/// How connections to PostgreSQL use TLS; cheap to clone (one shared rustls config).
#[derive(Clone)]
pub struct PgTls {
    mode: PgTlsMode,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTls({})", self.mode.name())
    }
}

impl PgTls {
    /// Reads the files and builds the rustls config for `mode`.
    ///
    /// # Errors
    /// [`PgTlsError`] naming the key whose file does not read or holds nothing usable, or
    /// `store.ca_file` when a verifying mode finds no system CA certificates.
    pub fn new(mode: PgTlsMode, files: &PgTlsFiles) -> Result<Self, PgTlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = match (&files.ca_file, mode) {
            (Some(path), _) => Some(read_roots(path)?),
            (None, PgTlsMode::VerifyCa | PgTlsMode::VerifyFull) => Some(system_roots()?),
            (None, _) => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            None => Arc::new(AnyCertificate::new(&provider)),
            Some(roots) => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| error("store.ca_file", e.to_string()))?;
                if mode == PgTlsMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(AnyName(webpki))
                }
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &files.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(read_chain(cert)?, read_key(key)?)
                .map_err(|e| {
                    error(
                        "store.client_key_file",
                        format!("{}: does not go with client_cert_file: {e}", key.display()),
                    )
                })?,
        };
        Ok(Self {
            mode,
            config: Arc::new(config),
        })
    }

    /// The mode.
    pub fn mode(&self) -> PgTlsMode {
        self.mode
    }

    /// tokio-postgres's part of the mode for a connection config: whether TLS is asked for
    /// and whether a server that refuses it is refused. Unix sockets never use TLS.
    pub fn ssl_mode(&self, pg: &tokio_postgres::Config) -> SslMode {
        let only_sockets =
            !pg.get_hosts().is_empty() && pg.get_hosts().iter().all(|h| matches!(h, Host::Unix(_)));
        match self.mode {
            _ if only_sockets => SslMode::Disable,
            PgTlsMode::Disable => SslMode::Disable,
            PgTlsMode::Prefer => SslMode::Prefer,
            PgTlsMode::Require | PgTlsMode::VerifyCa | PgTlsMode::VerifyFull => SslMode::Require,
        }
    }
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, PgTlsError> {
    std::fs::read(path).map_err(|e| error(key, format!("{}: cannot read: {e}", path.display())))
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, PgTlsError> {
    let pem = read_pem(key, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| error(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(error(
            key,
            format!("{}: no CERTIFICATE block found", path.display()),
        ));
    }
    Ok(certs)
}

fn read_roots(path: &Path) -> Result<RootCertStore, PgTlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(read_certs("store.ca_file", path)?);
    if added == 0 {
        return Err(error(
            "store.ca_file",
            format!("{}: no usable CA certificate", path.display()),
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, PgTlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(error(
            "store.ca_file",
            "required: the system has no CA certificates to verify the server with".to_string(),
        ));
    }
    Ok(roots)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PgTlsError> {
    read_certs("store.client_cert_file", path)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PgTlsError> {
    let key = "store.client_key_file";
    let pem = read_pem(key, path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| error(key, format!("{}: {e}", path.display())))?
        .ok_or_else(|| {
            error(
                key,
                format!("{}: no PRIVATE KEY block found", path.display()),
            )
        })
}

/// `verify-ca`: WebPKI's checks without the name. rustls checks the chain (issuer, dates,
/// usage) before the name, so a name error means everything else passed.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    /// The name is checked at the handshake: tokio-postgres asks for a connector (with an
    /// empty name) even for a Unix socket, where none is used.
    fn make_tls_connect(&mut self, domain: &str) -> io::Result<PgTlsConnect> {
        Ok(PgTlsConnect {
            config: self.config.clone(),
            domain: domain.to_string(),
        })
    }
}

/// One connection's handshake, for the host name tokio-postgres connects to.
pub struct PgTlsConnect {
    config: Arc<ClientConfig>,
    domain: String,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.domain.clone()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{:?} is not a host name for TLS", self.domain),
                )
            })?;
            let connector = tokio_rustls::TlsConnector::from(self.config);
            let tls = connector.connect(name, stream).await?;
            Ok(PgTlsStream(tls))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        match session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| server_end_point(cert))
        {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The hashes of RFC 5929 `tls-server-end-point`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndPointHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// `tls-server-end-point` of a server certificate, or `None` when its signature algorithm
/// names no single hash (Ed25519, RSA-PSS) or the certificate does not parse.
fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    Some(match end_point_hash(signature_algorithm(cert)?)? {
        EndPointHash::Sha224 => sha2::Sha224::digest(cert).to_vec(),
        EndPointHash::Sha256 => sha2::Sha256::digest(cert).to_vec(),
        EndPointHash::Sha384 => sha2::Sha384::digest(cert).to_vec(),
        EndPointHash::Sha512 => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// The hash for a signature algorithm OID (its DER content bytes).
fn end_point_hash(oid: &[u8]) -> Option<EndPointHash> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    if oid == ECDSA_SHA1 {
        return Some(EndPointHash::Sha256);
    }
    let (family, last) = oid.split_last().map(|(last, family)| (family, *last))?;
    match (family, last) {
        // md5WithRSAEncryption, sha1WithRSAEncryption: SHA-256 (RFC 5929 section 4.1).
        (RSA, 4 | 5) => Some(EndPointHash::Sha256),
        (RSA, 11) | (ECDSA_SHA2, 2) => Some(EndPointHash::Sha256),
        (RSA, 12) | (ECDSA_SHA2, 3) => Some(EndPointHash::Sha384),
        (RSA, 13) | (ECDSA_SHA2, 4) => Some(EndPointHash::Sha512),
        (RSA, 14) | (ECDSA_SHA2, 1) => Some(EndPointHash::Sha224),
        _ => None,
    }
}

/// The OID of a certificate's `signatureAlgorithm`: `Certificate ::= SEQUENCE {
/// tbsCertificate, signatureAlgorithm AlgorithmIdentifier, signature }` (RFC 5280).
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(cert, 0x30)?;
    let (_, rest) = der_element(certificate, 0x30)?;
    let (algorithm, _) = der_element(rest, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    Some(oid)
}

/// The content of the DER element at the start of `input` with tag `tag`, and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&length, rest) = rest.split_first()?;
    let (length, rest) = if length < 0x80 {
        (usize::from(length), rest)
    } else {
        let count = usize::from(length & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (length, rest)
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["db.test".to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let p256 = cert_with(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            server_end_point(&p256).unwrap(),
            sha2::Sha256::digest(&p256).to_vec()
        );
        let p384 = cert_with(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            server_end_point(&p384).unwrap(),
            sha2::Sha384::digest(&p384).to_vec()
        );
        let ed25519 = cert_with(&rcgen::PKCS_ED25519);
        assert_eq!(server_end_point(&ed25519), None);
        assert_eq!(server_end_point(b"\x30\x82\xff"), None);
        assert_eq!(server_end_point(&p256[..p256.len() / 2]), None);
        // sha1WithRSAEncryption and sha512WithRSAEncryption.
        let rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
        assert_eq!(
            end_point_hash(&[&rsa[..], &[5]].concat()),
            Some(EndPointHash::Sha256)
        );
        assert_eq!(
            end_point_hash(&[&rsa[..], &[13]].concat()),
            Some(EndPointHash::Sha512)
        );
        // RSASSA-PSS names its hash in parameters: no binding, as with PostgreSQL.
        assert_eq!(end_point_hash(&[&rsa[..], &[10]].concat()), None);
    }

    #[test]
    fn files_are_named_by_their_key() {
        let dir = crate::testutil::TempDir::new("pgtls");
        std::fs::create_dir_all(dir.path()).unwrap();
        let missing = PgTlsFiles {
            ca_file: Some(dir.join("absent.pem")),
            client: None,
        };
        let e = PgTls::new(PgTlsMode::VerifyFull, &missing).unwrap_err();
        assert_eq!(e.key, "store.ca_file");
        assert!(e.to_string().starts_with("store.ca_file: "), "{e}");
        std::fs::write(dir.join("empty.pem"), "not pem\n").unwrap();
        let empty = PgTlsFiles {
            ca_file: Some(dir.join("empty.pem")),
            client: None,
        };
        let e = PgTls::new(PgTlsMode::VerifyCa, &empty).unwrap_err();
        assert!(e.why.contains("no CERTIFICATE block"), "{e}");

        let generated = rcgen::generate_simple_self_signed(vec!["client".to_string()]).unwrap();
        std::fs::write(dir.join("client.crt"), generated.cert.pem()).unwrap();
        std::fs::write(
            dir.join("client.key"),
            generated.signing_key.serialize_pem(),
        )
        .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.join("other.key"), other.serialize_pem()).unwrap();
        let client = |key: &str| PgTlsFiles {
            ca_file: None,
            client: Some((dir.join("client.crt"), dir.join(key))),
        };
        PgTls::new(PgTlsMode::Require, &client("client.key")).unwrap();
        let e = PgTls::new(PgTlsMode::Require, &client("absent.key")).unwrap_err();
        assert_eq!(e.key, "store.client_key_file");
        let e = PgTls::new(PgTlsMode::Require, &client("other.key")).unwrap_err();
        assert!(e.why.contains("does not go with"), "{e}");
    }

    #[test]
    fn unix_sockets_never_use_tls() {
        let tls = PgTls::new(PgTlsMode::Require, &PgTlsFiles::default()).unwrap();
        let tcp: tokio_postgres::Config = "postgres://u@db.test/d".parse().unwrap();
        assert_eq!(tls.ssl_mode(&tcp), SslMode::Require);
        let socket: tokio_postgres::Config =
            "host=/run/postgresql user=u dbname=d".parse().unwrap();
        assert_eq!(tls.ssl_mode(&socket), SslMode::Disable);
        let prefer = PgTls::new(PgTlsMode::Prefer, &PgTlsFiles::default()).unwrap();
        assert_eq!(prefer.ssl_mode(&tcp), SslMode::Prefer);
    }
}
