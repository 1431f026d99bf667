//! Delivery status notifications (bounces): RFC 3464 reports in an RFC 6522 container, sent to
//! the envelope sender as ordinary spooled mail, honouring the RFC 3461 parameters accepted at
//! submission (NOTIFY, RET, ENVID, ORCPT).
//!
//! # When a DSN is made
//! [`after_attempt`] runs once per delivery attempt of a message, after expiry was applied
//! (`mod.rs`, `record`), with every recipient's outcome of that attempt. It makes at most one
//! DSN of each kind per attempt, each listing all the recipients of that kind, never one per
//! recipient:
//! - **failure** (`Action: failed`): recipients refused for good (5yz, null MX, no such
//!   domain) or expired after `[delivery] max_age` (5.4.7, with the last error);
//! - **delay** (`Action: delayed`): recipients still pending once the message is
//!   `[delivery] delay_warning` old (default 4h, `0s` disables), once per recipient: the spool
//!   keeps `delay_notified` with the recipient (it survives restarts and compaction). The check
//!   runs at attempts, so `mod.rs` moves the next retry forward to the warning instant when
//!   the backoff would pass it; the notice comes at that attempt, not hours later;
//! - **success** (`Action: relayed`): delivered recipients that asked for `NOTIFY=SUCCESS`,
//!   when the server that took them did not advertise DSN (RFC 3461 section 6.2.1: "relayed"
//!   to a non-DSN server). A server that advertises DSN got the parameters (NOTIFY, ORCPT,
//!   RET, ENVID, `client.rs`), so it reports on them (section 5.2.2) and Postern sends none.
//!
//! Never for a message with the null reverse-path `<>`: a bounce is never bounced (RFC 5321
//! section 4.5.5, RFC 3461 section 6.2). DSNs themselves are sent from `<>`.
//!
//! # NOTIFY (RFC 3461 section 4.1)
//! `NEVER`: no DSN at all. An explicit list: only the kinds it names. Absent: the MTA chooses
//! between `FAILURE` and `FAILURE,DELAY`; Postern takes `FAILURE,DELAY` (as Postfix with
//! `delay_warning_time` set), so operators turn delay notices off globally with
//! `delay_warning = "0s"`.
//!
//! # RET (RFC 3461 section 4.3) and the returned content
//! The third part is the original message as Postern sent it (its `Received:`, `Message-ID:`,
//! `DKIM-Signature:` prefix included), streamed from the spool into the DSN's own spool body
//! (which moves to a file past `spool.inline_max_bytes`), so a 201 MB original never sits in
//! memory. Headers only (`text/rfc822-headers`) or all (`message/rfc822`):
//! - delay and success DSNs: headers only (RET is about failed DSNs);
//! - `RET=HDRS`: headers only;
//! - `RET=FULL`: the whole message, unless it would not fit under `limits.max_message_size`
//!   with [`DSN_OVERHEAD`] to spare (the sender's own server would refuse such a DSN, and a
//!   DSN that fails is dropped): then headers only, and the text says so;
//! - absent: the whole message up to [`FULL_RETURN_MAX`] (1 MiB), else headers only (as
//!   Postfix's `bounce_size_limit`, with a larger limit: today's attachments).
//!
//! # Durability: exactly-once-ish
//! The DSN is committed to the spool (fsynced, like any accepted message) *before* the
//! attempt is recorded. A crash between the two leaves the original's recipients as they were
//! before the attempt: the attempt is made again after restart and its DSN made again, so a
//! crash can duplicate a bounce, never lose one. If the DSN cannot be enqueued (spool error),
//! its failed recipients are recorded as still pending (tried again, bounced again) and its
//! delay recipients are not marked as notified.
//!
//! # Format
//! `From: Mail Delivery System <MAILER-DAEMON@server.hostname>`, `To:` the envelope sender,
//! `Auto-Submitted: auto-replied` (RFC 3834), `multipart/report; report-type=delivery-status`
//! (RFC 6522) with a random 128-bit boundary (not searched for in the original, which is
//! streamed; a collision is not a practical concern). The `message/delivery-status` part has
//! `Reporting-MTA: dns; HOST`, `Original-Envelope-Id` (ENVID), `Arrival-Date`, then per
//! recipient `Final-Recipient: rfc822; ADDR`, `Original-Recipient: rfc822; ORCPT` (when
//! given), `Action`, `Status` (RFC 3463, the remote server's enhanced code when it sent one),
//! `Remote-MTA: dns; MX` and `Diagnostic-Code: smtp; REPLY` when a server replied,
//! `Last-Attempt-Date`, and `Will-Retry-Until` for delays. Long fields are folded at spaces.
//!
//! Not done: DKIM signing of DSNs (their From domain is the relay's host name, which has no
//! key in the store), `message/global-delivery-status` for SMTPUTF8 originals (RFC 6533: the
//! DSN is sent with SMTPUTF8 when the original was, with UTF-8 left as it is).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncRead};

