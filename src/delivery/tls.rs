//! TLS for outbound SMTP: the policy a transaction runs under, what was actually negotiated,
//! and the certificate verifier for opportunistic STARTTLS.
//!
//! Hosts without DANE get [`TlsPolicy::Opportunistic`] (RFC 7435 "opportunistic
//! security", as RFC 3207 STARTTLS is used between MTAs on port 25 without DANE or MTA-STS):
//! encrypt when the server offers STARTTLS, authenticate nothing, and fall back to cleartext
//! when the handshake fails. [`TlsPolicy::Dane`] (RFC 7672, see `dane/`) requires TLS and
//! checks the certificate against TLSA records with `dane::DaneVerifier`;
//! [`TlsPolicy::Encrypt`] requires TLS without authentication (secure TLSA records, none
//! usable). Those never downgrade to plaintext: the client asks
//! [`TlsPolicy::allows_plaintext_fallback`] and [`TlsPolicy::requires_tls`].
//! [`TlsPolicy::MtaSts`] (RFC 8461 `enforce`, see `mta_sts.rs`) requires TLS with a
//! certificate WebPKI-valid for the MX host name.
//!
//! Opportunistic STARTTLS uses [`AnyCertificate`]: any certificate chain, the handshake
//! signature still verified. Accepting any certificate is right here only because the
//! alternative, under this policy, is cleartext: most MX hosts have certificates that do not
//! validate for the MX name, and refusing them would only push the mail to cleartext.

use std::fmt;
use std::sync::Arc;

use crate::any_certificate::AnyCertificate;
use rustls::pki_types::ServerName;

/// How a transaction to one destination may use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// RFC 7435: STARTTLS when the server offers it, without certificate checks; cleartext
    /// when it is not offered or the handshake fails.
    Opportunistic,
    /// No STARTTLS: the retry in cleartext after a failed opportunistic handshake.
    Plaintext,
    /// RFC 7672 row 10: TLS required, the certificate not checked.
    Encrypt,
    /// RFC 7672: TLS required and the server authenticated against its TLSA records (the
    /// client configuration carries the verifier).
    Dane,
    /// RFC 8461 `enforce`: TLS required and the certificate WebPKI-valid for the MX host name
    /// (the client configuration carries the roots of `[mta_sts] roots`).
    MtaSts,
}

impl TlsPolicy {
    /// Whether STARTTLS is attempted when the server offers it.
    pub fn attempts_starttls(self) -> bool {
        match self {
            TlsPolicy::Opportunistic | TlsPolicy::Encrypt | TlsPolicy::Dane | TlsPolicy::MtaSts => {
                true
            }
            TlsPolicy::Plaintext => false,
        }
    }

    /// Whether a failed TLS handshake may be followed by a cleartext attempt to the same host.
    pub fn allows_plaintext_fallback(self) -> bool {
        match self {
            TlsPolicy::Opportunistic => true,
            TlsPolicy::Plaintext | TlsPolicy::Encrypt | TlsPolicy::Dane | TlsPolicy::MtaSts => {
                false
            }
        }
    }

    /// Whether the transaction must not run without TLS (no STARTTLS offered, STARTTLS
    /// refused or a failed handshake end the session).
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            TlsPolicy::Encrypt | TlsPolicy::Dane | TlsPolicy::MtaSts
        )
    }

    /// Who requires TLS, for error texts: `DANE` or `MTA-STS` (`-` when nobody does).
    pub fn required_by(self) -> &'static str {
        match self {
            TlsPolicy::Encrypt | TlsPolicy::Dane => "DANE",
            TlsPolicy::MtaSts => "MTA-STS",
            TlsPolicy::Opportunistic | TlsPolicy::Plaintext => "-",
        }
    }
}

