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
//! across an `.await`. The async [`Directory`] methods run on tokio's blocking pool
//! (`spawn_blocking`), so a lock wait or a slow disk never stalls the runtime's workers.

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
use std::sync::{Arc, Mutex, MutexGuard};
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
        self.blocking(move |store| devices::authenticate(store, &login, &password))
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
        self.blocking(move |store| devices::live_credentials(store, &ids))
            .await
    }

    async fn generation(&self) -> Result<u64, StoreError> {
        // SQLite's data_version moves when another connection commits to the file.
        self.blocking(|store| {
            store
                .lock()
                .query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0))
                .map(|v| v as u64)
                .map_err(backend)
        })
        .await
    }

    async fn senders_of(&self, address: &str) -> Result<Option<Vec<String>>, StoreError> {
        let address = address.to_string();
        self.blocking(move |store| devices::senders_of(&store.lock(), &address))
            .await
    }

    async fn hosting_account_for(
        &self,
        client: IpAddr,
    ) -> Result<Option<HostingAccount>, StoreError> {
        self.blocking(move |store| hosting::account_for(store, client))
            .await
    }

    async fn limits_of(
        &self,
        identity: &QuotaIdentity,
    ) -> Result<Option<IdentityLimits>, StoreError> {
        let identity = identity.clone();
        self.blocking(move |store| limits::read(&store.lock(), &identity))
            .await
    }
}

admin_by_subject!(EmbeddedStore, done);

#[async_trait::async_trait]
impl DkimKeyStore for EmbeddedStore {
    async fn active_dkim_keys(&self, domain: &str) -> Result<Vec<ActiveDkimKey>, StoreError> {
        let domain = domain.to_string();
        self.blocking(move |store| dkim_keys::active(store, &domain))
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
}
