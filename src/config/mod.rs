//! The configuration file: one TOML document, every key documented in `config/postern.toml`.
//!
//! Loading is strict. Unknown keys are refused (`deny_unknown_fields`), every value is typed
//! (socket addresses, CIDR networks, durations), and [`Config::load`] reports the first problem
//! as one line naming the dotted key, e.g. `listen.submission: invalid socket address syntax`.
//! The CLI turns that into exit status 2. A `Config` value has therefore always been checked:
//! nothing downstream re-validates.
//!
//! Values with a form of their own are held typed, parsed once while deserialising (serde
//! `try_from`): the relay host ([`RelayHost`]), the MTA-STS roots ([`MtaStsRoots`]) and the
//! DNSSEC trust anchor file ([`TrustAnchor`]). Rules across values are `check.rs`, one step
//! per section. This module is the bottom of the crate's layers (see the crate docs): it uses
//! only `policy` (plan names) and `dnssec` (the anchor file format), never the code that
//! reads it.
//!
//! Relative paths are taken relative to the working directory, as operators expect from the
//! command line; the Helm chart and production config use absolute paths.

mod check;
mod duration;
pub mod handoff;
mod relay_host;
pub mod secret_file;
mod store;
mod trust;

pub use duration::parse_duration;
pub use relay_host::RelayHost;
pub use store::{
    DatabaseUrl, MAX_STORE_CACHE_TTL, PgTlsMode, StoreBackendName, StoreConfig, parse_postgres_url,
    server_name,
};
pub use trust::{MtaStsRoots, TrustAnchor};

use crate::printable::escape_controls;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable naming the config file when `--config` is absent.
pub const CONFIG_ENV: &str = "POSTERN_CONFIG";
/// The dev default, relative to the working directory (the repository root).
pub const DEFAULT_CONFIG_PATH: &str = "config/postern.toml";

/// A config that could not be loaded: the message names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity of this relay.
    #[serde(default)]
    pub server: ServerConfig,
    /// Listener addresses.
    pub listen: ListenConfig,
    /// Certificate and key for STARTTLS and implicit TLS.
    #[serde(default)]
    pub tls: TlsConfig,
    /// The address and device store.
    pub store: StoreConfig,
    /// The durable queue of accepted mail.
    pub spool: SpoolConfig,
    /// DNS resolution for delivery.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Outbound delivery.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Unauthenticated relaying on port 25.
    #[serde(default)]
    pub relay: RelayConfig,
    /// Per-message and per-session limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Timeouts of the inbound protocol.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Rolling daily recipient quotas.
    #[serde(default)]
    pub quota: QuotaConfig,
    /// Short-term abuse brakes (connections per process; messages fleet-wide with Redis).
    #[serde(default)]
    pub brakes: BrakesConfig,
    /// The `postern sendmail` entry point.
    #[serde(default)]
    pub sendmail: SendmailConfig,
    /// The delivery log (`postern log`).
    #[serde(default)]
    pub delivery_log: DeliveryLogConfig,
    /// MTA-STS (RFC 8461) for delivery.
    #[serde(default)]
    pub mta_sts: MtaStsConfig,
    /// Handing queued mail to a peer replica when draining.
    #[serde(default)]
    pub handoff: handoff::HandoffConfig,
}

/// `[mta_sts]`: honouring destination domains' MTA-STS policies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtaStsConfig {
    /// Look policies up at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// HTTPS port of `mta-sts.DOMAIN` (443; other values exist for tests).
    #[serde(default = "default_mta_sts_port")]
    pub port: u16,
    /// Trusted CA roots for the policy fetch and for MX certificates under `enforce`:
    /// `webpki` (the Mozilla set compiled in), `system` (the OS store), or a PEM file's path.
    #[serde(default = "default_mta_sts_roots")]
    pub roots: MtaStsRoots,
    /// Longest wait for a policy fetch.
    #[serde(default = "default_mta_sts_timeout", with = "duration::serde_text")]
    pub fetch_timeout: Duration,
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            port: default_mta_sts_port(),
            roots: default_mta_sts_roots(),
            fetch_timeout: default_mta_sts_timeout(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_mta_sts_port() -> u16 {
    443
}
fn default_mta_sts_roots() -> MtaStsRoots {
    MtaStsRoots::WebPki
}
fn default_mta_sts_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[delivery_log]`: one record per recipient per delivery attempt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryLogConfig {
    /// SQLite file of the log with the embedded store; default `delivery-log.db` beside the
    /// store's file. Not used with `[store] backend = "postgres"` (the log is in PostgreSQL).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Records older than this are purged.
    #[serde(default = "default_log_retention", with = "duration::serde_text")]
    pub retention: Duration,
}

impl Default for DeliveryLogConfig {
    fn default() -> Self {
        Self {
            path: None,
            retention: default_log_retention(),
        }
    }
}

fn default_log_retention() -> Duration {
    Duration::from_secs(30 * 86_400)
}

/// `[sendmail]`: where `postern sendmail` (PHP's `sendmail_path`) submits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendmailConfig {
    /// Relay to submit to, `HOST:PORT`; absent: this config's `listen.relay`.
    pub server: Option<String>,
}

/// `[quota]`: the rolling 24-hour recipient limits of the FAQ.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Where counts live: `embedded` (SQLite beside the store) or `redis` (shared by a fleet).
    #[serde(default)]
    pub backend: QuotaBackendName,
    /// SQLite file of the embedded backend; default `quota.db` beside the store's file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Redis URL of a single server (`redis://HOST:PORT/`), for `backend = "redis"`.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes; when set, used instead of `redis_url`.
    #[serde(default)]
    pub redis_cluster: Vec<String>,
    /// File whose first line is the Redis password (AUTH), for `redis_url` and every
    /// `redis_cluster` node; the URL may name the ACL user (`redis://postern@host:6379/`).
    /// Keeps the password out of the config file, which a ConfigMap holds.
    #[serde(default)]
    pub redis_password_file: Option<PathBuf>,
    /// Length of the rolling window (24 hours; shorter only for tests).
    #[serde(default = "default_quota_window", with = "duration::serde_text")]
    pub window: Duration,
    /// Time bucket: recipients counted in one bucket free up together.
    #[serde(default = "default_quota_bucket", with = "duration::serde_text")]
    pub bucket: Duration,
    /// How long a recipient held by an unfinished transaction stays held if its relay dies.
    #[serde(default = "default_hold_ttl", with = "duration::serde_text")]
    pub hold_ttl: Duration,
    /// Recipients per window by plan name; plans not listed keep the FAQ's figure.
    #[serde(default = "default_plans")]
    pub plans: std::collections::BTreeMap<String, u32>,
    /// Recipients per window of a hosting account (unauthenticated PHP `mail()` on port 25).
    #[serde(default = "default_hosting_limit")]
    pub hosting: u32,
}

