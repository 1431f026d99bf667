//! The outbound SMTP client: one transaction to one address of one MX host.
//!
//! The conversation (RFC 5321 section 3, 4.1): greeting → EHLO (HELO when EHLO gets a 5yz,
//! RFC 5321 3.2) → STARTTLS when offered and the [`TlsPolicy`] wants it (RFC 3207; EHLO again
//! afterwards, section 4.2) → MAIL FROM with SIZE= (RFC 1870), BODY=8BITMIME (RFC 6152) and
//! SMTPUTF8 (RFC 6531) as the server supports them → one RCPT TO per recipient → DATA (when
//! PIPELINING is advertised, RFC 2920, MAIL, every RCPT and DATA go in one write, with RSET
//! in front on a reused session: two round trips per message; without it each command waits
//! for its reply, and DATA is sent only once a recipient is accepted) → the message streamed
//! through the dot-stuffer (`smtp::dot`)
//! from an [`AsyncRead`] in 64 KiB chunks, never whole in memory → final reply → QUIT.
//!
//! Timeouts: `connect_timeout` for the TCP connect; `command_timeout` for each whole reply,
//! each write and the TLS handshake (`[delivery]` has no per-phase values; RFC 5321 4.5.3.2
//! suggests 2-10 minutes per phase, the default of 5 minutes sits in that range).
//!
//! What the caller gets ([`deliver`]):
//! - `Ok(TransactionReport)`: the server gave a transaction answer, i.e. replied to MAIL FROM
//!   (other than 421): one [`RecipientOutcome`] per recipient. A 4yz/5yz to MAIL or DATA
//!   applies to every recipient still in play, a RCPT reply to its recipient only, the final
//!   reply to all accepted ones. A connection lost after the final dot is also an answer (all
//!   accepted recipients temporary, "status unknown"): trying the next MX at once could
//!   deliver the message twice (RFC 1047).
//! - `Err(ClientError)`: no transaction answer (connect failure, timeout, 421, bad greeting,
//!   protocol error, TLS failure after the fallback). The caller tries the next address;
//!   when none is left, all recipients are temporarily failed.
//!
//! TLS fallback: when the policy allows it ([`TlsPolicy::allows_plaintext_fallback`]) and the
//! handshake fails, the client reconnects to the same address and runs the transaction in
//! cleartext without STARTTLS (RFC 7435: opportunistic security must not make delivery worse
//! than cleartext). The report says which [`TlsMode`] carried the mail.
//!
//! Reuse ([`deliver_reusing`]): with `keep`, a session that answered a transaction and can
//! still carry commands (not left inside DATA or after an error) is handed back as an
//! [`IdleSession`] (stream, last EHLO extensions, TLS mode, peer, the policy it was made
//! under) instead of getting QUIT; `pool.rs` keeps it. Given back later for the same peer and
//! policy, it gets RSET (RFC 5321 4.1.1.5; 250 within 10 s, nothing unasked for buffered)
//! before MAIL FROM; its report carries the session's [`TlsMode`]. Any failure before a
//! transaction answer on it (the server closed it, 421, no reply) closes it and the
//! transaction runs on a new connection as usual, which is safe: without the final dot's
//! reply nothing was accepted, and a lost reply after the dot is an answer, not a failure.
//!
//! Bytes that arrive after the 220 to STARTTLS and before the handshake are refused
//! (CVE-2011-0411-style injection). Not done here: choosing hosts and addresses (`mod.rs`),
//! keeping idle sessions (`pool.rs`), BDAT, AUTH. DANE: under [`TlsPolicy::Dane`] and
//! [`TlsPolicy::Encrypt`] no STARTTLS, a refused STARTTLS or a failed handshake (including a
//! certificate the DANE verifier in `settings.tls_config` refuses) is
//! [`ClientError::TlsRequired`], before any MAIL FROM: nothing of the message is sent.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::outcome::{Command, Peer, RecipientOutcome};
use super::tls::{TlsMode, TlsPolicy, server_name};
use crate::smtp::command::{self, MailFrom, is_unsendable_address};
use crate::smtp::dot::DotStuffer;
use crate::smtp::extensions::Extensions;
use crate::smtp::xtext;
use crate::smtp::{EnhancedCode, Response, ResponseError, parse_response};

/// Size of the chunks read from the spool and written to the server.
const CHUNK: usize = 64 * 1024;
/// Longest wait for the reply to QUIT and the TLS close: politeness only.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings shared by all transactions.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Name sent in EHLO/HELO (`[server] hostname`).
    pub helo_name: String,
    /// TCP connect timeout per address.
    pub connect_timeout: Duration,
    /// Timeout for each reply, each write and the TLS handshake.
    pub command_timeout: Duration,
    /// rustls configuration for STARTTLS under [`TlsPolicy::Opportunistic`].
    pub tls_config: Arc<rustls::ClientConfig>,
    /// Where transactions are timed (`postern_delivery_smtp_transaction_seconds`); `None`
    /// for the hand-off client, whose transfers are not deliveries.
    pub metrics: Option<crate::metrics::Metrics>,
}

/// The envelope of one transaction.
#[derive(Debug, Clone, Copy)]
pub struct Transaction<'a> {
    /// Reverse-path; empty for the null sender `<>`.
    pub sender: &'a str,
    /// Forward-paths, in the order outcomes are reported.
    pub recipients: &'a [String],
    /// Message size in bytes for `SIZE=`.
    pub size: u64,
    /// The message has 8-bit content (`BODY=8BITMIME` when offered).
    pub body_8bit: bool,
    /// The envelope or headers need SMTPUTF8.
    pub smtputf8: bool,
    /// RFC 3461 `RET=` as given at submission (`FULL` or `HDRS`).
    pub ret: Option<&'a str>,
    /// RFC 3461 `ENVID=` as given at submission, decoded.
    pub envid: Option<&'a str>,
    /// RFC 3461 parameters of each recipient, in the order of `recipients` (missing
    /// entries have none).
    pub recipient_dsn: &'a [RecipientDsn],
    /// RFC 8689 REQUIRETLS (`require_tls.rs`): only to a server that advertises it.
    pub require_tls: bool,
}

/// The RFC 3461 parameters a recipient was submitted with, passed on to a hop that advertises
/// DSN (section 5.2.2 and 6.2.1): then that hop, not Postern, reports on the recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecipientDsn {
    /// `NOTIFY=` keywords joined by commas (`NEVER`, or of `SUCCESS,FAILURE,DELAY`).
    pub notify: Option<String>,
    /// `ORCPT=rfc822;` address, decoded.
    pub orcpt: Option<String>,
}

