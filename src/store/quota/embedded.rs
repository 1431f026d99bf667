//! The embedded quota store: one SQLite file of its own (bundled SQLite, no server).
//!
//! # Why a file of its own
//! Quota writes come with every RCPT (thousands a second) while the directory store
//! (`store.path`) is written a few times a day and wants `synchronous = FULL`. A separate file
//! keeps the hot write traffic, its WAL and its checkpoints away from the password hashes, and
//! lets each file have the durability it needs. Opening the directory file (or any other
//! non-quota database) as a quota file is refused (`PRAGMA application_id`).
//!
//! # Durability: `synchronous = NORMAL`
//! In WAL mode a commit is written to the WAL before it returns, so a crash of the *process*
//! loses nothing; only a power cut or kernel crash can lose the transactions since the last
//! checkpoint (about a second, see below). For quotas that means a few recipients forgotten,
//! once, after a power loss: an abuse brake slightly loosened, no mail lost, no password
//! brought back. In exchange a commit costs no `fsync`, which is what makes thousands of holds
//! a second possible.
//!
//! # Checkpoints: on a thread of their own
//! SQLite's automatic checkpoint runs inside the commit that takes the WAL past 1000 pages,
//! and a checkpoint `fsync`s the WAL and the database file: every few hundred holds, one RCPT
//! would wait for two `fsync`s, on the async worker when it ran inline (below). So the
//! store's connection has `wal_autocheckpoint = 0`, and a thread of the store's own
//! (`quota-checkpoint`, with a second connection to the file) runs `PRAGMA
//! wal_checkpoint(RESTART)` after every [`CHECKPOINT_EVERY_COMMITS`] commits of this store,
//! and every [`CHECKPOINT_INTERVAL`] if there was any commit since the last one. Why RESTART
//! and not PASSIVE: the WAL starts over from its beginning only when a writer finds every frame
//! copied, and under steady traffic a PASSIVE checkpoint (which lets writers go on) never
//! catches up: measured under `postern-race`, the WAL grew by about 15 MB a second. RESTART
//! holds the write lock while it copies and `fsync`s (a few milliseconds), so the next write
//! starts the WAL over; meanwhile a hold or commit finds the lock taken, fails its inline
//! attempt with `SQLITE_BUSY` and waits on the blocking pool (below), never on an async
//! worker. A separate connection means the checkpoint never holds the store's mutex; counting
//! commits keeps the WAL near the size SQLite's own setting would give (a hold or commit
//! writes a few pages), and the timer bounds what a power cut can lose to about a second when
//! traffic is light. The thread is woken once per [`CHECKPOINT_EVERY_COMMITS`] commits (a
//! channel send), not per commit. `journal_size_limit` ([`WAL_SIZE_LIMIT`]) truncates a WAL
//! file that a burst grew when it starts over. A checkpoint that cannot get the lock within
//! [`BUSY_TIMEOUT`] (another process's long write, or a reader that keeps an old snapshot,
//! which only `postern quota show` could) or fails is retried at the next interval; failures
//! are logged. Other processes' connections (the
//! CLI's) keep SQLite's automatic checkpoints for their own rare writes. The thread stops, after
//! a last checkpoint, when the store's last clone is dropped.
//!
//! # Atomicity and processes
//! Every change is one `BEGIN IMMEDIATE` transaction that prunes, counts, checks and writes
//! together: two processes (or connections) on the file are serialised by SQLite's write lock
//! and cannot both take the last unit of capacity. A writer waits up to [`BUSY_TIMEOUT`] for
//! the lock, then the call fails with [`QuotaError::Unavailable`] (on the blocking pool: see
//! below). `usage` only reads (a WAL snapshot), so `postern quota show` never waits for
//! `postern serve` nor slows it down. Each call is its own transaction (no batching of several
//! callers' holds into one): a transaction is already only a few microseconds once it runs
//! inline, and one per call keeps every answer exactly the one its own check gave.
//!
//! # Schema
//! - `quota_buckets(key, bucket, count)`: recipients counted per key and time bucket.
//!   Expired buckets are ignored by every query and deleted by a sweep (below).
//! - `quota_holds(key, hold_id, count, expires_ms)`: open transactions' holds. Expired holds
//!   are ignored, deleted per key by the next write on that key, and by the sweep.
//!
//! A key's used count is a sum over its live buckets (at most `buckets()` rows, usually a
//! handful), its held count a sum over its holds (one row per open transaction): no running
//! totals that a sweep could make wrong. The sweep runs inside a write transaction at most once
//! per [`SWEEP_EVERY_MS`] of the callers' time and deletes every expired bucket (an index on
//! `bucket`) and every expired hold (a scan of the small holds table).
//!
//! # Concurrency inside the process
//! One connection behind a `std::sync::Mutex`, never held across an `.await`. A hold comes
//! with every RCPT and a commit with every message, and a trip through tokio's blocking pool
//! (`spawn_blocking` wakes a pool thread, which then wakes the runtime's worker) costs more
//! than the transaction. So each async method first tries to run inline on the calling
//! worker, which it does only when nothing can make it wait: the mutex is free (`try_lock`)
//! and SQLite does not ask to wait for a lock (the attempt's busy handler declines every wait:
//! [`sqlite::attempt_without_waiting`]). A `BEGIN IMMEDIATE` that finds another connection
//! holding the write lock fails at once with `SQLITE_BUSY`, before anything was written; the
//! call then runs again on the blocking pool, where it waits for the mutex and up to
//! [`BUSY_TIMEOUT`] for the lock, as every call did before. The same happens when the mutex
//! is held (a call in progress on another worker or on the pool). Once a transaction holds
//! the write lock nothing in it waits: in WAL mode its reads need no other lock, and its
//! commit runs no checkpoint (above) and, at `synchronous = NORMAL`, no `fsync`. A failed
//! attempt leaves nothing behind (its transaction is rolled back), so running it again counts
//! nothing twice; a successful one is never run again.

