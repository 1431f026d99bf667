//! `postern drain [--handoff HOST:PORT] [--timeout DUR]`: tells the running `postern serve`
//! of the config to drain (see `server/drain.rs`) and prints its progress, once a second,
//! until it is over and the server exits.
//!
//! Exit status: 0 when the spool is empty at the end (delivered or handed off), 75
//! ([`EXIT_MAIL_LEFT`], sysexits' `EX_TEMPFAIL`) when mail is left in the spool (no hand-off
//! peer, the peer refused or was unreachable, the timeout), with the count on the last line;
//! 69 when no server runs for the config, 1 when the server refused the request (a bad
//! `--handoff`, no `[handoff] secret_file`), 2 for a bad argument. Nothing is changed
//! before the arguments are checked. A second `drain` while one runs follows the first
//! (its own arguments are ignored).

use super::queue::{ControlConnection, ControlError};
use crate::config::{Config, parse_duration};
use crate::control::{DrainPhase, Reply, Request};
use std::io::Write;
use std::time::Duration;

/// Mail was left in the spool (sysexits `EX_TEMPFAIL`).
pub(super) const EXIT_MAIL_LEFT: u8 = 75;

/// `postern drain ...`
#[derive(Debug, clap::Args)]
pub(super) struct DrainArgs {
    /// Hand the mail left after the timeout to this peer's `[listen] handoff` (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_peer)]
    handoff: Option<String>,
    /// How long deliveries may run first [default: server.drain_timeout]: 30s, 5m, ...
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
}

fn parse_peer(text: &str) -> Result<String, String> {
    if crate::config::handoff::is_host_port(text) {
        Ok(text.to_string())
    } else {
        Err("must be HOST:PORT".to_string())
    }
}

/// Runs the drain; returns the exit status.
pub(super) fn run(
    args: DrainArgs,
    config: &Config,
    out: &mut dyn Write,
) -> Result<u8, ControlError> {
    let timeout = args.timeout.unwrap_or(config.server.drain_timeout);
    let request = Request::Drain {
        handoff: args.handoff,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let mut connection = ControlConnection::send(config, &request)?;
    let failed = |e: std::io::Error| ControlError::Failed(e.to_string());
    loop {
        match connection.next()? {
            Reply::Progress {
                phase,
                queued,
                sessions,
                handed_off,
            } => {
                let phase = match phase {
                    DrainPhase::Delivering => "delivering",
                    DrainPhase::HandingOff => "handing off",
                    DrainPhase::Done => "done",
                };
                writeln!(out, "draining ({phase}): {queued} queued, {sessions} sessions, {handed_off} handed off")
                    .and_then(|()| out.flush())
                    .map_err(failed)?;
            }
            Reply::Drained {
                left,
                handed_off,
                reason,
            } => {
                if left == 0 {
                    writeln!(out, "drained: spool empty, {handed_off} handed off")
                        .map_err(failed)?;
                    return Ok(super::EXIT_OK);
                }
                let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
                writeln!(
                    out,
                    "drained: {left} messages left in the spool, {handed_off} handed off{why}"
                )
                .map_err(failed)?;
                return Ok(EXIT_MAIL_LEFT);
            }
            other => return Err(ControlError::Failed(format!("unexpected answer {other:?}"))),
        }
    }
}
