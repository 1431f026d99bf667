//! The envelope of a message handed from a draining replica to a peer (`[listen] handoff`):
//! the `MAIL FROM` and `RCPT TO` lines the sender writes (`delivery/handoff.rs`) and the
//! receiver reads (`listener/handoff.rs`).
//!
//! Standard parameters carry what they always carry: `SIZE` (RFC 1870), `BODY=8BITMIME`
//! (RFC 6152), `SMTPUTF8` (RFC 6531), `REQUIRETLS` (RFC 8689), `RET`, `ENVID`, `NOTIFY` and
//! `ORCPT` (RFC 3461, xtext). Three `X-POSTERN-` parameters (RFC 5321 section 4.1.2 leaves
//! `X-` keywords to local use) carry the spool state a new queue must not forget:
//! `X-POSTERN-ARRIVAL=` the original acceptance time in Unix milliseconds (so `max_age` and
//! the delay notice count from it, not from the hand-off), `X-POSTERN-TLS-REQUIRED-NO` (the
//! message's `TLS-Required: No`, found at acceptance) and, on RCPT, `X-POSTERN-DELAY-NOTIFIED`
//! (the sender was already told of the delay). Only the hand-off listener reads these lines:
//! the submission ports refuse every `X-` parameter (`555 5.5.4`), so a client cannot set an
//! arrival time of its own.
//!
//! The reader is strict: each parameter once, values checked, anything unknown refused, since
//! a mistake here would put a wrong envelope into a spool.

use super::xtext;

/// The MAIL parameter of the original arrival time.
pub const ARRIVAL: &str = "X-POSTERN-ARRIVAL";
/// The MAIL parameter of `TLS-Required: No`.
pub const TLS_REQUIRED_NO: &str = "X-POSTERN-TLS-REQUIRED-NO";
/// The RCPT parameter of a recipient whose delay notice was sent.
pub const DELAY_NOTIFIED: &str = "X-POSTERN-DELAY-NOTIFIED";

/// Why a hand-off line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffLineError {
    /// Not `MAIL FROM:<...>` / `RCPT TO:<...>` with space-separated parameters.
    #[error("syntax error in {0}")]
    Syntax(&'static str),
    /// The address has a character no envelope address may have on a command line.
    #[error("bad address")]
    Address,
    /// A parameter that is unknown, repeated or has a bad value.
    #[error("bad parameter {0}")]
    Parameter(String),
    /// `X-POSTERN-ARRIVAL` is missing.
    #[error("{ARRIVAL} is required")]
    NoArrival,
}

/// The reverse-path and message facts of a handed-off message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandoffMail {
    /// Reverse-path; empty for the null sender (a DSN can be handed off too).
    pub sender: String,
    /// Original acceptance time, Unix milliseconds.
    pub arrival_ms: u64,
    /// Bytes of the message as it will be sent.
    pub size: Option<u64>,
    /// `BODY=8BITMIME`.
    pub body_8bit: bool,
    /// `SMTPUTF8`.
    pub smtputf8: bool,
    /// `REQUIRETLS`.
    pub require_tls: bool,
    /// `TLS-Required: No` was in the header.
    pub tls_required_no: bool,
    /// `RET=` (`FULL` or `HDRS`).
    pub ret: Option<String>,
    /// `ENVID=`, decoded.
    pub envid: Option<String>,
}

/// One recipient still to be delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandoffRcpt {
    /// Forward-path.
    pub address: String,
    /// `NOTIFY=` keywords joined by commas.
    pub notify: Option<String>,
    /// `ORCPT=rfc822;` address, decoded.
    pub orcpt: Option<String>,
    /// The delay notice for it was sent.
    pub delay_notified: bool,
}

