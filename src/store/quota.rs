//! Sending quotas: recipients counted in a rolling window and recipients held by open
//! transactions, behind one small trait with two backends.
//!
//! - [`QuotaStore`] is what the SMTP side needs: hold one recipient per accepted RCPT, turn a
//!   transaction's holds into counted recipients at end of data, release them on RSET, QUIT or
//!   a dropped connection, refund after a spool refusal, and show the usage.
//! - [`EmbeddedQuota`](super::quota_embedded::EmbeddedQuota) keeps the counts in a SQLite file
//!   of its own (one relay, or several processes on one machine).
//! - [`RedisQuota`](super::quota_redis::RedisQuota) keeps them in Redis or a Redis Cluster
//!   (a fleet of relays), one atomic Lua script per call.
//!
//! [`open_quota_store`] picks the backend from a [`QuotaConfig`]. The arithmetic (buckets,
//! when capacity returns, the reply time) is pure and lives in [`crate::policy::quota`].
//!
//! # Time
//! Every call takes `now_ms`, Unix time in milliseconds; no backend reads the clock, so tests
//! can roll a 24-hour window forward without waiting. In production the caller passes the
//! system time, and relays sharing one Redis must keep their clocks NTP-synchronised: a relay
//! whose clock is ahead frees capacity early by its offset (a relay that is behind only makes
//! counts last longer, see [`QuotaStore::commit`]).
//!
//! # Contract, for every backend
//! - A hold succeeds only while `used + held + 1 <= limit`, checked and written atomically:
//!   at no moment do counted-in-window plus held recipients exceed the limit, however many
//!   processes and tasks call at once.
//! - Holds expire [`QuotaSettings::hold_ttl_ms`] after the last `hold` call for their hold id,
//!   so holds of a process that died free themselves.
//! - The same calls give the same answers on every backend: [`conformance`] checks it.
//!
//! # Failure policy
//! Every backend failure (Redis unreachable or slow, SQLite locked past its timeout, a broken
//! file) is [`QuotaError::Unavailable`], returned quickly (Redis: within the configured
//! timeout). Callers fail closed: an RCPT that meets it is answered with a temporary error,
//! never accepted uncounted. A call that timed out may still have taken effect on the server;
//! the error then overcounts (a hold stays until it is released or expires, a commit stays
//! counted), never undercounts.
//!
//! # What this module does not do
//! No limits of its own (the caller resolves plans and overrides and passes the limit in), no
//! reply texts, no metrics, no short-term rate limits (those are per process, with `governor`).

use crate::policy::quota::QuotaWindow;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::policy::quota::{WindowError, retry_after_text};

/// Default hold expiry: 15 minutes after the last `hold` call of a hold id.
pub const DEFAULT_HOLD_TTL_MS: u64 = 15 * 60 * 1000;
/// Default time a Redis call may take before it is [`QuotaError::Unavailable`].
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Whose recipients are counted: an authenticated address, or a web-hosting account relaying
/// on port 25. The string form (`addr:alice@example.org`, `host:ACCOUNT`) names the key in the
/// stores and is stable: changing it would forget every count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QuotaKey {
    /// An address, canonical lowercase (the login of submission on 587/465).
    Address(String),
    /// A hosting account (unauthenticated relay from its networks).
    Hosting(String),
}

impl QuotaKey {
    /// The stable string form, e.g. `addr:alice@example.org`.
    pub fn as_key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for QuotaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaKey::Address(a) => write!(f, "addr:{a}"),
            QuotaKey::Hosting(h) => write!(f, "host:{h}"),
        }
    }
}

/// A string that is not `addr:NAME` or `host:NAME` with a non-empty name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quota key {0:?}: expected addr:ADDRESS or host:ACCOUNT")]
pub struct InvalidQuotaKey(pub String);

impl FromStr for QuotaKey {
    type Err = InvalidQuotaKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidQuotaKey(s.to_string());
        match s.split_once(':') {
            Some(("addr", a)) if !a.is_empty() => Ok(QuotaKey::Address(a.to_string())),
            Some(("host", h)) if !h.is_empty() => Ok(QuotaKey::Hosting(h.to_string())),
            _ => Err(invalid()),
        }
    }
}

