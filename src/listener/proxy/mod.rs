//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2) on the SMTP
//! listeners: who the client of a connection from a trusted load balancer really is.
//!
//! `[listen] proxy_protocol` names the balancers ([`ProxyTrust`]). A connection from one of
//! them must open with a PROXY header, and the address the header carries becomes the
//! connection's peer for everything after it (caps, brakes, hosting networks, `Received:`,
//! logs). A connection from any other source that opens with a PROXY header is refused: it
//! would be choosing its own client address. Other sources without a header are served as
//! before. With the list empty (the default) nothing here runs.
//!
//! This file is the pure part (no socket, no clock): [`parse_header`] reads the first bytes of
//! a trusted connection, [`sniff`] tells whether an untrusted one opens with a header.
//! `socket.rs` reads the bytes. The byte parsing itself is the `ppp` crate (v1 lines and v2
//! blocks); what is decided here is how much may be read, when to stop waiting, and which
//! headers name a client:
//!
//! - v1: one line of at most [`V1_MAX_LEN`] (107) octets ending in CRLF (spec 2.1); nothing is
//!   handed to `ppp` before the LF arrived, so the answer never depends on how the bytes were
//!   split into reads.
//! - v2: 16 fixed octets, then the length they declare, which may be at most
//!   [`V2_MAX_PAYLOAD`]: the addresses (12 or 36 octets) and TLVs, which must be well formed
//!   and are otherwise ignored.
//! - v2 `LOCAL` (spec 2.2: the balancer's own connection, a health check): the balancer's own
//!   address is the client.
//! - A header that names no TCP client over IPv4 or IPv6 (v1 `UNKNOWN`, v2 `PROXY` with
//!   `AF_UNSPEC` or `AF_UNIX`, or a datagram or unspecified transport) is refused as
//!   unsupported. The spec lets a receiver fall back to the balancer's address there; the
//!   relay attaches rights to client addresses (`[relay] networks`, hosting networks, per-IP
//!   caps), and a client the balancer cannot name gets none rather than the balancer's.
//!
//! Fail closed: every refusal ends the connection (`socket.rs` says with what).

mod socket;
#[cfg(test)]
mod tests;

pub(crate) use socket::{ProxyCheck, check_untrusted_tls, read_trusted_header};

use ipnet::IpNet;
use ppp::v2;
use std::net::{IpAddr, SocketAddr};

/// Longest v1 header, CRLF included (spec 2.1: "a 108-byte buffer" holds it with a NUL).
pub const V1_MAX_LEN: usize = 107;
/// The fixed part of a v2 header: signature, version and command, family and transport,
/// length.
pub const V2_FIXED_LEN: usize = 16;
/// Largest v2 payload (addresses and TLVs) accepted: IPv6 addresses take 36 octets and the
/// TLVs balancers add (AWS's endpoint id, a unique id, TLS facts) a few hundred at most; the
/// 16-bit length field would otherwise let a header hold 64 KiB.
pub const V2_MAX_PAYLOAD: usize = 1024;
/// Longest header of either version: how many bytes a reader may ever hold for one.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + V2_MAX_PAYLOAD;

/// The v1 header's first octets (spec 2.1).
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The v2 header's first twelve octets (spec 2.2).
const V2_SIGNATURE: &[u8] = v2::PROTOCOL_PREFIX;

/// `[listen] proxy_protocol`: the load balancers whose PROXY headers are believed.
#[derive(Debug, Clone, Copy)]
pub struct ProxyTrust<'a> {
    balancers: &'a [IpNet],
}

impl<'a> ProxyTrust<'a> {
    /// Trusts headers from sources in `balancers`; none at all turns the protocol off.
    pub fn new(balancers: &'a [IpNet]) -> Self {
        Self { balancers }
    }

    /// Whether the PROXY protocol is on (some balancer is named).
    pub fn is_enabled(&self) -> bool {
        !self.balancers.is_empty()
    }

    /// Whether a connection from `source` must open with a PROXY header. An IPv4 source on a
    /// dual-stack socket arrives as `::ffff:a.b.c.d` and matches the IPv4 networks.
    pub fn trusts(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.balancers.iter().any(|net| net.contains(&source))
    }
}

