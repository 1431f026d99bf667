//! The journal: group commit, replay at start, compaction, and the in-memory index of live
//! messages with their delivery schedule.
//!
//! One committer thread owns every durable change. Sessions and delivery tasks send it jobs
//! over a bounded channel and wait for its answer. The thread takes the first job, then
//! whatever else is already waiting (up to `commit_batch`), appends all their records with one
//! `write`, calls `fdatasync` once, applies the changes to the index and only then answers.
//! Applying the index inside the same thread that orders the records is what keeps
//! compaction honest: a message can never be copied forward after its `Done` was written.
//!
//! A failed write or fsync fails every job of the batch (their clients get a 4xx, nothing is
//! acknowledged) and marks the spool unhealthy: after a failed fsync the kernel's view of the
//! file is unknown, so the next batch goes to a fresh segment.
//!
//! Every record is encoded for the position it is appended at (`record.rs` binds the tag to
//! segment and offset), so the committer computes each record's offset before encoding it.

use super::files::{self, fsync_dir, private_dir, private_options};
use super::recent::RecentData;
use super::record::{self, DoneRecord, Position, RecordKey, UpdateRecord};
use super::replay::{self, Replayed};
use super::{Envelope, QueueItem, QueuedMessage, RecipientResult, RecipientStatus, SpoolId, key};
use crate::metrics::{Metrics, QueueState};
use crate::unix_time::unix_ms;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, oneshot};

/// Jobs waiting for the committer before senders wait for room (backpressure).
const QUEUE_DEPTH: usize = 4096;
/// Compaction writes the records it copies in slices of about this size (bounded memory).
const COMPACT_WRITE_BYTES: usize = 8 * 1024 * 1024;

/// Why the spool could not do something.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the spool's lock.
    #[error("spool {0} is locked by another process")]
    Locked(PathBuf),
    /// The message is not (or no longer) in the spool.
    #[error("message {0} is not in the spool")]
    NotFound(SpoolId),
    /// The committer thread is gone.
    #[error("spool committer stopped")]
    Stopped,
    /// The spool's record key cannot be used.
    #[error("spool key {path}: {problem}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A message id that this spool does not make, so not one to name a file after.
    #[error("message id {0:?} is not one this spool makes")]
    InvalidId(SpoolId),
}

impl SpoolError {
    pub(super) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> SpoolError {
        move |source| SpoolError::Io { op, source }
    }

    /// Whether the file system holding the spool is full (`ENOSPC`) or its owner's disk quota
    /// is used up (`EDQUOT`), whichever write found it (a data file, the journal append, an
    /// fsync, a rename): the client hears `452 4.3.1 Insufficient system storage`, a
    /// condition that passes once space is freed, rather than a generic write error.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. } if is_storage_full(source.kind()))
    }

    /// The OS error's kind, for errors passed on to other jobs' waiters.
    fn kind(&self) -> std::io::ErrorKind {
        match self {
            SpoolError::Io { source, .. } => source.kind(),
            _ => std::io::ErrorKind::Other,
        }
    }
}