/// The answer to [`QuotaStore::hold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldOutcome {
    /// The recipient is held. The counts are the key's after this hold.
    Held {
        /// Recipients counted in the window.
        used: u32,
        /// Recipients held by all open transactions of the key, this one included.
        held: u32,
    },
    /// The limit is reached; nothing was held.
    Full {
        /// When one recipient of capacity returns (Unix ms), by
        /// [`crate::policy::quota::retry_at`]; format it with [`retry_after_text`].
        retry_at_ms: u64,
    },
}

/// A key's state, for `postern quota show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Recipients counted in the window.
    pub used: u32,
    /// Recipients held by open transactions.
    pub held: u32,
    /// The limit the caller passed in.
    pub limit: u32,
    /// `None` while a hold would succeed; otherwise when one recipient of capacity returns
    /// (the `retry_at_ms` a hold would get).
    pub next_free_ms: Option<u64>,
}

/// What went wrong in a quota call. Messages are one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The backend could not answer (unreachable, timed out, failing). Fail closed.
    #[error("quota service unavailable: {0}")]
    Unavailable(String),
    /// Settings or arguments the store refuses (a bad window, a Redis URL that does not parse).
    #[error("invalid quota settings: {0}")]
    Invalid(String),
}

impl From<WindowError> for QuotaError {
    fn from(e: WindowError) -> Self {
        QuotaError::Invalid(e.to_string())
    }
}

/// The parameters every backend is opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSettings {
    /// The rolling window and its buckets (default 24 hours in one-minute buckets).
    pub window: QuotaWindow,
    /// How long a hold lives after the last `hold` call for its hold id (default 15 minutes).
    /// Must exceed the longest transaction: a hold that expires before its commit is not
    /// counted.
    pub hold_ttl_ms: u64,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            window: QuotaWindow::DAY,
            hold_ttl_ms: DEFAULT_HOLD_TTL_MS,
        }
    }
}

impl QuotaSettings {
    /// How long a backend keeps a key after its last write: a bucket counted now lives at most
    /// one window and one bucket, a hold at most its TTL.
    pub fn retention_ms(&self) -> u64 {
        self.window
            .window_ms()
            .saturating_add(self.window.bucket_ms())
            .saturating_add(self.hold_ttl_ms)
    }
}

/// Where the counts live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaBackend {
    /// A SQLite file of its own (not the directory store's file; it is refused).
    Embedded {
        /// The database file, created if absent (e.g. `var/quota.db`).
        path: PathBuf,
    },
    /// One Redis server, e.g. `redis://10.0.0.5:6379/` (`rediss://` is not built in).
    Redis {
        /// The server's URL.
        url: String,
    },
    /// A Redis Cluster: some of its nodes' URLs; the rest is discovered.
    RedisCluster {
        /// Seed nodes, e.g. `redis://10.0.0.5:7000/`.
        nodes: Vec<String>,
    },
}

/// Everything [`open_quota_store`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaConfig {
    /// The backend.
    pub backend: QuotaBackend,
    /// Window, buckets, hold expiry.
    pub settings: QuotaSettings,
    /// Redis only: connect and response timeout of each call (default 500 ms).
    pub redis_timeout: Duration,
}

impl QuotaConfig {
    /// A config with default settings and timeout.
    pub fn new(backend: QuotaBackend) -> Self {
        Self {
            backend,
            settings: QuotaSettings::default(),
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
        }
    }
}

/// Opens the configured backend. Redis backends connect now, so a wrong address or a server
/// that is down is reported at start; afterwards they reconnect by themselves.
///
/// # Errors
/// [`QuotaError::Invalid`] for a URL that does not parse; [`QuotaError::Unavailable`] if the
/// file cannot be opened or Redis cannot be reached within the timeout.
pub async fn open_quota_store(config: &QuotaConfig) -> Result<Arc<dyn QuotaStore>, QuotaError> {
    match &config.backend {
        QuotaBackend::Embedded { path } => {
            let (path, settings) = (path.clone(), config.settings);
            let store = tokio::task::spawn_blocking(move || {
                super::quota_embedded::EmbeddedQuota::open(&path, settings)
            })
            .await
            .map_err(|e| QuotaError::Unavailable(format!("quota open task failed: {e}")))??;
            Ok(Arc::new(store))
        }
        QuotaBackend::Redis { url } => Ok(Arc::new(
            super::quota_redis::RedisQuota::open_single(url, config.settings, config.redis_timeout)
                .await?,
        )),
        QuotaBackend::RedisCluster { nodes } => Ok(Arc::new(
            super::quota_redis::RedisQuota::open_cluster(
                nodes,
                config.settings,
                config.redis_timeout,
            )
            .await?,
        )),
    }
}

