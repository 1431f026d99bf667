//! Devices: passwords, AUTH, rotation, revocation and the revocation watcher's question.

use super::{Backend, addr, auth};
use crate::policy::Plan;
use crate::store::{CredentialId, Directory, DirectoryAdmin, StoreError};
use std::collections::HashSet;

/// Devices per address, and AUTH with any case of the login and any device password, nothing else.
pub async fn devices_add_list_authenticate<B: Backend>(backend: &B) {
    let f = backend.open("devices");
    let store = &f.store;
    let a = addr("alice@example.org");
    store.add_address(&a, Plan::Starter).unwrap();
    store.add_alias(&addr("sales@example.org"), &a).unwrap();
    let phone = store.add_device(&a, "phone").unwrap();
    let laptop = store.add_device(&a, "laptop").unwrap();
    assert_ne!(phone.expose(), laptop.expose());

    let names: Vec<_> = store
        .list_devices(&a)
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["laptop", "phone"]);
    let e = store.add_device(&a, "phone").unwrap_err();
    assert_eq!(
        e.to_string(),
        "device \"phone\" of address \"alice@example.org\" already exists"
    );
    assert!(matches!(
        store.add_device(&a, "").unwrap_err(),
        StoreError::Invalid(_)
    ));
    assert!(matches!(
        store
            .add_device(&addr("bob@example.org"), "phone")
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));

    let id = auth(store, "Alice@EXAMPLE.org", phone.expose())
        .await
        .unwrap();
    assert_eq!(id.address, "alice@example.org");
    assert_eq!(id.device, "phone");
    assert_eq!(id.senders, ["alice@example.org", "sales@example.org"]);
    let id2 = auth(store, "alice@example.org", laptop.expose())
        .await
        .unwrap();
    assert_eq!(id2.device, "laptop");
    assert_ne!(id.credential, id2.credential);

    // Wrong password, unknown address, alias as login, invalid login.
    assert!(auth(store, "alice@example.org", "nope").await.is_none());
    assert!(
        auth(store, "bob@example.org", phone.expose())
            .await
            .is_none()
    );
    assert!(
        auth(store, "sales@example.org", phone.expose())
            .await
            .is_none()
    );
    assert!(auth(store, "alice", phone.expose()).await.is_none());
    assert!(
        auth(store, "alice@example.org", &phone.expose().to_uppercase())
            .await
            .is_none()
    );
}

/// Rotation gives a new password and credential id; the old ones stop at once.
pub async fn rotate_changes_password_and_credential<B: Backend>(backend: &B) {
    let f = backend.open("rotate");
    let store = &f.store;
    let a = addr("alice@example.org");
    store.add_address(&a, Plan::Starter).unwrap();
    let old = store.add_device(&a, "phone").unwrap();
    let laptop = store.add_device(&a, "laptop").unwrap();
    let old_id = auth(store, a.as_str(), old.expose()).await.unwrap();
    let laptop_id = auth(store, a.as_str(), laptop.expose()).await.unwrap();
    let created = store.list_devices(&a).unwrap();

    let new = store.rotate_device(&a, "phone").unwrap();
    assert_ne!(old.expose(), new.expose());
    assert!(auth(store, a.as_str(), old.expose()).await.is_none());
    let new_id = auth(store, a.as_str(), new.expose()).await.unwrap();
    assert_eq!(new_id.device, "phone");
    assert_ne!(new_id.credential, old_id.credential);
    // The other device is untouched; rotation keeps the creation time.
    assert!(auth(store, a.as_str(), laptop.expose()).await.is_some());
    assert_eq!(store.list_devices(&a).unwrap(), created);

    let ids = [
        old_id.credential.clone(),
        new_id.credential.clone(),
        laptop_id.credential.clone(),
    ];
    let live = store.live_credentials(&ids).await.unwrap();
    assert_eq!(
        live,
        HashSet::from([new_id.credential.clone(), laptop_id.credential.clone()])
    );

    let e = store.rotate_device(&a, "tablet").unwrap_err();
    assert_eq!(
        e.to_string(),
        "device \"tablet\" of address \"alice@example.org\" not found"
    );
    assert!(
        store
            .rotate_device(&addr("bob@example.org"), "phone")
            .is_err()
    );
}

