//! `postern log [ADDRESS] [--queue-id ID] [--since DURATION] [--status STATE] [--json]`: the
//! delivery log.
//!
//! Reads the log `postern serve` writes (see [`crate::store::delivery_log`]): this machine's
//! file with the embedded store, the whole fleet's table with PostgreSQL. Oldest record first:
//! one line per recipient per attempt with time, replica, queue id, sender, recipient,
//! `mx[ip]`, TLS (`mode/version/cipher`), state, DSN status and the reply, the reply last
//! since it has spaces. `ADDRESS` matches the sender or the recipient, case-insensitively. A
//! log file that does not exist yet (nothing delivered, or a fresh install) prints nothing:
//! the CLI never creates it.

use super::{format_time, write_list};
use crate::config::{Config, parse_duration};
use crate::store::configured::open_existing_delivery_log;
use crate::store::delivery_log::{LogQuery, LogRecord, LogState};
use crate::unix_time::{from_unix_ms, now_ms};
use std::io::Write;
use std::time::Duration;

/// `postern log ...`
#[derive(Debug, clap::Args)]
pub(super) struct LogArgs {
    /// Only records whose sender or recipient is this address.
    address: Option<String>,
    /// Only records of this queue id.
    #[arg(long, value_name = "ID")]
    queue_id: Option<String>,
    /// Only records of the last DURATION, e.g. 30m, 2h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    since: Option<Duration>,
    /// Only records in this state.
    #[arg(long, value_enum)]
    status: Option<Status>,
    /// Print a JSON array of records.
    #[arg(long)]
    json: bool,
}

/// `--status` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Status {
    Delivered,
    Deferred,
    Bounced,
}

fn parse_since(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

/// One element of `log --json`.
#[derive(serde::Serialize)]
struct RecordJson<'a> {
    time: String,
    time_ms: u64,
    replica: &'a str,
    queue_id: &'a str,
    sender: &'a str,
    recipient: &'a str,
    mx: Option<&'a str>,
    ip: Option<&'a str>,
    tls_mode: Option<&'a str>,
    tls_version: Option<&'a str>,
    tls_cipher: Option<&'a str>,
    state: &'a str,
    dsn: &'a str,
    reply: &'a str,
    attempt: u32,
}

fn time_of(r: &LogRecord) -> String {
    format_time(from_unix_ms(r.time_ms))
}

fn to_json(r: &LogRecord) -> RecordJson<'_> {
    RecordJson {
        time: time_of(r),
        time_ms: r.time_ms,
        replica: &r.replica,
        queue_id: &r.queue_id,
        sender: &r.sender,
        recipient: &r.recipient,
        mx: r.mx.as_deref(),
        ip: r.ip.as_deref(),
        tls_mode: r.tls_mode.as_deref(),
        tls_version: r.tls_version.as_deref(),
        tls_cipher: r.tls_cipher.as_deref(),
        state: r.state.as_str(),
        dsn: &r.dsn,
        reply: &r.reply,
        attempt: r.attempt,
    }
}

fn to_row(r: &LogRecord) -> Vec<String> {
    let sender = if r.sender.is_empty() {
        "<>".to_string()
    } else {
        r.sender.clone()
    };
    let peer = match (&r.mx, &r.ip) {
        (Some(mx), Some(ip)) => format!("{mx}[{ip}]"),
        (Some(mx), None) => mx.clone(),
        (None, Some(ip)) => format!("[{ip}]"),
        (None, None) => "-".to_string(),
    };
    let tls = match (&r.tls_mode, &r.tls_version, &r.tls_cipher) {
        (None, _, _) => "-".to_string(),
        (Some(mode), None, None) => mode.clone(),
        (Some(mode), version, cipher) => format!(
            "{mode}/{}/{}",
            version.as_deref().unwrap_or("-"),
            cipher.as_deref().unwrap_or("-")
        ),
    };
    let replica = if r.replica.is_empty() {
        "-".to_string()
    } else {
        r.replica.clone()
    };
    vec![
        time_of(r),
        replica,
        r.queue_id.clone(),
        sender,
        r.recipient.clone(),
        peer,
        tls,
        r.state.as_str().to_string(),
        r.dsn.clone(),
        r.reply.clone(),
    ]
}

