//! The three SMTP doors and what happens at each before the session starts.
//!
//! - submission (587): plaintext greeting, STARTTLS, AUTH after TLS;
//! - submissions (465): TLS from the first byte (RFC 8314), then AUTH;
//! - relay (25): web-hosting servers on configured networks, no AUTH.
//!
//! Each accepted connection is admitted (`brakes.rs`: connection rate, failed logins;
//! `guard.rs`: session caps), then
//! handed to `driver.rs`, which runs one [`crate::session::Session`] over the socket
//! (`connection.rs`) and has `handler.rs` carry out the session's requests to the store, the quota
//! (`metering.rs`) and the spool.
//! Revocations reach live sessions through the watcher in this file: every 500 ms it asks the
//! store which credentials of live sessions are still valid and cuts the others, so a revoked or
//! rotated device password loses its sessions within a second. The same tick publishes the
//! directory's generation: an alias removed meanwhile is refused at the session's next MAIL
//! FROM. A shared directory's change notifications (PostgreSQL `NOTIFY`, sent by a revocation
//! on any machine) wake the watcher between ticks; the tick stays as the fallback for a
//! replica whose notification connection dropped.

pub mod brakes;
mod connection;
mod driver;
pub mod guard;
mod handler;
pub mod handoff;
mod metering;
pub mod proxy;
pub mod tls;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::session::{Reply, Role};
use crate::spool::Spool;
use crate::store::Directory;
use guard::{Admission, Refusal, SessionRegistry};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pending connections the kernel queues for each listener before `accept`.
const LISTEN_BACKLOG: u32 = 4096;

/// How often live sessions' credentials are re-checked.
const REVOCATION_CHECK: Duration = Duration::from_millis(500);

/// Everything a session driver needs, shared by all connections.
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// Credential checks, hosting accounts and daily limits.
    pub directory: Arc<dyn Directory>,
    /// Where accepted mail goes.
    pub spool: Spool,
    /// Counters.
    pub metrics: Metrics,
    /// TLS for STARTTLS and port 465.
    pub tls: TlsAcceptor,
    /// Session caps.
    pub admission: Arc<Admission>,
    /// Authenticated sessions, for revocation.
    pub registry: Arc<SessionRegistry>,
    /// Daily recipient quotas.
    pub quota: Arc<dyn crate::store::quota::QuotaStore>,
    /// Per-minute brakes on connections and messages, and the failed-login brake.
    pub brakes: brakes::Brakes,
    /// DKIM signing with the keys in the store.
    pub signer: Arc<crate::dkim::Signer>,
    /// Fires when the server stops.
    pub shutdown: CancellationToken,
    /// The directory's [`Directory::generation`] as the revocation watcher last read it: a
    /// session re-reads its senders at MAIL FROM only when this moved since its last read.
    pub directory_generation: AtomicU64,
    /// Woken by the directory's change notifications (PostgreSQL `LISTEN`): the revocation
    /// watcher then checks at once instead of at its next tick.
    pub directory_changed: Arc<tokio::sync::Notify>,
    /// The write time (Unix ms, the database's clock; 0: none) of the earliest revoking
    /// change notified and not yet applied, for `postern_directory_revocation_apply_seconds`.
    pub revocation_written_ms: Arc<AtomicU64>,
}

/// Binds a listener, with a message naming the role on failure.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(role: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // mio's default backlog is 128: a burst of connections (clients reconnecting after a
        // restart) would overflow it and wait 1 s for the SYN retransmit. The kernel caps
        // this at net.core.somaxconn.
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|e| std::io::Error::new(e.kind(), format!("listen.{role} {addr}: {e}")))
}

/// Accepts connections on `listener` until shutdown; each session runs on `tasks`.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, role: Role, tasks: TaskTracker) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                // Usually EMFILE: wait a little rather than spin (mini-redis does the same).
                tracing::warn!(listener = role.name(), error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tasks.spawn(async move {
            admit_and_drive(shared, stream, peer, role).await;
        });
    }
}

/// The session task. Its future lives as long as the session, idle or not, and is as large
/// as its largest await: the steps before the session (PROXY header, failed-login brake) and
/// the session itself are boxed, so each of 100,000 idle sessions holds only its own state.
async fn admit_and_drive(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr, role: Role) {
    let Some(origin) = Box::pin(proxied_origin(&shared, &mut stream, peer, role)).await else {
        return;
    };
    let peer = origin.client;
    let admission = if !shared.brakes.allow_connection(peer.ip()) {
        Err(Refusal::ConnectionRate)
    } else if let Some(refusal) = Box::pin(shared.brakes.failed_logins(peer.ip())).await {
        Err(refusal)
    } else {
        shared.admission.admit(peer.ip())
    };
    let admitted = match admission {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let (reply, label) = match refusal {
                Refusal::TooManySessions => (Reply::too_many_connections(), "sessions"),
                Refusal::TooManyFromIp => (Reply::too_many_connections_from_ip(), "per_ip"),
                Refusal::TooManyFromSubnet => {
                    (Reply::too_many_connections_from_network(), "per_subnet")
                }
                Refusal::FailedLogins => (Reply::too_many_failed_logins_from_ip(), "failed_logins"),
                Refusal::FailedLoginsFromSubnet => (
                    Reply::too_many_failed_logins_from_network(),
                    "failed_logins_subnet",
                ),
                Refusal::ConnectionRate => (Reply::connection_rate_exceeded(), "connection_rate"),
            };
            shared.metrics.connection_rejected(label);
            if let Some(reason) = reply.refusal() {
                shared.metrics.rejected(reason);
            }
            tracing::info!(client_ip = %peer.ip(), listener = role.name(), reason = label, "connection refused");
            // On 465 the client speaks TLS from its first byte: plaintext would only garble its
            // handshake, and a handshake per refused connection is what an overloaded server
            // cannot afford. Closing is the answer there.
            if role == Role::Submissions {
                return;
            }
            let mut out = Vec::new();
            reply.write_to(&mut out);
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&out)).await;
            return;
        }
    };
    shared.metrics.connection_opened(role.name());
    Box::pin(driver::drive(&shared, stream, origin, role)).await;
    shared.metrics.connection_closed(role.name());
    drop(admitted);
}

