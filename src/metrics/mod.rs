//! Every Prometheus metric Postern exports, declared in this one file.
//!
//! Names follow `postern_<area>_<what>_<unit>`. [`Metrics`] is a cheap clonable handle passed to
//! the parts that count things (never a global). The HTTP side (`/metrics`, `/healthz`,
//! `/readyz`) is in [`http`]. Label values are small fixed sets chosen by the code, never taken
//! from client input, so the series count stays bounded.

pub mod http;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::sync::Arc;

/// Handle to all metrics; clones share the same counters.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    connections: IntCounterVec,
    connections_rejected: IntCounterVec,
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
    delivery_attempts: IntCounterVec,
    sessions_revoked: IntCounter,
    quota_holds: IntCounterVec,
    quota_available: IntGauge,
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
            delivery_attempts: counter_vec(
                &registry,
                "postern_delivery_attempts_total",
                "Delivery attempts per recipient, by result",
                &["result"],
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
                "1 when the quota backend answered its last health check, else 0",
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

    /// A TLS handshake finished (`result`: `ok`, `failed` or `timeout`).
    pub fn tls_handshake(&self, listener: &str, result: &str) {
        self.inner
            .tls_handshakes
            .with_label_values(&[listener, result])
            .inc();
    }

    /// An AUTH attempt ended (`result`: `ok`, `failed`, `error`).
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

    /// Messages currently in the spool.
    pub fn set_spool_messages(&self, count: usize) {
        self.inner.spool_messages.set(count as i64);
    }

    /// One recipient's delivery attempt ended (`delivered`, `deferred`, `failed`).
    pub fn delivery_attempt(&self, result: &str) {
        self.inner
            .delivery_attempts
            .with_label_values(&[result])
            .inc();
    }

    /// A quota hold ended (`held`, `full`, `unavailable`).
    pub fn quota_hold(&self, result: &str) {
        self.inner.quota_holds.with_label_values(&[result]).inc();
    }

    /// Whether the quota backend answered its last health check.
    pub fn set_quota_available(&self, up: bool) {
        self.inner.quota_available.set(i64::from(up));
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
}
