//! Every Prometheus metric Postern exports, declared in this one file.
//!
//! Names follow `postern_<area>_<what>_<unit>`. [`Metrics`] is a cheap clonable handle passed to
//! the parts that count things (never a global). The HTTP side (`/metrics`, `/healthz`,
//! `/readyz`) is in [`http`]. Label values are small fixed sets chosen by the code, never taken
//! from client input, so the series count stays bounded.
//!
//! Delivery and queue metrics (issue 5):
//! - `postern_delivery_recipients_total{result, tls}`: one per recipient per delivery attempt;
//!   `result` is `delivered`, `deferred` or `bounced` (the delivery log's states; an expired
//!   recipient is `bounced`), `tls` the protection of the session that answered: `plaintext`,
//!   `opportunistic`, `dane`, `mta-sts`, or `none` when no server gave a transaction answer
//!   (nothing reached, or the session failed before the transaction).
//! - `postern_delivery_retries_total`: delivery attempts of a message after its first (one per
//!   message and attempt, whatever its recipient count).
//! - `postern_delivery_early_recorded_recipients_total`: recipients recorded delivered as
//!   soon as their group's transaction ended, before the other groups of the same attempt
//!   (a message for several destinations), so a crash in between does not deliver to them
//!   again (`Spool::record_progress`).
//! - `postern_delivery_connections_total{reused}`: SMTP connections a delivery used, `reused`
//!   `false` for a new one and `true` for an idle session that carried the transaction
//!   (`src/delivery/pool.rs`).
//! - `postern_delivery_bounces_total{kind}`: DSNs enqueued to senders (`src/delivery/dsn.rs`),
//!   `kind` `failure`, `delay` or `success`; one per DSN, whatever its recipient count.
//! - `postern_delivery_dead_destinations`: destinations currently dead (consecutive connect
//!   or greeting timeouts, `src/delivery/dead.rs`): their concurrency is 1 and their retries
//!   are spread out; 0 from the start.
//! - `postern_delivery_log_dropped_records_total`: delivery log records given up (the
//!   writer's queue full, a write that failed twice, the writer stopped): the log
//!   is history and may lose rows, never mail (`src/delivery/log.rs`).
//! - `postern_spool_messages`: messages in the spool (queued or in flight).
//! - `postern_spool_oldest_message_age_seconds`: age of the oldest message in the spool (since
//!   it was accepted), 0 when the spool is empty. The spool publishes the oldest acceptance
//!   time after each group commit; the age is computed when `/metrics` is rendered, so it grows
//!   between commits as it should.
//!
//! Drain (issue 11): `postern_draining` is 1 from the moment a drain starts (`postern drain`,
//! or SIGTERM with `[server] drain_on_shutdown`) until the process exits, 0 otherwise.
//!
//! Operations (issue 12; the names the dashboards and alerts in `dashboards/` use):
//! - `postern_build_info{version}`: always 1; the version says which release a replica runs.
//! - `postern_delivery_duration_seconds{result}`: per recipient, from the message's arrival
//!   (the 250 that accepted it; a handed-off message keeps its `X-POSTERN-ARRIVAL`) to its
//!   final outcome, `delivered` or `bounced` (an expired recipient is `bounced`).
//! - `postern_delivery_smtp_transaction_seconds{result}`: one outbound transaction on a
//!   connected session, MAIL FROM to the last reply of DATA/BDAT; `ok` when the server answered
//!   the transaction (whatever the answer), `failed` when the session broke before an answer.
//! - `postern_queue_messages{state}` and `postern_queue_oldest_message_age_seconds{state}`:
//!   `ready` (due now or being delivered) and `deferred` (waiting for a retry time in the
//!   future). The spool publishes counts and the oldest acceptance times after each group
//!   commit and when a due time passes; ages are computed at render, as for the spool's own.
//! - `postern_spool_filesystem_free_bytes` and `postern_spool_filesystem_free_ratio`:
//!   `statvfs` of the spool directory at render (`f_bavail * f_frsize`, `f_bavail / f_blocks`:
//!   the space an unprivileged writer can still use).
//! - `postern_spool_fsync_seconds`: every fsync/fdatasync of the running spool (journal
//!   segments, data files, directories); start-up replay's few are not timed.
//! - `postern_redis_operation_seconds{operation, status}`: every round trip of the Redis quota
//!   and brake stores (`quota_hold`, `quota_commit`, `quota_release`, `quota_refund`,
//!   `quota_usage`, `brake_login`, `brake_message`, `health`), `status` `ok` or `error` (an
//!   error reply or no answer in time). Pre-created only when Redis is configured.
//! - `postern_postgres_operation_seconds{operation, status}`: every directory read a serving
//!   replica makes (`login`, `live_credentials`, `generation`, `senders`, `hosting_account`,
//!   `limits`, `dkim_keys`, `health`) and every delivery log write (`log_write`); admin writes
//!   run in the CLI, not in `serve`, and have no series here. Pre-created only with PostgreSQL.
//! - `postern_directory_generation`: the directory generation the revocation watcher last read
//!   (PostgreSQL's shared counter; the embedded store's own).
//! - `postern_directory_revocation_apply_seconds`: from a revoking directory write (the
//!   database server's clock at the write, carried in the `NOTIFY` payload) to this replica
//!   having cleared its cache and cut the sessions (this replica's clock): clock skew between
//!   the two adds to or hides from the value, so keep the fleet on NTP.
//! - `postern_smtp_rejections_total{reason}`: every 4xx/5xx the SMTP front door (25, 465, 587)
//!   answers to a command or a connection, one per refusal, by [`Rejection`]. Timeouts, the
//!   shutdown 421, a revoked session's 421 and PROXY header refusals (counted by
//!   `postern_smtp_proxy_refused_total`) answer no command and are not counted; nor is the
//!   hand-off listener (replica to replica, not the front door).
//! - `postern_quota_refusals_total{scope}`: RCPTs refused because a daily quota is full:
//!   `address` (an authenticated address's plan or override), `hosting` (a port-25 hosting
//!   account's cap).
//!
//! Every series of a fixed label set exists from start-up at zero ([`Metrics::new`], and
//! [`Metrics::listeners_configured`], [`Metrics::redis_configured`],
//! [`Metrics::postgres_configured`] for the parts that depend on the configuration): a series
//! that appears only at its first event breaks `rate()` and the alerts built on it.

