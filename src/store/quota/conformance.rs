//! The behaviour every [`QuotaStore`] must have, as async functions that panic on a
//! difference: the embedded store's unit tests run them on one file, and
//! `tests/quota_conformance.rs` against the embedded store, one Redis server and a Redis
//! Cluster. A new backend passes [`run_all`] before it is used.
//!
//! Each case uses its own key (`addr:CASE@conformance.test`, with a caller-given prefix so
//! reruns against a long-lived server do not collide) and times from [`T0`]. The stores must
//! be opened with [`settings`].
//!
//! Compiled for the crate's own tests and under the `conformance` feature, which only the
//! dev-dependency of the integration tests turns on: it is not part of a release build.

use super::{QuotaHold, QuotaKey, QuotaSettings, QuotaStore, Usage};
use crate::policy::quota::QuotaWindow;

/// 2023-11-14 22:13:20 UTC: a whole second, so buckets start there.
pub const T0: u64 = 1_700_000_000_000;
/// The window of the cases: 4 s in 1 s buckets.
pub const WINDOW_MS: u64 = 4_000;
/// The bucket of the cases.
pub const BUCKET_MS: u64 = 1_000;
/// The hold TTL of the cases.
pub const HOLD_TTL_MS: u64 = 1_500;

/// The settings stores under test must be opened with.
pub fn settings() -> QuotaSettings {
    QuotaSettings {
        window: QuotaWindow::new(WINDOW_MS, BUCKET_MS).expect("a valid window"),
        hold_ttl_ms: HOLD_TTL_MS,
    }
}

fn key(prefix: &str, case: &str) -> QuotaKey {
    QuotaKey::Address(format!("{prefix}{case}@conformance.test"))
}

async fn hold(s: &dyn QuotaStore, k: &QuotaKey, id: &str, limit: u32, now: u64) -> QuotaHold {
    s.hold(k, id, limit, now).await.expect("hold")
}

fn held(used: u32, held: u32) -> QuotaHold {
    QuotaHold::Held { used, held }
}

fn full(retry_at_ms: u64) -> QuotaHold {
    QuotaHold::Full { retry_at_ms }
}

/// Runs every case on `s` (and the two-store concurrency case on `s` and `other`, which
/// must be a second handle on the same backend).
pub async fn run_all(s: &dyn QuotaStore, other: &dyn QuotaStore, prefix: &str) {
    assert_eq!(
        s.settings(),
        settings(),
        "open the store with conformance::settings()"
    );
    limit_n_and_n_plus_one(s, prefix).await;
    holds_count_against_the_limit(s, prefix).await;
    release_frees(s, prefix).await;
    commit_counts(s, prefix).await;
    window_roll(s, prefix).await;
    retry_at_exact(s, prefix).await;
    hold_expiry(s, prefix).await;
    refund(s, prefix).await;
    usage(s, prefix).await;
    concurrency(s, other, prefix).await;
}

/// N holds pass, the (N+1)th is `Full`; limit 0 holds nothing.
pub async fn limit_n_and_n_plus_one(s: &dyn QuotaStore, prefix: &str) {
    let k = key(prefix, "limit");
    for i in 1..=5 {
        assert_eq!(hold(s, &k, "t1", 5, T0).await, held(0, i));
    }
    // Nothing counted yet: the holds will be, now, so capacity returns a window later.
    assert_eq!(hold(s, &k, "t1", 5, T0).await, full(T0 + WINDOW_MS));
    assert_eq!(hold(s, &k, "t2", 5, T0).await, full(T0 + WINDOW_MS));
    let z = key(prefix, "limit-zero");
    assert_eq!(hold(s, &z, "t1", 0, T0).await, full(T0 + WINDOW_MS));
}

/// Holds of one transaction count against another's; a bigger limit gives room.
pub async fn holds_count_against_the_limit(s: &dyn QuotaStore, prefix: &str) {
    let k = key(prefix, "holds");
    assert_eq!(hold(s, &k, "a", 3, T0).await, held(0, 1));
    assert_eq!(hold(s, &k, "a", 3, T0).await, held(0, 2));
    assert_eq!(hold(s, &k, "b", 3, T0).await, held(0, 3));
    assert!(matches!(
        hold(s, &k, "b", 3, T0).await,
        QuotaHold::Full { .. }
    ));
    assert_eq!(hold(s, &k, "c", 4, T0).await, held(0, 4));
}