/// Runs `postern log`.
pub(super) fn run(args: LogArgs, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    let address = match args.address.as_deref().map(str::trim) {
        Some("") => anyhow::bail!("empty address"),
        other => other.map(str::to_string),
    };
    let queue_id = match args.queue_id.as_deref().map(str::trim) {
        Some("") => anyhow::bail!("empty queue id"),
        other => other.map(str::to_string),
    };
    let query = LogQuery {
        address,
        queue_id,
        since_ms: args
            .since
            .map(|d| now_ms().saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
        state: args.status.map(|s| match s {
            Status::Delivered => LogState::Delivered,
            Status::Deferred => LogState::Deferred,
            Status::Bounced => LogState::Bounced,
        }),
    };
    let Some(log) = open_existing_delivery_log(config)? else {
        return Ok(());
    };
    let records = log.query(&query)?;
    if records.is_empty() {
        return Ok(());
    }
    write_list(out, args.json, &records, to_json, to_row)
}

#[cfg(test)]
mod tests {
    use super::super::tests::Fixture;
    use crate::store::delivery_log::{LogRecord, LogState, LogStore, SqliteLog};
    use crate::unix_time::now_ms;

    fn record(recipient: &str, state: LogState, ago_ms: u64) -> LogRecord {
        LogRecord {
            time_ms: now_ms() - ago_ms,
            replica: "relay-1".into(),
            queue_id: "QID1".into(),
            sender: "alice@example.org".into(),
            recipient: recipient.into(),
            mx: Some("mx.example.net".into()),
            ip: Some("192.0.2.1".into()),
            tls_mode: Some("opportunistic".into()),
            tls_version: Some("TLSv1.3".into()),
            tls_cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
            reply: "mx.example.net[192.0.2.1] said: 250 2.0.0 ok".into(),
            dsn: "2.0.0".into(),
            state,
            attempt: 1,
        }
    }

    #[test]
    fn missing_log_prints_nothing_and_creates_nothing() {
        let f = Fixture::new("log-missing");
        assert_eq!(f.ok(&["log"]), "");
        assert_eq!(f.ok(&["log", "a@example.org", "--json"]), "");
        assert!(!f.dir.join("var").exists());
        let (status, _, err) = f.run(&["log", "--status", "lost"]);
        assert_eq!(status, 2, "{err}");
        let (status, _, err) = f.run(&["log", "--since", "3 weeks"]);
        assert_eq!(status, 2, "{err}");
        let (status, _, err) = f.run(&["log", "--queue-id", " "]);
        assert_eq!((status, err.as_str()), (1, "postern: empty queue id\n"));
    }

    #[test]
    fn filters_table_and_json() {
        let f = Fixture::new("log-list");
        let mut log = SqliteLog::open(&f.dir.join("var/delivery-log.db")).unwrap();
        let mut old = record("old@example.net", LogState::Delivered, 3 * 3_600_000);
        old.queue_id = "QID0".into();
        old.replica = String::new();
        log.insert(&[old, record("Bob@Example.net", LogState::Bounced, 1000)])
            .unwrap();
        drop(log);
        let all = f.ok(&["log"]);
        assert_eq!(all.lines().count(), 2, "{all}");
        assert!(all.contains("mx.example.net[192.0.2.1]"), "{all}");
        assert!(
            all.contains("opportunistic/TLSv1.3/TLS13_AES_128_GCM_SHA256"),
            "{all}"
        );
        assert_eq!(f.ok(&["log", "--since", "1h"]).lines().count(), 1);
        assert_eq!(f.ok(&["log", "bob@EXAMPLE.net"]).lines().count(), 1);
        assert_eq!(f.ok(&["log", "--status", "deferred"]), "");
        let one = f.ok(&["log", "--queue-id", "QID0"]);
        assert_eq!(one.lines().count(), 1, "{one}");
        assert!(one.contains("old@example.net"), "{one}");
        // The replica is the second column; "-" for rows from before the column.
        let columns = |line: &str| {
            line.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let lines: Vec<_> = all.lines().collect();
        assert_eq!(columns(lines[0])[1..3], ["-", "QID0"], "{all}");
        assert_eq!(columns(lines[1])[1..3], ["relay-1", "QID1"], "{all}");
        let json: serde_json::Value =
            serde_json::from_str(&f.ok(&["log", "--status", "bounced", "--json"])).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 1);
        assert_eq!(json[0]["recipient"], "Bob@Example.net");
        assert_eq!(json[0]["state"], "bounced");
        assert_eq!(json[0]["tls_mode"], "opportunistic");
        assert_eq!(json[0]["replica"], "relay-1");
    }

    #[test]
    fn table_escapes_control_characters_json_keeps_them() {
        let f = Fixture::new("log-controls");
        let mut log = SqliteLog::open(&f.dir.join("var/delivery-log.db")).unwrap();
        let mut hostile = record(
            "\"a\u{1b}]0;owned\u{7}\"@example.net",
            LogState::Bounced,
            10,
        );
        hostile.reply = "said: 550 \u{1b}[2J gone\r\nforged".into();
        log.insert(&[hostile]).unwrap();
        drop(log);
        let table = f.ok(&["log"]);
        assert_eq!(table.lines().count(), 1, "{table:?}");
        assert!(
            table.contains("\"a\\x1b]0;owned\\x07\"@example.net"),
            "{table:?}"
        );
        assert!(
            table.contains("said: 550 \\x1b[2J gone\\x0d\\x0aforged"),
            "{table:?}"
        );
        assert!(!table.contains('\u{1b}'), "{table:?}");
        let json: serde_json::Value = serde_json::from_str(&f.ok(&["log", "--json"])).unwrap();
        assert_eq!(json[0]["recipient"], "\"a\u{1b}]0;owned\u{7}\"@example.net");
    }
}
