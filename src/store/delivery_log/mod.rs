//! The delivery log's storage: one record per recipient per delivery attempt, kept for
//! `[delivery_log] retention` (30 days by default), written by `postern serve`'s log writer
//! ([`crate::delivery::log`]) and read by `postern log`.
//!
//! # The record
//! Each attempt of each recipient adds one row, never changed afterwards:
//! - `time_ms`: when the attempt was recorded (Unix milliseconds);
//! - `replica`: the `postern serve` that made the attempt (`[server] replica`, else the
//!   machine's host name; see [`crate::config::Config::replica_name`]), so that a fleet's
//!   shared log says which machine delivered; empty in rows written before the column existed;
//! - `queue_id`, `sender` (empty for the null sender), `recipient`, `attempt` (1 for the
//!   first attempt of the message);
//! - `mx` and `ip`: the host that answered, or the last one tried; absent when no host was
//!   reached (DNS failure, no route);
//! - `tls_mode` (`plaintext`, `opportunistic`, `dane`, `mta-sts`) with `tls_version` and
//!   `tls_cipher`; absent without a session that got a transaction answer;
//! - `reply`: the remote server's reply, or the local reason (the same one-line diagnostic as
//!   the spool and the `info` log line), and `dsn`, its RFC 3463 status (`2.0.0`, `4.4.1`,
//!   `5.1.1`, ...);
//! - `state`: `delivered`, `deferred` (will be retried) or `bounced` (failed for good,
//!   expiry included).
//!
//! Lookups by address go through `sender_key`/`recipient_key` (the address lower-cased), each
//! indexed with the time, lookups by queue id through `(queue_id, time_ms)`; purges go through
//! the index on `time_ms`. Rows come back oldest first, rows of the same millisecond in the
//! order they were written.
//!
//! # Where it lives: with the directory
//! - `[store] backend = "embedded"`: a SQLite file of its own on this machine ([`sqlite`],
//!   `delivery-log.db` beside the store unless `[delivery_log] path` says otherwise).
//! - `[store] backend = "postgres"`: the `delivery_log` table of the shared database
//!   (`store/postgres/delivery_log.rs`, schema step 2), written by every replica, so that
//!   `postern log` on any machine shows the whole fleet's deliveries.
//!
//! `store::configured::open_delivery_log` opens the configured one; callers hold a
//! `Box<dyn LogStore>` and never name a backend.
//!
//! # Why not the spool
//! The spool holds what is still to be done and forgets a message once every recipient is
//! finished; its journal is compacted. The log is history: it must outlive the message, be
//! searchable by address and time, and it may be lost without losing mail: a backend's
//! failure costs log rows, never a delivery (the writer's policy, in `delivery/log.rs`).
//!
//! # Retention
//! [`LogStore::purge_before`] deletes in batches of at most `batch` rows, one short
//! transaction each, so readers and inserts are never blocked for long. On PostgreSQL one
//! replica purges at a time: the purge holds `pg_try_advisory_lock(PURGE_LOCK)` and a replica
//! that does not get it skips ([`Purge::Skipped`]): the holder is deleting the same rows.

pub mod sqlite;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use sqlite::SqliteLog;

use super::StoreError;

/// Most rows one purge transaction deletes.
pub const PURGE_BATCH: usize = 5000;

/// A delivery log that cannot be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The SQLite file: its path and what went wrong.
    #[error("delivery log {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The PostgreSQL directory (a [`StoreError::Schema`] means `postern migrate`).
    #[error("delivery log: {0}")]
    Store(#[from] StoreError),
}

/// What an attempt meant for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogState {
    /// The server took the message.
    Delivered,
    /// A temporary failure; the message will be retried.
    Deferred,
    /// A permanent failure (or expiry); the recipient is finished.
    Bounced,
}

impl LogState {
    /// The stored and printed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Deferred => "deferred",
            Self::Bounced => "bounced",
        }
    }

    /// The state of a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "delivered" => Some(Self::Delivered),
            "deferred" => Some(Self::Deferred),
            "bounced" => Some(Self::Bounced),
            _ => None,
        }
    }
}

/// One row of the log (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Unix milliseconds.
    pub time_ms: u64,
    /// The replica that made the attempt; empty in rows from before the column.
    pub replica: String,
    /// Spool queue id.
    pub queue_id: String,
    /// Envelope sender; empty for the null sender.
    pub sender: String,
    /// The recipient address.
    pub recipient: String,
    /// MX (or relay) host name.
    pub mx: Option<String>,
    /// Address connected to.
    pub ip: Option<String>,
    /// `plaintext`, `opportunistic`, `dane`, `mta-sts`.
    pub tls_mode: Option<String>,
    /// e.g. `TLSv1.3`.
    pub tls_version: Option<String>,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub tls_cipher: Option<String>,
    /// Remote reply or local reason, one line.
    pub reply: String,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub dsn: String,
    /// Delivered, deferred or bounced.
    pub state: LogState,
    /// Attempt number of the message, from 1.
    pub attempt: u32,
}

/// What `postern log` asks for; every filter is optional and they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Rows whose sender or recipient is this address (compared lower-cased).
    pub address: Option<String>,
    /// Rows of this queue id (exact).
    pub queue_id: Option<String>,
    /// Rows at or after this time (Unix milliseconds).
    pub since_ms: Option<u64>,
    /// Rows in this state.
    pub state: Option<LogState>,
}

/// What a purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purge {
    /// This many rows were deleted.
    Deleted(usize),
    /// Another replica holds the purge lock and is purging: nothing done here.
    Skipped,
}

/// A delivery log backend. Synchronous: its one writer is a thread of its own and
/// `postern log` does one query and exits.
pub trait LogStore: Send {
    /// Appends records, all or none (one transaction, one statement on PostgreSQL).
    ///
    /// # Errors
    /// The backend failed; nothing was written.
    fn insert(&mut self, records: &[LogRecord]) -> Result<(), LogError>;

    /// The rows matching `query`, oldest first; rows of one millisecond in write order.
    ///
    /// # Errors
    /// The backend failed or a row is malformed.
    fn query(&self, query: &LogQuery) -> Result<Vec<LogRecord>, LogError>;

    /// Deletes the rows older than `cutoff_ms`, at most `batch` per transaction.
    ///
    /// # Errors
    /// The backend failed; the batches before it stay deleted.
    fn purge_before(&mut self, cutoff_ms: u64, batch: usize) -> Result<Purge, LogError>;
}

/// A `u64` as SQL's signed 64-bit integer (saturating).
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
