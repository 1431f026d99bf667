//! DANE for SMTP (RFC 7672, with RFC 7671 and RFC 6698): which MX hosts must be reached over
//! authenticated TLS, and the certificate verifier that authenticates them against TLSA
//! records.
//!
//! The resolver validates DNSSEC (`[dns] dnssec`, `[dns] trust_anchor`, see `mx.rs`); every
//! answer used below is *secure*, *insecure* or *bogus* (a bogus answer comes back from
//! hickory as an error; records carry their `proof`). With `dnssec = false` nothing is secure
//! and DANE never applies.
//!
//! # Decision table
//!
//! Per destination domain, then per MX host. "Skip host" means: no connection to any address
//! of that host, try the next MX host; when no host delivers, the recipients are deferred
//! (4.7.5 for DANE failures, 4.4.3 for DNS failures) and retried. Never is a host where DANE
//! applies given cleartext or unauthenticated TLS.
//!
//! | # | situation | action | RFC |
//! |---|---|---|---|
//! | 1 | MX lookup bogus (or fails: SERVFAIL, timeout) | defer the whole domain | 7672 2.2.1 |
//! | 2 | MX RRset insecure | no TLSA lookups; opportunistic TLS for every host | 7672 2.2.1 |
//! | 3 | MX RRset secure | TLSA lookup per host (rows 5-13) | 7672 2.2.1 |
//! | 4 | no MX, secure denial (NSEC/NSEC3): implicit MX = the domain | the domain is a host as in row 3; insecure denial as row 2 | 7672 2.2.1 |
//! | 5 | host's A/AAAA lookup bogus (or fails) | skip host | 7672 2.2.2 |
//! | 6 | host's A/AAAA RRsets insecure (including an insecure CNAME on the way) | no TLSA lookup; opportunistic TLS | 7672 2.2.2 |
//! | 7 | host's A/AAAA secure, reached through a secure CNAME chain | TLSA at `_25._tcp.` the expanded name; when that has none, at the original name; both names are reference identifiers | 7672 2.2.3 |
//! | 8 | TLSA lookup bogus, SERVFAIL or timeout | skip host | 7672 2.2 |
//! | 9 | TLSA NXDOMAIN/NODATA, or TLSA RRset insecure | no DANE for the host: opportunistic TLS | 7672 2.2 |
//! | 10 | secure TLSA RRset, no usable record (only PKIX-TA(0)/PKIX-EE(1), unknown selector or matching type, malformed digest) | TLS mandatory, not authenticated ("encrypt"): no STARTTLS or a failed handshake skips the host; logged `opportunistic` (the certificate is not checked) | 7672 2.2, 3.1.3 |
//! | 11 | secure TLSA RRset with usable records | TLS mandatory and authenticated; SNI = the MX host name; logged `dane` | 7672 2.2, 8.1 |
//! | 12 | (11) and no STARTTLS offered, STARTTLS refused, or the handshake fails | skip host (metric reason `starttls_not_offered`, `starttls_refused`, `handshake`) | 7672 2.2 |
//! | 13 | (11) and the certificate matches no usable record | skip host (`tlsa_mismatch`) | 7672 3.1 |
//! | 14 | DANE-EE(3): leaf matches (selector 0 full certificate, 1 SPKI; matching 0 exact, 1 SHA2-256, 2 SHA2-512) | authenticated; names and validity dates are not checked | 7672 3.1.1, 7671 5.1 |
//! | 15 | DANE-TA(2): a certificate of the presented chain matches; the leaf chains to it (signatures, validity dates of leaf and intermediates, serverAuth) and names a reference identifier | authenticated | 7672 3.1.2, 3.2.2, 7671 5.2 |
//! | 16 | DANE-TA(2) chain fine but no reference identifier in the certificate's DNS SANs (wildcard `*.` for one left-most label allowed) | skip host (`name_mismatch`) | 7672 3.2.2 |
//! | 17 | several digests for one usage and selector | only the strongest present is used (SHA2-512 over SHA2-256); full (0) records always | 7671 9 |
//! | 18 | PKIX-TA(0), PKIX-EE(1) | unusable, ignored | 7672 3.1.3 |
//!
//! Reference identifiers for DANE-TA (RFC 7672 3.2.2): the MX host name, its CNAME-expanded
//! name when row 7 applies, and the destination (next-hop) domain, which the secure MX RRset
//! ties to the host.
//!
//! Trust anchors (`[dns] trust_anchor`, [`load_trust_anchors`]): a file of DNSKEY and DS lines
//! in zone-file syntax, any owner name. DNSKEY lines are anchors as they are. hickory only
//! takes keys, so a DS line is resolved when the resolver is built (`mx::build_resolver`):
//! the owner's DNSKEY RRset is asked from the configured servers without validation, and
//! each key whose key tag, algorithm and digest (RFC 4034 5.1.4; digest types 2 SHA-256 and
//! 4 SHA-384, SHA-1 refused as RFC 8624 3.3 advises) match one of that owner's DS lines is an
//! anchor ([`ds_anchor_keys`]); hickory then verifies the DNSKEY RRset's signatures with it
//! as with a configured key. Fail-closed: a failed lookup, or no matching key, leaves the
//! worker without a resolver (every delivery deferred, an error log naming the anchor file
//! and owner) and the next destination tries again; never a resolver without the anchor.
//! An unparsable file is a configuration error at load (exit 2, `dns.trust_anchor`).
//!
//! Not done: DANE-TA(2) records with
//! selector 1 and matching 0 whose key is not in the presented chain (a bare public key as
//! trust anchor); a DANE-TA(2) record matching the leaf itself; the subject CN as a fallback
//! reference identifier when a certificate has no DNS SANs; DANE for `[delivery] relayhost`
//! (the relay host is the operator's, as Postfix's non-`dane` relay levels); TLSA lookups use
//! port 25 (`_25._tcp`) whatever `[delivery] port` says (that key exists for tests).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use aws_lc_rs::digest;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::dnssec::rdata::{DNSKEY, DNSSECRData, DS};
use hickory_resolver::proto::dnssec::{DigestType, Proof, PublicKey, TrustAnchors};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use super::mx::{LookupFailure, classify_lookup_error};

