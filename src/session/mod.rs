//! The SMTP server protocol as a pure state machine: no sockets, no clock, no tokio.
//!
//! The driver in `listener/` feeds it bytes with [`Session::handle_input`] and drains
//! [`Session::poll_event`] until it returns `None` (then it flushes the replies and reads more).
//! Events that need the outside world ([`Event::StartTls`], [`Event::Authenticate`],
//! [`Event::MessageComplete`]) pause the session until the driver answers with the matching
//! `handle_*` call; input that arrives meanwhile waits in the buffer, which is how pipelined
//! commands are answered in order (RFC 2920).
//!
//! Protocol rules enforced here, in one place:
//! - command lines end with CRLF; a bare LF is refused (500) and counted as an error;
//! - after `STARTTLS` every byte already received in plaintext is discarded, so nothing a
//!   client pipelined before the handshake is ever executed (CVE-2011-0411 class), and the
//!   session forgets EHLO and any state (RFC 3207 section 4.2);
//! - message data goes through [`data::DataScanner`] (CRLF.CRLF only, no bare CR/LF, no NUL,
//!   998-octet lines, size limit) and the rest of a refused message is read and discarded;
//! - AUTH only on the submission roles, and on 587 only after TLS (RFC 4954 section 4);
//! - too many bad commands or failed AUTHs end the session with 421.
//!
//! What it does not do: look up passwords, write the spool, count quotas. It asks.

pub mod data;
pub mod envelope;
pub mod handoff;
pub mod headers;
pub mod reply;

use crate::policy::sender;
use base64::Engine;
use data::{DataError, DataScanner, Framing};
use headers::{HeaderFacts, IdentityField, IdentityHeader};
pub use reply::Reply;
use smtp_proto::{Error as ProtoError, Request};
use std::collections::VecDeque;

/// Longest command line we read (RFC 5321 allows 512; ESMTP parameters make it longer).
pub const MAX_COMMAND_LINE: usize = 4096;

/// Which door the client came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Port 587: STARTTLS, then AUTH, then mail.
    Submission,
    /// Port 465: implicit TLS, then AUTH, then mail.
    Submissions,
    /// Port 25: web-hosting servers relaying without AUTH.
    Relay,
}

impl Role {
    /// Label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Role::Submission => "submission",
            Role::Submissions => "submissions",
            Role::Relay => "relay",
        }
    }
}

/// Fixed facts of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Listener role.
    pub role: Role,
    /// Our host name, for the greeting and EHLO.
    pub hostname: String,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// Bytes per message.
    pub max_message_size: u64,
    /// Bad commands before 421.
    pub max_bad_commands: u32,
    /// NOOP, RSET, VRFY and HELP tolerated before each further one also counts as a bad
    /// command (Postfix's `smtpd_junk_command_limit`).
    pub max_junk_commands: u32,
    /// Failed AUTHs before 421.
    pub max_auth_failures: u32,
    /// `Received:` fields a message may carry; one more is a loop (`554 5.4.6`).
    pub max_received_headers: usize,
    /// Recipients at an address literal (`x@[192.0.2.1]`) are accepted (`[delivery]
    /// allow_address_literals`); otherwise refused with `550 5.1.2`.
    pub allow_address_literals: bool,
    /// The relay role: whether this client's network may relay.
    pub relay_allowed: bool,
    /// The relay role: the hosting account this client's network belongs to, whose domains
    /// bound `MAIL FROM`. `None` for trusted networks (no domain rule) and other roles.
    pub hosting: Option<HostingClient>,
    /// The session starts inside TLS (port 465).
    pub implicit_tls: bool,
    /// A certificate is available for STARTTLS.
    pub starttls_available: bool,
}

/// The identity a successful AUTH established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Login address (canonical, lower case).
    pub address: String,
    /// Device name whose password matched.
    pub device: String,
    /// Addresses this user may send as (its own and its aliases), lower case.
    pub senders: Vec<String>,
}

/// A web-hosting server relaying without AUTH, identified by its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostingClient {
    /// Account name.
    pub account: String,
    /// Domains its envelope senders must belong to (lower case).
    pub domains: Vec<String>,
}

/// The driver's answer to [`Event::HoldRecipient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// The recipient is held against the sender's quota (or not metered).
    Held,
    /// The daily quota is used up.
    Full {
        /// The limit in force.
        limit: u32,
        /// `HH:MM` (UTC) at which capacity returns.
        retry_after: String,
    },
    /// The short-term message brake is engaged.
    Throttled,
    /// The quota service did not answer: nothing may be accepted uncounted.
    Unavailable,
}

/// SASL mechanism used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN mechanism.
    Login,
}

impl Mechanism {
    /// Label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "plain",
            Mechanism::Login => "login",
        }
    }
}

/// Result of a credential check, from the driver.
#[derive(Debug, Clone)]
pub enum AuthOutcome {
    /// The credentials are valid.
    Accepted(Authenticated),
    /// They are not.
    Rejected,
    /// The store could not answer.
    Unavailable,
    /// The failed-login brake of the client's address or network is engaged: the session
    /// ends with the reply a new connection would get.
    Braked(BrakedFrom),
}

/// Whose failed logins engaged the brake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrakedFrom {
    /// The client's address (IPv4) or /64 (IPv6).
    Address,
    /// Its IPv4 /24 or IPv6 /48.
    Network,
}

/// One recipient as given at RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptParams {
    /// The forward-path.
    pub address: String,
    /// DSN NOTIFY (RFC 3461), as the keyword list.
    pub notify: Option<String>,
    /// DSN ORCPT (RFC 3461).
    pub orcpt: Option<String>,
}