pub mod http;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Why the SMTP front door refused a command or a connection: the `reason` label of
/// `postern_smtp_rejections_total`. Every reply in `session/reply.rs` that refuses something
/// names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// MAIL before AUTH on submission; AUTH on port 25 (the FAQ's 573).
    AuthRequired,
    /// AUTH with wrong credentials (535), and the 421 after too many of them.
    BadCredentials,
    /// AUTH before STARTTLS on 587 (538).
    TlsRequired,
    /// A daily quota is full (450).
    Quota,
    /// The quota store (or the message brake's) did not answer (451).
    QuotaUnavailable,
    /// More recipients than `[limits] max_recipients` (452).
    TooManyRecipients,
    /// Larger than `[limits] max_message_size`, or a header section too large (552, 554).
    Size,
    /// A sender the user or hosting account does not own; a `From:` that breaks the
    /// ownership rules (550).
    SenderNotOwned,
    /// Port 25 without a relaying network; an address literal recipient (550).
    RelayDenied,
    /// A bare CR or LF in the message data (554): the SMTP smuggling shape.
    Smuggling,
    /// The per-minute message or connection brake, the failed-login brake (450, 421).
    Brake,
    /// A command, parameter, address or message that does not parse or is not supported
    /// (500, 501, 502, 553, 554, 555); also a mail loop's "too many hops" and the 421 after
    /// too many bad commands.
    BadSyntax,
    /// A command out of order (503), DATA without recipients (554).
    BadSequence,
    /// The spool's file system is full (452).
    SpoolFull,
    /// The spool could not keep the message (451).
    SpoolError,
    /// DKIM signing failed (451: fail closed).
    DkimError,
    /// The directory did not answer AUTH (454).
    DirectoryUnavailable,
    /// A session or per-address connection cap (421 at connect).
    ConnectionLimit,
}

impl Rejection {
    /// Every reason, for the explicit zeros.
    pub const ALL: [Rejection; 18] = [
        Rejection::AuthRequired,
        Rejection::BadCredentials,
        Rejection::TlsRequired,
        Rejection::Quota,
        Rejection::QuotaUnavailable,
        Rejection::TooManyRecipients,
        Rejection::Size,
        Rejection::SenderNotOwned,
        Rejection::RelayDenied,
        Rejection::Smuggling,
        Rejection::Brake,
        Rejection::BadSyntax,
        Rejection::BadSequence,
        Rejection::SpoolFull,
        Rejection::SpoolError,
        Rejection::DkimError,
        Rejection::DirectoryUnavailable,
        Rejection::ConnectionLimit,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::AuthRequired => "auth_required",
            Rejection::BadCredentials => "bad_credentials",
            Rejection::TlsRequired => "tls_required",
            Rejection::Quota => "quota",
            Rejection::QuotaUnavailable => "quota_unavailable",
            Rejection::TooManyRecipients => "too_many_recipients",
            Rejection::Size => "size",
            Rejection::SenderNotOwned => "sender_not_owned",
            Rejection::RelayDenied => "relay_denied",
            Rejection::Smuggling => "smuggling",
            Rejection::Brake => "brake",
            Rejection::BadSyntax => "bad_syntax",
            Rejection::BadSequence => "bad_sequence",
            Rejection::SpoolFull => "spool_full",
            Rejection::SpoolError => "spool_error",
            Rejection::DkimError => "dkim_error",
            Rejection::DirectoryUnavailable => "directory_unavailable",
            Rejection::ConnectionLimit => "connection_limit",
        }
    }
}

/// The `operation` values of `postern_redis_operation_seconds`.
pub const REDIS_OPERATIONS: [&str; 8] = [
    "quota_hold",
    "quota_commit",
    "quota_release",
    "quota_refund",
    "quota_usage",
    "brake_login",
    "brake_message",
    "health",
];

/// The `operation` values of `postern_postgres_operation_seconds`.
pub const POSTGRES_OPERATIONS: [&str; 9] = [
    "login",
    "live_credentials",
    "generation",
    "senders",
    "hosting_account",
    "limits",
    "dkim_keys",
    "health",
    "log_write",
];

/// See [`Metrics::set_queue_source`].
type QueueSource = Box<dyn Fn(u64) -> QueueState + Send + Sync>;

/// The `state` values of the queue gauges.
const QUEUE_STATES: [&str; 2] = ["ready", "deferred"];

/// What the spool last published about its queue: counts and oldest acceptance times (Unix
/// ms, 0 for none) of its ready and deferred messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueState {
    /// Due now or being delivered.
    pub ready: usize,
    /// Acceptance time of the oldest ready message.
    pub ready_oldest_ms: Option<u64>,
    /// Waiting for a retry time in the future.
    pub deferred: usize,
    /// Acceptance time of the oldest deferred message.
    pub deferred_oldest_ms: Option<u64>,
}

/// Handle to all metrics; clones share the same counters.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    connections: IntCounterVec,
    connections_rejected: IntCounterVec,
    proxy_refused: IntCounterVec,
    sessions_active: IntGaugeVec,
    tls_handshakes: IntCounterVec,
    auth_attempts: IntCounterVec,
    messages: IntCounterVec,
    recipients: IntCounterVec,
    message_bytes: IntCounter,
    message_size: Histogram,
    commit_batch: Histogram,
    commit_seconds: Histogram,
    spool_messages: IntGauge,
    delivery_dead_destinations: IntGauge,
    spool_oldest_age: Gauge,
    /// Acceptance time (Unix ms) of the oldest spooled message; 0 when the spool is empty.
    spool_oldest_received_ms: AtomicU64,
    delivery_recipients: IntCounterVec,
    delivery_retries: IntCounter,
    delivery_early_recorded: IntCounter,
    delivery_log_dropped: IntCounter,
    delivery_connections: IntCounterVec,
    delivery_dane_failures: IntCounterVec,
    delivery_mta_sts_failures: IntCounterVec,
    delivery_bounces: IntCounterVec,
    sessions_revoked: IntCounter,
    quota_holds: IntCounterVec,
    quota_available: IntGauge,
    quota_persistence: IntGaugeVec,
    quota_release_retries: IntCounterVec,
    directory_available: IntGauge,
    directory_cache_lookups: IntCounterVec,
    draining: IntGauge,
    dkim_messages: IntCounterVec,
    dkim_signatures: IntCounterVec,
    build_info: IntGaugeVec,
    delivery_duration: HistogramVec,
    smtp_transaction: HistogramVec,
    queue_messages: IntGaugeVec,
    queue_oldest_age: GaugeVec,
    /// Oldest acceptance time (Unix ms, 0 for none) per queue state: ready, deferred.
    queue_oldest_ms: [AtomicU64; 2],
    /// Reads the spool's queue by state at `now_ms`, once the spool is open: a message turns
    /// from deferred to ready by the clock alone, so the states are read at render.
    queue_source: OnceLock<QueueSource>,
    spool_free_bytes: Gauge,
    spool_free_ratio: Gauge,
    /// The spool directory, once the spool is open: the file system `statvfs` asks about.
    spool_path: OnceLock<PathBuf>,
    spool_fsync: Histogram,
    redis_operations: HistogramVec,
    postgres_operations: HistogramVec,
    directory_generation: IntGauge,
    revocation_apply: Histogram,
    smtp_rejections: IntCounterVec,
    quota_refusals: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Two handles are equal when they share the same counters.
