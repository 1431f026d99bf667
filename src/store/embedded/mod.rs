//! The embedded store: one SQLite file (bundled SQLite, no server to run).
//!
//! # Layout
//! One file per subject, each with the SQL of its tables and the tests only SQLite can answer
//! (the behaviour every backend shares is checked by the cases in `store/conformance/`):
//! `schema.rs` (the migrations and how the file is opened), `addresses.rs`, `aliases.rs`,
//! `devices.rs` (passwords, AUTH, live credentials), `hosting.rs` (accounts, networks,
//! the port-25 lookup), `limits.rs` (daily limit overrides) and `dkim_keys.rs`. This file
//! holds the connection and maps each trait method to its subject, so that another backend
//! can mirror the layout file for file.
//!
//! # Sharing the file between processes
//! `postern serve` reads the file while `postern device ...` writes it. The database runs in
//! WAL mode, so readers never wait for a writer and see each committed change at their next
//! query (nothing is cached in memory). Every write is one `BEGIN IMMEDIATE` transaction that
//! checks and changes together, so two admin commands racing cannot both add the same alias;
//! a writer that finds the file locked waits up to [`BUSY_TIMEOUT`] before failing.
//! `synchronous = FULL`: the write volume is tiny and a revocation lost to a power cut would
//! silently bring a password back.
//!
//! # Files
//! The parent directory is created (mode 0700) if absent; the database file is created with
//! mode 0600 because it holds password hashes and DKIM private keys. SQLite gives its `-wal`
//! and `-shm` files the mode of the database file. `secure_delete` is on, so deleted rows are
//! zeroed rather than left in free pages.
//!
//! # Concurrency inside the process
//! One connection behind a `std::sync::Mutex`: queries take microseconds and are never held
//! across an `.await`. The async [`Directory`] and [`DkimKeyStore`] methods are all reads,
//! several of them per message (the limits at a transaction's first RCPT, the DKIM keys at
//! end of data), and each would cost two thread hand-offs on tokio's blocking pool
//! (`spawn_blocking` wakes a pool thread, which then wakes the runtime's worker), more than
//! the query itself. So they run inline on the calling worker when nothing can make them
//! wait: the connection's mutex is free (`try_lock`) and SQLite does not ask to wait for a
//! lock (the attempt's busy handler declines every wait: [`sqlite::attempt_without_waiting`]).
//! A read in WAL mode does not wait for writers; it can be asked to wait only in rare cases
//! (another connection recovering the WAL index, or holding the file in exclusive locking
//! mode). Otherwise (the mutex is held, or SQLite asked to wait and the read failed) the read
//! runs on the blocking pool, where it waits for the mutex and up to [`BUSY_TIMEOUT`] for
//! SQLite, so a lock wait or a slow disk never stalls the runtime's workers. A read has no
//! effect, so running it again there is safe. [`Directory::live_credentials`] always runs on
//! the blocking pool: the revocation watcher asks it every 500 ms for every live session, so
//! its cost grows with their number. The admin methods (the CLI's) are synchronous.

mod addresses;
mod aliases;
mod devices;
mod dkim_keys;
mod hosting;
mod limits;
mod schema;

use super::{
    ActiveDkimKey, AuthIdentity, CredentialId, Directory, DkimKeyStore, HostingAccount,
    IdentityLimits, QuotaIdentity, StoreError, sqlite,
};
use super::{now_secs, to_time};
use rusqlite::{Connection, OptionalExtension, Params, Transaction, TransactionBehavior};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

/// How long a statement waits for another process's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite-backed store. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// How many reads ran inline and how many on the blocking pool (for the tests).
    paths: PathCounts,
}

