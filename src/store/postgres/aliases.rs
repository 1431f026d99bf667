//! Aliases (table `aliases`): other addresses an address's owner may send as, in the namespace
//! of addresses (checked in each write, and by the schema's triggers).

use super::addresses::{begin_on_address, ensure_address, ensure_name_free};
use super::{Change, PostgresStore, exec, exists, now_secs, rows};
use crate::policy::EmailAddress;
use crate::store::{AliasInfo, StoreError, quoted};
use deadpool_postgres::GenericClient;

pub(super) async fn add(
    store: &PostgresStore,
    alias: &EmailAddress,
    address: &EmailAddress,
) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = begin_on_address(store, &mut client, Change::Plain, address.as_str()).await?;
    ensure_name_free(store, &tx, alias.as_str()).await?;
    exec(
        store,
        &tx,
        "INSERT INTO aliases (alias, address, created_at) VALUES ($1, $2, $3)",
        &[&alias.as_str(), &address.as_str(), &now_secs()],
    )
    .await?;
    store.commit(tx).await
}

/// Removing an alias takes a sender away from live sessions: a revoking change.
pub(super) async fn remove(store: &PostgresStore, alias: &EmailAddress) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = store.begin(&mut client, Change::Revoking).await?;
    let removed = exec(
        store,
        &tx,
        "DELETE FROM aliases WHERE alias = $1",
        &[&alias.as_str()],
    )
    .await?;
    if removed == 0 {
        return Err(StoreError::NotFound {
            what: format!("alias {}", quoted(alias.as_str())),
        });
    }
    store.commit(tx).await
}

pub(super) async fn list(
    store: &PostgresStore,
    address: Option<&EmailAddress>,
) -> Result<Vec<AliasInfo>, StoreError> {
    let client = store.client().await?;
    let found = match address {
        Some(address) => {
            ensure_address(store, &client, address.as_str()).await?;
            rows(
                store,
                &client,
                "SELECT alias, address FROM aliases WHERE address = $1 ORDER BY alias",
                &[&address.as_str()],
            )
            .await?
        }
        None => {
            rows(
                store,
                &client,
                "SELECT alias, address FROM aliases ORDER BY alias",
                &[],
            )
            .await?
        }
    };
    Ok(found
        .iter()
        .map(|row| AliasInfo {
            alias: row.get(0),
            address: row.get(1),
        })
        .collect())
}

/// The aliases of an address, sorted: with the address, the senders its login owns.
pub(super) async fn aliases_of(
    store: &PostgresStore,
    client: &impl GenericClient,
    address: &str,
) -> Result<Vec<String>, StoreError> {
    let found = rows(
        store,
        client,
        "SELECT alias FROM aliases WHERE address = $1 ORDER BY alias",
        &[&address],
    )
    .await?;
    Ok(found.iter().map(|row| row.get(0)).collect())
}

pub(super) async fn is_alias(
    store: &PostgresStore,
    client: &impl GenericClient,
    alias: &str,
) -> Result<bool, StoreError> {
    exists(
        store,
        client,
        "SELECT 1 FROM aliases WHERE alias = $1",
        &[&alias],
    )
    .await
}
