//! Runs one [`Session`] over one connection: reads, feeds the session, carries out its
//! events (TLS handshake, credential check, streaming the body to the spool, commit) and
//! writes its replies.
//!
//! Replies are buffered and flushed when the session needs more input or before a TLS
//! handshake, so a pipelined batch of commands gets its replies in one write (RFC 2920).
//! Timeouts: `timeouts.command` between commands, `timeouts.data` between reads while message
//! data flows, `timeouts.tls_handshake` for each handshake.

use super::Shared;
use super::metering::{CommitRefusal, Meter};
use crate::dkim::Signing;
use crate::session::headers::{self, TraceInfo};
use crate::session::{
    AuthOutcome, Authenticated, CommitOutcome, CompletedMessage, Event, HoldOutcome, HostingClient,
    Reply, Role, Session, SessionConfig,
};
use crate::spool::{Envelope, MessageBody, Recipient, SpoolId, Submitter, unix_ms};
use crate::store::QuotaIdentity;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// The socket, before or after TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => write_flush(s, bytes).await,
            Conn::Tls(s) => write_flush(s.as_mut(), bytes).await,
        }
    }

    fn tls_description(&self) -> Option<String> {
        let Conn::Tls(s) = self else { return None };
        let (_, conn) = s.get_ref();
        let version = conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default();
        Some(format!("version={version} cipher={cipher}"))
    }
}

async fn write_flush<S: AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    bytes: &[u8],
) -> std::io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}

/// Read buffer between commands.
const COMMAND_READ_BUFFER: usize = 4 * 1024;
/// Read buffer while message data flows.
const DATA_READ_BUFFER: usize = 64 * 1024;

/// Per-transaction state the driver keeps beside the session.
struct Transfer {
    id: SpoolId,
    body: MessageBody,
    /// A body write failed: the message will be refused with 451 at its end.
    failed: bool,
    /// Header section and DKIM body hash, computed as the data streams past.
    hasher: crate::dkim::MessageHasher,
}

/// Why the read loop stopped.
enum Stop {
    Closed,
    Write,
}

pub(super) async fn drive(shared: &Shared, stream: TcpStream, peer: SocketAddr, role: Role) {
    let config = &shared.config;
    let mut conn = Conn::Plain(stream);
    if role == Role::Submissions {
        match handshake(shared, conn, role).await {
            Some(tls) => conn = tls,
            None => return,
        }
    }
    let (relay_allowed, hosting, mut metering) = if role == Role::Relay {
        relay_identity(shared, peer).await
    } else {
        (false, None, Metering::UntilAuth)
    };
    let session = Session::new(SessionConfig {
        role,
        hostname: config.server.hostname.clone(),
        max_recipients: config.limits.max_recipients,
        max_message_size: config.limits.max_message_size,
        max_bad_commands: config.limits.max_bad_commands,
        max_auth_failures: config.limits.max_auth_failures,
        relay_allowed,
        hosting,
        implicit_tls: role == Role::Submissions,
        starttls_available: true,
    });
    run_session(shared, conn, peer, role, session, &mut metering).await;
    // Whatever way the session ended, an open transaction's holds go back.
    if let Metering::Metered(meter) = &mut metering {
        meter.release(shared).await;
    }
}

/// How a session's recipients are counted.
enum Metering {
    /// Submission before AUTH: the identity is not known yet.
    UntilAuth,
    /// Trusted relay networks: not metered.
    Unmetered,
    /// Counted against this identity's quota.
    Metered(Meter),
    /// The limit could not be looked up: recipients get 451 until the next session.
    Unavailable,
}