/// Release drops exactly one hold id's holds.
pub async fn release_frees(s: &dyn QuotaStore, prefix: &str) {
    let k = key(prefix, "release");
    hold(s, &k, "a", 3, T0).await;
    hold(s, &k, "a", 3, T0).await;
    hold(s, &k, "b", 3, T0).await;
    assert!(matches!(
        hold(s, &k, "c", 3, T0).await,
        QuotaHold::Full { .. }
    ));
    assert_eq!(s.release(&k, "a").await.expect("release"), 2);
    assert_eq!(s.release(&k, "a").await.expect("release"), 0);
    assert_eq!(s.release(&k, "nobody").await.expect("release"), 0);
    assert_eq!(hold(s, &k, "c", 3, T0).await, held(0, 2));
    assert_eq!(hold(s, &k, "c", 3, T0).await, held(0, 3));
    assert!(matches!(
        hold(s, &k, "c", 3, T0).await,
        QuotaHold::Full { .. }
    ));
}

/// Commit turns holds into counted recipients, once.
pub async fn commit_counts(s: &dyn QuotaStore, prefix: &str) {
    let k = key(prefix, "commit");
    for _ in 0..3 {
        hold(s, &k, "m1", 5, T0).await;
    }
    hold(s, &k, "m2", 5, T0).await;
    assert_eq!(s.commit(&k, "m1", T0 + 10).await.expect("commit"), 3);
    assert_eq!(s.commit(&k, "m1", T0 + 10).await.expect("commit"), 0);
    assert_eq!(s.commit(&k, "none", T0 + 10).await.expect("commit"), 0);
    assert_eq!(hold(s, &k, "m3", 5, T0 + 20).await, held(3, 2));
    // Full now: 3 counted + 2 held. The 3 counted free at T0 + window.
    assert_eq!(hold(s, &k, "m3", 5, T0 + 20).await, full(T0 + WINDOW_MS));
    assert_eq!(s.release(&k, "m3").await.expect("release"), 1);
    assert_eq!(s.commit(&k, "m2", T0 + 30).await.expect("commit"), 1);
    let u = s.usage(&k, 5, T0 + 30).await.expect("usage");
    assert_eq!((u.used, u.held), (4, 0));
}

/// Recipients counted in bucket b count until the start of bucket b + buckets, exactly.
pub async fn window_roll(s: &dyn QuotaStore, prefix: &str) {
    let k = key(prefix, "roll");
    // 2 counted at T0 + 300 (bucket of T0), 1 at T0 + 1700 (next bucket).
    hold(s, &k, "a", 3, T0 + 300).await;
    hold(s, &k, "a", 3, T0 + 300).await;
    s.commit(&k, "a", T0 + 300).await.expect("commit");
    hold(s, &k, "b", 3, T0 + 1_700).await;
    s.commit(&k, "b", T0 + 1_700).await.expect("commit");
    assert_eq!(
        hold(s, &k, "c", 3, T0 + WINDOW_MS - 1).await,
        full(T0 + WINDOW_MS)
    );
    assert_eq!(hold(s, &k, "c", 3, T0 + WINDOW_MS).await, held(1, 1));
    assert_eq!(hold(s, &k, "c", 3, T0 + WINDOW_MS).await, held(1, 2));
    assert_eq!(
        hold(s, &k, "c", 3, T0 + WINDOW_MS + 999).await,
        full(T0 + WINDOW_MS + 1_000)
    );
    s.release(&k, "c").await.expect("release");
    let u = s.usage(&k, 3, T0 + WINDOW_MS + 1_000).await.expect("usage");
    assert_eq!((u.used, u.held, u.next_free_ms), (0, 0, None));
    // A long idle gap: everything expired, nothing left over.
    assert_eq!(hold(s, &k, "d", 3, T0 + 100 * WINDOW_MS).await, held(0, 1));
    assert_eq!(s.commit(&k, "d", T0 + 100 * WINDOW_MS).await.expect("c"), 1);
    let u = s.usage(&k, 3, T0 + 100 * WINDOW_MS).await.expect("usage");
    assert_eq!((u.used, u.held), (1, 0));
}

