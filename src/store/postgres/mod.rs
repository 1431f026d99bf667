//! The shared directory: one PostgreSQL database for a fleet of `postern serve` replicas and
//! the admin commands run from any machine that has the config.
//!
//! # Driver
//! `tokio-postgres` with a `deadpool-postgres` pool. tokio-postgres is the async PostgreSQL
//! client the others build on (sqlx and deadpool both wrap it or mirror it), it is plain
//! protocol code on tokio, which Postern already runs on, and it hands `LISTEN` notifications
//! out of the connection future ([`changes`]), which revocation needs. The pool is small and
//! does one job: give a task a live connection, opening a new one when the old one died (a
//! PostgreSQL restart), each wait and each connect bounded by [`DEFAULT_CONNECT_TIMEOUT`] so
//! that an AUTH during an outage gets its 454 within seconds. sqlx would bring its own
//! migrations, macros and a second set of TLS and runtime choices for no gain here.
//!
//! # The synchronous admin traits
//! [`DirectoryAdmin`] and [`DkimAdmin`] are synchronous (the CLI does one thing and exits); the
//! SQL is written once, as async functions, and the sync methods run them on a [`Runner`]: a
//! private current-thread runtime owned by the store when it is opened outside any runtime
//! (the CLI), or the caller's runtime through `block_in_place` when opened inside a
//! multi-thread one (tests, tools). The sync `postgres` crate would do the same (it wraps
//! tokio-postgres in its own runtime) but gives another client type, so every statement would
//! be written twice.
//!
//! # Layout
//! As the embedded store, file for file: `schema.rs` (versioned migrations, the schema check),
//! `addresses.rs`, `aliases.rs`, `devices.rs`, `hosting.rs`, `limits.rs`, `dkim_keys.rs` (with
//! the private keys sealed by `sealing.rs`), `changes.rs` (the `LISTEN` task), `tls.rs`
//! (TLS with libpq's modes, for every connection); and `delivery_log.rs`, the fleet's
//! delivery log (a [`crate::store::delivery_log::LogStore`]).
//!
//! # Writes, the generation and NOTIFY
//! Every write is one transaction that first bumps the single row of `directory_generation`
//! ([`Directory::generation`]). Taking that row lock first also serialises the writers, so each
//! "check, then change" below is race-free under PostgreSQL's default READ COMMITTED (a writer
//! that waited for the lock sees the other's committed rows in its next statement); the unique
//! keys and the namespace triggers stay as a second line. Every write also sends `NOTIFY
//! postern_directory` with the new generation in the same transaction, so that the
//! notification is delivered if and only if the change is committed: for a change that can
//! revoke a login (device revoke, rotate, revoke-all, address removal, alias removal) the
//! replicas' revocation watchers act on it at once, and for every change the replicas'
//! directory caches drop their answers at once.
//!
//! # Failure policy
//! As the trait contract says: every failure is [`StoreError::Backend`] and callers fail
//! closed. A database whose schema is not this Postern's is [`StoreError::Schema`], checked once
//! per store before its first query (and again after an error, since `postern migrate` may run
//! meanwhile). The URL's password, the password file and the secret keys never appear in a
//! message or a log line: errors name the server as `user@host:port/database`.

mod addresses;
mod aliases;
pub mod changes;
mod delivery_log;
mod devices;
mod dkim_keys;
mod hosting;
mod limits;
mod schema;
pub mod sealing;
#[cfg(test)]
mod tests;
pub mod tls;
#[cfg(test)]
mod tls_tests;

pub use delivery_log::PURGE_LOCK;
pub use schema::{LATEST_VERSION, Migration};
pub use sealing::SecretKeys;
pub use tls::{PgTls, PgTlsFiles};

use super::{
    ActiveDkimKey, AuthIdentity, CredentialId, Directory, DkimKeyStore, HostingAccount,
    IdentityLimits, QuotaIdentity, StoreError,
};
use super::{now_secs, to_time};
use crate::config::server_name;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// The channel of `NOTIFY` for every change (see [`Change`]).
pub const CHANNEL: &str = "postern_directory";