/// A message whose data has been fully received and checked.
#[derive(Debug, Clone)]
pub struct CompletedMessage {
    /// Reverse-path (empty for the null sender).
    pub sender: String,
    /// Recipients in RCPT order.
    pub recipients: Vec<RcptParams>,
    /// BODY=8BITMIME.
    pub body_8bit: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// DSN RET.
    pub dsn_ret: Option<String>,
    /// DSN ENVID.
    pub dsn_envid: Option<String>,
    /// `REQUIRETLS` (RFC 8689): deliver only over authenticated TLS to hops that support it.
    pub require_tls: bool,
    /// What the header section says.
    pub headers: HeaderFacts,
    /// Message bytes (as stored, before Postern's prefix).
    pub size: u64,
}

/// How the driver's commit went.
#[derive(Debug, Clone)]
pub enum CommitOutcome {
    /// Durable under this queue id.
    Queued(String),
    /// Not stored; the client should retry.
    Failed,
    /// Not stored because DKIM signing failed (fail closed); the client should retry.
    SigningFailed,
    /// Not stored: the spool's file system is full (452); the client should retry later.
    StorageFull,
    /// Not counted against the quota (the quota service did not answer): not accepted.
    QuotaUnavailable,
    /// The daily quota was used up before the message could be counted.
    QuotaFull {
        /// The limit in force.
        limit: u32,
        /// `HH:MM` (UTC) at which capacity returns.
        retry_after: String,
    },
}

/// Why a message was refused at end of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRefusal {
    /// Over `max_message_size` (552).
    TooBig,
    /// Broken data or header section: bare CR or LF, a line over 998 octets, a header
    /// section over its cap or starting with a continuation line (554).
    Malformed,
    /// No single well-formed `From:` field, so the message cannot show whose it is, or a
    /// malformed or repeated `Sender:`, `Resent-From:`, `Resent-Sender:` (550).
    FromHeader,
    /// `From:`, `Sender:`, `Resent-From:` or `Resent-Sender:` names an address the
    /// authenticated user may not send as (550).
    SenderNotOwned,
    /// More `Received:` fields than `max_received_headers`: a mail loop (554).
    TooManyHops,
}

impl MessageRefusal {
    /// Label for metrics (`postern_smtp_messages_total{result=...}`).
    pub fn label(self) -> &'static str {
        match self {
            MessageRefusal::TooBig => "too_big",
            MessageRefusal::Malformed => "malformed",
            // The From rules are the first step of the ownership check: dashboards have
            // always counted both under one label.
            MessageRefusal::FromHeader | MessageRefusal::SenderNotOwned => "sender_not_owned",
            MessageRefusal::TooManyHops => "too_many_hops",
        }
    }
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Event {
    /// Send this reply (buffer it; flush when `poll_event` returns `None` or before TLS).
    Reply(Reply),
    /// Flush replies, perform the TLS handshake, then call [`Session::handle_tls_started`].
    StartTls,
    /// Check credentials, then call [`Session::handle_auth_outcome`].
    Authenticate {
        /// Mechanism used.
        mechanism: Mechanism,
        /// Login (authentication identity).
        login: String,
        /// Password. Never log it.
        password: String,
    },
    /// A new message's data begins: prepare a body.
    MessageStart,
    /// Bytes of the current message's data.
    MessageData(Vec<u8>),
    /// The current message was refused: drop its body.
    MessageAbort,
    /// The message is complete and acceptable: commit it, then call
    /// [`Session::handle_commit_outcome`].
    MessageComplete(CompletedMessage),
    /// A transaction ended with a reply the driver should log (refusals at end of data).
    TransactionRefused {
        /// The reply sent.
        reply: Reply,
        /// Why, as the session decided it (metrics count by its label).
        reason: MessageRefusal,
        /// Recipients the refused message had.
        recipients: usize,
    },
    /// An authenticated MAIL FROM waits for the ownership check: re-read the user's senders if
    /// the directory changed since they were read, then call [`Session::handle_senders`].
    CheckSenders,
    /// A recipient passed every local check: hold it against the quota, then call
    /// [`Session::handle_hold_outcome`].
    HoldRecipient(RcptParams),
    /// The open transaction ended without a message (RSET, new EHLO, refusal, QUIT, close):
    /// release what it held.
    TransactionReset,
    /// A RCPT was answered: `accepted`, or the fixed label of why it was refused
    /// (`too_many`, `relay_denied`, `bad_syntax`), for metrics.
    RecipientOutcome(&'static str),
    /// Flush replies and close the connection.
    Close,
}

#[derive(Debug)]
enum State {
    /// Waiting for a command line.
    Command,
    /// AUTH PLAIN without initial response: waiting for the response line.
    AuthPlain,
    /// AUTH LOGIN: waiting for the user name line.
    AuthLoginUser,
    /// AUTH LOGIN: waiting for the password line.
    AuthLoginPassword { login: String },
    /// Reading DATA.
    Data(DataScanner),
    /// Reading a BDAT chunk: bytes still to come, last chunk or not.
    Bdat { remaining: u64, last: bool },
    /// Waiting for the driver (TLS, AUTH, quota hold or commit outcome).
    Waiting(Waiting),
    /// Closed: nothing more is read.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Tls,
    Auth,
    Senders,
    Hold,
    Commit,
}

#[derive(Debug, Default)]
struct Transaction {
    sender: String,
    recipients: Vec<RcptParams>,
    body_8bit: bool,
    smtputf8: bool,
    dsn_ret: Option<String>,
    dsn_envid: Option<String>,
    require_tls: bool,
    /// Header section collected while data streams (capped).
    header_buf: Vec<u8>,
    header_done: bool,
    header_too_large: bool,
    /// BDAT in progress: its scanner (kept across chunks).
    bdat: Option<DataScanner>,
}

/// One SMTP server session.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    state: State,
    input: Vec<u8>,
    events: VecDeque<Event>,
    tls: bool,
    helo: Option<String>,
    auth: Option<Authenticated>,
    tx: Option<Transaction>,
    bad_commands: u32,
    /// NOOP, RSET, VRFY and HELP so far.
    junk_commands: u32,
    auth_failures: u32,
    /// Discarding the rest of an over-long command line.
    skipping_long_line: bool,
    /// The recipient waiting for its quota hold.
    pending_rcpt: Option<RcptParams>,
    /// The transaction a MAIL FROM opens once its sender's ownership is checked.
    pending_mail: Option<Transaction>,
}

