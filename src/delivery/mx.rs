//! Where mail for a domain goes: MX lookup, ordering, and the addresses of each host.
//!
//! Follows RFC 5321 section 5.1:
//! - MX records are tried in order of preference, lowest first; hosts of equal preference in
//!   random order, so load spreads over them;
//! - a domain without MX records (the name exists, NODATA) has an implicit MX: the domain
//!   itself, preference 0, with its own A/AAAA records;
//! - a nonexistent domain (NXDOMAIN) is a permanent failure;
//! - RFC 7505: a "null MX" (the only MX target is the root, `0 .`) means the domain accepts no
//!   mail, a permanent failure (status 5.1.10). A root target next to real MX hosts is
//!   ignored and the real hosts are used;
//! - SERVFAIL, REFUSED, timeouts and anything else are temporary: the mail stays queued.
//!
//! Addresses: A and AAAA are asked in parallel. IPv4 addresses come first, then IPv6:
//! hosting networks reliably have IPv4 egress with matching PTR and SPF, and an unreachable
//! IPv6 path fails fast and falls through to the next address anyway.
//!
//! The decisions are pure functions ([`order_mx`], [`classify_lookup_error`],
//! [`address_literal`]) so they are unit tested; [`lookup_mx`] and [`lookup_addresses`] are
//! the thin async wrappers around hickory-resolver.
//!
//! DNSSEC: with `[dns] dnssec` (the default) the resolver validates from `[dns] trust_anchor`
//! (DNSKEY and DS lines; a DS is resolved to its key by [`build_resolver`]) or the IANA root
//! keys. [`lookup_mx_secure`] and [`lookup_host`] also say
//! whether the answer was secure; a bogus answer is [`MxError::Bogus`], temporary, never
//! used. What that means for TLS is in `dane/`. Not here: MTA-STS, connecting (the client),
//! the order in which addresses are tried across hosts (the worker in `mod.rs`).

use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::ResolverBuilder;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::rdata::{DNSKEY, DNSSECRData, RRSIG};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{LowerName, Name, RData, Record, RecordType};
use rand::seq::SliceRandom;

use crate::config::DnsConfig;
use crate::dnssec::{TrustAnchorFile, ds_anchor_keys, self_signed_keys};
use crate::smtp::EnhancedCode;
use crate::smtp::response::clean_text;

/// One mail exchanger of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Host name in ASCII (A-labels), lower case, without trailing dot.
    pub name: String,
    /// MX preference; lower is tried first. 0 for an implicit MX.
    pub preference: u16,
}

/// One MX record as received; `exchange` is `None` for the root name (RFC 7505 null MX).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    /// The MX preference.
    pub preference: u16,
    /// The exchange host name as for [`MxHost::name`], `None` for `.`.
    pub exchange: Option<String>,
}

/// What a failed DNS lookup means for mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupFailure {
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// NODATA: the name exists but has no record of the type asked.
    NoData,
    /// DNSSEC validation failed (RFC 4033 "bogus"): ask again later, never use the answer.
    Bogus,
    /// Anything else (SERVFAIL, REFUSED, timeout, network error): ask again later. The text
    /// describes the failure.
    Temporary(String),
}

