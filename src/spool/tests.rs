//! Spool tests on a real directory: commit, reopen (replay), attempts, compaction, torn and
//! corrupt records, large messages, the lock.

use super::*;
use crate::config::SpoolConfig;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use tokio::io::AsyncReadExt;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "postern-spool-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(path: &Path, inline_max: u64, segment_max: u64) -> SpoolConfig {
    SpoolConfig {
        path: path.to_path_buf(),
        inline_max_bytes: inline_max,
        commit_batch: 64,
        segment_max_bytes: segment_max,
    }
}

/// The one journal segment of a spool that was opened once.
fn only_segment(dir: &TempDir) -> PathBuf {
    let mut segments = std::fs::read_dir(dir.0.join("journal")).unwrap();
    let segment = segments.next().unwrap().unwrap().path();
    assert!(segments.next().is_none(), "one segment expected");
    segment
}

/// Files in a spool subdirectory.
fn files_in(dir: &TempDir, sub: &str) -> usize {
    std::fs::read_dir(dir.0.join(sub)).unwrap().count()
}

fn open(dir: &TempDir) -> Spool {
    Spool::open(&config(&dir.0, 1024, 64 * 1024 * 1024), Metrics::new()).unwrap()
}

async fn put(spool: &Spool, rcpts: &[&str], data: &[u8]) -> SpoolId {
    let id = spool.new_id();
    let mut body = spool.new_body(&id);
    body.write(data).await.unwrap();
    let envelope = Envelope {
        id: id.clone(),
        sender: "a@example.org".into(),
        recipients: rcpts
            .iter()
            .map(|r| Recipient::new(r.to_string()))
            .collect(),
        received_at_ms: unix_ms(SystemTime::now()),
        prefix: "X-Prefix: 1\r\n".into(),
        ..Envelope::default()
    };
    spool.commit(envelope, body).await.unwrap();
    id
}

async fn read_all(spool: &Spool, envelope: &Envelope) -> Vec<u8> {
    let mut reader = spool.open_message(envelope).await.unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    out
}

async fn next(spool: &Spool) -> QueuedMessage {
    tokio::time::timeout(Duration::from_secs(5), spool.next_due())
        .await
        .expect("a due message")
}

#[tokio::test]
async fn committed_messages_survive_reopen() {
    let dir = TempDir::new();
    let spool = open(&dir);
    let a = put(&spool, &["x@example.net"], b"Subject: a\r\n\r\nA\r\n").await;
    let b = put(
        &spool,
        &["y@example.net", "z@example.net"],
        b"Subject: b\r\n\r\nB\r\n",
    )
    .await;
    drop(spool);
    let spool = open(&dir);
    assert_eq!(spool.len(), 2);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let m = next(&spool).await;
        let bytes = read_all(&spool, &m.envelope).await;
        assert!(bytes.starts_with(b"X-Prefix: 1\r\nSubject: "));
        seen.push(m.envelope.id);
    }
    seen.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn finished_messages_do_not_come_back() {
    let dir = TempDir::new();
    let spool = open(&dir);
    put(&spool, &["x@example.net", "y@example.net"], b"x\r\n").await;
    let m = next(&spool).await;
    let results = vec![
        RecipientResult {
            index: 0,
            status: RecipientStatus::Delivered,
            reply: "250 ok".into(),
            delay_notified: false,
        },
        RecipientResult {
            index: 1,
            status: RecipientStatus::Pending,
            reply: "451 later".into(),
            delay_notified: false,
        },
    ];
    let later = SystemTime::now() + Duration::from_secs(3600);
    spool
        .record_attempt(&m.envelope.id, results, Some(later))
        .await
        .unwrap();
    drop(spool);

    let spool = open(&dir);
    assert_eq!(spool.len(), 1, "one recipient still pending");
    // Not due for an hour.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), spool.next_due())
            .await
            .is_err()
    );
    drop(spool);

    // Finish it and reopen: nothing left.
    let spool = open(&dir);
    let results = vec![RecipientResult {
        index: 1,
        status: RecipientStatus::Failed,
        reply: "550 no".into(),
        delay_notified: false,
    }];
    spool
        .record_attempt(&m.envelope.id, results, None)
        .await
        .unwrap();
    assert_eq!(spool.len(), 0);
    drop(spool);
    assert_eq!(open(&dir).len(), 0);
}

#[tokio::test]
async fn pending_state_survives_reopen() {
    let dir = TempDir::new();
    let spool = open(&dir);
    put(&spool, &["x@example.net", "y@example.net"], b"x\r\n").await;
    let m = next(&spool).await;
    let results = vec![
        RecipientResult {
            index: 0,
            status: RecipientStatus::Delivered,
            reply: "250 ok".into(),
            delay_notified: false,
        },
        RecipientResult {
            index: 1,
            status: RecipientStatus::Pending,
            reply: "451 later".into(),
            delay_notified: false,
        },
    ];
    spool
        .record_attempt(&m.envelope.id, results, Some(SystemTime::now()))
        .await
        .unwrap();
    drop(spool);
    let spool = open(&dir);
    let m = next(&spool).await;
    assert_eq!(m.attempts, 1);
    assert_eq!(m.envelope.recipients[0].status, RecipientStatus::Delivered);
    assert_eq!(m.envelope.recipients[1].status, RecipientStatus::Pending);
    assert_eq!(
        m.envelope.recipients[1].last_reply.as_deref(),
        Some("451 later")
    );
}

