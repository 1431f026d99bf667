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
//! checkpoint (a few seconds). For quotas that means a few recipients forgotten, once, after a
//! power loss: an abuse brake slightly loosened, no mail lost, no password brought back. In
//! exchange a commit costs no `fsync`, which is what makes thousands of holds a second possible.
//!
//! # Atomicity and processes
//! Every change is one `BEGIN IMMEDIATE` transaction that prunes, counts, checks and writes
//! together: two processes (or connections) on the file are serialised by SQLite's write lock
//! and cannot both take the last unit of capacity. A writer waits up to [`BUSY_TIMEOUT`] for
//! the lock, then the call fails with [`QuotaError::Unavailable`]. `usage` only reads (a WAL
//! snapshot), so `postern quota show` never waits for `postern serve` nor slows it down.
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
//! One connection behind a `std::sync::Mutex`, never held across an `.await`; the async methods
//! run on tokio's blocking pool (`spawn_blocking`).

use super::{Persistence, QuotaError, QuotaHold, QuotaKey, QuotaSettings, QuotaStore, Usage};
use crate::policy::quota::{has_room, retry_at};
use crate::store::sqlite;
use rusqlite::{Connection, OptionalExtension, Params, Transaction, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long a statement waits for another process's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// The sweep of expired rows runs at most once per this much of the callers' time.
pub const SWEEP_EVERY_MS: u64 = 60_000;
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
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    conn,
                    last_sweep_ms: 0,
                }),
                path: path.to_path_buf(),
                settings,
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

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction (after pruning `key`'s expired holds and,
    /// when due, sweeping), committing if it returns `Ok`.
    fn write<T>(
        &self,
        key: &str,
        now_ms: u64,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, QuotaError>,
    ) -> Result<T, QuotaError> {
        let settings = self.inner.settings;
        let mut state = self.lock();
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
        if sweep {
            state.last_sweep_ms = now_ms;
        }
        Ok(value)
    }

    fn hold_blocking(
        &self,
        key: &str,
        hold_id: &str,
        limit: u32,
        now_ms: u64,
    ) -> Result<QuotaHold, QuotaError> {
        let settings = self.inner.settings;
        let expires = int(now_ms.saturating_add(settings.hold_ttl_ms))?;
        self.write(key, now_ms, |tx| {
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

    fn commit_blocking(&self, key: &str, hold_id: &str, now_ms: u64) -> Result<u32, QuotaError> {
        let window = self.inner.settings.window;
        self.write(key, now_ms, |tx| {
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

    fn release_blocking(&self, key: &str, hold_id: &str) -> Result<u32, QuotaError> {
        let mut state = self.lock();
        let tx = state
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let count = take_holds(&tx, key, hold_id)?;
        tx.commit().map_err(backend)?;
        Ok(count32(uint(count)?))
    }

    fn refund_blocking(&self, key: &str, n: u32, now_ms: u64) -> Result<u32, QuotaError> {
        let window = self.inner.settings.window;
        self.write(key, now_ms, |tx| {
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

    fn usage_blocking(&self, key: &str, limit: u32, now_ms: u64) -> Result<Usage, QuotaError> {
        let settings = self.inner.settings;
        let mut state = self.lock();
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

    fn ping_blocking(&self) -> Result<(), QuotaError> {
        let state = self.lock();
        state
            .conn
            .query_row("SELECT count(*) FROM quota_holds", [], |_| Ok(()))
            .map_err(backend)
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
        self.blocking(move |s| s.hold_blocking(&key, &hold_id, limit, now_ms))
            .await
    }

    async fn commit(&self, key: &QuotaKey, hold_id: &str, now_ms: u64) -> Result<u32, QuotaError> {
        let (key, hold_id) = (key.as_key(), hold_id.to_string());
        self.blocking(move |s| s.commit_blocking(&key, &hold_id, now_ms))
            .await
    }

    async fn release(&self, key: &QuotaKey, hold_id: &str) -> Result<u32, QuotaError> {
        let (key, hold_id) = (key.as_key(), hold_id.to_string());
        self.blocking(move |s| s.release_blocking(&key, &hold_id))
            .await
    }

    async fn refund(&self, key: &QuotaKey, n: u32, now_ms: u64) -> Result<u32, QuotaError> {
        let key = key.as_key();
        self.blocking(move |s| s.refund_blocking(&key, n, now_ms))
            .await
    }

    async fn usage(&self, key: &QuotaKey, limit: u32, now_ms: u64) -> Result<Usage, QuotaError> {
        let key = key.as_key();
        self.blocking(move |s| s.usage_blocking(&key, limit, now_ms))
            .await
    }

    async fn ping(&self) -> Result<(), QuotaError> {
        self.blocking(|s| s.ping_blocking()).await
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
