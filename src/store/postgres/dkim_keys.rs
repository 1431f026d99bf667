//! DKIM keys (table `dkim_keys`): one row per (domain, selector), the private key sealed by
//! `sealing.rs` (ciphertext, nonce, secret key id), the `p=` value and an `active` flag; a
//! partial unique index allows one active key per domain and algorithm.

use super::sealing::Sealed;
use super::{Change, PostgresStore, exec, exists, now_secs, opt_row, rows, to_time};
use crate::store::dkim_keys::{
    active_key_needs_force, algorithm_of, key_not_found, selector_exists,
};
use crate::store::{ActiveDkimKey, CredentialId, DkimKeyInfo, NewDkimKey, StoreError};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

/// The sealed key of a row selected as `..., sealed_key, nonce, secret_key_id` from `at`.
fn sealed(row: &Row, at: usize) -> Sealed {
    Sealed {
        ciphertext: row.get(at),
        nonce: row.get(at + 1),
        secret_key_id: row.get(at + 2),
    }
}

/// One column of the key (`domain`, `selector`); `NotFound` when there is no such key.
async fn key_column(
    store: &PostgresStore,
    client: &impl GenericClient,
    column: &str,
    domain: &str,
    selector: &str,
) -> Result<Row, StoreError> {
    opt_row(
        store,
        client,
        &format!("SELECT {column} FROM dkim_keys WHERE domain = $1 AND selector = $2"),
        &[&domain, &selector],
    )
    .await?
    .ok_or_else(|| key_not_found(domain, selector))
}

pub(super) async fn active(
    store: &PostgresStore,
    domain: &str,
) -> Result<Vec<ActiveDkimKey>, StoreError> {
    let client = store.client().await?;
    let found = rows(
        store,
        &client,
        "SELECT key_id, selector, algorithm, sealed_key, nonce, secret_key_id FROM dkim_keys
         WHERE domain = $1 AND active ORDER BY algorithm",
        &[&domain],
    )
    .await?;
    found
        .iter()
        .map(|row| {
            let selector: String = row.get(1);
            let private_key = store
                .inner
                .secret_keys
                .open(domain, &selector, &sealed(row, 3))?;
            Ok(ActiveDkimKey {
                key_id: row.get(0),
                selector,
                algorithm: algorithm_of(row.get(2))?,
                private_key,
            })
        })
        .collect()
}

pub(super) async fn add(store: &PostgresStore, key: &NewDkimKey) -> Result<(), StoreError> {
    let key_id = CredentialId::random()?.0;
    let sealed = store
        .inner
        .secret_keys
        .seal(&key.domain, &key.selector, &key.private_key)?;
    let mut client = store.client().await?;
    let tx = store.begin(&mut client, Change::Plain).await?;
    if exists(
        store,
        &tx,
        "SELECT 1 FROM dkim_keys WHERE domain = $1 AND selector = $2",
        &[&key.domain, &key.selector],
    )
    .await?
    {
        return Err(selector_exists(&key.domain, &key.selector));
    }
    let now = now_secs();
    if key.active {
        exec(
            store,
            &tx,
            "UPDATE dkim_keys SET active = false WHERE domain = $1 AND algorithm = $2 AND active",
            &[&key.domain, &key.algorithm.name()],
        )
        .await?;
    }
    let bits = i32::try_from(key.bits).unwrap_or(i32::MAX);
    exec(
        store,
        &tx,
        "INSERT INTO dkim_keys (domain, selector, algorithm, bits, key_id, sealed_key, nonce,
             secret_key_id, public_key, active, created_at, activated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        &[
            &key.domain,
            &key.selector,
            &key.algorithm.name(),
            &bits,
            &key_id,
            &sealed.ciphertext,
            &sealed.nonce,
            &sealed.secret_key_id,
            &key.public_key,
            &key.active,
            &now,
            &key.active.then_some(now),
        ],
    )
    .await?;
    store.commit(tx).await
}