use super::GroupOutcome;
use super::outcome::{Peer, RecipientOutcome, Verdict};
use crate::config::{Config, DeliveryConfig};
use crate::metrics::Metrics;
use crate::session::headers::rfc5322_date;
use crate::smtp::EnhancedCode;
use crate::spool::{Envelope, Recipient, Spool, SpoolError, SpoolId, Submitter};
use crate::unix_time::{from_unix_ms, unix_ms};

/// Largest original returned whole when the sender gave no `RET=`.
pub const FULL_RETURN_MAX: u64 = 1024 * 1024;

/// Room left under `limits.max_message_size` for the DSN's own headers and parts when the
/// whole original is returned.
pub const DSN_OVERHEAD: u64 = 64 * 1024;

/// Header section of the original kept in a headers-only DSN, at most (whole lines).
const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// The three kinds of DSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Permanent failure or expiry: `Action: failed`.
    Failure,
    /// Still being retried after `delay_warning`: `Action: delayed`.
    Delay,
    /// Delivered, NOTIFY=SUCCESS asked: `Action: relayed`.
    Success,
}

impl Kind {
    /// The `kind` label of `postern_delivery_bounces_total`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Failure => "failure",
            Kind::Delay => "delay",
            Kind::Success => "success",
        }
    }

    /// RFC 3464 section 2.3.3 action value.
    pub fn action(self) -> &'static str {
        match self {
            Kind::Failure => "failed",
            Kind::Delay => "delayed",
            Kind::Success => "relayed",
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Kind::Failure => "Undelivered Mail Returned to Sender",
            Kind::Delay => "Delivery Status Notification (Delay)",
            Kind::Success => "Delivery Status Notification (Relayed)",
        }
    }

    fn keyword(self) -> &'static str {
        match self {
            Kind::Failure => "FAILURE",
            Kind::Delay => "DELAY",
            Kind::Success => "SUCCESS",
        }
    }
}

/// Whether a recipient's `NOTIFY=` (as stored: keywords joined by commas) asks for `kind`.
/// Absent NOTIFY means `FAILURE,DELAY`.
pub fn wants(notify: Option<&str>, kind: Kind) -> bool {
    match notify {
        None => kind != Kind::Success,
        Some(list) => {
            let words: Vec<&str> = list.split(',').map(str::trim).collect();
            !words.iter().any(|w| w.eq_ignore_ascii_case("NEVER"))
                && words.iter().any(|w| w.eq_ignore_ascii_case(kind.keyword()))
        }
    }
}

/// What of the original the DSN carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// `message/rfc822`: all of it.
    Full,
    /// `text/rfc822-headers`: its header section.
    Headers,
    /// No third part: the original could not be read from the spool (the DSN still goes out,
    /// rather than being retried forever).
    Nothing,
}

