//! The hand-off listener (`[listen] handoff`): takes the queued mail of a draining peer
//! replica into this replica's spool.
//!
//! A connection from outside `[handoff] networks` gets `554 5.7.1 Hand-off not accepted from
//! your address` and is closed. Otherwise [`crate::session::handoff`] decides every reply
//! (STARTTLS, then AUTH with the fleet secret, then transactions) and this driver does the
//! I/O: lines of at most [`MAX_COMMAND_LINE`] bytes, the TLS handshake, the data read through
//! the DATA scanner into a spool body, and the commit. The `250 ... queued as ID` follows the
//! spool's fsync, as on every listener, so the sender may then forget the message.
//!
//! The message is spooled as it arrives: the sender's bytes include the prefix the first
//! replica wrote (its `Received:` and `DKIM-Signature:`), so nothing is added (no second
//! `Received:`: this is one relay moving a message between its own spools, not a hop), nothing
//! is signed and no quota is counted. Its original arrival time (never later than now) becomes
//! the new record's, so `max_age` and the delay notice count from the first acceptance.
//!
//! Shutdown: an idle session gets `421 4.3.2` and is closed; a transfer in progress finishes.

use super::Shared;
use super::connection::Connection;
use crate::session::Reply;
use crate::session::data::{DataScanner, Framing};
use crate::session::handoff::{HandoffSession, HandoffStep};
use crate::smtp::handoff::{HandoffMail, HandoffRcpt};
use crate::spool::{Envelope, Recipient, SpoolId, Submitter};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

/// Longest command line with its CRLF (RFC 5321 section 4.5.3.1.4 says 512; the hand-off's
/// MAIL line carries more parameters).
pub const MAX_COMMAND_LINE: usize = 4096;

/// The name of this listener in logs and metrics.
const NAME: &str = "handoff";

/// Room for the prefix the first replica added above `limits.max_message_size`.
const PREFIX_ALLOWANCE: u64 = 1024 * 1024;

/// Accepts hand-off connections until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, secret: String, tasks: TaskTracker) {
    let secret: Arc<str> = secret.into();
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(listener = NAME, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (shared, secret) = (shared.clone(), secret.clone());
        tasks.spawn(async move {
            shared.metrics.connection_opened(NAME);
            HandoffDriver::new(&shared, stream, peer, &secret)
                .run()
                .await;
            shared.metrics.connection_closed(NAME);
        });
    }
}

/// One hand-off connection.
struct HandoffDriver<'a> {
    shared: &'a Shared,
    connection: Connection,
    peer: SocketAddr,
    session: HandoffSession,
    /// Bytes read and not used yet.
    buf: Vec<u8>,
}

/// How reading a command line ended.
enum Line {
    Complete(Vec<u8>),
    /// Closed, timed out, too long or shut down: the reply (if any) was sent.
    Gone,
}

impl<'a> HandoffDriver<'a> {
    fn new(shared: &'a Shared, stream: TcpStream, peer: SocketAddr, secret: &str) -> Self {
        let session = HandoffSession::new(
            &shared.config.server.hostname,
            secret,
            shared.config.limits.max_recipients,
        );
        Self {
            shared,
            connection: Connection::Plain(stream),
            peer,
            session,
            buf: Vec::with_capacity(1024),
        }
    }

    async fn run(mut self) {
        let allowed = self
            .shared
            .config
            .handoff
            .networks
            .iter()
            .any(|net| net.contains(&self.peer.ip()));
        if !allowed {
            tracing::warn!(client_ip = %self.peer.ip(), "hand-off refused: not from handoff.networks");
            let _ = self.connection.send(Reply::handoff_network_refused()).await;
            return;
        }
        if self.connection.send(self.session.greeting()).await.is_err() {
            return;
        }
        loop {
            let Line::Complete(line) = self.read_line().await else {
                return;
            };
            let step = self.session.handle_line(&line);
            let reply = match step {
                HandoffStep::Reply(reply) => reply,
                HandoffStep::Close(reply) => {
                    let _ = self.connection.send(reply).await;
                    return;
                }
                HandoffStep::StartTls(reply) => {
                    if self.connection.send(reply).await.is_err() {
                        return;
                    }
                    // Bytes sent before the handshake are not the TLS client's (RFC 3207).
                    self.buf.clear();
                    if !self.connection.start_tls_for(self.shared, NAME).await {
                        return;
                    }
                    self.session.tls_started();
                    continue;
                }
                HandoffStep::ReceiveData(reply) => {
                    if self.connection.send(reply).await.is_err() {
                        return;
                    }
                    match self.receive_message().await {
                        Some(reply) => reply,
                        None => return,
                    }
                }
            };
            if self.connection.send(reply).await.is_err() {
                return;
            }
        }
    }

