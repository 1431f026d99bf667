//! Short-term brakes that a fleet must count together: the message burst brake per identity
//! and the failed-login brake per client and per subnet, behind one small trait.
//!
//! With the embedded quota backend the counts live in this process ([`memory`]), as they
//! always did: one relay, one count. With Redis they live next to the quotas ([`redis`]), so
//! that a brute force or a burst spread over the replicas behind a load balancer meets one
//! count, not one per replica. The per-IP connection-rate brake is not here: it protects each
//! replica's accept loop and stays in the listener (`governor`).
//!
//! # Two algorithms, and why
//! - **Messages: GCRA** (the generic cell rate algorithm, as `governor` runs it in process): a
//!   budget of `n` messages a minute is a burst of `n`, then one more every `60/n` seconds.
//!   Its state is one number per identity (the theoretical arrival time), so a check is one
//!   `GET` and one `SET` whatever `n` is, and the relay behaves as it did with the in-process
//!   brake.
//! - **Failed logins: a sliding window log** of attempts (a sorted set per client key and per
//!   subnet key, scored by time). The rule to keep is "at most N failures within the window",
//!   counted exactly, and a login attempt is not known to be a failure until the password was
//!   checked: [`BrakeStore::begin_login`] checks both windows and records the attempt in one
//!   atomic step (like a quota hold), [`BrakeStore::forget_login`] takes it back when the
//!   password was right. So replicas racing with parallel attempts cannot pass the limit
//!   together: at no moment do recorded attempts exceed N. The log holds at most N entries per
//!   key.
//!
//! # Keys
//! The caller passes opaque key texts (the listener's client key, an IPv4 address or IPv6 /64,
//! and subnet key, an IPv4 /24 or IPv6 /48), so this module knows no address arithmetic. In
//! Redis the client's and its subnet's sets share the subnet's hash tag: one Cluster slot, one
//! script.
//!
//! # Time
//! As for quotas, every call takes `now_ms` (Unix milliseconds) from the caller; relays
//! sharing Redis keep their clocks NTP-synchronised.
//!
//! # Failure policy
//! Every backend failure is [`BrakeError::Unavailable`]. Callers fail closed: AUTH answers
//! `454 4.7.0`, the first RCPT of a message `451 4.3.0`, as for the quota. Only the check at
//! connection time (is this client already braked?) lets the connection in when the backend
//! does not answer, because its AUTH will then fail closed anyway and a port-25 client does
//! not log in.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod memory;
pub mod redis;

use std::num::NonZeroU32;

/// What went wrong in a brake call. Messages are one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrakeError {
    /// The backend could not answer. Fail closed.
    #[error("brake service unavailable: {0}")]
    Unavailable(String),
}

/// Where a login comes from, as the failed-login brake counts it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoginSource {
    /// The client key (one address, or one IPv6 /64), as text.
    pub client: String,
    /// The subnet key the client belongs to (IPv4 /24, IPv6 /48), as text.
    pub subnet: String,
}

/// The failed-login brake's limits (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failed logins per client key within the window.
    pub per_client: u32,
    /// Failed logins per subnet key within the window.
    pub per_subnet: u32,
    /// The window, in milliseconds: a failure at `t` counts while `now - t <= window_ms`.
    pub window_ms: u64,
}

/// The failed-login brake's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginBrake {
    /// Under both limits (after [`BrakeStore::begin_login`]: the attempt is recorded).
    Open,
    /// The client key has its limit of failures in the window.
    Client,
    /// The subnet key has its limit of failures in the window.
    Subnet,
}

/// The message brake's budget: `per_minute` messages, as a burst, refilling evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRate {
    /// Messages per minute (and the burst).
    pub per_minute: NonZeroU32,
}

impl MessageRate {
    /// Milliseconds between two messages once the burst is spent.
    pub fn interval_ms(self) -> f64 {
        MINUTE_MS / f64::from(self.per_minute.get())
    }
}

/// The message brake's period: the burst refills in one minute.
pub const MINUTE_MS: f64 = 60_000.0;

/// Slack in the GCRA comparison: `n` intervals of `60000/n` ms add up to a minute only up to
/// rounding, and the `n`th message of a burst must pass.
pub const GCRA_SLACK_MS: f64 = 0.5;

/// The short-term brakes a fleet counts together.
///
/// # Contract
/// - Every method is atomic and safe to call concurrently from many tasks and processes.
/// - `take_message` allows a burst of `per_minute` messages at one instant, refused the next
///   one, and allows one more each `60000/per_minute` ms after that; a refused message takes
///   nothing.
/// - `begin_login` answers `Open` and records `attempt` only while fewer than `per_client`
///   attempts of the client key, and fewer than `per_subnet` of the subnet key, are recorded
///   within the window; the client limit is checked first. A recorded attempt counts as a
///   failure until `forget_login`, and leaves the window `window_ms` after it was recorded.
/// - `login_state` answers as `begin_login` would, recording nothing.
/// - `attempt` ids are unique (random) per attempt across the fleet.
/// - `Err` means the backend could not answer, never "braked" or "open".
#[async_trait::async_trait]
pub trait BrakeStore: Send + Sync {
    /// Takes one message of `identity`'s budget; `false` when it is spent.
    ///
    /// # Errors
    /// [`BrakeError::Unavailable`].
    async fn take_message(
        &self,
        identity: &str,
        rate: MessageRate,
        now_ms: u64,
    ) -> Result<bool, BrakeError>;

    /// Whether logins from `source` are braked now.
    ///
    /// # Errors
    /// [`BrakeError::Unavailable`].
    async fn login_state(
        &self,
        source: &LoginSource,
        limits: LoginLimits,
        now_ms: u64,
    ) -> Result<LoginBrake, BrakeError>;

    /// Checks both windows and, when open, records `attempt` as a failure until forgotten.
    ///
    /// # Errors
    /// [`BrakeError::Unavailable`].
    async fn begin_login(
        &self,
        source: &LoginSource,
        attempt: &str,
        limits: LoginLimits,
        now_ms: u64,
    ) -> Result<LoginBrake, BrakeError>;

    /// Takes back a recorded attempt (the login succeeded, or was never checked).
    ///
    /// # Errors
    /// [`BrakeError::Unavailable`].
    async fn forget_login(&self, source: &LoginSource, attempt: &str) -> Result<(), BrakeError>;

    /// Forgets state that no longer brakes anything (in-process stores; Redis keys expire by
    /// themselves).
    fn prune(&self, _now_ms: u64) {}
}