/// `line` (a command with its CRLF) with ` params` before the CRLF.
fn with_params(mut line: String, params: &str) -> String {
    if params.is_empty() {
        return line;
    }
    let end = line.strip_suffix("\r\n").map_or(line.len(), str::len);
    line.insert_str(end, params);
    line
}

impl Transaction<'_> {
    /// The reverse-path with everything the message would declare on it.
    fn mail_from(&self) -> MailFrom<'_> {
        MailFrom {
            sender: self.sender,
            size: Some(self.size),
            body_8bit: self.body_8bit,
            smtputf8: self.needs_smtputf8(),
            require_tls: self.require_tls,
        }
    }

    /// RFC 6531 section 3.4: the whole transaction needs SMTPUTF8 when the client declared it
    /// or the reverse-path is not ASCII. (A UTF-8 forward-path needs it only for itself, see
    /// [`Outcomes::screen`], but once sent, MAIL must declare it too: [`Self::mail_from`].)
    fn needs_smtputf8(&self) -> bool {
        self.smtputf8 || !self.sender.is_ascii() || self.recipients.iter().any(|r| !r.is_ascii())
    }

    /// The MAIL FROM line, with RET and ENVID for a server that advertises DSN.
    fn mail_line(&self, ext: &Extensions) -> String {
        let line = self.mail_from().command(ext);
        if !ext.dsn {
            return line;
        }
        let mut params = String::new();
        if let Some(ret) = self.ret {
            params.push_str(&format!(" RET={}", ret.to_ascii_uppercase()));
        }
        if let Some(envid) = self.envid {
            params.push_str(&format!(" ENVID={}", xtext::encode(envid)));
        }
        with_params(line, &params)
    }

    /// The RCPT TO line of recipient `i`, with NOTIFY and ORCPT for a server that advertises
    /// DSN.
    fn rcpt_line(&self, i: usize, ext: &Extensions) -> String {
        let line = command::rcpt_to(&self.recipients[i]);
        let Some(dsn) = self.recipient_dsn.get(i).filter(|_| ext.dsn) else {
            return line;
        };
        let mut params = String::new();
        if let Some(notify) = &dsn.notify {
            params.push_str(&format!(" NOTIFY={}", notify.to_ascii_uppercase()));
        }
        if let Some(orcpt) = &dsn.orcpt {
            params.push_str(&format!(" ORCPT=rfc822;{}", xtext::encode(orcpt)));
        }
        with_params(line, &params)
    }
}

/// Opens the message to send, from its first byte, each time a DATA is about to start.
pub trait MessageSource: Sync {
    /// The message as it must be sent: CRLF line endings, not dot-stuffed.
    fn open(&self) -> impl Future<Output = io::Result<Box<dyn AsyncRead + Send + Unpin>>> + Send;
}

/// A transaction answer from one server.
#[derive(Debug, Clone)]
pub struct TransactionReport {
    /// Host and address that answered.
    pub peer: Peer,
    /// The protection the conversation had.
    pub tls: TlsMode,
    /// One outcome per recipient, in the order of [`Transaction::recipients`].
    pub recipients: Vec<RecipientOutcome>,
    /// The server advertised DSN, so the recipients' RFC 3461 parameters went to it and the
    /// reporting on them is its job from here (no `relayed` DSN from Postern).
    pub dsn_relayed: bool,
}

/// A conversation that ended without a transaction answer. Always temporary for the
/// recipients; the next address may do better.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error("connect failed: {source}")]
    Connect {
        /// The socket error.
        source: io::Error,
    },
    /// TCP connect did not finish in time.
    #[error("connect timeout after {after:?}")]
    ConnectTimeout {
        /// The configured connect timeout.
        after: Duration,
    },
    /// A reply, a write or the TLS handshake took longer than `command_timeout`.
    #[error("timeout after {after:?} at {phase}")]
    Timeout {
        /// The command waited on.
        phase: Command,
        /// The configured timeout.
        after: Duration,
    },
    /// A socket error.
    #[error("connection error during {phase}: {source}")]
    Io {
        /// The command in progress.
        phase: Command,
        /// The socket error.
        source: io::Error,
    },
    /// The server closed the connection.
    #[error("connection closed by server during {phase}")]
    Closed {
        /// The command in progress.
        phase: Command,
    },
    /// The server sent something that is not an SMTP reply.
    #[error("protocol error in reply to {phase}: {source}")]
    Protocol {
        /// The command answered.
        phase: Command,
        /// What was wrong.
        source: ResponseError,
    },
    /// The server refused the session (greeting, EHLO/HELO) or closed it with 421.
    #[error("{reply} (in reply to {phase})")]
    Rejected {
        /// The command answered.
        phase: Command,
        /// The reply.
        reply: Response,
    },
    /// The TLS handshake after STARTTLS failed.
    #[error("TLS handshake failed: {source}")]
    TlsHandshake {
        /// The rustls or socket error.
        source: io::Error,
    },
    /// The server sent bytes after its 220 to STARTTLS, before the handshake.
    #[error("server sent data after its reply to STARTTLS")]
    PipelinedAfterStartTls,
    /// The policy requires TLS (DANE) and the session could not have it, or the server was
    /// not authenticated.
    #[error("TLS required by {by}: {detail}")]
    TlsRequired {
        /// `DANE` or `MTA-STS` ([`TlsPolicy::required_by`]).
        by: &'static str,
        /// Metric label: `starttls_not_offered`, `starttls_refused`, `handshake`,
        /// `tlsa_mismatch`, `name_mismatch`.
        reason: &'static str,
        /// What happened.
        detail: String,
    },
    /// A REQUIRETLS message and a server that does not advertise REQUIRETLS after STARTTLS
    /// (RFC 8689 section 4.2.2; `require_tls.rs` makes the group's failure 5.7.30).
    #[error("REQUIRETLS not advertised")]
    RequireTlsNotOffered,
}

impl ClientError {
    /// The server did not answer in time before any transaction: the connect, or the
    /// greeting or EHLO/HELO reply, timed out (what makes a destination dead, `dead.rs`).
    pub fn is_unresponsive(&self) -> bool {
        match self {
            ClientError::ConnectTimeout { .. } => true,
            ClientError::Timeout { phase, .. } => {
                matches!(phase, Command::Greeting | Command::Ehlo | Command::Helo)
            }
            _ => false,
        }
    }

