//! Admission control at the door: the session caps (in total, per client IP and per IPv6
//! /48), the client and subnet keys every per-client limit counts under, and the registry of
//! authenticated sessions that lets a revocation cut them.
//!
//! All in-process state: in a fleet, each replica enforces these for the connections it holds
//! (a client reconnecting elsewhere meets the same limits there). The failed-login brake,
//! which a fleet counts together, is in `brakes.rs`.

use crate::store::CredentialId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Why a connection is turned away before the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_sessions` reached.
    TooManySessions,
    /// `limits.max_sessions_per_ip` reached for this IP.
    TooManyFromIp,
    /// `limits.max_sessions_per_subnet` reached for this IPv6 /48.
    TooManyFromSubnet,
    /// Too many failed logins from this IP recently.
    FailedLogins,
    /// Too many failed logins from this IPv4 /24 or IPv6 /48 recently.
    FailedLoginsFromSubnet,
    /// The per-minute connection brake for this IP is engaged.
    ConnectionRate,
}

/// The caps [`Admission`] enforces (from `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionCaps {
    /// Sessions in all.
    pub max_sessions: usize,
    /// Sessions per client ([`client_key`]).
    pub max_per_ip: usize,
    /// Sessions per IPv6 /48 ([`subnet_key`]); IPv4 clients are not capped per subnet.
    pub max_per_subnet: usize,
}

/// Admission state shared by all listeners.
pub struct Admission {
    sessions: Arc<Semaphore>,
    caps: AdmissionCaps,
    /// Live sessions per client key, and per subnet key (IPv6 only).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    per_subnet: Mutex<HashMap<IpAddr, usize>>,
}

/// Held for the life of a session; releases its places on drop.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    subnet: Option<IpAddr>,
    admission: Arc<Admission>,
}

/// Takes one session of `key` off `counts`.
fn release(counts: &Mutex<HashMap<IpAddr, usize>>, key: IpAddr) {
    let mut counts = counts.lock().expect("admission lock");
    if let Some(n) = counts.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        release(&self.admission.per_ip, self.ip);
        if let Some(subnet) = self.subnet {
            release(&self.admission.per_subnet, subnet);
        }
    }
}

impl Admission {
    /// Admission with the caps of `[limits]`: sessions in all, per client and per IPv6 /48.
    pub fn from_limits(limits: &crate::config::LimitsConfig) -> Arc<Self> {
        Self::new(AdmissionCaps {
            max_sessions: limits.max_sessions,
            max_per_ip: limits.max_sessions_per_ip,
            max_per_subnet: limits.max_sessions_per_subnet,
        })
    }

