//! Delivery: empties the spool by sending each message to its recipients' mail exchangers.
//!
//! The worker ([`run`]) takes due messages from the spool, at most `[delivery]
//! max_active_messages` in memory at a time (the rest wait in the spool), and delivers each
//! in a task of its own:
//! 1. the pending recipients are grouped by destination: their domain (lower case), or one
//!    group for everything when `[delivery] relayhost` is set (all mail goes to the same host,
//!    so one transaction carries all recipients, as Postfix groups by next hop); the groups of
//!    one message run side by side, each queued for its own destination;
//! 2. per group, once it has its destination's slot and then one of the `[delivery] workers`
//!    (see "Concurrency" below), one SMTP transaction: the route (relay host, address literal, or MX hosts in
//!    `mx.rs` order), then each address of each host in turn (`client.rs`) until one gives a
//!    transaction answer (RFC 5321 section 5.1), at most [`MAX_ADDRESSES`] addresses;
//! 3. every recipient's outcome goes to the spool in one `record_attempt`, with the retry time
//!    from `retry.rs` when some are still pending; when the message is `max_age` old instead,
//!    those recipients fail as expired (status 5.4.7, RFC 3463 "delivery time expired");
//!    a group that ends while others of the same message still run has its delivered
//!    recipients recorded (and logged) at once (`record_progress`), so a crash before the
//!    slowest group ends does not deliver to them again;
//! 4. before that record, the attempt's DSNs (failures, expiries, the delay notice, relayed
//!    for NOTIFY=SUCCESS) are committed to the spool as new messages from `<>` (`dsn.rs`), so
//!    a crash in between can duplicate a bounce but never lose one.
//!
//! Logging: one `info` line per distinct outcome of a transaction (queue id, recipients, MX
//! host, IP, TLS mode, reply, result); never message content. The same facts, one record per
//! recipient, go to the delivery log (`log.rs`, read by `postern log`); a log that cannot be
//! opened or written costs an `error` line, never a delay or a message. Metrics (named and
//! described in `crate::metrics`): `postern_delivery_recipients_total{result, tls}` per
//! recipient and attempt (`result_label`, `tls_label`), `postern_delivery_retries_total`
//! per message attempt after the first, `postern_delivery_connections_total{reused}` per
//! connection a transaction used (a new one as in `opened_connection`, or a reused idle
//! session that carried the transaction); the spool publishes the queue depth
//! and the oldest message's age.
//!
//! Dead destinations (`dead.rs`): after two transactions in a row to a destination end in a
//! connect or greeting timeout, it is dead: its groups also take its one dead-destination
//! place (concurrency 1) and its messages' retries are spread out (`retry.rs`); any
//! transaction answer revives it. `postern_delivery_dead_destinations` counts them.
//!
//! Throughput: a worker is held for the transaction only, never for the spool: the attempt's
//! record (and its `Done` fsync, shared with the acceptances of the same group commit) is
//! waited for after the worker is given back, by the message's task, which holds only its
//! place among `max_active_messages`. The message's data comes from the spool's memory of
//! recent messages when it can (`spool/recent.rs`), and the client pipelines the whole
//! transaction to a server that allows it (`client.rs`), so a reused session costs two
//! round trips per message. At high rates the runtime is CPU-bound and each transaction's
//! round trips wait behind the client sessions' work: the number of transactions in flight
//! (`workers`, and `max_per_destination` for one relay host) then decides delivery's share.
//!
//! Shutdown: no new message is taken; a message in progress finishes its current transaction,
//! groups not started yet are deferred (4.3.2) and recorded, so nothing is lost. With
//! `workers = 0` nothing is delivered at all (maintenance).
//!
//! Fail-closed: a resolver that cannot be set up, a relay host that does not resolve, or a
//! queued message that cannot be read defer mail; they never send it elsewhere or drop it.
//!
//! DANE (RFC 7672): the MX lookup says whether the route is secure, each host's address
//! lookup whether the host is; where both are, the host's TLSA records choose
//! [`tls::TlsPolicy::Dane`] (or `Encrypt`) for it, and a host that fails DANE is skipped for the
//! next; the decision table is in `dane/mod.rs`. A group deferred after DANE applied is logged
//! with TLS mode `dane`; `postern_delivery_dane_failures_total{reason}` counts the failures.
//!
//! MTA-STS (RFC 8461, `mta_sts.rs`): a destination whose policy is `enforce` has its hosts that
//! DANE leaves to opportunistic TLS delivered under [`tls::TlsPolicy::MtaSts`]: hosts outside
//! the policy's `mx` patterns are skipped, TLS is mandatory and the certificate must be
//! WebPKI-valid for the host name; with no host left the group is deferred (4.7.5) and logged
//! with TLS mode `mta-sts`; `postern_delivery_mta_sts_failures_total{reason}` counts failures.
//! `testing` and `none` policies change nothing.
//!
//! Concurrency and reuse (`pool.rs`): a group first waits for one of its destination's
//! `[delivery] max_per_destination` slots (the destination is the recipients' domain, or the
//! relay host), in that destination's own first-come queue, and only then for one of the
//! `[delivery] workers`; it holds both until its transaction is over. So a destination whose
//! slots are all taken by slow transactions (a tarpit that accepts TCP and never greets)
//! queues its own groups without holding a worker, and the other destinations go on, as
//! Postfix's qmgr keeps per-destination queues and concurrency windows. A waiting group is
//! delayed, never failed (a shutdown meanwhile defers it, 4.3.2). After a
//! transaction answer the session is kept idle for `[delivery] connection_idle` under its MX
//! host, address and TLS policy; the next group for that host, address and policy sends RSET
//! on it and its transaction follows. A reused session that is dead or refuses RSET is closed
//! and a new connection made, as if there had been none (never a failed attempt). Such a
//! transaction is counted as `postern_delivery_connections_total{reused="true"}` and logged
//! with the TLS mode the session has. Sessions never cross TLS policies, and a cleartext
//! session after a failed opportunistic handshake is not reused. Idle sessions get QUIT when
//! their time is up and at shutdown. `connection_idle = "0s"` closes every session at once.

