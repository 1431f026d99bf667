//! The service extensions an EHLO reply advertises (RFC 5321 section 4.1.1.1 and the
//! extension RFCs), as far as either client acts on them.
//!
//! A client uses a parameter only when the server advertised it: the delivery client looks
//! at all of these, `postern sendmail` only at `8BITMIME`. A reply to HELO advertises nothing.

use super::Response;

/// The service extensions of an EHLO reply that the clients act on (RFC 5321 4.1.1.1: keywords
/// are case-insensitive, the first line is the server's greeting and carries none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 3207 `STARTTLS`.
    pub starttls: bool,
    /// RFC 2920 `PIPELINING`.
    pub pipelining: bool,
    /// RFC 1870 `SIZE`: `Some(0)` means the keyword without a limit (or limit 0, "no fixed
    /// maximum"); `None` means SIZE is not supported.
    pub size: Option<u64>,
    /// RFC 6152 `8BITMIME`.
    pub eight_bit_mime: bool,
    /// RFC 6531 `SMTPUTF8`.
    pub smtputf8: bool,
    /// RFC 2034 `ENHANCEDSTATUSCODES`.
    pub enhanced_status_codes: bool,
    /// RFC 3030 `CHUNKING` (recorded, BDAT not used yet).
    pub chunking: bool,
    /// RFC 3461 `DSN`: NOTIFY/ORCPT on RCPT, RET/ENVID on MAIL.
    pub dsn: bool,
    /// RFC 8689 `REQUIRETLS`.
    pub require_tls: bool,
}

impl Extensions {
    /// Reads the keywords of a positive EHLO reply. A reply to HELO gives the default (none).
    pub fn from_ehlo(reply: &Response) -> Self {
        let mut ext = Self::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "STARTTLS" => ext.starttls = true,
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => {
                    ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
                }
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
                "CHUNKING" => ext.chunking = true,
                "DSN" => ext.dsn = true,
                "REQUIRETLS" => ext.require_tls = true,
                _ => {}
            }
        }
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::response::parse_one as one;

    #[test]
    fn multi_line_ehlo_reply() {
        let bytes = b"250-mx.example.org hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
            250-starttls\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n";
        let r = one(bytes);
        assert_eq!(r.code, 250);
        assert_eq!(r.lines.len(), 7);
        assert_eq!(r.enhanced, None);
        let ext = Extensions::from_ehlo(&r);
        assert_eq!(
            ext,
            Extensions {
                starttls: true,
                pipelining: true,
                size: Some(10_240_000),
                eight_bit_mime: true,
                smtputf8: true,
                enhanced_status_codes: true,
                chunking: false,
                dsn: false,
                require_tls: false,
            }
        );
    }

    #[test]
    fn requiretls_keyword() {
        let r = one(b"250-mx\r\n250-STARTTLS\r\n250 requiretls\r\n");
        assert!(Extensions::from_ehlo(&r).require_tls);
        assert!(!Extensions::from_ehlo(&one(b"250-mx\r\n250 STARTTLS\r\n")).require_tls);
    }

    #[test]
    fn size_without_number_means_no_limit() {
        let r = one(b"250-mx\r\n250 SIZE\r\n");
        assert_eq!(Extensions::from_ehlo(&r).size, Some(0));
        let r = one(b"250 mx\r\n");
        assert_eq!(Extensions::from_ehlo(&r), Extensions::default());
        let r = one(b"250-mx\r\n250 dsn\r\n");
        assert!(Extensions::from_ehlo(&r).dsn);
    }
}
