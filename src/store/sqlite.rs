//! SQLite plumbing shared by the embedded stores: the directory ([`super::embedded`]), the
//! quota store ([`super::quota::embedded`]) and the delivery log ([`super::delivery_log::sqlite`]),
//! each in a file of its own.
//!
//! # WAL
//! Every file runs in WAL mode: readers (`postern serve`) never wait for a writer (the CLI, or
//! another connection) and see each committed change at their next query, and a commit appends
//! to the WAL instead of rewriting pages in place. A file on which WAL cannot be enabled (some
//! network file systems) is refused rather than used in a mode that would block readers.
//! `busy_timeout` is set before switching: the switch itself may have to wait for a lock.
//!
//! # Durability is the caller's choice
//! `PRAGMA synchronous` trades a power cut's losses against an `fsync` per commit, and the two
//! stores want opposite answers, so each passes its own [`Synchronous`]: the directory is
//! written a few times a day and a revocation lost to a power cut would bring a password back
//! (`FULL`); the quota store is written at every RCPT and a power cut only forgets a few counted
//! recipients (`NORMAL`). See each store's module documentation.
//!
//! # Migrations
//! A store's schema is a list of steps ([`Schema::migrations`]); after step `i` the file is at
//! `PRAGMA user_version = i + 1` (a new file is at 0). [`open`] applies the missing steps in one
//! `BEGIN IMMEDIATE` transaction, reading the version again once it holds the write lock, since
//! another process may have migrated meanwhile; a current file takes no write lock. A file at a
//! version newer than the list is refused rather than guessed at. A store that wants a file of
//! its own also names a [`FileKind`]: its `PRAGMA application_id` is checked before (and inside)
//! the migration and set by it, so that another kind of database is never taken over.
//!
//! # Running without waiting
//! A store's async methods run their short SQLite work inline on the calling (async) thread
//! when nothing would make them wait, and on tokio's blocking pool otherwise (each store's
//! module documentation says which methods). [`attempt_without_waiting`] is the inline half:
//! for its duration the connection's busy handler declines every wait and records that SQLite
//! asked for one; a failure after such a request is handed back as "would wait", for the
//! caller to run again on the blocking pool with the normal `busy_timeout`. A failed attempt
//! has no effect to undo: reads have none, and a write transaction that fails is rolled back
//! (rusqlite rolls back a transaction dropped uncommitted, also after a failed `COMMIT`).
//!
//! # Errors
//! Failures are an [`Error`]; each store maps them to its own error type and adds the path.

use rusqlite::{Connection, TransactionBehavior};
use std::cell::Cell;
use std::fs::Permissions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

/// A failure of the plumbing, for the caller to map to its own error type.
#[derive(Debug)]
pub(crate) enum Error {
    /// SQLite failed on a statement.
    Sqlite(rusqlite::Error),
    /// The file cannot be used: why, as a message (cannot be created or opened, WAL refused, a
    /// newer schema, another kind of database).
    Refused(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

/// `PRAGMA synchronous` in WAL mode (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Synchronous {
    /// No `fsync` per commit: a power cut may lose the commits since the last checkpoint.
    Normal,
    /// An `fsync` per commit: nothing committed is ever lost.
    Full,
}

impl Synchronous {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

/// The `PRAGMA application_id` of a store that needs a file of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileKind {
    /// The id the file carries once migrated; an empty file (id 0, no tables) is accepted too.
    pub(crate) application_id: i64,
    /// The refusal message for any other file.
    pub(crate) refusal: &'static str,
}

/// A store's schema.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schema {
    /// How messages name it: `schema version 9 is newer ...`.
    pub(crate) name: &'static str,
    /// The steps; after step `i` the file is at `user_version = i + 1`.
    pub(crate) migrations: &'static [&'static str],
    /// Checked and set when the store needs a file of its own.
    pub(crate) kind: Option<FileKind>,
}

/// How a store opens its file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// How long a statement waits for another process's write lock before failing.
    pub(crate) busy_timeout: Duration,
    /// The durability of a commit.
    pub(crate) synchronous: Synchronous,
    /// `PRAGMA foreign_keys = ON`.
    pub(crate) foreign_keys: bool,
    /// Create the file with this mode (before SQLite does, so that it never exists with a
    /// wider one); `None` leaves it to SQLite.
    pub(crate) file_mode: Option<u32>,
    /// The schema to bring the file to.
    pub(crate) schema: Schema,
}

