//! The journal's record format: typed, length-prefixed, authenticated with the spool's key.
//!
//! ```text
//! magic "PSJ3" | kind u8 | payload length u32 LE | payload | tag (32 bytes)
//! payload = structure | data      (data: a Message record's inline message; empty otherwise)
//! tag = HMAC-SHA256(key, segment u64 LE | offset u64 LE | magic | kind | length | structure
//!                        | CRC-32 of data u32 LE)
//! ```
//!
//! The payload of a `Message` record holds bytes a client chose (the inline message data), so
//! a record must be something only this spool can make: an unkeyed checksum let a client plant
//! a valid-looking record in a message body, which a replay that scanned for the next magic
//! then took for structure (issue 10). The tag is keyed with a secret that never leaves the
//! spool directory (`key.rs`), so no byte sequence a client sends verifies.
//!
//! Every byte of structure (header, envelope, update and done records) is under the HMAC
//! itself. The inline message data enters it through its CRC-32: a forged record needs a tag
//! for its own header, envelope and position, which only the key gives, whatever the data's
//! checksum; and against the damage a checksum is for (a bad sector, a torn write) the CRC is
//! as good as hashing the data. Hashing the data with SHA-256 instead (`PSJ2`, the first keyed
//! format) cost a 100 KB message about a third of the instructions it takes to accept it
//! (callgrind, issue 9), for no protection a local attacker with the spool's files would lack:
//! whoever can rewrite a segment can read the key beside it.
//!
//! The tag also binds the record to the segment and offset it was written at: every position
//! of the journal is written at most once (a failed append or a cut tail is never written
//! over; appends go on in a new segment), so a record that verifies is exactly the record this
//! spool wrote there. A valid record copied elsewhere (a segment restored under another
//! number, a record's bytes inside a later payload) does not verify, and a `Done` or `Update`
//! cannot be moved to act on another place in the history.
//!
//! A record is valid only if its magic, length and tag all agree, so a torn write at the tail
//! of a segment (crash during append) is recognised: nothing in it was ever acknowledged,
//! because the 250 follows the fsync. Kinds:
//! - `Message`: envelope (JSON) length u32 LE, envelope (together: the structure), then the
//!   message data for messages kept inline (empty for messages whose data is a file of its own).
//! - `Update`: the state of a message after a delivery attempt (JSON; all structure).
//! - `Done`: the message left the spool (JSON with its id; all structure).
//!
//! Older segments are still read, for the one replay after an upgrade; nothing writes them any
//! more: `PSJ2` records (the same layout, the tag over the whole payload) by [`decode`], and
//! `PSJ1` records (a CRC-32 of kind, length and payload instead of a tag) by [`decode_legacy`].
//!
//! Pure encoding and decoding; the files are handled by `journal.rs` and `replay.rs`.

use super::{Envelope, SpoolId};
use aws_lc_rs::{constant_time, hmac};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"PSJ3";
/// Keyed records whose tag covers the whole payload (before the inline data went under a CRC).
const WHOLE_PAYLOAD_MAGIC: &[u8; 4] = b"PSJ2";
const LEGACY_MAGIC: &[u8; 4] = b"PSJ1";
const HEADER_LEN: usize = 4 + 1 + 4;
const TAG_LEN: usize = 32;
const LEGACY_TRAILER_LEN: usize = 4;
/// Largest payload accepted when reading; guards against a corrupt length field.
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
/// Bytes of a spool key.
pub(crate) const KEY_LEN: usize = 32;

/// The secret that authenticates this spool's records.
pub(crate) struct RecordKey(hmac::Key);

impl RecordKey {
    pub(crate) fn new(secret: &[u8; KEY_LEN]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The tag of a record whose header and structure are `head_and_structure` (contiguous in
    /// the record) and whose inline data is `data`.
    fn tag(&self, at: Position, head_and_structure: &[u8], data: &[u8]) -> hmac::Tag {
        let mut context = self.context(at);
        context.update(head_and_structure);
        context.update(&crc32fast::hash(data).to_le_bytes());
        context.sign()
    }

    /// The tag of a `PSJ2` record: the whole record before the tag, data included.
    fn whole_payload_tag(&self, at: Position, record_without_tag: &[u8]) -> hmac::Tag {
        let mut context = self.context(at);
        context.update(record_without_tag);
        context.sign()
    }

    fn context(&self, at: Position) -> hmac::Context {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(&at.segment.to_le_bytes());
        context.update(&at.offset.to_le_bytes());
        context
    }
}

/// Where a record starts: its segment's number and its byte offset in that segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
}

/// Record kinds as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Message = 1,
    Update = 2,
    Done = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Kind::Message),
            2 => Some(Kind::Update),
            3 => Some(Kind::Done),
            _ => None,
        }
    }
}

