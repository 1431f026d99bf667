//! The retry schedule after a temporary failure, and the point where a message expires.
//!
//! Pure arithmetic: the clock (`now`) and the random jitter come in as arguments, so the
//! schedule is tested without waiting or seeding. RFC 5321 section 4.5.4.1 asks for at least
//! 30 minutes between retries to one destination and a give-up time of at least 4-5 days; the
//! defaults in `[delivery]` (5 minutes doubling up to 4 hours, 5 days) follow common MTA
//! practice (Postfix: `minimal_backoff_time`, `maximal_backoff_time`,
//! `maximal_queue_lifetime`).
//!
//! The rule:
//! - after the n-th failed attempt the wait is `retry_initial * 2^(n-1)`, capped at
//!   `retry_max`, then multiplied by a jitter factor between 0.9 and 1.1 (so retries of many
//!   messages that failed together spread out) and capped at `retry_max` again (the config
//!   documents it as the longest wait);
//! - a message is retried until it is `max_age` old: a retry that would fall later is moved
//!   to the expiry instant, so the last attempt happens at `max_age`; an attempt that fails at
//!   or after that instant gets `None` and the still-pending recipients fail as "expired".
//!
//! - a message whose attempt left recipients pending at a *dead* destination (`dead.rs`:
//!   consecutive connect/greeting timeouts) waits twice as long, with ±50 % jitter instead of
//!   ±10 % ([`Backoff::Dead`]): Postfix spreads out the retries of a dead destination's queue
//!   in the same spirit, so a dead site is not hit by all its messages at once when it returns.
//!
//! Not here: which recipients are pending (the spool).

use std::time::{Duration, SystemTime};

use crate::config::DeliveryConfig;

/// Largest relative jitter: ±10 %.
pub const JITTER_SPAN: f64 = 0.1;

/// Largest relative jitter for a dead destination: ±50 %.
pub const DEAD_JITTER_SPAN: f64 = 0.5;

/// How the wait is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// The module's rule.
    Normal,
    /// A dead destination: twice the wait, ±[`DEAD_JITTER_SPAN`].
    Dead,
}

/// When to try again after an attempt that left some recipients temporarily failed.
///
/// - `attempts`: attempts made so far, including the one that just failed (1 after the first
///   failure; 0 is treated as 1);
/// - `first_queued`: when the message was accepted;
/// - `now`: the end of the failed attempt;
/// - `jitter`: a random number in `-1.0..=1.0` (values outside are clamped, NaN counts as 0),
///   scaled to ±[`JITTER_SPAN`].
///
/// Returns `None` when the message is `max_age` old or older: give up.
pub fn next_retry(
    attempts: u32,
    first_queued: SystemTime,
    now: SystemTime,
    cfg: &DeliveryConfig,
    jitter: f64,
) -> Option<SystemTime> {
    next_retry_with(Backoff::Normal, attempts, first_queued, now, cfg, jitter)
}

/// [`next_retry`] under `backoff`.
pub fn next_retry_with(
    backoff: Backoff,
    attempts: u32,
    first_queued: SystemTime,
    now: SystemTime,
    cfg: &DeliveryConfig,
    jitter: f64,
) -> Option<SystemTime> {
    // A clock that went backwards past the queueing time counts as age zero.
    let age = now.duration_since(first_queued).unwrap_or(Duration::ZERO);
    if age >= cfg.max_age {
        return None;
    }
    let until_expiry = cfg.max_age - age;
    let delay = match backoff {
        Backoff::Normal => wait(
            attempts,
            cfg.retry_initial,
            cfg.retry_max,
            jitter,
            JITTER_SPAN,
        ),
        // One doubling more, so a dead destination's messages come back half as often.
        Backoff::Dead => wait(
            attempts.saturating_add(1),
            cfg.retry_initial,
            cfg.retry_max,
            jitter,
            DEAD_JITTER_SPAN,
        ),
    };
    Some(now + delay.min(until_expiry))
}

