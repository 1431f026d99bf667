//! The message-data scanner shared by DATA and BDAT.
//!
//! It enforces, in one place, the rules that keep SMTP smuggling out (CVE-2023-51764 class):
//! - the end of DATA is only `CRLF . CRLF` (RFC 5321 section 4.1.1.4); `LF . LF`,
//!   `CR . CR` and mixtures are data, never an end;
//! - a bare LF or a bare CR anywhere in the data refuses the whole message (RFC 5321
//!   section 2.3.8: lines end with CRLF only);
//! - a NUL byte anywhere refuses it (RFC 5321 sections 2.3.8 and 4.5.2 give NUL no place in
//!   mail text): a receiver that drops NULs before looking for the end of data would read
//!   `CRLF NUL . CRLF` as `CRLF . CRLF` and split the message there;
//! - a line longer than 998 octets refuses it (RFC 5321 section 4.5.3.1.6);
//! - more bytes than the size limit refuse it.
//!
//! After a refusal the scanner keeps reading, discarding, until the real end of the data, so
//! the session can answer and carry on. For DATA it removes the transparency dot (section
//! 4.5.2). The output holds the message with CRLF line endings and nothing else.

/// How the data is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// DATA: dot-stuffed, ends at `CRLF . CRLF`.
    Dot,
    /// BDAT: exact byte counts, no stuffing; the session says when the last chunk ends.
    Chunked,
}

/// Why a message was refused while its data was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// A bare LF or bare CR.
    BareNewline,
    /// A NUL byte.
    NulByte,
    /// A line over 998 octets.
    LineTooLong,
    /// More bytes than the limit.
    TooBig,
}

/// Longest text line without its CRLF (RFC 5321 section 4.5.3.1.6).
pub const MAX_LINE: usize = 998;

/// Incremental scanner over message data.
#[derive(Debug)]
pub struct DataScanner {
    framing: Framing,
    max_size: u64,
    size: u64,
    /// Input bytes consumed, accepted or not.
    received: u64,
    line_len: usize,
    at_line_start: bool,
    /// A CR was seen and its LF has not arrived yet.
    pending_cr: bool,
    /// The current line started with a dot that was removed.
    dot_line: bool,
    error: Option<DataError>,
}

impl DataScanner {
    /// A scanner for a message of at most `max_size` bytes.
    pub fn new(framing: Framing, max_size: u64) -> Self {
        Self {
            framing,
            max_size,
            size: 0,
            received: 0,
            line_len: 0,
            at_line_start: true,
            pending_cr: false,
            dot_line: false,
            error: None,
        }
    }

    /// The first rule the data broke, if any.
    pub fn error(&self) -> Option<DataError> {
        self.error
    }

