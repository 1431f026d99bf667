//! The cache's rules, on a directory kept in memory by the test (its calls are counted): the
//! TTL, clearing on a generation move and on notifications, negative answers, errors, and the
//! race between a miss and a clear. The cache in front of a real PostgreSQL is tested in
//! `store/postgres/tests.rs`, and on running replicas in `tests/py/test_fleet.py`.

use super::*;
use crate::policy::Plan;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

const TTL: Duration = Duration::from_secs(5);
const ALICE: &str = "alice@example.org";
const PASSWORD: &str = "right-password";

/// A directory in memory: alice with device "phone" and one alias, one hosting account, and
/// a switch that makes every call fail.
#[derive(Default)]
struct Memory {
    calls: AtomicUsize,
    failing: AtomicBool,
    revoked: AtomicBool,
    generation: AtomicU64,
}

impl Memory {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn call(&self) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("down".to_string()));
        }
        Ok(())
    }
}

fn alice() -> AuthIdentity {
    AuthIdentity {
        address: ALICE.to_string(),
        device: "phone".to_string(),
        credential: CredentialId("c1".to_string()),
        senders: vec![ALICE.to_string(), "sales@example.org".to_string()],
    }
}

#[async_trait::async_trait]
impl Directory for Memory {
    async fn authenticate(
        &self,
        login: &str,
        password: &str,
    ) -> Result<Option<AuthIdentity>, StoreError> {
        self.call()?;
        let known = login.eq_ignore_ascii_case(ALICE) && password == PASSWORD;
        Ok((known && !self.revoked.load(Ordering::SeqCst)).then(alice))
    }

    async fn live_credentials(
        &self,
        ids: &[CredentialId],
    ) -> Result<HashSet<CredentialId>, StoreError> {
        self.call()?;
        Ok(ids.iter().cloned().collect())
    }

    async fn generation(&self) -> Result<u64, StoreError> {
        self.call()?;
        Ok(self.generation.load(Ordering::SeqCst))
    }

    async fn senders_of(&self, address: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.call()?;
        Ok((address == ALICE).then(|| alice().senders))
    }

    async fn hosting_account_for(
        &self,
        client: IpAddr,
    ) -> Result<Option<HostingAccount>, StoreError> {
        self.call()?;
        Ok(
            (client == "192.0.2.7".parse::<IpAddr>().unwrap()).then(|| HostingAccount {
                name: "web1".to_string(),
                domains: vec!["example.org".to_string()],
                network: "192.0.2.0/24".parse().unwrap(),
            }),
        )
    }

    async fn limits_of(
        &self,
        identity: &QuotaIdentity,
    ) -> Result<Option<IdentityLimits>, StoreError> {
        self.call()?;
        Ok(
            (identity == &QuotaIdentity::Address(ALICE.to_string())).then_some(IdentityLimits {
                plan: Some(Plan::Starter),
                daily_override: None,
            }),
        )
    }
}

/// A serving cache (notifications up, generation seen) in front of a fresh [`Memory`].
async fn serving() -> (Arc<Memory>, Arc<DirectoryCache>, CachedDirectory, Metrics) {
    let memory = Arc::new(Memory::default());
    let cache = Arc::new(DirectoryCache::new(TTL).unwrap());
    let metrics = Metrics::new();
    let cached = CachedDirectory::new(memory.clone(), cache.clone(), metrics.clone());
    cache.notifications_up();
    cached.generation().await.unwrap();
    assert!(cache.serving());
    (memory, cache, cached, metrics)
}

