//! Carries out the session events that reach the rest of Postern: credential checks, quota
//! holds, the message body on its way to the spool, DKIM signing, the commit and the
//! transaction log line. Everything a session asks for except the socket, which stays with
//! `driver.rs`; so this part can be tested with a real store and spool and no connection.
//!
//! [`EventHandler::handle`] takes one [`Event`], carries it out with the method named after
//! it, gives the session its answer, and hands the socket's events (reply, STARTTLS, close)
//! back to the driver as a [`SocketEvent`].
//!
//! Order at end of data: count against the quota, sign, commit to the spool, and give the
//! count back if the spool refuses (see `metering.rs`); the 250 goes out only after the
//! commit returned.

use super::Shared;
use super::brakes::LoginGate;
use super::guard::{Refusal, Registration};
use super::metering::{CommitRefusal, Meter, Metering};
use crate::dkim::{MessageHasher, Signing, Unsigned};
use crate::session::headers::{self, HeaderFacts, TraceInfo};
use crate::session::{
    AuthOutcome, Authenticated, BrakedFrom, CommitOutcome, CompletedMessage, Event, HoldOutcome,
    Mechanism, MessageRefusal, Reply, Role, Session,
};
use crate::spool::{Envelope, MessageBody, Recipient, SpoolId, Submitter};
use crate::store::QuotaIdentity;
use crate::unix_time::unix_ms;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// Where a session's client came from.
pub(super) struct Client {
    /// Its address.
    pub(super) peer: SocketAddr,
    /// The listener it came through.
    pub(super) role: Role,
    /// Its IP as the log lines print it.
    ip_text: String,
}

impl Client {
    pub(super) fn new(peer: SocketAddr, role: Role) -> Self {
        Self {
            peer,
            role,
            ip_text: peer.ip().to_string(),
        }
    }

    /// The IP as text, for log fields.
    pub(super) fn ip(&self) -> &str {
        &self.ip_text
    }
}

/// The body of the message being received, beside the session's own view of it.
struct Transfer {
    id: SpoolId,
    body: MessageBody,
    /// A body write failed: the message will be refused at its end, with 452 if the spool's
    /// file system was full, else 451.
    failed: Option<BodyWriteFailure>,
    /// Header section and DKIM body hash, computed as the data streams past.
    hasher: MessageHasher,
}

/// Why a message's data could not be stored while it streamed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyWriteFailure {
    /// The spool's file system is full (452 at the end of data).
    StorageFull,
    /// Any other write error (451).
    Other,
}

/// One line of the transaction log (`postern::transaction`), the line operators grep for.
struct TransactionLine<'l> {
    id: Option<&'l SpoolId>,
    recipients: usize,
    size: u64,
    /// `queued`, or the refusal's reply.
    result: &'l str,
    /// How the message was signed (`rsa-sha256:sel@example.org ...`) or why not
    /// (`unsigned (no_key)`); `-` before signing.
    dkim: &'l str,
}

/// A session event only the driver can carry out, because it needs the socket.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SocketEvent {
    /// Buffer this reply.
    Reply(Reply),
    /// Flush, run the TLS handshake, then call [`Session::handle_tls_started`].
    StartTls,
    /// Flush and close.
    Close,
}

/// One connection's dealings with the store, the quota and the spool.
pub(super) struct EventHandler<'a> {
    shared: &'a Shared,
    client: Client,
    /// The connection's TLS parameters, for the trace field; `None` in plaintext.
    tls: Option<String>,
    metering: Metering,
    /// Id of the open transaction once it holds recipients; it becomes the queue id.
    tx_id: Option<SpoolId>,
    transfer: Option<Transfer>,
    /// Present once AUTH succeeded: keeps the session findable for revocation.
    registration: Option<Registration>,
    /// Fires when the credentials this session authenticated with are revoked.
    revoked: CancellationToken,
    /// The directory generation published before the session's senders were last read.
    senders_generation: u64,
}

impl<'a> EventHandler<'a> {
    pub(super) fn new(shared: &'a Shared, client: Client, metering: Metering) -> Self {
        Self {
            shared,
            client,
            tls: None,
            metering,
            tx_id: None,
            transfer: None,
            registration: None,
            revoked: CancellationToken::new(),
            senders_generation: 0,
        }
    }

    pub(super) fn shared(&self) -> &'a Shared {
        self.shared
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// Fires when this session's credentials are revoked or rotated.
    pub(super) fn revoked(&self) -> &CancellationToken {
        &self.revoked
    }

    /// The TLS handshake succeeded with these parameters.
    pub(super) fn tls_started(&mut self, description: Option<String>) {
        self.tls = description;
    }