/// Recipient quotas: holds, counts, usage.
///
/// # Contract
/// - All methods are safe to call concurrently from many tasks and processes; each is atomic.
///   They never block the async runtime.
/// - `hold_id` names one transaction's holds within one key (e.g. the transaction's id); it
///   must be unique among the key's open transactions.
/// - `now_ms` is Unix time in milliseconds. It should not go backwards for a key (see the
///   module documentation on clocks).
/// - `Err` means the backend could not answer; it never means "no" or "yes". Callers fail
///   closed.
#[async_trait::async_trait]
pub trait QuotaStore: Send + Sync {
    /// Holds one recipient for `hold_id` if `used + held + 1 <= limit`, and refreshes the
    /// expiry of all of `hold_id`'s holds to `now_ms + hold_ttl_ms` (also when the answer is
    /// `Full`: the transaction is alive).
    ///
    /// # Errors
    /// [`QuotaError::Unavailable`].
    async fn hold(
        &self,
        key: &QuotaKey,
        hold_id: &str,
        limit: u32,
        now_ms: u64,
    ) -> Result<HoldOutcome, QuotaError>;

    /// Turns `hold_id`'s holds into counted recipients and removes the holds; returns how
    /// many were counted (0 if the hold id has no live holds: released, committed or expired).
    ///
    /// They are counted in the bucket of `now_ms`, or in the key's newest bucket if that is
    /// later (another relay's clock ahead): counts may last longer, never shorter. No limit is
    /// checked: the holds reserved the capacity.
    ///
    /// # Errors
    /// [`QuotaError::Unavailable`].
    async fn commit(&self, key: &QuotaKey, hold_id: &str, now_ms: u64) -> Result<u32, QuotaError>;

    /// Drops `hold_id`'s holds; returns how many there were.
    ///
    /// # Errors
    /// [`QuotaError::Unavailable`].
    async fn release(&self, key: &QuotaKey, hold_id: &str) -> Result<u32, QuotaError>;

    /// Un-counts up to `n` recipients, newest bucket first (a message refused by the spool
    /// after its commit); returns how many were un-counted.
    ///
    /// # Errors
    /// [`QuotaError::Unavailable`].
    async fn refund(&self, key: &QuotaKey, n: u32, now_ms: u64) -> Result<u32, QuotaError>;

    /// The key's counts at `now_ms` against `limit`.
    ///
    /// # Errors
    /// [`QuotaError::Unavailable`].
    async fn usage(&self, key: &QuotaKey, limit: u32, now_ms: u64) -> Result<Usage, QuotaError>;

    /// Whether the backend answers (for `/readyz`).
    ///
    /// # Errors
    /// [`QuotaError::Unavailable`].
    async fn ping(&self) -> Result<(), QuotaError>;

    /// The settings the store was opened with.
    fn settings(&self) -> QuotaSettings;
}

/// The behaviour every [`QuotaStore`] must have, as async functions that panic on a
/// difference. `tests/quota_conformance.rs` runs them against the embedded store, one Redis
/// server and a Redis Cluster.
///
/// Each case uses its own key (`addr:CASE@conformance.test`, with a caller-given prefix so
/// reruns against a long-lived server do not collide) and times from [`conformance::T0`]. The
/// stores must be opened with [`conformance::settings`].
pub mod conformance {
    use super::{HoldOutcome, QuotaKey, QuotaSettings, QuotaStore, Usage};
    use crate::policy::quota::QuotaWindow;

