//! The delivery log: one record per recipient per delivery attempt, kept for
//! `[delivery_log] retention` (30 days by default) and read by `postern log`.
//!
//! # The record
//! Each attempt of each recipient adds one row, never changed afterwards:
//! - `time_ms`: when the attempt was recorded (Unix milliseconds);
//! - `queue_id`, `sender` (empty for the null sender), `recipient`, `attempt` (1 for the
//!   first attempt of the message);
//! - `mx` and `ip`: the host that answered, or the last one tried; absent when no host was
//!   reached (DNS failure, no route);
//! - `tls_mode` (`plaintext`, `opportunistic`, later `dane` and `mta-sts`) with `tls_version`
//!   and `tls_cipher`; absent without a session that got a transaction answer;
//! - `reply`: the remote server's reply, or the local reason (the same one-line diagnostic as
//!   the spool and the `info` log line), and `dsn`, its RFC 3463 status (`2.0.0`, `4.4.1`,
//!   `5.1.1`, ...);
//! - `state`: `delivered`, `deferred` (will be retried) or `bounced` (failed for good,
//!   expiry included).
//!
//! Lookups by address go through `sender_key`/`recipient_key` (the address lower-cased), each
//! indexed with the time; purges go through the index on `time_ms`.
//!
//! # Why not the spool
//! The spool holds what is still to be done and forgets a message once every recipient is
//! finished; its journal is compacted. The log is history: it must outlive the message, be
//! searchable by address and time, and it may be lost without losing mail. So it lives in a
//! SQLite file of its own (`delivery-log.db` beside the store unless `[delivery_log] path`
//! says otherwise; `PRAGMA application_id` "PDLG"), WAL mode with `synchronous = NORMAL`: a
//! power cut may forget the last few rows, never mail.
//!
//! # Writes never hold up delivery
//! The delivery tasks hand each attempt's records to a [`LogWriter`] over a bounded channel
//! without waiting ([`LogWriter::submit`]); a thread of its own writes them, one transaction
//! per batch. A full channel, a failed insert or a log that cannot be opened at all is an
//! `error` line and nothing more: delivery goes on and the spool keeps its own record.
//!
//! # Retention
//! The writer thread deletes rows older than the retention at start and then every
//! [`PURGE_EVERY`], in batches of [`PURGE_BATCH`] rows (one short transaction each, so readers
//! and the writer's own inserts are never blocked for long).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::store::sqlite;
use crate::unix_time::now_ms;

/// How long a statement waits for another connection's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the writer purges rows past the retention.
pub const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Most rows one purge transaction deletes.
pub const PURGE_BATCH: usize = 5000;
/// Attempts waiting for the writer at most; more are dropped (with an error line).
pub const QUEUE_CAPACITY: usize = 10_000;
/// `PRAGMA application_id` of delivery log files: "PDLG".
const APPLICATION_ID: i64 = 0x5044_4C47;

/// Schema steps; after step `i` the file is at `user_version = i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the log.
    r#"
    CREATE TABLE delivery_log (
        id            INTEGER PRIMARY KEY,
        time_ms       INTEGER NOT NULL,
        queue_id      TEXT    NOT NULL,
        sender        TEXT    NOT NULL,
        sender_key    TEXT    NOT NULL,
        recipient     TEXT    NOT NULL,
        recipient_key TEXT    NOT NULL,
        mx            TEXT,
        ip            TEXT,
        tls_mode      TEXT,
        tls_version   TEXT,
        tls_cipher    TEXT,
        reply         TEXT    NOT NULL,
        dsn           TEXT    NOT NULL,
        state         TEXT    NOT NULL CHECK (state IN ('delivered', 'deferred', 'bounced')),
        attempt       INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX delivery_log_by_time ON delivery_log(time_ms);
    CREATE INDEX delivery_log_by_recipient ON delivery_log(recipient_key, time_ms);
    CREATE INDEX delivery_log_by_sender ON delivery_log(sender_key, time_ms);
    "#,
];

const SQLITE: sqlite::Settings = sqlite::Settings {
    busy_timeout: BUSY_TIMEOUT,
    synchronous: sqlite::Synchronous::Normal,
    foreign_keys: false,
    file_mode: Some(0o600),
    schema: sqlite::Schema {
        name: "delivery log schema",
        migrations: MIGRATIONS,
        kind: Some(sqlite::FileKind {
            application_id: APPLICATION_ID,
            refusal: "not a delivery log database (the delivery log needs a file of its own)",
        }),
    },
};