impl HandoffMail {
    /// The `MAIL FROM` line, CRLF included.
    pub fn line(&self) -> String {
        let mut line = format!("MAIL FROM:<{}> {ARRIVAL}={}", self.sender, self.arrival_ms);
        if let Some(size) = self.size {
            line.push_str(&format!(" SIZE={size}"));
        }
        for (set, word) in [
            (self.body_8bit, "BODY=8BITMIME"),
            (self.smtputf8, "SMTPUTF8"),
            (self.require_tls, "REQUIRETLS"),
            (self.tls_required_no, TLS_REQUIRED_NO),
        ] {
            if set {
                line.push(' ');
                line.push_str(word);
            }
        }
        if let Some(ret) = &self.ret {
            line.push_str(&format!(" RET={}", ret.to_ascii_uppercase()));
        }
        if let Some(envid) = &self.envid {
            line.push_str(&format!(" ENVID={}", xtext::encode(envid)));
        }
        line.push_str("\r\n");
        line
    }

    /// Reads a `MAIL FROM` line (without its CRLF).
    ///
    /// # Errors
    /// The line is not one [`Self::line`] could have written.
    pub fn parse(line: &str) -> Result<Self, HandoffLineError> {
        let (sender, params) = split_path(line, "MAIL FROM:<", "MAIL")?;
        let mut mail = HandoffMail {
            sender: sender.to_string(),
            ..HandoffMail::default()
        };
        let mut arrival = None;
        let mut seen = Vec::new();
        for (key, value) in params {
            let upper = key.to_ascii_uppercase();
            if seen.contains(&upper) {
                return Err(HandoffLineError::Parameter(upper));
            }
            seen.push(upper.clone());
            let bad = || HandoffLineError::Parameter(upper.clone());
            match (upper.as_str(), value) {
                (ARRIVAL, Some(v)) => arrival = Some(digits(v).ok_or_else(bad)?),
                ("SIZE", Some(v)) => mail.size = Some(digits(v).ok_or_else(bad)?),
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => mail.body_8bit = true,
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {}
                ("SMTPUTF8", None) => mail.smtputf8 = true,
                ("REQUIRETLS", None) => mail.require_tls = true,
                (TLS_REQUIRED_NO, None) => mail.tls_required_no = true,
                ("RET", Some(v))
                    if v.eq_ignore_ascii_case("FULL") || v.eq_ignore_ascii_case("HDRS") =>
                {
                    mail.ret = Some(v.to_ascii_uppercase());
                }
                ("ENVID", Some(v)) => mail.envid = Some(xtext::decode(v).ok_or_else(bad)?),
                _ => return Err(bad()),
            }
        }
        mail.arrival_ms = arrival.ok_or(HandoffLineError::NoArrival)?;
        Ok(mail)
    }
}

impl HandoffRcpt {
    /// The `RCPT TO` line, CRLF included.
    pub fn line(&self) -> String {
        let mut line = format!("RCPT TO:<{}>", self.address);
        if let Some(notify) = &self.notify {
            line.push_str(&format!(" NOTIFY={}", notify.to_ascii_uppercase()));
        }
        if let Some(orcpt) = &self.orcpt {
            line.push_str(&format!(" ORCPT=rfc822;{}", xtext::encode(orcpt)));
        }
        if self.delay_notified {
            line.push(' ');
            line.push_str(DELAY_NOTIFIED);
        }
        line.push_str("\r\n");
        line
    }

    /// Reads a `RCPT TO` line (without its CRLF).
    ///
    /// # Errors
    /// The line is not one [`Self::line`] could have written.
    pub fn parse(line: &str) -> Result<Self, HandoffLineError> {
        let (address, params) = split_path(line, "RCPT TO:<", "RCPT")?;
        if address.is_empty() {
            return Err(HandoffLineError::Address);
        }
        let mut rcpt = HandoffRcpt {
            address: address.to_string(),
            ..HandoffRcpt::default()
        };
        let mut seen = Vec::new();
        for (key, value) in params {
            let upper = key.to_ascii_uppercase();
            if seen.contains(&upper) {
                return Err(HandoffLineError::Parameter(upper));
            }
            seen.push(upper.clone());
            let bad = || HandoffLineError::Parameter(upper.clone());
            match (upper.as_str(), value) {
                ("NOTIFY", Some(v)) if is_notify_list(v) => {
                    rcpt.notify = Some(v.to_ascii_uppercase())
                }
                ("ORCPT", Some(v)) => {
                    let (kind, addr) = v.split_once(';').ok_or_else(bad)?;
                    if !kind.eq_ignore_ascii_case("rfc822") {
                        return Err(bad());
                    }
                    rcpt.orcpt = Some(xtext::decode(addr).ok_or_else(bad)?);
                }
                (DELAY_NOTIFIED, None) => rcpt.delay_notified = true,
                _ => return Err(bad()),
            }
        }
        Ok(rcpt)
    }
}

