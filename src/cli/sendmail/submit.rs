//! The submission itself: one blocking SMTP transaction with the relay (greeting, EHLO or
//! HELO, MAIL, RCPT..., DATA, QUIT), all or nothing.
//!
//! The wire is `crate::smtp`'s, shared with the delivery client: replies are parsed by
//! [`parse_response`] from the bytes read so far (with its line and length limits), command
//! lines come from [`command`], the data is dot-stuffed by [`DotStuffer`]. The I/O is this
//! module's own: `std::net` with socket timeouts, no runtime.

use super::Failure;
use super::message::Prepared;
use crate::config::Config;
use crate::smtp::command::{self, MailFrom};
use crate::smtp::dot::DotStuffer;
use crate::smtp::extensions::Extensions;
use crate::smtp::response::{MAX_LINE, MAX_LINES};
use crate::smtp::{Response, ResponseError, parse_response};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// TCP connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait for each reply but the last (RFC 5321 section 4.5.3.2 asks for at least 5 minutes).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Wait for the reply to the end of data (RFC 5321: 10 minutes).
const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);
/// Wait for the reply to QUIT: politeness only.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of the message dot-stuffed and written at a time, so that the stuffed copy never
/// doubles the message in memory.
const DATA_CHUNK: usize = 64 * 1024;

/// Where to submit: `sendmail.server` (a web-hosting machine names the relay there), else
/// this config's own `listen.relay` with an unspecified address replaced by loopback.
pub(super) fn relay_server(config: &Config) -> Result<SocketAddr, Failure> {
    if let Some(server) = &config.sendmail.server {
        use std::net::ToSocketAddrs;
        return server
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| Failure::Config(format!("sendmail.server {server}: cannot resolve")));
    }
    let Some(mut addr) = config.listen.relay else {
        return Err(Failure::Config(
            "the config has no relay listener (listen.relay) to submit to".to_string(),
        ));
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// One SMTP connection to the relay.
struct Client {
    stream: TcpStream,
    /// Bytes received and not yet taken as a reply.
    received: Vec<u8>,
    server: SocketAddr,
}

impl Client {
    fn connect(server: SocketAddr) -> Result<Self, Failure> {
        let stream = TcpStream::connect_timeout(&server, CONNECT_TIMEOUT).map_err(|e| {
            Failure::Network(format!("cannot connect to the relay at {server}: {e}"))
        })?;
        let lost = |e: std::io::Error| Failure::Network(format!("connection to {server}: {e}"));
        stream
            .set_read_timeout(Some(COMMAND_TIMEOUT))
            .map_err(lost)?;
        stream
            .set_write_timeout(Some(COMMAND_TIMEOUT))
            .map_err(lost)?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            received: Vec::with_capacity(1024),
            server,
        })
    }

    fn lost(&self, e: &std::io::Error) -> Failure {
        Failure::Network(format!(
            "connection to the relay at {} lost: {e}",
            self.server
        ))
    }

    /// Bytes that are not an SMTP reply: exit 76.
    fn not_smtp(&self, error: &ResponseError) -> Failure {
        let server = self.server;
        Failure::Protocol(match error {
            ResponseError::LineTooLong => {
                format!("the relay at {server} sent a reply line longer than {MAX_LINE} bytes")
            }
            ResponseError::TooManyLines => {
                format!("the relay at {server} sent a reply of more than {MAX_LINES} lines")
            }
            ResponseError::MixedCodes { .. } => {
                format!("the relay at {server} changed the reply code within a reply: {error}")
            }
            ResponseError::Malformed { .. } | ResponseError::CodeOutOfRange { .. } => {
                format!("the relay at {server} does not speak SMTP: {error}")
            }
        })
    }

    /// Reads one reply, all its lines.
    fn reply(&mut self) -> Result<Response, Failure> {
        let mut chunk = [0u8; 4096];
        loop {
            match parse_response(&self.received) {
                Ok(Some((response, used))) => {
                    self.received.drain(..used);
                    return Ok(response);
                }
                Ok(None) => {}
                Err(e) => return Err(self.not_smtp(&e)),
            }
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Failure::Network(format!(
                        "the relay at {} closed the connection",
                        self.server
                    )));
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.lost(&e)),
            };
            self.received.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command line (CRLF included) and reads its reply.
    fn command(&mut self, line: &str) -> Result<Response, Failure> {
        self.stream
            .write_all(line.as_bytes())
            .map_err(|e| self.lost(&e))?;
        self.reply()
    }

    /// A reply of class `class` (2 or 3), else the failure naming `stage`.
    fn expect(reply: Response, class: u16, stage: &str) -> Result<Response, Failure> {
        if reply.code / 100 == class {
            Ok(reply)
        } else {
            Err(Failure::Refused {
                stage: stage.to_string(),
                reply,
            })
        }
    }

    /// Sends the data, dot-stuffed, and the end-of-data marker.
    fn send_data(&mut self, data: &[u8]) -> Result<(), Failure> {
        let mut stuffer = DotStuffer::new();
        let mut out = Vec::with_capacity(DATA_CHUNK + DATA_CHUNK / 32);
        for chunk in data.chunks(DATA_CHUNK) {
            out.clear();
            stuffer.encode(chunk, &mut out);
            self.stream.write_all(&out).map_err(|e| self.lost(&e))?;
        }
        out.clear();
        stuffer.finish(&mut out);
        self.stream.write_all(&out).map_err(|e| self.lost(&e))
    }

    /// QUIT, ignoring the outcome: the transaction is over either way.
    fn quit(&mut self) {
        if self.stream.write_all(command::QUIT.as_bytes()).is_ok() {
            let _ = self.stream.set_read_timeout(Some(QUIT_TIMEOUT));
            let _ = self.reply();
        }
    }
}

