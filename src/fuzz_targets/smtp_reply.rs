//! The SMTP reply parser both clients use (`smtp/response.rs`), the EHLO keywords read from a
//! reply (`smtp/extensions.rs`) and enhanced status codes (`smtp/enhanced_code.rs`): the bytes
//! a remote server sends, as hostile as it likes.
//!
//! What must hold:
//! - a parsed reply used at least one byte, at most the buffer, ending at a line end; its
//!   code has three digits in 200-599 and every line; at most `MAX_LINES` lines, none longer
//!   than `MAX_LINE`; its enhanced code, if any, has the reply's class;
//! - the reply written out again as the server sent it parses to the same reply;
//! - every shorter prefix of a reply's bytes asks for more (`Ok(None)`): a reply is never
//!   taken before its last line has arrived, however the bytes are cut;
//! - the one-line form (logs, the spool, DSNs) has no control character and a bounded length;
//! - an enhanced code read from text writes back to text that reads as the same code.

use crate::smtp::extensions::Extensions;
use crate::smtp::response::{MAX_LINE, MAX_LINES};
use crate::smtp::{EnhancedCode, parse_response};

/// Longest `one_line()`: the kept text and the `...` that marks a cut.
const MAX_ONE_LINE: usize = 512 + 3;

pub(super) fn run(data: &[u8]) {
    if let Some(word) = std::str::from_utf8(data)
        .ok()
        .and_then(|t| t.split_whitespace().next())
        && let Some(code) = EnhancedCode::parse(word)
    {
        assert!(matches!(code.class, 2 | 4 | 5));
        assert!(code.subject <= 999 && code.detail <= 999);
        assert_eq!(EnhancedCode::parse(&code.to_string()), Some(code));
    }

    let mut rest = data;
    // The pipelined replies in the buffer, one after the other, as a client takes them.
    while let Ok(Some((reply, used))) = parse_response(rest) {
        assert!(used > 0 && used <= rest.len());
        let taken = &rest[..used];
        assert_eq!(
            taken.last(),
            Some(&b'\n'),
            "a reply that ends inside a line"
        );
        assert!((200..600).contains(&reply.code));
        assert!(!reply.lines.is_empty() && reply.lines.len() <= MAX_LINES);
        let lines: Vec<&[u8]> = taken.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), reply.lines.len());
        for line in &lines {
            assert!(line.len() <= MAX_LINE + 1);
            assert!(line.starts_with(reply.code.to_string().as_bytes()));
        }
        if let Some(enhanced) = reply.enhanced {
            assert_eq!(u16::from(enhanced.class), reply.code / 100);
        }

        let mut again = Vec::new();
        for line in reply.lines_as_sent() {
            again.extend_from_slice(line.as_bytes());
            again.extend_from_slice(b"\r\n");
        }
        assert_eq!(
            parse_response(&again),
            Ok(Some((reply.clone(), again.len()))),
            "the reply written out again reads differently"
        );

        // The prefixes that end at each line end but the last, and one inside each line.
        for (end, _) in taken.iter().enumerate().filter(|&(_, &b)| b == b'\n') {
            for cut in [end, end + 1] {
                if cut < used {
                    assert_eq!(
                        parse_response(&taken[..cut]),
                        Ok(None),
                        "a reply taken from {cut} of its {used} bytes"
                    );
                }
            }
        }

        let one_line = reply.one_line();
        assert!(!one_line.chars().any(char::is_control), "{one_line:?}");
        assert!(one_line.len() <= MAX_ONE_LINE, "{} bytes", one_line.len());
        assert!(one_line.starts_with(&reply.code.to_string()));

        let ext = Extensions::from_ehlo(&reply);
        if reply.lines.len() == 1 {
            assert_eq!(ext, Extensions::default(), "keywords on a greeting line");
        }
        rest = &rest[used..];
    }
}