pub mod client;
pub mod dane;
pub mod dead;
pub mod dsn;
pub mod handoff;
pub mod log;
pub mod mta_sts;
pub mod mx;
pub mod outcome;
pub mod own;
pub mod pool;
pub mod require_tls;
pub mod retry;
pub mod tls;

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hickory_resolver::TokioResolver;
use tokio::io::AsyncRead;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::smtp::EnhancedCode;
use crate::spool::{Envelope, QueuedMessage, RecipientResult, RecipientStatus, Spool};
use client::{ClientSettings, MessageSource, Transaction};
use mx::MxHost;
pub use outcome::DeliveryError;
use outcome::{Peer, RecipientOutcome, Verdict};
use tls::{TlsMode, TlsPolicy};

/// Most addresses tried for one destination in one attempt (Postfix's
/// `smtp_mx_address_limit` is 5; more MX hosts than this is misconfiguration, and each dead
/// address can cost a connect timeout).
pub const MAX_ADDRESSES: usize = 10;

/// The domain a recipient is routed by: its domain part ([`crate::policy::domain_of`]) lower
/// case and without a trailing dot; `None` without one.
fn destination_domain(address: &str) -> Option<String> {
    let domain = crate::policy::domain_of(address)?;
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    (!domain.is_empty()).then(|| domain.to_lowercase())
}

/// Where one group of recipients goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Destination {
    /// `[delivery] relayhost`: host and port.
    Relay(String, u16),
    /// The recipients' domain (lower case).
    Domain(String),
    /// Recipients without a domain (cannot be routed by MX).
    NoDomain,
}

/// Groups recipients, given as (index into the envelope, address) of the pending ones, by
/// destination; each group keeps the envelope order.
fn group_recipients<'a>(
    pending: impl IntoIterator<Item = (usize, &'a str)>,
    relay: Option<&(String, u16)>,
) -> BTreeMap<Destination, Vec<usize>> {
    let mut groups: BTreeMap<Destination, Vec<usize>> = BTreeMap::new();
    for (i, address) in pending {
        let destination = if let Some((host, port)) = relay {
            Destination::Relay(host.clone(), *port)
        } else {
            destination_domain(address).map_or(Destination::NoDomain, Destination::Domain)
        };
        groups.entry(destination).or_default().push(i);
    }
    groups
}

/// The delivery worker: runs until `shutdown`, then waits for deliveries in progress.
pub async fn run(
    spool: Arc<Spool>,
    config: Arc<Config>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let workers = config.delivery.workers;
    if workers == 0 {
        tracing::warn!("delivery.workers = 0: mail is kept in the spool and not delivered");
        shutdown.cancelled().await;
        return;
    }
    let relay = config.delivery.relayhost.as_ref().map(|relay| {
        (
            relay.host().to_string(),
            relay.port_or(config.delivery.port),
        )
    });
    let tls_config = match tls::opportunistic_client_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "delivery stopped");
            shutdown.cancelled().await;
            return;
        }
    };
    let resolver = match mx::build_resolver(&config.dns).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "DNS resolver unavailable; deliveries are deferred until it can be set up");
            None
        }
    };
    let delivery_log = start_delivery_log(&config, &metrics).await;
    let mta_sts = match mta_sts::MtaSts::from_config(&config.mta_sts) {
        Ok(sts) => sts,
        Err(e) => {
            tracing::error!(error = %e, "MTA-STS roots unavailable: MTA-STS policies are not applied");
            None
        }
    };
    let limiter = pool::Limiter::new(config.delivery.max_per_destination);
    let max_active = config.delivery.max_active_messages.max(1);
    let sessions = pool::SessionCache::new(
        config.delivery.connection_idle,
        config.delivery.max_per_destination,
    );
    if let Some(cache) = &sessions {
        tokio::spawn(cache.clone().reap(shutdown.clone()));
    }
    let worker = Arc::new(Worker {
        workers: Semaphore::new(workers),
        limiter,
        dead: dead::DeadDestinations::default(),
        dead_limiter: pool::Limiter::new(1),
        own: own::OwnListeners::from_config(&config.listen),
        sessions,
        mta_sts,
        log: delivery_log.clone(),
        replica: config.replica_name(),
        client: ClientSettings {
            helo_name: config.server.hostname.clone(),
            connect_timeout: config.delivery.connect_timeout,
            command_timeout: config.delivery.command_timeout,
            tls_config,
            metrics: Some(metrics.clone()),
        },
        spool,
        config,
        metrics,
        resolver: Mutex::new(resolver),
        relay,
        shutdown: shutdown.clone(),
    });
    tracing::info!(workers, max_active, relayhost = ?worker.relay, "delivery started");

    // Messages in memory, not workers: a message waiting for its destinations' slots holds
    // no worker (`deliver_group` takes one only after the slot).
    let active = Arc::new(Semaphore::new(max_active));
    let tasks = TaskTracker::new();
    loop {
        // The permit comes first: a message taken from the spool is marked in flight and must
        // always be recorded, so it is only taken once there is room for it.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = active.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let queued = tokio::select! {
            _ = shutdown.cancelled() => break,
            queued = worker.spool.next_due() => queued,
        };
        let worker = worker.clone();
        tasks.spawn(async move {
            worker.deliver_message(queued).await;
            drop(permit);
        });
    }
    tasks.close();
    if !tasks.is_empty() {
        tracing::info!(
            in_flight = tasks.len(),
            "delivery stopping: finishing current transactions"
        );
    }
    tasks.wait().await;
    if let Some(cache) = &worker.sessions {
        cache.close_all().await;
    }
    if let Some(log) = delivery_log {
        let _ = tokio::task::spawn_blocking(move || log.close()).await;
    }
    tracing::info!("delivery stopped");
}