/// Revocation stops a password and its credential id; other devices and addresses keep theirs.
pub async fn revoke_and_revoke_all<B: Backend>(backend: &B) {
    let f = backend.open("revoke");
    let store = &f.store;
    let a = addr("alice@example.org");
    let b = addr("bob@example.org");
    store.add_address(&a, Plan::Starter).unwrap();
    store.add_address(&b, Plan::Starter).unwrap();
    let phone = store.add_device(&a, "phone").unwrap();
    let laptop = store.add_device(&a, "laptop").unwrap();
    let tablet = store.add_device(&a, "tablet").unwrap();
    let bobs = store.add_device(&b, "phone").unwrap();
    let phone_id = auth(store, a.as_str(), phone.expose()).await.unwrap();
    let bob_id = auth(store, b.as_str(), bobs.expose()).await.unwrap();

    store.revoke_device(&a, "phone").unwrap();
    assert!(auth(store, a.as_str(), phone.expose()).await.is_none());
    assert!(auth(store, a.as_str(), laptop.expose()).await.is_some());
    let live = store
        .live_credentials(std::slice::from_ref(&phone_id.credential))
        .await
        .unwrap();
    assert!(live.is_empty());
    assert!(matches!(
        store.revoke_device(&a, "phone").unwrap_err(),
        StoreError::NotFound { .. }
    ));

    assert_eq!(store.revoke_all(&a).unwrap(), 2);
    assert!(auth(store, a.as_str(), tablet.expose()).await.is_none());
    assert!(store.list_devices(&a).unwrap().is_empty());
    assert_eq!(store.revoke_all(&a).unwrap(), 0);
    assert!(store.revoke_all(&addr("carol@example.org")).is_err());
    // Bob's device is not affected; a name can be reused after revocation.
    assert!(auth(store, b.as_str(), bobs.expose()).await.is_some());
    assert_eq!(
        store
            .live_credentials(std::slice::from_ref(&bob_id.credential))
            .await
            .unwrap()
            .len(),
        1
    );
    store.add_device(&a, "phone").unwrap();
}

/// Many credential ids at once, most unknown: only the live one comes back.
pub async fn live_credentials_in_batches<B: Backend>(backend: &B) {
    let f = backend.open("live");
    let store = &f.store;
    let a = addr("alice@example.org");
    store.add_address(&a, Plan::Starter).unwrap();
    let p = store.add_device(&a, "phone").unwrap();
    let real = auth(store, a.as_str(), p.expose())
        .await
        .unwrap()
        .credential;
    let mut ids: Vec<_> = (0..1_200)
        .map(|i| CredentialId(format!("unknown-{i}")))
        .collect();
    ids.insert(777, real.clone());
    let live = store.live_credentials(&ids).await.unwrap();
    assert_eq!(live, HashSet::from([real]));
    assert!(store.live_credentials(&[]).await.unwrap().is_empty());
}

/// A revocation by another handle (the CLI beside `postern serve`) is seen at the next call.
pub async fn a_second_process_sees_changes_at_once<B: Backend>(backend: &B) {
    // Two connections on one file stand for `postern serve` and the CLI.
    let f = backend.open("shared");
    let (server, cli) = (&f.store, &f.other);
    let a = addr("alice@example.org");
    cli.add_address(&a, Plan::Starter).unwrap();
    let p = cli.add_device(&a, "phone").unwrap();
    let id = auth(server, a.as_str(), p.expose()).await.unwrap();
    cli.revoke_device(&a, "phone").unwrap();
    assert!(
        server
            .live_credentials(&[id.credential])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(auth(server, a.as_str(), p.expose()).await.is_none());
}
