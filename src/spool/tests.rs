//! Spool tests on a real directory: commit, reopen (replay), attempts, compaction, torn and
//! corrupt records, large messages, the lock.

use super::*;
use crate::config::SpoolConfig;
use crate::testutil::TempDir;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;

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
    let mut segments = std::fs::read_dir(dir.path().join("journal")).unwrap();
    let segment = segments.next().unwrap().unwrap().path();
    assert!(segments.next().is_none(), "one segment expected");
    segment
}

/// Files in a spool subdirectory.
fn files_in(dir: &TempDir, sub: &str) -> usize {
    std::fs::read_dir(dir.path().join(sub)).unwrap().count()
}

fn open(dir: &TempDir) -> Spool {
    Spool::open(&config(dir.path(), 1024, 64 * 1024 * 1024), Metrics::new()).unwrap()
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
    let dir = TempDir::new("spool-test");
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

fn result(index: usize, status: RecipientStatus, reply: &str) -> RecipientResult {
    RecipientResult {
        index,
        status,
        reply: reply.into(),
        delay_notified: false,
    }
}

#[tokio::test]
async fn progress_within_an_attempt_survives_a_crash_and_keeps_the_schedule() {
    let dir = TempDir::new("spool-test");
    let spool = open(&dir);
    put(&spool, &["x@one.example", "y@two.example"], b"x\r\n").await;
    let m = next(&spool).await;
    // The group for one.example is done; two.example's is still running.
    spool
        .record_progress(
            &m.envelope.id,
            vec![result(0, RecipientStatus::Delivered, "250 ok")],
        )
        .await
        .unwrap();
    assert_eq!(spool.len(), 1);
    // Still in flight: not handed out a second time while its attempt runs.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), spool.next_due())
            .await
            .is_err()
    );
    drop(spool);

    // A crash before the attempt's record: the delivered recipient is not tried again, the
    // other one is, and the attempt it was in does not count.
    let spool = open(&dir);
    let again = next(&spool).await;
    assert_eq!(again.envelope.id, m.envelope.id);
    assert_eq!(again.attempts, 0);
    let states: Vec<_> = again.envelope.recipients.iter().map(|r| r.status).collect();
    assert_eq!(
        states,
        vec![RecipientStatus::Delivered, RecipientStatus::Pending]
    );
    assert_eq!(again.envelope.recipients[0].attempts, 1);
    assert_eq!(
        again.envelope.recipients[0].last_reply.as_deref(),
        Some("250 ok")
    );

    // The attempt's own record repeats the delivered recipient: it stays delivered, counted once.
    spool
        .record_attempt(
            &again.envelope.id,
            vec![
                result(0, RecipientStatus::Delivered, "250 ok"),
                result(1, RecipientStatus::Delivered, "250 fine"),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(spool.len(), 0);
    drop(spool);
    assert_eq!(open(&dir).len(), 0);
}

#[tokio::test]
async fn an_attempt_record_after_progress_counts_each_recipient_once() {
    let dir = TempDir::new("spool-test");
    let spool = open(&dir);
    put(&spool, &["x@one.example", "y@two.example"], b"x\r\n").await;
    let m = next(&spool).await;
    let id = m.envelope.id.clone();
    spool
        .record_progress(&id, vec![result(0, RecipientStatus::Delivered, "250 ok")])
        .await
        .unwrap();
    spool
        .record_attempt(
            &id,
            vec![
                result(0, RecipientStatus::Delivered, "250 ok"),
                result(1, RecipientStatus::Pending, "451 later"),
            ],
            Some(SystemTime::now()),
        )
        .await
        .unwrap();
    drop(spool);
    let spool = open(&dir);
    let again = next(&spool).await;
    assert_eq!(again.envelope.id, id);
    assert_eq!(again.attempts, 1, "one attempt");
    let attempts: Vec<u32> = again
        .envelope
        .recipients
        .iter()
        .map(|r| r.attempts)
        .collect();
    assert_eq!(attempts, vec![1, 1]);
}

#[tokio::test]
async fn finished_messages_do_not_come_back() {
    let dir = TempDir::new("spool-test");
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
    let dir = TempDir::new("spool-test");
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
    let dir = TempDir::new("spool-test");
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
    let dir = TempDir::new("spool-test");
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
    let dir = TempDir::new("spool-test");
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
    let dir = TempDir::new("spool-test");
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
    let dir = TempDir::new("spool-test");
    let spool = Spool::open(&config(dir.path(), 1024, 4096), Metrics::new()).unwrap();
    let keep = put(&spool, &["keep@example.net"], b"keep me\r\n").await;
    // Deliver everything else so the old segments become empty. Enough messages that the
    // `Done` records alone roll a segment after the oldest ones have emptied (keyed records
    // are 28 bytes longer than the CRC ones this count was first chosen for).
    for i in 0..80 {
        put(&spool, &[&format!("r{i}@example.net")], &vec![b'y'; 300]).await;
    }
    let mut finished = 0;
    while finished < 80 {
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
    let spool = Spool::open(&config(dir.path(), 1024, 4096), Metrics::new()).unwrap();
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
    let dir = TempDir::new("spool-test");
    let _spool = open(&dir);
    let second = Spool::open(&config(dir.path(), 1024, 1 << 20), Metrics::new());
    assert!(matches!(second, Err(SpoolError::Locked(_))));
}

#[tokio::test]
async fn damaged_length_field_sets_the_segment_aside_without_resync() {
    // Before issue 10 replay scanned for the next magic here and recovered the second
    // record; a scan inside a record's claimed length is what let planted records in, so the
    // segment is set aside whole for an operator (corrupt/) instead of cut as a torn tail.
    let dir = TempDir::new("spool-test");
    let spool = open(&dir);
    put(&spool, &["x@example.net"], b"first\r\n").await;
    put(&spool, &["y@example.net"], b"second\r\n").await;
    drop(spool);
    let segment = only_segment(&dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    // The first record's length now claims to run past the end of the segment.
    let past_the_end = (bytes.len() as u32).to_le_bytes();
    bytes[5..9].copy_from_slice(&past_the_end);
    std::fs::write(&segment, &bytes).unwrap();
    let spool = open(&dir);
    assert_eq!(
        spool.len(),
        0,
        "no record is looked for inside the damaged one"
    );
    assert_eq!(files_in(&dir, "corrupt"), 1);
    assert_eq!(
        std::fs::read(
            dir.path()
                .join("corrupt")
                .join(segment.file_name().unwrap())
        )
        .unwrap(),
        bytes,
        "the copy holds the acknowledged records for an operator"
    );
}

// ---- issue 10: message content never becomes spool structure --------------------------------

/// A record as the format before keyed records (`PSJ1`, CRC-32) wrote it.
fn legacy_record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = b"PSJ1".to_vec();
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[4..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn message_payload(envelope: &Envelope, data: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(envelope).unwrap();
    let mut payload = (json.len() as u32).to_le_bytes().to_vec();
    payload.extend_from_slice(&json);
    payload.extend_from_slice(data);
    payload
}

/// A message record of the keyed format (`PSJ3`) made with a key that is not the spool's: what
/// a client can compute at best.
fn keyed_record_under(secret: &[u8], segment: u64, offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = b"PSJ3".to_vec();
    out.push(1);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let json_len = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
    let (structure, data) = payload.split_at(payload.len().min(4 + json_len));
    out.extend_from_slice(structure);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut context = aws_lc_rs::hmac::Context::with_key(&key);
    context.update(&segment.to_le_bytes());
    context.update(&offset.to_le_bytes());
    context.update(&out);
    context.update(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(context.sign().as_ref());
    out
}

/// The envelope an attacker would plant: another sender, another recipient, no AUTH, and a
/// data file outside the spool.
fn forged_envelope(id: &str, data_file: &Path) -> Envelope {
    Envelope {
        id: SpoolId(id.into()),
        sender: "ceo@example.org".into(),
        recipients: vec![Recipient::new("attacker@evil.example".into())],
        received_at_ms: 1,
        data_file: Some(data_file.to_str().unwrap().into()),
        ..Envelope::default()
    }
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn legacy_segment_path(dir: &TempDir, seq: u64) -> PathBuf {
    dir.path().join("journal").join(format!("{seq:016}.log"))
}

/// Lays out an empty spool of the previous version: directories and no key.
fn legacy_spool(dir: &TempDir) {
    for sub in ["journal", "data", "tmp", "corrupt"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
}

fn legacy_segments_left(dir: &TempDir) -> usize {
    std::fs::read_dir(dir.path().join("journal"))
        .unwrap()
        .filter(|e| {
            std::fs::read(e.as_ref().unwrap().path())
                .unwrap()
                .starts_with(b"PSJ1")
        })
        .count()
}

#[tokio::test]
async fn planted_records_in_a_body_never_replay_after_a_torn_append() {
    let dir = TempDir::new("spool-test");
    let outside = TempDir::new("spool-test");
    std::fs::create_dir_all(outside.path()).unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, b"not for mailing\n").unwrap();
    let forged = forged_envelope("0190A1B2C3D0000010001", &secret);
    let mut body = b"Subject: harmless\r\n\r\n".to_vec();
    body.extend_from_slice(&legacy_record(1, &message_payload(&forged, b"")));
    body.extend_from_slice(&keyed_record_under(
        &[0x55; 32],
        1,
        0,
        &message_payload(&forged, b""),
    ));
    body.extend_from_slice(b"TORN-HERE and the rest of the message\r\n");
    let spool = open(&dir);
    put(&spool, &["friend@example.net"], &body).await;
    drop(spool);

    // A crash mid-append: the message's record ends inside its data, after the planted ones.
    let segment = only_segment(&dir);
    let bytes = std::fs::read(&segment).unwrap();
    let cut = bytes.windows(9).position(|w| w == b"TORN-HERE").unwrap();
    std::fs::write(&segment, &bytes[..cut]).unwrap();

    let spool = open(&dir);
    assert_eq!(spool.len(), 0, "nothing planted became a message");
    assert_eq!(files_in(&dir, "corrupt"), 0, "a torn append, not damage");
    assert_eq!(std::fs::read(&secret).unwrap(), b"not for mailing\n");
    drop(spool);
    assert_eq!(open(&dir).len(), 0);
}

#[tokio::test]
async fn a_forged_data_file_outside_the_spool_is_never_read_or_deleted() {
    let dir = TempDir::new("spool-test");
    let outside = TempDir::new("spool-test");
    std::fs::create_dir_all(outside.path()).unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, b"not for mailing\n").unwrap();
    legacy_spool(&dir);
    let good = Envelope {
        id: SpoolId("0190A1B2C3D0000020001".into()),
        sender: "a@example.org".into(),
        recipients: vec![Recipient::new("x@example.net".into())],
        received_at_ms: 1,
        ..Envelope::default()
    };
    let forged = forged_envelope("0190A1B2C3D0000020002", &secret);
    let done = serde_json::to_vec(&serde_json::json!({ "id": forged.id })).unwrap();
    let mut segment = legacy_record(1, &message_payload(&good, b"hello\r\n"));
    segment.extend_from_slice(&legacy_record(1, &message_payload(&forged, b"")));
    // Had the forgery been taken, this would delete the file it names.
    segment.extend_from_slice(&legacy_record(3, &done));
    std::fs::write(legacy_segment_path(&dir, 1), segment).unwrap();

    let spool = open(&dir);
    assert_eq!(spool.len(), 1, "only the message before the forgery");
    let m = next(&spool).await;
    assert_eq!(m.envelope.id, good.id);
    assert_eq!(read_all(&spool, &m.envelope).await, b"hello\r\n");
    assert_eq!(std::fs::read(&secret).unwrap(), b"not for mailing\n");
    assert_eq!(files_in(&dir, "corrupt"), 1, "set aside for an operator");
}

#[tokio::test]
async fn a_torn_tail_is_settled_once() {
    let dir = TempDir::new("spool-test");
    let spool = open(&dir);
    let first = put(&spool, &["x@example.net"], b"first\r\n").await;
    drop(spool);
    let segment = only_segment(&dir);
    let good = std::fs::read(&segment).unwrap();
    let mut torn = good.clone();
    torn.extend_from_slice(&good[..good.len() / 2]);
    std::fs::write(&segment, torn).unwrap();

    let spool = open(&dir);
    assert_eq!(files_in(&dir, "corrupt"), 0);
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        good,
        "cut back to the last good record"
    );
    let second = put(&spool, &["y@example.net"], b"second\r\n").await;
    drop(spool);

    // The torn segment is no longer the newest: it must read as clean, not as damage.
    let spool = open(&dir);
    assert_eq!(files_in(&dir, "corrupt"), 0);
    let index = spool.journal.index.lock().unwrap();
    assert!(index.messages.contains_key(&first) && index.messages.contains_key(&second));
    assert_eq!(index.messages.len(), 2);
}

#[tokio::test]
async fn a_spool_of_the_previous_format_replays_once_then_is_keyed() {
    let dir = TempDir::new("spool-test");
    legacy_spool(&dir);
    let envelope = |id: &str, rcpts: &[&str]| Envelope {
        id: SpoolId(id.into()),
        sender: "a@example.org".into(),
        recipients: rcpts
            .iter()
            .map(|r| Recipient::new(r.to_string()))
            .collect(),
        received_at_ms: 1,
        prefix: "X-Prefix: 1\r\n".into(),
        ..Envelope::default()
    };
    let a = envelope("0190A1B2C3D0000030001", &["x@example.net", "y@example.net"]);
    let b = envelope("0190A1B2C3D0000030002", &["z@example.net"]);
    let c = envelope("0190A1B2C3D0000030003", &["w@example.net"]);
    let mut update = a.recipients.clone();
    update[0].status = RecipientStatus::Delivered;
    let update = serde_json::json!({
        "id": a.id, "recipients": update, "attempts": 1, "next_attempt_ms": 2,
    });
    let mut first = legacy_record(1, &message_payload(&a, b"data of a\r\n"));
    first.extend_from_slice(&legacy_record(2, &serde_json::to_vec(&update).unwrap()));
    std::fs::write(legacy_segment_path(&dir, 1), first).unwrap();
    // The old binary died mid-append in its newest segment: read strictly (set aside).
    let mut second = legacy_record(1, &message_payload(&b, b"data of b\r\n"));
    let torn = legacy_record(1, &message_payload(&c, b"data of c\r\n"));
    second.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(legacy_segment_path(&dir, 2), second).unwrap();

    for round in 0..2 {
        let spool = open(&dir);
        assert_eq!(spool.len(), 2, "round {round}");
        assert_eq!(
            legacy_segments_left(&dir),
            0,
            "round {round}: rewritten keyed"
        );
        assert_eq!(
            files_in(&dir, "corrupt"),
            1,
            "round {round}: the torn legacy segment"
        );
        let envelope_of = |id: &SpoolId| {
            let index = spool.journal.index.lock().unwrap();
            index.messages.get(id).map(|e| e.envelope.clone())
        };
        let kept_a = envelope_of(&a.id).expect("a kept");
        assert_eq!(kept_a.recipients[0].status, RecipientStatus::Delivered);
        assert_eq!(kept_a.recipients[1].status, RecipientStatus::Pending);
        let kept_b = envelope_of(&b.id).expect("b kept");
        assert_eq!(
            read_all(&spool, &kept_a).await,
            b"X-Prefix: 1\r\ndata of a\r\n",
            "round {round}"
        );
        assert_eq!(
            read_all(&spool, &kept_b).await,
            b"X-Prefix: 1\r\ndata of b\r\n",
            "round {round}"
        );
    }
}

#[tokio::test]
async fn a_keyed_journal_without_its_key_is_not_opened() {
    let dir = TempDir::new("spool-test");
    let spool = open(&dir);
    put(&spool, &["x@example.net"], b"x\r\n").await;
    drop(spool);
    let key = dir.path().join("journal.key");
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    std::fs::write(&key, b"short").unwrap();
    let reopened = Spool::open(&config(dir.path(), 1024, 1 << 20), Metrics::new());
    assert!(matches!(reopened, Err(SpoolError::Key { .. })));
    std::fs::remove_file(&key).unwrap();
    let reopened = Spool::open(&config(dir.path(), 1024, 1 << 20), Metrics::new());
    assert!(matches!(reopened, Err(SpoolError::Key { .. })));
}

#[tokio::test]
async fn spool_directories_and_files_are_private_whatever_the_umask() {
    // SAFETY: umask only changes the mode mask of files created later; the old mask is put
    // back below. Other tests running meanwhile create files in their own temp dirs.
    let old = unsafe { libc::umask(0) };
    let dir = TempDir::new("spool-test");
    let spool = open(&dir);
    put(&spool, &["x@example.net"], b"x\r\n").await;
    put(&spool, &["y@example.net"], &vec![b'y'; 5000]).await;
    let id = spool.new_id();
    let mut receiving = spool.new_body(&id);
    receiving.write(&vec![b'z'; 5000]).await.unwrap();
    let tmp_file = dir.path().join("tmp").join(format!("{id}.eml"));
    let tmp_mode = mode_of(&tmp_file);
    drop(receiving);
    drop(spool);
    let segment = only_segment(&dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    let pos = bytes.windows(3).position(|w| w == b"x\r\n").unwrap();
    bytes[pos] ^= 0x20;
    std::fs::write(&segment, bytes).unwrap();
    let spool = open(&dir);
    unsafe { libc::umask(old) };
    assert_eq!(files_in(&dir, "corrupt"), 1);

    for sub in ["", "journal", "data", "tmp", "corrupt"] {
        assert_eq!(mode_of(&dir.path().join(sub)), 0o700, "{sub:?}");
    }
    assert_eq!(tmp_mode, 0o600, "tmp/");
    let mut files = vec![dir.path().join("lock"), dir.path().join("journal.key")];
    for sub in ["journal", "data", "corrupt"] {
        for entry in std::fs::read_dir(dir.path().join(sub)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        assert_eq!(mode_of(&file), 0o600, "{}", file.display());
    }
    drop(spool);
}

#[tokio::test]
async fn a_removed_message_does_not_come_back_and_others_stay() {
    let dir = TempDir::new("spool-test");
    let spool = open(&dir);
    let gone = put(&spool, &["x@example.net"], b"a\r\n").await;
    let kept = put(&spool, &["y@example.net"], b"b\r\n").await;
    spool.remove(&gone).await.unwrap();
    assert_eq!(spool.len(), 1);
    assert!(spool.envelope(&gone).is_none());
    assert!(matches!(
        spool.remove(&gone).await,
        Err(SpoolError::NotFound(_))
    ));
    drop(spool);
    let spool = open(&dir);
    let ids: Vec<SpoolId> = spool.queue().into_iter().map(|q| q.envelope.id).collect();
    assert_eq!(ids, vec![kept]);
}

#[tokio::test]
async fn a_message_removed_in_flight_refuses_its_attempt_record() {
    let dir = TempDir::new("spool-test");
    let spool = open(&dir);
    put(&spool, &["x@example.net"], b"a\r\n").await;
    let m = next(&spool).await;
    assert!(spool.queue()[0].in_flight);
    spool.remove(&m.envelope.id).await.unwrap();
    let results = vec![RecipientResult {
        index: 0,
        status: RecipientStatus::Pending,
        reply: "451 later".into(),
        delay_notified: false,
    }];
    let recorded = spool
        .record_attempt(&m.envelope.id, results, Some(SystemTime::now()))
        .await;
    assert!(matches!(recorded, Err(SpoolError::NotFound(_))));
    assert!(spool.is_empty());
}

#[tokio::test]
async fn flush_makes_deferred_messages_due_now() {
    let dir = TempDir::new("spool-test");
    let spool = open(&dir);
    let a = put(&spool, &["x@example.net"], b"a\r\n").await;
    let b = put(&spool, &["y@example.net"], b"b\r\n").await;
    let hour = SystemTime::now() + Duration::from_secs(3600);
    for _ in 0..2 {
        let m = next(&spool).await;
        let results = vec![RecipientResult {
            index: 0,
            status: RecipientStatus::Pending,
            reply: "451 later".into(),
            delay_notified: false,
        }];
        spool
            .record_attempt(&m.envelope.id, results, Some(hour))
            .await
            .unwrap();
    }
    let queue = spool.queue();
    assert_eq!(queue.len(), 2);
    assert_eq!(queue[0].envelope.id, a, "oldest first");
    assert!(
        queue
            .iter()
            .all(|q| q.next_attempt_ms >= unix_ms(hour) && q.attempts == 1)
    );
    assert!(matches!(
        spool.flush(Some(&SpoolId("0000000000000000000000".into()))),
        Err(SpoolError::NotFound(_))
    ));
    assert_eq!(spool.flush(Some(&b)).unwrap(), 1);
    assert_eq!(next(&spool).await.envelope.id, b);
    // b is in flight now: a flush of all moves only a.
    assert_eq!(spool.flush(None).unwrap(), 1);
    assert_eq!(next(&spool).await.envelope.id, a);
    assert_eq!(spool.flush(None).unwrap(), 0);
}

/// Overwrites, in every journal segment, each occurrence of `from` with `to` (same length):
/// what a read from the file returns afterwards differs from what was committed.
fn rewrite_segments(dir: &TempDir, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut found = false;
    for segment in std::fs::read_dir(dir.path().join("journal")).unwrap() {
        let path = segment.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let mut at = 0;
        while let Some(n) = bytes[at..].windows(from.len()).position(|w| w == from) {
            bytes[at + n..at + n + to.len()].copy_from_slice(to);
            at += n + to.len();
            found = true;
        }
        std::fs::write(&path, bytes).unwrap();
    }
    assert!(found, "the data is in a segment");
}

fn recent_bytes(spool: &Spool) -> usize {
    spool.journal.index.lock().unwrap().recent.bytes()
}

#[tokio::test]
async fn recent_data_is_read_from_memory_until_its_attempt_is_recorded() {
    let dir = TempDir::new("spool-test");
    let spool = open(&dir);
    let data = b"Subject: kept\r\n\r\nORIGINAL\r\n";
    put(&spool, &["x@one.example", "y@two.example"], data).await;
    assert_eq!(recent_bytes(&spool), data.len());
    // The file now says something else: a read that returns the original came from memory.
    rewrite_segments(&dir, b"ORIGINAL", b"REWRITTE");
    let m = next(&spool).await;
    let mut want = b"X-Prefix: 1\r\n".to_vec();
    want.extend_from_slice(data);
    assert_eq!(read_all(&spool, &m.envelope).await, want);
    // Each group of the attempt, and each address it tries, reads the same memory.
    assert_eq!(read_all(&spool, &m.envelope).await, want);
    spool
        .record_progress(
            &m.envelope.id,
            vec![result(0, RecipientStatus::Delivered, "250 ok")],
        )
        .await
        .unwrap();
    assert_eq!(read_all(&spool, &m.envelope).await, want);
    // The attempt's record ends it: the retry reads the file.
    spool
        .record_attempt(
            &m.envelope.id,
            vec![result(1, RecipientStatus::Pending, "451 later")],
            Some(SystemTime::now()),
        )
        .await
        .unwrap();
    assert_eq!(recent_bytes(&spool), 0);
    let m = next(&spool).await;
    let read = read_all(&spool, &m.envelope).await;
    assert!(read.ends_with(b"\r\n\r\nREWRITTE\r\n"), "{read:?}");
}

#[tokio::test]
async fn recent_data_is_exactly_what_the_journal_holds_across_compaction_and_replay() {
    let dir = TempDir::new("spool-test");
    let inline_max = 1024;
    let cfg = config(dir.path(), inline_max, 4096);
    let spool = Spool::open(&cfg, Metrics::new()).unwrap();
    let segment_of =
        |spool: &Spool, id: &SpoolId| spool.journal.index.lock().unwrap().messages[id].segment;
    // Kept messages inline at the limit and below (one byte more goes to a data file and is
    // never kept), each distinct, between fillers that are delivered at once: their segments
    // empty, rolling copies the kept ones forward.
    let sizes = [0usize, 1, 300, inline_max as usize - 1, inline_max as usize];
    let mut kept = Vec::new();
    for round in 0..4usize {
        for (n, &size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..size)
                .map(|i| b'a' + ((i + n + round) % 26) as u8)
                .collect();
            let id = put(&spool, &["keep@example.net"], &data).await;
            kept.push((id.clone(), segment_of(&spool, &id), data));
            for _ in 0..4 {
                put(&spool, &["fill@example.net"], &[b'f'; 200]).await;
            }
        }
    }
    let large = put(
        &spool,
        &["keep@example.net"],
        &vec![b'L'; inline_max as usize + 1],
    )
    .await;
    let mut held = Vec::new();
    while held.len() < kept.len() + 1 {
        let m = next(&spool).await;
        if m.envelope.recipients[0].address == "keep@example.net" {
            held.push(m.envelope);
            continue;
        }
        let done = vec![result(0, RecipientStatus::Delivered, "250 ok")];
        spool
            .record_attempt(&m.envelope.id, done, None)
            .await
            .unwrap();
    }
    let moved = kept
        .iter()
        .filter(|(id, segment, _)| segment_of(&spool, id) != *segment)
        .count();
    assert!(moved > 0, "compaction copied kept messages forward");
    let in_memory: usize = kept.iter().map(|(_, _, d)| d.len()).sum();
    assert_eq!(
        recent_bytes(&spool),
        in_memory,
        "the large message is not kept"
    );
    let mut from_memory = Vec::new();
    for envelope in &held {
        if envelope.id != large {
            from_memory.push((envelope.id.clone(), read_all(&spool, envelope).await));
        }
    }
    drop(spool);
    let spool = Spool::open(&cfg, Metrics::new()).unwrap();
    assert_eq!(
        recent_bytes(&spool),
        0,
        "replay starts with nothing in memory"
    );
    assert_eq!(from_memory.len(), kept.len());
    for (id, read) in from_memory {
        let envelope = spool.envelope(&id).unwrap();
        assert_eq!(read_all(&spool, &envelope).await, read);
        let (_, _, data) = kept.iter().find(|(i, _, _)| *i == id).unwrap();
        let mut want = b"X-Prefix: 1\r\n".to_vec();
        want.extend_from_slice(data);
        assert_eq!(read, want);
    }
}

#[tokio::test]
async fn recent_data_leaves_with_its_message() {
    let dir = TempDir::new("spool-test");
    let spool = open(&dir);
    let delivered = put(&spool, &["x@example.net"], b"one\r\n").await;
    let removed = put(&spool, &["y@example.net"], b"two!\r\n").await;
    assert_eq!(recent_bytes(&spool), 11);
    let m = next(&spool).await;
    assert_eq!(m.envelope.id, delivered);
    spool
        .record_attempt(
            &delivered,
            vec![result(0, RecipientStatus::Delivered, "250 ok")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(recent_bytes(&spool), 6);
    spool.remove(&removed).await.unwrap();
    assert_eq!(recent_bytes(&spool), 0);
    assert!(spool.is_empty());
}