/// Longest wait for a pooled connection, a new connection, or a query's answer.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections per replica: AUTH and lookups are one short query each.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// How to reach the database, from `[store]`.
#[derive(Clone)]
pub struct PostgresSettings {
    /// `postgres://USER@HOST:PORT/DB` as parsed from `[store] url`; a password in it is used.
    pub pg: tokio_postgres::Config,
    /// The password when the URL has none (`[store] password_file`, else `PGPASSWORD`).
    pub password: Option<String>,
    /// The DKIM private-key sealing keys.
    pub secret_keys: SecretKeys,
    /// Connections in the pool.
    pub pool_size: usize,
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub timeout: Duration,
    /// TLS for every connection (`[store] tls`, `ca_file`, client certificate).
    pub tls: PgTls,
}

impl std::fmt::Debug for PostgresSettings {
    /// The server, TLS mode and sizes only: never the password or the secret keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let server = server_name(&self.pg);
        write!(
            f,
            "PostgresSettings({server}, tls {}, pool of {})",
            self.tls.mode().name(),
            self.pool_size
        )
    }
}

/// The PostgreSQL-backed store. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The connection settings, for the `LISTEN` connection.
    pg: tokio_postgres::Config,
    /// Its TLS.
    tls: PgTls,
    /// `user@host:port/db`, for messages.
    server: String,
    secret_keys: SecretKeys,
    timeout: Duration,
    /// The schema was found current; cleared after an error so that it is checked again.
    schema_ok: AtomicBool,
    runner: Runner,
    /// `postern serve`'s metrics, once given ([`PostgresStore::observe`]): every round trip
    /// of [`PostgresStore::bounded`] and [`PostgresStore::check`] is timed into them.
    metrics: std::sync::OnceLock<crate::metrics::Metrics>,
}

impl std::fmt::Debug for PostgresStore {
    /// The server only: never the password or the secret keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresStore({})", self.inner.server)
    }
}

/// Where the synchronous admin methods run their async statements (see the module docs).
enum Runner {
    /// A private current-thread runtime: the store was opened outside any runtime.
    Owned(tokio::runtime::Runtime),
    /// The multi-thread runtime the store was opened in.
    Ambient(tokio::runtime::Handle),
}

impl Runner {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        match self {
            Self::Owned(runtime) => runtime.block_on(future),
            Self::Ambient(handle) => tokio::task::block_in_place(|| handle.block_on(future)),
        }
    }
}

/// What kind of write a transaction is. Every write bumps the generation and sends `NOTIFY`
/// with the new generation, this kind and the database's clock at the write in Unix ms as the
/// payload (`"42 revoking 1700000000123"`): revocations must
/// reach every replica's revocation watcher at once, and every change must reach the replicas'
/// directory caches (`store/cached.rs`) at once, or a cached answer (a hosting account not
/// found a moment ago) would outlive the change until the next generation check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Adding things, limits, hosting accounts, DKIM keys.
    Plain,
    /// It can revoke a login.
    Revoking,
}

impl Change {
    /// The word in the notification's payload.
    fn label(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Revoking => "revoking",
        }
    }
}

