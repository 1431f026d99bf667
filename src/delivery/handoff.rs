//! Hand-off, the sending side: a draining replica gives every message still in its spool to
//! a peer replica's `[listen] handoff` listener (`listener/handoff.rs`), one SMTP transaction
//! per message over one session.
//!
//! The session: greeting, EHLO, STARTTLS (required: without it nothing is sent, the fleet
//! secret included), EHLO again, `AUTH PLAIN` with the fleet secret (the first line of
//! `[handoff] secret_file`), then per message `MAIL FROM` and `RCPT TO` lines written by
//! `crate::smtp::handoff` (the envelope, RFC 3461 parameters and the original arrival time),
//! `DATA` and the message exactly as spooled (its `Received:`, `Message-ID:` and
//! `DKIM-Signature:` prefix included: the peer neither signs nor meters it again).
//!
//! Durability: a message leaves the local spool only after the peer's 250 to its final dot,
//! which the peer sends only once the message is in its own spool. A crash of either side in
//! between leaves the message here (and perhaps there too): at worst twice, never lost.
//! Only pending recipients are sent; those already delivered or failed are not.
//!
//! The peer's certificate is not verified (replicas often use the listener's self-signed
//! or internal certificates); the fleet secret authenticates the sender to the peer, and
//! `[handoff] networks` keeps the listener to the fleet's own network.
//!
//! A message the peer refuses (4yz/5yz) stays here and the next one is tried; a lost
//! session, a 421 or a refused AUTH ends the hand-off with the rest left in the spool.

use base64::Engine;
use std::net::SocketAddr;

use super::client::{BodyEnd, ClientSettings, Session};
use super::outcome::{Command, Peer};
use crate::config::Config;
use crate::printable::escape_controls;
use crate::smtp::command::{self, is_unsendable_address};
use crate::smtp::handoff::{HandoffMail, HandoffRcpt};
use crate::spool::{Envelope, RecipientStatus, Spool};

/// The AUTH PLAIN user name of a hand-off (the secret is the password).
pub const HANDOFF_USER: &str = "postern-handoff";

/// What a hand-off achieved.
#[derive(Debug, Default)]
pub struct HandoffReport {
    /// Messages the peer took (and that left the local spool).
    pub handed_off: usize,
    /// Why messages were left, if some were: the first reason.
    pub refusal: Option<String>,
}

/// Why the hand-off session could not go on.
#[derive(Debug, thiserror::Error)]
enum SessionFailure {
    #[error("{0}")]
    Client(#[from] super::client::ClientError),
    #[error("peer {peer}: {what}")]
    Refused { peer: String, what: String },
}

/// The message's envelope lines: MAIL, then one RCPT per pending recipient.
pub fn envelope_lines(envelope: &Envelope) -> (HandoffMail, Vec<HandoffRcpt>) {
    let mail = HandoffMail {
        sender: envelope.sender.clone(),
        arrival_ms: envelope.received_at_ms,
        size: Some(envelope.size),
        body_8bit: envelope.body_8bit,
        smtputf8: envelope.smtputf8,
        require_tls: envelope.require_tls,
        tls_required_no: envelope.tls_required_no,
        ret: envelope.dsn_ret.clone(),
        envid: envelope.dsn_envid.clone(),
    };
    let rcpts = envelope
        .recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Pending)
        .map(|r| HandoffRcpt {
            address: r.address.clone(),
            notify: r.notify.clone(),
            orcpt: r.orcpt.clone(),
            delay_notified: r.delay_notified,
        })
        .collect();
    (mail, rcpts)
}

/// Hands every queued message to `peer` (`HOST:PORT`); `progress` hears the count after each
/// one the peer took.
pub async fn hand_off(
    spool: &Spool,
    config: &Config,
    peer: &str,
    progress: impl Fn(usize),
) -> HandoffReport {
    let mut report = HandoffReport::default();
    let mut session = match open_session(config, peer).await {
        Ok(session) => session,
        Err(e) => {
            tracing::error!(peer, error = %e, "hand-off: no session with the peer");
            report.refusal = Some(escape_controls(&e.to_string()).into_owned());
            return report;
        }
    };
    let peer_name = escape_controls(peer).into_owned();
    for item in spool.queue() {
        if item.in_flight {
            continue;
        }
        let id = item.envelope.id.clone();
        match send_one(&mut session, spool, &item.envelope, &peer_name).await {
            Ok(None) => match spool.remove(&id).await {
                Ok(()) => {
                    report.handed_off += 1;
                    tracing::info!(queue_id = %id, peer, "handed off");
                    progress(report.handed_off);
                }
                // Both spools have it now; the peer delivers it, this one again at its next
                // start: a duplicate, never a loss.
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "handed off, but cannot remove it here")
                }
            },
            Ok(Some(refusal)) => {
                tracing::warn!(queue_id = %id, peer, refusal = %refusal, "hand-off refused; kept");
                report.refusal.get_or_insert(refusal);
            }
            Err(e) => {
                tracing::error!(queue_id = %id, peer, error = %e, "hand-off session lost; the rest stays");
                report
                    .refusal
                    .get_or_insert(escape_controls(&e.to_string()).into_owned());
                return report;
            }
        }
    }
    session.quit().await;
    report
}

