//! Draining a replica before it goes away (`postern drain`, or SIGTERM with `[server]
//! drain_on_shutdown = true`).
//!
//! In order: `/readyz` turns unready and `postern_draining` 1 at once (the load balancer
//! stops sending); the listeners stop accepting and idle sessions get `421 4.3.2` at their
//! next command while transfers in progress finish (as at shutdown); every queued message is
//! made due now; deliveries run until the spool is empty and no session is left, or until the
//! timeout; then delivery stops (transactions in progress finish), and with a hand-off peer
//! every message still queued is handed to it (`crate::delivery::handoff`), each removed from
//! the spool only after the peer's 250. Then `serve` exits. Progress goes to every `postern
//! drain` attached, once a second, and the last line says how many messages were left.
//!
//! Nothing here deletes mail that was not handed off: a drain that ends with mail left
//! leaves it in the spool, where the next `serve` on that spool delivers it.

use crate::config::Config;
use crate::control::{DrainPhase, Reply};
use crate::metrics::{Metrics, http::Readiness};
use crate::spool::Spool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often progress is reported and the end condition checked.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A drain as ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DrainOrder {
    /// The peer's hand-off listener, `HOST:PORT`.
    pub(super) handoff: Option<String>,
    /// How long deliveries may run.
    pub(super) timeout: Duration,
}

/// Where drain orders arrive and progress is published; clones share both.
#[derive(Clone)]
pub(super) struct DrainSignal {
    order: Arc<watch::Sender<Option<DrainOrder>>>,
    progress: Arc<watch::Sender<Option<Reply>>>,
}

impl DrainSignal {
    pub(super) fn new() -> Self {
        Self {
            order: Arc::new(watch::channel(None).0),
            progress: Arc::new(watch::channel(None).0),
        }
    }

    /// Orders a drain; a second order joins the first (its own settings are ignored).
    ///
    /// # Errors
    /// The hand-off peer is not `HOST:PORT`, or no fleet secret is configured.
    pub(super) fn start(
        &self,
        config: &Config,
        handoff: Option<String>,
        timeout: Duration,
    ) -> Result<(), String> {
        if let Some(peer) = &handoff {
            if !crate::config::handoff::is_host_port(peer) {
                return Err(format!(
                    "--handoff {}: must be HOST:PORT",
                    crate::printable::escape_controls(peer)
                ));
            }
            config.handoff.read_secret().map_err(|e| e.0)?;
        }
        self.order.send_if_modified(|order| {
            if order.is_some() {
                return false;
            }
            *order = Some(DrainOrder { handoff, timeout });
            true
        });
        Ok(())
    }

    /// Waits for the first order.
    pub(super) async fn ordered(&self) -> DrainOrder {
        let mut orders = self.order.subscribe();
        match orders.wait_for(Option::is_some).await {
            Ok(order) => order.clone().expect("waited for Some"),
            // The sender lives in `self`: never closed while we wait.
            Err(_) => std::future::pending().await,
        }
    }

    /// Progress and the final reply, for the attached `postern drain` commands.
    pub(super) fn subscribe(&self) -> watch::Receiver<Option<Reply>> {
        self.progress.subscribe()
    }

    fn publish(&self, reply: Reply) {
        self.progress.send_replace(Some(reply));
    }
}

/// What a drain works on: the running server's parts.
pub(super) struct DrainContext {
    pub(super) config: Arc<Config>,
    pub(super) spool: Spool,
    pub(super) metrics: Metrics,
    pub(super) readiness: Readiness,
    /// Read by the readiness watcher: set, `/readyz` stays unready.
    pub(super) draining: Arc<AtomicBool>,
    /// The listeners' and sessions' token.
    pub(super) intake: CancellationToken,
    /// Live SMTP sessions.
    pub(super) sessions: TaskTracker,
    /// The delivery worker's token and task.
    pub(super) delivery_stop: CancellationToken,
    pub(super) delivery: tokio::task::JoinHandle<()>,
    pub(super) signal: DrainSignal,
}

