//! The session state machine fed arbitrary client bytes, driven as the listener drives it
//! (`listener/handler.rs`): every event is carried out and answered at once, with a store
//! that knows one user and quota and spool answers chosen by the input.
//!
//! Input: a settings byte (role, relay permission, hosting account, STARTTLS, small or large
//! limits, store down), a seed for the driver's quota and commit answers, a chunking byte,
//! then the client's bytes.
//!
//! What must hold:
//! - every reply is a valid SMTP reply: code 2xx-5xx, each line `CODE-text` or `CODE text`
//!   with printable ASCII text and CRLF, read back identically by the delivery client's own
//!   reply parser, and with an enhanced status code of the reply's class where the catalogue
//!   promises one (all but the greeting, EHLO/HELO, 334, 354 and the FAQ's 573);
//! - message data flows only between `MessageStart` and its `MessageAbort` or
//!   `MessageComplete`, and nothing at all follows `Close`;
//! - a completed message has 1 to `max_recipients` recipients, its size is the bytes the
//!   driver received, at most `max_message_size`, and they are CRLF lines of at most 998
//!   octets; its header facts are what `scan_headers` reads from those bytes; an
//!   authenticated user's message names only the user's own addresses in `From:`,
//!   `Sender:`, `Resent-From:` and `Resent-Sender:`;
//! - how the bytes are cut into reads does not matter: the same bytes in one read and in
//!   many small ones give the same transcript (pipelining, RFC 2920), unless STARTTLS ran
//!   (the bytes pipelined behind it are discarded by design, RFC 3207 section 4.2).

use super::Input;
use crate::policy::sender::may_send_as;
use crate::session::data::MAX_LINE;
use crate::session::headers::{header_section_end, scan_headers};
use crate::session::{
    AuthOutcome, Authenticated, BrakedFrom, CommitOutcome, CompletedMessage, Event, HoldOutcome,
    HostingClient, Reply, Role, Session, SessionConfig,
};
use crate::smtp::parse_response;

const HOSTNAME: &str = "postern.test";
const USER: &str = "alice@example.org";
const ALIAS: &str = "sales@example.org";
const PASSWORD: &str = "right-password";
/// Passwords for which the driver answers that the failed-login brake is engaged (for the
/// client's address, for its network), as the listener does before checking any password.
const BRAKED_ADDRESS: &str = "braked-address";
const BRAKED_NETWORK: &str = "braked-network";

/// The session's settings and the driver's answers, from the first input bytes.
struct Setup {
    config: SessionConfig,
    store_down: bool,
    answers: u8,
}

impl Setup {
    fn read(input: &mut Input<'_>) -> Self {
        let settings = input.byte();
        let answers = input.byte();
        let role = match settings & 3 {
            0 => Role::Submission,
            1 => Role::Submissions,
            _ => Role::Relay,
        };
        let small = settings & 32 != 0;
        let config = SessionConfig {
            role,
            hostname: HOSTNAME.into(),
            max_recipients: if small { 2 } else { 100 },
            max_message_size: if small { 300 } else { 100_000 },
            max_bad_commands: if small { 2 } else { 20 },
            max_junk_commands: if small { 3 } else { 100 },
            allow_address_literals: settings & 128 != 0,
            max_auth_failures: if small { 1 } else { 3 },
            max_received_headers: if small { 2 } else { 50 },
            relay_allowed: settings & 4 != 0,
            hosting: (role == Role::Relay && settings & 8 != 0).then(|| HostingClient {
                account: "web1".into(),
                domains: vec!["example.org".into()],
            }),
            implicit_tls: role == Role::Submissions,
            starttls_available: settings & 16 != 0,
        };
        Self {
            config,
            store_down: settings & 64 != 0,
            answers,
        }
    }

    /// The driver's `n`th answer of a kind with `choices` outcomes: mostly the first (the
    /// good one), others as the seed says.
    fn choice(&self, n: usize, choices: u8) -> u8 {
        let mixed = (u32::from(self.answers) * 31 + n as u32 * 17) % 256;
        if self.answers & 1 == 0 || mixed < 160 {
            0
        } else {
            (mixed % u32::from(choices)) as u8
        }
    }
}

/// What the driver saw, comparable between two runs.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Reply(Vec<u8>),
    StartTls,
    Authenticate(String, String),
    CheckSenders,
    MessageStart,
    /// Message bytes; consecutive `MessageData` events are merged (their cut is the read's).
    Data(Vec<u8>),
    Abort,
    Complete(String),
    Refused(String, usize),
    Hold(String),
    Reset,
    RecipientOutcome(&'static str),
    Close,
}

struct Run {
    transcript: Vec<Seen>,
    started_tls: bool,
}

pub(super) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let setup = Setup::read(&mut input);
    let chunking = input.byte();
    let client = input.rest();
    let whole = drive(&setup, std::iter::once(client));
    let pieces = Pieces {
        rest: client,
        seed: chunking,
        n: 0,
    };
    let cut = drive(&setup, pieces);
    if !whole.started_tls && !cut.started_tls {
        assert_eq!(
            whole.transcript, cut.transcript,
            "the same bytes in one read and in several give different sessions"
        );
    }
}

