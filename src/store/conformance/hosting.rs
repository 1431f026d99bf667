//! Hosting accounts and the port-25 lookup of a client's account.

use super::{Backend, net, strings};
use crate::store::{
    Directory, DirectoryAdmin, HostingAccount, IdentityLimits, QuotaIdentity, StoreError,
};
use ipnet::IpNet;
use std::net::IpAddr;

/// Accounts with networks and domains: listed sorted, duplicates ignored, invalid input refused
/// before anything is written, and a removed account frees its networks.
pub async fn hosting_add_list_remove<B: Backend>(backend: &B) {
    let f = backend.open("hosting");
    let store = &f.store;
    store
        .add_hosting_account(
            "web2",
            &[
                net("2001:db8:2::/48"),
                net("192.0.2.0/24"),
                net("192.0.2.0/24"),
            ],
            &strings(&["Shop.Example.org", "example.net", "shop.example.org"]),
        )
        .unwrap();
    store
        .add_hosting_account("web1", &[net("198.51.100.7/32")], &strings(&["a.example"]))
        .unwrap();
    let list = store.list_hosting_accounts().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].name, "web1");
    assert_eq!(list[1].name, "web2");
    assert_eq!(
        list[1].networks,
        [net("192.0.2.0/24"), net("2001:db8:2::/48")]
    );
    assert_eq!(list[1].domains, ["example.net", "shop.example.org"]);
    assert_eq!(list[1].daily_limit, None);

    let e = store
        .add_hosting_account("web1", &[net("203.0.113.0/24")], &strings(&["b.example"]))
        .unwrap_err();
    assert_eq!(e.to_string(), "hosting account \"web1\" already exists");
    // Invalid input is refused before anything is written.
    for (name, nets, domains) in [
        ("Web3", vec![net("203.0.113.0/24")], strings(&["b.example"])),
        ("web3", vec![], strings(&["b.example"])),
        ("web3", vec![net("203.0.113.0/24")], vec![]),
        ("web3", vec![net("203.0.113.1/24")], strings(&["b.example"])),
        (
            "web3",
            vec![net("203.0.113.0/24")],
            strings(&["b_example.org"]),
        ),
    ] {
        let e = store
            .add_hosting_account(name, &nets, &domains)
            .unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    }
    assert_eq!(store.list_hosting_accounts().unwrap().len(), 2);

    store.remove_hosting_account("web2").unwrap();
    let e = store.remove_hosting_account("web2").unwrap_err();
    assert_eq!(e.to_string(), "hosting account \"web2\" not found");
    assert_eq!(store.list_hosting_accounts().unwrap().len(), 1);
    // Its network is free again.
    store
        .add_hosting_account("web3", &[net("192.0.2.0/24")], &strings(&["c.example"]))
        .unwrap();
}

/// A network of another account with the same prefix is refused, with nothing of the new
/// account kept; nested networks are fine.
pub async fn equal_networks_are_refused_nested_ones_allowed<B: Backend>(backend: &B) {
    let f = backend.open("equal");
    let store = &f.store;
    store
        .add_hosting_account("wide", &[net("10.0.0.0/8")], &strings(&["wide.example"]))
        .unwrap();
    let e = store
        .add_hosting_account(
            "other",
            &[net("172.16.0.0/12"), net("10.0.0.0/8")],
            &strings(&["other.example"]),
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "network 10.0.0.0/8 (same prefix length) of hosting account \"wide\" already exists"
    );
    // Nothing of the refused account was kept.
    assert_eq!(store.list_hosting_accounts().unwrap().len(), 1);
    store
        .add_hosting_account("narrow", &[net("10.1.0.0/16")], &strings(&["n.example"]))
        .unwrap();
}