    /// 2023-11-14 22:13:20 UTC: a whole second, so buckets start there.
    pub const T0: u64 = 1_700_000_000_000;
    /// The window of the cases: 4 s in 1 s buckets.
    pub const WINDOW_MS: u64 = 4_000;
    /// The bucket of the cases.
    pub const BUCKET_MS: u64 = 1_000;
    /// The hold TTL of the cases.
    pub const HOLD_TTL_MS: u64 = 1_500;

    /// The settings stores under test must be opened with.
    pub fn settings() -> QuotaSettings {
        QuotaSettings {
            window: QuotaWindow::new(WINDOW_MS, BUCKET_MS).expect("a valid window"),
            hold_ttl_ms: HOLD_TTL_MS,
        }
    }

    fn key(prefix: &str, case: &str) -> QuotaKey {
        QuotaKey::Address(format!("{prefix}{case}@conformance.test"))
    }

    async fn hold(s: &dyn QuotaStore, k: &QuotaKey, id: &str, limit: u32, now: u64) -> HoldOutcome {
        s.hold(k, id, limit, now).await.expect("hold")
    }

    fn held(used: u32, held: u32) -> HoldOutcome {
        HoldOutcome::Held { used, held }
    }

    fn full(retry_at_ms: u64) -> HoldOutcome {
        HoldOutcome::Full { retry_at_ms }
    }

    /// Runs every case on `s` (and the two-store concurrency case on `s` and `other`, which
    /// must be a second handle on the same backend).
    pub async fn run_all(s: &dyn QuotaStore, other: &dyn QuotaStore, prefix: &str) {
        assert_eq!(
            s.settings(),
            settings(),
            "open the store with conformance::settings()"
        );
        limit_n_and_n_plus_one(s, prefix).await;
        holds_count_against_the_limit(s, prefix).await;
        release_frees(s, prefix).await;
        commit_counts(s, prefix).await;
        window_roll(s, prefix).await;
        retry_at_exact(s, prefix).await;
        hold_expiry(s, prefix).await;
        refund(s, prefix).await;
        usage(s, prefix).await;
        concurrency(s, other, prefix).await;
    }

    /// N holds pass, the (N+1)th is `Full`; limit 0 holds nothing.
    pub async fn limit_n_and_n_plus_one(s: &dyn QuotaStore, prefix: &str) {
        let k = key(prefix, "limit");
        for i in 1..=5 {
            assert_eq!(hold(s, &k, "t1", 5, T0).await, held(0, i));
        }
        // Nothing counted yet: the holds will be, now, so capacity returns a window later.
        assert_eq!(hold(s, &k, "t1", 5, T0).await, full(T0 + WINDOW_MS));
        assert_eq!(hold(s, &k, "t2", 5, T0).await, full(T0 + WINDOW_MS));
        let z = key(prefix, "limit-zero");
        assert_eq!(hold(s, &z, "t1", 0, T0).await, full(T0 + WINDOW_MS));
    }

    /// Holds of one transaction count against another's; a bigger limit gives room.
    pub async fn holds_count_against_the_limit(s: &dyn QuotaStore, prefix: &str) {
        let k = key(prefix, "holds");
        assert_eq!(hold(s, &k, "a", 3, T0).await, held(0, 1));
        assert_eq!(hold(s, &k, "a", 3, T0).await, held(0, 2));
        assert_eq!(hold(s, &k, "b", 3, T0).await, held(0, 3));
        assert!(matches!(
            hold(s, &k, "b", 3, T0).await,
            HoldOutcome::Full { .. }
        ));
        assert_eq!(hold(s, &k, "c", 4, T0).await, held(0, 4));
    }

    /// Release drops exactly one hold id's holds.
    pub async fn release_frees(s: &dyn QuotaStore, prefix: &str) {
        let k = key(prefix, "release");
        hold(s, &k, "a", 3, T0).await;
        hold(s, &k, "a", 3, T0).await;
        hold(s, &k, "b", 3, T0).await;
        assert!(matches!(
            hold(s, &k, "c", 3, T0).await,
            HoldOutcome::Full { .. }
        ));
        assert_eq!(s.release(&k, "a").await.expect("release"), 2);
        assert_eq!(s.release(&k, "a").await.expect("release"), 0);
        assert_eq!(s.release(&k, "nobody").await.expect("release"), 0);
        assert_eq!(hold(s, &k, "c", 3, T0).await, held(0, 2));
        assert_eq!(hold(s, &k, "c", 3, T0).await, held(0, 3));
        assert!(matches!(
            hold(s, &k, "c", 3, T0).await,
            HoldOutcome::Full { .. }
        ));
    }

