//! Devices (table `devices`): the named passwords of an address, each with the
//! [`CredentialId`] that changes on every rotation; the AUTH check and the revocation
//! watcher's question read them.
//!
//! Only the SHA-256 of a password is stored ([`crate::policy::password`]); a new password is
//! returned once, by the call that made it.

use super::addresses::{ensure_address, is_address};
use super::aliases::aliases_of;
use super::{EmbeddedStore, backend, exists, now_secs, to_time};
use crate::policy::{DevicePassword, EmailAddress, parse_address};
use crate::store::devices::{StoredDevice, device_exists, matching_device, new_credential};
use crate::store::{
    AuthIdentity, CredentialId, DeviceInfo, StoreError, check_device_name, device_not_found,
};
use rusqlite::params;
use std::collections::HashSet;

/// Credential ids per `IN (...)` query of [`live_credentials`]; well under SQLite's limit on
/// bound parameters.
const LIVE_BATCH: usize = 500;

pub(super) fn authenticate(
    conn: &rusqlite::Connection,
    login: &str,
    password: &str,
) -> Result<Option<AuthIdentity>, StoreError> {
    let Ok(address) = parse_address(login) else {
        return Ok(None);
    };
    let devices = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT name, credential_id, password_hash FROM devices
                 WHERE address = ?1 ORDER BY name",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([address.as_str()], |row| {
                Ok(StoredDevice {
                    name: row.get(0)?,
                    credential: CredentialId(row.get(1)?),
                    hash: row.get(2)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
    };
    let Some(device) = matching_device(password, devices)? else {
        return Ok(None);
    };
    let senders = senders_with(conn, address.as_str())?;
    Ok(Some(AuthIdentity {
        address: address.into_string(),
        device: device.name,
        credential: device.credential,
        senders,
    }))
}

/// The address itself and its aliases: the senders its login owns.
fn senders_with(conn: &rusqlite::Connection, address: &str) -> Result<Vec<String>, StoreError> {
    let mut senders = vec![address.to_string()];
    senders.extend(aliases_of(conn, address)?);
    Ok(senders)
}

/// [`crate::store::Directory::senders_of`]: `None` if `address` is not an address.
pub(super) fn senders_of(
    conn: &rusqlite::Connection,
    address: &str,
) -> Result<Option<Vec<String>>, StoreError> {
    let Ok(address) = parse_address(address) else {
        return Ok(None);
    };
    if !is_address(conn, address.as_str())? {
        return Ok(None);
    }
    senders_with(conn, address.as_str()).map(Some)
}

pub(super) fn live_credentials(
    conn: &rusqlite::Connection,
    ids: &[CredentialId],
) -> Result<HashSet<CredentialId>, StoreError> {
    let mut live = HashSet::new();
    for batch in ids.chunks(LIVE_BATCH) {
        let placeholders = vec!["?"; batch.len()].join(",");
        let sql =
            format!("SELECT credential_id FROM devices WHERE credential_id IN ({placeholders})");
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

pub(super) fn add(
    store: &EmbeddedStore,
    address: &EmailAddress,
    name: &str,
) -> Result<DevicePassword, StoreError> {
    check_device_name(name)?;
    let address = address.as_str();
    store.write(|tx| {
        ensure_address(tx, address)?;
        if exists(
            tx,
            "SELECT 1 FROM devices WHERE address = ?1 AND name = ?2",
            [address, name],
        )? {
            return Err(device_exists(address, name));
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

pub(super) fn list(
    store: &EmbeddedStore,
    address: &EmailAddress,
) -> Result<Vec<DeviceInfo>, StoreError> {
    let conn = store.lock();
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

pub(super) fn rotate(
    store: &EmbeddedStore,
    address: &EmailAddress,
    name: &str,
) -> Result<DevicePassword, StoreError> {
    let address = address.as_str();
    store.write(|tx| {
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

pub(super) fn revoke(
    store: &EmbeddedStore,
    address: &EmailAddress,
    name: &str,
) -> Result<(), StoreError> {
    let address = address.as_str();
    store.write(|tx| {
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

pub(super) fn revoke_all(
    store: &EmbeddedStore,
    address: &EmailAddress,
) -> Result<usize, StoreError> {
    let address = address.as_str();
    store.write(|tx| {
        ensure_address(tx, address)?;
        tx.execute("DELETE FROM devices WHERE address = ?1", [address])
            .map_err(backend)
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::open;
    use crate::policy::{Plan, parse_address, password};
    use crate::store::DirectoryAdmin;

    #[test]
    fn no_hash_is_exposed_by_listing() {
        let (_dir, store) = open("nohash");
        let a = parse_address("alice@example.org").unwrap();
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
}