/// Certificate usage DANE-TA(2).
pub const DANE_TA: u8 = 2;
/// Certificate usage DANE-EE(3).
pub const DANE_EE: u8 = 3;

/// `[dns] trust_anchor` as read: the keys of its DNSKEY lines, and its DS lines, whose keys are
/// only known once the owner's DNSKEY RRset has been fetched (`mx::build_resolver`, with
/// [`ds_anchor_keys`]).
#[derive(Clone)]
pub struct TrustAnchorFile {
    /// The DNSKEY lines' keys (empty when the file has none).
    pub keys: TrustAnchors,
    /// The DS lines, each with its owner name.
    pub ds: Vec<(Name, DS)>,
}

/// Reads `[dns] trust_anchor`: DNSKEY and DS records in zone-file syntax (any owner name).
///
/// # Errors
/// A one-line reason (unreadable, no DNSKEY or DS, unparsable, DS digest type not accepted).
pub fn load_trust_anchors(path: &Path) -> Result<TrustAnchorFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_trust_anchors(&text)
}

/// Parses trust anchor text (see [`load_trust_anchors`]). DS lines need digest type 2
/// (SHA-256) or 4 (SHA-384): SHA-1 (1) is refused (RFC 8624 section 3.3), unknown types too.
///
/// # Errors
/// A one-line reason.
pub fn parse_trust_anchors(text: &str) -> Result<TrustAnchorFile, String> {
    let records = text
        .lines()
        .map(|l| l.split(';').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('$'));
    // Each record as `OWNER TTL IN DNSKEY ...` (hickory's parser wants TTL and class; dig and
    // keymgr may leave them out).
    let mut canonical = String::new();
    let mut ds = Vec::new();
    for line in records {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words
            .iter()
            .position(|w| w.eq_ignore_ascii_case("DNSKEY") || w.eq_ignore_ascii_case("DS"))
        else {
            return Err(format!("not a DNSKEY or DS record: {line}"));
        };
        let kind = words[at].to_ascii_uppercase();
        if at == 0 {
            return Err(format!("{kind} record without owner name: {line}"));
        }
        let owner = words[0];
        let dot = if owner.ends_with('.') { "" } else { "." };
        if kind == "DS" {
            let name = Name::from_ascii(format!("{owner}{dot}"))
                .map_err(|e| format!("invalid owner name in DS record: {line}: {e}"))?;
            ds.push((name, parse_ds(&words[at + 1..].join(" "), line)?));
            continue;
        }
        canonical.push_str(&format!(
            "{owner}{dot} 3600 IN DNSKEY {}\n",
            words[at + 1..].join(" ")
        ));
    }
    if canonical.is_empty() && ds.is_empty() {
        return Err("no DNSKEY or DS record found".into());
    }
    let keys = if canonical.is_empty() {
        TrustAnchors::empty()
    } else {
        TrustAnchors::from_str(&canonical).map_err(|e| format!("invalid DNSKEY records: {e}"))?
    };
    Ok(TrustAnchorFile { keys, ds })
}

