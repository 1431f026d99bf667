//! Aliases (table `aliases`): other addresses an address's owner may send as. They share the
//! namespace of addresses (checked in each write, and by the schema's triggers).

use super::addresses::{ensure_address, ensure_name_free};
use super::{EmbeddedStore, backend, exists, now_secs};
use crate::policy::EmailAddress;
use crate::store::{AliasInfo, StoreError, quoted};
use rusqlite::{Connection, params};

pub(super) fn add(
    store: &EmbeddedStore,
    alias: &EmailAddress,
    address: &EmailAddress,
) -> Result<(), StoreError> {
    store.write(|tx| {
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

pub(super) fn remove(store: &EmbeddedStore, alias: &EmailAddress) -> Result<(), StoreError> {
    store.write(|tx| {
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

pub(super) fn list(
    store: &EmbeddedStore,
    address: Option<&EmailAddress>,
) -> Result<Vec<AliasInfo>, StoreError> {
    let conn = store.lock();
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

/// The aliases of an address, sorted: with the address, the senders its login owns.
pub(super) fn aliases_of(conn: &Connection, address: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT alias FROM aliases WHERE address = ?1 ORDER BY alias")
        .map_err(backend)?;
    let rows = stmt
        .query_map([address], |row| row.get::<_, String>(0))
        .map_err(backend)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(backend)
}

pub(super) fn is_alias(conn: &Connection, alias: &str) -> Result<bool, StoreError> {
    exists(conn, "SELECT 1 FROM aliases WHERE alias = ?1", [alias])
}
