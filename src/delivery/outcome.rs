//! What an attempt meant for each recipient: delivered, try again, or give up.
//!
//! Every result of delivery is classified here and nowhere else (the style guide's "one
//! function"): a remote reply by its code (RFC 5321 section 4.2.1: 2yz done, 4yz transient,
//! 5yz permanent), a failure without a transaction answer (DNS, connection, TLS, timeouts,
//! protocol errors) by [`DeliveryError::verdict`]. Each outcome keeps an RFC 3463 status code and a
//! one-line diagnostic, which is what the spool stores and what a DSN (RFC 3464, later) needs:
//! `Status:` from [`RecipientOutcome::status`], `Diagnostic-Code:`/`Remote-MTA:` from the
//! detail text.
//!
//! Fail-closed: anything not understood is temporary, so mail stays in the spool until it
//! expires rather than being bounced on a local or network problem.

use std::fmt;
use std::net::SocketAddr;

use super::client::ClientError;
use super::mx::MxError;
use crate::smtp::response::clean_text;
use crate::smtp::{EnhancedCode, Response};

/// The three ways an attempt can end for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The server took responsibility for the message (2yz after the final dot).
    Delivered,
    /// Try again later (4yz, network and local trouble).
    Temporary,
    /// Give up (5yz, null MX, nonexistent domain).
    Permanent,
}

impl Verdict {
    /// The verdict of a reply code; codes that are not 2yz, 4yz or 5yz count as temporary.
    pub fn of_code(code: u16) -> Self {
        match code / 100 {
            2 => Verdict::Delivered,
            5 => Verdict::Permanent,
            _ => Verdict::Temporary,
        }
    }

    /// The `result` of the delivery attempt's log line (the metric and the delivery log say
    /// `bounced` for `failed`).
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Temporary => "deferred",
            Verdict::Permanent => "failed",
        }
    }
}

/// The SMTP command a reply answered, for diagnostics ("in reply to RCPT TO").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The 220 banner.
    Greeting,
    /// EHLO.
    Ehlo,
    /// HELO.
    Helo,
    /// STARTTLS.
    StartTls,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA.
    Data,
    /// The message body and its final dot.
    DataEnd,
    /// RSET before a transaction on a reused session.
    Rset,
    /// AUTH (the fleet secret of a hand-off, `handoff.rs`).
    Auth,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Greeting => "greeting",
            Command::Ehlo => "EHLO",
            Command::Helo => "HELO",
            Command::StartTls => "STARTTLS",
            Command::Mail => "MAIL FROM",
            Command::Rcpt => "RCPT TO",
            Command::Data => "DATA",
            Command::DataEnd => "end of DATA",
            Command::Rset => "RSET",
            Command::Auth => "AUTH",
        })
    }
}

/// The host a reply came from: MX name and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// MX (or relay) host name as found in DNS or configuration, without trailing dot.
    pub host: String,
    /// The address connected to.
    pub addr: SocketAddr,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.host, self.addr.ip())
    }
}

/// The result of one attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// Delivered, temporary or permanent.
    pub verdict: Verdict,
    /// RFC 3463 status: the server's enhanced code when it sent one, else derived.
    pub status: EnhancedCode,
    /// One line for logs and the spool, e.g.
    /// `mx.example.org[192.0.2.1] said: 550 5.1.1 no such user (in reply to RCPT TO)`.
    pub detail: String,
    /// The remote server's reply on one line (`550 5.1.1 no such user`) when the outcome is
    /// a reply: a DSN's `Diagnostic-Code: smtp; ...` (RFC 3464 section 2.3.6).
    pub remote_reply: Option<String>,
}

impl RecipientOutcome {
    /// The outcome a remote reply gives.
    pub fn from_reply(peer: &Peer, command: Command, reply: &Response) -> Self {
        let verdict = Verdict::of_code(reply.code);
        let status = reply.enhanced.unwrap_or_else(|| default_status(verdict));
        let detail = format!("{peer} said: {} (in reply to {command})", reply.one_line());
        Self {
            verdict,
            status,
            detail,
            remote_reply: Some(reply.one_line()),
        }
    }

    /// The outcome of a failure that got no transaction answer from any server.
    pub fn from_failure(failure: &DeliveryError) -> Self {
        let verdict = failure.verdict();
        Self {
            verdict,
            status: failure.status(),
            detail: clean_text(&failure.to_string()),
            remote_reply: None,
        }
    }