/// Why a domain has no route, or none yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MxError {
    /// RFC 7505 null MX.
    #[error("domain {domain} does not accept mail (null MX)")]
    NullMx {
        /// The recipient domain.
        domain: String,
    },
    /// NXDOMAIN for the recipient domain.
    #[error("domain {domain} does not exist (NXDOMAIN)")]
    NxDomain {
        /// The recipient domain.
        domain: String,
    },
    /// No MX records and no A/AAAA records either (RFC 5321 5.1: nothing to deliver to).
    #[error("domain {domain} has no MX and no address records")]
    NoMailHost {
        /// The recipient domain.
        domain: String,
    },
    /// The domain is not a valid DNS name.
    #[error("invalid domain name {domain:?}")]
    InvalidDomain {
        /// The recipient domain as written.
        domain: String,
    },
    /// A lookup failed in a way that may pass: SERVFAIL, timeout, network.
    #[error("DNS lookup of {name} {record_type} failed: {detail}")]
    Temporary {
        /// The name asked for.
        name: String,
        /// `MX`, `A` or `AAAA`.
        record_type: &'static str,
        /// The resolver's description.
        detail: String,
    },
    /// DNSSEC validation of an answer failed (RFC 7672 2.2.1/2.2.2: bogus answers are not
    /// used; the mail waits).
    #[error("DNS lookup of {name} {record_type}: DNSSEC validation failed (bogus)")]
    Bogus {
        /// The name asked for.
        name: String,
        /// `MX`, `A` or `AAAA`.
        record_type: &'static str,
    },
    /// The configured relay host has no address (a configuration problem: the mail waits).
    #[error("relay host {host} has no address: {detail}")]
    RelayUnresolvable {
        /// `[delivery] relayhost`.
        host: String,
        /// What DNS said.
        detail: String,
    },
}

impl MxError {
    /// Whether the recipients of the domain should fail for good.
    pub fn is_permanent(&self) -> bool {
        match self {
            MxError::NullMx { .. }
            | MxError::NxDomain { .. }
            | MxError::NoMailHost { .. }
            | MxError::InvalidDomain { .. } => true,
            MxError::Temporary { .. }
            | MxError::Bogus { .. }
            | MxError::RelayUnresolvable { .. } => false,
        }
    }

    /// The RFC 3463 status code (RFC 7505 section 4.2 for null MX).
    pub fn status(&self) -> EnhancedCode {
        match self {
            MxError::NullMx { .. } => EnhancedCode::new(5, 1, 10),
            MxError::NxDomain { .. } | MxError::InvalidDomain { .. } => EnhancedCode::new(5, 1, 2),
            MxError::NoMailHost { .. } => EnhancedCode::new(5, 4, 4),
            MxError::Temporary { .. } => EnhancedCode::new(4, 4, 3),
            // 4.7.5 "cryptographic failure".
            MxError::Bogus { .. } => EnhancedCode::new(4, 7, 5),
            MxError::RelayUnresolvable { .. } => EnhancedCode::new(4, 4, 4),
        }
    }
}

/// The resolver could not be built (for example no readable `/etc/resolv.conf`).
#[derive(Debug, thiserror::Error)]
pub enum ResolverSetupError {
    /// hickory refused the configuration.
    #[error("cannot set up the DNS resolver: {0}")]
    Net(#[from] NetError),
    /// A DS line of `[dns] trust_anchor` could not be resolved to a key.
    #[error("cannot set up the DNS resolver: dns.trust_anchor: {0}")]
    Anchor(String),
}

/// Builds the resolver for delivery: the `[dns] servers` (each `IP:PORT`, asked over UDP with
/// TCP for truncated answers), or the system configuration when the list is empty.
///
/// With DS lines in `[dns] trust_anchor`, the owner's DNSKEY RRset is first fetched from the
/// same servers without validation, and the keys a DS names ([`ds_anchor_keys`]) become
/// trust anchors, next to the file's DNSKEY lines. Fail-closed: when that lookup fails or no
/// key matches, there is no resolver (an error naming the anchor; the worker defers every
/// delivery and builds again for the next destination), never one without the anchor.
///
/// # Errors
/// When the system configuration cannot be read, or a DS anchor cannot be resolved to a key
/// (the file itself was read and parsed with the config).
pub async fn build_resolver(cfg: &DnsConfig) -> Result<TokioResolver, ResolverSetupError> {
    let mut builder = resolver_builder(cfg)?;
    if cfg.dnssec {
        let anchors = match &cfg.trust_anchor {
            Some(anchor) => {
                resolve_ds_anchors(cfg, &anchor.anchors).await.map_err(|e| {
                    let e = format!("{}: {e}", anchor.path.display());
                    tracing::error!(
                        error = %e,
                        "dns.trust_anchor: DS anchor unusable; no DNSSEC validation, deliveries are deferred"
                    );
                    ResolverSetupError::Anchor(e)
                })?
            }
            None => TrustAnchors::default(),
        };
        builder.options_mut().validate = true;
        builder = builder.with_trust_anchor(Arc::new(anchors));
    }
    Ok(builder.build()?)
}

fn resolver_builder(
    cfg: &DnsConfig,
) -> Result<ResolverBuilder<TokioRuntimeProvider>, ResolverSetupError> {
    Ok(if cfg.servers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let (config, options) = resolver_config(cfg);
        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
    })
}

