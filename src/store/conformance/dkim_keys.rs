//! DKIM keys: one active key per domain and algorithm, and private keys kept private.

use super::Backend;
use crate::keys::Algorithm;
use crate::store::{DkimAdmin, DkimKeyStore, NewDkimKey, StoreError};

fn key(domain: &str, selector: &str, algorithm: Algorithm, active: bool) -> NewDkimKey {
    NewDkimKey {
        domain: domain.into(),
        selector: selector.into(),
        algorithm,
        bits: 2048,
        private_key: format!("secret-{selector}").into_bytes(),
        public_key: format!("pub-{selector}"),
        active,
    }
}

/// The selectors of the domain's active keys, in the order the signer gets them.
async fn active_selectors<S: DkimKeyStore>(store: &S, domain: &str) -> Vec<String> {
    store
        .active_dkim_keys(domain)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.selector)
        .collect()
}

/// One active key per domain and algorithm: activating or adding an active key replaces the
/// other of its algorithm, and the keys come ordered by algorithm.
pub async fn one_active_key_per_algorithm<B: Backend>(backend: &B) {
    let f = backend.open("dkim-keys");
    let store = &f.store;
    store
        .add_dkim_key(&key("example.org", "r1", Algorithm::Rsa, true))
        .unwrap();
    store
        .add_dkim_key(&key("example.org", "r2", Algorithm::Rsa, false))
        .unwrap();
    store
        .add_dkim_key(&key("example.org", "e1", Algorithm::Ed25519, true))
        .unwrap();
    store
        .add_dkim_key(&key("other.org", "r1", Algorithm::Rsa, true))
        .unwrap();
    // ORDER BY algorithm: ed25519 before rsa.
    assert_eq!(active_selectors(store, "example.org").await, ["e1", "r1"]);

    assert_eq!(
        store
            .activate_dkim_key("example.org", "r2")
            .unwrap()
            .as_deref(),
        Some("r1")
    );
    assert_eq!(active_selectors(store, "example.org").await, ["e1", "r2"]);
    assert_eq!(active_selectors(store, "other.org").await, ["r1"]);
    // Activating the active key changes nothing.
    assert_eq!(
        store
            .activate_dkim_key("example.org", "r2")
            .unwrap()
            .as_deref(),
        Some("r2")
    );
    // A new active key replaces the old one of its algorithm.
    store
        .add_dkim_key(&key("example.org", "r3", Algorithm::Rsa, true))
        .unwrap();
    assert_eq!(active_selectors(store, "example.org").await, ["e1", "r3"]);
}

/// A selector exists once per domain; an unknown one is `NotFound`; the active key is removed
/// only with `force`.
pub async fn duplicates_unknowns_and_forced_removal<B: Backend>(backend: &B) {
    let f = backend.open("dkim-keys");
    let store = &f.store;
    store
        .add_dkim_key(&key("example.org", "s1", Algorithm::Rsa, true))
        .unwrap();
    let e = store
        .add_dkim_key(&key("example.org", "s1", Algorithm::Ed25519, false))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "DKIM selector \"s1\" of domain \"example.org\" already exists"
    );
    let e = store.activate_dkim_key("example.org", "nope").unwrap_err();
    assert_eq!(
        e.to_string(),
        "DKIM selector \"nope\" of domain \"example.org\" not found"
    );
    let e = store
        .remove_dkim_key("example.org", "s1", false)
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    assert_eq!(active_selectors(store, "example.org").await, ["s1"]);
    assert!(store.remove_dkim_key("example.org", "s1", true).unwrap());
    assert!(active_selectors(store, "example.org").await.is_empty());
    assert!(store.list_dkim_keys(None).unwrap().is_empty());
}

/// Listings and the debug form of active keys never show a private key; the signer gets it.
pub async fn list_never_shows_private_keys<B: Backend>(backend: &B) {
    let f = backend.open("dkim-keys");
    let store = &f.store;
    store
        .add_dkim_key(&key("b.org", "s", Algorithm::Ed25519, false))
        .unwrap();
    store
        .add_dkim_key(&key("a.org", "s", Algorithm::Rsa, true))
        .unwrap();
    let all = store.list_dkim_keys(None).unwrap();
    assert_eq!(
        all.iter()
            .map(|k| (k.domain.as_str(), k.active))
            .collect::<Vec<_>>(),
        [("a.org", true), ("b.org", false)]
    );
    assert_eq!(store.list_dkim_keys(Some("b.org")).unwrap().len(), 1);
    assert!(!format!("{all:?}").contains("secret"));
    let active = store.active_dkim_keys("a.org").await.unwrap();
    assert!(!format!("{active:?}").contains("secret"));
    assert_eq!(active[0].private_key, b"secret-s");
}