/// A delivery log that cannot be opened, written or read.
#[derive(Debug, thiserror::Error)]
#[error("delivery log {path}: {message}")]
pub struct LogError {
    path: String,
    message: String,
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

    fn parse(text: &str) -> Option<Self> {
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

/// What `postern log` asks for; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Rows whose sender or recipient is this address (compared lower-cased).
    pub address: Option<String>,
    /// Rows at or after this time (Unix milliseconds).
    pub since_ms: Option<u64>,
    /// Rows in this state.
    pub state: Option<LogState>,
}

/// An open delivery log file.
pub struct DeliveryLog {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for DeliveryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl DeliveryLog {
    /// Opens (creating as needed) the log at `path`.
    ///
    /// # Errors
    /// The file cannot be created or opened, is another kind of database, or has a newer
    /// schema.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let conn = sqlite::open(path, &SQLITE).map_err(|e| Self::error_at(path, e))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens the log at `path` if the file exists; `None` (and nothing created) otherwise.
    ///
    /// # Errors
    /// As [`DeliveryLog::open`].
    pub fn open_existing(path: &Path) -> Result<Option<Self>, LogError> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open(path).map(Some)
    }

    fn error_at(path: &Path, e: sqlite::Error) -> LogError {
        LogError {
            path: path.display().to_string(),
            message: match e {
                sqlite::Error::Sqlite(e) => e.to_string(),
                sqlite::Error::Refused(m) => m,
            },
        }
    }

    fn error(&self, e: rusqlite::Error) -> LogError {
        Self::error_at(&self.path, sqlite::Error::Sqlite(e))
    }

    /// Appends records in one transaction.
    ///
    /// # Errors
    /// A statement failed; nothing was written.
    pub fn insert(&mut self, records: &[LogRecord]) -> Result<(), LogError> {
        let path = &self.path;
        let fail = |e| Self::error_at(path, sqlite::Error::Sqlite(e));
        let tx = self.conn.transaction().map_err(fail)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO delivery_log (time_ms, queue_id, sender, sender_key, recipient,
                        recipient_key, mx, ip, tls_mode, tls_version, tls_cipher, reply, dsn,
                        state, attempt)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )
                .map_err(fail)?;
            for r in records {
                stmt.execute(params![
                    int(r.time_ms),
                    r.queue_id,
                    r.sender,
                    r.sender.to_lowercase(),
                    r.recipient,
                    r.recipient.to_lowercase(),
                    r.mx,
                    r.ip,
                    r.tls_mode,
                    r.tls_version,
                    r.tls_cipher,
                    r.reply,
                    r.dsn,
                    r.state.as_str(),
                    r.attempt,
                ])
                .map_err(fail)?;
            }
        }
        tx.commit().map_err(fail)
    }

    /// The rows matching `query`, oldest first.
    ///
    /// # Errors
    /// A statement failed or a row is malformed.
    pub fn query(&self, query: &LogQuery) -> Result<Vec<LogRecord>, LogError> {
        let address = query.address.as_ref().map(|a| a.to_lowercase());
        // The OR of two indexed equalities is answered with both indexes (SQLite's OR
        // optimisation), then sorted.
        let sql = "SELECT time_ms, queue_id, sender, recipient, mx, ip, tls_mode, tls_version,
                          tls_cipher, reply, dsn, state, attempt
                   FROM delivery_log
                   WHERE (?1 IS NULL OR sender_key = ?1 OR recipient_key = ?1)
                     AND (?2 IS NULL OR time_ms >= ?2)
                     AND (?3 IS NULL OR state = ?3)
                   ORDER BY time_ms, id";
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map(
                params![
                    address,
                    query.since_ms.map(int),
                    query.state.map(LogState::as_str)
                ],
                |row| {
                    let time_ms: i64 = row.get(0)?;
                    let state: String = row.get(11)?;
                    Ok((
                        time_ms,
                        state,
                        LogRecord {
                            time_ms: 0,
                            queue_id: row.get(1)?,
                            sender: row.get(2)?,
                            recipient: row.get(3)?,
                            mx: row.get(4)?,
                            ip: row.get(5)?,
                            tls_mode: row.get(6)?,
                            tls_version: row.get(7)?,
                            tls_cipher: row.get(8)?,
                            reply: row.get(9)?,
                            dsn: row.get(10)?,
                            state: LogState::Deferred,
                            attempt: row.get(12)?,
                        },
                    ))
                },
            )
            .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (time_ms, state, mut record) = row.map_err(|e| self.error(e))?;
            record.time_ms = u64::try_from(time_ms).unwrap_or(0);
            record.state = LogState::parse(&state).ok_or_else(|| LogError {
                path: self.path.display().to_string(),
                message: format!("unknown state {state:?}"),
            })?;
            out.push(record);
        }
        Ok(out)
    }

    /// Deletes the rows older than `cutoff_ms`, at most `batch` per transaction; returns how
    /// many were deleted.
    ///
    /// # Errors
    /// A statement failed; the batches before it stay deleted.
    pub fn purge_before(&mut self, cutoff_ms: u64, batch: usize) -> Result<usize, LogError> {
        let mut total = 0;
        loop {
            let deleted = self
                .conn
                .execute(
                    "DELETE FROM delivery_log WHERE id IN (
                        SELECT id FROM delivery_log WHERE time_ms < ?1 ORDER BY time_ms LIMIT ?2)",
                    params![int(cutoff_ms), int(batch as u64)],
                )
                .map_err(|e| self.error(e))?;
            total += deleted;
            if deleted < batch {
                return Ok(total);
            }
        }
    }
}