/// Why a connection was refused over its PROXY header; [`ProxyRefusal::label`] is the metric
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// A trusted source closed the connection before a whole header.
    Missing,
    /// A trusted source sent no whole header within `timeouts.proxy_header`.
    Timeout,
    /// A trusted source's first bytes are not a valid PROXY header.
    Malformed,
    /// A v1 line longer than 107 octets or a v2 payload over [`V2_MAX_PAYLOAD`].
    TooLong,
    /// A valid header that names no TCP client over IPv4 or IPv6.
    Unsupported,
    /// A source not in `[listen] proxy_protocol` sent a PROXY header.
    Untrusted,
}

impl ProxyRefusal {
    /// The `reason` label of `postern_smtp_proxy_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            ProxyRefusal::Missing => "missing",
            ProxyRefusal::Timeout => "timeout",
            ProxyRefusal::Malformed => "malformed",
            ProxyRefusal::TooLong => "too_long",
            ProxyRefusal::Unsupported => "unsupported",
            ProxyRefusal::Untrusted => "untrusted",
        }
    }
}

/// Who a valid header says the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedClient {
    /// A TCP client the balancer relays: its address and port.
    Remote(SocketAddr),
    /// v2 `LOCAL`: the balancer's own connection; the balancer is the client.
    Local,
}

/// What the first bytes of a trusted connection amount to so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderParse {
    /// A possible header, not yet whole: every byte so far belongs to it, read more.
    Incomplete,
    /// A whole header of `len` octets (what follows is SMTP or TLS, never read here).
    Complete {
        /// Its length; the bytes after it are the client's.
        len: usize,
        /// Whom it names.
        client: ProxiedClient,
    },
    /// Not a header this relay accepts.
    Refused(ProxyRefusal),
}

/// Reads a PROXY header from the start of `bytes`, which may hold less than a header, or more.
/// Prefix-stable: while the answer is [`HeaderParse::Incomplete`], every longer input that
/// starts with `bytes` gets an answer of its own, and the whole header always the same one.
pub fn parse_header(bytes: &[u8]) -> HeaderParse {
    match bytes.first() {
        None => HeaderParse::Incomplete,
        Some(b'P') => parse_v1(bytes),
        Some(b'\r') => parse_v2(bytes),
        Some(_) => HeaderParse::Refused(ProxyRefusal::Malformed),
    }
}

fn parse_v1(bytes: &[u8]) -> HeaderParse {
    if !agrees_with(bytes, V1_SIGNATURE) {
        return HeaderParse::Refused(ProxyRefusal::Malformed);
    }
    let window = &bytes[..bytes.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if bytes.len() >= V1_MAX_LEN {
            HeaderParse::Refused(ProxyRefusal::TooLong)
        } else {
            HeaderParse::Incomplete
        };
    };
    let line = &bytes[..=lf];
    // `ppp` cuts the line at its first CR; one that is not the CR of the final CRLF must not
    // leave octets that belong to neither the header nor the session. It also takes a line
    // ending in " LF" without CR (found by the `proxy_header` fuzz target): the CRLF is ours
    // to require.
    if !line.ends_with(b"\r\n") {
        return HeaderParse::Refused(ProxyRefusal::Malformed);
    }
    let parsed = match ppp::v1::Header::try_from(line) {
        Ok(header) if header.header.len() == line.len() && ports_are_digits(line) => header,
        _ => return HeaderParse::Refused(ProxyRefusal::Malformed),
    };
    let client = match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
        ppp::v1::Addresses::Tcp6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
        ppp::v1::Addresses::Unknown => return HeaderParse::Refused(ProxyRefusal::Unsupported),
    };
    HeaderParse::Complete {
        len: line.len(),
        client: ProxiedClient::Remote(client),
    }
}