/// Who a port-25 client is: a hosting account by its network (metered, sender domains
/// bounded), a trusted network (unmetered), or nobody (relaying denied).
async fn relay_identity(
    shared: &Shared,
    peer: SocketAddr,
) -> (bool, Option<HostingClient>, Metering) {
    let trusted = shared
        .config
        .relay
        .networks
        .iter()
        .any(|net| net.contains(&peer.ip()));
    match shared.accounts.hosting_account_for(peer.ip()).await {
        Ok(Some(account)) => {
            let metering = match Meter::for_identity(
                shared,
                QuotaIdentity::Hosting(account.name.clone()),
            )
            .await
            {
                Ok(meter) => Metering::Metered(meter),
                Err(e) => {
                    tracing::warn!(account = %account.name, error = %e, "hosting quota unavailable");
                    Metering::Unavailable
                }
            };
            let client = HostingClient {
                account: account.name,
                domains: account.domains,
            };
            (true, Some(client), metering)
        }
        Ok(None) if trusted => (true, None, Metering::Unmetered),
        Ok(None) => (false, None, Metering::Unmetered),
        Err(e) => {
            tracing::warn!(client_ip = %peer.ip(), error = %e, "hosting account lookup failed");
            (true, None, Metering::Unavailable)
        }
    }
}

