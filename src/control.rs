//! The control channel between the `postern` admin commands and the running `postern serve`
//! of the same config: what is said on it (this module) and where it is.
//!
//! # Why a Unix socket in the spool directory
//! The spool belongs to one `serve` (it holds the spool's `flock`), and only that process may
//! change it: a second process writing the journal would break the group commit's ordering.
//! So `postern queue` and `postern drain` ask the owner instead of opening the spool. The
//! socket lives at `SPOOL/control.sock`, which ties it to the config (the same config names
//! the same spool) without a new key, and inherits the spool's protection: the directory is
//! 0700 and the socket 0600, and the server also checks the peer's uid (`SO_PEERCRED`: the
//! spool's owner or root), so no other local user can list or delete mail. A TCP port would
//! need its own authentication and would be reachable from the network.
//!
//! # Protocol
//! One JSON object per line (`\n`-terminated, at most [`MAX_LINE`] bytes), easy to read with
//! `socat` when debugging and framed without a parser of our own. The client sends one
//! [`Request`] and reads [`Reply`] lines until the connection closes: one for the queue
//! commands, a [`Reply::Progress`] every second and a final [`Reply::Drained`] for a drain.
//! An unreadable request gets [`Reply::Error`] and the connection is closed.
//!
//! Not here: the server side (`server/control.rs`) and the commands (`cli/queue.rs`).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Longest request or reply line. A queue listing is one line, so it is large; requests are
/// a few dozen bytes.
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// The socket's file name in the spool directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Where the `serve` using `spool_dir` listens for control requests.
pub fn socket_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(SOCKET_NAME)
}

/// What a command asks of the running server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Every queued message (`postern queue list`).
    List,
    /// Make one message (or all of them) due now (`postern queue flush [ID]`).
    Flush {
        /// The queue id; `None` for every message.
        id: Option<String>,
    },
    /// Remove a message (`postern queue delete ID`), with a failure DSN to its sender unless
    /// `bounce` is false.
    Delete {
        /// The queue id.
        id: String,
        /// Send the sender a DSN for the recipients still pending.
        bounce: bool,
    },
    /// Drain the server and stop it (`postern drain`).
    Drain {
        /// Where to hand the mail left over to (a peer's `[listen] handoff`, `HOST:PORT`).
        handoff: Option<String>,
        /// How long deliveries may run before the rest is handed off or left (milliseconds).
        timeout_ms: u64,
    },
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRecipient {
    /// The forward-path.
    pub address: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made for it.
    pub attempts: u32,
    /// The last reply or reason, if any.
    pub last_reply: Option<String>,
    /// DSN `NOTIFY=` (RFC 3461), as given at RCPT.
    pub notify: Option<String>,
    /// DSN `ORCPT=`, decoded.
    pub orcpt: Option<String>,
}

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Queue id.
    pub id: String,
    /// Reverse-path (empty for a DSN).
    pub sender: String,
    /// When it was accepted (Unix ms; kept across a hand-off).
    pub received_at_ms: u64,
    /// Bytes as it will be sent.
    pub size: u64,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms); `None` while one is running.
    pub next_attempt_ms: Option<u64>,
    /// DSN `RET=`.
    pub ret: Option<String>,
    /// DSN `ENVID=`, decoded.
    pub envid: Option<String>,
    /// Its recipients.
    pub recipients: Vec<QueuedRecipient>,
}

/// Where a drain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainPhase {
    /// Listeners closed; sessions finishing, deliveries running.
    Delivering,
    /// Handing the rest to the peer.
    HandingOff,
    /// Over: the server exits.
    Done,
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// The queue, oldest first.
    Queue(Vec<QueuedMessage>),
    /// Messages brought forward by a flush.
    Flushed {
        /// How many (messages being delivered right now are not counted).
        count: usize,
    },
    /// A message was removed.
    Deleted {
        /// Whether a DSN went to its sender.
        bounced: bool,
    },
    /// A drain is under way.
    Progress {
        /// Its phase.
        phase: DrainPhase,
        /// Messages still in the spool.
        queued: usize,
        /// SMTP sessions still open.
        sessions: usize,
        /// Messages handed to the peer so far.
        handed_off: usize,
    },
    /// The drain is over and the server exits.
    Drained {
        /// Messages left in the spool.
        left: usize,
        /// Messages handed to the peer.
        handed_off: usize,
        /// Why mail was left, if it was (the peer's refusal, the timeout).
        reason: Option<String>,
    },
    /// The request failed; nothing was changed.
    Error {
        /// One line.
        message: String,
    },
}

/// The line for `value`, newline included.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).expect("control messages always serialise");
    line.push(b'\n');
    line
}

/// Reads a line written by [`encode`].
///
/// # Errors
/// It is not a message of type `T`.
pub fn decode<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(line.strip_suffix(b"\n").unwrap_or(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_and_unknown_ones_are_refused() {
        for request in [
            Request::List,
            Request::Flush { id: None },
            Request::Flush {
                id: Some("ABC".into()),
            },
            Request::Delete {
                id: "ABC".into(),
                bounce: true,
            },
            Request::Drain {
                handoff: Some("10.0.0.2:2526".into()),
                timeout_ms: 5000,
            },
        ] {
            let line = encode(&request);
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(decode::<Request>(&line).unwrap(), request);
        }
        assert_eq!(
            decode::<Request>(b"{\"op\":\"list\"}\n").unwrap(),
            Request::List
        );
        for bad in [
            &b"{\"op\":\"format_disk\"}"[..],
            b"{\"op\":\"delete\",\"id\":\"A\"}",
            b"{\"op\":\"flush\",\"id\":null,\"extra\":1}",
            b"not json",
            b"",
        ] {
            assert!(decode::<Request>(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replies_read_back() {
        let reply = Reply::Drained {
            left: 3,
            handed_off: 0,
            reason: Some("timeout".into()),
        };
        assert_eq!(decode::<Reply>(&encode(&reply)).unwrap(), reply);
        let queue = Reply::Queue(vec![QueuedMessage {
            id: "A".into(),
            sender: "a\nb@x".into(),
            received_at_ms: 1,
            size: 2,
            attempts: 0,
            next_attempt_ms: None,
            ret: None,
            envid: Some("E 1".into()),
            recipients: vec![],
        }]);
        let line = encode(&queue);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "escaped");
        assert_eq!(decode::<Reply>(&line).unwrap(), queue);
    }
}
