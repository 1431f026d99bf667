//! A server's reply as an SMTP client reads it (RFC 5321 section 4.2), for both clients.
//!
//! Pure code (no I/O): [`parse_response`] looks at the bytes received so far and returns one
//! complete reply and how many bytes it used, or `None` when more bytes are needed. Each
//! client keeps its own buffer, so pipelined replies (RFC 2920) that arrive together are
//! taken one after the other.
//!
//! What it follows:
//! - RFC 5321 section 4.2: `NNN SP text` or `NNN-text` continuation lines; every line of a
//!   multi-line reply carries the same code (4.2.1), otherwise the reply is refused as a
//!   protocol error rather than guessed at.
//! - RFC 3463 / RFC 2034: an enhanced status code `class.subject.detail` at the start of the
//!   text, taken from the first line.
//!
//! Limits ([`MAX_LINE`], [`MAX_LINES`]) bound what a server can make a client buffer; past
//! them the bytes are refused, never cut and guessed at. Lenient where peers are sloppy: a
//! bare LF ends a line like CRLF does, `250` with no text is accepted, and text that is not
//! UTF-8 is decoded lossily. Not done here: deciding what a reply means for a recipient (that
//! is `delivery/outcome.rs`) or for the exit status of `postern sendmail`.

use std::fmt;

use super::EnhancedCode;

/// Longest reply line accepted (RFC 5321 4.5.3.1.5 asks for 512 octets; peers exceed it).
pub const MAX_LINE: usize = 4096;
/// Most lines in one reply (a long EHLO reply has about 15).
pub const MAX_LINES: usize = 128;
/// Longest reply text kept for logs and the spool; longer text is cut with `...`.
const MAX_TEXT: usize = 512;

/// One complete reply received from an SMTP server (not to be confused with
/// `session::reply::Reply`, a reply our own server sends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code at the start of the first line, if the server sent one.
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line, after the code and the separator, enhanced code included.
    pub lines: Vec<String>,
}

impl Response {
    /// 2yz: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3yz: send more (354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4yz: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5yz: do not try again.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The lines as the server sent them, code and separator included (`250-PIPELINING`,
    /// `250 OK`), without the line end; a line with no text is the code alone.
    pub fn lines_as_sent(&self) -> impl Iterator<Item = String> + '_ {
        let last = self.lines.len().saturating_sub(1);
        self.lines
            .iter()
            .enumerate()
            .map(move |(i, text)| match (i == last, text.is_empty()) {
                (false, _) => format!("{}-{text}", self.code),
                (true, true) => self.code.to_string(),
                (true, false) => format!("{} {text}", self.code),
            })
    }

    /// The reply on one line, control characters removed and cut to a sane length, for logs,
    /// the spool and (later) DSNs: `550 5.1.1 no such user`.
    pub fn one_line(&self) -> String {
        let mut text = self.code.to_string();
        for line in &self.lines {
            let line = line.trim();
            if !line.is_empty() {
                text.push(' ');
                text.push_str(line);
            }
        }
        clean_text(&text)
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Replaces control characters by spaces and cuts `text` to a bounded length.
pub(crate) fn clean_text(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// Bytes that are not an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// A line does not start with three digits followed by space, `-` or the line end.
    #[error("malformed reply line {line:?}")]
    Malformed {
        /// The start of the offending line.
        line: String,
    },
    /// The code is outside 200-599 (1yz replies are not used by SMTP).
    #[error("reply code {code} out of range")]
    CodeOutOfRange {
        /// The code received.
        code: u16,
    },
    /// A multi-line reply whose lines carry different codes (RFC 5321 4.2.1 forbids it).
    #[error("multi-line reply mixes codes {first} and {later}")]
    MixedCodes {
        /// The code of the first line.
        first: u16,
        /// The first different code.
        later: u16,
    },
    /// A line longer than [`MAX_LINE`] bytes.
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// A reply of more than [`MAX_LINES`] lines.
    #[error("reply longer than {MAX_LINES} lines")]
    TooManyLines,
}

/// Takes one complete reply from the front of `buf`.
///
/// Returns `Ok(Some((reply, used)))` where `used` is the number of bytes of `buf` the reply
/// occupied, `Ok(None)` if `buf` holds only part of a reply.
///
/// # Errors
/// [`ResponseError`] when the bytes cannot be an SMTP reply; the connection is then unusable.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, ResponseError> {
    let mut pos = 0;
    let mut code: Option<u16> = None;
    let mut lines = Vec::new();
    loop {
        let rest = &buf[pos..];
        let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_LINE {
                return Err(ResponseError::LineTooLong);
            }
            return Ok(None);
        };
        if newline > MAX_LINE {
            return Err(ResponseError::LineTooLong);
        }
        let mut line = &rest[..newline];
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        pos += newline + 1;
        let (line_code, last, text) = split_line(line)?;
        match code {
            None => code = Some(line_code),
            Some(first) if first != line_code => {
                return Err(ResponseError::MixedCodes {
                    first,
                    later: line_code,
                });
            }
            Some(_) => {}
        }
        lines.push(String::from_utf8_lossy(text).into_owned());
        if last {
            let code = line_code;
            let enhanced = lines
                .first()
                .and_then(|first| first.split_whitespace().next())
                .and_then(EnhancedCode::parse)
                // RFC 3463 section 2: the class must match the reply's class.
                .filter(|e| u16::from(e.class) == code / 100);
            return Ok(Some((
                Response {
                    code,
                    enhanced,
                    lines,
                },
                pos,
            )));
        }
        if lines.len() >= MAX_LINES {
            return Err(ResponseError::TooManyLines);
        }
    }
}

