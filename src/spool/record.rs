//! The journal's record format: typed, length-prefixed, checksummed.
//!
//! ```text
//! magic "PSJ1" | kind u8 | payload length u32 LE | payload | CRC-32 u32 LE (of kind, length, payload)
//! ```
//!
//! A record is valid only if its magic, length and checksum all agree, so a torn write at the
//! tail of a segment (crash during append) is recognised and ignored: nothing in it was ever
//! acknowledged, because the 250 follows the fsync. Kinds:
//! - `Message`: envelope (JSON) length u32 LE, envelope, then the message data for messages
//!   kept inline (empty for messages whose data is a file of its own).
//! - `Update`: the state of a message after a delivery attempt (JSON).
//! - `Done`: the message left the spool (JSON with its id).
//!
//! Pure encoding and decoding; the files are handled by `journal.rs`.

use super::{Envelope, SpoolId};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"PSJ1";
const HEADER_LEN: usize = 4 + 1 + 4;
const TRAILER_LEN: usize = 4;
/// Largest payload accepted when reading; guards against a corrupt length field.
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

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
    /// The bytes are not a valid record.
    Corrupt(String),
}

/// Encodes a message record: envelope plus inline data (possibly empty). Also returns where
/// the data starts inside the encoded record.
pub(crate) fn encode_message(envelope: &Envelope, data: &[u8]) -> (Vec<u8>, usize) {
    let json = serde_json::to_vec(envelope).expect("envelope serialises");
    let mut payload = Vec::with_capacity(4 + json.len() + data.len());
    payload.extend_from_slice(&(json.len() as u32).to_le_bytes());
    payload.extend_from_slice(&json);
    payload.extend_from_slice(data);
    (frame(Kind::Message, &payload), HEADER_LEN + 4 + json.len())
}

/// Encodes an update record.
pub(crate) fn encode_update(update: &UpdateRecord) -> Vec<u8> {
    frame(
        Kind::Update,
        &serde_json::to_vec(update).expect("update serialises"),
    )
}

/// Encodes a done record.
pub(crate) fn encode_done(done: &DoneRecord) -> Vec<u8> {
    frame(
        Kind::Done,
        &serde_json::to_vec(done).expect("done serialises"),
    )
}

fn frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[4..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the record at the start of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < HEADER_LEN {
        return Decoded::Incomplete;
    }
    if &buf[..4] != MAGIC {
        return Decoded::Corrupt("bad magic".into());
    }
    let Some(kind) = Kind::from_byte(buf[4]) else {
        return Decoded::Corrupt(format!("unknown record kind {}", buf[4]));
    };
    let len = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    if len > MAX_PAYLOAD {
        return Decoded::Corrupt(format!("payload length {len} is implausible"));
    }
    let total = HEADER_LEN + len + TRAILER_LEN;
    if buf.len() < total {
        return Decoded::Incomplete;
    }
    let payload = &buf[HEADER_LEN..HEADER_LEN + len];
    let stored = u32::from_le_bytes(buf[HEADER_LEN + len..total].try_into().expect("4 bytes"));
    if crc32fast::hash(&buf[4..HEADER_LEN + len]) != stored {
        return Decoded::Corrupt("checksum mismatch".into());
    }
    let record = match kind {
        Kind::Message => {
            if payload.len() < 4 {
                return Decoded::Corrupt("message record too short".into());
            }
            let json_len = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
            if 4 + json_len > payload.len() {
                return Decoded::Corrupt("envelope length past the record".into());
            }
            match serde_json::from_slice::<Envelope>(&payload[4..4 + json_len]) {
                Ok(envelope) => Record::Message {
                    envelope: Box::new(envelope),
                    data_offset: 4 + json_len,
                    data_len: payload.len() - 4 - json_len,
                },
                Err(e) => return Decoded::Corrupt(format!("envelope: {e}")),
            }
        }
        Kind::Update => match serde_json::from_slice(payload) {
            Ok(u) => Record::Update(u),
            Err(e) => return Decoded::Corrupt(format!("update: {e}")),
        },
        Kind::Done => match serde_json::from_slice(payload) {
            Ok(d) => Record::Done(d),
            Err(e) => return Decoded::Corrupt(format!("done: {e}")),
        },
    };
    Decoded::Record {
        record,
        len: total,
        payload_start: HEADER_LEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Recipient, RecipientStatus};

    fn envelope() -> Envelope {
        Envelope {
            id: SpoolId("0001".into()),
            sender: "a@example.org".into(),
            recipients: vec![Recipient::new("b@example.net".into())],
            ..Envelope::default()
        }
    }

    #[test]
    fn message_round_trip() {
        let (bytes, data_start) = encode_message(&envelope(), b"Subject: x\r\n\r\nhi\r\n");
        match decode(&bytes) {
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

    #[test]
    fn torn_tail_is_incomplete_and_flipped_bit_is_corrupt() {
        let bytes = encode_done(&DoneRecord {
            id: SpoolId("x".into()),
        });
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Decoded::Incomplete
        ));
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        assert!(matches!(decode(&bad), Decoded::Corrupt(_)));
    }
}
