//! Sending-quota arithmetic: the rolling window, when capacity returns, and the time in the
//! 450 reply. Pure functions of their arguments: no I/O and no clock (`now_ms`, Unix time in
//! milliseconds, is always an argument).
//!
//! # The model (the FAQ's rolling 24-hour recipient window)
//! Time is cut into buckets of [`QuotaWindow::bucket_ms`] (default one minute); bucket `b`
//! covers `[b * bucket_ms, (b + 1) * bucket_ms)`. A recipient counted while bucket `b` is
//! current stays in the window for [`QuotaWindow::buckets`] buckets and frees up at the start
//! of bucket `b + buckets`, i.e. at [`QuotaWindow::frees_at`]`(b)`: with the defaults, a
//! recipient counted in minute `m` frees up at the start of minute `m + 1440`, as the issue
//! specifies. A recipient counted at 10:15:42 thus counts until 10:15:00 the next day: the
//! window is between `window_ms - bucket_ms` and `window_ms` long, depending on where in its
//! bucket a recipient was counted.
//!
//! Besides counted recipients a key has *held* ones (accepted RCPTs whose message is not yet
//! accepted). A new hold succeeds only while `used + held + 1 <= limit`.
//!
//! # What this module does not do
//! Storing counts and holds, atomicity and hold expiry are the quota stores' job
//! (`crate::store::quota`); choosing the limit (plans, overrides) is the caller's; reply texts
//! live in `session::reply`.

use std::fmt;

/// Milliseconds in the default window: 24 hours.
pub const DEFAULT_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;
/// Milliseconds in the default bucket: one minute (the issue allows buckets up to a minute).
pub const DEFAULT_BUCKET_MS: u64 = 60 * 1000;
/// Most buckets a window may have: bounds the work of a retry-time computation.
pub const MAX_BUCKETS: u64 = 100_000;

/// The rolling window: its length and the size of its time buckets. The window is a whole
/// number of buckets; both are at least one millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuotaWindow {
    window_ms: u64,
    bucket_ms: u64,
}

/// A window that [`QuotaWindow::new`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The window or the bucket is zero.
    #[error(
        "window and bucket must be at least 1 ms (window {window_ms} ms, bucket {bucket_ms} ms)"
    )]
    Zero {
        /// The window given.
        window_ms: u64,
        /// The bucket given.
        bucket_ms: u64,
    },
    /// The window is not a whole number of buckets.
    #[error("the window ({window_ms} ms) must be a multiple of the bucket ({bucket_ms} ms)")]
    NotMultiple {
        /// The window given.
        window_ms: u64,
        /// The bucket given.
        bucket_ms: u64,
    },
    /// More than [`MAX_BUCKETS`] buckets.
    #[error("the window has {buckets} buckets, at most {MAX_BUCKETS} are allowed")]
    TooManyBuckets {
        /// How many buckets the window would have.
        buckets: u64,
    },
}

impl QuotaWindow {
    /// 24 hours in one-minute buckets.
    pub const DAY: QuotaWindow = QuotaWindow {
        window_ms: DEFAULT_WINDOW_MS,
        bucket_ms: DEFAULT_BUCKET_MS,
    };

    /// A window of `window_ms` in buckets of `bucket_ms`.
    ///
    /// # Errors
    /// [`WindowError`] if either is zero, the window is not a multiple of the bucket, or the
    /// window has more than [`MAX_BUCKETS`] buckets.
    pub fn new(window_ms: u64, bucket_ms: u64) -> Result<Self, WindowError> {
        if window_ms == 0 || bucket_ms == 0 {
            return Err(WindowError::Zero {
                window_ms,
                bucket_ms,
            });
        }
        if !window_ms.is_multiple_of(bucket_ms) {
            return Err(WindowError::NotMultiple {
                window_ms,
                bucket_ms,
            });
        }
        let buckets = window_ms / bucket_ms;
        if buckets > MAX_BUCKETS {
            return Err(WindowError::TooManyBuckets { buckets });
        }
        Ok(Self {
            window_ms,
            bucket_ms,
        })
    }

    /// The window's length in milliseconds.
    pub fn window_ms(self) -> u64 {
        self.window_ms
    }

    /// A bucket's length in milliseconds.
    pub fn bucket_ms(self) -> u64 {
        self.bucket_ms
    }

    /// Buckets per window (`window_ms / bucket_ms`, at least 1).
    pub fn buckets(self) -> u64 {
        self.window_ms / self.bucket_ms
    }

