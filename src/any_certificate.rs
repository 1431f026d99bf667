//! The certificate verifier of the two TLS clients that must connect without authenticating
//! the server: opportunistic STARTTLS to MX hosts (RFC 7435) and PostgreSQL's `sslmode=prefer`
//! and `require` without a CA file (libpq's meaning of those modes).
//!
//! It accepts every certificate chain (expired, self-signed, wrong name) and still verifies the
//! handshake's signatures against the certificate's key: a server that cannot prove it holds
//! the key of the certificate it sent is broken or tampered with, not merely unauthenticated,
//! and checking costs nothing. This defeats a passive eavesdropper, not an active attacker
//! (RFC 7435 section 1.3). Use it only where the alternative is cleartext or where the caller
//! chose not to authenticate; anything that needs authentication uses WebPKI or DANE.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Accepts any certificate chain; verifies the handshake signature (see the module
/// documentation for when that is right).
#[derive(Debug)]
pub struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyCertificate {
    /// A verifier using the signature algorithms of `provider`.
    pub fn new(provider: &CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Deliberately no chain, name or validity check: see the module documentation.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
