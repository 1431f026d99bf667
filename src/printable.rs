//! Text from clients made safe for a terminal.
//!
//! Addresses, EHLO names and replies come from the network and end up in the text log and in
//! `postern log` tables, which operators read in a terminal. A control character there is an
//! instruction to that terminal (an ESC sequence can set its title, move the cursor or hide the
//! rest of a line), and a CR or LF forges a log line of its own. Every human-readable output
//! therefore shows such characters as escapes (`\x1b`, `\u{9b}`), so what an operator reads is
//! exactly what the client sent and nothing it sent acts on the terminal. JSON output needs
//! none of this: serde escapes control characters itself.

use std::borrow::Cow;

/// True for characters a terminal or a reader may act on instead of showing: the C0 and C1
/// control characters, DEL, and the Unicode bidirectional formatting characters (which reorder
/// the text around them on screen, so an address could show
/// its parts in another order than the one it has).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every control or bidi formatting character replaced by an escape: `\xHH` for
/// ASCII ones, `\u{HHHH}` for the others. Text without any comes back borrowed.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !is_unsafe(c) {
            out.push(c);
        } else if c.is_ascii() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// A log line: [`escape_controls`] on all of it but its final newline, which ends the line.
pub fn escape_log_line(line: &str) -> Cow<'_, str> {
    match line.strip_suffix('\n') {
        Some(body) => match escape_controls(body) {
            Cow::Borrowed(_) => Cow::Borrowed(line),
            Cow::Owned(mut escaped) => {
                escaped.push('\n');
                Cow::Owned(escaped)
            }
        },
        None => escape_controls(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for text in [
            "alice@example.org",
            "\"john doe\"@example.net",
            "jöhn@bücher.example",
            "",
        ] {
            assert!(matches!(escape_controls(text), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn terminal_sequences_and_line_breaks_become_escapes() {
        assert_eq!(
            escape_controls("a\u{1b}]0;owned\u{7}b@x"),
            "a\\x1b]0;owned\\x07b@x"
        );
        assert_eq!(escape_controls("a\r\nfake line"), "a\\x0d\\x0afake line");
        assert_eq!(escape_controls("tab\there\u{7f}"), "tab\\x09here\\x7f");
        assert_eq!(escape_controls("c1\u{9b}31m"), "c1\\u{9b}31m");
        assert_eq!(
            escape_controls("gro\u{202e}moc.evil"),
            "gro\\u{202e}moc.evil"
        );
        assert_eq!(escape_controls("\u{0}"), "\\x00");
    }

    #[test]
    fn log_line_keeps_only_its_own_newline() {
        assert_eq!(escape_log_line("ok line\n"), "ok line\n");
        assert_eq!(
            escape_log_line("rcpt=a\nforged=1 b\u{1b}[2J\n"),
            "rcpt=a\\x0aforged=1 b\\x1b[2J\n"
        );
        assert_eq!(escape_log_line("no newline\u{1b}"), "no newline\\x1b");
    }
}
