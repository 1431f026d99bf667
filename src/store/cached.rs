//! A replica's short-lived memory of directory answers: [`CachedDirectory`] wraps any
//! [`Directory`] and answers the lookups every session makes (a login, its senders, a port-25
//! client's hosting account, an identity's limits) from memory for at most `[store]
//! cache_ttl`, and never past a change the replica has been told of.
//!
//! # Why, and for which backend
//! Against PostgreSQL each of these lookups is one or two round trips through the pool; a
//! submission session makes three of them (AUTH, then the limits for its meter) before its first
//! message. The cache makes them memory reads while the directory does not change. The
//! embedded SQLite store is not wrapped (`configured.rs`): its reads are local and cost
//! microseconds, and it has no change notification, so a cache could be cleared only by the
//! revocation watcher's 500 ms poll, which would let a revoked password log in for up to half a
//! second on the machine where it was revoked, for no measurable gain.
//!
//! # What is cached
//! - **Logins** ([`Directory::authenticate`]): successful ones only. Device passwords are
//!   140 random bits checked with one SHA-256 (`policy/password.rs`), so the verification
//!   itself costs under a microsecond; what a hit saves is the two queries (devices, aliases).
//!   The entry is keyed by an HMAC-SHA256 of the canonical address and the password under a
//!   random key made when the process starts and never stored: neither the password nor an
//!   unkeyed digest of it (which a memory dump could test guesses against) sits in memory.
//!   The HMAC output is what the map compares, so the map's timing tells nothing that could be
//!   turned into a guess. Each entry holds the [`AuthIdentity`] it proved: the device and its
//!   [`CredentialId`], so a hit registers the session for revocation exactly as a miss does.
//!   Failed logins are never cached: their keys are chosen by whoever guesses, so they would
//!   let a guesser fill memory, and a guess should keep costing a round trip to the store.
//! - **Senders** and **limits**: every answer, `None` (no such address) included. **Hosting
//!   accounts**: found ones only. A port-25 client on no hosting network is asked about at
//!   every connection, as without a cache, so that a hosting account added on any machine
//!   relays from the very next connection on every replica, without waiting for the
//!   notification to arrive (an availability matter: a few milliseconds of "relaying denied"
//!   after `postern hosting add` would bounce mail that the operator just allowed; a client's
//!   IP is also a key anybody can vary). Keys are canonical (lowercase address, IPv4-mapped
//!   IPv6 as IPv4).
//! - Never: [`Directory::live_credentials`] (the revocation watcher's question must reach the
//!   store) and [`Directory::generation`] (it is how the cache learns of changes).
//!
//! # When entries go
//! - Every entry is dropped, all at once, when the replica learns of a change: a notification
//!   on the `LISTEN` connection (every write sends one, in its transaction), or a
//!   [`Directory::generation`] that moved (every write bumps it; the revocation watcher asks
//!   every 500 ms and at every notification, the fallback for lost notifications). Clearing everything is the simple rule that is
//!   obviously right: the directory changes when an operator runs a command, not per message.
//! - No entry is served older than the TTL, whatever happened.
//! - A lookup that misses remembers the cache's *epoch* (a counter moved by every clear) and
//!   stores its answer only if no clear happened meanwhile: an answer read from the store just
//!   before a revocation committed cannot outlive the clear that followed it.
//! - Sizes are bounded per kind ([`MAX_ENTRIES`]); a full map is swept of expired entries and
//!   otherwise takes no new ones until the next clear.
//!
//! # When the cache is not used
//! Entries live only while the replica can hear of changes. The cache serves nothing (every
//! lookup goes to the store, and is counted as `bypass`) and keeps nothing while the `LISTEN`
//! connection is down (a revocation sent meanwhile would not reach it), before the first
//! successful generation check, and from any store error until the next successful
//! generation check. So a PostgreSQL outage gives the same 454 on AUTH and 451 on port 25 as
//! without a cache, instead of serving answers nobody can vouch for; a store error is never
//! cached. (A store that stops answering without closing its connections is noticed at the
//! watcher's next generation check, within the store timeout; until then fresh entries are
//! served, at most `cache_ttl` old.)

use super::{
    AuthIdentity, CredentialId, Directory, HostingAccount, IdentityLimits, QuotaIdentity,
    StoreError,
};
use crate::metrics::Metrics;
use crate::policy::parse_address;
use aws_lc_rs::hmac;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most entries of each kind.
pub const MAX_ENTRIES: usize = 100_000;

/// What a lookup asked, for the metric's `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    /// [`Directory::authenticate`].
    Login,
    /// [`Directory::senders_of`].
    Senders,
    /// [`Directory::hosting_account_for`].
    HostingAccount,
    /// [`Directory::limits_of`].
    Limits,
}