use super::{Persistence, QuotaError, QuotaHold, QuotaKey, QuotaSettings, QuotaStore, Usage};
use crate::policy::quota::{has_room, retry_at};
use crate::store::sqlite;
use rusqlite::{Connection, OptionalExtension, Params, Transaction, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a statement waits for another process's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// The sweep of expired rows runs at most once per this much of the callers' time.
pub const SWEEP_EVERY_MS: u64 = 60_000;
/// The checkpoint thread is woken after this many commits of the store (see "Checkpoints").
pub const CHECKPOINT_EVERY_COMMITS: u32 = 256;
/// The checkpoint thread checkpoints at least this often while there are commits.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// `PRAGMA journal_size_limit`: a WAL file larger than this is truncated when it starts over.
pub const WAL_SIZE_LIMIT: i64 = 16 * 1024 * 1024;
/// `PRAGMA application_id` of quota files: "PQTA".
const APPLICATION_ID: i64 = 0x5051_5441;

/// Schema steps; after step `i` the file is at `user_version = i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: buckets and holds.
    r#"
    CREATE TABLE quota_buckets (
        key    TEXT    NOT NULL,
        bucket INTEGER NOT NULL,
        count  INTEGER NOT NULL,
        PRIMARY KEY (key, bucket)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX quota_buckets_by_bucket ON quota_buckets(bucket);

    CREATE TABLE quota_holds (
        key        TEXT    NOT NULL,
        hold_id    TEXT    NOT NULL,
        count      INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (key, hold_id)
    ) STRICT, WITHOUT ROWID;
    "#,
];

/// How the file is opened: see the module documentation.
const SQLITE: sqlite::Settings = sqlite::Settings {
    busy_timeout: BUSY_TIMEOUT,
    synchronous: sqlite::Synchronous::Normal,
    foreign_keys: false,
    // Who sent how much is private too, like the directory beside it.
    file_mode: Some(0o600),
    schema: sqlite::Schema {
        name: "quota schema",
        migrations: MIGRATIONS,
        kind: Some(sqlite::FileKind {
            application_id: APPLICATION_ID,
            refusal: "not a quota database (the quota store needs a file of its own)",
        }),
    },
};

/// The SQLite-backed quota store. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct EmbeddedQuota {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    path: PathBuf,
    settings: QuotaSettings,
    /// Where the calls ran (for the tests).
    paths: PathCounts,
    checkpointer: Checkpointer,
}

/// How many calls ran inline and how many on the blocking pool.
#[derive(Debug, Default)]
struct PathCounts {
    inline: AtomicU64,
    blocking: AtomicU64,
}