/// One SMTP transaction: all recipients accepted and the data accepted, or a failure.
pub(super) fn submit(server: SocketAddr, helo: &str, message: &Prepared) -> Result<(), Failure> {
    let mut client = Client::connect(server)?;
    let result = transaction(&mut client, helo, message);
    // On success or failure alike: a refused transaction's holds are released by the relay.
    if !matches!(result, Err(Failure::Network(_))) {
        client.quit();
    }
    result
}

fn transaction(client: &mut Client, helo: &str, message: &Prepared) -> Result<(), Failure> {
    let greeting = client.reply()?;
    Client::expect(greeting, 2, "greeting")?;
    let extensions = hello(client, helo)?;
    let mail = MailFrom {
        sender: &message.sender,
        // The message was measured against the relay's limit before connecting.
        size: None,
        body_8bit: message.data.iter().any(|&b| b >= 0x80),
        // RFC 6531 section 3.4: a non-ASCII address is only sent with SMTPUTF8 on MAIL.
        smtputf8: !message.sender.is_ascii() || message.recipients.iter().any(|r| !r.is_ascii()),
        require_tls: false,
    };
    let reply = client.command(&mail.command(&extensions))?;
    Client::expect(reply, 2, &format!("MAIL FROM:<{}>", message.sender))?;
    for recipient in &message.recipients {
        let rcpt = command::rcpt_to(recipient);
        let reply = client.command(&rcpt)?;
        Client::expect(reply, 2, rcpt.trim_end())?;
    }
    let reply = client.command(command::DATA)?;
    Client::expect(reply, 3, "DATA")?;
    let _ = client.stream.set_read_timeout(Some(DATA_END_TIMEOUT));
    client.send_data(&message.data)?;
    let reply = client.reply()?;
    Client::expect(reply, 2, "end of data")?;
    Ok(())
}

/// EHLO, or HELO when EHLO is refused in any way (an old relay): the extensions to use.
fn hello(client: &mut Client, helo: &str) -> Result<Extensions, Failure> {
    let ehlo = client.command(&command::ehlo(helo))?;
    if ehlo.is_positive() {
        return Ok(Extensions::from_ehlo(&ehlo));
    }
    let reply = client.command(&command::helo(helo))?;
    Client::expect(reply, 2, "HELO")?;
    Ok(Extensions::default())
}