/// `ENOSPC` and `EDQUOT`.
fn is_storage_full(kind: std::io::ErrorKind) -> bool {
    matches!(
        kind,
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

enum Job {
    Message {
        envelope: Box<Envelope>,
        data: Vec<u8>,
        has_data_file: bool,
        done: Reply,
    },
    Attempt {
        id: SpoolId,
        results: Vec<RecipientResult>,
        /// `None`: progress within an attempt (see [`Journal::record_progress`]).
        retry_ms: Option<u64>,
        done: Reply,
    },
    /// An operator's `queue delete` or a finished hand-off: the message leaves the spool.
    Remove { id: SpoolId, done: Reply },
}

/// Where a live message's data is.
#[derive(Debug, Clone)]
pub(super) enum DataLocation {
    /// Inside a segment: absolute offset and length of the data.
    Inline { offset: u64, len: u64 },
    /// In `data/NAME`.
    File,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) envelope: Envelope,
    pub(super) segment: u64,
    pub(super) data: DataLocation,
    pub(super) attempts: u32,
    pub(super) next_attempt_ms: u64,
    pub(super) in_flight: bool,
    /// Size of its `Message` record, for compaction decisions.
    pub(super) bytes: u64,
}

#[derive(Default)]
pub(super) struct Index {
    pub(super) messages: HashMap<SpoolId, Entry>,
    due: BTreeSet<(u64, SpoolId)>,
    /// (received_at_ms, id) of every live message, for the oldest message's age.
    by_received: BTreeSet<(u64, SpoolId)>,
    /// Live message count per segment.
    pub(super) segments: BTreeMap<u64, usize>,
    /// Inline data of messages committed since the start, until their attempt is recorded
    /// (`recent.rs`); under this lock so that a read sees the data and the entry together.
    pub(super) recent: RecentData,
}

impl Index {
    pub(super) fn insert(&mut self, entry: Entry) {
        // Forget a previous entry of the same id first: its due key may equal the new one.
        if let Some(old) = self.messages.remove(&entry.envelope.id) {
            self.forget(&old);
        }
        *self.segments.entry(entry.segment).or_default() += 1;
        self.by_received
            .insert((entry.envelope.received_at_ms, entry.envelope.id.clone()));
        if !entry.in_flight {
            self.due
                .insert((entry.next_attempt_ms, entry.envelope.id.clone()));
        }
        self.messages.insert(entry.envelope.id.clone(), entry);
    }

    pub(super) fn remove(&mut self, id: &SpoolId) -> Option<Entry> {
        let entry = self.messages.remove(id)?;
        self.forget(&entry);
        Some(entry)
    }

    fn forget(&mut self, entry: &Entry) {
        self.due
            .remove(&(entry.next_attempt_ms, entry.envelope.id.clone()));
        self.by_received
            .remove(&(entry.envelope.received_at_ms, entry.envelope.id.clone()));
        if let Some(live) = self.segments.get_mut(&entry.segment) {
            *live = live.saturating_sub(1);
        }
    }

    /// The queue by state at `now_ms`: ready (due or in flight) and deferred (a retry time
    /// still ahead), each with its oldest acceptance time. One pass over the index, made when
    /// `/metrics` is rendered (a scrape every few seconds), not at every commit.
    pub(super) fn queue_state(&self, now_ms: u64) -> QueueState {
        let mut queue = QueueState::default();
        for entry in self.messages.values() {
            let received = entry.envelope.received_at_ms;
            let (count, oldest) = if entry.in_flight || entry.next_attempt_ms <= now_ms {
                (&mut queue.ready, &mut queue.ready_oldest_ms)
            } else {
                (&mut queue.deferred, &mut queue.deferred_oldest_ms)
            };
            *count += 1;
            *oldest = Some(oldest.map_or(received, |o: u64| o.min(received)));
        }
        queue
    }

    /// When the oldest live message was accepted (Unix ms); `None` when there is none.
    pub(super) fn oldest_received_ms(&self) -> Option<u64> {
        self.by_received.first().map(|(ms, _)| *ms)
    }
}

pub(super) struct Journal {
    root: PathBuf,
    pub(super) index: Arc<Mutex<Index>>,
    jobs: mpsc::SyncSender<Job>,
    due_changed: Arc<Notify>,
    healthy: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    /// The committer thread, joined on drop so that the lock is released only once nothing
    /// of this process touches the spool any more.
    committer: Option<std::thread::JoinHandle<()>>,
    _lock: File,
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Closing the channel ends the committer's loop after the batch it is writing.
        let (closed, _) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(thread) = self.committer.take() {
            let _ = thread.join();
        }
    }
}

impl Journal {
    pub(super) fn open(
        root: &Path,
        batch: usize,
        segment_max: u64,
        metrics: Metrics,
    ) -> Result<Self, SpoolError> {
        private_dir(root)?;
        for dir in ["journal", "data", "tmp", "corrupt"] {
            private_dir(&root.join(dir))?;
        }
        let lock = lock_spool(root)?;
        for stale in fs::read_dir(root.join("tmp")).map_err(SpoolError::io("read tmp"))? {
            // Data of messages whose DATA never completed: no 250 was ever sent for them.
            let _ = fs::remove_file(stale.map_err(SpoolError::io("read tmp"))?.path());
        }
        let key = key::load_or_create(root, replay::journal_is_keyed(root)?)?;
        let mut index = Index::default();
        let Replayed {
            segments,
            newest_legacy,
            ..
        } = replay::replay(root, &key, &mut index)?;
        replay::remove_orphan_data_files(root, &index);
        let next_seq = segments.last().map_or(1, |s| s + 1);
        let active = Segment::create(root, next_seq, &metrics)?;
        let index = Arc::new(Mutex::new(index));
        let queued = Arc::downgrade(&index);
        metrics.set_queue_source(move |now_ms| {
            queued.upgrade().map_or_else(QueueState::default, |index| {
                index.lock().expect("spool index lock").queue_state(now_ms)
            })
        });
        let due_changed = Arc::new(Notify::new());
        let healthy = Arc::new(AtomicBool::new(true));
        let live = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let mut committer = Committer {
            root: root.to_path_buf(),
            key,
            active,
            index: index.clone(),
            due_changed: due_changed.clone(),
            healthy: healthy.clone(),
            live: live.clone(),
            batch,
            segment_max,
            carried: 0,
            metrics,
        };
        // Segments of the previous format are read once: their live messages move forward
        // into keyed records now, so the next open has no unkeyed record to read.
        committer.compact(newest_legacy)?;
        committer.publish();
        let committer = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(SpoolError::io("start committer"))?;
        due_changed.notify_one();
        Ok(Self {
            root: root.to_path_buf(),
            index,
            jobs: tx,
            due_changed,
            healthy,
            live,
            committer: Some(committer),
            _lock: lock,
        })
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub(super) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(super) async fn commit_message(
        &self,
        envelope: Envelope,
        data: Vec<u8>,
        has_data_file: bool,
    ) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        self.send(Job::Message {
            envelope: Box::new(envelope),
            data,
            has_data_file,
            done,
        })
        .await?;
        wait.await.map_err(|_| SpoolError::Stopped)?
    }