    /// Carries out one session event, answers the session where the event asks for it, and
    /// hands back what needs the socket.
    pub(super) async fn handle(
        &mut self,
        session: &mut Session,
        event: Event,
    ) -> Option<SocketEvent> {
        match event {
            Event::Reply(reply) => return Some(SocketEvent::Reply(reply)),
            Event::StartTls => return Some(SocketEvent::StartTls),
            Event::Close => return Some(SocketEvent::Close),
            Event::Authenticate {
                mechanism,
                login,
                password,
            } => {
                let outcome = self.authenticate(mechanism, &login, password).await;
                session.handle_auth_outcome(outcome);
            }
            Event::HoldRecipient(_) => {
                let outcome = self.hold_recipient().await;
                session.handle_hold_outcome(outcome);
            }
            Event::CheckSenders => {
                let fresh = self.fresh_senders(session).await;
                session.handle_senders(fresh);
            }
            Event::RecipientOutcome(label) => self.recipient_answered(label),
            Event::TransactionReset => self.reset_transaction().await,
            Event::MessageStart => self.start_message(),
            Event::MessageData(bytes) => self.message_data(&bytes).await,
            Event::MessageAbort => self.abort_message(),
            Event::TransactionRefused {
                reply,
                reason,
                recipients,
            } => self.message_refused(session, &reply, reason, recipients),
            Event::MessageComplete(message) => {
                let outcome = self.complete_message(session, message).await;
                session.handle_commit_outcome(outcome);
            }
        }
        None
    }

    /// [`crate::session::Event::Authenticate`]: checks the credentials; on success the
    /// session is registered for revocation and metered against the address's quota.
    async fn authenticate(
        &mut self,
        mechanism: Mechanism,
        login: &str,
        password: String,
    ) -> AuthOutcome {
        let shared = self.shared;
        let client_ip = self.client.ip();
        let attempt = match shared.brakes.begin_login(self.client.peer.ip()).await {
            LoginGate::Open(attempt) => attempt,
            LoginGate::Braked(refusal) => {
                shared.metrics.auth_attempt(mechanism.name(), "braked");
                tracing::info!(
                    client_ip,
                    mechanism = mechanism.name(),
                    "auth refused: failed-login brake engaged"
                );
                return AuthOutcome::Braked(match refusal {
                    Refusal::FailedLoginsFromSubnet => BrakedFrom::Network,
                    _ => BrakedFrom::Address,
                });
            }
            LoginGate::Unavailable(e) => {
                shared.metrics.auth_attempt(mechanism.name(), "error");
                tracing::warn!(client_ip, error = %e, "auth: failed-login brake unavailable");
                return AuthOutcome::Unavailable;
            }
        };
        // Read before the store: a change committed after this value was published moves it.
        self.senders_generation = shared.directory_generation.load(Ordering::Acquire);
        let checked = shared.directory.authenticate(login, &password).await;
        drop(password);
        let failed = matches!(checked, Ok(None));
        shared.brakes.login_checked(attempt, failed).await;
        match checked {
            Ok(Some(identity)) => {
                self.registration = Some(
                    shared
                        .registry
                        .register(identity.credential.clone(), self.revoked.clone()),
                );
                shared.metrics.auth_attempt(mechanism.name(), "ok");
                let quota_identity = QuotaIdentity::Address(identity.address.clone());
                self.metering = match Meter::for_identity(shared, quota_identity).await {
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
                // The login is logged (operators need it to spot attacks); the password
                // never is.
                tracing::info!(client_ip, login = %login_for_log(login), mechanism = mechanism.name(), "auth failed");
                tokio::time::sleep(shared.config.limits.auth_failure_delay).await;
                AuthOutcome::Rejected
            }
            Err(e) => {
                shared.metrics.auth_attempt(mechanism.name(), "error");
                tracing::warn!(client_ip, error = %e, "auth: store unavailable");
                AuthOutcome::Unavailable
            }
        }
    }

    /// [`crate::session::Event::CheckSenders`]: the authenticated user's senders read again
    /// when the directory changed since they were last read (`None`: unchanged, or the store
    /// did not answer, in which case the session keeps what it has, as the revocation watcher
    /// does, and the next MAIL FROM asks again).
    async fn fresh_senders(&mut self, session: &Session) -> Option<Vec<String>> {
        let shared = self.shared;
        let generation = shared.directory_generation.load(Ordering::Acquire);
        if generation == self.senders_generation {
            return None;
        }
        let address = session.authenticated()?.address.clone();
        match shared.directory.senders_of(&address).await {
            Ok(senders) => {
                self.senders_generation = generation;
                // An address removed meanwhile owns nothing (its session is cut anyway).
                Some(senders.unwrap_or_default())
            }
            Err(e) => {
                tracing::warn!(address = %address, error = %e, "senders re-check: store unavailable");
                None
            }
        }
    }

    /// [`crate::session::Event::HoldRecipient`]: holds the recipient against the quota
    /// under the open transaction's id, which is chosen at its first recipient.
    async fn hold_recipient(&mut self) -> HoldOutcome {
        let shared = self.shared;
        let id = self.tx_id.get_or_insert_with(|| shared.spool.new_id());
        self.metering.hold(shared, id).await
    }

    /// [`crate::session::Event::RecipientOutcome`].
    fn recipient_answered(&self, label: &'static str) {
        self.shared.metrics.recipient(label);
    }

    /// [`crate::session::Event::TransactionReset`]: the transaction ended without a message.
    async fn reset_transaction(&mut self) {
        self.tx_id = None;
        self.metering.release(self.shared).await;
    }

    /// [`crate::session::Event::MessageStart`]: a body under the transaction's id.
    fn start_message(&mut self) {
        let id = self
            .tx_id
            .take()
            .unwrap_or_else(|| self.shared.spool.new_id());
        let body = self.shared.spool.new_body(&id);
        self.transfer = Some(Transfer {
            id,
            body,
            failed: None,
            hasher: MessageHasher::new(),
        });
    }

    /// [`crate::session::Event::MessageData`]. A failed write is remembered, not reported:
    /// the client is still sending, and hears 451 at the end of its data.
    async fn message_data(&mut self, bytes: &[u8]) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if t.failed.is_some() {
            return;
        }
        t.hasher.write(bytes);
        if let Err(e) = t.body.write(bytes).await {
            tracing::error!(queue_id = %t.id, error = %e, "spool: cannot store message data");
            t.failed = Some(if e.is_storage_full() {
                BodyWriteFailure::StorageFull
            } else {
                BodyWriteFailure::Other
            });
        }
    }

