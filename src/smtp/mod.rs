//! The SMTP client's side of the wire, shared by both of Postern's clients: the delivery client
//! (`delivery/client.rs`, async, to remote MX hosts) and `postern sendmail` (`cli/sendmail/`,
//! blocking, to our own relay listener).
//!
//! Pure code over byte slices and strings: no sockets, no tokio, no clock. Each client keeps
//! its own buffer and does its own reading and writing; this module says what the bytes mean.
//! - [`response`]: a server's reply parsed from the bytes received so far, with the line and
//!   length limits that keep a hostile server from growing the buffer without end;
//! - [`EnhancedCode`]: the RFC 3463 status code such a reply (and every delivery outcome) carries;
//! - [`extensions`]: the EHLO keywords the clients act on;
//! - [`command`]: the command lines a client sends, and which addresses can be put on them;
//! - [`dot`]: the streaming dot-stuffer for DATA;
//! - [`xtext`]: the RFC 3461 encoding of `ENVID=` and `ORCPT=`;
//! - [`handoff`]: the envelope lines of a hand-off between two replicas, written by the
//!   sending replica and read by the receiving one (the one server-side parser here: both
//!   ends are Postern).
//!
//! The server side is elsewhere: `session/` parses commands and writes the replies of its own
//! catalogue (`session::reply::Reply`). A parsed reply is therefore called a [`Response`] here,
//! so that the two never share a name.
//!
//! Layering: `smtp` uses only std and external crates; `delivery` and `cli` use it, never the
//! reverse.

pub mod command;
pub mod dot;
mod enhanced_code;
pub mod extensions;
pub mod handoff;
pub mod response;
pub mod xtext;

pub use enhanced_code::EnhancedCode;
pub use response::{Response, ResponseError, parse_response};
