//! Daily limit overrides of addresses and hosting accounts.

use super::{Backend, addr, net, strings};
use crate::policy::Plan;
use crate::store::{
    Directory, DirectoryAdmin, IdentityLimits, LimitOverride, QuotaIdentity, StoreError,
};

/// Overrides of addresses and accounts: set, replaced, listed, cleared, refused for unknown
/// identities, aliases and 0, and gone with their identity.
pub async fn limit_overrides<B: Backend>(backend: &B) {
    let f = backend.open("limits");
    let store = &f.store;
    let a = addr("alice@example.org");
    store.add_address(&a, Plan::Starter).unwrap();
    store.add_alias(&addr("sales@example.org"), &a).unwrap();
    store
        .add_hosting_account("web1", &[net("192.0.2.0/24")], &strings(&["example.org"]))
        .unwrap();
    let alice = QuotaIdentity::Address(a.to_string());
    let web1 = QuotaIdentity::Hosting("web1".into());

    assert_eq!(
        store.identity_limits(&alice).unwrap(),
        IdentityLimits {
            plan: Some(Plan::Starter),
            daily_override: None
        }
    );
    assert_eq!(store.set_limit(&alice, 2000).unwrap(), None);
    assert_eq!(store.set_limit(&alice, 2500).unwrap(), Some(2000));
    assert_eq!(store.set_limit(&web1, 200).unwrap(), None);
    assert_eq!(
        store.identity_limits(&web1).unwrap(),
        IdentityLimits {
            plan: None,
            daily_override: Some(200)
        }
    );
    assert_eq!(store.set_limit(&web1, u32::MAX).unwrap(), Some(200));
    assert_eq!(
        store.list_limits().unwrap(),
        [
            LimitOverride {
                identity: alice.clone(),
                daily: 2500
            },
            LimitOverride {
                identity: web1.clone(),
                daily: u32::MAX
            }
        ]
    );
    assert_eq!(
        store.list_hosting_accounts().unwrap()[0].daily_limit,
        Some(u32::MAX)
    );

    // The server side sees the same.
    assert_eq!(
        store.limits_of(&alice).await.unwrap(),
        Some(IdentityLimits {
            plan: Some(Plan::Starter),
            daily_override: Some(2500)
        })
    );
    let sales = QuotaIdentity::Address("sales@example.org".into());
    assert_eq!(store.limits_of(&sales).await.unwrap(), None);
    assert_eq!(
        store.limits_of(&web1).await.unwrap(),
        Some(IdentityLimits {
            plan: None,
            daily_override: Some(u32::MAX)
        })
    );
    let nobody = QuotaIdentity::Address("nobody@example.org".into());
    assert_eq!(store.limits_of(&nobody).await.unwrap(), None);

    // Unknown identities, aliases and a zero limit are refused.
    let e = store.set_limit(&nobody, 10).unwrap_err();
    assert_eq!(e.to_string(), "address \"nobody@example.org\" not found");
    let e = store.set_limit(&sales, 10).unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    let e = store
        .clear_limit(&QuotaIdentity::Hosting("web9".into()))
        .unwrap_err();
    assert_eq!(e.to_string(), "hosting account \"web9\" not found");
    assert!(matches!(
        store.set_limit(&alice, 0).unwrap_err(),
        StoreError::Invalid(_)
    ));
    assert!(store.identity_limits(&nobody).is_err());

    assert_eq!(store.clear_limit(&alice).unwrap(), Some(2500));
    assert_eq!(store.clear_limit(&alice).unwrap(), None);
    assert_eq!(
        store
            .limits_of(&alice)
            .await
            .unwrap()
            .unwrap()
            .daily_override,
        None
    );

    // An override goes with its identity.
    store.set_limit(&alice, 900).unwrap();
    store.remove_address(&a).unwrap();
    store.remove_hosting_account("web1").unwrap();
    assert!(store.list_limits().unwrap().is_empty());
    store.add_address(&a, Plan::Free).unwrap();
    store
        .add_hosting_account("web1", &[net("192.0.2.0/24")], &strings(&["example.org"]))
        .unwrap();
    assert_eq!(store.identity_limits(&alice).unwrap().daily_override, None);
    assert_eq!(store.identity_limits(&web1).unwrap().daily_override, None);
}
