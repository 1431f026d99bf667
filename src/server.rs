//! `postern serve`: opens the store and the spool, binds every listener and the control socket
//! (`control.rs`), starts the delivery worker, the revocation watcher and the HTTP endpoints,
//! and stops them all in order on SIGTERM or SIGINT, or drains first (`drain.rs`: on `postern
//! drain`, or on SIGTERM with `[server] drain_on_shutdown = true`).
//!
//! Start-up order matters: the spool is opened (and its journal replayed) and every port is
//! bound before `/readyz` turns ready, so a load balancer never sends a connection to a
//! replica that cannot keep mail. Shutdown: stop accepting, tell idle sessions `421 4.3.2`,
//! let transfers in progress finish for up to [`SHUTDOWN_GRACE`], then exit; whatever was
//! acknowledged is already durable, so the deadline loses nothing.

mod control;
mod drain;

use crate::config::{Config, LogFormat, QuotaBackendName};
use crate::listener::guard::{Admission, SessionRegistry};
use crate::listener::{self, Shared};
use crate::metrics::{Metrics, http::Readiness};
use crate::policy::quota::QuotaWindow;
use crate::session::Role;
use crate::spool::Spool;
use crate::store::configured::ConfiguredStore;
use crate::store::quota::builder::{
    Counters, QuotaBackend, QuotaStoreConfig, RedisPassword, open_counters_or_connect_later,
    open_quota_store,
};
use crate::store::quota::{Persistence, QuotaSettings, QuotaStore};
use crate::store::{Directory, StoreError};
use anyhow::Context;
use control::ControlState;
use drain::DrainSignal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long sessions in the middle of a transfer may take to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Runs the relay until a termination signal or a drain (`server/drain.rs`).
///
/// # Errors
/// The store, spool, certificate, control socket or a listener could not be set up.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    let running = start(Arc::new(config)).await?;
    let order = tokio::select! {
        _ = wait_for_signal() => running.config.server.drain_on_shutdown.then(|| drain::DrainOrder {
            handoff: running.config.handoff.peer.clone(),
            timeout: running.config.server.drain_timeout,
        }),
        order = running.drain.ordered() => Some(order),
    };
    match order {
        Some(order) => running.drain(order).await,
        None => running.stop().await,
    }
    Ok(())
}

/// A started server: what stopping or draining it needs.
struct Running {
    config: Arc<Config>,
    spool: Spool,
    metrics: Metrics,
    readiness: Readiness,
    draining: Arc<AtomicBool>,
    /// Listeners and sessions.
    intake: CancellationToken,
    /// The delivery worker.
    delivery_stop: CancellationToken,
    delivery: tokio::task::JoinHandle<()>,
    /// HTTP, watchers, the control socket: last to stop.
    rest: CancellationToken,
    sessions: TaskTracker,
    services: TaskTracker,
    control_tasks: TaskTracker,
    drain: DrainSignal,
}

