//! The spool: accepted mail, kept durably until every recipient is delivered or has failed.
//!
//! # Durability contract
//! [`Spool::commit`] returns only after the message and its envelope are on stable storage;
//! the session answers `250 ... queued as ID` only after that. A `kill -9` or power loss at
//! any later moment loses nothing.
//!
//! # Layout on disk
//! - `journal/NNNNNNNNNNNNNNNN.log`: append-only segments of typed records, each authenticated
//!   with the spool's key for its segment and offset (`record.rs`), so that message bytes a
//!   client wrote can never pass for spool structure. Small messages (up to `spool.inline_max_bytes`) are written inline; every
//!   delivery outcome is an `Update` record and a finished message a `Done` record. One
//!   thread appends and fsyncs on behalf of all sessions (group commit, `journal.rs`): while
//!   one fsync runs, the next batch gathers, so throughput grows with concurrency while each
//!   250 still follows the fsync of its own message.
//! - `data/ID.eml`: large messages, streamed there during DATA (never whole in memory),
//!   fsynced and renamed before their journal record is committed. A record may name only
//!   the file the spool names for its id ([`check_data_file`]); any other name makes the
//!   record corrupt and is never joined to a path.
//! - `tmp/`: large messages being received; emptied at start (none was acknowledged).
//! - `corrupt/`: copies of segments with damaged records, set aside for an operator, never
//!   deleted (`replay.rs` says what counts as damage and what as a torn append).
//! - `journal.key`: the secret that authenticates records (`key.rs`).
//! - `lock`: an exclusive `flock` so two processes never share a spool.
//!
//! Directories are 0700 and files 0600 whatever the umask (`files.rs`): queued mail is
//! readable by the spool's owner only.
//!
//! # Compaction
//! Only the oldest segment is ever deleted, once none of its messages is live: a `Done`
//! record always sits in the same or a later segment than its message, so deleting
//! oldest-first can never resurrect a finished message. When a segment is rolled (it grew past
//! its size) the live messages of older segments are copied forward with their current state,
//! which lets those segments go.
//!
//! # Reading for delivery
//! The inline data of a message committed by this process is kept in memory (64 MiB at most,
//! `recent.rs`) until the delivery attempt that reads it is recorded, so the delivery that
//! follows an acceptance reads no file; older messages, and every message after a restart,
//! are read from their segment.
//!
//! The delivery schedule (`next_due`, `record_attempt`) lives here too: the spool is the only
//! owner of a message's state, so the schedule survives restarts with the message.

mod files;
mod journal;
mod key;
mod recent;
pub(crate) mod record;
mod replay;

pub use journal::SpoolError;

use crate::config::SpoolConfig;
use crate::metrics::Metrics;
use crate::unix_time::unix_ms;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncWriteExt};

/// Queue identifier: time-ordered, unique within a spool, safe in file names and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct SpoolId(pub String);

impl SpoolId {
    /// Whether the id has the form [`IdGenerator`] makes (upper-case hex digits, 21 of them
    /// until the year 2527): the only ids the spool names files after.
    fn is_spool_made(&self) -> bool {
        (21..=24).contains(&self.0.len())
            && self
                .0
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
    }
}

impl fmt::Display for SpoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RecipientStatus {
    /// Not delivered yet; will be tried (again).
    #[default]
    Pending,
    /// Accepted by the remote server.
    Delivered,
    /// Refused for good (5xx) or expired.
    Failed,
}

/// One envelope recipient and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward-path as given at RCPT.
    pub address: String,
    /// Delivery state.
    pub status: RecipientStatus,
    /// Attempts made for this recipient.
    pub attempts: u32,
    /// The remote server's last reply (or our reason), for logs and bounces.
    pub last_reply: Option<String>,
    /// DSN `NOTIFY=` as given at RCPT (RFC 3461), for the bounce issue.
    #[serde(default)]
    pub notify: Option<String>,
    /// DSN `ORCPT=` as given at RCPT (RFC 3461).
    #[serde(default)]
    pub orcpt: Option<String>,
    /// A delay DSN (`[delivery] delay_warning`) was sent for this recipient; never twice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_notified: bool,
}

impl Recipient {
    /// A pending recipient with no DSN parameters.
    pub fn new(address: String) -> Self {
        Self {
            address,
            status: RecipientStatus::Pending,
            attempts: 0,
            last_reply: None,
            notify: None,
            orcpt: None,
            delay_notified: false,
        }
    }
}