impl QuotaConfig {
    /// The Redis password from `redis_password_file`, if one is set.
    ///
    /// # Errors
    /// The file cannot be used; the message names the key, never the password.
    pub fn redis_password(&self) -> Result<Option<String>, ConfigError> {
        self.redis_password_file
            .as_deref()
            .map(|path| secret_file::first_line("quota.redis_password_file", path))
            .transpose()
    }
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            backend: QuotaBackendName::default(),
            path: None,
            redis_url: None,
            redis_cluster: Vec::new(),
            redis_password_file: None,
            window: default_quota_window(),
            bucket: default_quota_bucket(),
            hold_ttl: default_hold_ttl(),
            plans: default_plans(),
            hosting: default_hosting_limit(),
        }
    }
}

/// Quota backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaBackendName {
    /// SQLite on this machine.
    #[default]
    Embedded,
    /// Redis, single server or Cluster.
    Redis,
}

fn default_quota_window() -> Duration {
    Duration::from_secs(86_400)
}
fn default_quota_bucket() -> Duration {
    Duration::from_secs(60)
}
fn default_hold_ttl() -> Duration {
    Duration::from_secs(900)
}
fn default_hosting_limit() -> u32 {
    50
}

/// The FAQ's figures: 500 for free, starter and my kSuite; 1,440 for the others.
fn default_plans() -> std::collections::BTreeMap<String, u32> {
    [
        ("free", 500),
        ("starter", 500),
        ("my-ksuite", 500),
        ("standard", 1440),
        ("business", 1440),
        ("enterprise", 1440),
        ("my-ksuite-plus", 1440),
        ("premium", 1440),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `[brakes]`: short-term rate limits: connections per process, messages per identity in the
/// quota backend (fleet-wide with Redis).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrakesConfig {
    /// New connections per client IP per minute; 0 turns the brake off.
    #[serde(default)]
    pub connections_per_ip_per_minute: u32,
    /// Messages per authenticated address (or hosting account) per minute; 0 turns it off.
    #[serde(default)]
    pub messages_per_identity_per_minute: u32,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Name in the banner, EHLO replies, `Received:` headers and generated Message-IDs.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// SIGTERM drains (as `postern drain` does, handing off to `[handoff] peer` when set)
    /// instead of stopping at once with the mail left in the spool.
    #[serde(default)]
    pub drain_on_shutdown: bool,
    /// How long a SIGTERM drain lets deliveries run before the hand-off.
    #[serde(default = "default_drain_timeout", with = "duration::serde_text")]
    pub drain_timeout: Duration,
    /// This replica's name in the delivery log (shared by a fleet with `[store] backend =
    /// "postgres"`); default the machine's host name ([`Config::replica_name`]).
    #[serde(default)]
    pub replica: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            hostname: default_hostname(),
            drain_on_shutdown: false,
            drain_timeout: default_drain_timeout(),
            replica: None,
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(120)
}

fn default_hostname() -> String {
    "localhost".to_string()
}

/// `[listen]`: each role may be left out to disable it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Port 587 role: STARTTLS, then AUTH.
    pub submission: Option<SocketAddr>,
    /// Port 465 role: implicit TLS, then AUTH.
    pub submissions: Option<SocketAddr>,
    /// Port 25 role: unauthenticated relay from configured networks.
    pub relay: Option<SocketAddr>,
    /// Metrics and health endpoints.
    pub http: Option<SocketAddr>,
    /// Load balancers (CIDR) whose connections must open with a PROXY protocol header (v1 or
    /// v2) naming the real client, on every SMTP listener; empty (the default) turns the
    /// protocol off. See `listener::proxy`.
    #[serde(default)]
    pub proxy_protocol: Vec<IpNet>,
    /// Mail handed over by draining peer replicas (`[handoff]`): TLS, fleet secret.
    pub handoff: Option<SocketAddr>,
}