/// The RDATA of a DS line (`TAG ALGORITHM DIGEST-TYPE HEX`).
fn parse_ds(rdata: &str, line: &str) -> Result<DS, String> {
    let ds = match RData::try_from_str(RecordType::DS, rdata) {
        Ok(RData::DNSSEC(DNSSECRData::DS(ds))) => ds,
        Ok(_) => return Err(format!("invalid DS record: {line}")),
        Err(e) => return Err(format!("invalid DS record: {line}: {e}")),
    };
    let want = match ds.digest_type() {
        DigestType::SHA256 => 32,
        DigestType::SHA384 => 48,
        other => {
            return Err(format!(
                "DS digest type {} is not accepted (use 2, SHA-256, or 4, SHA-384): {line}",
                u8::from(other)
            ));
        }
    };
    if ds.digest().len() != want
        || rdata.split_whitespace().skip(3).collect::<String>().len() != 2 * want
    {
        return Err(format!(
            "DS digest has the wrong length for its type: {line}"
        ));
    }
    if !ds.algorithm().is_supported() {
        return Err(format!(
            "DS algorithm {} is not supported: {line}",
            u8::from(ds.algorithm())
        ));
    }
    Ok(ds)
}

/// Whether `key`, a DNSKEY of `owner`, is the key `ds` names (RFC 4034 section 5.1): a zone
/// key, not revoked, with the DS's key tag and algorithm, whose digest (section 5.1.4: over
/// the owner name in canonical wire form followed by the DNSKEY RDATA) is the DS's digest.
pub fn ds_matches(owner: &Name, ds: &DS, key: &DNSKEY) -> bool {
    key.zone_key()
        && !key.revoke()
        && key.public_key().algorithm() == ds.algorithm()
        && key.calculate_key_tag().is_ok_and(|tag| tag == ds.key_tag())
        && ds.covers(owner, key).unwrap_or(false)
}

/// The keys of `dnskeys` (the DNSKEY RRset of `owner`) that some DS of `ds` names.
pub fn ds_anchor_keys<'k>(owner: &Name, ds: &[&DS], dnskeys: &'k [DNSKEY]) -> Vec<&'k DNSKEY> {
    dnskeys
        .iter()
        .filter(|key| ds.iter().any(|d| ds_matches(owner, d, key)))
        .collect()
}

/// One TLSA record (RFC 6698 section 2.1) as numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// 0 full certificate, 1 SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 exact, 1 SHA2-256, 2 SHA2-512.
    pub matching: u8,
    /// Certificate association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether an SMTP client can use the record (RFC 7672 3.1.3, RFC 6698 7.2-7.4).
    pub fn is_usable(&self) -> bool {
        matches!(self.usage, DANE_TA | DANE_EE)
            && matches!(self.selector, 0 | 1)
            && match self.matching {
                0 => !self.data.is_empty(),
                1 => self.data.len() == 32,
                2 => self.data.len() == 64,
                _ => false,
            }
    }

    /// Whether the certificate (DER) matches the record's selector and matching type.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => cert.as_ref().to_vec(),
            1 => match spki(cert) {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data,
            1 => digest::digest(&digest::SHA256, &selected).as_ref() == self.data.as_slice(),
            2 => digest::digest(&digest::SHA512, &selected).as_ref() == self.data.as_slice(),
            _ => false,
        }
    }
}

impl fmt::Display for Tlsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for b in &self.data {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The DER SubjectPublicKeyInfo of a certificate.
pub fn spki(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let anchor = webpki::anchor_from_trusted_cert(cert).ok()?;
    Some(webpki::spki_for_anchor(&anchor).as_ref().to_vec())
}

/// The usable records of an RRset, with digest algorithm agility (RFC 7671 section 9): for
/// each usage and selector, only the strongest digest present counts.
pub fn usable_records(records: &[Tlsa]) -> Vec<Tlsa> {
    let usable: Vec<&Tlsa> = records.iter().filter(|r| r.is_usable()).collect();
    usable
        .iter()
        .filter(|r| {
            r.matching == 0
                || !usable.iter().any(|o| {
                    o.usage == r.usage
                        && o.selector == r.selector
                        && o.matching != 0
                        && o.matching > r.matching
                })
        })
        .map(|r| (*r).clone())
        .collect()
}

/// What the TLSA lookup of a host means for delivery (decision table rows 8-11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaAnswer {
    /// No secure TLSA records: opportunistic TLS (rows 6, 9).
    NoDane,
    /// Secure TLSA records, none usable: mandatory unauthenticated TLS (row 10).
    Unusable,
    /// Usable records: mandatory authenticated TLS (row 11).
    Dane(Vec<Tlsa>),
    /// The lookup failed or was bogus: skip the host (row 8).
    Failed {
        /// DNSSEC validation failed (as opposed to SERVFAIL, timeout).
        bogus: bool,
        /// For logs and the delivery log.
        detail: String,
    },
}

