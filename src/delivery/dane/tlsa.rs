//! TLSA records (RFC 6698 section 2.1) for DANE: their usability, digest agility, matching a
//! certificate, the DNSSEC status of an answer, and the lookup that turns into a
//! [`TlsaAnswer`] (decision table rows 8-11, 17, 18 in `dane/mod.rs`).

use std::fmt;

use aws_lc_rs::digest;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::rr::{Name, RData};
use rustls::pki_types::CertificateDer;

use crate::delivery::mx::{LookupFailure, classify_lookup_error};

/// Certificate usage DANE-TA(2).
pub const DANE_TA: u8 = 2;
/// Certificate usage DANE-EE(3).
pub const DANE_EE: u8 = 3;

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