/// Opens the database at `path`, creating its parent directory (mode 0700) and the file as
/// needed, configures the connection and brings the schema to the latest version.
///
/// # Errors
/// [`Error::Refused`] if the directory or file cannot be created or opened, WAL mode cannot be
/// enabled, the file is another kind of database or its schema is newer; [`Error::Sqlite`] if
/// a statement fails.
pub(crate) fn open(path: &Path, settings: &Settings) -> Result<Connection, Error> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(parent)
            .and_then(|()| {
                std::fs::set_permissions(parent, Permissions::from_mode(PRIVATE_DIR_MODE))
            })
            .map_err(|e| Error::Refused(format!("cannot create directory: {e}")))?;
    }
    if let Some(mode) = settings.file_mode {
        make_private_file(path, mode)?;
    }
    let mut conn =
        Connection::open(path).map_err(|e| Error::Refused(format!("cannot open: {e}")))?;
    configure(&conn, settings)?;
    migrate(&mut conn, &settings.schema)?;
    Ok(conn)
}

/// The mode of a directory [`open`] creates for a database file.
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates the database file with `mode` before SQLite does, so that it never exists with a
/// wider one, and gives an existing file (made by an older version, 0644) that mode too, as
/// well as its `-wal` and `-shm` files (SQLite gives new ones the database file's mode). The
/// mode is set explicitly as well as asked for at creation: a umask only takes bits away, and
/// an unusual one (0277) must not leave the owner unable to write.
fn make_private_file(path: &Path, mode: u32) -> Result<(), Error> {
    // An empty file is a valid empty database to SQLite.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::Refused(format!("cannot create: {e}"))),
    }
    let mut companions = [path.as_os_str().to_owned(), path.as_os_str().to_owned()];
    companions[0].push("-wal");
    companions[1].push("-shm");
    let files = std::iter::once(path.to_path_buf()).chain(companions.map(Into::into));
    for file in files {
        let current = match std::fs::metadata(&file) {
            Ok(meta) => meta.permissions().mode() & 0o7777,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::Refused(format!("cannot read the mode: {e}"))),
        };
        if current != mode {
            std::fs::set_permissions(&file, Permissions::from_mode(mode)).map_err(|e| {
                Error::Refused(format!(
                    "cannot set mode {mode:o} on {}: {e}",
                    file.display()
                ))
            })?;
        }
    }
    Ok(())
}