/// Splits one line (without its line end) into code, "is last line" and text.
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ResponseError> {
    let malformed = || ResponseError::Malformed {
        line: clean_text(&String::from_utf8_lossy(&line[..line.len().min(64)])),
    };
    let (digits, rest) = match line {
        [a, b, c, rest @ ..] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => (
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'),
            rest,
        ),
        _ => return Err(malformed()),
    };
    if !(200..600).contains(&digits) {
        return Err(ResponseError::CodeOutOfRange { code: digits });
    }
    match rest {
        [] => Ok((digits, true, rest)),
        [b' ', text @ ..] => Ok((digits, true, text)),
        [b'-', text @ ..] => Ok((digits, false, text)),
        _ => Err(malformed()),
    }
}

/// For tests: `bytes` parsed as exactly one complete reply.
#[cfg(test)]
pub(crate) fn parse_one(bytes: &[u8]) -> Response {
    let (reply, used) = parse_response(bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    reply
}

#[cfg(test)]
mod tests {
    use super::parse_one as one;
    use super::*;

    #[test]
    fn single_line_with_enhanced_code() {
        let r = one(b"550 5.1.1 <bob@example.org>: no such user\r\n");
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced, Some(EnhancedCode::new(5, 1, 1)));
        assert!(r.is_permanent());
        assert_eq!(r.one_line(), "550 5.1.1 <bob@example.org>: no such user");
    }

    #[test]
    fn partial_reply_needs_more() {
        assert_eq!(parse_response(b""), Ok(None));
        assert_eq!(parse_response(b"250-first\r\n250 sec"), Ok(None));
        assert_eq!(parse_response(b"25"), Ok(None));
    }

    #[test]
    fn pipelined_replies_are_taken_one_by_one() {
        let buf = b"250 2.1.0 ok\r\n550 5.1.1 unknown\r\n250 2.1.5 ok\r\n";
        let (a, n) = parse_response(buf).unwrap().unwrap();
        assert_eq!(a.code, 250);
        let (b, m) = parse_response(&buf[n..]).unwrap().unwrap();
        assert_eq!(b.code, 550);
        let (c, k) = parse_response(&buf[n + m..]).unwrap().unwrap();
        assert_eq!(c.code, 250);
        assert_eq!(n + m + k, buf.len());
    }

    #[test]
    fn bare_lf_and_no_text_are_accepted() {
        let r = one(b"250\n");
        assert_eq!((r.code, r.lines.clone()), (250, vec![String::new()]));
        assert_eq!(r.one_line(), "250");
        let r = one(b"220-a\n220 b\n");
        assert_eq!(r.lines, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn lines_as_sent_put_back_code_and_separator() {
        let r = one(b"550-5.7.1 Sender address rejected:\r\n550 5.7.1 domain not allowed\r\n");
        assert_eq!(
            r.lines_as_sent().collect::<Vec<_>>(),
            [
                "550-5.7.1 Sender address rejected:",
                "550 5.7.1 domain not allowed"
            ]
        );
        let r = one(b"250-\r\n250\r\n");
        assert_eq!(r.lines_as_sent().collect::<Vec<_>>(), ["250-", "250"]);
    }

    #[test]
    fn enhanced_code_must_match_class() {
        assert_eq!(one(b"450 5.1.1 odd\r\n").enhanced, None);
        assert_eq!(
            one(b"451 4.3.0 try later\r\n").enhanced,
            Some(EnhancedCode::new(4, 3, 0))
        );
        assert_eq!(
            one(b"250 2.0.0\r\n").enhanced,
            Some(EnhancedCode::new(2, 0, 0))
        );
        assert_eq!(one(b"250 2.0.0.1 x\r\n").enhanced, None);
        assert_eq!(one(b"250 3.0.0 x\r\n").enhanced, None);
        assert_eq!(one(b"250 2.1000.0 x\r\n").enhanced, None);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            parse_response(b"hello\r\n"),
            Err(ResponseError::Malformed { .. })
        ));
        assert!(matches!(
            parse_response(b"250x\r\n"),
            Err(ResponseError::Malformed { .. })
        ));
        assert_eq!(
            parse_response(b"150 what\r\n"),
            Err(ResponseError::CodeOutOfRange { code: 150 })
        );
        assert_eq!(
            parse_response(b"250-a\r\n251 b\r\n"),
            Err(ResponseError::MixedCodes {
                first: 250,
                later: 251
            })
        );
    }

    #[test]
    fn limits_hold() {
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(parse_response(&long), Err(ResponseError::LineTooLong));
        let mut many = Vec::new();
        for _ in 0..MAX_LINES {
            many.extend_from_slice(b"250-x\r\n");
        }
        many.extend_from_slice(b"250 x\r\n");
        assert_eq!(parse_response(&many), Err(ResponseError::TooManyLines));
    }

    #[test]
    fn one_line_removes_controls_and_cuts() {
        let r = Response {
            code: 550,
            enhanced: None,
            lines: vec!["a\tb\u{7}c".into()],
        };
        assert_eq!(r.one_line(), "550 a b c");
        let r = Response {
            code: 550,
            enhanced: None,
            lines: vec!["é".repeat(400)],
        };
        let text = r.one_line();
        assert!(
            text.len() <= MAX_TEXT + 3 && text.ends_with("..."),
            "{}",
            text.len()
        );
    }
}
