//! The data of recently committed inline messages, kept in memory for the delivery that
//! follows, so that the common case (accepted, then delivered moments later) reads no file
//! and hands nothing to a blocking thread.
//!
//! The bytes are the very buffer the committer framed into the message's record (`record.rs`
//! copies the data verbatim between the record's structure and its tag), put here only after
//! that record's fsync, so they are exactly what `read_inline` would read back from the
//! segment; compaction copies those same bytes forward, so an entry stays valid when its
//! record moves. Replay starts with nothing here: after a restart every read is a file read.
//!
//! An entry leaves when the attempt that read it is recorded (every group of that attempt,
//! and every address it tried, is served from memory), when the message leaves the spool, or
//! never comes in: a message that would push the total past the budget is not kept. Not
//! evicting the oldest is deliberate: delivery takes the oldest due message first, so under a
//! backlog the oldest entries are the next ones read, and the newest are the ones to skip.

use super::SpoolId;
use std::collections::HashMap;
use std::sync::Arc;

/// Bytes of message data kept at most (the data only; envelopes are in the index anyway).
pub(super) const RECENT_DATA_BYTES: usize = 64 * 1024 * 1024;

/// Message data by id, at most `budget` bytes in all.
pub(super) struct RecentData {
    budget: usize,
    bytes: usize,
    data: HashMap<SpoolId, Arc<[u8]>>,
}

impl RecentData {
    pub(super) fn new(budget: usize) -> Self {
        Self {
            budget,
            bytes: 0,
            data: HashMap::new(),
        }
    }

    /// Keeps `data` for `id` if it fits in what is left of the budget; returns whether it was
    /// kept.
    pub(super) fn insert(&mut self, id: SpoolId, data: Vec<u8>) -> bool {
        if data.len() > self.budget - self.bytes {
            return false;
        }
        self.bytes += data.len();
        if let Some(old) = self.data.insert(id, data.into()) {
            self.bytes -= old.len();
        }
        true
    }

    /// The data of `id`, if kept; it stays until [`RecentData::remove`].
    pub(super) fn get(&self, id: &SpoolId) -> Option<Arc<[u8]>> {
        self.data.get(id).cloned()
    }

    /// Forgets `id`'s data (its attempt is recorded, or it left the spool).
    pub(super) fn remove(&mut self, id: &SpoolId) {
        if let Some(old) = self.data.remove(id) {
            self.bytes -= old.len();
        }
    }

    /// Bytes kept now (for the tests: nothing else needs the figure).
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Default for RecentData {
    fn default() -> Self {
        Self::new(RECENT_DATA_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> SpoolId {
        SpoolId(format!("ID{n}"))
    }

    #[test]
    fn keeps_up_to_the_budget_exactly_and_refuses_one_byte_more() {
        let mut recent = RecentData::new(10);
        assert!(recent.insert(id(1), vec![1; 4]));
        assert!(recent.insert(id(2), vec![2; 6]));
        assert_eq!(recent.bytes(), 10);
        assert!(!recent.insert(id(3), vec![3; 1]));
        assert_eq!(recent.get(&id(3)), None);
        // What was kept is unchanged by the refusal: the oldest are not evicted.
        assert_eq!(recent.get(&id(1)).as_deref(), Some(&[1u8; 4][..]));
        assert_eq!(recent.get(&id(2)).as_deref(), Some(&[2u8; 6][..]));
    }

    #[test]
    fn removal_frees_the_bytes_and_reading_does_not() {
        let mut recent = RecentData::new(10);
        assert!(recent.insert(id(1), vec![1; 10]));
        assert!(recent.get(&id(1)).is_some());
        assert!(recent.get(&id(1)).is_some());
        assert_eq!(recent.bytes(), 10);
        recent.remove(&id(1));
        assert_eq!(recent.bytes(), 0);
        assert_eq!(recent.get(&id(1)), None);
        recent.remove(&id(1));
        assert_eq!(recent.bytes(), 0);
        assert!(recent.insert(id(2), vec![2; 10]));
    }

    #[test]
    fn a_message_larger_than_the_whole_budget_is_never_kept() {
        let mut recent = RecentData::new(10);
        assert!(!recent.insert(id(1), vec![1; 11]));
        assert_eq!(recent.bytes(), 0);
        assert!(recent.insert(id(1), vec![1; 10]));
    }
}
