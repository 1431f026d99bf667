//! Short-term abuse brakes: new connections per client IP per minute, messages per identity
//! (address or hosting account) per minute, and failed logins per client and per subnet
//! within `limits.auth_failure_window`.
//!
//! The connection-rate brake is per process (a GCRA limiter from `governor`, in memory): it
//! protects each replica's accept loop, so each counts what it sees. The message brake and
//! the failed-login brake count in the [`BrakeStore`] that comes with the quota backend: in
//! this process with the embedded store, in Redis with Redis, so that a brute force or a burst
//! spread over the replicas of a fleet meets one count (see [`crate::store::brakes`] for the
//! algorithms). A message or connection limit of 0 turns that brake off (the development
//! default).
//!
//! Fail closed, as for the quota: a brake store that does not answer turns AUTH into
//! `454 4.7.0` and the first RCPT of a message into `451 4.3.0`. Only the connection-time
//! look at the failed-login brake lets the client in, since its AUTH then fails closed.
//!
//! # Logins still being checked
//! The store counts an attempt as failed from the moment it begins until the password proved
//! right (so parallel guesses can never pass the limit together). A burst of correct logins
//! from one address (an office of mail clients behind one NAT reconnecting at once) therefore
//! meets the brake while its own attempts are in flight. Such a login, and such a connection,
//! is not refused at once: it waits for the attempts of this process from the same subnet to
//! be settled (up to [`LOGIN_PATIENCE`]), asking again each time one is, and, when none of
//! them is pending here (they may be another replica's), asks again after the short
//! [`REMOTE_PAUSES`]. The count the store keeps never exceeds the limit; a client braked by
//! real failures only gets its refusal a little later, which also slows guessing down.

use super::guard::{Refusal, client_key, subnet_key};
use crate::config::{BrakesConfig, LimitsConfig};
use crate::store::brakes::{
    BrakeError, BrakeStore, LoginBrake, LoginLimits, LoginSource, MessageRate,
};
use crate::unix_time::unix_ms;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Longest wait of a login (or a connection) meeting the failed-login brake while attempts of
/// this process from its subnet are still being checked.
pub const LOGIN_PATIENCE: Duration = Duration::from_secs(1);
/// Pauses before asking the store again when the brake is engaged and no attempt of this
/// process from the subnet is pending: another replica's attempts settle within these.
pub const REMOTE_PAUSES: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(150)];

/// All three brakes.
pub struct Brakes {
    connections: Option<DefaultKeyedRateLimiter<IpAddr>>,
    messages: Option<MessageRate>,
    logins: LoginLimits,
    store: Arc<dyn BrakeStore>,
    pending: Arc<Pending>,
}

/// Login attempts of this process begun and not yet settled, per subnet key.
#[derive(Default)]
struct Pending {
    per_subnet: Mutex<HashMap<String, PendingSubnet>>,
}