    /// A temporary outcome with a local reason (`status` class 4).
    pub fn temporary(status: EnhancedCode, detail: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Temporary,
            status,
            detail: clean_text(&detail.into()),
            remote_reply: None,
        }
    }

    /// A permanent outcome with a local reason (`status` class 5).
    pub fn permanent(status: EnhancedCode, detail: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Permanent,
            status,
            detail: clean_text(&detail.into()),
            remote_reply: None,
        }
    }

    /// The text stored in the spool: status code, then the detail.
    pub fn spool_text(&self) -> String {
        format!("{} {}", self.status, self.detail)
    }
}

/// The RFC 3463 code of a reply that carried none: `X.0.0` ("other or undefined status")
/// of the reply's class. Guessing a subject from the command would put words in the
/// server's mouth (a 452 to RCPT is "too many recipients", not "bad mailbox").
fn default_status(verdict: Verdict) -> EnhancedCode {
    match verdict {
        Verdict::Delivered => EnhancedCode::new(2, 0, 0),
        Verdict::Temporary => EnhancedCode::new(4, 0, 0),
        Verdict::Permanent => EnhancedCode::new(5, 0, 0),
    }
}

/// Why a destination could not be given the transaction: no server gave a transaction
/// answer, or the route itself is impossible. Session failures are always temporary: the
/// server never said "no" (RFC 5321 section 5.1: try the next address, then later).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// DNS said no, or could not say.
    #[error(transparent)]
    Route(#[from] MxError),
    /// The last address tried failed before a transaction answer.
    #[error("{peer}: {error}")]
    Session {
        /// Host and address.
        peer: Peer,
        /// What went wrong.
        error: ClientError,
    },
    /// The domain has MX hosts, and DNS says none of them has an address.
    #[error("no MX host of {domain} has an address")]
    NoAddresses {
        /// The destination domain.
        domain: String,
    },
    /// The recipient address has no domain part, so there is nowhere to route it.
    #[error("recipient address has no domain")]
    NoDomain,
    /// The resolver could not be set up (for example no `/etc/resolv.conf`).
    #[error("DNS resolver unavailable: {0}")]
    ResolverUnavailable(String),
    /// Delivery stopped because the server is shutting down.
    #[error("delivery interrupted by shutdown")]
    Shutdown,
    /// A TLS policy (MTA-STS `enforce`) leaves no host to try.
    #[error("{0}")]
    PolicyRefused(String),
    /// The best MX host (or the relay host) is this relay itself (`own.rs`).
    #[error("mail for {domain} loops back to myself")]
    Loop {
        /// The destination domain (or relay host).
        domain: String,
    },
}

impl DeliveryError {
    /// Temporary or permanent. The one place where failures are classified.
    pub fn verdict(&self) -> Verdict {
        match self {
            DeliveryError::Route(e) if e.is_permanent() => Verdict::Permanent,
            DeliveryError::NoAddresses { .. }
            | DeliveryError::NoDomain
            | DeliveryError::Loop { .. } => Verdict::Permanent,
            DeliveryError::Route(_)
            | DeliveryError::Session { .. }
            | DeliveryError::ResolverUnavailable(_)
            | DeliveryError::Shutdown
            | DeliveryError::PolicyRefused(_) => Verdict::Temporary,
        }
    }