    /// [`crate::session::Event::MessageAbort`].
    fn abort_message(&mut self) {
        self.transfer = None;
    }

    /// [`crate::session::Event::TransactionRefused`]: counted by the session's reason and
    /// logged with the reply.
    fn message_refused(
        &self,
        session: &Session,
        reply: &Reply,
        reason: MessageRefusal,
        recipients: usize,
    ) {
        self.shared.metrics.message_rejected(reason.label());
        self.log_transaction(
            session.authenticated(),
            TransactionLine {
                id: None,
                recipients,
                size: 0,
                result: &reply.summary(),
                dkim: "-",
            },
        );
    }

    /// [`crate::session::Event::MessageComplete`]: counts the message against the quota,
    /// then makes it durable; gives the count back if the spool refuses it. Never the other
    /// way round: a message is not accepted uncounted.
    async fn complete_message(
        &mut self,
        session: &Session,
        message: CompletedMessage,
    ) -> CommitOutcome {
        let shared = self.shared;
        self.tx_id = None;
        let transfer = match self.transfer.take() {
            Some(t) if t.failed.is_none() => t,
            failed => {
                self.metering.release(shared).await;
                return match failed.and_then(|t| t.failed) {
                    Some(BodyWriteFailure::StorageFull) => {
                        shared.metrics.message_rejected("spool_full");
                        CommitOutcome::StorageFull
                    }
                    _ => CommitOutcome::Failed,
                };
            }
        };
        let counted = match self.metering.commit(shared).await {
            Ok(counted) => counted,
            Err(CommitRefusal::Unavailable) => {
                shared.metrics.message_rejected("quota_unavailable");
                self.metering.release(shared).await;
                return CommitOutcome::QuotaUnavailable;
            }
            Err(CommitRefusal::Full { limit, retry_after }) => {
                shared.metrics.message_rejected("quota");
                return CommitOutcome::QuotaFull { limit, retry_after };
            }
        };
        let outcome = self.sign_and_spool(session, transfer, message).await;
        if let CommitOutcome::Failed | CommitOutcome::SigningFailed | CommitOutcome::StorageFull =
            outcome
        {
            self.metering.refund(shared, counted).await;
        }
        outcome
    }

    /// The end of the session, whatever way it ended: an open transaction's holds go back and
    /// the session leaves the revocation registry.
    pub(super) async fn finish(mut self) {
        self.registration = None;
        self.metering.release(self.shared).await;
    }

