//! Runs one [`Session`] over one connection: reads, feeds the session, and has the
//! [`EventHandler`] carry out its events (credential check, quota holds, streaming the body to
//! the spool, commit); what needs the socket comes back here (replies, TLS handshake, close).
//!
//! Replies are buffered and flushed when the session needs more input or before a TLS
//! handshake, so a pipelined batch of commands gets its replies in one write (RFC 2920).
//! Timeouts: `timeouts.command` between commands, `timeouts.data` between reads while message
//! data flows, `timeouts.tls_handshake` for each handshake; and two that no steady drip of
//! bytes can stretch: `timeouts.data_total` for one message's whole transfer and
//! `timeouts.session` for the whole session. An idle session ends with 421 at
//! shutdown, and at once when its credentials are revoked.

use super::connection::Connection;
use super::handler::{Client, EventHandler, SocketEvent};
use super::metering::{Metering, RelayClient};
use super::proxy::{self, ProxyCheck, Sniff};
use super::{Origin, Shared, proxy_refusal};
use crate::session::{HostingClient, Reply, Role, Session, SessionConfig};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Read buffer between commands; allocated only once the client has sent something.
const COMMAND_READ_BUFFER: usize = 4 * 1024;
/// Read buffer while message data flows.
const DATA_READ_BUFFER: usize = 64 * 1024;

/// Which time limit bounds a read.
#[derive(Clone, Copy)]
enum Limit {
    /// `timeouts.command` or `timeouts.data`: the wait for the next bytes.
    Idle,
    /// `timeouts.data_total`: the message's transfer.
    Transfer,
    /// `timeouts.session`: the session's lifetime.
    Session,
}

impl Limit {
    fn reply(self) -> Reply {
        match self {
            Limit::Idle => Reply::timeout(),
            Limit::Transfer => Reply::data_time_exceeded(),
            Limit::Session => Reply::session_time_exceeded(),
        }
    }
}

/// What ended a wait for input.
enum Wake {
    /// The read finished (`Err`: the timeout fired first).
    Read(Result<std::io::Result<usize>, tokio::time::error::Elapsed>),
    /// The session's credentials were revoked.
    Revoked,
    /// The server is stopping and the session is idle.
    Shutdown,
    /// A time limit had already run out: no more reading.
    Elapsed,
}

/// One connection's session and what it needs from the outside world.
pub(super) struct SessionDriver<'a> {
    connection: Connection,
    session: Session,
    handler: EventHandler<'a>,
    /// Replies not yet written; released while the session waits for a command.
    out: Vec<u8>,
    /// Small while commands flow, large while message data does, and none while the
    /// session waits for a command: 100,000 idle sessions must not each hold a buffer.
    buf: Vec<u8>,
    /// When the session must end (`timeouts.session`).
    session_deadline: Instant,
    /// When the message being transferred must be complete (`timeouts.data_total`).
    transfer_deadline: Option<Instant>,
    /// The client's first bytes while it is not yet known whether they open a PROXY header
    /// (an untrusted source on 25 or 587 with `[listen] proxy_protocol` set); `None` once
    /// they went to the session, or when there is nothing to check.
    opening: Option<Vec<u8>>,
}

/// Runs a session on an admitted connection until it ends.
pub(super) async fn drive(shared: &Shared, stream: TcpStream, origin: Origin, role: Role) {
    // The task's future is as large as its largest await, and an idle session's task lives
    // for minutes: the start (with the TLS handshake of port 465) and the session's loop are
    // boxed, so the task holds only what the session needs while it waits, not room for the
    // handshake or a second copy of the driver.
    let run = match Box::pin(SessionDriver::start(shared, stream, origin, role)).await {
        Some(driver) => Box::pin(driver.run()),
        None => return,
    };
    run.await;
}

/// The session of a client of `role`, with the configured limits.
pub(super) fn new_session(
    shared: &Shared,
    role: Role,
    relay_allowed: bool,
    hosting: Option<HostingClient>,
) -> Session {
    let config = &shared.config;
    Session::new(SessionConfig {
        role,
        hostname: config.server.hostname.clone(),
        max_recipients: config.limits.max_recipients,
        max_message_size: config.limits.max_message_size,
        max_bad_commands: config.limits.max_bad_commands,
        max_junk_commands: config.limits.max_junk_commands,
        max_auth_failures: config.limits.max_auth_failures,
        max_received_headers: config.limits.max_received_headers,
        allow_address_literals: config.delivery.allow_address_literals,
        relay_allowed,
        hosting,
        implicit_tls: role == Role::Submissions,
        starttls_available: true,
    })
}