/// `rest` cut into reads of 1 to 16 bytes, sizes following `seed`.
struct Pieces<'a> {
    rest: &'a [u8],
    seed: u8,
    n: usize,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        self.n += 1;
        let size = 1 + (usize::from(self.seed) * self.n * 7 + self.n / 3) % 16;
        let (piece, rest) = self.rest.split_at(size.min(self.rest.len()));
        self.rest = rest;
        Some(piece)
    }
}

fn drive<'a>(setup: &Setup, reads: impl Iterator<Item = &'a [u8]>) -> Run {
    let mut session = Session::new(setup.config.clone());
    let mut driver = Driver {
        setup,
        transcript: Vec::new(),
        started_tls: false,
        closed: false,
        message: None,
        holds: 0,
        commits: 0,
    };
    driver.pump(&mut session);
    for read in reads {
        session.handle_input(read);
        driver.pump(&mut session);
    }
    // A message still open when the input ends: how much of it was streamed depends on where
    // the reads were cut (a partial line waits for its end, a refused one stops part-way, also
    // across BDAT chunk replies), and it is never used.
    if driver.message.is_some() {
        driver.drop_open_message_data();
    }
    Run {
        transcript: driver.transcript,
        started_tls: driver.started_tls,
    }
}

struct Driver<'s> {
    setup: &'s Setup,
    transcript: Vec<Seen>,
    started_tls: bool,
    closed: bool,
    /// The bytes of the message being received, between `MessageStart` and its end.
    message: Option<Vec<u8>>,
    holds: usize,
    commits: usize,
}

impl Driver<'_> {
    /// Takes the data of the message in progress out of the transcript (see the callers).
    fn drop_open_message_data(&mut self) {
        let start = self
            .transcript
            .iter()
            .rposition(|seen| matches!(seen, Seen::MessageStart))
            .unwrap_or(self.transcript.len());
        let kept: Vec<Seen> = self
            .transcript
            .drain(start..)
            .filter(|seen| !matches!(seen, Seen::Data(_)))
            .collect();
        self.transcript.extend(kept);
    }

    fn pump(&mut self, session: &mut Session) {
        while let Some(event) = session.poll_event() {
            assert!(!self.closed, "an event after Close: {event:?}");
            self.carry_out(session, event);
        }
    }

    fn carry_out(&mut self, session: &mut Session, event: Event) {
        match event {
            Event::Reply(reply) => {
                let wire = check_reply(&reply);
                self.transcript.push(Seen::Reply(wire));
            }
            Event::StartTls => {
                self.started_tls = true;
                self.transcript.push(Seen::StartTls);
                session.handle_tls_started();
            }
            Event::Authenticate {
                login, password, ..
            } => {
                let outcome = if self.setup.store_down {
                    AuthOutcome::Unavailable
                } else if password == BRAKED_ADDRESS {
                    AuthOutcome::Braked(BrakedFrom::Address)
                } else if password == BRAKED_NETWORK {
                    AuthOutcome::Braked(BrakedFrom::Network)
                } else if login == USER && password == PASSWORD {
                    AuthOutcome::Accepted(Authenticated {
                        address: USER.into(),
                        device: "laptop".into(),
                        senders: vec![USER.into(), ALIAS.into()],
                    })
                } else {
                    AuthOutcome::Rejected
                };
                self.transcript.push(Seen::Authenticate(login, password));
                session.handle_auth_outcome(outcome);
            }
            Event::CheckSenders => {
                // The directory changed or not: the fuzzer picks, as it picks AUTH outcomes.
                let fresh = (self.setup.choice(self.commits, 2) == 1).then(|| vec![USER.into()]);
                self.transcript.push(Seen::CheckSenders);
                session.handle_senders(fresh);
            }
            Event::MessageStart => {
                assert!(self.message.is_none(), "MessageStart inside a message");
                self.message = Some(Vec::new());
                self.transcript.push(Seen::MessageStart);
            }
            Event::MessageData(bytes) => {
                let message = self
                    .message
                    .as_mut()
                    .expect("MessageData outside a message");
                message.extend_from_slice(&bytes);
                match self.transcript.last_mut() {
                    Some(Seen::Data(seen)) => seen.extend_from_slice(&bytes),
                    _ => self.transcript.push(Seen::Data(bytes)),
                }
            }
            Event::MessageAbort => {
                self.message = None;
                // An aborted message's bytes are thrown away, and how many of them the driver
                // saw before the session decided to refuse depends on where reads were cut
                // (also across BDAT chunk replies): none of them is compared.
                self.drop_open_message_data();
                self.transcript.push(Seen::Abort);
            }
            Event::MessageComplete(message) => {
                let data = self
                    .message
                    .take()
                    .expect("MessageComplete without MessageStart");
                check_message(&self.setup.config, session, &message, &data);
                self.transcript.push(Seen::Complete(format!("{message:?}")));
                let outcome = match self.setup.choice(self.commits, 5) {
                    0 => CommitOutcome::Queued("0123456789ABCDEF01234".into()),
                    1 => CommitOutcome::Failed,
                    2 => CommitOutcome::StorageFull,
                    3 => CommitOutcome::QuotaUnavailable,
                    _ => CommitOutcome::QuotaFull {
                        limit: 500,
                        retry_after: "23:59".into(),
                    },
                };
                self.commits += 1;
                session.handle_commit_outcome(outcome);
            }
            Event::TransactionRefused {
                reply,
                reason,
                recipients,
            } => {
                self.transcript.push(Seen::Refused(
                    format!("{} {reason:?}", reply.summary()),
                    recipients,
                ));
            }
            Event::HoldRecipient(rcpt) => {
                self.transcript.push(Seen::Hold(format!("{rcpt:?}")));
                let outcome = match self.setup.choice(self.holds, 4) {
                    0 => HoldOutcome::Held,
                    1 => HoldOutcome::Full {
                        limit: 500,
                        retry_after: "23:59".into(),
                    },
                    2 => HoldOutcome::Throttled,
                    _ => HoldOutcome::Unavailable,
                };
                self.holds += 1;
                session.handle_hold_outcome(outcome);
            }
            Event::TransactionReset => self.transcript.push(Seen::Reset),
            Event::RecipientOutcome(label) => self.transcript.push(Seen::RecipientOutcome(label)),
            Event::Close => {
                self.closed = true;
                self.transcript.push(Seen::Close);
                // A closed session reads nothing more.
                session.handle_input(b"NOOP\r\n");
                assert!(session.poll_event().is_none(), "a closed session answered");
            }
        }
    }
}

