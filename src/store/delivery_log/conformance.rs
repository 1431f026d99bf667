//! The behaviour every delivery log backend must show, as functions that panic on a
//! difference: writes, every filter of `postern log` alone and together, the order of rows,
//! purges in batches.
//!
//! A backend implements [`Backend`] (a fresh, empty log per case) and runs [`run_all`] from
//! its tests: the SQLite file in `store/delivery_log/sqlite.rs`, PostgreSQL in
//! `store/postgres/tests.rs` (a real server). What only one backend can show (the purge lock,
//! file migrations) stays beside that backend.
//!
//! Compiled for the crate's own tests and under the `conformance` feature; never part of a
//! release build.

use super::{LogQuery, LogRecord, LogState, LogStore, Purge};

/// A delivery log backend under test.
pub trait Backend {
    /// Keeps a case's log alive (a temporary directory, a database); dropped after the case.
    type Guard;

    /// A fresh, empty log for the case named `case` (unique within one run).
    fn open(&self, case: &str) -> (Box<dyn LogStore>, Self::Guard);
}

/// Runs every case, each on a fresh log of `backend`.
pub fn run_all<B: Backend>(backend: &B) {
    records_come_back_whole_and_in_order(backend);
    filters_alone_and_together(backend);
    purge_in_batches(backend);
    empty_writes_and_empty_logs(backend);
}

/// A delivered record with every field set, replica `relay-1`, queue id `Q1`.
pub fn record(time_ms: u64, sender: &str, recipient: &str, state: LogState) -> LogRecord {
    LogRecord {
        time_ms,
        replica: "relay-1".into(),
        queue_id: "Q1".into(),
        sender: sender.into(),
        recipient: recipient.into(),
        mx: Some("mx.example.net".into()),
        ip: Some("192.0.2.1".into()),
        tls_mode: Some("opportunistic".into()),
        tls_version: Some("TLSv1.3".into()),
        tls_cipher: Some("TLS13_AES_256_GCM_SHA384".into()),
        reply: "mx.example.net[192.0.2.1] said: 250 2.0.0 ok (in reply to end of DATA)".into(),
        dsn: "2.0.0".into(),
        state,
        attempt: 1,
    }
}

fn times(rows: &[LogRecord]) -> Vec<u64> {
    rows.iter().map(|r| r.time_ms).collect()
}

/// Every field round-trips (absent ones too, control characters and non-ASCII kept); rows
/// come back by time, and rows of one millisecond in the order they were written, also across
/// writes.
pub fn records_come_back_whole_and_in_order<B: Backend>(backend: &B) {
    let (mut log, _guard) = backend.open("whole");
    let mut plain = record(3000, "", "c@example.net", LogState::Bounced);
    plain.replica = String::new();
    plain.tls_mode = Some("plaintext".into());
    plain.tls_version = None;
    plain.tls_cipher = None;
    plain.mx = None;
    plain.ip = None;
    plain.reply = "said: 550 \u{1b}[2J gone\r\n \u{e9}t\u{e9}".into();
    plain.dsn = "5.1.1".into();
    plain.attempt = 7;
    let mut later = record(
        2000,
        "Alice@Example.org",
        "b@example.net",
        LogState::Deferred,
    );
    later.replica = "relay-2".into();
    later.queue_id = "Q2".into();
    let first = record(
        1000,
        "alice@example.org",
        "B@Example.net",
        LogState::Delivered,
    );
    log.insert(&[later.clone(), first.clone(), plain.clone()])
        .unwrap();
    let all = log.query(&LogQuery::default()).unwrap();
    assert_eq!(all, vec![first, later, plain]);

    // Same millisecond: write order, within one insert and across inserts.
    let tie = |recipient: &str| record(5000, "t@example.org", recipient, LogState::Delivered);
    log.insert(&[tie("t1@example.net"), tie("t2@example.net")])
        .unwrap();
    log.insert(&[tie("t3@example.net")]).unwrap();
    log.insert(&[record(
        4999,
        "t@example.org",
        "t0@example.net",
        LogState::Delivered,
    )])
    .unwrap();
    let tied: Vec<String> = log
        .query(&LogQuery {
            address: Some("t@example.org".into()),
            ..LogQuery::default()
        })
        .unwrap()
        .into_iter()
        .map(|r| r.recipient)
        .collect();
    assert_eq!(
        tied,
        [
            "t0@example.net",
            "t1@example.net",
            "t2@example.net",
            "t3@example.net"
        ]
    );
}