    /// Commit turns holds into counted recipients, once.
    pub async fn commit_counts(s: &dyn QuotaStore, prefix: &str) {
        let k = key(prefix, "commit");
        for _ in 0..3 {
            hold(s, &k, "m1", 5, T0).await;
        }
        hold(s, &k, "m2", 5, T0).await;
        assert_eq!(s.commit(&k, "m1", T0 + 10).await.expect("commit"), 3);
        assert_eq!(s.commit(&k, "m1", T0 + 10).await.expect("commit"), 0);
        assert_eq!(s.commit(&k, "none", T0 + 10).await.expect("commit"), 0);
        assert_eq!(hold(s, &k, "m3", 5, T0 + 20).await, held(3, 2));
        // Full now: 3 counted + 2 held. The 3 counted free at T0 + window.
        assert_eq!(hold(s, &k, "m3", 5, T0 + 20).await, full(T0 + WINDOW_MS));
        assert_eq!(s.release(&k, "m3").await.expect("release"), 1);
        assert_eq!(s.commit(&k, "m2", T0 + 30).await.expect("commit"), 1);
        let u = s.usage(&k, 5, T0 + 30).await.expect("usage");
        assert_eq!((u.used, u.held), (4, 0));
    }

    /// Recipients counted in bucket b count until the start of bucket b + buckets, exactly.
    pub async fn window_roll(s: &dyn QuotaStore, prefix: &str) {
        let k = key(prefix, "roll");
        // 2 counted at T0 + 300 (bucket of T0), 1 at T0 + 1700 (next bucket).
        hold(s, &k, "a", 3, T0 + 300).await;
        hold(s, &k, "a", 3, T0 + 300).await;
        s.commit(&k, "a", T0 + 300).await.expect("commit");
        hold(s, &k, "b", 3, T0 + 1_700).await;
        s.commit(&k, "b", T0 + 1_700).await.expect("commit");
        assert_eq!(
            hold(s, &k, "c", 3, T0 + WINDOW_MS - 1).await,
            full(T0 + WINDOW_MS)
        );
        assert_eq!(hold(s, &k, "c", 3, T0 + WINDOW_MS).await, held(1, 1));
        assert_eq!(hold(s, &k, "c", 3, T0 + WINDOW_MS).await, held(1, 2));
        assert_eq!(
            hold(s, &k, "c", 3, T0 + WINDOW_MS + 999).await,
            full(T0 + WINDOW_MS + 1_000)
        );
        s.release(&k, "c").await.expect("release");
        let u = s.usage(&k, 3, T0 + WINDOW_MS + 1_000).await.expect("usage");
        assert_eq!((u.used, u.held, u.next_free_ms), (0, 0, None));
        // A long idle gap: everything expired, nothing left over.
        assert_eq!(hold(s, &k, "d", 3, T0 + 100 * WINDOW_MS).await, held(0, 1));
        assert_eq!(s.commit(&k, "d", T0 + 100 * WINDOW_MS).await.expect("c"), 1);
        let u = s.usage(&k, 3, T0 + 100 * WINDOW_MS).await.expect("usage");
        assert_eq!((u.used, u.held), (1, 0));
    }