/// Opens everything, binds every socket and starts the tasks; ready (or not) on return.
async fn start(config: Arc<Config>) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    let store = ConfiguredStore::open(&config)?;
    let mut listeners: Vec<&str> = [
        (Role::Submission, config.listen.submission),
        (Role::Submissions, config.listen.submissions),
        (Role::Relay, config.listen.relay),
    ]
    .into_iter()
    .filter(|(_, addr)| addr.is_some())
    .map(|(role, _)| role.name())
    .collect();
    if config.listen.handoff.is_some() {
        listeners.push("handoff");
    }
    metrics.listeners_configured(&listeners);
    if let ConfiguredStore::Postgres(pg) = &store {
        metrics.postgres_configured();
        pg.observe(metrics.clone());
    }
    let directory_ok = check_directory_at_start(&store).await?;
    let spool = Spool::open(&config.spool, metrics.clone())
        .with_context(|| format!("spool.path {}", config.spool.path.display()))?;
    let control_socket = control::bind(&config.spool.path)?;
    // A [tls] file that does not read or does not match is the operator's to fix: exit 2 with
    // the key named, as for any other bad config value.
    let tls = listener::tls::acceptor(&config).map_err(|e| {
        if e.is_config() {
            anyhow::Error::new(crate::config::ConfigError(e.to_string()))
        } else {
            anyhow::Error::new(e).context("tls")
        }
    })?;
    let handoff_secret = match config.listen.handoff {
        Some(_) => Some(
            config
                .handoff
                .read_secret()
                .map_err(|e| anyhow::anyhow!(e.0))?,
        ),
        None => None,
    };
    // Redis down at start is an outage like one later: start unready, answer 451, connect
    // when it answers.
    let Counters {
        quota,
        brakes: brake_store,
    } = open_counters_or_connect_later(&quota_store_config(&config, Some(&metrics))?)
        .await
        .context("quota")?;

    let mut smtp = Vec::new();
    for (role, addr) in [
        (Role::Submission, config.listen.submission),
        (Role::Submissions, config.listen.submissions),
        (Role::Relay, config.listen.relay),
    ] {
        if let Some(addr) = addr {
            smtp.push((role, listener::bind(role.name(), addr).await?));
        }
    }
    let handoff = match config.listen.handoff {
        Some(addr) => Some(listener::bind("handoff", addr).await?),
        None => None,
    };
    let http = match config.listen.http {
        Some(addr) => Some(listener::bind("http", addr).await?),
        None => None,
    };

    let intake = CancellationToken::new();
    let rest = CancellationToken::new();
    let delivery_stop = CancellationToken::new();
    let readiness = Readiness::default();
    let draining = Arc::new(AtomicBool::new(false));
    let directory_changed = Arc::new(tokio::sync::Notify::new());
    let revocation_written_ms = Arc::new(AtomicU64::new(0));
    let (directory, directory_cache) = store
        .serving_directory(config.store.cache_ttl, &metrics)
        .context("directory cache")?;
    let shared = Arc::new(Shared {
        config: config.clone(),
        directory,
        signer: Arc::new(crate::dkim::Signer::new(store.dkim_keys(), metrics.clone())),
        quota: quota.clone(),
        brakes: crate::listener::brakes::Brakes::new(&config.brakes, &config.limits, brake_store),
        spool: spool.clone(),
        metrics: metrics.clone(),
        tls,
        admission: Admission::from_limits(&config.limits),
        registry: Arc::new(SessionRegistry::default()),
        shutdown: intake.clone(),
        directory_generation: Default::default(),
        directory_changed: directory_changed.clone(),
        revocation_written_ms: revocation_written_ms.clone(),
    });

    let sessions = TaskTracker::new();
    let services = TaskTracker::new();
    for (role, tcp) in smtp {
        tracing::info!(listener = role.name(), addr = %tcp.local_addr()?, "listening");
        services.spawn(listener::serve(shared.clone(), tcp, role, sessions.clone()));
    }
    if let (Some(tcp), Some(secret)) = (handoff, handoff_secret) {
        tracing::info!(listener = "handoff", addr = %tcp.local_addr()?, "listening");
        services.spawn(listener::handoff::serve(
            shared.clone(),
            tcp,
            secret,
            sessions.clone(),
        ));
    }
    if let Some(tcp) = http {
        tracing::info!(listener = "http", addr = %tcp.local_addr()?, "listening");
        let (metrics, readiness, rest) = (metrics.clone(), readiness.clone(), rest.clone());
        services.spawn(async move {
            if let Err(e) = crate::metrics::http::serve(tcp, metrics, readiness, rest).await {
                tracing::error!(error = %e, "http endpoint failed");
            }
        });
    }
    services.spawn(listener::watch_revocations(shared.clone()));
    if let ConfiguredStore::Postgres(pg) = &store {
        services.spawn(crate::store::postgres::changes::listen(
            pg.clone(),
            crate::store::postgres::changes::Listeners {
                changed: directory_changed,
                cache: directory_cache,
                revoking: revocation_written_ms,
            },
            rest.clone(),
        ));
    }
    let delivery = tokio::spawn(crate::delivery::run(
        Arc::new(spool.clone()),
        config.clone(),
        metrics.clone(),
        delivery_stop.clone(),
    ));
    services.spawn(watch_readiness(
        ReadinessInputs {
            spool: spool.clone(),
            quota,
            directory: shared.directory.clone(),
            draining: draining.clone(),
        },
        readiness.clone(),
        metrics.clone(),
        rest.clone(),
    ));
    let drain = DrainSignal::new();
    let control_tasks = TaskTracker::new();
    let control_state = Arc::new(ControlState {
        spool: spool.clone(),
        config: config.clone(),
        metrics: metrics.clone(),
        drain: drain.clone(),
    });
    services.spawn(control::serve(
        control_socket,
        control_state,
        rest.clone(),
        control_tasks.clone(),
    ));
    report_start(&shared, &readiness, directory_ok).await;
    Ok(Running {
        config,
        spool,
        metrics,
        readiness,
        draining,
        intake,
        delivery_stop,
        delivery,
        rest,
        sessions,
        services,
        control_tasks,
        drain,
    })
}