impl LookupKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [LookupKind; 4] = [
        Self::Login,
        Self::Senders,
        Self::HostingAccount,
        Self::Limits,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Senders => "senders",
            Self::HostingAccount => "hosting_account",
            Self::Limits => "limits",
        }
    }
}

/// How a lookup was answered, for the metric's `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    /// From memory.
    Hit,
    /// From the store; the answer may be kept.
    Miss,
    /// From the store, the cache not serving (notifications down, store errors).
    Bypass,
}

impl LookupResult {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

/// One kept answer.
struct Entry<T> {
    value: T,
    stored: Instant,
}

/// A miss's permission to store its answer, valid until the next clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
}

/// What a lookup found in memory.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<T> {
    /// A fresh answer.
    Hit(T),
    /// Nothing fresh: ask the store, then [`DirectoryCache::store`] with the ticket.
    Miss(Ticket),
    /// The cache is not serving: ask the store, keep nothing.
    Bypass,
}

/// The HMAC of a login (address and password): what login entries are keyed by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginKey([u8; 32]);

/// The entries of one kind.
struct Map<K, V>(HashMap<K, Entry<V>>);

impl<K: Eq + Hash, V: Clone> Map<K, V> {
    fn new() -> Self {
        Self(HashMap::new())
    }

    fn fresh(&mut self, key: &K, now: Instant, ttl: Duration) -> Option<V> {
        let entry = self.0.get(key)?;
        if now.saturating_duration_since(entry.stored) < ttl {
            return Some(entry.value.clone());
        }
        self.0.remove(key);
        None
    }

    fn insert(&mut self, key: K, value: V, now: Instant, ttl: Duration) {
        if self.0.len() >= MAX_ENTRIES && !self.0.contains_key(&key) {
            self.0
                .retain(|_, e| now.saturating_duration_since(e.stored) < ttl);
            if self.0.len() >= MAX_ENTRIES {
                return;
            }
        }
        self.0.insert(key, Entry { value, stored: now });
    }
}

/// Everything behind the cache's one lock (held for a map operation, never across a query).
struct State {
    /// Moved by every clear; a miss's answer is stored only under the epoch it started in.
    epoch: u64,
    /// The `LISTEN` connection is up: changes would be heard.
    hearing: bool,
    /// The last generation check succeeded and no store error came since.
    answering: bool,
    /// The generation last seen.
    generation: Option<u64>,
    logins: Map<LoginKey, AuthIdentity>,
    senders: Map<String, Option<Vec<String>>>,
    hosting: Map<IpAddr, Option<HostingAccount>>,
    limits: Map<QuotaIdentity, Option<IdentityLimits>>,
}

impl State {
    fn serving(&self) -> bool {
        self.hearing && self.answering
    }

    fn clear(&mut self) {
        self.epoch += 1;
        self.logins.0.clear();
        self.senders.0.clear();
        self.hosting.0.clear();
        self.limits.0.clear();
    }
}

/// The cache's memory and its rules (the module docs); [`CachedDirectory`] puts it in front of
/// a store, and the `LISTEN` task tells it what it hears.
pub struct DirectoryCache {
    ttl: Duration,
    /// The per-process HMAC key of login entries.
    login_key: hmac::Key,
    state: Mutex<State>,
}

impl std::fmt::Debug for DirectoryCache {
    /// The TTL only: never the key or an entry.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DirectoryCache(ttl {:?})", self.ttl)
    }
}

