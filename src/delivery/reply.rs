//! SMTP replies as the outbound client reads them, and the EHLO extensions they advertise.
//!
//! Pure code (no I/O): [`parse_reply`] looks at the bytes received so far and returns one
//! complete reply and how many bytes it used, or `None` when more bytes are needed. The driver
//! in `client.rs` keeps the buffer, so pipelined replies (RFC 2920) that arrive together are
//! taken one after the other.
//!
//! What it follows:
//! - RFC 5321 section 4.2: `NNN SP text` or `NNN-text` continuation lines; every line of a
//!   multi-line reply carries the same code (4.2.1), otherwise the reply is refused as a
//!   protocol error rather than guessed at.
//! - RFC 3463 / RFC 2034: an enhanced status code `class.subject.detail` at the start of the
//!   text, taken from the first line.
//! - RFC 5321 section 4.1.1.1 and the extension RFCs for the EHLO keywords we act on.
//!
//! Lenient where peers are sloppy: a bare LF ends a line like CRLF does, `250` with no text is
//! accepted, and text that is not UTF-8 is decoded lossily. Not done here: deciding what a
//! reply means for a recipient (that is `outcome.rs`).

use std::fmt;

/// Longest reply line accepted (RFC 5321 4.5.3.1.5 asks for 512 octets; peers exceed it).
pub const MAX_LINE: usize = 4096;
/// Most lines in one reply (a long EHLO reply has about 15).
pub const MAX_LINES: usize = 128;
/// Longest reply text kept for logs and the spool; longer text is cut with `...`.
const MAX_TEXT: usize = 512;

/// An RFC 3463 enhanced status code, e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject (1 addressing, 2 mailbox, 3 mail system, 4 network, 5 protocol, 6 content,
    /// 7 security).
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds a code from its three parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses `class.subject.detail` (RFC 3463 section 2: class 2, 4 or 5; subject and detail
    /// one to three digits).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let class: u8 = match class {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        let number = |s: &str| -> Option<u16> {
            if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        Some(Self {
            class,
            subject: number(subject)?,
            detail: number(detail)?,
        })
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One complete SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code at the start of the first line, if the server sent one.
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line, after the code and the separator, enhanced code included.
    pub lines: Vec<String>,
}

impl Reply {
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

impl fmt::Display for Reply {
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
pub enum ReplyError {
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
/// [`ReplyError`] when the bytes cannot be an SMTP reply; the connection is then unusable.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code: Option<u16> = None;
    let mut lines = Vec::new();
    loop {
        let rest = &buf[pos..];
        let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_LINE {
                return Err(ReplyError::LineTooLong);
            }
            return Ok(None);
        };
        if newline > MAX_LINE {
            return Err(ReplyError::LineTooLong);
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
                return Err(ReplyError::MixedCodes {
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
                Reply {
                    code,
                    enhanced,
                    lines,
                },
                pos,
            )));
        }
        if lines.len() >= MAX_LINES {
            return Err(ReplyError::TooManyLines);
        }
    }
}

/// Splits one line (without its line end) into code, "is last line" and text.
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let malformed = || ReplyError::Malformed {
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
        return Err(ReplyError::CodeOutOfRange { code: digits });
    }
    match rest {
        [] => Ok((digits, true, rest)),
        [b' ', text @ ..] => Ok((digits, true, text)),
        [b'-', text @ ..] => Ok((digits, false, text)),
        _ => Err(malformed()),
    }
}

/// The service extensions of an EHLO reply that delivery acts on (RFC 5321 4.1.1.1: keywords
/// are case-insensitive, the first line is the server's greeting and carries none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 3207 `STARTTLS`.
    pub starttls: bool,
    /// RFC 2920 `PIPELINING`.
    pub pipelining: bool,
    /// RFC 1870 `SIZE`: `Some(0)` means the keyword without a limit (or limit 0, "no fixed
    /// maximum"); `None` means SIZE is not supported.
    pub size: Option<u64>,
    /// RFC 6152 `8BITMIME`.
    pub eight_bit_mime: bool,
    /// RFC 6531 `SMTPUTF8`.
    pub smtputf8: bool,
    /// RFC 2034 `ENHANCEDSTATUSCODES`.
    pub enhanced_status_codes: bool,
    /// RFC 3030 `CHUNKING` (recorded, BDAT not used yet).
    pub chunking: bool,
}