/// `[tls]`: `cert` and `key` both empty means a self-signed certificate generated at first
/// start. The pairs are read and checked (key matches certificate) when the acceptor is built
/// (`listener::tls`), at `serve` and at `postern config check --files`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// A second chain with an ECDSA key (Postfix's `smtpd_tls_eccert_file`), served to clients
    /// that accept ECDSA signatures; `cert` goes to the others. Needs `cert`/`key` beside it.
    pub ecdsa_cert: Option<PathBuf>,
    /// The ECDSA private key of `ecdsa_cert`.
    pub ecdsa_key: Option<PathBuf>,
    /// Stateless session tickets (TLS 1.3, and TLS 1.2 clients that ask for them), sealed
    /// with keys that live only in this process and rotate every 6 hours.
    #[serde(default = "default_true")]
    pub session_tickets: bool,
    /// Sessions kept in memory for resumption by TLS 1.2 clients without ticket support (and
    /// TLS 1.3 with tickets off); 0 keeps none.
    #[serde(default = "default_tls_session_cache")]
    pub session_cache: usize,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            ecdsa_cert: None,
            ecdsa_key: None,
            session_tickets: true,
            session_cache: default_tls_session_cache(),
        }
    }
}

/// Default `[tls] session_cache`: rustls keeps 256; a replica that sees a few thousand
/// clients reconnecting needs more, and an entry is about 200 bytes.
fn default_tls_session_cache() -> usize {
    20_000
}

/// Largest `[tls] session_cache` (about 200 MB of sessions at the limit).
pub const MAX_TLS_SESSION_CACHE: usize = 1_000_000;

/// `[spool]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool (created if absent).
    pub path: PathBuf,
    /// Messages up to this size are kept in memory during DATA and written to the shared
    /// journal; larger ones stream to a file of their own.
    #[serde(default = "default_inline_max")]
    pub inline_max_bytes: u64,
    /// Most messages one group commit carries.
    #[serde(default = "default_commit_batch")]
    pub commit_batch: usize,
    /// A journal segment is closed, and older segments compacted, past this size.
    #[serde(default = "default_segment_max")]
    pub segment_max_bytes: u64,
}

fn default_segment_max() -> u64 {
    64 * 1024 * 1024
}

fn default_inline_max() -> u64 {
    1024 * 1024
}
fn default_commit_batch() -> usize {
    512
}

/// `[dns]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Recursive resolvers as `IP:PORT`; empty means the system resolver (`/etc/resolv.conf`).
    #[serde(default)]
    pub servers: Vec<SocketAddr>,
    /// DNSSEC validation of delivery lookups (DANE needs it), on by default. `false`: every
    /// answer is insecure, so DANE never applies (labs, resolvers that strip DNSSEC records).
    #[serde(default = "default_true")]
    pub dnssec: bool,
    /// File of DNSKEY and DS lines (zone-file syntax) to validate from ([`crate::dnssec`]),
    /// read and parsed at load; absent: the IANA root keys compiled into hickory.
    #[serde(default)]
    pub trust_anchor: Option<TrustAnchor>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            dnssec: true,
            trust_anchor: None,
        }
    }
}

/// `[delivery]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Destination port of MX hosts. Always 25 in production; other values exist for tests.
    #[serde(default = "default_delivery_port")]
    pub port: u16,
    /// Send everything to this host instead of the recipients' MX (Postfix's `relayhost`).
    #[serde(default)]
    pub relayhost: Option<RelayHost>,
    /// Deliveries in flight at once; 0 holds all mail in the spool (maintenance).
    #[serde(default = "default_delivery_workers")]
    pub workers: usize,
    /// First retry after a temporary failure; later ones back off exponentially.
    #[serde(default = "default_retry_initial", with = "duration::serde_text")]
    pub retry_initial: Duration,
    /// Longest wait between two attempts.
    #[serde(default = "default_retry_max", with = "duration::serde_text")]
    pub retry_max: Duration,
    /// A message still undelivered after this long fails for good.
    #[serde(default = "default_max_age", with = "duration::serde_text")]
    pub max_age: Duration,
    /// A message still pending this long gets one delay DSN (RFC 3464 `Action: delayed`) to
    /// its sender; zero sends none.
    #[serde(default = "default_delay_warning", with = "duration::serde_text")]
    pub delay_warning: Duration,
    /// TCP connect timeout per MX address.
    #[serde(default = "default_connect_timeout", with = "duration::serde_text")]
    pub connect_timeout: Duration,
    /// Timeout for each reply of the remote server.
    #[serde(default = "default_command_timeout", with = "duration::serde_text")]
    pub command_timeout: Duration,
    /// SMTP transactions in flight at once to one destination (the recipients' domain, or the
    /// relay host); more wait for a slot (Postfix's `default_destination_concurrency_limit`).
    #[serde(default = "default_max_per_destination")]
    pub max_per_destination: usize,
    /// How long a session is kept open after a transaction for the next message to the same
    /// MX host; zero closes every session after its transaction.
    #[serde(default = "default_connection_idle", with = "duration::serde_text")]
    pub connection_idle: Duration,
    /// Messages taken from the spool into memory at once (queued per destination, waiting
    /// for a worker or a destination slot); the rest stay in the spool until there is room.
    #[serde(default = "default_max_active_messages")]
    pub max_active_messages: usize,
    /// Accept recipients at address literals (`x@[192.0.2.1]`), which make the relay connect to
    /// whatever IP the client names, internal ones included; off: `550 5.1.2` at RCPT.
    #[serde(default)]
    pub allow_address_literals: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            port: default_delivery_port(),
            relayhost: None,
            workers: default_delivery_workers(),
            retry_initial: default_retry_initial(),
            retry_max: default_retry_max(),
            max_age: default_max_age(),
            delay_warning: default_delay_warning(),
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
            max_per_destination: default_max_per_destination(),
            connection_idle: default_connection_idle(),
            max_active_messages: default_max_active_messages(),
            allow_address_literals: false,
        }
    }
}

