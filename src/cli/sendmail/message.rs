//! Turns what `postern sendmail` reads on standard input into a message to submit: line ends
//! made CRLF, the header section read (folded fields kept as they are), recipients taken from
//! `To:`/`Cc:`/`Bcc:` (or the `Resent-` ones) with `-t`, `Bcc:` removed, a `From:` added when
//! there is none. Dot-stuffing is left to the wire (`crate::smtp::dot`).

use super::Failure;
use super::address::{address_list, plausible_address};
use super::options::Options;
use crate::session::headers::mailbox_addresses;
use base64::Engine;

/// A message ready to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Prepared {
    /// `MAIL FROM`; empty for the null sender.
    pub(super) sender: String,
    /// `RCPT TO`s, without duplicates, in order of first appearance.
    pub(super) recipients: Vec<String>,
    /// The message with CRLF line ends, not yet dot-stuffed, ending in CRLF.
    pub(super) data: Vec<u8>,
}

/// One header field: its lower-case name and its lines (the first, then continuations).
struct Field<'a> {
    name: String,
    lines: Vec<&'a [u8]>,
}

impl Field<'_> {
    /// The unfolded value (everything after the colon, continuation lines joined).
    fn value(&self) -> String {
        let mut value = Vec::new();
        for (i, line) in self.lines.iter().enumerate() {
            if i == 0 {
                let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
                value.extend_from_slice(line.get(colon + 1..).unwrap_or_default());
            } else {
                value.extend_from_slice(line);
            }
        }
        String::from_utf8_lossy(&value).into_owned()
    }
}

/// Splits the input into lines: CRLF, bare LF and bare CR all end a line. Without `-i`, a line
/// holding a single `.` ends the input.
fn split_lines(input: &[u8], ignore_dots: bool) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < input.len() {
        let end = match input[i] {
            b'\n' => Some(i + 1),
            b'\r' if input.get(i + 1) == Some(&b'\n') => Some(i + 2),
            b'\r' => Some(i + 1),
            _ => None,
        };
        match end {
            Some(next) => {
                let line = &input[start..i];
                if !ignore_dots && line == b"." {
                    return lines;
                }
                lines.push(line);
                start = next;
                i = next;
            }
            None => i += 1,
        }
    }
    if start < input.len() {
        let line = &input[start..];
        if ignore_dots || line != b"." {
            lines.push(line);
        }
    }
    lines
}

/// A line that starts a header field: a name of printable ASCII without `:`, then `:`.
fn is_field_start(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 => line[..colon].iter().all(|&b| (33..=126).contains(&b)),
        _ => false,
    }
}