    pub(super) async fn record_attempt(
        &self,
        id: &SpoolId,
        results: Vec<RecipientResult>,
        retry_ms: u64,
    ) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        self.send(Job::Attempt {
            id: id.clone(),
            results,
            retry_ms: Some(retry_ms),
            done,
        })
        .await?;
        let recorded = wait.await.map_err(|_| SpoolError::Stopped)?;
        if let Err(e) = &recorded
            && !matches!(e, SpoolError::NotFound(_))
        {
            self.requeue(id, retry_ms);
        }
        recorded
    }

    /// Records recipients delivered while other groups of the same attempt are still running,
    /// so that a crash before the attempt ends does not send them the message again. The
    /// message stays in flight with its attempt count and schedule; the attempt's own record
    /// follows. An error costs nothing but that protection (the attempt's record still comes).
    pub(super) async fn record_progress(
        &self,
        id: &SpoolId,
        results: Vec<RecipientResult>,
    ) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        self.send(Job::Attempt {
            id: id.clone(),
            results,
            retry_ms: None,
            done,
        })
        .await?;
        wait.await.map_err(|_| SpoolError::Stopped)?
    }

    /// Puts a message whose attempt could not be recorded (a full disk) back on the schedule
    /// at `retry_ms` with its last recorded state, instead of leaving it in flight until the
    /// next start: it is tried again, so recipients delivered in the unrecorded attempt may
    /// get it twice (at least once, never lost).
    fn requeue(&self, id: &SpoolId, retry_ms: u64) {
        let mut index = self.index.lock().expect("spool index lock");
        if let Some(mut entry) = index.remove(id) {
            if entry.in_flight {
                entry.in_flight = false;
                entry.next_attempt_ms = retry_ms;
            }
            index.insert(entry);
        }
        drop(index);
        self.due_changed.notify_one();
    }

    /// Writes the `Done` record of a message, whatever its recipients' states; returns once
    /// it is durable. A delivery of it still in flight then finds it gone when it records its
    /// attempt (`NotFound`), and nothing more is written for it.
    pub(super) async fn remove(&self, id: &SpoolId) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        self.send(Job::Remove {
            id: id.clone(),
            done,
        })
        .await?;
        wait.await.map_err(|_| SpoolError::Stopped)?
    }

    /// Every live message with its schedule, oldest first.
    pub(super) fn snapshot(&self) -> Vec<QueueItem> {
        let index = self.index.lock().expect("spool index lock");
        index
            .by_received
            .iter()
            .filter_map(|(_, id)| index.messages.get(id))
            .map(|entry| QueueItem {
                envelope: entry.envelope.clone(),
                attempts: entry.attempts,
                next_attempt_ms: entry.next_attempt_ms,
                in_flight: entry.in_flight,
            })
            .collect()
    }

    /// One live message's envelope as it stands.
    pub(super) fn envelope(&self, id: &SpoolId) -> Option<Envelope> {
        let index = self.index.lock().expect("spool index lock");
        index.messages.get(id).map(|entry| entry.envelope.clone())
    }

    /// Makes `id` (or every message) due at `now_ms`; messages in flight are left alone (their
    /// attempt is running). Returns how many were moved forward. The schedule is not written
    /// to the journal: after a restart every message is due at its recorded time, which a
    /// flush only ever brings forward.
    ///
    /// # Errors
    /// `id` is not in the spool.
    pub(super) fn flush(&self, id: Option<&SpoolId>, now_ms: u64) -> Result<usize, SpoolError> {
        let mut index = self.index.lock().expect("spool index lock");
        let ids: Vec<SpoolId> = match id {
            Some(id) if !index.messages.contains_key(id) => {
                return Err(SpoolError::NotFound(id.clone()));
            }
            Some(id) => vec![id.clone()],
            None => index.messages.keys().cloned().collect(),
        };
        let mut moved = 0;
        for id in ids {
            let Some(mut entry) = index.remove(&id) else {
                continue;
            };
            if !entry.in_flight && entry.next_attempt_ms > now_ms {
                entry.next_attempt_ms = now_ms;
                moved += 1;
            }
            index.insert(entry);
        }
        drop(index);
        self.due_changed.notify_one();
        Ok(moved)
    }

    async fn send(&self, job: Job) -> Result<(), SpoolError> {
        let mut job = job;
        loop {
            match self.jobs.try_send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::TrySendError::Full(back)) => {
                    // The committer is behind: wait a little instead of blocking a runtime thread.
                    job = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(SpoolError::Stopped),
            }
        }
    }

    pub(super) async fn next_due(&self) -> QueuedMessage {
        loop {
            let wait = {
                let mut index = self.index.lock().expect("spool index lock");
                let now = unix_ms(SystemTime::now());
                match index.due.first().cloned() {
                    Some((due, id)) if due <= now => {
                        index.due.remove(&(due, id.clone()));
                        let entry = index.messages.get_mut(&id).expect("due entries are live");
                        entry.in_flight = true;
                        return QueuedMessage {
                            envelope: entry.envelope.clone(),
                            attempts: entry.attempts,
                        };
                    }
                    Some((due, _)) => Some(Duration::from_millis(due - now)),
                    None => None,
                }
            };
            match wait {
                Some(wait) => {
                    tokio::select! {
                        _ = self.due_changed.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => self.due_changed.notified().await,
            }
        }
    }

    /// The inline data of a live message: from memory when it was committed recently
    /// (`recent.rs`), else read from its segment on a blocking thread.
    pub(super) async fn read_inline(&self, id: &SpoolId) -> Result<InlineData, SpoolError> {
        // Compaction may move the data between the look-up and the read; look up again then.
        for _ in 0..3 {
            let (segment, offset, len) = {
                let index = self.index.lock().expect("spool index lock");
                let entry = index
                    .messages
                    .get(id)
                    .ok_or_else(|| SpoolError::NotFound(id.clone()))?;
                if let Some(kept) = index.recent.get(id) {
                    return Ok(InlineData::Kept(kept));
                }
                match entry.data {
                    DataLocation::Inline { offset, len } => (entry.segment, offset, len),
                    DataLocation::File => return Err(SpoolError::NotFound(id.clone())),
                }
            };
            let path = segment_path(&self.root, segment);
            let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                let file = File::open(path)?;
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, offset)?;
                Ok(buf)
            })
            .await
            .map_err(|_| SpoolError::Stopped)?;
            match read {
                Ok(data) => return Ok(InlineData::Read(data)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(SpoolError::Io {
                        op: "read message",
                        source: e,
                    });
                }
            }
        }
        Err(SpoolError::NotFound(id.clone()))
    }
}