    async fn sign_and_spool(
        &self,
        session: &Session,
        transfer: Transfer,
        message: CompletedMessage,
    ) -> CommitOutcome {
        let shared = self.shared;
        let tls = self.tls.as_deref();
        let now = SystemTime::now();
        let auth = session.authenticated();
        let prefix = headers::build_prefix(
            &message.headers,
            &TraceInfo {
                helo: session.helo_name().unwrap_or("unknown"),
                client_ip: self.client.ip(),
                hostname: &shared.config.server.hostname,
                protocol: protocol(tls.is_some(), auth.is_some()),
                id: &transfer.id.0,
                tls,
            },
            now,
        );
        // Signed after the sender checks (the session made them) and before the spool: the
        // spool holds the signed message. A hosting account signs only for its own domains
        // (authenticated senders proved ownership in the session).
        let permitted = session.hosting().map(|h| h.domains.as_slice());
        let signing = shared
            .signer
            .sign(
                signing_from(&message.headers),
                permitted,
                transfer.hasher.finish(),
                &prefix.added,
            )
            .await;
        let dkim = signing.log_text();
        let recipients = message.recipients.len();
        if signing == Signing::Unsigned(Unsigned::Error) {
            // Fail closed, as for the quota store: the client retries; unsigned mail from a
            // DMARC p=reject domain would be lost silently.
            shared.metrics.message_rejected("dkim_error");
            self.log_transaction(
                auth,
                TransactionLine {
                    id: Some(&transfer.id),
                    recipients,
                    size: 0,
                    result: "451 signing unavailable",
                    dkim: &dkim,
                },
            );
            return CommitOutcome::SigningFailed;
        }
        let prefix = match &signing {
            Signing::Signed { fields, .. } => format!("{}{fields}{}", prefix.trace, prefix.added),
            Signing::Unsigned(_) => prefix.joined(),
        };
        let submitter = Submitter {
            address: auth.map(|a| a.address.clone()),
            device: auth.map(|a| a.device.clone()),
            client_ip: self.client.ip().to_string(),
            listener: self.client.role.name().to_string(),
        };
        let envelope = envelope(transfer.id.clone(), message, prefix, submitter, now);
        let size = envelope.prefix.len() as u64 + transfer.body.len();
        let committed = shared.spool.commit(envelope, transfer.body).await;
        let (outcome, result) = match committed {
            Ok(()) => {
                shared.metrics.message_accepted(size);
                (CommitOutcome::Queued(transfer.id.0.clone()), "queued")
            }
            Err(e) if e.is_storage_full() => {
                shared.metrics.message_rejected("spool_full");
                tracing::error!(queue_id = %transfer.id, error = %e, "spool file system full; client told to retry later");
                (CommitOutcome::StorageFull, "452 spool full")
            }
            Err(e) => {
                shared.metrics.message_rejected("spool_error");
                tracing::error!(queue_id = %transfer.id, error = %e, "spool commit failed; client told to retry");
                (CommitOutcome::Failed, "451 spool error")
            }
        };
        self.log_transaction(
            auth,
            TransactionLine {
                id: Some(&transfer.id),
                recipients,
                size,
                result,
                dkim: &dkim,
            },
        );
        outcome
    }

    fn log_transaction(&self, auth: Option<&Authenticated>, line: TransactionLine<'_>) {
        tracing::info!(
            target: "postern::transaction",
            queue_id = %line.id.map(|i| i.0.as_str()).unwrap_or("-"),
            address = %auth.map(|a| a.address.as_str()).unwrap_or("-"),
            device = %auth.map(|a| a.device.as_str()).unwrap_or("-"),
            client_ip = self.client.ip(),
            listener = self.client.role.name(),
            recipients = line.recipients,
            size = line.size,
            result = line.result,
            dkim = line.dkim,
            "transaction"
        );
    }
}

/// The `with` keyword of the `Received:` field (RFC 3848).
fn protocol(tls: bool, authenticated: bool) -> &'static str {
    match (tls, authenticated) {
        (true, true) => "ESMTPSA",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (false, false) => "ESMTP",
    }
}

/// The `From:` addresses that may name a signing domain: only a single, well-formed field.
fn signing_from(headers: &HeaderFacts) -> &[String] {
    if headers.from_fields == 1 && !headers.from_malformed {
        &headers.from
    } else {
        &[]
    }
}

/// The spool's record of a message the session accepted.
fn envelope(
    id: SpoolId,
    message: CompletedMessage,
    prefix: String,
    submitter: Submitter,
    now: SystemTime,
) -> Envelope {
    Envelope {
        id,
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
        require_tls: message.require_tls,
        // RFC 8689 section 4.1: REQUIRETLS wins over the header field.
        tls_required_no: message.headers.tls_required_no && !message.require_tls,
        submitter,
        prefix,
        data_file: None,
    }
}

/// Client-supplied text made safe for a log line.
fn login_for_log(text: &str) -> String {
    let text: String = crate::printable::escape_controls(text)
        .chars()
        .take(128)
        .collect();
    if text.is_empty() { "-".into() } else { text }
}

#[cfg(test)]
mod tests;