struct PendingSubnet {
    count: usize,
    /// One waiter is woken per settled attempt (one place may have come free), every waiter
    /// when the last one is settled; a waiter woken for nothing asks the store and waits again.
    settled: Arc<Notify>,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingSubnet>> {
        self.per_subnet
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What to wait on while attempts from `subnet` are pending here; `None` when none is.
    fn watch(&self, subnet: &str) -> Option<Arc<Notify>> {
        self.lock().get(subnet).map(|p| p.settled.clone())
    }

    fn enter(self: &Arc<Self>, subnet: &str) -> PendingAttempt {
        self.lock()
            .entry(subnet.to_string())
            .or_insert_with(|| PendingSubnet {
                count: 0,
                settled: Arc::default(),
            })
            .count += 1;
        PendingAttempt {
            pending: self.clone(),
            subnet: subnet.to_string(),
        }
    }
}

/// One pending attempt; settled when dropped (also when the session goes away mid-check).
struct PendingAttempt {
    pending: Arc<Pending>,
    subnet: String,
}

impl Drop for PendingAttempt {
    fn drop(&mut self) {
        let mut map = self.pending.lock();
        let Some(entry) = map.get_mut(&self.subnet) else {
            return;
        };
        entry.count -= 1;
        if entry.count == 0 {
            if let Some(entry) = map.remove(&self.subnet) {
                entry.settled.notify_waiters();
            }
        } else {
            entry.settled.notify_one();
        }
    }
}

/// A login attempt recorded by [`Brakes::begin_login`]: a failure unless taken back.
pub struct LoginAttempt {
    source: LoginSource,
    id: String,
    _pending: PendingAttempt,
}

/// Whether an AUTH may check its credentials.
pub enum LoginGate {
    /// Yes; the attempt counts as a failure until [`Brakes::login_checked`] says otherwise.
    Open(LoginAttempt),
    /// The failed-login brake of the client or of its subnet is engaged.
    Braked(Refusal),
    /// The brake store did not answer: fail closed.
    Unavailable(BrakeError),
}

impl Brakes {
    /// Brakes as configured, counting messages and logins in `store`.
    pub fn new(config: &BrakesConfig, limits: &LimitsConfig, store: Arc<dyn BrakeStore>) -> Self {
        Self {
            connections: NonZeroU32::new(config.connections_per_ip_per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            messages: NonZeroU32::new(config.messages_per_identity_per_minute)
                .map(|per_minute| MessageRate { per_minute }),
            logins: LoginLimits {
                per_client: limits.max_auth_failures_per_ip,
                per_subnet: limits.max_auth_failures_per_subnet,
                window_ms: u64::try_from(limits.auth_failure_window.as_millis())
                    .unwrap_or(u64::MAX),
            },
            store,
            pending: Arc::default(),
        }
    }

    /// Whether a new connection from `ip` may proceed (per process).
    pub fn allow_connection(&self, ip: IpAddr) -> bool {
        self.connections
            .as_ref()
            .is_none_or(|l| l.check_key(&client_key(ip)).is_ok())
    }

    /// Why a new connection from `ip` is refused by the failed-login brake, if it is. A store
    /// that does not answer lets it in: its AUTH will fail closed. A brake engaged while
    /// logins are being checked is waited out (module documentation).
    pub async fn failed_logins(&self, ip: IpAddr) -> Option<Refusal> {
        let source = source(ip);
        let state = self
            .patiently(&source.subnet, || {
                self.store.login_state(&source, self.logins, now())
            })
            .await;
        match state {
            Ok(state) => refusal(state),
            Err(e) => {
                tracing::warn!(client_ip = %ip, error = %e, "failed-login brake unavailable at connect; AUTH will wait for it");
                None
            }
        }
    }

    /// Checks the failed-login brake before an AUTH checks its credentials, recording the
    /// attempt (see [`crate::store::brakes`]). A brake engaged while logins are being checked
    /// is waited out (module documentation).
    pub async fn begin_login(&self, ip: IpAddr) -> LoginGate {
        let source = source(ip);
        let id = format!("{:032x}", rand::random::<u128>());
        let state = self
            .patiently(&source.subnet, || {
                self.store.begin_login(&source, &id, self.logins, now())
            })
            .await;
        match state {
            Ok(LoginBrake::Open) => {
                let pending = self.pending.enter(&source.subnet);
                LoginGate::Open(LoginAttempt {
                    source,
                    id,
                    _pending: pending,
                })
            }
            Ok(state) => LoginGate::Braked(refusal(state).unwrap_or(Refusal::FailedLogins)),
            Err(e) => LoginGate::Unavailable(e),
        }
    }

    /// Asks `ask` until the brake is open, the store fails, or patience runs out: while
    /// attempts of this process from `subnet` are pending, after each one settles (until
    /// [`LOGIN_PATIENCE`]); otherwise after each of [`REMOTE_PAUSES`].
    async fn patiently<F, Fut>(&self, subnet: &str, mut ask: F) -> Result<LoginBrake, BrakeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<LoginBrake, BrakeError>>,
    {
        let deadline = Instant::now() + LOGIN_PATIENCE;
        let mut remote = REMOTE_PAUSES.iter();
        loop {
            let watched = self.pending.watch(subnet);
            // Registered before asking, so a settlement between the answer and the wait is
            // not missed.
            let mut settled = watched.as_deref().map(|n| Box::pin(n.notified()));
            if let Some(settled) = settled.as_mut() {
                settled.as_mut().enable();
            }
            let state = ask().await?;
            if state == LoginBrake::Open {
                return Ok(state);
            }
            if let Some(settled) = settled {
                if tokio::time::timeout_at(deadline, settled).await.is_err() {
                    return Ok(state);
                }
            } else if let Some(pause) = remote.next() {
                tokio::time::sleep(*pause).await;
            } else {
                return Ok(state);
            }
        }
    }

    /// The credentials were checked: a success (or a check that never happened) takes the
    /// attempt back; a failure leaves it counted.
    pub async fn login_checked(&self, attempt: LoginAttempt, failed: bool) {
        // Taken back before the attempt is settled (dropped at the end), so that logins
        // waiting for it find the brake open.
        if !failed && let Err(e) = self.store.forget_login(&attempt.source, &attempt.id).await {
            // Counted as a failure until it leaves the window: the safe side.
            tracing::warn!(error = %e, "failed-login brake: could not take back an attempt");
        }
        drop(attempt);
    }

    /// Takes one message of `identity`'s per-minute budget: `Ok(false)` when it is spent.
    ///
    /// # Errors
    /// The brake store did not answer.
    pub async fn allow_message(&self, identity: &str) -> Result<bool, BrakeError> {
        match self.messages {
            Some(rate) => self.store.take_message(identity, rate, now()).await,
            None => Ok(true),
        }
    }

    /// Forgets keys whose budget is full again (keeps memory bounded).
    pub fn prune(&self) {
        if let Some(l) = &self.connections {
            l.retain_recent();
        }
        self.store.prune(now());
    }
}

fn now() -> u64 {
    unix_ms(SystemTime::now())
}

/// The failed-login brake's keys of `ip`.
fn source(ip: IpAddr) -> LoginSource {
    LoginSource {
        client: client_key(ip).to_string(),
        subnet: subnet_key(ip).to_string(),
    }
}

fn refusal(state: LoginBrake) -> Option<Refusal> {
    match state {
        LoginBrake::Open => None,
        LoginBrake::Client => Some(Refusal::FailedLogins),
        LoginBrake::Subnet => Some(Refusal::FailedLoginsFromSubnet),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::brakes::memory::MemoryBrakes;
    use std::time::Duration;

    fn brakes(connections: u32, messages: u32, per_ip: u32, per_subnet: u32) -> Brakes {
        let limits = LimitsConfig {
            max_auth_failures_per_ip: per_ip,
            max_auth_failures_per_subnet: per_subnet,
            auth_failure_window: Duration::from_secs(60),
            ..LimitsConfig::default()
        };
        let config = BrakesConfig {
            connections_per_ip_per_minute: connections,
            messages_per_identity_per_minute: messages,
        };
        Brakes::new(&config, &limits, Arc::new(MemoryBrakes::new()))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn per_minute_budget_at_n_and_n_plus_one() {
        let brakes = brakes(3, 2, 20, 100);
        let ip = ip("192.0.2.7");
        assert!((0..3).all(|_| brakes.allow_connection(ip)));
        assert!(!brakes.allow_connection(ip));
        assert!(
            brakes.allow_connection("192.0.2.8".parse().unwrap()),
            "per IP"
        );
        assert!(brakes.allow_message("a@x.org").await.unwrap());
        assert!(brakes.allow_message("a@x.org").await.unwrap());
        assert!(!brakes.allow_message("a@x.org").await.unwrap());
        assert!(
            brakes.allow_message("b@x.org").await.unwrap(),
            "per identity"
        );
    }

    #[tokio::test]
    async fn zero_is_off() {
        let brakes = brakes(0, 0, 20, 100);
        let ip = ip("192.0.2.7");
        for _ in 0..1000 {
            assert!(brakes.allow_connection(ip));
            assert!(brakes.allow_message("a@x.org").await.unwrap());
        }
    }

    /// Two failures per client: the third AUTH and new connections are braked; a success
    /// takes its attempt back; IPv6 clients count per /64, subnets per /48.
    #[tokio::test]
    async fn failed_logins_at_n_and_n_plus_one() {
        let brakes = brakes(0, 0, 2, 3);
        let open = |gate: LoginGate| match gate {
            LoginGate::Open(a) => a,
            _ => panic!("braked"),
        };
        let braked = |gate: LoginGate| match gate {
            LoginGate::Braked(r) => r,
            _ => panic!("open"),
        };
        let good = open(brakes.begin_login(ip("192.0.2.1")).await);
        brakes.login_checked(good, false).await;
        for _ in 0..2 {
            let bad = open(brakes.begin_login(ip("192.0.2.1")).await);
            brakes.login_checked(bad, true).await;
        }
        assert_eq!(
            brakes.failed_logins(ip("192.0.2.1")).await,
            Some(Refusal::FailedLogins)
        );
        assert_eq!(
            braked(brakes.begin_login(ip("192.0.2.1")).await),
            Refusal::FailedLogins
        );
        assert_eq!(brakes.failed_logins(ip("192.0.2.2")).await, None);
        let third = open(brakes.begin_login(ip("192.0.2.2")).await);
        brakes.login_checked(third, true).await;
        assert_eq!(
            brakes.failed_logins(ip("192.0.2.3")).await,
            Some(Refusal::FailedLoginsFromSubnet)
        );
        assert_eq!(
            brakes.failed_logins(ip("192.0.3.3")).await,
            None,
            "another /24"
        );
        for n in 1..=2 {
            let a = open(brakes.begin_login(ip(&format!("2001:db8:1:1::{n}"))).await);
            brakes.login_checked(a, true).await;
        }
        assert_eq!(
            brakes.failed_logins(ip("2001:db8:1:1:ffff::9")).await,
            Some(Refusal::FailedLogins),
            "same /64"
        );
        assert_eq!(brakes.failed_logins(ip("2001:db8:1:2::1")).await, None);
    }

    /// Twenty correct logins at once from one address whose brake allows two failures: none
    /// is refused, each waits for attempts in flight to be settled. Real failures still brake
    /// the logins that waited for them.
    #[tokio::test]
    async fn a_burst_of_correct_logins_waits_instead_of_braking() {
        let brakes = Arc::new(brakes(0, 0, 2, 3));
        let logins: Vec<_> = (0..20)
            .map(|_| {
                let brakes = brakes.clone();
                tokio::spawn(async move {
                    match brakes.begin_login(ip("192.0.2.1")).await {
                        LoginGate::Open(attempt) => {
                            tokio::task::yield_now().await;
                            brakes.login_checked(attempt, false).await;
                            true
                        }
                        _ => false,
                    }
                })
            })
            .collect();
        for login in logins {
            assert!(login.await.unwrap(), "a correct login was braked");
        }

        let open = |gate: LoginGate| match gate {
            LoginGate::Open(a) => a,
            _ => panic!("braked"),
        };
        let pending = [
            open(brakes.begin_login(ip("192.0.2.1")).await),
            open(brakes.begin_login(ip("192.0.2.1")).await),
        ];
        let waiting = {
            let brakes = brakes.clone();
            tokio::spawn(async move { brakes.begin_login(ip("192.0.2.1")).await })
        };
        let connecting = {
            let brakes = brakes.clone();
            tokio::spawn(async move { brakes.failed_logins(ip("192.0.2.1")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        for attempt in pending {
            brakes.login_checked(attempt, true).await;
        }
        assert!(matches!(
            waiting.await.unwrap(),
            LoginGate::Braked(Refusal::FailedLogins)
        ));
        assert_eq!(connecting.await.unwrap(), Some(Refusal::FailedLogins));
    }
}