/// A message's inline data as [`Journal::read_inline`] found it.
pub(super) enum InlineData {
    /// Shared with the spool's memory of recent messages.
    Kept(Arc<[u8]>),
    /// Read from the segment.
    Read(Vec<u8>),
}

impl AsRef<[u8]> for InlineData {
    fn as_ref(&self) -> &[u8] {
        match self {
            InlineData::Kept(data) => data,
            InlineData::Read(data) => data,
        }
    }
}

struct Segment {
    seq: u64,
    file: File,
    len: u64,
}

impl Segment {
    fn create(root: &Path, seq: u64, metrics: &Metrics) -> Result<Self, SpoolError> {
        let file = private_options()
            .create_new(true)
            .append(true)
            .read(true)
            .open(segment_path(root, seq))
            .map_err(SpoolError::io("create segment"))?;
        files::make_private(&file).map_err(SpoolError::io("set segment mode"))?;
        metrics.timed_fsync(|| fsync_dir(&root.join("journal")))?;
        Ok(Self { seq, file, len: 0 })
    }

    /// Appends bytes (the caller advances `len` once they are durable).
    fn append(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        self.file
            .write_all(bytes)
            .map_err(SpoolError::io("append journal"))
    }

    /// Makes what was appended durable (`fdatasync`: the data and the file's length).
    fn sync(&mut self) -> Result<(), SpoolError> {
        self.file
            .sync_data()
            .map_err(SpoolError::io("fsync journal"))
    }
}

pub(super) fn segment_path(root: &Path, seq: u64) -> PathBuf {
    root.join("journal").join(format!("{seq:016}.log"))
}

