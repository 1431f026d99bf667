//! Daily limit overrides: the nullable `daily_limit` column of `addresses` and
//! `hosting_accounts`, so an override disappears with its identity.

use super::{EmbeddedStore, backend};
use crate::store::accounts::{
    OVERRIDE_QUERIES, check_daily_limit, identity_not_found, stored_limit,
};
use crate::store::{IdentityLimits, LimitOverride, QuotaIdentity, StoreError, stored_plan};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

/// The table and key column holding an identity's `daily_limit`.
fn limit_table(identity: &QuotaIdentity) -> (&'static str, &'static str) {
    match identity {
        QuotaIdentity::Address(_) => ("addresses", "address"),
        QuotaIdentity::Hosting(_) => ("hosting_accounts", "name"),
    }
}

/// Plan and override of an identity; `None` if it does not exist.
pub(super) fn read(
    conn: &Connection,
    identity: &QuotaIdentity,
) -> Result<Option<IdentityLimits>, StoreError> {
    match identity {
        QuotaIdentity::Address(address) => {
            let row = conn
                .prepare_cached("SELECT plan, daily_limit FROM addresses WHERE address = ?1")
                .map_err(backend)?
                .query_row([address], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Option<i64>>(1)?))
                })
                .optional()
                .map_err(backend)?;
            row.map(|(plan, daily)| {
                Ok(IdentityLimits {
                    plan: Some(stored_plan(address, &plan)?),
                    daily_override: stored_limit(daily)?,
                })
            })
            .transpose()
        }
        QuotaIdentity::Hosting(name) => {
            let row = conn
                .prepare_cached("SELECT daily_limit FROM hosting_accounts WHERE name = ?1")
                .map_err(backend)?
                .query_row([name], |row| row.get::<_, Option<i64>>(0))
                .optional()
                .map_err(backend)?;
            row.map(|daily| {
                Ok(IdentityLimits {
                    plan: None,
                    daily_override: stored_limit(daily)?,
                })
            })
            .transpose()
        }
    }
}

/// Sets or clears (`None`) the override of an existing identity; returns the previous one.
fn write_limit(
    tx: &Transaction<'_>,
    identity: &QuotaIdentity,
    daily: Option<u32>,
) -> Result<Option<u32>, StoreError> {
    let previous = read(tx, identity)?.ok_or_else(|| identity_not_found(identity))?;
    let (table, key) = limit_table(identity);
    tx.execute(
        &format!("UPDATE {table} SET daily_limit = ?2 WHERE {key} = ?1"),
        params![identity.name(), daily.map(i64::from)],
    )
    .map_err(backend)?;
    Ok(previous.daily_override)
}

pub(super) fn set(
    store: &EmbeddedStore,
    identity: &QuotaIdentity,
    daily: u32,
) -> Result<Option<u32>, StoreError> {
    check_daily_limit(daily)?;
    store.write(|tx| write_limit(tx, identity, Some(daily)))
}

pub(super) fn clear(
    store: &EmbeddedStore,
    identity: &QuotaIdentity,
) -> Result<Option<u32>, StoreError> {
    store.write(|tx| write_limit(tx, identity, None))
}

pub(super) fn of(
    store: &EmbeddedStore,
    identity: &QuotaIdentity,
) -> Result<IdentityLimits, StoreError> {
    read(&store.lock(), identity)?.ok_or_else(|| identity_not_found(identity))
}

pub(super) fn list(store: &EmbeddedStore) -> Result<Vec<LimitOverride>, StoreError> {
    let conn = store.lock();
    let mut out = Vec::new();
    for (sql, make) in OVERRIDE_QUERIES {
        let mut stmt = conn.prepare(sql).map_err(backend)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, Option<i64>>(1)?))
            })
            .map_err(backend)?;
        for row in rows {
            let (name, daily) = row.map_err(backend)?;
            if let Some(daily) = stored_limit(daily)? {
                out.push(LimitOverride {
                    identity: make(name),
                    daily,
                });
            }
        }
    }
    Ok(out)
}
