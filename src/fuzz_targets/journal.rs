//! The journal record decoder (`spool/record.rs`): `PSJ3` records (HMAC over the structure,
//! CRC-32 of the inline data), the `PSJ2` records before them (HMAC over everything) and the
//! unkeyed `PSJ1` ones.
//!
//! The first input byte picks a mode:
//! - raw bytes: whatever a damaged or hostile segment holds;
//! - a record framed and tagged here, from the format's documentation (not with the
//!   spool's own encoder), around arbitrary structure: so the fuzzer reaches the envelope
//!   parser and the data file check behind the tag, and the documented format and the code
//!   are checked against each other;
//! - an envelope, update or done record built from the input, encoded by the spool.
//!
//! What must hold: a decoded record lies inside the buffer; a message record's data file
//! is the spool's own name for its id (no path); a record tagged as documented always
//! verifies; `decode(encode(x)) == x`; a record with any one byte changed never decodes, a
//! cut one is `Incomplete`; a record decodes only at the position and under the key it was
//! written with.

use aws_lc_rs::hmac;

use super::Input;
use crate::spool::record::{
    Decoded, DoneRecord, KEY_LEN, Position, Record, RecordKey, UpdateRecord, decode, decode_legacy,
    encode_done, encode_message, encode_update,
};
use crate::spool::{Envelope, Recipient, RecipientStatus, SpoolId, Submitter};

const SECRET: [u8; KEY_LEN] = [0x5a; KEY_LEN];
const AT: Position = Position {
    segment: 3,
    offset: 4096,
};

pub(super) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => raw(input.rest()),
        1 => tagged_here(&mut input),
        _ => round_trip(&mut input),
    }
}

fn raw(bytes: &[u8]) {
    let key = RecordKey::new(&SECRET);
    check_decoded(bytes, &decode(bytes, &key, AT));
    check_decoded(bytes, &decode_legacy(bytes));
}

/// What any decoder answer must be for `buf`.
fn check_decoded(buf: &[u8], decoded: &Decoded) {
    match decoded {
        Decoded::Record {
            record,
            len,
            payload_start,
        } => {
            assert!(*len <= buf.len(), "a record longer than the buffer");
            assert!(*payload_start <= *len);
            if let Record::Message {
                envelope,
                data_offset,
                data_len,
            } = record
            {
                assert!(payload_start + data_offset + data_len <= *len);
                check_data_file(envelope);
            }
        }
        Decoded::Corrupt {
            claimed_len: Some(n),
            ..
        } => assert!(*n <= buf.len(), "a claimed length past the buffer"),
        Decoded::Corrupt { .. } | Decoded::Incomplete => {}
    }
}

/// A data file name is the id the spool made, with `.eml`: never a path.
fn check_data_file(envelope: &Envelope) {
    let Some(name) = &envelope.data_file else {
        return;
    };
    assert_eq!(name, &format!("{}.eml", envelope.id), "data file {name:?}");
    assert!(
        !name.contains(['/', '\\']) && !name.starts_with('.'),
        "data file {name:?} is a path"
    );
    assert!(
        envelope
            .id
            .0
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
        "data file of id {:?}",
        envelope.id
    );
}

/// A record framed as the module documentation describes it, tagged with the key.
fn tagged_here(input: &mut Input<'_>) {
    let whole_payload = input.flag();
    let kind = input.byte() % 4;
    let structure = input.field(4096).to_vec();
    let data = input.rest();
    let (magic, payload): (&[u8], Vec<u8>) = if kind == 1 {
        let mut payload = (structure.len() as u32).to_le_bytes().to_vec();
        payload.extend_from_slice(&structure);
        let magic: &[u8] = if whole_payload { b"PSJ2" } else { b"PSJ3" };
        (magic, payload)
    } else {
        let magic: &[u8] = if whole_payload { b"PSJ2" } else { b"PSJ3" };
        (magic, structure.clone())
    };
    let mut record = magic.to_vec();
    record.push(kind);
    let payload_len = payload.len() + if kind == 1 { data.len() } else { 0 };
    record.extend_from_slice(&(payload_len as u32).to_le_bytes());
    record.extend_from_slice(&payload);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &SECRET);
    let mut context = hmac::Context::with_key(&key);
    context.update(&AT.segment.to_le_bytes());
    context.update(&AT.offset.to_le_bytes());
    // Only a message record carries inline data; the others' is empty (CRC-32 zero).
    let inline: &[u8] = if kind == 1 { data } else { &[] };
    if whole_payload {
        record.extend_from_slice(inline);
        context.update(&record);
    } else {
        context.update(&record);
        context.update(&crc32fast::hash(inline).to_le_bytes());
        record.extend_from_slice(inline);
    }
    record.extend_from_slice(context.sign().as_ref());

    let decoded = decode(&record, &RecordKey::new(&SECRET), AT);
    check_decoded(&record, &decoded);
    match (&decoded, kind) {
        (Decoded::Corrupt { why, .. }, 1..=3) => assert!(
            why != "authentication tag mismatch",
            "a record tagged as documented does not verify"
        ),
        (Decoded::Corrupt { .. }, _) => {}
        (Decoded::Record { len, .. }, 1..=3) => assert_eq!(*len, record.len()),
        (other, _) => panic!("kind {kind} decoded as {other:?}"),
    }
}

