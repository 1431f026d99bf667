//! Short-term abuse brakes: new connections per client IP per minute, and messages per
//! identity (address or hosting account) per minute.
//!
//! These are per process (GCRA limiters from `governor`, in memory): in a fleet each replica
//! applies them to the traffic it sees, so the fleet-wide rate can reach replicas × limit.
//! That is what they are for: stopping a burst (a compromised password, a looping script) in
//! seconds, while the exact, fleet-wide accounting is the daily quota in Redis. A limit of 0
//! turns a brake off (the development default).

use crate::config::BrakesConfig;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;

/// Both brakes.
pub struct Brakes {
    connections: Option<DefaultKeyedRateLimiter<IpAddr>>,
    messages: Option<DefaultKeyedRateLimiter<String>>,
}

impl Brakes {
    /// Brakes as configured (each off when its limit is 0).
    pub fn new(config: &BrakesConfig) -> Self {
        Self {
            connections: per_minute(config.connections_per_ip_per_minute),
            messages: per_minute(config.messages_per_identity_per_minute),
        }
    }

    /// Whether a new connection from `ip` may proceed.
    pub fn allow_connection(&self, ip: IpAddr) -> bool {
        self.connections
            .as_ref()
            .is_none_or(|l| l.check_key(&super::guard::client_key(ip)).is_ok())
    }

    /// Whether `identity` may start another message now.
    pub fn allow_message(&self, identity: &str) -> bool {
        self.messages
            .as_ref()
            .is_none_or(|l| l.check_key(&identity.to_string()).is_ok())
    }

    /// Forgets keys whose budget is full again (keeps memory bounded).
    pub fn prune(&self) {
        if let Some(l) = &self.connections {
            l.retain_recent();
        }
        if let Some(l) = &self.messages {
            l.retain_recent();
        }
    }
}

fn per_minute<K: std::hash::Hash + Eq + Clone>(n: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(n).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_minute_budget_at_n_and_n_plus_one() {
        let brakes = Brakes::new(&BrakesConfig {
            connections_per_ip_per_minute: 3,
            messages_per_identity_per_minute: 2,
        });
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!((0..3).all(|_| brakes.allow_connection(ip)));
        assert!(!brakes.allow_connection(ip));
        assert!(
            brakes.allow_connection("192.0.2.8".parse().unwrap()),
            "per IP"
        );
        assert!(brakes.allow_message("a@x.org") && brakes.allow_message("a@x.org"));
        assert!(!brakes.allow_message("a@x.org"));
        assert!(brakes.allow_message("b@x.org"), "per identity");
    }

    #[test]
    fn zero_is_off() {
        let brakes = Brakes::new(&BrakesConfig::default());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!((0..1000).all(|_| brakes.allow_connection(ip) && brakes.allow_message("a@x.org")));
    }
}