/// The anchors to validate from: the file's DNSKEY keys; for each DS owner, the keys of its
/// DNSKEY RRset (asked without validation) that one of its DS lines names; and, for every
/// anchored owner below the root whose DNSKEY RRset carries a valid RRSIG by an anchored key,
/// all the keys of that RRset ([`self_signed_keys`]: a KSK-only anchor of a split-key zone).
/// Without such an RRSIG the anchors stay as the file says (a DS owner's named keys), which is
/// enough for a zone whose one key signs everything.
async fn resolve_ds_anchors(
    cfg: &DnsConfig,
    file: &TrustAnchorFile,
) -> Result<TrustAnchors, String> {
    let mut anchors = file.keys.clone();
    // Every DS owner; every DNSKEY owner below the root (the root's keys need no parent).
    let mut owners: Vec<&Name> = Vec::new();
    let dnskey_owners = file.dnskeys.iter().map(|(o, _)| o).filter(|o| !o.is_root());
    for owner in file.ds.iter().map(|(o, _)| o).chain(dnskey_owners) {
        if !owners.contains(&owner) {
            owners.push(owner);
        }
    }
    if owners.is_empty() {
        return Ok(anchors);
    }
    let plain = resolver_builder(cfg)
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| format!("cannot set up the DNS resolver: {e}"))?;
    for owner in owners {
        let ds: Vec<_> = file
            .ds
            .iter()
            .filter(|(o, _)| o == owner)
            .map(|(_, d)| d)
            .collect();
        let listed: Vec<&DNSKEY> = file
            .dnskeys
            .iter()
            .filter(|(o, _)| o == owner)
            .map(|(_, k)| k)
            .collect();
        let records = match plain.lookup(owner.clone(), RecordType::DNSKEY).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter(|r| r.name == *owner && r.record_type() == RecordType::DNSKEY)
                .cloned()
                .collect::<Vec<_>>(),
            Err(e) if !ds.is_empty() => {
                return Err(format!("DS anchor for {owner}: DNSKEY lookup failed: {e}"));
            }
            Err(e) => {
                tracing::warn!(owner = %owner, error = %e, "dns.trust_anchor: cannot fetch the anchored zone's DNSKEY RRset; anchoring the listed keys only");
                continue;
            }
        };
        let keys: Vec<DNSKEY> = records
            .iter()
            .filter_map(|r| match &r.data {
                RData::DNSSEC(DNSSECRData::DNSKEY(k)) => Some(k.clone()),
                _ => None,
            })
            .collect();
        let mut trusted = ds_anchor_keys(owner, &ds, &keys);
        if !ds.is_empty() && trusted.is_empty() {
            let tags: Vec<String> = ds.iter().map(|d| d.key_tag().to_string()).collect();
            return Err(format!(
                "DS anchor for {owner} (key tag {}): none of the {} DNSKEY records of {owner} matches",
                tags.join(", "),
                keys.len()
            ));
        }
        for key in &trusted {
            anchors.insert_with_name(key.public_key(), LowerName::from(owner));
        }
        trusted.extend(listed);
        if owner.is_root() {
            continue;
        }
        match anchored_rrset(cfg, owner, &trusted).await {
            Ok(all) => {
                tracing::info!(owner = %owner, keys = all.len(), "dns.trust_anchor: DNSKEY RRset verified with the anchored key; all its keys anchored");
                for key in &all {
                    anchors.insert_with_name(key.public_key(), LowerName::from(owner));
                }
            }
            Err(e) => {
                tracing::warn!(owner = %owner, error = %e, "dns.trust_anchor: anchoring the listed keys only");
            }
        }
    }
    Ok(anchors)
}

