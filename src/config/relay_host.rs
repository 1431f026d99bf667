//! `[delivery] relayhost`: the one host all mail goes to instead of the recipients' MX
//! (Postfix's `relayhost`), parsed when the config is read.
//!
//! The relay host never gets an MX lookup, so brackets only serve to delimit an IPv6 address;
//! a name is resolved with A/AAAA, an IP address is used as it is. Resolving and connecting
//! are `delivery`'s.

use std::net::{IpAddr, Ipv6Addr};

use serde::Deserialize;

/// `[delivery] relayhost` as checked: `HOST`, `HOST:PORT`, `[HOST]`, `[HOST]:PORT`,
/// `[IPV6]:PORT` (also `[IPv6:...]`), or a bare IP address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RelayHost {
    /// Brackets removed, no trailing dot.
    host: String,
    /// `None` when the text has none: `[delivery] port` applies.
    port: Option<u16>,
}

impl RelayHost {
    /// Parses the text of `[delivery] relayhost`; `None` when it is none of the forms above.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']')?;
            let port = if after.is_empty() {
                None
            } else {
                Some(after.strip_prefix(':')?)
            };
            let inside = match inside.get(..5) {
                Some(prefix) if prefix.eq_ignore_ascii_case("IPv6:") => {
                    inside[5..].parse::<Ipv6Addr>().ok()?;
                    &inside[5..]
                }
                _ => inside,
            };
            (inside, port)
        } else if text.parse::<Ipv6Addr>().is_ok() {
            (text, None)
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse().ok()?)
            }
            Some(_) => return None,
        };
        if port == Some(0) || !(host.parse::<IpAddr>().is_ok() || is_host_name(host)) {
            return None;
        }
        Some(RelayHost {
            host: host.trim_end_matches('.').to_string(),
            port,
        })
    }

    /// The host name or IP address, without brackets or trailing dot.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port written after the host, else `default` (`[delivery] port`).
    pub fn port_or(&self, default: u16) -> u16 {
        self.port.unwrap_or(default)
    }
}

impl TryFrom<String> for RelayHost {
    type Error = &'static str;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text).ok_or("must be HOST or HOST:PORT")
    }
}

/// A DNS host name in LDH form (underscore tolerated), optional trailing dot.
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host and port as delivery uses them, with `default_port` standing for `[delivery] port`.
    fn parse_relayhost(text: &str, default_port: u16) -> Option<(String, u16)> {
        RelayHost::parse(text).map(|r| (r.host().to_string(), r.port_or(default_port)))
    }

    #[test]
    fn relayhost_forms() {
        let p = |t| parse_relayhost(t, 25);
        assert_eq!(p("smtp.example.net"), Some(("smtp.example.net".into(), 25)));
        assert_eq!(
            p("smtp.example.net:587"),
            Some(("smtp.example.net".into(), 587))
        );
        assert_eq!(
            p("smtp.example.net."),
            Some(("smtp.example.net".into(), 25))
        );
        assert_eq!(
            p("[smtp.example.net]"),
            Some(("smtp.example.net".into(), 25))
        );
        assert_eq!(
            p("[smtp.example.net]:2525"),
            Some(("smtp.example.net".into(), 2525))
        );
        assert_eq!(p("192.0.2.7"), Some(("192.0.2.7".into(), 25)));
        assert_eq!(p("192.0.2.7:2525"), Some(("192.0.2.7".into(), 2525)));
        assert_eq!(p("[192.0.2.7]:2525"), Some(("192.0.2.7".into(), 2525)));
        assert_eq!(p("[::1]:2525"), Some(("::1".into(), 2525)));
        assert_eq!(p("[IPv6:2001:db8::1]"), Some(("2001:db8::1".into(), 25)));
        assert_eq!(p("2001:db8::1"), Some(("2001:db8::1".into(), 25)));
        assert_eq!(
            p(" relay_host.internal "),
            Some(("relay_host.internal".into(), 25))
        );
        assert_eq!(
            parse_relayhost("localhost", 2525),
            Some(("localhost".into(), 2525))
        );
    }

    #[test]
    fn relayhost_rejects() {
        let p = |t| parse_relayhost(t, 25);
        for bad in [
            "",
            ":25",
            "host:",
            "host:0",
            "host:65536",
            "host:+25",
            "host:2x",
            "[host",
            "[host]25",
            "[host]:",
            "[]:25",
            "2001:db8::1:25x",
            "bad host",
            "-bad.example",
            "a..b",
            "[IPv6:example.org]",
            "host:25:26",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }
}
