//! The DSN builder (`delivery/dsn.rs`) with every input it takes from outside: the original's
//! envelope (sender, ENVID, RET, 8-bit flags, size, arrival), the recipients (address,
//! ORCPT, status, the MX host, the remote server's reply as the client keeps it, the reason),
//! the host name, the times, and the original message.
//!
//! Lengths stay within what reaches the builder in the relay: an address within a command
//! line, a remote reply as `Response::one_line` keeps it (at most 515 bytes, control
//! characters already replaced), a host name of at most 255 octets.
//!
//! What must hold of the DSN outside the returned original:
//! - CRLF lines only, no bare CR or LF, no NUL, none over 998 octets (RFC 5322 2.1.1);
//! - 7-bit text when nothing it reports is 8-bit: an ASCII original (no `8BITMIME`, no
//!   `SMTPUTF8`) and ASCII replies give an ASCII DSN; any 8-bit text in a MIME part is in a
//!   part that declares `8bit`;
//! - a header section of fields (`Name: value`, folded with a space) with one `From:`;
//! - the boundary delimits exactly the parts (RFC 2046 5.1.1), and occurs nowhere else;
//! - one `Final-Recipient` per recipient, with the report's `Action`.

use std::time::{Duration, UNIX_EPOCH};

use super::Input;
use crate::delivery::dsn::{Entry, Kind, Report, Returned, build, new_boundary, returned};
use crate::session::headers::scan_headers;
use crate::smtp::EnhancedCode;
use crate::smtp::response::clean_text;
use crate::spool::{Envelope, SpoolId};

pub(super) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let kind = match flags % 3 {
        0 => Kind::Failure,
        1 => Kind::Delay,
        _ => Kind::Success,
    };
    let smtputf8 = flags & 8 != 0;
    let utf8 = |text: String| if smtputf8 { text } else { ascii(text) };
    let hostname = ascii(input.text(255));
    let original = Envelope {
        id: SpoolId("0123456789ABCDEF01234".into()),
        sender: utf8(input.text(300)),
        received_at_ms: input.u64() % (400 * 365 * 86_400_000),
        size: input.u64() % (1 << 40),
        body_8bit: flags & 4 != 0,
        smtputf8,
        dsn_ret: (flags & 16 != 0).then(|| input.text(10)),
        dsn_envid: (flags & 32 != 0).then(|| ascii(input.text(100))),
        ..Envelope::default()
    };
    let entries: Vec<Entry> = (0..1 + input.byte() % 4)
        .map(|_| {
            let bits = input.byte();
            Entry {
                address: utf8(input.text(300)),
                orcpt: (bits & 1 != 0).then(|| utf8(input.text(300))),
                status: EnhancedCode::new(
                    [2, 4, 5][usize::from(bits >> 6) % 3],
                    input.u16() % 1000,
                    input.u16() % 1000,
                ),
                remote_mta: (bits & 2 != 0).then(|| ascii(input.text(255))),
                remote_reply: (bits & 4 != 0).then(|| clean_text(&input.text(600))),
                text: input.text(300),
            }
        })
        .collect();
    let now = UNIX_EPOCH + Duration::from_secs(u64::from(input.u32()));
    let retry_until = (kind == Kind::Delay).then(|| now + Duration::from_secs(4 * 86_400));
    let max_message_size = u64::from(input.u32());
    let mut choice = returned(kind, &original, max_message_size);
    if flags & 64 != 0 {
        choice = Returned::Nothing;
    }
    let message = input.rest();
    let id = SpoolId("0123456789ABCDEF01235".into());
    let report = Report {
        kind,
        hostname: &hostname,
        original: &original,
        entries,
        id: &id,
        now,
        retry_until,
        returned: choice,
        boundary: new_boundary(),
    };
    check(&report, message);
}

/// Without `SMTPUTF8` the envelope's addresses are ASCII (RFC 6531 3.4), and host names and
/// ENVID (xtext, RFC 3461 4) are ASCII anyway.
fn ascii(text: String) -> String {
    text.chars().filter(char::is_ascii).collect()
}

