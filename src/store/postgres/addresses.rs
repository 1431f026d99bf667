//! Addresses (table `addresses`): hosted mailboxes with their plan, and the namespace checks
//! every write of an address or alias makes.

use super::{Change, PostgresStore, aliases, exec, exists, now_secs, rows, to_time};
use crate::policy::{EmailAddress, Plan};
use crate::store::{AddressInfo, StoreError, address_not_found, name_free, stored_plan};
use deadpool_postgres::GenericClient;

pub(super) async fn add(
    store: &PostgresStore,
    address: &EmailAddress,
    plan: Plan,
) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = store.begin(&mut client, Change::Plain).await?;
    ensure_name_free(store, &tx, address.as_str()).await?;
    exec(
        store,
        &tx,
        "INSERT INTO addresses (address, plan, created_at) VALUES ($1, $2, $3)",
        &[&address.as_str(), &plan.as_str(), &now_secs()],
    )
    .await?;
    store.commit(tx).await
}

pub(super) async fn remove(
    store: &PostgresStore,
    address: &EmailAddress,
) -> Result<(), StoreError> {
    let address = address.as_str();
    let mut client = store.client().await?;
    let tx = store.begin(&mut client, Change::Revoking).await?;
    ensure_address(store, &tx, address).await?;
    // Explicit rather than relying on ON DELETE CASCADE alone.
    for sql in [
        "DELETE FROM devices WHERE address = $1",
        "DELETE FROM aliases WHERE address = $1",
        "DELETE FROM addresses WHERE address = $1",
    ] {
        exec(store, &tx, sql, &[&address]).await?;
    }
    store.commit(tx).await
}

pub(super) async fn list(store: &PostgresStore) -> Result<Vec<AddressInfo>, StoreError> {
    let client = store.client().await?;
    let found = rows(
        store,
        &client,
        "SELECT address, plan, created_at FROM addresses ORDER BY address",
        &[],
    )
    .await?;
    found
        .iter()
        .map(|row| {
            let address: String = row.get(0);
            let plan = stored_plan(&address, row.get(1))?;
            Ok(AddressInfo {
                address,
                plan,
                created_at: to_time(row.get(2)),
            })
        })
        .collect()
}

pub(super) async fn is_address(
    store: &PostgresStore,
    client: &impl GenericClient,
    address: &str,
) -> Result<bool, StoreError> {
    exists(
        store,
        client,
        "SELECT 1 FROM addresses WHERE address = $1",
        &[&address],
    )
    .await
}

/// `NotFound` unless `address` is an address (an alias is not).
pub(super) async fn ensure_address(
    store: &PostgresStore,
    client: &impl GenericClient,
    address: &str,
) -> Result<(), StoreError> {
    if is_address(store, client, address).await? {
        Ok(())
    } else {
        Err(address_not_found(address))
    }
}

/// A write transaction ([`PostgresStore::begin`]) on an existing address: `NotFound` (and
/// nothing written) otherwise.
pub(super) async fn begin_on_address<'c>(
    store: &PostgresStore,
    client: &'c mut deadpool_postgres::Client,
    change: Change,
    address: &str,
) -> Result<deadpool_postgres::Transaction<'c>, StoreError> {
    let tx = store.begin(client, change).await?;
    ensure_address(store, &tx, address).await?;
    Ok(tx)
}

/// `AlreadyExists` if `name` is taken as an address or an alias.
pub(super) async fn ensure_name_free(
    store: &PostgresStore,
    client: &impl GenericClient,
    name: &str,
) -> Result<(), StoreError> {
    name_free(
        name,
        is_address(store, client, name).await?,
        aliases::is_alias(store, client, name).await?,
    )
}
