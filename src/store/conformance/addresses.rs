//! Addresses: add, list, remove.

use super::{Backend, addr};
use crate::policy::Plan;
use crate::store::{DirectoryAdmin, StoreError};

/// Addresses are listed sorted and lowercase; a duplicate is `AlreadyExists`, an unknown one
/// `NotFound`.
pub async fn addresses_add_list_remove<B: Backend>(backend: &B) {
    let f = backend.open("addresses");
    let store = &f.store;
    store
        .add_address(&addr("b@example.org"), Plan::Starter)
        .unwrap();
    store
        .add_address(&addr("A@Example.org"), Plan::Premium)
        .unwrap();
    let list = store.list_addresses().unwrap();
    let names: Vec<_> = list.iter().map(|a| (a.address.as_str(), a.plan)).collect();
    assert_eq!(
        names,
        [
            ("a@example.org", Plan::Premium),
            ("b@example.org", Plan::Starter)
        ]
    );
    let e = store
        .add_address(&addr("a@example.org"), Plan::Free)
        .unwrap_err();
    assert_eq!(e.to_string(), "an address \"a@example.org\" already exists");
    store.remove_address(&addr("a@example.org")).unwrap();
    let e = store.remove_address(&addr("a@example.org")).unwrap_err();
    assert_eq!(
        e,
        StoreError::NotFound {
            what: "address \"a@example.org\"".into()
        }
    );
    assert_eq!(store.list_addresses().unwrap().len(), 1);
}
