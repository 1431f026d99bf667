//! Dead destinations: a destination that keeps timing out is given less of the relay.
//!
//! Like Postfix's qmgr, which takes a destination for dead after a cohort of failed
//! connections and then stops opening more, a destination whose transactions keep ending in
//! a connect timeout or a greeting (or EHLO) timeout, [`DEAD_AFTER`] in a row, is *dead*:
//! - its concurrency drops to 1: a group for it takes, besides its slot, the destination's
//!   single dead-destination place, so at most one connection at a time waits out a timeout
//!   (a tarpit costs one connection, not `max_per_destination` of them);
//! - its messages' retries are spread out (`retry.rs`, [`super::retry::Backoff::Dead`]): twice
//!   the wait, ±50 %, so they do not come back all at once.
//!
//! Any transaction answer from the destination brings it back to life (and forgets it);
//! other failures (refused connections, 4yz) leave the count as it is. The gauge
//! `postern_delivery_dead_destinations` is the number of dead destinations now. At most
//! [`MAX_TRACKED`] destinations are tracked; past that a new one is simply not throttled.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// Consecutive unresponsive attempts that make a destination dead.
pub const DEAD_AFTER: u32 = 2;

/// Destinations with a count kept, at most (bounded memory under many bad domains).
pub const MAX_TRACKED: usize = 100_000;

/// How a group's transaction ended, for the destination's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// A server gave a transaction answer.
    Answered,
    /// No answer: the connect or the greeting/EHLO timed out.
    Unresponsive,
    /// Anything else (refused, DNS, 4yz before MAIL): says nothing either way.
    Unknown,
}

/// Consecutive unresponsive attempts per destination.
pub struct DeadDestinations<K> {
    counts: Mutex<HashMap<K, u32>>,
}

impl<K: Eq + Hash + Clone> Default for DeadDestinations<K> {
    fn default() -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> DeadDestinations<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, u32>> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `key` is dead now.
    pub fn is_dead(&self, key: &K) -> bool {
        self.lock().get(key).is_some_and(|&n| n >= DEAD_AFTER)
    }

    /// Records how a transaction to `key` ended; returns the number of dead destinations
    /// when it changed (for the gauge).
    pub fn record(&self, key: &K, health: Health) -> Option<usize> {
        let mut counts = self.lock();
        let was_dead = counts.get(key).is_some_and(|&n| n >= DEAD_AFTER);
        match health {
            Health::Unknown => return None,
            Health::Answered => {
                counts.remove(key);
            }
            Health::Unresponsive => {
                if let Some(n) = counts.get_mut(key) {
                    *n = n.saturating_add(1);
                } else if counts.len() < MAX_TRACKED {
                    counts.insert(key.clone(), 1);
                }
            }
        }
        let is_dead = counts.get(key).is_some_and(|&n| n >= DEAD_AFTER);
        (was_dead != is_dead).then(|| counts.values().filter(|&&n| n >= DEAD_AFTER).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_after_two_timeouts_alive_after_an_answer() {
        let dead = DeadDestinations::default();
        assert!(!dead.is_dead(&"a"));
        assert_eq!(dead.record(&"a", Health::Unresponsive), None);
        assert!(!dead.is_dead(&"a"), "one timeout is not dead yet");
        assert_eq!(dead.record(&"a", Health::Unresponsive), Some(1));
        assert!(dead.is_dead(&"a"));
        // More timeouts and unknown outcomes change nothing.
        assert_eq!(dead.record(&"a", Health::Unresponsive), None);
        assert_eq!(dead.record(&"a", Health::Unknown), None);
        assert!(dead.is_dead(&"a"));
        assert_eq!(dead.record(&"b", Health::Unresponsive), None);
        assert_eq!(dead.record(&"b", Health::Unresponsive), Some(2));
        assert_eq!(dead.record(&"a", Health::Answered), Some(1));
        assert!(!dead.is_dead(&"a") && dead.is_dead(&"b"));
        // An answer between two timeouts starts the count again.
        assert_eq!(dead.record(&"c", Health::Unresponsive), None);
        assert_eq!(dead.record(&"c", Health::Answered), None);
        assert_eq!(dead.record(&"c", Health::Unresponsive), None);
        assert!(!dead.is_dead(&"c"));
    }
}