/// Asserts that `reply` is a valid SMTP reply and returns its wire form.
fn check_reply(reply: &Reply) -> Vec<u8> {
    assert!(
        (200..600).contains(&reply.code),
        "reply code {} out of 2xx-5xx",
        reply.code
    );
    assert!(!reply.lines.is_empty(), "a reply without text");
    let mut wire = Vec::new();
    reply.write_to(&mut wire);
    let code = reply.code.to_string();
    let lines: Vec<&[u8]> = wire.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(
        lines.len(),
        reply.lines.len(),
        "a reply line holds a line break"
    );
    for (i, line) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { b' ' } else { b'-' };
        assert!(line.starts_with(code.as_bytes()), "{line:?}");
        assert_eq!(line[3], sep, "{line:?}");
        let text = line[4..]
            .strip_suffix(b"\r\n")
            .unwrap_or_else(|| panic!("{line:?} does not end in CRLF"));
        assert!(
            text.iter()
                .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)),
            "reply text is not printable ASCII: {line:?}"
        );
    }
    let (parsed, used) = parse_response(&wire)
        .expect("our reply parser reads our reply")
        .expect("the reply is complete");
    assert_eq!(used, wire.len());
    assert_eq!(parsed.code, reply.code);
    assert_eq!(
        parsed.lines,
        reply
            .lines
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
    );
    let first = &reply.lines[0];
    let names_host = first.starts_with(HOSTNAME);
    // The greeting, EHLO and HELO replies start with the host name; 334 and 354 carry no
    // status; 573 is the FAQ's text.
    let without_enhanced = names_host || reply.code / 100 == 3 || reply.code == 573;
    if !without_enhanced {
        let enhanced = parsed
            .enhanced
            .unwrap_or_else(|| panic!("no enhanced status code of its class: {first:?}"));
        assert_eq!(u16::from(enhanced.class), reply.code / 100);
    }
    wire
}

/// Asserts what must hold of a message the session completed.
fn check_message(
    config: &SessionConfig,
    session: &Session,
    message: &CompletedMessage,
    data: &[u8],
) {
    let n = message.recipients.len();
    assert!((1..=config.max_recipients).contains(&n), "{n} recipients");
    assert_eq!(
        message.size,
        data.len() as u64,
        "size is not the bytes given"
    );
    assert!(
        message.size <= config.max_message_size,
        "over the size limit"
    );
    for line in data.split_inclusive(|&b| b == b'\n') {
        let text = line
            .strip_suffix(b"\r\n")
            .unwrap_or_else(|| panic!("a line of accepted data without CRLF: {line:?}"));
        assert!(!text.contains(&b'\r'), "a bare CR in accepted data");
        assert!(text.len() <= MAX_LINE, "a line over {MAX_LINE} octets");
    }
    let section = match header_section_end(data) {
        Some(end) => &data[..end],
        None => data,
    };
    assert_eq!(
        message.headers,
        scan_headers(section),
        "the header facts are not those of the data"
    );
    if let Some(user) = session.authenticated() {
        let facts = &message.headers;
        assert!(
            facts.from_fields == 1 && !facts.from_malformed && !facts.from.is_empty(),
            "an authenticated message without one From"
        );
        for address in facts
            .from
            .iter()
            .chain(facts.identities.iter().filter_map(|f| f.address.as_ref()))
        {
            assert!(
                may_send_as(&user.senders, address),
                "{address} is not the user's"
            );
        }
        assert!(
            facts.identities.iter().all(|f| f.address.is_some()),
            "an ambiguous identity field was accepted"
        );
    }
}