fn default_delivery_port() -> u16 {
    25
}
fn default_delivery_workers() -> usize {
    32
}
fn default_retry_initial() -> Duration {
    Duration::from_secs(300)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn default_max_age() -> Duration {
    Duration::from_secs(5 * 86400)
}
fn default_delay_warning() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_per_destination() -> usize {
    20
}
fn default_connection_idle() -> Duration {
    Duration::from_secs(5)
}
fn default_max_active_messages() -> usize {
    10_000
}

/// `[relay]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Client networks allowed to relay without AUTH on the relay listener.
    #[serde(default)]
    pub networks: Vec<IpNet>,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Recipients per transaction (FAQ: 100, To, CC and BCC alike).
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Bytes per message, header and body (FAQ: 210,763,776).
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// Concurrent sessions on all listeners together.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Concurrent sessions from one client IP (an IPv6 client: its /64).
    #[serde(default = "default_max_sessions_per_ip")]
    pub max_sessions_per_ip: usize,
    /// Concurrent sessions from one IPv6 /48, whichever of its /64s they come from (IPv4
    /// clients are capped per address only).
    #[serde(default = "default_max_sessions_per_subnet")]
    pub max_sessions_per_subnet: usize,
    /// Bad commands tolerated in one session before `421` and close.
    #[serde(default = "default_max_bad_commands")]
    pub max_bad_commands: u32,
    /// NOOP, RSET, VRFY and HELP tolerated in one session; each one beyond counts as a bad
    /// command (Postfix's `smtpd_junk_command_limit`, 100).
    #[serde(default = "default_max_junk_commands")]
    pub max_junk_commands: u32,
    /// Failed AUTH attempts tolerated in one session before `421` and close.
    #[serde(default = "default_max_auth_failures")]
    pub max_auth_failures: u32,
    /// Delay before answering a failed AUTH, to slow password guessing.
    #[serde(default = "default_auth_failure_delay", with = "duration::serde_text")]
    pub auth_failure_delay: Duration,
    /// Failed AUTHs from one client IP, across sessions (and replicas sharing a Redis quota
    /// backend), within `auth_failure_window`, after which new connections from it get `421`
    /// until the window passes.
    #[serde(default = "default_max_auth_failures_per_ip")]
    pub max_auth_failures_per_ip: u32,
    /// Failed AUTHs from one IPv4 /24 or IPv6 /48, across its addresses and sessions, within
    /// `auth_failure_window`, after which its new connections get `421`.
    #[serde(default = "default_max_auth_failures_per_subnet")]
    pub max_auth_failures_per_subnet: u32,
    /// Window of `max_auth_failures_per_ip` and `max_auth_failures_per_subnet`.
    #[serde(default = "default_auth_failure_window", with = "duration::serde_text")]
    pub auth_failure_window: Duration,
    /// `Received:` fields a message may carry; a message with more is a loop and gets
    /// `554 5.4.6 Too many hops` (Postfix's `hopcount_limit`, 50).
    #[serde(default = "default_max_received_headers")]
    pub max_received_headers: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_recipients: default_max_recipients(),
            max_message_size: default_max_message_size(),
            max_sessions: default_max_sessions(),
            max_sessions_per_ip: default_max_sessions_per_ip(),
            max_sessions_per_subnet: default_max_sessions_per_subnet(),
            max_bad_commands: default_max_bad_commands(),
            max_junk_commands: default_max_junk_commands(),
            max_auth_failures: default_max_auth_failures(),
            auth_failure_delay: default_auth_failure_delay(),
            max_auth_failures_per_ip: default_max_auth_failures_per_ip(),
            max_auth_failures_per_subnet: default_max_auth_failures_per_subnet(),
            auth_failure_window: default_auth_failure_window(),
            max_received_headers: default_max_received_headers(),
        }
    }
}

fn default_max_recipients() -> usize {
    100
}
fn default_max_message_size() -> u64 {
    210_763_776
}
fn default_max_sessions() -> usize {
    20_000
}
fn default_max_sessions_per_ip() -> usize {
    200
}
fn default_max_sessions_per_subnet() -> usize {
    800
}
fn default_max_bad_commands() -> u32 {
    10
}
fn default_max_junk_commands() -> u32 {
    100
}
fn default_max_auth_failures() -> u32 {
    3
}
fn default_auth_failure_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_max_auth_failures_per_ip() -> u32 {
    20
}
fn default_max_auth_failures_per_subnet() -> u32 {
    100
}
fn default_auth_failure_window() -> Duration {
    Duration::from_secs(600)
}
fn default_max_received_headers() -> usize {
    50
}

