//! The behaviour every [`BrakeStore`] must have, as async functions that panic on a
//! difference: the in-process store's unit test runs them, and `tests/quota_conformance.rs`
//! against one `redis-server` and a Redis Cluster. Each case uses its own keys (with a
//! caller-given prefix) and times from [`T0`]; every limit is checked at N and N+1.
//!
//! Compiled for the crate's own tests and under the `conformance` feature only.

use super::{BrakeStore, LoginBrake, LoginLimits, LoginSource, MessageRate};
use std::num::NonZeroU32;

/// 2023-11-14 22:13:20 UTC, as in the quota cases.
pub const T0: u64 = 1_700_000_000_000;

fn rate(n: u32) -> MessageRate {
    MessageRate {
        per_minute: NonZeroU32::new(n).expect("a positive rate"),
    }
}

/// Per client 3, per subnet 5, within 10 s.
pub const LIMITS: LoginLimits = LoginLimits {
    per_client: 3,
    per_subnet: 5,
    window_ms: 10_000,
};

fn source(prefix: &str, case: &str, client: u8) -> LoginSource {
    LoginSource {
        client: format!("{prefix}{case}.{client}"),
        subnet: format!("{prefix}{case}.0"),
    }
}

async fn take(s: &dyn BrakeStore, id: &str, r: MessageRate, now: u64) -> bool {
    s.take_message(id, r, now).await.expect("take_message")
}

async fn begin(s: &dyn BrakeStore, src: &LoginSource, attempt: &str, now: u64) -> LoginBrake {
    s.begin_login(src, attempt, LIMITS, now)
        .await
        .expect("begin_login")
}

async fn state(s: &dyn BrakeStore, src: &LoginSource, now: u64) -> LoginBrake {
    s.login_state(src, LIMITS, now).await.expect("login_state")
}

/// Runs every case on `s`, and the shared-count case on `s` and `other` (a second handle on
/// the same backend: another replica).
pub async fn run_all(s: &dyn BrakeStore, other: &dyn BrakeStore, prefix: &str) {
    message_burst_n_and_n_plus_one(s, prefix).await;
    message_refill(s, prefix).await;
    login_client_n_and_n_plus_one(s, prefix).await;
    login_subnet_n_and_n_plus_one(s, prefix).await;
    login_forget_and_window(s, prefix).await;
    shared_between_handles(s, other, prefix).await;
}

/// A burst of N passes at one instant, the N+1th is refused and takes nothing; identities are
/// separate.
pub async fn message_burst_n_and_n_plus_one(s: &dyn BrakeStore, prefix: &str) {
    let a = format!("{prefix}burst-a");
    for n in [1, 2, 3, 7] {
        let id = format!("{a}-{n}");
        for i in 0..n {
            assert!(take(s, &id, rate(n), T0).await, "message {i} of {n}");
        }
        assert!(!take(s, &id, rate(n), T0).await, "message {n} of {n}");
        assert!(!take(s, &id, rate(n), T0 + 1).await);
    }
    assert!(take(s, &format!("{prefix}burst-b"), rate(1), T0).await);
}

/// After a burst of 4 a minute, one more every 15 s: not at 14.999 s, at 15 s; the whole
/// burst again after a quiet minute.
pub async fn message_refill(s: &dyn BrakeStore, prefix: &str) {
    let id = format!("{prefix}refill");
    let r = rate(4);
    for _ in 0..4 {
        assert!(take(s, &id, r, T0).await);
    }
    assert!(!take(s, &id, r, T0 + 14_999).await);
    assert!(take(s, &id, r, T0 + 15_000).await);
    assert!(!take(s, &id, r, T0 + 15_001).await);
    let later = T0 + 15_000 + 60_000;
    for i in 0..4 {
        assert!(take(s, &id, r, later).await, "refilled message {i}");
    }
    assert!(!take(s, &id, r, later).await);
}

/// Three attempts of one client are recorded, the fourth is braked (and not recorded);
/// another client of the subnet is still open.
pub async fn login_client_n_and_n_plus_one(s: &dyn BrakeStore, prefix: &str) {
    let one = source(prefix, "client", 1);
    for i in 0..3 {
        assert_eq!(
            state(s, &one, T0).await,
            LoginBrake::Open,
            "state before {i}"
        );
        assert_eq!(begin(s, &one, &format!("a{i}"), T0).await, LoginBrake::Open);
    }
    assert_eq!(state(s, &one, T0).await, LoginBrake::Client);
    assert_eq!(begin(s, &one, "a3", T0).await, LoginBrake::Client);
    let two = source(prefix, "client", 2);
    assert_eq!(begin(s, &two, "b0", T0).await, LoginBrake::Open);
    // 4 recorded in the subnet (3 + 1): the refused one was not.
    assert_eq!(begin(s, &two, "b1", T0).await, LoginBrake::Open);
    assert_eq!(
        state(s, &source(prefix, "client", 3), T0).await,
        LoginBrake::Subnet
    );
}