/// Connects, insists on STARTTLS and authenticates with the fleet secret.
async fn open_session(config: &Config, peer: &str) -> Result<Session, SessionFailure> {
    let refused = |what: String| SessionFailure::Refused {
        peer: peer.to_string(),
        what,
    };
    let secret = config.handoff.read_secret().map_err(|e| refused(e.0))?;
    let addr: SocketAddr = tokio::net::lookup_host(peer)
        .await
        .map_err(|e| refused(format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| refused("no address".to_string()))?;
    let host = peer.rsplit_once(':').map_or(peer, |(h, _)| h);
    let target = Peer {
        host: host.trim_matches(['[', ']']).to_string(),
        addr,
    };
    let tls_config = super::tls::opportunistic_client_config()
        .map_err(|e| refused(format!("TLS setup: {e}")))?;
    let settings = ClientSettings {
        helo_name: config.server.hostname.clone(),
        connect_timeout: config.delivery.connect_timeout,
        command_timeout: config.delivery.command_timeout,
        tls_config,
        metrics: None,
    };
    let mut session = Session::connect(&settings, &target).await?;
    let greeting = session.read_reply(Command::Greeting).await?;
    if greeting.code != 220 {
        return Err(refused(format!("greeting {greeting}")));
    }
    let ext = session.hello(&settings.helo_name).await?;
    if !ext.starttls {
        return Err(refused("STARTTLS not offered; nothing sent".to_string()));
    }
    let reply = session
        .command(command::STARTTLS, Command::StartTls)
        .await?;
    if reply.code != 220 {
        return Err(refused(format!("STARTTLS refused: {reply}")));
    }
    session.start_tls(&settings, &target).await?;
    session.hello(&settings.helo_name).await?;
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{HANDOFF_USER}\0{secret}"));
    let auth = session
        .command(&format!("AUTH PLAIN {token}\r\n"), Command::Auth)
        .await?;
    if auth.code != 235 {
        return Err(refused(format!("AUTH refused: {auth}")));
    }
    Ok(session)
}

/// One message: `Ok(None)` when the peer took it, `Ok(Some(reason))` when it refused it (the
/// session goes on), `Err` when the session is gone.
async fn send_one(
    session: &mut Session,
    spool: &Spool,
    envelope: &Envelope,
    peer: &str,
) -> Result<Option<String>, SessionFailure> {
    let (mail, rcpts) = envelope_lines(envelope);
    let unsendable = is_unsendable_address(&mail.sender)
        || rcpts.iter().any(|r| is_unsendable_address(&r.address));
    if rcpts.is_empty() || unsendable {
        return Ok(Some(format!(
            "message {} cannot be handed off (no pending or a bad address)",
            envelope.id
        )));
    }
    let refusal = |phase: &str, reply: &crate::smtp::Response| {
        Some(
            escape_controls(&format!(
                "peer {peer} refused {phase} of {}: {reply}",
                envelope.id
            ))
            .into_owned(),
        )
    };
    let reply = session.command(&mail.line(), Command::Mail).await?;
    if reply.code == 421 {
        return Err(SessionFailure::Refused {
            peer: peer.to_string(),
            what: reply.to_string(),
        });
    }
    if reply.code != 250 {
        return Ok(refusal("MAIL", &reply));
    }
    for rcpt in &rcpts {
        let reply = session.command(&rcpt.line(), Command::Rcpt).await?;
        if reply.code != 250 {
            reset(session).await?;
            return Ok(refusal("RCPT", &reply));
        }
    }
    let body = match spool.open_message(envelope).await {
        Ok(body) => body,
        Err(e) => {
            reset(session).await?;
            return Ok(Some(format!("message {}: {e}", envelope.id)));
        }
    };
    let reply = session.command(command::DATA, Command::Data).await?;
    if reply.code != 354 {
        return Ok(refusal("DATA", &reply));
    }
    match session.send_body(body).await? {
        BodyEnd::Sent => {}
        BodyEnd::SourceFailed(e) => {
            // The end marker was not sent: the peer drops the partial message when the
            // session ends, so the session ends here.
            return Err(SessionFailure::Refused {
                peer: peer.to_string(),
                what: format!("reading message {} failed: {e}", envelope.id),
            });
        }
    }
    let reply = session.read_reply(Command::DataEnd).await?;
    if reply.code == 250 {
        Ok(None)
    } else {
        Ok(refusal("the message", &reply))
    }
}

async fn reset(session: &mut Session) -> Result<(), SessionFailure> {
    session.command(command::RSET, Command::Rset).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Recipient;

    #[test]
    fn only_pending_recipients_go_with_their_dsn_parameters() {
        let mut delivered = Recipient::new("done@example.net".into());
        delivered.status = RecipientStatus::Delivered;
        let mut pending = Recipient::new("bob@example.net".into());
        pending.notify = Some("FAILURE".into());
        pending.orcpt = Some("Bob@example.net".into());
        pending.delay_notified = true;
        let envelope = Envelope {
            sender: "alice@example.org".into(),
            recipients: vec![delivered, pending],
            received_at_ms: 1_700_000_000_000,
            size: 99,
            dsn_ret: Some("HDRS".into()),
            dsn_envid: Some("E1".into()),
            ..Envelope::default()
        };
        let (mail, rcpts) = envelope_lines(&envelope);
        assert_eq!(
            mail.line(),
            "MAIL FROM:<alice@example.org> X-POSTERN-ARRIVAL=1700000000000 SIZE=99 RET=HDRS ENVID=E1\r\n"
        );
        assert_eq!(rcpts.len(), 1);
        assert_eq!(
            rcpts[0].line(),
            "RCPT TO:<bob@example.net> NOTIFY=FAILURE ORCPT=rfc822;Bob@example.net X-POSTERN-DELAY-NOTIFIED\r\n"
        );
    }
}
