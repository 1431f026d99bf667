//! The PROXY header reader and the untrusted-opening checks: every accepted and refused form,
//! the two length bounds at N and N+1, and that split reads change nothing.

use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A v2 header: version/command octet, family/transport octet, payload (written by hand from
/// the spec's layout, not with `ppp`'s builder, so the two are checked against each other).
fn v2(version_command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(version_command);
    out.push(family);
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The address block of a TCP over IPv4 v2 header: 192.0.2.7:40000 to 198.51.100.1:25.
fn v4_block() -> Vec<u8> {
    let mut out = vec![192, 0, 2, 7, 198, 51, 100, 1];
    out.extend_from_slice(&40000u16.to_be_bytes());
    out.extend_from_slice(&25u16.to_be_bytes());
    out
}

fn remote(text: &str) -> ProxiedClient {
    ProxiedClient::Remote(text.parse().unwrap())
}

fn complete(len: usize, client: ProxiedClient) -> HeaderParse {
    HeaderParse::Complete { len, client }
}

fn refused(refusal: ProxyRefusal) -> HeaderParse {
    HeaderParse::Refused(refusal)
}

/// Every proper prefix of `header` is incomplete and the whole gets `expected`, also with
/// client bytes after it.
fn assert_reads(header: &[u8], expected: HeaderParse) {
    for cut in 0..header.len() {
        assert_eq!(
            parse_header(&header[..cut]),
            HeaderParse::Incomplete,
            "{:?}",
            &header[..cut]
        );
    }
    assert_eq!(parse_header(header), expected);
    let mut followed = header.to_vec();
    followed.extend_from_slice(b"EHLO client.example\r\n");
    assert_eq!(parse_header(&followed), expected);
}

#[test]
fn v1_tcp4_and_tcp6_name_the_client() {
    let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n";
    assert_reads(line, complete(line.len(), remote("192.0.2.7:40000")));
    let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 587\r\n";
    assert_reads(line, complete(line.len(), remote("[2001:db8::7]:65535")));
}

#[test]
fn v1_unknown_is_unsupported() {
    assert_reads(b"PROXY UNKNOWN\r\n", refused(ProxyRefusal::Unsupported));
    let line = b"PROXY UNKNOWN 192.0.2.7 198.51.100.1 40000 25\r\n";
    assert_reads(line, refused(ProxyRefusal::Unsupported));
}

#[test]
fn v1_line_of_107_octets_is_read_and_108_is_too_long() {
    let line = |len: usize| {
        let mut out = b"PROXY UNKNOWN ".to_vec();
        out.resize(len - 2, b'x');
        out.extend_from_slice(b"\r\n");
        out
    };
    // UNKNOWN lets the line be as long as the bound: read whole (then refused as unsupported).
    assert_eq!(line(107).len(), V1_MAX_LEN);
    assert_reads(&line(107), refused(ProxyRefusal::Unsupported));
    assert_eq!(parse_header(&line(108)), refused(ProxyRefusal::TooLong));
    // No LF within 107 octets: refused without waiting for more.
    assert_eq!(
        parse_header(&line(108)[..107]),
        refused(ProxyRefusal::TooLong)
    );
    assert_eq!(parse_header(&line(108)[..106]), HeaderParse::Incomplete);
}

#[test]
fn v1_malformed_lines_are_refused() {
    for line in [
        &b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\n"[..],
        b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25 \r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 040000 25\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",
        // Found by the fuzz target: `u16::from_str` takes a sign, the protocol does not.
        b"PROXY TCP4 192.0.2.7 198.51.100.1 +5535 25\r\n",
        b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 +587\r\n",
        // Also found by it: `ppp` takes " LF" as the end of the line.
        b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25 \n\r\n",
        b"PROXY TCP4 192.0.2.07 198.51.100.1 40000 25\r\n",
        b"PROXY TCP4 2001:db8::7 198.51.100.1 40000 25\r\n",
        b"PROXY TCP6 192.0.2.7 198.51.100.1 40000 25\r\n",
        b"PROXY TCP5 192.0.2.7 198.51.100.1 40000 25\r\n",
        b"PROXY  TCP4 192.0.2.7 198.51.100.1 40000 25\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n",
        b"PROXY TCP4 192.0.2.7\r198.51.100.1 40000 25\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\r\n",
        b"PROXY tcp4 192.0.2.7 198.51.100.1 40000 25\r\n",
        b"PROXY \xff\r\n",
        b"PROXY\r\n",
        b"PROXY-TCP4\r\n",
        b"proxy TCP4 192.0.2.7 198.51.100.1 40000 25\r\n",
        b"EHLO client.example\r\n",
        b"\x16\x03\x01\x02\x00",
    ] {
        assert_eq!(
            parse_header(line),
            refused(ProxyRefusal::Malformed),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn v2_tcp_over_ipv4_and_ipv6_name_the_client() {
    let header = v2(0x21, 0x11, &v4_block());
    assert_reads(&header, complete(28, remote("192.0.2.7:40000")));
    let mut block = Vec::new();
    block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
    block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    block.extend_from_slice(&[0x9c, 0x40, 0, 25]);
    let header = v2(0x21, 0x21, &block);
    assert_reads(&header, complete(52, remote("[2001:db8::7]:40000")));
}

#[test]
fn v2_tlvs_are_read_and_ignored() {
    let mut payload = v4_block();
    // PP2_TYPE_AUTHORITY "mx.example", PP2_TYPE_NOOP of three octets.
    payload.extend_from_slice(&[0x02, 0, 10]);
    payload.extend_from_slice(b"mx.example");
    payload.extend_from_slice(&[0x04, 0, 3, 0, 0, 0]);
    let header = v2(0x21, 0x11, &payload);
    assert_reads(&header, complete(header.len(), remote("192.0.2.7:40000")));
    // A TLV that claims more than the payload holds.
    let mut payload = v4_block();
    payload.extend_from_slice(&[0x02, 0, 10, b'x']);
    assert_eq!(
        parse_header(&v2(0x21, 0x11, &payload)),
        refused(ProxyRefusal::Malformed)
    );
}

#[test]
fn v2_payload_of_1024_octets_is_read_and_1025_is_too_long() {
    let header = |len: usize| {
        let mut payload = v4_block();
        // One NOOP TLV filling the rest.
        let value = len - payload.len() - 3;
        payload.push(0x04);
        payload.extend_from_slice(&u16::try_from(value).unwrap().to_be_bytes());
        payload.resize(len, 0);
        v2(0x21, 0x11, &payload)
    };
    let at_bound = header(V2_MAX_PAYLOAD);
    assert_eq!(at_bound.len(), MAX_HEADER_LEN);
    assert_reads(
        &at_bound,
        complete(MAX_HEADER_LEN, remote("192.0.2.7:40000")),
    );
    // Over the bound: refused from the fixed part, before the payload is waited for.
    let over = header(V2_MAX_PAYLOAD + 1);
    assert_eq!(
        parse_header(&over[..V2_FIXED_LEN]),
        refused(ProxyRefusal::TooLong)
    );
    assert_eq!(parse_header(&over), refused(ProxyRefusal::TooLong));
    assert_eq!(
        parse_header(&over[..V2_FIXED_LEN - 1]),
        HeaderParse::Incomplete
    );
}

#[test]
fn v2_local_is_the_balancer_itself() {
    assert_reads(&v2(0x20, 0x00, &[]), complete(16, ProxiedClient::Local));
    // LOCAL with addresses: the spec says to ignore them.
    assert_reads(
        &v2(0x20, 0x11, &v4_block()),
        complete(28, ProxiedClient::Local),
    );
}

#[test]
fn v2_without_a_tcp_client_is_unsupported() {
    // PROXY with AF_UNSPEC; AF_UNIX (216 octets of paths); UDP over IPv4; transport unspecified.
    assert_reads(&v2(0x21, 0x00, &[]), refused(ProxyRefusal::Unsupported));
    assert_reads(
        &v2(0x21, 0x31, &[0; 216]),
        refused(ProxyRefusal::Unsupported),
    );
    assert_reads(
        &v2(0x21, 0x12, &v4_block()),
        refused(ProxyRefusal::Unsupported),
    );
    assert_reads(
        &v2(0x21, 0x10, &v4_block()),
        refused(ProxyRefusal::Unsupported),
    );
}

#[test]
fn v2_malformed_headers_are_refused() {
    for (name, header) in [
        ("version 1", v2(0x11, 0x11, &v4_block())),
        ("version 3", v2(0x31, 0x11, &v4_block())),
        ("command 2", v2(0x22, 0x11, &v4_block())),
        ("family 4", v2(0x21, 0x41, &v4_block())),
        ("transport 3", v2(0x21, 0x13, &v4_block())),
        ("short addresses", v2(0x21, 0x11, &v4_block()[..11])),
    ] {
        assert_eq!(
            parse_header(&header),
            refused(ProxyRefusal::Malformed),
            "{name}"
        );
    }
    let mut wrong_signature = v2(0x21, 0x11, &v4_block());
    wrong_signature[11] = b'\r';
    assert_eq!(
        parse_header(&wrong_signature[..12]),
        refused(ProxyRefusal::Malformed)
    );
    assert_eq!(
        parse_header(b"\r\n\r\n\r\n"),
        refused(ProxyRefusal::Malformed)
    );
}

#[test]
fn untrusted_openings_are_sniffed_within_twelve_octets() {
    assert_eq!(sniff(b""), Sniff::Undecided);
    assert_eq!(sniff(b"PROX"), Sniff::Undecided);
    assert_eq!(sniff(b"PROXY"), Sniff::Undecided);
    assert_eq!(sniff(b"PROXY "), Sniff::Header);
    assert_eq!(
        sniff(b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n"),
        Sniff::Header
    );
    assert_eq!(sniff(&V2_SIGNATURE[..11]), Sniff::Undecided);
    assert_eq!(sniff(V2_SIGNATURE), Sniff::Header);
    assert_eq!(sniff(&v2(0x21, 0x11, &v4_block())), Sniff::Header);
    for served in [
        &b"EHLO client.example\r\n"[..],
        b"PROXYEHLO\r\n",
        b"\r\nEHLO x\r\n",
        b"\r\n\r\n\r\n",
        b"P",
    ] {
        let expected = if served == b"P" {
            Sniff::Undecided
        } else {
            Sniff::NotHeader
        };
        assert_eq!(sniff(served), expected, "{served:?}");
    }
}

#[test]
fn a_tls_record_is_no_proxy_header_on_465() {
    assert!(!opens_proxy_header(0x16));
    assert!(opens_proxy_header(b'P'));
    assert!(opens_proxy_header(b'\r'));
}

#[test]
fn trust_follows_the_configured_networks() {
    let networks: Vec<IpNet> = vec![
        "10.0.5.0/24".parse().unwrap(),
        "2001:db8::7/128".parse().unwrap(),
    ];
    let trust = ProxyTrust::new(&networks);
    assert!(trust.is_enabled());
    assert!(trust.trusts(IpAddr::V4(Ipv4Addr::new(10, 0, 5, 200))));
    assert!(!trust.trusts(IpAddr::V4(Ipv4Addr::new(10, 0, 6, 1))));
    assert!(trust.trusts("::ffff:10.0.5.9".parse().unwrap()));
    assert!(trust.trusts("2001:db8::7".parse().unwrap()));
    assert!(!trust.trusts("2001:db8::8".parse().unwrap()));
    assert!(!ProxyTrust::new(&[]).is_enabled());
    assert!(!ProxyTrust::new(&[]).trusts(IpAddr::V4(Ipv4Addr::LOCALHOST)));
}

#[test]
fn refusal_labels_are_distinct() {
    let all = [
        ProxyRefusal::Missing,
        ProxyRefusal::Timeout,
        ProxyRefusal::Malformed,
        ProxyRefusal::TooLong,
        ProxyRefusal::Unsupported,
        ProxyRefusal::Untrusted,
    ];
    let labels: std::collections::BTreeSet<_> = all.iter().map(|r| r.label()).collect();
    assert_eq!(labels.len(), all.len());
}

/// A loopback pair: the server's accepted socket and the client's.
async fn socket_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (server, client)
}

#[tokio::test]
async fn the_socket_reader_takes_the_header_and_not_one_octet_more() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let balancer: SocketAddr = "10.0.5.1:50000".parse().unwrap();
    let limit = std::time::Duration::from_secs(30);
    let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n".to_vec();
    let tls_hello = [0x16, 0x03, 0x01, 0x00, 0x05];
    for (header, expected) in [
        (v1, "192.0.2.7:40000".parse().unwrap()),
        (
            v2(0x21, 0x11, &v4_block()),
            "192.0.2.7:40000".parse().unwrap(),
        ),
        (v2(0x20, 0x00, &[]), balancer),
    ] {
        // In three writes: part of the header, the rest with the client's first bytes, more.
        let (mut server, mut client) = socket_pair().await;
        client.write_all(&header[..7]).await.unwrap();
        let mut tail = header[7..].to_vec();
        let writer = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tail.extend_from_slice(&tls_hello[..2]);
            client.write_all(&tail).await.unwrap();
            client.write_all(&tls_hello[2..]).await.unwrap();
            client
        });
        let read = read_trusted_header(&mut server, balancer, limit).await;
        assert_eq!(read, Ok(expected));
        let _client = writer.await.unwrap();
        let mut after = [0u8; 5];
        server.read_exact(&mut after).await.unwrap();
        assert_eq!(
            after, tls_hello,
            "the bytes after the header are left to TLS"
        );
    }
}

#[tokio::test]
async fn the_socket_reader_refuses_what_the_parser_refuses() {
    use tokio::io::AsyncWriteExt;
    let balancer: SocketAddr = "10.0.5.1:50000".parse().unwrap();
    let limit = std::time::Duration::from_secs(30);
    let (mut server, mut client) = socket_pair().await;
    client.write_all(b"EHLO balancer\r\n").await.unwrap();
    let read = read_trusted_header(&mut server, balancer, limit).await;
    assert_eq!(read, Err(ProxyRefusal::Malformed));
    // Closed half-way through a header.
    let (mut server, mut client) = socket_pair().await;
    client.write_all(b"PROXY TCP4 192.0.2.7").await.unwrap();
    drop(client);
    let read = read_trusted_header(&mut server, balancer, limit).await;
    assert_eq!(read, Err(ProxyRefusal::Missing));
}
