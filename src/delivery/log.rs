//! The delivery log's writer: one record per recipient per delivery attempt (the record, its
//! backends and `postern log`'s lookups are in [`crate::store::delivery_log`]; the log lives
//! with the directory: a SQLite file with the embedded store, the shared database with
//! PostgreSQL).
//!
//! # Writes never hold up delivery
//! The delivery tasks hand each attempt's records to a [`LogWriter`] over a bounded channel
//! ([`QUEUE_CAPACITY`]) without waiting ([`LogWriter::submit`]); a thread of its own writes
//! them in batches of at most [`BATCH_MAX`] records (one transaction on SQLite, one statement
//! on PostgreSQL): a batch is what arrives within [`LINGER`] of its first record, so that at
//! high rates the cost of a transaction (and the thread's wake-up) is shared by many records.
//! `close` ends the linger at once: whatever was submitted before it is written. A full channel, a failed write or a
//! log that cannot be opened costs log rows and nothing more: delivery goes on and the spool
//! keeps its own record.
//!
//! # Failures: counted, reported at a bounded rate, recovered from by themselves
//! A failed batch is tried once more after [`RETRY_AFTER`] (a busy file, a PostgreSQL
//! restart), then dropped. Every dropped record counts in
//! `postern_delivery_log_dropped_records_total`; the `error` line saying so comes at most once
//! per [`REPORT_EVERY`] with the number dropped since the previous line, so that an outage of
//! PostgreSQL under load is a handful of lines, not one per record. Nothing needs restarting:
//! the next batch tries again (the PostgreSQL pool reconnects), and the first batch written
//! after drops says so in an `info` line with the count not yet reported. A batch that
//! failed wrote nothing (all or none), so the retry cannot duplicate rows, except when a
//! commit's answer is lost on the way back.
//!
//! # Retention
//! The writer thread deletes rows older than the retention at start and then every
//! [`PURGE_EVERY`], in batches of [`PURGE_BATCH`] rows. With PostgreSQL one replica purges at a
//! time (an advisory lock); the others skip that round.

use std::fmt::Display;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::store::delivery_log::{
    LogError, LogQuery, LogRecord, LogState, LogStore, PURGE_BATCH, Purge,
};

use crate::metrics::Metrics;
use crate::unix_time::now_ms;

/// How often the writer purges rows past the retention.
pub const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Attempts waiting for the writer at most; more are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 10_000;
/// Most records written in one batch.
pub const BATCH_MAX: usize = 1000;
/// How long the writer goes on collecting after the first record of a batch, unless the
/// batch is full first: at a thousand deliveries a second one transaction then carries a
/// few dozen records instead of one or two, and a row is visible at most this much later.
pub const LINGER: Duration = Duration::from_millis(5);
/// Wait before the one retry of a failed batch.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// At most one `error` line about dropped records per this period.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A message to the writer thread.
enum Message {
    Records(Vec<LogRecord>),
    Close,
}

/// Counts dropped records and reports them at a bounded rate (see the module docs).
struct Dropped {
    metrics: Metrics,
    report: Mutex<Report>,
}

#[derive(Default)]
struct Report {
    /// When the last `error` line was written.
    last_line: Option<Instant>,
    /// Dropped since that line.
    unreported: u64,
    /// Dropped since the last successful write.
    since_write: u64,
}

