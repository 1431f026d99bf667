//! The PROXY protocol header reader (`listener/proxy/`): the first bytes of a connection from
//! a trusted balancer, as hostile as they like, and the untrusted-opening sniff over the same
//! bytes.
//!
//! What must hold:
//! - the reader decides within [`MAX_HEADER_LEN`] octets (a v1 line within [`V1_MAX_LEN`]):
//!   an input that long is never `Incomplete`, so no connection holds a buffer past the bound;
//! - prefix-stable, as the socket reader relies on: before the decision every prefix is
//!   `Incomplete`, from it on every longer prefix gets the same decision, whatever the split;
//! - a whole header is at most the bound, a v1 one ends in its first CRLF and names the client
//!   it says in canonical text (TCP4 addresses and ports read back identically), a v2 one is
//!   exactly 16 octets plus its declared length and names the source address of its block;
//! - a header a trusted source would have had accepted is always sniffed as a header when an
//!   untrusted source sends it (no spoofing past the sniff), and a sniff decides within 12
//!   octets.

use crate::listener::proxy::{
    HeaderParse, MAX_HEADER_LEN, ProxiedClient, Sniff, V1_MAX_LEN, V2_FIXED_LEN, parse_header,
    sniff,
};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

pub(super) fn run(data: &[u8]) {
    let decision = check_prefixes(data);
    if let Some((cut, HeaderParse::Complete { len, client })) = decision {
        assert_eq!(cut, len, "a header is decided when its last octet arrives");
        check_header(&data[..len], client);
        assert_eq!(sniff(data), Sniff::Header);
    }
    match sniff(data) {
        Sniff::Undecided => assert!(data.len() < 12),
        Sniff::Header => assert!(data.starts_with(b"PROXY ") || data.starts_with(b"\r\n\r\n")),
        Sniff::NotHeader => {}
    }
}

/// Every prefix of `data` up to the bound: `Incomplete` until some cut, then one decision.
/// Returns the cut and the decision, `None` when `data` ends before one.
fn check_prefixes(data: &[u8]) -> Option<(usize, HeaderParse)> {
    let mut decided: Option<(usize, HeaderParse)> = None;
    for cut in 0..=data.len().min(MAX_HEADER_LEN + 1) {
        let parsed = parse_header(&data[..cut]);
        match decided {
            Some((_, earlier)) => assert_eq!(parsed, earlier, "changed at {cut}"),
            None if parsed != HeaderParse::Incomplete => decided = Some((cut, parsed)),
            None => {
                let bound = if data.first() == Some(&b'P') {
                    V1_MAX_LEN
                } else {
                    MAX_HEADER_LEN
                };
                assert!(cut < bound, "still incomplete at {cut} octets");
            }
        }
    }
    if data.len() > MAX_HEADER_LEN + 1 {
        assert_eq!(decided.map(|d| d.1), Some(parse_header(data)));
    }
    decided
}

fn check_header(header: &[u8], client: ProxiedClient) {
    assert!(header.len() <= MAX_HEADER_LEN);
    if header[0] == b'P' {
        check_v1(header, client);
    } else {
        let declared = usize::from(u16::from_be_bytes([header[14], header[15]]));
        assert_eq!(header.len(), V2_FIXED_LEN + declared);
        if let ProxiedClient::Remote(addr) = client {
            check_v2_source(header, addr);
        }
    }
}

fn check_v1(header: &[u8], client: ProxiedClient) {
    assert!(header.len() <= V1_MAX_LEN);
    assert!(header.ends_with(b"\r\n"));
    let line = std::str::from_utf8(&header[..header.len() - 2]).expect("a v1 header is text");
    assert!(!line.contains(['\r', '\n']), "{line:?}");
    let ProxiedClient::Remote(addr) = client else {
        panic!("a v1 header names a remote client or is refused: {line:?}");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 6, "{line:?}");
    assert_eq!(fields[4], addr.port().to_string());
    match addr.ip() {
        IpAddr::V4(ip) => {
            assert_eq!(fields[1], "TCP4");
            assert_eq!(fields[2], ip.to_string());
        }
        IpAddr::V6(ip) => {
            assert_eq!(fields[1], "TCP6");
            assert_eq!(fields[2].parse::<Ipv6Addr>().ok(), Some(ip));
        }
    }
}

fn check_v2_source(header: &[u8], addr: SocketAddr) {
    assert_eq!(header[12], 0x21, "only PROXY names a remote client");
    let block = &header[V2_FIXED_LEN..];
    let (ip_octets, port_at) = match addr.ip() {
        IpAddr::V4(ip) => {
            assert_eq!(header[13], 0x11);
            (ip.octets().to_vec(), 8)
        }
        IpAddr::V6(ip) => {
            assert_eq!(header[13], 0x21);
            (ip.octets().to_vec(), 32)
        }
    };
    assert_eq!(&block[..ip_octets.len()], &ip_octets[..]);
    assert_eq!(&block[port_at..port_at + 2], &addr.port().to_be_bytes());
}