/// The keys of `owner`'s DNSKEY RRset if an RRSIG over it by one of `trusted` verifies now.
/// The RRset and its RRSIGs are asked anew, with the DO bit, of the first server that
/// answers ([`dnskey_rrset_with_rrsigs`]).
async fn anchored_rrset(
    cfg: &DnsConfig,
    owner: &Name,
    trusted: &[&DNSKEY],
) -> Result<Vec<DNSKEY>, String> {
    let servers: Vec<std::net::SocketAddr> = if cfg.servers.is_empty() {
        hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
            .0
            .name_servers()
            .iter()
            .map(|ns| std::net::SocketAddr::new(ns.ip, 53))
            .collect()
    } else {
        cfg.servers.clone()
    };
    let mut last = String::from("no DNS server to ask");
    for server in servers {
        match dnskey_rrset_with_rrsigs(server, owner).await {
            Ok((records, rrsigs)) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as u32);
                return self_signed_keys(owner, &records, &rrsigs, trusted, now);
            }
            Err(e) => last = format!("{server}: {e}"),
        }
    }
    Err(last)
}

/// How long one query for an anchored DNSKEY RRset may take.
const ANCHOR_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `owner`'s DNSKEY records and the RRSIGs over them, asked of `server` with EDNS and the DO
/// bit over UDP, again over TCP when the answer is truncated. Asked by hand because the stub
/// resolver sets DO only when it validates, and validating is what cannot work yet; a query
/// for type RRSIG is no substitute (knot answers it with one RRSIG of its choice).
async fn dnskey_rrset_with_rrsigs(
    server: std::net::SocketAddr,
    owner: &Name,
) -> Result<(Vec<Record>, Vec<RRSIG>), String> {
    use hickory_resolver::proto::op::{Edns, Message, Query};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut query = Message::query();
    query.add_query(Query::query(owner.clone(), RecordType::DNSKEY));
    query.metadata.recursion_desired = true;
    let mut edns = Edns::new();
    edns.set_max_payload(4096).set_dnssec_ok(true);
    query.set_edns(edns);
    let wire = query
        .to_vec()
        .map_err(|e| format!("cannot encode the query: {e}"))?;
    let exchange = async {
        let local: std::net::SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let udp = tokio::net::UdpSocket::bind(local).await?;
        udp.connect(server).await?;
        udp.send(&wire).await?;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = udp.recv(&mut buf).await?;
            if let Ok(answer) = Message::from_vec(&buf[..n])
                && answer.metadata.id == query.metadata.id
            {
                if !answer.metadata.truncation {
                    return Ok::<Message, std::io::Error>(answer);
                }
                break;
            }
        }
        let mut tcp = tokio::net::TcpStream::connect(server).await?;
        let len = u16::try_from(wire.len()).map_err(std::io::Error::other)?;
        tcp.write_all(&len.to_be_bytes()).await?;
        tcp.write_all(&wire).await?;
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut answer).await?;
        Message::from_vec(&answer).map_err(std::io::Error::other)
    };
    let answer = tokio::time::timeout(ANCHOR_QUERY_TIMEOUT, exchange)
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    if answer.metadata.response_code != ResponseCode::NoError {
        return Err(format!("answer {}", answer.metadata.response_code));
    }
    let at_owner = |r: &&Record| r.name == *owner;
    let records = answer
        .answers
        .iter()
        .filter(at_owner)
        .filter(|r| r.record_type() == RecordType::DNSKEY)
        .cloned()
        .collect();
    let rrsigs = answer
        .answers
        .iter()
        .filter(at_owner)
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::RRSIG(sig)) => Some(sig.clone()),
            _ => None,
        })
        .collect();
    Ok((records, rrsigs))
}

