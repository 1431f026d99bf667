//! The in-process brake store: the counts of one relay, in memory, used with the embedded
//! quota backend. The same algorithms as the Redis store (see [`super`]), on a mutex.
//!
//! Memory stays bounded: a login key holds at most its limit of attempts, a message key one
//! number, and [`BrakeStore::prune`] (called by the listener's periodic tick) drops keys that
//! brake nothing any more.

use super::{
    BrakeError, BrakeStore, GCRA_SLACK_MS, LoginBrake, LoginLimits, LoginSource, MINUTE_MS,
    MessageRate,
};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// One recorded login attempt.
struct Attempt {
    id: String,
    at_ms: u64,
    /// When it leaves the window (for pruning without knowing the window).
    leaves_ms: u64,
}

#[derive(Default)]
struct State {
    /// GCRA: the theoretical arrival time (Unix ms) of each identity's next message.
    message_tat: HashMap<String, f64>,
    /// Attempts per client key and per subnet key (separate maps: the texts may coincide).
    client_attempts: HashMap<String, Vec<Attempt>>,
    subnet_attempts: HashMap<String, Vec<Attempt>>,
}

/// Brakes counted in this process.
#[derive(Default)]
pub struct MemoryBrakes {
    state: Mutex<State>,
}

impl MemoryBrakes {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps (every update is one insert
        // or retain): keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `key`'s attempts still in the window at `now_ms` (older ones dropped on the way).
fn live(
    map: &mut HashMap<String, Vec<Attempt>>,
    key: &str,
    limits: LoginLimits,
    now_ms: u64,
) -> usize {
    let Some(list) = map.get_mut(key) else {
        return 0;
    };
    list.retain(|a| now_ms.saturating_sub(a.at_ms) <= limits.window_ms);
    let n = list.len();
    if n == 0 {
        map.remove(key);
    }
    n
}

fn check(state: &mut State, source: &LoginSource, limits: LoginLimits, now_ms: u64) -> LoginBrake {
    if live(&mut state.client_attempts, &source.client, limits, now_ms)
        >= limits.per_client as usize
    {
        return LoginBrake::Client;
    }
    if live(&mut state.subnet_attempts, &source.subnet, limits, now_ms)
        >= limits.per_subnet as usize
    {
        return LoginBrake::Subnet;
    }
    LoginBrake::Open
}

#[async_trait::async_trait]
impl BrakeStore for MemoryBrakes {
    async fn take_message(
        &self,
        identity: &str,
        rate: MessageRate,
        now_ms: u64,
    ) -> Result<bool, BrakeError> {
        let now = now_ms as f64;
        let mut state = self.lock();
        let tat = state.message_tat.get(identity).copied().unwrap_or(now);
        let next = tat.max(now) + rate.interval_ms();
        if next - now > MINUTE_MS + GCRA_SLACK_MS {
            return Ok(false);
        }
        state.message_tat.insert(identity.to_string(), next);
        Ok(true)
    }

    async fn login_state(
        &self,
        source: &LoginSource,
        limits: LoginLimits,
        now_ms: u64,
    ) -> Result<LoginBrake, BrakeError> {
        Ok(check(&mut self.lock(), source, limits, now_ms))
    }

    async fn begin_login(
        &self,
        source: &LoginSource,
        attempt: &str,
        limits: LoginLimits,
        now_ms: u64,
    ) -> Result<LoginBrake, BrakeError> {
        let mut state = self.lock();
        let answer = check(&mut state, source, limits, now_ms);
        if answer == LoginBrake::Open {
            let record = || Attempt {
                id: attempt.to_string(),
                at_ms: now_ms,
                leaves_ms: now_ms.saturating_add(limits.window_ms),
            };
            let State {
                client_attempts,
                subnet_attempts,
                ..
            } = &mut *state;
            client_attempts
                .entry(source.client.clone())
                .or_default()
                .push(record());
            subnet_attempts
                .entry(source.subnet.clone())
                .or_default()
                .push(record());
        }
        Ok(answer)
    }

    async fn forget_login(&self, source: &LoginSource, attempt: &str) -> Result<(), BrakeError> {
        let mut state = self.lock();
        let State {
            client_attempts,
            subnet_attempts,
            ..
        } = &mut *state;
        for (map, key) in [
            (client_attempts, &source.client),
            (subnet_attempts, &source.subnet),
        ] {
            if let Some(list) = map.get_mut(key) {
                list.retain(|a| a.id != attempt);
                if list.is_empty() {
                    map.remove(key);
                }
            }
        }
        Ok(())
    }

    fn prune(&self, now_ms: u64) {
        let mut state = self.lock();
        let now = now_ms as f64;
        let State {
            message_tat,
            client_attempts,
            subnet_attempts,
        } = &mut *state;
        message_tat.retain(|_, tat| *tat > now);
        for map in [client_attempts, subnet_attempts] {
            map.retain(|_, list| {
                list.retain(|a| a.leaves_ms >= now_ms);
                !list.is_empty()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let store = MemoryBrakes::new();
        super::super::conformance::run_all(&store, &store, "m-").await;
    }

    #[tokio::test]
    async fn prune_forgets_what_brakes_nothing() {
        let store = MemoryBrakes::new();
        let rate = MessageRate {
            per_minute: std::num::NonZeroU32::new(2).unwrap(),
        };
        let limits = LoginLimits {
            per_client: 5,
            per_subnet: 5,
            window_ms: 1_000,
        };
        let source = LoginSource {
            client: "192.0.2.1".into(),
            subnet: "192.0.2.0".into(),
        };
        assert!(store.take_message("a", rate, 0).await.unwrap());
        store.begin_login(&source, "x", limits, 0).await.unwrap();
        store.prune(1_000);
        {
            let state = store.lock();
            assert_eq!(state.message_tat.len(), 1);
            assert_eq!(state.client_attempts.len(), 1);
        }
        store.prune(30_001);
        let state = store.lock();
        assert!(state.message_tat.is_empty());
        assert!(state.client_attempts.is_empty() && state.subnet_attempts.is_empty());
    }
}