impl Extensions {
    /// Reads the keywords of a positive EHLO reply. A reply to HELO gives the default (none).
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut ext = Self::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "STARTTLS" => ext.starttls = true,
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => {
                    ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
                }
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
                "CHUNKING" => ext.chunking = true,
                _ => {}
            }
        }
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Reply {
        let (reply, used) = parse_reply(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        reply
    }

    #[test]
    fn single_line_with_enhanced_code() {
        let r = one(b"550 5.1.1 <bob@example.org>: no such user\r\n");
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced, Some(EnhancedCode::new(5, 1, 1)));
        assert!(r.is_permanent());
        assert_eq!(r.one_line(), "550 5.1.1 <bob@example.org>: no such user");
    }

    #[test]
    fn multi_line_ehlo_reply() {
        let bytes = b"250-mx.example.org hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
            250-starttls\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n";
        let r = one(bytes);
        assert_eq!(r.code, 250);
        assert_eq!(r.lines.len(), 7);
        assert_eq!(r.enhanced, None);
        let ext = Extensions::from_ehlo(&r);
        assert_eq!(
            ext,
            Extensions {
                starttls: true,
                pipelining: true,
                size: Some(10_240_000),
                eight_bit_mime: true,
                smtputf8: true,
                enhanced_status_codes: true,
                chunking: false,
            }
        );
    }

    #[test]
    fn size_without_number_means_no_limit() {
        let r = one(b"250-mx\r\n250 SIZE\r\n");
        assert_eq!(Extensions::from_ehlo(&r).size, Some(0));
        let r = one(b"250 mx\r\n");
        assert_eq!(Extensions::from_ehlo(&r), Extensions::default());
    }

    #[test]
    fn partial_reply_needs_more() {
        assert_eq!(parse_reply(b""), Ok(None));
        assert_eq!(parse_reply(b"250-first\r\n250 sec"), Ok(None));
        assert_eq!(parse_reply(b"25"), Ok(None));
    }

    #[test]
    fn pipelined_replies_are_taken_one_by_one() {
        let buf = b"250 2.1.0 ok\r\n550 5.1.1 unknown\r\n250 2.1.5 ok\r\n";
        let (a, n) = parse_reply(buf).unwrap().unwrap();
        assert_eq!(a.code, 250);
        let (b, m) = parse_reply(&buf[n..]).unwrap().unwrap();
        assert_eq!(b.code, 550);
        let (c, k) = parse_reply(&buf[n + m..]).unwrap().unwrap();
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
            parse_reply(b"hello\r\n"),
            Err(ReplyError::Malformed { .. })
        ));
        assert!(matches!(
            parse_reply(b"250x\r\n"),
            Err(ReplyError::Malformed { .. })
        ));
        assert_eq!(
            parse_reply(b"150 what\r\n"),
            Err(ReplyError::CodeOutOfRange { code: 150 })
        );
        assert_eq!(
            parse_reply(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::MixedCodes {
                first: 250,
                later: 251
            })
        );
    }

    #[test]
    fn limits_hold() {
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(parse_reply(&long), Err(ReplyError::LineTooLong));
        let mut many = Vec::new();
        for _ in 0..MAX_LINES {
            many.extend_from_slice(b"250-x\r\n");
        }
        many.extend_from_slice(b"250 x\r\n");
        assert_eq!(parse_reply(&many), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn one_line_removes_controls_and_cuts() {
        let r = Reply {
            code: 550,
            enhanced: None,
            lines: vec!["a\tb\u{7}c".into()],
        };
        assert_eq!(r.one_line(), "550 a b c");
        let r = Reply {
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
