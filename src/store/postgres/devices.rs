//! Devices (table `devices`): the named passwords of an address with their [`CredentialId`];
//! AUTH and the revocation watcher read them. Only the SHA-256 of a password is stored; the
//! comparison is the one every backend shares (`store/devices.rs`).

use super::addresses::{begin_on_address, ensure_address, is_address};
use super::aliases::aliases_of;
use super::{Change, PostgresStore, exec, exists, now_secs, rows, to_time};
use crate::policy::{DevicePassword, EmailAddress, parse_address};
use crate::store::devices::{StoredDevice, device_exists, matching_device, new_credential};
use crate::store::{
    AuthIdentity, CredentialId, DeviceInfo, StoreError, check_device_name, device_not_found,
};
use deadpool_postgres::GenericClient;
use std::collections::HashSet;

pub(super) async fn authenticate(
    store: &PostgresStore,
    login: &str,
    password: &str,
) -> Result<Option<AuthIdentity>, StoreError> {
    let Ok(address) = parse_address(login) else {
        return Ok(None);
    };
    let client = store.client().await?;
    let found = rows(
        store,
        &client,
        "SELECT name, credential_id, password_hash FROM devices
         WHERE address = $1 ORDER BY name",
        &[&address.as_str()],
    )
    .await?;
    let devices = found
        .iter()
        .map(|row| StoredDevice {
            name: row.get(0),
            credential: CredentialId(row.get(1)),
            hash: row.get(2),
        })
        .collect();
    let Some(device) = matching_device(password, devices)? else {
        return Ok(None);
    };
    let senders = senders_with(store, &client, address.as_str()).await?;
    Ok(Some(AuthIdentity {
        address: address.into_string(),
        device: device.name,
        credential: device.credential,
        senders,
    }))
}

/// The address itself and its aliases: the senders its login owns.
async fn senders_with(
    store: &PostgresStore,
    client: &impl GenericClient,
    address: &str,
) -> Result<Vec<String>, StoreError> {
    let mut senders = vec![address.to_string()];
    senders.extend(aliases_of(store, client, address).await?);
    Ok(senders)
}

/// [`crate::store::Directory::senders_of`]: `None` if `address` is not an address.
pub(super) async fn senders_of(
    store: &PostgresStore,
    client: &impl GenericClient,
    address: &str,
) -> Result<Option<Vec<String>>, StoreError> {
    let Ok(address) = parse_address(address) else {
        return Ok(None);
    };
    if !is_address(store, client, address.as_str()).await? {
        return Ok(None);
    }
    senders_with(store, client, address.as_str())
        .await
        .map(Some)
}

/// One `= ANY($1)` query for all ids: PostgreSQL takes the whole array as one parameter.
pub(super) async fn live_credentials(
    store: &PostgresStore,
    ids: &[CredentialId],
) -> Result<HashSet<CredentialId>, StoreError> {
    let client = store.client().await?;
    let ids: Vec<&str> = ids.iter().map(|id| id.0.as_str()).collect();
    let found = rows(
        store,
        &client,
        "SELECT credential_id FROM devices WHERE credential_id = ANY($1)",
        &[&ids],
    )
    .await?;
    Ok(found.iter().map(|row| CredentialId(row.get(0))).collect())
}

pub(super) async fn add(
    store: &PostgresStore,
    address: &EmailAddress,
    name: &str,
) -> Result<DevicePassword, StoreError> {
    check_device_name(name)?;
    let address = address.as_str();
    let mut client = store.client().await?;
    let tx = begin_on_address(store, &mut client, Change::Plain, address).await?;
    if exists(
        store,
        &tx,
        "SELECT 1 FROM devices WHERE address = $1 AND name = $2",
        &[&address, &name],
    )
    .await?
    {
        return Err(device_exists(address, name));
    }
    let (password, credential) = new_credential()?;
    exec(
        store,
        &tx,
        "INSERT INTO devices (address, name, credential_id, password_hash, created_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &address,
            &name,
            &credential.0,
            &&password.hash()[..],
            &now_secs(),
        ],
    )
    .await?;
    store.commit(tx).await?;
    Ok(password)
}

pub(super) async fn list(
    store: &PostgresStore,
    address: &EmailAddress,
) -> Result<Vec<DeviceInfo>, StoreError> {
    let client = store.client().await?;
    ensure_address(store, &client, address.as_str()).await?;
    let found = rows(
        store,
        &client,
        "SELECT name, created_at FROM devices WHERE address = $1 ORDER BY name",
        &[&address.as_str()],
    )
    .await?;
    Ok(found
        .iter()
        .map(|row| DeviceInfo {
            name: row.get(0),
            created_at: to_time(row.get(1)),
        })
        .collect())
}

pub(super) async fn rotate(
    store: &PostgresStore,
    address: &EmailAddress,
    name: &str,
) -> Result<DevicePassword, StoreError> {
    let address = address.as_str();
    let mut client = store.client().await?;
    let tx = begin_on_address(store, &mut client, Change::Revoking, address).await?;
    let (password, credential) = new_credential()?;
    let changed = exec(
        store,
        &tx,
        "UPDATE devices SET password_hash = $3, credential_id = $4
         WHERE address = $1 AND name = $2",
        &[&address, &name, &&password.hash()[..], &credential.0],
    )
    .await?;
    if changed == 0 {
        return Err(device_not_found(address, name));
    }
    store.commit(tx).await?;
    Ok(password)
}

pub(super) async fn revoke(
    store: &PostgresStore,
    address: &EmailAddress,
    name: &str,
) -> Result<(), StoreError> {
    delete_devices(store, address.as_str(), Some(name))
        .await
        .map(drop)
}

pub(super) async fn revoke_all(
    store: &PostgresStore,
    address: &EmailAddress,
) -> Result<usize, StoreError> {
    let removed = delete_devices(store, address.as_str(), None).await?;
    Ok(usize::try_from(removed).unwrap_or(usize::MAX))
}

/// Deletes the device `name` of an address (`NotFound` if it has none of that name), or all
/// its devices (`None`); returns how many went. A revoking change.
async fn delete_devices(
    store: &PostgresStore,
    address: &str,
    name: Option<&str>,
) -> Result<u64, StoreError> {
    let mut client = store.client().await?;
    let tx = begin_on_address(store, &mut client, Change::Revoking, address).await?;
    let removed = exec(
        store,
        &tx,
        "DELETE FROM devices WHERE address = $1 AND ($2::text IS NULL OR name = $2)",
        &[&address, &name],
    )
    .await?;
    if let (0, Some(name)) = (removed, name) {
        return Err(device_not_found(address, name));
    }
    store.commit(tx).await?;
    Ok(removed)
}