/// Opens the delivery log (where `[store]` says: see `store::configured::open_delivery_log`)
/// and starts its writer; `None` (with an error line) when it cannot be (a SQLite file that
/// cannot be used): mail is delivered all the same, unlogged. A PostgreSQL log always starts,
/// since it connects lazily; its outages cost dropped records (`log.rs`).
async fn start_delivery_log(
    config: &Arc<Config>,
    metrics: &Metrics,
) -> Option<Arc<log::LogWriter>> {
    let retention = config.delivery_log.retention;
    let for_open = config.clone();
    let for_writer = metrics.clone();
    let for_store = metrics.clone();
    let started = tokio::task::spawn_blocking(move || {
        log::LogWriter::start(
            move || {
                crate::store::configured::open_delivery_log(&for_open, Some(&for_store))
                    .map_err(|e| e.to_string())
            },
            retention,
            for_writer,
        )
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match started {
        Ok(writer) => Some(Arc::new(writer)),
        Err(e) => {
            tracing::error!(error = %e, "delivery log unavailable; deliveries go on unlogged");
            None
        }
    }
}

/// Everything a delivery task needs.
struct Worker {
    /// `[delivery] workers`: transactions in progress, all destinations together; taken after
    /// the destination's slot.
    workers: Semaphore,
    spool: Arc<Spool>,
    config: Arc<Config>,
    metrics: Metrics,
    /// The delivery log's writer; `None` when it could not be opened.
    log: Option<Arc<log::LogWriter>>,
    /// This replica's name in the delivery log (`Config::replica_name`).
    replica: String,
    /// `None` until the resolver can be built (retried for each destination).
    resolver: Mutex<Option<TokioResolver>>,
    /// Parsed `[delivery] relayhost`.
    relay: Option<(String, u16)>,
    /// MTA-STS policies and their WebPKI roots; `None` when `[mta_sts] enabled = false`.
    mta_sts: Option<mta_sts::MtaSts>,
    client: ClientSettings,
    shutdown: CancellationToken,
    /// `[delivery] max_per_destination`: transactions in flight per destination.
    limiter: pool::Limiter<Destination>,
    /// Destinations that keep timing out (`dead.rs`).
    dead: dead::DeadDestinations<Destination>,
    /// The one place of a dead destination.
    dead_limiter: pool::Limiter<Destination>,
    /// Our own SMTP listeners: never a destination (`own.rs`).
    own: own::OwnListeners,
    /// Idle sessions for reuse; `None` when `[delivery] connection_idle` is zero.
    sessions: Option<Arc<pool::SessionCache>>,
}

/// The outcome of one group: where it went and what each recipient got.
struct GroupOutcome {
    /// The server that answered, or the last one tried.
    peer: Option<Peer>,
    /// TLS of the answering session.
    tls: Option<TlsMode>,
    /// (envelope index, outcome).
    recipients: Vec<(usize, RecipientOutcome)>,
    /// The answering server advertised DSN and got the RFC 3461 parameters: it reports on
    /// the delivered recipients from here, so no `relayed` DSN (RFC 3461 section 6.2.1).
    dsn_relayed: bool,
    /// The destination was dead at the end of the attempt (`dead.rs`): spread its retries.
    dead: bool,
}

/// What trying a group's hosts found, for the failure when none answered.
#[derive(Default)]
struct HostTrail {
    /// Addresses tried (at most [`MAX_ADDRESSES`]).
    tried: usize,
    /// The last address's session error.
    last: Option<(Peer, client::ClientError)>,
    /// The last temporary address or TLSA lookup failure.
    lookup_failure: Option<mx::MxError>,
    /// Why the MTA-STS policy allowed no host, if it did not.
    sts_refusal: Option<String>,
    /// DANE governed at least one host (the failure is logged as `dane-failed`).
    dane_applied: bool,
    /// An enforced MTA-STS policy governed at least one host.
    sts_applied: bool,
    /// Why a REQUIRETLS message could not use a host (`require_tls.rs`).
    require_tls_refusal: Option<String>,
}

/// An `enforce` MTA-STS policy and the domain it belongs to.
struct StsEnforcement<'r> {
    policy: Arc<mta_sts::Policy>,
    domain: &'r str,
}

/// The hosts of a destination and how they were found.
struct Route {
    kind: RouteKind,
    /// In the order to try.
    hosts: Vec<MxHost>,
    /// TCP port to connect to.
    port: u16,
    /// The MX RRset (or the implicit MX's denial) was DNSSEC-secure: DANE may apply.
    dane: bool,
}

/// How a [`Route`] was found; decides what "no address at all" means.
enum RouteKind {
    /// MX records of the domain.
    Mx(String),
    /// No MX records: the domain itself, or an address literal.
    Implicit(String),
    /// `[delivery] relayhost`.
    Relay,
}

impl Route {
    /// The failure when no address of any host could be tried; `lookup` is the last
    /// temporary address lookup failure, if any.
    fn no_address(&self, lookup: Option<mx::MxError>) -> DeliveryError {
        match (&self.kind, lookup) {
            // The operator's relay host: a configuration problem, the mail waits for it.
            (RouteKind::Relay, lookup) => DeliveryError::Route(mx::MxError::RelayUnresolvable {
                host: self
                    .hosts
                    .first()
                    .map(|h| h.name.clone())
                    .unwrap_or_default(),
                detail: lookup
                    .map_or_else(|| "no A or AAAA records".to_string(), |e| e.to_string()),
            }),
            (_, Some(temporary)) => DeliveryError::Route(temporary),
            (RouteKind::Implicit(domain), None) => DeliveryError::Route(mx::MxError::NoMailHost {
                domain: domain.clone(),
            }),
            (RouteKind::Mx(domain), None) => DeliveryError::NoAddresses {
                domain: domain.clone(),
            },
        }
    }
}

/// Reads the spooled message for the client.
struct SpoolMessage<'a> {
    spool: &'a Spool,
    envelope: &'a Envelope,
}

impl MessageSource for SpoolMessage<'_> {
    async fn open(&self) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        self.spool
            .open_message(self.envelope)
            .await
            .map_err(io::Error::other)
    }
}

