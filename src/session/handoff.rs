//! The hand-off listener's protocol (`[listen] handoff`), as a pure state machine: command
//! lines in, replies and requests out. The driver is `listener/handoff.rs`; the sender is
//! `delivery/handoff.rs`.
//!
//! Only a peer replica may use it, and everything is refused until it has proved so:
//! STARTTLS first (`530 5.7.0 Must issue a STARTTLS command first` to AUTH or MAIL before
//! TLS), then `AUTH PLAIN` with the fleet secret as password (`535 5.7.8 Authentication
//! credentials invalid` otherwise; RFC 4954 section 6), then transactions whose MAIL and RCPT
//! lines are read by `crate::smtp::handoff` (a line it refuses: `501 5.5.4`). The source
//! network is checked by the driver before the greeting.
//!
//! Unlike the submission session, a handed-off message is not checked, rewritten, signed or
//! metered: it was all of that when the first replica accepted it, and its DKIM signature
//! must stay valid. Three failed AUTHs or ten bad commands end the session with 421.

use super::reply::Reply;
use crate::smtp::handoff::{HandoffMail, HandoffRcpt};
use subtle::ConstantTimeEq;

/// Failed AUTH commands before the session is closed.
const MAX_AUTH_FAILURES: u32 = 3;
/// Refused commands before the session is closed.
const MAX_ERRORS: u32 = 10;

/// What the driver does after a command line.
#[derive(Debug, PartialEq, Eq)]
pub enum HandoffStep {
    /// Send the reply and read the next line.
    Reply(Reply),
    /// Send `220 2.0.0 Ready to start TLS`, then run the handshake and call
    /// [`HandoffSession::tls_started`].
    StartTls(Reply),
    /// Send `354`, read the message data (dot-stuffed) and spool it with
    /// [`HandoffSession::take_transaction`]'s envelope.
    ReceiveData(Reply),
    /// Send the reply and close.
    Close(Reply),
}

/// One hand-off session.
pub struct HandoffSession {
    hostname: String,
    secret: String,
    max_recipients: usize,
    tls: bool,
    authenticated: bool,
    auth_failures: u32,
    errors: u32,
    mail: Option<HandoffMail>,
    rcpts: Vec<HandoffRcpt>,
}

impl HandoffSession {
    /// A session expecting `secret`; `max_recipients` bounds one transaction.
    pub fn new(hostname: &str, secret: &str, max_recipients: usize) -> Self {
        Self {
            hostname: hostname.to_string(),
            secret: secret.to_string(),
            max_recipients,
            tls: false,
            authenticated: false,
            auth_failures: 0,
            errors: 0,
            mail: None,
            rcpts: Vec::new(),
        }
    }

    /// The greeting.
    pub fn greeting(&self) -> Reply {
        Reply::greeting(&self.hostname)
    }