/// The module docs' RET rule.
pub fn returned(kind: Kind, original: &Envelope, max_message_size: u64) -> Returned {
    // RFC 8689 section 5: a REQUIRETLS message's content must not leave over weaker paths
    // than it came; its DSN returns the header section only (and goes out with REQUIRETLS
    // itself, see `enqueue`).
    if kind != Kind::Failure || original.require_tls {
        return Returned::Headers;
    }
    let fits = original.size.saturating_add(DSN_OVERHEAD) <= max_message_size;
    match original.dsn_ret.as_deref() {
        Some(r) if r.eq_ignore_ascii_case("HDRS") => Returned::Headers,
        Some(r) if r.eq_ignore_ascii_case("FULL") && fits => Returned::Full,
        Some(_) => Returned::Headers,
        None if original.size <= FULL_RETURN_MAX && fits => Returned::Full,
        None => Returned::Headers,
    }
}

/// One recipient of a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The envelope recipient (`Final-Recipient`).
    pub address: String,
    /// ORCPT as given at RCPT, decoded (`Original-Recipient`).
    pub orcpt: Option<String>,
    /// RFC 3463 status.
    pub status: EnhancedCode,
    /// The MX host that replied (`Remote-MTA`).
    pub remote_mta: Option<String>,
    /// The remote reply on one line (`Diagnostic-Code: smtp; ...`).
    pub remote_reply: Option<String>,
    /// The reason for people: the outcome's detail.
    pub text: String,
}

impl Entry {
    /// The entry of a recipient from its outcome in an attempt; `peer` is the host of the
    /// attempt.
    pub fn of(recipient: &Recipient, outcome: &RecipientOutcome, peer: Option<&Peer>) -> Self {
        Self {
            address: recipient.address.clone(),
            orcpt: recipient.orcpt.clone(),
            status: outcome.status,
            remote_mta: outcome
                .remote_reply
                .as_ref()
                .and(peer)
                .map(|p| p.host.clone()),
            remote_reply: outcome.remote_reply.clone(),
            text: outcome.detail.clone(),
        }
    }
}

/// Everything a DSN says.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// Failure, delay or success.
    pub kind: Kind,
    /// `server.hostname`: Reporting-MTA and the From domain.
    pub hostname: &'a str,
    /// The original message's envelope.
    pub original: &'a Envelope,
    /// The recipients reported on, in envelope order.
    pub entries: Vec<Entry>,
    /// The DSN's own queue id (its Message-ID).
    pub id: &'a SpoolId,
    /// The attempt's time: Date and Last-Attempt-Date.
    pub now: SystemTime,
    /// Delay DSNs: when retrying ends (`Will-Retry-Until`).
    pub retry_until: Option<SystemTime>,
    /// What of the original is returned.
    pub returned: Returned,
    /// The MIME boundary.
    pub boundary: String,
}

/// A fresh random boundary.
pub fn new_boundary() -> String {
    format!("=_postern_{:032x}", rand::random::<u128>())
}

