//! The delivery log in a SQLite file of its own, for a single machine (`[store] backend =
//! "embedded"`): `delivery-log.db` beside the store unless `[delivery_log] path` says
//! otherwise, `PRAGMA application_id` "PDLG", WAL mode with `synchronous = NORMAL`: a power
//! cut may forget the last few rows, never mail.
//!
//! Schema steps (`PRAGMA user_version`): 1 the table and its indexes, 2 the `replica` column
//! (empty in older rows) and the index by queue id.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, params, params_from_iter};

use super::{LogError, LogQuery, LogRecord, LogState, LogStore, Purge, int};
use crate::store::sqlite;

/// How long a statement waits for another connection's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// `PRAGMA application_id` of delivery log files: "PDLG".
const APPLICATION_ID: i64 = 0x5044_4C47;

/// Schema steps; after step `i` the file is at `user_version = i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the log.
    r#"
    CREATE TABLE delivery_log (
        id            INTEGER PRIMARY KEY,
        time_ms       INTEGER NOT NULL,
        queue_id      TEXT    NOT NULL,
        sender        TEXT    NOT NULL,
        sender_key    TEXT    NOT NULL,
        recipient     TEXT    NOT NULL,
        recipient_key TEXT    NOT NULL,
        mx            TEXT,
        ip            TEXT,
        tls_mode      TEXT,
        tls_version   TEXT,
        tls_cipher    TEXT,
        reply         TEXT    NOT NULL,
        dsn           TEXT    NOT NULL,
        state         TEXT    NOT NULL CHECK (state IN ('delivered', 'deferred', 'bounced')),
        attempt       INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX delivery_log_by_time ON delivery_log(time_ms);
    CREATE INDEX delivery_log_by_recipient ON delivery_log(recipient_key, time_ms);
    CREATE INDEX delivery_log_by_sender ON delivery_log(sender_key, time_ms);
    "#,
    // 2: the replica that delivered (as in the PostgreSQL log), lookups by queue id.
    r#"
    ALTER TABLE delivery_log ADD COLUMN replica TEXT NOT NULL DEFAULT '';
    CREATE INDEX delivery_log_by_queue_id ON delivery_log(queue_id, time_ms);
    "#,
];

const SQLITE: sqlite::Settings = sqlite::Settings {
    busy_timeout: BUSY_TIMEOUT,
    synchronous: sqlite::Synchronous::Normal,
    foreign_keys: false,
    file_mode: Some(0o600),
    schema: sqlite::Schema {
        name: "delivery log schema",
        migrations: MIGRATIONS,
        kind: Some(sqlite::FileKind {
            application_id: APPLICATION_ID,
            refusal: "not a delivery log database (the delivery log needs a file of its own)",
        }),
    },
};

/// An open delivery log file.
pub struct SqliteLog {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteLog {
    /// Opens (creating as needed) the log at `path`.
    ///
    /// # Errors
    /// The file cannot be created or opened, is another kind of database, or has a newer
    /// schema.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let conn = sqlite::open(path, &SQLITE).map_err(|e| Self::error_at(path, e))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens the log at `path` if the file exists; `None` (and nothing created) otherwise.
    ///
    /// # Errors
    /// As [`SqliteLog::open`].
    pub fn open_existing(path: &Path) -> Result<Option<Self>, LogError> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open(path).map(Some)
    }

    fn error_at(path: &Path, e: sqlite::Error) -> LogError {
        LogError::File {
            path: path.display().to_string(),
            message: match e {
                sqlite::Error::Sqlite(e) => e.to_string(),
                sqlite::Error::Refused(m) => m,
            },
        }
    }

    fn error(&self, e: rusqlite::Error) -> LogError {
        Self::error_at(&self.path, sqlite::Error::Sqlite(e))
    }
}