/// The resolver configuration for the `[dns] servers` (each `IP:PORT`, UDP with TCP for
/// truncated answers). Shared with `postern dkim verify`, which asks the same servers.
pub fn resolver_config(cfg: &DnsConfig) -> (ResolverConfig, ResolverOpts) {
    let servers = cfg
        .servers
        .iter()
        .map(|addr| {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect();
    (
        ResolverConfig::from_name_servers(servers),
        ResolverOpts::default(),
    )
}

/// The MX hosts of `domain` in the order to try them, or the implicit MX.
///
/// # Errors
/// [`MxError`]: null MX, NXDOMAIN and invalid names are permanent, the rest temporary.
pub async fn lookup_mx(resolver: &TokioResolver, domain: &str) -> Result<Vec<MxHost>, MxError> {
    Ok(lookup_mx_secure(resolver, domain).await?.0)
}

/// [`lookup_mx`] with the DNSSEC status of the answer: `true` when the MX RRset (or, for the
/// implicit MX, the denial of MX records) is secure. A bogus answer is
/// [`MxError::Bogus`].
///
/// # Errors
/// As [`lookup_mx`].
pub async fn lookup_mx_secure(
    resolver: &TokioResolver,
    domain: &str,
) -> Result<(Vec<MxHost>, bool), MxError> {
    let name = fqdn(domain)?;
    let bogus = || MxError::Bogus {
        name: domain.to_string(),
        record_type: "MX",
    };
    let (records, secure) = match resolver.mx_lookup(name).await {
        Ok(lookup) => {
            let secure = super::dane::rrset_security(lookup.answers().iter().map(|r| r.proof))
                .ok_or_else(bogus)?;
            let records = lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some(MxRecord {
                        preference: mx.preference,
                        exchange: (!mx.exchange.is_root()).then(|| host_name(&mx.exchange)),
                    }),
                    _ => None,
                })
                .collect();
            (records, secure)
        }
        Err(e) => match classify_lookup_error(&e) {
            LookupFailure::NoData => (Vec::new(), denial_is_secure(&e)),
            LookupFailure::Bogus => return Err(bogus()),
            LookupFailure::NxDomain => {
                return Err(MxError::NxDomain {
                    domain: domain.to_string(),
                });
            }
            LookupFailure::Temporary(detail) => {
                return Err(MxError::Temporary {
                    name: domain.to_string(),
                    record_type: "MX",
                    detail,
                });
            }
        },
    };
    let mut rng = rand::rng();
    Ok((order_mx(domain, records, &mut rng)?, secure))
}

/// Whether a "no such records" answer was proven by DNSSEC (RFC 7672 section 2.2.1: a secure
/// denial of the MX RRset makes the implicit MX eligible for DANE). A validated denial reaches
/// us as `NoRecordsFound` whose authority section holds the NSEC/NSEC3 records with their
/// proofs; hickory reports unproven denials as `Nsec` errors with a non-secure proof.
fn denial_is_secure(error: &NetError) -> bool {
    match error {
        NetError::Dns(DnsError::Nsec { proof, .. }) => *proof == Proof::Secure,
        NetError::Dns(DnsError::NoRecordsFound(no)) => no.authorities.as_ref().is_some_and(|a| {
            let mut denials = a.iter().filter(|r| {
                matches!(
                    r.record_type(),
                    hickory_resolver::proto::rr::RecordType::NSEC
                        | hickory_resolver::proto::rr::RecordType::NSEC3
                )
            });
            let first = denials.next();
            first.is_some_and(|r| r.proof == Proof::Secure)
                && denials.all(|r| r.proof == Proof::Secure)
        }),
        _ => false,
    }
}

/// The addresses of one host: IPv4 first, then IPv6. An empty list means DNS says the host
/// has none (NXDOMAIN or NODATA for both types). An IP address, bare or as an address
/// literal, is its own answer.
///
/// # Errors
/// [`MxError::Temporary`] when neither type gave an address and at least one lookup failed
/// temporarily. When one type gives addresses, a failure of the other is ignored.
pub async fn lookup_addresses(
    resolver: &TokioResolver,
    host: &str,
) -> Result<Vec<IpAddr>, MxError> {
    Ok(lookup_host(resolver, host).await?.addresses)
}

