//! DKIM keys in the embedded store (table `dkim_keys`, schema step 3).
//!
//! A key is one row per (domain, selector) with its PKCS#8 private key, the `p=` value, and an
//! `active` flag. A partial unique index allows one active key per domain and algorithm, so
//! activation is "clear the flag of the domain's other key of this algorithm, set this one" in
//! one transaction, and a domain holding an active RSA key and an active Ed25519 key is
//! dual-signed.

use super::{EmbeddedStore, backend, now_secs, to_time};
use crate::store::dkim_keys::{
    active_key_needs_force, algorithm_of, key_not_found, selector_exists,
};
use crate::store::{ActiveDkimKey, CredentialId, DkimKeyInfo, NewDkimKey, StoreError};
use rusqlite::{OptionalExtension, params};

pub(super) fn active(
    conn: &rusqlite::Connection,
    domain: &str,
) -> Result<Vec<ActiveDkimKey>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT key_id, selector, algorithm, private_key FROM dkim_keys
             WHERE domain = ?1 AND active = 1 ORDER BY algorithm",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([domain], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Vec<u8>>(3)?,
            ))
        })
        .map_err(backend)?;
    let mut keys = Vec::new();
    for row in rows {
        let (key_id, selector, algorithm, private_key) = row.map_err(backend)?;
        keys.push(ActiveDkimKey {
            key_id,
            selector,
            algorithm: algorithm_of(&algorithm)?,
            private_key,
        });
    }
    Ok(keys)
}

pub(super) fn add(store: &EmbeddedStore, key: &NewDkimKey) -> Result<(), StoreError> {
    let key_id = CredentialId::random()?.0;
    store.write(|tx| {
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM dkim_keys WHERE domain = ?1 AND selector = ?2)",
                params![key.domain, key.selector],
                |row| row.get(0),
            )
            .map_err(backend)?;
        if exists {
            return Err(selector_exists(&key.domain, &key.selector));
        }
        let now = now_secs();
        if key.active {
            tx.execute(
                "UPDATE dkim_keys SET active = 0
                 WHERE domain = ?1 AND algorithm = ?2 AND active = 1",
                params![key.domain, key.algorithm.name()],
            )
            .map_err(backend)?;
        }
        tx.execute(
            "INSERT INTO dkim_keys (domain, selector, algorithm, bits, key_id, private_key,
                 public_key, active, created_at, activated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                key.domain,
                key.selector,
                key.algorithm.name(),
                key.bits,
                key_id,
                key.private_key,
                key.public_key,
                key.active,
                now,
                key.active.then_some(now),
            ],
        )
        .map_err(backend)?;
        Ok(())
    })
}

pub(super) fn list(
    store: &EmbeddedStore,
    domain: Option<&str>,
) -> Result<Vec<DkimKeyInfo>, StoreError> {
    let conn = store.lock();
    let mut stmt = conn
        .prepare_cached(
            "SELECT domain, selector, algorithm, bits, public_key, active, created_at
             FROM dkim_keys WHERE ?1 IS NULL OR domain = ?1 ORDER BY domain, selector",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([domain], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, u32>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, bool>(5)?,
                row.get::<_, i64>(6)?,
            ))
        })
        .map_err(backend)?;
    let mut keys = Vec::new();
    for row in rows {
        let (domain, selector, algorithm, bits, public_key, active, created) =
            row.map_err(backend)?;
        keys.push(DkimKeyInfo {
            domain,
            selector,
            algorithm: algorithm_of(&algorithm)?,
            bits,
            public_key,
            active,
            created_at: to_time(created),
        });
    }
    Ok(keys)
}

pub(super) fn activate(
    store: &EmbeddedStore,
    domain: &str,
    selector: &str,
) -> Result<Option<String>, StoreError> {
    store.write(|tx| {
        let algorithm: String = tx
            .query_row(
                "SELECT algorithm FROM dkim_keys WHERE domain = ?1 AND selector = ?2",
                params![domain, selector],
                |row| row.get(0),
            )
            .optional()
            .map_err(backend)?
            .ok_or_else(|| key_not_found(domain, selector))?;
        let previous: Option<String> = tx
            .query_row(
                "SELECT selector FROM dkim_keys
                 WHERE domain = ?1 AND algorithm = ?2 AND active = 1",
                params![domain, algorithm],
                |row| row.get(0),
            )
            .optional()
            .map_err(backend)?;
        if previous.as_deref() == Some(selector) {
            return Ok(previous);
        }
        tx.execute(
            "UPDATE dkim_keys SET active = 0 WHERE domain = ?1 AND algorithm = ?2 AND active = 1",
            params![domain, algorithm],
        )
        .map_err(backend)?;
        tx.execute(
            "UPDATE dkim_keys SET active = 1, activated_at = ?3
             WHERE domain = ?1 AND selector = ?2",
            params![domain, selector, now_secs()],
        )
        .map_err(backend)?;
        Ok(previous)
    })
}

pub(super) fn remove(
    store: &EmbeddedStore,
    domain: &str,
    selector: &str,
    force: bool,
) -> Result<bool, StoreError> {
    let was_active = store.write(|tx| {
        let active: bool = tx
            .query_row(
                "SELECT active FROM dkim_keys WHERE domain = ?1 AND selector = ?2",
                params![domain, selector],
                |row| row.get(0),
            )
            .optional()
            .map_err(backend)?
            .ok_or_else(|| key_not_found(domain, selector))?;
        if active && !force {
            return Err(active_key_needs_force(domain, selector));
        }
        tx.execute(
            "DELETE FROM dkim_keys WHERE domain = ?1 AND selector = ?2",
            params![domain, selector],
        )
        .map_err(backend)?;
        Ok(active)
    })?;
    // secure_delete (set at open) zeroed the key in the page's new version; checkpointing
    // now lets SQLite reuse the WAL frames that still hold the old one. Best effort: a
    // reader (the relay) can keep the checkpoint from finishing.
    let _ = store
        .lock()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    Ok(was_active)
}