/// Where the async reads ran: see "Concurrency inside the process".
#[derive(Debug, Default)]
struct PathCounts {
    inline: AtomicU64,
    blocking: AtomicU64,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A failure of the shared SQLite plumbing as a store error.
fn plumbing(e: sqlite::Error) -> StoreError {
    match e {
        sqlite::Error::Sqlite(e) => backend(e),
        sqlite::Error::Refused(m) => StoreError::Backend(m),
    }
}

/// The connection itself, as [`sqlite::attempt_without_waiting`] asks for it.
fn connection(conn: &Connection) -> &Connection {
    conn
}

/// Whether `sql` (a `SELECT 1 ...`) finds a row.
fn exists(conn: &Connection, sql: &str, params: impl Params) -> Result<bool, StoreError> {
    conn.query_row(sql, params, |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
        .map_err(backend)
}

impl EmbeddedStore {
    /// Opens the store at `path`, creating the file (mode 0600), its parent directory (0700)
    /// and the schema as needed.
    ///
    /// # Errors
    /// [`StoreError::Backend`] naming the path: the directory or file cannot be created or
    /// opened, the file is not a SQLite database, WAL mode cannot be enabled, or the schema is
    /// newer than this Postern understands.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = sqlite::open(path, &schema::SQLITE).map_err(|e| match plumbing(e) {
            StoreError::Backend(m) => StoreError::Backend(format!("{}: {m}", path.display())),
            other => other,
        })?;
        // Deleted rows are overwritten, not left in free pages: a removed DKIM private key or
        // a revoked password hash does not linger in the file.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(backend)?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path: path.to_path_buf(),
                paths: PathCounts::default(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The connection. A panic while it was held leaves no half-done write behind (an open
    /// transaction rolls back when dropped), so a poisoned lock is safe to take over.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.inner
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connection if no other thread holds it (a poisoned lock is taken over, as in
    /// [`Self::lock`]).
    fn try_lock(&self) -> Option<MutexGuard<'_, Connection>> {
        match self.inner.conn.try_lock() {
            Ok(conn) => Some(conn),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Runs `f` with a `BEGIN IMMEDIATE` transaction, committing if it returns `Ok`.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let value = f(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(value)
    }

    /// What the admin methods return: a synchronous subject function's result as it is (see
    /// `admin_by_subject!`).
    fn done<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        result
    }

    /// Runs the read `f` inline if nothing makes it wait, else on the blocking pool (see
    /// "Concurrency inside the process").
    async fn read<T: Send + 'static>(
        &self,
        f: impl Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if let Some(result) = self.read_inline(&f) {
            self.inner.paths.inline.fetch_add(1, Ordering::Relaxed);
            return result;
        }
        self.inner.paths.blocking.fetch_add(1, Ordering::Relaxed);
        self.blocking(move |store| f(&store.lock())).await
    }

    /// The inline half of [`Self::read`]: `None` if the mutex is held or SQLite would wait.
    fn read_inline<T>(
        &self,
        f: &impl Fn(&Connection) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        let mut conn = self.try_lock()?;
        match sqlite::attempt_without_waiting(&mut *conn, connection, BUSY_TIMEOUT, |c| f(c)) {
            sqlite::Attempt::Done(result) => Some(result),
            sqlite::Attempt::WouldWait => None,
        }
    }

    /// Runs `f` on tokio's blocking pool with a clone of the store.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EmbeddedStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl Directory for EmbeddedStore {
    async fn authenticate(
        &self,
        login: &str,
        password: &str,
    ) -> Result<Option<AuthIdentity>, StoreError> {
        let (login, password) = (login.to_string(), password.to_string());
        self.read(move |conn| devices::authenticate(conn, &login, &password))
            .await
    }

    async fn live_credentials(
        &self,
        ids: &[CredentialId],
    ) -> Result<HashSet<CredentialId>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let ids = ids.to_vec();
        // Not inline: it is asked every 500 ms, not per message, and its cost grows with the
        // number of live sessions.
        self.blocking(move |store| devices::live_credentials(&store.lock(), &ids))
            .await
    }

    async fn generation(&self) -> Result<u64, StoreError> {
        // SQLite's data_version moves when another connection commits to the file.
        self.read(|conn| {
            conn.query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0))
                .map(|v| v as u64)
                .map_err(backend)
        })
        .await
    }

    async fn senders_of(&self, address: &str) -> Result<Option<Vec<String>>, StoreError> {
        let address = address.to_string();
        self.read(move |conn| devices::senders_of(conn, &address))
            .await
    }

    async fn hosting_account_for(
        &self,
        client: IpAddr,
    ) -> Result<Option<HostingAccount>, StoreError> {
        self.read(move |conn| hosting::account_for(conn, client))
            .await
    }

    async fn limits_of(
        &self,
        identity: &QuotaIdentity,
    ) -> Result<Option<IdentityLimits>, StoreError> {
        let identity = identity.clone();
        self.read(move |conn| limits::read(conn, &identity)).await
    }
}

admin_by_subject!(EmbeddedStore, done);

