//! What the session needs to know about a message's header section, and the header fields
//! Postern adds in front of it.
//!
//! Deliberately small: this is not a MIME parser. It finds the header section (up to the
//! first empty line), unfolds fields (RFC 5322 section 2.2.3), reads the one mailbox of each
//! identity field (`From:`, `Sender:`, `Resent-From:`, `Resent-Sender:`) strictly with
//! [`single_mailbox`] to decide ownership, and counts `Received:` fields (the hop count). RFC 6409 section 8 lets a submission server add `Message-ID:` and
//! `Date:` when they are missing; the `Received:` trace field is RFC 5321 section 4.4.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::policy::mailbox::single_mailbox;

/// Largest header section examined; a message whose header section is longer is refused.
pub const MAX_HEADER_SECTION: usize = 1024 * 1024;

/// Facts about a header section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderFacts {
    /// Addresses in every `From:` field, lower-cased.
    pub from: Vec<String>,
    /// Number of `From:` fields.
    pub from_fields: usize,
    /// A `Message-ID:` field exists.
    pub has_message_id: bool,
    /// A `Date:` field exists.
    pub has_date: bool,
    /// A `From:` field is not exactly one unambiguous mailbox (see
    /// [`crate::policy::mailbox`]): ownership cannot be decided.
    pub from_malformed: bool,
    /// The `Sender:`, `Resent-From:` and `Resent-Sender:` fields, in order.
    pub identities: Vec<IdentityField>,
    /// Number of `Received:` fields: the hops the message has made.
    pub received_fields: usize,
    /// A `TLS-Required: No` field (RFC 8689 section 3): the sender asks that DANE and
    /// MTA-STS failures not stop delivery.
    pub tls_required_no: bool,
}

/// A header field other than `From:` that names who sent the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityHeader {
    /// `Sender:` (RFC 5322 section 3.6.2; at most one).
    Sender,
    /// `Resent-From:` (section 3.6.6; one per resent block).
    ResentFrom,
    /// `Resent-Sender:` (section 3.6.6).
    ResentSender,
}

impl IdentityHeader {
    /// The field name as RFC 5322 spells it.
    pub fn name(self) -> &'static str {
        match self {
            IdentityHeader::Sender => "Sender",
            IdentityHeader::ResentFrom => "Resent-From",
            IdentityHeader::ResentSender => "Resent-Sender",
        }
    }
}

/// One identity field and its mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityField {
    /// Which field.
    pub header: IdentityHeader,
    /// Its one mailbox, lower-cased; `None` when it is not exactly one unambiguous mailbox.
    pub address: Option<String>,
}

/// Where a CRLF CRLF ends in `data` (offset just past it), if anywhere.
pub fn blank_line_end(data: &[u8]) -> Option<usize> {
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

/// Where the header section ends in `data` (offset just past the empty line), or `None` if
/// `data` holds no empty line yet. `data` must start at the beginning of the message.
pub fn header_section_end(data: &[u8]) -> Option<usize> {
    if data.starts_with(b"\r\n") {
        return Some(2);
    }
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

/// Reads the facts of a header section (the bytes before the empty line).
pub fn scan_headers(section: &[u8]) -> HeaderFacts {
    let text = String::from_utf8_lossy(section);
    let mut facts = HeaderFacts::default();
    let mut fields: Vec<String> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push_str(line);
            }
        } else if !line.is_empty() {
            fields.push(line.to_string());
        }
    }
    for field in fields {
        let Some((name, value)) = field.split_once(':') else {
            continue;
        };
        let identity = |header| IdentityField {
            header,
            address: single_mailbox(value).ok(),
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "from" => {
                facts.from_fields += 1;
                match single_mailbox(value) {
                    Ok(address) => facts.from.push(address),
                    Err(_) => facts.from_malformed = true,
                }
            }
            "sender" => facts.identities.push(identity(IdentityHeader::Sender)),
            "resent-from" => facts.identities.push(identity(IdentityHeader::ResentFrom)),
            "resent-sender" => facts
                .identities
                .push(identity(IdentityHeader::ResentSender)),
            "received" => facts.received_fields += 1,
            "tls-required" if value.trim().eq_ignore_ascii_case("no") => {
                facts.tls_required_no = true
            }
            "message-id" => facts.has_message_id = true,
            "date" => facts.has_date = true,
            _ => {}
        }
    }
    facts
}