    /// The TLS handshake succeeded: the client starts over with EHLO (RFC 3207 section 4.2).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.mail = None;
        self.rcpts.clear();
    }

    /// The envelope of the transaction whose data follows; the session is ready for the next
    /// MAIL afterwards.
    pub fn take_transaction(&mut self) -> Option<(HandoffMail, Vec<HandoffRcpt>)> {
        let mail = self.mail.take()?;
        Some((mail, std::mem::take(&mut self.rcpts)))
    }

    /// One command line, without its CRLF.
    pub fn handle_line(&mut self, line: &[u8]) -> HandoffStep {
        let Ok(line) = std::str::from_utf8(line) else {
            return self.refuse(Reply::syntax_error());
        };
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => {
                self.mail = None;
                self.rcpts.clear();
                HandoffStep::Reply(self.ehlo(verb == "EHLO"))
            }
            "STARTTLS" if line.len() == verb.len() => {
                if self.tls {
                    self.refuse(Reply::tls_already_active())
                } else {
                    HandoffStep::StartTls(Reply::ready_for_tls())
                }
            }
            "NOOP" => HandoffStep::Reply(Reply::ok()),
            "RSET" => {
                self.mail = None;
                self.rcpts.clear();
                HandoffStep::Reply(Reply::ok())
            }
            "QUIT" => HandoffStep::Close(Reply::bye()),
            _ if !self.tls => self.refuse(Reply::starttls_first()),
            "AUTH" => self.auth(line),
            _ if !self.authenticated => self.refuse(Reply::auth_required()),
            "MAIL" => self.mail(line),
            "RCPT" => self.rcpt(line),
            "DATA" if line.len() == verb.len() => match (&self.mail, self.rcpts.is_empty()) {
                (Some(_), false) => HandoffStep::ReceiveData(Reply::start_data()),
                (Some(_), true) => self.refuse(Reply::no_recipients()),
                (None, _) => self.refuse(Reply::bad_sequence()),
            },
            _ => self.refuse(Reply::unrecognized()),
        }
    }

    fn ehlo(&self, extended: bool) -> Reply {
        if !extended {
            return Reply::helo(&self.hostname);
        }
        let mut ext = vec!["8BITMIME".to_string(), "SMTPUTF8".to_string()];
        if self.tls {
            if !self.authenticated {
                ext.push("AUTH PLAIN".to_string());
            }
        } else {
            ext.push("STARTTLS".to_string());
        }
        Reply::ehlo(&self.hostname, ext)
    }

    /// `AUTH PLAIN base64` with the initial response: any authorization and user name, the
    /// fleet secret as password, compared in constant time.
    fn auth(&mut self, line: &str) -> HandoffStep {
        if self.authenticated {
            return self.refuse(Reply::already_authenticated());
        }
        let mut words = line.split(' ').skip(1);
        let (mechanism, response) = (words.next(), words.next());
        if !mechanism.is_some_and(|m| m.eq_ignore_ascii_case("PLAIN")) {
            return self.refuse(Reply::auth_mechanism_unknown());
        }
        let Some(response) = response.filter(|_| words.next().is_none()) else {
            return self.refuse(Reply::syntax_error());
        };
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD.decode(response);
        let password = decoded
            .ok()
            .and_then(|bytes| bytes.split(|&b| b == 0).nth(2).map(<[u8]>::to_vec));
        let good = password.is_some_and(|p| bool::from(p.as_slice().ct_eq(self.secret.as_bytes())));
        if good {
            self.authenticated = true;
            return HandoffStep::Reply(Reply::auth_ok());
        }
        self.auth_failures += 1;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            return HandoffStep::Close(Reply::too_many_auth_failures());
        }
        HandoffStep::Reply(Reply::handoff_auth_failed())
    }

    fn mail(&mut self, line: &str) -> HandoffStep {
        if self.mail.is_some() {
            return self.refuse(Reply::bad_sequence());
        }
        match HandoffMail::parse(line) {
            Ok(mail) => {
                self.mail = Some(mail);
                HandoffStep::Reply(Reply::mail_ok())
            }
            Err(e) => self.refuse(Reply::handoff_bad_line(&e.to_string())),
        }
    }

    fn rcpt(&mut self, line: &str) -> HandoffStep {
        if self.mail.is_none() {
            return self.refuse(Reply::bad_sequence());
        }
        if self.rcpts.len() >= self.max_recipients {
            return self.refuse(Reply::too_many_recipients());
        }
        match HandoffRcpt::parse(line) {
            Ok(rcpt) => {
                self.rcpts.push(rcpt);
                HandoffStep::Reply(Reply::rcpt_ok())
            }
            Err(e) => self.refuse(Reply::handoff_bad_line(&e.to_string())),
        }
    }

    fn refuse(&mut self, reply: Reply) -> HandoffStep {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            return HandoffStep::Close(Reply::too_many_errors());
        }
        HandoffStep::Reply(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SECRET: &str = "fleet-secret-0123456789";

    fn plain(password: &str) -> String {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("\0postern-handoff\0{password}"));
        format!("AUTH PLAIN {token}")
    }

    /// Plays `lines`; a `StartTls` step is followed by a successful handshake.
    fn transcript(session: &mut HandoffSession, lines: &[&str]) -> Vec<String> {
        lines
            .iter()
            .map(|line| match session.handle_line(line.as_bytes()) {
                HandoffStep::StartTls(r) => {
                    session.tls_started();
                    r.summary()
                }
                HandoffStep::Reply(r) | HandoffStep::ReceiveData(r) => r.summary(),
                HandoffStep::Close(r) => format!("close {}", r.summary()),
            })
            .collect()
    }

    #[test]
    fn tls_then_the_secret_then_mail() {
        let mut s = HandoffSession::new("b.example", SECRET, 2);
        let wrong = plain("fleet-secret-012345678X");
        let right = plain(SECRET);
        let got = transcript(
            &mut s,
            &[
                "EHLO a.example",
                "MAIL FROM:<a@x> X-POSTERN-ARRIVAL=1",
                &right,
                "STARTTLS",
                "EHLO a.example",
                "MAIL FROM:<a@x> X-POSTERN-ARRIVAL=1",
                &wrong,
                &right,
                &right,
                "MAIL FROM:<a@x>",
                "MAIL FROM:<a@x> X-POSTERN-ARRIVAL=1",
                "RCPT TO:<b@y> NOTIFY=NEVER",
                "RCPT TO:<c@y>",
                "RCPT TO:<d@y>",
                "DATA",
            ],
        );
        assert_eq!(
            got,
            [
                "250 b.example",
                "530 5.7.0 Must issue a STARTTLS command first",
                "530 5.7.0 Must issue a STARTTLS command first",
                "220 2.0.0 Ready to start TLS",
                "250 b.example",
                "530 5.7.0 Authentication required",
                "535 5.7.8 Authentication credentials invalid",
                "235 2.7.0 Authentication successful",
                "503 5.5.1 Already authenticated",
                "501 5.5.4 Hand-off: X-POSTERN-ARRIVAL is required",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.1.5 Ok",
                "452 4.5.3 Too many recipients",
                "354 End data with <CR><LF>.<CR><LF>",
            ]
        );
        let (mail, rcpts) = s.take_transaction().unwrap();
        assert_eq!(mail.arrival_ms, 1);
        assert_eq!(rcpts.len(), 2);
        assert_eq!(rcpts[0].notify.as_deref(), Some("NEVER"));
        assert!(s.take_transaction().is_none());
        assert_eq!(
            transcript(&mut s, &["DATA"]),
            ["503 5.5.1 Bad sequence of commands"]
        );
    }

    #[test]
    fn three_wrong_secrets_close_and_the_ehlo_offers_what_is_next() {
        let mut s = HandoffSession::new("b.example", SECRET, 10);
        let ehlo = |s: &mut HandoffSession| match s.handle_line(b"EHLO a") {
            HandoffStep::Reply(r) => r.lines.join("|"),
            other => panic!("{other:?}"),
        };
        assert_eq!(ehlo(&mut s), "b.example|8BITMIME|SMTPUTF8|STARTTLS");
        s.tls_started();
        assert_eq!(ehlo(&mut s), "b.example|8BITMIME|SMTPUTF8|AUTH PLAIN");
        let wrong = plain("nope");
        let got = transcript(
            &mut s,
            &[&wrong, "AUTH PLAIN !!", &wrong, "AUTH LOGIN", &wrong],
        );
        assert_eq!(
            got,
            [
                "535 5.7.8 Authentication credentials invalid",
                "535 5.7.8 Authentication credentials invalid",
                "close 421 4.7.0 Too many authentication failures, closing connection",
                "504 5.5.4 Unrecognized authentication type",
                "close 421 4.7.0 Too many authentication failures, closing connection",
            ]
        );
    }

    #[test]
    fn ten_bad_commands_close_the_session() {
        let mut s = HandoffSession::new("b.example", SECRET, 10);
        let lines = ["VRFY x"; 10];
        let got = transcript(&mut s, &lines);
        assert_eq!(got[8], "530 5.7.0 Must issue a STARTTLS command first");
        assert_eq!(
            got[9],
            "close 421 4.7.0 Too many errors, closing connection"
        );
        let not_utf8 = HandoffSession::new("b", SECRET, 1).handle_line(b"EHLO \xff");
        assert_eq!(not_utf8, HandoffStep::Reply(Reply::syntax_error()));
    }
}
