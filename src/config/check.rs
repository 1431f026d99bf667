//! The rules a config must keep that its types cannot say: values that must not be zero,
//! keys that go together, limits on one value set by another.
//!
//! One step per section, run in the order of the file; the first broken rule is the error,
//! named by its dotted key. Values with a form of their own (addresses, durations, the relay
//! host, the MTA-STS roots, the trust anchor file) are checked while they are deserialised
//! and never reach this point unchecked.

use super::{
    Config, ConfigError, DeliveryConfig, DeliveryLogConfig, LimitsConfig, ListenConfig, LogConfig,
    MtaStsConfig, PgTlsMode, QuotaBackendName, QuotaConfig, SendmailConfig, ServerConfig,
    SpoolConfig, StoreBackendName, StoreConfig, TimeoutsConfig, TlsConfig,
};
use crate::policy::Plan;

/// Longest `[server] replica` (a host name's limit).
const MAX_REPLICA_NAME_LEN: usize = 253;

/// The error for `key`.
fn invalid(key: &str, why: &str) -> Result<(), ConfigError> {
    Err(ConfigError(format!("{key}: {why}")))
}

impl Config {
    /// Every section's rules, in file order.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        self.server.check()?;
        self.tls.check()?;
        self.listen.check()?;
        self.store.check()?;
        self.check_handoff()?;
        self.limits.check()?;
        self.delivery.check()?;
        self.spool.check()?;
        self.timeouts.check()?;
        self.sendmail.check()?;
        self.quota.check()?;
        self.mta_sts.check()?;
        self.delivery_log.check()?;
        if self.store.backend == StoreBackendName::Postgres && self.delivery_log.path.is_some() {
            return invalid(
                "delivery_log.path",
                "not used with store.backend = \"postgres\": the delivery log is in PostgreSQL",
            );
        }
        self.log.check()
    }
}

impl ServerConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return invalid("server.hostname", "must be a host name without spaces");
        }
        if let Some(replica) = &self.replica
            && (replica.is_empty()
                || replica.len() > MAX_REPLICA_NAME_LEN
                || replica.contains(|c: char| c.is_whitespace() || c.is_control()))
        {
            return invalid(
                "server.replica",
                &format!("must be 1 to {MAX_REPLICA_NAME_LEN} characters without spaces"),
            );
        }
        Ok(())
    }
}

impl Config {
    /// A hand-off listener needs the fleet secret and the networks it accepts; the secret
    /// file itself is read when `serve` starts.
    fn check_handoff(&self) -> Result<(), ConfigError> {
        if self.listen.handoff.is_some() {
            if self.handoff.secret_file.is_none() {
                return invalid("handoff.secret_file", "required when listen.handoff is set");
            }
            if self.handoff.networks.is_empty() {
                return invalid(
                    "handoff.networks",
                    "required when listen.handoff is set (the peers' networks)",
                );
            }
        }
        if let Some(peer) = &self.handoff.peer {
            if !super::handoff::is_host_port(peer) {
                return invalid("handoff.peer", "must be HOST:PORT");
            }
            if self.handoff.secret_file.is_none() {
                return invalid("handoff.secret_file", "required when handoff.peer is set");
            }
        }
        Ok(())
    }
}

impl TlsConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.cert.is_some() != self.key.is_some() {
            let key = if self.cert.is_some() {
                "tls.key"
            } else {
                "tls.cert"
            };
            return invalid(key, "tls.cert and tls.key go together: set both or neither");
        }
        if self.ecdsa_cert.is_some() != self.ecdsa_key.is_some() {
            let key = if self.ecdsa_cert.is_some() {
                "tls.ecdsa_key"
            } else {
                "tls.ecdsa_cert"
            };
            return invalid(
                key,
                "tls.ecdsa_cert and tls.ecdsa_key go together: set both or neither",
            );
        }
        if self.ecdsa_cert.is_some() && self.cert.is_none() {
            return invalid(
                "tls.ecdsa_cert",
                "is the second certificate beside tls.cert and tls.key: set those too",
            );
        }
        if self.session_cache > super::MAX_TLS_SESSION_CACHE {
            return invalid(
                "tls.session_cache",
                &format!(
                    "{} is more than the limit of {} sessions (0 keeps none)",
                    self.session_cache,
                    super::MAX_TLS_SESSION_CACHE
                ),
            );
        }
        Ok(())
    }
}

impl ListenConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.submission.is_none() && self.submissions.is_none() && self.relay.is_none() {
            return invalid(
                "listen",
                "no SMTP listener configured (submission, submissions, relay)",
            );
        }
        Ok(())
    }
}

