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

pub mod http;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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
}

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
            registry,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> String {
        let oldest = self.inner.spool_oldest_received_ms.load(Ordering::Relaxed);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.inner.spool_oldest_age.set(age_seconds(oldest, now_ms));
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
}