fn counted(metrics: &Metrics, kind: &str, result: &str) -> u64 {
    let line =
        format!("postern_directory_cache_lookups_total{{kind=\"{kind}\",result=\"{result}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&line).map(|v| v.parse().unwrap()))
        .unwrap_or(0)
}

#[tokio::test]
async fn a_login_is_asked_once_then_answered_from_memory_and_counted() {
    let (memory, cache, cached, metrics) = serving().await;
    let before = memory.calls();
    for _ in 0..3 {
        let identity = cached.authenticate(ALICE, PASSWORD).await.unwrap().unwrap();
        assert_eq!(identity.credential, CredentialId("c1".to_string()));
        assert_eq!(identity.device, "phone");
    }
    // Another spelling of the same address is the same entry.
    assert!(
        cached
            .authenticate("Alice@Example.ORG", PASSWORD)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(memory.calls() - before, 1);
    assert_eq!(counted(&metrics, "login", "miss"), 1);
    assert_eq!(counted(&metrics, "login", "hit"), 3);
    assert_eq!(cache.len(LookupKind::Login), 1);
}

#[tokio::test]
async fn failed_logins_are_never_kept_and_a_wrong_password_never_hits() {
    let (memory, cache, cached, _) = serving().await;
    assert!(
        cached
            .authenticate(ALICE, PASSWORD)
            .await
            .unwrap()
            .is_some()
    );
    let before = memory.calls();
    for _ in 0..3 {
        assert!(cached.authenticate(ALICE, "wrong").await.unwrap().is_none());
        assert!(
            cached
                .authenticate("not an address", PASSWORD)
                .await
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(memory.calls() - before, 6, "every failure asked the store");
    assert_eq!(cache.len(LookupKind::Login), 1);
}

#[tokio::test]
async fn negative_answers_are_kept_except_no_hosting_account() {
    let (memory, cache, cached, metrics) = serving().await;
    let before = memory.calls();
    let nobody: IpAddr = "198.51.100.1".parse().unwrap();
    let web: IpAddr = "192.0.2.7".parse().unwrap();
    let bob = QuotaIdentity::Address("bob@example.org".to_string());
    let alice_id = QuotaIdentity::Address(ALICE.to_string());
    for _ in 0..2 {
        assert_eq!(cached.senders_of("bob@example.org").await.unwrap(), None);
        assert_eq!(
            cached.senders_of(ALICE).await.unwrap().unwrap(),
            alice().senders
        );
        assert_eq!(cached.hosting_account_for(nobody).await.unwrap(), None);
        assert_eq!(
            cached.hosting_account_for(web).await.unwrap().unwrap().name,
            "web1"
        );
        // The IPv4-mapped form of the same client is the same entry.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(cached.hosting_account_for(mapped).await.unwrap().is_some());
        assert_eq!(cached.limits_of(&bob).await.unwrap(), None);
        assert!(cached.limits_of(&alice_id).await.unwrap().is_some());
    }
    // Each key asked once, except the client on no hosting network: asked every time.
    assert_eq!(memory.calls() - before, 5 + 2);
    assert_eq!(cache.len(LookupKind::Senders), 2);
    assert_eq!(cache.len(LookupKind::HostingAccount), 1);
    assert_eq!(cache.len(LookupKind::Limits), 2);
    assert_eq!(counted(&metrics, "hosting_account", "hit"), 3);
    assert_eq!(counted(&metrics, "hosting_account", "miss"), 3);
}

#[test]
fn no_entry_is_served_at_or_past_the_ttl() {
    let cache = DirectoryCache::new(TTL).unwrap();
    cache.notifications_up();
    cache.generation_seen(1);
    let t0 = Instant::now();
    let Found::Miss(ticket) = cache.find_senders(t0, ALICE) else {
        panic!("empty cache hit")
    };
    cache.keep_senders(t0, ticket, ALICE.to_string(), None);
    let just_before = t0 + TTL - Duration::from_millis(1);
    assert_eq!(cache.find_senders(just_before, ALICE), Found::Hit(None));
    assert!(matches!(
        cache.find_senders(t0 + TTL, ALICE),
        Found::Miss(_)
    ));
    // The expired entry is gone, not just hidden.
    assert_eq!(cache.len(LookupKind::Senders), 0);
}

#[tokio::test]
async fn a_moved_generation_clears_everything_and_an_unmoved_one_nothing() {
    let (memory, cache, cached, _) = serving().await;
    cached.authenticate(ALICE, PASSWORD).await.unwrap();
    cached.senders_of(ALICE).await.unwrap();
    cached.generation().await.unwrap();
    assert_eq!(cache.len(LookupKind::Login), 1, "same generation");
    memory.generation.store(7, Ordering::SeqCst);
    memory.revoked.store(true, Ordering::SeqCst);
    cached.generation().await.unwrap();
    for kind in LookupKind::ALL {
        assert_eq!(cache.len(kind), 0, "{kind:?}");
    }
    assert!(
        cached
            .authenticate(ALICE, PASSWORD)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_notification_clears_everything_and_no_notifications_means_no_cache() {
    let (memory, cache, cached, metrics) = serving().await;
    cached.authenticate(ALICE, PASSWORD).await.unwrap();
    memory.revoked.store(true, Ordering::SeqCst);
    // The revocation's NOTIFY: the very next AUTH asks the store.
    cache.changed();
    assert!(
        cached
            .authenticate(ALICE, PASSWORD)
            .await
            .unwrap()
            .is_none()
    );

    memory.revoked.store(false, Ordering::SeqCst);
    cached.authenticate(ALICE, PASSWORD).await.unwrap();
    cache.notifications_down();
    assert_eq!(cache.len(LookupKind::Login), 0);
    let before = memory.calls();
    cached.authenticate(ALICE, PASSWORD).await.unwrap();
    cached.authenticate(ALICE, PASSWORD).await.unwrap();
    assert_eq!(memory.calls() - before, 2, "not serving while deaf");
    assert_eq!(cache.len(LookupKind::Login), 0, "nothing kept while deaf");
    assert_eq!(counted(&metrics, "login", "bypass"), 2);
    cache.notifications_up();
    cached.authenticate(ALICE, PASSWORD).await.unwrap();
    assert_eq!(cache.len(LookupKind::Login), 1);
}

#[tokio::test]
async fn store_errors_are_never_kept_and_stop_the_cache_until_a_generation_check() {
    let (memory, cache, cached, _) = serving().await;
    cached.authenticate(ALICE, PASSWORD).await.unwrap();
    memory.failing.store(true, Ordering::SeqCst);
    // A fresh entry exists, but once the store failed, AUTH gets the store's error (454).
    assert!(cached.senders_of(ALICE).await.is_err());
    assert!(cached.authenticate(ALICE, PASSWORD).await.is_err());
    assert!(!cache.serving());
    assert!(cached.generation().await.is_err());
    assert!(!cache.serving());
    memory.failing.store(false, Ordering::SeqCst);
    cached.generation().await.unwrap();
    assert!(cache.serving());
    assert!(
        cached
            .authenticate(ALICE, PASSWORD)
            .await
            .unwrap()
            .is_some()
    );
}

#[test]
fn nothing_is_served_before_notifications_and_a_generation_check() {
    let cache = DirectoryCache::new(TTL).unwrap();
    let now = Instant::now();
    assert_eq!(cache.find_senders(now, ALICE), Found::Bypass);
    cache.notifications_up();
    assert_eq!(cache.find_senders(now, ALICE), Found::Bypass);
    cache.generation_seen(3);
    assert!(matches!(cache.find_senders(now, ALICE), Found::Miss(_)));
}

#[test]
fn an_answer_read_before_a_clear_is_not_kept_after_it() {
    let cache = DirectoryCache::new(TTL).unwrap();
    cache.notifications_up();
    cache.generation_seen(1);
    let now = Instant::now();
    let key = cache.login_key(ALICE, PASSWORD);
    let Found::Miss(ticket) = cache.find_login(now, &key) else {
        panic!("empty cache hit")
    };
    // The store answered with the old row; the revocation's notification came meanwhile.
    cache.changed();
    cache.keep_login(now, ticket, key, alice());
    assert!(matches!(cache.find_login(now, &key), Found::Miss(_)));
    assert_eq!(cache.len(LookupKind::Login), 0);
}

#[test]
fn login_keys_are_keyed_per_process_and_depend_on_address_and_password() {
    let one = DirectoryCache::new(TTL).unwrap();
    let other = DirectoryCache::new(TTL).unwrap();
    let key = one.login_key(ALICE, PASSWORD);
    assert!(key == one.login_key(ALICE, PASSWORD));
    assert!(
        key != other.login_key(ALICE, PASSWORD),
        "same key in two caches"
    );
    assert!(key != one.login_key(ALICE, "right-passworD"));
    assert!(key != one.login_key("bob@example.org", PASSWORD));
    // The separator keeps address and password apart.
    assert!(one.login_key("a@b.c", "xy") != one.login_key("a@b.cx", "y"));
    // Neither the password nor its SHA-256 appears in the key.
    let digest = crate::policy::password::hash(PASSWORD);
    assert_ne!(key.0, digest);
    assert_eq!(format!("{one:?}"), "DirectoryCache(ttl 5s)");
}

#[test]
fn a_full_kind_sweeps_expired_entries_and_otherwise_takes_no_more() {
    let cache = DirectoryCache::new(TTL).unwrap();
    cache.notifications_up();
    cache.generation_seen(1);
    let t0 = Instant::now();
    let limits = |i: usize| QuotaIdentity::Hosting(format!("web{i}"));
    let Found::Miss(ticket) = cache.find_limits(t0, &limits(0)) else {
        panic!()
    };
    for i in 0..MAX_ENTRIES {
        cache.keep_limits(t0, ticket, limits(i), None);
    }
    assert_eq!(cache.len(LookupKind::Limits), MAX_ENTRIES);
    cache.keep_limits(t0, ticket, limits(MAX_ENTRIES), None);
    assert_eq!(cache.len(LookupKind::Limits), MAX_ENTRIES, "full");
    assert!(matches!(
        cache.find_limits(t0, &limits(MAX_ENTRIES)),
        Found::Miss(_)
    ));
    // Past the TTL the sweep makes room.
    let later = t0 + TTL;
    cache.keep_limits(later, ticket, limits(MAX_ENTRIES), None);
    assert_eq!(cache.len(LookupKind::Limits), 1);
}