impl Dropped {
    fn report(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn records(&self, n: usize, reason: &'static str, error: Option<&dyn Display>) {
        let n = n as u64;
        self.metrics.delivery_log_dropped(n);
        let mut report = self.report();
        report.unreported += n;
        report.since_write += n;
        let now = Instant::now();
        if report
            .last_line
            .is_none_or(|last| now.duration_since(last) >= REPORT_EVERY)
        {
            let records = std::mem::take(&mut report.unreported);
            report.last_line = Some(now);
            drop(report);
            match error {
                Some(e) => tracing::error!(records, reason, error = %e,
                    "delivery log: records dropped (counted in postern_delivery_log_dropped_records_total; at most one such line per 10 s)"),
                None => tracing::error!(
                    records,
                    reason,
                    "delivery log: records dropped (counted in postern_delivery_log_dropped_records_total; at most one such line per 10 s)"
                ),
            }
        }
    }

    /// A batch was written: after drops, one line saying the log works again.
    fn written(&self) {
        let mut report = self.report();
        if report.since_write > 0 {
            let unreported = std::mem::take(&mut report.unreported);
            let dropped = std::mem::take(&mut report.since_write);
            drop(report);
            tracing::info!(
                dropped,
                unreported,
                "delivery log: writing again after dropped records"
            );
        }
    }
}

/// The background writer of a [`LogStore`]: see "Writes never hold up delivery".
pub struct LogWriter {
    tx: SyncSender<Message>,
    dropped: Arc<Dropped>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter").finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Starts the writer thread, which opens the log with `open` (on the thread, so that a
    /// PostgreSQL log runs on a runtime of its own, never the delivery's), purges past
    /// `retention` at once and every [`PURGE_EVERY`]. Blocks until the log is open: call from
    /// a blocking context.
    ///
    /// # Errors
    /// The log cannot be opened (`open`'s error as text) or the thread cannot be started.
    pub fn start<F>(open: F, retention: Duration, metrics: Metrics) -> Result<Self, String>
    where
        F: FnOnce() -> Result<Box<dyn LogStore>, String> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let (opened_tx, opened_rx) = mpsc::sync_channel(1);
        let dropped = Arc::new(Dropped {
            metrics,
            report: Mutex::new(Report::default()),
        });
        let for_thread = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("delivery-log".to_string())
            .spawn(move || match open() {
                Ok(log) => {
                    let _ = opened_tx.send(Ok(()));
                    writer_loop(log, &rx, retention, &for_thread);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .map_err(|e| format!("cannot start the delivery log writer: {e}"))?;
        match opened_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                tx,
                dropped,
                thread: Mutex::new(Some(thread)),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err("the delivery log writer stopped while opening the log".to_string())
            }
        }
    }