/// DNSSEC status of an RRset from its records' proofs: all secure is secure, any bogus is
/// bogus (`None`), the rest insecure (an unvalidated answer's `Indeterminate` included).
pub fn rrset_security(proofs: impl IntoIterator<Item = Proof>) -> Option<bool> {
    let mut secure = true;
    let mut any = false;
    for proof in proofs {
        any = true;
        match proof {
            Proof::Secure => {}
            Proof::Bogus => return None,
            _ => secure = false,
        }
    }
    Some(any && secure)
}

/// Rows 9-11 from a TLSA answer's records and their proofs.
pub fn classify_tlsa(records: &[(Tlsa, Proof)]) -> TlsaAnswer {
    match rrset_security(records.iter().map(|(_, p)| *p)) {
        None => TlsaAnswer::Failed {
            bogus: true,
            detail: "TLSA records are bogus (DNSSEC validation failed)".into(),
        },
        Some(false) => TlsaAnswer::NoDane,
        Some(true) => {
            let all: Vec<Tlsa> = records.iter().map(|(t, _)| t.clone()).collect();
            let usable = usable_records(&all);
            if usable.is_empty() {
                TlsaAnswer::Unusable
            } else {
                TlsaAnswer::Dane(usable)
            }
        }
    }
}

/// Looks up `_25._tcp.HOST` TLSA (the resolver follows a CNAME there itself).
pub async fn lookup_tlsa(resolver: &TokioResolver, host: &str) -> TlsaAnswer {
    let text = format!("_25._tcp.{}.", host.trim_end_matches('.'));
    let Ok(name) = Name::from_utf8(&text) else {
        return TlsaAnswer::NoDane;
    };
    match resolver.tlsa_lookup(name).await {
        Ok(lookup) => {
            // Every record of the answer counts, a CNAME on the way to the TLSA RRset too.
            let proofs: Vec<Proof> = lookup.answers().iter().map(|r| r.proof).collect();
            let records: Vec<(Tlsa, Proof)> = lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::TLSA(t) => Some((
                        Tlsa {
                            usage: u8::from(t.cert_usage),
                            selector: u8::from(t.selector),
                            matching: u8::from(t.matching),
                            data: t.cert_data.clone(),
                        },
                        record.proof,
                    )),
                    _ => None,
                })
                .collect();
            match rrset_security(proofs) {
                None => TlsaAnswer::Failed {
                    bogus: true,
                    detail: format!("{text} TLSA is bogus (DNSSEC validation failed)"),
                },
                Some(false) => TlsaAnswer::NoDane,
                Some(true) if records.is_empty() => TlsaAnswer::NoDane,
                Some(true) => classify_tlsa(&records),
            }
        }
        Err(e) => match classify_lookup_error(&e) {
            LookupFailure::NxDomain | LookupFailure::NoData => TlsaAnswer::NoDane,
            LookupFailure::Bogus => TlsaAnswer::Failed {
                bogus: true,
                detail: format!("DNS lookup of {text} TLSA: DNSSEC validation failed (bogus)"),
            },
            LookupFailure::Temporary(detail) => TlsaAnswer::Failed {
                bogus: false,
                detail: format!("DNS lookup of {text} TLSA failed: {detail}"),
            },
        },
    }
}

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

/// How one MX host is to be reached (decision table rows 5-11).
#[derive(Debug, Clone)]
pub enum HostTls {
    /// Rows 2, 6, 9: opportunistic TLS with the shared configuration.
    Opportunistic,
    /// Row 10: TLS required, not authenticated (the shared opportunistic configuration).
    Encrypt,
    /// Row 11: TLS required and authenticated with this configuration.
    Dane(Arc<rustls::ClientConfig>),
    /// Row 8: the host is skipped.
    Skip {
        /// DNSSEC said bogus.
        bogus: bool,
        /// Why.
        detail: String,
    },
}