impl<'a> SessionDriver<'a> {
    /// TLS first on port 465; who the client is on port 25. `None` when the implicit TLS
    /// handshake failed or an untrusted source opened 465 with a PROXY header.
    async fn start(
        shared: &'a Shared,
        stream: TcpStream,
        origin: Origin,
        role: Role,
    ) -> Option<Self> {
        let peer = origin.client;
        let check_opening = origin.balancer.is_none()
            && proxy::ProxyTrust::new(&shared.config.listen.proxy_protocol).is_enabled();
        if role == Role::Submissions && check_opening {
            let limit = shared.config.timeouts.tls_handshake;
            match proxy::check_untrusted_tls(&stream, limit).await {
                ProxyCheck::Pass => {}
                ProxyCheck::TimedOut => {
                    shared.metrics.tls_handshake(role.name(), "timeout");
                    return None;
                }
                ProxyCheck::Refused => {
                    proxy_refusal(shared, peer, role, proxy::ProxyRefusal::Untrusted);
                    return None;
                }
            }
        }
        let mut connection = Connection::Plain(stream);
        if role == Role::Submissions && !connection.start_tls(shared, role).await {
            return None;
        }
        let relay = if role == Role::Relay {
            RelayClient::identify(shared, peer).await
        } else {
            RelayClient {
                relay_allowed: false,
                hosting: None,
                metering: Metering::UntilAuth,
            }
        };
        let session = new_session(shared, role, relay.relay_allowed, relay.hosting);
        let mut handler = EventHandler::new(shared, Client::new(peer, role), relay.metering);
        handler.tls_started(connection.tls_description());
        Some(Self {
            connection,
            session,
            handler,
            out: Vec::new(),
            buf: Vec::new(),
            session_deadline: Instant::now() + shared.config.timeouts.session,
            transfer_deadline: None,
            opening: (check_opening && role != Role::Submissions).then(Vec::new),
        })
    }

    async fn run(mut self) {
        while self.turn().await.is_continue() {}
        Box::pin(self.handler.finish()).await;
    }

    /// Carries out what the session asks, writes the replies, reads more.
    async fn turn(&mut self) -> ControlFlow<()> {
        while let Some(event) = self.session.poll_event() {
            // Boxed: carrying out an event (AUTH, end of data with its signing and commit)
            // is a large future, and inline it would make every idle session's task as large.
            match Box::pin(self.handler.handle(&mut self.session, event)).await {
                None => {}
                Some(SocketEvent::Reply(reply)) => {
                    if let Some(reason) = reply.refusal() {
                        self.handler.shared().metrics.rejected(reason);
                    }
                    reply.write_to(&mut self.out);
                }
                Some(SocketEvent::StartTls) => self.start_tls().await?,
                Some(SocketEvent::Close) => {
                    let _ = self.connection.write_all(&self.out).await;
                    return ControlFlow::Break(());
                }
            }
        }
        self.flush().await?;
        self.read().await
    }

    /// Writes the 220 (already buffered) before the handshake, then tells the session.
    async fn start_tls(&mut self) -> ControlFlow<()> {
        self.flush().await?;
        let (shared, role) = (self.handler.shared(), self.handler.client().role);
        // Boxed for the same reason as the events: the handshake future is large and rare.
        if !Box::pin(self.connection.start_tls(shared, role)).await {
            return ControlFlow::Break(());
        }
        self.handler.tls_started(self.connection.tls_description());
        self.session.handle_tls_started();
        ControlFlow::Continue(())
    }

    async fn flush(&mut self) -> ControlFlow<()> {
        if self.out.is_empty() {
            return ControlFlow::Continue(());
        }
        if self.connection.write_all(&self.out).await.is_err() {
            return ControlFlow::Break(());
        }
        self.out.clear();
        ControlFlow::Continue(())
    }

    /// The read's timeout `idle` cut to what the message transfer and the session have left,
    /// and which limit that is. The transfer's clock starts at its first read.
    fn bounded(&mut self, idle: Duration) -> (Duration, Limit) {
        let now = Instant::now();
        let config = &self.handler.shared().config.timeouts;
        if self.session.in_message() {
            self.transfer_deadline
                .get_or_insert(now + config.data_total);
        } else {
            self.transfer_deadline = None;
        }
        let mut bound = (idle, Limit::Idle);
        let session_left = self.session_deadline.saturating_duration_since(now);
        if session_left <= bound.0 {
            bound = (session_left, Limit::Session);
        }
        if let Some(deadline) = self.transfer_deadline {
            let transfer_left = deadline.saturating_duration_since(now);
            if transfer_left <= bound.0 {
                bound = (transfer_left, Limit::Transfer);
            }
        }
        bound
    }