/// The thread that checkpoints the file (see "Checkpoints" in the module documentation).
struct Checkpointer {
    /// Commits since the thread last looked.
    commits: Arc<AtomicU32>,
    /// Wakes the thread before its interval is up; dropped to stop it.
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens the thread's own connection (so that a failure shows at open) and starts it.
    fn start(path: &Path) -> Result<Self, QuotaError> {
        let conn = sqlite::open(path, &SQLITE).map_err(plumbing)?;
        let commits = Arc::new(AtomicU32::new(0));
        // One pending wake-up is enough: the thread checkpoints everything there is.
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let counted = commits.clone();
        let thread = std::thread::Builder::new()
            .name("quota-checkpoint".to_string())
            .spawn(move || checkpoint_until_stopped(&conn, &counted, &woken))
            .map_err(|e| QuotaError::Unavailable(format!("cannot start the checkpoints: {e}")))?;
        Ok(Self {
            commits,
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// Counts a commit; every [`CHECKPOINT_EVERY_COMMITS`]th wakes the thread.
    fn committed(&self) {
        let n = self.commits.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if n.is_multiple_of(CHECKPOINT_EVERY_COMMITS)
            && let Some(wake) = &self.wake
        {
            // Full: a wake-up is pending already.
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Disconnects the channel: the thread makes its last checkpoint and returns.
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The checkpoint thread: a RESTART checkpoint when woken or every [`CHECKPOINT_INTERVAL`],
/// if anything was committed since the last; a last one when the store is dropped.
fn checkpoint_until_stopped(conn: &Connection, commits: &AtomicU32, woken: &Receiver<()>) {
    loop {
        let stopping = matches!(
            woken.recv_timeout(CHECKPOINT_INTERVAL),
            Err(RecvTimeoutError::Disconnected)
        );
        if commits.swap(0, Ordering::AcqRel) > 0 {
            // The first column is 1 when the lock or the readers did not come free in time.
            let done = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0));
            let complete = match done {
                Ok(busy) => busy == 0,
                Err(e) => {
                    tracing::warn!(error = %e, "quota database: checkpoint failed; will retry");
                    false
                }
            };
            if !complete {
                // Keeps the next interval's checkpoint due.
                commits.fetch_add(1, Ordering::Relaxed);
            }
        }
        if stopping {
            return;
        }
    }
}

struct State {
    conn: Connection,
    /// Callers' time of the last sweep (0: never).
    last_sweep_ms: u64,
}

impl std::fmt::Debug for EmbeddedQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedQuota")
            .field("path", &self.inner.path)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

fn backend(e: rusqlite::Error) -> QuotaError {
    QuotaError::Unavailable(format!("quota database: {e}"))
}

/// A failure of the shared SQLite plumbing as a quota error.
fn plumbing(e: sqlite::Error) -> QuotaError {
    match e {
        sqlite::Error::Sqlite(e) => backend(e),
        sqlite::Error::Refused(m) => QuotaError::Unavailable(m),
    }
}

/// A time, bucket or count as a SQLite integer.
fn int(v: u64) -> Result<i64, QuotaError> {
    i64::try_from(v).map_err(|_| QuotaError::Invalid(format!("value {v} out of range")))
}

/// A stored integer as a count or time; negative values are a broken file.
fn uint(v: i64) -> Result<u64, QuotaError> {
    u64::try_from(v)
        .map_err(|_| QuotaError::Unavailable(format!("quota database: negative value {v}")))
}

/// A count as the API's `u32`, saturating (a key never holds 4 billion recipients).
fn count32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl EmbeddedQuota {
    /// Opens the quota file at `path`, creating it, its parent directory (mode 0700) and the
    /// schema as needed.
    ///
    /// # Errors
    /// [`QuotaError::Unavailable`] naming the path: it cannot be created or opened, WAL mode
    /// cannot be enabled, it is another kind of database, or its schema is newer than this
    /// Postern understands.
    pub fn open(path: &Path, settings: QuotaSettings) -> Result<Self, QuotaError> {
        let conn = sqlite::open(path, &SQLITE).map_err(|e| match plumbing(e) {
            QuotaError::Unavailable(m) => {
                QuotaError::Unavailable(format!("{}: {m}", path.display()))
            }
            other => other,
        })?;
        let named = |e: QuotaError| match e {
            QuotaError::Unavailable(m) => {
                QuotaError::Unavailable(format!("{}: {m}", path.display()))
            }
            other => other,
        };
        // Checkpoints are the thread's (module documentation, "Checkpoints").
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .and_then(|()| conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT))
            .map_err(|e| named(backend(e)))?;
        let checkpointer = Checkpointer::start(path).map_err(named)?;
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    conn,
                    last_sweep_ms: 0,
                }),
                path: path.to_path_buf(),
                settings,
                paths: PathCounts::default(),
                checkpointer,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The connection. A panic while it was held leaves no half-done write behind (an open
    /// transaction rolls back when dropped), so a poisoned lock is safe to take over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connection if no other thread holds it (a poisoned lock is taken over, as in
    /// [`Self::lock`]).
    fn try_lock(&self) -> Option<MutexGuard<'_, State>> {
        match self.inner.state.try_lock() {
            Ok(state) => Some(state),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction (after pruning `key`'s expired holds and,
    /// when due, sweeping), committing if it returns `Ok`.
    fn write<T>(
        &self,
        state: &mut State,
        key: &str,
        now_ms: u64,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, QuotaError>,
    ) -> Result<T, QuotaError> {
        let settings = self.inner.settings;
        let sweep = now_ms.saturating_sub(state.last_sweep_ms) >= SWEEP_EVERY_MS;
        let tx = state
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let now = int(now_ms)?;
        tx.prepare_cached("DELETE FROM quota_holds WHERE key = ?1 AND expires_ms <= ?2")
            .and_then(|mut s| s.execute(params![key, now]))
            .map_err(backend)?;
        if sweep {
            let oldest = int(settings.window.oldest_live(now_ms))?;
            tx.execute("DELETE FROM quota_buckets WHERE bucket < ?1", [oldest])
                .map_err(backend)?;
            tx.execute("DELETE FROM quota_holds WHERE expires_ms <= ?1", [now])
                .map_err(backend)?;
        }
        let value = f(&tx)?;
        tx.commit().map_err(backend)?;
        self.inner.checkpointer.committed();
        if sweep {
            state.last_sweep_ms = now_ms;
        }
        Ok(value)
    }

    fn hold_in(
        &self,
        state: &mut State,
        key: &str,
        hold_id: &str,
        limit: u32,
        now_ms: u64,
    ) -> Result<QuotaHold, QuotaError> {
        let settings = self.inner.settings;
        let expires = int(now_ms.saturating_add(settings.hold_ttl_ms))?;
        self.write(state, key, now_ms, |tx| {
            let oldest = settings.window.oldest_live(now_ms);
            let used = used(tx, key, oldest)?;
            let held = held(tx, key)?;
            if has_room(used, held, limit) {
                tx.prepare_cached(
                    "INSERT INTO quota_holds (key, hold_id, count, expires_ms)
                     VALUES (?1, ?2, 1, ?3)
                     ON CONFLICT (key, hold_id)
                     DO UPDATE SET count = count + 1, expires_ms = excluded.expires_ms",
                )
                .and_then(|mut s| s.execute(params![key, hold_id, expires]))
                .map_err(backend)?;
                return Ok(QuotaHold::Held {
                    used: count32(used),
                    held: count32(held + 1),
                });
            }
            // The transaction is alive: keep its holds.
            tx.prepare_cached(
                "UPDATE quota_holds SET expires_ms = ?3 WHERE key = ?1 AND hold_id = ?2",
            )
            .and_then(|mut s| s.execute(params![key, hold_id, expires]))
            .map_err(backend)?;
            Ok(QuotaHold::Full {
                retry_at_ms: full_retry_at(tx, settings, key, limit, now_ms)?,
            })
        })
    }

    fn commit_in(
        &self,
        state: &mut State,
        key: &str,
        hold_id: &str,
        now_ms: u64,
    ) -> Result<u32, QuotaError> {
        let window = self.inner.settings.window;
        self.write(state, key, now_ms, |tx| {
            let count = uint(take_holds(tx, key, hold_id)?)?;
            if count == 0 {
                return Ok(0);
            }
            // The current bucket, or the key's newest if another clock put one later.
            let newest: Option<i64> = tx
                .prepare_cached("SELECT MAX(bucket) FROM quota_buckets WHERE key = ?1")
                .and_then(|mut s| s.query_row([key], |r| r.get(0)))
                .map_err(backend)?;
            let bucket = int(window.bucket_of(now_ms).max(uint(newest.unwrap_or(0))?))?;
            let n = int(count)?;
            tx.prepare_cached(
                "INSERT INTO quota_buckets (key, bucket, count) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key, bucket) DO UPDATE SET count = count + excluded.count",
            )
            .and_then(|mut s| s.execute(params![key, bucket, n]))
            .map_err(backend)?;
            Ok(count32(count))
        })
    }

    fn release_in(&self, state: &mut State, key: &str, hold_id: &str) -> Result<u32, QuotaError> {
        let tx = state
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let count = take_holds(&tx, key, hold_id)?;
        tx.commit().map_err(backend)?;
        self.inner.checkpointer.committed();
        Ok(count32(uint(count)?))
    }

    fn refund_in(
        &self,
        state: &mut State,
        key: &str,
        n: u32,
        now_ms: u64,
    ) -> Result<u32, QuotaError> {
        let window = self.inner.settings.window;
        self.write(state, key, now_ms, |tx| {
            let live = buckets(tx, key, window.oldest_live(now_ms))?;
            let mut left = u64::from(n);
            for &(bucket, count) in live.iter().rev() {
                if left == 0 {
                    break;
                }
                let take = count.min(left);
                left -= take;
                let (bucket, n) = (int(bucket)?, int(take)?);
                let done = if take == count {
                    tx.prepare_cached("DELETE FROM quota_buckets WHERE key = ?1 AND bucket = ?2")
                        .and_then(|mut s| s.execute(params![key, bucket]))
                } else {
                    tx.prepare_cached(
                        "UPDATE quota_buckets SET count = count - ?3 WHERE key = ?1 AND bucket = ?2",
                    )
                    .and_then(|mut s| s.execute(params![key, bucket, n]))
                };
                done.map_err(backend)?;
            }
            Ok(count32(u64::from(n) - left))
        })
    }

    fn usage_in(
        &self,
        state: &mut State,
        key: &str,
        limit: u32,
        now_ms: u64,
    ) -> Result<Usage, QuotaError> {
        let settings = self.inner.settings;
        // A read transaction: one snapshot, no write lock.
        let tx = state.conn.transaction().map_err(backend)?;
        let live_buckets = buckets(&tx, key, settings.window.oldest_live(now_ms))?;
        let live_holds = holds(&tx, key, now_ms)?;
        let used: u64 = live_buckets.iter().map(|&(_, c)| c).sum();
        let held: u64 = live_holds.iter().map(|&(_, c)| c).sum();
        let next_free_ms = (!has_room(used, held, limit))
            .then(|| retry_at(settings.window, now_ms, limit, &live_buckets, &live_holds));
        tx.finish().map_err(backend)?;
        Ok(Usage {
            used: count32(used),
            held: count32(held),
            limit,
            next_free_ms,
        })
    }

    fn ping_in(state: &State) -> Result<(), QuotaError> {
        state
            .conn
            .query_row("SELECT count(*) FROM quota_holds", [], |_| Ok(()))
            .map_err(backend)
    }

    /// Runs `f` inline if nothing makes it wait, else on the blocking pool (see "Concurrency
    /// inside the process").
    async fn run<T: Send + 'static>(
        &self,
        f: impl Fn(&EmbeddedQuota, &mut State) -> Result<T, QuotaError> + Send + 'static,
    ) -> Result<T, QuotaError> {
        if let Some(result) = self.run_inline(&f) {
            self.inner.paths.inline.fetch_add(1, Ordering::Relaxed);
            return result;
        }
        self.inner.paths.blocking.fetch_add(1, Ordering::Relaxed);
        self.blocking(move |store| f(store, &mut store.lock()))
            .await
    }

    /// The inline half of [`Self::run`]: `None` if the mutex is held or SQLite would wait.
    fn run_inline<T>(
        &self,
        f: &impl Fn(&EmbeddedQuota, &mut State) -> Result<T, QuotaError>,
    ) -> Option<Result<T, QuotaError>> {
        let mut state = self.try_lock()?;
        let attempt = sqlite::attempt_without_waiting(
            &mut *state,
            |state: &State| &state.conn,
            BUSY_TIMEOUT,
            |state| f(self, state),
        );
        match attempt {
            sqlite::Attempt::Done(result) => Some(result),
            sqlite::Attempt::WouldWait => None,
        }
    }

    /// Runs `f` on the blocking pool with a clone of the store.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EmbeddedQuota) -> Result<T, QuotaError> + Send + 'static,
    ) -> Result<T, QuotaError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| QuotaError::Unavailable(format!("quota task failed: {e}")))?
    }
}

/// Deletes `hold_id`'s holds on `key`; returns their stored count (0 if it has none).
fn take_holds(tx: &Transaction<'_>, key: &str, hold_id: &str) -> Result<i64, QuotaError> {
    let count: Option<i64> = tx
        .prepare_cached("DELETE FROM quota_holds WHERE key = ?1 AND hold_id = ?2 RETURNING count")
        .and_then(|mut s| s.query_row(params![key, hold_id], |r| r.get(0)).optional())
        .map_err(backend)?;
    Ok(count.unwrap_or(0))
}

/// Recipients counted in `key`'s live buckets.
fn used(tx: &Transaction<'_>, key: &str, oldest_live: u64) -> Result<u64, QuotaError> {
    let oldest = int(oldest_live)?;
    let sum: i64 = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(count), 0) FROM quota_buckets WHERE key = ?1 AND bucket >= ?2",
        )
        .and_then(|mut s| s.query_row(params![key, oldest], |r| r.get(0)))
        .map_err(backend)?;
    uint(sum)
}

