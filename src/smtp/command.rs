//! The command lines an SMTP client sends (RFC 5321 section 4.1.1), each with its CRLF, and
//! the one rule both clients need before putting an address on such a line.
//!
//! Parameters are added only when the server advertised the extension (RFC 5321 section
//! 4.1.1.11 forbids others); which parameters a client wants to declare at all is its own
//! choice ([`MailFrom`]).

use super::extensions::Extensions;

/// `DATA` (RFC 5321 4.1.1.4).
pub const DATA: &str = "DATA\r\n";
/// `STARTTLS` (RFC 3207).
pub const STARTTLS: &str = "STARTTLS\r\n";
/// `RSET` (RFC 5321 4.1.1.5).
pub const RSET: &str = "RSET\r\n";
/// `QUIT` (RFC 5321 4.1.1.10).
pub const QUIT: &str = "QUIT\r\n";

/// `EHLO name`.
pub fn ehlo(name: &str) -> String {
    format!("EHLO {name}\r\n")
}

/// `HELO name`, for servers that refuse EHLO.
pub fn helo(name: &str) -> String {
    format!("HELO {name}\r\n")
}

/// `RCPT TO:<recipient>`.
pub fn rcpt_to(recipient: &str) -> String {
    format!("RCPT TO:<{recipient}>\r\n")
}

/// The reverse-path of a transaction and what the message would like to declare with it.
#[derive(Debug, Clone, Copy)]
pub struct MailFrom<'a> {
    /// Reverse-path; empty for the null sender `<>`.
    pub sender: &'a str,
    /// The message size for `SIZE=` (RFC 1870); `None` declares none.
    pub size: Option<u64>,
    /// The message has 8-bit content: `BODY=8BITMIME` (RFC 6152).
    pub body_8bit: bool,
    /// The envelope or headers need `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// The message was accepted with `REQUIRETLS` (RFC 8689): it keeps it on every hop.
    pub require_tls: bool,
}

impl MailFrom<'_> {
    /// The `MAIL FROM` command line with those parameters the server supports.
    pub fn command(&self, ext: &Extensions) -> String {
        let mut line = format!("MAIL FROM:<{}>", self.sender);
        if let (Some(size), Some(_)) = (self.size, ext.size) {
            line.push_str(&format!(" SIZE={size}"));
        }
        // Without 8BITMIME the message goes as it is (RFC 6152 section 3 would have us
        // downgrade or bounce; every current MTA accepts 8-bit data, as Postfix assumes).
        if self.body_8bit && ext.eight_bit_mime {
            line.push_str(" BODY=8BITMIME");
        }
        if self.smtputf8 && ext.smtputf8 {
            line.push_str(" SMTPUTF8");
        }
        if self.require_tls && ext.require_tls {
            line.push_str(" REQUIRETLS");
        }
        line.push_str("\r\n");
        line
    }
}

/// An address that cannot be put between angle brackets on a command line: a control
/// character would end or split the line, a bracket would end the path early.
pub fn is_unsendable_address(address: &str) -> bool {
    address
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail_from(sender: &str) -> MailFrom<'_> {
        MailFrom {
            sender,
            size: None,
            body_8bit: false,
            smtputf8: false,
            require_tls: false,
        }
    }

    #[test]
    fn size_is_declared_only_when_given_and_advertised() {
        let with_size = Extensions {
            size: Some(0),
            eight_bit_mime: true,
            ..Extensions::default()
        };
        let mut m = mail_from("a@example.com");
        m.body_8bit = true;
        assert_eq!(
            m.command(&with_size),
            "MAIL FROM:<a@example.com> BODY=8BITMIME\r\n"
        );
        m.size = Some(77);
        assert_eq!(
            m.command(&with_size),
            "MAIL FROM:<a@example.com> SIZE=77 BODY=8BITMIME\r\n"
        );
        assert_eq!(
            m.command(&Extensions::default()),
            "MAIL FROM:<a@example.com>\r\n"
        );
    }

    #[test]
    fn requiretls_is_declared_only_when_advertised() {
        let mut m = mail_from("a@example.com");
        m.require_tls = true;
        let with = Extensions {
            require_tls: true,
            ..Extensions::default()
        };
        assert_eq!(m.command(&with), "MAIL FROM:<a@example.com> REQUIRETLS\r\n");
        assert_eq!(
            m.command(&Extensions::default()),
            "MAIL FROM:<a@example.com>\r\n"
        );
    }

    #[test]
    fn null_sender_and_rcpt() {
        assert_eq!(
            mail_from("").command(&Extensions::default()),
            "MAIL FROM:<>\r\n"
        );
        assert_eq!(rcpt_to("b@example.org"), "RCPT TO:<b@example.org>\r\n");
        assert_eq!(ehlo("relay.example"), "EHLO relay.example\r\n");
        assert_eq!(helo("relay.example"), "HELO relay.example\r\n");
    }

    #[test]
    fn unsendable_addresses() {
        assert!(!is_unsendable_address("a@example.org"));
        assert!(!is_unsendable_address("\"john doe\"@example.org"));
        assert!(!is_unsendable_address("jörg@bücher.example"));
        assert!(is_unsendable_address("a@example.org>\r\nRCPT TO:<x@y"));
        assert!(is_unsendable_address("a<b@example.org"));
    }
}