/// Builds the envelope and the data from the raw input.
pub(super) fn prepare(
    input: &[u8],
    options: &Options,
    default_sender: &str,
) -> Result<Prepared, Failure> {
    let lines = split_lines(input, options.ignore_dots);

    // The header section: fields and their continuation lines, up to an empty line or the
    // first line that is neither (which then starts the body).
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut body_start = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() {
            body_start = i + 1;
            break;
        }
        if matches!(line[0], b' ' | b'\t') && !fields.is_empty() {
            if let Some(field) = fields.last_mut() {
                field.lines.push(line);
            }
            continue;
        }
        if is_field_start(line) {
            let colon = line.iter().position(|&b| b == b':').unwrap_or(0);
            fields.push(Field {
                name: String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase(),
                lines: vec![line],
            });
            continue;
        }
        body_start = i;
        break;
    }
    let body = lines.get(body_start..).unwrap_or_default();

    let mut recipients: Vec<String> = Vec::new();
    if options.extract {
        let resent = fields
            .iter()
            .any(|f| matches!(f.name.as_str(), "resent-to" | "resent-cc" | "resent-bcc"));
        let wanted: [&str; 3] = if resent {
            ["resent-to", "resent-cc", "resent-bcc"]
        } else {
            ["to", "cc", "bcc"]
        };
        for field in fields.iter().filter(|f| wanted.contains(&f.name.as_str())) {
            for address in address_list(&field.value()) {
                if !plausible_address(&address) {
                    return Err(Failure::Data(format!(
                        "invalid recipient {address:?} in the {} field",
                        field.name
                    )));
                }
                recipients.push(address);
            }
        }
    }
    recipients.extend(options.recipients.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| seen.insert(r.clone()));
    if recipients.is_empty() {
        return Err(Failure::Usage(
            "no recipients: none given, and none in To, Cc or Bcc (with -t)".to_string(),
        ));
    }

    let from: Vec<String> = fields
        .iter()
        .filter(|f| f.name == "from")
        .flat_map(|f| mailbox_addresses(&f.value()))
        .collect();
    let has_from = fields.iter().any(|f| f.name == "from");
    let sender = match &options.sender {
        Some(sender) => sender.clone(),
        None => from
            .iter()
            .find(|a| plausible_address(a))
            .cloned()
            .unwrap_or_else(|| default_sender.to_string()),
    };

    let mut data = Vec::with_capacity(input.len() + lines.len() + 128);
    if !has_from {
        let address = if sender.is_empty() {
            default_sender
        } else {
            &sender
        };
        let from = match &options.full_name {
            Some(name) => format!("From: {} <{address}>", display_name(name)),
            None => format!("From: {address}"),
        };
        data.extend_from_slice(from.as_bytes());
        data.extend_from_slice(b"\r\n");
    }
    for field in &fields {
        if matches!(field.name.as_str(), "bcc" | "resent-bcc") {
            continue;
        }
        for line in &field.lines {
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
    }
    data.extend_from_slice(b"\r\n");
    for line in body {
        data.extend_from_slice(line);
        data.extend_from_slice(b"\r\n");
    }
    Ok(Prepared {
        sender,
        recipients,
        data,
    })
}