/// The error text of a driver error with its causes (tokio-postgres's own `Display` says only
/// "db error"). Never holds the password: the driver's messages do not carry it.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl PostgresStore {
    /// Sets up the pool; connects lazily, so a replica can start while PostgreSQL is down.
    ///
    /// # Errors
    /// [`StoreError::Backend`] for a pool that cannot be built.
    pub fn open(settings: &PostgresSettings) -> Result<Self, StoreError> {
        let mut pg = settings.pg.clone();
        if pg.get_password().is_none()
            && let Some(password) = &settings.password
        {
            pg.password(password.as_bytes());
        }
        pg.connect_timeout(settings.timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("postern");
        let ssl_mode = settings.tls.ssl_mode(&pg);
        pg.ssl_mode(ssl_mode);
        let server = server_name(&pg);
        let manager = Manager::from_config(
            pg.clone(),
            settings.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .build()
            .map_err(|e| StoreError::Backend(format!("PostgreSQL {server}: {e}")))?;
        let runner = match tokio::runtime::Handle::try_current() {
            Ok(handle) => Runner::Ambient(handle),
            Err(_) => Runner::Owned(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError::Backend(format!("cannot start a runtime: {e}")))?,
            ),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                pg,
                tls: settings.tls.clone(),
                server,
                secret_keys: settings.secret_keys.clone(),
                timeout: settings.timeout,
                schema_ok: AtomicBool::new(false),
                runner,
                metrics: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Times this store's round trips into `metrics` (`postern_postgres_operation_seconds`)
    /// from now on; a store given metrics once keeps them.
    pub fn observe(&self, metrics: crate::metrics::Metrics) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// Times `call` as `operation` (one of [`crate::metrics::POSTGRES_OPERATIONS`]).
    async fn observed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = std::time::Instant::now();
        let result = call.await;
        if let Some(metrics) = self.inner.metrics.get() {
            metrics.postgres_operation(operation, result.is_ok(), start.elapsed().as_secs_f64());
        }
        result
    }

    /// `user@host:port/db`.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// The id of the secret key new DKIM seals use.
    pub fn secret_key_id(&self) -> &str {
        self.inner.secret_keys.current_id()
    }

    /// Runs an async operation for a synchronous admin method.
    fn run<T>(&self, future: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.inner.runner.block_on(future)
    }

    /// A driver error as a store error naming the server.
    fn backend(&self, e: &(dyn std::error::Error + 'static)) -> StoreError {
        self.inner.schema_ok.store(false, Ordering::Relaxed);
        StoreError::Backend(format!("PostgreSQL {}: {}", self.inner.server, describe(e)))
    }

    /// A pooled connection to a database at this Postern's schema version.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when none can be had within the timeout;
    /// [`StoreError::Schema`] for another schema version.
    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        let client = self.inner.pool.get().await.map_err(|e| self.backend(&e))?;
        if !self.inner.schema_ok.load(Ordering::Relaxed) {
            schema::check(self, &client).await?;
            self.inner.schema_ok.store(true, Ordering::Relaxed);
        }
        Ok(client)
    }

    /// Bounds a read by the timeout, so that a server that stopped answering (rather than
    /// closing) fails the call instead of holding an AUTH. The one place a serving replica's
    /// round trips pass: timed as `operation`.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        future: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.observed(operation, self.bounded_untimed(future)).await
    }

    async fn bounded_untimed<T>(
        &self,
        future: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.timeout * 2, future).await {
            Ok(result) => result,
            Err(_) => {
                self.inner.schema_ok.store(false, Ordering::Relaxed);
                Err(StoreError::Backend(format!(
                    "PostgreSQL {}: no answer within {:?}",
                    self.inner.server,
                    self.inner.timeout * 2
                )))
            }
        }
    }

    /// Opens a write transaction: bumps the generation first (which also serialises writers,
    /// see the module docs) and queues the `NOTIFY` ([`Change`]) that PostgreSQL delivers at
    /// commit only.
    async fn begin<'c>(
        &self,
        client: &'c mut deadpool_postgres::Client,
        change: Change,
    ) -> Result<deadpool_postgres::Transaction<'c>, StoreError> {
        let tx = client.transaction().await.map_err(|e| self.backend(&e))?;
        let row = one(
            self,
            &tx,
            "UPDATE directory_generation SET value = value + 1 RETURNING value",
            &[],
        )
        .await?;
        let generation: i64 = row.get(0);
        // The server's clock, not this machine's: every writer then stamps with one clock, and
        // the replicas time the apply of a revocation from it
        // (`postern_directory_revocation_apply_seconds`).
        exec(
            self,
            &tx,
            "SELECT pg_notify($1, $2 || ' ' || \
             (extract(epoch FROM clock_timestamp()) * 1000)::bigint::text)",
            &[&CHANNEL, &format!("{generation} {}", change.label())],
        )
        .await?;
        Ok(tx)
    }

    /// Commits a write transaction.
    async fn commit(&self, tx: deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
        tx.commit().await.map_err(|e| self.backend(&e))
    }

    /// Brings the database to this Postern's schema (see [`schema`]); safe to run on several
    /// machines at once.
    ///
    /// # Errors
    /// [`StoreError::Backend`]; [`StoreError::Schema`] for a database from a newer Postern.
    pub async fn migrate(&self) -> Result<Migration, StoreError> {
        let mut client = self.inner.pool.get().await.map_err(|e| self.backend(&e))?;
        let done = schema::migrate(self, &mut client).await?;
        self.inner.schema_ok.store(true, Ordering::Relaxed);
        Ok(done)
    }

    /// [`PostgresStore::migrate`] for the CLI.
    ///
    /// # Errors
    /// As [`PostgresStore::migrate`].
    pub fn migrate_blocking(&self) -> Result<Migration, StoreError> {
        self.run(self.migrate())
    }

    /// Checks that the database answers and is at this Postern's schema version.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when it does not answer; [`StoreError::Schema`] otherwise.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.inner.schema_ok.store(false, Ordering::Relaxed);
        self.observed("health", async { self.client().await.map(drop) })
            .await
    }

    /// [`PostgresStore::check`] for the CLI.
    ///
    /// # Errors
    /// As [`PostgresStore::check`].
    pub fn check_blocking(&self) -> Result<(), StoreError> {
        self.run(self.check())
    }

    /// Seals every DKIM private key under the current secret key that is sealed under another
    /// one (readable with a previous key). Returns how many were sealed again.
    ///
    /// # Errors
    /// [`StoreError::Backend`], or a key none of the configured secret keys opens.
    pub fn reencrypt_dkim_keys(&self) -> Result<usize, StoreError> {
        self.run(dkim_keys::reencrypt(self))
    }
}