/// A message to the writer thread.
enum Message {
    Records(Vec<LogRecord>),
    Close,
}

/// The background writer of a [`DeliveryLog`]: see "Writes never hold up delivery".
#[derive(Debug)]
pub struct LogWriter {
    tx: SyncSender<Message>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl LogWriter {
    /// Starts the writer thread; it purges past `retention` at once and every
    /// [`PURGE_EVERY`].
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start(log: DeliveryLog, retention: Duration) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("delivery-log".to_string())
            .spawn(move || writer_loop(log, &rx, retention))?;
        Ok(Self {
            tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues the records of one attempt without waiting; a full queue or a stopped writer
    /// drops them with an error line.
    pub fn submit(&self, records: Vec<LogRecord>) {
        if records.is_empty() {
            return;
        }
        match self.tx.try_send(Message::Records(records)) {
            Ok(()) => {}
            Err(TrySendError::Full(Message::Records(r))) => {
                tracing::error!(
                    records = r.len(),
                    "delivery log queue full: records dropped"
                );
            }
            Err(TrySendError::Disconnected(Message::Records(r))) => {
                tracing::error!(
                    records = r.len(),
                    "delivery log writer stopped: records dropped"
                );
            }
            Err(_) => {}
        }
    }

    /// Writes what is queued and stops the thread. Blocks: call from a blocking context.
    pub fn close(&self) {
        let _ = self.tx.send(Message::Close);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("delivery log writer panicked");
        }
    }
}

fn purge(log: &mut DeliveryLog, retention: Duration) {
    let cutoff = now_ms().saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
    match log.purge_before(cutoff, PURGE_BATCH) {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "delivery log: old records purged"),
        Err(e) => tracing::error!(error = %e, "delivery log purge failed"),
    }
}

fn writer_loop(mut log: DeliveryLog, rx: &mpsc::Receiver<Message>, retention: Duration) {
    purge(&mut log, retention);
    let mut next_purge = Instant::now() + PURGE_EVERY;
    loop {
        let wait = next_purge.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                purge(&mut log, retention);
                next_purge = Instant::now() + PURGE_EVERY;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Everything already queued goes in the same transaction.
        let mut batch = Vec::new();
        let mut closing = false;
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Records(r) => batch.extend(r),
                Message::Close => closing = true,
            }
            next = if closing || batch.len() >= 1000 {
                None
            } else {
                rx.try_recv().ok()
            };
        }
        // One transaction: a failed insert wrote nothing, so one more try (a disk that was
        // briefly full or busy) cannot duplicate rows; after that the rows are given up.
        if !batch.is_empty()
            && let Err(first) = log.insert(&batch)
        {
            std::thread::sleep(Duration::from_secs(1));
            if let Err(e) = log.insert(&batch) {
                tracing::error!(error = %e, first_error = %first, records = batch.len(),
                    "delivery log write failed twice; records dropped");
            }
        }
        if closing {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn record(time_ms: u64, sender: &str, recipient: &str, state: LogState) -> LogRecord {
        LogRecord {
            time_ms,
            queue_id: "Q1".into(),
            sender: sender.into(),
            recipient: recipient.into(),
            mx: Some("mx.example.net".into()),
            ip: Some("192.0.2.1".into()),
            tls_mode: Some("opportunistic".into()),
            tls_version: Some("TLSv1.3".into()),
            tls_cipher: Some("TLS13_AES_256_GCM_SHA384".into()),
            reply: "mx.example.net[192.0.2.1] said: 250 2.0.0 ok (in reply to end of DATA)".into(),
            dsn: "2.0.0".into(),
            state,
            attempt: 1,
        }
    }

    #[test]
    fn insert_and_query_filters() {
        let dir = TempDir::new("dlog-query");
        let mut log = DeliveryLog::open(&dir.join("sub/delivery-log.db")).unwrap();
        let mut plain = record(3000, "", "c@example.net", LogState::Bounced);
        plain.tls_mode = Some("plaintext".into());
        plain.tls_version = None;
        plain.tls_cipher = None;
        plain.mx = None;
        plain.ip = None;
        let rows = vec![
            record(
                2000,
                "Alice@Example.org",
                "b@example.net",
                LogState::Deferred,
            ),
            record(
                1000,
                "alice@example.org",
                "B@Example.net",
                LogState::Delivered,
            ),
            plain.clone(),
        ];
        log.insert(&rows).unwrap();

        let all = log.query(&LogQuery::default()).unwrap();
        assert_eq!(
            all.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
            [1000, 2000, 3000]
        );
        assert_eq!(all[2], plain);
        assert_eq!(all[0], rows[1]);

        let by = |address: &str| {
            log.query(&LogQuery {
                address: Some(address.into()),
                ..LogQuery::default()
            })
            .unwrap()
            .len()
        };
        assert_eq!(by("ALICE@example.org"), 2);
        assert_eq!(by("b@example.net"), 2);
        assert_eq!(by("c@EXAMPLE.net"), 1);
        assert_eq!(by("nobody@example.net"), 0);

        let since = log
            .query(&LogQuery {
                since_ms: Some(2000),
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(since.len(), 2);
        let bounced = log
            .query(&LogQuery {
                state: Some(LogState::Bounced),
                address: Some("c@example.net".into()),
                since_ms: Some(0),
            })
            .unwrap();
        assert_eq!(bounced, vec![plain]);
    }

    #[test]
    fn purge_in_batches() {
        let dir = TempDir::new("dlog-purge");
        let mut log = DeliveryLog::open(&dir.join("delivery-log.db")).unwrap();
        let rows: Vec<_> = (0..25)
            .map(|t| record(t, "a@example.org", "b@example.net", LogState::Delivered))
            .collect();
        log.insert(&rows).unwrap();
        assert_eq!(log.purge_before(20, 3).unwrap(), 20);
        let left = log.query(&LogQuery::default()).unwrap();
        assert_eq!(
            left.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
            (20..25).collect::<Vec<_>>()
        );
        assert_eq!(log.purge_before(20, 3).unwrap(), 0);
    }

    #[test]
    fn writer_persists_and_purges_at_start() {
        let dir = TempDir::new("dlog-writer");
        let path = dir.join("delivery-log.db");
        let mut log = DeliveryLog::open(&path).unwrap();
        let old = now_ms() - 2 * 86_400_000;
        log.insert(&[record(
            old,
            "a@example.org",
            "old@example.net",
            LogState::Delivered,
        )])
        .unwrap();
        let writer = LogWriter::start(log, Duration::from_secs(86_400)).unwrap();
        writer.submit(vec![record(
            now_ms(),
            "a@example.org",
            "new@example.net",
            LogState::Delivered,
        )]);
        writer.close();
        writer.submit(vec![record(1, "x", "y", LogState::Bounced)]); // dropped, no panic
        let log = DeliveryLog::open_existing(&path).unwrap().unwrap();
        let rows = log.query(&LogQuery::default()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].recipient, "new@example.net");
    }

    #[test]
    fn open_existing_creates_nothing_and_other_files_are_refused() {
        let dir = TempDir::new("dlog-open");
        let path = dir.join("delivery-log.db");
        assert!(DeliveryLog::open_existing(&path).unwrap().is_none());
        assert!(!dir.path().exists());
        std::fs::create_dir_all(dir.path()).unwrap();
        let other = dir.join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER)")
            .unwrap();
        let e = DeliveryLog::open(&other).unwrap_err().to_string();
        assert!(e.contains("not a delivery log database"), "{e}");
    }
}