impl Worker {
    /// The cached resolver, else a new one (async: DS trust anchors are looked up first;
    /// concurrent builders may race, the first one stored wins).
    async fn resolver(&self) -> Result<TokioResolver, DeliveryError> {
        let slot = || {
            self.resolver
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        if let Some(resolver) = slot().as_ref() {
            return Ok(resolver.clone());
        }
        let resolver = mx::build_resolver(&self.config.dns)
            .await
            .map_err(|e| DeliveryError::ResolverUnavailable(e.to_string()))?;
        Ok(slot().get_or_insert(resolver).clone())
    }

    /// One attempt of a message: its groups side by side (each queued for its own
    /// destination), then one record of all their outcomes.
    async fn deliver_message(self: &Arc<Self>, queued: QueuedMessage) {
        let envelope = Arc::new(queued.envelope);
        let pending = envelope
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.status, RecipientStatus::Pending))
            .map(|(i, r)| (i, r.address.as_str()));
        let mut running = JoinSet::new();
        for (n, (destination, indices)) in group_recipients(pending, self.relay.as_ref())
            .into_iter()
            .enumerate()
        {
            let recipients: Vec<String> = indices
                .iter()
                .map(|&i| envelope.recipients[i].address.clone())
                .collect();
            let worker = self.clone();
            let envelope = envelope.clone();
            running.spawn(async move {
                let mut outcome = if worker.shutdown.is_cancelled() {
                    worker.failed_group(&indices, None, &DeliveryError::Shutdown)
                } else {
                    worker
                        .deliver_group(&envelope, &destination, &indices, &recipients)
                        .await
                };
                outcome.dead = worker.dead.is_dead(&destination);
                (n, recipients, outcome)
            });
        }
        let mut groups = Vec::new();
        let mut early = HashSet::new();
        while let Some(joined) = running.join_next().await {
            match joined {
                Ok(group) => {
                    // Other groups still running: what this one delivered is recorded now,
                    // so a crash before they end does not send it again.
                    if !running.is_empty() {
                        let attempt = queued.attempts.saturating_add(1);
                        early.extend(
                            self.record_progress(&envelope, &group.1, &group.2, attempt)
                                .await,
                        );
                    }
                    groups.push(group);
                }
                // A bug, not a delivery problem: its recipients stay pending (not recorded).
                Err(e) => {
                    tracing::error!(queue_id = %envelope.id, error = %e, "delivery task failed")
                }
            }
        }
        groups.sort_by_key(|(n, _, _)| *n);
        let groups = groups.into_iter().map(|(_, r, o)| (r, o)).collect();
        if queued.attempts > 0 {
            self.metrics.delivery_retry();
        }
        self.record(queued.attempts, &envelope, groups, &early)
            .await;
    }

    /// Records a finished group's delivered recipients while the message's other groups still
    /// run (see [`Spool::record_progress`]), and logs them; returns their indices, which the
    /// attempt's record then does not log again. Not those that asked for a success notice
    /// (`NOTIFY=SUCCESS`): the notice is made by the attempt's record, and a crash between the
    /// two would lose it; they stay at-least-once.
    async fn record_progress(
        &self,
        envelope: &Envelope,
        addresses: &[String],
        group: &GroupOutcome,
        attempt: u32,
    ) -> Vec<usize> {
        let early: Vec<bool> = group
            .recipients
            .iter()
            .map(|(index, outcome)| {
                outcome.verdict == Verdict::Delivered
                    && !dsn::wants(
                        envelope.recipients[*index].notify.as_deref(),
                        dsn::Kind::Success,
                    )
            })
            .collect();
        let delivered: Vec<RecipientResult> = group
            .recipients
            .iter()
            .zip(&early)
            .filter(|(_, early)| **early)
            .map(|((index, outcome), _)| RecipientResult {
                index: *index,
                status: RecipientStatus::Delivered,
                reply: outcome.spool_text(),
                delay_notified: false,
            })
            .collect();
        if delivered.is_empty() {
            return Vec::new();
        }
        let indices: Vec<usize> = delivered.iter().map(|r| r.index).collect();
        if let Err(e) = self.spool.record_progress(&envelope.id, delivered).await {
            tracing::warn!(queue_id = %envelope.id, error = %e, "cannot record a group's deliveries before the attempt ends");
            return Vec::new();
        }
        self.metrics.delivery_early_recorded(indices.len());
        if let Some(log) = &self.log {
            let time_ms = crate::unix_time::now_ms();
            let records = log_records(&self.replica, envelope, addresses, group, time_ms, attempt);
            log.submit(
                records
                    .into_iter()
                    .zip(&early)
                    .filter(|(_, early)| **early)
                    .map(|(record, _)| record)
                    .collect(),
            );
        }
        indices
    }

    /// One transaction for one destination: its route, its TLS policy host by host, and each
    /// address in turn until one answers.
    async fn deliver_group(
        &self,
        envelope: &Envelope,
        destination: &Destination,
        indices: &[usize],
        recipients: &[String],
    ) -> GroupOutcome {
        // `[delivery] max_per_destination`: wait in the destination's queue for a slot, then
        // for a worker; both are held until the group is done. Never the other way round: a
        // worker waiting for a busy destination would be lost to every other destination.
        let _slot = tokio::select! {
            biased;
            slot = self.limiter.acquire(destination) => slot,
            _ = self.shutdown.cancelled() => {
                return self.failed_group(indices, None, &DeliveryError::Shutdown);
            }
        };
        // A dead destination gets one transaction at a time (`dead.rs`).
        let _dead_slot = if self.dead.is_dead(destination) {
            tokio::select! {
                biased;
                slot = self.dead_limiter.acquire(destination) => Some(slot),
                _ = self.shutdown.cancelled() => {
                    return self.failed_group(indices, None, &DeliveryError::Shutdown);
                }
            }
        } else {
            None
        };
        let _worker = tokio::select! {
            biased;
            // The semaphore is never closed.
            permit = self.workers.acquire() => permit.ok(),
            _ = self.shutdown.cancelled() => {
                return self.failed_group(indices, None, &DeliveryError::Shutdown);
            }
        };

        let mut route = match self.route(destination).await {
            Ok(route) => route,
            Err(e) => return self.failed_group(indices, None, &e),
        };
        self.tls_route(envelope, &mut route);
        let recipient_dsn: Vec<client::RecipientDsn> = indices
            .iter()
            .map(|&i| client::RecipientDsn {
                notify: envelope.recipients[i].notify.clone(),
                orcpt: envelope.recipients[i].orcpt.clone(),
            })
            .collect();
        let txn = Transaction {
            sender: &envelope.sender,
            recipients,
            size: envelope.size,
            body_8bit: envelope.body_8bit,
            smtputf8: envelope.smtputf8,
            ret: envelope.dsn_ret.as_deref(),
            envid: envelope.dsn_envid.as_deref(),
            recipient_dsn: &recipient_dsn,
            require_tls: envelope.require_tls,
        };
        let source = SpoolMessage {
            spool: &self.spool,
            envelope,
        };
        let sts = self.sts_policy(envelope, &route).await;

        let mut trail = HostTrail::default();
        let mut looped = false;
        'hosts: for host in &route.hosts {
            let Some((addresses, policy, settings)) = self
                .host_policy(envelope, &route, host, sts.as_ref(), &mut trail)
                .await
            else {
                continue;
            };
            let Some((policy, settings)) =
                self.require_tls_host(envelope, &route, host, policy, settings, &mut trail)
            else {
                continue;
            };
            let settings = settings.as_ref().unwrap_or(&self.client);
            for ip in addresses {
                if trail.tried == MAX_ADDRESSES || self.shutdown.is_cancelled() {
                    break 'hosts;
                }
                let peer = Peer {
                    host: host.name.clone(),
                    addr: SocketAddr::new(ip, route.port),
                };
                // Ourselves: this host and every one after it are out (`own.rs`).
                if self.own.is_own(peer.addr) {
                    tracing::warn!(queue_id = %envelope.id, mx = %peer.host, ip = %ip,
                        "MX host is this relay itself");
                    looped = true;
                    break 'hosts;
                }
                trail.tried += 1;
                match self.attempt(settings, &peer, policy, &txn, &source).await {
                    Ok(report) => {
                        self.note_health(destination, dead::Health::Answered);
                        return GroupOutcome {
                            peer: Some(report.peer),
                            tls: Some(report.tls),
                            recipients: indices.iter().copied().zip(report.recipients).collect(),
                            dsn_relayed: report.dsn_relayed,
                            dead: false,
                        };
                    }
                    Err(error) => {
                        tracing::debug!(
                            queue_id = %envelope.id,
                            mx = %peer.host,
                            ip = %ip,
                            error = %error,
                            "no transaction with this address, trying the next"
                        );
                        trail.last = Some((peer, error));
                    }
                }
            }
        }
        if looped && trail.last.is_none() {
            let domain = match destination {
                Destination::Domain(d) => d.clone(),
                Destination::Relay(host, _) => host.clone(),
                Destination::NoDomain => String::new(),
            };
            return self.failed_group(indices, None, &DeliveryError::Loop { domain });
        }
        if let Some(outcome) = self.require_tls_failure(envelope, indices, &trail) {
            return outcome;
        }
        let health = match &trail.last {
            Some((_, error)) if error.is_unresponsive() => dead::Health::Unresponsive,
            _ => dead::Health::Unknown,
        };
        self.note_health(destination, health);
        self.group_failure(indices, &route, trail)
    }

    /// Records how a transaction to `destination` ended and publishes the dead count.
    fn note_health(&self, destination: &Destination, health: dead::Health) {
        if let Some(count) = self.dead.record(destination, health) {
            if health == dead::Health::Unresponsive {
                tracing::warn!(destination = ?destination, "destination is not answering: concurrency 1, retries spread out");
            } else {
                tracing::info!(destination = ?destination, "destination answers again");
            }
            self.metrics.set_dead_destinations(count);
        }
    }

    /// RFC 8461: the destination's MTA-STS policy when it is `enforce` (the other modes change
    /// nothing about delivery). Relay hosts and address literals have none.
    async fn enforced_sts_policy<'r>(&self, route: &'r Route) -> Option<StsEnforcement<'r>> {
        let domain = match &route.kind {
            RouteKind::Mx(d) | RouteKind::Implicit(d) if mx::address_literal(d).is_none() => d,
            _ => return None,
        };
        let sts = self.mta_sts.as_ref()?;
        let resolver = self.resolver().await.ok()?;
        let policy = sts
            .policy(&resolver, domain)
            .await
            .filter(|p| p.mode == mta_sts::Mode::Enforce)?;
        Some(StsEnforcement { policy, domain })
    }

    /// A host's addresses and how TLS must go to it: DANE first (RFC 8461 section 2), then an
    /// enforced MTA-STS policy for the hosts DANE leaves to opportunistic TLS. `None` when the
    /// host is not to be tried; `trail` keeps the reason for the final failure.
    async fn host_policy(
        &self,
        envelope: &Envelope,
        route: &Route,
        host: &MxHost,
        sts: Option<&StsEnforcement<'_>>,
        trail: &mut HostTrail,
    ) -> Option<(Vec<IpAddr>, TlsPolicy, Option<ClientSettings>)> {
        let (addresses, host_tls) = match self.host_of(route, &host.name).await {
            Ok(a) => a,
            // A temporary failure may pass; an invalid host name is as good as no address.
            Err(e) if !e.is_permanent() => {
                trail.lookup_failure = Some(e);
                return None;
            }
            Err(_) => return None,
        };
        let (policy, settings) = match host_tls {
            dane::HostTls::Opportunistic => (TlsPolicy::Opportunistic, None),
            dane::HostTls::Encrypt => (TlsPolicy::Encrypt, None),
            dane::HostTls::Dane(tls_config) => {
                let settings = ClientSettings {
                    tls_config,
                    ..self.client.clone()
                };
                (TlsPolicy::Dane, Some(settings))
            }
            dane::HostTls::Skip { bogus, detail } => {
                // RFC 7672 2.2: a host whose TLSA records cannot be had is not used.
                self.metrics
                    .dane_failure(if bogus { "bogus_tlsa" } else { "tlsa_lookup" });
                tracing::info!(queue_id = %envelope.id, mx = %host.name, reason = %detail,
                    "DANE: host skipped");
                trail.dane_applied = true;
                let name = format!("_25._tcp.{}", host.name);
                trail.lookup_failure = Some(if bogus {
                    mx::MxError::Bogus {
                        name,
                        record_type: "TLSA",
                    }
                } else {
                    mx::MxError::Temporary {
                        name,
                        record_type: "TLSA",
                        detail,
                    }
                });
                return None;
            }
        };
        trail.dane_applied |= policy.requires_tls();
        let (Some(enforced), Some(sts), TlsPolicy::Opportunistic) = (sts, &self.mta_sts, policy)
        else {
            return Some((addresses, policy, settings));
        };
        trail.sts_applied = true;
        if !enforced.policy.matches_mx(&host.name) {
            self.metrics.mta_sts_failure("mx_mismatch");
            trail.sts_refusal = Some(format!(
                "MX host {} is not allowed by the MTA-STS policy of {}",
                host.name, enforced.domain
            ));
            return None;
        }
        let settings = ClientSettings {
            tls_config: sts.tls.clone(),
            ..self.client.clone()
        };
        Some((addresses, TlsPolicy::MtaSts, Some(settings)))
    }

    /// One transaction with one address. An idle session to this address under this policy
    /// carries it when it can; otherwise (or when it turns out dead) a new connection does.
    async fn attempt(
        &self,
        settings: &ClientSettings,
        peer: &Peer,
        policy: TlsPolicy,
        txn: &Transaction<'_>,
        source: &SpoolMessage<'_>,
    ) -> Result<client::TransactionReport, client::ClientError> {
        let key = pool::SessionKey::new(peer, policy);
        let reuse = self.sessions.as_ref().and_then(|cache| cache.take(&key));
        let keep = self.sessions.is_some() && !self.shutdown.is_cancelled();
        let delivered =
            client::deliver_reusing(settings, peer, policy, txn, source, reuse, keep).await;
        if let (Some(cache), Some(idle)) = (&self.sessions, delivered.idle) {
            cache.put(idle);
        }
        let result = delivered.result;
        if let Err(client::ClientError::TlsRequired { reason, .. }) = &result {
            if policy == TlsPolicy::MtaSts {
                self.metrics.mta_sts_failure(reason);
            } else {
                self.metrics.dane_failure(reason);
            }
        }
        if delivered.reused {
            self.metrics.delivery_connection(true);
        } else if delivered.fresh && opened_connection(&result) {
            self.metrics.delivery_connection(false);
        }
        result
    }

    /// The outcome when no address answered: the last session error, else shutdown, else an
    /// MTA-STS refusal, else what the route says "no address" means.
    fn group_failure(&self, indices: &[usize], route: &Route, trail: HostTrail) -> GroupOutcome {
        let error = match (trail.last, trail.lookup_failure, trail.sts_refusal) {
            (Some((peer, error)), _, _) => DeliveryError::Session { peer, error },
            (None, _, _) if self.shutdown.is_cancelled() => DeliveryError::Shutdown,
            // No MX host the policy allows: wait for the domain to fix its MX or its policy.
            (None, None, Some(refusal)) => DeliveryError::PolicyRefused(refusal),
            (None, failure, _) => route.no_address(failure),
        };
        let peer = match &error {
            DeliveryError::Session { peer, .. } => Some(peer.clone()),
            _ => None,
        };
        let mut outcome = self.failed_group(indices, peer, &error);
        if trail.dane_applied {
            outcome.tls = Some(TlsMode::DaneFailed);
        } else if trail.sts_applied {
            outcome.tls = Some(TlsMode::MtaStsFailed);
        }
        outcome
    }

    /// The hosts to try for a destination, in order.
    async fn route(&self, destination: &Destination) -> Result<Route, DeliveryError> {
        let port = self.config.delivery.port;
        match destination {
            Destination::NoDomain => Err(DeliveryError::NoDomain),
            Destination::Relay(host, port) => Ok(Route {
                kind: RouteKind::Relay,
                hosts: vec![MxHost {
                    name: host.clone(),
                    preference: 0,
                }],
                port: *port,
                dane: false,
            }),
            Destination::Domain(domain) => {
                let (hosts, dane) = if mx::address_literal(domain).is_some() {
                    let host = MxHost {
                        name: domain.clone(),
                        preference: 0,
                    };
                    (vec![host], false)
                } else {
                    let found = mx::lookup_mx_secure(&self.resolver().await?, domain).await;
                    if let Err(mx::MxError::Bogus { .. }) = &found {
                        self.metrics.dane_failure("bogus_mx");
                    }
                    let (hosts, secure) = found?;
                    (hosts, secure && self.config.dns.dnssec)
                };
                // order_mx answers an empty MX set with the domain itself (RFC 5321 5.1).
                let implicit = hosts.len() == 1 && hosts[0].name == *domain;
                Ok(Route {
                    kind: if implicit {
                        RouteKind::Implicit(domain.clone())
                    } else {
                        RouteKind::Mx(domain.clone())
                    },
                    hosts,
                    port,
                    dane,
                })
            }
        }
    }

    /// The addresses of a host (a definitive "none" is an empty list) and, for a DANE route,
    /// how TLS must go (`dane/`).
    async fn host_of(
        &self,
        route: &Route,
        host: &str,
    ) -> Result<(Vec<IpAddr>, dane::HostTls), mx::MxError> {
        if let Some(ip) = mx::address_literal(host).or_else(|| host.parse().ok()) {
            return Ok((vec![ip], dane::HostTls::Opportunistic));
        }
        let resolver = self.resolver().await.map_err(|e| mx::MxError::Temporary {
            name: host.to_string(),
            record_type: "A",
            detail: e.to_string(),
        })?;
        let found = mx::lookup_host(&resolver, host).await;
        if route.dane
            && let Err(mx::MxError::Bogus { .. }) = &found
        {
            self.metrics.dane_failure("bogus_address");
        }
        let found = found?;
        let domain = match &route.kind {
            RouteKind::Mx(d) | RouteKind::Implicit(d) => d.as_str(),
            RouteKind::Relay => host,
        };
        let tls = if found.addresses.is_empty() {
            dane::HostTls::Opportunistic
        } else {
            dane::host_tls(
                &resolver,
                route.dane,
                host,
                found.secure,
                found.canonical.as_deref(),
                domain,
            )
            .await
        };
        Ok((found.addresses, tls))
    }

    fn failed_group(
        &self,
        indices: &[usize],
        peer: Option<Peer>,
        error: &DeliveryError,
    ) -> GroupOutcome {
        let outcome = RecipientOutcome::from_failure(error);
        GroupOutcome {
            peer,
            tls: None,
            recipients: indices.iter().map(|&i| (i, outcome.clone())).collect(),
            dsn_relayed: false,
            dead: false,
        }
    }

    /// Expiry, logging, metrics and the spool record for one attempt of a message.
    async fn record(
        &self,
        attempts_before: u32,
        envelope: &Envelope,
        mut groups: Vec<(Vec<String>, GroupOutcome)>,
        logged_early: &HashSet<usize>,
    ) {
        let now = SystemTime::now();
        let any_temporary = groups
            .iter()
            .flat_map(|(_, g)| &g.recipients)
            .any(|(_, o)| o.verdict == Verdict::Temporary);
        let mut retry_at = None;
        if any_temporary {
            let first_queued =
                SystemTime::UNIX_EPOCH + Duration::from_millis(envelope.received_at_ms);
            let jitter = rand::random_range(-1.0..=1.0);
            let dead_pending = groups.iter().any(|(_, g)| {
                g.dead
                    && g.recipients
                        .iter()
                        .any(|(_, o)| o.verdict == Verdict::Temporary)
            });
            let backoff = if dead_pending {
                retry::Backoff::Dead
            } else {
                retry::Backoff::Normal
            };
            retry_at = retry::next_retry_with(
                backoff,
                attempts_before.saturating_add(1),
                first_queued,
                now,
                &self.config.delivery,
                jitter,
            );
            if retry_at.is_none() {
                let max_age = self.config.delivery.max_age;
                for (_, group) in &mut groups {
                    for (_, outcome) in &mut group.recipients {
                        if outcome.verdict == Verdict::Temporary {
                            *outcome = expired(outcome, max_age);
                        }
                    }
                }
            }
        }

        let notices = dsn::after_attempt(
            &self.spool,
            &self.config,
            &self.metrics,
            envelope,
            &groups,
            now,
        )
        .await;
        if let Some(at) = retry_at {
            retry_at = Some(dsn::retry_for_delay_notice(
                &self.config.delivery,
                envelope,
                now,
                at,
            ));
        }

        let mut results = Vec::new();
        let mut records = Vec::new();
        let time_ms = crate::unix_time::now_ms();
        let attempt = attempts_before.saturating_add(1);
        for (addresses, group) in &groups {
            self.log_group(envelope, addresses, group);
            if self.log.is_some() {
                let group_records =
                    log_records(&self.replica, envelope, addresses, group, time_ms, attempt);
                for (mut record, (index, _)) in group_records.into_iter().zip(&group.recipients) {
                    if logged_early.contains(index) {
                        continue;
                    }
                    // A failure whose DSN could not be enqueued stays pending: logged as deferred.
                    if notices.unsent_failures.contains(index) {
                        record.state = log::LogState::Deferred;
                    }
                    records.push(record);
                }
            }
            for (index, outcome) in &group.recipients {
                self.metrics.delivery_recipient(
                    result_label(outcome.verdict),
                    tls_label(group.tls.as_ref()),
                );
                let status = match outcome.verdict {
                    Verdict::Delivered => RecipientStatus::Delivered,
                    Verdict::Temporary => RecipientStatus::Pending,
                    // Its DSN could not be enqueued: kept (and bounced again), never lost.
                    Verdict::Permanent if notices.unsent_failures.contains(index) => {
                        RecipientStatus::Pending
                    }
                    Verdict::Permanent => RecipientStatus::Failed,
                };
                // Final outcomes only: a failure kept pending is counted when it bounces.
                if matches!(status, RecipientStatus::Delivered | RecipientStatus::Failed) {
                    self.metrics
                        .delivery_finished(result_label(outcome.verdict), envelope.received_at_ms);
                }
                results.push(RecipientResult {
                    index: *index,
                    status,
                    reply: outcome.spool_text(),
                    delay_notified: notices.delay_notified.contains(index),
                });
            }
        }
        // The log follows the spool: an attempt the spool did not record (it will be made
        // again under the same number) is not logged either.
        match self
            .spool
            .record_attempt(&envelope.id, results, retry_at)
            .await
        {
            Ok(()) => {
                if let Some(log) = &self.log {
                    log.submit(records);
                }
            }
            Err(e) => {
                tracing::error!(queue_id = %envelope.id, error = %e, "cannot record the delivery attempt");
            }
        }
    }

    /// One `info` line per distinct outcome in a group.
    fn log_group(&self, envelope: &Envelope, addresses: &[String], group: &GroupOutcome) {
        let (mx, ip) = match &group.peer {
            Some(peer) => (peer.host.clone(), peer.addr.ip().to_string()),
            None => ("-".to_string(), "-".to_string()),
        };
        let tls = group
            .tls
            .as_ref()
            .map_or_else(|| "-".to_string(), TlsMode::to_string);
        let mut lines: Vec<(&RecipientOutcome, Vec<&str>)> = Vec::new();
        for (n, (_, outcome)) in group.recipients.iter().enumerate() {
            let address = addresses.get(n).map_or("", String::as_str);
            match lines.iter_mut().find(|(o, _)| *o == outcome) {
                Some((_, list)) => list.push(address),
                None => lines.push((outcome, vec![address])),
            }
        }
        for (outcome, list) in lines {
            tracing::info!(
                queue_id = %envelope.id,
                recipients = %list.join(","),
                mx = %mx,
                ip = %ip,
                tls = %tls,
                dsn = %outcome.status,
                reply = %outcome.detail,
                result = outcome.verdict.label(),
                "delivery attempt"
            );
        }
    }
}