impl DrainContext {
    /// Runs the drain to its end; returns the final reply (also published).
    pub(super) async fn run(self, order: DrainOrder) -> Reply {
        tracing::info!(handoff = ?order.handoff, timeout = ?order.timeout, queued = self.spool.len(), "draining: unready, no new connections");
        self.draining.store(true, Ordering::SeqCst);
        self.readiness.set(false);
        self.metrics.set_draining(true);
        self.intake.cancel();
        self.sessions.close();
        if let Err(e) = self.spool.flush(None) {
            tracing::warn!(error = %e, "draining: cannot make the queue due now");
        }
        let deadline = Instant::now() + order.timeout;
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tick.tick().await;
            self.publish(DrainPhase::Delivering, 0);
            if self.sessions.is_empty() && self.spool.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::info!(
                    queued = self.spool.len(),
                    sessions = self.sessions.len(),
                    "draining: timeout"
                );
                break;
            }
        }
        // Sessions still transferring may finish (as at shutdown): what they commit is
        // handed off or left with the rest.
        if tokio::time::timeout(super::SHUTDOWN_GRACE, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("draining: sessions still open after the grace period");
        }
        self.delivery_stop.cancel();
        let delivery_grace = self.config.delivery.command_timeout + Duration::from_secs(5);
        if tokio::time::timeout(delivery_grace, self.delivery)
            .await
            .is_err()
        {
            tracing::warn!("draining: deliveries still running after the grace period");
        }
        let (handed_off, mut reason) = match &order.handoff {
            Some(peer) if !self.spool.is_empty() => {
                let signal = self.signal.clone();
                let spool = self.spool.clone();
                let sessions = self.sessions.len();
                let report =
                    crate::delivery::handoff::hand_off(&self.spool, &self.config, peer, |handed| {
                        signal.publish(Reply::Progress {
                            phase: DrainPhase::HandingOff,
                            queued: spool.len(),
                            sessions,
                            handed_off: handed,
                        });
                    })
                    .await;
                (report.handed_off, report.refusal)
            }
            _ => (0, None),
        };
        let left = self.spool.len();
        if left > 0 && reason.is_none() {
            reason = Some(match order.handoff {
                Some(_) => "the peer did not take every message".to_string(),
                None => "timeout before the queue was empty (no hand-off peer)".to_string(),
            });
        }
        tracing::info!(left, handed_off, reason = ?reason, "drained");
        let reply = Reply::Drained {
            left,
            handed_off,
            reason,
        };
        self.signal.publish(reply.clone());
        reply
    }

    fn publish(&self, phase: DrainPhase, handed_off: usize) {
        self.signal.publish(Reply::Progress {
            phase,
            queued: self.spool.len(),
            sessions: self.sessions.len(),
            handed_off,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            "[listen]\nsubmission = \"127.0.0.1:2587\"\n[store]\npath = \"s.db\"\n[spool]\npath = \"sp\"\n{extra}"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn the_first_order_counts_and_bad_peers_are_refused() {
        let signal = DrainSignal::new();
        let plain = config("");
        let refused = signal.start(&plain, Some("peer".into()), Duration::from_secs(1));
        assert_eq!(refused.unwrap_err(), "--handoff peer: must be HOST:PORT");
        let no_secret = signal.start(&plain, Some("peer:2526".into()), Duration::from_secs(1));
        assert_eq!(
            no_secret.unwrap_err(),
            "handoff.secret_file: required for hand-off"
        );
        signal.start(&plain, None, Duration::from_secs(7)).unwrap();
        signal.start(&plain, None, Duration::from_secs(9)).unwrap();
        let order = signal.ordered().await;
        assert_eq!(
            order,
            DrainOrder {
                handoff: None,
                timeout: Duration::from_secs(7)
            }
        );
    }
}