/// The retry time: oldest bucket that frees enough, holds counted in the current bucket.
pub async fn retry_at_exact(s: &dyn QuotaStore, prefix: &str) {
    let k = key(prefix, "retry");
    // 2 in bucket T0, 3 in bucket T0+1s, 1 in bucket T0+2s.
    for (n, at) in [(2, T0 + 100), (3, T0 + 1_100), (1, T0 + 2_100)] {
        for _ in 0..n {
            hold(s, &k, "x", 100, at).await;
        }
        s.commit(&k, "x", at).await.expect("commit");
    }
    let now = T0 + 2_500;
    assert_eq!(hold(s, &k, "y", 6, now).await, full(T0 + WINDOW_MS));
    assert_eq!(hold(s, &k, "y", 3, now).await, full(T0 + WINDOW_MS + 1_000));
    assert_eq!(hold(s, &k, "y", 8, now).await, held(6, 1));
    assert_eq!(hold(s, &k, "y", 8, now).await, held(6, 2));
    // 6 used + 2 held, limit 8: need 1, the first bucket (2) frees it.
    assert_eq!(hold(s, &k, "z", 8, now).await, full(T0 + WINDOW_MS));
    // limit 7: need 2 -> still the first bucket; limit 5: need 4 -> the second.
    assert_eq!(hold(s, &k, "z", 7, now).await, full(T0 + WINDOW_MS));
    assert_eq!(hold(s, &k, "z", 5, now).await, full(T0 + WINDOW_MS + 1_000));
    // Limit 2: need 7 = 6 counted + 1 of the holds, which count in the current bucket
    // (T0 + 2s): it frees at T0 + 2s + window.
    assert_eq!(hold(s, &k, "z", 2, now).await, full(T0 + WINDOW_MS + 2_000));
    // Holds only, on a fresh key: they count in the current bucket.
    let h = key(prefix, "retry-holds");
    hold(s, &h, "p", 2, T0).await;
    hold(s, &h, "q", 2, T0 + 200).await;
    assert_eq!(hold(s, &h, "r", 2, T0 + 300).await, full(T0 + WINDOW_MS));
    assert_eq!(
        hold(s, &h, "p", 2, T0 + 1_400).await,
        full(T0 + 1_000 + WINDOW_MS)
    );
}

/// Holds expire `hold_ttl_ms` after their id's last hold call, and then free capacity.
pub async fn hold_expiry(s: &dyn QuotaStore, prefix: &str) {
    let k = key(prefix, "expiry");
    hold(s, &k, "dead", 2, T0).await;
    hold(s, &k, "dead", 2, T0 + 500).await;
    assert_eq!(
        hold(s, &k, "live", 2, T0 + 500 + HOLD_TTL_MS - 1).await,
        full(T0 + 1_000 + WINDOW_MS)
    );
    assert_eq!(
        hold(s, &k, "live", 2, T0 + 500 + HOLD_TTL_MS).await,
        held(0, 1)
    );
    // The expired holds are gone for commit too.
    assert_eq!(
        s.commit(&k, "dead", T0 + 500 + HOLD_TTL_MS)
            .await
            .expect("c"),
        0
    );
    let u = s.usage(&k, 2, T0 + 500 + HOLD_TTL_MS).await.expect("usage");
    assert_eq!((u.used, u.held), (0, 1));
}

