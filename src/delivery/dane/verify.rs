//! The DANE certificate verifier (RFC 7672 section 3, RFC 7671 section 5): a server
//! certificate chain checked against usable TLSA records (decision table rows 13-16 in
//! `dane/mod.rs`), and the rustls client configuration that uses it.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use super::tlsa::{DANE_EE, DANE_TA, Tlsa};

/// Why a DANE server certificate was refused; carried inside the rustls error so the client
/// can name the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaneError {
    /// Row 13.
    #[error("DANE: no TLSA record matches the server certificate chain")]
    NoMatch,
    /// Row 16.
    #[error("DANE-TA: certificate chain is valid but names none of {0}")]
    NameMismatch(String),
    /// Row 15: a TA matched, the chain to it is not valid.
    #[error("DANE-TA: certificate does not chain to the TLSA trust anchor: {0}")]
    Chain(String),
}

impl DaneError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            DaneError::NoMatch | DaneError::Chain(_) => "tlsa_mismatch",
            DaneError::NameMismatch(_) => "name_mismatch",
        }
    }

    /// The `DaneError` inside an I/O error from a TLS handshake, if any.
    pub fn from_io(error: &std::io::Error) -> Option<DaneError> {
        let rustls_error = error.get_ref()?.downcast_ref::<rustls::Error>()?;
        match rustls_error {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<DaneError>().cloned()
            }
            _ => None,
        }
    }
}

/// Authenticates a server against usable TLSA records (rows 14-16); verifies handshake
/// signatures with the provider's algorithms.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    names: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// `records`: the usable TLSA records; `names`: the DANE-TA reference identifiers.
    pub fn new(records: Vec<Tlsa>, names: Vec<String>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            records,
            names,
            provider,
        }
    }

    /// The certificate checks, without rustls' error wrapping.
    ///
    /// # Errors
    /// [`DaneError`].
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), DaneError> {
        if self
            .records
            .iter()
            .any(|r| r.usage == DANE_EE && r.matches(end_entity))
        {
            return Ok(());
        }
        let anchors: Vec<&CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| {
                self.records
                    .iter()
                    .any(|r| r.usage == DANE_TA && r.matches(c))
            })
            .collect();
        if anchors.is_empty() {
            return Err(DaneError::NoMatch);
        }
        let mut failure = DaneError::NoMatch;
        for anchor in anchors {
            let mut roots = RootCertStore::empty();
            if let Err(e) = roots.add(anchor.clone().into_owned()) {
                failure = DaneError::Chain(e.to_string());
                continue;
            }
            let verifier = match WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                self.provider.clone(),
            )
            .build()
            {
                Ok(v) => v,
                Err(e) => {
                    failure = DaneError::Chain(e.to_string());
                    continue;
                }
            };
            for name in &self.names {
                let Ok(server_name) = ServerName::try_from(name.clone()) else {
                    continue;
                };
                match verifier.verify_server_cert(end_entity, intermediates, &server_name, &[], now)
                {
                    Ok(_) => return Ok(()),
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    )) => failure = DaneError::NameMismatch(self.names.join(", ")),
                    Err(e) => {
                        failure = DaneError::Chain(e.to_string());
                        break;
                    }
                }
            }
        }
        Err(failure)
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(|e| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client configuration that authenticates with [`DaneVerifier`].
///
/// # Errors
/// Only if the provider cannot do the default protocol versions.
pub fn client_config(
    records: Vec<Tlsa>,
    names: Vec<String>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(DaneVerifier::new(records, names, provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