/// Five attempts from five clients of one subnet are recorded, the sixth client is braked
/// by the subnet.
pub async fn login_subnet_n_and_n_plus_one(s: &dyn BrakeStore, prefix: &str) {
    for c in 1..=5 {
        let src = source(prefix, "subnet", c);
        assert_eq!(
            begin(s, &src, &format!("s{c}"), T0).await,
            LoginBrake::Open,
            "{c}"
        );
    }
    let sixth = source(prefix, "subnet", 6);
    assert_eq!(state(s, &sixth, T0).await, LoginBrake::Subnet);
    assert_eq!(begin(s, &sixth, "s6", T0).await, LoginBrake::Subnet);
    let elsewhere = source(prefix, "subnet-other", 6);
    assert_eq!(begin(s, &elsewhere, "s6", T0).await, LoginBrake::Open);
}

/// A forgotten attempt frees its place; attempts leave the window `window_ms` after they
/// were recorded, not before.
pub async fn login_forget_and_window(s: &dyn BrakeStore, prefix: &str) {
    let src = source(prefix, "window", 1);
    assert_eq!(begin(s, &src, "w0", T0).await, LoginBrake::Open);
    assert_eq!(begin(s, &src, "w1", T0 + 1_000).await, LoginBrake::Open);
    assert_eq!(begin(s, &src, "w2", T0 + 2_000).await, LoginBrake::Open);
    assert_eq!(state(s, &src, T0 + 2_000).await, LoginBrake::Client);
    s.forget_login(&src, "w2").await.expect("forget");
    assert_eq!(begin(s, &src, "w3", T0 + 2_000).await, LoginBrake::Open);
    // w0 still counts at exactly T0 + window, is gone 1 ms later.
    assert_eq!(state(s, &src, T0 + 10_000).await, LoginBrake::Client);
    assert_eq!(state(s, &src, T0 + 10_001).await, LoginBrake::Open);
    assert_eq!(begin(s, &src, "w4", T0 + 10_001).await, LoginBrake::Open);
    assert_eq!(begin(s, &src, "w5", T0 + 10_001).await, LoginBrake::Client);
    // Forgetting an attempt that is not there changes nothing.
    s.forget_login(&src, "never").await.expect("forget");
    assert_eq!(state(s, &src, T0 + 10_001).await, LoginBrake::Client);
}

/// Two handles (two replicas) count together, also racing: of 20 concurrent attempts of one
/// client exactly the limit are recorded, and of 10 concurrent messages exactly the burst
/// passes.
pub async fn shared_between_handles(s: &dyn BrakeStore, other: &dyn BrakeStore, prefix: &str) {
    let src = source(prefix, "shared", 1);
    assert_eq!(begin(s, &src, "x0", T0).await, LoginBrake::Open);
    assert_eq!(begin(other, &src, "x1", T0).await, LoginBrake::Open);
    assert_eq!(state(other, &src, T0).await, LoginBrake::Open);
    assert_eq!(begin(s, &src, "x2", T0).await, LoginBrake::Open);
    assert_eq!(state(other, &src, T0).await, LoginBrake::Client);

    // Four racers, two per handle, five attempts and three messages each.
    let race = source(prefix, "race", 1);
    let messages = format!("{prefix}shared-messages");
    let racer = |n: usize| {
        let store = if n.is_multiple_of(2) { s } else { other };
        let (race, messages) = (&race, &messages);
        async move {
            let mut recorded = 0;
            for i in 0..5 {
                if begin(store, race, &format!("r{n}-{i}"), T0).await == LoginBrake::Open {
                    recorded += 1;
                }
            }
            let mut taken = 0;
            for _ in 0..3 {
                if take(store, messages, rate(4), T0).await {
                    taken += 1;
                }
            }
            (recorded, taken)
        }
    };
    let results = tokio::join!(racer(0), racer(1), racer(2), racer(3));
    let results = [results.0, results.1, results.2, results.3];
    let recorded: u32 = results.iter().map(|r| r.0).sum();
    let taken: u32 = results.iter().map(|r| r.1).sum();
    assert_eq!(recorded, LIMITS.per_client, "{results:?}");
    assert_eq!(taken, 4, "{results:?}");
}
