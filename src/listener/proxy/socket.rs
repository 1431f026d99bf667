//! The socket side of the PROXY protocol: reading a trusted balancer's header, and the first
//! octet of an untrusted port-465 connection.
//!
//! Not one octet past the header is consumed: on 465 the TLS handshake follows it, on 25 and
//! 587 the session. So the reader peeks, asks [`parse_header`] about what it saw, and takes
//! from the socket only octets that belong to the header: all it peeked while the header is
//! incomplete (they are all header), then exactly the rest once it is whole. Each peek waits
//! for new octets, because the ones before it were taken: no busy loop on a slow balancer.
//!
//! The header is read before the connection is admitted (caps and brakes need the real
//! client's address), so the wait is bounded by `timeouts.proxy_header` and by
//! [`MAX_HEADER_LEN`]; only sources in `[listen] proxy_protocol` get that wait.

use super::{
    HeaderParse, MAX_HEADER_LEN, ProxiedClient, ProxyRefusal, opens_proxy_header, parse_header,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The first octet of an untrusted connection on 465, before the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyCheck {
    /// Not a PROXY header (or the client left): go on with the handshake.
    Pass,
    /// A PROXY header from a source that is not trusted.
    Refused,
    /// Nothing within the handshake's timeout.
    TimedOut,
}

/// Reads the PROXY header that a connection from `balancer` must open with, within `limit`.
/// Returns the client's address: the header's, or the balancer's for a `LOCAL` header.
///
/// # Errors
/// The [`ProxyRefusal`] to count: no whole header in time (`Timeout`), the connection closed
/// or failed first (`Missing`), or what [`parse_header`] refused.
pub(crate) async fn read_trusted_header(
    stream: &mut TcpStream,
    balancer: SocketAddr,
    limit: Duration,
) -> Result<SocketAddr, ProxyRefusal> {
    match tokio::time::timeout(limit, read_header(stream)).await {
        Err(_) => Err(ProxyRefusal::Timeout),
        Ok(Err(refusal)) => Err(refusal),
        Ok(Ok(ProxiedClient::Remote(client))) => Ok(client),
        Ok(Ok(ProxiedClient::Local)) => Ok(balancer),
    }
}

async fn read_header(stream: &mut TcpStream) -> Result<ProxiedClient, ProxyRefusal> {
    // `held` is the header so far (taken from the socket), followed while deciding by what
    // the last peek saw.
    let mut held: Vec<u8> = Vec::with_capacity(64);
    let mut window = [0u8; MAX_HEADER_LEN];
    loop {
        // An incomplete header is shorter than MAX_HEADER_LEN, so there is always room.
        let room = MAX_HEADER_LEN - held.len();
        let seen = match stream.peek(&mut window[..room]).await {
            Ok(0) | Err(_) => return Err(ProxyRefusal::Missing),
            Ok(n) => n,
        };
        let taken = held.len();
        held.extend_from_slice(&window[..seen]);
        let (rest, client) = match parse_header(&held) {
            HeaderParse::Refused(refusal) => return Err(refusal),
            HeaderParse::Incomplete => (seen, None),
            HeaderParse::Complete { len, client } => (len - taken, Some(client)),
        };
        if stream.read_exact(&mut window[..rest]).await.is_err() {
            return Err(ProxyRefusal::Missing);
        }
        if let Some(client) = client {
            return Ok(client);
        }
    }
}

/// Looks at the first octet of an untrusted connection on 465 without taking it.
pub(crate) async fn check_untrusted_tls(stream: &TcpStream, limit: Duration) -> ProxyCheck {
    let mut first = [0u8; 1];
    match tokio::time::timeout(limit, stream.peek(&mut first)).await {
        Err(_) => ProxyCheck::TimedOut,
        Ok(Ok(1)) if opens_proxy_header(first[0]) => ProxyCheck::Refused,
        // The handshake reports a closed or failed connection itself.
        Ok(_) => ProxyCheck::Pass,
    }
}