/// Recipients held for `key` (expired holds were pruned by the write transaction).
fn held(tx: &Transaction<'_>, key: &str) -> Result<u64, QuotaError> {
    let sum: i64 = tx
        .prepare_cached("SELECT COALESCE(SUM(count), 0) FROM quota_holds WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)))
        .map_err(backend)?;
    uint(sum)
}

/// Rows of two stored non-negative integers.
fn pairs(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl Params,
) -> Result<Vec<(u64, u64)>, QuotaError> {
    let mut stmt = tx.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map(params, |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (a, b) = row.map_err(backend)?;
        out.push((uint(a)?, uint(b)?));
    }
    Ok(out)
}

/// `key`'s live buckets, `(bucket, count)`, ascending.
fn buckets(
    tx: &Transaction<'_>,
    key: &str,
    oldest_live: u64,
) -> Result<Vec<(u64, u64)>, QuotaError> {
    pairs(
        tx,
        "SELECT bucket, count FROM quota_buckets WHERE key = ?1 AND bucket >= ?2
         ORDER BY bucket",
        params![key, int(oldest_live)?],
    )
}

/// `key`'s live holds, `(expires_ms, count)`.
fn holds(tx: &Transaction<'_>, key: &str, now_ms: u64) -> Result<Vec<(u64, u64)>, QuotaError> {
    pairs(
        tx,
        "SELECT expires_ms, count FROM quota_holds WHERE key = ?1 AND expires_ms > ?2",
        params![key, int(now_ms)?],
    )
}

/// The retry time of a full key, from its live rows.
fn full_retry_at(
    tx: &Transaction<'_>,
    settings: QuotaSettings,
    key: &str,
    limit: u32,
    now_ms: u64,
) -> Result<u64, QuotaError> {
    let live_buckets = buckets(tx, key, settings.window.oldest_live(now_ms))?;
    let live_holds = holds(tx, key, now_ms)?;
    Ok(retry_at(
        settings.window,
        now_ms,
        limit,
        &live_buckets,
        &live_holds,
    ))
}

#[async_trait::async_trait]
impl QuotaStore for EmbeddedQuota {
    async fn hold(
        &self,
        key: &QuotaKey,
        hold_id: &str,
        limit: u32,
        now_ms: u64,
    ) -> Result<QuotaHold, QuotaError> {
        let (key, hold_id) = (key.as_key(), hold_id.to_string());
        self.run(move |s, state| s.hold_in(state, &key, &hold_id, limit, now_ms))
            .await
    }

    async fn commit(&self, key: &QuotaKey, hold_id: &str, now_ms: u64) -> Result<u32, QuotaError> {
        let (key, hold_id) = (key.as_key(), hold_id.to_string());
        self.run(move |s, state| s.commit_in(state, &key, &hold_id, now_ms))
            .await
    }

    async fn release(&self, key: &QuotaKey, hold_id: &str) -> Result<u32, QuotaError> {
        let (key, hold_id) = (key.as_key(), hold_id.to_string());
        self.run(move |s, state| s.release_in(state, &key, &hold_id))
            .await
    }

    async fn refund(&self, key: &QuotaKey, n: u32, now_ms: u64) -> Result<u32, QuotaError> {
        let key = key.as_key();
        self.run(move |s, state| s.refund_in(state, &key, n, now_ms))
            .await
    }

    async fn usage(&self, key: &QuotaKey, limit: u32, now_ms: u64) -> Result<Usage, QuotaError> {
        let key = key.as_key();
        self.run(move |s, state| s.usage_in(state, &key, limit, now_ms))
            .await
    }

    async fn ping(&self) -> Result<(), QuotaError> {
        self.run(|_, state| Self::ping_in(state)).await
    }

    async fn persistence(&self) -> Persistence {
        Persistence::LocalFile
    }

    fn settings(&self) -> QuotaSettings {
        self.inner.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::quota::conformance;
    use crate::testutil::TempDir;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_on_one_file_two_connections() {
        let dir = TempDir::new("quota-test");
        let path = dir.join("quota.db");
        let a = EmbeddedQuota::open(&path, conformance::settings()).unwrap();
        let b = EmbeddedQuota::open(&path, conformance::settings()).unwrap();
        conformance::run_all(&a, &b, "unit-").await;
    }

    #[test]
    fn refuses_a_foreign_database() {
        let dir = TempDir::new("quota-test");
        let path = dir.join("store.db");
        crate::store::EmbeddedStore::open(&path).unwrap();
        let e = EmbeddedQuota::open(&path, QuotaSettings::default()).unwrap_err();
        assert!(e.to_string().contains("not a quota database"), "{e}");
        // A quota file reopens fine.
        let q = dir.join("quota.db");
        EmbeddedQuota::open(&q, QuotaSettings::default()).unwrap();
        EmbeddedQuota::open(&q, QuotaSettings::default()).unwrap();
    }

    /// (inline, blocking) calls so far.
    fn paths(store: &EmbeddedQuota) -> (u64, u64) {
        let p = &store.inner.paths;
        (
            p.inline.load(Ordering::Relaxed),
            p.blocking.load(Ordering::Relaxed),
        )
    }

    /// Polls (yielding) until `store` has sent a call to the blocking pool or `task` ended.
    async fn until_blocking<T>(store: &EmbeddedQuota, task: &tokio::task::JoinHandle<T>) {
        while paths(store).1 == 0 && !task.is_finished() {
            tokio::task::yield_now().await;
        }
    }

    /// A store on a fresh file, and another connection holding that file's write lock.
    fn locked(name: &str) -> (TempDir, EmbeddedQuota, Connection) {
        let dir = TempDir::new(name);
        let path = dir.join("q.db");
        let store = EmbeddedQuota::open(&path, conformance::settings()).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        (dir, store, other)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_run_inline_when_nothing_waits() {
        let dir = TempDir::new("quota-inline");
        let s = EmbeddedQuota::open(&dir.join("q.db"), conformance::settings()).unwrap();
        let k = QuotaKey::Hosting("inline".into());
        let t0 = conformance::T0;
        assert_eq!(
            s.hold(&k, "a", 1, t0).await.unwrap(),
            QuotaHold::Held { used: 0, held: 1 }
        );
        assert_eq!(s.commit(&k, "a", t0).await.unwrap(), 1);
        assert_eq!(s.release(&k, "a").await.unwrap(), 0);
        assert_eq!(s.usage(&k, 1, t0).await.unwrap().used, 1);
        assert_eq!(paths(&s), (4, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_write_lock_sends_the_call_to_the_blocking_pool_until_released() {
        let (_dir, s, other) = locked("quota-busy");
        let k = QuotaKey::Hosting("busy".into());
        let t0 = conformance::T0;
        let task = tokio::spawn({
            let (s, k) = (s.clone(), k.clone());
            async move { s.hold(&k, "a", 1, t0).await }
        });
        until_blocking(&s, &task).await;
        assert_eq!(paths(&s), (0, 1));
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(
            task.await.unwrap().unwrap(),
            QuotaHold::Held { used: 0, held: 1 }
        );
        // Held once, not twice: the limit of 1 is taken.
        assert!(matches!(
            s.hold(&k, "b", 1, t0).await.unwrap(),
            QuotaHold::Full { .. }
        ));
        assert_eq!(paths(&s), (1, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_lock_held_past_the_busy_timeout_fails_the_call() {
        let (_dir, s, other) = locked("quota-locked");
        let k = QuotaKey::Hosting("locked".into());
        let t0 = conformance::T0;
        assert_eq!(
            s.hold(&k, "a", 1, t0).await.unwrap_err(),
            QuotaError::Unavailable("quota database: database is locked".to_string())
        );
        assert_eq!(
            s.commit(&k, "a", t0).await.unwrap_err(),
            QuotaError::Unavailable("quota database: database is locked".to_string())
        );
        assert_eq!(paths(&s), (0, 2));
        other.execute_batch("ROLLBACK").unwrap();
        // Nothing was held nor counted by the failed calls.
        let usage = s.usage(&k, 1, t0).await.unwrap();
        assert_eq!((usage.used, usage.held), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_mutex_sends_the_call_to_the_blocking_pool() {
        let dir = TempDir::new("quota-mutex");
        let s = EmbeddedQuota::open(&dir.join("q.db"), conformance::settings()).unwrap();
        let k = QuotaKey::Hosting("mutex".into());
        let t0 = conformance::T0;
        let holder = sqlite::tests::hold_elsewhere(s.clone(), |s, held| {
            let _state = s.lock();
            held();
        });
        let task = tokio::spawn({
            let (s, k) = (s.clone(), k.clone());
            async move { s.hold(&k, "a", 1, t0).await }
        });
        until_blocking(&s, &task).await;
        assert_eq!(paths(&s), (0, 1));
        holder.release();
        assert_eq!(
            task.await.unwrap().unwrap(),
            QuotaHold::Held { used: 0, held: 1 }
        );
    }

    /// The size of the database file: in WAL mode only a checkpoint writes it.
    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    #[tokio::test]
    async fn commits_do_not_checkpoint_and_the_last_clone_does() {
        let dir = TempDir::new("quota-checkpoint");
        let path = dir.join("q.db");
        let s = EmbeddedQuota::open(&path, conformance::settings()).unwrap();
        let autocheckpoint: i64 = s
            .lock()
            .conn
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
            .unwrap();
        assert_eq!(autocheckpoint, 0);
        // Keeps the WAL open after the store's connections close (the last connection to
        // close checkpoints by itself).
        let watcher = Connection::open(&path).unwrap();
        watcher
            .query_row("SELECT count(*) FROM quota_holds", [], |_| Ok(()))
            .unwrap();
        // The schema's tables are in the WAL only: nothing has been checkpointed yet.
        let before = file_len(&path);
        let k = QuotaKey::Hosting("checkpoint".into());
        s.hold(&k, "a", 10, conformance::T0).await.unwrap();
        drop(s);
        assert!(
            file_len(&path) > before,
            "the checkpoint thread's last checkpoint"
        );
        let held: i64 = watcher
            .query_row("SELECT count(*) FROM quota_holds", [], |r| r.get(0))
            .unwrap();
        assert_eq!(held, 1);
    }

    #[tokio::test]
    async fn sweep_deletes_expired_rows() {
        let dir = TempDir::new("quota-test");
        let s = EmbeddedQuota::open(&dir.join("q.db"), conformance::settings()).unwrap();
        let k = QuotaKey::Hosting("sweep".into());
        let t0 = conformance::T0;
        s.hold(&k, "a", 10, t0).await.unwrap();
        s.commit(&k, "a", t0).await.unwrap();
        s.hold(&k, "b", 10, t0).await.unwrap();
        let rows = |s: &EmbeddedQuota| {
            let st = s.lock();
            let n = |t: &str| -> i64 {
                st.conn
                    .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                    .unwrap()
            };
            (n("quota_buckets"), n("quota_holds"))
        };
        assert_eq!(rows(&s), (1, 1));
        // Another key's write, a sweep interval later, removes both.
        let other = QuotaKey::Hosting("other".into());
        s.usage(&other, 1, t0 + SWEEP_EVERY_MS).await.unwrap();
        assert_eq!(rows(&s), (1, 1), "usage never writes");
        s.release(&other, "x").await.unwrap();
        s.refund(&other, 1, t0 + SWEEP_EVERY_MS).await.unwrap();
        assert_eq!(rows(&s), (0, 0));
    }
}
