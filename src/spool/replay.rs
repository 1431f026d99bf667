//! Replay at open: every journal segment, oldest first, into the index of live messages, and
//! what a record that does not verify means.
//!
//! A record's payload is client data, so replay never looks for a record inside another
//! record's claimed length (issue 10: a resync scan found records a client had planted in a
//! message body). What a bad record means:
//! - A keyed record with a well-formed header that fails its tag (or does not parse) is skipped
//!   by its claimed length; the next record must verify at exactly that offset, so a damaged
//!   length field cannot lead replay into client bytes. A header that cannot be trusted (bad
//!   magic, unknown kind, implausible length, or a length running past the end) ends the
//!   reading of the segment.
//! - In the newest segment, damage with nothing verifiable after it is a torn append: nothing
//!   in it was acknowledged (the 250 follows the fsync). The segment is cut back to its last
//!   good record and fsynced, with a warning, so later opens find it clean and do not report
//!   it as damage once it is no longer the newest segment.
//! - Anything else is damage: the segment is copied to `corrupt/` for an operator, logged as an
//!   error, and left as it is. Deciding "torn or damaged" may look past the bad record for a
//!   record that verifies at its own offset (only this spool can make one), within a budget;
//!   what it finds is never applied.
//! - `PSJ1` segments (before records were keyed) are read strictly, with no torn-tail
//!   allowance: the first bad record ends the segment and sets it aside. They are read once:
//!   the open copies their live messages forward into keyed records (`journal.rs`).

use super::SpoolError;
use super::files;
use super::journal::{DataLocation, Entry, Index, remove_data_file, segment_path};
use super::record::{self, Decoded, Position, Record, RecordKey};
use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::path::Path;

/// What replay found.
#[derive(Debug, Default)]
pub(super) struct Replayed {
    /// Segment numbers found, in order.
    pub(super) segments: Vec<u64>,
    /// The newest segment of `PSJ1` records, if any: it and every older one are rewritten.
    pub(super) newest_legacy: Option<u64>,
    /// Torn appends cut off the newest segment.
    pub(super) torn_tails: usize,
    /// Segments with damage, copied to `corrupt/`.
    pub(super) damaged: Vec<u64>,
}

/// How the reading of one segment ended.
#[derive(Debug, PartialEq, Eq)]
enum SegmentEnd {
    Clean,
    /// Nothing from `offset` on verifies and nothing there was acknowledged.
    TornTail {
        offset: usize,
    },
    /// A record at `offset` is bad and acknowledged records may be at or after it.
    Damaged {
        offset: usize,
        why: String,
    },
}

/// The first bad record met in a keyed segment, and whether a good one followed it.
struct FirstBad {
    offset: usize,
    why: String,
    good_after: bool,
}

