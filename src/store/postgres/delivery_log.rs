//! The delivery log in the shared database (`delivery_log`, schema step 2): every replica
//! writes its rows here, so `postern log` on any machine shows the whole fleet's deliveries.
//!
//! - A batch is one statement: `INSERT ... SELECT FROM unnest(...) WITH ORDINALITY`, one array
//!   parameter per column, prepared once per connection whatever the batch size; the
//!   ordinality keeps the batch's order in `id`, which orders rows of one millisecond.
//! - PostgreSQL's `text` cannot hold NUL, which a hostile server can put in a reply: a NUL is
//!   stored as U+FFFD rather than costing the whole batch.
//! - A query names only the filters asked for, so the planner sees plain equalities on the
//!   indexed keys (the address one as a BitmapOr of the sender and recipient indexes).
//! - The purge runs on one connection under the session lock `pg_try_advisory_lock(`
//!   [`PURGE_LOCK`]`)`: a replica that does not get it skips (another is purging the same
//!   rows), so at most one replica purges at a time whatever their schedules. The lock is
//!   released after the last batch; a connection whose unlock fails is closed rather than
//!   returned to the pool holding it (the server drops a dead session's locks itself).

use super::{PostgresStore, exec, one, rows};
use crate::store::StoreError;
use crate::store::delivery_log::{LogError, LogQuery, LogRecord, LogState, LogStore, Purge, int};
use tokio_postgres::types::ToSql;

/// The advisory lock key of the retention purge ("dlpurge" in ASCII), distinct from
/// `postern migrate`'s.
pub const PURGE_LOCK: i64 = 0x0064_6c70_7572_6765;

const INSERT: &str = "INSERT INTO delivery_log (time_ms, replica, queue_id, sender, sender_key,
        recipient, recipient_key, mx, ip, tls_mode, tls_version, tls_cipher, reply, dsn, state,
        attempt)
    SELECT time_ms, replica, queue_id, sender, sender_key, recipient, recipient_key, mx, ip,
        tls_mode, tls_version, tls_cipher, reply, dsn, state, attempt
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
        $14::text[], $15::text[], $16::integer[])
        WITH ORDINALITY AS batch(time_ms, replica, queue_id, sender, sender_key, recipient,
            recipient_key, mx, ip, tls_mode, tls_version, tls_cipher, reply, dsn, state, attempt,
            position)
    ORDER BY position";

/// `text` without NUL (see the module docs).
fn text(value: &str) -> String {
    value.replace('\0', "\u{fffd}")
}

fn opt_text(value: Option<&String>) -> Option<String> {
    value.map(|v| text(v))
}

async fn insert(store: &PostgresStore, records: &[LogRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&LogRecord) -> &str| records.iter().map(|r| text(f(r))).collect();
    let optional = |f: fn(&LogRecord) -> Option<&String>| {
        records.iter().map(|r| opt_text(f(r))).collect::<Vec<_>>()
    };
    let time_ms: Vec<i64> = records.iter().map(|r| int(r.time_ms)).collect();
    let replica: Vec<String> = column(|r| &r.replica);
    let queue_id: Vec<String> = column(|r| &r.queue_id);
    let sender: Vec<String> = column(|r| &r.sender);
    let sender_key: Vec<String> = sender.iter().map(|s| s.to_lowercase()).collect();
    let recipient: Vec<String> = column(|r| &r.recipient);
    let recipient_key: Vec<String> = recipient.iter().map(|s| s.to_lowercase()).collect();
    let mx = optional(|r| r.mx.as_ref());
    let ip = optional(|r| r.ip.as_ref());
    let tls_mode = optional(|r| r.tls_mode.as_ref());
    let tls_version = optional(|r| r.tls_version.as_ref());
    let tls_cipher = optional(|r| r.tls_cipher.as_ref());
    let reply: Vec<String> = column(|r| &r.reply);
    let dsn: Vec<String> = column(|r| &r.dsn);
    let state: Vec<&str> = records.iter().map(|r| r.state.as_str()).collect();
    let attempt: Vec<i32> = records
        .iter()
        .map(|r| i32::try_from(r.attempt).unwrap_or(i32::MAX))
        .collect();
    let params: [&(dyn ToSql + Sync); 16] = [
        &time_ms,
        &replica,
        &queue_id,
        &sender,
        &sender_key,
        &recipient,
        &recipient_key,
        &mx,
        &ip,
        &tls_mode,
        &tls_version,
        &tls_cipher,
        &reply,
        &dsn,
        &state,
        &attempt,
    ];
    let client = store.client().await?;
    exec(store, &client, INSERT, &params).await.map(drop)
}

