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
//! - [`spool`]: durable storage of accepted mail (group-committed journal plus files for large
//!   messages) and the schedule of delivery attempts.
//! - [`delivery`]: MX resolution and the outbound SMTP client that empties the spool.
//! - [`smtp`]: the client side of the SMTP wire (reply parsing, commands, dot-stuffing),
//!   pure code shared by [`delivery`] and `postern sendmail`; uses only std and crates.
//! - [`store`]: the directory (addresses, aliases, devices, hosting accounts, limits, DKIM
//!   keys) behind the traits a backend implements (embedded SQLite in `store/embedded/`, one
//!   file per subject), and the recipient quotas (`store/quota/`: embedded or Redis).
//! - [`cli`]: the `postern` command line: `serve` and the admin subcommands.
//! - [`metrics`]: Prometheus metrics and the health endpoints.
//! - [`config`]: the TOML configuration, strictly checked.
//! - [`server`]: wires the pieces together for `postern serve`.
//! - [`unix_time`]: Unix milliseconds, the crate's one stored time format (a leaf).
#![warn(missing_docs, unreachable_pub)]

pub mod cli;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod session;
pub mod smtp;
pub mod spool;
pub mod store;
pub mod unix_time;
