//! `postern queue list [--json] | flush [ID] | delete ID [--no-bounce]`: the running server's
//! queue, as `postqueue -p`, `postqueue -f` and `postsuper -d` show and change Postfix's.
//!
//! The spool belongs to the running `postern serve` (it holds the spool's lock), so these
//! commands ask it over the control socket in its spool directory ([`crate::control`]); the
//! same `--config` finds the same socket. With no server running for the config they print
//! one line and exit [`EXIT_UNAVAILABLE`] (69, sysexits' `EX_UNAVAILABLE`): the queue cannot
//! be read or changed then. A refused request (an unknown id) exits 1 as other commands do.
//!
//! `list` prints one line per recipient: the message's id, age, size and sender on its first
//! line, then each recipient with its state, attempts and next attempt (`now` when due or being
//! delivered), and its last reply.

use super::write_json;
use crate::config::Config;
use crate::control::{self, QueuedMessage, Reply, Request};
use crate::unix_time::now_ms;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

/// No server runs for this config (sysexits `EX_UNAVAILABLE`).
pub(super) const EXIT_UNAVAILABLE: u8 = 69;

/// `postern queue ...`
#[derive(Debug, clap::Subcommand)]
pub(super) enum QueueCommand {
    /// List queued messages with their recipients' states.
    List {
        /// Print a JSON array of messages.
        #[arg(long)]
        json: bool,
    },
    /// Retry now: one message, or every message.
    Flush {
        /// Queue id.
        id: Option<String>,
    },
    /// Remove a message; its sender gets a DSN for the recipients still pending.
    Delete {
        /// Queue id.
        id: String,
        /// Remove it without telling the sender.
        #[arg(long)]
        no_bounce: bool,
    },
}

/// Why a control request could not be made.
#[derive(Debug, thiserror::Error)]
pub(super) enum ControlError {
    /// No server listens on the socket.
    #[error("no postern serve is running for this config (no control socket answers at {0})")]
    NotRunning(String),
    /// The server answered with an error, or not at all.
    #[error("{0}")]
    Failed(String),
}

impl ControlError {
    /// The exit status for it.
    pub(super) fn exit_code(&self) -> u8 {
        match self {
            ControlError::NotRunning(_) => EXIT_UNAVAILABLE,
            ControlError::Failed(_) => super::EXIT_FAILURE,
        }
    }
}

/// A request sent; its replies are read one line at a time.
pub(super) struct ControlConnection {
    reader: BufReader<UnixStream>,
}

impl ControlConnection {
    /// Connects to the server of `config` and sends `request`.
    ///
    /// # Errors
    /// [`ControlError::NotRunning`] when nothing listens on the socket.
    pub(super) fn send(config: &Config, request: &Request) -> Result<Self, ControlError> {
        let path = control::socket_path(&config.spool.path);
        let shown = crate::printable::escape_controls(&path.display().to_string()).into_owned();
        let mut stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ControlError::NotRunning(shown.clone())
            }
            _ => ControlError::Failed(format!("control socket {shown}: {e}")),
        })?;
        stream
            .write_all(&control::encode(request))
            .map_err(|e| ControlError::Failed(format!("control socket {shown}: {e}")))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// The next reply; an error reply becomes [`ControlError::Failed`].
    ///
    /// # Errors
    /// The server closed the connection, sent something unreadable or refused the request.
    pub(super) fn next(&mut self) -> Result<Reply, ControlError> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(control::MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| ControlError::Failed(format!("control socket: {e}")))?;
        if read == 0 {
            return Err(ControlError::Failed(
                "the server closed the control connection without an answer".into(),
            ));
        }
        match control::decode::<Reply>(&line) {
            Ok(Reply::Error { message }) => Err(ControlError::Failed(message)),
            Ok(reply) => Ok(reply),
            Err(e) => Err(ControlError::Failed(format!("unreadable answer: {e}"))),
        }
    }
}

/// Runs a queue command; returns the exit status.
pub(super) fn run(
    cmd: QueueCommand,
    config: &Config,
    out: &mut dyn Write,
) -> Result<u8, ControlError> {
    let request = match &cmd {
        QueueCommand::List { .. } => Request::List,
        QueueCommand::Flush { id } => Request::Flush { id: id.clone() },
        QueueCommand::Delete { id, no_bounce } => Request::Delete {
            id: id.clone(),
            bounce: !no_bounce,
        },
    };
    let reply = ControlConnection::send(config, &request)?.next()?;
    let written = match (cmd, reply) {
        (QueueCommand::List { json }, Reply::Queue(messages)) => print_list(out, json, &messages),
        (QueueCommand::Flush { id }, Reply::Flushed { count }) => match id {
            Some(id) if count == 0 => {
                writeln!(out, "{id}: being delivered already").map_err(Into::into)
            }
            Some(id) => writeln!(out, "{id}: due now").map_err(Into::into),
            None => writeln!(out, "{count} messages due now").map_err(Into::into),
        },
        (QueueCommand::Delete { id, .. }, Reply::Deleted { bounced }) => {
            let how = if bounced { "sender notified" } else { "no DSN" };
            writeln!(out, "{id}: deleted ({how})").map_err(Into::into)
        }
        (_, other) => return Err(ControlError::Failed(format!("unexpected answer {other:?}"))),
    };
    written.map_err(|e: anyhow::Error| ControlError::Failed(e.to_string()))?;
    Ok(super::EXIT_OK)
}

/// One element of `queue list --json`: the control reply with the age added.
#[derive(serde::Serialize)]
struct MessageJson<'a> {
    #[serde(flatten)]
    message: &'a QueuedMessage,
    age_seconds: u64,
}

fn print_list(out: &mut dyn Write, json: bool, messages: &[QueuedMessage]) -> anyhow::Result<()> {
    let now = now_ms();
    if json {
        let items: Vec<MessageJson<'_>> = messages
            .iter()
            .map(|message| MessageJson {
                message,
                age_seconds: now.saturating_sub(message.received_at_ms) / 1000,
            })
            .collect();
        return write_json(out, &items);
    }
    let mut rows = Vec::new();
    for m in messages {
        let next = match m.next_attempt_ms {
            Some(at) if at > now => format!("in {}", age(at - now)),
            _ => "now".to_string(),
        };
        for (i, r) in m.recipients.iter().enumerate() {
            let head = if i == 0 {
                vec![
                    m.id.clone(),
                    age(now.saturating_sub(m.received_at_ms)),
                    m.size.to_string(),
                    format!("<{}>", m.sender),
                ]
            } else {
                vec![String::new(); 4]
            };
            let next = if r.state == "pending" {
                next.clone()
            } else {
                "-".into()
            };
            let mut row = head;
            row.extend([
                r.address.clone(),
                r.state.clone(),
                r.attempts.to_string(),
                next,
                r.last_reply.clone().unwrap_or_default(),
            ]);
            rows.push(row);
        }
    }
    super::write_table(out, &rows)?;
    writeln!(out, "{} messages", messages.len())?;
    Ok(())
}

/// `3d4h`, `2h5m`, `4m10s`, `12s`: the two largest units.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_show_two_units() {
        assert_eq!(age(999), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(60_000), "1m0s");
        assert_eq!(age(3_599_000), "59m59s");
        assert_eq!(age(3_600_000), "1h0m");
        assert_eq!(age(86_400_000 + 3_600_000), "1d1h");
    }
}