/// The addresses of a host with their DNSSEC status (RFC 7672 section 2.2.2) and the
/// CNAME-expanded name (section 2.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddresses {
    /// IPv4 first, then IPv6.
    pub addresses: Vec<IpAddr>,
    /// Every record of the answers (A, AAAA and CNAMEs on the way) is secure.
    pub secure: bool,
    /// The owner name of the address records when a CNAME led there (lower case, no dot).
    pub canonical: Option<String>,
}

/// [`lookup_addresses`] with DNSSEC status and CNAME expansion.
///
/// # Errors
/// As [`lookup_addresses`]; a bogus answer of either type is [`MxError::Bogus`] (the host is
/// not used, RFC 7672 2.2.2).
pub async fn lookup_host(resolver: &TokioResolver, host: &str) -> Result<HostAddresses, MxError> {
    if let Some(ip) = address_literal(host).or_else(|| host.parse().ok()) {
        return Ok(HostAddresses {
            addresses: vec![ip],
            secure: false,
            canonical: None,
        });
    }
    let name = fqdn(host)?;
    let (v4, v6) = tokio::join!(
        resolver.ipv4_lookup(name.clone()),
        resolver.ipv6_lookup(name)
    );
    let mut addresses = Vec::new();
    let mut temporary = None;
    let mut proofs = Vec::new();
    let mut canonical = None;
    for (result, record_type) in [(v4, "A"), (v6, "AAAA")] {
        match result {
            Ok(lookup) => {
                for r in lookup.answers() {
                    proofs.push(r.proof);
                    let ip = match &r.data {
                        RData::A(a) => IpAddr::V4(a.0),
                        RData::AAAA(a) => IpAddr::V6(a.0),
                        _ => continue,
                    };
                    addresses.push(ip);
                    let owner = host_name(&r.name);
                    if owner != host.trim_end_matches('.').to_ascii_lowercase() {
                        canonical.get_or_insert(owner);
                    }
                }
            }
            Err(e) => match classify_lookup_error(&e) {
                LookupFailure::Bogus => {
                    return Err(MxError::Bogus {
                        name: host.to_string(),
                        record_type,
                    });
                }
                LookupFailure::Temporary(detail) => {
                    temporary.get_or_insert(MxError::Temporary {
                        name: host.to_string(),
                        record_type,
                        detail,
                    });
                }
                LookupFailure::NxDomain | LookupFailure::NoData => {}
            },
        }
    }
    addresses.dedup();
    let secure = super::dane::rrset_security(proofs).ok_or_else(|| MxError::Bogus {
        name: host.to_string(),
        record_type: "A",
    })?;
    match temporary {
        Some(error) if addresses.is_empty() => Err(error),
        _ => Ok(HostAddresses {
            addresses,
            secure,
            canonical,
        }),
    }
}

/// Orders MX records for delivery: null MX check (RFC 7505), then preference ascending with
/// ties shuffled by `rng`, duplicates removed (a host listed twice keeps its best
/// preference). No records at all gives the implicit MX (the domain itself).
///
/// # Errors
/// [`MxError::NullMx`] when every record targets the root.
pub fn order_mx<R: rand::Rng + ?Sized>(
    domain: &str,
    records: Vec<MxRecord>,
    rng: &mut R,
) -> Result<Vec<MxHost>, MxError> {
    if records.is_empty() {
        let name = domain.trim_end_matches('.').to_ascii_lowercase();
        return Ok(vec![MxHost {
            name,
            preference: 0,
        }]);
    }
    let mut hosts: Vec<MxHost> = records
        .into_iter()
        .filter_map(|r| {
            Some(MxHost {
                name: r.exchange?,
                preference: r.preference,
            })
        })
        .collect();
    if hosts.is_empty() {
        return Err(MxError::NullMx {
            domain: domain.to_string(),
        });
    }
    hosts.shuffle(rng);
    // Stable: equal preferences keep their shuffled order.
    hosts.sort_by_key(|h| h.preference);
    let mut seen = std::collections::HashSet::new();
    hosts.retain(|h| seen.insert(h.name.clone()));
    Ok(hosts)
}

