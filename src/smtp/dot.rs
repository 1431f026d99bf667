//! The DATA encoder: dot-stuffing and the end-of-data marker for a message sent in chunks.
//!
//! RFC 5321 section 4.5.2: before sending a line, the client doubles a leading period, and
//! section 4.1.1.4: the mail data ends with `CRLF . CRLF`. The encoder is streaming (messages
//! reach 201 MB and are never held in memory whole): it keeps only whether the next byte
//! starts a line and the last two bytes seen, so a chunk boundary may fall anywhere, even
//! between CR and LF or just before a period.
//!
//! Both clients hand it CRLF line endings (the spool guarantees them, `postern sendmail` makes
//! them), so the encoder does not rewrite line endings. A period after a bare LF is still
//! stuffed, because some receivers end lines at a bare LF.
//! When the message already ends with CRLF, only `. CRLF` is appended (no extra empty line,
//! unlike lettre and mail-send; DKIM body hashes and byte-exact tests stay intact). Pure code;
//! each client does its own reading and writing: the delivery client chunk by chunk from the
//! spool, `postern sendmail` over the message it prepared in memory.

/// Streaming dot-stuffer for the body of DATA.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// The next input byte starts a line.
    at_line_start: bool,
    /// The last two bytes of the input so far (`\r\n` before any input: an empty message
    /// needs no extra line end).
    last_two: [u8; 2],
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of a message.
    pub fn new() -> Self {
        Self {
            at_line_start: true,
            last_two: *b"\r\n",
        }
    }

    /// Appends the stuffed form of `input` to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 2);
        if self.at_line_start && input.first() == Some(&b'.') {
            out.push(b'.');
        }
        // Every other line start is right after an LF: copy the runs between the LF-dot pairs
        // whole, and double each such dot (the dot itself goes out with the next run).
        let mut start = 0;
        for lf in memchr::memmem::find_iter(input, b"\n.") {
            out.extend_from_slice(&input[start..=lf]);
            out.push(b'.');
            start = lf + 1;
        }
        out.extend_from_slice(&input[start..]);
        if let Some(&last) = input.last() {
            self.at_line_start = last == b'\n';
        }
        match input {
            [] => {}
            [only] => self.last_two = [self.last_two[1], *only],
            [.., a, b] => self.last_two = [*a, *b],
        }
    }

    /// Appends the end-of-data marker: `.CRLF` after a final CRLF, else `CRLF.CRLF`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.last_two != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff_in_chunks(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        for part in input.chunks(chunk.max(1)) {
            s.encode(part, &mut out);
        }
        s.finish(&mut out);
        out
    }

    fn stuff(input: &[u8]) -> Vec<u8> {
        stuff_in_chunks(input, input.len())
    }

    #[test]
    fn leading_periods_are_doubled() {
        assert_eq!(
            stuff(b".hidden\r\nmid.dle\r\n.\r\n..two\r\n"),
            b"..hidden\r\nmid.dle\r\n..\r\n...two\r\n.\r\n"
        );
    }

    #[test]
    fn message_ending_in_crlf_gets_no_extra_line() {
        assert_eq!(
            stuff(b"Subject: x\r\n\r\nbody\r\n"),
            b"Subject: x\r\n\r\nbody\r\n.\r\n"
        );
    }

    #[test]
    fn message_without_final_crlf_gets_one() {
        assert_eq!(
            stuff(b"Subject: x\r\n\r\nbody"),
            b"Subject: x\r\n\r\nbody\r\n.\r\n"
        );
        assert_eq!(stuff(b"body\n"), b"body\n\r\n.\r\n");
        assert_eq!(stuff(b"body\r"), b"body\r\r\n.\r\n");
    }

    #[test]
    fn empty_message() {
        assert_eq!(stuff(b""), b".\r\n");
    }

    #[test]
    fn period_after_bare_lf_is_stuffed() {
        assert_eq!(stuff(b"a\n.b\r\n"), b"a\n..b\r\n.\r\n");
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let input = b".a\r\n.\r\n\r\n..\r\nx.y\r\n.\r\nend.\r\n.";
        let whole = stuff(input);
        for chunk in 1..input.len() {
            assert_eq!(stuff_in_chunks(input, chunk), whole, "chunk size {chunk}");
        }
        let ends_crlf = b"abc\r\n";
        for chunk in 1..ends_crlf.len() {
            assert_eq!(
                stuff_in_chunks(ends_crlf, chunk),
                b"abc\r\n.\r\n",
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn no_line_of_the_output_is_a_lone_period_before_the_end() {
        let input = b"x\r\n.\r\n.\r\n";
        let out = stuff(input);
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        let lone = lines.iter().filter(|l| **l == b".\r").count();
        assert_eq!(lone, 1, "{:?}", String::from_utf8_lossy(&out));
        assert!(out.ends_with(b"\r\n.\r\n"));
    }

    /// The run-copying encoder gives what the rule says byte by byte (a period that starts a
    /// line is doubled, a line starting after CRLF or a bare LF), for inputs rich in periods
    /// and line ends, cut into chunks of every size.
    #[test]
    fn agrees_with_a_byte_by_byte_reading_of_the_rule() {
        fn reference(input: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut at_line_start = true;
            for &b in input {
                if at_line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                at_line_start = b == b'\n';
            }
            if !input.ends_with(b"\r\n") && !input.is_empty() {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            out
        }
        let mut seed: u32 = 7;
        for _ in 0..300 {
            let len = (seed % 40) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    b".\r\na"[(seed >> 16) as usize % 4]
                })
                .collect();
            let expected = reference(&input);
            for chunk in 1..=input.len().max(1) {
                assert_eq!(
                    stuff_in_chunks(&input, chunk),
                    expected,
                    "{input:?} in {chunk}"
                );
            }
        }
    }
}
