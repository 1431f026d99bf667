//! The PostgreSQL directory's schema: versioned migrations, applied by `postern migrate`, and
//! the check every other command and `postern serve` make before their first query.
//!
//! The version is the one row of `schema_version`; [`MIGRATIONS`] lists the steps, step `i`
//! bringing the database from version `i` to `i + 1`. A migration runs in one transaction that
//! first takes `pg_advisory_xact_lock(`[`MIGRATION_LOCK`]`)`: a second `migrate` started at the
//! same time (two replicas' init containers) waits for the first to commit, then finds the
//! database current and does nothing. Because DDL is transactional in PostgreSQL, a migration
//! that fails leaves the database at its old version. Nothing migrates implicitly: `serve` and
//! the admin commands refuse a database at another version, older or newer, with one line
//! naming `postern migrate`, since a fleet being upgraded must not have each replica rewrite
//! the schema under the others.
//!
//! Tables mirror the embedded store's (`store/embedded/schema.rs`), with PostgreSQL types:
//! hosting networks as family, first and last address (`bytea`, big-endian, so the port-25
//! lookup is a range query), DKIM private keys sealed (`sealed_key`, `nonce`, `secret_key_id`;
//! see `sealing.rs`), and `directory_generation`, the counter every write bumps. Step 2 adds
//! the fleet's delivery log (`delivery_log.rs`).

use super::{PostgresStore, exec, one, opt_row};
use crate::store::StoreError;

/// The advisory lock key of `postern migrate` ("postern" in ASCII).
pub(super) const MIGRATION_LOCK: i64 = 0x0070_6f73_7465_726e;

/// Schema steps, one SQL file each in `migrations/`: after step `i` the database is at version
/// `i + 1`. A step is never edited once released; a change is a new file.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_directory.sql"),
    include_str!("migrations/0002_delivery_log.sql"),
];

/// The schema version this Postern speaks.
pub const LATEST_VERSION: usize = MIGRATIONS.len();

/// What `postern migrate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The version found.
    pub from: usize,
    /// The version left (the latest).
    pub to: usize,
}

/// The database's version: 0 when `schema_version` does not exist yet (an empty database).
async fn version(
    store: &PostgresStore,
    client: &impl deadpool_postgres::GenericClient,
) -> Result<usize, StoreError> {
    let table = one(
        store,
        client,
        "SELECT to_regclass('schema_version') IS NOT NULL",
        &[],
    )
    .await?;
    if !table.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = opt_row(store, client, "SELECT version FROM schema_version", &[]).await?;
    let version = row.map_or(0, |r| r.get::<_, i32>(0));
    usize::try_from(version)
        .map_err(|_| StoreError::Backend(format!("invalid schema version {version}")))
}

/// The refusal for a database at `found`.
fn mismatch(store: &PostgresStore, found: usize) -> StoreError {
    let why = if found < LATEST_VERSION {
        "older than"
    } else {
        "newer than"
    };
    StoreError::Schema(format!(
        "the directory at PostgreSQL {} has schema version {found}, {why} this postern's \
         ({LATEST_VERSION}): run `postern migrate --config FILE` with the newer of the two",
        store.server()
    ))
}

/// Refuses a database at another version than [`LATEST_VERSION`].
pub(super) async fn check(
    store: &PostgresStore,
    client: &impl deadpool_postgres::GenericClient,
) -> Result<(), StoreError> {
    let found = version(store, client).await?;
    if found == LATEST_VERSION {
        Ok(())
    } else {
        Err(mismatch(store, found))
    }
}

/// Applies the missing steps under the advisory lock (see the module docs).
pub(super) async fn migrate(
    store: &PostgresStore,
    client: &mut deadpool_postgres::Client,
) -> Result<Migration, StoreError> {
    let tx = client.transaction().await.map_err(|e| store.backend(&e))?;
    exec(
        store,
        &tx,
        "SELECT pg_advisory_xact_lock($1)",
        &[&MIGRATION_LOCK],
    )
    .await?;
    let from = version(store, &tx).await?;
    if from > LATEST_VERSION {
        return Err(StoreError::Schema(format!(
            "the directory at PostgreSQL {} has schema version {from}, newer than this \
             postern's ({LATEST_VERSION}): run the newer postern's `migrate`, or upgrade",
            store.server()
        )));
    }
    if from < LATEST_VERSION {
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            .await
            .map_err(|e| store.backend(&e))?;
        for step in &MIGRATIONS[from..] {
            tx.batch_execute(step)
                .await
                .map_err(|e| store.backend(&e))?;
        }
        let latest = i32::try_from(LATEST_VERSION).unwrap_or(i32::MAX);
        exec(store, &tx, "DELETE FROM schema_version", &[]).await?;
        exec(
            store,
            &tx,
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&latest],
        )
        .await?;
    }
    tx.commit().await.map_err(|e| store.backend(&e))?;
    Ok(Migration {
        from,
        to: LATEST_VERSION,
    })
}