/// The path between `prefix` (matched without regard to case) and the first `>`, and the
/// parameters after it.
#[allow(clippy::type_complexity)]
fn split_path<'a>(
    line: &'a str,
    prefix: &str,
    verb: &'static str,
) -> Result<(&'a str, Vec<(&'a str, Option<&'a str>)>), HandoffLineError> {
    let head = line
        .get(..prefix.len())
        .filter(|h| h.eq_ignore_ascii_case(prefix))
        .ok_or(HandoffLineError::Syntax(verb))?;
    let rest = &line[head.len()..];
    let end = rest.find('>').ok_or(HandoffLineError::Syntax(verb))?;
    let path = &rest[..end];
    if path.chars().any(|c| c.is_control() || c == '<') {
        return Err(HandoffLineError::Address);
    }
    let tail = &rest[end + 1..];
    if tail.is_empty() {
        return Ok((path, Vec::new()));
    }
    let tail = tail
        .strip_prefix(' ')
        .ok_or(HandoffLineError::Syntax(verb))?;
    let mut params = Vec::new();
    for word in tail.split(' ') {
        if word.is_empty() || word.chars().any(|c| c.is_control() || !c.is_ascii()) {
            return Err(HandoffLineError::Syntax(verb));
        }
        params.push(match word.split_once('=') {
            Some((key, value)) if !key.is_empty() && !value.is_empty() => (key, Some(value)),
            Some(_) => return Err(HandoffLineError::Syntax(verb)),
            None => (word, None),
        });
    }
    Ok((path, params))
}