/// A display name as a quoted string, or as an RFC 2047 encoded word when it is not ASCII.
fn display_name(name: &str) -> String {
    if name.is_ascii() {
        let escaped: String = name
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name.as_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::sendmail::tests::options;
    use crate::cli::sendmail::{EX_DATAERR, EX_USAGE};

    #[test]
    fn lines_are_split_on_any_line_end() {
        assert_eq!(
            split_lines(b"a\nb\r\nc\rd", true),
            [&b"a"[..], b"b", b"c", b"d"]
        );
        assert_eq!(split_lines(b"a\n\n", true), [&b"a"[..], b""]);
        assert_eq!(split_lines(b"a\n.\nb\n", false), [&b"a"[..]]);
        assert_eq!(split_lines(b"a\n.\nb\n", true), [&b"a"[..], b".", b"b"]);
        assert_eq!(split_lines(b"a\n.", false), [&b"a"[..]]);
        assert_eq!(split_lines(b"a\n..\n", false), [&b"a"[..], b".."]);
    }

    const PHP: &[u8] = b"To: Bob <bob@example.net>, carol@example.net\n\
Cc: \"Dave\" <dave@example.net>\n\
Bcc: eve@example.net,\n  Frank <frank@example.net>\n\
Subject: Hello\n\
From: Shop <shop@example.org>\n\
\n\
Line one\n\
.hidden dot\n\
\n\
end\n";

    #[test]
    fn extract_recipients_and_remove_bcc() {
        let message = prepare(PHP, &options(&["-t", "-i"]), "www-data@web1").unwrap();
        assert_eq!(message.sender, "shop@example.org");
        assert_eq!(
            message.recipients,
            [
                "bob@example.net",
                "carol@example.net",
                "dave@example.net",
                "eve@example.net",
                "frank@example.net"
            ]
        );
        assert_eq!(
            String::from_utf8(message.data).unwrap(),
            "To: Bob <bob@example.net>, carol@example.net\r\n\
Cc: \"Dave\" <dave@example.net>\r\n\
Subject: Hello\r\n\
From: Shop <shop@example.org>\r\n\
\r\n\
Line one\r\n\
.hidden dot\r\n\
\r\n\
end\r\n"
        );
    }

    #[test]
    fn arguments_add_to_headers_and_duplicates_go() {
        let message = prepare(
            PHP,
            &options(&[
                "-t",
                "-f",
                "bounce@example.org",
                "bob@example.net",
                "zed@example.net",
            ]),
            "x@y",
        )
        .unwrap();
        assert_eq!(message.sender, "bounce@example.org");
        assert_eq!(message.recipients.len(), 6);
        assert_eq!(message.recipients[5], "zed@example.net");
        // Without -t the header recipients are not used, but Bcc is still removed.
        let message = prepare(PHP, &options(&["only@example.net"]), "x@y").unwrap();
        assert_eq!(message.recipients, ["only@example.net"]);
        assert!(!String::from_utf8_lossy(&message.data).contains("Bcc"));
    }

    #[test]
    fn resent_fields_win_with_t() {
        let input =
            b"Resent-To: r@example.net\nResent-Bcc: s@example.net\nTo: t@example.net\n\nx\n";
        let message = prepare(input, &options(&["-t"]), "x@y").unwrap();
        assert_eq!(message.recipients, ["r@example.net", "s@example.net"]);
        let text = String::from_utf8(message.data).unwrap();
        assert!(
            text.contains("To: t@example.net") && !text.contains("Resent-Bcc"),
            "{text}"
        );
    }

    #[test]
    fn from_is_added_when_missing() {
        let input = b"To: a@example.net\nSubject: s\n\nbody";
        let message = prepare(
            input,
            &options(&["-t", "-F", "Web \"Shop\""]),
            "www-data@web1",
        )
        .unwrap();
        assert_eq!(message.sender, "www-data@web1");
        assert!(
            message.data.starts_with(
                b"From: \"Web \\\"Shop\\\"\" <www-data@web1>\r\nTo: a@example.net\r\n"
            )
        );
        assert!(message.data.ends_with(b"\r\n\r\nbody\r\n"));
        let message = prepare(
            input,
            &options(&["-t", "-f", "s@example.org", "-F", "Zoë"]),
            "u@h",
        )
        .unwrap();
        assert!(
            message
                .data
                .starts_with(b"From: =?UTF-8?B?Wm/Dqw==?= <s@example.org>\r\n")
        );
        let message = prepare(input, &options(&["-t", "-f", "<>"]), "u@h").unwrap();
        assert_eq!(message.sender, "");
        assert!(message.data.starts_with(b"From: u@h\r\n"));
        // -F does not touch an existing From.
        let message = prepare(PHP, &options(&["-t", "-F", "Other"]), "u@h").unwrap();
        assert!(!String::from_utf8_lossy(&message.data).contains("Other"));
    }

    #[test]
    fn header_section_edge_cases() {
        // Headers only: an empty line is added.
        let message = prepare(b"To: a@example.net", &options(&["-t"]), "u@h").unwrap();
        assert_eq!(message.data, b"From: u@h\r\nTo: a@example.net\r\n\r\n");
        // A line that is not a field starts the body; the separator is inserted.
        let message = prepare(
            b"Subject: s\nnot a header\nmore\n",
            &options(&["a@example.net"]),
            "u@h",
        )
        .unwrap();
        assert_eq!(
            message.data,
            b"From: u@h\r\nSubject: s\r\n\r\nnot a header\r\nmore\r\n"
        );
        // No recipients at all.
        let e = prepare(b"Subject: s\n\nx\n", &options(&["-t"]), "u@h").unwrap_err();
        assert_eq!(e.status(), EX_USAGE);
        // A To: that is not an address.
        let e = prepare(b"To: John Smith\n\nx\n", &options(&["-t"]), "u@h").unwrap_err();
        assert_eq!(
            e,
            Failure::Data("invalid recipient \"john smith\" in the to field".into())
        );
        assert_eq!(e.status(), EX_DATAERR);
        // Without -i, a lone dot ends the message.
        let message = prepare(b"To: a@example.net\n\nx\n.\ny\n", &options(&["-t"]), "u@h").unwrap();
        assert!(message.data.ends_with(b"\r\n\r\nx\r\n"));
    }
}