async fn query(store: &PostgresStore, query: &LogQuery) -> Result<Vec<LogRecord>, StoreError> {
    let address = query.address.as_ref().map(|a| a.to_lowercase());
    let since = query.since_ms.map(int);
    let state = query.state.map(LogState::as_str);
    let mut clauses = Vec::new();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(address) = &address {
        params.push(address);
        let n = params.len();
        clauses.push(format!("(sender_key = ${n} OR recipient_key = ${n})"));
    }
    if let Some(queue_id) = &query.queue_id {
        params.push(queue_id);
        clauses.push(format!("queue_id = ${}", params.len()));
    }
    if let Some(since) = &since {
        params.push(since);
        clauses.push(format!("time_ms >= ${}", params.len()));
    }
    if let Some(state) = &state {
        params.push(state);
        clauses.push(format!("state = ${}", params.len()));
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let sql = format!(
        "SELECT time_ms, replica, queue_id, sender, recipient, mx, ip, tls_mode, tls_version,
                tls_cipher, reply, dsn, state, attempt
         FROM delivery_log {filter} ORDER BY time_ms, id"
    );
    let client = store.client().await?;
    let found = rows(store, &client, &sql, &params).await?;
    found
        .iter()
        .map(|row| {
            let state: String = row.get(12);
            Ok(LogRecord {
                time_ms: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                replica: row.get(1),
                queue_id: row.get(2),
                sender: row.get(3),
                recipient: row.get(4),
                mx: row.get(5),
                ip: row.get(6),
                tls_mode: row.get(7),
                tls_version: row.get(8),
                tls_cipher: row.get(9),
                reply: row.get(10),
                dsn: row.get(11),
                state: LogState::parse(&state).ok_or_else(|| {
                    StoreError::Backend(format!("delivery_log: unknown state {state:?}"))
                })?,
                attempt: u32::try_from(row.get::<_, i32>(13)).unwrap_or(0),
            })
        })
        .collect()
}

async fn purge(store: &PostgresStore, cutoff_ms: u64, batch: usize) -> Result<Purge, StoreError> {
    let client = store.client().await?;
    let locked = one(
        store,
        &client,
        "SELECT pg_try_advisory_lock($1)",
        &[&PURGE_LOCK],
    )
    .await?;
    if !locked.get::<_, bool>(0) {
        return Ok(Purge::Skipped);
    }
    let (cutoff, limit) = (int(cutoff_ms), int(batch as u64));
    let mut total = 0;
    let deleted = loop {
        let deleted = exec(
            store,
            &client,
            "DELETE FROM delivery_log WHERE id IN (
                SELECT id FROM delivery_log WHERE time_ms < $1 ORDER BY time_ms LIMIT $2)",
            &[&cutoff, &limit],
        )
        .await;
        match deleted {
            Ok(n) => {
                total += usize::try_from(n).unwrap_or(usize::MAX);
                if n < limit as u64 {
                    break Ok(Purge::Deleted(total));
                }
            }
            Err(e) => break Err(e),
        }
    };
    let unlocked = one(
        store,
        &client,
        "SELECT pg_advisory_unlock($1)",
        &[&PURGE_LOCK],
    )
    .await;
    if !matches!(unlocked, Ok(ref row) if row.get::<_, bool>(0)) {
        // Never back into the pool holding the lock: closing the session releases it.
        drop(deadpool_postgres::Object::take(client));
    }
    deleted
}

impl LogStore for PostgresStore {
    fn insert(&mut self, records: &[LogRecord]) -> Result<(), LogError> {
        Ok(self.run(self.bounded("log_write", insert(self, records)))?)
    }

    fn query(&self, query_: &LogQuery) -> Result<Vec<LogRecord>, LogError> {
        Ok(self.run(query(self, query_))?)
    }

    fn purge_before(&mut self, cutoff_ms: u64, batch: usize) -> Result<Purge, LogError> {
        Ok(self.run(purge(self, cutoff_ms, batch))?)
    }
}