/// The `result` label of `postern_delivery_recipients_total`: the delivery log's state names.
fn result_label(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Delivered => log::LogState::Delivered.as_str(),
        Verdict::Temporary => log::LogState::Deferred.as_str(),
        Verdict::Permanent => log::LogState::Bounced.as_str(),
    }
}

/// The `tls` label of `postern_delivery_recipients_total`: the mode of the session that gave
/// the transaction answer, `none` without one.
fn tls_label(tls: Option<&TlsMode>) -> &'static str {
    match tls {
        None => "none",
        Some(TlsMode::Plaintext) => "plaintext",
        Some(TlsMode::Opportunistic { .. }) => "opportunistic",
        Some(TlsMode::Dane { .. }) => "dane",
        Some(TlsMode::MtaSts { .. }) => "mta-sts",
        Some(TlsMode::DaneFailed | TlsMode::MtaStsFailed) => "none",
    }
}

/// Whether a [`client::deliver`] call got as far as a TCP connection (counted in
/// `postern_delivery_connections_total`): every outcome but a failed or timed-out connect.
/// A cleartext retry after a failed handshake belongs to the same call and is not counted
/// again.
fn opened_connection(result: &Result<client::TransactionReport, client::ClientError>) -> bool {
    !matches!(
        result,
        Err(client::ClientError::Connect { .. } | client::ClientError::ConnectTimeout { .. })
    )
}

