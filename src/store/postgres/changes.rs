//! The `LISTEN` side of revocation and of the directory cache: one connection per replica,
//! outside the pool, listening on [`super::CHANNEL`] (every committed change is notified),
//! waking the revocation watcher at every notification so that a device revoked on any
//! machine loses its sessions on every replica at once.
//!
//! Notifications are a fast path, not the guarantee. A connection that drops (a PostgreSQL
//! restart, `pg_terminate_backend`, a network cut) misses whatever was sent meanwhile, so the
//! task reconnects after [`RECONNECT_DELAY`] and wakes the watcher once it listens again; and
//! the watcher keeps its own periodic check of the generation and the live credentials, which
//! catches up within its interval whatever happened to this connection.
//!
//! The replica's directory cache ([`DirectoryCache`], if any) hears the same: it is cleared at
//! every notification, before the watcher is woken, and serves nothing while this connection
//! is down, since a revocation sent meanwhile would not reach it.

use super::{CHANNEL, PostgresStore, describe};
use crate::store::cached::DirectoryCache;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// Pause between a lost connection and the next attempt.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// What hears the notifications: the revocation watcher, and the directory cache if there is
/// one.
pub struct Listeners {
    /// Woken at every notification and after every (re)connection.
    pub changed: Arc<Notify>,
    /// Cleared at every notification; serves only while the connection listens.
    pub cache: Option<Arc<DirectoryCache>>,
    /// Set to the write time (Unix ms) of a revoking change, the earliest not yet taken by
    /// the revocation watcher, which times its apply from it.
    pub revoking: Arc<AtomicU64>,
}

impl Listeners {
    fn listening(&self) {
        if let Some(cache) = &self.cache {
            cache.notifications_up();
        }
        self.changed.notify_one();
    }

    fn notified(&self, payload: &str) {
        if let Some(cache) = &self.cache {
            cache.changed();
        }
        if let Some(written_ms) = revoking_write_time(payload) {
            keep_earliest(&self.revoking, written_ms);
        }
        self.changed.notify_one();
    }

    fn deaf(&self) {
        if let Some(cache) = &self.cache {
            cache.notifications_down();
        }
    }
}

/// Records a revoking write's time (Unix ms) in `pending` unless an earlier one waits there
/// (0: none waits): the apply is timed from the oldest write it covers.
pub fn keep_earliest(pending: &AtomicU64, written_ms: u64) {
    let _ = pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
        Some(if now == 0 {
            written_ms
        } else {
            now.min(written_ms)
        })
    });
}

/// The write time of a revoking change from its payload, `GENERATION KIND WRITTEN_MS` (see
/// `PostgresStore::begin`); `None` for another kind, or a payload of an older writer without
/// the time.
fn revoking_write_time(payload: &str) -> Option<u64> {
    let mut words = payload.split(' ');
    let (_generation, kind, written) = (words.next()?, words.next()?, words.next()?);
    if kind != "revoking" {
        return None;
    }
    written.parse().ok().filter(|&ms| ms > 0)
}

/// Keeps a `LISTEN` connection until `shutdown`, telling `listeners` of every notification,
/// every (re)connection and every lost connection.
pub async fn listen(store: PostgresStore, listeners: Listeners, shutdown: CancellationToken) {
    let mut was_down = false;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = listen_once(&store, &listeners, &mut was_down) => outcome,
        };
        listeners.deaf();
        if !was_down {
            tracing::warn!(server = store.server(), error = %outcome, "directory notifications lost; reconnecting");
            was_down = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

/// One connection's life: connect, `LISTEN`, relay notifications; returns why it ended.
async fn listen_once(store: &PostgresStore, listeners: &Listeners, was_down: &mut bool) -> String {
    let connect = tokio::time::timeout(
        store.inner.timeout,
        store.inner.pg.connect(store.inner.tls.clone()),
    )
    .await;
    let (client, mut connection) = match connect {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return describe(&e),
        Err(_) => return format!("no connection within {:?}", store.inner.timeout),
    };
    let command = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&command);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            done = &mut listen, if !listening => match done {
                Ok(()) => {
                    listening = true;
                    if *was_down {
                        tracing::info!(server = store.server(), "directory notifications back");
                        *was_down = false;
                    }
                    // Whatever was sent while this connection was down is caught up now.
                    listeners.listening();
                }
                Err(e) => return describe(&e),
            },
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(n))) => listeners.notified(n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return describe(&e),
                None => return "connection closed".to_string(),
            },
        }
    }
}

#[cfg(test)]
mod payload_tests {
    use super::revoking_write_time;

    #[test]
    fn revoking_payloads_carry_their_write_time() {
        assert_eq!(
            revoking_write_time("42 revoking 1700000000123"),
            Some(1_700_000_000_123)
        );
        assert_eq!(revoking_write_time("42 plain 1700000000123"), None);
        // A writer from before the time was added.
        assert_eq!(revoking_write_time("42 revoking"), None);
        assert_eq!(revoking_write_time("42 revoking x"), None);
    }
}
