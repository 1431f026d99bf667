//! Per-destination concurrency slots ([`Limiter`]) and the cache of idle SMTP sessions
//! ([`IdlePool`], [`SessionCache`]).
//!
//! Concurrency: a group takes its destination's slot (`[delivery] max_per_destination`, the
//! recipients' domain or the relay host) before its first connection and gives it back when
//! its transaction is over; a group finding no free slot waits for one, it does not fail.
//! Like Postfix's destination concurrency limit, the slot counts deliveries in progress; idle
//! cached sessions are not counted (at most `max_per_destination` of them per host address and
//! policy, see below).
//!
//! Reuse: after a transaction answer, a session that can still carry commands is kept for
//! `[delivery] connection_idle` under a [`SessionKey`]: MX host name, address and the TLS
//! policy the session was made under. A later group asks for exactly that key, so a session
//! is never shared across TLS policies (a DANE- or MTA-STS-authenticated session only serves
//! the same policy and host; a cleartext session after a failed opportunistic handshake is
//! kept under [`TlsPolicy::Plaintext`], which no group asks for, so it is never reused). The
//! most recently used session is taken first. Sessions past their time get QUIT from a reaper
//! task, and all of them at shutdown.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::IdleSession;
use super::outcome::Peer;
use super::tls::TlsPolicy;

type SlotMap<K> = Arc<Mutex<BTreeMap<K, Arc<Semaphore>>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// At most `cap` holders of a [`Slot`] per key at once; a key's entry exists only while it
/// has holders or waiters.
pub struct Limiter<K: Ord + Clone> {
    cap: usize,
    slots: SlotMap<K>,
}

/// One of a key's `cap` places; given back when dropped.
pub struct Slot<K: Ord + Clone> {
    permit: Option<OwnedSemaphorePermit>,
    key: K,
    slots: SlotMap<K>,
}

impl<K: Ord + Clone> Limiter<K> {
    /// `cap` is at least 1 (`Config::load` refuses 0).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            slots: Arc::default(),
        }
    }

    /// Waits for a place for `key`. Cancel-safe: a dropped wait leaves nothing behind.
    pub async fn acquire(&self, key: &K) -> Slot<K> {
        let mut slot = Slot {
            permit: None,
            key: key.clone(),
            slots: self.slots.clone(),
        };
        let semaphore = lock(&self.slots)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.cap)))
            .clone();
        // The semaphore is never closed.
        slot.permit = semaphore.acquire_owned().await.ok();
        slot
    }

    /// Places of `key` held now.
    pub fn in_use(&self, key: &K) -> usize {
        lock(&self.slots)
            .get(key)
            .map_or(0, |s| self.cap - s.available_permits())
    }

    /// Keys with holders or waiters.
    pub fn keys(&self) -> usize {
        lock(&self.slots).len()
    }
}

impl<K: Ord + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut slots = lock(&self.slots);
        // The map's own reference is the last one: no holder (a permit keeps its semaphore)
        // and no waiter (a wait holds a clone).
        if slots
            .get(&self.key)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            slots.remove(&self.key);
        }
    }
}