/// The delivery log's records of one group: one per recipient.
fn log_records(
    replica: &str,
    envelope: &Envelope,
    addresses: &[String],
    group: &GroupOutcome,
    time_ms: u64,
    attempt: u32,
) -> Vec<log::LogRecord> {
    let (tls_mode, tls_version, tls_cipher) = match &group.tls {
        None => (None, None, None),
        Some(TlsMode::Plaintext) => (Some("plaintext".to_string()), None, None),
        Some(TlsMode::Opportunistic { version, cipher }) => (
            Some("opportunistic".to_string()),
            Some(version.clone()),
            Some(cipher.clone()),
        ),
        Some(TlsMode::Dane { version, cipher }) => (
            Some("dane".to_string()),
            Some(version.clone()),
            Some(cipher.clone()),
        ),
        Some(TlsMode::DaneFailed) => (Some("dane".to_string()), None, None),
        Some(TlsMode::MtaSts { version, cipher }) => (
            Some("mta-sts".to_string()),
            Some(version.clone()),
            Some(cipher.clone()),
        ),
        Some(TlsMode::MtaStsFailed) => (Some("mta-sts".to_string()), None, None),
    };
    group
        .recipients
        .iter()
        .enumerate()
        .map(|(n, (_, outcome))| log::LogRecord {
            time_ms,
            replica: replica.to_string(),
            queue_id: envelope.id.to_string(),
            sender: envelope.sender.clone(),
            recipient: addresses.get(n).cloned().unwrap_or_default(),
            mx: group.peer.as_ref().map(|p| p.host.clone()),
            ip: group.peer.as_ref().map(|p| p.addr.ip().to_string()),
            tls_mode: tls_mode.clone(),
            tls_version: tls_version.clone(),
            tls_cipher: tls_cipher.clone(),
            reply: outcome.detail.clone(),
            dsn: outcome.status.to_string(),
            state: match outcome.verdict {
                Verdict::Delivered => log::LogState::Delivered,
                Verdict::Temporary => log::LogState::Deferred,
                Verdict::Permanent => log::LogState::Bounced,
            },
            attempt,
        })
        .collect()
}