    /// The RFC 3463 status a DSN would give (always class 4).
    pub fn status(&self) -> EnhancedCode {
        match self {
            // 4.4.1 "no answer from host".
            ClientError::Connect { .. } | ClientError::ConnectTimeout { .. } => {
                EnhancedCode::new(4, 4, 1)
            }
            // 4.4.2 "bad connection".
            ClientError::Timeout { .. } | ClientError::Io { .. } | ClientError::Closed { .. } => {
                EnhancedCode::new(4, 4, 2)
            }
            // 4.5.0 "other or undefined protocol status".
            ClientError::Protocol { .. } => EnhancedCode::new(4, 5, 0),
            ClientError::Rejected { reply, .. } => match reply.enhanced {
                Some(e) if e.class == 4 => e,
                Some(e) => EnhancedCode::new(4, e.subject, e.detail),
                None => EnhancedCode::new(4, 0, 0),
            },
            // 4.7.0 "other or undefined security status".
            ClientError::TlsHandshake { .. } | ClientError::PipelinedAfterStartTls => {
                EnhancedCode::new(4, 7, 0)
            }
            // 4.7.5 "cryptographic failure".
            ClientError::TlsRequired { .. } => EnhancedCode::new(4, 7, 5),
            // The class 4 form of RFC 8689's 5.7.30 (the group fails with 5.7.30 itself).
            ClientError::RequireTlsNotOffered => EnhancedCode::new(4, 7, 30),
        }
    }
}

/// Runs one transaction with `peer` under `policy`, falling back to cleartext on the same
/// address if the TLS handshake fails and the policy allows it.
///
/// # Errors
/// [`ClientError`] when no transaction answer was obtained (see the module documentation).
pub async fn deliver<S: MessageSource>(
    settings: &ClientSettings,
    peer: &Peer,
    policy: TlsPolicy,
    txn: &Transaction<'_>,
    source: &S,
) -> Result<TransactionReport, ClientError> {
    deliver_reusing(settings, peer, policy, txn, source, None, false)
        .await
        .result
}

/// What [`deliver_reusing`] did.
#[derive(Debug)]
pub struct Delivered {
    /// As [`deliver`] answers.
    pub result: Result<TransactionReport, ClientError>,
    /// The answer came over the reused session.
    pub reused: bool,
    /// A new connection was tried (after no, or a failed, reused session); `result` is its
    /// outcome.
    pub fresh: bool,
    /// The session to keep for the next transaction (only when `keep` was asked for, the
    /// server answered and the session can still carry commands).
    pub idle: Option<IdleSession>,
}

/// [`deliver`] over `reuse`, an idle session to the same peer made under the same policy,
/// when given: RSET, then the transaction. A reused session that is dead, refuses RSET or
/// fails before a transaction answer is closed and the transaction runs on a new connection,
/// as [`deliver`] would (nothing of the message was accepted on it: an error after the final
/// dot is an answer). With `keep`, the session that answered is handed back in
/// [`Delivered::idle`] instead of getting QUIT.
pub async fn deliver_reusing<S: MessageSource>(
    settings: &ClientSettings,
    peer: &Peer,
    policy: TlsPolicy,
    txn: &Transaction<'_>,
    source: &S,
    reuse: Option<IdleSession>,
    keep: bool,
) -> Delivered {
    if let Some(idle) = reuse {
        match idle.transaction(peer, txn, source).await {
            Ok((report, idle)) => {
                let idle = match (keep, idle) {
                    (true, idle) => idle,
                    (false, Some(idle)) => {
                        idle.quit().await;
                        None
                    }
                    (false, None) => None,
                };
                return Delivered {
                    result: Ok(report),
                    reused: true,
                    fresh: false,
                    idle,
                };
            }
            Err(error) => tracing::debug!(
                mx = %peer.host,
                ip = %peer.addr.ip(),
                error = %error,
                "reused connection failed, opening a new one"
            ),
        }
    }
    let (result, idle) = match attempt(settings, peer, policy, txn, source, keep).await {
        (Err(ClientError::TlsHandshake { source: error }), _)
            if policy.allows_plaintext_fallback() =>
        {
            tracing::info!(
                mx = %peer.host,
                ip = %peer.addr.ip(),
                error = %error,
                "TLS handshake failed, retrying the same host in plaintext"
            );
            attempt(settings, peer, TlsPolicy::Plaintext, txn, source, keep).await
        }
        other => other,
    };
    Delivered {
        result,
        reused: false,
        fresh: true,
        idle,
    }
}

async fn attempt<S: MessageSource>(
    settings: &ClientSettings,
    peer: &Peer,
    policy: TlsPolicy,
    txn: &Transaction<'_>,
    source: &S,
    keep: bool,
) -> (Result<TransactionReport, ClientError>, Option<IdleSession>) {
    let mut session = match Session::connect(settings, peer).await {
        Ok(session) => session,
        Err(e) => return (Err(e), None),
    };
    match converse(&mut session, settings, peer, policy, txn, source).await {
        Ok((report, ext)) if keep && session.usable => {
            let idle = IdleSession {
                tls: report.tls.clone(),
                session,
                ext,
                peer: peer.clone(),
                policy,
            };
            (Ok(report), Some(idle))
        }
        result => {
            session.quit().await;
            (result.map(|(report, _)| report), None)
        }
    }
}

/// Longest wait for the reply to RSET on a reused session: a session that was fine seconds
/// ago answers at once, and a silent one is better replaced than waited for.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);

/// A session kept open after a transaction answer, for the next transaction to the same
/// peer under the same policy (`pool.rs`): it has had its greeting, EHLO and STARTTLS.
pub struct IdleSession {
    session: Session,
    /// The extensions of the last EHLO (after STARTTLS when there was one).
    ext: Extensions,
    /// The protection the session has; also that of every transaction it carries.
    tls: TlsMode,
    peer: Peer,
    /// The policy the session was made under ([`TlsPolicy::Plaintext`] after the cleartext
    /// fallback).
    policy: TlsPolicy,
}

impl std::fmt::Debug for IdleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleSession")
            .field("peer", &self.peer)
            .field("policy", &self.policy)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl IdleSession {
    /// The host and address connected to.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The policy the session was made under.
    pub fn policy(&self) -> TlsPolicy {
        self.policy
    }

    /// QUIT and close.
    pub async fn quit(mut self) {
        self.session.quit().await;
    }

    /// RSET, then the transaction. `Err` (the session closed) when RSET is not answered with
    /// 250 or there is no transaction answer; `Ok` hands the session back when it can carry
    /// another transaction.
    async fn transaction<S: MessageSource>(
        mut self,
        peer: &Peer,
        txn: &Transaction<'_>,
        source: &S,
    ) -> Result<(TransactionReport, Option<IdleSession>), ClientError> {
        let result = self.reset_and_send(peer, txn, source).await;
        match result {
            Ok(recipients) => {
                let report = TransactionReport {
                    peer: peer.clone(),
                    tls: self.tls.clone(),
                    recipients,
                    dsn_relayed: self.ext.dsn,
                };
                let idle = if self.session.usable {
                    Some(self)
                } else {
                    self.session.quit().await;
                    None
                };
                Ok((report, idle))
            }
            Err(e) => {
                self.session.quit().await;
                Err(e)
            }
        }
    }

    /// To a server that pipelines, RSET goes in the same write as the envelope and DATA
    /// (RFC 2920 section 3.1 lets RSET, MAIL and RCPT stand anywhere in a group and DATA end
    /// it); otherwise it is answered before MAIL.
    async fn reset_and_send<S: MessageSource>(
        &mut self,
        peer: &Peer,
        txn: &Transaction<'_>,
        source: &S,
    ) -> Result<Vec<RecipientOutcome>, ClientError> {
        if self.ext.pipelining {
            return self
                .session
                .transaction(peer, txn, &self.ext, source, true)
                .await;
        }
        self.session.reset().await?;
        self.session
            .transaction(peer, txn, &self.ext, source, false)
            .await
    }
}