impl DirectoryCache {
    /// An empty cache, not serving until it hears notifications
    /// ([`DirectoryCache::notifications_up`]) and a generation check succeeds
    /// ([`DirectoryCache::generation_seen`]).
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the OS random generator fails (the login key).
    pub fn new(ttl: Duration) -> Result<Self, StoreError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let login_key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| StoreError::Backend("OS random generator failed".to_string()))?;
        Ok(Self {
            ttl,
            login_key,
            state: Mutex::new(State {
                epoch: 0,
                hearing: false,
                answering: false,
                generation: None,
                logins: Map::new(),
                senders: Map::new(),
                hosting: Map::new(),
                limits: Map::new(),
            }),
        })
    }

    /// The configured TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still maps: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key of a login entry: HMAC-SHA256 of the canonical address, a NUL (which neither
    /// contains) and the password.
    pub fn login_key(&self, address: &str, password: &str) -> LoginKey {
        let mut context = hmac::Context::with_key(&self.login_key);
        context.update(address.as_bytes());
        context.update(&[0]);
        context.update(password.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(context.sign().as_ref());
        LoginKey(key)
    }

    /// The `LISTEN` connection listens (again): changes missed while it was down are
    /// unknown, so start from empty, and serve again.
    pub fn notifications_up(&self) {
        let mut state = self.state();
        state.clear();
        state.hearing = true;
    }

    /// The `LISTEN` connection dropped: revocations would go unheard, so forget everything
    /// and serve nothing until it is back.
    pub fn notifications_down(&self) {
        let mut state = self.state();
        state.clear();
        state.hearing = false;
    }

    /// A change notification arrived: forget everything.
    pub fn changed(&self) {
        self.state().clear();
    }

    /// A generation check succeeded: forget everything if the generation moved; serve again
    /// after store errors.
    pub fn generation_seen(&self, generation: u64) {
        let mut state = self.state();
        if state.generation != Some(generation) {
            state.clear();
            state.generation = Some(generation);
        }
        state.answering = true;
    }

    /// The store failed a call: forget everything, serve nothing until a generation check
    /// succeeds.
    pub fn store_failed(&self) {
        let mut state = self.state();
        state.clear();
        state.answering = false;
    }

    /// Whether lookups are answered from memory now.
    pub fn serving(&self) -> bool {
        self.state().serving()
    }

    fn find<K: Eq + Hash, V: Clone>(
        &self,
        now: Instant,
        map: impl FnOnce(&mut State) -> &mut Map<K, V>,
        key: &K,
    ) -> Found<V> {
        let mut state = self.state();
        if !state.serving() {
            return Found::Bypass;
        }
        let epoch = state.epoch;
        match map(&mut state).fresh(key, now, self.ttl) {
            Some(value) => Found::Hit(value),
            None => Found::Miss(Ticket { epoch }),
        }
    }

    fn keep<K: Eq + Hash, V: Clone>(
        &self,
        now: Instant,
        ticket: Ticket,
        map: impl FnOnce(&mut State) -> &mut Map<K, V>,
        key: K,
        value: V,
    ) {
        let mut state = self.state();
        if state.epoch != ticket.epoch || !state.serving() {
            return;
        }
        map(&mut state).insert(key, value, now, self.ttl);
    }

    /// A login entry, at `now`.
    pub fn find_login(&self, now: Instant, key: &LoginKey) -> Found<AuthIdentity> {
        self.find(now, |s| &mut s.logins, key)
    }

    /// Keeps a successful login answered at `now`, if no clear happened since `ticket`.
    pub fn keep_login(&self, now: Instant, ticket: Ticket, key: LoginKey, identity: AuthIdentity) {
        self.keep(now, ticket, |s| &mut s.logins, key, identity);
    }

    /// A senders entry (canonical address), at `now`.
    pub fn find_senders(&self, now: Instant, address: &str) -> Found<Option<Vec<String>>> {
        self.find(now, |s| &mut s.senders, &address.to_string())
    }

    /// Keeps a senders answer.
    pub fn keep_senders(
        &self,
        now: Instant,
        ticket: Ticket,
        address: String,
        senders: Option<Vec<String>>,
    ) {
        self.keep(now, ticket, |s| &mut s.senders, address, senders);
    }

    /// A hosting-account entry (canonical client address), at `now`.
    pub fn find_hosting(&self, now: Instant, client: IpAddr) -> Found<Option<HostingAccount>> {
        self.find(now, |s| &mut s.hosting, &client)
    }

    /// Keeps a hosting-account answer.
    pub fn keep_hosting(
        &self,
        now: Instant,
        ticket: Ticket,
        client: IpAddr,
        account: Option<HostingAccount>,
    ) {
        self.keep(now, ticket, |s| &mut s.hosting, client, account);
    }

    /// A limits entry, at `now`.
    pub fn find_limits(
        &self,
        now: Instant,
        identity: &QuotaIdentity,
    ) -> Found<Option<IdentityLimits>> {
        self.find(now, |s| &mut s.limits, identity)
    }

    /// Keeps a limits answer.
    pub fn keep_limits(
        &self,
        now: Instant,
        ticket: Ticket,
        identity: QuotaIdentity,
        limits: Option<IdentityLimits>,
    ) {
        self.keep(now, ticket, |s| &mut s.limits, identity, limits);
    }

    /// Entries of one kind (for tests and the bench's sanity checks).
    pub fn len(&self, kind: LookupKind) -> usize {
        let state = self.state();
        match kind {
            LookupKind::Login => state.logins.0.len(),
            LookupKind::Senders => state.senders.0.len(),
            LookupKind::HostingAccount => state.hosting.0.len(),
            LookupKind::Limits => state.limits.0.len(),
        }
    }
}

/// A [`Directory`] that answers from a [`DirectoryCache`] when it can and asks `inner`
/// otherwise; every lookup is counted in `postern_directory_cache_lookups_total`.
pub struct CachedDirectory {
    inner: Arc<dyn Directory>,
    cache: Arc<DirectoryCache>,
    metrics: Metrics,
}