fn lock_spool(root: &Path) -> Result<File, SpoolError> {
    let file = private_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("lock"))
        .map_err(SpoolError::io("open lock"))?;
    files::make_private(&file).map_err(SpoolError::io("set lock mode"))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(SpoolError::Locked(root.to_path_buf()));
    }
    Ok(file)
}

pub(super) fn remove_data_file(root: &Path, envelope: &Envelope) {
    if let Some(path) = super::data_path(root, envelope) {
        let _ = fs::remove_file(path);
    }
}

struct Committer {
    root: PathBuf,
    key: RecordKey,
    active: Segment,
    index: Arc<Mutex<Index>>,
    due_changed: Arc<Notify>,
    healthy: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    batch: usize,
    segment_max: u64,
    /// Bytes the last compaction copied into the active segment: they do not count toward the
    /// next roll, or a backlog larger than a segment would be rewritten after every batch.
    carried: u64,
    metrics: Metrics,
}

/// What a job changes in the index once its records are durable.
enum Change {
    /// A new message, with its inline data to keep for its delivery (`recent.rs`).
    Insert(Entry, Option<Vec<u8>>),
    Update {
        id: SpoolId,
        envelope: Envelope,
        attempts: u32,
        next_attempt_ms: u64,
        /// Progress within an attempt: the message stays with its delivery task.
        in_flight: bool,
    },
    Remove(SpoolId),
}

/// A job's answer channel.
type Reply = oneshot::Sender<Result<(), SpoolError>>;

/// The encoded records of one group commit and what they change once durable.
struct Batch {
    bytes: Vec<u8>,
    changes: Vec<Change>,
    replies: Vec<Reply>,
    /// Some record refers to a data file just renamed into `data/`.
    sync_data_dir: bool,
}