#[async_trait::async_trait]
impl DkimKeyStore for EmbeddedStore {
    async fn active_dkim_keys(&self, domain: &str) -> Result<Vec<ActiveDkimKey>, StoreError> {
        let domain = domain.to_string();
        self.read(move |conn| dkim_keys::active(conn, &domain))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;
    use crate::testutil::TempDir;

    /// The store file of a test: in a subdirectory that `open` has to create.
    pub(super) fn db(dir: &TempDir) -> PathBuf {
        dir.join("nested").join("store.db")
    }

    /// A fresh store in a directory of its own.
    pub(super) fn open(name: &str) -> (TempDir, EmbeddedStore) {
        let dir = TempDir::new(&format!("store-{name}"));
        let store = EmbeddedStore::open(&db(&dir)).unwrap();
        (dir, store)
    }

    /// Every case on a fresh file each; the second handle is a second connection on the same
    /// file, as the CLI has beside `postern serve`.
    struct Embedded;

    impl conformance::Backend for Embedded {
        type Store = EmbeddedStore;
        type Guard = TempDir;

        fn open(&self, case: &str) -> conformance::Fixture<EmbeddedStore, TempDir> {
            let (dir, store) = open(case);
            let other = EmbeddedStore::open(&db(&dir)).unwrap();
            conformance::Fixture {
                store,
                other,
                guard: dir,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn directory_conformance() {
        conformance::run_all(&Embedded).await;
    }

    /// A store with one address (plan starter) and the identity of its limits.
    fn with_alice(name: &str) -> (TempDir, EmbeddedStore, QuotaIdentity) {
        use crate::store::DirectoryAdmin;
        let (dir, store) = open(name);
        let alice: crate::policy::EmailAddress = "alice@example.org".parse().unwrap();
        store
            .add_address(&alice, crate::policy::Plan::Starter)
            .unwrap();
        (dir, store, QuotaIdentity::Address(alice.to_string()))
    }

    fn alice_limits() -> Option<IdentityLimits> {
        Some(IdentityLimits {
            plan: Some(crate::policy::Plan::Starter),
            daily_override: None,
        })
    }

    /// (inline, blocking) reads so far.
    fn paths(store: &EmbeddedStore) -> (u64, u64) {
        let p = &store.inner.paths;
        (
            p.inline.load(Ordering::Relaxed),
            p.blocking.load(Ordering::Relaxed),
        )
    }

    /// Another connection holding the file's write lock.
    fn hold_write_lock(path: &Path) -> Connection {
        let other = Connection::open(path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        other
    }

    /// What [`EmbeddedStore::read`] runs in the two tests below: the limits, after taking and
    /// giving back the write lock. A directory read in WAL mode is asked to wait only in cases
    /// a test cannot bring about on purpose (another connection recovering the WAL index), so
    /// the lock stands in for them: it goes through the same busy handler.
    fn limits_after_the_write_lock(
        conn: &Connection,
        identity: &QuotaIdentity,
    ) -> Result<Option<IdentityLimits>, StoreError> {
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(backend)?;
        limits::read(conn, identity)
    }

    /// Polls (yielding) until `store` has sent a read to the blocking pool or `task` ended.
    async fn until_blocking<T>(store: &EmbeddedStore, task: &tokio::task::JoinHandle<T>) {
        while paths(store).1 == 0 && !task.is_finished() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_run_inline_while_another_connection_writes() {
        let (dir, store, alice) = with_alice("inline-read");
        let other = hold_write_lock(&db(&dir));
        // WAL: the writer's lock does not concern readers.
        assert_eq!(store.limits_of(&alice).await.unwrap(), alice_limits());
        assert!(
            store
                .active_dkim_keys("example.org")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(paths(&store), (2, 0));
        other.execute_batch("ROLLBACK").unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_asked_to_wait_goes_to_the_blocking_pool_and_answers_once_free() {
        let (dir, store, alice) = with_alice("busy-read");
        let other = hold_write_lock(&db(&dir));
        let task = tokio::spawn({
            let (store, alice) = (store.clone(), alice.clone());
            async move {
                store
                    .read(move |conn| limits_after_the_write_lock(conn, &alice))
                    .await
            }
        });
        until_blocking(&store, &task).await;
        assert_eq!(paths(&store), (0, 1));
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(task.await.unwrap().unwrap(), alice_limits());
        // Free again: inline.
        let again = store
            .read(move |conn| limits_after_the_write_lock(conn, &alice))
            .await;
        assert_eq!(again.unwrap(), alice_limits());
        assert_eq!(paths(&store), (1, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_stays_locked_fails_after_the_busy_timeout() {
        let (dir, store, alice) = with_alice("locked-read");
        let other = hold_write_lock(&db(&dir));
        let e = store
            .read(move |conn| limits_after_the_write_lock(conn, &alice))
            .await
            .unwrap_err();
        assert_eq!(e, StoreError::Backend("database is locked".to_string()));
        assert_eq!(paths(&store), (0, 1));
        other.execute_batch("ROLLBACK").unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_mutex_sends_the_read_to_the_blocking_pool() {
        let (_dir, store, alice) = with_alice("held-mutex");
        let holder = sqlite::tests::hold_elsewhere(store.clone(), |store, held| {
            let _conn = store.lock();
            held();
        });
        let task = tokio::spawn({
            let (store, alice) = (store.clone(), alice.clone());
            async move { store.limits_of(&alice).await }
        });
        until_blocking(&store, &task).await;
        assert_eq!(paths(&store), (0, 1));
        holder.release();
        assert_eq!(task.await.unwrap().unwrap(), alice_limits());
    }
}
