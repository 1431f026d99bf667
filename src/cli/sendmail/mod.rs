//! `postern sendmail`: a sendmail(8)-compatible entry point, for PHP's `sendmail_path` and the
//! tools that call `/usr/sbin/sendmail`.
//!
//! ```text
//! postern [--config PATH] sendmail [-t] [-i] [-oi] [-f SENDER] [-F NAME] [--config PATH] [RECIPIENT...]
//! ```
//!
//! `--config PATH` (or `--config=PATH`) may also come after `sendmail`, among its options
//! (`sendmail_path = "postern sendmail -t -i --config /etc/postern/postern.toml"`); there it
//! wins over the one before `sendmail` and over `POSTERN_CONFIG`.
//!
//! It reads one message on standard input and submits it over plain SMTP (EHLO, MAIL, RCPT...,
//! DATA) to the relay listener of the config (`listen.relay`; an unspecified address such as
//! `0.0.0.0` means this machine's loopback). It is the client side of the port-25 path: the
//! relay decides by the client's network which hosting account sends, and counts the
//! recipients against that account's daily limit.
//!
//! # Options
//! - `-t`: also take recipients from the `To:`, `Cc:` and `Bcc:` fields (unfolded, full
//!   address-list syntax: display names, quoted strings, comments, groups). If the message has
//!   `Resent-To:`/`Resent-Cc:`/`Resent-Bcc:` fields, those are used instead (RFC 5322 section
//!   3.6.6). Recipients named as arguments are added to these (as Postfix does).
//! - `-i`, `-oi`: a line with a single `.` does not end the input (without it, such a line
//!   ends the message, as in sendmail).
//! - `-f SENDER` (also `-fSENDER`, `-r`): the envelope sender; `-f '<>'` is the null sender.
//!   Default: the first address of the `From:` field, else `$USER@hostname`.
//! - `-F NAME`: the display name of the `From:` field that is added when the message has none.
//! - Accepted and ignored: `-v`, `-m`, `-n`, `-bm`, `-o` options other than `-oi` (`-odi`,
//!   `-oem`, ...), `-O`, `-B`, `-N`, `-R`, `-V`. Anything else is a usage error.
//!
//! # What is done to the message
//! Line ends are made CRLF (a bare LF or a bare CR ends a line, as written by PHP on Unix),
//! `Bcc:` (and `Resent-Bcc:`) fields are removed, a `From:` field is added if there is none,
//! and lines starting with `.` are dot-stuffed on the wire. Nothing else is changed: the relay
//! adds `Received:`, `Message-ID:` and `Date:`.
//!
//! # Exit status (sysexits.h)
//! | status | when |
//! |---|---|
//! | 0 `EX_OK` | the relay accepted the message (`250` after the data) |
//! | 64 `EX_USAGE` | unknown option, missing option value, no recipients |
//! | 65 `EX_DATAERR` | a `To:`/`Cc:`/`Bcc:` address that is not an address |
//! | 69 `EX_UNAVAILABLE` | a 5xx reply (e.g. sender domain not allowed), or a message over `limits.max_message_size` |
//! | 74 `EX_IOERR` | standard input cannot be read |
//! | 75 `EX_TEMPFAIL` | a 4xx reply (e.g. the daily limit's `450`), or the relay cannot be reached or drops the connection: try again later |
//! | 76 `EX_PROTOCOL` | a reply that is not SMTP |
//! | 78 `EX_CONFIG` | the config cannot be loaded or has no relay listener |
//!
//! Delivery is all or nothing: at the first refused recipient the transaction is abandoned
//! (QUIT, which releases what the relay held), so that the caller may retry the whole message
//! without sending it twice to the recipients before the refused one. On failure the server's
//! reply is printed on stderr, one line per reply line:
//! `postern sendmail: RCPT TO:<bob@example.net>: 450 4.7.1 Daily sending limit reached ...`.
//!
//! Blocking `std::net` on purpose: one message, one connection, no runtime to start.
//!
//! # Layout
//! `options.rs` reads the command line, `message.rs` turns standard input into an envelope and
//! CRLF data (with `address.rs` for address lists), `host.rs` names this machine (EHLO, the
//! default sender), and `submit.rs` speaks SMTP to the relay over the shared wire code in
//! `crate::smtp` (reply parsing, command lines, dot-stuffing).

mod address;
mod host;
mod message;
mod options;
mod submit;
#[cfg(test)]
mod tests;

use crate::config::Config;
use crate::smtp::Response;
use std::io::{Read, Write};
use std::path::Path;

use host::default_sender;
use options::{Options, parse_options};