impl Committer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < self.batch {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.commit_batch(jobs);
            if self.active.len.saturating_sub(self.carried) > self.segment_max
                && let Err(e) = self.roll().and_then(|()| self.compact(None))
            {
                tracing::error!(error = %e, "spool: rolling the journal failed");
                self.healthy.store(false, Ordering::Relaxed);
            }
            self.drop_empty_oldest();
            self.publish();
        }
    }

    /// One group commit: encode every job's records, append and fsync them once, then apply
    /// the changes to the index and answer. Nothing is answered before the fsync.
    fn commit_batch(&mut self, jobs: Vec<Job>) {
        let started = Instant::now();
        let batch = self.encode_batch(jobs);
        if batch.bytes.is_empty() {
            return;
        }
        if let Err(e) = self.write_batch(&batch) {
            self.refuse_batch(batch.replies, &e);
            return;
        }
        self.active.len += batch.bytes.len() as u64;
        let count = batch.replies.len();
        self.apply_changes(batch.changes);
        self.healthy.store(true, Ordering::Relaxed);
        // Before the replies: whoever was told "committed" must see the new count.
        self.publish();
        self.due_changed.notify_one();
        for reply in batch.replies {
            let _ = reply.send(Ok(()));
        }
        self.metrics
            .spool_commit(count, started.elapsed().as_secs_f64());
    }

    /// Encodes the records of a batch, each for the offset it will have in the active segment.
    /// A job that cannot be applied (an attempt for a message no longer here) is answered now.
    fn encode_batch(&self, jobs: Vec<Job>) -> Batch {
        let mut batch = Batch {
            bytes: Vec::new(),
            changes: Vec::with_capacity(jobs.len()),
            replies: Vec::with_capacity(jobs.len()),
            sync_data_dir: false,
        };
        let index = self.index.lock().expect("spool index lock");
        for job in jobs {
            let at = Position {
                segment: self.active.seq,
                offset: self.active.len + batch.bytes.len() as u64,
            };
            match job {
                Job::Message {
                    envelope,
                    data,
                    has_data_file,
                    done,
                } => {
                    let (encoded, data_start) =
                        record::encode_message(&self.key, at, &envelope, &data);
                    let location = if has_data_file {
                        batch.sync_data_dir = true;
                        DataLocation::File
                    } else {
                        DataLocation::Inline {
                            offset: at.offset + data_start as u64,
                            len: data.len() as u64,
                        }
                    };
                    batch.bytes.extend_from_slice(&encoded);
                    let next_attempt_ms = envelope.received_at_ms;
                    let entry = Entry {
                        envelope: *envelope,
                        segment: self.active.seq,
                        data: location,
                        attempts: 0,
                        next_attempt_ms,
                        in_flight: false,
                        bytes: encoded.len() as u64,
                    };
                    // The buffer just framed into the record: the bytes a read would return.
                    let kept = (!has_data_file).then_some(data);
                    batch.changes.push(Change::Insert(entry, kept));
                    batch.replies.push(done);
                }
                Job::Attempt {
                    id,
                    results,
                    retry_ms,
                    done,
                } => {
                    let Some(entry) = index.messages.get(&id) else {
                        let _ = done.send(Err(SpoolError::NotFound(id)));
                        continue;
                    };
                    let (encoded, change) = self.encode_attempt(at, entry, id, results, retry_ms);
                    batch.bytes.extend_from_slice(&encoded);
                    batch.changes.push(change);
                    batch.replies.push(done);
                }
                Job::Remove { id, done } => {
                    if !index.messages.contains_key(&id) {
                        let _ = done.send(Err(SpoolError::NotFound(id)));
                        continue;
                    }
                    let record = DoneRecord { id: id.clone() };
                    batch
                        .bytes
                        .extend_from_slice(&record::encode_done(&self.key, at, &record));
                    batch.changes.push(Change::Remove(id));
                    batch.replies.push(done);
                }
            }
        }
        batch
    }

    /// The record of one delivery attempt: `Done` once no recipient is pending, else `Update`.
    /// Progress within an attempt (`retry_ms` `None`) is always an `Update` that keeps the
    /// message's attempt count and schedule: the attempt's own record ends it.
    fn encode_attempt(
        &self,
        at: Position,
        entry: &Entry,
        id: SpoolId,
        results: Vec<RecipientResult>,
        retry_ms: Option<u64>,
    ) -> (Vec<u8>, Change) {
        let mut envelope = entry.envelope.clone();
        for r in results {
            if let Some(rcpt) = envelope.recipients.get_mut(r.index) {
                // Delivered is final: the attempt's record repeats what its progress recorded.
                if rcpt.status == RecipientStatus::Delivered {
                    continue;
                }
                rcpt.status = r.status;
                rcpt.attempts += 1;
                rcpt.last_reply = Some(r.reply);
                rcpt.delay_notified |= r.delay_notified;
            }
        }
        let (attempts, next_attempt_ms, in_flight) = match retry_ms {
            Some(retry_ms) => (entry.attempts + 1, retry_ms, false),
            None => (entry.attempts, entry.next_attempt_ms, true),
        };
        let finished = envelope
            .recipients
            .iter()
            .all(|r| r.status != RecipientStatus::Pending);
        if finished && !in_flight {
            let done = DoneRecord { id: id.clone() };
            return (
                record::encode_done(&self.key, at, &done),
                Change::Remove(id),
            );
        }
        let update = UpdateRecord {
            id: id.clone(),
            recipients: envelope.recipients.clone(),
            attempts,
            next_attempt_ms,
        };
        (
            record::encode_update(&self.key, at, &update),
            Change::Update {
                id,
                envelope,
                attempts,
                next_attempt_ms,
                in_flight,
            },
        )
    }

    /// Appends a batch and makes it durable; data files it refers to are made durable first
    /// (their directory entry), so no record ever points at a file a crash could lose.
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SpoolError> {
        let metrics = &self.metrics;
        if batch.sync_data_dir {
            metrics.timed_fsync(|| fsync_dir(&self.root.join("data")))?;
        }
        self.active.append(&batch.bytes)?;
        metrics.timed_fsync(|| self.active.sync())
    }

    fn refuse_batch(&mut self, replies: Vec<Reply>, e: &SpoolError) {
        tracing::error!(error = %e, "spool: group commit failed; the batch is refused");
        self.healthy.store(false, Ordering::Relaxed);
        // The refused batch must not come back at replay (its clients were told 451) and
        // no later offset may be computed from a length the file no longer has.
        self.discard_tail();
        for reply in replies {
            // The kind goes along: a full disk is answered differently from other failures.
            let _ = reply.send(Err(SpoolError::Io {
                op: "group commit",
                source: std::io::Error::new(e.kind(), e.to_string()),
            }));
        }
    }

    fn apply_changes(&mut self, changes: Vec<Change>) {
        let mut index = self.index.lock().expect("spool index lock");
        for change in changes {
            match change {
                Change::Insert(entry, data) => {
                    let id = entry.envelope.id.clone();
                    index.insert(entry);
                    if let Some(data) = data {
                        index.recent.insert(id, data);
                    }
                }
                Change::Update {
                    id,
                    envelope,
                    attempts,
                    next_attempt_ms,
                    in_flight,
                } => {
                    if !in_flight {
                        // The attempt that read the data is over; a retry reads the file.
                        index.recent.remove(&id);
                    }
                    if let Some(mut entry) = index.remove(&id) {
                        entry.envelope = envelope;
                        entry.attempts = attempts;
                        entry.next_attempt_ms = next_attempt_ms;
                        entry.in_flight = in_flight;
                        index.insert(entry);
                    }
                }
                Change::Remove(id) => {
                    index.recent.remove(&id);
                    if let Some(entry) = index.remove(&id) {
                        remove_data_file(&self.root, &entry.envelope);
                    }
                }
            }
        }
    }

    /// After a failed append: cut the active segment back to its last committed length, then
    /// continue in a fresh segment (after a failed fsync the kernel's view of the old file is
    /// not to be trusted). If even the cut fails, the segment is left for replay, whose CRCs
    /// and torn-tail handling decide; appends never continue in it.
    fn discard_tail(&mut self) {
        let cut = self
            .active
            .file
            .set_len(self.active.len)
            .and_then(|()| self.active.file.sync_all());
        if let Err(e) = cut {
            tracing::error!(error = %e, "spool: cannot cut the failed append off the segment");
        }
        if let Err(e) = self.roll() {
            tracing::error!(error = %e, "spool: cannot start a new segment");
        }
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        let next = Segment::create(&self.root, self.active.seq + 1, &self.metrics)?;
        self.index
            .lock()
            .expect("spool index lock")
            .segments
            .entry(next.seq)
            .or_default();
        self.active = next;
        self.carried = 0;
        Ok(())
    }

    /// Copies the live messages of the oldest segments into the active one, then deletes those
    /// segments oldest first. Only the longest run of oldest segments whose live bytes are at
    /// most half of their size is copied: each copy frees at least as much as it writes, so a
    /// backlog larger than a segment is not rewritten at every roll. Segments up to
    /// `through` are copied forward whatever their live bytes (the previous format's).
    fn compact(&mut self, through: Option<u64>) -> Result<(), SpoolError> {
        let committed_len = self.active.len;
        let result = self.copy_forward(through);
        if result.is_err() {
            // Nothing was moved in the index; cut the partial copies off like a failed batch.
            self.active.len = committed_len;
            self.discard_tail();
        }
        result
    }

    fn copy_forward(&mut self, through: Option<u64>) -> Result<(), SpoolError> {
        let active = self.active.seq;
        let movers: Vec<(SpoolId, u64, DataLocation, Envelope, u32, u64)> = {
            let index = self.index.lock().expect("spool index lock");
            let mut live: BTreeMap<u64, u64> = BTreeMap::new();
            for e in index.messages.values().filter(|e| e.segment < active) {
                *live.entry(e.segment).or_default() += e.bytes;
            }
            let (mut live_sum, mut size_sum, mut upto) = (0u64, 0u64, 0u64);
            for &seq in index.segments.keys().filter(|&&s| s < active) {
                live_sum += live.get(&seq).copied().unwrap_or(0);
                size_sum += fs::metadata(segment_path(&self.root, seq)).map_or(0, |m| m.len());
                if live_sum * 2 <= size_sum {
                    upto = seq + 1;
                }
            }
            if let Some(through) = through {
                upto = upto.max(through + 1);
            }
            index
                .messages
                .values()
                .filter(|e| e.segment < upto)
                .map(|e| {
                    (
                        e.envelope.id.clone(),
                        e.segment,
                        e.data.clone(),
                        e.envelope.clone(),
                        e.attempts,
                        e.next_attempt_ms,
                    )
                })
                .collect()
        };
        let mut buf = Vec::new();
        let mut moved = Vec::new();
        for (id, segment, data, envelope, attempts, next_attempt_ms) in movers {
            let bytes = match data {
                DataLocation::Inline { offset, len } => {
                    let file = File::open(segment_path(&self.root, segment))
                        .map_err(SpoolError::io("open segment"))?;
                    let mut bytes = vec![0u8; len as usize];
                    file.read_exact_at(&mut bytes, offset)
                        .map_err(SpoolError::io("read segment"))?;
                    bytes
                }
                DataLocation::File => Vec::new(),
            };
            let at = Position {
                segment: active,
                offset: self.active.len + buf.len() as u64,
            };
            let (encoded, data_start) = record::encode_message(&self.key, at, &envelope, &bytes);
            let location = match data {
                DataLocation::Inline { .. } => DataLocation::Inline {
                    offset: at.offset + data_start as u64,
                    len: bytes.len() as u64,
                },
                DataLocation::File => DataLocation::File,
            };
            buf.extend_from_slice(&encoded);
            let update = UpdateRecord {
                id: id.clone(),
                recipients: envelope.recipients.clone(),
                attempts,
                next_attempt_ms,
            };
            let at = Position {
                offset: at.offset + encoded.len() as u64,
                ..at
            };
            buf.extend_from_slice(&record::encode_update(&self.key, at, &update));
            moved.push((id, location, encoded.len() as u64));
            if buf.len() >= COMPACT_WRITE_BYTES {
                self.active.append(&buf)?;
                self.active.len += buf.len() as u64;
                buf.clear();
            }
        }
        if !moved.is_empty() {
            self.active.append(&buf)?;
            self.metrics.timed_fsync(|| self.active.sync())?;
            self.active.len += buf.len() as u64;
        }
        {
            let mut index = self.index.lock().expect("spool index lock");
            for (id, location, bytes) in moved {
                if let Some(mut entry) = index.remove(&id) {
                    entry.segment = active;
                    entry.data = location;
                    entry.bytes = bytes;
                    index.insert(entry);
                }
            }
        }
        self.carried = self.active.len;
        self.drop_empty_oldest();
        Ok(())
    }

    /// Deletes leading segments without live messages (never the active one).
    fn drop_empty_oldest(&mut self) {
        let mut deleted = false;
        loop {
            let oldest = {
                let index = self.index.lock().expect("spool index lock");
                match index.segments.iter().next() {
                    Some((&seq, &live)) if seq < self.active.seq && live == 0 => seq,
                    _ => break,
                }
            };
            if let Err(e) = fs::remove_file(segment_path(&self.root, oldest))
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::error!(segment = oldest, error = %e, "spool: cannot delete old segment");
                break;
            }
            self.index
                .lock()
                .expect("spool index lock")
                .segments
                .remove(&oldest);
            deleted = true;
        }
        if deleted
            && let Err(e) = self
                .metrics
                .timed_fsync(|| fsync_dir(&self.root.join("journal")))
        {
            tracing::warn!(error = %e, "spool: fsync of the journal directory failed");
        }
    }

    fn publish(&self) {
        let (count, oldest) = {
            let index = self.index.lock().expect("spool index lock");
            (index.messages.len(), index.oldest_received_ms())
        };
        self.live.store(count, Ordering::Relaxed);
        self.metrics.set_spool_messages(count);
        self.metrics.set_spool_oldest(oldest);
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    fn entry(id: &str, received_at_ms: u64) -> Entry {
        Entry {
            envelope: Envelope {
                id: SpoolId(id.into()),
                received_at_ms,
                ..Envelope::default()
            },
            segment: 1,
            data: DataLocation::File,
            attempts: 0,
            next_attempt_ms: received_at_ms,
            in_flight: false,
            bytes: 0,
        }
    }

    #[test]
    fn oldest_received_follows_inserts_updates_and_removals() {
        let mut index = Index::default();
        assert_eq!(index.oldest_received_ms(), None);
        index.insert(entry("B", 2_000));
        index.insert(entry("A", 1_000));
        index.insert(entry("C", 1_000));
        assert_eq!(index.oldest_received_ms(), Some(1_000));

        // An attempt re-inserts the entry (new schedule, in flight): still counted once.
        let mut a = index.remove(&SpoolId("A".into())).unwrap();
        a.next_attempt_ms = 9_000;
        a.in_flight = true;
        index.insert(a);
        assert_eq!(index.by_received.len(), 3);

        index.remove(&SpoolId("A".into()));
        assert_eq!(index.oldest_received_ms(), Some(1_000), "C is as old");
        index.remove(&SpoolId("C".into()));
        assert_eq!(index.oldest_received_ms(), Some(2_000));
        index.remove(&SpoolId("B".into()));
        assert_eq!(index.oldest_received_ms(), None);
        assert!(index.by_received.is_empty());
    }
    #[test]
    fn queue_state_splits_ready_and_deferred_by_the_clock() {
        let mut index = Index::default();
        assert_eq!(index.queue_state(5_000), QueueState::default());
        // Due since its arrival.
        index.insert(entry("READY", 3_000));
        // In flight (being delivered) counts as ready whatever its schedule.
        let mut busy = entry("BUSY", 1_000);
        busy.in_flight = true;
        busy.next_attempt_ms = 99_000;
        index.insert(busy);
        // Waiting for a retry at 10_000.
        let mut later = entry("LATER", 2_000);
        later.next_attempt_ms = 10_000;
        index.insert(later);
        assert_eq!(
            index.queue_state(5_000),
            QueueState {
                ready: 2,
                ready_oldest_ms: Some(1_000),
                deferred: 1,
                deferred_oldest_ms: Some(2_000),
            }
        );
        // Its retry time came: ready by the clock alone.
        assert_eq!(
            index.queue_state(10_000),
            QueueState {
                ready: 3,
                ready_oldest_ms: Some(1_000),
                deferred: 0,
                deferred_oldest_ms: None,
            }
        );
    }
}
