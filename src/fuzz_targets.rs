//! The bodies of the fuzz targets: one function per parser, fed arbitrary bytes.
//!
//! The `cargo fuzz` crate in `fuzz/` calls each function from a one-line libFuzzer target, and
//! `tests/fuzz_corpus.rs` replays the committed corpus (`fuzz/corpus/<target>/`) through the
//! same functions in the ordinary test suite, so a finding stays found. Compiled only with the
//! `fuzzing` feature (test builds turn it on through the dev-dependency; release builds never).
//!
//! No body only checks that nothing panics: each asserts what must hold for every input (a
//! round trip, a one-line error, a reply that is a valid SMTP reply line, ...). A check that
//! fires on input the relay handles correctly is a bug in the check, and is fixed here.
//!
//! Structured inputs (a session's settings, a DSN's fields) are read from the front of the
//! bytes with [`Input`], a small reader that never fails: past the end it yields zeros and
//! empty strings, so every byte string is a valid input.

mod config;
mod dsn;
mod handoff;
mod headers;
mod journal;
mod mta_sts;
mod proxy_header;
mod session;
mod smtp_reply;
mod tlsa;
mod trust_anchor;

/// A target: its name (the `fuzz/fuzz_targets/<name>.rs` file and the corpus directory) and
/// its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("session", session::run),
    ("headers", headers::run),
    ("mailbox", headers::run_mailbox),
    ("journal_record", journal::run),
    ("smtp_reply", smtp_reply::run),
    ("dsn", dsn::run),
    ("tlsa", tlsa::run),
    ("trust_anchor", trust_anchor::run),
    ("mta_sts", mta_sts::run),
    ("config", config::run),
    ("proxy_header", proxy_header::run),
    ("handoff", handoff::run),
];

/// The session state machine (`session/`) driven as the listener drives it.
pub fn session(data: &[u8]) {
    session::run(data)
}

/// The header facts (`session/headers.rs`) and the `Received:` prefix.
pub fn headers(data: &[u8]) {
    headers::run(data)
}

/// The strict identity-field mailbox reader (`policy/mailbox.rs`).
pub fn mailbox(data: &[u8]) {
    headers::run_mailbox(data)
}

/// The journal record decoder (`spool/record.rs`): PSJ3, PSJ2 and PSJ1.
pub fn journal_record(data: &[u8]) {
    journal::run(data)
}

/// The delivery client's reply parser (`smtp/response.rs`) and EHLO keywords.
pub fn smtp_reply(data: &[u8]) {
    smtp_reply::run(data)
}

/// The DSN builder (`delivery/dsn.rs`) with arbitrary envelope, recipients and replies.
pub fn dsn(data: &[u8]) {
    dsn::run(data)
}

/// TLSA records from DNS wire RDATA through DANE's usability rules and certificate matching.
pub fn tlsa(data: &[u8]) {
    tlsa::run(data)
}

/// The `[dns] trust_anchor` file parser (`dnssec.rs`).
pub fn trust_anchor(data: &[u8]) {
    trust_anchor::run(data)
}

/// The MTA-STS TXT record and policy parsers (`delivery/mta_sts.rs`).
pub fn mta_sts(data: &[u8]) {
    mta_sts::run(data)
}

/// The hand-off envelope lines and session (`smtp/handoff.rs`, `session/handoff.rs`) and
/// the control socket's requests (`control.rs`).
pub fn handoff(data: &[u8]) {
    handoff::run(data)
}

/// The config loader (`config/`): TOML text to a checked config, or a one-line error.
pub fn config(data: &[u8]) {
    config::run(data)
}

/// The PROXY protocol header reader and the untrusted-opening sniff (`listener/proxy/`).
pub fn proxy_header(data: &[u8]) {
    proxy_header::run(data)
}

/// Reads structured values from the front of a fuzz input; never fails.
struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// The bytes up to the next `0` byte (which is consumed), at most `max` of them.
    fn field(&mut self, max: usize) -> &'a [u8] {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.bytes.len());
        let (field, rest) = self.bytes.split_at(end);
        self.bytes = rest.get(1..).unwrap_or(&[]);
        &field[..field.len().min(max)]
    }

    /// [`Input::field`] as text (invalid UTF-8 replaced), at most `max` bytes of it.
    fn text(&mut self, max: usize) -> String {
        let mut text = String::from_utf8_lossy(self.field(max)).into_owned();
        let mut end = text.len().min(max);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text
    }

    /// Everything not read yet.
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}
