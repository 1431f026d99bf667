//! Unix time in milliseconds, the one representation the spool, the quota window, the delivery
//! log and the admin commands store and compare. A leaf: it uses nothing of the crate.
//!
//! Times before 1970 count as 0 and times past `u64::MAX` ms saturate: neither occurs on a
//! working clock, and neither may panic in a relay.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` as milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, as milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_saturates() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_638_926_123);
        assert_eq!(unix_ms(t), 1_795_638_926_123);
        assert_eq!(from_unix_ms(unix_ms(t)), t);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