/// Who submitted a message, for logs and later policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Submitter {
    /// The authenticated address, if the session authenticated.
    pub address: Option<String>,
    /// The device whose password was used.
    pub device: Option<String>,
    /// The client's IP address.
    pub client_ip: String,
    /// The listener role (`submission`, `submissions`, `relay`).
    pub listener: String,
}

/// Everything about a message except its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Envelope {
    /// Queue id.
    pub id: SpoolId,
    /// The reverse-path; empty for the null sender.
    pub sender: String,
    /// Recipients with their state.
    pub recipients: Vec<Recipient>,
    /// When the message was accepted (Unix milliseconds).
    pub received_at_ms: u64,
    /// Bytes of the message as it will be sent: `prefix` plus the data.
    pub size: u64,
    /// `BODY=8BITMIME` was given.
    pub body_8bit: bool,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
    /// DSN `RET=` (RFC 3461).
    #[serde(default)]
    pub dsn_ret: Option<String>,
    /// DSN `ENVID=` (RFC 3461).
    #[serde(default)]
    pub dsn_envid: Option<String>,
    /// `REQUIRETLS` (RFC 8689): only authenticated TLS to hops that advertise it. Absent in
    /// records written before it existed, which read as `false`; written only when set, so
    /// records without it stay as they were.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_tls: bool,
    /// The header section has `TLS-Required: No` (RFC 8689 section 3): DANE and MTA-STS
    /// failures fall back to opportunistic TLS. Same compatibility as `require_tls`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_required_no: bool,
    /// Who submitted it.
    pub submitter: Submitter,
    /// Header fields Postern puts in front of the client's data (`Received:`, a missing
    /// `Message-ID:`/`Date:`, later `DKIM-Signature:`), CRLF-terminated.
    pub prefix: String,
    /// File name under `data/` for messages too large to keep inline.
    pub data_file: Option<String>,
}

/// The file name under `data/` of message `id`'s data; `None` for an id the spool does not
/// make, which no file is ever named after.
fn data_file_name(id: &SpoolId) -> Option<String> {
    id.is_spool_made().then(|| format!("{id}.eml"))
}

/// Checks that an envelope names no data file other than the one the spool gives its id.
///
/// # Errors
/// The name differs (a path, `..`, another message's file): the reason, for the replay log.
pub(crate) fn check_data_file(envelope: &Envelope) -> Result<(), String> {
    match &envelope.data_file {
        None => Ok(()),
        Some(name) if data_file_name(&envelope.id).as_ref() == Some(name) => Ok(()),
        Some(name) => Err(format!(
            "data file {name:?} is not the spool's name for message {:?}",
            envelope.id.0
        )),
    }
}

/// Where an envelope's data file is, if it has one the spool named.
fn data_path(root: &std::path::Path, envelope: &Envelope) -> Option<PathBuf> {
    check_data_file(envelope).ok()?;
    Some(root.join("data").join(envelope.data_file.as_ref()?))
}

/// A message handed to delivery.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Envelope with the current recipient states.
    pub envelope: Envelope,
    /// Delivery attempts made so far for the message.
    pub attempts: u32,
}

/// A live message as `postern queue list` shows it.
#[derive(Debug, Clone)]
pub struct QueueItem {
    /// Envelope with the current recipient states.
    pub envelope: Envelope,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms); in the past for a message waiting for a worker.
    pub next_attempt_ms: u64,
    /// An attempt is running now.
    pub in_flight: bool,
}

/// One recipient's outcome of a delivery attempt.
#[derive(Debug, Clone)]
pub struct RecipientResult {
    /// Index into `envelope.recipients`.
    pub index: usize,
    /// New state; `Pending` means a temporary failure.
    pub status: RecipientStatus,
    /// Remote reply or local reason.
    pub reply: String,
    /// A delay DSN was enqueued for this recipient in this attempt (kept in the spool, so a
    /// restart does not send another).
    pub delay_notified: bool,
}

/// The data of a message being received, in memory until it grows past the inline limit,
/// then in a file under `tmp/`.
pub struct MessageBody {
    id: SpoolId,
    inline_max: u64,
    tmp_dir: PathBuf,
    memory: Vec<u8>,
    file: Option<(tokio::io::BufWriter<tokio::fs::File>, PathBuf)>,
    len: u64,
}