/// `[timeouts]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// Longest wait for the next command (RFC 5321 section 4.5.3.2.7 asks for 5 minutes).
    #[serde(default = "default_command_timeout", with = "duration::serde_text")]
    pub command: Duration,
    /// Longest wait for the next bytes during DATA or BDAT.
    #[serde(default = "default_data_timeout", with = "duration::serde_text")]
    pub data: Duration,
    /// Longest TLS handshake.
    #[serde(default = "default_tls_timeout", with = "duration::serde_text")]
    pub tls_handshake: Duration,
    /// Longest session, whatever it does; then `421 4.4.2`.
    #[serde(default = "default_session_timeout", with = "duration::serde_text")]
    pub session: Duration,
    /// Longest transfer of one message's data (DATA, or BDAT from the first chunk to the
    /// last), however steadily it drips; then `421 4.4.2`.
    #[serde(default = "default_data_total_timeout", with = "duration::serde_text")]
    pub data_total: Duration,
    /// Longest wait for a trusted load balancer's PROXY header (`[listen] proxy_protocol`);
    /// then the connection is closed.
    #[serde(
        default = "default_proxy_header_timeout",
        with = "duration::serde_text"
    )]
    pub proxy_header: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            command: default_command_timeout(),
            data: default_data_timeout(),
            tls_handshake: default_tls_timeout(),
            session: default_session_timeout(),
            data_total: default_data_total_timeout(),
            proxy_header: default_proxy_header_timeout(),
        }
    }
}

fn default_data_timeout() -> Duration {
    Duration::from_secs(180)
}
fn default_tls_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_data_total_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_proxy_header_timeout() -> Duration {
    // A balancer sends the header with its first packet; seconds are for a congested link.
    Duration::from_secs(5)
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `postern=debug,info`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: default_log_format(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_string()
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Where this machine's own files go by default: beside the embedded store's file, or in
    /// the spool directory when the directory is in PostgreSQL (no `store.path`).
    pub fn local_dir(&self) -> PathBuf {
        match &self.store.path {
            Some(path) => path.parent().unwrap_or_else(|| Path::new("")).to_path_buf(),
            None => self.spool.path.clone(),
        }
    }

    /// The embedded quota backend's file: `quota.path`, else `quota.db` beside the store (in
    /// the spool directory with PostgreSQL).
    pub fn quota_path(&self) -> PathBuf {
        self.quota
            .path
            .clone()
            .unwrap_or_else(|| self.local_dir().join("quota.db"))
    }

    /// The delivery log's file: `delivery_log.path`, else `delivery-log.db` beside the store
    /// (in the spool directory with PostgreSQL).
    pub fn delivery_log_path(&self) -> PathBuf {
        self.delivery_log
            .path
            .clone()
            .unwrap_or_else(|| self.local_dir().join("delivery-log.db"))
    }

    /// The name this `postern serve` writes in the delivery log's `replica` column:
    /// `[server] replica`, else the machine's host name (in Kubernetes the pod's name, which
    /// tells replicas apart where `[server] hostname` is the fleet's one public name), else
    /// `localhost`.
    pub fn replica_name(&self) -> String {
        self.server
            .replica
            .clone()
            .or_else(machine_hostname)
            .unwrap_or_else(|| "localhost".to_string())
    }

    /// Picks the config file: `--config`, else `POSTERN_CONFIG`, else the dev default.
    pub fn locate(explicit: Option<&Path>) -> PathBuf {
        if let Some(path) = explicit {
            return path.to_path_buf();
        }
        match std::env::var_os(CONFIG_ENV) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    /// Reads, parses and checks a config file.
    ///
    /// # Errors
    /// One line naming the file and the dotted key at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = escape_controls(&path.display().to_string()).into_owned();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{file}: cannot read: {e}")))?;
        Self::parse(&text).map_err(|e| ConfigError(format!("{file}: {}", e.0)))
    }

    /// Parses and checks config text.
    ///
    /// # Errors
    /// One line naming the dotted key at fault. Control characters in it (a key or a value
    /// quoted from the file, a reason quoting a line of the trust anchor file) are escaped,
    /// so the message stays one line on the terminal and in the service log.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_raw(text).map_err(|e| ConfigError(escape_controls(&e.0).into_owned()))
    }

    fn parse_raw(text: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError(format!("TOML syntax: {}", one_line(e.message()))))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let message = one_line(e.inner().message());
            if key == "." || key.is_empty() {
                ConfigError(message)
            } else {
                ConfigError(format!("{key}: {message}"))
            }
        })?;
        let mut config = config;
        // `[quota.plans]` lists only what differs from the FAQ's figures.
        for (plan, limit) in default_plans() {
            config.quota.plans.entry(plan).or_insert(limit);
        }
        config.check()?;
        Ok(config)
    }
}