/// The port-25 lookup takes the longest prefix, IPv4-mapped clients as IPv4, and agrees with
/// [`crate::store::accounts::longest_match`].
pub async fn hosting_lookup_takes_the_longest_prefix<B: Backend>(backend: &B) {
    let f = backend.open("lookup");
    let store = &f.store;
    let accounts = [
        ("wide", "10.0.0.0/8"),
        ("mid", "10.1.0.0/16"),
        ("narrow", "10.1.2.0/24"),
        ("host", "10.1.2.3/32"),
        ("six", "2001:db8::/32"),
        ("six-narrow", "2001:db8:0:1::/64"),
        ("everything6", "::/0"),
    ];
    for (name, network) in accounts {
        store
            .add_hosting_account(
                name,
                &[net(network)],
                &strings(&[&format!("{name}.example"), "shared.example"]),
            )
            .unwrap();
    }
    let at = async |ip: &str| {
        store
            .hosting_account_for(ip.parse().unwrap())
            .await
            .unwrap()
            .map(|a| a.name)
    };
    assert_eq!(at("10.1.2.3").await.as_deref(), Some("host"));
    assert_eq!(at("10.1.2.4").await.as_deref(), Some("narrow"));
    assert_eq!(at("10.1.3.4").await.as_deref(), Some("mid"));
    assert_eq!(at("10.200.0.1").await.as_deref(), Some("wide"));
    assert_eq!(at("10.255.255.255").await.as_deref(), Some("wide"));
    assert_eq!(at("10.0.0.0").await.as_deref(), Some("wide"));
    assert_eq!(at("11.0.0.0").await, None);
    assert_eq!(at("9.255.255.255").await, None);
    assert_eq!(at("::ffff:10.1.2.3").await.as_deref(), Some("host"));
    assert_eq!(at("2001:db8:0:1::25").await.as_deref(), Some("six-narrow"));
    assert_eq!(at("2001:db8:0:2::25").await.as_deref(), Some("six"));
    assert_eq!(at("fe80::1").await.as_deref(), Some("everything6"));

    let found = store
        .hosting_account_for("10.1.2.9".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        found,
        HostingAccount {
            name: "narrow".into(),
            domains: strings(&["narrow.example", "shared.example"]),
            network: net("10.1.2.0/24"),
        }
    );

    // The SQL range query agrees with the reference matcher on many addresses.
    let table: Vec<(IpNet, &str)> = accounts.iter().map(|(n, c)| (net(c), *n)).collect();
    let mut x: u32 = 0x0a01_0203;
    for _ in 0..300 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let ip = IpAddr::from(std::net::Ipv4Addr::from((x & 0x00ff_ffff) | 0x0a00_0000));
        let ip = if x.is_multiple_of(3) {
            ip
        } else if x % 3 == 1 {
            IpAddr::from(std::net::Ipv4Addr::from(x))
        } else {
            IpAddr::from(std::net::Ipv6Addr::from(
                (0x2001_0db8_u128 << 96) | (u128::from(x % 4) << 64) | u128::from(x),
            ))
        };
        let expected = crate::store::accounts::longest_match(ip, &table).map(|(_, n)| *n);
        let got = store.hosting_account_for(ip).await.unwrap();
        assert_eq!(got.as_ref().map(|a| a.name.as_str()), expected, "{ip}");
    }

    store.remove_hosting_account("host").unwrap();
    assert_eq!(at("10.1.2.3").await.as_deref(), Some("narrow"));
}

/// Accounts and overrides set by another handle are seen by the lookup at the next call.
pub async fn the_server_sees_hosting_changes_at_once<B: Backend>(backend: &B) {
    let f = backend.open("hosting-shared");
    let (server, cli) = (&f.store, &f.other);
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    assert!(server.hosting_account_for(ip).await.unwrap().is_none());
    cli.add_hosting_account("web1", &[net("192.0.2.0/24")], &strings(&["example.org"]))
        .unwrap();
    assert_eq!(
        server.hosting_account_for(ip).await.unwrap().unwrap().name,
        "web1"
    );
    cli.set_limit(&QuotaIdentity::Hosting("web1".into()), 75)
        .unwrap();
    assert_eq!(
        server
            .limits_of(&QuotaIdentity::Hosting("web1".into()))
            .await
            .unwrap(),
        Some(IdentityLimits {
            plan: None,
            daily_override: Some(75)
        })
    );
    cli.remove_hosting_account("web1").unwrap();
    assert!(server.hosting_account_for(ip).await.unwrap().is_none());
}