    /// The retry time: oldest bucket that frees enough, holds counted in the current bucket.
    pub async fn retry_at_exact(s: &dyn QuotaStore, prefix: &str) {
        let k = key(prefix, "retry");
        // 2 in bucket T0, 3 in bucket T0+1s, 1 in bucket T0+2s.
        for (n, at) in [(2, T0 + 100), (3, T0 + 1_100), (1, T0 + 2_100)] {
            for _ in 0..n {
                hold(s, &k, "x", 100, at).await;
            }
            s.commit(&k, "x", at).await.expect("commit");
        }
        let now = T0 + 2_500;
        assert_eq!(hold(s, &k, "y", 6, now).await, full(T0 + WINDOW_MS));
        assert_eq!(hold(s, &k, "y", 3, now).await, full(T0 + WINDOW_MS + 1_000));
        assert_eq!(hold(s, &k, "y", 8, now).await, held(6, 1));
        assert_eq!(hold(s, &k, "y", 8, now).await, held(6, 2));
        // 6 used + 2 held, limit 8: need 1, the first bucket (2) frees it.
        assert_eq!(hold(s, &k, "z", 8, now).await, full(T0 + WINDOW_MS));
        // limit 7: need 2 -> still the first bucket; limit 5: need 4 -> the second.
        assert_eq!(hold(s, &k, "z", 7, now).await, full(T0 + WINDOW_MS));
        assert_eq!(hold(s, &k, "z", 5, now).await, full(T0 + WINDOW_MS + 1_000));
        // Limit 2: need 7 = 6 counted + 1 of the holds, which count in the current bucket
        // (T0 + 2s): it frees at T0 + 2s + window.
        assert_eq!(hold(s, &k, "z", 2, now).await, full(T0 + WINDOW_MS + 2_000));
        // Holds only, on a fresh key: they count in the current bucket.
        let h = key(prefix, "retry-holds");
        hold(s, &h, "p", 2, T0).await;
        hold(s, &h, "q", 2, T0 + 200).await;
        assert_eq!(hold(s, &h, "r", 2, T0 + 300).await, full(T0 + WINDOW_MS));
        assert_eq!(
            hold(s, &h, "p", 2, T0 + 1_400).await,
            full(T0 + 1_000 + WINDOW_MS)
        );
    }

    /// Holds expire `hold_ttl_ms` after their id's last hold call, and then free capacity.
    pub async fn hold_expiry(s: &dyn QuotaStore, prefix: &str) {
        let k = key(prefix, "expiry");
        hold(s, &k, "dead", 2, T0).await;
        hold(s, &k, "dead", 2, T0 + 500).await;
        assert_eq!(
            hold(s, &k, "live", 2, T0 + 500 + HOLD_TTL_MS - 1).await,
            full(T0 + 1_000 + WINDOW_MS)
        );
        assert_eq!(
            hold(s, &k, "live", 2, T0 + 500 + HOLD_TTL_MS).await,
            held(0, 1)
        );
        // The expired holds are gone for commit too.
        assert_eq!(
            s.commit(&k, "dead", T0 + 500 + HOLD_TTL_MS)
                .await
                .expect("c"),
            0
        );
        let u = s.usage(&k, 2, T0 + 500 + HOLD_TTL_MS).await.expect("usage");
        assert_eq!((u.used, u.held), (0, 1));
    }

    /// Refund un-counts newest first and never below zero.
    pub async fn refund(s: &dyn QuotaStore, prefix: &str) {
        let k = key(prefix, "refund");
        for (n, at) in [(2, T0), (3, T0 + 1_000)] {
            for _ in 0..n {
                hold(s, &k, "x", 10, at).await;
            }
            s.commit(&k, "x", at).await.expect("commit");
        }
        assert_eq!(s.refund(&k, 2, T0 + 1_000).await.expect("refund"), 2);
        let u = s.usage(&k, 3, T0 + 1_000).await.expect("usage");
        assert_eq!((u.used, u.next_free_ms), (3, Some(T0 + WINDOW_MS)));
        // 1 left in the newer bucket, 2 in the older: refunding 2 empties the newer first, so
        // the remaining 1 frees with the older bucket.
        assert_eq!(s.refund(&k, 2, T0 + 1_000).await.expect("refund"), 2);
        assert_eq!(hold(s, &k, "y", 1, T0 + 1_000).await, full(T0 + WINDOW_MS));
        assert_eq!(s.refund(&k, 5, T0 + 1_000).await.expect("refund"), 1);
        assert_eq!(s.refund(&k, 5, T0 + 1_000).await.expect("refund"), 0);
        assert_eq!(hold(s, &k, "y", 1, T0 + 1_000).await, held(0, 1));
    }

