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

use super::guard::{Refusal, client_key, subnet_key};
use crate::config::{BrakesConfig, LimitsConfig};
use crate::store::brakes::{
    BrakeError, BrakeStore, LoginBrake, LoginLimits, LoginSource, MessageRate,
};
use crate::unix_time::unix_ms;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::SystemTime;

/// All three brakes.
pub struct Brakes {
    connections: Option<DefaultKeyedRateLimiter<IpAddr>>,
    messages: Option<MessageRate>,
    logins: LoginLimits,
    store: Arc<dyn BrakeStore>,
}

/// A login attempt recorded by [`Brakes::begin_login`]: a failure unless taken back.
pub struct LoginAttempt {
    source: LoginSource,
    id: String,
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
        }
    }

    /// Whether a new connection from `ip` may proceed (per process).
    pub fn allow_connection(&self, ip: IpAddr) -> bool {
        self.connections
            .as_ref()
            .is_none_or(|l| l.check_key(&client_key(ip)).is_ok())
    }

    /// Why a new connection from `ip` is refused by the failed-login brake, if it is. A store
    /// that does not answer lets it in: its AUTH will fail closed.
    pub async fn failed_logins(&self, ip: IpAddr) -> Option<Refusal> {
        match self
            .store
            .login_state(&source(ip), self.logins, now())
            .await
        {
            Ok(state) => refusal(state),
            Err(e) => {
                tracing::warn!(client_ip = %ip, error = %e, "failed-login brake unavailable at connect; AUTH will wait for it");
                None
            }
        }
    }

    /// Checks the failed-login brake before an AUTH checks its credentials, recording the
    /// attempt (see [`crate::store::brakes`]).
    pub async fn begin_login(&self, ip: IpAddr) -> LoginGate {
        let source = source(ip);
        let id = format!("{:032x}", rand::random::<u128>());
        match self
            .store
            .begin_login(&source, &id, self.logins, now())
            .await
        {
            Ok(LoginBrake::Open) => LoginGate::Open(LoginAttempt { source, id }),
            Ok(state) => LoginGate::Braked(refusal(state).unwrap_or(Refusal::FailedLogins)),
            Err(e) => LoginGate::Unavailable(e),
        }
    }

    /// The credentials were checked: a success (or a check that never happened) takes the
    /// attempt back; a failure leaves it counted.
    pub async fn login_checked(&self, attempt: LoginAttempt, failed: bool) {
        if failed {
            return;
        }
        if let Err(e) = self.store.forget_login(&attempt.source, &attempt.id).await {
            // Counted as a failure until it leaves the window: the safe side.
            tracing::warn!(error = %e, "failed-login brake: could not take back an attempt");
        }
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
}