/// The machine's host name (`gethostname`), if it has a usable one.
pub fn machine_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at most that many
    // and the result is read only up to the first NUL (or the whole buffer).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim();
    (!name.is_empty() && !name.chars().any(char::is_control)).then(|| name.to_string())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [listen]
        submission = "127.0.0.1:2587"
        [store]
        path = "var/store.db"
        [spool]
        path = "var/spool"
    "#;

    #[test]
    fn minimal_config_takes_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.limits.max_recipients, 100);
        assert_eq!(c.limits.max_received_headers, 50);
        assert_eq!(c.limits.max_message_size, 210_763_776);
        assert_eq!(c.delivery.port, 25);
        assert!(c.dns.servers.is_empty());
    }

    /// Found by the `config` fuzz target: a key (here a plan name) with a line break or an
    /// escape sequence came out raw in the error, which then spanned lines of the log.
    #[test]
    fn control_characters_in_errors_are_escaped() {
        let text = format!("{MINIMAL}\n[quota.plans]\n\"pro\\r\\nfake: line\\u001b[2J\" = 5\n");
        let error = Config::parse(&text).unwrap_err().0;
        assert_eq!(
            error,
            "quota.plans.pro\\x0d\\x0afake: line\\x1b[2J: not a plan name"
        );
        let error = Config::parse("[server]\nhostname = 1\n[\"\\u0007\"]\n")
            .unwrap_err()
            .0;
        assert!(!error.chars().any(char::is_control), "{error:?}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("[store]", "[store]\npaht = \"x\"");
        let e = Config::parse(&text).unwrap_err().0;
        assert!(e.starts_with("store"), "{e}");
        assert!(e.contains("paht"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let text = MINIMAL.replace("127.0.0.1:2587", "localhost:port");
        let e = Config::parse(&text).unwrap_err().0;
        assert!(e.starts_with("listen.submission:"), "{e}");
        let text = format!("{MINIMAL}\n[timeouts]\ncommand = \"30\"\n");
        let e = Config::parse(&text).unwrap_err().0;
        assert!(e.starts_with("timeouts.command:"), "{e}");
        let text = format!("{MINIMAL}\n[relay]\nnetworks = [\"10.0.0.0/33\"]\n");
        let e = Config::parse(&text).unwrap_err().0;
        assert!(e.starts_with("relay.networks"), "{e}");
    }

    #[test]
    fn store_cache_ttl_defaults_to_5s_and_is_at_most_60s() {
        assert_eq!(
            Config::parse(MINIMAL).unwrap().store.cache_ttl,
            Duration::from_secs(5)
        );
        let with = |ttl: &str| {
            Config::parse(&MINIMAL.replace("[store]", &format!("[store]\ncache_ttl = \"{ttl}\"")))
        };
        assert_eq!(with("0s").unwrap().store.cache_ttl, Duration::ZERO);
        assert_eq!(with("60s").unwrap().store.cache_ttl, MAX_STORE_CACHE_TTL);
        let e = with("60001ms").unwrap_err().0;
        assert_eq!(
            e,
            "store.cache_ttl: 60.001s is longer than the limit of 60s (\"0s\" turns the cache off)"
        );
        let e = with("5").unwrap_err().0;
        assert!(e.starts_with("store.cache_ttl"), "{e}");
    }

    #[test]
    fn quota_defaults_follow_the_faq_and_merge() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.quota.plans["starter"], 500);
        assert_eq!(c.quota.plans["premium"], 1440);
        assert_eq!(c.quota.hosting, 50);
        let text = format!("{MINIMAL}\n[quota.plans]\nstarter = 700\n");
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            (c.quota.plans["starter"], c.quota.plans["free"]),
            (700, 500)
        );
        let text = format!("{MINIMAL}\n[quota.plans]\ngold = 10\n");
        assert!(
            Config::parse(&text)
                .unwrap_err()
                .0
                .starts_with("quota.plans.gold:")
        );
        let text = format!("{MINIMAL}\n[quota]\nbackend = \"redis\"\n");
        assert!(
            Config::parse(&text)
                .unwrap_err()
                .0
                .starts_with("quota.redis_url:")
        );
        let text = format!("{MINIMAL}\n[quota]\nredis_password_file = \"/run/redis-pw\"\n");
        assert_eq!(
            Config::parse(&text).unwrap_err().0,
            "quota.redis_password_file: only with backend = \"redis\""
        );
        let text = format!(
            "{MINIMAL}\n[quota]\nbackend = \"redis\"\nredis_url = \"redis://postern@r:6379/\"\nredis_password_file = \"/run/redis-pw\"\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            c.quota.redis_password_file.as_deref(),
            Some(Path::new("/run/redis-pw"))
        );
    }

    #[test]
    fn delivery_log_section() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.delivery_log.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.delivery_log_path(), Path::new("var/delivery-log.db"));
        let text = format!("{MINIMAL}\n[delivery_log]\npath = \"/x/log.db\"\nretention = \"7d\"\n");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.delivery_log.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.delivery_log_path(), Path::new("/x/log.db"));
        for (extra, key) in [
            ("retension = \"7d\"", "delivery_log"),
            ("retention = \"7\"", "delivery_log.retention"),
            ("retention = \"0s\"", "delivery_log.retention"),
        ] {
            let text = format!("{MINIMAL}\n[delivery_log]\n{extra}\n");
            let e = Config::parse(&text).unwrap_err().0;
            assert!(e.starts_with(key), "{extra}: {e}");
        }
    }

    /// With the directory in PostgreSQL and no `[store] path`, the files that stay on the
    /// machine (the embedded quota store, the development certificate) go to the spool
    /// directory; the delivery log is in PostgreSQL, so `[delivery_log] path` is refused.
    #[test]
    fn postgres_backend_local_files_default_to_the_spool() {
        let postgres = r#"
            [listen]
            submission = "127.0.0.1:2587"
            [store]
            backend = "postgres"
            url = "postgres://postern@db.example:5432/postern"
            secret_key_file = "/run/secrets/key"
            [spool]
            path = "/var/spool/postern"
        "#;
        let c = Config::parse(postgres).unwrap();
        assert_eq!(c.store.path, None);
        assert_eq!(c.local_dir(), Path::new("/var/spool/postern"));
        assert_eq!(c.quota_path(), Path::new("/var/spool/postern/quota.db"));
        let text = format!("{postgres}\n[quota]\npath = \"/q/quota.db\"\n");
        assert_eq!(
            Config::parse(&text).unwrap().quota_path(),
            Path::new("/q/quota.db")
        );
        // With the embedded store they stay beside its file.
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.quota_path(), Path::new("var/quota.db"));
        let text = format!("{postgres}\n[delivery_log]\npath = \"/x/log.db\"\n");
        let e = Config::parse(&text).unwrap_err().0;
        assert!(
            e.starts_with("delivery_log.path: not used with store.backend = \"postgres\""),
            "{e}"
        );
    }

    #[test]
    fn replica_name_is_configured_or_the_host_name() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.server.replica, None);
        let host = machine_hostname().unwrap_or_else(|| "localhost".to_string());
        assert_eq!(c.replica_name(), host);
        let text = MINIMAL.replace("[listen]", "[server]\nreplica = \"relay-7.eu\"\n[listen]");
        assert_eq!(Config::parse(&text).unwrap().replica_name(), "relay-7.eu");
        let long = "r".repeat(254);
        for bad in [
            "\"\"",
            "\"relay 7\"",
            "\"relay\\u0007\"",
            &format!("\"{long}\""),
        ] {
            let text = MINIMAL.replace("[listen]", &format!("[server]\nreplica = {bad}\n[listen]"));
            let e = Config::parse(&text).unwrap_err().0;
            assert!(
                e.starts_with("server.replica: must be 1 to 253"),
                "{bad}: {e}"
            );
        }
        let text = MINIMAL.replace(
            "[listen]",
            &format!("[server]\nreplica = \"{}\"\n[listen]", "r".repeat(253)),
        );
        assert!(Config::parse(&text).is_ok());
    }

    #[test]
    fn delivery_concurrency_and_reuse() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.delivery.max_per_destination, 20);
        assert_eq!(c.delivery.connection_idle, Duration::from_secs(5));
        let text =
            format!("{MINIMAL}\n[delivery]\nmax_per_destination = 3\nconnection_idle = \"0s\"\n");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.delivery.max_per_destination, 3);
        assert!(c.delivery.connection_idle.is_zero());
        let text = format!("{MINIMAL}\n[delivery]\nmax_per_destination = 0\n");
        let e = Config::parse(&text).unwrap_err().0;
        assert!(e.starts_with("delivery.max_per_destination"), "{e}");
        assert_eq!(c.delivery.max_active_messages, 10_000);
        let text = format!("{MINIMAL}\n[delivery]\nmax_active_messages = 1\n");
        assert_eq!(
            Config::parse(&text).unwrap().delivery.max_active_messages,
            1
        );
        let text = format!("{MINIMAL}\n[delivery]\nmax_active_messages = 0\n");
        let e = Config::parse(&text).unwrap_err().0;
        assert!(e.starts_with("delivery.max_active_messages"), "{e}");
    }

    #[test]
    fn shipped_configs_parse() {
        let dev = Config::parse(include_str!("../../config/postern.toml")).unwrap();
        assert_eq!(
            dev.listen.submission,
            Some("127.0.0.1:2587".parse().unwrap())
        );
        let prod = Config::parse(include_str!("../../config/production.toml")).unwrap();
        assert_eq!(prod.listen.relay, Some("0.0.0.0:25".parse().unwrap()));
        assert!(prod.tls.cert.is_some());
    }

    #[test]
    fn typed_values_are_parsed_once_and_named() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.delivery.relayhost, None);
        assert_eq!(c.mta_sts.roots, MtaStsRoots::WebPki);
        assert!(c.dns.trust_anchor.is_none());
        let text = format!(
            "{MINIMAL}\n[delivery]\nrelayhost = \"[smtp.example.net]:2525\"\n[mta_sts]\nroots = \"system\"\n"
        );
        let c = Config::parse(&text).unwrap();
        let relay = c.delivery.relayhost.unwrap();
        assert_eq!(
            (relay.host(), relay.port_or(25)),
            ("smtp.example.net", 2525)
        );
        assert_eq!(c.mta_sts.roots, MtaStsRoots::System);
        for (section, extra, message) in [
            (
                "delivery",
                "relayhost = \"bad host\"",
                "delivery.relayhost: must be HOST or HOST:PORT",
            ),
            (
                "mta_sts",
                "roots = \"/nonexistent/roots.pem\"",
                "mta_sts.roots: must be webpki, system, or the path of a PEM file of CA certificates",
            ),
            (
                "dns",
                "trust_anchor = \"/nonexistent/anchor.keys\"",
                "dns.trust_anchor: cannot read /nonexistent/anchor.keys: ",
            ),
        ] {
            let text = format!("{MINIMAL}\n[{section}]\n{extra}\n");
            let e = Config::parse(&text).unwrap_err().0;
            assert!(e.starts_with(message), "{extra}: {e}");
        }
    }

    #[test]
    fn trust_anchor_file_is_read_at_load() {
        let dir = std::env::temp_dir().join(format!("postern-anchor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.keys");
        std::fs::write(
            &good,
            ". DNSKEY 257 3 15 BL4vzcaEuW7hnGlz6YsU0YiRqNRFvOMMxzxkZYwlaUc=\n",
        )
        .unwrap();
        let bad = dir.join("bad.keys");
        std::fs::write(
            &bad,
            "lab. DS 4711 15 1 00112233445566778899aabbccddeeff00112233\n",
        )
        .unwrap();
        let with = |path: &Path| format!("{MINIMAL}\n[dns]\ntrust_anchor = {:?}\n", path);
        let c = Config::parse(&with(&good)).unwrap();
        let anchor = c.dns.trust_anchor.unwrap();
        assert_eq!(anchor.path, good);
        // hickory counts root keys only, hence the root owner above.
        assert_eq!(anchor.anchors.keys.len(), 1);
        assert!(anchor.anchors.ds.is_empty());
        let e = Config::parse(&with(&bad)).unwrap_err().0;
        assert!(e.starts_with("dns.trust_anchor: DS digest type 1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn store_tls_has_one_answer_and_its_files_go_together() {
        let postgres = |extra: &str| {
            format!(
                "{}\n[store]\nbackend = \"postgres\"\nsecret_key_file = \"k\"\n{extra}\n",
                MINIMAL.replace("[store]\n        path = \"var/store.db\"", "")
            )
        };
        let mode = |extra: &str| Config::parse(&postgres(extra)).unwrap().store.tls_mode();
        let url = "url = \"postgres://u@db/dir\"";
        assert_eq!(mode(url), PgTlsMode::VerifyFull);
        assert_eq!(mode(&format!("{url}\ntls = \"prefer\"")), PgTlsMode::Prefer);
        let in_url = "url = \"postgres://u@db/dir?sslmode=require\"";
        assert_eq!(mode(in_url), PgTlsMode::Require);
        assert_eq!(
            mode(&format!("{in_url}\ntls = \"require\"")),
            PgTlsMode::Require
        );
        for (extra, message) in [
            (
                format!("{in_url}\ntls = \"verify-full\""),
                "store.tls: \"verify-full\" conflicts with sslmode=require in store.url",
            ),
            (
                format!("{url}\ntls = \"verify_full\""),
                "store.tls: unknown variant `verify_full`",
            ),
            (
                format!("{url}\ntls = \"disable\"\nca_file = \"ca.pem\""),
                "store.ca_file: has no use with store.tls = \"disable\"",
            ),
            (
                format!("{url}\nclient_key_file = \"c.key\""),
                "store.client_cert_file: required with client_key_file",
            ),
            (
                format!("{url}\nclient_cert_file = \"c.crt\""),
                "store.client_key_file: required with client_cert_file",
            ),
        ] {
            let e = Config::parse(&postgres(&extra)).unwrap_err().0;
            assert!(e.starts_with(message), "{extra}: {e}");
        }
        // require with a CA file verifies the chain (libpq's rule), so the file is used.
        assert_eq!(
            mode(&format!("{url}\ntls = \"require\"\nca_file = \"ca.pem\"")),
            PgTlsMode::Require
        );
    }

    #[test]
    fn cert_without_key_is_refused() {
        let text = format!("{MINIMAL}\n[tls]\ncert = \"a.pem\"\n");
        let e = Config::parse(&text).unwrap_err().0;
        assert!(e.starts_with("tls.key:"), "{e}");
    }

    #[test]
    fn tls_resumption_defaults_and_session_cache_limit() {
        let c = Config::parse(MINIMAL).unwrap();
        assert!(c.tls.session_tickets);
        assert_eq!(c.tls.session_cache, 20_000);
        let cache = |n: usize| Config::parse(&format!("{MINIMAL}\n[tls]\nsession_cache = {n}\n"));
        assert_eq!(cache(0).unwrap().tls.session_cache, 0);
        assert_eq!(
            cache(MAX_TLS_SESSION_CACHE).unwrap().tls.session_cache,
            MAX_TLS_SESSION_CACHE
        );
        let e = cache(MAX_TLS_SESSION_CACHE + 1).unwrap_err().0;
        assert_eq!(
            e,
            "tls.session_cache: 1000001 is more than the limit of 1000000 sessions (0 keeps none)"
        );
        let off = Config::parse(&format!("{MINIMAL}\n[tls]\nsession_tickets = false\n")).unwrap();
        assert!(!off.tls.session_tickets);
    }

    #[test]
    fn ecdsa_pair_goes_together_and_beside_the_main_pair() {
        let main = "cert = \"a.pem\"\nkey = \"a.key\"\n";
        let refused = |tls: &str| {
            Config::parse(&format!("{MINIMAL}\n[tls]\n{tls}"))
                .unwrap_err()
                .0
        };
        let e = refused(&format!("{main}ecdsa_cert = \"e.pem\"\n"));
        assert!(e.starts_with("tls.ecdsa_key:"), "{e}");
        let e = refused(&format!("{main}ecdsa_key = \"e.key\"\n"));
        assert!(e.starts_with("tls.ecdsa_cert:"), "{e}");
        let e = refused("ecdsa_cert = \"e.pem\"\necdsa_key = \"e.key\"\n");
        assert!(e.starts_with("tls.ecdsa_cert:"), "{e}");
        let both =
            format!("{MINIMAL}\n[tls]\n{main}ecdsa_cert = \"e.pem\"\necdsa_key = \"e.key\"\n");
        let c = Config::parse(&both).unwrap();
        assert_eq!(c.tls.ecdsa_key, Some(PathBuf::from("e.key")));
    }
}