/// Classifies a resolver error (see the module documentation).
pub fn classify_lookup_error(error: &NetError) -> LookupFailure {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no)) => match no.response_code {
            ResponseCode::NXDomain => LookupFailure::NxDomain,
            ResponseCode::NoError => LookupFailure::NoData,
            other => LookupFailure::Temporary(format!("response code {other}")),
        },
        // With DNSSEC validation on (DANE, later), proven negative answers come back here.
        NetError::Dns(DnsError::Nsec { response, .. }) => match response.response_code {
            ResponseCode::NXDomain => LookupFailure::NxDomain,
            ResponseCode::NoError => LookupFailure::NoData,
            other => LookupFailure::Temporary(format!("response code {other}")),
        },
        NetError::Dns(DnsError::DnssecBogus) => LookupFailure::Bogus,
        other => LookupFailure::Temporary(clean_text(&other.to_string())),
    }
}

/// The address of an RFC 5321 section 4.1.3 address literal: `[192.0.2.1]` or
/// `[IPv6:2001:db8::1]` (a bare `[2001:db8::1]` is accepted too). `None` for a domain name.
pub fn address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = match inner.get(..5) {
        Some(prefix) if prefix.eq_ignore_ascii_case("IPv6:") => &inner[5..],
        _ => inner,
    };
    inner.parse().ok()
}

/// `domain` as a fully qualified name, so no search list applies.
fn fqdn(domain: &str) -> Result<Name, MxError> {
    let invalid = || MxError::InvalidDomain {
        domain: domain.to_string(),
    };
    if domain.is_empty() || domain.starts_with('.') {
        return Err(invalid());
    }
    let mut name = Name::from_utf8(domain).map_err(|_| invalid())?;
    name.set_fqdn(true);
    Ok(name)
}

