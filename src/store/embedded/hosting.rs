//! Hosting accounts (tables `hosting_accounts`, `hosting_networks`, `hosting_domains`): the
//! web-hosting customers relaying on port 25, their client networks and sender domains, and
//! the lookup of the account a client address belongs to.
//!
//! A network is stored as text (for listing) and as its first and last address, big-endian,
//! so that the lookup is one range query over an index, longest prefix first; the account and
//! its domains come back from one statement, so from one snapshot.

use super::{EmbeddedStore, backend, exists, now_secs, to_time};
use crate::store::accounts::{
    checked_hosting_account, hosting_exists, hosting_not_found, ip_key, network_range,
    network_taken, stored_limit, stored_network,
};
use crate::store::{HostingAccount, HostingAccountInfo, StoreError};
use ipnet::IpNet;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub(super) fn account_for(
    conn: &Connection,
    client: IpAddr,
) -> Result<Option<HostingAccount>, StoreError> {
    let (family, ip) = ip_key(client);
    // One statement, so the account and its domains come from one snapshot.
    let mut stmt = conn
        .prepare_cached(
            "WITH best AS (
                 SELECT account, network FROM hosting_networks
                 WHERE family = ?1 AND first <= ?2 AND last >= ?2
                 ORDER BY prefix DESC LIMIT 1
             )
             SELECT best.account, best.network, d.domain
             FROM best JOIN hosting_domains d ON d.account = best.account
             ORDER BY d.domain",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![family, ip], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .map_err(backend)?;
    let mut found: Option<HostingAccount> = None;
    for row in rows {
        let (name, network, domain) = row.map_err(backend)?;
        match &mut found {
            Some(account) => account.domains.push(domain),
            None => {
                found = Some(HostingAccount {
                    name,
                    domains: vec![domain],
                    network: stored_network(&network)?,
                });
            }
        }
    }
    Ok(found)
}

pub(super) fn add(
    store: &EmbeddedStore,
    name: &str,
    networks: &[IpNet],
    domains: &[String],
) -> Result<(), StoreError> {
    let (networks, domains) = checked_hosting_account(name, networks, domains)?;
    store.write(|tx| {
        if exists(tx, "SELECT 1 FROM hosting_accounts WHERE name = ?1", [name])? {
            return Err(hosting_exists(name));
        }
        tx.execute(
            "INSERT INTO hosting_accounts (name, created_at) VALUES (?1, ?2)",
            params![name, now_secs()],
        )
        .map_err(backend)?;
        for network in &networks {
            let (family, first, last) = network_range(network);
            let prefix = i64::from(network.prefix_len());
            let owner = tx
                .query_row(
                    "SELECT account FROM hosting_networks
                     WHERE family = ?1 AND first = ?2 AND prefix = ?3",
                    params![family, first, prefix],
                    |row| row.get::<_, String>(0),
                )
                .optional()
                .map_err(backend)?;
            if let Some(owner) = owner {
                return Err(network_taken(network, &owner));
            }
            tx.execute(
                "INSERT INTO hosting_networks (account, network, family, first, last, prefix)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![name, network.to_string(), family, first, last, prefix],
            )
            .map_err(backend)?;
        }
        for domain in &domains {
            tx.execute(
                "INSERT INTO hosting_domains (account, domain) VALUES (?1, ?2)",
                params![name, domain],
            )
            .map_err(backend)?;
        }
        Ok(())
    })
}

pub(super) fn remove(store: &EmbeddedStore, name: &str) -> Result<(), StoreError> {
    store.write(|tx| {
        // Explicit rather than relying on ON DELETE CASCADE alone.
        tx.execute("DELETE FROM hosting_networks WHERE account = ?1", [name])
            .map_err(backend)?;
        tx.execute("DELETE FROM hosting_domains WHERE account = ?1", [name])
            .map_err(backend)?;
        let removed = tx
            .execute("DELETE FROM hosting_accounts WHERE name = ?1", [name])
            .map_err(backend)?;
        if removed == 0 {
            return Err(hosting_not_found(name));
        }
        Ok(())
    })
}

pub(super) fn list(store: &EmbeddedStore) -> Result<Vec<HostingAccountInfo>, StoreError> {
    let mut conn = store.lock();
    // A read transaction: the three queries see one snapshot.
    let tx = conn.transaction().map_err(backend)?;
    let mut accounts = BTreeMap::new();
    {
        let mut stmt = tx
            .prepare("SELECT name, daily_limit, created_at FROM hosting_accounts")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(backend)?;
        for row in rows {
            let (name, daily, created_at) = row.map_err(backend)?;
            accounts.insert(
                name.clone(),
                HostingAccountInfo {
                    name,
                    networks: Vec::new(),
                    domains: Vec::new(),
                    daily_limit: stored_limit(daily)?,
                    created_at: to_time(created_at),
                },
            );
        }
    }
    let networks = string_pairs(
        &tx,
        "SELECT account, network FROM hosting_networks ORDER BY family, first, prefix",
    )?;
    for (account, network) in networks {
        if let Some(info) = accounts.get_mut(&account) {
            info.networks.push(stored_network(&network)?);
        }
    }
    let domains = string_pairs(
        &tx,
        "SELECT account, domain FROM hosting_domains ORDER BY domain",
    )?;
    for (account, domain) in domains {
        if let Some(info) = accounts.get_mut(&account) {
            info.domains.push(domain);
        }
    }
    Ok(accounts.into_values().collect())
}

/// The rows of a two-text-column query.
fn string_pairs(conn: &Connection, sql: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare(sql).map_err(backend)?;
    let rows = stmt
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::super::tests::open;
    use crate::store::DirectoryAdmin;

    /// The SQL side of removing an account: its network rows go with it (the shared
    /// behaviour is in the conformance case `hosting_add_list_remove`).
    #[test]
    fn removing_an_account_deletes_its_network_rows() {
        let (_dir, store) = open("hosting-rows");
        let nets = |list: &[&str]| list.iter().map(|n| n.parse().unwrap()).collect::<Vec<_>>();
        store
            .add_hosting_account(
                "web2",
                &nets(&["2001:db8:2::/48", "192.0.2.0/24"]),
                &["example.net".to_string()],
            )
            .unwrap();
        store
            .add_hosting_account(
                "web1",
                &nets(&["198.51.100.7/32"]),
                &["a.example".to_string()],
            )
            .unwrap();
        store.remove_hosting_account("web2").unwrap();
        let rows: i64 = store
            .lock()
            .query_row("SELECT count(*) FROM hosting_networks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }
}