impl PartialEq for Metrics {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Metrics {}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let inner = Inner {
            connections: counter_vec(
                &registry,
                "postern_smtp_connections_total",
                "SMTP connections accepted, by listener role",
                &["listener"],
            ),
            connections_rejected: counter_vec(
                &registry,
                "postern_smtp_connections_rejected_total",
                "SMTP connections refused at connect, by reason",
                &["reason"],
            ),
            proxy_refused: counter_vec(
                &registry,
                "postern_smtp_proxy_refused_total",
                "SMTP connections refused over their PROXY protocol header, by reason (missing, timeout, malformed, too_long, unsupported, untrusted)",
                &["reason"],
            ),
            sessions_active: gauge_vec(
                &registry,
                "postern_smtp_sessions_active",
                "SMTP sessions open now, by listener role",
                &["listener"],
            ),
            tls_handshakes: counter_vec(
                &registry,
                "postern_smtp_tls_handshakes_total",
                "Inbound TLS handshakes, by listener role and result",
                &["listener", "result"],
            ),
            auth_attempts: counter_vec(
                &registry,
                "postern_smtp_auth_attempts_total",
                "AUTH attempts, by mechanism and result",
                &["mechanism", "result"],
            ),
            messages: counter_vec(
                &registry,
                "postern_smtp_messages_total",
                "Messages accepted or rejected at end of data, by result",
                &["result"],
            ),
            recipients: counter_vec(
                &registry,
                "postern_smtp_recipients_total",
                "RCPT commands answered, by result (accepted, duplicate, too_many, relay_denied, bad_syntax)",
                &["result"],
            ),
            message_bytes: counter(
                &registry,
                "postern_smtp_message_bytes_total",
                "Bytes of accepted messages",
            ),
            message_size: histogram(
                &registry,
                "postern_smtp_message_size_bytes",
                "Size of accepted messages",
                vec![1e3, 1e4, 1e5, 1e6, 1e7, 5e7, 1e8, 2.2e8],
            ),
            commit_batch: histogram(
                &registry,
                "postern_spool_commit_batch_messages",
                "Messages made durable by one group commit",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
            commit_seconds: histogram(
                &registry,
                "postern_spool_commit_seconds",
                "Duration of one group commit (write and fsync)",
                vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0],
            ),
            spool_messages: gauge(
                &registry,
                "postern_spool_messages",
                "Messages in the spool awaiting delivery",
            ),
            delivery_dead_destinations: gauge(
                &registry,
                "postern_delivery_dead_destinations",
                "Destinations taken for dead after consecutive connect or greeting timeouts (concurrency 1, retries spread out)",
            ),
            spool_oldest_age: float_gauge(
                &registry,
                "postern_spool_oldest_message_age_seconds",
                "Age of the oldest message in the spool, 0 when it is empty",
            ),
            spool_oldest_received_ms: AtomicU64::new(0),
            delivery_recipients: counter_vec(
                &registry,
                "postern_delivery_recipients_total",
                "Recipient delivery attempts, by result (delivered, deferred, bounced) and TLS mode (plaintext, opportunistic, dane, mta-sts, none)",
                &["result", "tls"],
            ),
            delivery_retries: counter(
                &registry,
                "postern_delivery_retries_total",
                "Delivery attempts of a message after its first",
            ),
            delivery_early_recorded: counter(
                &registry,
                "postern_delivery_early_recorded_recipients_total",
                "Recipients recorded delivered when their group ended, before the rest of the attempt",
            ),
            delivery_log_dropped: counter(
                &registry,
                "postern_delivery_log_dropped_records_total",
                "Delivery log records dropped (writer queue full, write failed twice, writer stopped)",
            ),
            delivery_connections: counter_vec(
                &registry,
                "postern_delivery_connections_total",
                "Outbound SMTP connections used by deliveries, by whether they were reused",
                &["reused"],
            ),
            delivery_dane_failures: counter_vec(
                &registry,
                "postern_delivery_dane_failures_total",
                "DANE failures (RFC 7672), by reason (bogus_mx, bogus_address, bogus_tlsa, tlsa_lookup, starttls_not_offered, starttls_refused, handshake, tlsa_mismatch, name_mismatch)",
                &["reason"],
            ),
            delivery_mta_sts_failures: counter_vec(
                &registry,
                "postern_delivery_mta_sts_failures_total",
                "MTA-STS enforce failures (RFC 8461), by reason (mx_mismatch, starttls_not_offered, starttls_refused, handshake)",
                &["reason"],
            ),
            delivery_bounces: counter_vec(
                &registry,
                "postern_delivery_bounces_total",
                "DSNs enqueued to senders, by kind (failure, delay, success)",
                &["kind"],
            ),
            sessions_revoked: counter(
                &registry,
                "postern_smtp_sessions_revoked_total",
                "Live sessions cut because their device password was revoked or rotated",
            ),
            quota_holds: counter_vec(
                &registry,
                "postern_quota_holds_total",
                "Recipient holds against the daily quota, by result (held, full, unavailable)",
                &["result"],
            ),
            quota_available: gauge(
                &registry,
                "postern_quota_backend_up",
                "1 when the quota backend answered its last health check (on a Redis Cluster: every master, every slot served), else 0",
            ),
            quota_persistence: gauge_vec(
                &registry,
                "postern_quota_backend_persistence",
                "1 for the quota backend's persistence as read at start (aof, rdb, none, unknown, file), 0 for the others",
                &["mode"],
            ),
            quota_release_retries: counter_vec(
                &registry,
                "postern_quota_release_retries_total",
                "Hold releases that failed and were retried in the background, by outcome (released, gave_up)",
                &["result"],
            ),
            directory_available: gauge(
                &registry,
                "postern_directory_available",
                "1 when the directory (addresses, devices, hosting accounts) answered its last \
                 health check at this postern's schema version, else 0",
            ),
            directory_cache_lookups: counter_vec(
                &registry,
                "postern_directory_cache_lookups_total",
                "Directory lookups by kind (login, senders, hosting_account, limits) and how they \
                 were answered: hit (from the cache), miss (from the store, then kept), bypass \
                 (from the store; the cache is not serving: notifications down or store errors)",
                &["kind", "result"],
            ),
            draining: gauge(
                &registry,
                "postern_draining",
                "1 while the server drains (postern drain, or SIGTERM with server.drain_on_shutdown), else 0",
            ),
            dkim_messages: counter_vec(
                &registry,
                "postern_dkim_messages_total",
                "Accepted messages by DKIM outcome (signed, no_key, no_from_domain, header_too_large, error)",
                &["result"],
            ),
            dkim_signatures: counter_vec(
                &registry,
                "postern_dkim_signatures_total",
                "DKIM signatures made, by algorithm (a dual-signed message counts twice)",
                &["algorithm"],
            ),
            build_info: gauge_vec(
                &registry,
                "postern_build_info",
                "Always 1; the label says which Postern version this replica runs",
                &["version"],
            ),
            delivery_duration: histogram_vec(
                &registry,
                "postern_delivery_duration_seconds",
                "Per recipient, from the message's acceptance to its final outcome (delivered, bounced)",
                &["result"],
                vec![
                    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                    21600.0, 86400.0, 259200.0, 432000.0,
                ],
            ),
            smtp_transaction: histogram_vec(
                &registry,
                "postern_delivery_smtp_transaction_seconds",
                "One outbound SMTP transaction, MAIL FROM to the last reply of DATA/BDAT, by result (ok: answered, failed: broke off)",
                &["result"],
                vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                    300.0,
                ],
            ),
            queue_messages: gauge_vec(
                &registry,
                "postern_queue_messages",
                "Messages in the spool by state (ready: due now or in flight; deferred: waiting for a retry time)",
                &["state"],
            ),
            queue_oldest_age: float_gauge_vec(
                &registry,
                "postern_queue_oldest_message_age_seconds",
                "Age since acceptance of the oldest message in each queue state, 0 when none",
                &["state"],
            ),
            queue_oldest_ms: [AtomicU64::new(0), AtomicU64::new(0)],
            queue_source: OnceLock::new(),
            spool_free_bytes: float_gauge(
                &registry,
                "postern_spool_filesystem_free_bytes",
                "Bytes an unprivileged writer can still use on the spool's file system (statvfs f_bavail * f_frsize)",
            ),
            spool_free_ratio: float_gauge(
                &registry,
                "postern_spool_filesystem_free_ratio",
                "Free share of the spool's file system (statvfs f_bavail / f_blocks, 0..1)",
            ),
            spool_path: OnceLock::new(),
            spool_fsync: histogram(
                &registry,
                "postern_spool_fsync_seconds",
                "Duration of each fsync/fdatasync the spool makes (journal, data files, directories)",
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ],
            ),
            redis_operations: histogram_vec(
                &registry,
                "postern_redis_operation_seconds",
                "Round trips to Redis by the quota and brake stores, by operation and status (ok, error)",
                &["operation", "status"],
                backend_buckets(),
            ),
            postgres_operations: histogram_vec(
                &registry,
                "postern_postgres_operation_seconds",
                "Round trips to PostgreSQL (directory reads, delivery log writes), by operation and status (ok, error)",
                &["operation", "status"],
                backend_buckets(),
            ),
            directory_generation: gauge(
                &registry,
                "postern_directory_generation",
                "The directory generation this replica has applied",
            ),
            revocation_apply: histogram(
                &registry,
                "postern_directory_revocation_apply_seconds",
                "From a revoking directory write (database clock) to this replica having applied it (sessions cut, cache cleared)",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0],
            ),
            smtp_rejections: counter_vec(
                &registry,
                "postern_smtp_rejections_total",
                "Refusals (4xx/5xx) the SMTP front door answered, by reason",
                &["reason"],
            ),
            quota_refusals: counter_vec(
                &registry,
                "postern_quota_refusals_total",
                "Recipients refused because a daily quota is full, by scope (address, hosting)",
                &["scope"],
            ),
            registry,
        };
        let metrics = Self {
            inner: Arc::new(inner),
        };
        metrics.create_fixed_series();
        metrics
    }

    /// The explicit zeros of every series whose labels do not depend on the configuration.
    fn create_fixed_series(&self) {
        let m = &self.inner;
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["delivered", "bounced"] {
            m.delivery_duration.with_label_values(&[result]);
        }
        for result in ["ok", "failed"] {
            m.smtp_transaction.with_label_values(&[result]);
        }
        for state in QUEUE_STATES {
            m.queue_messages.with_label_values(&[state]);
            m.queue_oldest_age.with_label_values(&[state]);
        }
        for reason in Rejection::ALL {
            m.smtp_rejections.with_label_values(&[reason.label()]);
        }
        for scope in ["address", "hosting"] {
            m.quota_refusals.with_label_values(&[scope]);
        }
        for reason in [
            "sessions",
            "per_ip",
            "per_subnet",
            "failed_logins",
            "failed_logins_subnet",
            "connection_rate",
        ] {
            m.connections_rejected.with_label_values(&[reason]);
        }
        for reason in [
            "missing",
            "timeout",
            "malformed",
            "too_long",
            "unsupported",
            "untrusted",
        ] {
            m.proxy_refused.with_label_values(&[reason]);
        }
        for mechanism in ["plain", "login"] {
            for result in ["ok", "failed", "error", "braked"] {
                m.auth_attempts.with_label_values(&[mechanism, result]);
            }
        }
        for result in [
            "accepted",
            "too_big",
            "malformed",
            "sender_not_owned",
            "too_many_hops",
            "spool_full",
            "spool_error",
            "quota",
            "quota_unavailable",
            "dkim_error",
        ] {
            m.messages.with_label_values(&[result]);
        }
        for result in [
            "accepted",
            "duplicate",
            "too_many",
            "relay_denied",
            "bad_syntax",
            "needs_smtputf8",
            "address_literal",
            "quota",
            "throttled",
            "quota_unavailable",
        ] {
            m.recipients.with_label_values(&[result]);
        }
        for result in ["delivered", "deferred", "bounced"] {
            for tls in ["plaintext", "opportunistic", "dane", "mta-sts", "none"] {
                m.delivery_recipients.with_label_values(&[result, tls]);
            }
        }
        for reused in ["false", "true"] {
            m.delivery_connections.with_label_values(&[reused]);
        }
        for reason in [
            "bogus_mx",
            "bogus_address",
            "bogus_tlsa",
            "tlsa_lookup",
            "starttls_not_offered",
            "starttls_refused",
            "handshake",
            "tlsa_mismatch",
            "name_mismatch",
        ] {
            m.delivery_dane_failures.with_label_values(&[reason]);
        }
        for reason in [
            "mx_mismatch",
            "starttls_not_offered",
            "starttls_refused",
            "handshake",
        ] {
            m.delivery_mta_sts_failures.with_label_values(&[reason]);
        }
        for kind in ["failure", "delay", "success"] {
            m.delivery_bounces.with_label_values(&[kind]);
        }
        for result in ["held", "full", "unavailable"] {
            m.quota_holds.with_label_values(&[result]);
        }
        for result in ["released", "gave_up"] {
            m.quota_release_retries.with_label_values(&[result]);
        }
        for result in [
            "signed",
            "no_key",
            "no_from_domain",
            "header_too_large",
            "not_permitted",
            "unsignable_header",
            "error",
        ] {
            m.dkim_messages.with_label_values(&[result]);
        }
        for algorithm in ["rsa-sha256", "ed25519-sha256"] {
            m.dkim_signatures.with_label_values(&[algorithm]);
        }
        for kind in ["login", "senders", "hosting_account", "limits"] {
            for result in ["hit", "miss", "bypass"] {
                m.directory_cache_lookups.with_label_values(&[kind, result]);
            }
        }
    }

    /// The explicit zeros of the per-listener series, for the listeners configured (`role`
    /// names, and `handoff` when that listener is on).
    pub fn listeners_configured(&self, listeners: &[&str]) {
        for listener in listeners {
            self.inner.connections.with_label_values(&[listener]);
            self.inner.sessions_active.with_label_values(&[listener]);
            for result in ["ok", "failed", "timeout"] {
                self.inner
                    .tls_handshakes
                    .with_label_values(&[listener, result]);
            }
        }
    }

    /// The explicit zeros of `postern_redis_operation_seconds` (Redis is the quota backend).
    pub fn redis_configured(&self) {
        for operation in REDIS_OPERATIONS {
            for status in ["ok", "error"] {
                self.inner
                    .redis_operations
                    .with_label_values(&[operation, status]);
            }
        }
    }

    /// The explicit zeros of `postern_postgres_operation_seconds` (PostgreSQL is the store).
    pub fn postgres_configured(&self) {
        for operation in POSTGRES_OPERATIONS {
            for status in ["ok", "error"] {
                self.inner
                    .postgres_operations
                    .with_label_values(&[operation, status]);
            }
        }
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> String {
        let oldest = self.inner.spool_oldest_received_ms.load(Ordering::Relaxed);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.inner.spool_oldest_age.set(age_seconds(oldest, now_ms));
        if let Some(source) = self.inner.queue_source.get() {
            self.set_queue(source(now_ms));
        }
        for (i, state) in QUEUE_STATES.iter().enumerate() {
            let oldest = self.inner.queue_oldest_ms[i].load(Ordering::Relaxed);
            self.inner
                .queue_oldest_age
                .with_label_values(&[state])
                .set(age_seconds(oldest, now_ms));
        }
        if let Some(space) = self.inner.spool_path.get().and_then(|p| free_space(p)) {
            self.inner.spool_free_bytes.set(space.free_bytes);
            self.inner.spool_free_ratio.set(space.free_ratio);
        }
        let mut out = String::new();
        // Encoding into a String only fails on invalid metric families, which we never build.
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.inner.registry.gather(), &mut out);
        out
    }

    /// A connection was accepted on `listener`.
    pub fn connection_opened(&self, listener: &str) {
        self.inner.connections.with_label_values(&[listener]).inc();
        self.inner
            .sessions_active
            .with_label_values(&[listener])
            .inc();
    }

    /// A session on `listener` ended.
    pub fn connection_closed(&self, listener: &str) {
        self.inner
            .sessions_active
            .with_label_values(&[listener])
            .dec();
    }

    /// A connection was refused before the greeting (`reason`: a fixed label).
    pub fn connection_rejected(&self, reason: &str) {
        self.inner
            .connections_rejected
            .with_label_values(&[reason])
            .inc();
    }

    /// A connection was refused over its PROXY header (`reason`: a
    /// `listener::proxy::ProxyRefusal` label).
    pub fn proxy_refused(&self, reason: &str) {
        self.inner.proxy_refused.with_label_values(&[reason]).inc();
    }

    /// A TLS handshake finished (`result`: `ok`, `failed` or `timeout`).
    pub fn tls_handshake(&self, listener: &str, result: &str) {
        self.inner
            .tls_handshakes
            .with_label_values(&[listener, result])
            .inc();
    }

    /// An AUTH attempt ended (`result`: `ok`, `failed`, `error`, `braked`).
    pub fn auth_attempt(&self, mechanism: &str, result: &str) {
        self.inner
            .auth_attempts
            .with_label_values(&[mechanism, result])
            .inc();
    }

    /// A message was accepted and spooled.
    pub fn message_accepted(&self, bytes: u64) {
        self.inner.messages.with_label_values(&["accepted"]).inc();
        self.inner.message_bytes.inc_by(bytes);
        self.inner.message_size.observe(bytes as f64);
    }

    /// A message was refused at end of data (`reason`: a fixed label).
    pub fn message_rejected(&self, reason: &str) {
        self.inner.messages.with_label_values(&[reason]).inc();
    }

    /// A RCPT was answered (`result`: `accepted` or a rejection reason label).
    pub fn recipient(&self, result: &str) {
        self.inner.recipients.with_label_values(&[result]).inc();
    }

    /// One group commit made `messages` durable in `seconds`.
    pub fn spool_commit(&self, messages: usize, seconds: f64) {
        self.inner.commit_batch.observe(messages as f64);
        self.inner.commit_seconds.observe(seconds);
    }

    /// Destinations currently dead (`src/delivery/dead.rs`).
    pub fn set_dead_destinations(&self, count: usize) {
        self.inner.delivery_dead_destinations.set(count as i64);
    }

    /// Messages currently in the spool.
    pub fn set_spool_messages(&self, count: usize) {
        self.inner.spool_messages.set(count as i64);
    }

    /// When the oldest message in the spool was accepted (Unix ms); `None` when it is empty.
    pub fn set_spool_oldest(&self, received_at_ms: Option<u64>) {
        self.inner
            .spool_oldest_received_ms
            .store(received_at_ms.unwrap_or(0), Ordering::Relaxed);
    }

    /// One recipient's delivery attempt ended: `result` `delivered`, `deferred` or `bounced`;
    /// `tls` `plaintext`, `opportunistic`, `dane`, `mta-sts` or `none`.
    pub fn delivery_recipient(&self, result: &str, tls: &str) {
        self.inner
            .delivery_recipients
            .with_label_values(&[result, tls])
            .inc();
    }

    /// A message's delivery attempt after its first began.
    pub fn delivery_retry(&self) {
        self.inner.delivery_retries.inc();
    }

    /// `n` recipients were recorded delivered before their attempt ended.
    pub fn delivery_early_recorded(&self, n: usize) {
        self.inner.delivery_early_recorded.inc_by(n as u64);
    }

    /// `n` delivery log records were dropped.
    pub fn delivery_log_dropped(&self, n: u64) {
        self.inner.delivery_log_dropped.inc_by(n);
    }

    /// A delivery used an SMTP connection: a new one, or one `reused` from a pool.
    pub fn delivery_connection(&self, reused: bool) {
        let label = if reused { "true" } else { "false" };
        self.inner
            .delivery_connections
            .with_label_values(&[label])
            .inc();
    }

    /// A DANE check failed for a destination or host (`reason`: a fixed label, see `new`).
    pub fn dane_failure(&self, reason: &str) {
        self.inner
            .delivery_dane_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// An MTA-STS `enforce` policy refused a host (`reason`: a fixed label, see `new`).
    pub fn mta_sts_failure(&self, reason: &str) {
        self.inner
            .delivery_mta_sts_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// A DSN was enqueued: `kind` `failure`, `delay` or `success` (RFC 3464 `failed`,
    /// `delayed`, `relayed`).
    pub fn delivery_bounce(&self, kind: &str) {
        self.inner.delivery_bounces.with_label_values(&[kind]).inc();
    }

    /// A quota hold ended (`held`, `full`, `unavailable`).
    pub fn quota_hold(&self, result: &str) {
        self.inner.quota_holds.with_label_values(&[result]).inc();
    }

    /// Whether the quota backend answered its last health check.
    pub fn set_quota_available(&self, up: bool) {
        self.inner.quota_available.set(i64::from(up));
    }

    /// The quota backend's persistence: `mode` at 1, the other modes of `all` at 0.
    pub fn set_quota_persistence(&self, mode: &str, all: &[&str]) {
        for m in all {
            self.inner
                .quota_persistence
                .with_label_values(&[m])
                .set(i64::from(*m == mode));
        }
    }

    /// A failed hold release was retried in the background (`released`, `gave_up`).
    pub fn quota_release_retried(&self, result: &str) {
        self.inner
            .quota_release_retries
            .with_label_values(&[result])
            .inc();
    }

    /// Whether the directory answered its last health check.
    pub fn set_directory_available(&self, up: bool) {
        self.inner.directory_available.set(i64::from(up));
    }

    /// Whether the server is draining (`postern_draining`).
    pub fn set_draining(&self, draining: bool) {
        self.inner.draining.set(i64::from(draining));
    }

    /// An accepted message was signed, or relayed unsigned for the reason `result`.
    pub fn dkim_message(&self, result: &str) {
        self.inner.dkim_messages.with_label_values(&[result]).inc();
    }

    /// One DKIM signature was made with `algorithm` (`rsa-sha256`, `ed25519-sha256`).
    pub fn dkim_signature(&self, algorithm: &str) {
        self.inner
            .dkim_signatures
            .with_label_values(&[algorithm])
            .inc();
    }

    /// A directory lookup went through the cache (`store/cached.rs`).
    pub fn directory_cache_lookup(&self, kind: &str, result: &str) {
        self.inner
            .directory_cache_lookups
            .with_label_values(&[kind, result])
            .inc();
    }

    /// A live session was cut after a revocation.
    pub fn session_revoked(&self) {
        self.inner.sessions_revoked.inc();
    }

    /// The SMTP front door refused a command or a connection.
    pub fn rejected(&self, reason: Rejection) {
        self.inner
            .smtp_rejections
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// A RCPT was refused because a daily quota is full: `hosting` for a port-25 hosting
    /// account's cap, else an authenticated address's quota.
    pub fn quota_refused(&self, hosting: bool) {
        let scope = if hosting { "hosting" } else { "address" };
        self.inner.quota_refusals.with_label_values(&[scope]).inc();
    }

    /// A recipient reached its final outcome (`delivered` or `bounced`; other results are
    /// ignored) of a message accepted at `received_at_ms` (Unix ms).
    pub fn delivery_finished(&self, result: &str, received_at_ms: u64) {
        if !matches!(result, "delivered" | "bounced") {
            return;
        }
        let now_ms = crate::unix_time::now_ms();
        self.inner
            .delivery_duration
            .with_label_values(&[result])
            .observe(age_seconds(received_at_ms, now_ms));
    }

    /// One outbound SMTP transaction took `seconds`; `answered` when the server gave it an
    /// answer.
    pub fn smtp_transaction(&self, answered: bool, seconds: f64) {
        let result = if answered { "ok" } else { "failed" };
        self.inner
            .smtp_transaction
            .with_label_values(&[result])
            .observe(seconds);
    }

    /// The spool's queue by state.
    pub fn set_queue(&self, queue: QueueState) {
        let m = &self.inner;
        m.queue_messages
            .with_label_values(&["ready"])
            .set(queue.ready as i64);
        m.queue_messages
            .with_label_values(&["deferred"])
            .set(queue.deferred as i64);
        m.queue_oldest_ms[0].store(queue.ready_oldest_ms.unwrap_or(0), Ordering::Relaxed);
        m.queue_oldest_ms[1].store(queue.deferred_oldest_ms.unwrap_or(0), Ordering::Relaxed);
    }

    /// How to read the spool's queue by state at a given time (Unix ms), at every render.
    pub fn set_queue_source(&self, source: impl Fn(u64) -> QueueState + Send + Sync + 'static) {
        let _ = self.inner.queue_source.set(Box::new(source));
    }

    /// The spool's directory, whose file system the free-space gauges describe from now on.
    pub fn set_spool_path(&self, path: &Path) {
        let _ = self.inner.spool_path.set(path.to_path_buf());
    }

    /// Runs one spool fsync and times it into `postern_spool_fsync_seconds`.
    pub fn timed_fsync<T>(&self, fsync: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = fsync();
        self.spool_fsync(start.elapsed().as_secs_f64());
        result
    }

    /// One spool fsync took `seconds` (for the async ones [`Metrics::timed_fsync`] cannot wrap).
    pub fn spool_fsync(&self, seconds: f64) {
        self.inner.spool_fsync.observe(seconds);
    }

    /// One Redis round trip (`operation`: one of [`REDIS_OPERATIONS`]).
    pub fn redis_operation(&self, operation: &'static str, ok: bool, seconds: f64) {
        self.inner
            .redis_operations
            .with_label_values(&[operation, status_label(ok)])
            .observe(seconds);
    }

    /// One PostgreSQL round trip (`operation`: one of [`POSTGRES_OPERATIONS`]).
    pub fn postgres_operation(&self, operation: &'static str, ok: bool, seconds: f64) {
        self.inner
            .postgres_operations
            .with_label_values(&[operation, status_label(ok)])
            .observe(seconds);
    }

    /// The directory generation this replica has applied.
    pub fn set_directory_generation(&self, generation: u64) {
        self.inner
            .directory_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// A revoking write made at `written_at_ms` (Unix ms, the database's clock) is applied.
    pub fn revocation_applied(&self, written_at_ms: u64) {
        let now_ms = crate::unix_time::now_ms();
        self.inner
            .revocation_apply
            .observe(age_seconds(written_at_ms, now_ms));
    }
}

fn status_label(ok: bool) -> &'static str {
    if ok { "ok" } else { "error" }
}

/// Buckets of the Redis and PostgreSQL round trips: sub-millisecond on a LAN up to the
/// store timeouts (seconds).
fn backend_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

/// Free space of a file system, as the gauges publish it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FreeSpace {
    free_bytes: f64,
    free_ratio: f64,
}

/// `statvfs` of the file system holding `path`; `None` when the call fails (the gauges keep
/// their last values).
fn free_space(path: &Path) -> Option<FreeSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a writable statvfs that
    // lives across the call; statvfs writes nothing else.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut stat) != 0 {
            return None;
        }
        stat
    };
    let blocks = stat.f_blocks as f64;
    let available = stat.f_bavail as f64;
    Some(FreeSpace {
        free_bytes: available * stat.f_frsize as f64,
        free_ratio: if blocks > 0.0 {
            available / blocks
        } else {
            0.0
        },
    })
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