async fn run_session(
    shared: &Shared,
    mut conn: Conn,
    peer: SocketAddr,
    role: Role,
    mut session: Session,
    metering: &mut Metering,
) {
    let config = &shared.config;
    let client_ip = peer.ip().to_string();
    let cut = CancellationToken::new();
    let mut registration = None;
    let mut transfer: Option<Transfer> = None;
    // Id of the open transaction once it holds recipients; it becomes the queue id.
    let mut tx_id: Option<SpoolId> = None;
    let mut out = Vec::with_capacity(1024);
    // Small while commands flow, large while message data does: ten thousand idle sessions
    // must not each hold a data-sized buffer.
    let mut buf = vec![0u8; COMMAND_READ_BUFFER];
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                Event::Reply(reply) => reply.write_to(&mut out),
                Event::Close => {
                    let _ = conn.write_all(&out).await;
                    return;
                }
                Event::StartTls => {
                    if conn.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                    let Conn::Plain(_) = conn else { return };
                    match handshake(shared, conn, role).await {
                        Some(tls) => conn = tls,
                        None => return,
                    }
                    session.handle_tls_started();
                }
                Event::Authenticate {
                    mechanism,
                    login,
                    password,
                } => {
                    let outcome = match shared.directory.authenticate(&login, &password).await {
                        Ok(Some(identity)) => {
                            registration = Some(
                                shared
                                    .registry
                                    .register(identity.credential.clone(), cut.clone()),
                            );
                            shared.metrics.auth_attempt(mechanism.name(), "ok");
                            let identity_key = QuotaIdentity::Address(identity.address.clone());
                            *metering = match Meter::for_identity(shared, identity_key).await {
                                Ok(meter) => Metering::Metered(meter),
                                Err(e) => {
                                    tracing::warn!(address = %identity.address, error = %e, "quota limit unavailable");
                                    Metering::Unavailable
                                }
                            };
                            tracing::info!(client_ip, address = %identity.address, device = %identity.device, mechanism = mechanism.name(), "auth ok");
                            AuthOutcome::Accepted(Authenticated {
                                address: identity.address,
                                device: identity.device,
                                senders: identity.senders,
                            })
                        }
                        Ok(None) => {
                            shared.metrics.auth_attempt(mechanism.name(), "failed");
                            shared.admission.record_failure(peer.ip(), Instant::now());
                            // The login is logged (operators need it to spot attacks); the
                            // password never is.
                            tracing::info!(client_ip, login = %printable(&login), mechanism = mechanism.name(), "auth failed");
                            tokio::time::sleep(config.limits.auth_failure_delay).await;
                            AuthOutcome::Rejected
                        }
                        Err(e) => {
                            shared.metrics.auth_attempt(mechanism.name(), "error");
                            tracing::warn!(client_ip, error = %e, "auth: store unavailable");
                            AuthOutcome::Unavailable
                        }
                    };
                    drop(password);
                    session.handle_auth_outcome(outcome);
                }
                Event::MessageStart => {
                    let id = tx_id.take().unwrap_or_else(|| shared.spool.new_id());
                    let body = shared.spool.new_body(&id);
                    transfer = Some(Transfer {
                        id,
                        body,
                        failed: false,
                        hasher: crate::dkim::MessageHasher::new(),
                    });
                }
                Event::MessageData(bytes) => {
                    if let Some(t) = transfer.as_mut()
                        && !t.failed
                    {
                        t.hasher.write(&bytes);
                        if let Err(e) = t.body.write(&bytes).await {
                            tracing::error!(queue_id = %t.id, error = %e, "spool: cannot store message data");
                            t.failed = true;
                        }
                    }
                }
                Event::MessageAbort => transfer = None,
                Event::RecipientOutcome(outcome) => shared.metrics.recipient(outcome),
                Event::HoldRecipient(_) => {
                    let id = tx_id.get_or_insert_with(|| shared.spool.new_id()).clone();
                    let outcome = hold(shared, metering, &id).await;
                    session.handle_hold_outcome(outcome);
                }
                Event::TransactionReset => {
                    tx_id = None;
                    if let Metering::Metered(meter) = metering {
                        meter.release(shared).await;
                    }
                }
                Event::TransactionRefused { reply, recipients } => {
                    shared.metrics.message_rejected(rejection_label(&reply));
                    log_transaction(
                        &session,
                        &client_ip,
                        role,
                        None,
                        recipients,
                        0,
                        &reply.summary(),
                        "-",
                    );
                }
                Event::MessageComplete(message) => {
                    tx_id = None;
                    let outcome = match transfer.take() {
                        Some(t) if !t.failed => {
                            counted_commit(
                                shared, &session, &conn, &client_ip, role, t, message, metering,
                            )
                            .await
                        }
                        _ => {
                            if let Metering::Metered(meter) = metering {
                                meter.release(shared).await;
                            }
                            CommitOutcome::Failed
                        }
                    };
                    session.handle_commit_outcome(outcome);
                }
            }
        }
        if !out.is_empty() {
            if conn.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        let in_data = session.in_data();
        let timeout = if in_data {
            config.timeouts.data
        } else {
            config.timeouts.command
        };
        let wanted = if in_data {
            DATA_READ_BUFFER
        } else {
            COMMAND_READ_BUFFER
        };
        if buf.len() != wanted {
            buf = vec![0u8; wanted];
        }
        let idle = session.is_idle();
        let read = tokio::select! {
            read = tokio::time::timeout(timeout, conn.read(&mut buf)) => read,
            _ = cut.cancelled() => {
                let who = session.authenticated().map(|a| (a.address.clone(), a.device.clone())).unwrap_or_default();
                tracing::info!(client_ip, address = %who.0, device = %who.1, "session cut: credentials revoked");
                let _ = send(&mut conn, Reply::credentials_revoked()).await;
                return;
            }
            _ = shared.shutdown.cancelled(), if idle => {
                let _ = send(&mut conn, Reply::shutting_down()).await;
                return;
            }
        };
        let stop = match read {
            Ok(Ok(0)) | Ok(Err(_)) => Some(Stop::Closed),
            Ok(Ok(n)) => {
                session.handle_input(&buf[..n]);
                None
            }
            Err(_) => {
                tracing::info!(client_ip, listener = role.name(), "session timed out");
                let _ = send(&mut conn, Reply::timeout()).await;
                Some(Stop::Write)
            }
        };
        if stop.is_some() {
            drop(registration);
            return;
        }
    }
}

async fn send(conn: &mut Conn, reply: Reply) -> std::io::Result<()> {
    let mut out = Vec::new();
    reply.write_to(&mut out);
    conn.write_all(&out).await
}