fn host_name(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::op::Query;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rec(preference: u16, exchange: &str) -> MxRecord {
        let exchange = (exchange != ".").then(|| exchange.to_string());
        MxRecord {
            preference,
            exchange,
        }
    }

    fn names(hosts: &[MxHost]) -> Vec<&str> {
        hosts.iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn sorted_by_preference() {
        let mut rng = StdRng::seed_from_u64(1);
        let hosts = order_mx(
            "example.org",
            vec![
                rec(20, "b.example.org"),
                rec(5, "a.example.org"),
                rec(30, "c.example.org"),
            ],
            &mut rng,
        )
        .unwrap();
        assert_eq!(
            names(&hosts),
            ["a.example.org", "b.example.org", "c.example.org"]
        );
        assert_eq!(hosts[0].preference, 5);
    }

    #[test]
    fn equal_preferences_are_shuffled_but_stay_in_their_band() {
        let records = vec![
            rec(10, "a1"),
            rec(10, "a2"),
            rec(10, "a3"),
            rec(10, "a4"),
            rec(20, "b1"),
            rec(20, "b2"),
            rec(5, "first"),
        ];
        let mut orders = std::collections::HashSet::new();
        for seed in 0..64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let hosts = order_mx("example.org", records.clone(), &mut rng).unwrap();
            let n = names(&hosts);
            assert_eq!(n[0], "first");
            assert!(n[1..5].iter().all(|h| h.starts_with('a')), "{n:?}");
            assert!(n[5..].iter().all(|h| h.starts_with('b')), "{n:?}");
            orders.insert(n.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        assert!(orders.len() > 4, "ties were not shuffled: {orders:?}");
    }

    #[test]
    fn no_records_gives_implicit_mx() {
        let mut rng = StdRng::seed_from_u64(1);
        let hosts = order_mx("Example.ORG.", vec![], &mut rng).unwrap();
        assert_eq!(
            hosts,
            vec![MxHost {
                name: "example.org".into(),
                preference: 0
            }]
        );
    }

    #[test]
    fn null_mx_is_permanent() {
        let mut rng = StdRng::seed_from_u64(1);
        let e = order_mx("example.org", vec![rec(0, ".")], &mut rng).unwrap_err();
        assert_eq!(
            e,
            MxError::NullMx {
                domain: "example.org".into()
            }
        );
        assert!(e.is_permanent());
        assert_eq!(e.status(), EnhancedCode::new(5, 1, 10));
        assert_eq!(
            e.to_string(),
            "domain example.org does not accept mail (null MX)"
        );
    }

    #[test]
    fn root_target_beside_real_hosts_is_ignored() {
        let mut rng = StdRng::seed_from_u64(1);
        let hosts = order_mx("example.org", vec![rec(0, "."), rec(10, "mx")], &mut rng).unwrap();
        assert_eq!(names(&hosts), ["mx"]);
    }

    #[test]
    fn duplicate_hosts_keep_best_preference() {
        let mut rng = StdRng::seed_from_u64(1);
        let hosts = order_mx(
            "example.org",
            vec![rec(20, "mx"), rec(10, "mx"), rec(15, "other")],
            &mut rng,
        )
        .unwrap();
        assert_eq!(names(&hosts), ["mx", "other"]);
        assert_eq!(hosts[0].preference, 10);
    }

    fn no_records(code: ResponseCode) -> NetError {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(
            Query::default(),
            code,
        )))
    }

    #[test]
    fn lookup_errors_classify() {
        assert_eq!(
            classify_lookup_error(&no_records(ResponseCode::NXDomain)),
            LookupFailure::NxDomain
        );
        assert_eq!(
            classify_lookup_error(&no_records(ResponseCode::NoError)),
            LookupFailure::NoData
        );
        assert!(matches!(
            classify_lookup_error(&NetError::Dns(DnsError::ResponseCode(
                ResponseCode::ServFail
            ))),
            LookupFailure::Temporary(_)
        ));
        assert!(matches!(
            classify_lookup_error(&NetError::Dns(DnsError::ResponseCode(
                ResponseCode::Refused
            ))),
            LookupFailure::Temporary(_)
        ));
        assert!(matches!(
            classify_lookup_error(&NetError::Timeout),
            LookupFailure::Temporary(_)
        ));
        assert_eq!(
            classify_lookup_error(&NetError::Dns(DnsError::DnssecBogus)),
            LookupFailure::Bogus
        );
    }

    #[test]
    fn permanence_and_codes() {
        let temp = MxError::Temporary {
            name: "x".into(),
            record_type: "MX",
            detail: "t".into(),
        };
        assert!(!temp.is_permanent());
        assert_eq!(temp.status(), EnhancedCode::new(4, 4, 3));
        assert!(MxError::NxDomain { domain: "x".into() }.is_permanent());
        assert!(MxError::NoMailHost { domain: "x".into() }.is_permanent());
        assert!(
            !MxError::RelayUnresolvable {
                host: "x".into(),
                detail: "d".into()
            }
            .is_permanent()
        );
    }

    #[test]
    fn address_literals() {
        assert_eq!(
            address_literal("[192.0.2.1]"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            address_literal("[IPv6:2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(address_literal("[ipv6:::1]"), Some("::1".parse().unwrap()));
        assert_eq!(
            address_literal("[2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(address_literal("example.org"), None);
        assert_eq!(address_literal("[example.org]"), None);
        assert_eq!(address_literal("192.0.2.1"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(fqdn("example.org").unwrap().is_fqdn());
        assert!(fqdn("bücher.example").is_ok());
        assert!(matches!(fqdn(""), Err(MxError::InvalidDomain { .. })));
        assert!(matches!(fqdn(".x"), Err(MxError::InvalidDomain { .. })));
    }
}