/// Whether a TCP4/TCP6 line's two ports are decimal digits only (spec 2.1). `ppp` reads them
/// with `u16::from_str`, which also takes a leading `+` (found by the `proxy_header` fuzz
/// target): `+25` is no port of the protocol.
fn ports_are_digits(line: &[u8]) -> bool {
    let fields: Vec<&[u8]> = line[..line.len() - 2].split(|&b| b == b' ').collect();
    match fields.as_slice() {
        [_, b"UNKNOWN", ..] => true,
        [_, _, _, _, source, destination] => [source, destination]
            .iter()
            .all(|port| !port.is_empty() && port.iter().all(u8::is_ascii_digit)),
        _ => false,
    }
}

fn parse_v2(bytes: &[u8]) -> HeaderParse {
    if !agrees_with(bytes, V2_SIGNATURE) {
        return HeaderParse::Refused(ProxyRefusal::Malformed);
    }
    if bytes.len() < V2_FIXED_LEN {
        return HeaderParse::Incomplete;
    }
    let declared = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let total = V2_FIXED_LEN + declared;
    // Only the header's own octets go to `ppp`: it reads TLVs up to the end of its input.
    let parsed = v2::Header::try_from(&bytes[..bytes.len().min(total)]);
    match parsed {
        // The fixed part is valid; the length is judged before waiting for what it declares.
        Ok(_) | Err(v2::ParseError::Partial(..)) if declared > V2_MAX_PAYLOAD => {
            HeaderParse::Refused(ProxyRefusal::TooLong)
        }
        Err(v2::ParseError::Partial(..)) => HeaderParse::Incomplete,
        Err(_) => HeaderParse::Refused(ProxyRefusal::Malformed),
        // `ppp` reads TLVs only when asked: a payload whose TLVs overrun it is malformed.
        Ok(header)
            if header.command == v2::Command::Proxy && header.tlvs().any(|tlv| tlv.is_err()) =>
        {
            HeaderParse::Refused(ProxyRefusal::Malformed)
        }
        Ok(header) => match v2_client(&header) {
            Some(client) => HeaderParse::Complete { len: total, client },
            None => HeaderParse::Refused(ProxyRefusal::Unsupported),
        },
    }
}

/// The client a v2 header names, `None` when it names none this relay accepts.
fn v2_client(header: &v2::Header<'_>) -> Option<ProxiedClient> {
    if header.command == v2::Command::Local {
        // Spec 2.2: the receiver must ignore the address information of a LOCAL header.
        return Some(ProxiedClient::Local);
    }
    if header.protocol != v2::Protocol::Stream {
        return None;
    }
    let client = match header.addresses {
        v2::Addresses::IPv4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
        v2::Addresses::IPv6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => return None,
    };
    Some(ProxiedClient::Remote(client))
}

/// Whether `bytes` and `signature` agree on their common length.
fn agrees_with(bytes: &[u8], signature: &[u8]) -> bool {
    let common = bytes.len().min(signature.len());
    bytes[..common] == signature[..common]
}

/// What the first bytes of a connection from an untrusted source say about a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// They could still become one of the two signatures: read more before deciding.
    Undecided,
    /// They open with a PROXY signature: refuse the connection.
    Header,
    /// They are not a PROXY header: hand them to the session.
    NotHeader,
}

/// Looks at the first bytes of an untrusted plaintext connection (ports 25 and 587, where the
/// client speaks after the greeting). Decided within 12 octets. No SMTP command starts with
/// `PROXY ` or with the v2 signature (two empty lines, a NUL, ...), so no client is refused
/// that could have been served.
pub fn sniff(bytes: &[u8]) -> Sniff {
    let complete = |signature: &[u8]| bytes.starts_with(signature);
    let possible = |signature: &[u8]| agrees_with(bytes, signature);
    if complete(V1_SIGNATURE) || complete(V2_SIGNATURE) {
        Sniff::Header
    } else if possible(V1_SIGNATURE) || possible(V2_SIGNATURE) {
        Sniff::Undecided
    } else {
        Sniff::NotHeader
    }
}

/// Whether the first octet of an untrusted port-465 connection opens a PROXY header rather
/// than TLS: a TLS handshake record starts with 0x16 (RFC 8446 5.1), a PROXY header with `P`
/// (v1) or CR (v2), so one octet decides.
pub fn opens_proxy_header(first: u8) -> bool {
    first == V1_SIGNATURE[0] || first == V2_SIGNATURE[0]
}
