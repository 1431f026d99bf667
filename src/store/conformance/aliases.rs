//! Aliases and the namespace they share with addresses.

use super::{Backend, addr};
use crate::policy::Plan;
use crate::store::{AliasInfo, Directory, DirectoryAdmin, StoreError};

/// Aliases and addresses share one namespace; removing an address removes its aliases and
/// devices and frees the names.
pub async fn aliases_and_collisions<B: Backend>(backend: &B) {
    let f = backend.open("aliases");
    let store = &f.store;
    let a = addr("a@example.org");
    let b = addr("b@example.org");
    store.add_address(&a, Plan::Starter).unwrap();
    store.add_address(&b, Plan::Starter).unwrap();
    store.add_alias(&addr("sales@example.org"), &a).unwrap();
    store.add_alias(&addr("info@example.net"), &a).unwrap();
    store.add_alias(&addr("help@example.org"), &b).unwrap();

    // Alias named like an address, address named like an alias, duplicate alias.
    let e = store.add_alias(&b, &a).unwrap_err();
    assert_eq!(e.to_string(), "an address \"b@example.org\" already exists");
    let e = store.add_alias(&a, &a).unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
    let e = store
        .add_address(&addr("sales@example.org"), Plan::Free)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "an alias \"sales@example.org\" already exists"
    );
    let e = store.add_alias(&addr("sales@example.org"), &b).unwrap_err();
    assert_eq!(
        e.to_string(),
        "an alias \"sales@example.org\" already exists"
    );
    // Alias of an unknown address, or of an alias.
    let e = store
        .add_alias(&addr("x@example.org"), &addr("nobody@example.org"))
        .unwrap_err();
    assert_eq!(e.to_string(), "address \"nobody@example.org\" not found");
    let e = store
        .add_alias(&addr("x@example.org"), &addr("sales@example.org"))
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }));

    let of_a: Vec<_> = store
        .list_aliases(Some(&a))
        .unwrap()
        .into_iter()
        .map(|x| x.alias)
        .collect();
    assert_eq!(of_a, ["info@example.net", "sales@example.org"]);
    let all = store.list_aliases(None).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(
        all[0],
        AliasInfo {
            alias: "help@example.org".into(),
            address: b.to_string()
        }
    );
    assert!(
        store
            .list_aliases(Some(&addr("nobody@example.org")))
            .is_err()
    );

    store.remove_alias(&addr("sales@example.org")).unwrap();
    let e = store.remove_alias(&addr("sales@example.org")).unwrap_err();
    assert_eq!(e.to_string(), "alias \"sales@example.org\" not found");
    // An address is not an alias.
    assert!(store.remove_alias(&a).is_err());

    // Removing an address removes its aliases and devices, and frees the names.
    store.add_device(&a, "phone").unwrap();
    store.remove_address(&a).unwrap();
    assert_eq!(store.list_aliases(None).unwrap().len(), 1);
    store
        .add_address(&addr("info@example.net"), Plan::Free)
        .unwrap();
    store.add_address(&a, Plan::Free).unwrap();
    assert!(store.list_devices(&a).unwrap().is_empty());
}

/// An alias removed by another handle (the CLI) moves the generation and is gone from
/// `senders_of` at once; without a change the generation stays.
pub async fn senders_follow_alias_changes<B: Backend>(backend: &B) {
    let f = backend.open("senders");
    let (server, cli) = (&f.store, &f.other);
    let a = addr("a@example.org");
    cli.add_address(&a, Plan::Starter).unwrap();
    cli.add_alias(&addr("sales@example.org"), &a).unwrap();
    let before = server.generation().await.unwrap();
    assert_eq!(server.generation().await.unwrap(), before);
    assert_eq!(
        server.senders_of("A@example.org").await.unwrap().unwrap(),
        ["a@example.org", "sales@example.org"]
    );
    cli.remove_alias(&addr("sales@example.org")).unwrap();
    assert_ne!(server.generation().await.unwrap(), before);
    assert_eq!(
        server.senders_of("a@example.org").await.unwrap().unwrap(),
        ["a@example.org"]
    );
    assert_eq!(server.senders_of("nobody@example.org").await.unwrap(), None);
    assert_eq!(server.senders_of("not an address").await.unwrap(), None);
}
