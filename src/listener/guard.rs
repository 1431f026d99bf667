//! Admission control at the door: the session caps (in total and per client IP), the
//! per-IP brake on failed logins, and the registry of authenticated sessions that lets a
//! revocation cut them.
//!
//! All in-process state: in a fleet, each replica enforces these for the connections it holds
//! (a client reconnecting elsewhere meets the same limits there).

use crate::store::CredentialId;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Why a connection is turned away before the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_sessions` reached.
    TooManySessions,
    /// `limits.max_sessions_per_ip` reached for this IP.
    TooManyFromIp,
    /// Too many failed logins from this IP recently.
    FailedLogins,
    /// The per-minute connection brake for this IP is engaged.
    ConnectionRate,
}

/// Admission state shared by all listeners.
pub struct Admission {
    sessions: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    max_failures: u32,
    failure_window: Duration,
}

/// Held for the life of a session; releases its places on drop.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    admission: Arc<Admission>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_ip = self.admission.per_ip.lock().expect("admission lock");
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    /// Admission with the caps of `[limits]`: sessions in all, per client, failed logins per
    /// client.
    pub fn from_limits(limits: &crate::config::LimitsConfig) -> Arc<Self> {
        Self::new(
            limits.max_sessions,
            limits.max_sessions_per_ip,
            limits.max_auth_failures_per_ip,
            limits.auth_failure_window,
        )
    }

    /// Admission with these caps.
    pub fn new(
        max_sessions: usize,
        max_per_ip: usize,
        max_failures: u32,
        failure_window: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            sessions: Arc::new(Semaphore::new(max_sessions)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
            failures: Mutex::new(HashMap::new()),
            max_failures,
            failure_window,
        })
    }

    /// Admits a connection from `ip` or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admitted, Refusal> {
        let ip = client_key(ip);
        if self.recent_failures(ip, now) >= self.max_failures as usize {
            return Err(Refusal::FailedLogins);
        }
        let permit = self
            .sessions
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::TooManySessions)?;
        let mut per_ip = self.per_ip.lock().expect("admission lock");
        let n = per_ip.entry(ip).or_default();
        if *n >= self.max_per_ip {
            return Err(Refusal::TooManyFromIp);
        }
        *n += 1;
        Ok(Admitted {
            _permit: permit,
            ip,
            admission: self.clone(),
        })
    }

    /// Records a failed login from `ip`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        let ip = client_key(ip);
        let mut failures = self.failures.lock().expect("admission lock");
        let list = failures.entry(ip).or_default();
        list.push_back(now);
        while list.len() > self.max_failures as usize + 1 {
            list.pop_front();
        }
    }

    fn recent_failures(&self, ip: IpAddr, now: Instant) -> usize {
        let mut failures = self.failures.lock().expect("admission lock");
        let Some(list) = failures.get_mut(&ip) else {
            return 0;
        };
        while list
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.failure_window)
        {
            list.pop_front();
        }
        if list.is_empty() {
            failures.remove(&ip);
            return 0;
        }
        list.len()
    }

    /// Forgets old failure records (called periodically so the map cannot grow unbounded).
    pub fn prune(&self, now: Instant) {
        let mut failures = self.failures.lock().expect("admission lock");
        failures.retain(|_, list| {
            list.back()
                .is_some_and(|t| now.duration_since(*t) <= self.failure_window)
        });
    }
}

/// The key per-client limits count under: an IPv4 address, or the /64 of an IPv6 address
/// (one subscriber's allocation: per-/128 limits would be evaded by rotating addresses).
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// Live authenticated sessions by credential, so a revocation can cut them.
#[derive(Default)]
pub struct SessionRegistry {
    next: AtomicU64,
    live: Mutex<HashMap<CredentialId, HashMap<u64, CancellationToken>>>,
}

/// Removes a session from the registry when dropped.
pub struct Registration {
    registry: Arc<SessionRegistry>,
    credential: CredentialId,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.registry.live.lock().expect("registry lock");
        if let Some(sessions) = live.get_mut(&self.credential) {
            sessions.remove(&self.key);
            if sessions.is_empty() {
                live.remove(&self.credential);
            }
        }
    }
}

impl SessionRegistry {
    /// Registers a session authenticated with `credential`; `cut` fires on revocation.
    pub fn register(
        self: &Arc<Self>,
        credential: CredentialId,
        cut: CancellationToken,
    ) -> Registration {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .expect("registry lock")
            .entry(credential.clone())
            .or_default()
            .insert(key, cut);
        Registration {
            registry: self.clone(),
            credential,
            key,
        }
    }

    /// Credentials with live sessions.
    pub fn credentials(&self) -> Vec<CredentialId> {
        self.live
            .lock()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Cuts every session of credentials not in `still_valid`; returns how many were cut.
    pub fn cut_all_except(
        &self,
        checked: &[CredentialId],
        still_valid: &std::collections::HashSet<CredentialId>,
    ) -> usize {
        let live = self.live.lock().expect("registry lock");
        let mut cut = 0;
        for credential in checked {
            if still_valid.contains(credential) {
                continue;
            }
            if let Some(sessions) = live.get(credential) {
                for token in sessions.values() {
                    if !token.is_cancelled() {
                        token.cancel();
                        cut += 1;
                    }
                }
            }
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_cap_at_n_and_n_plus_one() {
        let a = Admission::new(10, 2, 5, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        let first = a.admit(ip, now).unwrap();
        let _second = a.admit(ip, now).unwrap();
        assert_eq!(a.admit(ip, now).err(), Some(Refusal::TooManyFromIp));
        drop(first);
        assert!(a.admit(ip, now).is_ok());
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let a = Admission::new(10, 1, 5, Duration::from_secs(60));
        let now = Instant::now();
        let _first = a.admit("2001:db8:1:2::1".parse().unwrap(), now).unwrap();
        assert_eq!(
            a.admit("2001:db8:1:2:ffff::9".parse().unwrap(), now).err(),
            Some(Refusal::TooManyFromIp)
        );
        assert!(a.admit("2001:db8:1:3::1".parse().unwrap(), now).is_ok());
        assert_eq!(
            client_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn total_cap() {
        let a = Admission::new(1, 5, 5, Duration::from_secs(60));
        let now = Instant::now();
        let _one = a.admit("192.0.2.1".parse().unwrap(), now).unwrap();
        assert_eq!(
            a.admit("192.0.2.2".parse().unwrap(), now).err(),
            Some(Refusal::TooManySessions)
        );
    }

    #[test]
    fn failed_logins_brake_then_expire() {
        let a = Admission::new(10, 10, 2, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        a.record_failure(ip, now);
        assert!(a.admit(ip, now).is_ok());
        a.record_failure(ip, now);
        assert_eq!(a.admit(ip, now).err(), Some(Refusal::FailedLogins));
        assert!(a.admit(ip, now + Duration::from_secs(61)).is_ok());
    }
}