/// The state a delivery attempt leaves behind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UpdateRecord {
    pub(crate) id: SpoolId,
    pub(crate) recipients: Vec<super::Recipient>,
    pub(crate) attempts: u32,
    pub(crate) next_attempt_ms: u64,
}

/// A message has left the spool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DoneRecord {
    pub(crate) id: SpoolId,
}

/// One decoded record.
#[derive(Debug)]
pub(crate) enum Record {
    /// A message; `data_offset` is where its inline data starts inside the record's payload.
    Message {
        envelope: Box<Envelope>,
        data_offset: usize,
        data_len: usize,
    },
    Update(UpdateRecord),
    Done(DoneRecord),
}

/// Outcome of reading one record from a buffer.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A valid record of `len` bytes in total, payload starting at `payload_start`.
    Record {
        record: Record,
        len: usize,
        payload_start: usize,
    },
    /// The buffer ends inside a record (a torn tail, or simply the end).
    Incomplete,
    /// The bytes are not a valid record. `claimed_len` is the length its header claims when
    /// the header is well-formed and the claimed record lies inside the buffer: where the next
    /// record would start, if the damage is not in the length field itself.
    Corrupt {
        why: String,
        claimed_len: Option<usize>,
    },
}

impl Decoded {
    fn corrupt(why: impl Into<String>) -> Self {
        Decoded::Corrupt {
            why: why.into(),
            claimed_len: None,
        }
    }
}

/// Encodes a message record: envelope plus inline data (possibly empty). Also returns where
/// the data starts inside the encoded record.
pub(crate) fn encode_message(
    key: &RecordKey,
    at: Position,
    envelope: &Envelope,
    data: &[u8],
) -> (Vec<u8>, usize) {
    let json = serde_json::to_vec(envelope).expect("envelope serialises");
    let structure = [&(json.len() as u32).to_le_bytes()[..], &json];
    let data_start = HEADER_LEN + 4 + json.len();
    (frame(key, at, Kind::Message, &structure, data), data_start)
}

/// Encodes an update record.
pub(crate) fn encode_update(key: &RecordKey, at: Position, update: &UpdateRecord) -> Vec<u8> {
    let payload = serde_json::to_vec(update).expect("update serialises");
    frame(key, at, Kind::Update, &[&payload], &[])
}

/// Encodes a done record.
pub(crate) fn encode_done(key: &RecordKey, at: Position, done: &DoneRecord) -> Vec<u8> {
    let payload = serde_json::to_vec(done).expect("done serialises");
    frame(key, at, Kind::Done, &[&payload], &[])
}

/// Writes header, structure and data once into the record (a 100 KB inline message is copied
/// only here) and appends the tag.
fn frame(key: &RecordKey, at: Position, kind: Kind, structure: &[&[u8]], data: &[u8]) -> Vec<u8> {
    let structure_len: usize = structure.iter().map(|part| part.len()).sum();
    let payload_len = structure_len + data.len();
    let mut out = Vec::with_capacity(HEADER_LEN + payload_len + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    for part in structure {
        out.extend_from_slice(part);
    }
    let tag = key.tag(at, &out, data);
    out.extend_from_slice(data);
    out.extend_from_slice(tag.as_ref());
    out
}

/// How many leading bytes of a payload are structure (under the HMAC itself); the rest is
/// inline message data (under its CRC). Read before the tag is checked: a damaged envelope
/// length moves the split, and the tag then fails.
fn structure_len(kind: Kind, payload: &[u8]) -> usize {
    match kind {
        Kind::Message if payload.len() >= 4 => {
            let json_len = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
            payload.len().min(4usize.saturating_add(json_len))
        }
        Kind::Message | Kind::Update | Kind::Done => payload.len(),
    }
}

/// Whether `segment_start` (the first bytes of a segment) is a segment of `PSJ1` records.
pub(crate) fn is_legacy(segment_start: &[u8]) -> bool {
    segment_start.starts_with(LEGACY_MAGIC)
}

/// The total length the record header at the start of `buf` claims, if the header is
/// well-formed and the claimed record fits in `buf`; nothing is verified.
pub(crate) fn claimed_len(buf: &[u8]) -> Option<usize> {
    let magic = if buf.starts_with(WHOLE_PAYLOAD_MAGIC) {
        WHOLE_PAYLOAD_MAGIC
    } else {
        MAGIC
    };
    match header(buf, magic, TAG_LEN) {
        Ok((_, total)) if total <= buf.len() => Some(total),
        _ => None,
    }
}

/// Reads a record header: its kind and the record's total length (header, payload, trailer).
fn header(buf: &[u8], magic: &[u8; 4], trailer_len: usize) -> Result<(Kind, usize), Decoded> {
    if buf.len() < HEADER_LEN {
        return Err(Decoded::Incomplete);
    }
    if &buf[..4] != magic {
        return Err(Decoded::corrupt("bad magic"));
    }
    let Some(kind) = Kind::from_byte(buf[4]) else {
        return Err(Decoded::corrupt(format!("unknown record kind {}", buf[4])));
    };
    let len = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(Decoded::corrupt(format!(
            "payload length {len} is implausible"
        )));
    }
    Ok((kind, HEADER_LEN + len + trailer_len))
}