    /// Usage reports counts, the limit and when capacity returns.
    pub async fn usage(s: &dyn QuotaStore, prefix: &str) {
        let k = key(prefix, "usage");
        let empty = s.usage(&k, 5, T0).await.expect("usage");
        assert_eq!(
            empty,
            Usage {
                used: 0,
                held: 0,
                limit: 5,
                next_free_ms: None
            }
        );
        for _ in 0..3 {
            hold(s, &k, "a", 5, T0 + 200).await;
        }
        s.commit(&k, "a", T0 + 200).await.expect("commit");
        hold(s, &k, "b", 5, T0 + 300).await;
        let u = s.usage(&k, 5, T0 + 300).await.expect("usage");
        assert_eq!((u.used, u.held, u.limit, u.next_free_ms), (3, 1, 5, None));
        let u = s.usage(&k, 4, T0 + 300).await.expect("usage");
        assert_eq!(u.next_free_ms, Some(T0 + WINDOW_MS));
        // A limit lowered below the usage.
        let u = s.usage(&k, 1, T0 + 300).await.expect("usage");
        assert_eq!(
            (u.used, u.held, u.next_free_ms),
            (3, 1, Some(T0 + WINDOW_MS))
        );
        // Usage does not change anything.
        let again = s.usage(&k, 5, T0 + 300).await.expect("usage");
        assert_eq!((again.used, again.held), (3, 1));
    }

    /// 8 transactions on two handles race 100 holds each against limit 500: exactly 500 are
    /// held, and after commits exactly 500 are counted.
    pub async fn concurrency(a: &dyn QuotaStore, b: &dyn QuotaStore, prefix: &str) {
        let k = key(prefix, "race");
        let task = |s: &'static str, store: usize| {
            let k = k.clone();
            let store = if store == 0 { a } else { b };
            async move {
                let mut n = 0u32;
                for _ in 0..100 {
                    if let HoldOutcome::Held { .. } = hold(store, &k, s, 500, T0).await {
                        n += 1;
                    }
                }
                n
            }
        };
        let counts = tokio::join!(
            task("t0", 0),
            task("t1", 1),
            task("t2", 0),
            task("t3", 1),
            task("t4", 0),
            task("t5", 1),
            task("t6", 0),
            task("t7", 1),
        );
        let counts = [
            counts.0, counts.1, counts.2, counts.3, counts.4, counts.5, counts.6, counts.7,
        ];
        assert_eq!(counts.iter().sum::<u32>(), 500, "held per task: {counts:?}");
        let mut committed = 0;
        for (i, id) in ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"]
            .iter()
            .enumerate()
        {
            let store = if i % 2 == 0 { a } else { b };
            committed += store.commit(&k, id, T0 + 1).await.expect("commit");
        }
        assert_eq!(committed, 500);
        let u = a.usage(&k, 500, T0 + 1).await.expect("usage");
        assert_eq!((u.used, u.held), (500, 0));
        assert!(matches!(
            hold(b, &k, "late", 500, T0 + 1).await,
            HoldOutcome::Full { .. }
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_string_forms() {
        let a = QuotaKey::Address("alice@example.org".into());
        let h = QuotaKey::Hosting("web42".into());
        assert_eq!(a.to_string(), "addr:alice@example.org");
        assert_eq!(h.as_key(), "host:web42");
        assert_eq!("addr:alice@example.org".parse::<QuotaKey>().unwrap(), a);
        assert_eq!("host:web42".parse::<QuotaKey>().unwrap(), h);
        assert!("addr:".parse::<QuotaKey>().is_err());
        assert!("user:x".parse::<QuotaKey>().is_err());
        assert_eq!(
            "x".parse::<QuotaKey>().unwrap_err().to_string(),
            "invalid quota key \"x\": expected addr:ADDRESS or host:ACCOUNT"
        );
    }

    #[test]
    fn settings_defaults() {
        let s = QuotaSettings::default();
        assert_eq!(s.window, QuotaWindow::DAY);
        assert_eq!(s.hold_ttl_ms, 900_000);
        assert_eq!(s.retention_ms(), 86_400_000 + 60_000 + 900_000);
        let c = QuotaConfig::new(QuotaBackend::Redis {
            url: "redis://127.0.0.1/".into(),
        });
        assert_eq!(c.redis_timeout, Duration::from_millis(500));
    }
}