#[tokio::test]
async fn large_messages_stream_to_their_own_file() {
    let dir = TempDir::new();
    let spool = open(&dir);
    let data = vec![b'x'; 10_000];
    put(&spool, &["x@example.net"], &data).await;
    assert_eq!(files_in(&dir, "data"), 1);
    drop(spool);
    let spool = open(&dir);
    let m = next(&spool).await;
    assert!(m.envelope.data_file.is_some());
    assert_eq!(read_all(&spool, &m.envelope).await.len(), 13 + 10_000);
    let results = vec![RecipientResult {
        index: 0,
        status: RecipientStatus::Delivered,
        reply: "250".into(),
        delay_notified: false,
    }];
    spool
        .record_attempt(&m.envelope.id, results, None)
        .await
        .unwrap();
    assert_eq!(files_in(&dir, "data"), 0, "data file removed");
}

#[tokio::test]
async fn abandoned_large_body_leaves_no_file() {
    let dir = TempDir::new();
    let spool = open(&dir);
    let id = spool.new_id();
    let mut body = spool.new_body(&id);
    body.write(&vec![b'x'; 5000]).await.unwrap();
    assert_eq!(files_in(&dir, "tmp"), 1);
    drop(body);
    assert_eq!(files_in(&dir, "tmp"), 0);
}

#[tokio::test]
async fn torn_tail_is_ignored_and_earlier_records_kept() {
    let dir = TempDir::new();
    let spool = open(&dir);
    put(&spool, &["x@example.net"], b"x\r\n").await;
    drop(spool);
    // Simulate a crash in the middle of an append: half a record at the end of the segment.
    let segment = only_segment(&dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    let half = bytes[..bytes.len() / 2].to_vec();
    bytes.extend_from_slice(&half);
    std::fs::write(&segment, bytes).unwrap();
    let spool = open(&dir);
    assert_eq!(spool.len(), 1);
    assert_eq!(files_in(&dir, "corrupt"), 0);
}

#[tokio::test]
async fn corrupt_record_is_set_aside_and_later_records_recovered() {
    let dir = TempDir::new();
    let spool = open(&dir);
    put(&spool, &["x@example.net"], b"first\r\n").await;
    put(&spool, &["y@example.net"], b"second\r\n").await;
    drop(spool);
    let segment = only_segment(&dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    let pos = bytes.windows(7).position(|w| w == b"first\r\n").unwrap();
    bytes[pos] ^= 0x20;
    std::fs::write(&segment, bytes).unwrap();
    let spool = open(&dir);
    assert_eq!(
        spool.len(),
        1,
        "the intact record after the corrupt one is recovered"
    );
    assert_eq!(files_in(&dir, "corrupt"), 1, "copy kept for an operator");
}

#[tokio::test]
async fn rolling_compacts_old_segments() {
    let dir = TempDir::new();
    let spool = Spool::open(&config(&dir.0, 1024, 4096), Metrics::new()).unwrap();
    let keep = put(&spool, &["keep@example.net"], b"keep me\r\n").await;
    // Deliver everything else so the old segments become empty.
    for i in 0..40 {
        put(&spool, &[&format!("r{i}@example.net")], &vec![b'y'; 300]).await;
    }
    let mut finished = 0;
    while finished < 40 {
        let m = next(&spool).await;
        if m.envelope.id == keep {
            let r = vec![RecipientResult {
                index: 0,
                status: RecipientStatus::Pending,
                reply: "451".into(),
                delay_notified: false,
            }];
            spool
                .record_attempt(
                    &m.envelope.id,
                    r,
                    Some(SystemTime::now() + Duration::from_secs(3600)),
                )
                .await
                .unwrap();
            continue;
        }
        let r = vec![RecipientResult {
            index: 0,
            status: RecipientStatus::Delivered,
            reply: "250".into(),
            delay_notified: false,
        }];
        spool.record_attempt(&m.envelope.id, r, None).await.unwrap();
        finished += 1;
    }
    let segments = files_in(&dir, "journal");
    assert!(segments <= 2, "old segments deleted, {segments} left");
    drop(spool);
    let spool = Spool::open(&config(&dir.0, 1024, 4096), Metrics::new()).unwrap();
    assert_eq!(spool.len(), 1);
    let index = spool.journal.index.lock().unwrap();
    let entry = index.messages.get(&keep).unwrap();
    assert_eq!(
        entry.envelope.recipients[0].last_reply.as_deref(),
        Some("451")
    );
}

#[tokio::test]
async fn second_process_cannot_share_the_spool() {
    let dir = TempDir::new();
    let _spool = open(&dir);
    let second = Spool::open(&config(&dir.0, 1024, 1 << 20), Metrics::new());
    assert!(matches!(second, Err(SpoolError::Locked(_))));
}

#[tokio::test]
async fn damaged_length_field_does_not_drop_later_records() {
    let dir = TempDir::new();
    let spool = open(&dir);
    put(&spool, &["x@example.net"], b"first\r\n").await;
    put(&spool, &["y@example.net"], b"second\r\n").await;
    drop(spool);
    let segment = only_segment(&dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    // The first record's length now claims to run past the end of the segment.
    let past_the_end = (bytes.len() as u32).to_le_bytes();
    bytes[5..9].copy_from_slice(&past_the_end);
    std::fs::write(&segment, bytes).unwrap();
    let spool = open(&dir);
    assert_eq!(
        spool.len(),
        1,
        "the record after the damaged one is recovered"
    );
    assert_eq!(files_in(&dir, "corrupt"), 1);
}