pub(super) async fn list(
    store: &PostgresStore,
    domain: Option<&str>,
) -> Result<Vec<DkimKeyInfo>, StoreError> {
    let client = store.client().await?;
    let found = rows(
        store,
        &client,
        "SELECT domain, selector, algorithm, bits, public_key, active, created_at
         FROM dkim_keys WHERE $1::text IS NULL OR domain = $1 ORDER BY domain, selector",
        &[&domain],
    )
    .await?;
    found
        .iter()
        .map(|row| {
            Ok(DkimKeyInfo {
                domain: row.get(0),
                selector: row.get(1),
                algorithm: algorithm_of(row.get(2))?,
                bits: u32::try_from(row.get::<_, i32>(3)).unwrap_or(0),
                public_key: row.get(4),
                active: row.get(5),
                created_at: to_time(row.get(6)),
            })
        })
        .collect()
}

pub(super) async fn activate(
    store: &PostgresStore,
    domain: &str,
    selector: &str,
) -> Result<Option<String>, StoreError> {
    let mut client = store.client().await?;
    let tx = store.begin(&mut client, Change::Plain).await?;
    let algorithm: String = key_column(store, &tx, "algorithm", domain, selector)
        .await?
        .get(0);
    let previous: Option<String> = opt_row(
        store,
        &tx,
        "SELECT selector FROM dkim_keys WHERE domain = $1 AND algorithm = $2 AND active",
        &[&domain, &algorithm],
    )
    .await?
    .map(|row| row.get(0));
    if previous.as_deref() == Some(selector) {
        return Ok(previous);
    }
    exec(
        store,
        &tx,
        "UPDATE dkim_keys SET active = false WHERE domain = $1 AND algorithm = $2 AND active",
        &[&domain, &algorithm],
    )
    .await?;
    exec(
        store,
        &tx,
        "UPDATE dkim_keys SET active = true, activated_at = $3
         WHERE domain = $1 AND selector = $2",
        &[&domain, &selector, &now_secs()],
    )
    .await?;
    store.commit(tx).await?;
    Ok(previous)
}

pub(super) async fn remove(
    store: &PostgresStore,
    domain: &str,
    selector: &str,
    force: bool,
) -> Result<bool, StoreError> {
    let mut client = store.client().await?;
    let tx = store.begin(&mut client, Change::Plain).await?;
    let active: bool = key_column(store, &tx, "active", domain, selector)
        .await?
        .get(0);
    if active && !force {
        return Err(active_key_needs_force(domain, selector));
    }
    exec(
        store,
        &tx,
        "DELETE FROM dkim_keys WHERE domain = $1 AND selector = $2",
        &[&domain, &selector],
    )
    .await?;
    store.commit(tx).await?;
    Ok(active)
}

/// Seals again, under the current secret key, every key sealed under another one, in one
/// transaction: either every row moves to the current key or none does.
pub(super) async fn reencrypt(store: &PostgresStore) -> Result<usize, StoreError> {
    let keys = &store.inner.secret_keys;
    let mut client = store.client().await?;
    let tx = store.begin(&mut client, Change::Plain).await?;
    let stale = rows(
        store,
        &tx,
        "SELECT domain, selector, sealed_key, nonce, secret_key_id FROM dkim_keys
         WHERE secret_key_id <> $1 ORDER BY domain, selector FOR UPDATE",
        &[&keys.current_id()],
    )
    .await?;
    for row in &stale {
        let (domain, selector): (&str, &str) = (row.get(0), row.get(1));
        let plain = keys.open(domain, selector, &sealed(row, 2))?;
        let fresh = keys.seal(domain, selector, &plain)?;
        exec(
            store,
            &tx,
            "UPDATE dkim_keys SET sealed_key = $3, nonce = $4, secret_key_id = $5
             WHERE domain = $1 AND selector = $2",
            &[
                &domain,
                &selector,
                &fresh.ciphertext,
                &fresh.nonce,
                &fresh.secret_key_id,
            ],
        )
        .await?;
    }
    store.commit(tx).await?;
    Ok(stale.len())
}
