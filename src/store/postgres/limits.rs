//! Daily limit overrides: the nullable `daily_limit` column of `addresses` and
//! `hosting_accounts`, so an override disappears with its identity.

use super::{Change, PostgresStore, exec, opt_row, rows};
use crate::store::accounts::{
    OVERRIDE_QUERIES, check_daily_limit, identity_not_found, stored_limit,
};
use crate::store::{IdentityLimits, LimitOverride, QuotaIdentity, StoreError, stored_plan};
use deadpool_postgres::GenericClient;

/// The table and key column holding an identity's `daily_limit`.
fn limit_table(identity: &QuotaIdentity) -> (&'static str, &'static str) {
    match identity {
        QuotaIdentity::Address(_) => ("addresses", "address"),
        QuotaIdentity::Hosting(_) => ("hosting_accounts", "name"),
    }
}

/// Plan and override of an identity; `None` if it does not exist.
pub(super) async fn read(
    store: &PostgresStore,
    client: &impl GenericClient,
    identity: &QuotaIdentity,
) -> Result<Option<IdentityLimits>, StoreError> {
    let (table, key) = limit_table(identity);
    let plan = match identity {
        QuotaIdentity::Address(_) => "plan",
        QuotaIdentity::Hosting(_) => "NULL::text",
    };
    let row = opt_row(
        store,
        client,
        &format!("SELECT {plan}, daily_limit FROM {table} WHERE {key} = $1"),
        &[&identity.name()],
    )
    .await?;
    row.map(|row| {
        let plan = row
            .get::<_, Option<&str>>(0)
            .map(|plan| stored_plan(identity.name(), plan))
            .transpose()?;
        Ok(IdentityLimits {
            plan,
            daily_override: stored_limit(row.get(1))?,
        })
    })
    .transpose()
}

pub(super) async fn set(
    store: &PostgresStore,
    identity: &QuotaIdentity,
    daily: u32,
) -> Result<Option<u32>, StoreError> {
    check_daily_limit(daily)?;
    write_limit(store, identity, Some(daily)).await
}

pub(super) async fn clear(
    store: &PostgresStore,
    identity: &QuotaIdentity,
) -> Result<Option<u32>, StoreError> {
    write_limit(store, identity, None).await
}

/// Sets (`Some`) or clears (`None`) the override of an existing identity; returns the
/// previous one.
async fn write_limit(
    store: &PostgresStore,
    identity: &QuotaIdentity,
    daily: Option<u32>,
) -> Result<Option<u32>, StoreError> {
    let mut client = store.client().await?;
    let tx = store.begin(&mut client, Change::Plain).await?;
    let previous = read(store, &tx, identity)
        .await?
        .ok_or_else(|| identity_not_found(identity))?;
    let (table, key) = limit_table(identity);
    exec(
        store,
        &tx,
        &format!("UPDATE {table} SET daily_limit = $2 WHERE {key} = $1"),
        &[&identity.name(), &daily.map(i64::from)],
    )
    .await?;
    store.commit(tx).await?;
    Ok(previous.daily_override)
}

pub(super) async fn of(
    store: &PostgresStore,
    identity: &QuotaIdentity,
) -> Result<IdentityLimits, StoreError> {
    let client = store.client().await?;
    read(store, &client, identity)
        .await?
        .ok_or_else(|| identity_not_found(identity))
}

pub(super) async fn list(store: &PostgresStore) -> Result<Vec<LimitOverride>, StoreError> {
    let client = store.client().await?;
    let mut out = Vec::new();
    for (sql, make) in OVERRIDE_QUERIES {
        for row in rows(store, &client, sql, &[]).await? {
            if let Some(daily) = stored_limit(row.get(1))? {
                out.push(LimitOverride {
                    identity: make(row.get(0)),
                    daily,
                });
            }
        }
    }
    Ok(out)
}