    /// The RFC 3463 status a DSN would give.
    pub fn status(&self) -> EnhancedCode {
        match self {
            DeliveryError::Route(e) => e.status(),
            // 5.4.4 "unable to route": no address for any MX host.
            DeliveryError::NoAddresses { .. } => EnhancedCode::new(5, 4, 4),
            // 5.1.3 "bad destination mailbox address syntax".
            DeliveryError::NoDomain => EnhancedCode::new(5, 1, 3),
            DeliveryError::Session { error, .. } => error.status(),
            // 4.4.3 "directory server failure".
            DeliveryError::ResolverUnavailable(_) => EnhancedCode::new(4, 4, 3),
            // 4.3.2 "system not accepting network messages".
            DeliveryError::Shutdown => EnhancedCode::new(4, 3, 2),
            // 4.7.5 "cryptographic failure", as for a refused certificate.
            DeliveryError::PolicyRefused(_) => EnhancedCode::new(4, 7, 5),
            // 5.4.6 "routing loop detected".
            DeliveryError::Loop { .. } => EnhancedCode::new(5, 4, 6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            host: "mx.example.org".into(),
            addr: "192.0.2.1:25".parse().unwrap(),
        }
    }

    fn reply(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> Response {
        Response {
            code,
            enhanced,
            lines: vec![text.to_string()],
        }
    }

    #[test]
    fn reply_codes_classify() {
        assert_eq!(Verdict::of_code(250), Verdict::Delivered);
        assert_eq!(Verdict::of_code(251), Verdict::Delivered);
        assert_eq!(Verdict::of_code(421), Verdict::Temporary);
        assert_eq!(Verdict::of_code(452), Verdict::Temporary);
        assert_eq!(Verdict::of_code(550), Verdict::Permanent);
        assert_eq!(Verdict::of_code(354), Verdict::Temporary);
    }

    #[test]
    fn outcome_from_reply_keeps_server_code_and_names_the_peer() {
        let r = reply(550, Some(EnhancedCode::new(5, 1, 1)), "5.1.1 no such user");
        let o = RecipientOutcome::from_reply(&peer(), Command::Rcpt, &r);
        assert_eq!(o.verdict, Verdict::Permanent);
        assert_eq!(o.status, EnhancedCode::new(5, 1, 1));
        assert_eq!(
            o.detail,
            "mx.example.org[192.0.2.1] said: 550 5.1.1 no such user (in reply to RCPT TO)"
        );
        assert_eq!(o.spool_text(), format!("5.1.1 {}", o.detail));
    }

    #[test]
    fn outcome_without_enhanced_code_gets_a_default() {
        let o = RecipientOutcome::from_reply(&peer(), Command::Rcpt, &reply(450, None, "later"));
        assert_eq!(
            (o.verdict, o.status),
            (Verdict::Temporary, EnhancedCode::new(4, 0, 0))
        );
        let o = RecipientOutcome::from_reply(&peer(), Command::Mail, &reply(553, None, "no"));
        assert_eq!(o.status, EnhancedCode::new(5, 0, 0));
        let o = RecipientOutcome::from_reply(&peer(), Command::DataEnd, &reply(250, None, "ok"));
        assert_eq!(
            (o.verdict, o.status),
            (Verdict::Delivered, EnhancedCode::new(2, 0, 0))
        );
    }

    #[test]
    fn failures_classify_once() {
        let f = DeliveryError::Route(MxError::NullMx {
            domain: "example.org".into(),
        });
        assert_eq!(
            (f.verdict(), f.status()),
            (Verdict::Permanent, EnhancedCode::new(5, 1, 10))
        );
        let f = DeliveryError::NoAddresses {
            domain: "example.org".into(),
        };
        assert_eq!(
            (f.verdict(), f.status()),
            (Verdict::Permanent, EnhancedCode::new(5, 4, 4))
        );
        assert_eq!(
            (
                DeliveryError::NoDomain.verdict(),
                DeliveryError::NoDomain.status()
            ),
            (Verdict::Permanent, EnhancedCode::new(5, 1, 3))
        );
        let f = DeliveryError::Route(MxError::Temporary {
            name: "example.org".into(),
            record_type: "MX",
            detail: "response code SERVFAIL".into(),
        });
        assert_eq!(
            (f.verdict(), f.status()),
            (Verdict::Temporary, EnhancedCode::new(4, 4, 3))
        );
        let f = DeliveryError::Session {
            peer: peer(),
            error: ClientError::Timeout {
                phase: Command::Greeting,
                after: std::time::Duration::from_secs(5),
            },
        };
        assert_eq!(f.verdict(), Verdict::Temporary);
        assert_eq!(
            RecipientOutcome::from_failure(&f).detail,
            "mx.example.org[192.0.2.1]: timeout after 5s at greeting"
        );
        assert_eq!(DeliveryError::Shutdown.verdict(), Verdict::Temporary);
        let f = DeliveryError::Loop {
            domain: "example.org".into(),
        };
        assert_eq!(
            (f.verdict(), f.status()),
            (Verdict::Permanent, EnhancedCode::new(5, 4, 6))
        );
        assert_eq!(
            RecipientOutcome::from_failure(&f).detail,
            "mail for example.org loops back to myself"
        );
    }
}