impl Session {
    /// A new session; the greeting is the first event.
    pub fn new(config: SessionConfig) -> Self {
        let mut events = VecDeque::new();
        events.push_back(Event::Reply(Reply::greeting(&config.hostname)));
        Self {
            tls: config.implicit_tls,
            config,
            state: State::Command,
            input: Vec::new(),
            events,
            helo: None,
            auth: None,
            tx: None,
            bad_commands: 0,
            junk_commands: 0,
            auth_failures: 0,
            skipping_long_line: false,
            pending_rcpt: None,
            pending_mail: None,
        }
    }

    /// Bytes received from the client.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        if !matches!(self.state, State::Closed) {
            self.input.extend_from_slice(bytes);
        }
    }

    /// The TLS handshake the session asked for succeeded: forget everything said in
    /// plaintext (RFC 3207 section 4.2) and wait for a new EHLO.
    pub fn handle_tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.drop_transaction();
        self.auth = None;
        self.input.clear();
        self.state = State::Command;
    }

    /// The driver's answer to [`Event::Authenticate`].
    pub fn handle_auth_outcome(&mut self, outcome: AuthOutcome) {
        if !matches!(self.state, State::Waiting(Waiting::Auth)) {
            return;
        }
        self.state = State::Command;
        match outcome {
            AuthOutcome::Accepted(identity) => {
                self.auth = Some(identity);
                self.reply(Reply::auth_ok());
            }
            AuthOutcome::Rejected => {
                self.auth_failures += 1;
                // `max_auth_failures` failures are tolerated; the one after ends the session.
                if self.auth_failures > self.config.max_auth_failures {
                    self.close_with(Reply::too_many_auth_failures());
                } else {
                    self.reply(Reply::auth_failed());
                }
            }
            AuthOutcome::Unavailable => self.reply(Reply::auth_unavailable()),
            AuthOutcome::Braked(BrakedFrom::Address) => {
                self.close_with(Reply::too_many_failed_logins_from_ip())
            }
            AuthOutcome::Braked(BrakedFrom::Network) => {
                self.close_with(Reply::too_many_failed_logins_from_network())
            }
        }
    }

    /// The driver's answer to [`Event::CheckSenders`]: the user's senders as the directory
    /// has them now, or `None` if they did not change.
    pub fn handle_senders(&mut self, senders: Option<Vec<String>>) {
        if !matches!(self.state, State::Waiting(Waiting::Senders)) {
            return;
        }
        self.state = State::Command;
        let Some(tx) = self.pending_mail.take() else {
            return;
        };
        let Some(user) = self.auth.as_mut() else {
            return;
        };
        if let Some(senders) = senders {
            user.senders = senders;
        }
        if !sender::may_send_as(&user.senders, &tx.sender) {
            let reply = Reply::sender_not_owned(&user.address);
            self.reply(reply);
            return;
        }
        self.tx = Some(tx);
        self.reply(Reply::mail_ok());
    }

    /// The driver's answer to [`Event::HoldRecipient`].
    pub fn handle_hold_outcome(&mut self, outcome: HoldOutcome) {
        if !matches!(self.state, State::Waiting(Waiting::Hold)) {
            return;
        }
        self.state = State::Command;
        let Some(rcpt) = self.pending_rcpt.take() else {
            return;
        };
        let (reply, label) = match outcome {
            HoldOutcome::Held => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.recipients.push(rcpt);
                }
                (Reply::rcpt_ok(), "accepted")
            }
            HoldOutcome::Full { limit, retry_after } => {
                (Reply::daily_limit_reached(limit, &retry_after), "quota")
            }
            HoldOutcome::Throttled => (Reply::message_rate_exceeded(), "throttled"),
            HoldOutcome::Unavailable => (Reply::quota_unavailable(), "quota_unavailable"),
        };
        self.events.push_back(Event::RecipientOutcome(label));
        self.reply(reply);
    }

    /// The driver's answer to [`Event::MessageComplete`].
    pub fn handle_commit_outcome(&mut self, outcome: CommitOutcome) {
        if !matches!(self.state, State::Waiting(Waiting::Commit)) {
            return;
        }
        self.state = State::Command;
        self.tx = None;
        match outcome {
            CommitOutcome::Queued(id) => self.reply(Reply::queued(&id)),
            CommitOutcome::Failed => self.reply(Reply::spool_failed()),
            CommitOutcome::SigningFailed => self.reply(Reply::signing_failed()),
            CommitOutcome::StorageFull => self.reply(Reply::insufficient_storage()),
            CommitOutcome::QuotaUnavailable => self.reply(Reply::quota_unavailable()),
            CommitOutcome::QuotaFull { limit, retry_after } => {
                self.reply(Reply::daily_limit_reached(limit, &retry_after))
            }
        }
    }

    /// The hosting account of a port-25 client, if it is one.
    pub fn hosting(&self) -> Option<&HostingClient> {
        self.config.hosting.as_ref()
    }

    /// The identity AUTH established, if any.
    pub fn authenticated(&self) -> Option<&Authenticated> {
        self.auth.as_ref()
    }

    /// The EHLO/HELO name given.
    pub fn helo_name(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the session sits between commands with nothing pending (a safe moment to
    /// close it for shutdown or revocation).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Command) && self.tx.is_none() && self.input.is_empty()
    }

    /// Frees the capacity the input and event queues kept from earlier commands, when they
    /// are empty: the driver calls this before a wait for the next command, which may last
    /// minutes, so that an idle session keeps no buffers. Nothing else changes.
    pub fn release_idle_memory(&mut self) {
        if self.input.is_empty() {
            self.input = Vec::new();
        }
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
    }

    /// Whether the session reads message data now (the driver applies the data timeout).
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(_) | State::Bdat { .. })
    }

    /// Whether a message is being transferred: DATA, or a BDAT message between its first and
    /// last chunk (the driver bounds the whole transfer with `timeouts.data_total`).
    pub fn in_message(&self) -> bool {
        self.in_data() || self.tx.as_ref().is_some_and(|tx| tx.bdat.is_some())
    }

    /// The next thing the driver must do, or `None` when more input is needed.
    pub fn poll_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            if !self.step() {
                return None;
            }
        }
    }

    /// Processes buffered input until an event is produced or input runs out. Returns whether
    /// progress was made.
    fn step(&mut self) -> bool {
        match &mut self.state {
            State::Closed | State::Waiting(_) => false,
            State::Data(_) => self.step_data(),
            State::Bdat { .. } => self.step_bdat(),
            State::Command
            | State::AuthPlain
            | State::AuthLoginUser
            | State::AuthLoginPassword { .. } => self.step_line(),
        }
    }

    fn reply(&mut self, reply: Reply) {
        self.events.push_back(Event::Reply(reply));
    }

    /// Forgets the open transaction, telling the driver to release its holds.
    fn drop_transaction(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        if tx.bdat.is_some() {
            // A BDAT message in progress: its body goes too.
            self.events.push_back(Event::MessageAbort);
        }
        if !tx.recipients.is_empty() {
            self.events.push_back(Event::TransactionReset);
        }
    }

    fn close_with(&mut self, reply: Reply) {
        self.drop_transaction();
        self.reply(reply);
        self.events.push_back(Event::Close);
        self.state = State::Closed;
        self.input.clear();
    }

    /// Counts a bad command; ends the session past the limit (`max_bad_commands` are
    /// tolerated, the next one gets 421).
    fn bad_command(&mut self, reply: Reply) {
        self.bad_commands += 1;
        if self.bad_commands > self.config.max_bad_commands {
            self.close_with(Reply::too_many_errors());
        } else {
            self.reply(reply);
        }
    }

    /// Answers a command that moves no mail (NOOP, RSET, VRFY, HELP): past
    /// `max_junk_commands` each one also counts as a bad command, so a client that only keeps
    /// the session busy meets the bad-command limit (it still gets the command's own reply
    /// until then).
    fn junk_command(&mut self, reply: Reply) {
        self.junk_commands = self.junk_commands.saturating_add(1);
        if self.junk_commands > self.config.max_junk_commands {
            self.bad_command(reply);
        } else {
            self.reply(reply);
        }
    }

    fn step_line(&mut self) -> bool {
        let Some(newline) = self.input.iter().position(|&b| b == b'\n') else {
            // The longest line may wait here with its CR, its LF still to come.
            if self.input.len() > MAX_COMMAND_LINE + 1 {
                self.input.clear();
                if !self.skipping_long_line {
                    self.skipping_long_line = true;
                    self.state = State::Command;
                    self.bad_command(Reply::command_too_long());
                    return true;
                }
            }
            return false;
        };
        let line: Vec<u8> = self.input.drain(..=newline).collect();
        if self.skipping_long_line {
            self.skipping_long_line = false;
            return true;
        }
        if line.len() > MAX_COMMAND_LINE + 2 {
            self.state = State::Command;
            self.bad_command(Reply::command_too_long());
            return true;
        }
        if line.len() < 2 || line[line.len() - 2] != b'\r' {
            self.state = State::Command;
            self.bad_command(Reply::bare_newline_in_command());
            return true;
        }
        if line[..line.len() - 2].contains(&b'\r') {
            self.state = State::Command;
            self.bad_command(Reply::bare_newline_in_command());
            return true;
        }
        let state = std::mem::replace(&mut self.state, State::Command);
        match state {
            State::AuthPlain => self.auth_plain_response(&line[..line.len() - 2]),
            State::AuthLoginUser => self.auth_login_user(&line[..line.len() - 2]),
            State::AuthLoginPassword { login } => {
                self.auth_login_password(login, &line[..line.len() - 2])
            }
            _ => self.command(&line),
        }
        true
    }

    fn command(&mut self, line: &[u8]) {
        match Request::parse(&mut line.iter()) {
            Ok(Request::Mail { .. })
            | Ok(Request::Rcpt { .. })
            | Err(ProtoError::UnsupportedParameter { .. })
                if self.unadvertised_parameter(line).is_some() =>
            {
                let (verb, name) = self.unadvertised_parameter(line).expect("checked");
                self.bad_command(Reply::parameter_not_supported(verb, &name));
            }
            Ok(request) => self.request(request),
            Err(ProtoError::UnknownCommand) => self.bad_command(Reply::unrecognized()),
            Err(ProtoError::InvalidSenderAddress) => self.bad_command(Reply::bad_sender_syntax()),
            Err(ProtoError::InvalidRecipientAddress) => {
                self.bad_command(Reply::bad_recipient_syntax())
            }
            Err(_) => self.bad_command(Reply::syntax_error()),
        }
    }

    fn request(&mut self, request: Request<std::borrow::Cow<'_, str>>) {
        match request {
            Request::Ehlo { host } => {
                self.helo = Some(host.to_string());
                self.drop_transaction();
                let ehlo = Reply::ehlo(&self.config.hostname, self.extensions());
                self.reply(ehlo);
            }
            Request::Helo { host } => {
                self.helo = Some(host.to_string());
                self.drop_transaction();
                self.reply(Reply::helo(&self.config.hostname));
            }
            Request::Lhlo { .. } => self.bad_command(Reply::unrecognized()),
            Request::StartTls => self.starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response.as_ref()),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size as u64, is_last),
            Request::Rset => {
                self.drop_transaction();
                self.junk_command(Reply::ok());
            }
            Request::Noop { .. } => self.junk_command(Reply::ok()),
            Request::Help { .. } => self.junk_command(Reply::help()),
            Request::Vrfy { .. } => self.junk_command(Reply::cannot_vrfy()),
            Request::Quit => self.close_with(Reply::bye()),
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.reply(Reply::not_implemented()),
        }
    }

    /// The first ESMTP parameter of a MAIL or RCPT line that EHLO did not advertise, with the
    /// command's name for the reply (RFC 5321 section 4.1.1.11: a server refuses those,
    /// rather than accept and ignore them; `REQUIRETLS` is advertised only under TLS).
    fn unadvertised_parameter(&self, line: &[u8]) -> Option<(&'static str, String)> {
        let verb = line.get(..4)?;
        let (verb, mut allowed): (&'static str, Vec<&str>) = if verb.eq_ignore_ascii_case(b"MAIL") {
            let mut allowed = vec!["SIZE", "BODY", "SMTPUTF8", "RET", "ENVID"];
            // AUTH= (RFC 4954 section 5) only where AUTH is offered.
            if self.config.role != Role::Relay {
                allowed.push("AUTH");
            }
            ("MAIL FROM", allowed)
        } else if verb.eq_ignore_ascii_case(b"RCPT") {
            ("RCPT TO", vec!["NOTIFY", "ORCPT"])
        } else {
            return None;
        };
        // REQUIRETLS (RFC 8689 section 4.1) only where EHLO offers it: under TLS.
        if verb == "MAIL FROM" && self.tls {
            allowed.push("REQUIRETLS");
        }
        envelope::parameter_names(line)
            .into_iter()
            .find(|name| !allowed.contains(&name.as_str()))
            .map(|name| (verb, name))
    }

    fn extensions(&self) -> Vec<String> {
        let mut ext = vec![
            "PIPELINING".to_string(),
            format!("SIZE {}", self.config.max_message_size),
        ];
        if !self.tls && self.config.starttls_available && self.config.role != Role::Submissions {
            ext.push("STARTTLS".into());
        }
        if self.config.role != Role::Relay && self.tls && self.auth.is_none() {
            ext.push("AUTH PLAIN LOGIN".into());
        }
        ext.extend(
            [
                "ENHANCEDSTATUSCODES",
                "8BITMIME",
                "SMTPUTF8",
                "CHUNKING",
                "DSN",
            ]
            .map(String::from),
        );
        // RFC 8689 section 2: offered only on a session that is itself under TLS, since the
        // message must never have crossed a hop in cleartext.
        if self.tls {
            ext.push("REQUIRETLS".into());
        }
        ext
    }

    fn starttls(&mut self) {
        if self.tls {
            self.reply(Reply::tls_already_active());
            return;
        }
        if !self.config.starttls_available || self.config.role == Role::Submissions {
            self.reply(Reply::not_implemented());
            return;
        }
        self.reply(Reply::ready_for_tls());
        // Whatever the client sent after STARTTLS in plaintext must never run.
        self.input.clear();
        self.events.push_back(Event::StartTls);
        self.state = State::Waiting(Waiting::Tls);
    }

    fn auth(&mut self, mechanism: u64, initial: &str) {
        if self.config.role == Role::Relay {
            self.reply(Reply::auth_on_relay_port());
            return;
        }
        if !self.tls {
            self.reply(Reply::encryption_required());
            return;
        }
        if self.auth.is_some() {
            self.reply(Reply::already_authenticated());
            return;
        }
        if self.tx.is_some() {
            self.bad_command(Reply::bad_sequence());
            return;
        }
        match mechanism {
            smtp_proto::AUTH_PLAIN if initial.is_empty() => {
                self.reply(Reply::auth_challenge(""));
                self.state = State::AuthPlain;
            }
            smtp_proto::AUTH_PLAIN => self.auth_plain_response(initial.as_bytes()),
            smtp_proto::AUTH_LOGIN if initial.is_empty() => {
                self.reply(Reply::auth_challenge("VXNlcm5hbWU6"));
                self.state = State::AuthLoginUser;
            }
            smtp_proto::AUTH_LOGIN => self.auth_login_user(initial.as_bytes()),
            _ => self.reply(Reply::auth_mechanism_unknown()),
        }
    }

    /// Decodes a SASL response line; `None` after replying (cancelled or bad base64).
    fn sasl_decode(&mut self, line: &[u8]) -> Option<Vec<u8>> {
        if line == b"*" {
            self.reply(Reply::auth_cancelled());
            return None;
        }
        if line == b"=" {
            return Some(Vec::new());
        }
        match base64::engine::general_purpose::STANDARD.decode(line) {
            Ok(bytes) => Some(bytes),
            Err(_) => {
                self.bad_command(Reply::auth_bad_base64());
                None
            }
        }
    }

    fn auth_plain_response(&mut self, line: &[u8]) {
        let Some(decoded) = self.sasl_decode(line) else {
            return;
        };
        // RFC 4616: [authzid] NUL authcid NUL passwd
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        if parts.len() != 3 {
            self.bad_command(Reply::syntax_error());
            return;
        }
        let (authzid, login, password) = (parts[0], parts[1], parts[2]);
        let (Ok(login), Ok(password)) = (std::str::from_utf8(login), std::str::from_utf8(password))
        else {
            self.auth_outcome_now(Mechanism::Plain);
            return;
        };
        // Acting as another identity is not offered: the authzid must be empty or the login.
        if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(login.as_bytes()) {
            self.auth_outcome_now(Mechanism::Plain);
            return;
        }
        self.ask_auth(Mechanism::Plain, login.to_string(), password.to_string());
    }

    fn auth_login_user(&mut self, line: &[u8]) {
        let Some(decoded) = self.sasl_decode(line) else {
            return;
        };
        let login = String::from_utf8_lossy(&decoded).into_owned();
        self.reply(Reply::auth_challenge("UGFzc3dvcmQ6"));
        self.state = State::AuthLoginPassword { login };
    }

    fn auth_login_password(&mut self, login: String, line: &[u8]) {
        let Some(decoded) = self.sasl_decode(line) else {
            return;
        };
        match String::from_utf8(decoded) {
            Ok(password) => self.ask_auth(Mechanism::Login, login, password),
            Err(_) => self.auth_outcome_now(Mechanism::Login),
        }
    }

    /// Credentials that cannot be valid still go through the driver, so failures are counted,
    /// delayed and logged the same way.
    fn auth_outcome_now(&mut self, mechanism: Mechanism) {
        self.ask_auth(mechanism, String::new(), String::new());
    }

    fn ask_auth(&mut self, mechanism: Mechanism, login: String, password: String) {
        self.events.push_back(Event::Authenticate {
            mechanism,
            login,
            password,
        });
        self.state = State::Waiting(Waiting::Auth);
    }

    fn needs_auth(&self) -> bool {
        self.config.role != Role::Relay && self.auth.is_none()
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<std::borrow::Cow<'_, str>>) {
        if self.helo.is_none() || self.tx.is_some() {
            self.bad_command(Reply::bad_sequence());
            return;
        }
        if self.needs_auth() {
            self.reply(Reply::auth_required());
            return;
        }
        if from.size as u64 > self.config.max_message_size {
            self.reply(Reply::message_too_big());
            return;
        }
        if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            // RFC 3030: BINARYMIME is an extension of its own, and it is not advertised.
            self.bad_command(Reply::parameter_not_supported(
                "MAIL FROM",
                "BODY=BINARYMIME",
            ));
            return;
        }
        if sender::has_control_characters(&from.address) {
            self.bad_command(Reply::bad_sender_syntax());
            return;
        }
        if !from.address.is_ascii() && from.flags & smtp_proto::MAIL_SMTPUTF8 == 0 {
            self.reply(Reply::smtputf8_required());
            return;
        }
        let sender = envelope::quote_local_part(&from.address.to_ascii_lowercase());
        if let Some(hosting) = &self.config.hosting {
            let domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            if !hosting.domains.iter().any(|d| d == domain) {
                let reply = Reply::hosting_domain_not_allowed(&hosting.account);
                self.reply(reply);
                return;
            }
        }
        let dsn_ret = if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
            Some("FULL".to_string())
        } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
            Some("HDRS".to_string())
        } else {
            None
        };
        let tx = Transaction {
            sender,
            body_8bit: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
            smtputf8: from.flags & smtp_proto::MAIL_SMTPUTF8 != 0,
            dsn_ret,
            dsn_envid: from.env_id.map(|e| e.to_string()),
            require_tls: from.flags & smtp_proto::MAIL_REQUIRETLS != 0,
            ..Transaction::default()
        };
        if self.auth.is_some() {
            // The senders were read at AUTH; an alias removed since must not work here, so
            // the driver re-reads them first if the directory changed (cheap when it did not).
            self.pending_mail = Some(tx);
            self.events.push_back(Event::CheckSenders);
            self.state = State::Waiting(Waiting::Senders);
            return;
        }
        self.tx = Some(tx);
        self.reply(Reply::mail_ok());
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<std::borrow::Cow<'_, str>>) {
        let max = self.config.max_recipients;
        let allow_literals = self.config.allow_address_literals;
        let relay_denied = self.config.role == Role::Relay && !self.config.relay_allowed;
        let Some(tx) = self.tx.as_mut() else {
            self.bad_command(Reply::bad_sequence());
            return;
        };
        if tx.bdat.is_some() {
            // RFC 3030: the envelope is closed once the first chunk arrived.
            self.bad_command(Reply::bad_sequence());
            return;
        }
        let address = envelope::quote_local_part(&to.address);
        let (reply, outcome) = if relay_denied {
            (Reply::relaying_denied(), "relay_denied")
        } else if !address.is_ascii() && !tx.smtputf8 {
            (Reply::smtputf8_required(), "needs_smtputf8")
        } else if !sender::is_routable_recipient(&address) {
            (Reply::bad_recipient_syntax(), "bad_syntax")
        } else if !allow_literals && envelope::has_address_literal(&address) {
            // An address literal makes the relay connect to any IP it names, internal ones too.
            (Reply::address_literal_refused(), "address_literal")
        } else if tx
            .recipients
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(&address))
        {
            // A repeated recipient is acknowledged but neither stored nor counted twice.
            (Reply::rcpt_ok(), "duplicate")
        } else if tx.recipients.len() >= max {
            (Reply::too_many_recipients(), "too_many")
        } else {
            let rcpt = RcptParams {
                address,
                notify: notify_keywords(to.flags),
                orcpt: to.orcpt.map(|o| o.to_string()),
            };
            self.pending_rcpt = Some(rcpt.clone());
            self.events.push_back(Event::HoldRecipient(rcpt));
            self.state = State::Waiting(Waiting::Hold);
            return;
        };
        self.events.push_back(Event::RecipientOutcome(outcome));
        self.reply(reply);
    }

    fn data(&mut self) {
        let Some(tx) = self.tx.as_ref() else {
            self.bad_command(Reply::bad_sequence());
            return;
        };
        if tx.bdat.is_some() {
            self.bad_command(Reply::bad_sequence());
            return;
        }
        if tx.recipients.is_empty() {
            self.reply(Reply::no_recipients());
            return;
        }
        self.reply(Reply::start_data());
        self.events.push_back(Event::MessageStart);
        self.state = State::Data(DataScanner::new(Framing::Dot, self.config.max_message_size));
    }

    fn bdat(&mut self, size: u64, last: bool) {
        // The chunk is read whatever happens, so the client and we stay in step (RFC 3030).
        let ok = self.tx.as_ref().is_some_and(|tx| !tx.recipients.is_empty());
        if ok {
            let tx = self.tx.as_mut().expect("checked");
            if tx.bdat.is_none() {
                tx.bdat = Some(DataScanner::new(
                    Framing::Chunked,
                    self.config.max_message_size,
                ));
                self.events.push_back(Event::MessageStart);
            }
        }
        self.state = State::Bdat {
            remaining: size,
            last,
        };
        if !ok {
            // Mark the chunk as one to discard by dropping any transaction.
            self.tx = None;
        }
    }

    fn step_data(&mut self) -> bool {
        if self.input.is_empty() {
            return false;
        }
        let State::Data(scanner) = &mut self.state else {
            return false;
        };
        let mut out = Vec::new();
        let (used, ended) = scanner.feed(&self.input, &mut out);
        self.input.drain(..used);
        self.take_data(out);
        if ended {
            let State::Data(scanner) = std::mem::replace(&mut self.state, State::Command) else {
                unreachable!("state checked above")
            };
            self.finish_message(scanner);
        }
        true
    }

    fn step_bdat(&mut self) -> bool {
        let State::Bdat { remaining, last } = &mut self.state else {
            return false;
        };
        if *remaining > 0 && self.input.is_empty() {
            return false;
        }
        let take = (*remaining).min(self.input.len() as u64) as usize;
        *remaining -= take as u64;
        let (done, last) = (*remaining == 0, *last);
        let chunk: Vec<u8> = self.input.drain(..take).collect();
        let mut out = Vec::new();
        match self.tx.as_mut().and_then(|tx| tx.bdat.as_mut()) {
            Some(scanner) => {
                scanner.feed(&chunk, &mut out);
            }
            None => {
                // No transaction: the chunk is read and dropped.
                if done {
                    self.state = State::Command;
                    self.bad_command(Reply::bad_sequence());
                }
                return true;
            }
        }
        self.take_data(out);
        if !done {
            return true;
        }
        self.state = State::Command;
        if !last {
            // The octets the client sent, not those kept: a chunk refused part-way (a NUL)
            // gets the same reply however its bytes were cut into reads.
            let received = self
                .tx
                .as_ref()
                .and_then(|t| t.bdat.as_ref())
                .map_or(0, |s| s.received());
            self.reply(Reply::chunk_ok(received));
            return true;
        }
        let mut scanner = self
            .tx
            .as_mut()
            .and_then(|t| t.bdat.take())
            .expect("bdat in progress");
        let mut tail = Vec::new();
        scanner.finish_chunked(&mut tail);
        self.take_data(tail);
        self.finish_message(scanner);
        true
    }

    /// Passes accepted data on and keeps the header section for the end-of-data checks.
    fn take_data(&mut self, out: Vec<u8>) {
        if out.is_empty() {
            return;
        }
        if let Some(tx) = self.tx.as_mut()
            && !tx.header_done
        {
            let room = headers::MAX_HEADER_SECTION.saturating_sub(tx.header_buf.len());
            // Only the buffer as a whole can start with the empty line; later chunks are
            // searched for CRLF CRLF across the boundary (the last 3 bytes before them).
            let searched_from = tx.header_buf.len().saturating_sub(3);
            let first_chunk = tx.header_buf.is_empty();
            tx.header_buf.extend_from_slice(&out[..out.len().min(room)]);
            let end = if first_chunk {
                headers::header_section_end(&tx.header_buf)
            } else {
                headers::blank_line_end(&tx.header_buf[searched_from..]).map(|e| e + searched_from)
            };
            if let Some(end) = end {
                tx.header_buf.truncate(end);
                tx.header_done = true;
            } else if out.len() > room {
                tx.header_too_large = true;
                tx.header_done = true;
            }
        }
        self.events.push_back(Event::MessageData(out));
    }

    fn finish_message(&mut self, scanner: DataScanner) {
        let tx = self
            .tx
            .take()
            .expect("a message is read inside a transaction");
        let recipients = tx.recipients.len();
        let refusal = match scanner.error() {
            Some(DataError::TooBig) => Some((Reply::message_too_big(), MessageRefusal::TooBig)),
            Some(DataError::BareNewline) => {
                Some((Reply::bare_newline_in_data(), MessageRefusal::Malformed))
            }
            Some(DataError::NulByte) => Some((Reply::nul_in_data(), MessageRefusal::Malformed)),
            Some(DataError::LineTooLong) => {
                Some((Reply::data_line_too_long(), MessageRefusal::Malformed))
            }
            None if tx.header_too_large => {
                Some((Reply::header_too_large(), MessageRefusal::Malformed))
            }
            None => None,
        };
        if let Some((reply, reason)) = refusal {
            self.refuse_message(reply, reason, recipients);
            return;
        }
        // A first line starting with white space would continue the last header field Postern
        // puts in front (RFC 5322 folding): trace or signature fields could be rewritten.
        if matches!(tx.header_buf.first(), Some(b' ' | b'\t')) {
            let reply = Reply::header_starts_folded();
            self.refuse_message(reply, MessageRefusal::Malformed, recipients);
            return;
        }
        let facts = headers::scan_headers(&tx.header_buf);
        if facts.received_fields > self.config.max_received_headers {
            let reply = Reply::too_many_hops();
            self.refuse_message(reply, MessageRefusal::TooManyHops, recipients);
            return;
        }
        if let Some(user) = &self.auth {
            if facts.from_fields == 0 {
                let reply = Reply::missing_from_header();
                self.refuse_message(reply, MessageRefusal::FromHeader, recipients);
                return;
            }
            if facts.from_fields > 1 || facts.from_malformed {
                let reply = Reply::malformed_from_header();
                self.refuse_message(reply, MessageRefusal::FromHeader, recipients);
                return;
            }
            if !facts
                .from
                .iter()
                .all(|a| sender::may_send_as(&user.senders, a))
            {
                let reply = Reply::sender_not_owned(&user.address);
                self.refuse_message(reply, MessageRefusal::SenderNotOwned, recipients);
                return;
            }
            if let Some((reply, reason)) = identity_refusal(&facts.identities, user) {
                self.refuse_message(reply, reason, recipients);
                return;
            }
        }
        self.events
            .push_back(Event::MessageComplete(CompletedMessage {
                sender: tx.sender,
                recipients: tx.recipients,
                body_8bit: tx.body_8bit,
                smtputf8: tx.smtputf8,
                dsn_ret: tx.dsn_ret,
                dsn_envid: tx.dsn_envid,
                require_tls: tx.require_tls,
                headers: facts,
                size: scanner.size(),
            }));
        self.state = State::Waiting(Waiting::Commit);
    }

    fn refuse_message(&mut self, reply: Reply, reason: MessageRefusal, recipients: usize) {
        self.events.push_back(Event::MessageAbort);
        self.events.push_back(Event::TransactionReset);
        self.events.push_back(Event::TransactionRefused {
            reply: reply.clone(),
            reason,
            recipients,
        });
        self.reply(reply);
    }
}