    /// Admission with these caps.
    pub fn new(caps: AdmissionCaps) -> Arc<Self> {
        Arc::new(Self {
            sessions: Arc::new(Semaphore::new(caps.max_sessions)),
            caps,
            per_ip: Mutex::new(HashMap::new()),
            per_subnet: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a connection from `ip` or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let caps = &self.caps;
        let subnet = subnet_key(ip);
        let key = client_key(ip);
        let permit = self
            .sessions
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::TooManySessions)?;
        // Lock order: per IP, then per subnet.
        let mut per_ip = self.per_ip.lock().expect("admission lock");
        if per_ip.get(&key).copied().unwrap_or(0) >= caps.max_per_ip {
            return Err(Refusal::TooManyFromIp);
        }
        // A /48 is one site's allocation: a client rotating through its 65,536 /64s must not
        // get 65,536 times the per-client cap. IPv4 clients share NATs and hosting networks,
        // so their sessions are capped per address only.
        let subnet = match subnet {
            IpAddr::V6(_) => {
                let mut per_subnet = self.per_subnet.lock().expect("admission lock");
                if per_subnet.get(&subnet).copied().unwrap_or(0) >= caps.max_per_subnet {
                    return Err(Refusal::TooManyFromSubnet);
                }
                *per_subnet.entry(subnet).or_default() += 1;
                Some(subnet)
            }
            IpAddr::V4(_) => None,
        };
        *per_ip.entry(key).or_default() += 1;
        Ok(Admitted {
            _permit: permit,
            ip: key,
            subnet,
            admission: self.clone(),
        })
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

/// The wider key of the per-subnet caps: the /48 of an IPv6 address (a site's allocation,
/// RFC 6177's customary size, of 65,536 /64s), the /24 of an IPv4 address (IPv4-mapped IPv6
/// addresses count as IPv4).
pub fn subnet_key(ip: IpAddr) -> IpAddr {
    match client_key(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4([a, b, c, 0].into())
        }
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[3..].fill(0);
            IpAddr::V6(segments.into())
        }
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

    /// Caps with the per-subnet one out of the way.
    fn caps(max_sessions: usize, max_per_ip: usize) -> AdmissionCaps {
        AdmissionCaps {
            max_sessions,
            max_per_ip,
            max_per_subnet: 1_000,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn subnet_keys() {
        assert_eq!(subnet_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1::"));
        assert_eq!(subnet_key(ip("2001:db8:1:ffff::1")), ip("2001:db8:1::"));
        assert_ne!(subnet_key(ip("2001:db8:2::1")), ip("2001:db8:1::"));
        assert_eq!(subnet_key(ip("192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(subnet_key(ip("::ffff:192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn ipv6_sessions_per_48_at_n_and_n_plus_one() {
        let a = Admission::new(AdmissionCaps {
            max_per_subnet: 3,
            ..caps(100, 2)
        });
        // Three /64s of one /48: one session each is fine up to the /48's cap of 3.
        let first = a.admit(ip("2001:db8:1:1::1")).unwrap();
        let _second = a.admit(ip("2001:db8:1:2::1")).unwrap();
        let _third = a.admit(ip("2001:db8:1:3::1")).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8:1:4::1")).err(),
            Some(Refusal::TooManyFromSubnet)
        );
        assert!(a.admit(ip("2001:db8:2:4::1")).is_ok(), "another /48");
        drop(first);
        let _fourth = a.admit(ip("2001:db8:1:4::1")).unwrap();
        // A refusal by the per-IP cap takes no place of the /48.
        let b = Admission::new(AdmissionCaps {
            max_per_subnet: 2,
            ..caps(100, 1)
        });
        let _one = b.admit(ip("2001:db8:1:1::1")).unwrap();
        assert_eq!(
            b.admit(ip("2001:db8:1:1::2")).err(),
            Some(Refusal::TooManyFromIp)
        );
        let _two = b.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            b.admit(ip("2001:db8:1:3::1")).err(),
            Some(Refusal::TooManyFromSubnet)
        );
        // IPv4 clients are not capped per /24.
        let c = Admission::new(AdmissionCaps {
            max_per_subnet: 1,
            ..caps(100, 1)
        });
        let _v4 = [c.admit(ip("192.0.2.1")), c.admit(ip("192.0.2.2"))];
        assert!(_v4.iter().all(Result::is_ok));
    }

    #[test]
    fn per_ip_cap_at_n_and_n_plus_one() {
        let a = Admission::new(caps(10, 2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = a.admit(ip).unwrap();
        let _second = a.admit(ip).unwrap();
        assert_eq!(a.admit(ip).err(), Some(Refusal::TooManyFromIp));
        drop(first);
        assert!(a.admit(ip).is_ok());
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let a = Admission::new(caps(10, 1));
        let _first = a.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(
            a.admit("2001:db8:1:2:ffff::9".parse().unwrap()).err(),
            Some(Refusal::TooManyFromIp)
        );
        assert!(a.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
        assert_eq!(
            client_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn total_cap() {
        let a = Admission::new(caps(1, 5));
        let _one = a.admit("192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(
            a.admit("192.0.2.2".parse().unwrap()).err(),
            Some(Refusal::TooManySessions)
        );
    }
}