impl StoreConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let needs = |key: &str| {
            invalid(
                key,
                &format!("required with store.backend = \"{}\"", self.backend_name()),
            )
        };
        if self.cache_ttl > super::MAX_STORE_CACHE_TTL {
            return invalid(
                "store.cache_ttl",
                &format!(
                    "{:?} is longer than the limit of {:?} (\"0s\" turns the cache off)",
                    self.cache_ttl,
                    super::MAX_STORE_CACHE_TTL
                ),
            );
        }
        match self.backend {
            StoreBackendName::Embedded if self.path.is_none() => needs("store.path"),
            StoreBackendName::Embedded => Ok(()),
            StoreBackendName::Postgres if self.url.is_none() => needs("store.url"),
            StoreBackendName::Postgres if self.secret_key_file.is_none() => {
                needs("store.secret_key_file")
            }
            StoreBackendName::Postgres if self.pool_size == 0 => {
                invalid("store.pool_size", "must be at least 1")
            }
            StoreBackendName::Postgres if self.timeout.is_zero() => {
                invalid("store.timeout", "must be longer than zero")
            }
            StoreBackendName::Postgres => self.check_tls(),
        }
    }

    /// One TLS mode (the key or the URL's `sslmode`), and the files only where they are used.
    fn check_tls(&self) -> Result<(), ConfigError> {
        let from_url = self.url.as_ref().and_then(|url| url.sslmode);
        if let (Some(key), Some(url)) = (self.tls, from_url)
            && key != url
        {
            return invalid(
                "store.tls",
                &format!(
                    "\"{}\" conflicts with sslmode={} in store.url: keep one of them",
                    key.name(),
                    url.name()
                ),
            );
        }
        let mode = self.tls_mode();
        let unused = |key: &str| {
            invalid(
                key,
                &format!("has no use with store.tls = \"{}\"", mode.name()),
            )
        };
        if self.ca_file.is_some() && matches!(mode, PgTlsMode::Disable | PgTlsMode::Prefer) {
            return unused("store.ca_file");
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => invalid("store.client_key_file", "required with client_cert_file"),
            (None, Some(_)) => invalid("store.client_cert_file", "required with client_key_file"),
            (Some(_), Some(_)) if mode == PgTlsMode::Disable => unused("store.client_cert_file"),
            _ => Ok(()),
        }
    }

    fn backend_name(&self) -> &'static str {
        match self.backend {
            StoreBackendName::Embedded => "embedded",
            StoreBackendName::Postgres => "postgres",
        }
    }
}

impl LimitsConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.max_recipients == 0 {
            return invalid("limits.max_recipients", "must be at least 1");
        }
        if self.max_message_size == 0 {
            return invalid("limits.max_message_size", "must be at least 1");
        }
        if self.max_sessions == 0 {
            return invalid("limits.max_sessions", "must be at least 1");
        }
        if self.max_sessions_per_ip == 0 {
            return invalid("limits.max_sessions_per_ip", "must be at least 1");
        }
        if self.max_sessions_per_subnet == 0 {
            return invalid("limits.max_sessions_per_subnet", "must be at least 1");
        }
        if self.max_auth_failures_per_subnet == 0 {
            return invalid("limits.max_auth_failures_per_subnet", "must be at least 1");
        }
        if self.max_auth_failures == 0 {
            return invalid("limits.max_auth_failures", "must be at least 1");
        }
        if self.max_received_headers == 0 {
            return invalid("limits.max_received_headers", "must be at least 1");
        }
        Ok(())
    }
}

impl DeliveryConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.port == 0 {
            return invalid("delivery.port", "must be a TCP port (1-65535)");
        }
        if self.max_per_destination == 0 {
            return invalid("delivery.max_per_destination", "must be at least 1");
        }
        if self.max_active_messages == 0 {
            return invalid("delivery.max_active_messages", "must be at least 1");
        }
        if self.retry_initial.is_zero() {
            return invalid("delivery.retry_initial", "must be longer than zero");
        }
        if self.retry_max < self.retry_initial {
            return invalid(
                "delivery.retry_max",
                "must not be shorter than delivery.retry_initial",
            );
        }
        Ok(())
    }
}

impl SpoolConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.segment_max_bytes < 4096 {
            return invalid("spool.segment_max_bytes", "must be at least 4096");
        }
        if self.commit_batch == 0 {
            return invalid("spool.commit_batch", "must be at least 1");
        }
        Ok(())
    }
}

impl TimeoutsConfig {
    fn check(&self) -> Result<(), ConfigError> {
        for (key, timeout) in [
            ("timeouts.command", self.command),
            ("timeouts.data", self.data),
            ("timeouts.tls_handshake", self.tls_handshake),
            ("timeouts.session", self.session),
            ("timeouts.data_total", self.data_total),
            ("timeouts.proxy_header", self.proxy_header),
        ] {
            if timeout.is_zero() {
                return invalid(key, "must be longer than zero");
            }
        }
        Ok(())
    }
}

impl SendmailConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(server) = &self.server {
            let port_ok = server.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                return invalid("sendmail.server", "must be HOST:PORT");
            }
        }
        Ok(())
    }
}

impl QuotaConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.bucket.is_zero() || self.bucket > self.window {
            return invalid(
                "quota.bucket",
                "must be longer than zero and not longer than quota.window",
            );
        }
        if !self
            .window
            .as_millis()
            .is_multiple_of(self.bucket.as_millis())
        {
            return invalid("quota.window", "must be a whole number of quota.bucket");
        }
        if self.hold_ttl.is_zero() {
            return invalid("quota.hold_ttl", "must be longer than zero");
        }
        if self.backend == QuotaBackendName::Redis
            && self.redis_url.is_none()
            && self.redis_cluster.is_empty()
        {
            return invalid(
                "quota.redis_url",
                "backend = \"redis\" needs redis_url or redis_cluster",
            );
        }
        if self.redis_password_file.is_some() && self.backend != QuotaBackendName::Redis {
            return invalid("quota.redis_password_file", "only with backend = \"redis\"");
        }
        if let Some(unknown) = self.plans.keys().find(|k| k.parse::<Plan>().is_err()) {
            return invalid(&format!("quota.plans.{unknown}"), "not a plan name");
        }
        Ok(())
    }
}

impl MtaStsConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.fetch_timeout.is_zero() {
            return invalid("mta_sts.fetch_timeout", "must be longer than zero");
        }
        if self.port == 0 {
            return invalid("mta_sts.port", "must not be 0");
        }
        Ok(())
    }
}

impl DeliveryLogConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.retention.is_zero() {
            return invalid("delivery_log.retention", "must be longer than zero");
        }
        Ok(())
    }
}

impl LogConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            return invalid("log.level", &format!("not a valid filter: {e}"));
        }
        Ok(())
    }
}