/// Segment numbers in `root/journal`, in order.
pub(super) fn segment_numbers(root: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut seqs: Vec<u64> = fs::read_dir(root.join("journal"))
        .map_err(SpoolError::io("read journal"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Whether any segment holds keyed records (so a key must already exist).
pub(super) fn journal_is_keyed(root: &Path) -> Result<bool, SpoolError> {
    for seq in segment_numbers(root)? {
        let mut start = Vec::with_capacity(4);
        fs::File::open(segment_path(root, seq))
            .and_then(|f| f.take(4).read_to_end(&mut start))
            .map_err(SpoolError::io("read segment"))?;
        if !start.is_empty() && !record::is_legacy(&start) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads every segment in order into the index.
pub(super) fn replay(
    root: &Path,
    key: &RecordKey,
    index: &mut Index,
) -> Result<Replayed, SpoolError> {
    let mut replayed = Replayed {
        segments: segment_numbers(root)?,
        ..Replayed::default()
    };
    let newest = replayed.segments.last().copied();
    for &seq in &replayed.segments {
        let path = segment_path(root, seq);
        let bytes = fs::read(&path).map_err(SpoolError::io("read segment"))?;
        let end = if record::is_legacy(&bytes) {
            replayed.newest_legacy = Some(seq);
            read_legacy(root, seq, &bytes, index)
        } else {
            read_keyed(root, key, seq, &bytes, Some(seq) == newest, index)
        };
        match end {
            SegmentEnd::Clean => {}
            SegmentEnd::TornTail { offset } => {
                tracing::warn!(segment = %path.display(), offset, "spool: torn record at the end of the newest segment cut off (it was never acknowledged)");
                cut_tail(&path, offset)?;
                replayed.torn_tails += 1;
            }
            SegmentEnd::Damaged { offset, why } => {
                tracing::error!(segment = %path.display(), offset, %why, "spool: corrupt record; the segment is copied to corrupt/ and read no further");
                files::write_atomically(&root.join("corrupt"), &format!("{seq:016}.log"), &bytes)?;
                replayed.damaged.push(seq);
            }
        }
        index.segments.entry(seq).or_default();
    }
    Ok(replayed)
}

/// Reads a segment of `PSJ1` records: every record up to the first bad one.
fn read_legacy(root: &Path, seq: u64, bytes: &[u8], index: &mut Index) -> SegmentEnd {
    let mut pos = 0usize;
    while pos < bytes.len() {
        match record::decode_legacy(&bytes[pos..]) {
            Decoded::Record {
                record,
                len,
                payload_start,
            } => {
                apply(root, index, seq, pos, payload_start, len, record);
                pos += len;
            }
            Decoded::Incomplete => {
                return SegmentEnd::Damaged {
                    offset: pos,
                    why: "record runs past the end of a segment of the previous format".into(),
                };
            }
            Decoded::Corrupt { why, .. } => return SegmentEnd::Damaged { offset: pos, why },
        }
    }
    SegmentEnd::Clean
}

/// Reads a segment of keyed records (see the module doc for what a bad record means).
fn read_keyed(
    root: &Path,
    key: &RecordKey,
    seq: u64,
    bytes: &[u8],
    newest: bool,
    index: &mut Index,
) -> SegmentEnd {
    let mut pos = 0usize;
    let mut first_bad: Option<FirstBad> = None;
    let at = |pos: usize| Position {
        segment: seq,
        offset: pos as u64,
    };
    while pos < bytes.len() {
        let (why, next) = match record::decode(&bytes[pos..], key, at(pos)) {
            Decoded::Record {
                record,
                len,
                payload_start,
            } => {
                apply(root, index, seq, pos, payload_start, len, record);
                if let Some(bad) = &mut first_bad {
                    bad.good_after = true;
                }
                pos += len;
                continue;
            }
            Decoded::Incomplete => ("record runs past the end of the segment".to_string(), None),
            Decoded::Corrupt { why, claimed_len } => (why, claimed_len.map(|len| pos + len)),
        };
        if first_bad.is_none() {
            first_bad = Some(FirstBad {
                offset: pos,
                why,
                good_after: false,
            });
        }
        match next {
            Some(next) => pos = next,
            None => break,
        }
    }
    let Some(bad) = first_bad else {
        return SegmentEnd::Clean;
    };
    let torn = newest && !bad.good_after && !verifiable_record_after(key, seq, bytes, bad.offset);
    if torn {
        SegmentEnd::TornTail { offset: bad.offset }
    } else {
        SegmentEnd::Damaged {
            offset: bad.offset,
            why: bad.why,
        }
    }
}

/// Whether some offset after `from` starts a record that verifies there: then the bytes
/// after the last good record are not only a torn append, and cutting them off could lose
/// acknowledged mail. Only the magic's positions are tried, and the bytes hashed are bounded
/// (a client can fill a payload with candidates); past the budget the answer is "yes", the
/// side that keeps the bytes.
fn verifiable_record_after(key: &RecordKey, seq: u64, bytes: &[u8], from: usize) -> bool {
    let mut budget = 4 * (bytes.len() - from) + (1 << 20);
    for candidate in from + 1..bytes.len() {
        let rest = &bytes[candidate..];
        let Some(len) = record::claimed_len(rest) else {
            continue;
        };
        if len > budget {
            return true;
        }
        budget -= len;
        let at = Position {
            segment: seq,
            offset: candidate as u64,
        };
        if matches!(record::decode(rest, key, at), Decoded::Record { .. }) {
            return true;
        }
    }
    false
}

/// Cuts a torn append off a segment, durably, so that no later open meets it again.
fn cut_tail(path: &Path, offset: usize) -> Result<(), SpoolError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(SpoolError::io("open segment"))?;
    file.set_len(offset as u64)
        .and_then(|()| file.sync_all())
        .map_err(SpoolError::io("cut torn tail"))
}

fn apply(
    root: &Path,
    index: &mut Index,
    seq: u64,
    pos: usize,
    payload_start: usize,
    len: usize,
    record: Record,
) {
    match record {
        Record::Message {
            envelope,
            data_offset,
            data_len,
        } => {
            let data = if envelope.data_file.is_some() {
                DataLocation::File
            } else {
                DataLocation::Inline {
                    offset: (pos + payload_start + data_offset) as u64,
                    len: data_len as u64,
                }
            };
            let next_attempt_ms = envelope.received_at_ms;
            index.insert(Entry {
                envelope: *envelope,
                segment: seq,
                data,
                attempts: 0,
                next_attempt_ms,
                in_flight: false,
                bytes: len as u64,
            });
        }
        Record::Update(update) => {
            if let Some(mut entry) = index.remove(&update.id) {
                entry.envelope.recipients = update.recipients;
                entry.attempts = update.attempts;
                entry.next_attempt_ms = update.next_attempt_ms;
                index.insert(entry);
            }
        }
        Record::Done(done) => {
            if let Some(entry) = index.remove(&done.id) {
                remove_data_file(root, &entry.envelope);
            }
        }
    }
}

/// Data files no live message refers to were written for messages that were never
/// acknowledged (crash between rename and commit) or already finished.
pub(super) fn remove_orphan_data_files(root: &Path, index: &Index) {
    let referenced: BTreeSet<&str> = index
        .messages
        .values()
        .filter_map(|e| e.envelope.data_file.as_deref())
        .collect();
    let Ok(entries) = fs::read_dir(root.join("data")) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !referenced.contains(name) {
            tracing::info!(
                file = name,
                "spool: removing data file of an unacknowledged or finished message"
            );
            let _ = fs::remove_file(entry.path());
        }
    }
}