    /// The bucket that is current at `now_ms`.
    pub fn bucket_of(self, now_ms: u64) -> u64 {
        now_ms / self.bucket_ms
    }

    /// The oldest bucket whose recipients still count at `now_ms`.
    pub fn oldest_live(self, now_ms: u64) -> u64 {
        (self.bucket_of(now_ms) + 1).saturating_sub(self.buckets())
    }

    /// When the recipients counted in `bucket` free up: the start of bucket
    /// `bucket + buckets()`.
    pub fn frees_at(self, bucket: u64) -> u64 {
        bucket
            .saturating_add(self.buckets())
            .saturating_mul(self.bucket_ms)
    }
}

impl Default for QuotaWindow {
    fn default() -> Self {
        Self::DAY
    }
}

impl fmt::Display for QuotaWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ms in buckets of {} ms",
            self.window_ms, self.bucket_ms
        )
    }
}

/// Whether one more recipient may be held: `used + held + 1 <= limit`.
pub fn has_room(used: u64, held: u64, limit: u32) -> bool {
    used.saturating_add(held) < u64::from(limit)
}

/// When one recipient of capacity returns, for a key that is full at `now_ms`.
///
/// - `buckets`: the live buckets, `(bucket, count)`, in ascending bucket order.
/// - `holds`: the live holds, `(expires_ms, count)`, in any order.
///
/// Held recipients are assumed to be counted now: an open transaction's holds become counts
/// at its end of data, so capacity they block returns one window after the current bucket,
/// not when the holds would expire (which only happens if their relay dies). With
/// `need = used + held - limit + 1` recipients to free, the answer is [`QuotaWindow::frees_at`]
/// of the oldest bucket (the current one standing for the holds) whose expiry, together with
/// the older ones', frees `need`. If nothing can free enough (limit 0): `now_ms + window`.
/// A key that is not full gets `now_ms`.
pub fn retry_at(
    window: QuotaWindow,
    now_ms: u64,
    limit: u32,
    buckets: &[(u64, u64)],
    holds: &[(u64, u64)],
) -> u64 {
    let used: u64 = buckets.iter().map(|&(_, c)| c).sum();
    let held: u64 = holds.iter().map(|&(_, c)| c).sum();
    if has_room(used, held, limit) {
        return now_ms;
    }
    let need = used + held + 1 - u64::from(limit);
    let mut freed = 0;
    for &(bucket, count) in buckets {
        freed += count;
        if freed >= need {
            return window.frees_at(bucket);
        }
    }
    let newest = buckets.last().map_or(0, |&(b, _)| b);
    if freed + held >= need {
        return window.frees_at(window.bucket_of(now_ms).max(newest));
    }
    now_ms.saturating_add(window.window_ms)
}