async fn handshake(shared: &Shared, conn: Conn, role: Role) -> Option<Conn> {
    let Conn::Plain(tcp) = conn else {
        return Some(conn);
    };
    let accept = shared.tls.accept(tcp);
    match tokio::time::timeout(shared.config.timeouts.tls_handshake, accept).await {
        Ok(Ok(tls)) => {
            shared.metrics.tls_handshake(role.name(), "ok");
            Some(Conn::Tls(Box::new(tls)))
        }
        Ok(Err(e)) => {
            shared.metrics.tls_handshake(role.name(), "failed");
            tracing::debug!(listener = role.name(), error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            shared.metrics.tls_handshake(role.name(), "timeout");
            None
        }
    }
}

/// Holds one recipient of the open transaction `id`, or says why not.
async fn hold(shared: &Shared, metering: &mut Metering, id: &SpoolId) -> HoldOutcome {
    match metering {
        Metering::Unmetered => HoldOutcome::Held,
        Metering::UntilAuth | Metering::Unavailable => HoldOutcome::Unavailable,
        Metering::Metered(meter) => {
            // The per-minute message brake counts transactions: checked at the first hold.
            if !meter.has_hold() && !shared.brakes.allow_message(&meter.key().to_string()) {
                tracing::info!(identity = %meter.key(), "message brake engaged");
                return HoldOutcome::Throttled;
            }
            meter.hold(shared, &id.0).await
        }
    }
}

/// Counts the message against the quota, then makes it durable; gives the count back if the
/// spool refuses it. Never the other way round: a message is not accepted uncounted.
#[allow(clippy::too_many_arguments)]
async fn counted_commit(
    shared: &Shared,
    session: &Session,
    conn: &Conn,
    client_ip: &str,
    role: Role,
    transfer: Transfer,
    message: CompletedMessage,
    metering: &mut Metering,
) -> CommitOutcome {
    let counted = match metering {
        Metering::Metered(meter) => match meter.commit(shared).await {
            Ok(n) => n,
            Err(CommitRefusal::Unavailable) => {
                shared.metrics.message_rejected("quota_unavailable");
                meter.release(shared).await;
                return CommitOutcome::QuotaUnavailable;
            }
            Err(CommitRefusal::Full(HoldOutcome::Full { limit, retry_after })) => {
                shared.metrics.message_rejected("quota");
                return CommitOutcome::QuotaFull { limit, retry_after };
            }
            Err(CommitRefusal::Full(_)) => return CommitOutcome::QuotaUnavailable,
        },
        _ => 0,
    };
    let outcome = commit(shared, session, conn, client_ip, role, transfer, message).await;
    if let (CommitOutcome::Failed, Metering::Metered(meter)) = (&outcome, &*metering) {
        meter.refund(shared, counted).await;
    }
    outcome
}

async fn commit(
    shared: &Shared,
    session: &Session,
    conn: &Conn,
    client_ip: &str,
    role: Role,
    transfer: Transfer,
    message: CompletedMessage,
) -> CommitOutcome {
    let now = SystemTime::now();
    let tls = conn.tls_description();
    let auth = session.authenticated();
    let protocol = match (session.helo_name().is_some(), tls.is_some(), auth.is_some()) {
        (_, true, true) => "ESMTPSA",
        (_, true, false) => "ESMTPS",
        (_, false, true) => "ESMTPA",
        _ => "ESMTP",
    };
    let prefix = headers::build_prefix(
        &message.headers,
        &TraceInfo {
            helo: session.helo_name().unwrap_or("unknown"),
            client_ip,
            hostname: &shared.config.server.hostname,
            protocol,
            id: &transfer.id.0,
            tls: tls.as_deref(),
        },
        now,
    );
    // Signed after the sender checks (the session made them) and before the spool: the
    // spool holds the signed message.
    // Only a single, well-formed From: names a signing domain; a hosting account signs only
    // for its own domains (authenticated senders proved ownership in the session).
    let from: &[String] = if message.headers.from_fields == 1 && !message.headers.from_malformed {
        &message.headers.from
    } else {
        &[]
    };
    let permitted = session.hosting().map(|h| h.domains.as_slice());
    let signing = shared
        .signer
        .sign(from, permitted, transfer.hasher.finish(), &prefix.added)
        .await;
    if signing == Signing::Unsigned(crate::dkim::Unsigned::Error) {
        // Fail closed, as for the quota store: the client retries; unsigned mail from a
        // DMARC p=reject domain would be lost silently.
        shared.metrics.message_rejected("dkim_error");
        log_transaction(
            session,
            client_ip,
            role,
            Some(&transfer.id),
            message.recipients.len(),
            0,
            "451 signing unavailable",
            &signing.log_text(),
        );
        return CommitOutcome::Failed;
    }
    let prefix = match &signing {
        Signing::Signed { fields, .. } => format!("{}{fields}{}", prefix.trace, prefix.added),
        Signing::Unsigned(_) => prefix.joined(),
    };
    let dkim = signing.log_text();
    let recipients = message.recipients.len();
    let envelope = Envelope {
        id: transfer.id.clone(),
        sender: message.sender,
        recipients: message
            .recipients
            .into_iter()
            .map(|r| Recipient {
                notify: r.notify,
                orcpt: r.orcpt,
                ..Recipient::new(r.address)
            })
            .collect(),
        received_at_ms: unix_ms(now),
        size: 0,
        body_8bit: message.body_8bit,
        smtputf8: message.smtputf8,
        dsn_ret: message.dsn_ret,
        dsn_envid: message.dsn_envid,
        submitter: Submitter {
            address: auth.map(|a| a.address.clone()),
            device: auth.map(|a| a.device.clone()),
            client_ip: client_ip.to_string(),
            listener: role.name().to_string(),
        },
        prefix,
        data_file: None,
    };
    let size = envelope.prefix.len() as u64 + transfer.body.len();
    match shared.spool.commit(envelope, transfer.body).await {
        Ok(()) => {
            shared.metrics.message_accepted(size);
            log_transaction(
                session,
                client_ip,
                role,
                Some(&transfer.id),
                recipients,
                size,
                "queued",
                &dkim,
            );
            CommitOutcome::Queued(transfer.id.0)
        }
        Err(e) => {
            shared.metrics.message_rejected("spool_error");
            tracing::error!(queue_id = %transfer.id, error = %e, "spool commit failed; client told to retry");
            log_transaction(
                session,
                client_ip,
                role,
                Some(&transfer.id),
                recipients,
                size,
                "451 spool error",
                &dkim,
            );
            CommitOutcome::Failed
        }
    }
}

/// The one line per SMTP transaction operators grep for; `dkim` says how it was signed
/// (`rsa-sha256:sel@example.org ...`) or why not (`unsigned (no_key)`).
#[allow(clippy::too_many_arguments)]
fn log_transaction(
    session: &Session,
    client_ip: &str,
    role: Role,
    id: Option<&SpoolId>,
    recipients: usize,
    size: u64,
    result: &str,
    dkim: &str,
) {
    let auth = session.authenticated();
    tracing::info!(
        target: "postern::transaction",
        queue_id = %id.map(|i| i.0.as_str()).unwrap_or("-"),
        address = %auth.map(|a| a.address.as_str()).unwrap_or("-"),
        device = %auth.map(|a| a.device.as_str()).unwrap_or("-"),
        client_ip,
        listener = role.name(),
        recipients,
        size,
        result,
        dkim,
        "transaction"
    );
}

fn rejection_label(reply: &Reply) -> &'static str {
    match reply.code {
        552 => "too_big",
        554 => "malformed",
        550 => "sender_not_owned",
        _ => "rejected",
    }
}

/// Client-supplied text made safe for a log line.
fn printable(text: &str) -> String {
    let text: String = text.chars().filter(|c| !c.is_control()).take(128).collect();
    if text.is_empty() { "-".into() } else { text }
}