impl LogStore for SqliteLog {
    fn insert(&mut self, records: &[LogRecord]) -> Result<(), LogError> {
        let path = &self.path;
        let fail = |e| Self::error_at(path, sqlite::Error::Sqlite(e));
        let tx = self.conn.transaction().map_err(fail)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO delivery_log (time_ms, replica, queue_id, sender, sender_key,
                        recipient, recipient_key, mx, ip, tls_mode, tls_version, tls_cipher,
                        reply, dsn, state, attempt)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                        ?16)",
                )
                .map_err(fail)?;
            for r in records {
                stmt.execute(params![
                    int(r.time_ms),
                    r.replica,
                    r.queue_id,
                    r.sender,
                    r.sender.to_lowercase(),
                    r.recipient,
                    r.recipient.to_lowercase(),
                    r.mx,
                    r.ip,
                    r.tls_mode,
                    r.tls_version,
                    r.tls_cipher,
                    r.reply,
                    r.dsn,
                    r.state.as_str(),
                    r.attempt,
                ])
                .map_err(fail)?;
            }
        }
        tx.commit().map_err(fail)
    }

    fn query(&self, query: &LogQuery) -> Result<Vec<LogRecord>, LogError> {
        // Only the filters asked for are in the statement, so each lookup is answered by its
        // index (the OR of the two address equalities by both, SQLite's OR optimisation).
        let mut clauses = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        if let Some(address) = &query.address {
            values.push(Value::Text(address.to_lowercase()));
            let n = values.len();
            clauses.push(format!("(sender_key = ?{n} OR recipient_key = ?{n})"));
        }
        if let Some(queue_id) = &query.queue_id {
            values.push(Value::Text(queue_id.clone()));
            clauses.push(format!("queue_id = ?{}", values.len()));
        }
        if let Some(since) = query.since_ms {
            values.push(Value::Integer(int(since)));
            clauses.push(format!("time_ms >= ?{}", values.len()));
        }
        if let Some(state) = query.state {
            values.push(Value::Text(state.as_str().to_string()));
            clauses.push(format!("state = ?{}", values.len()));
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
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map(params_from_iter(values), |row| {
                let time_ms: i64 = row.get(0)?;
                let state: String = row.get(12)?;
                Ok((
                    time_ms,
                    state,
                    LogRecord {
                        time_ms: 0,
                        replica: row.get(1)?,
                        queue_id: row.get(2)?,
                        sender: row.get(3)?,
                        recipient: row.get(4)?,
                        mx: row.get(5)?,
                        ip: row.get(6)?,
                        tls_mode: row.get(7)?,
                        tls_version: row.get(8)?,
                        tls_cipher: row.get(9)?,
                        reply: row.get(10)?,
                        dsn: row.get(11)?,
                        state: LogState::Deferred,
                        attempt: row.get(13)?,
                    },
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (time_ms, state, mut record) = row.map_err(|e| self.error(e))?;
            record.time_ms = u64::try_from(time_ms).unwrap_or(0);
            record.state = LogState::parse(&state).ok_or_else(|| LogError::File {
                path: self.path.display().to_string(),
                message: format!("unknown state {state:?}"),
            })?;
            out.push(record);
        }
        Ok(out)
    }

    fn purge_before(&mut self, cutoff_ms: u64, batch: usize) -> Result<Purge, LogError> {
        let mut total = 0;
        loop {
            let deleted = self
                .conn
                .execute(
                    "DELETE FROM delivery_log WHERE id IN (
                        SELECT id FROM delivery_log WHERE time_ms < ?1 ORDER BY time_ms LIMIT ?2)",
                    params![int(cutoff_ms), int(batch as u64)],
                )
                .map_err(|e| self.error(e))?;
            total += deleted;
            if deleted < batch {
                return Ok(Purge::Deleted(total));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::delivery_log::conformance;
    use crate::testutil::TempDir;

    /// Every conformance case on a file of its own.
    struct Sqlite;

    impl conformance::Backend for Sqlite {
        type Guard = TempDir;

        fn open(&self, case: &str) -> (Box<dyn LogStore>, TempDir) {
            let dir = TempDir::new(&format!("dlog-{case}"));
            let log = SqliteLog::open(&dir.join("sub/delivery-log.db")).unwrap();
            (Box::new(log), dir)
        }
    }

    #[test]
    fn sqlite_log_conformance() {
        conformance::run_all(&Sqlite);
    }

    #[test]
    fn open_existing_creates_nothing_and_other_files_are_refused() {
        let dir = TempDir::new("dlog-open");
        let path = dir.join("delivery-log.db");
        assert!(SqliteLog::open_existing(&path).unwrap().is_none());
        assert!(!dir.path().exists());
        std::fs::create_dir_all(dir.path()).unwrap();
        let other = dir.join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER)")
            .unwrap();
        let e = SqliteLog::open(&other).unwrap_err().to_string();
        assert!(e.contains("not a delivery log database"), "{e}");
    }

    /// A file of schema step 1 (before the replica column) is migrated: its rows keep their
    /// values with an empty replica, and new rows carry theirs.
    #[test]
    fn version_1_files_get_the_replica_column() {
        let dir = TempDir::new("dlog-v1");
        std::fs::create_dir_all(dir.path()).unwrap();
        let path = dir.join("delivery-log.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 1;
                 INSERT INTO delivery_log (time_ms, queue_id, sender, sender_key, recipient,
                    recipient_key, reply, dsn, state, attempt)
                 VALUES (5, 'Q0', 'a@x.test', 'a@x.test', 'b@y.test', 'b@y.test', 'said: 250',
                    '2.0.0', 'delivered', 1);"
            ))
            .unwrap();
        }
        let mut log = SqliteLog::open(&path).unwrap();
        let mut new = conformance::record(6, "a@x.test", "c@y.test", LogState::Bounced);
        new.replica = "relay-2".into();
        log.insert(std::slice::from_ref(&new)).unwrap();
        let rows = log.query(&LogQuery::default()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].replica.as_str(), rows[0].queue_id.as_str()),
            ("", "Q0")
        );
        assert_eq!(rows[1], new);
        assert_eq!(sqlite::schema_version(&log.conn).unwrap(), MIGRATIONS.len());
    }
}