    /// Bytes of message accepted so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Input bytes consumed so far, whether or not they were accepted: what a BDAT chunk's
    /// reply reports, the same however the client's bytes were cut into reads.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Scans `input`, appending message bytes to `out` while no rule is broken. Returns how
    /// many input bytes were consumed and, for DATA, whether the end marker was reached (the
    /// bytes after it are not consumed).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let (consumed, ended) = self.scan(input, out);
        self.received += consumed as u64;
        (consumed, ended)
    }

    fn scan(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    if self.framing == Framing::Dot && self.dot_line && self.line_len == 0 {
                        return (i, true);
                    }
                    self.emit(b"\r\n", out);
                    self.at_line_start = true;
                    self.dot_line = false;
                    self.line_len = 0;
                    continue;
                }
                self.fail(DataError::BareNewline);
                // The line so far is not ".": "CRLF . CR CR LF" must never end the data.
                self.dot_line = false;
                self.at_line_start = false;
                self.line_len += 1;
                // The byte after a bare CR is data again; look at it afresh.
                i -= 1;
                continue;
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    self.fail(DataError::BareNewline);
                    // Not a line start: only CRLF starts a line, so "LF . CRLF" is no end.
                    self.at_line_start = false;
                    self.dot_line = false;
                    self.line_len = 0;
                }
                b'.' if self.at_line_start && self.framing == Framing::Dot => {
                    self.at_line_start = false;
                    self.dot_line = true;
                }
                _ => {
                    // Up to the next CR or LF the line is plain content: take it as one run.
                    let start = i - 1;
                    let end =
                        memchr::memchr2(b'\r', b'\n', &input[i..]).map_or(input.len(), |p| i + p);
                    i = end;
                    self.at_line_start = false;
                    let run = &input[start..end];
                    if let Some(error) = self.first_broken_rule(run) {
                        self.fail(error);
                    }
                    self.line_len += run.len();
                    self.emit(run, out);
                }
            }
        }
        (i, false)
    }

    /// Ends a BDAT message: a trailing CR without LF is a bare CR; a last line without CRLF
    /// gets one (RFC 3030 leaves the final line ending to the sender; the spool wants CRLF).
    pub fn finish_chunked(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.pending_cr = false;
            self.fail(DataError::BareNewline);
        }
        if !self.at_line_start && self.error.is_none() {
            self.emit(b"\r\n", out);
            self.at_line_start = true;
        }
    }

    /// The rule broken by the first offending byte of `run` (content without CR or LF), if
    /// any. A run is checked as a whole for speed, but the answer must be the one a byte-by-byte
    /// scan gives: otherwise a message breaking two rules close together (a NUL just past the
    /// size limit, say) would get a reply that depends on where the client's bytes were cut
    /// into reads. When one byte breaks several rules, NUL comes first, then line length, then
    /// size, whatever the cut.
    fn first_broken_rule(&self, run: &[u8]) -> Option<DataError> {
        if self.error.is_some() {
            return None;
        }
        let nul = memchr::memchr(0, run);
        let long =
            (self.line_len + run.len() > MAX_LINE).then(|| MAX_LINE.saturating_sub(self.line_len));
        let room = self.max_size.saturating_sub(self.size);
        let big = (run.len() as u64 > room).then_some(room as usize);
        [
            (nul, DataError::NulByte),
            (long, DataError::LineTooLong),
            (big, DataError::TooBig),
        ]
        .into_iter()
        .filter_map(|(at, error)| at.map(|at| (at, error)))
        // min_by_key keeps the first of equal keys: the order above breaks ties.
        .min_by_key(|&(at, _)| at)
        .map(|(_, error)| error)
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.error.is_some() {
            return;
        }
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            self.fail(DataError::TooBig);
            return;
        }
        out.extend_from_slice(bytes);
    }

    fn fail(&mut self, error: DataError) {
        if self.error.is_none() {
            self.error = Some(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(
        framing: Framing,
        max: u64,
        chunks: &[&[u8]],
    ) -> (Vec<u8>, Option<DataError>, bool, usize) {
        let mut s = DataScanner::new(framing, max);
        let mut out = Vec::new();
        let mut ended = false;
        let mut rest = 0;
        for chunk in chunks {
            let (used, end) = s.feed(chunk, &mut out);
            if end {
                ended = true;
                rest = chunk.len() - used;
                break;
            }
        }
        (out, s.error(), ended, rest)
    }

    #[test]
    fn plain_message_ends_at_crlf_dot_crlf() {
        let (out, err, ended, rest) = scan(
            Framing::Dot,
            1000,
            &[b"Subject: a\r\n\r\nbody\r\n.\r\nQUIT\r\n"],
        );
        assert_eq!(out, b"Subject: a\r\n\r\nbody\r\n");
        assert_eq!((err, ended, rest), (None, true, 6));
    }

    #[test]
    fn end_marker_split_across_reads() {
        let (out, err, ended, _) = scan(Framing::Dot, 1000, &[b"a\r", b"\n.", b"\r", b"\n"]);
        assert_eq!(out, b"a\r\n");
        assert_eq!((err, ended), (None, true));
    }

    #[test]
    fn empty_message() {
        let (out, err, ended, _) = scan(Framing::Dot, 1000, &[b".\r\n"]);
        assert!(out.is_empty());
        assert_eq!((err, ended), (None, true));
    }

    #[test]
    fn transparency_dot_removed() {
        let (out, _, ended, _) = scan(Framing::Dot, 1000, &[b"..leading\r\n...\r\n.\r\n"]);
        assert_eq!(out, b".leading\r\n..\r\n");
        assert!(ended);
    }

    #[test]
    fn smuggling_variants_are_not_an_end_and_refuse_the_message() {
        for attack in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n"[..],
            b"a\r\n.\nMAIL FROM:<x@y>\r\n.\r\n",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n",
            b"a\r.\rMAIL FROM:<x@y>\r\n.\r\n",
            b"a\r\n.\r MAIL\r\n.\r\n",
            b"hi\r\n.\r\r\nNOOP smuggled\r\n.\r\n",
        ] {
            let (_, err, ended, rest) = scan(Framing::Dot, 1000, &[attack]);
            assert_eq!(err, Some(DataError::BareNewline), "{attack:?}");
            assert!(ended, "{attack:?}");
            assert_eq!(rest, 0, "only the real CRLF.CRLF ends it: {attack:?}");
        }
    }

    #[test]
    fn nul_bytes_refuse_the_message_and_are_no_end() {
        for (attack, rest) in [
            // A receiver that drops NULs would see CRLF . CRLF here and split the message.
            (&b"a\r\n\0.\r\nMAIL FROM:<x@y>\r\n.\r\nNOOP\r\n"[..], 6),
            (b"mid\0line\r\n.\r\n", 0),
            (b"\0\r\n.\r\n", 0),
            (b"a\r\n.\0\r\n.\r\n", 0),
        ] {
            let (_, err, ended, left) = scan(Framing::Dot, 1000, &[attack]);
            assert_eq!(err, Some(DataError::NulByte), "{attack:?}");
            assert!(ended, "{attack:?}");
            assert_eq!(left, rest, "only the real CRLF.CRLF ends it: {attack:?}");
        }
        let mut s = DataScanner::new(Framing::Chunked, 1000);
        let mut out = Vec::new();
        s.feed(b"x\r\n\0.\r\n", &mut out);
        s.finish_chunked(&mut out);
        assert_eq!(s.error(), Some(DataError::NulByte));
    }

    #[test]
    fn line_length_limit_at_998_and_999() {
        let ok = [vec![b'x'; 998], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(scan(Framing::Dot, 10_000, &[&ok]).1, None);
        let long = [vec![b'x'; 999], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(
            scan(Framing::Dot, 10_000, &[&long]).1,
            Some(DataError::LineTooLong)
        );
    }

    #[test]
    fn size_limit_at_n_and_n_plus_one() {
        // "abc\r\n" is 5 bytes.
        assert_eq!(scan(Framing::Dot, 5, &[b"abc\r\n.\r\n"]).1, None);
        let (_, err, ended, _) = scan(Framing::Dot, 4, &[b"abc\r\n.\r\n"]);
        assert_eq!((err, ended), (Some(DataError::TooBig), true));
    }

    #[test]
    fn the_first_offending_byte_names_the_rule_however_the_data_is_read() {
        // (data, size limit, the rule its first offending byte breaks)
        let long_then_nul = [vec![b'x'; 999], b"\0\r\n.\r\n".to_vec()].concat();
        let nul_then_long = [b"\0".to_vec(), vec![b'x'; 999], b"\r\n.\r\n".to_vec()].concat();
        let cases: [(&[u8], u64, DataError); 6] = [
            (b"abcdef\0gh\r\n.\r\n", 4, DataError::TooBig),
            (b"ab\0cdefgh\r\n.\r\n", 4, DataError::NulByte),
            // The fifth byte is both past the limit and a NUL: NUL wins the tie.
            (b"abcd\0\r\n.\r\n", 4, DataError::NulByte),
            (&long_then_nul, 100_000, DataError::LineTooLong),
            (&nul_then_long, 100_000, DataError::NulByte),
            (&long_then_nul, 500, DataError::TooBig),
        ];
        for (data, max, rule) in cases {
            let whole = scan(Framing::Dot, max, &[data]).1;
            assert_eq!(whole, Some(rule), "one read of {data:?}");
            let bytes: Vec<&[u8]> = data.chunks(1).collect();
            assert_eq!(scan(Framing::Dot, max, &bytes).1, whole, "byte by byte");
            for cut in 1..data.len() {
                let (a, b) = data.split_at(cut);
                assert_eq!(scan(Framing::Dot, max, &[a, b]).1, whole, "cut at {cut}");
            }
        }
    }

    #[test]
    fn chunked_keeps_dots_and_completes_last_line() {
        let mut s = DataScanner::new(Framing::Chunked, 1000);
        let mut out = Vec::new();
        assert_eq!(s.feed(b".x\r\n.\r\nlast", &mut out), (11, false));
        s.finish_chunked(&mut out);
        assert_eq!(out, b".x\r\n.\r\nlast\r\n");
        assert_eq!(s.error(), None);
    }

    #[test]
    fn chunked_trailing_cr_is_bare() {
        let mut s = DataScanner::new(Framing::Chunked, 1000);
        let mut out = Vec::new();
        s.feed(b"x\r", &mut out);
        s.finish_chunked(&mut out);
        assert_eq!(s.error(), Some(DataError::BareNewline));
    }
}