fn float_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let metric = Gauge::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

/// Seconds from `oldest_ms` to `now_ms` (Unix ms); 0 for an empty spool (`oldest_ms` 0) or a
/// clock that went backwards.
fn age_seconds(oldest_ms: u64, now_ms: u64) -> f64 {
    if oldest_ms == 0 {
        return 0.0;
    }
    now_ms.saturating_sub(oldest_ms) as f64 / 1000.0
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

fn float_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let metric = GaugeVec::new(Opts::new(name, help), labels).expect("static metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let metric =
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("static");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counted_values() {
        let m = Metrics::new();
        m.connection_opened("submission");
        m.message_accepted(1234);
        m.auth_attempt("plain", "failed");
        let text = m.render();
        assert!(text.contains("postern_smtp_connections_total{listener=\"submission\"} 1"));
        assert!(text.contains("postern_smtp_message_bytes_total 1234"));
        assert!(
            text.contains(
                "postern_smtp_auth_attempts_total{mechanism=\"plain\",result=\"failed\"} 1"
            )
        );
    }

    #[test]
    fn delivery_series_by_result_tls_and_reuse() {
        let m = Metrics::new();
        m.delivery_recipient("deferred", "plaintext");
        m.delivery_recipient("delivered", "plaintext");
        m.delivery_recipient("delivered", "plaintext");
        m.delivery_recipient("deferred", "none");
        m.delivery_retry();
        m.delivery_connection(false);
        m.delivery_early_recorded(2);
        let text = m.render();
        for line in [
            "postern_delivery_recipients_total{result=\"delivered\",tls=\"plaintext\"} 2",
            "postern_delivery_recipients_total{result=\"deferred\",tls=\"plaintext\"} 1",
            "postern_delivery_recipients_total{result=\"deferred\",tls=\"none\"} 1",
            "postern_delivery_retries_total 1",
            "postern_delivery_early_recorded_recipients_total 2",
            "postern_delivery_connections_total{reused=\"false\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn oldest_age_is_computed_at_render() {
        assert_eq!(age_seconds(0, 1_700_000_000_000), 0.0);
        assert_eq!(age_seconds(1_700_000_000_000, 1_700_000_002_500), 2.5);
        assert_eq!(age_seconds(1_700_000_002_500, 1_700_000_000_000), 0.0);

        let m = Metrics::new();
        assert!(
            m.render()
                .contains("postern_spool_oldest_message_age_seconds 0\n")
        );
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        m.set_spool_oldest(Some(now_ms - 60_000));
        let text = m.render();
        let age: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("postern_spool_oldest_message_age_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((60.0..120.0).contains(&age), "{age}");
        m.set_spool_oldest(None);
        assert!(
            m.render()
                .contains("postern_spool_oldest_message_age_seconds 0\n")
        );
    }

    /// The value of the sample line `series` (name and labels exactly as rendered).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().expect("a number"))
    }

    fn now_ms() -> u64 {
        crate::unix_time::now_ms()
    }

    #[test]
    fn every_family_exists_at_start_with_zeros() {
        let m = Metrics::new();
        m.listeners_configured(&["submission", "relay"]);
        m.redis_configured();
        m.postgres_configured();
        let text = m.render();
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            sample(
                &text,
                &format!("postern_build_info{{version=\"{version}\"}}")
            ),
            Some(1.0)
        );
        for (family, kind) in [
            ("postern_build_info", "gauge"),
            ("postern_delivery_duration_seconds", "histogram"),
            ("postern_delivery_smtp_transaction_seconds", "histogram"),
            ("postern_queue_messages", "gauge"),
            ("postern_queue_oldest_message_age_seconds", "gauge"),
            ("postern_spool_filesystem_free_bytes", "gauge"),
            ("postern_spool_filesystem_free_ratio", "gauge"),
            ("postern_spool_fsync_seconds", "histogram"),
            ("postern_redis_operation_seconds", "histogram"),
            ("postern_postgres_operation_seconds", "histogram"),
            ("postern_directory_generation", "gauge"),
            ("postern_directory_revocation_apply_seconds", "histogram"),
            ("postern_smtp_rejections_total", "counter"),
            ("postern_quota_refusals_total", "counter"),
        ] {
            assert!(
                text.lines().any(|l| l == format!("# TYPE {family} {kind}")),
                "{family} {kind} missing"
            );
        }
        let mut zeros: Vec<String> = Vec::new();
        for reason in Rejection::ALL {
            zeros.push(format!(
                "postern_smtp_rejections_total{{reason=\"{}\"}}",
                reason.label()
            ));
        }
        for scope in ["address", "hosting"] {
            zeros.push(format!("postern_quota_refusals_total{{scope=\"{scope}\"}}"));
        }
        for result in ["delivered", "bounced"] {
            zeros.push(format!(
                "postern_delivery_duration_seconds_count{{result=\"{result}\"}}"
            ));
        }
        for result in ["ok", "failed"] {
            zeros.push(format!(
                "postern_delivery_smtp_transaction_seconds_count{{result=\"{result}\"}}"
            ));
        }
        for state in ["ready", "deferred"] {
            zeros.push(format!("postern_queue_messages{{state=\"{state}\"}}"));
            zeros.push(format!(
                "postern_queue_oldest_message_age_seconds{{state=\"{state}\"}}"
            ));
        }
        for operation in REDIS_OPERATIONS {
            for status in ["ok", "error"] {
                zeros.push(format!(
                    "postern_redis_operation_seconds_count{{operation=\"{operation}\",status=\"{status}\"}}"
                ));
            }
        }
        for operation in POSTGRES_OPERATIONS {
            for status in ["ok", "error"] {
                zeros.push(format!(
                    "postern_postgres_operation_seconds_count{{operation=\"{operation}\",status=\"{status}\"}}"
                ));
            }
        }
        for listener in ["submission", "relay"] {
            zeros.push(format!(
                "postern_smtp_connections_total{{listener=\"{listener}\"}}"
            ));
            zeros.push(format!(
                "postern_smtp_sessions_active{{listener=\"{listener}\"}}"
            ));
            zeros.push(format!(
                "postern_smtp_tls_handshakes_total{{listener=\"{listener}\",result=\"failed\"}}"
            ));
        }
        zeros.extend(
            [
                "postern_spool_fsync_seconds_count",
                "postern_directory_generation",
                "postern_directory_revocation_apply_seconds_count",
                "postern_smtp_auth_attempts_total{mechanism=\"login\",result=\"braked\"}",
                "postern_smtp_messages_total{result=\"dkim_error\"}",
                "postern_smtp_recipients_total{result=\"too_many\"}",
                "postern_delivery_recipients_total{result=\"bounced\",tls=\"mta-sts\"}",
                "postern_delivery_dane_failures_total{reason=\"tlsa_mismatch\"}",
                "postern_delivery_mta_sts_failures_total{reason=\"mx_mismatch\"}",
                "postern_delivery_bounces_total{kind=\"delay\"}",
                "postern_quota_holds_total{result=\"full\"}",
                "postern_dkim_messages_total{result=\"signed\"}",
                "postern_dkim_signatures_total{algorithm=\"ed25519-sha256\"}",
                "postern_directory_cache_lookups_total{kind=\"limits\",result=\"bypass\"}",
                "postern_smtp_connections_rejected_total{reason=\"per_subnet\"}",
                "postern_smtp_proxy_refused_total{reason=\"untrusted\"}",
            ]
            .map(String::from),
        );
        for series in &zeros {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in:\n{text}");
        }
        // Only the listeners configured have series.
        assert!(!text.contains("listener=\"submissions\""), "{text}");
    }

    #[test]
    fn backends_have_no_series_unless_configured() {
        let text = Metrics::new().render();
        assert!(!text.contains("postern_redis_operation_seconds_count"));
        assert!(!text.contains("postern_postgres_operation_seconds_count"));
        assert!(!text.contains("listener="));
    }

    #[test]
    fn rejections_and_quota_refusals_count_by_their_labels() {
        let m = Metrics::new();
        m.rejected(Rejection::TooManyRecipients);
        m.rejected(Rejection::TooManyRecipients);
        m.rejected(Rejection::BadCredentials);
        m.quota_refused(true);
        let text = m.render();
        for (series, value) in [
            (
                "postern_smtp_rejections_total{reason=\"too_many_recipients\"}",
                2.0,
            ),
            (
                "postern_smtp_rejections_total{reason=\"bad_credentials\"}",
                1.0,
            ),
            ("postern_smtp_rejections_total{reason=\"quota\"}", 0.0),
            ("postern_quota_refusals_total{scope=\"hosting\"}", 1.0),
            ("postern_quota_refusals_total{scope=\"address\"}", 0.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series}");
        }
    }

    #[test]
    fn statvfs_of_the_spool_file_system_is_sane() {
        let dir = std::env::temp_dir();
        let space = free_space(&dir).expect("statvfs of the temp dir");
        assert!(space.free_bytes > 0.0, "{space:?}");
        assert!(
            space.free_ratio > 0.0 && space.free_ratio <= 1.0,
            "{space:?}"
        );
        assert_eq!(free_space(Path::new("/no/such/directory/here")), None);

        let m = Metrics::new();
        // Not rendered from anywhere before the spool is known.
        assert_eq!(
            sample(&m.render(), "postern_spool_filesystem_free_bytes"),
            Some(0.0)
        );
        m.set_spool_path(&dir);
        let text = m.render();
        let bytes = sample(&text, "postern_spool_filesystem_free_bytes").unwrap();
        let ratio = sample(&text, "postern_spool_filesystem_free_ratio").unwrap();
        assert!(bytes > 0.0, "{text}");
        assert!(ratio > 0.0 && ratio <= 1.0, "{text}");
    }

    #[test]
    fn queue_ages_per_state_are_computed_at_render() {
        let m = Metrics::new();
        let accepted = now_ms() - 60_000;
        m.set_queue_source(move |_| QueueState {
            ready: 2,
            ready_oldest_ms: Some(accepted),
            deferred: 0,
            deferred_oldest_ms: None,
        });
        let text = m.render();
        assert_eq!(
            sample(&text, "postern_queue_messages{state=\"ready\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "postern_queue_messages{state=\"deferred\"}"),
            Some(0.0)
        );
        let ready = sample(
            &text,
            "postern_queue_oldest_message_age_seconds{state=\"ready\"}",
        )
        .unwrap();
        assert!((60.0..120.0).contains(&ready), "{ready}");
        assert_eq!(
            sample(
                &text,
                "postern_queue_oldest_message_age_seconds{state=\"deferred\"}"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn histograms_observe_where_the_events_happen() {
        let m = Metrics::new();
        m.delivery_finished("delivered", now_ms() - 90_000);
        m.delivery_finished("deferred", now_ms() - 90_000);
        m.smtp_transaction(true, 0.2);
        m.smtp_transaction(false, 3.0);
        assert_eq!(m.timed_fsync(|| 7), 7);
        m.revocation_applied(now_ms() - 500);
        m.redis_operation("quota_hold", false, 0.5);
        m.set_directory_generation(42);
        let text = m.render();
        for (series, value) in [
            (
                "postern_delivery_duration_seconds_count{result=\"delivered\"}",
                1.0,
            ),
            // 90 s falls in the 120 s bucket, not the 60 s one.
            (
                "postern_delivery_duration_seconds_bucket{result=\"delivered\",le=\"60\"}",
                0.0,
            ),
            (
                "postern_delivery_duration_seconds_bucket{result=\"delivered\",le=\"120\"}",
                1.0,
            ),
            (
                "postern_delivery_smtp_transaction_seconds_count{result=\"ok\"}",
                1.0,
            ),
            (
                "postern_delivery_smtp_transaction_seconds_count{result=\"failed\"}",
                1.0,
            ),
            ("postern_spool_fsync_seconds_count", 1.0),
            ("postern_directory_revocation_apply_seconds_count", 1.0),
            (
                "postern_directory_revocation_apply_seconds_bucket{le=\"0.25\"}",
                0.0,
            ),
            (
                "postern_redis_operation_seconds_count{operation=\"quota_hold\",status=\"error\"}",
                1.0,
            ),
            ("postern_directory_generation", 42.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
        }
        // Deferred is not a final outcome: no series.
        assert!(!text.contains("result=\"deferred\"}"), "{text}");
    }
}