fn check(report: &Report<'_>, message: &[u8]) {
    let (front, back) = crate::delivery::dsn::render(report);
    let whole = build(report, message);
    assert!(whole.starts_with(front.as_bytes()) && whole.ends_with(back.as_bytes()));
    for part in [&front, &back] {
        for line in part.split_inclusive('\n') {
            let text = line
                .strip_suffix("\r\n")
                .unwrap_or_else(|| panic!("a DSN line without CRLF: {line:?}"));
            assert!(!text.contains('\r'), "a bare CR in the DSN: {line:?}");
            assert!(!text.contains('\0'), "a NUL in the DSN: {line:?}");
            assert!(text.len() <= 998, "a DSN line of {} octets", text.len());
        }
    }

    let original = report.original;
    let ascii_inputs = !original.body_8bit
        && !original.smtputf8
        && report.hostname.is_ascii()
        && original.sender.is_ascii()
        && original.dsn_envid.as_deref().is_none_or(str::is_ascii)
        && report.entries.iter().all(|e| {
            e.address.is_ascii()
                && e.orcpt.as_deref().is_none_or(str::is_ascii)
                && e.remote_mta.as_deref().is_none_or(str::is_ascii)
                && e.remote_reply.as_deref().is_none_or(str::is_ascii)
                && e.text.is_ascii()
        });
    if ascii_inputs {
        assert!(
            front.is_ascii() && back.is_ascii(),
            "8-bit text in a DSN about 7-bit mail"
        );
    }

    // The header section: fields and their folds, one From.
    let (header, body) = front
        .split_once("\r\n\r\n")
        .expect("a DSN has a header section");
    for line in header.split("\r\n") {
        assert!(
            line.starts_with(' ') || line.split_once(':').is_some_and(|(n, _)| !n.is_empty()),
            "not a header field: {line:?}"
        );
    }
    if !original.smtputf8 {
        assert!(header.is_ascii(), "8-bit text in the header of a DSN");
    }
    let facts = scan_headers(header.as_bytes());
    assert_eq!(facts.from_fields, 1);

    // The boundary: one delimiter per part, the close delimiter last, nowhere else.
    let b = &report.boundary;
    let delimiter = format!("--{b}");
    let parts = if report.returned == Returned::Nothing {
        2
    } else {
        3
    };
    let inputs_hold_it = report.hostname.contains(b.as_str())
        || original.sender.contains(b.as_str())
        || report.entries.iter().any(|e| {
            [&e.address, &e.text]
                .into_iter()
                .chain(e.orcpt.as_ref())
                .chain(e.remote_reply.as_ref())
                .chain(e.remote_mta.as_ref())
                .any(|t| t.contains(b.as_str()))
        });
    if !inputs_hold_it {
        let lines: Vec<&str> = front
            .split("\r\n")
            .chain(back.split("\r\n"))
            .filter(|l| l.contains(b.as_str()))
            .collect();
        let open = lines.iter().filter(|l| **l == delimiter).count();
        let close = format!("{delimiter}--");
        assert_eq!(open, parts, "{lines:?}");
        assert_eq!(
            lines.iter().filter(|l| **l == close).count(),
            1,
            "{lines:?}"
        );
        // The header's boundary parameter is the one other place it appears.
        assert_eq!(
            lines.len(),
            parts + 2,
            "the boundary occurs outside its delimiters: {lines:?}"
        );
        assert!(back.trim_end().ends_with(&close));
    }

    // The parts: 8-bit text only where the part says 8bit.
    for part in body.split(&delimiter).skip(1) {
        let Some((part_header, part_body)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        if !part_body.is_ascii() {
            assert!(
                part_header.contains("Content-Transfer-Encoding: 8bit"),
                "8-bit text in a part that does not declare it: {part_header:?}"
            );
        }
    }

    let recipients = front.matches("\r\nFinal-Recipient: rfc822;").count();
    assert_eq!(recipients, report.entries.len());
    let action = format!("\r\nAction: {}\r\n", report.kind.action());
    assert_eq!(front.matches(&action).count(), report.entries.len());
}