impl CachedDirectory {
    /// `inner` behind `cache`.
    pub fn new(inner: Arc<dyn Directory>, cache: Arc<DirectoryCache>, metrics: Metrics) -> Self {
        Self {
            inner,
            cache,
            metrics,
        }
    }

    fn count(&self, kind: LookupKind, result: LookupResult) {
        self.metrics
            .directory_cache_lookup(kind.label(), result.label());
    }

    /// An answer of the store: errors stop the cache serving.
    fn checked<T>(&self, answer: Result<T, StoreError>) -> Result<T, StoreError> {
        if answer.is_err() {
            self.cache.store_failed();
        }
        answer
    }

    /// Looks up through the cache: `find` in memory, else `ask` the store and `keep` its
    /// answer (errors are never kept).
    async fn through<V: Clone>(
        &self,
        kind: LookupKind,
        find: impl FnOnce(Instant) -> Found<V>,
        ask: impl Future<Output = Result<V, StoreError>>,
        keep: impl FnOnce(Instant, Ticket, V),
    ) -> Result<V, StoreError> {
        match find(Instant::now()) {
            Found::Hit(value) => {
                self.count(kind, LookupResult::Hit);
                Ok(value)
            }
            Found::Bypass => {
                self.count(kind, LookupResult::Bypass);
                self.checked(ask.await)
            }
            Found::Miss(ticket) => {
                self.count(kind, LookupResult::Miss);
                let value = self.checked(ask.await)?;
                keep(Instant::now(), ticket, value.clone());
                Ok(value)
            }
        }
    }
}

#[async_trait::async_trait]
impl Directory for CachedDirectory {
    async fn authenticate(
        &self,
        login: &str,
        password: &str,
    ) -> Result<Option<AuthIdentity>, StoreError> {
        let Ok(address) = parse_address(login) else {
            // Not an address: the store says no, as it does without a cache.
            return self.checked(self.inner.authenticate(login, password).await);
        };
        let key = self.cache.login_key(address.as_str(), password);
        let cache = &self.cache;
        match cache.find_login(Instant::now(), &key) {
            Found::Hit(identity) => {
                self.count(LookupKind::Login, LookupResult::Hit);
                Ok(Some(identity))
            }
            Found::Bypass => {
                self.count(LookupKind::Login, LookupResult::Bypass);
                self.checked(self.inner.authenticate(login, password).await)
            }
            Found::Miss(ticket) => {
                self.count(LookupKind::Login, LookupResult::Miss);
                let answer = self.checked(self.inner.authenticate(login, password).await)?;
                // Only successes are kept (module docs).
                if let Some(identity) = &answer {
                    cache.keep_login(Instant::now(), ticket, key, identity.clone());
                }
                Ok(answer)
            }
        }
    }

    async fn live_credentials(
        &self,
        ids: &[CredentialId],
    ) -> Result<HashSet<CredentialId>, StoreError> {
        self.checked(self.inner.live_credentials(ids).await)
    }

    async fn generation(&self) -> Result<u64, StoreError> {
        let generation = self.checked(self.inner.generation().await)?;
        self.cache.generation_seen(generation);
        Ok(generation)
    }

    async fn senders_of(&self, address: &str) -> Result<Option<Vec<String>>, StoreError> {
        let Ok(canonical) = parse_address(address) else {
            return self.checked(self.inner.senders_of(address).await);
        };
        let canonical = canonical.into_string();
        let cache = &self.cache;
        self.through(
            LookupKind::Senders,
            |now| cache.find_senders(now, &canonical),
            self.inner.senders_of(address),
            |now, ticket, value| cache.keep_senders(now, ticket, canonical.clone(), value),
        )
        .await
    }

    async fn hosting_account_for(
        &self,
        client: IpAddr,
    ) -> Result<Option<HostingAccount>, StoreError> {
        let canonical = client.to_canonical();
        let cache = &self.cache;
        self.through(
            LookupKind::HostingAccount,
            |now| cache.find_hosting(now, canonical),
            self.inner.hosting_account_for(client),
            |now, ticket, value| {
                // "No account" is not kept: see the module docs.
                if value.is_some() {
                    cache.keep_hosting(now, ticket, canonical, value);
                }
            },
        )
        .await
    }

    async fn limits_of(
        &self,
        identity: &QuotaIdentity,
    ) -> Result<Option<IdentityLimits>, StoreError> {
        let cache = &self.cache;
        self.through(
            LookupKind::Limits,
            |now| cache.find_limits(now, identity),
            self.inner.limits_of(identity),
            |now, ticket, value| cache.keep_limits(now, ticket, identity.clone(), value),
        )
        .await
    }
}

#[cfg(test)]
mod tests;
