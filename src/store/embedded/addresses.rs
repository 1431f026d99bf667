//! Addresses (table `addresses`): hosted mailboxes with their plan, and the checks every
//! write of an address or alias makes on the namespace the two share.

use super::{EmbeddedStore, aliases, backend, exists, now_secs, to_time};
use crate::policy::{EmailAddress, Plan};
use crate::store::{AddressInfo, StoreError, address_not_found, name_free, stored_plan};
use rusqlite::{Connection, params};

pub(super) fn add(
    store: &EmbeddedStore,
    address: &EmailAddress,
    plan: Plan,
) -> Result<(), StoreError> {
    store.write(|tx| {
        ensure_name_free(tx, address.as_str())?;
        tx.execute(
            "INSERT INTO addresses (address, plan, created_at) VALUES (?1, ?2, ?3)",
            params![address.as_str(), plan.as_str(), now_secs()],
        )
        .map_err(backend)?;
        Ok(())
    })
}

pub(super) fn remove(store: &EmbeddedStore, address: &EmailAddress) -> Result<(), StoreError> {
    let address = address.as_str();
    store.write(|tx| {
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

pub(super) fn list(store: &EmbeddedStore) -> Result<Vec<AddressInfo>, StoreError> {
    let conn = store.lock();
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

pub(super) fn is_address(conn: &Connection, address: &str) -> Result<bool, StoreError> {
    exists(
        conn,
        "SELECT 1 FROM addresses WHERE address = ?1",
        [address],
    )
}

/// `NotFound` unless `address` is an address (an alias is not).
pub(super) fn ensure_address(conn: &Connection, address: &str) -> Result<(), StoreError> {
    if is_address(conn, address)? {
        Ok(())
    } else {
        Err(address_not_found(address))
    }
}

/// `AlreadyExists` if `name` is taken as an address or an alias.
pub(super) fn ensure_name_free(conn: &Connection, name: &str) -> Result<(), StoreError> {
    name_free(
        name,
        is_address(conn, name)?,
        aliases::is_alias(conn, name)?,
    )
}