/// The TLS decision for one host: `dane_route` is true when the MX RRset (or the implicit
/// MX's denial) was secure, `secure_addresses` whether the host's address answers were;
/// `canonical` the CNAME-expanded host name; `domain` the destination domain.
pub async fn host_tls(
    resolver: &TokioResolver,
    dane_route: bool,
    host: &str,
    secure_addresses: bool,
    canonical: Option<&str>,
    domain: &str,
) -> HostTls {
    if !dane_route || !secure_addresses {
        return HostTls::Opportunistic;
    }
    let mut names = vec![host.to_string()];
    // Row 7: the expanded name first, then the original.
    let mut policy = TlsaAnswer::NoDane;
    if let Some(expanded) = canonical {
        names.push(expanded.to_string());
        policy = lookup_tlsa(resolver, expanded).await;
    }
    if policy == TlsaAnswer::NoDane {
        policy = lookup_tlsa(resolver, host).await;
    }
    if !names.iter().any(|n| n.eq_ignore_ascii_case(domain)) {
        names.push(domain.to_string());
    }
    match policy {
        TlsaAnswer::NoDane => HostTls::Opportunistic,
        TlsaAnswer::Unusable => HostTls::Encrypt,
        TlsaAnswer::Failed { bogus, detail } => HostTls::Skip { bogus, detail },
        TlsaAnswer::Dane(records) => match client_config(records, names) {
            Ok(config) => HostTls::Dane(config),
            Err(e) => HostTls::Skip {
                bogus: false,
                detail: format!("DANE TLS configuration: {e}"),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        PublicKeyData,
    };

    fn sha256(data: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, data).as_ref().to_vec()
    }

    fn sha512(data: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA512, data).as_ref().to_vec()
    }

    fn tlsa(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    /// A self-signed leaf for `name` and its key.
    fn self_signed(name: &str) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.der().clone(), key)
    }

    /// A CA and a leaf for `name` issued by it: (leaf, CA certificate, CA key).
    fn ca_and_leaf(name: &str) -> (CertificateDer<'static>, CertificateDer<'static>, KeyPair) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
        (leaf.der().clone(), ca.der().clone(), ca_key)
    }

    fn verifier(records: Vec<Tlsa>, names: &[&str]) -> DaneVerifier {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        DaneVerifier::new(
            records,
            names.iter().map(|n| n.to_string()).collect(),
            provider,
        )
    }

    #[test]
    fn spki_is_the_keys_der() {
        let (cert, key) = self_signed("mx.example.org");
        assert_eq!(spki(&cert).unwrap(), key.subject_public_key_info());
    }

    #[test]
    fn dane_ee_matches_spki_or_certificate_with_every_matching_type() {
        let (cert, key) = self_signed("whatever.invalid");
        let spki = key.subject_public_key_info();
        for record in [
            tlsa(3, 1, 1, sha256(&spki)),
            tlsa(3, 1, 2, sha512(&spki)),
            tlsa(3, 1, 0, spki.clone()),
            tlsa(3, 0, 1, sha256(cert.as_ref())),
            tlsa(3, 0, 2, sha512(cert.as_ref())),
            tlsa(3, 0, 0, cert.as_ref().to_vec()),
        ] {
            assert!(record.is_usable(), "{record}");
            assert!(record.matches(&cert), "{record}");
            // Row 14: names and dates are not checked for DANE-EE.
            verifier(vec![record.clone()], &["mx.example.org"])
                .check(&cert, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{record}: {e}"));
        }
    }

    #[test]
    fn dane_ee_ignores_expiry() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["mx.example.org".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        let cert = params.self_signed(&key).unwrap().der().clone();
        let record = tlsa(3, 1, 1, sha256(&key.subject_public_key_info()));
        assert!(
            verifier(vec![record], &[])
                .check(&cert, &[], UnixTime::now())
                .is_ok()
        );
    }

    #[test]
    fn no_match_is_refused() {
        let (cert, _) = self_signed("mx.example.org");
        let (_, other) = self_signed("mx.example.org");
        let record = tlsa(3, 1, 1, sha256(&other.subject_public_key_info()));
        assert!(!record.matches(&cert));
        let e = verifier(vec![record], &["mx.example.org"])
            .check(&cert, &[], UnixTime::now())
            .unwrap_err();
        assert_eq!(e, DaneError::NoMatch);
        assert_eq!(e.reason(), "tlsa_mismatch");
    }

    #[test]
    fn dane_ta_needs_the_chain_and_a_reference_name() {
        let (leaf, ca, ca_key) = ca_and_leaf("mx.example.org");
        let ta = tlsa(2, 1, 1, sha256(&ca_key.subject_public_key_info()));
        let now = UnixTime::now();
        let chain = [ca.clone()];
        // Row 15: chain to the TA, the MX name in the SAN.
        verifier(vec![ta.clone()], &["mx.example.org", "example.org"])
            .check(&leaf, &chain, now)
            .unwrap();
        // The destination domain as a reference identifier (RFC 7672 3.2.2).
        let (leaf2, ca2, ca2_key) = ca_and_leaf("example.org");
        let ta2 = tlsa(2, 0, 1, sha256(ca2.as_ref()));
        let _ = ca2_key;
        verifier(vec![ta2], &["mx.example.org", "example.org"])
            .check(&leaf2, &[ca2], now)
            .unwrap();
        // Row 16: chain fine, no reference name.
        let e = verifier(vec![ta.clone()], &["mx.other.org", "other.org"])
            .check(&leaf, &chain, now)
            .unwrap_err();
        assert!(matches!(e, DaneError::NameMismatch(_)), "{e}");
        assert_eq!(e.reason(), "name_mismatch");
        // The TA must be in the presented chain.
        assert_eq!(
            verifier(vec![ta.clone()], &["mx.example.org"])
                .check(&leaf, &[], now)
                .unwrap_err(),
            DaneError::NoMatch
        );
        // A DANE-TA record never authenticates the leaf as if it were DANE-EE.
        let leaf_as_ta = tlsa(2, 0, 1, sha256(leaf.as_ref()));
        assert_eq!(
            verifier(vec![leaf_as_ta], &["mx.example.org"])
                .check(&leaf, &[], now)
                .unwrap_err(),
            DaneError::NoMatch
        );
    }

    #[test]
    fn dane_ta_chain_must_verify() {
        // The TA record names a CA that is in the chain, but the leaf was issued by another.
        let (leaf, _ca, _) = ca_and_leaf("mx.example.org");
        let (_, unrelated_ca, unrelated_key) = ca_and_leaf("x.example");
        let ta = tlsa(2, 1, 1, sha256(&unrelated_key.subject_public_key_info()));
        let e = verifier(vec![ta], &["mx.example.org"])
            .check(&leaf, &[unrelated_ca], UnixTime::now())
            .unwrap_err();
        assert!(matches!(e, DaneError::Chain(_)), "{e}");
        assert_eq!(e.reason(), "tlsa_mismatch");
    }

    #[test]
    fn wildcard_names_match_one_label() {
        let (leaf, ca, ca_key) = ca_and_leaf("*.example.org");
        let ta = tlsa(2, 1, 1, sha256(&ca_key.subject_public_key_info()));
        let chain = [ca];
        let now = UnixTime::now();
        assert!(
            verifier(vec![ta.clone()], &["mx.example.org"])
                .check(&leaf, &chain, now)
                .is_ok()
        );
        assert!(
            verifier(vec![ta], &["a.mx.example.org"])
                .check(&leaf, &chain, now)
                .is_err()
        );
    }

    #[test]
    fn usability() {
        let d32 = vec![0u8; 32];
        assert!(tlsa(3, 1, 1, d32.clone()).is_usable());
        assert!(tlsa(2, 0, 1, d32.clone()).is_usable());
        // Row 18: PKIX usages; unknown selector/matching; wrong digest length.
        assert!(!tlsa(0, 1, 1, d32.clone()).is_usable());
        assert!(!tlsa(1, 1, 1, d32.clone()).is_usable());
        assert!(!tlsa(4, 1, 1, d32.clone()).is_usable());
        assert!(!tlsa(3, 2, 1, d32.clone()).is_usable());
        assert!(!tlsa(3, 1, 3, d32.clone()).is_usable());
        assert!(!tlsa(3, 1, 1, vec![0u8; 31]).is_usable());
        assert!(!tlsa(3, 1, 2, d32.clone()).is_usable());
        assert!(!tlsa(3, 1, 0, vec![]).is_usable());
    }

    #[test]
    fn digest_agility_keeps_the_strongest() {
        let r256 = tlsa(3, 1, 1, vec![1; 32]);
        let r512 = tlsa(3, 1, 2, vec![2; 64]);
        let full = tlsa(3, 1, 0, vec![3; 10]);
        let ta256 = tlsa(2, 1, 1, vec![4; 32]);
        let kept = usable_records(&[
            r256.clone(),
            r512.clone(),
            full.clone(),
            ta256.clone(),
            tlsa(1, 1, 2, vec![5; 64]),
        ]);
        assert_eq!(kept, vec![r512, full, ta256.clone()]);
        assert_eq!(usable_records(std::slice::from_ref(&r256)), vec![r256]);
    }

    #[test]
    fn tlsa_rrset_classification() {
        let ee = tlsa(3, 1, 1, vec![1; 32]);
        let pkix = tlsa(1, 1, 1, vec![1; 32]);
        // Row 11.
        assert_eq!(
            classify_tlsa(&[(ee.clone(), Proof::Secure)]),
            TlsaAnswer::Dane(vec![ee.clone()])
        );
        // Row 10.
        assert_eq!(
            classify_tlsa(&[(pkix.clone(), Proof::Secure)]),
            TlsaAnswer::Unusable
        );
        // Row 9: insecure (or unvalidated) records are not used.
        assert_eq!(
            classify_tlsa(&[(ee.clone(), Proof::Insecure)]),
            TlsaAnswer::NoDane
        );
        assert_eq!(
            classify_tlsa(&[(ee.clone(), Proof::Indeterminate)]),
            TlsaAnswer::NoDane
        );
        assert_eq!(
            classify_tlsa(&[(ee.clone(), Proof::Secure), (pkix, Proof::Insecure)]),
            TlsaAnswer::NoDane
        );
        // Row 8.
        assert!(matches!(
            classify_tlsa(&[(ee, Proof::Bogus)]),
            TlsaAnswer::Failed { bogus: true, .. }
        ));
    }

    #[test]
    fn rrset_security_rules() {
        assert_eq!(rrset_security([Proof::Secure, Proof::Secure]), Some(true));
        assert_eq!(
            rrset_security([Proof::Secure, Proof::Insecure]),
            Some(false)
        );
        assert_eq!(rrset_security([Proof::Indeterminate]), Some(false));
        assert_eq!(rrset_security([]), Some(false));
        assert_eq!(rrset_security([Proof::Secure, Proof::Bogus]), None);
    }

    #[test]
    fn dane_error_survives_the_rustls_and_io_wrapping() {
        let (cert, _) = self_signed("mx.example.org");
        let v = verifier(vec![tlsa(3, 1, 1, vec![0; 32])], &["mx.example.org"]);
        let name = ServerName::try_from("mx.example.org").unwrap();
        let err = v
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        assert_eq!(DaneError::from_io(&io), Some(DaneError::NoMatch));
        assert_eq!(DaneError::from_io(&std::io::Error::other("x")), None);
    }

    #[test]
    fn trust_anchor_text() {
        assert!(parse_trust_anchors("; nothing\n").is_err());
        assert!(parse_trust_anchors("lab. A 127.0.0.1\n").is_err());
        let key = "lab. 3600 IN DNSKEY 257 3 15 BL4vzcaEuW7hnGlz6YsU0YiRqNRFvOMMxzxkZYwlaUc=\n";
        let file = parse_trust_anchors(key).unwrap();
        assert!(file.ds.is_empty());
        // keymgr's form: no TTL, no class.
        let key = "lab. DNSKEY 257 3 15 BL4vzcaEuW7hnGlz6YsU0YiRqNRFvOMMxzxkZYwlaUc= ; KSK\n";
        parse_trust_anchors(key).unwrap();
    }

    /// keymgr's output for one ed25519 KSK of `lab.` (knot 3): its DNSKEY and both DS lines.
    const LAB_DNSKEY: &str = "OPFiRjIJSJKSXmW1J7SqChYIOaaFouKePXlFXCAlmnA=";
    const LAB_DS: &str = "lab. DS 55568 15 2 8e98ee9b4c2c47e3817bc76d75071237a8ccba6d1dcca7a6a04bbdbd2f5d7ff6
lab. 3600 IN DS 55568 15 4 4472dab90b3dc39b7c952378a635db06d34935449c4636737bd5bfd0abeb769d2f827461c6231876d6dd109a3dfdfc00
";

    fn lab_key(flags: u16) -> DNSKEY {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(LAB_DNSKEY)
            .unwrap();
        DNSKEY::with_flags(
            flags,
            hickory_resolver::proto::dnssec::PublicKeyBuf::new(
                bytes,
                hickory_resolver::proto::dnssec::Algorithm::ED25519,
            ),
        )
    }

    #[test]
    fn ds_lines_parse() {
        let file = parse_trust_anchors(LAB_DS).unwrap();
        assert!(file.keys.is_empty());
        let lab = Name::from_ascii("lab.").unwrap();
        assert_eq!(file.ds.len(), 2);
        assert!(
            file.ds
                .iter()
                .all(|(owner, ds)| *owner == lab && ds.key_tag() == 55568)
        );
        assert_eq!(file.ds[0].1.digest_type(), DigestType::SHA256);
        assert_eq!(file.ds[1].1.digest_type(), DigestType::SHA384);
        // DS and DNSKEY lines together; an owner without the final dot.
        let mixed = format!("lab DNSKEY 257 3 15 {LAB_DNSKEY}\n{LAB_DS}");
        let file = parse_trust_anchors(&mixed).unwrap();
        assert_eq!(file.ds.len(), 2);
        let bad = [
            "lab. DS 4711 15 2 0000",                                     // short digest
            "lab. DS 4711 15 1 00112233445566778899aabbccddeeff00112233", // SHA-1
            "lab. DS 4711 15 3 00",                                       // GOST / unknown
            "lab. DS 4711 15 2 zz",                                       // not hex
            "lab. DS 4711 15 2",                                          // no digest
            "DS 4711 15 2 00",                                            // no owner
            "lab. DS 4711 200 2 8e98ee9b4c2c47e3817bc76d75071237a8ccba6d1dcca7a6a04bbdbd2f5d7ff6",
        ];
        for line in bad {
            assert!(parse_trust_anchors(line).is_err(), "{line}");
        }
        let odd =
            "lab. DS 4711 15 2 8e98ee9b4c2c47e3817bc76d75071237a8ccba6d1dcca7a6a04bbdbd2f5d7ff6f";
        assert!(parse_trust_anchors(odd).is_err());
    }

    #[test]
    fn ds_digest_matches_keymgr_vector() {
        let lab = Name::from_ascii("lab.").unwrap();
        let key = lab_key(257);
        assert_eq!(key.calculate_key_tag().unwrap(), 55568);
        let file = parse_trust_anchors(LAB_DS).unwrap();
        for (owner, ds) in &file.ds {
            assert_eq!(
                key.to_digest(owner, ds.digest_type()).unwrap().as_ref(),
                ds.digest()
            );
            assert!(ds_matches(owner, ds, &key));
            // The owner name is part of the digest, case-insensitively.
            assert!(ds_matches(&Name::from_ascii("LAB.").unwrap(), ds, &key));
            assert!(!ds_matches(&Name::from_ascii("other.").unwrap(), ds, &key));
        }
        // Flags are in the digest and the key tag: the same key as a ZSK (256) is not named;
        // a key without the zone flag is never an anchor.
        let ds: Vec<&DS> = file.ds.iter().map(|(_, d)| d).collect();
        let keys = [lab_key(256), lab_key(1), key.clone()];
        let matched = ds_anchor_keys(&lab, &ds, &keys);
        assert_eq!(matched, vec![&key]);
        assert!(ds_anchor_keys(&lab, &ds, &keys[..2]).is_empty());
        // A DS with a changed digest, key tag or algorithm names nothing.
        let d = &file.ds[0].1;
        let mut digest = d.digest().to_vec();
        digest[0] ^= 1;
        let changed = [
            DS::new(d.key_tag(), d.algorithm(), d.digest_type(), digest),
            DS::new(
                d.key_tag() ^ 1,
                d.algorithm(),
                d.digest_type(),
                d.digest().to_vec(),
            ),
            DS::new(
                d.key_tag(),
                hickory_resolver::proto::dnssec::Algorithm::ECDSAP256SHA256,
                d.digest_type(),
                d.digest().to_vec(),
            ),
        ];
        for ds in &changed {
            assert!(!ds_matches(&lab, ds, &key), "{ds}");
        }
    }

    /// The root KSK-2017 (hickory's compiled-in root anchor) and its published DS.
    #[test]
    fn ds_digest_root_ksk_2017() {
        let anchors = TrustAnchors::default();
        let public = anchors.get(0).unwrap().clone();
        let key = DNSKEY::with_flags(257, public);
        assert_eq!(key.calculate_key_tag().unwrap(), 20326);
        let file = parse_trust_anchors(
            ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D",
        )
        .unwrap();
        let (root, ds) = &file.ds[0];
        assert!(root.is_root());
        assert!(ds_matches(root, ds, &key));
        assert_eq!(
            ds_anchor_keys(root, &[ds], std::slice::from_ref(&key)),
            vec![&key]
        );
    }
}