/// Decodes the record at the start of `buf`, which the journal read at `at`.
/// Reads this format's records and the `PSJ2` ones before it.
pub(crate) fn decode(buf: &[u8], key: &RecordKey, at: Position) -> Decoded {
    let whole_payload = buf.starts_with(WHOLE_PAYLOAD_MAGIC);
    let magic = if whole_payload {
        WHOLE_PAYLOAD_MAGIC
    } else {
        MAGIC
    };
    let (kind, total) = match header(buf, magic, TAG_LEN) {
        Ok(header) => header,
        Err(decoded) => return decoded,
    };
    if buf.len() < total {
        return Decoded::Incomplete;
    }
    let body_end = total - TAG_LEN;
    let expected = if whole_payload {
        key.whole_payload_tag(at, &buf[..body_end])
    } else {
        let data_start = HEADER_LEN + structure_len(kind, &buf[HEADER_LEN..body_end]);
        key.tag(at, &buf[..data_start], &buf[data_start..body_end])
    };
    if constant_time::verify_slices_are_equal(expected.as_ref(), &buf[body_end..total]).is_err() {
        return Decoded::Corrupt {
            why: "authentication tag mismatch".into(),
            claimed_len: Some(total),
        };
    }
    finish(kind, &buf[HEADER_LEN..body_end], total)
}

/// Decodes the `PSJ1` record (CRC-32, no key) at the start of `buf`.
pub(crate) fn decode_legacy(buf: &[u8]) -> Decoded {
    let (kind, total) = match header(buf, LEGACY_MAGIC, LEGACY_TRAILER_LEN) {
        Ok(header) => header,
        Err(decoded) => return decoded,
    };
    if buf.len() < total {
        return Decoded::Incomplete;
    }
    let body_end = total - LEGACY_TRAILER_LEN;
    let stored = u32::from_le_bytes(buf[body_end..total].try_into().expect("4 bytes"));
    if crc32fast::hash(&buf[4..body_end]) != stored {
        return Decoded::Corrupt {
            why: "checksum mismatch".into(),
            claimed_len: Some(total),
        };
    }
    finish(kind, &buf[HEADER_LEN..body_end], total)
}

/// Parses an authenticated payload. A payload that does not parse is still corrupt, but its
/// length can be trusted: the tag covered it.
fn finish(kind: Kind, payload: &[u8], total: usize) -> Decoded {
    match parse_payload(kind, payload) {
        Ok(record) => Decoded::Record {
            record,
            len: total,
            payload_start: HEADER_LEN,
        },
        Err(why) => Decoded::Corrupt {
            why,
            claimed_len: Some(total),
        },
    }
}

