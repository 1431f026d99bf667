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
//! Trust anchors (`[dns] trust_anchor`): the file and the DS-to-DNSKEY match are in
//! [`crate::dnssec`], parsed once by `config`; a DS line is resolved to its key when the
//! resolver is built (`mx::build_resolver`). Fail-closed: a failed lookup, or no matching key,
//! leaves the worker without a resolver (every delivery deferred, an error log naming the
//! anchor file and owner) and the next destination tries again; never a resolver without the
//! anchor. An unparsable file is a configuration error at load (exit 2, `dns.trust_anchor`).
//!
//! Layout: `tlsa.rs` holds the records, their lookup and classification (rows 8-11, 17-18);
//! `verify.rs` the certificate verifier (rows 13-16); this file the per-host decision
//! ([`host_tls`]); the tests of both are in `tests.rs`.
//!
//! Not done: DANE-TA(2) records with
//! selector 1 and matching 0 whose key is not in the presented chain (a bare public key as
//! trust anchor); a DANE-TA(2) record matching the leaf itself; the subject CN as a fallback
//! reference identifier when a certificate has no DNS SANs; DANE for `[delivery] relayhost`
//! (the relay host is the operator's, as Postfix's non-`dane` relay levels); TLSA lookups use
//! port 25 (`_25._tcp`) whatever `[delivery] port` says (that key exists for tests).

mod tlsa;
mod verify;

pub use tlsa::{
    DANE_EE, DANE_TA, Tlsa, TlsaAnswer, classify_tlsa, lookup_tlsa, rrset_security, spki,
    usable_records,
};
pub use verify::{DaneError, DaneVerifier, client_config};

use std::sync::Arc;

use hickory_resolver::TokioResolver;

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
mod tests;
