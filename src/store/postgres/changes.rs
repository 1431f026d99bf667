//! The `LISTEN` side of revocation: one connection per replica, outside the pool, listening on
//! [`super::CHANNEL`], waking the revocation watcher at every notification so that a device
//! revoked on any machine loses its sessions on every replica at once.
//!
//! Notifications are a fast path, not the guarantee. A connection that drops (a PostgreSQL
//! restart, `pg_terminate_backend`, a network cut) misses whatever was sent meanwhile, so the
//! task reconnects after [`RECONNECT_DELAY`] and wakes the watcher once it listens again; and
//! the watcher keeps its own periodic check of the generation and the live credentials, which
//! catches up within its interval whatever happened to this connection.

use super::{CHANNEL, PostgresStore, describe};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// Pause between a lost connection and the next attempt.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Keeps a `LISTEN` connection until `shutdown`, calling `changed.notify_one()` at every
/// notification and after every (re)connection.
pub async fn listen(store: PostgresStore, changed: Arc<Notify>, shutdown: CancellationToken) {
    let mut was_down = false;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = listen_once(&store, &changed, &mut was_down) => outcome,
        };
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
async fn listen_once(store: &PostgresStore, changed: &Notify, was_down: &mut bool) -> String {
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
                    changed.notify_one();
                }
                Err(e) => return describe(&e),
            },
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(_))) => changed.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return describe(&e),
                None => return "connection closed".to_string(),
            },
        }
    }
}
