//! The embedded store's schema and how its file is opened.
//!
//! Created and migrated at open by the SQLite plumbing shared with the quota store and the
//! delivery log (`store/sqlite.rs`), tracked by `PRAGMA user_version`: [`MIGRATIONS`] lists
//! the steps, each applied once, in one transaction. A file from a newer Postern is refused
//! rather than guessed at. Triggers also keep addresses and aliases in one namespace, as a
//! second line behind the checks in each transaction.
//!
//! Hosting networks are kept with their first and last address as big-endian BLOBs, so that
//! the port-25 lookup (which account's network contains this client, longest prefix first) is
//! one indexed range query that also fetches the account's domains, in one snapshot. Limit
//! overrides are a nullable `daily_limit` column of `addresses` and `hosting_accounts`, so they
//! disappear with their identity.

use super::BUSY_TIMEOUT;
use crate::store::sqlite;

/// Schema steps; after step `i` the file is at `user_version = i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
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
pub(super) const SQLITE: sqlite::Settings = sqlite::Settings {
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

#[cfg(test)]
mod tests {
    use super::super::tests::{db, open};
    use super::*;
    use crate::policy::{Plan, parse_address};
    use crate::store::{DirectoryAdmin, EmbeddedStore, IdentityLimits, QuotaIdentity};
    use crate::testutil::TempDir;
    use rusqlite::Connection;
    use std::os::unix::fs::PermissionsExt;

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
            .add_address(&parse_address("a@example.org").unwrap(), Plan::Free)
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
}