/// The rows of a statement, prepared once per connection.
async fn rows(
    store: &PostgresStore,
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let statement = client
        .prepare_cached(sql)
        .await
        .map_err(|e| store.backend(&e))?;
    client
        .query(&statement, params)
        .await
        .map_err(|e| store.backend(&e))
}

/// The row of a statement that may find none.
async fn opt_row(
    store: &PostgresStore,
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    Ok(rows(store, client, sql, params).await?.into_iter().next())
}

/// The one row of a statement that always finds one.
async fn one(
    store: &PostgresStore,
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, StoreError> {
    opt_row(store, client, sql, params).await?.ok_or_else(|| {
        StoreError::Backend(format!(
            "PostgreSQL {}: a statement returned no row: {sql}",
            store.server()
        ))
    })
}

/// Runs a statement; returns the rows it changed.
async fn exec(
    store: &PostgresStore,
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = client
        .prepare_cached(sql)
        .await
        .map_err(|e| store.backend(&e))?;
    client
        .execute(&statement, params)
        .await
        .map_err(|e| store.backend(&e))
}

/// Whether a `SELECT 1 ...` finds a row.
async fn exists(
    store: &PostgresStore,
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<bool, StoreError> {
    Ok(opt_row(store, client, sql, params).await?.is_some())
}

#[async_trait::async_trait]
impl Directory for PostgresStore {
    async fn authenticate(
        &self,
        login: &str,
        password: &str,
    ) -> Result<Option<AuthIdentity>, StoreError> {
        self.bounded("login", devices::authenticate(self, login, password))
            .await
    }

    async fn live_credentials(
        &self,
        ids: &[CredentialId],
    ) -> Result<HashSet<CredentialId>, StoreError> {
        // An empty list is one query like any other: `= ANY('{}')` finds nothing.
        self.bounded("live_credentials", devices::live_credentials(self, ids))
            .await
    }

    async fn generation(&self) -> Result<u64, StoreError> {
        self.bounded("generation", async {
            let client = self.client().await?;
            let row = one(self, &client, "SELECT value FROM directory_generation", &[]).await?;
            Ok(row.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn senders_of(&self, address: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.bounded("senders", async {
            let client = self.client().await?;
            devices::senders_of(self, &client, address).await
        })
        .await
    }

    async fn hosting_account_for(
        &self,
        client: IpAddr,
    ) -> Result<Option<HostingAccount>, StoreError> {
        self.bounded("hosting_account", hosting::account_for(self, client))
            .await
    }

    async fn limits_of(
        &self,
        identity: &QuotaIdentity,
    ) -> Result<Option<IdentityLimits>, StoreError> {
        self.bounded("limits", async {
            let client = self.client().await?;
            limits::read(self, &client, identity).await
        })
        .await
    }
}

admin_by_subject!(PostgresStore, run);

#[async_trait::async_trait]
impl DkimKeyStore for PostgresStore {
    async fn active_dkim_keys(&self, domain: &str) -> Result<Vec<ActiveDkimKey>, StoreError> {
        self.bounded("dkim_keys", dkim_keys::active(self, domain))
            .await
    }
}