fn round_trip(input: &mut Input<'_>) {
    let key = RecordKey::new(&SECRET);
    let (bytes, expected) = match input.byte() % 3 {
        0 => {
            let envelope = envelope(input);
            let data = input.field(2048).to_vec();
            let (bytes, data_start) = encode_message(&key, AT, &envelope, &data);
            match decode(&bytes, &key, AT) {
                Decoded::Record {
                    record:
                        Record::Message {
                            envelope: decoded,
                            data_offset,
                            data_len,
                        },
                    len,
                    payload_start,
                } => {
                    assert_eq!(*decoded, envelope, "envelope round trip");
                    assert_eq!(len, bytes.len());
                    assert_eq!(payload_start + data_offset, data_start);
                    assert_eq!(&bytes[data_start..data_start + data_len], &data[..]);
                }
                other => panic!("a message record does not decode: {other:?}"),
            }
            (bytes, "message")
        }
        1 => {
            let update = UpdateRecord {
                id: SpoolId(input.text(40)),
                recipients: recipients(input),
                attempts: input.u32(),
                next_attempt_ms: input.u64(),
            };
            let bytes = encode_update(&key, AT, &update);
            match decode(&bytes, &key, AT) {
                Decoded::Record {
                    record: Record::Update(decoded),
                    ..
                } => {
                    assert_eq!(decoded.id, update.id);
                    assert_eq!(decoded.recipients, update.recipients);
                    assert_eq!(decoded.attempts, update.attempts);
                    assert_eq!(decoded.next_attempt_ms, update.next_attempt_ms);
                }
                other => panic!("an update record does not decode: {other:?}"),
            }
            (bytes, "update")
        }
        _ => {
            let done = DoneRecord {
                id: SpoolId(input.text(40)),
            };
            let bytes = encode_done(&key, AT, &done);
            match decode(&bytes, &key, AT) {
                Decoded::Record {
                    record: Record::Done(decoded),
                    ..
                } => assert_eq!(decoded.id, done.id),
                other => panic!("a done record does not decode: {other:?}"),
            }
            (bytes, "done")
        }
    };

    // Any one byte changed: never a record.
    let at = usize::from(input.u16()) % bytes.len();
    let flip = input.byte().max(1);
    let mut changed = bytes.clone();
    changed[at] ^= flip;
    let decoded = decode(&changed, &key, AT);
    assert!(
        !matches!(decoded, Decoded::Record { .. }),
        "a {expected} record with byte {at} changed by {flip:#x} still decodes"
    );
    check_decoded(&changed, &decoded);

    // Cut short: incomplete, never a record.
    let cut = usize::from(input.u16()) % bytes.len();
    assert!(
        matches!(decode(&bytes[..cut], &key, AT), Decoded::Incomplete),
        "a {expected} record cut to {cut} bytes is not incomplete"
    );

    // Only at its own position, under its own key.
    let moved = Position {
        segment: AT.segment,
        offset: AT.offset + 1 + u64::from(input.byte()),
    };
    assert!(!matches!(
        decode(&bytes, &key, moved),
        Decoded::Record { .. }
    ));
    let mut other_secret = SECRET;
    other_secret[usize::from(input.byte()) % KEY_LEN] ^= 1;
    assert!(!matches!(
        decode(&bytes, &RecordKey::new(&other_secret), AT),
        Decoded::Record { .. }
    ));
}

fn envelope(input: &mut Input<'_>) -> Envelope {
    let spool_made = input.flag();
    let id = if spool_made {
        // The spool's ids: 21 upper-case hex digits.
        let n = input.u64();
        format!("{:05X}{:016X}", input.u16(), n)
    } else {
        input.text(40)
    };
    let has_file = spool_made && input.flag();
    let flags = input.byte();
    Envelope {
        data_file: has_file.then(|| format!("{id}.eml")),
        id: SpoolId(id),
        sender: input.text(300),
        recipients: recipients(input),
        received_at_ms: input.u64(),
        size: input.u64(),
        body_8bit: flags & 1 != 0,
        smtputf8: flags & 2 != 0,
        dsn_ret: (flags & 4 != 0).then(|| input.text(10)),
        dsn_envid: (flags & 8 != 0).then(|| input.text(100)),
        submitter: Submitter {
            address: (flags & 16 != 0).then(|| input.text(100)),
            ..Submitter::default()
        },
        prefix: input.text(1000),
        require_tls: flags & 32 != 0,
        tls_required_no: flags & 64 != 0,
    }
}

fn recipients(input: &mut Input<'_>) -> Vec<Recipient> {
    (0..input.byte() % 4)
        .map(|_| {
            let flags = input.byte();
            Recipient {
                address: input.text(300),
                status: match flags % 3 {
                    0 => RecipientStatus::Pending,
                    1 => RecipientStatus::Delivered,
                    _ => RecipientStatus::Failed,
                },
                attempts: input.u32(),
                last_reply: (flags & 4 != 0).then(|| input.text(200)),
                notify: (flags & 8 != 0).then(|| input.text(40)),
                orcpt: (flags & 16 != 0).then(|| input.text(100)),
                delay_notified: flags & 32 != 0,
            }
        })
        .collect()
}
