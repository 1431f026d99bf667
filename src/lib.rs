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
//! - [`smtp`]: the client side of the SMTP wire (reply parsing, commands, dot-stuffing),
//!   pure code shared by [`delivery`] and `postern sendmail`; uses only std and crates.
//! - [`store`]: the directory (addresses, aliases, devices, hosting accounts, limits, DKIM
//!   keys) behind the traits a backend implements (embedded SQLite in `store/embedded/`, one
//!   file per subject), and the recipient quotas (`store/quota/`: embedded or Redis) with the brakes a fleet
//!   counts together (`store/brakes/`), and the delivery log (`store/delivery_log/`: SQLite, or
//!   the directory's PostgreSQL).
//! - [`cli`]: the `postern` command line: `serve` and the admin subcommands.
//! - [`metrics`]: Prometheus metrics and the health endpoints.
//! - [`config`]: the TOML configuration, strictly checked.
//! - [`control`]: what `postern queue` and `postern drain` say to the running `serve` over
//!   the Unix socket in its spool directory.
//! - [`server`]: wires the pieces together for `postern serve`.
//! - [`printable`]: client text made safe for terminals (control characters escaped) in the
//!   text log and the admin tables.
//! - [`unix_time`]: Unix milliseconds, the crate's one stored time format.
//! - `fuzz_targets`: the bodies of the `cargo fuzz` targets in `fuzz/` and of the corpus replay
//!   test (feature `fuzzing`, off in release builds): each feeds one parser arbitrary bytes
//!   and asserts what must hold for every input.
//! - `testutil`: the temporary directory of the tests (test and `conformance` builds only).
//! - [`any_certificate`]: the TLS verifier of the clients that connect without authenticating
//!   the server (opportunistic STARTTLS, PostgreSQL's `prefer`/`require`).
//! - [`dnssec`], [`keys`]: leaves that hold what two layers share (the trust anchor file,
//!   the DKIM key algorithm), so that neither has to import the other.
//!
//! # Layers: who may use whom
//!
//! Dependencies run one way: a module may use the modules of the layers below its own, never
//! one of its own layer or above. Modules in one layer are peers that do not know each other
//! (the listener never calls delivery; both go through the spool). `tests/layering.rs` reads
//! this table and checks every `crate::` path in `src/` against it, so a new module, or a new
//! edge that points up, is a change to this table first.
//!
//! | layer | modules | why here |
//! |---|---|---|
//! | 8 | `fuzz_targets` | the fuzz target bodies (feature `fuzzing`): drive the parsers of every layer below |
//! | 7 | `cli` | the entry point; `postern serve` runs `server`, admin commands use any layer |
//! | 6 | `server` | wires listeners, delivery and the stores together |
//! | 5 | `listener`, `delivery` | the two I/O drivers: mail in, mail out |
//! | 4 | `dkim` | signs what the listener accepts; reads keys from `store`, the header cap from `session` |
//! | 3 | `session`, `store`, `spool` | the protocol state machine, the directory and quota stores, the queue on disk |
//! | 2 | `smtp`, `metrics`, `control` | wire pieces both SMTP clients share; counters every layer above may bump; the admin commands' requests to the running server |
//! | 1 | `config` | typed, checked configuration: every layer above reads it, it reads none of them |
//! | 0 | `policy`, `any_certificate`, `dnssec`, `keys`, `printable`, `unix_time`, `testutil` | pure rules and shared values: import nothing from the crate |
#![warn(missing_docs, unreachable_pub)]

pub mod any_certificate;
pub mod cli;
pub mod config;
pub mod control;
pub mod delivery;
pub mod dkim;
pub mod dnssec;
#[cfg(feature = "fuzzing")]
pub mod fuzz_targets;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod printable;
pub mod server;
pub mod session;
pub mod smtp;
pub mod spool;
pub mod store;
#[cfg(any(test, feature = "conformance"))]
pub mod testutil;
pub mod unix_time;