/// `HH:MM` (UTC) for the reply `... retry after HH:MM UTC`, rounded *up* to the minute so that
/// a client retrying at the time shown finds the capacity back.
pub fn retry_after_text(retry_at_ms: u64) -> String {
    const MINUTE_MS: u64 = 60_000;
    let minutes = retry_at_ms.div_ceil(MINUTE_MS);
    let of_day = minutes % (24 * 60);
    format!("{:02}:{:02}", of_day / 60, of_day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2023-11-14 22:13:20 UTC, a whole second.
    const T0: u64 = 1_700_000_000_000;

    fn small() -> QuotaWindow {
        QuotaWindow::new(4_000, 1_000).unwrap()
    }

    #[test]
    fn window_validation() {
        assert_eq!(QuotaWindow::default(), QuotaWindow::DAY);
        assert_eq!(QuotaWindow::DAY.buckets(), 1440);
        assert!(matches!(
            QuotaWindow::new(0, 1),
            Err(WindowError::Zero { .. })
        ));
        assert!(matches!(
            QuotaWindow::new(10, 0),
            Err(WindowError::Zero { .. })
        ));
        let e = QuotaWindow::new(4_500, 1_000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the window (4500 ms) must be a multiple of the bucket (1000 ms)"
        );
        assert!(matches!(
            QuotaWindow::new(MAX_BUCKETS + 1, 1),
            Err(WindowError::TooManyBuckets { .. })
        ));
        assert!(QuotaWindow::new(MAX_BUCKETS, 1).is_ok());
        assert_eq!(QuotaWindow::new(1, 1).unwrap().buckets(), 1);
    }

    #[test]
    fn bucket_arithmetic() {
        let w = small();
        let b = w.bucket_of(T0 + 999);
        assert_eq!(b, T0 / 1000);
        assert_eq!(w.bucket_of(T0 + 1000), b + 1);
        // Counted in bucket b: live through bucket b + 3, free at the start of b + 4.
        assert_eq!(w.frees_at(b), T0 + 4_000);
        assert_eq!(w.oldest_live(T0 + 3_999), b);
        assert_eq!(w.oldest_live(T0 + 4_000), b + 1);
        // Near the epoch nothing underflows.
        assert_eq!(w.oldest_live(0), 0);
        assert_eq!(w.oldest_live(2_500), 0);
        // The default: a recipient at 10:15:42 (minute m) frees at minute m + 1440,
        // 10:15:00 the next day.
        let day = QuotaWindow::DAY;
        let at = 10 * 3_600_000 + 15 * 60_000 + 42_000;
        assert_eq!(
            day.frees_at(day.bucket_of(at)),
            DEFAULT_WINDOW_MS + 10 * 3_600_000 + 15 * 60_000
        );
    }

    #[test]
    fn room_at_n_and_n_plus_one() {
        assert!(has_room(0, 0, 1));
        assert!(has_room(3, 1, 5));
        assert!(!has_room(3, 2, 5));
        assert!(!has_room(0, 0, 0));
        assert!(
            !has_room(7, 0, 5),
            "a lowered limit below the usage is full"
        );
    }

    #[test]
    fn retry_is_the_oldest_bucket_that_frees_enough() {
        let w = small();
        let b = w.bucket_of(T0);
        let now = T0 + 2_500;
        // 2 in b, 3 in b+1, 1 in b+2; limit 6: full, one to free: bucket b.
        let buckets = [(b, 2), (b + 1, 3), (b + 2, 1)];
        assert_eq!(retry_at(w, now, 6, &buckets, &[]), w.frees_at(b));
        // Limit 3: need 4 freed: b (2) is not enough, b+1 (2+3) is.
        assert_eq!(retry_at(w, now, 3, &buckets, &[]), w.frees_at(b + 1));
        // Holds count but are assumed to stay: limit 6 with 2 held needs 3 freed -> b+1.
        let holds = [(now + 100, 2)];
        assert_eq!(retry_at(w, now, 6, &buckets, &holds), w.frees_at(b + 1));
        // Not full: now.
        assert_eq!(retry_at(w, now, 7, &buckets, &[]), now);
    }

    #[test]
    fn retry_when_holds_alone_block() {
        let w = small();
        let b = w.bucket_of(T0);
        let now = T0 + 500;
        // Holds are counted at their end of data: capacity they block returns one window
        // after the current bucket, whenever the holds themselves would expire.
        let holds = [(now + 900, 1), (now + 300, 2), (now + 5_000, 4)];
        for limit in [7, 5, 2] {
            assert_eq!(retry_at(w, now, limit, &[], &holds), T0 + 4_000);
        }
        // Some counted, then the holds: used 1 in bucket b, held 3, limit 3, need 2.
        let holds = [(now + 300, 2), (now + 5_000, 1)];
        assert_eq!(retry_at(w, now, 3, &[(b, 1)], &holds), T0 + 4_000);
        // Later in the window the current bucket is a later one.
        let later = T0 + 2_500;
        assert_eq!(retry_at(w, later, 3, &[(b, 1)], &holds), T0 + 2_000 + 4_000);
    }

    #[test]
    fn retry_with_limit_zero() {
        let w = small();
        assert_eq!(retry_at(w, T0, 0, &[], &[]), T0 + 4_000);
        let b = w.bucket_of(T0);
        assert_eq!(retry_at(w, T0, 0, &[(b, 1)], &[]), T0 + 4_000);
    }

    #[test]
    fn retry_text_rounds_up_to_the_minute() {
        // T0 is 22:13:20 UTC.
        assert_eq!(retry_after_text(T0), "22:14");
        assert_eq!(retry_after_text(T0 - 20_000), "22:13");
        assert_eq!(retry_after_text(T0 - 19_999), "22:14");
        assert_eq!(retry_after_text(0), "00:00");
        assert_eq!(retry_after_text(DEFAULT_WINDOW_MS - 1), "00:00");
        assert_eq!(retry_after_text(DEFAULT_WINDOW_MS - 60_001), "23:59");
        assert_eq!(retry_after_text(9 * 3_600_000 + 5 * 60_000), "09:05");
    }
}