impl MessageBody {
    /// Appends received data.
    ///
    /// # Errors
    /// Creating or writing the temporary file failed.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        self.len += chunk.len() as u64;
        if let Some((file, _)) = &mut self.file {
            file.write_all(chunk)
                .await
                .map_err(SpoolError::io("write tmp"))?;
            return Ok(());
        }
        if self.len <= self.inline_max {
            self.memory.extend_from_slice(chunk);
            return Ok(());
        }
        let name =
            data_file_name(&self.id).ok_or_else(|| SpoolError::InvalidId(self.id.clone()))?;
        let path = self.tmp_dir.join(name);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(files::FILE_MODE)
            .open(&path)
            .await
            .map_err(SpoolError::io("create tmp"))?;
        file.set_permissions(std::fs::Permissions::from_mode(files::FILE_MODE))
            .await
            .map_err(SpoolError::io("set tmp mode"))?;
        let mut file = tokio::io::BufWriter::with_capacity(256 * 1024, file);
        file.write_all(&self.memory)
            .await
            .map_err(SpoolError::io("write tmp"))?;
        file.write_all(chunk)
            .await
            .map_err(SpoolError::io("write tmp"))?;
        self.memory = Vec::new();
        self.file = Some((file, path));
        Ok(())
    }

    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first bytes of the message kept in memory (all of it for inline messages), for
    /// header checks.
    pub fn memory(&self) -> &[u8] {
        &self.memory
    }
}