impl Running {
    /// Today's shutdown: stop accepting, let sessions and transactions finish, leave the
    /// queue in the spool.
    async fn stop(self) {
        tracing::info!("shutting down: no new connections, idle sessions get 421");
        self.readiness.set(false);
        self.intake.cancel();
        self.delivery_stop.cancel();
        self.rest.cancel();
        self.services.close();
        self.sessions.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions still open after the grace period; closing them");
        }
        // Deliveries in progress finish their transaction (the worker starts no new one):
        // cutting one after the final dot but before its outcome is recorded would send it
        // twice.
        let delivery_grace = self.config.delivery.command_timeout + Duration::from_secs(5);
        let all = async {
            let _ = self.delivery.await;
            self.services.wait().await;
        };
        if tokio::time::timeout(delivery_grace, all).await.is_err() {
            tracing::warn!("deliveries still running after the grace period; stopping them");
        }
        tracing::info!(spooled = self.spool.len(), "stopped");
    }

    /// The drain, then the rest stops; attached `postern drain` commands get the last line.
    async fn drain(self, order: drain::DrainOrder) {
        let context = drain::DrainContext {
            config: self.config.clone(),
            spool: self.spool.clone(),
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
            draining: self.draining.clone(),
            intake: self.intake.clone(),
            sessions: self.sessions.clone(),
            delivery_stop: self.delivery_stop.clone(),
            delivery: self.delivery,
            signal: self.drain.clone(),
        };
        context.run(order).await;
        // The attached commands write the final line, then close.
        self.control_tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.control_tasks.wait()).await;
        self.rest.cancel();
        self.services.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.services.wait()).await;
        tracing::info!(spooled = self.spool.len(), "stopped after draining");
    }
}

/// Opens the quota backend named by `[quota]` for `postern quota show`: a backend that cannot
/// be reached is an error at once (`serve` waits for it instead).
///
/// # Errors
/// The backend cannot be opened or reached.
pub async fn open_quota(config: &Config) -> anyhow::Result<Arc<dyn QuotaStore>> {
    open_quota_store(&quota_store_config(config, None)?)
        .await
        .context("quota")
}

/// The backend and settings named by `[quota]`.
/// `metrics`: `serve`'s, for a Redis backend's round trips; `None` for the CLI.
fn quota_store_config(
    config: &Config,
    metrics: Option<&Metrics>,
) -> anyhow::Result<QuotaStoreConfig> {
    let q = &config.quota;
    let backend = match q.backend {
        QuotaBackendName::Embedded => QuotaBackend::Embedded {
            path: config.quota_path(),
        },
        QuotaBackendName::Redis if !q.redis_cluster.is_empty() => QuotaBackend::RedisCluster {
            nodes: q.redis_cluster.clone(),
        },
        QuotaBackendName::Redis => QuotaBackend::Redis {
            url: q.redis_url.clone().unwrap_or_default(),
        },
    };
    let window = QuotaWindow::new(q.window.as_millis() as u64, q.bucket.as_millis() as u64)
        .context("quota.window")?;
    let mut settings = QuotaStoreConfig::new(backend);
    settings.settings = QuotaSettings {
        window,
        hold_ttl_ms: q.hold_ttl.as_millis() as u64,
    };
    settings.redis_password = q.redis_password()?.map(RedisPassword);
    if let Some(metrics) = metrics
        && !matches!(settings.backend, QuotaBackend::Embedded { .. })
    {
        metrics.redis_configured();
        settings.metrics = Some(metrics.clone());
    }
    Ok(settings)
}

/// The first readiness, and one line saying what it is.
async fn report_start(shared: &Shared, readiness: &Readiness, directory_ok: bool) {
    let quota_ok = shared.quota.ping().await.is_ok();
    let spool = &shared.spool;
    shared.metrics.set_quota_available(quota_ok);
    shared.metrics.set_directory_available(directory_ok);
    readiness.set(spool.is_healthy() && quota_ok && directory_ok);
    match (quota_ok, directory_ok) {
        (true, true) => tracing::info!(spooled = spool.len(), "postern ready"),
        (false, _) => tracing::warn!(
            spooled = spool.len(),
            "postern started, not ready: quota backend unavailable"
        ),
        (true, false) => tracing::warn!(
            spooled = spool.len(),
            "postern started, not ready: directory unavailable"
        ),
    }
}

/// A shared directory (PostgreSQL) down at start is an outage like one later: `serve` starts
/// unready and the readiness watcher finds it when it answers. A database at another schema
/// version is refused at once (the CLI exits 2): it will not fix itself.
///
/// # Errors
/// [`StoreError::Schema`].
async fn check_directory_at_start(store: &ConfiguredStore) -> Result<bool, StoreError> {
    let ConfiguredStore::Postgres(pg) = store else {
        return Ok(true);
    };
    match pg.check().await {
        Ok(()) => Ok(true),
        Err(e @ StoreError::Schema(_)) => Err(e),
        Err(e) => {
            tracing::warn!(server = pg.server(), error = %e, "directory unavailable at start");
            Ok(false)
        }
    }
}