/// The wait after `attempts` failures, jittered by up to ±`span`.
fn wait(attempts: u32, initial: Duration, max: Duration, jitter: f64, span: f64) -> Duration {
    let doublings = attempts.max(1) - 1;
    let base = if doublings >= 32 {
        max
    } else {
        initial
            .checked_mul(1u32 << doublings)
            .unwrap_or(max)
            .min(max)
    };
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(-1.0, 1.0)
    };
    base.mul_f64(1.0 + span * jitter).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);

    fn cfg() -> DeliveryConfig {
        DeliveryConfig {
            retry_initial: 5 * MIN,
            retry_max: 4 * HOUR,
            max_age: 5 * DAY,
            ..DeliveryConfig::default()
        }
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn wait(attempts: u32, age: Duration, jitter: f64) -> Option<Duration> {
        let now = t0() + age;
        next_retry(attempts, t0(), now, &cfg(), jitter).map(|at| at.duration_since(now).unwrap())
    }

    #[test]
    fn doubles_from_initial_up_to_max() {
        let waits: Vec<_> = (1..=9).map(|n| wait(n, MIN, 0.0).unwrap()).collect();
        assert_eq!(
            waits,
            [
                5 * MIN,
                10 * MIN,
                20 * MIN,
                40 * MIN,
                80 * MIN,
                160 * MIN,
                4 * HOUR,
                4 * HOUR,
                4 * HOUR
            ]
        );
        assert_eq!(wait(0, MIN, 0.0), Some(5 * MIN));
        assert_eq!(wait(u32::MAX, MIN, 0.0), Some(4 * HOUR));
        assert_eq!(wait(40, MIN, 0.0), Some(4 * HOUR));
    }

    #[test]
    fn jitter_is_ten_percent_either_way() {
        assert_eq!(
            wait(1, MIN, 1.0),
            Some(5 * MIN + 30 * Duration::from_secs(1))
        );
        assert_eq!(
            wait(1, MIN, -1.0),
            Some(5 * MIN - 30 * Duration::from_secs(1))
        );
        assert_eq!(wait(1, MIN, 7.0), wait(1, MIN, 1.0));
        assert_eq!(wait(1, MIN, -7.0), wait(1, MIN, -1.0));
        assert_eq!(wait(1, MIN, f64::NAN), Some(5 * MIN));
    }

    #[test]
    fn jitter_never_exceeds_retry_max() {
        assert_eq!(wait(20, MIN, 1.0), Some(4 * HOUR));
        assert_eq!(wait(20, MIN, -1.0), Some((4 * HOUR).mul_f64(0.9)));
    }

    #[test]
    fn last_retry_lands_on_expiry_then_gives_up() {
        let age = 5 * DAY - HOUR;
        assert_eq!(wait(30, age, 0.0), Some(HOUR));
        assert_eq!(wait(30, 5 * DAY, 0.0), None);
        assert_eq!(wait(1, 6 * DAY, 0.0), None);
        assert_eq!(
            wait(1, 5 * DAY - Duration::from_secs(1), 0.0),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn dead_destinations_wait_twice_as_long_spread_fifty_percent() {
        let now = t0() + MIN;
        let dead = |attempts, jitter| {
            next_retry_with(Backoff::Dead, attempts, t0(), now, &cfg(), jitter)
                .map(|at| at.duration_since(now).unwrap())
        };
        assert_eq!(dead(1, 0.0), Some(10 * MIN));
        assert_eq!(dead(1, -1.0), Some(5 * MIN));
        assert_eq!(dead(1, 1.0), Some(15 * MIN));
        assert_eq!(dead(3, 0.0), Some(40 * MIN));
        // Still never past retry_max, nor past the expiry.
        assert_eq!(dead(20, 1.0), Some(4 * HOUR));
        assert_eq!(dead(20, -1.0), Some(2 * HOUR));
        let late = t0() + 5 * DAY - MIN;
        assert_eq!(
            next_retry_with(Backoff::Dead, 1, t0(), late, &cfg(), 0.0),
            Some(late + MIN)
        );
    }

    #[test]
    fn clock_before_queueing_counts_as_fresh() {
        let now = t0() - HOUR;
        assert_eq!(next_retry(1, t0(), now, &cfg(), 0.0), Some(now + 5 * MIN));
    }
}
