//! The relay's own listening addresses, so that delivery never connects to itself.
//!
//! An MX host (or relay host) that resolves to an address where this process itself listens
//! for SMTP would take the message back in, and, with a trusted network that includes the
//! relay's own address, send it out again to the same MX: one message to such a domain made
//! 1,188 copies in 6 s (issue 10). RFC 5321 section 5.1 has an MTA that finds itself among a
//! domain's MX hosts use only the hosts preferred to itself; Postern, like Postfix, stops at
//! the first address that is its own: with nothing tried before it the recipients fail for
//! good (5.4.6, Postfix's words "mail for DOMAIN loops back to myself"), otherwise the
//! group's last temporary failure stands.
//!
//! A destination address is ours when its port is the port of one of our SMTP listeners
//! (`[listen] submission`, `submissions`, `relay`) and its IP is that listener's IP, or, for a
//! listener bound to the wildcard (`0.0.0.0`, or `::` which also takes IPv4 on Linux), any
//! address of this host: loopback, the unspecified address (a connect to `0.0.0.0` reaches
//! the host itself) or an address a socket can be bound to. Comparing the port too matters:
//! tests deliver to receivers on 127.0.0.1 at other ports, and so may a relay host.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use crate::config::ListenConfig;

/// The SMTP listeners of this process.
#[derive(Debug, Clone, Default)]
pub struct OwnListeners {
    listeners: Vec<SocketAddr>,
}

impl OwnListeners {
    /// The SMTP roles of `[listen]` (the HTTP endpoint takes no mail).
    pub fn from_config(listen: &ListenConfig) -> Self {
        Self {
            listeners: [listen.submission, listen.submissions, listen.relay]
                .into_iter()
                .flatten()
                .collect(),
        }
    }

    /// Whether connecting to `addr` would reach one of our own listeners.
    pub fn is_own(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.listeners.iter().any(|listener| {
            if listener.port() != addr.port() {
                return false;
            }
            let bound = canonical(listener.ip());
            match bound {
                IpAddr::V4(v4) if v4.is_unspecified() => ip.is_ipv4() && is_local(ip),
                IpAddr::V6(v6) if v6.is_unspecified() => is_local(ip),
                bound => bound == ip || (ip.is_unspecified() && bound.is_loopback()),
            }
        })
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An address of this host: loopback, unspecified, or one a socket can be bound to (the
/// kernel allows that only for its own addresses).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(submission: &str, relay: Option<&str>) -> OwnListeners {
        OwnListeners::from_config(&ListenConfig {
            submission: Some(submission.parse().unwrap()),
            submissions: None,
            relay: relay.map(|r| r.parse().unwrap()),
            http: Some("127.0.0.1:25".parse().unwrap()),
            proxy_protocol: Vec::new(),
            handoff: None,
        })
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn exact_listener_address_and_port() {
        let o = own("127.0.0.1:587", Some("192.0.2.10:25"));
        assert!(o.is_own(at("192.0.2.10:25")));
        assert!(!o.is_own(at("192.0.2.11:25")));
        // Same address, another port: a receiver beside us, not us.
        assert!(!o.is_own(at("192.0.2.10:2525")));
        assert!(o.is_own(at("127.0.0.1:587")));
        assert!(
            !o.is_own(at("127.0.0.1:25")),
            "the HTTP listener takes no mail"
        );
        assert!(o.is_own(at("[::ffff:192.0.2.10]:25")));
        assert!(
            o.is_own(at("0.0.0.0:587")),
            "a connect to 0.0.0.0 reaches loopback"
        );
    }

    #[test]
    fn wildcard_listeners_match_every_local_address() {
        let o = own("127.0.0.1:587", Some("0.0.0.0:25"));
        assert!(o.is_own(at("127.0.0.1:25")));
        assert!(o.is_own(at("127.0.0.9:25")));
        assert!(o.is_own(at("0.0.0.0:25")));
        assert!(!o.is_own(at("127.0.0.9:26")));
        // TEST-NET-1 is no address of a test machine.
        assert!(!o.is_own(at("192.0.2.1:25")));
        assert!(!o.is_own(at("[::1]:25")), "0.0.0.0 takes no IPv6");
        let o = own("127.0.0.1:587", Some("[::]:25"));
        assert!(o.is_own(at("[::1]:25")));
        assert!(o.is_own(at("127.0.0.1:25")), ":: takes IPv4 too");
        assert!(!o.is_own(at("[2001:db8::1]:25")));
    }
}