    /// The next CRLF-terminated line, without its CRLF.
    async fn read_line(&mut self) -> Line {
        let timeout = self.shared.config.timeouts.command;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..end].to_vec();
                self.buf.drain(..end + 2);
                return Line::Complete(line);
            }
            if self.buf.len() >= MAX_COMMAND_LINE {
                let _ = self.connection.send(Reply::command_too_long()).await;
                return Line::Gone;
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::select! {
                _ = self.shared.shutdown.cancelled() => {
                    let _ = self.connection.send(Reply::shutting_down()).await;
                    return Line::Gone;
                }
                read = tokio::time::timeout(timeout, self.connection.read(&mut chunk)) => read,
            };
            match read {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                Ok(_) => return Line::Gone,
                Err(_) => {
                    let _ = self.connection.send(Reply::timeout()).await;
                    return Line::Gone;
                }
            }
        }
    }

    /// Reads the message to its end marker and spools it; the reply to send, or `None` when
    /// the connection is gone (nothing was spooled).
    async fn receive_message(&mut self) -> Option<Reply> {
        let (mail, rcpts) = self.session.take_transaction()?;
        let spool = &self.shared.spool;
        let id = spool.new_id();
        let mut body = spool.new_body(&id);
        let max = self
            .shared
            .config
            .limits
            .max_message_size
            .saturating_add(PREFIX_ALLOWANCE);
        let mut scanner = DataScanner::new(Framing::Dot, max);
        let mut out = Vec::new();
        let mut write_failed = None;
        loop {
            let (used, ended) = scanner.feed(&self.buf, &mut out);
            self.buf.drain(..used);
            if write_failed.is_none()
                && !out.is_empty()
                && let Err(e) = body.write(&out).await
            {
                write_failed = Some(e);
            }
            out.clear();
            if ended {
                break;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let read = tokio::time::timeout(
                self.shared.config.timeouts.data,
                self.connection.read(&mut chunk),
            )
            .await;
            match read {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
        if let Some(error) = scanner.error() {
            tracing::warn!(client_ip = %self.peer.ip(), error = ?error, "hand-off message refused");
            return Some(Reply::handoff_bad_line(
                "message data breaks the DATA rules",
            ));
        }
        if let Some(e) = write_failed {
            return Some(spool_failure(&e));
        }
        let envelope = envelope_of(id.clone(), mail, rcpts, self.peer);
        let recipients = envelope.recipients.len();
        match spool.commit(envelope, body).await {
            Ok(()) => {
                tracing::info!(queue_id = %id, client_ip = %self.peer.ip(), recipients, "handed-off message spooled");
                Some(Reply::queued(&id.0))
            }
            Err(e) => Some(spool_failure(&e)),
        }
    }
}

fn spool_failure(e: &crate::spool::SpoolError) -> Reply {
    tracing::error!(error = %e, "hand-off: cannot spool the message");
    if e.is_storage_full() {
        Reply::insufficient_storage()
    } else {
        Reply::spool_failed()
    }
}

/// The spool envelope of a handed-off message.
fn envelope_of(
    id: SpoolId,
    mail: HandoffMail,
    rcpts: Vec<HandoffRcpt>,
    peer: SocketAddr,
) -> Envelope {
    let now = crate::unix_time::now_ms();
    Envelope {
        id,
        sender: mail.sender,
        recipients: rcpts
            .into_iter()
            .map(|r| Recipient {
                notify: r.notify,
                orcpt: r.orcpt,
                delay_notified: r.delay_notified,
                ..Recipient::new(r.address)
            })
            .collect(),
        received_at_ms: mail.arrival_ms.min(now),
        size: 0,
        body_8bit: mail.body_8bit,
        smtputf8: mail.smtputf8,
        dsn_ret: mail.ret,
        dsn_envid: mail.envid,
        require_tls: mail.require_tls,
        tls_required_no: mail.tls_required_no,
        submitter: Submitter {
            address: None,
            device: None,
            client_ip: peer.ip().to_string(),
            listener: NAME.to_string(),
        },
        prefix: String::new(),
        data_file: None,
    }
}
