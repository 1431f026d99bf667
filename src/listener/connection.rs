//! One client's socket, before or after TLS, and the TLS handshake that turns the first into
//! the second (port 465 at once, port 587 after STARTTLS).
//!
//! No protocol here: bytes in, bytes out, and the TLS facts the `Received:` field records.

use super::Shared;
use crate::session::{Reply, Role};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The socket, before or after TLS.
pub(super) enum Connection {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// The TLS handshake failed: the socket is gone (reads see the end, writes fail).
    Closed,
}

impl Connection {
    pub(super) async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Connection::Plain(s) => s.read(buf).await,
            Connection::Tls(s) => s.read(buf).await,
            Connection::Closed => Ok(0),
        }
    }

    /// Waits until the client has sent something, then reads into `buf`, first sized to
    /// `size` (an empty `buf` is allocated only then): a session waiting for its client
    /// holds no read buffer of its own.
    pub(super) async fn read_when_ready(
        &mut self,
        buf: &mut Vec<u8>,
        size: usize,
    ) -> std::io::Result<usize> {
        match self {
            Connection::Plain(s) => loop {
                s.readable().await?;
                size_buffer(buf, size);
                match s.try_read(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    read => return read,
                }
            },
            Connection::Tls(s) => {
                // rustls may already hold decrypted bytes (more than the last read took) or
                // the peer's close_notify: then there is nothing to wait for on the socket.
                // (A protocol error ends the session, as tokio-rustls's own read does.)
                let (tcp, tls) = s.get_mut();
                let state = tls
                    .process_new_packets()
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() {
                    tcp.readable().await?;
                }
                size_buffer(buf, size);
                s.read(buf).await
            }
            Connection::Closed => Ok(0),
        }
    }

    /// Writes and flushes: a reply must not sit in a TLS buffer while we wait for the client.
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Connection::Plain(s) => write_flush(s, bytes).await,
            Connection::Tls(s) => write_flush(s.as_mut(), bytes).await,
            Connection::Closed => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    /// Writes one reply on its own, for the last word of a session.
    pub(super) async fn send(&mut self, reply: Reply) -> std::io::Result<()> {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        self.write_all(&out).await
    }

    /// `version=... cipher=...` for the trace field, or `None` in plaintext.
    pub(super) fn tls_description(&self) -> Option<String> {
        let Connection::Tls(s) = self else {
            return None;
        };
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

    /// Runs the server side of the TLS handshake within `timeouts.tls_handshake`. Returns
    /// whether the connection is now in TLS; after a failed handshake it is
    /// [`Connection::Closed`]. A connection that is not plaintext is left as it is and
    /// answers `false`: a second handshake is never run.
    pub(super) async fn start_tls(&mut self, shared: &Shared, role: Role) -> bool {
        self.start_tls_for(shared, role.name()).await
    }

    /// [`Self::start_tls`] for the listener named `listener` in the metrics.
    pub(super) async fn start_tls_for(&mut self, shared: &Shared, listener: &str) -> bool {
        let tcp = match std::mem::replace(self, Connection::Closed) {
            Connection::Plain(tcp) => tcp,
            other => {
                *self = other;
                return false;
            }
        };
        let accept = shared.tls.accept(tcp);
        match tokio::time::timeout(shared.config.timeouts.tls_handshake, accept).await {
            Ok(Ok(tls)) => {
                shared.metrics.tls_handshake(listener, "ok");
                *self = Connection::Tls(Box::new(tls));
                true
            }
            Ok(Err(e)) => {
                shared.metrics.tls_handshake(listener, "failed");
                tracing::debug!(listener, error = %e, "TLS handshake failed");
                false
            }
            Err(_) => {
                shared.metrics.tls_handshake(listener, "timeout");
                false
            }
        }
    }
}

/// Makes `buf` `size` bytes long, keeping its allocation when it has that size already.
fn size_buffer(buf: &mut Vec<u8>, size: usize) {
    if buf.len() != size {
        *buf = vec![0u8; size];
    }
}

async fn write_flush<S: AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    bytes: &[u8],
) -> std::io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}