/// The protection a transaction actually had, for logs and (later) `Received:`/DSN fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS.
    Plaintext,
    /// STARTTLS without authentication of the server.
    Opportunistic {
        /// Negotiated protocol, e.g. `TLSv1.3`.
        version: String,
        /// Negotiated cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
        cipher: String,
    },
    /// TLS with the server authenticated by DANE (RFC 7672).
    Dane {
        /// Negotiated protocol.
        version: String,
        /// Negotiated cipher suite.
        cipher: String,
    },
    /// DANE applied and no host gave an authenticated session (for the log of a deferral).
    DaneFailed,
    /// TLS with the server authenticated by WebPKI under an MTA-STS `enforce` policy.
    MtaSts {
        /// Negotiated protocol.
        version: String,
        /// Negotiated cipher suite.
        cipher: String,
    },
    /// An MTA-STS `enforce` policy applied and no host gave an authenticated session.
    MtaStsFailed,
}

impl TlsMode {
    /// Reads version and cipher suite from an established client connection.
    pub fn opportunistic(conn: &rustls::ClientConnection) -> Self {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_string(),
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| {
                let suite = s.suite();
                suite
                    .as_str()
                    .map_or_else(|| format!("{suite:?}"), str::to_string)
            })
            .unwrap_or_else(|| "unknown".to_string());
        TlsMode::Opportunistic { version, cipher }
    }

    /// The mode of an established connection under `policy`.
    pub fn of(conn: &rustls::ClientConnection, policy: TlsPolicy) -> Self {
        match (Self::opportunistic(conn), policy) {
            (TlsMode::Opportunistic { version, cipher }, TlsPolicy::Dane) => {
                TlsMode::Dane { version, cipher }
            }
            (TlsMode::Opportunistic { version, cipher }, TlsPolicy::MtaSts) => {
                TlsMode::MtaSts { version, cipher }
            }
            (mode, _) => mode,
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsMode::Plaintext => f.write_str("plaintext"),
            TlsMode::Opportunistic { version, cipher } => {
                write!(f, "opportunistic {version} {cipher}")
            }
            TlsMode::Dane { version, cipher } => write!(f, "dane {version} {cipher}"),
            TlsMode::DaneFailed => f.write_str("dane (no authenticated session)"),
            TlsMode::MtaSts { version, cipher } => write!(f, "mta-sts {version} {cipher}"),
            TlsMode::MtaStsFailed => f.write_str("mta-sts (no authenticated session)"),
        }
    }
}

/// A client configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS client configuration: {0}")]
pub struct TlsSetupError(#[from] rustls::Error);

/// The rustls configuration for opportunistic STARTTLS (aws-lc-rs provider, TLS 1.2 and 1.3,
/// no client certificate).
///
/// # Errors
/// Only if the crypto provider cannot do the default protocol versions.
pub fn opportunistic_client_config() -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(AnyCertificate::new(&provider));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name sent in SNI: the MX host name (RFC 7672 section 8.1 does the same for DANE), or
/// the address when the host is an IP literal or not a valid DNS name (rustls then sends no
/// SNI).
pub fn server_name(host: &str, ip: std::net::IpAddr) -> ServerName<'static> {
    let host = host.trim_end_matches('.');
    match ServerName::try_from(host.to_string()) {
        Ok(name) => name,
        Err(_) => ServerName::IpAddress(ip.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_rules() {
        assert!(TlsPolicy::Opportunistic.attempts_starttls());
        assert!(TlsPolicy::Opportunistic.allows_plaintext_fallback());
        assert!(!TlsPolicy::Plaintext.attempts_starttls());
        assert!(!TlsPolicy::Plaintext.allows_plaintext_fallback());
        for strict in [TlsPolicy::Dane, TlsPolicy::Encrypt] {
            assert!(strict.attempts_starttls() && strict.requires_tls());
            assert!(!strict.allows_plaintext_fallback());
        }
        assert!(!TlsPolicy::Opportunistic.requires_tls());
    }

    #[test]
    fn config_builds_and_names_are_chosen() {
        opportunistic_client_config().unwrap();
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        assert!(
            matches!(server_name("mx.example.org.", ip), ServerName::DnsName(n) if n.as_ref() == "mx.example.org")
        );
        assert!(matches!(
            server_name("192.0.2.1", ip),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("bad name", ip),
            ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn modes_display() {
        assert_eq!(TlsMode::Plaintext.to_string(), "plaintext");
        let m = TlsMode::Opportunistic {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        };
        assert_eq!(
            m.to_string(),
            "opportunistic TLSv1.3 TLS13_AES_128_GCM_SHA256"
        );
    }
}