    /// Hands the `n` bytes just read to the session, once it is known that an untrusted
    /// client's opening is no PROXY header (which ends the connection).
    async fn take_input(&mut self, n: usize) -> ControlFlow<()> {
        let Some(mut opening) = self.opening.take() else {
            self.session.handle_input(&self.buf[..n]);
            return ControlFlow::Continue(());
        };
        opening.extend_from_slice(&self.buf[..n]);
        match proxy::sniff(&opening) {
            Sniff::Undecided => self.opening = Some(opening),
            Sniff::NotHeader => self.session.handle_input(&opening),
            Sniff::Header => {
                let client = self.handler.client();
                let refusal = proxy::ProxyRefusal::Untrusted;
                let shared = self.handler.shared();
                if let Some(reply) = proxy_refusal(shared, client.peer, client.role, refusal) {
                    let _ = self.connection.send(reply).await;
                }
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    async fn read(&mut self) -> ControlFlow<()> {
        let shared = self.handler.shared();
        let (timeout, wanted) = if self.session.in_data() {
            (shared.config.timeouts.data, DATA_READ_BUFFER)
        } else {
            (shared.config.timeouts.command, COMMAND_READ_BUFFER)
        };
        if !self.session.in_data() {
            // Between commands a session may wait for minutes (most of a mail client's
            // session): it holds no buffers meanwhile.
            self.buf = Vec::new();
            self.out = Vec::new();
            self.session.release_idle_memory();
        }
        let (timeout, limit) = self.bounded(timeout);
        let idle = self.session.is_idle();
        let read = self.connection.read_when_ready(&mut self.buf, wanted);
        let wake = tokio::select! {
            read = tokio::time::timeout(timeout, read), if !timeout.is_zero() => Wake::Read(read),
            _ = std::future::ready(()), if timeout.is_zero() => Wake::Elapsed,
            _ = self.handler.revoked().cancelled() => Wake::Revoked,
            _ = shared.shutdown.cancelled(), if idle => Wake::Shutdown,
        };
        let client = self.handler.client();
        match wake {
            Wake::Read(Ok(Ok(0)) | Ok(Err(_))) => return ControlFlow::Break(()),
            Wake::Read(Ok(Ok(n))) => return self.take_input(n).await,
            Wake::Read(Err(_)) | Wake::Elapsed => {
                let reply = limit.reply();
                tracing::info!(
                    client_ip = client.ip(),
                    listener = client.role.name(),
                    reply = %reply.summary(),
                    "session timed out"
                );
                let _ = self.connection.send(reply).await;
            }
            Wake::Revoked => {
                let who = self.session.authenticated();
                let address = who.map(|a| a.address.as_str()).unwrap_or_default();
                let device = who.map(|a| a.device.as_str()).unwrap_or_default();
                tracing::info!(client_ip = client.ip(), address = %address, device = %device, "session cut: credentials revoked");
                let _ = self.connection.send(Reply::credentials_revoked()).await;
            }
            Wake::Shutdown => {
                let _ = self.connection.send(Reply::shutting_down()).await;
            }
        }
        ControlFlow::Break(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive_future_size<'a, F: std::future::Future + 'a>(
        _: fn(&'a Shared, TcpStream, Origin, Role) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    fn run_future_size<'a, F: std::future::Future + 'a>(_: fn(SessionDriver<'a>) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle session's task holds these futures: one large await inlined (an event's
    /// handling, a TLS handshake) would make each of 100,000 idle sessions as large (before
    /// the boxing, `drive` alone was 10.5 KB). `run` holds the driver twice (rustc keeps the
    /// argument and the moved `self`: 4,016 B for a 1,592 B driver), plus the read's select.
    #[test]
    fn the_futures_an_idle_session_holds_stay_small() {
        let driver = std::mem::size_of::<SessionDriver<'static>>();
        let run = run_future_size(SessionDriver::run);
        assert!(
            drive_future_size(drive) <= 512,
            "drive: {}",
            drive_future_size(drive)
        );
        assert!(run <= 2 * driver + 1024, "run: {run}, driver: {driver}");
    }
}
