//! The server side of the control channel ([`crate::control`]): the Unix socket in the spool
//! directory, one task per connection, one request each.
//!
//! Who may ask: the socket is 0600 in the 0700 spool directory, and each connection's peer
//! uid (`SO_PEERCRED`) must be the server's own or root; others get an error line and the
//! connection is closed. What `queue delete` does: with a bounce, the DSN is committed before
//! the message is removed (a crash in between leaves both, never neither), and a message
//! whose attempt is running is refused (its outcome is not known yet, so a "failed" DSN could
//! be wrong); `--no-bounce` removes it even then, and the running attempt's record is then
//! dropped (the spool no longer knows the message).

use super::drain::DrainSignal;
use crate::config::Config;
use crate::control::{self, QueuedMessage, QueuedRecipient, Reply, Request};
use crate::metrics::Metrics;
use crate::printable::escape_controls;
use crate::spool::{QueueItem, RecipientStatus, Spool, SpoolError, SpoolId};
use anyhow::Context;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What control requests act on.
pub(super) struct ControlState {
    pub(super) spool: Spool,
    pub(super) config: Arc<Config>,
    pub(super) metrics: Metrics,
    pub(super) drain: DrainSignal,
}

/// Binds `SPOOL/control.sock`, replacing a socket file a dead server left (this process holds
/// the spool's lock, so no live server uses it).
///
/// # Errors
/// The old file cannot be removed or the socket cannot be bound (a path over the kernel's
/// 107 bytes, say).
pub(super) fn bind(spool_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = control::socket_path(spool_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("control socket {}", path.display())),
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("control socket {}", path.display()))?;
    // The directory (0700) already keeps others out; the mode says so on the file too.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("control socket {}", path.display()))?;
    Ok(listener)
}

/// Accepts control connections until `stop`; each runs on `tasks`.
pub(super) async fn serve(
    listener: UnixListener,
    state: Arc<ControlState>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tasks.spawn(async move {
            if let Err(e) = handle(&state, stream).await {
                tracing::debug!(error = %e, "control connection ended early");
            }
        });
    }
}

/// Whether the peer may use the socket: the server's own uid or root.
fn peer_allowed(stream: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .is_ok_and(|cred| cred.uid() == own || cred.uid() == 0)
}

async fn handle(state: &ControlState, stream: UnixStream) -> std::io::Result<()> {
    if !peer_allowed(&stream) {
        let mut stream = stream;
        let refusal = Reply::Error {
            message: "control socket: not the spool's owner".into(),
        };
        return stream.write_all(&control::encode(&refusal)).await;
    }
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(control::MAX_LINE as u64));
    let mut line = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let request = match read {
        Ok(Ok(_)) => control::decode::<Request>(&line).map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no request line in time".to_string()),
    };
    let reply = match request {
        Err(e) => Reply::Error {
            message: format!("unreadable request: {}", escape_controls(&e)),
        },
        Ok(Request::Drain {
            handoff,
            timeout_ms,
        }) => {
            return follow_drain(state, handoff, timeout_ms, &mut write).await;
        }
        Ok(request) => answer(state, request).await,
    };
    write.write_all(&control::encode(&reply)).await
}

/// The one reply of a queue request.
async fn answer(state: &ControlState, request: Request) -> Reply {
    match request {
        Request::List => Reply::Queue(state.spool.queue().iter().map(listed).collect()),
        Request::Flush { id } => {
            let id = id.map(SpoolId);
            match state.spool.flush(id.as_ref()) {
                Ok(count) => {
                    tracing::info!(queue_id = ?id.as_ref().map(|i| &i.0), count, "queue flushed by the operator");
                    Reply::Flushed { count }
                }
                Err(e) => error_reply(&e),
            }
        }
        Request::Delete { id, bounce } => delete(state, SpoolId(id), bounce).await,
        Request::Drain { .. } => Reply::Error {
            message: "drain is answered by follow_drain".into(),
        },
    }
}

fn error_reply(e: &SpoolError) -> Reply {
    let message = match e {
        SpoolError::NotFound(id) => format!("no message {} in the queue", id.0),
        other => other.to_string(),
    };
    Reply::Error {
        message: escape_controls(&message).into_owned(),
    }
}

async fn delete(state: &ControlState, id: SpoolId, bounce: bool) -> Reply {
    let Some(item) = state
        .spool
        .queue()
        .into_iter()
        .find(|q| q.envelope.id == id)
    else {
        return error_reply(&SpoolError::NotFound(id));
    };
    let mut bounced = false;
    if bounce {
        if item.in_flight {
            return Reply::Error {
                message: format!(
                    "message {} is being delivered right now: try again in a moment, or delete it with --no-bounce",
                    id.0
                ),
            };
        }
        let dsn = crate::delivery::dsn::bounce_removed(
            &state.spool,
            &state.config,
            &state.metrics,
            &item.envelope,
            SystemTime::now(),
        )
        .await;
        match dsn {
            Ok(sent) => bounced = sent.is_some(),
            Err(e) => {
                return Reply::Error {
                    message: format!("cannot enqueue the DSN, the message was kept: {e}"),
                };
            }
        }
    }
    match state.spool.remove(&id).await {
        Ok(()) => {
            tracing::info!(queue_id = %id, bounced, "message removed from the queue by the operator");
            Reply::Deleted { bounced }
        }
        Err(e) => error_reply(&e),
    }
}

/// The `queue list` entry of a spooled message.
fn listed(item: &QueueItem) -> QueuedMessage {
    let envelope = &item.envelope;
    QueuedMessage {
        id: envelope.id.0.clone(),
        sender: envelope.sender.clone(),
        received_at_ms: envelope.received_at_ms,
        size: envelope.size,
        attempts: item.attempts,
        next_attempt_ms: (!item.in_flight).then_some(item.next_attempt_ms),
        ret: envelope.dsn_ret.clone(),
        envid: envelope.dsn_envid.clone(),
        recipients: envelope
            .recipients
            .iter()
            .map(|r| QueuedRecipient {
                address: r.address.clone(),
                state: match r.status {
                    RecipientStatus::Pending => "pending",
                    RecipientStatus::Delivered => "delivered",
                    RecipientStatus::Failed => "failed",
                }
                .to_string(),
                attempts: r.attempts,
                last_reply: r.last_reply.clone(),
                notify: r.notify.clone(),
                orcpt: r.orcpt.clone(),
            })
            .collect(),
    }
}

/// Starts the drain (or joins the one under way) and writes its progress until it is over.
async fn follow_drain(
    state: &ControlState,
    handoff: Option<String>,
    timeout_ms: u64,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    if let Err(message) =
        state
            .drain
            .start(&state.config, handoff, Duration::from_millis(timeout_ms))
    {
        let reply = Reply::Error { message };
        return write.write_all(&control::encode(&reply)).await;
    }
    let mut progress = state.drain.subscribe();
    loop {
        let current = progress.borrow_and_update().clone();
        if let Some(reply) = current {
            write.write_all(&control::encode(&reply)).await?;
            if matches!(reply, Reply::Drained { .. }) {
                return Ok(());
            }
        }
        if progress.changed().await.is_err() {
            return Ok(());
        }
    }
}