/// Where a character of a structured header value stands (RFC 5322 section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// Outside quoted strings, comments and angle brackets (an opening `<` is here too).
    Plain,
    /// Between `<` and `>` (the closing `>` included).
    Angle,
    /// Inside a quoted string or a comment, their delimiters and escapes included.
    Hidden,
}

/// The characters of a structured header value with where each stands: the one lexer that
/// both the session's `From:` check and `postern sendmail`'s recipient parsing use, so they
/// can never read the same header differently.
pub fn structured_chars(value: &str) -> impl Iterator<Item = (char, Where)> + '_ {
    let (mut in_quote, mut in_angle, mut escaped, mut comment_depth) = (false, false, false, 0u32);
    value.chars().map(move |c| {
        if escaped {
            escaped = false;
            return (c, Where::Hidden);
        }
        let hidden = in_quote || comment_depth > 0;
        match c {
            '\\' if hidden => {
                escaped = true;
                (c, Where::Hidden)
            }
            '"' if comment_depth == 0 && !in_angle => {
                in_quote = !in_quote;
                (c, Where::Hidden)
            }
            '(' if !in_quote => {
                comment_depth += 1;
                (c, Where::Hidden)
            }
            ')' if !in_quote && comment_depth > 0 => {
                comment_depth -= 1;
                (c, Where::Hidden)
            }
            _ if hidden => (c, Where::Hidden),
            '<' => {
                in_angle = true;
                (c, Where::Plain)
            }
            '>' if in_angle => {
                in_angle = false;
                (c, Where::Angle)
            }
            _ if in_angle => (c, Where::Angle),
            _ => (c, Where::Plain),
        }
    })
}

/// The addresses of a mailbox list (`"A, B" <a@x>, b@y (comment)`), lower-cased.
pub fn mailbox_addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut angle: Option<String> = None;
    let mut finish = |current: &mut String, angle: &mut Option<String>| {
        let address = angle.take().unwrap_or_else(|| current.clone());
        current.clear();
        // Only folding white space (RFC 5322 3.2.2) is trimmed: a UTF-8 local part (RFC 6532)
        // may be a no-break space, which `str::trim` would cut off.
        let address = address
            .trim_matches([' ', '\t', '\r', '\n'])
            .to_ascii_lowercase();
        if !address.is_empty() {
            out.push(address);
        }
    };
    for (c, place) in structured_chars(value) {
        match (place, c) {
            (Where::Hidden, _) | (Where::Angle, '>') => {}
            (Where::Plain, '<') => angle = Some(String::new()),
            (Where::Angle, c) => angle.get_or_insert_with(String::new).push(c),
            (Where::Plain, ',') => finish(&mut current, &mut angle),
            (Where::Plain, c) => {
                if angle.is_none() {
                    current.push(c);
                }
            }
        }
    }
    finish(&mut current, &mut angle);
    out
}

/// A `Date:` value (RFC 5322 section 3.3) in UTC.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let month_name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day} {month_name} {year} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm, public domain arithmetic).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// What goes into the `Received:` field.
#[derive(Debug, Clone)]
pub struct TraceInfo<'a> {
    /// Name the client gave at EHLO/HELO.
    pub helo: &'a str,
    /// Client IP address.
    pub client_ip: &'a str,
    /// Our host name.
    pub hostname: &'a str,
    /// RFC 3848 protocol keyword (`ESMTPSA`, `ESMTPS`, `ESMTP`, ...).
    pub protocol: &'a str,
    /// Queue id.
    pub id: &'a str,
    /// TLS version and cipher, if any.
    pub tls: Option<&'a str>,
}

/// The header fields Postern puts in front of the client's message, in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    /// The `Received:` trace field (never signed: later hops add theirs above it).
    pub trace: String,
    /// `Message-ID:` and `Date:` where the message lacks them; signed with the client's fields.
    pub added: String,
}