/// What readiness depends on.
struct ReadinessInputs {
    spool: Spool,
    quota: Arc<dyn QuotaStore>,
    directory: Arc<dyn Directory>,
    /// A draining replica stays unready whatever else answers.
    draining: Arc<AtomicBool>,
}

/// `/readyz` follows the spool, the quota backend and the directory: a replica that cannot
/// keep or count mail, or check logins and hosting accounts, takes no traffic, and takes it
/// again by itself once all answer; a draining one never again. The directory's health check
/// is its generation, the cheapest question it answers (and, for PostgreSQL, one that also
/// checks the schema).
async fn watch_readiness(
    inputs: ReadinessInputs,
    readiness: Readiness,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut persistence_known = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let quota_ok = match inputs.quota.ping().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "quota backend not answering: not ready");
                false
            }
        };
        if quota_ok && !persistence_known {
            persistence_known = true;
            report_persistence(inputs.quota.as_ref(), &metrics).await;
        }
        let directory_ok = match inputs.directory.generation().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "directory not answering: not ready");
                false
            }
        };
        metrics.set_quota_available(quota_ok);
        metrics.set_directory_available(directory_ok);
        let draining = inputs.draining.load(Ordering::SeqCst);
        readiness.set(!draining && inputs.spool.is_healthy() && quota_ok && directory_ok);
    }
}

/// Reads the quota backend's persistence once it answers (at start, or when a backend that
/// was down at start first connects), exports it and warns when counts would not survive a
/// restart of the backend: after one, every window starts empty and every address may send
/// its whole limit again.
async fn report_persistence(quota: &dyn QuotaStore, metrics: &Metrics) {
    let persistence = quota.persistence().await;
    let all = Persistence::ALL.map(Persistence::label);
    metrics.set_quota_persistence(persistence.label(), &all);
    match persistence {
        Persistence::AppendOnly | Persistence::LocalFile => {
            tracing::info!(
                persistence = persistence.label(),
                "quota backend persistence"
            )
        }
        Persistence::Snapshots => tracing::warn!(
            persistence = persistence.label(),
            "QUOTA COUNTS AT RISK: Redis keeps snapshots only (appendonly no): a Redis restart forgets the counts since the last snapshot; set appendonly yes"
        ),
        Persistence::None => tracing::warn!(
            persistence = persistence.label(),
            "QUOTA COUNTS AT RISK: Redis has neither appendonly nor save: a Redis restart forgets every quota window and hold; set appendonly yes"
        ),
        Persistence::Unknown => tracing::warn!(
            persistence = persistence.label(),
            "quota backend persistence unknown (CONFIG GET refused): make sure Redis runs with appendonly yes, or counts are forgotten on its restart"
        ),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    // Failed DNSSEC validations log at ERROR inside hickory; our own lines say what matters.
    let default = format!(
        "{},hickory_proto=warn,hickory_resolver=warn,hickory_net=off",
        config.log.level
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match config.log.format {
        LogFormat::Json => builder.with_writer(std::io::stderr).json().try_init(),
        LogFormat::Text => builder
            .with_writer(|| EscapingWriter(std::io::stderr()))
            .with_ansi(false)
            .try_init(),
    };
}

/// The text log's writer: control characters escaped on their way to `W` (standard error).
///
/// Field values carry client text (addresses, AUTH logins, EHLO names), and the text format
/// writes them as they are: an ESC sequence would act on the terminal of the operator reading
/// the log, a CR or LF would forge a line. The formatter hands over one whole event per
/// `write` (it formats into a buffer first), so escaping everything but the final newline of
/// each write escapes exactly the client's characters. JSON lines need no such writer: serde
/// escapes control characters.
struct EscapingWriter<W>(W);

impl<W: std::io::Write> std::io::Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0
            .write_all(crate::printable::escape_log_line(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::EscapingWriter;
    use std::sync::{Arc, Mutex};

    /// A buffer the test reads back after the subscriber wrote to it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_log_lines_carry_client_control_characters_as_escapes() {
        let out = Shared::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || EscapingWriter(sink.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let rcpt = "a\u{1b}]0;owned\u{7}b@x\r\nforged line";
            tracing::info!(rcpt = %rcpt, "one event");
            tracing::info!("another");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        assert!(
            lines[0].ends_with("one event rcpt=a\\x1b]0;owned\\x07b@x\\x0d\\x0aforged line"),
            "{text:?}"
        );
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    }
}