/// The conversation on a new connection: greeting, EHLO, STARTTLS as the policy wants, the
/// transaction. Also hands back the extensions, for a session kept for reuse.
async fn converse<S: MessageSource>(
    session: &mut Session,
    settings: &ClientSettings,
    peer: &Peer,
    policy: TlsPolicy,
    txn: &Transaction<'_>,
    source: &S,
) -> Result<(TransactionReport, Extensions), ClientError> {
    let greeting = session.read_reply(Command::Greeting).await?;
    if !greeting.is_positive() {
        // RFC 5321 3.1 / 4.3.2: 554 (or 421) instead of 220; Postfix's smtp_skip_5xx_greeting.
        return Err(ClientError::Rejected {
            phase: Command::Greeting,
            reply: greeting,
        });
    }
    let ext = session.hello(&settings.helo_name).await?;
    let (tls, ext) = session.negotiate_tls(settings, peer, policy, ext).await?;
    let recipients = session.transaction(peer, txn, &ext, source, false).await?;
    let report = TransactionReport {
        peer: peer.clone(),
        tls,
        recipients,
        dsn_relayed: ext.dsn,
    };
    Ok((report, ext))
}

/// The [`ClientError::TlsRequired`] for a handshake that failed where the policy allows no
/// cleartext: the DANE verifier's own reason when it refused the certificate.
fn required_tls_failed(policy: TlsPolicy, source: &io::Error) -> ClientError {
    match super::dane::DaneError::from_io(source) {
        Some(dane) => ClientError::TlsRequired {
            by: policy.required_by(),
            reason: dane.reason(),
            detail: dane.to_string(),
        },
        None => ClientError::TlsRequired {
            by: policy.required_by(),
            reason: "handshake",
            detail: format!("TLS handshake failed: {source}"),
        },
    }
}

/// Whether the recipients of `txn` are refused before MAIL FROM, and how: the message needs
/// SMTPUTF8 and the server lacks it, or the sender cannot be written on a command line.
fn refused_before_mail(
    peer: &Peer,
    txn: &Transaction<'_>,
    ext: &Extensions,
) -> Option<RecipientOutcome> {
    if (txn.smtputf8 || !txn.sender.is_ascii()) && !ext.smtputf8 {
        // RFC 6531 section 3.4: such a message must not be sent to a server without
        // SMTPUTF8; there is no downgrade (RFC 6857 is not implemented).
        return Some(RecipientOutcome::permanent(
            EnhancedCode::new(5, 6, 7),
            format!("{peer} does not support SMTPUTF8, which the message requires"),
        ));
    }
    if is_unsendable_address(txn.sender) {
        return Some(RecipientOutcome::permanent(
            EnhancedCode::new(5, 1, 7),
            "sender address cannot be sent in SMTP",
        ));
    }
    None
}

/// The outcomes of one transaction's recipients as they become known, in the order of
/// [`Transaction::recipients`]; a reply that applies to all recipients still open fills the
/// rest at the end.
struct Outcomes {
    known: Vec<Option<RecipientOutcome>>,
}

impl Outcomes {
    /// Recipients whose address cannot go on the wire fail at once (5.1.3), and so do UTF-8
    /// addresses for a server without SMTPUTF8 (5.6.7, RFC 6531 section 3.4: never passed on
    /// to it); the others are returned by index, to be sent.
    fn screen(peer: &Peer, recipients: &[String], ext: &Extensions) -> (Self, Vec<usize>) {
        let mut known = vec![None; recipients.len()];
        let mut sendable = Vec::with_capacity(recipients.len());
        for (i, rcpt) in recipients.iter().enumerate() {
            if is_unsendable_address(rcpt) {
                known[i] = Some(RecipientOutcome::permanent(
                    EnhancedCode::new(5, 1, 3),
                    "recipient address cannot be sent in SMTP",
                ));
            } else if !rcpt.is_ascii() && !ext.smtputf8 {
                known[i] = Some(RecipientOutcome::permanent(
                    EnhancedCode::new(5, 6, 7),
                    format!(
                        "{peer} does not support SMTPUTF8, which the recipient address requires"
                    ),
                ));
            } else {
                sendable.push(i);
            }
        }
        (Self { known }, sendable)
    }

    fn set(&mut self, index: usize, outcome: RecipientOutcome) {
        self.known[index] = Some(outcome);
    }

    /// Every recipient without an outcome of its own gets `rest`.
    fn finish(self, rest: &RecipientOutcome) -> Vec<RecipientOutcome> {
        self.known
            .into_iter()
            .map(|o| o.unwrap_or_else(|| rest.clone()))
            .collect()
    }
}

/// What the server answered to the envelope.
enum EnvelopeAnswer {
    /// MAIL FROM refused: the outcome of every recipient still open.
    MailRefused(RecipientOutcome),
    /// MAIL FROM accepted and every RCPT answered (refusals are in the [`Outcomes`]).
    Recipients {
        /// How many recipients the server accepted.
        accepted: usize,
    },
}

/// The transport under a session: TCP, then TLS after STARTTLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Transient state while the TCP stream is handed to the TLS handshake.
    Upgrading,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// One connection: the stream, bytes read but not parsed yet, and whether it can still carry
/// commands.
pub(super) struct Session {
    stream: Stream,
    buf: Vec<u8>,
    command_timeout: Duration,
    /// False once the conversation is in an unknown state (inside DATA, after an error):
    /// QUIT would then be read as message text, so the connection is only closed.
    usable: bool,
    metrics: Option<crate::metrics::Metrics>,
}