impl Prefix {
    /// Both parts, CRLF-terminated fields.
    pub fn joined(&self) -> String {
        format!("{}{}", self.trace, self.added)
    }
}

/// The header fields Postern puts in front of the client's message: `Received:`, then a
/// `Message-ID:` and `Date:` if the message lacks them. CRLF-terminated.
pub fn build_prefix(facts: &HeaderFacts, trace: &TraceInfo<'_>, now: SystemTime) -> Prefix {
    let date = rfc5322_date(now);
    let tls = trace
        .tls
        .map(|t| format!("\r\n\t({t})"))
        .unwrap_or_default();
    let received = format!(
        "Received: from {} ({})\r\n\tby {} (Postern) with {} id {}{};\r\n\t{}\r\n",
        sanitize(trace.helo),
        sanitize(trace.client_ip),
        trace.hostname,
        trace.protocol,
        trace.id,
        tls,
        date
    );
    let mut added = String::new();
    if !facts.has_message_id {
        added.push_str(&format!(
            "Message-ID: <{}@{}>\r\n",
            trace.id, trace.hostname
        ));
    }
    if !facts.has_date {
        added.push_str(&format!("Date: {date}\r\n"));
    }
    Prefix {
        trace: received,
        added,
    }
}

/// Keeps client-supplied text from breaking the header field it is placed in.
fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn from_addresses() {
        assert_eq!(
            mailbox_addresses(" Alice <Alice@Example.org>"),
            vec!["alice@example.org"]
        );
        assert_eq!(
            mailbox_addresses(" bob@example.org (Bob)"),
            vec!["bob@example.org"]
        );
        assert_eq!(
            mailbox_addresses(" \"Doe, <John>\" <j@x.org>, k@y.org"),
            vec!["j@x.org", "k@y.org"]
        );
        // Found by the mailbox fuzz target: a no-break space is a UTF-8 local part, not
        // white space, so this reader and the strict one read the same address.
        assert_eq!(mailbox_addresses("<\u{a0}@x>"), vec!["\u{a0}@x"]);
        assert_eq!(mailbox_addresses(" \t a@x \r\n"), vec!["a@x"]);
    }

    #[test]
    fn facts_unfold_and_count() {
        let facts = scan_headers(b"From: a@x.org\r\nSubject: s\r\n\tmore\r\nMessage-Id: <1@x>\r\n");
        assert_eq!(facts.from, vec!["a@x.org"]);
        assert_eq!(facts.from_fields, 1);
        assert!(facts.has_message_id);
        assert!(!facts.has_date);
    }

    #[test]
    fn facts_read_identity_fields_and_count_hops() {
        let facts = scan_headers(
            b"Received: from a\r\n\tby b; x\r\nreceived: c\r\nFrom: Alice <Alice@x.org>\r\n\
              Sender: s@x.org\r\nResent-From: bob@y <a@x.org>\r\nRESENT-SENDER: r@x.org\r\n",
        );
        assert_eq!(facts.received_fields, 2);
        assert_eq!(facts.from, vec!["alice@x.org"]);
        assert!(!facts.from_malformed);
        let identities: Vec<_> = facts
            .identities
            .iter()
            .map(|f| (f.header.name(), f.address.as_deref()))
            .collect();
        assert_eq!(
            identities,
            vec![
                ("Sender", Some("s@x.org")),
                ("Resent-From", None),
                ("Resent-Sender", Some("r@x.org")),
            ]
        );
        let spoof = scan_headers(b"From: bob@example.org <alice@example.org>\r\n");
        assert!(spoof.from_malformed);
        assert!(spoof.from.is_empty());
    }

    #[test]
    fn header_end() {
        assert_eq!(header_section_end(b"A: b\r\n\r\nbody"), Some(8));
        assert_eq!(header_section_end(b"\r\nbody"), Some(2));
        assert_eq!(header_section_end(b"A: b\r\n"), None);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_638_926);
        assert_eq!(rfc5322_date(t), "Wed, 25 Nov 2026 20:35:26 +0000");
    }
}