/// Control characters (CR and LF included) become spaces: nothing from outside can start a
/// header field of its own.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` with every non-ASCII character replaced by `?`.
fn seven_bit(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

/// `Name: value`, folded at spaces before column 78 where possible, CRLF-terminated.
fn field(out: &mut String, name: &str, value: &str) {
    let mut line = format!("{name}:");
    for word in clean(value).split(' ').filter(|w| !w.is_empty()) {
        if line.len() + 1 + word.len() > 78 && line.len() > name.len() + 1 {
            out.push_str(&line);
            out.push_str("\r\n");
            line.clear();
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push_str("\r\n");
}

/// The DSN around the returned content: `(front, back)`; the original (whole, or its header
/// section) goes between them.
pub fn render(report: &Report<'_>) -> (String, String) {
    render_returning(report, report.returned)
}

/// [`render`] with the third part chosen by `returned`.
fn render_returning(report: &Report<'_>, returned: Returned) -> (String, String) {
    let host = clean(report.hostname);
    let b = &report.boundary;
    let original = report.original;
    let eight_bit = original.body_8bit || original.smtputf8;
    let mut out = String::new();
    field(
        &mut out,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    field(&mut out, "To", &format!("<{}>", original.sender));
    field(&mut out, "Subject", report.kind.subject());
    field(&mut out, "Date", &rfc5322_date(report.now));
    field(&mut out, "Message-ID", &format!("<{}@{host}>", report.id));
    field(&mut out, "Auto-Submitted", "auto-replied");
    field(&mut out, "MIME-Version", "1.0");
    field(
        &mut out,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{b}\""),
    );
    out.push_str("\r\nThis is a MIME-encapsulated message (RFC 3464 delivery status).\r\n\r\n");

    // Part 1: for people.
    let text = human_text(report, &host, returned);
    out.push_str(&format!("--{b}\r\n"));
    out.push_str("Content-Description: Notification\r\n");
    if text.is_ascii() {
        out.push_str("Content-Type: text/plain; charset=us-ascii\r\n\r\n");
    } else {
        out.push_str(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        );
    }
    out.push_str(&text);
    out.push_str("\r\n");

    // Part 2: for programs (RFC 3464 section 2).
    out.push_str(&format!("--{b}\r\n"));
    out.push_str("Content-Description: Delivery report\r\n");
    out.push_str("Content-Type: message/delivery-status\r\n");
    if eight_bit {
        out.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    out.push_str("\r\n");
    field(&mut out, "Reporting-MTA", &format!("dns; {host}"));
    if let Some(envid) = &original.dsn_envid {
        field(&mut out, "Original-Envelope-Id", envid);
    }
    field(
        &mut out,
        "Arrival-Date",
        &rfc5322_date(from_unix_ms(original.received_at_ms)),
    );
    for entry in &report.entries {
        out.push_str("\r\n");
        field(
            &mut out,
            "Final-Recipient",
            &format!("rfc822; {}", entry.address),
        );
        if let Some(orcpt) = &entry.orcpt {
            field(&mut out, "Original-Recipient", &format!("rfc822; {orcpt}"));
        }
        field(&mut out, "Action", report.kind.action());
        field(&mut out, "Status", &entry.status.to_string());
        if let Some(mta) = &entry.remote_mta {
            field(&mut out, "Remote-MTA", &format!("dns; {mta}"));
        }
        if let Some(reply) = &entry.remote_reply {
            // A server may reply in UTF-8, but the fields of a 7-bit report are US-ASCII
            // (RFC 3464 2.3.6); the reply's text stays whole in the first part.
            let reply = if eight_bit {
                reply.clone()
            } else {
                seven_bit(reply)
            };
            field(&mut out, "Diagnostic-Code", &format!("smtp; {reply}"));
        }
        field(&mut out, "Last-Attempt-Date", &rfc5322_date(report.now));
        if let Some(until) = report.retry_until {
            field(&mut out, "Will-Retry-Until", &rfc5322_date(until));
        }
    }
    out.push_str("\r\n");

    // Part 3: the original.
    if returned == Returned::Nothing {
        return (out, format!("--{b}--\r\n"));
    }
    out.push_str(&format!("--{b}\r\n"));
    match returned {
        Returned::Nothing => {}
        Returned::Full => {
            out.push_str("Content-Description: Undelivered message\r\n");
            out.push_str("Content-Type: message/rfc822\r\n");
        }
        Returned::Headers => {
            out.push_str("Content-Description: Message headers\r\n");
            out.push_str("Content-Type: text/rfc822-headers\r\n");
        }
    }
    if eight_bit {
        out.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    out.push_str("\r\n");
    (out, format!("\r\n--{b}--\r\n"))
}

fn human_text(report: &Report<'_>, host: &str, returned: Returned) -> String {
    let mut t = format!("This is the mail delivery system at {host}.\r\n\r\n");
    t.push_str(match report.kind {
        Kind::Failure => {
            "Your message could not be delivered to the recipients below, and\r\n\
             delivery has been given up. The reason follows each address, with\r\n\
             the receiving server's reply where there was one.\r\n"
        }
        Kind::Delay => {
            "Your message has not been delivered yet to the recipients below.\r\n\
             Delivery is still being tried; you do not need to send it again.\r\n\
             You will be told if it finally fails.\r\n"
        }
        Kind::Success => {
            "Your message was handed to the receiving server for the recipients\r\n\
             below. That server does not report further, so this is the last\r\n\
             notice about them.\r\n"
        }
    });
    if let Some(until) = report.retry_until {
        t.push_str(&format!("Retries go on until {}.\r\n", rfc5322_date(until)));
    }
    t.push_str("\r\n");
    for entry in &report.entries {
        t.push_str(&format!(
            "<{}>: {}\r\n",
            clean(&entry.address),
            clean(&entry.text)
        ));
    }
    t.push_str("\r\n");
    let size_note = report.kind == Kind::Failure
        && returned == Returned::Headers
        && !report.original.require_tls
        && !report
            .original
            .dsn_ret
            .as_deref()
            .is_some_and(|r| r.eq_ignore_ascii_case("HDRS"));
    t.push_str(match (returned, size_note) {
        (Returned::Nothing, _) => {
            "The message could not be read back from the queue, so it is not attached.\r\n"
        }
        (Returned::Full, _) => "The message is attached.\r\n",
        (Returned::Headers, true) => {
            "The message is too large to return; its header is attached.\r\n"
        }
        (Returned::Headers, false) if report.original.require_tls => {
            "The message was sent with REQUIRETLS: only its header is attached.\r\n"
        }
        (Returned::Headers, false) => "The header of the message is attached.\r\n",
    });
    t
}

/// Whether a line (with its line end) is the blank line ending a header section.
fn ends_header(line: &[u8]) -> bool {
    line == b"\r\n" || line == b"\n"
}

/// The whole DSN in memory, for an original given as bytes (tests, small messages).
pub fn build(report: &Report<'_>, original: &[u8]) -> Vec<u8> {
    let (front, back) = render(report);
    let mut out = front.into_bytes();
    match report.returned {
        Returned::Nothing => {}
        Returned::Full => out.extend_from_slice(original),
        Returned::Headers => {
            for line in original.split_inclusive(|&b| b == b'\n') {
                if ends_header(line) || out.len() + line.len() > MAX_HEADER_BYTES {
                    break;
                }
                out.extend_from_slice(line);
            }
        }
    }
    out.extend_from_slice(back.as_bytes());
    out
}

fn read_error(source: std::io::Error) -> SpoolError {
    SpoolError::Io {
        op: "read the original for a DSN",
        source,
    }
}

/// Writes the DSN into a spool body, streaming the original from the spool, and commits it
/// as a new message from `<>` to the original's sender.
pub async fn enqueue(spool: &Spool, report: &Report<'_>) -> Result<(), SpoolError> {
    let original = report.original;
    // An original that cannot be opened (a damaged spool) still gets its senders told.
    let reader: Option<Box<dyn AsyncRead + Send + Unpin>> = match spool.open_message(original).await
    {
        Ok(reader) => Some(reader),
        Err(e) => {
            tracing::error!(queue_id = %original.id, error = %e, "DSN sent without the original");
            None
        }
    };
    let returned = if reader.is_some() {
        report.returned
    } else {
        Returned::Nothing
    };
    let (front, back) = render_returning(report, returned);
    let eight_bit = !front.is_ascii() || original.body_8bit || original.smtputf8;
    let mut body = spool.new_body(report.id);
    body.write(front.as_bytes()).await?;
    let reader: Box<dyn AsyncRead + Send + Unpin> = match reader {
        Some(reader) => reader,
        None => Box::new(tokio::io::empty()),
    };
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, reader);
    match returned {
        Returned::Nothing => {}
        Returned::Full => loop {
            let chunk = reader.fill_buf().await.map_err(read_error)?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            body.write(chunk).await?;
            reader.consume(n);
        },
        Returned::Headers => {
            let mut line = Vec::new();
            let mut written = 0;
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(read_error)?;
                if n == 0 || ends_header(&line) || written + n > MAX_HEADER_BYTES {
                    break;
                }
                written += n;
                body.write(&line).await?;
            }
        }
    }
    body.write(back.as_bytes()).await?;
    let envelope = Envelope {
        id: report.id.clone(),
        sender: String::new(),
        recipients: vec![Recipient::new(original.sender.clone())],
        received_at_ms: unix_ms(report.now),
        size: 0,
        body_8bit: eight_bit,
        smtputf8: original.smtputf8,
        dsn_ret: None,
        dsn_envid: None,
        // RFC 8689 section 5: the returned header is the original's content too, so it
        // travels under the same requirement.
        require_tls: original.require_tls,
        tls_required_no: false,
        submitter: Submitter {
            address: None,
            device: None,
            client_ip: String::new(),
            listener: "dsn".to_string(),
        },
        prefix: String::new(),
        data_file: None,
    };
    spool.commit(envelope, body).await
}

/// What the spool record of an attempt must reflect about its DSNs.
#[derive(Debug, Default)]
pub(super) struct Notices {
    /// Recipients (envelope indices) whose delay DSN was enqueued.
    pub(super) delay_notified: HashSet<usize>,
    /// Failed recipients whose failure DSN could not be enqueued: keep them pending.
    pub(super) unsent_failures: HashSet<usize>,
}

/// Makes and enqueues the DSNs of one attempt (module docs); runs before the attempt is
/// recorded.
pub(super) async fn after_attempt(
    spool: &Spool,
    config: &Config,
    metrics: &Metrics,
    envelope: &Envelope,
    groups: &[(Vec<String>, GroupOutcome)],
    now: SystemTime,
) -> Notices {
    let mut notices = Notices::default();
    if envelope.sender.is_empty() {
        return notices;
    }
    let delivery = &config.delivery;
    let received = from_unix_ms(envelope.received_at_ms);
    let age = now.duration_since(received).unwrap_or(Duration::ZERO);
    let delay_due = !delivery.delay_warning.is_zero() && age >= delivery.delay_warning;
    let mut kinds: [(Kind, Vec<(usize, Entry)>); 3] = [
        (Kind::Failure, Vec::new()),
        (Kind::Delay, Vec::new()),
        (Kind::Success, Vec::new()),
    ];
    let mut all: Vec<(usize, &RecipientOutcome, Option<&Peer>, bool)> = groups
        .iter()
        .flat_map(|(_, g)| {
            g.recipients
                .iter()
                .map(|(i, o)| (*i, o, g.peer.as_ref(), g.dsn_relayed))
        })
        .collect();
    all.sort_by_key(|(i, _, _, _)| *i);
    for (index, outcome, peer, dsn_relayed) in all {
        let Some(recipient) = envelope.recipients.get(index) else {
            continue;
        };
        let notify = recipient.notify.as_deref();
        let slot = match outcome.verdict {
            Verdict::Permanent if wants(notify, Kind::Failure) => 0,
            Verdict::Temporary
                if delay_due && !recipient.delay_notified && wants(notify, Kind::Delay) =>
            {
                1
            }
            Verdict::Delivered if !dsn_relayed && wants(notify, Kind::Success) => 2,
            _ => continue,
        };
        kinds[slot]
            .1
            .push((index, Entry::of(recipient, outcome, peer)));
    }
    for (kind, entries) in kinds {
        if entries.is_empty() {
            continue;
        }
        let indices: Vec<usize> = entries.iter().map(|(i, _)| *i).collect();
        let id = spool.new_id();
        let report = Report {
            kind,
            hostname: &config.server.hostname,
            original: envelope,
            entries: entries.into_iter().map(|(_, e)| e).collect(),
            id: &id,
            now,
            retry_until: (kind == Kind::Delay).then(|| received + delivery.max_age),
            returned: returned(kind, envelope, config.limits.max_message_size),
            boundary: new_boundary(),
        };
        match enqueue(spool, &report).await {
            Ok(()) => {
                metrics.delivery_bounce(kind.label());
                tracing::info!(
                    queue_id = %envelope.id,
                    dsn_id = %id,
                    kind = kind.label(),
                    to = %envelope.sender,
                    recipients = indices.len(),
                    "DSN enqueued"
                );
                if kind == Kind::Delay {
                    notices.delay_notified.extend(indices);
                }
            }
            Err(e) => {
                tracing::error!(
                    queue_id = %envelope.id,
                    kind = kind.label(),
                    error = %e,
                    "cannot enqueue the DSN; its recipients stay pending"
                );
                if kind == Kind::Failure {
                    notices.unsent_failures.extend(indices);
                }
            }
        }
    }
    notices
}

/// Status of recipients an operator removed from the queue (`postern queue delete`): RFC 3463
/// "other undefined status", permanent; no code says "deleted by the postmaster".
pub const REMOVED_STATUS: EnhancedCode = EnhancedCode::new(5, 0, 0);

/// The failure DSN for a message an operator removes from the queue: its pending recipients
/// that did not ask for `NOTIFY=NEVER` (or a list without FAILURE) are reported failed with
/// [`REMOVED_STATUS`]. Enqueued before the message is removed, so a crash in between can
/// leave both, never neither. `Ok(None)` when no DSN applies (a null sender, no such
/// recipient).
///
/// # Errors
/// The DSN could not be committed; the caller then keeps the message.
pub async fn bounce_removed(
    spool: &Spool,
    config: &Config,
    metrics: &Metrics,
    original: &Envelope,
    now: SystemTime,
) -> Result<Option<SpoolId>, SpoolError> {
    if original.sender.is_empty() {
        return Ok(None);
    }
    let entries: Vec<Entry> = original
        .recipients
        .iter()
        .filter(|r| {
            r.status == crate::spool::RecipientStatus::Pending
                && wants(r.notify.as_deref(), Kind::Failure)
        })
        .map(|r| Entry {
            address: r.address.clone(),
            orcpt: r.orcpt.clone(),
            status: REMOVED_STATUS,
            remote_mta: None,
            remote_reply: None,
            text: "removed from the queue by the postmaster".to_string(),
        })
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let id = spool.new_id();
    let report = Report {
        kind: Kind::Failure,
        hostname: &config.server.hostname,
        original,
        entries,
        id: &id,
        now,
        retry_until: None,
        returned: returned(Kind::Failure, original, config.limits.max_message_size),
        boundary: new_boundary(),
    };
    enqueue(spool, &report).await?;
    metrics.delivery_bounce(Kind::Failure.label());
    tracing::info!(queue_id = %original.id, dsn_id = %id, to = %original.sender, "DSN enqueued for a message removed from the queue");
    Ok(Some(id))
}

/// The next attempt's time after a temporary failure: `retry_at`, or the delay-warning
/// instant when that comes first and a pending recipient has not been told yet (so the
/// delay notice is not held back by a long backoff).
pub fn retry_for_delay_notice(
    delivery: &DeliveryConfig,
    envelope: &Envelope,
    now: SystemTime,
    retry_at: SystemTime,
) -> SystemTime {
    let warning = delivery.delay_warning;
    let untold = envelope.recipients.iter().any(|r| {
        r.status == crate::spool::RecipientStatus::Pending
            && !r.delay_notified
            && wants(r.notify.as_deref(), Kind::Delay)
    });
    if warning.is_zero() || envelope.sender.is_empty() || !untold {
        return retry_at;
    }
    let warn_at = from_unix_ms(envelope.received_at_ms) + warning;
    if warn_at > now && warn_at < retry_at {
        warn_at
    } else {
        retry_at
    }
}

#[cfg(test)]
mod tests;