/// 1 to 20 ASCII digits that fit a `u64`.
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// RFC 3461 section 4.1: `NEVER`, or one or more of SUCCESS, FAILURE, DELAY.
fn is_notify_list(text: &str) -> bool {
    if text.eq_ignore_ascii_case("NEVER") {
        return true;
    }
    let mut seen = Vec::new();
    text.split(',').all(|w| {
        let w = w.to_ascii_uppercase();
        let ok = matches!(w.as_str(), "SUCCESS" | "FAILURE" | "DELAY") && !seen.contains(&w);
        seen.push(w);
        ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_mail() -> HandoffMail {
        HandoffMail {
            sender: "alice@example.org".into(),
            arrival_ms: 1_700_000_000_123,
            size: Some(4321),
            body_8bit: true,
            smtputf8: true,
            require_tls: true,
            tls_required_no: true,
            ret: Some("HDRS".into()),
            envid: Some("QQ 314+159".into()),
        }
    }

    #[test]
    fn written_lines_read_back() {
        for mail in [
            full_mail(),
            HandoffMail {
                arrival_ms: 1,
                ..HandoffMail::default()
            },
        ] {
            let line = mail.line();
            let bare = line.strip_suffix("\r\n").unwrap();
            assert_eq!(HandoffMail::parse(bare).unwrap(), mail, "{line}");
        }
        assert_eq!(
            full_mail().line(),
            "MAIL FROM:<alice@example.org> X-POSTERN-ARRIVAL=1700000000123 SIZE=4321 BODY=8BITMIME SMTPUTF8 REQUIRETLS X-POSTERN-TLS-REQUIRED-NO RET=HDRS ENVID=QQ+20314+2B159\r\n"
        );
        let rcpt = HandoffRcpt {
            address: "bob@example.net".into(),
            notify: Some("SUCCESS,DELAY".into()),
            orcpt: Some("Bob Smith@example.net".into()),
            delay_notified: true,
        };
        let line = rcpt.line();
        assert_eq!(
            line,
            "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Bob+20Smith@example.net X-POSTERN-DELAY-NOTIFIED\r\n"
        );
        assert_eq!(HandoffRcpt::parse(line.trim_end()).unwrap(), rcpt);
        let plain = HandoffRcpt {
            address: "c@example.net".into(),
            ..HandoffRcpt::default()
        };
        assert_eq!(HandoffRcpt::parse(plain.line().trim_end()).unwrap(), plain);
    }

    #[test]
    fn bad_lines_are_refused() {
        use HandoffLineError::*;
        let cases: &[(&str, HandoffLineError)] = &[
            ("MAIL FROM:<a@x>", NoArrival),
            ("MAIL FROM:<a@x> X-POSTERN-ARRIVAL=", Syntax("MAIL")),
            (
                "MAIL FROM:<a@x> X-POSTERN-ARRIVAL=12a",
                Parameter(ARRIVAL.into()),
            ),
            (
                "MAIL FROM:<a@x> X-POSTERN-ARRIVAL=123456789012345678901",
                Parameter(ARRIVAL.into()),
            ),
            (
                "MAIL FROM:<a@x> X-POSTERN-ARRIVAL=1 X-POSTERN-ARRIVAL=2",
                Parameter(ARRIVAL.into()),
            ),
            (
                "MAIL FROM:<a@x> X-POSTERN-ARRIVAL=1  SIZE=2",
                Syntax("MAIL"),
            ),
            (
                "MAIL FROM:<a@x> X-POSTERN-ARRIVAL=1 AUTH=<>",
                Parameter("AUTH".into()),
            ),
            (
                "MAIL FROM:<a@x> X-POSTERN-ARRIVAL=1 RET=ALL",
                Parameter("RET".into()),
            ),
            (
                "MAIL FROM:<a@x> X-POSTERN-ARRIVAL=1 ENVID=a=b",
                Parameter("ENVID".into()),
            ),
            (
                "MAIL FROM:<a@x> X-POSTERN-ARRIVAL=1 SMTPUTF8=yes",
                Parameter("SMTPUTF8".into()),
            ),
            ("MAIL FROM:<a\u{1b}@x> X-POSTERN-ARRIVAL=1", Address),
            ("MAIL FROM:<a@x>X-POSTERN-ARRIVAL=1", Syntax("MAIL")),
            ("MAIL FROM:a@x X-POSTERN-ARRIVAL=1", Syntax("MAIL")),
            ("RCPT TO:<b@x>", Syntax("MAIL")),
        ];
        for (line, want) in cases {
            assert_eq!(HandoffMail::parse(line).as_ref(), Err(want), "{line:?}");
        }
        let rcpts: &[(&str, HandoffLineError)] = &[
            ("RCPT TO:<>", Address),
            (
                "RCPT TO:<b@x> NOTIFY=NEVER,SUCCESS",
                Parameter("NOTIFY".into()),
            ),
            (
                "RCPT TO:<b@x> NOTIFY=FAILURE,FAILURE",
                Parameter("NOTIFY".into()),
            ),
            ("RCPT TO:<b@x> ORCPT=x400;b", Parameter("ORCPT".into())),
            ("RCPT TO:<b@x> ORCPT=rfc822;b+4", Parameter("ORCPT".into())),
            (
                "RCPT TO:<b@x> X-POSTERN-ARRIVAL=1",
                Parameter(ARRIVAL.into()),
            ),
            (
                "RCPT TO:<b@x> NOTIFY=DELAY NOTIFY=DELAY",
                Parameter("NOTIFY".into()),
            ),
            ("MAIL FROM:<b@x>", Syntax("RCPT")),
        ];
        for (line, want) in rcpts {
            assert_eq!(HandoffRcpt::parse(line).as_ref(), Err(want), "{line:?}");
        }
        // Verbs and keywords are case-insensitive, as SMTP's are.
        let lower = HandoffMail::parse("mail from:<a@x> x-postern-arrival=5 ret=full").unwrap();
        assert_eq!((lower.arrival_ms, lower.ret.as_deref()), (5, Some("FULL")));
    }
}
