//! Sending quotas: recipients counted in a rolling window and recipients held by open
//! transactions, behind one small trait.
//!
//! [`QuotaStore`] is what the SMTP side needs: hold one recipient per accepted RCPT, turn a
//! transaction's holds into counted recipients at end of data, release them on RSET, QUIT or
//! a dropped connection, refund after a spool refusal, and show the usage. This module holds
//! the trait, its contract and the types it speaks in; it knows no backend. The arithmetic
//! (buckets, when capacity returns, the reply time) is pure and lives in
//! [`crate::policy::quota`].
//!
//! # Layout
//! - `embedded`: the counts in a SQLite file of their own (one relay, or several processes
//!   on one machine).
//! - `redis`: the counts in Redis or a Redis Cluster (a fleet of relays), one atomic Lua
//!   script per call.
//! - `builder`: the configuration of a backend and the one function that opens the
//!   configured one, so that callers hold an `Arc<dyn QuotaStore>` and never name a backend.
//! - `conformance`: the cases every backend must pass (tests and the `conformance` feature
//!   only).
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
//! - The same calls give the same answers on every backend: the `conformance` cases check it.
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

pub mod builder;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod embedded;
pub mod redis;

use crate::policy::quota::QuotaWindow;
use std::fmt;
use std::str::FromStr;

pub use crate::policy::quota::{WindowError, retry_after_text};
pub use crate::store::redis_link::Persistence;

/// Default hold expiry: 15 minutes after the last `hold` call of a hold id.
pub const DEFAULT_HOLD_TTL_MS: u64 = 15 * 60 * 1000;

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
pub enum QuotaHold {
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
    ) -> Result<QuotaHold, QuotaError>;

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

    /// Whether the backend keeps counts and holds across its own restart (read once at start
    /// for `postern_quota_backend_persistence` and the warning when it does not).
    async fn persistence(&self) -> Persistence;

    /// The settings the store was opened with.
    fn settings(&self) -> QuotaSettings;
}

/// The waits between the attempts of [`release_retrying`] after a failed release: about half
/// a minute in all, far below the default `hold_ttl` of 15 minutes, and enough for a Redis
/// restart or a Cluster failover.
pub const RELEASE_RETRY_DELAYS: [std::time::Duration; 6] = [
    std::time::Duration::from_millis(500),
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(4),
    std::time::Duration::from_secs(8),
    std::time::Duration::from_secs(16),
];

/// Releases `hold_id`'s holds, trying again after each of `delays` while the backend is
/// unavailable (RSET, QUIT or a dropped connection while Redis blipped: without a retry the
/// holds would block capacity until `hold_ttl`). Run it in a task of its own; the caller does
/// not wait for it.
///
/// # Errors
/// The last [`QuotaError`] once every attempt failed (the holds then expire by themselves),
/// or at once for [`QuotaError::Invalid`].
pub async fn release_retrying(
    store: &dyn QuotaStore,
    key: &QuotaKey,
    hold_id: &str,
    delays: &[std::time::Duration],
) -> Result<u32, QuotaError> {
    let mut last = match store.release(key, hold_id).await {
        Ok(n) => return Ok(n),
        Err(e) => e,
    };
    for delay in delays {
        if matches!(last, QuotaError::Invalid(_)) {
            break;
        }
        tokio::time::sleep(*delay).await;
        match store.release(key, hold_id).await {
            Ok(n) => return Ok(n),
            Err(e) => last = e,
        }
    }
    Err(last)
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
    }
}