/// Where a connection comes from, once the PROXY protocol has had its say.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    /// The client: the socket's peer, or the address a trusted balancer's header names.
    pub(crate) client: SocketAddr,
    /// The balancer whose header named the client, if any.
    pub(crate) balancer: Option<SocketAddr>,
}

/// The connection's [`Origin`]: a source in `[listen] proxy_protocol` must open with a PROXY
/// header, read here before admission so that caps and brakes count the real client. `None`
/// when the connection was refused (counted, logged, closed). Untrusted sources pass
/// unchanged; whether they send a header is checked when their session starts.
async fn proxied_origin(
    shared: &Shared,
    stream: &mut TcpStream,
    peer: SocketAddr,
    role: Role,
) -> Option<Origin> {
    let trust = proxy::ProxyTrust::new(&shared.config.listen.proxy_protocol);
    if !trust.trusts(peer.ip()) {
        return Some(Origin {
            client: peer,
            balancer: None,
        });
    }
    let limit = shared.config.timeouts.proxy_header;
    match proxy::read_trusted_header(stream, peer, limit).await {
        Ok(client) => {
            tracing::debug!(client_ip = %client.ip(), balancer = %peer, listener = role.name(), "PROXY header read");
            Some(Origin {
                client,
                balancer: Some(peer),
            })
        }
        Err(refusal) => {
            if let Some(reply) = proxy_refusal(shared, peer, role, refusal) {
                let mut out = Vec::new();
                reply.write_to(&mut out);
                let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&out)).await;
            }
            None
        }
    }
}

/// Counts and logs a connection refused over its PROXY header, and says what to tell it
/// before closing. On 25 and 587 a 421 tells whoever is behind a misconfigured balancer to
/// come back (their mail is retried, not bounced); on 465 (`None`) the peer expects TLS, and
/// plaintext would only garble its handshake.
pub(crate) fn proxy_refusal(
    shared: &Shared,
    source: SocketAddr,
    role: Role,
    refusal: proxy::ProxyRefusal,
) -> Option<Reply> {
    shared.metrics.proxy_refused(refusal.label());
    tracing::info!(source_ip = %source.ip(), listener = role.name(), reason = refusal.label(), "PROXY header refused; connection closed");
    match (role, refusal) {
        (Role::Submissions, _) => None,
        (_, proxy::ProxyRefusal::Untrusted) => Some(Reply::proxy_header_not_accepted()),
        _ => Some(Reply::proxy_header_required()),
    }
}

/// Cuts live sessions whose credentials were revoked or rotated, and publishes the directory's
/// generation for the senders re-check at MAIL FROM, until shutdown.
pub async fn watch_revocations(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(REVOCATION_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = shared.directory_changed.notified() => {}
        }
        shared.brakes.prune();
        // Taken before the check: a revocation notified during it is applied by the next one.
        let revocation = shared.revocation_written_ms.swap(0, Ordering::AcqRel);
        match shared.directory.generation().await {
            Ok(generation) => {
                shared
                    .directory_generation
                    .store(generation, Ordering::Release);
                shared.metrics.set_directory_generation(generation);
            }
            Err(e) => tracing::warn!(error = %e, "directory generation unavailable; will retry"),
        }
        let credentials = shared.registry.credentials();
        let applied = credentials.is_empty()
            || match shared.directory.live_credentials(&credentials).await {
                Ok(valid) => {
                    let cut = shared.registry.cut_all_except(&credentials, &valid);
                    for _ in 0..cut {
                        shared.metrics.session_revoked();
                    }
                    true
                }
                // Fail open for *existing* sessions only: a store hiccup must not drop every
                // client; new logins still need the store to answer.
                Err(e) => {
                    tracing::warn!(error = %e, "revocation check failed; will retry");
                    false
                }
            };
        if revocation != 0 {
            if applied {
                shared.metrics.revocation_applied(revocation);
            } else {
                // Not applied yet: the next check's to time.
                crate::store::postgres::changes::keep_earliest(
                    &shared.revocation_written_ms,
                    revocation,
                );
            }
        }
    }
}
