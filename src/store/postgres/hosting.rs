//! Hosting accounts (tables `hosting_accounts`, `hosting_networks`, `hosting_domains`) and the
//! port-25 lookup of the account a client address belongs to.
//!
//! Networks are stored as the embedded store stores them (text for listing, family and first
//! and last address as `bytea` for the lookup, see [`network_range`]): `bytea` compares
//! byte-wise, so the lookup is one range query over the primary key, longest prefix first, and
//! the account's domains come back from the same statement, so from one snapshot.

use super::{Change, PostgresStore, exec, exists, now_secs, opt_row, rows, to_time};
use crate::store::accounts::{
    checked_hosting_account, hosting_exists, hosting_not_found, ip_key, network_range,
    network_taken, stored_limit, stored_network,
};
use crate::store::{HostingAccount, HostingAccountInfo, StoreError};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub(super) async fn account_for(
    store: &PostgresStore,
    client_ip: IpAddr,
) -> Result<Option<HostingAccount>, StoreError> {
    let (family, ip) = ip_key(client_ip);
    let client = store.client().await?;
    let found = rows(
        store,
        &client,
        "WITH best AS (
             SELECT account, network FROM hosting_networks
             WHERE family = $1 AND first <= $2 AND last >= $2
             ORDER BY prefix DESC LIMIT 1
         )
         SELECT best.account, best.network, d.domain
         FROM best JOIN hosting_domains d ON d.account = best.account
         ORDER BY d.domain",
        &[&family, &ip],
    )
    .await?;
    let Some(first) = found.first() else {
        return Ok(None);
    };
    Ok(Some(HostingAccount {
        name: first.get(0),
        network: stored_network(first.get(1))?,
        domains: found.iter().map(|row| row.get(2)).collect(),
    }))
}

pub(super) async fn add(
    store: &PostgresStore,
    name: &str,
    given_networks: &[IpNet],
    given_domains: &[String],
) -> Result<(), StoreError> {
    let (networks, domains) = checked_hosting_account(name, given_networks, given_domains)?;
    let mut client = store.client().await?;
    let tx = store.begin(&mut client, Change::Plain).await?;
    if exists(
        store,
        &tx,
        "SELECT 1 FROM hosting_accounts WHERE name = $1",
        &[&name],
    )
    .await?
    {
        return Err(hosting_exists(name));
    }
    exec(
        store,
        &tx,
        "INSERT INTO hosting_accounts (name, created_at) VALUES ($1, $2)",
        &[&name, &now_secs()],
    )
    .await?;
    for network in &networks {
        let (family, first, last) = network_range(network);
        let prefix = i16::from(network.prefix_len());
        let owner = opt_row(
            store,
            &tx,
            "SELECT account FROM hosting_networks
             WHERE family = $1 AND first = $2 AND prefix = $3",
            &[&family, &first, &prefix],
        )
        .await?;
        if let Some(owner) = owner {
            return Err(network_taken(network, owner.get(0)));
        }
        exec(
            store,
            &tx,
            "INSERT INTO hosting_networks (account, network, family, first, last, prefix)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&name, &network.to_string(), &family, &first, &last, &prefix],
        )
        .await?;
    }
    for domain in &domains {
        exec(
            store,
            &tx,
            "INSERT INTO hosting_domains (account, domain) VALUES ($1, $2)",
            &[&name, domain],
        )
        .await?;
    }
    store.commit(tx).await
}

pub(super) async fn remove(store: &PostgresStore, name: &str) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = store.begin(&mut client, Change::Plain).await?;
    // Explicit rather than relying on ON DELETE CASCADE alone.
    exec(
        store,
        &tx,
        "DELETE FROM hosting_networks WHERE account = $1",
        &[&name],
    )
    .await?;
    exec(
        store,
        &tx,
        "DELETE FROM hosting_domains WHERE account = $1",
        &[&name],
    )
    .await?;
    let removed = exec(
        store,
        &tx,
        "DELETE FROM hosting_accounts WHERE name = $1",
        &[&name],
    )
    .await?;
    if removed == 0 {
        return Err(hosting_not_found(name));
    }
    store.commit(tx).await
}

pub(super) async fn list(store: &PostgresStore) -> Result<Vec<HostingAccountInfo>, StoreError> {
    let mut client = store.client().await?;
    // One REPEATABLE READ transaction: the three queries see one snapshot.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| store.backend(&e))?;
    let mut accounts = BTreeMap::new();
    for row in rows(
        store,
        &tx,
        "SELECT name, daily_limit, created_at FROM hosting_accounts",
        &[],
    )
    .await?
    {
        let name: String = row.get(0);
        accounts.insert(
            name.clone(),
            HostingAccountInfo {
                name,
                networks: Vec::new(),
                domains: Vec::new(),
                daily_limit: stored_limit(row.get(1))?,
                created_at: to_time(row.get(2)),
            },
        );
    }
    for row in rows(
        store,
        &tx,
        "SELECT account, network FROM hosting_networks ORDER BY family, first, prefix",
        &[],
    )
    .await?
    {
        if let Some(info) = accounts.get_mut(row.get::<_, &str>(0)) {
            info.networks.push(stored_network(row.get(1))?);
        }
    }
    for row in rows(
        store,
        &tx,
        "SELECT account, domain FROM hosting_domains ORDER BY domain",
        &[],
    )
    .await?
    {
        if let Some(info) = accounts.get_mut(row.get::<_, &str>(0)) {
            info.domains.push(row.get(1));
        }
    }
    tx.commit().await.map_err(|e| store.backend(&e))?;
    Ok(accounts.into_values().collect())
}
