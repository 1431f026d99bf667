//! Postern: an outbound SMTP relay for an email hosting provider.
//!
//! # Layout: a message's life, top to bottom
//! - [`listener`]: accepts connections on the three roles (submission 587 with STARTTLS,
//!   submissions 465 with implicit TLS, relay 25 for hosting networks), enforces connection
//!   caps, performs TLS, and drives one [`session`] per connection over the socket.
//! - [`session`]: the SMTP server protocol as a pure state machine (no I/O, no clock): bytes
//!   in, replies and requests for the driver out. All reply texts live in `session::reply`.
//! - [`policy`]: decisions about who may send what: address syntax, device passwords,
//!   sender ownership.
//! - [`dkim`]: signs accepted mail with the sender domain's active keys.
//! - [`spool`]: durable storage of accepted mail (group-committed journal plus files for large
//!   messages) and the schedule of delivery attempts.
//! - [`delivery`]: MX resolution and the outbound SMTP client that empties the spool.
//! - [`store`]: addresses, aliases and device passwords behind a small trait
//!   (embedded SQLite by default).
//! - [`cli`]: the `postern` command line: `serve` and the admin subcommands.
//! - [`metrics`]: Prometheus metrics and the health endpoints.
//! - [`config`]: the TOML configuration, strictly checked.
//! - [`server`]: wires the pieces together for `postern serve`.
//! - [`dnssec`], [`keys`]: leaves that hold what two layers share (the trust anchor file,
//!   the DKIM key algorithm), so that neither has to import the other.

#![warn(missing_docs, unreachable_pub)]

pub mod cli;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod dnssec;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod session;
pub mod spool;
pub mod store;