/// Bad usage.
const EX_USAGE: u8 = 64;
/// Bad input data.
const EX_DATAERR: u8 = 65;
/// Permanent refusal.
const EX_UNAVAILABLE: u8 = 69;
/// Local I/O error.
const EX_IOERR: u8 = 74;
/// Temporary failure: retry later.
const EX_TEMPFAIL: u8 = 75;
/// Remote protocol error.
const EX_PROTOCOL: u8 = 76;
/// Configuration error.
const EX_CONFIG: u8 = 78;

/// The usage line printed with usage errors.
const USAGE: &str =
    "usage: postern sendmail [-t] [-i] [-oi] [-f SENDER] [-F NAME] [--config PATH] [RECIPIENT...]";

/// `postern sendmail ...`: everything after `sendmail` is parsed here, sendmail-style (bundled
/// flags, `-fSENDER` and `-f SENDER`, `-oi`), not by clap.
#[derive(Debug, clap::Args)]
pub(super) struct SendmailArgs {
    /// Options and recipients: [-t] [-i] [-oi] [-f SENDER] [-F NAME] [RECIPIENT...]
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<String>,
}

/// Why the submission failed; each kind has its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// 64
    Usage(String),
    /// 65
    Data(String),
    /// 69, without a server reply.
    Unavailable(String),
    /// 74
    Input(String),
    /// 75: cannot connect, connection lost, timeout.
    Network(String),
    /// 76
    Protocol(String),
    /// 78
    Config(String),
    /// A refusal by the server: 4xx gives 75, 5xx 69, anything else 76.
    Refused {
        /// What was refused, e.g. `RCPT TO:<a@example.org>`.
        stage: String,
        /// The reply.
        reply: Response,
    },
}

impl Failure {
    fn status(&self) -> u8 {
        match self {
            Self::Usage(_) => EX_USAGE,
            Self::Data(_) => EX_DATAERR,
            Self::Unavailable(_) => EX_UNAVAILABLE,
            Self::Input(_) => EX_IOERR,
            Self::Network(_) => EX_TEMPFAIL,
            Self::Protocol(_) => EX_PROTOCOL,
            Self::Config(_) => EX_CONFIG,
            Self::Refused { reply, .. } => match reply.code / 100 {
                4 => EX_TEMPFAIL,
                5 => EX_UNAVAILABLE,
                _ => EX_PROTOCOL,
            },
        }
    }

    /// Writes the failure to stderr: one line, or one line per reply line.
    fn report(&self, err: &mut dyn Write) {
        let _ = match self {
            Self::Usage(m) => writeln!(err, "postern sendmail: {m}\n{USAGE}"),
            Self::Data(m)
            | Self::Unavailable(m)
            | Self::Input(m)
            | Self::Network(m)
            | Self::Protocol(m)
            | Self::Config(m) => writeln!(err, "postern sendmail: {m}"),
            Self::Refused { stage, reply } => reply
                .lines_as_sent()
                .try_for_each(|line| writeln!(err, "postern sendmail: {stage}: {line}")),
        };
    }
}

/// Runs `postern sendmail`: parses the options, loads the config at `config_path`, reads the
/// message from `input` and submits it. Returns a sysexits status; failures go to `err`.
pub(super) fn main(
    args: SendmailArgs,
    config_path: &Path,
    input: &mut dyn Read,
    err: &mut dyn Write,
) -> u8 {
    let result = parse_options(&args.args).and_then(|options| {
        let config_path = options.config.as_deref().unwrap_or(config_path);
        let config = Config::load(config_path).map_err(|e| Failure::Config(e.to_string()))?;
        run(&options, &config, input, &default_sender(&config))
    });
    match result {
        Ok(()) => 0,
        Err(failure) => {
            failure.report(err);
            failure.status()
        }
    }
}

/// Reads, prepares and submits one message.
fn run(
    options: &Options,
    config: &Config,
    input: &mut dyn Read,
    default_sender: &str,
) -> Result<(), Failure> {
    if !options.extract && options.recipients.is_empty() {
        return Err(Failure::Usage("no recipients given".to_string()));
    }
    let server = submit::relay_server(config)?;
    let max = config.limits.max_message_size;
    let mut raw = Vec::new();
    input
        .take(max.saturating_add(1))
        .read_to_end(&mut raw)
        .map_err(|e| Failure::Input(format!("cannot read the message from standard input: {e}")))?;
    if u64::try_from(raw.len()).unwrap_or(u64::MAX) > max {
        return Err(Failure::Unavailable(format!(
            "the message is larger than the relay's limit of {max} bytes"
        )));
    }
    let message = message::prepare(&raw, options, default_sender)?;
    submit::submit(server, &host::helo_name(config), &message)
}