    /// Queues the records of one attempt without waiting; a full queue or a stopped writer
    /// drops them (counted, reported at a bounded rate).
    pub fn submit(&self, records: Vec<LogRecord>) {
        if records.is_empty() {
            return;
        }
        match self.tx.try_send(Message::Records(records)) {
            Ok(()) => {}
            Err(TrySendError::Full(Message::Records(r))) => {
                self.dropped.records(r.len(), "queue full", None);
            }
            Err(TrySendError::Disconnected(Message::Records(r))) => {
                self.dropped.records(r.len(), "writer stopped", None);
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

fn purge(log: &mut dyn LogStore, retention: Duration) {
    let cutoff = now_ms().saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
    match log.purge_before(cutoff, PURGE_BATCH) {
        Ok(Purge::Deleted(0)) => {}
        Ok(Purge::Deleted(n)) => tracing::info!(deleted = n, "delivery log: old records purged"),
        Ok(Purge::Skipped) => {
            tracing::debug!("delivery log: another replica is purging; purge skipped");
        }
        Err(e) => tracing::error!(error = %e, "delivery log purge failed"),
    }
}

/// One batch: `first`, then what arrives until `until`, until the batch holds [`BATCH_MAX`]
/// records, or until `Close` (returned as `true`; nothing after it is read) or the last
/// sender is gone.
fn collect(first: Message, rx: &mpsc::Receiver<Message>, until: Instant) -> (Vec<LogRecord>, bool) {
    let mut batch = Vec::new();
    let mut next = Ok(first);
    while let Ok(message) = next {
        match message {
            Message::Records(r) => batch.extend(r),
            Message::Close => return (batch, true),
        }
        if batch.len() >= BATCH_MAX {
            break;
        }
        next = rx.recv_timeout(until.saturating_duration_since(Instant::now()));
    }
    (batch, false)
}

fn writer_loop(
    mut log: Box<dyn LogStore>,
    rx: &mpsc::Receiver<Message>,
    retention: Duration,
    dropped: &Dropped,
) {
    purge(log.as_mut(), retention);
    let mut next_purge = Instant::now() + PURGE_EVERY;
    loop {
        let wait = next_purge.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                purge(log.as_mut(), retention);
                next_purge = Instant::now() + PURGE_EVERY;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let (batch, closing) = collect(first, rx, Instant::now() + LINGER);
        if !batch.is_empty() {
            match log.insert(&batch) {
                Ok(()) => dropped.written(),
                Err(first) => {
                    std::thread::sleep(RETRY_AFTER);
                    match log.insert(&batch) {
                        Ok(()) => dropped.written(),
                        Err(e) => {
                            tracing::debug!(error = %first, "delivery log: first write failed");
                            dropped.records(batch.len(), "write failed twice", Some(&e));
                        }
                    }
                }
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
    use crate::store::delivery_log::SqliteLog;
    use crate::store::delivery_log::conformance::record;
    use crate::testutil::TempDir;

    fn dropped_metric(metrics: &Metrics) -> u64 {
        let text = metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix("postern_delivery_log_dropped_records_total "))
            .map(|v| v.trim().parse().unwrap())
            .unwrap()
    }

    #[test]
    fn writer_persists_and_purges_at_start() {
        let dir = TempDir::new("dlog-writer");
        let path = dir.join("delivery-log.db");
        let mut log = SqliteLog::open(&path).unwrap();
        let old = now_ms() - 2 * 86_400_000;
        log.insert(&[record(
            old,
            "a@example.org",
            "old@example.net",
            LogState::Delivered,
        )])
        .unwrap();
        drop(log);
        let metrics = Metrics::new();
        let opened = path.clone();
        let writer = LogWriter::start(
            move || {
                SqliteLog::open(&opened)
                    .map(|l| Box::new(l) as Box<dyn LogStore>)
                    .map_err(|e| e.to_string())
            },
            Duration::from_secs(86_400),
            metrics.clone(),
        )
        .unwrap();
        writer.submit(vec![record(
            now_ms(),
            "a@example.org",
            "new@example.net",
            LogState::Delivered,
        )]);
        writer.close();
        assert_eq!(dropped_metric(&metrics), 0);
        writer.submit(vec![record(1, "x", "y", LogState::Bounced)]); // dropped, counted
        assert_eq!(dropped_metric(&metrics), 1);
        let log = SqliteLog::open_existing(&path).unwrap().unwrap();
        let rows = log.query(&LogQuery::default()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].recipient, "new@example.net");
    }

    fn one(n: usize) -> Message {
        Message::Records(vec![record(
            1,
            "a@example.org",
            &format!("r{n}@example.net"),
            LogState::Delivered,
        )])
    }

    /// A deadline the tests never reach: a batch that ends does so by count, `Close` or
    /// disconnection, never by time.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn a_batch_ends_at_batch_max_records() {
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        for n in 1..BATCH_MAX + 2 {
            tx.send(one(n)).unwrap();
        }
        let (batch, closing) = collect(one(0), &rx, far());
        assert_eq!((batch.len(), closing), (BATCH_MAX, false));
        // The record past the limit starts the next batch.
        let first = rx.recv().unwrap();
        drop(tx);
        let (batch, closing) = collect(first, &rx, far());
        assert_eq!((batch.len(), closing), (2, false));
        assert_eq!(
            batch[1].recipient,
            format!("r{}@example.net", BATCH_MAX + 1)
        );
    }

    #[test]
    fn close_ends_the_linger_with_everything_sent_before_it() {
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let late = std::thread::spawn(move || {
            tx.send(one(1)).unwrap();
            tx.send(one(2)).unwrap();
            tx.send(Message::Close).unwrap();
            tx.send(one(3)).unwrap();
            tx
        });
        let (batch, closing) = collect(one(0), &rx, far());
        let tx = late.join().unwrap();
        assert!(closing);
        let recipients: Vec<&str> = batch.iter().map(|r| r.recipient.as_str()).collect();
        assert_eq!(
            recipients,
            ["r0@example.net", "r1@example.net", "r2@example.net"]
        );
        // Nothing after Close was taken.
        assert!(matches!(rx.try_recv(), Ok(Message::Records(_))));
        drop(tx);
    }

    #[test]
    fn every_record_submitted_before_close_is_written() {
        let dir = TempDir::new("dlog-linger");
        let path = dir.join("delivery-log.db");
        let opened = path.clone();
        let writer = LogWriter::start(
            move || {
                SqliteLog::open(&opened)
                    .map(|l| Box::new(l) as Box<dyn LogStore>)
                    .map_err(|e| e.to_string())
            },
            Duration::from_secs(86_400),
            Metrics::new(),
        )
        .unwrap();
        let total = BATCH_MAX + 1;
        for n in 0..total {
            writer.submit(vec![record(
                now_ms(),
                "a@example.org",
                &format!("r{n}@example.net"),
                LogState::Delivered,
            )]);
        }
        writer.close();
        let log = SqliteLog::open_existing(&path).unwrap().unwrap();
        assert_eq!(log.query(&LogQuery::default()).unwrap().len(), total);
    }

    #[test]
    fn a_log_that_cannot_be_opened_is_an_error_at_start() {
        let dir = TempDir::new("dlog-refused");
        std::fs::create_dir_all(dir.path()).unwrap();
        let other = dir.join("other.db");
        rusqlite::Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER)")
            .unwrap();
        let e = LogWriter::start(
            move || {
                SqliteLog::open(&other)
                    .map(|l| Box::new(l) as Box<dyn LogStore>)
                    .map_err(|e| e.to_string())
            },
            Duration::from_secs(60),
            Metrics::new(),
        )
        .unwrap_err();
        assert!(e.contains("not a delivery log database"), "{e}");
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A real PostgreSQL stopped under the writer: the records of that time are dropped and
    /// counted, delivery-side `submit` never blocks, and once the server is back the same
    /// writer writes again without being restarted.
    #[test]
    fn postgres_outage_drops_counts_and_recovers() {
        use crate::config::PgTlsMode;
        use crate::store::postgres::sealing::SecretKey;
        use crate::store::postgres::{
            PgTls, PgTlsFiles, PostgresSettings, PostgresStore, SecretKeys,
        };
        use crate::testutil::postgres::{PASSWORD, PostgresServer};
        let server = PostgresServer::start();
        server.create_database("log");
        let settings = PostgresSettings {
            pg: crate::config::parse_postgres_url(&server.url("log"))
                .unwrap()
                .pg,
            password: Some(PASSWORD.to_string()),
            secret_keys: SecretKeys::new(SecretKey::from_bytes(&[7; 32]).unwrap(), Vec::new()),
            pool_size: 2,
            timeout: Duration::from_secs(2),
            tls: PgTls::new(PgTlsMode::Disable, &PgTlsFiles::default()).unwrap(),
        };
        let reader = PostgresStore::open(&settings).unwrap();
        reader.migrate_blocking().unwrap();
        let metrics = Metrics::new();
        let for_writer = settings.clone();
        let writer = LogWriter::start(
            move || {
                PostgresStore::open(&for_writer)
                    .map(|s| Box::new(s) as Box<dyn LogStore>)
                    .map_err(|e| e.to_string())
            },
            Duration::from_secs(86_400),
            metrics.clone(),
        )
        .unwrap();
        // The reader's own pooled connection dies with the server too: a failed read is an
        // empty answer, and the wait goes on.
        let recipients = || -> Vec<String> {
            reader
                .query(&LogQuery::default())
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.recipient)
                .collect()
        };
        let submit = |recipient: &str| {
            let started = Instant::now();
            writer.submit(vec![record(
                now_ms(),
                "a@example.org",
                recipient,
                LogState::Delivered,
            )]);
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "submit waited"
            );
        };
        submit("before@example.net");
        wait_for("the first record", || {
            recipients() == ["before@example.net"]
        });

        server.stop();
        submit("during@example.net");
        wait_for("the dropped record counted", || {
            dropped_metric(&metrics) == 1
        });

        server.start_again();
        submit("after@example.net");
        wait_for("writes after the outage", || {
            recipients() == ["before@example.net", "after@example.net"]
        });
        writer.close();
        assert_eq!(dropped_metric(&metrics), 1);
    }
}