/// Refund un-counts newest first and never below zero.
pub async fn refund(s: &dyn QuotaStore, prefix: &str) {
    let k = key(prefix, "refund");
    for (n, at) in [(2, T0), (3, T0 + 1_000)] {
        for _ in 0..n {
            hold(s, &k, "x", 10, at).await;
        }
        s.commit(&k, "x", at).await.expect("commit");
    }
    assert_eq!(s.refund(&k, 2, T0 + 1_000).await.expect("refund"), 2);
    let u = s.usage(&k, 3, T0 + 1_000).await.expect("usage");
    assert_eq!((u.used, u.next_free_ms), (3, Some(T0 + WINDOW_MS)));
    // 1 left in the newer bucket, 2 in the older: refunding 2 empties the newer first, so
    // the remaining 1 frees with the older bucket.
    assert_eq!(s.refund(&k, 2, T0 + 1_000).await.expect("refund"), 2);
    assert_eq!(hold(s, &k, "y", 1, T0 + 1_000).await, full(T0 + WINDOW_MS));
    assert_eq!(s.refund(&k, 5, T0 + 1_000).await.expect("refund"), 1);
    assert_eq!(s.refund(&k, 5, T0 + 1_000).await.expect("refund"), 0);
    assert_eq!(hold(s, &k, "y", 1, T0 + 1_000).await, held(0, 1));
}

/// Usage reports counts, the limit and when capacity returns.
pub async fn usage(s: &dyn QuotaStore, prefix: &str) {
    let k = key(prefix, "usage");
    let empty = s.usage(&k, 5, T0).await.expect("usage");
    assert_eq!(
        empty,
        Usage {
            used: 0,
            held: 0,
            limit: 5,
            next_free_ms: None
        }
    );
    for _ in 0..3 {
        hold(s, &k, "a", 5, T0 + 200).await;
    }
    s.commit(&k, "a", T0 + 200).await.expect("commit");
    hold(s, &k, "b", 5, T0 + 300).await;
    let u = s.usage(&k, 5, T0 + 300).await.expect("usage");
    assert_eq!((u.used, u.held, u.limit, u.next_free_ms), (3, 1, 5, None));
    let u = s.usage(&k, 4, T0 + 300).await.expect("usage");
    assert_eq!(u.next_free_ms, Some(T0 + WINDOW_MS));
    // A limit lowered below the usage.
    let u = s.usage(&k, 1, T0 + 300).await.expect("usage");
    assert_eq!(
        (u.used, u.held, u.next_free_ms),
        (3, 1, Some(T0 + WINDOW_MS))
    );
    // Usage does not change anything.
    let again = s.usage(&k, 5, T0 + 300).await.expect("usage");
    assert_eq!((again.used, again.held), (3, 1));
}

/// 8 transactions on two handles race 100 holds each against limit 500: exactly 500 are
/// held, and after commits exactly 500 are counted.
pub async fn concurrency(a: &dyn QuotaStore, b: &dyn QuotaStore, prefix: &str) {
    let k = key(prefix, "race");
    let task = |s: &'static str, store: usize| {
        let k = k.clone();
        let store = if store == 0 { a } else { b };
        async move {
            let mut n = 0u32;
            for _ in 0..100 {
                if let QuotaHold::Held { .. } = hold(store, &k, s, 500, T0).await {
                    n += 1;
                }
            }
            n
        }
    };
    let counts = tokio::join!(
        task("t0", 0),
        task("t1", 1),
        task("t2", 0),
        task("t3", 1),
        task("t4", 0),
        task("t5", 1),
        task("t6", 0),
        task("t7", 1),
    );
    let counts = [
        counts.0, counts.1, counts.2, counts.3, counts.4, counts.5, counts.6, counts.7,
    ];
    assert_eq!(counts.iter().sum::<u32>(), 500, "held per task: {counts:?}");
    let mut committed = 0;
    for (i, id) in ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"]
        .iter()
        .enumerate()
    {
        let store = if i % 2 == 0 { a } else { b };
        committed += store.commit(&k, id, T0 + 1).await.expect("commit");
    }
    assert_eq!(committed, 500);
    let u = a.usage(&k, 500, T0 + 1).await.expect("usage");
    assert_eq!((u.used, u.held), (500, 0));
    assert!(matches!(
        hold(b, &k, "late", 500, T0 + 1).await,
        QuotaHold::Full { .. }
    ));
}