/// A temporary outcome turned permanent because the message is too old (RFC 3463 x.4.7
/// "delivery time expired").
fn expired(last: &RecipientOutcome, max_age: Duration) -> RecipientOutcome {
    let mut outcome = RecipientOutcome::permanent(
        EnhancedCode::new(5, 4, 7),
        format!(
            "expired: undelivered after {}; last error: {}",
            format_age(max_age),
            last.spool_text()
        ),
    );
    // The DSN's Diagnostic-Code: the last thing a server said, if one did.
    outcome.remote_reply = last.remote_reply.clone();
    outcome
}

fn format_age(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_group_by_domain_or_relay() {
        let pending = [
            (0, "a@Example.org"),
            (2, "b@other.net"),
            (3, "c@example.ORG"),
            (5, "postmaster"),
        ];
        let groups = group_recipients(pending, None);
        let expected: BTreeMap<Destination, Vec<usize>> = [
            (Destination::Domain("example.org".into()), vec![0, 3]),
            (Destination::Domain("other.net".into()), vec![2]),
            (Destination::NoDomain, vec![5]),
        ]
        .into_iter()
        .collect();
        assert_eq!(groups, expected);
        let relay = ("smtp.example.net".to_string(), 587);
        let groups = group_recipients(pending, Some(&relay));
        assert_eq!(
            groups.into_iter().collect::<Vec<_>>(),
            [(Destination::Relay(relay.0.clone(), 587), vec![0, 2, 3, 5])]
        );
    }

    #[test]
    fn domains_are_lowercased() {
        assert_eq!(
            destination_domain("Bob@Example.ORG"),
            Some("example.org".into())
        );
        assert_eq!(
            destination_domain("\"a@b\"@example.org"),
            Some("example.org".into())
        );
        assert_eq!(destination_domain("postmaster"), None);
        assert_eq!(destination_domain("bob@"), None);
        assert_eq!(
            destination_domain("bob@example.org."),
            Some("example.org".into())
        );
    }

    #[test]
    fn metric_labels() {
        assert_eq!(result_label(Verdict::Delivered), "delivered");
        assert_eq!(result_label(Verdict::Temporary), "deferred");
        assert_eq!(result_label(Verdict::Permanent), "bounced");
        assert_eq!(tls_label(None), "none");
        assert_eq!(tls_label(Some(&TlsMode::Plaintext)), "plaintext");
        let tls = TlsMode::Opportunistic {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        };
        assert_eq!(tls_label(Some(&tls)), "opportunistic");
    }

    #[test]
    fn connections_counted_unless_connect_failed() {
        use client::ClientError;
        let refused = Err(ClientError::Connect {
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        });
        assert!(!opened_connection(&refused));
        let slow = Err(ClientError::ConnectTimeout {
            after: Duration::from_secs(30),
        });
        assert!(!opened_connection(&slow));
        let closed = Err(ClientError::Closed {
            phase: outcome::Command::Greeting,
        });
        assert!(opened_connection(&closed));
        let handshake = Err(ClientError::TlsHandshake {
            source: io::Error::other("bad record mac"),
        });
        assert!(opened_connection(&handshake));
        let answered = Ok(client::TransactionReport {
            peer: Peer {
                host: "mx.example".into(),
                addr: "192.0.2.1:25".parse().unwrap(),
            },
            tls: TlsMode::Plaintext,
            recipients: Vec::new(),
            dsn_relayed: false,
        });
        assert!(opened_connection(&answered));
    }

    #[test]
    fn expiry_text() {
        let last = RecipientOutcome::temporary(
            EnhancedCode::new(4, 4, 1),
            "mx[192.0.2.1]: connect failed",
        );
        let e = expired(&last, Duration::from_secs(5 * 86_400));
        assert_eq!(e.verdict, Verdict::Permanent);
        assert_eq!(
            e.spool_text(),
            "5.4.7 expired: undelivered after 5d; last error: 4.4.1 mx[192.0.2.1]: connect failed"
        );
        assert_eq!(format_age(Duration::from_secs(7200)), "2h");
        assert_eq!(format_age(Duration::from_secs(90)), "90s");
    }
}