fn parse_payload(kind: Kind, payload: &[u8]) -> Result<Record, String> {
    match kind {
        Kind::Message => {
            if payload.len() < 4 {
                return Err("message record too short".into());
            }
            let json_len = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
            if 4 + json_len > payload.len() {
                return Err("envelope length past the record".into());
            }
            let envelope = serde_json::from_slice::<Envelope>(&payload[4..4 + json_len])
                .map_err(|e| format!("envelope: {e}"))?;
            super::check_data_file(&envelope)?;
            Ok(Record::Message {
                envelope: Box::new(envelope),
                data_offset: 4 + json_len,
                data_len: payload.len() - 4 - json_len,
            })
        }
        Kind::Update => serde_json::from_slice(payload)
            .map(Record::Update)
            .map_err(|e| format!("update: {e}")),
        Kind::Done => serde_json::from_slice(payload)
            .map(Record::Done)
            .map_err(|e| format!("done: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Recipient, RecipientStatus};

    const AT: Position = Position {
        segment: 7,
        offset: 4096,
    };

    fn key() -> RecordKey {
        RecordKey::new(&[7; KEY_LEN])
    }

    fn envelope() -> Envelope {
        Envelope {
            id: SpoolId("0001".into()),
            sender: "a@example.org".into(),
            recipients: vec![Recipient::new("b@example.net".into())],
            ..Envelope::default()
        }
    }

    /// A record as the format before keyed records wrote it.
    fn legacy_frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
        let mut out = LEGACY_MAGIC.to_vec();
        out.push(kind as u8);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        let crc = crc32fast::hash(&out[4..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn message_round_trip() {
        let (bytes, data_start) =
            encode_message(&key(), AT, &envelope(), b"Subject: x\r\n\r\nhi\r\n");
        match decode(&bytes, &key(), AT) {
            Decoded::Record {
                record:
                    Record::Message {
                        envelope,
                        data_offset,
                        data_len,
                    },
                len,
                payload_start,
            } => {
                assert_eq!(len, bytes.len());
                assert_eq!(envelope.recipients[0].status, RecipientStatus::Pending);
                let start = payload_start + data_offset;
                assert_eq!(start, data_start);
                assert_eq!(&bytes[start..start + data_len], b"Subject: x\r\n\r\nhi\r\n");
            }
            other => panic!("{other:?}"),
        }
    }

    fn decoded_envelope(bytes: &[u8]) -> Envelope {
        match decode(bytes, &key(), AT) {
            Decoded::Record {
                record: Record::Message { envelope, .. },
                ..
            } => *envelope,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn require_tls_and_tls_required_no_replay_as_written() {
        let mut written = envelope();
        written.require_tls = true;
        let (bytes, _) = encode_message(&key(), AT, &written, b"x\r\n");
        let read = decoded_envelope(&bytes);
        assert!(read.require_tls);
        assert!(!read.tls_required_no);
        written.require_tls = false;
        written.tls_required_no = true;
        let (bytes, _) = encode_message(&key(), AT, &written, b"x\r\n");
        let read = decoded_envelope(&bytes);
        assert!(!read.require_tls);
        assert!(read.tls_required_no);
    }

    #[test]
    fn records_written_before_require_tls_read_it_as_false() {
        // The envelope JSON as earlier versions wrote it: neither field present.
        let mut json = serde_json::to_value(envelope()).unwrap();
        let fields = json.as_object_mut().unwrap();
        assert!(
            !fields.contains_key("require_tls"),
            "unset flags are not written"
        );
        fields.remove("tls_required_no");
        let json = serde_json::to_vec(&json).unwrap();
        let structure = [&(json.len() as u32).to_le_bytes()[..], &json];
        let bytes = frame(&key(), AT, Kind::Message, &structure, b"x\r\n");
        let read = decoded_envelope(&bytes);
        assert!(!read.require_tls);
        assert!(!read.tls_required_no);
        // A PSJ2 record of then, too.
        let payload = &bytes[HEADER_LEN..bytes.len() - TAG_LEN];
        let old = whole_payload_frame(&key(), AT, Kind::Message, payload);
        assert!(!decoded_envelope(&old).require_tls);
    }

    #[test]
    fn torn_tail_is_incomplete_and_flipped_bit_is_corrupt() {
        let bytes = encode_done(
            &key(),
            AT,
            &DoneRecord {
                id: SpoolId("x".into()),
            },
        );
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1], &key(), AT),
            Decoded::Incomplete
        ));
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        assert!(matches!(
            decode(&bad, &key(), AT),
            Decoded::Corrupt { claimed_len: Some(n), .. } if n == bytes.len()
        ));
    }

    #[test]
    fn a_record_verifies_only_under_its_key_and_at_its_position() {
        let done = DoneRecord {
            id: SpoolId("x".into()),
        };
        let bytes = encode_done(&key(), AT, &done);
        assert!(matches!(decode(&bytes, &key(), AT), Decoded::Record { .. }));
        let other_key = RecordKey::new(&[8; KEY_LEN]);
        let moved = [
            Position {
                segment: AT.segment + 1,
                ..AT
            },
            Position {
                offset: AT.offset + 1,
                ..AT
            },
        ];
        assert!(matches!(
            decode(&bytes, &other_key, AT),
            Decoded::Corrupt { .. }
        ));
        for at in moved {
            assert!(
                matches!(decode(&bytes, &key(), at), Decoded::Corrupt { .. }),
                "{at:?}"
            );
        }
    }

    /// A message record of the first keyed format, its tag over the whole payload.
    fn whole_payload_frame(key: &RecordKey, at: Position, kind: Kind, payload: &[u8]) -> Vec<u8> {
        let mut out = WHOLE_PAYLOAD_MAGIC.to_vec();
        out.push(kind as u8);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        let tag = key.whole_payload_tag(at, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    #[test]
    fn every_byte_of_a_message_record_is_checked() {
        let data = b"Subject: x\r\n\r\nhello\r\n";
        let (bytes, data_start) = encode_message(&key(), AT, &envelope(), data);
        assert!(matches!(decode(&bytes, &key(), AT), Decoded::Record { .. }));
        // Magic, kind, length, envelope length, envelope, inline data, tag: a flipped bit
        // anywhere is refused (never taken for another valid record).
        for at_byte in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at_byte] ^= 0x10;
            assert!(
                !matches!(decode(&bad, &key(), AT), Decoded::Record { .. }),
                "bit flipped at byte {at_byte} (data starts at {data_start})"
            );
        }
    }

    #[test]
    fn records_of_the_first_keyed_format_are_still_read() {
        let (current, _) = encode_message(&key(), AT, &envelope(), b"hello\r\n");
        let payload = &current[HEADER_LEN..current.len() - TAG_LEN];
        let old = whole_payload_frame(&key(), AT, Kind::Message, payload);
        match decode(&old, &key(), AT) {
            Decoded::Record {
                record: Record::Message { data_len, .. },
                len,
                ..
            } => {
                assert_eq!(len, old.len());
                assert_eq!(data_len, b"hello\r\n".len());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(claimed_len(&old), Some(old.len()));
        // Each format's tag verifies only under its own magic.
        let mut relabelled = old.clone();
        relabelled[..4].copy_from_slice(MAGIC);
        assert!(matches!(
            decode(&relabelled, &key(), AT),
            Decoded::Corrupt { .. }
        ));
        let mut relabelled = current.clone();
        relabelled[..4].copy_from_slice(WHOLE_PAYLOAD_MAGIC);
        assert!(matches!(
            decode(&relabelled, &key(), AT),
            Decoded::Corrupt { .. }
        ));
        // The first keyed format is as unforgeable without the key.
        let other_key = RecordKey::new(&[8; KEY_LEN]);
        assert!(matches!(
            decode(&old, &other_key, AT),
            Decoded::Corrupt { .. }
        ));
    }

    #[test]
    fn legacy_records_are_read_by_checksum_and_never_as_keyed_ones() {
        let payload = serde_json::to_vec(&DoneRecord {
            id: SpoolId("x".into()),
        })
        .unwrap();
        let legacy = legacy_frame(Kind::Done, &payload);
        assert!(is_legacy(&legacy));
        assert!(matches!(
            decode_legacy(&legacy),
            Decoded::Record { record: Record::Done(d), len, .. } if d.id.0 == "x" && len == legacy.len()
        ));
        assert!(matches!(
            decode(&legacy, &key(), AT),
            Decoded::Corrupt {
                claimed_len: None,
                ..
            }
        ));
        let mut bad = legacy.clone();
        bad[10] ^= 1;
        assert!(matches!(decode_legacy(&bad), Decoded::Corrupt { .. }));
    }

    #[test]
    fn a_data_file_the_spool_did_not_name_makes_the_record_corrupt() {
        let id = "0190A1B2C3D000001ABCD";
        for forged in [
            "/etc/passwd",
            "../../etc/passwd",
            "sub/0190A1B2C3D000001ABCD.eml",
            "0190A1B2C3D000001ABCE.eml",
            "0190A1B2C3D000001ABCD.eml/..",
            "0190a1b2c3d000001abcd.eml",
            "",
        ] {
            let mut envelope = envelope();
            envelope.id = SpoolId(id.into());
            envelope.data_file = Some(forged.into());
            let (bytes, _) = encode_message(&key(), AT, &envelope, b"");
            assert!(
                matches!(
                    decode(&bytes, &key(), AT),
                    Decoded::Corrupt { claimed_len: Some(n), .. } if n == bytes.len()
                ),
                "{forged:?}"
            );
            // The same forgery in an old-format record, as a client could have planted it.
            let payload = &bytes[HEADER_LEN..bytes.len() - TAG_LEN];
            assert!(
                matches!(
                    decode_legacy(&legacy_frame(Kind::Message, payload)),
                    Decoded::Corrupt { .. }
                ),
                "{forged:?}"
            );
        }
        let mut envelope = envelope();
        envelope.id = SpoolId(id.into());
        envelope.data_file = Some(format!("{id}.eml"));
        let (bytes, _) = encode_message(&key(), AT, &envelope, b"");
        assert!(matches!(decode(&bytes, &key(), AT), Decoded::Record { .. }));
    }
}