/// Values kept for a while under a key: at most `max_per_key` per key, each until `idle` after
/// it was put; the most recently put is taken first. Pure bookkeeping: whatever it returns
/// must be closed by the caller.
pub struct IdlePool<K, V> {
    idle: Duration,
    max_per_key: usize,
    entries: HashMap<K, VecDeque<(Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V> IdlePool<K, V> {
    /// An empty pool; `idle` zero keeps nothing.
    pub fn new(idle: Duration, max_per_key: usize) -> Self {
        Self {
            idle,
            max_per_key: max_per_key.max(1),
            entries: HashMap::new(),
        }
    }

    /// Keeps `value` until `now + idle`. Returns what to close: `value` itself when the pool
    /// is disabled (`idle` zero), or the key's oldest value when the key was full.
    pub fn put(&mut self, key: K, value: V, now: Instant) -> Option<V> {
        if self.idle.is_zero() {
            return Some(value);
        }
        let list = self.entries.entry(key).or_default();
        let evicted = if list.len() >= self.max_per_key {
            list.pop_front().map(|(_, v)| v)
        } else {
            None
        };
        list.push_back((now + self.idle, value));
        evicted
    }

    /// The key's most recently put value still in time, and its expired ones (to close).
    pub fn take(&mut self, key: &K, now: Instant) -> (Option<V>, Vec<V>) {
        let Some(list) = self.entries.get_mut(key) else {
            return (None, Vec::new());
        };
        let mut expired = Vec::new();
        while list.front().is_some_and(|(until, _)| *until <= now) {
            expired.extend(list.pop_front().map(|(_, v)| v));
        }
        let taken = list.pop_back().map(|(_, v)| v);
        if list.is_empty() {
            self.entries.remove(key);
        }
        (taken, expired)
    }

    /// Removes and returns every value past its time.
    pub fn expired(&mut self, now: Instant) -> Vec<V> {
        let mut expired = Vec::new();
        self.entries.retain(|_, list| {
            while list.front().is_some_and(|(until, _)| *until <= now) {
                expired.extend(list.pop_front().map(|(_, v)| v));
            }
            !list.is_empty()
        });
        expired
    }

    /// Removes and returns everything.
    pub fn drain(&mut self) -> Vec<V> {
        self.entries
            .drain()
            .flat_map(|(_, list)| list.into_iter().map(|(_, v)| v))
            .collect()
    }

    /// Values kept.
    pub fn len(&self) -> usize {
        self.entries.values().map(VecDeque::len).sum()
    }

    /// Nothing kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What an idle session can be reused for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// MX host name, lower case.
    host: String,
    addr: SocketAddr,
    /// The [`TlsPolicy`] the session was made under.
    policy: &'static str,
}

impl SessionKey {
    /// The key of a session to `peer` made under `policy`.
    pub fn new(peer: &Peer, policy: TlsPolicy) -> Self {
        Self {
            host: peer.host.to_ascii_lowercase(),
            addr: peer.addr,
            policy: match policy {
                TlsPolicy::Opportunistic => "opportunistic",
                TlsPolicy::Plaintext => "plaintext",
                TlsPolicy::Encrypt => "encrypt",
                TlsPolicy::Dane => "dane",
                TlsPolicy::MtaSts => "mta-sts",
            },
        }
    }
}

/// Idle sessions of the delivery worker.
pub struct SessionCache {
    pool: Mutex<IdlePool<SessionKey, IdleSession>>,
    idle: Duration,
}

impl SessionCache {
    /// `None` when `idle` is zero (reuse disabled).
    pub fn new(idle: Duration, max_per_key: usize) -> Option<Arc<Self>> {
        (!idle.is_zero()).then(|| {
            Arc::new(Self {
                pool: Mutex::new(IdlePool::new(idle, max_per_key)),
                idle,
            })
        })
    }

    /// A session for `key`, if one is idle.
    pub fn take(&self, key: &SessionKey) -> Option<IdleSession> {
        let (taken, expired) = lock(&self.pool).take(key, Instant::now());
        close_in_background(expired);
        taken
    }

    /// Keeps `session` for the next transaction under its key.
    pub fn put(&self, session: IdleSession) {
        let key = SessionKey::new(session.peer(), session.policy());
        let evicted = lock(&self.pool).put(key, session, Instant::now());
        close_in_background(evicted);
    }

    /// Closes expired sessions until `shutdown`.
    pub async fn reap(self: Arc<Self>, shutdown: CancellationToken) {
        let tick = (self.idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let expired = lock(&self.pool).expired(Instant::now());
            close_in_background(expired);
        }
    }

    /// QUIT to every idle session, waiting for them (each bounded by the client's QUIT
    /// timeout).
    pub async fn close_all(&self) {
        let all = lock(&self.pool).drain();
        let mut quits = JoinSet::new();
        for session in all {
            quits.spawn(session.quit());
        }
        while quits.join_next().await.is_some() {}
    }
}

fn close_in_background(sessions: impl IntoIterator<Item = IdleSession>) {
    for session in sessions {
        tokio::spawn(session.quit());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limiter_caps_per_key_and_forgets_idle_keys() {
        let limiter = Limiter::new(2);
        let a1 = limiter.acquire(&"a").await;
        let a2 = limiter.acquire(&"a").await;
        let b1 = limiter.acquire(&"b").await;
        assert_eq!(limiter.in_use(&"a"), 2);
        assert_eq!(limiter.in_use(&"b"), 1);
        // A third for "a" waits until one is given back.
        let third = tokio::time::timeout(Duration::from_millis(50), limiter.acquire(&"a")).await;
        assert!(third.is_err(), "a third slot was given");
        // The abandoned wait left the key's entry in place only because holders remain.
        assert_eq!(limiter.keys(), 2);
        drop(a1);
        let a3 = tokio::time::timeout(Duration::from_millis(50), limiter.acquire(&"a"))
            .await
            .expect("a slot after one was given back");
        assert_eq!(limiter.in_use(&"a"), 2);
        drop((a2, a3, b1));
        assert_eq!(limiter.keys(), 0);
        assert_eq!(limiter.in_use(&"a"), 0);
    }

    #[tokio::test]
    async fn limiter_wakes_a_waiter() {
        let limiter = Arc::new(Limiter::new(1));
        let held = limiter.acquire(&7).await;
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let _slot = limiter.acquire(&7).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter got the slot")
            .unwrap();
        assert_eq!(limiter.keys(), 0);
    }

    #[test]
    fn pool_put_take_lifo_and_keys() {
        let now = Instant::now();
        let mut pool = IdlePool::new(Duration::from_secs(5), 2);
        assert_eq!(pool.put("mx1", 1, now), None);
        assert_eq!(pool.put("mx1", 2, now), None);
        assert_eq!(pool.put("mx2", 3, now), None);
        assert_eq!(pool.len(), 3);
        // Full key: the oldest goes.
        assert_eq!(pool.put("mx1", 4, now), Some(1));
        assert_eq!(pool.take(&"mx1", now), (Some(4), vec![]));
        assert_eq!(pool.take(&"mx1", now), (Some(2), vec![]));
        assert_eq!(pool.take(&"mx1", now), (None, vec![]));
        assert_eq!(pool.take(&"other", now), (None, vec![]));
        assert_eq!(pool.take(&"mx2", now), (Some(3), vec![]));
        assert!(pool.is_empty());
    }

    #[test]
    fn pool_expiry() {
        let t0 = Instant::now();
        let mut pool = IdlePool::new(Duration::from_secs(5), 10);
        pool.put("mx", 1, t0);
        pool.put("mx", 2, t0 + Duration::from_secs(3));
        pool.put("other", 3, t0);
        // At 5 s the first of each key is past its time; take hands it back to be closed.
        let at5 = t0 + Duration::from_secs(5);
        assert_eq!(pool.take(&"mx", at5), (Some(2), vec![1]));
        assert_eq!(pool.expired(at5), vec![3]);
        assert!(pool.is_empty());
        pool.put("mx", 4, at5);
        assert_eq!(
            pool.expired(at5 + Duration::from_millis(4999)),
            Vec::<i32>::new()
        );
        assert_eq!(
            pool.take(&"mx", at5 + Duration::from_secs(5)),
            (None, vec![4])
        );
        pool.put("a", 5, t0);
        pool.put("b", 6, t0);
        let mut all = pool.drain();
        all.sort();
        assert_eq!(all, vec![5, 6]);
        assert!(pool.is_empty());
    }

    #[test]
    fn pool_disabled_keeps_nothing() {
        let mut pool = IdlePool::new(Duration::ZERO, 10);
        assert_eq!(pool.put("mx", 1, Instant::now()), Some(1));
        assert!(pool.is_empty());
    }

    #[test]
    fn session_keys_separate_policies_hosts_and_addresses() {
        let peer = |host: &str, addr: &str| Peer {
            host: host.into(),
            addr: addr.parse().unwrap(),
        };
        let a = peer("MX.example", "192.0.2.1:25");
        assert_eq!(
            SessionKey::new(&a, TlsPolicy::Dane),
            SessionKey::new(&peer("mx.example", "192.0.2.1:25"), TlsPolicy::Dane)
        );
        for policy in [
            TlsPolicy::Opportunistic,
            TlsPolicy::Plaintext,
            TlsPolicy::Encrypt,
            TlsPolicy::MtaSts,
        ] {
            assert_ne!(
                SessionKey::new(&a, TlsPolicy::Dane),
                SessionKey::new(&a, policy)
            );
        }
        assert_ne!(
            SessionKey::new(&a, TlsPolicy::Opportunistic),
            SessionKey::new(
                &peer("mx.example", "192.0.2.2:25"),
                TlsPolicy::Opportunistic
            )
        );
        assert_ne!(
            SessionKey::new(&a, TlsPolicy::Opportunistic),
            SessionKey::new(
                &peer("mx2.example", "192.0.2.1:25"),
                TlsPolicy::Opportunistic
            )
        );
    }
}