/// The refusal a message's `Sender:`, `Resent-From:` and `Resent-Sender:` fields earn, if
/// any: each must be one unambiguous mailbox (and `Sender:` appear once at most, RFC 5322
/// section 3.6) that `user` may send as, like `From:`. Every resent block is checked, not only
/// the newest: a field the user cannot vouch for is not signed for the user's domain.
fn identity_refusal(
    identities: &[IdentityField],
    user: &Authenticated,
) -> Option<(Reply, MessageRefusal)> {
    let senders = identities
        .iter()
        .filter(|f| f.header == IdentityHeader::Sender)
        .count();
    if senders > 1 {
        let reply = Reply::malformed_identity_header(IdentityHeader::Sender.name());
        return Some((reply, MessageRefusal::FromHeader));
    }
    if let Some(field) = identities.iter().find(|f| f.address.is_none()) {
        let reply = Reply::malformed_identity_header(field.header.name());
        return Some((reply, MessageRefusal::FromHeader));
    }
    let not_owned = identities
        .iter()
        .filter_map(|f| f.address.as_deref())
        .any(|a| !sender::may_send_as(&user.senders, a));
    not_owned.then(|| {
        (
            Reply::sender_not_owned(&user.address),
            MessageRefusal::SenderNotOwned,
        )
    })
}

fn notify_keywords(flags: u64) -> Option<String> {
    let mut words = Vec::new();
    if flags & smtp_proto::RCPT_NOTIFY_NEVER != 0 {
        words.push("NEVER");
    }
    if flags & smtp_proto::RCPT_NOTIFY_SUCCESS != 0 {
        words.push("SUCCESS");
    }
    if flags & smtp_proto::RCPT_NOTIFY_FAILURE != 0 {
        words.push("FAILURE");
    }
    if flags & smtp_proto::RCPT_NOTIFY_DELAY != 0 {
        words.push("DELAY");
    }
    (!words.is_empty()).then(|| words.join(","))
}

#[cfg(test)]
mod tests;