impl Drop for MessageBody {
    fn drop(&mut self) {
        // An abandoned large message (RSET, refused, connection lost) leaves no temp file.
        if let Some((_, path)) = self.file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The spool handle; clones share one spool.
#[derive(Clone)]
pub struct Spool {
    /// For the data files' fsync times (the journal times its own).
    metrics: Metrics,
    journal: Arc<journal::Journal>,
    inline_max: u64,
    ids: Arc<IdGenerator>,
}

impl Spool {
    /// Opens (creating if needed) the spool, takes its lock, replays the journal and starts the
    /// committer thread.
    ///
    /// # Errors
    /// The directory cannot be created or locked, or the journal cannot be read.
    pub fn open(config: &SpoolConfig, metrics: Metrics) -> Result<Self, SpoolError> {
        let journal = journal::Journal::open(
            &config.path,
            config.commit_batch,
            config.segment_max_bytes,
            metrics.clone(),
        )?;
        metrics.set_spool_path(&config.path);
        Ok(Self {
            metrics,
            journal: Arc::new(journal),
            inline_max: config.inline_max_bytes,
            ids: Arc::new(IdGenerator::new()),
        })
    }

    /// A fresh queue id.
    pub fn new_id(&self) -> SpoolId {
        self.ids.next()
    }

    /// An empty body to receive a message's data into.
    pub fn new_body(&self, id: &SpoolId) -> MessageBody {
        MessageBody {
            id: id.clone(),
            inline_max: self.inline_max,
            tmp_dir: self.journal.root().join("tmp"),
            memory: Vec::new(),
            file: None,
            len: 0,
        }
    }

    /// Makes a message durable. Returns once it is on stable storage.
    ///
    /// # Errors
    /// Any write, fsync or rename failed: the message is not accepted.
    pub async fn commit(
        &self,
        mut envelope: Envelope,
        body: MessageBody,
    ) -> Result<(), SpoolError> {
        let mut body = body;
        envelope.size = envelope.prefix.len() as u64 + body.len;
        match body.file.take() {
            None => {
                let data = std::mem::take(&mut body.memory);
                self.journal.commit_message(envelope, data, false).await
            }
            Some((mut file, tmp_path)) => {
                let synced = async {
                    file.flush().await.map_err(SpoolError::io("flush tmp"))?;
                    let start = std::time::Instant::now();
                    let synced = file.get_ref().sync_all().await;
                    self.metrics.spool_fsync(start.elapsed().as_secs_f64());
                    synced.map_err(SpoolError::io("fsync data file"))
                }
                .await;
                drop(file);
                if let Err(e) = synced {
                    // Refused (451): its data must not wait for a restart to be cleaned up.
                    let _ = tokio::fs::remove_file(&tmp_path).await;
                    return Err(e);
                }
                let Some(name) = data_file_name(&envelope.id) else {
                    let _ = tokio::fs::remove_file(&tmp_path).await;
                    return Err(SpoolError::InvalidId(envelope.id));
                };
                let final_path = self.journal.root().join("data").join(&name);
                if let Err(e) = tokio::fs::rename(&tmp_path, &final_path).await {
                    let _ = tokio::fs::remove_file(&tmp_path).await;
                    return Err(SpoolError::Io {
                        op: "rename data file",
                        source: e,
                    });
                }
                envelope.data_file = Some(name);
                let result = self
                    .journal
                    .commit_message(envelope, Vec::new(), true)
                    .await;
                if result.is_err() {
                    let _ = tokio::fs::remove_file(&final_path).await;
                }
                result
            }
        }
    }

    /// Waits until a message is due and marks it in flight.
    pub async fn next_due(&self) -> QueuedMessage {
        self.journal.next_due().await
    }

    /// The message as it must be sent: the prefix then the data.
    ///
    /// # Errors
    /// The data could not be read.
    pub async fn open_message(
        &self,
        envelope: &Envelope,
    ) -> Result<Box<dyn AsyncRead + Send + Unpin>, SpoolError> {
        let prefix = std::io::Cursor::new(envelope.prefix.clone().into_bytes());
        if envelope.data_file.is_some() {
            let path = data_path(self.journal.root(), envelope).ok_or_else(|| SpoolError::Io {
                op: "open data",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "data file name not made by the spool",
                ),
            })?;
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(SpoolError::io("open data"))?;
            return Ok(Box::new(tokio::io::AsyncReadExt::chain(
                prefix,
                tokio::io::BufReader::with_capacity(256 * 1024, file),
            )));
        }
        let data = self.journal.read_inline(&envelope.id).await?;
        Ok(Box::new(tokio::io::AsyncReadExt::chain(
            prefix,
            std::io::Cursor::new(data),
        )))
    }

    /// Records a delivery attempt durably; the message leaves the spool once no recipient is
    /// pending. Pending recipients are tried again at `retry_at`.
    ///
    /// # Errors
    /// The journal write failed; the message stays in flight until restart.
    pub async fn record_attempt(
        &self,
        id: &SpoolId,
        results: Vec<RecipientResult>,
        retry_at: Option<SystemTime>,
    ) -> Result<(), SpoolError> {
        let retry_ms = retry_at
            .map(unix_ms)
            .unwrap_or_else(|| unix_ms(SystemTime::now()) + 60_000);
        self.journal.record_attempt(id, results, retry_ms).await
    }

    /// Records recipients delivered by one group while the attempt's other groups still run
    /// (a message for several destinations), so that a crash before the attempt's own record
    /// does not deliver to them twice. The message stays in flight; its attempt count and
    /// schedule change only with [`Spool::record_attempt`], which must follow.
    ///
    /// # Errors
    /// The journal write failed; nothing is lost (the attempt's record carries the same).
    pub async fn record_progress(
        &self,
        id: &SpoolId,
        delivered: Vec<RecipientResult>,
    ) -> Result<(), SpoolError> {
        self.journal.record_progress(id, delivered).await
    }

    /// Every live message with its schedule, oldest first (`postern queue list`).
    pub fn queue(&self) -> Vec<QueueItem> {
        self.journal.snapshot()
    }

    /// A live message's envelope with its recipients' current states.
    pub fn envelope(&self, id: &SpoolId) -> Option<Envelope> {
        self.journal.envelope(id)
    }

    /// Makes `id`, or every message, due now (`postern queue flush`); returns how many were
    /// brought forward (messages in flight are not).
    ///
    /// # Errors
    /// `id` is not in the spool ([`SpoolError::NotFound`]).
    pub fn flush(&self, id: Option<&SpoolId>) -> Result<usize, SpoolError> {
        self.journal.flush(id, unix_ms(SystemTime::now()))
    }

    /// Removes a message for good (`postern queue delete`, or a message a peer took over);
    /// returns once its `Done` record is durable.
    ///
    /// # Errors
    /// It is not in the spool ([`SpoolError::NotFound`]), or the journal write failed (the
    /// message stays).
    pub async fn remove(&self, id: &SpoolId) -> Result<(), SpoolError> {
        self.journal.remove(id).await
    }

    /// Messages in the spool.
    pub fn len(&self) -> usize {
        self.journal.len()
    }

    /// Whether the spool is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the committer is alive (for `/readyz`).
    pub fn is_healthy(&self) -> bool {
        self.journal.is_healthy()
    }
}

/// Time-ordered ids: milliseconds, then a process-wide counter, then a per-process tag so
/// that ids of two replicas in one log stream do not collide.
struct IdGenerator {
    counter: AtomicU64,
    tag: u16,
}

impl IdGenerator {
    fn new() -> Self {
        Self {
            counter: AtomicU64::new(0),
            tag: rand::random::<u16>(),
        }
    }

    fn next(&self) -> SpoolId {
        let ms = unix_ms(SystemTime::now());
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & 0xFF_FFFF;
        SpoolId(format!("{ms:011X}{n:06X}{:04X}", self.tag))
    }
}

#[cfg(test)]
mod tests;