impl Session {
    pub(super) async fn connect(
        settings: &ClientSettings,
        peer: &Peer,
    ) -> Result<Self, ClientError> {
        let tcp = match timeout(settings.connect_timeout, TcpStream::connect(peer.addr)).await {
            Err(_) => {
                return Err(ClientError::ConnectTimeout {
                    after: settings.connect_timeout,
                });
            }
            Ok(Err(source)) => return Err(ClientError::Connect { source }),
            Ok(Ok(tcp)) => tcp,
        };
        // Commands are small and each waits for its reply: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        Ok(Self {
            stream: Stream::Plain(tcp),
            buf: Vec::with_capacity(1024),
            command_timeout: settings.command_timeout,
            usable: true,
            metrics: settings.metrics.clone(),
        })
    }

    /// Reads one whole reply within `command_timeout`.
    /// One RCPT reply: `true` when the recipient was accepted, else its outcome is set. A 421
    /// ends the session: the server is closing, nothing was delivered, another address may
    /// work.
    fn rcpt_answered(
        &mut self,
        peer: &Peer,
        i: usize,
        reply: Response,
        outcomes: &mut Outcomes,
    ) -> Result<bool, ClientError> {
        if reply.code == 421 {
            self.usable = false;
            return Err(ClientError::Rejected {
                phase: Command::Rcpt,
                reply,
            });
        }
        if reply.is_positive() {
            return Ok(true);
        }
        outcomes.set(i, RecipientOutcome::from_reply(peer, Command::Rcpt, &reply));
        Ok(false)
    }

    pub(super) async fn read_reply(&mut self, phase: Command) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.command_timeout;
        let result = self.read_reply_until(phase, deadline).await;
        if result.is_err() {
            self.usable = false;
        }
        result
    }

    async fn read_reply_until(
        &mut self,
        phase: Command,
        deadline: Instant,
    ) -> Result<Response, ClientError> {
        loop {
            match parse_response(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(source) => return Err(ClientError::Protocol { phase, source }),
            }
            self.buf.reserve(4096);
            let read = timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Err(_) => {
                    return Err(ClientError::Timeout {
                        phase,
                        after: self.command_timeout,
                    });
                }
                Ok(Err(source)) => return Err(ClientError::Io { phase, source }),
                Ok(Ok(0)) => return Err(ClientError::Closed { phase }),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Writes and flushes `bytes` within `command_timeout`.
    pub(super) async fn write(&mut self, bytes: &[u8], phase: Command) -> Result<(), ClientError> {
        let stream = &mut self.stream;
        let io = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        let result = match timeout(self.command_timeout, io).await {
            Err(_) => Err(ClientError::Timeout {
                phase,
                after: self.command_timeout,
            }),
            Ok(Err(source)) => Err(ClientError::Io { phase, source }),
            Ok(Ok(())) => Ok(()),
        };
        if result.is_err() {
            self.usable = false;
        }
        result
    }

    pub(super) async fn command(
        &mut self,
        line: &str,
        phase: Command,
    ) -> Result<Response, ClientError> {
        self.write(line.as_bytes(), phase).await?;
        self.read_reply(phase).await
    }

    /// EHLO, or HELO when EHLO is refused with 5yz (RFC 5321 3.2).
    pub(super) async fn hello(&mut self, name: &str) -> Result<Extensions, ClientError> {
        let reply = self.command(&command::ehlo(name), Command::Ehlo).await?;
        if reply.is_positive() {
            return Ok(Extensions::from_ehlo(&reply));
        }
        if !reply.is_permanent() {
            return Err(ClientError::Rejected {
                phase: Command::Ehlo,
                reply,
            });
        }
        let reply = self.command(&command::helo(name), Command::Helo).await?;
        if reply.is_positive() {
            Ok(Extensions::default())
        } else {
            Err(ClientError::Rejected {
                phase: Command::Helo,
                reply,
            })
        }
    }

    /// The TLS handshake after a 220 to STARTTLS.
    pub(super) async fn start_tls(
        &mut self,
        settings: &ClientSettings,
        peer: &Peer,
    ) -> Result<(), ClientError> {
        if !self.buf.is_empty() {
            self.usable = false;
            return Err(ClientError::PipelinedAfterStartTls);
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            self.usable = false;
            return Err(ClientError::TlsHandshake {
                source: io::Error::other("TLS already active"),
            });
        };
        let connector = TlsConnector::from(settings.tls_config.clone());
        let name = server_name(&peer.host, peer.addr.ip());
        match timeout(self.command_timeout, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                Ok(())
            }
            Ok(Err(source)) => {
                self.usable = false;
                Err(ClientError::TlsHandshake { source })
            }
            Err(_) => {
                self.usable = false;
                let source = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no handshake within {:?}", self.command_timeout),
                );
                Err(ClientError::TlsHandshake { source })
            }
        }
    }

    fn tls_mode(&self, policy: TlsPolicy) -> TlsMode {
        match &self.stream {
            Stream::Tls(tls) => TlsMode::of(tls.get_ref().1, policy),
            Stream::Plain(_) | Stream::Upgrading => TlsMode::Plaintext,
        }
    }

    /// STARTTLS when the server offers it and `policy` wants it, then EHLO again (RFC 3207
    /// section 4.2): the protection the session has and the extensions that now hold.
    async fn negotiate_tls(
        &mut self,
        settings: &ClientSettings,
        peer: &Peer,
        policy: TlsPolicy,
        ext: Extensions,
    ) -> Result<(TlsMode, Extensions), ClientError> {
        if !(policy.attempts_starttls() && ext.starttls) {
            if policy.requires_tls() {
                // RFC 7672 2.2: never cleartext where DANE applies.
                return Err(ClientError::TlsRequired {
                    by: policy.required_by(),
                    reason: "starttls_not_offered",
                    detail: "STARTTLS not offered".to_string(),
                });
            }
            return Ok((TlsMode::Plaintext, ext));
        }
        let reply = self.command(command::STARTTLS, Command::StartTls).await?;
        if reply.code == 220 {
            match self.start_tls(settings, peer).await {
                Ok(()) => {}
                Err(ClientError::TlsHandshake { source }) if policy.requires_tls() => {
                    return Err(required_tls_failed(policy, &source));
                }
                Err(e) => return Err(e),
            }
            let tls = self.tls_mode(policy);
            let ext = self.hello(&settings.helo_name).await?;
            return Ok((tls, ext));
        }
        if reply.code == 421 {
            return Err(ClientError::Rejected {
                phase: Command::StartTls,
                reply,
            });
        }
        if policy.requires_tls() {
            return Err(ClientError::TlsRequired {
                by: policy.required_by(),
                reason: "starttls_refused",
                detail: format!("STARTTLS refused: {reply}"),
            });
        }
        // Any other refusal (454 "TLS not available"): RFC 3207 section 4 lets the client go
        // on in cleartext, which is what the opportunistic policy wants.
        Ok((TlsMode::Plaintext, ext))
    }

    /// RSET on a reused session, answered with 250 within [`RESET_TIMEOUT`].
    async fn reset(&mut self) -> Result<(), ClientError> {
        if !self.buf.is_empty() {
            // Something unasked for (a 421 before closing an idle connection).
            self.usable = false;
            return Err(ClientError::Closed {
                phase: Command::Rset,
            });
        }
        self.write(command::RSET.as_bytes(), Command::Rset).await?;
        let deadline = Instant::now() + RESET_TIMEOUT.min(self.command_timeout);
        let reply = match self.read_reply_until(Command::Rset, deadline).await {
            Ok(reply) => reply,
            Err(e) => {
                self.usable = false;
                return Err(e);
            }
        };
        if reply.code != 250 {
            return Err(ClientError::Rejected {
                phase: Command::Rset,
                reply,
            });
        }
        Ok(())
    }

    /// MAIL, RCPT, DATA (after RSET on a reused session when `reset`, which only a
    /// pipelining server is asked for here). `Ok` means the server answered the transaction.
    async fn transaction<S: MessageSource>(
        &mut self,
        peer: &Peer,
        txn: &Transaction<'_>,
        ext: &Extensions,
        source: &S,
        reset: bool,
    ) -> Result<Vec<RecipientOutcome>, ClientError> {
        if let Some(error) = super::require_tls::next_hop_refusal(txn, ext) {
            return Err(error);
        }
        if let Some(refusal) = refused_before_mail(peer, txn, ext) {
            return Ok(vec![refusal; txn.recipients.len()]);
        }
        let (mut outcomes, sendable) = Outcomes::screen(peer, txn.recipients, ext);
        if sendable.is_empty() {
            let none = RecipientOutcome::permanent(EnhancedCode::new(5, 1, 3), "no recipient");
            return Ok(outcomes.finish(&none));
        }
        // Timed from MAIL FROM to the transaction's last reply: what the peer made us wait.
        let start = Instant::now();
        let answered = if ext.pipelining {
            self.pipelined(peer, txn, ext, source, &sendable, &mut outcomes, reset)
                .await
        } else {
            self.envelope_and_message(peer, txn, ext, source, &sendable, &mut outcomes)
                .await
        };
        if let Some(metrics) = &self.metrics {
            metrics.smtp_transaction(answered.is_ok(), start.elapsed().as_secs_f64());
        }
        Ok(outcomes.finish(&answered?))
    }

    /// The transaction with a server that pipelines (RFC 2920): [RSET,] MAIL, every RCPT and
    /// DATA in one write, then their replies in order, then the message when DATA got 354.
    /// Two round trips per message on a reused session instead of four. The message is
    /// opened before anything is written, so a spool that cannot be read costs no command.
    /// A group that the server answers in a way that leaves DATA open without a recipient
    /// to send to (354 after refusing them all, or after refusing MAIL or RSET) is ended by
    /// closing the connection, never by sending the message: without the final dot nothing
    /// is accepted (RFC 5321 4.1.1.4).
    #[allow(clippy::too_many_arguments)]
    async fn pipelined<S: MessageSource>(
        &mut self,
        peer: &Peer,
        txn: &Transaction<'_>,
        ext: &Extensions,
        source: &S,
        sendable: &[usize],
        outcomes: &mut Outcomes,
        reset: bool,
    ) -> Result<RecipientOutcome, ClientError> {
        if reset && !self.buf.is_empty() {
            // Something unasked for on the idle session (a 421 before closing it).
            self.usable = false;
            return Err(ClientError::Closed {
                phase: Command::Rset,
            });
        }
        let body = match source.open().await {
            Ok(body) => body,
            Err(e) => {
                return Ok(RecipientOutcome::temporary(
                    EnhancedCode::new(4, 3, 0),
                    format!("cannot read the queued message: {e}"),
                ));
            }
        };
        let mut group = String::new();
        if reset {
            group.push_str(command::RSET);
        }
        group.push_str(&txn.mail_line(ext));
        for &i in sendable {
            group.push_str(&txn.rcpt_line(i, ext));
        }
        group.push_str(command::DATA);
        let phase = if reset { Command::Rset } else { Command::Mail };
        self.write(group.as_bytes(), phase).await?;

        if reset {
            let deadline = Instant::now() + RESET_TIMEOUT.min(self.command_timeout);
            let reply = match self.read_reply_until(Command::Rset, deadline).await {
                Ok(reply) => reply,
                Err(e) => {
                    self.usable = false;
                    return Err(e);
                }
            };
            if reply.code != 250 {
                // What the server made of the rest is unknown: DATA may be open.
                self.usable = false;
                return Err(ClientError::Rejected {
                    phase: Command::Rset,
                    reply,
                });
            }
        }
        let mail = self.read_reply(Command::Mail).await?;
        if mail.code == 421 {
            // The server is closing: the other replies will not come.
            self.usable = false;
            return Err(ClientError::Rejected {
                phase: Command::Mail,
                reply: mail,
            });
        }
        if !mail.is_positive() {
            // The RCPT and DATA replies (503) are read so the session stays in step; a
            // DATA that opened anyway, or a reply that does not come, ends the session.
            let mut in_step = true;
            for _ in 0..=sendable.len() {
                match self.read_reply(Command::Rcpt).await {
                    Ok(reply) if reply.code == 354 => in_step = false,
                    Ok(_) => {}
                    Err(_) => {
                        in_step = false;
                        break;
                    }
                }
            }
            self.usable &= in_step;
            return Ok(RecipientOutcome::from_reply(peer, Command::Mail, &mail));
        }
        let mut accepted = 0;
        for &i in sendable {
            let reply = self.read_reply(Command::Rcpt).await?;
            accepted += usize::from(self.rcpt_answered(peer, i, reply, outcomes)?);
        }
        let data = self.read_reply(Command::Data).await?;
        if accepted == 0 {
            if data.code == 354 {
                // DATA opened with no recipient: closing, not sending, ends it. Never
                // QUIT now: inside DATA it would be message text.
                self.usable = false;
            }
            // Every recipient has its RCPT reply; the fallback is never used.
            return Ok(RecipientOutcome::temporary(
                EnhancedCode::new(4, 0, 0),
                "no reply",
            ));
        }
        if data.code != 354 {
            return Ok(RecipientOutcome::from_reply(peer, Command::Data, &data));
        }
        self.send_data(peer, body).await
    }

    /// The envelope, then the message when a recipient was accepted: the outcome for the
    /// recipients that have none yet.
    async fn envelope_and_message<S: MessageSource>(
        &mut self,
        peer: &Peer,
        txn: &Transaction<'_>,
        ext: &Extensions,
        source: &S,
        sendable: &[usize],
        outcomes: &mut Outcomes,
    ) -> Result<RecipientOutcome, ClientError> {
        let answer = self
            .send_envelope(peer, txn, ext, sendable, outcomes)
            .await?;
        match answer {
            EnvelopeAnswer::MailRefused(outcome) => Ok(outcome),
            EnvelopeAnswer::Recipients { accepted: 0 } => {
                // Every recipient has its RCPT reply; the fallback is never used.
                Ok(RecipientOutcome::temporary(
                    EnhancedCode::new(4, 0, 0),
                    "no reply",
                ))
            }
            EnvelopeAnswer::Recipients { .. } => self.send_message(peer, source).await,
        }
    }

    /// MAIL FROM and a RCPT TO for each of the `sendable` recipients, all in one write when
    /// the server pipelines (RFC 2920). Each refused RCPT gets its outcome in `outcomes`.
    async fn send_envelope(
        &mut self,
        peer: &Peer,
        txn: &Transaction<'_>,
        ext: &Extensions,
        sendable: &[usize],
        outcomes: &mut Outcomes,
    ) -> Result<EnvelopeAnswer, ClientError> {
        let mut batch = txn.mail_line(ext);
        if ext.pipelining {
            for &i in sendable {
                batch.push_str(&txn.rcpt_line(i, ext));
            }
        }
        self.write(batch.as_bytes(), Command::Mail).await?;
        let mail = self.read_reply(Command::Mail).await?;
        if !mail.is_positive() {
            if ext.pipelining {
                // The RCPT replies (503 after a refused MAIL) must be read before QUIT.
                for _ in sendable {
                    if self.read_reply(Command::Rcpt).await.is_err() {
                        break;
                    }
                }
            }
            if mail.code == 421 {
                return Err(ClientError::Rejected {
                    phase: Command::Mail,
                    reply: mail,
                });
            }
            let outcome = RecipientOutcome::from_reply(peer, Command::Mail, &mail);
            return Ok(EnvelopeAnswer::MailRefused(outcome));
        }

        let mut accepted = 0;
        for &i in sendable {
            let reply = if ext.pipelining {
                self.read_reply(Command::Rcpt).await?
            } else {
                let rcpt = txn.rcpt_line(i, ext);
                self.command(&rcpt, Command::Rcpt).await?
            };
            accepted += usize::from(self.rcpt_answered(peer, i, reply, outcomes)?);
        }
        Ok(EnvelopeAnswer::Recipients { accepted })
    }

    /// DATA, the message and its final reply: the outcome of every accepted recipient. The
    /// message is opened before DATA, so a spool that cannot be read costs no DATA at all.
    async fn send_message<S: MessageSource>(
        &mut self,
        peer: &Peer,
        source: &S,
    ) -> Result<RecipientOutcome, ClientError> {
        let body = match source.open().await {
            Ok(body) => body,
            Err(e) => {
                return Ok(RecipientOutcome::temporary(
                    EnhancedCode::new(4, 3, 0),
                    format!("cannot read the queued message: {e}"),
                ));
            }
        };
        let data = self.command(command::DATA, Command::Data).await?;
        if data.code != 354 {
            return Ok(RecipientOutcome::from_reply(peer, Command::Data, &data));
        }
        self.send_data(peer, body).await
    }

    /// After 354: the message, then its final reply, the outcome of every accepted recipient.
    async fn send_data(
        &mut self,
        peer: &Peer,
        body: Box<dyn AsyncRead + Send + Unpin>,
    ) -> Result<RecipientOutcome, ClientError> {
        Ok(match self.send_body(body).await? {
            BodyEnd::Sent => match self.read_reply(Command::DataEnd).await {
                Ok(reply) => RecipientOutcome::from_reply(peer, Command::DataEnd, &reply),
                Err(e) => RecipientOutcome::temporary(
                    e.status(),
                    format!("{peer}: {e}; delivery status unknown"),
                ),
            },
            BodyEnd::SourceFailed(e) => RecipientOutcome::temporary(
                EnhancedCode::new(4, 3, 0),
                format!("reading the queued message failed during DATA: {e}"),
            ),
        })
    }

    /// Streams the message, dot-stuffed, and the end marker.
    pub(super) async fn send_body(
        &mut self,
        mut body: Box<dyn AsyncRead + Send + Unpin>,
    ) -> Result<BodyEnd, ClientError> {
        // From here until the final reply, QUIT would be message text.
        self.usable = false;
        let mut input = vec![0u8; CHUNK];
        let mut out = Vec::with_capacity(CHUNK + CHUNK / 32);
        let mut stuffer = DotStuffer::new();
        loop {
            let n = match body.read(&mut input).await {
                Ok(0) => break,
                Ok(n) => n,
                // The end marker is never sent: the server discards the partial message
                // when the connection closes (RFC 5321 4.1.1.4).
                Err(e) => return Ok(BodyEnd::SourceFailed(e)),
            };
            out.clear();
            stuffer.encode(&input[..n], &mut out);
            self.write(&out, Command::DataEnd).await?;
        }
        out.clear();
        stuffer.finish(&mut out);
        self.write(&out, Command::DataEnd).await?;
        self.usable = true;
        Ok(BodyEnd::Sent)
    }

    /// QUIT and close; errors do not matter any more (RFC 5321 4.1.1.10).
    pub(super) async fn quit(&mut self) {
        if self.usable {
            let quit = async {
                self.stream.write_all(command::QUIT.as_bytes()).await?;
                self.stream.flush().await?;
                // The 221 itself is of no interest; wait for it so the server does not see a
                // reset before it has answered.
                let mut scratch = [0u8; 512];
                let _ = self.stream.read(&mut scratch).await?;
                io::Result::Ok(())
            };
            let _ = timeout(QUIT_TIMEOUT, quit).await;
        }
        let _ = timeout(QUIT_TIMEOUT, self.stream.shutdown()).await;
    }
}

