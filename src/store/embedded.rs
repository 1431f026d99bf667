//! The embedded store: one SQLite file (bundled SQLite, no server to run).
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
//! # Schema
//! Created and migrated at open (the SQLite plumbing shared with the quota store, in
//! `store/sqlite.rs`), tracked by `PRAGMA user_version`: the `MIGRATIONS` table
//! lists the steps, each applied once, in one transaction. A file from a newer Postern is
//! refused rather than guessed at. Triggers also keep addresses and aliases in one namespace,
//! as a second line behind the checks in each transaction.
//!
//! Hosting networks are kept with their first and last address as big-endian BLOBs, so that
//! the port-25 lookup (which account's network contains this client, longest prefix first) is
//! one indexed range query that also fetches the account's domains, in one snapshot. Limit
//! overrides are a nullable `daily_limit` column of `addresses` and `hosting_accounts`, so they
//! disappear with their identity.
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

use super::accounts::{check_hosting_network, parse_hosting_domain};
use super::{
    AddressInfo, AliasInfo, AuthIdentity, CredentialId, DeviceInfo, Directory, DirectoryAdmin,
    HostingAccount, HostingAccountInfo, IdentityLimits, LimitOverride, QuotaDirectory,
    QuotaIdentity, StoreError, address_not_found, check_device_name, check_hosting_name,
    device_not_found, quoted, sqlite,
};
use crate::policy::password;
use crate::policy::{DevicePassword, EmailAddress, Plan, parse_address};
use ipnet::IpNet;
use rusqlite::{Connection, OptionalExtension, Params, Transaction, TransactionBehavior, params};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a statement waits for another process's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema steps; after step `i` the file is at `user_version = i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: addresses, aliases, devices.
    r#"
    CREATE TABLE addresses (
        address    TEXT NOT NULL PRIMARY KEY,
        plan       TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE aliases (
        alias      TEXT NOT NULL PRIMARY KEY,
        address    TEXT NOT NULL REFERENCES addresses(address) ON DELETE CASCADE,
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX aliases_by_address ON aliases(address);

    CREATE TABLE devices (
        address       TEXT NOT NULL REFERENCES addresses(address) ON DELETE CASCADE,
        name          TEXT NOT NULL,
        credential_id TEXT NOT NULL UNIQUE,
        password_hash BLOB NOT NULL CHECK (length(password_hash) = 32),
        created_at    INTEGER NOT NULL,
        PRIMARY KEY (address, name)
    ) STRICT;

    CREATE TRIGGER alias_is_not_an_address BEFORE INSERT ON aliases
    WHEN EXISTS (SELECT 1 FROM addresses WHERE address = NEW.alias)
    BEGIN SELECT RAISE(ABORT, 'alias collides with an address'); END;

    CREATE TRIGGER address_is_not_an_alias BEFORE INSERT ON addresses
    WHEN EXISTS (SELECT 1 FROM aliases WHERE alias = NEW.address)
    BEGIN SELECT RAISE(ABORT, 'address collides with an alias'); END;
    "#,
    // 2: daily limit overrides, hosting accounts with their networks and domains.
    // A network is kept as text (for listing) and as its first and last address, big-endian
    // (4 or 16 bytes), so that "which networks contain this IP" is a range query: BLOBs of one
    // length compare like the numbers they encode. The primary key makes a network (address
    // and prefix length) belong to one account at most.
    r#"
    ALTER TABLE addresses ADD COLUMN
        daily_limit INTEGER CHECK (daily_limit BETWEEN 1 AND 4294967295);

    CREATE TABLE hosting_accounts (
        name        TEXT NOT NULL PRIMARY KEY,
        daily_limit INTEGER CHECK (daily_limit BETWEEN 1 AND 4294967295),
        created_at  INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE hosting_networks (
        account TEXT NOT NULL REFERENCES hosting_accounts(name) ON DELETE CASCADE,
        network TEXT NOT NULL,
        family  INTEGER NOT NULL CHECK (family IN (4, 6)),
        first   BLOB NOT NULL,
        last    BLOB NOT NULL,
        prefix  INTEGER NOT NULL,
        PRIMARY KEY (family, first, prefix)
    ) STRICT;
    CREATE INDEX hosting_networks_by_account ON hosting_networks(account);

    CREATE TABLE hosting_domains (
        account TEXT NOT NULL REFERENCES hosting_accounts(name) ON DELETE CASCADE,
        domain  TEXT NOT NULL,
        PRIMARY KEY (account, domain)
    ) STRICT;
    "#,
    // 3: DKIM keys. `key_id` is random and names one key for the signer's parse cache; at most
    // one active key per domain and algorithm (the partial unique index), so a domain signs
    // with one RSA key, one Ed25519 key, or both.
    r#"
    CREATE TABLE dkim_keys (
        domain       TEXT NOT NULL,
        selector     TEXT NOT NULL,
        algorithm    TEXT NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
        bits         INTEGER NOT NULL,
        key_id       TEXT NOT NULL UNIQUE,
        private_key  BLOB NOT NULL,
        public_key   TEXT NOT NULL,
        active       INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
        created_at   INTEGER NOT NULL,
        activated_at INTEGER,
        PRIMARY KEY (domain, selector)
    ) STRICT;
    CREATE UNIQUE INDEX dkim_one_active_key ON dkim_keys(domain, algorithm) WHERE active = 1;
    "#,
];

/// How the file is opened: see the module documentation.
const SQLITE: sqlite::Settings = sqlite::Settings {
    busy_timeout: BUSY_TIMEOUT,
    synchronous: sqlite::Synchronous::Full,
    foreign_keys: true,
    file_mode: Some(0o600),
    schema: sqlite::Schema {
        name: "schema",
        migrations: MIGRATIONS,
        kind: None,
    },
};

/// Credential ids per `IN (...)` query of [`Directory::live_credentials`]; well under SQLite's
/// limit on bound parameters.
const LIVE_BATCH: usize = 500;

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

pub(super) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A failure of the shared SQLite plumbing as a store error.
fn plumbing(e: sqlite::Error) -> StoreError {
    match e {
        sqlite::Error::Sqlite(e) => backend(e),
        sqlite::Error::Refused(m) => StoreError::Backend(m),
    }
}

pub(super) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub(super) fn to_time(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn to_hash(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Backend("a stored password hash is not 32 bytes".to_string()))
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
        let conn = sqlite::open(path, &SQLITE).map_err(|e| match plumbing(e) {
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
    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.inner
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` with a `BEGIN IMMEDIATE` transaction, committing if it returns `Ok`.
    pub(super) fn write<T>(
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

    fn authenticate_blocking(
        &self,
        login: &str,
        password: &str,
    ) -> Result<Option<AuthIdentity>, StoreError> {
        let Ok(address) = parse_address(login) else {
            return Ok(None);
        };
        let conn = self.lock();
        let devices = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name, credential_id, password_hash FROM devices
                     WHERE address = ?1 ORDER BY name",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([address.as_str()], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
        };
        if devices.is_empty() {
            // Same work as a wrong password, so timing does not tell which addresses exist.
            let _ = password::verify(password, &[0u8; 32]);
            return Ok(None);
        }
        // Every device is checked, without stopping at the first match.
        let mut matched = None;
        for (i, (_, _, stored)) in devices.iter().enumerate() {
            let ok = password::verify(password, &to_hash(stored)?);
            if ok && matched.is_none() {
                matched = Some(i);
            }
        }
        let Some(i) = matched else {
            return Ok(None);
        };
        let (device, credential, _) = devices.into_iter().nth(i).expect("index from enumerate");
        let mut senders = vec![address.as_str().to_string()];
        senders.extend(aliases_of(&conn, address.as_str())?);
        Ok(Some(AuthIdentity {
            address: address.into_string(),
            device,
            credential: CredentialId(credential),
            senders,
        }))
    }

    fn live_credentials_blocking(
        &self,
        ids: &[CredentialId],
    ) -> Result<HashSet<CredentialId>, StoreError> {
        let mut live = HashSet::new();
        let conn = self.lock();
        for batch in ids.chunks(LIVE_BATCH) {
            let placeholders = vec!["?"; batch.len()].join(",");
            let sql = format!(
                "SELECT credential_id FROM devices WHERE credential_id IN ({placeholders})"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt
                .query_map(
                    rusqlite::params_from_iter(batch.iter().map(|id| id.0.as_str())),
                    |row| row.get::<_, String>(0),
                )
                .map_err(backend)?;
            for id in rows {
                live.insert(CredentialId(id.map_err(backend)?));
            }
        }
        Ok(live)
    }
}

fn aliases_of(conn: &Connection, address: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT alias FROM aliases WHERE address = ?1 ORDER BY alias")
        .map_err(backend)?;
    let rows = stmt
        .query_map([address], |row| row.get::<_, String>(0))
        .map_err(backend)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(backend)
}

/// Whether `sql` (a `SELECT 1 ...`) finds a row.
fn exists(conn: &Connection, sql: &str, params: impl Params) -> Result<bool, StoreError> {
    conn.query_row(sql, params, |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
        .map_err(backend)
}

fn is_address(conn: &Connection, address: &str) -> Result<bool, StoreError> {
    exists(
        conn,
        "SELECT 1 FROM addresses WHERE address = ?1",
        [address],
    )
}

fn is_alias(conn: &Connection, alias: &str) -> Result<bool, StoreError> {
    exists(conn, "SELECT 1 FROM aliases WHERE alias = ?1", [alias])
}

/// `AlreadyExists` if `name` is taken as an address or an alias.
fn ensure_name_free(conn: &Connection, name: &str) -> Result<(), StoreError> {
    if is_address(conn, name)? {
        return Err(StoreError::AlreadyExists {
            what: format!("an address {}", quoted(name)),
        });
    }
    if is_alias(conn, name)? {
        return Err(StoreError::AlreadyExists {
            what: format!("an alias {}", quoted(name)),
        });
    }
    Ok(())
}

fn ensure_address(conn: &Connection, address: &str) -> Result<(), StoreError> {
    if is_address(conn, address)? {
        Ok(())
    } else {
        Err(address_not_found(address))
    }
}

fn new_credential() -> Result<(DevicePassword, CredentialId), StoreError> {
    let password = password::try_generate()
        .map_err(|e| StoreError::Backend(format!("OS random generator: {e}")))?;
    Ok((password, CredentialId::random()?))
}

/// `NotFound` for a hosting account.
fn hosting_not_found(name: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("hosting account {}", quoted(name)),
    }
}

/// Family, first and last address of a network as stored: 4 or 16 big-endian bytes.
fn network_key(network: &IpNet) -> (i64, Vec<u8>, Vec<u8>) {
    match network {
        IpNet::V4(n) => (
            4,
            n.network().octets().to_vec(),
            n.broadcast().octets().to_vec(),
        ),
        IpNet::V6(n) => (
            6,
            n.network().octets().to_vec(),
            n.broadcast().octets().to_vec(),
        ),
    }
}

/// Family and bytes of a client address, IPv4-mapped IPv6 taken as IPv4.
fn ip_key(ip: IpAddr) -> (i64, Vec<u8>) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (4, v4.octets().to_vec()),
        IpAddr::V6(v6) => (6, v6.octets().to_vec()),
    }
}

fn stored_network(text: &str) -> Result<IpNet, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Backend(format!("a stored hosting network is invalid: {text:?}")))
}

fn stored_limit(value: Option<i64>) -> Result<Option<u32>, StoreError> {
    value
        .map(|v| {
            u32::try_from(v)
                .map_err(|_| StoreError::Backend(format!("a stored daily limit is invalid: {v}")))
        })
        .transpose()
}

fn stored_plan(address: &str, plan: &str) -> Result<Plan, StoreError> {
    plan.parse::<Plan>()
        .map_err(|e| StoreError::Backend(format!("address {}: {e}", quoted(address))))
}

/// The table and key column holding an identity's `daily_limit`.
fn limit_table(identity: &QuotaIdentity) -> (&'static str, &'static str) {
    match identity {
        QuotaIdentity::Address(_) => ("addresses", "address"),
        QuotaIdentity::Hosting(_) => ("hosting_accounts", "name"),
    }
}

/// `NotFound` naming the identity, in the words of the other store errors.
fn identity_not_found(identity: &QuotaIdentity) -> StoreError {
    StoreError::NotFound {
        what: identity.to_string(),
    }
}

/// Plan and override of an identity; `None` if it does not exist.
fn read_limits(
    conn: &Connection,
    identity: &QuotaIdentity,
) -> Result<Option<IdentityLimits>, StoreError> {
    match identity {
        QuotaIdentity::Address(address) => {
            let row = conn
                .prepare_cached("SELECT plan, daily_limit FROM addresses WHERE address = ?1")
                .map_err(backend)?
                .query_row([address], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Option<i64>>(1)?))
                })
                .optional()
                .map_err(backend)?;
            row.map(|(plan, daily)| {
                Ok(IdentityLimits {
                    plan: Some(stored_plan(address, &plan)?),
                    daily_override: stored_limit(daily)?,
                })
            })
            .transpose()
        }
        QuotaIdentity::Hosting(name) => {
            let row = conn
                .prepare_cached("SELECT daily_limit FROM hosting_accounts WHERE name = ?1")
                .map_err(backend)?
                .query_row([name], |row| row.get::<_, Option<i64>>(0))
                .optional()
                .map_err(backend)?;
            row.map(|daily| {
                Ok(IdentityLimits {
                    plan: None,
                    daily_override: stored_limit(daily)?,
                })
            })
            .transpose()
        }
    }
}

/// Sets or clears (`None`) the override of an existing identity; returns the previous one.
fn write_limit(
    tx: &Transaction<'_>,
    identity: &QuotaIdentity,
    daily: Option<u32>,
) -> Result<Option<u32>, StoreError> {
    let previous = read_limits(tx, identity)?.ok_or_else(|| identity_not_found(identity))?;
    let (table, key) = limit_table(identity);
    tx.execute(
        &format!("UPDATE {table} SET daily_limit = ?2 WHERE {key} = ?1"),
        params![identity.name(), daily.map(i64::from)],
    )
    .map_err(backend)?;
    Ok(previous.daily_override)
}

impl EmbeddedStore {
    /// Runs `f` on tokio's blocking pool with a clone of the store.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EmbeddedStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    fn hosting_account_for_blocking(
        &self,
        client: IpAddr,
    ) -> Result<Option<HostingAccount>, StoreError> {
        let (family, ip) = ip_key(client);
        let conn = self.lock();
        // One statement, so the account and its domains come from one snapshot.
        let mut stmt = conn
            .prepare_cached(
                "WITH best AS (
                     SELECT account, network FROM hosting_networks
                     WHERE family = ?1 AND first <= ?2 AND last >= ?2
                     ORDER BY prefix DESC LIMIT 1
                 )
                 SELECT best.account, best.network, d.domain
                 FROM best JOIN hosting_domains d ON d.account = best.account
                 ORDER BY d.domain",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![family, ip], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(backend)?;
        let mut found: Option<HostingAccount> = None;
        for row in rows {
            let (name, network, domain) = row.map_err(backend)?;
            match &mut found {
                Some(account) => account.domains.push(domain),
                None => {
                    found = Some(HostingAccount {
                        name,
                        domains: vec![domain],
                        network: stored_network(&network)?,
                    });
                }
            }
        }
        Ok(found)
    }
}

impl DirectoryAdmin for EmbeddedStore {
    fn add_address(&self, address: &EmailAddress, plan: Plan) -> Result<(), StoreError> {
        self.write(|tx| {
            ensure_name_free(tx, address.as_str())?;
            tx.execute(
                "INSERT INTO addresses (address, plan, created_at) VALUES (?1, ?2, ?3)",
                params![address.as_str(), plan.as_str(), now_secs()],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn remove_address(&self, address: &EmailAddress) -> Result<(), StoreError> {
        let address = address.as_str();
        self.write(|tx| {
            ensure_address(tx, address)?;
            // Explicit rather than relying on ON DELETE CASCADE alone.
            tx.execute("DELETE FROM devices WHERE address = ?1", [address])
                .map_err(backend)?;
            tx.execute("DELETE FROM aliases WHERE address = ?1", [address])
                .map_err(backend)?;
            tx.execute("DELETE FROM addresses WHERE address = ?1", [address])
                .map_err(backend)?;
            Ok(())
        })
    }

    fn list_addresses(&self) -> Result<Vec<AddressInfo>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT address, plan, created_at FROM addresses ORDER BY address")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (address, plan, created_at) = row.map_err(backend)?;
            let plan = stored_plan(&address, &plan)?;
            out.push(AddressInfo {
                address,
                plan,
                created_at: to_time(created_at),
            });
        }
        Ok(out)
    }

    fn add_alias(&self, alias: &EmailAddress, address: &EmailAddress) -> Result<(), StoreError> {
        self.write(|tx| {
            ensure_address(tx, address.as_str())?;
            ensure_name_free(tx, alias.as_str())?;
            tx.execute(
                "INSERT INTO aliases (alias, address, created_at) VALUES (?1, ?2, ?3)",
                params![alias.as_str(), address.as_str(), now_secs()],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn remove_alias(&self, alias: &EmailAddress) -> Result<(), StoreError> {
        self.write(|tx| {
            let removed = tx
                .execute("DELETE FROM aliases WHERE alias = ?1", [alias.as_str()])
                .map_err(backend)?;
            if removed == 0 {
                return Err(StoreError::NotFound {
                    what: format!("alias {}", quoted(alias.as_str())),
                });
            }
            Ok(())
        })
    }

    fn list_aliases(&self, address: Option<&EmailAddress>) -> Result<Vec<AliasInfo>, StoreError> {
        let conn = self.lock();
        let to_info = |row: &rusqlite::Row<'_>| {
            Ok(AliasInfo {
                alias: row.get(0)?,
                address: row.get(1)?,
            })
        };
        match address {
            Some(address) => {
                ensure_address(&conn, address.as_str())?;
                let mut stmt = conn
                    .prepare("SELECT alias, address FROM aliases WHERE address = ?1 ORDER BY alias")
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([address.as_str()], to_info)
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            }
            None => {
                let mut stmt = conn
                    .prepare("SELECT alias, address FROM aliases ORDER BY alias")
                    .map_err(backend)?;
                let rows = stmt.query_map([], to_info).map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)
            }
        }
    }

    fn add_device(&self, address: &EmailAddress, name: &str) -> Result<DevicePassword, StoreError> {
        check_device_name(name)?;
        let address = address.as_str();
        self.write(|tx| {
            ensure_address(tx, address)?;
            if exists(
                tx,
                "SELECT 1 FROM devices WHERE address = ?1 AND name = ?2",
                [address, name],
            )? {
                return Err(StoreError::AlreadyExists {
                    what: format!("device {} of address {}", quoted(name), quoted(address)),
                });
            }
            let (password, credential) = new_credential()?;
            tx.execute(
                "INSERT INTO devices (address, name, credential_id, password_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    address,
                    name,
                    credential.0,
                    &password.hash()[..],
                    now_secs()
                ],
            )
            .map_err(backend)?;
            Ok(password)
        })
    }

    fn list_devices(&self, address: &EmailAddress) -> Result<Vec<DeviceInfo>, StoreError> {
        let conn = self.lock();
        ensure_address(&conn, address.as_str())?;
        let mut stmt = conn
            .prepare("SELECT name, created_at FROM devices WHERE address = ?1 ORDER BY name")
            .map_err(backend)?;
        let rows = stmt
            .query_map([address.as_str()], |row| {
                Ok(DeviceInfo {
                    name: row.get(0)?,
                    created_at: to_time(row.get(1)?),
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn rotate_device(
        &self,
        address: &EmailAddress,
        name: &str,
    ) -> Result<DevicePassword, StoreError> {
        let address = address.as_str();
        self.write(|tx| {
            ensure_address(tx, address)?;
            let (password, credential) = new_credential()?;
            let changed = tx
                .execute(
                    "UPDATE devices SET password_hash = ?3, credential_id = ?4
                     WHERE address = ?1 AND name = ?2",
                    params![address, name, &password.hash()[..], credential.0],
                )
                .map_err(backend)?;
            if changed == 0 {
                return Err(device_not_found(address, name));
            }
            Ok(password)
        })
    }

    fn revoke_device(&self, address: &EmailAddress, name: &str) -> Result<(), StoreError> {
        let address = address.as_str();
        self.write(|tx| {
            ensure_address(tx, address)?;
            let removed = tx
                .execute(
                    "DELETE FROM devices WHERE address = ?1 AND name = ?2",
                    [address, name],
                )
                .map_err(backend)?;
            if removed == 0 {
                return Err(device_not_found(address, name));
            }
            Ok(())
        })
    }

    fn revoke_all(&self, address: &EmailAddress) -> Result<usize, StoreError> {
        let address = address.as_str();
        self.write(|tx| {
            ensure_address(tx, address)?;
            tx.execute("DELETE FROM devices WHERE address = ?1", [address])
                .map_err(backend)
        })
    }

    fn add_hosting_account(
        &self,
        name: &str,
        networks: &[IpNet],
        domains: &[String],
    ) -> Result<(), StoreError> {
        check_hosting_name(name)?;
        if networks.is_empty() {
            return Err(StoreError::Invalid(format!(
                "hosting account {}: at least one network is needed",
                quoted(name)
            )));
        }
        if domains.is_empty() {
            return Err(StoreError::Invalid(format!(
                "hosting account {}: at least one domain is needed",
                quoted(name)
            )));
        }
        let networks = networks
            .iter()
            .map(|n| check_hosting_network(*n))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let domains = domains
            .iter()
            .map(|d| parse_hosting_domain(d))
            .collect::<Result<BTreeSet<_>, _>>()?;
        self.write(|tx| {
            if exists(tx, "SELECT 1 FROM hosting_accounts WHERE name = ?1", [name])? {
                return Err(StoreError::AlreadyExists {
                    what: format!("hosting account {}", quoted(name)),
                });
            }
            tx.execute(
                "INSERT INTO hosting_accounts (name, created_at) VALUES (?1, ?2)",
                params![name, now_secs()],
            )
            .map_err(backend)?;
            for network in &networks {
                let (family, first, last) = network_key(network);
                let prefix = i64::from(network.prefix_len());
                let owner = tx
                    .query_row(
                        "SELECT account FROM hosting_networks
                         WHERE family = ?1 AND first = ?2 AND prefix = ?3",
                        params![family, first, prefix],
                        |row| row.get::<_, String>(0),
                    )
                    .optional()
                    .map_err(backend)?;
                if let Some(owner) = owner {
                    return Err(StoreError::AlreadyExists {
                        what: format!(
                            "network {network} (same prefix length) of hosting account {}",
                            quoted(&owner)
                        ),
                    });
                }
                tx.execute(
                    "INSERT INTO hosting_networks (account, network, family, first, last, prefix)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![name, network.to_string(), family, first, last, prefix],
                )
                .map_err(backend)?;
            }
            for domain in &domains {
                tx.execute(
                    "INSERT INTO hosting_domains (account, domain) VALUES (?1, ?2)",
                    params![name, domain],
                )
                .map_err(backend)?;
            }
            Ok(())
        })
    }

    fn remove_hosting_account(&self, name: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            // Explicit rather than relying on ON DELETE CASCADE alone.
            tx.execute("DELETE FROM hosting_networks WHERE account = ?1", [name])
                .map_err(backend)?;
            tx.execute("DELETE FROM hosting_domains WHERE account = ?1", [name])
                .map_err(backend)?;
            let removed = tx
                .execute("DELETE FROM hosting_accounts WHERE name = ?1", [name])
                .map_err(backend)?;
            if removed == 0 {
                return Err(hosting_not_found(name));
            }
            Ok(())
        })
    }

    fn list_hosting_accounts(&self) -> Result<Vec<HostingAccountInfo>, StoreError> {
        let mut conn = self.lock();
        // A read transaction: the three queries see one snapshot.
        let tx = conn.transaction().map_err(backend)?;
        let mut accounts = BTreeMap::new();
        {
            let mut stmt = tx
                .prepare("SELECT name, daily_limit, created_at FROM hosting_accounts")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Option<i64>>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .map_err(backend)?;
            for row in rows {
                let (name, daily, created_at) = row.map_err(backend)?;
                accounts.insert(
                    name.clone(),
                    HostingAccountInfo {
                        name,
                        networks: Vec::new(),
                        domains: Vec::new(),
                        daily_limit: stored_limit(daily)?,
                        created_at: to_time(created_at),
                    },
                );
            }
        }
        let networks = string_pairs(
            &tx,
            "SELECT account, network FROM hosting_networks ORDER BY family, first, prefix",
        )?;
        for (account, network) in networks {
            if let Some(info) = accounts.get_mut(&account) {
                info.networks.push(stored_network(&network)?);
            }
        }
        let domains = string_pairs(
            &tx,
            "SELECT account, domain FROM hosting_domains ORDER BY domain",
        )?;
        for (account, domain) in domains {
            if let Some(info) = accounts.get_mut(&account) {
                info.domains.push(domain);
            }
        }
        Ok(accounts.into_values().collect())
    }

    fn set_limit(&self, identity: &QuotaIdentity, daily: u32) -> Result<Option<u32>, StoreError> {
        if daily == 0 {
            return Err(StoreError::Invalid(
                "a daily limit must be at least 1 recipient".to_string(),
            ));
        }
        self.write(|tx| write_limit(tx, identity, Some(daily)))
    }

    fn clear_limit(&self, identity: &QuotaIdentity) -> Result<Option<u32>, StoreError> {
        self.write(|tx| write_limit(tx, identity, None))
    }

    fn identity_limits(&self, identity: &QuotaIdentity) -> Result<IdentityLimits, StoreError> {
        read_limits(&self.lock(), identity)?.ok_or_else(|| identity_not_found(identity))
    }

    fn list_limits(&self) -> Result<Vec<LimitOverride>, StoreError> {
        let conn = self.lock();
        let mut out = Vec::new();
        for (sql, make) in [
            (
                "SELECT address, daily_limit FROM addresses
                 WHERE daily_limit IS NOT NULL ORDER BY address",
                QuotaIdentity::Address as fn(String) -> QuotaIdentity,
            ),
            (
                "SELECT name, daily_limit FROM hosting_accounts
                 WHERE daily_limit IS NOT NULL ORDER BY name",
                QuotaIdentity::Hosting,
            ),
        ] {
            let mut stmt = conn.prepare(sql).map_err(backend)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Option<i64>>(1)?))
                })
                .map_err(backend)?;
            for row in rows {
                let (name, daily) = row.map_err(backend)?;
                if let Some(daily) = stored_limit(daily)? {
                    out.push(LimitOverride {
                        identity: make(name),
                        daily,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl QuotaDirectory for EmbeddedStore {
    async fn hosting_account_for(
        &self,
        client: IpAddr,
    ) -> Result<Option<HostingAccount>, StoreError> {
        self.blocking(move |store| store.hosting_account_for_blocking(client))
            .await
    }

    async fn plan_of(&self, address: &str) -> Result<Option<Plan>, StoreError> {
        let identity = QuotaIdentity::Address(address.to_string());
        self.blocking(move |store| {
            Ok(read_limits(&store.lock(), &identity)?.and_then(|limits| limits.plan))
        })
        .await
    }

    async fn limit_override(&self, identity: &QuotaIdentity) -> Result<Option<u32>, StoreError> {
        let identity = identity.clone();
        self.blocking(move |store| {
            Ok(read_limits(&store.lock(), &identity)?.and_then(|limits| limits.daily_override))
        })
        .await
    }

    async fn limits_of(
        &self,
        identity: &QuotaIdentity,
    ) -> Result<Option<IdentityLimits>, StoreError> {
        let identity = identity.clone();
        self.blocking(move |store| read_limits(&store.lock(), &identity))
            .await
    }
}

#[async_trait::async_trait]
impl Directory for EmbeddedStore {
    async fn authenticate(
        &self,
        login: &str,
        password: &str,
    ) -> Result<Option<AuthIdentity>, StoreError> {
        let store = self.clone();
        let (login, password) = (login.to_string(), password.to_string());
        tokio::task::spawn_blocking(move || store.authenticate_blocking(&login, &password))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    async fn live_credentials(
        &self,
        ids: &[CredentialId],
    ) -> Result<HashSet<CredentialId>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let store = self.clone();
        let ids = ids.to_vec();
        tokio::task::spawn_blocking(move || store.live_credentials_blocking(&ids))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

/// The rows of a two-text-column query.
fn string_pairs(conn: &Connection, sql: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare(sql).map_err(backend)?;
    let rows = stmt
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::TempDir;
    use std::os::unix::fs::PermissionsExt;

    /// The store file of a test: in a subdirectory that `open` has to create.
    fn db(dir: &TempDir) -> PathBuf {
        dir.join("nested").join("store.db")
    }

    async fn auth(store: &EmbeddedStore, login: &str, password: &str) -> Option<AuthIdentity> {
        store.authenticate(login, password).await.unwrap()
    }

    fn addr(text: &str) -> EmailAddress {
        parse_address(text).unwrap()
    }

    fn open(name: &str) -> (TempDir, EmbeddedStore) {
        let dir = TempDir::new(&format!("store-{name}"));
        let store = EmbeddedStore::open(&db(&dir)).unwrap();
        (dir, store)
    }

    #[test]
    fn open_creates_parent_file_mode_and_wal() {
        let dir = TempDir::new("store-open");
        let store = EmbeddedStore::open(&db(&dir)).unwrap();
        let mode = std::fs::metadata(db(&dir)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let conn = store.lock();
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(sqlite::schema_version(&conn).unwrap(), MIGRATIONS.len());
        drop(conn);
        drop(store);
        // Reopening an existing store is fine and keeps the data.
        let store = EmbeddedStore::open(&db(&dir)).unwrap();
        store
            .add_address(&addr("a@example.org"), Plan::Free)
            .unwrap();
        drop(store);
        let store = EmbeddedStore::open(&db(&dir)).unwrap();
        assert_eq!(store.list_addresses().unwrap().len(), 1);
    }

    #[test]
    fn newer_schema_is_refused() {
        let (dir, store) = open("newer");
        store
            .lock()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        drop(store);
        let e = EmbeddedStore::open(&db(&dir)).unwrap_err().to_string();
        assert!(e.contains("schema version 99 is newer"), "{e}");
        assert!(e.contains("store.db"), "{e}");
    }

    #[test]
    fn addresses_add_list_remove() {
        let (_dir, store) = open("addresses");
        store
            .add_address(&addr("b@example.org"), Plan::Starter)
            .unwrap();
        store
            .add_address(&addr("A@Example.org"), Plan::Premium)
            .unwrap();
        let list = store.list_addresses().unwrap();
        let names: Vec<_> = list.iter().map(|a| (a.address.as_str(), a.plan)).collect();
        assert_eq!(
            names,
            [
                ("a@example.org", Plan::Premium),
                ("b@example.org", Plan::Starter)
            ]
        );
        let e = store
            .add_address(&addr("a@example.org"), Plan::Free)
            .unwrap_err();
        assert_eq!(e.to_string(), "an address \"a@example.org\" already exists");
        store.remove_address(&addr("a@example.org")).unwrap();
        let e = store.remove_address(&addr("a@example.org")).unwrap_err();
        assert_eq!(
            e,
            StoreError::NotFound {
                what: "address \"a@example.org\"".into()
            }
        );
        assert_eq!(store.list_addresses().unwrap().len(), 1);
    }

    #[test]
    fn aliases_and_collisions() {
        let (_dir, store) = open("aliases");
        let a = addr("a@example.org");
        let b = addr("b@example.org");
        store.add_address(&a, Plan::Starter).unwrap();
        store.add_address(&b, Plan::Starter).unwrap();
        store.add_alias(&addr("sales@example.org"), &a).unwrap();
        store.add_alias(&addr("info@example.net"), &a).unwrap();
        store.add_alias(&addr("help@example.org"), &b).unwrap();

        // Alias named like an address, address named like an alias, duplicate alias.
        let e = store.add_alias(&b, &a).unwrap_err();
        assert_eq!(e.to_string(), "an address \"b@example.org\" already exists");
        let e = store.add_alias(&a, &a).unwrap_err();
        assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
        let e = store
            .add_address(&addr("sales@example.org"), Plan::Free)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "an alias \"sales@example.org\" already exists"
        );
        let e = store.add_alias(&addr("sales@example.org"), &b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "an alias \"sales@example.org\" already exists"
        );
        // Alias of an unknown address, or of an alias.
        let e = store
            .add_alias(&addr("x@example.org"), &addr("nobody@example.org"))
            .unwrap_err();
        assert_eq!(e.to_string(), "address \"nobody@example.org\" not found");
        let e = store
            .add_alias(&addr("x@example.org"), &addr("sales@example.org"))
            .unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }));

        let of_a: Vec<_> = store
            .list_aliases(Some(&a))
            .unwrap()
            .into_iter()
            .map(|x| x.alias)
            .collect();
        assert_eq!(of_a, ["info@example.net", "sales@example.org"]);
        let all = store.list_aliases(None).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[0],
            AliasInfo {
                alias: "help@example.org".into(),
                address: b.to_string()
            }
        );
        assert!(
            store
                .list_aliases(Some(&addr("nobody@example.org")))
                .is_err()
        );

        store.remove_alias(&addr("sales@example.org")).unwrap();
        let e = store.remove_alias(&addr("sales@example.org")).unwrap_err();
        assert_eq!(e.to_string(), "alias \"sales@example.org\" not found");
        // An address is not an alias.
        assert!(store.remove_alias(&a).is_err());

        // Removing an address removes its aliases and devices, and frees the names.
        store.add_device(&a, "phone").unwrap();
        store.remove_address(&a).unwrap();
        assert_eq!(store.list_aliases(None).unwrap().len(), 1);
        store
            .add_address(&addr("info@example.net"), Plan::Free)
            .unwrap();
        store.add_address(&a, Plan::Free).unwrap();
        assert!(store.list_devices(&a).unwrap().is_empty());
    }

    #[tokio::test]
    async fn devices_add_list_authenticate() {
        let (_dir, store) = open("devices");
        let a = addr("alice@example.org");
        store.add_address(&a, Plan::Starter).unwrap();
        store.add_alias(&addr("sales@example.org"), &a).unwrap();
        let phone = store.add_device(&a, "phone").unwrap();
        let laptop = store.add_device(&a, "laptop").unwrap();
        assert_ne!(phone.expose(), laptop.expose());

        let names: Vec<_> = store
            .list_devices(&a)
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["laptop", "phone"]);
        let e = store.add_device(&a, "phone").unwrap_err();
        assert_eq!(
            e.to_string(),
            "device \"phone\" of address \"alice@example.org\" already exists"
        );
        assert!(matches!(
            store.add_device(&a, "").unwrap_err(),
            StoreError::Invalid(_)
        ));
        assert!(matches!(
            store
                .add_device(&addr("bob@example.org"), "phone")
                .unwrap_err(),
            StoreError::NotFound { .. }
        ));

        let id = auth(&store, "Alice@EXAMPLE.org", phone.expose())
            .await
            .unwrap();
        assert_eq!(id.address, "alice@example.org");
        assert_eq!(id.device, "phone");
        assert_eq!(id.senders, ["alice@example.org", "sales@example.org"]);
        let id2 = auth(&store, "alice@example.org", laptop.expose())
            .await
            .unwrap();
        assert_eq!(id2.device, "laptop");
        assert_ne!(id.credential, id2.credential);

        // Wrong password, unknown address, alias as login, invalid login.
        assert!(auth(&store, "alice@example.org", "nope").await.is_none());
        assert!(
            auth(&store, "bob@example.org", phone.expose())
                .await
                .is_none()
        );
        assert!(
            auth(&store, "sales@example.org", phone.expose())
                .await
                .is_none()
        );
        assert!(auth(&store, "alice", phone.expose()).await.is_none());
        assert!(
            auth(&store, "alice@example.org", &phone.expose().to_uppercase())
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn rotate_changes_password_and_credential() {
        let (_dir, store) = open("rotate");
        let a = addr("alice@example.org");
        store.add_address(&a, Plan::Starter).unwrap();
        let old = store.add_device(&a, "phone").unwrap();
        let laptop = store.add_device(&a, "laptop").unwrap();
        let old_id = auth(&store, a.as_str(), old.expose()).await.unwrap();
        let laptop_id = auth(&store, a.as_str(), laptop.expose()).await.unwrap();
        let created = store.list_devices(&a).unwrap();

        let new = store.rotate_device(&a, "phone").unwrap();
        assert_ne!(old.expose(), new.expose());
        assert!(auth(&store, a.as_str(), old.expose()).await.is_none());
        let new_id = auth(&store, a.as_str(), new.expose()).await.unwrap();
        assert_eq!(new_id.device, "phone");
        assert_ne!(new_id.credential, old_id.credential);
        // The other device is untouched; rotation keeps the creation time.
        assert!(auth(&store, a.as_str(), laptop.expose()).await.is_some());
        assert_eq!(store.list_devices(&a).unwrap(), created);

        let ids = [
            old_id.credential.clone(),
            new_id.credential.clone(),
            laptop_id.credential.clone(),
        ];
        let live = store.live_credentials(&ids).await.unwrap();
        assert_eq!(
            live,
            HashSet::from([new_id.credential.clone(), laptop_id.credential.clone()])
        );

        let e = store.rotate_device(&a, "tablet").unwrap_err();
        assert_eq!(
            e.to_string(),
            "device \"tablet\" of address \"alice@example.org\" not found"
        );
        assert!(
            store
                .rotate_device(&addr("bob@example.org"), "phone")
                .is_err()
        );
    }

    #[tokio::test]
    async fn revoke_and_revoke_all() {
        let (_dir, store) = open("revoke");
        let a = addr("alice@example.org");
        let b = addr("bob@example.org");
        store.add_address(&a, Plan::Starter).unwrap();
        store.add_address(&b, Plan::Starter).unwrap();
        let phone = store.add_device(&a, "phone").unwrap();
        let laptop = store.add_device(&a, "laptop").unwrap();
        let tablet = store.add_device(&a, "tablet").unwrap();
        let bobs = store.add_device(&b, "phone").unwrap();
        let phone_id = auth(&store, a.as_str(), phone.expose()).await.unwrap();
        let bob_id = auth(&store, b.as_str(), bobs.expose()).await.unwrap();

        store.revoke_device(&a, "phone").unwrap();
        assert!(auth(&store, a.as_str(), phone.expose()).await.is_none());
        assert!(auth(&store, a.as_str(), laptop.expose()).await.is_some());
        let live = store
            .live_credentials(std::slice::from_ref(&phone_id.credential))
            .await
            .unwrap();
        assert!(live.is_empty());
        assert!(matches!(
            store.revoke_device(&a, "phone").unwrap_err(),
            StoreError::NotFound { .. }
        ));

        assert_eq!(store.revoke_all(&a).unwrap(), 2);
        assert!(auth(&store, a.as_str(), tablet.expose()).await.is_none());
        assert!(store.list_devices(&a).unwrap().is_empty());
        assert_eq!(store.revoke_all(&a).unwrap(), 0);
        assert!(store.revoke_all(&addr("carol@example.org")).is_err());
        // Bob's device is not affected; a name can be reused after revocation.
        assert!(auth(&store, b.as_str(), bobs.expose()).await.is_some());
        assert_eq!(
            store
                .live_credentials(std::slice::from_ref(&bob_id.credential))
                .await
                .unwrap()
                .len(),
            1
        );
        store.add_device(&a, "phone").unwrap();
    }

    #[tokio::test]
    async fn live_credentials_in_batches() {
        let (_dir, store) = open("live");
        let a = addr("alice@example.org");
        store.add_address(&a, Plan::Starter).unwrap();
        let p = store.add_device(&a, "phone").unwrap();
        let real = auth(&store, a.as_str(), p.expose())
            .await
            .unwrap()
            .credential;
        let mut ids: Vec<_> = (0..1_200)
            .map(|i| CredentialId(format!("unknown-{i}")))
            .collect();
        ids.insert(777, real.clone());
        let live = store.live_credentials(&ids).await.unwrap();
        assert_eq!(live, HashSet::from([real]));
        assert!(store.live_credentials(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_second_process_sees_changes_at_once() {
        // Two connections on one file stand for `postern serve` and the CLI.
        let dir = TempDir::new("store-shared");
        let server = EmbeddedStore::open(&db(&dir)).unwrap();
        let cli = EmbeddedStore::open(&db(&dir)).unwrap();
        let a = addr("alice@example.org");
        cli.add_address(&a, Plan::Starter).unwrap();
        let p = cli.add_device(&a, "phone").unwrap();
        let id = auth(&server, a.as_str(), p.expose()).await.unwrap();
        cli.revoke_device(&a, "phone").unwrap();
        assert!(
            server
                .live_credentials(&[id.credential])
                .await
                .unwrap()
                .is_empty()
        );
        assert!(auth(&server, a.as_str(), p.expose()).await.is_none());
    }

    #[test]
    fn no_hash_is_exposed_by_listing() {
        let (_dir, store) = open("nohash");
        let a = addr("alice@example.org");
        store.add_address(&a, Plan::Starter).unwrap();
        let p = store.add_device(&a, "phone").unwrap();
        let shown = format!("{:?}", store.list_devices(&a).unwrap());
        assert!(!shown.contains(p.expose()));
        let stored: Vec<u8> = store
            .lock()
            .query_row("SELECT password_hash FROM devices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, password::hash(p.expose()));
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn migration_from_version_1_keeps_data() {
        let dir = TempDir::new("store-migrate");
        std::fs::create_dir_all(db(&dir).parent().unwrap()).unwrap();
        {
            // A file as the first Postern left it: schema 1 with one address.
            let conn = Connection::open(db(&dir)).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO addresses (address, plan, created_at) VALUES ('a@example.org', 'premium', 1)",
                [],
            )
            .unwrap();
        }
        let store = EmbeddedStore::open(&db(&dir)).unwrap();
        assert_eq!(
            sqlite::schema_version(&store.lock()).unwrap(),
            MIGRATIONS.len()
        );
        let a = QuotaIdentity::Address("a@example.org".into());
        assert_eq!(
            store.identity_limits(&a).unwrap(),
            IdentityLimits {
                plan: Some(Plan::Premium),
                daily_override: None
            }
        );
        store.set_limit(&a, 3000).unwrap();
        assert!(store.list_hosting_accounts().unwrap().is_empty());
        drop(store);
        // Reopening does not migrate again.
        let store = EmbeddedStore::open(&db(&dir)).unwrap();
        assert_eq!(
            store.identity_limits(&a).unwrap().daily_override,
            Some(3000)
        );
    }

    #[test]
    fn hosting_add_list_remove() {
        let (_dir, store) = open("hosting");
        store
            .add_hosting_account(
                "web2",
                &[
                    net("2001:db8:2::/48"),
                    net("192.0.2.0/24"),
                    net("192.0.2.0/24"),
                ],
                &strings(&["Shop.Example.org", "example.net", "shop.example.org"]),
            )
            .unwrap();
        store
            .add_hosting_account("web1", &[net("198.51.100.7/32")], &strings(&["a.example"]))
            .unwrap();
        let list = store.list_hosting_accounts().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "web1");
        assert_eq!(list[1].name, "web2");
        assert_eq!(
            list[1].networks,
            [net("192.0.2.0/24"), net("2001:db8:2::/48")]
        );
        assert_eq!(list[1].domains, ["example.net", "shop.example.org"]);
        assert_eq!(list[1].daily_limit, None);

        let e = store
            .add_hosting_account("web1", &[net("203.0.113.0/24")], &strings(&["b.example"]))
            .unwrap_err();
        assert_eq!(e.to_string(), "hosting account \"web1\" already exists");
        // Invalid input is refused before anything is written.
        for (name, nets, domains) in [
            ("Web3", vec![net("203.0.113.0/24")], strings(&["b.example"])),
            ("web3", vec![], strings(&["b.example"])),
            ("web3", vec![net("203.0.113.0/24")], vec![]),
            ("web3", vec![net("203.0.113.1/24")], strings(&["b.example"])),
            (
                "web3",
                vec![net("203.0.113.0/24")],
                strings(&["b_example.org"]),
            ),
        ] {
            let e = store
                .add_hosting_account(name, &nets, &domains)
                .unwrap_err();
            assert!(matches!(e, StoreError::Invalid(_)), "{e}");
        }
        assert_eq!(store.list_hosting_accounts().unwrap().len(), 2);

        store.remove_hosting_account("web2").unwrap();
        let e = store.remove_hosting_account("web2").unwrap_err();
        assert_eq!(e.to_string(), "hosting account \"web2\" not found");
        assert_eq!(store.list_hosting_accounts().unwrap().len(), 1);
        let rows: i64 = store
            .lock()
            .query_row("SELECT count(*) FROM hosting_networks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        // Its network is free again.
        store
            .add_hosting_account("web3", &[net("192.0.2.0/24")], &strings(&["c.example"]))
            .unwrap();
    }

    #[test]
    fn equal_networks_are_refused_nested_ones_allowed() {
        let (_dir, store) = open("equal");
        store
            .add_hosting_account("wide", &[net("10.0.0.0/8")], &strings(&["wide.example"]))
            .unwrap();
        let e = store
            .add_hosting_account(
                "other",
                &[net("172.16.0.0/12"), net("10.0.0.0/8")],
                &strings(&["other.example"]),
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "network 10.0.0.0/8 (same prefix length) of hosting account \"wide\" already exists"
        );
        // Nothing of the refused account was kept.
        assert_eq!(store.list_hosting_accounts().unwrap().len(), 1);
        store
            .add_hosting_account("narrow", &[net("10.1.0.0/16")], &strings(&["n.example"]))
            .unwrap();
    }

    #[tokio::test]
    async fn hosting_lookup_takes_the_longest_prefix() {
        let (_dir, store) = open("lookup");
        let accounts = [
            ("wide", "10.0.0.0/8"),
            ("mid", "10.1.0.0/16"),
            ("narrow", "10.1.2.0/24"),
            ("host", "10.1.2.3/32"),
            ("six", "2001:db8::/32"),
            ("six-narrow", "2001:db8:0:1::/64"),
            ("everything6", "::/0"),
        ];
        for (name, network) in accounts {
            store
                .add_hosting_account(
                    name,
                    &[net(network)],
                    &strings(&[&format!("{name}.example"), "shared.example"]),
                )
                .unwrap();
        }
        let at = async |ip: &str| {
            store
                .hosting_account_for(ip.parse().unwrap())
                .await
                .unwrap()
                .map(|a| a.name)
        };
        assert_eq!(at("10.1.2.3").await.as_deref(), Some("host"));
        assert_eq!(at("10.1.2.4").await.as_deref(), Some("narrow"));
        assert_eq!(at("10.1.3.4").await.as_deref(), Some("mid"));
        assert_eq!(at("10.200.0.1").await.as_deref(), Some("wide"));
        assert_eq!(at("10.255.255.255").await.as_deref(), Some("wide"));
        assert_eq!(at("10.0.0.0").await.as_deref(), Some("wide"));
        assert_eq!(at("11.0.0.0").await, None);
        assert_eq!(at("9.255.255.255").await, None);
        assert_eq!(at("::ffff:10.1.2.3").await.as_deref(), Some("host"));
        assert_eq!(at("2001:db8:0:1::25").await.as_deref(), Some("six-narrow"));
        assert_eq!(at("2001:db8:0:2::25").await.as_deref(), Some("six"));
        assert_eq!(at("fe80::1").await.as_deref(), Some("everything6"));

        let found = store
            .hosting_account_for("10.1.2.9".parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            found,
            HostingAccount {
                name: "narrow".into(),
                domains: strings(&["narrow.example", "shared.example"]),
                network: net("10.1.2.0/24"),
            }
        );

        // The SQL range query agrees with the reference matcher on many addresses.
        let table: Vec<(IpNet, &str)> = accounts.iter().map(|(n, c)| (net(c), *n)).collect();
        let mut x: u32 = 0x0a01_0203;
        for _ in 0..300 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let ip = IpAddr::from(std::net::Ipv4Addr::from((x & 0x00ff_ffff) | 0x0a00_0000));
            let ip = if x.is_multiple_of(3) {
                ip
            } else if x % 3 == 1 {
                IpAddr::from(std::net::Ipv4Addr::from(x))
            } else {
                IpAddr::from(std::net::Ipv6Addr::from(
                    (0x2001_0db8_u128 << 96) | (u128::from(x % 4) << 64) | u128::from(x),
                ))
            };
            let expected = super::super::accounts::longest_match(ip, &table).map(|(_, n)| *n);
            let got = store.hosting_account_for(ip).await.unwrap();
            assert_eq!(got.as_ref().map(|a| a.name.as_str()), expected, "{ip}");
        }

        store.remove_hosting_account("host").unwrap();
        assert_eq!(at("10.1.2.3").await.as_deref(), Some("narrow"));
    }

    #[tokio::test]
    async fn limit_overrides() {
        let (_dir, store) = open("limits");
        let a = addr("alice@example.org");
        store.add_address(&a, Plan::Starter).unwrap();
        store.add_alias(&addr("sales@example.org"), &a).unwrap();
        store
            .add_hosting_account("web1", &[net("192.0.2.0/24")], &strings(&["example.org"]))
            .unwrap();
        let alice = QuotaIdentity::Address(a.to_string());
        let web1 = QuotaIdentity::Hosting("web1".into());

        assert_eq!(
            store.identity_limits(&alice).unwrap(),
            IdentityLimits {
                plan: Some(Plan::Starter),
                daily_override: None
            }
        );
        assert_eq!(store.set_limit(&alice, 2000).unwrap(), None);
        assert_eq!(store.set_limit(&alice, 2500).unwrap(), Some(2000));
        assert_eq!(store.set_limit(&web1, 200).unwrap(), None);
        assert_eq!(
            store.identity_limits(&web1).unwrap(),
            IdentityLimits {
                plan: None,
                daily_override: Some(200)
            }
        );
        assert_eq!(store.set_limit(&web1, u32::MAX).unwrap(), Some(200));
        assert_eq!(
            store.list_limits().unwrap(),
            [
                LimitOverride {
                    identity: alice.clone(),
                    daily: 2500
                },
                LimitOverride {
                    identity: web1.clone(),
                    daily: u32::MAX
                }
            ]
        );
        assert_eq!(
            store.list_hosting_accounts().unwrap()[0].daily_limit,
            Some(u32::MAX)
        );

        // The server side sees the same.
        assert_eq!(store.limit_override(&alice).await.unwrap(), Some(2500));
        assert_eq!(
            store.plan_of("alice@example.org").await.unwrap(),
            Some(Plan::Starter)
        );
        assert_eq!(store.plan_of("sales@example.org").await.unwrap(), None);
        assert_eq!(
            store.limits_of(&web1).await.unwrap(),
            Some(IdentityLimits {
                plan: None,
                daily_override: Some(u32::MAX)
            })
        );
        let nobody = QuotaIdentity::Address("nobody@example.org".into());
        assert_eq!(store.limits_of(&nobody).await.unwrap(), None);
        assert_eq!(store.limit_override(&nobody).await.unwrap(), None);

        // Unknown identities, aliases and a zero limit are refused.
        let e = store.set_limit(&nobody, 10).unwrap_err();
        assert_eq!(e.to_string(), "address \"nobody@example.org\" not found");
        let e = store
            .set_limit(&QuotaIdentity::Address("sales@example.org".into()), 10)
            .unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
        let e = store
            .clear_limit(&QuotaIdentity::Hosting("web9".into()))
            .unwrap_err();
        assert_eq!(e.to_string(), "hosting account \"web9\" not found");
        assert!(matches!(
            store.set_limit(&alice, 0).unwrap_err(),
            StoreError::Invalid(_)
        ));
        assert!(store.identity_limits(&nobody).is_err());

        assert_eq!(store.clear_limit(&alice).unwrap(), Some(2500));
        assert_eq!(store.clear_limit(&alice).unwrap(), None);
        assert_eq!(store.limit_override(&alice).await.unwrap(), None);

        // An override goes with its identity.
        store.set_limit(&alice, 900).unwrap();
        store.remove_address(&a).unwrap();
        store.remove_hosting_account("web1").unwrap();
        assert!(store.list_limits().unwrap().is_empty());
        store.add_address(&a, Plan::Free).unwrap();
        store
            .add_hosting_account("web1", &[net("192.0.2.0/24")], &strings(&["example.org"]))
            .unwrap();
        assert_eq!(store.identity_limits(&alice).unwrap().daily_override, None);
        assert_eq!(store.identity_limits(&web1).unwrap().daily_override, None);
    }

    #[tokio::test]
    async fn the_server_sees_hosting_changes_at_once() {
        let dir = TempDir::new("store-hosting-shared");
        let server = EmbeddedStore::open(&db(&dir)).unwrap();
        let cli = EmbeddedStore::open(&db(&dir)).unwrap();
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        assert!(server.hosting_account_for(ip).await.unwrap().is_none());
        cli.add_hosting_account("web1", &[net("192.0.2.0/24")], &strings(&["example.org"]))
            .unwrap();
        assert_eq!(
            server.hosting_account_for(ip).await.unwrap().unwrap().name,
            "web1"
        );
        cli.set_limit(&QuotaIdentity::Hosting("web1".into()), 75)
            .unwrap();
        assert_eq!(
            server
                .limit_override(&QuotaIdentity::Hosting("web1".into()))
                .await
                .unwrap(),
            Some(75)
        );
        cli.remove_hosting_account("web1").unwrap();
        assert!(server.hosting_account_for(ip).await.unwrap().is_none());
    }
}