/// Per-connection settings. `busy_timeout` comes first: switching to WAL may need a lock.
fn configure(conn: &Connection, settings: &Settings) -> Result<(), Error> {
    conn.busy_timeout(settings.busy_timeout)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Refused(format!(
            "cannot enable WAL mode (journal_mode is {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", settings.synchronous.as_str())?;
    if settings.foreign_keys {
        conn.pragma_update(None, "foreign_keys", "ON")?;
    }
    Ok(())
}

thread_local! {
    /// Whether SQLite asked [`decline_to_wait`] for a wait on this thread since the last
    /// [`attempt_without_waiting`] began. A busy handler is a plain function (no state of its
    /// own), and it runs on the thread that runs the statement, which is the attempt's.
    static ASKED_TO_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// The busy handler of an inline attempt: never waits, remembers that it was asked.
fn decline_to_wait(_attempts: i32) -> bool {
    ASKED_TO_WAIT.set(true);
    false
}

/// What [`attempt_without_waiting`] found.
#[derive(Debug)]
pub(crate) enum Attempt<T> {
    /// The attempt ran to an answer (a success, or a failure that waiting would not change).
    Done(T),
    /// SQLite would have waited for a lock and the attempt failed: nothing was changed, run it
    /// again where waiting is allowed.
    WouldWait,
}

/// Runs `f`, which uses `conn`, with a busy handler that never waits (see the module
/// documentation), then gives `conn` back its `busy_timeout`. A success is always
/// [`Attempt::Done`], even if SQLite asked for a wait along the way: it was committed, and
/// running it again would do it twice. The caller must make `f` return an error whenever a
/// statement failed, which is what `?` does.
pub(crate) fn attempt_without_waiting<S, T, E>(
    state: &mut S,
    conn: impl Fn(&S) -> &Connection,
    busy_timeout: Duration,
    f: impl FnOnce(&mut S) -> Result<T, E>,
) -> Attempt<Result<T, E>> {
    ASKED_TO_WAIT.set(false);
    if conn(state).busy_handler(Some(decline_to_wait)).is_err() {
        return Attempt::WouldWait;
    }
    let result = f(state);
    // Only records the setting on the open connection (it cannot fail there); the handler of
    // the attempt is replaced by the normal one either way.
    let _ = conn(state).busy_timeout(busy_timeout);
    if result.is_err() && ASKED_TO_WAIT.get() {
        Attempt::WouldWait
    } else {
        Attempt::Done(result)
    }
}

/// The file's `PRAGMA user_version`.
///
/// # Errors
/// [`Error::Refused`] for a negative version.
pub(crate) fn schema_version(conn: &Connection) -> Result<usize, Error> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    usize::try_from(version)
        .map_err(|_| Error::Refused(format!("invalid schema version {version}")))
}

/// Refuses a file of another kind (when the schema names one).
fn check_kind(conn: &Connection, kind: Option<FileKind>) -> Result<(), Error> {
    let Some(kind) = kind else {
        return Ok(());
    };
    let id: i64 = conn.pragma_query_value(None, "application_id", |row| row.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if id == kind.application_id || (id == 0 && tables == 0) {
        Ok(())
    } else {
        Err(Error::Refused(kind.refusal.to_string()))
    }
}

/// Brings the schema to the latest version; a no-op (and no write lock) when it is current.
fn migrate(conn: &mut Connection, schema: &Schema) -> Result<(), Error> {
    let latest = schema.migrations.len();
    let newer = |v: usize| {
        Error::Refused(format!(
            "{} version {v} is newer than this postern understands ({latest})",
            schema.name
        ))
    };
    check_kind(conn, schema.kind)?;
    let version = schema_version(conn)?;
    if version == latest {
        return Ok(());
    }
    if version > latest {
        return Err(newer(version));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Another process may have migrated while we waited for the lock.
    check_kind(&tx, schema.kind)?;
    let version = schema_version(&tx)?;
    if version > latest {
        return Err(newer(version));
    }
    for step in &schema.migrations[version..] {
        tx.execute_batch(step)?;
    }
    if let Some(kind) = schema.kind {
        tx.pragma_update(None, "application_id", kind.application_id)?;
    }
    let latest =
        i64::try_from(latest).map_err(|_| Error::Refused("too many migrations".to_string()))?;
    tx.pragma_update(None, "user_version", latest)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::sync::mpsc;
    use std::thread::JoinHandle;

    /// A lock held on a thread of its own by [`hold_elsewhere`], until [`Self::release`].
    pub(crate) struct Holder {
        release: mpsc::Sender<()>,
        thread: JoinHandle<()>,
    }

    impl Holder {
        /// Lets the thread drop what it holds and waits for it to end.
        pub(crate) fn release(self) {
            drop(self.release);
            self.thread.join().unwrap();
        }
    }

    /// Runs `hold(&owner, held)` on a new thread and returns once it has called `held`, which
    /// blocks until [`Holder::release`]: `hold` takes a lock, then calls `held`.
    pub(crate) fn hold_elsewhere<S: Send + 'static>(owner: S, hold: fn(&S, &dyn Fn())) -> Holder {
        let (locked, is_locked) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            hold(&owner, &|| {
                locked.send(()).unwrap();
                // Err once the sender is dropped: the release.
                let _ = released.recv();
            });
        });
        is_locked.recv().unwrap();
        Holder { release, thread }
    }

    const PRIVATE: Settings = Settings {
        busy_timeout: Duration::from_millis(100),
        synchronous: Synchronous::Normal,
        foreign_keys: false,
        file_mode: Some(0o600),
        schema: Schema {
            name: "test schema",
            migrations: &["CREATE TABLE t (x INTEGER) STRICT;"],
            kind: None,
        },
    };

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn new_file_and_directory_are_private() {
        let dir = TempDir::new("sqlite-private");
        let path = dir.path().join("made/here/x.db");
        let conn = open(&path, &PRIVATE).unwrap();
        conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(path.parent().unwrap()), 0o700);
        // SQLite gives the WAL the database file's mode.
        assert_eq!(mode_of(&dir.path().join("made/here/x.db-wal")), 0o600);
    }

    #[test]
    fn existing_wide_files_are_narrowed() {
        let dir = TempDir::new("sqlite-narrow");
        let path = dir.path().join("old.db");
        let wide = Settings {
            file_mode: None,
            ..PRIVATE
        };
        let conn = open(&path, &wide).unwrap();
        conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let wal = dir.path().join("old.db-wal");
        for file in [&path, &wal] {
            std::fs::set_permissions(file, Permissions::from_mode(0o644)).unwrap();
        }
        let again = open(&path, &PRIVATE).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(&wal), 0o600);
        let rows: i64 = again
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        drop((conn, again));
    }
}