/// Address (sender or recipient, any case), queue id (exact), since (inclusive), state, and
/// their combinations.
pub fn filters_alone_and_together<B: Backend>(backend: &B) {
    let (mut log, _guard) = backend.open("filters");
    let mut q2 = record(
        2000,
        "Alice@Example.org",
        "b@example.net",
        LogState::Deferred,
    );
    q2.queue_id = "Q2".into();
    let mut q2_again = record(
        2500,
        "alice@example.org",
        "b@example.net",
        LogState::Delivered,
    );
    q2_again.queue_id = "Q2".into();
    q2_again.attempt = 2;
    let rows = vec![
        record(
            1000,
            "alice@example.org",
            "B@Example.net",
            LogState::Delivered,
        ),
        q2,
        q2_again,
        record(3000, "", "c@example.net", LogState::Bounced),
        record(
            4000,
            "b@example.net",
            "alice@example.org",
            LogState::Bounced,
        ),
    ];
    log.insert(&rows).unwrap();
    let query = |q: LogQuery| times(&log.query(&q).unwrap());
    let by = |address: &str| {
        query(LogQuery {
            address: Some(address.into()),
            ..LogQuery::default()
        })
    };
    assert_eq!(by("ALICE@example.org"), [1000, 2000, 2500, 4000]);
    assert_eq!(by("b@example.net"), [1000, 2000, 2500, 4000]);
    assert_eq!(by("c@EXAMPLE.net"), [3000]);
    assert_eq!(by("nobody@example.net"), Vec::<u64>::new());
    assert_eq!(by("example.net"), Vec::<u64>::new(), "no substring match");

    let queue = |id: &str| {
        query(LogQuery {
            queue_id: Some(id.into()),
            ..LogQuery::default()
        })
    };
    assert_eq!(queue("Q2"), [2000, 2500]);
    assert_eq!(queue("Q1"), [1000, 3000, 4000]);
    assert_eq!(queue("q2"), Vec::<u64>::new(), "queue ids are exact");

    let since = |ms: u64| {
        query(LogQuery {
            since_ms: Some(ms),
            ..LogQuery::default()
        })
    };
    assert_eq!(since(2500), [2500, 3000, 4000], "since is inclusive");
    assert_eq!(since(2501), [3000, 4000]);
    assert_eq!(since(0), [1000, 2000, 2500, 3000, 4000]);

    let state = |s: LogState| {
        query(LogQuery {
            state: Some(s),
            ..LogQuery::default()
        })
    };
    assert_eq!(state(LogState::Bounced), [3000, 4000]);
    assert_eq!(state(LogState::Deferred), [2000]);
    assert_eq!(state(LogState::Delivered), [1000, 2500]);

    assert_eq!(
        query(LogQuery {
            address: Some("alice@example.org".into()),
            queue_id: Some("Q2".into()),
            since_ms: Some(2000),
            state: Some(LogState::Delivered),
        }),
        [2500]
    );
    assert_eq!(
        query(LogQuery {
            address: Some("c@example.net".into()),
            state: Some(LogState::Bounced),
            since_ms: Some(0),
            queue_id: None,
        }),
        [3000]
    );
    assert_eq!(
        query(LogQuery {
            address: Some("c@example.net".into()),
            state: Some(LogState::Delivered),
            ..LogQuery::default()
        }),
        Vec::<u64>::new()
    );
}

/// Rows strictly older than the cutoff go, in batches (a multiple of the batch size, and a
/// remainder); the count is exact; the rest stay; a second purge deletes nothing.
pub fn purge_in_batches<B: Backend>(backend: &B) {
    let (mut log, _guard) = backend.open("purge");
    let rows: Vec<_> = (0..25)
        .map(|t| record(t, "a@example.org", "b@example.net", LogState::Delivered))
        .collect();
    log.insert(&rows).unwrap();
    assert_eq!(log.purge_before(20, 3).unwrap(), Purge::Deleted(20));
    let left = log.query(&LogQuery::default()).unwrap();
    assert_eq!(times(&left), (20..25).collect::<Vec<_>>());
    assert_eq!(log.purge_before(20, 3).unwrap(), Purge::Deleted(0));
    // Exactly one full batch, then the next purge finds an empty one.
    assert_eq!(log.purge_before(23, 3).unwrap(), Purge::Deleted(3));
    assert_eq!(times(&log.query(&LogQuery::default()).unwrap()), [23, 24]);
    assert_eq!(log.purge_before(u64::MAX, 1000).unwrap(), Purge::Deleted(2));
    assert!(log.query(&LogQuery::default()).unwrap().is_empty());
}

/// Writing nothing is fine; an empty log answers every query with nothing.
pub fn empty_writes_and_empty_logs<B: Backend>(backend: &B) {
    let (mut log, _guard) = backend.open("empty");
    log.insert(&[]).unwrap();
    assert!(log.query(&LogQuery::default()).unwrap().is_empty());
    assert!(
        log.query(&LogQuery {
            address: Some("a@example.org".into()),
            queue_id: Some("Q".into()),
            since_ms: Some(1),
            state: Some(LogState::Bounced),
        })
        .unwrap()
        .is_empty()
    );
    assert_eq!(log.purge_before(u64::MAX, 10).unwrap(), Purge::Deleted(0));
}