/// How the body transfer ended when the connection survived.
pub(super) enum BodyEnd {
    /// Message and end marker written.
    Sent,
    /// The spool could not be read; the end marker was not sent.
    SourceFailed(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn<'a>(sender: &'a str, recipients: &'a [String]) -> Transaction<'a> {
        Transaction {
            sender,
            recipients,
            size: 1234,
            body_8bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            recipient_dsn: &[],
            require_tls: false,
        }
    }

    #[test]
    fn mail_command_adds_only_supported_parameters() {
        let rcpts = vec!["b@example.org".to_string()];
        let mut t = txn("a@example.com", &rcpts);
        let none = Extensions::default();
        assert_eq!(
            t.mail_from().command(&none),
            "MAIL FROM:<a@example.com>\r\n"
        );
        let all = Extensions {
            size: Some(0),
            eight_bit_mime: true,
            smtputf8: true,
            ..Extensions::default()
        };
        assert_eq!(
            t.mail_from().command(&all),
            "MAIL FROM:<a@example.com> SIZE=1234\r\n"
        );
        t.body_8bit = true;
        t.smtputf8 = true;
        assert_eq!(
            t.mail_from().command(&all),
            "MAIL FROM:<a@example.com> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n"
        );
        assert_eq!(
            t.mail_from().command(&none),
            "MAIL FROM:<a@example.com>\r\n"
        );
    }

    #[test]
    fn null_sender() {
        let rcpts = vec![];
        assert_eq!(
            txn("", &rcpts).mail_from().command(&Extensions::default()),
            "MAIL FROM:<>\r\n"
        );
    }

    #[test]
    fn unsendable_addresses_are_refused_before_any_command() {
        let peer = Peer {
            host: "mx.example.org".into(),
            addr: "192.0.2.1:25".parse().unwrap(),
        };
        let rcpts = vec![
            "a@example.org".to_string(),
            "b@example.org>\r\nRCPT TO:<x@y".to_string(),
        ];
        let ext = Extensions::default();
        assert!(refused_before_mail(&peer, &txn("s@example.com", &rcpts), &ext).is_none());
        let refusal = refused_before_mail(&peer, &txn("s<@example.com", &rcpts), &ext).unwrap();
        assert_eq!(refusal.status, EnhancedCode::new(5, 1, 7));
        let mut utf8 = txn("s@example.com", &rcpts);
        utf8.smtputf8 = true;
        let refusal = refused_before_mail(&peer, &utf8, &ext).unwrap();
        assert_eq!(refusal.status, EnhancedCode::new(5, 6, 7));
        let (outcomes, sendable) = Outcomes::screen(&peer, &rcpts, &ext);
        assert_eq!(sendable, [0]);
        let rest = RecipientOutcome::temporary(EnhancedCode::new(4, 0, 0), "rest");
        let all = outcomes.finish(&rest);
        assert_eq!(all[0].status, EnhancedCode::new(4, 0, 0));
        assert_eq!(all[1].status, EnhancedCode::new(5, 1, 3));
    }

    #[test]
    fn utf8_addresses_never_go_to_a_server_without_smtputf8() {
        let peer = Peer {
            host: "mx.example.org".into(),
            addr: "192.0.2.1:25".parse().unwrap(),
        };
        let rcpts = vec!["a@example.org".to_string(), "jörg@example.org".to_string()];
        let plain = Extensions::default();
        let utf8 = Extensions {
            smtputf8: true,
            ..Extensions::default()
        };
        // An ASCII sender, no SMTPUTF8 declared: only the UTF-8 recipient fails, 5.6.7.
        let t = txn("s@example.com", &rcpts);
        assert!(refused_before_mail(&peer, &t, &plain).is_none());
        let (outcomes, sendable) = Outcomes::screen(&peer, &rcpts, &plain);
        assert_eq!(sendable, [0]);
        let all = outcomes.finish(&RecipientOutcome::temporary(EnhancedCode::new(4, 0, 0), ""));
        assert_eq!(all[1].status, EnhancedCode::new(5, 6, 7));
        assert_eq!(all[1].verdict, super::super::outcome::Verdict::Permanent);
        assert_eq!(
            all[1].detail,
            "mx.example.org[192.0.2.1] does not support SMTPUTF8, which the recipient address requires"
        );
        // To a server with SMTPUTF8 both go, and MAIL declares SMTPUTF8 although the client
        // did not.
        let (_, sendable) = Outcomes::screen(&peer, &rcpts, &utf8);
        assert_eq!(sendable, [0, 1]);
        assert_eq!(
            t.mail_from().command(&utf8),
            "MAIL FROM:<s@example.com> SMTPUTF8\r\n"
        );
        let ascii = vec!["a@example.org".to_string()];
        assert_eq!(
            txn("s@example.com", &ascii).mail_from().command(&utf8),
            "MAIL FROM:<s@example.com>\r\n"
        );
        // A UTF-8 reverse-path: nothing goes to a server without SMTPUTF8.
        let refusal = refused_before_mail(&peer, &txn("jörg@example.com", &ascii), &plain);
        assert_eq!(refusal.unwrap().status, EnhancedCode::new(5, 6, 7));
    }

    #[test]
    fn dsn_parameters_go_only_to_a_dsn_server() {
        let rcpts = vec!["b@example.org".to_string(), "c@example.org".to_string()];
        let dsn = [
            RecipientDsn {
                notify: Some("SUCCESS,FAILURE".into()),
                orcpt: Some("Bob Smith+x=y@example.org".into()),
            },
            RecipientDsn::default(),
        ];
        let mut t = txn("a@example.com", &rcpts);
        t.ret = Some("FULL");
        t.envid = Some("QQ 314159");
        t.recipient_dsn = &dsn;
        let plain = Extensions::default();
        assert_eq!(t.mail_line(&plain), "MAIL FROM:<a@example.com>\r\n");
        assert_eq!(t.rcpt_line(0, &plain), "RCPT TO:<b@example.org>\r\n");
        let with_dsn = Extensions {
            dsn: true,
            size: Some(0),
            ..Extensions::default()
        };
        assert_eq!(
            t.mail_line(&with_dsn),
            "MAIL FROM:<a@example.com> SIZE=1234 RET=FULL ENVID=QQ+20314159\r\n"
        );
        assert_eq!(
            t.rcpt_line(0, &with_dsn),
            "RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+20Smith+2Bx+3Dy@example.org\r\n"
        );
        assert_eq!(t.rcpt_line(1, &with_dsn), "RCPT TO:<c@example.org>\r\n");
        assert_eq!(xtext::encode("jörg"), "j+C3+B6rg");
    }

    #[test]
    fn client_errors_are_class_4() {
        let reply = Response {
            code: 554,
            enhanced: Some(EnhancedCode::new(5, 7, 1)),
            lines: vec![],
        };
        let e = ClientError::Rejected {
            phase: Command::Greeting,
            reply,
        };
        assert_eq!(e.status(), EnhancedCode::new(4, 7, 1));
        let e = ClientError::ConnectTimeout {
            after: Duration::from_secs(30),
        };
        assert_eq!(e.status(), EnhancedCode::new(4, 4, 1));
        assert_eq!(e.to_string(), "connect timeout after 30s");
    }
}
