//! The `postern` command line: `serve`, and the admin commands that edit the store.
//!
//! One file per command family (`address.rs`, `alias.rs`, `device.rs`, `hosting.rs`,
//! `limit.rs`, `log.rs`, `quota.rs`, `sendmail/`); later families each add a variant to the
//! `Command` enum and a file of their own.
//!
//! # Exit status and output
//! - 0: done. Results go to stdout; lists as aligned columns, or with `--json` as one JSON array
//!   of objects.
//! - 1: the command was understood but failed: an invalid address, an unknown or duplicate
//!   name, a store that cannot be opened. One line `postern: <message>` on stderr, and nothing
//!   was changed (every store operation is atomic, and arguments are checked before the store is
//!   opened). A failing `serve` prints `postern: error: <message>`.
//! - 2: bad usage (clap's message) or a bad config file (`postern: <message>`).
//!
//! `postern queue` and `postern drain` talk to the running server: 69 when none runs for the
//! config, and `drain` exits 75 when mail was left in the spool (`queue.rs`, `drain.rs`).
//!
//! `postern sendmail` is the exception: it is called by programs that expect sendmail(8), so it
//! parses its own options and exits with sysexits codes (64 usage, 69 refused, 75 try later,
//! 78 config, ...; see `sendmail/`).
//!
//! Device passwords are printed exactly once, by `device add` and `device rotate`, alone on the
//! last line of stdout so that scripts can take it with `tail -n 1`. Nothing else ever prints a
//! password or a hash.
//!
//! This module parses and prints; the rules live in [`crate::policy`], the data in
//! [`crate::store`], the relay in [`crate::server`].

mod address;
mod alias;
mod config;
mod device;
mod dkim;
mod drain;
mod hosting;
mod limit;
mod log;
mod migrate;
mod queue;
mod quota;
mod sendmail;

use crate::config::{CONFIG_ENV, Config};
use crate::printable::escape_controls;
use clap::Parser;
use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// Done.
const EXIT_OK: u8 = 0;
/// Understood, but failed.
const EXIT_FAILURE: u8 = 1;
/// Bad usage or bad config.
const EXIT_USAGE: u8 = 2;

/// Postern, an outbound SMTP relay.
#[derive(Debug, Parser)]
#[command(name = "postern", version, propagate_version = true)]
struct Cli {
    /// Configuration file [default: config/postern.toml]
    #[arg(long, global = true, env = CONFIG_ENV, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

/// The command families. Later issues add theirs here (dkim, log), each with a file in this
/// directory.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the relay: listeners, spool and delivery.
    Serve,
    /// Add, remove and list hosted addresses.
    #[command(subcommand)]
    Address(address::AddressCommand),
    /// Add, remove and list aliases (extra sender addresses of an address).
    #[command(subcommand)]
    Alias(alias::AliasCommand),
    /// Manage the device passwords of an address.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Add, remove and list web-hosting accounts (port 25 relay by client network).
    #[command(subcommand)]
    Hosting(hosting::HostingCommand),
    /// Set, clear and list per-address and per-hosting-account daily limits.
    #[command(subcommand)]
    Limit(limit::LimitCommand),
    /// Show the rolling 24-hour usage of an address or hosting account.
    #[command(subcommand)]
    Quota(quota::QuotaCommand),
    /// Make, import, publish, activate and remove DKIM signing keys; verify signed messages.
    #[command(subcommand)]
    Dkim(dkim::DkimCommand),
    /// Show the delivery log: one line per recipient per delivery attempt.
    Log(log::LogArgs),
    /// Bring the directory's database to this postern's schema (PostgreSQL; safe to run on
    /// several machines at once).
    Migrate,
    /// List, retry and delete the running server's queued messages.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Check a config file without starting anything (exit 2 naming the key at fault).
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Drain the running server: stop taking mail, deliver, hand the rest to a peer, exit.
    /// Exits 0 with an empty spool, 75 with mail left, 69 without a running server.
    Drain(drain::DrainArgs),
    /// Submit a message from standard input to the relay listener, like sendmail(8):
    /// [-t] [-i] [-oi] [-f SENDER] [-F NAME] [--config PATH] [RECIPIENT...]. Exits with sysexits codes.
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Sendmail(sendmail::SendmailArgs),
}

/// Runs the `postern` command line with the process's arguments.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version end up here too, with status 0 and output on stdout.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    // Unlocked handles: `serve` logs to stderr from many threads, so holding the stderr lock
    // here for the life of the process would deadlock the first log line.
    ExitCode::from(execute(cli, &mut std::io::stdout(), &mut std::io::stderr()))
}

/// Runs a parsed command; returns the exit status.
fn execute(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let path = Config::locate(cli.config.as_deref());
    // sendmail speaks sysexits, config errors included, and reads standard input.
    if let Command::Sendmail(args) = cli.command {
        return sendmail::main(args, &path, &mut std::io::stdin().lock(), err);
    }
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            let _ = writeln!(err, "postern: {e}");
            return EXIT_USAGE;
        }
    };
    let result = match cli.command {
        Command::Serve => return serve(config, err),
        // Taken above, before the config is loaded; kept here for completeness.
        Command::Sendmail(args) => {
            return sendmail::main(args, &path, &mut std::io::stdin().lock(), err);
        }
        Command::Address(cmd) => address::run(cmd, &config, out),
        Command::Alias(cmd) => alias::run(cmd, &config, out),
        Command::Config(cmd) => config::run(cmd, &config, &path, out),
        Command::Device(cmd) => device::run(cmd, &config, out),
        Command::Dkim(cmd) => dkim::run(cmd, &config, out),
        Command::Hosting(cmd) => hosting::run(cmd, &config, out),
        Command::Limit(cmd) => limit::run(cmd, &config, out),
        Command::Log(args) => log::run(args, &config, out),
        Command::Migrate => migrate::run(&config, out),
        Command::Quota(cmd) => quota::run(cmd, &config, out),
        Command::Queue(cmd) => return control_status(queue::run(cmd, &config, out), out, err),
        Command::Drain(args) => return control_status(drain::run(args, &config, out), out, err),
    };
    match result.and_then(|()| out.flush().map_err(Into::into)) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "postern: {}", one_line(&format!("{e:#}")));
            failure_status(&e)
        }
    }
}

/// 2 for what the operator must fix before anything can work (a `[store]` key file that does
/// not read, a directory at another schema version: `postern migrate`), else 1.
fn failure_status(e: &anyhow::Error) -> u8 {
    use crate::store::StoreError;
    use crate::store::configured::OpenError;
    let usage = e.chain().any(|cause| {
        cause.downcast_ref::<crate::config::ConfigError>().is_some()
            || matches!(
                cause.downcast_ref::<StoreError>(),
                Some(StoreError::Schema(_))
            )
            || matches!(
                cause.downcast_ref::<OpenError>(),
                Some(OpenError::Config(_) | OpenError::Store(StoreError::Schema(_)))
            )
    });
    if usage { EXIT_USAGE } else { EXIT_FAILURE }
}

/// The exit status of a command that talks to the running server (`queue`, `drain`).
fn control_status(
    result: Result<u8, queue::ControlError>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    match result {
        Ok(code) => {
            let _ = out.flush();
            code
        }
        Err(e) => {
            let _ = writeln!(err, "postern: {}", one_line(&e.to_string()));
            e.exit_code()
        }
    }
}

/// `postern serve`: a multi-thread tokio runtime around [`crate::server::serve`].
fn serve(config: Config, err: &mut dyn Write) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(err, "postern: error: cannot start the async runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    match runtime.block_on(crate::server::serve(config)) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "postern: error: {}", one_line(&format!("{e:#}")));
            failure_status(&e)
        }
    }
}

/// Opens the directory named by the config, either backend; a PostgreSQL directory must
/// answer and be at this postern's schema version.
fn open_store(config: &Config) -> anyhow::Result<Box<dyn crate::store::configured::AdminStore>> {
    Ok(crate::store::configured::ConfiguredStore::open_checked(config)?.admin())
}

/// Writes the items of a `list` command: with `--json` as one JSON array of the objects
/// `to_json` makes, otherwise as the table of the rows `to_row` makes.
fn write_list<'a, T, J: serde::Serialize>(
    out: &mut dyn Write,
    json: bool,
    items: &'a [T],
    to_json: impl Fn(&'a T) -> J,
    to_row: impl Fn(&'a T) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        let objects: Vec<J> = items.iter().map(to_json).collect();
        write_json(out, &objects)
    } else {
        let rows: Vec<Vec<String>> = items.iter().map(to_row).collect();
        write_table(out, &rows)
    }
}

/// Writes `value` (an object, or an array of objects) as JSON, pretty-printed, with a final
/// newline.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut dyn Write, value: &T) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Writes rows as left-aligned columns separated by two spaces. Cells are shown with their control characters escaped: they hold client-chosen text
/// (addresses, replies) and an operator's terminal must not act on it.
fn write_table(out: &mut dyn Write, rows: &[Vec<String>]) -> anyhow::Result<()> {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape_controls(cell)).collect())
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// A time as RFC 3339 UTC, to the second: `2025-01-31T12:00:00Z`.
fn format_time(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Error chains can carry line breaks (a SQLite message, a config excerpt); stderr gets one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::testutil::TempDir;

    /// A temp directory with a config whose store lives inside it; removed on drop.
    /// Shared with the tests of each command family.
    pub(crate) struct Fixture {
        pub(crate) dir: TempDir,
        pub(crate) config: PathBuf,
    }

    impl Fixture {
        pub(crate) fn new(name: &str) -> Self {
            let dir = TempDir::new(&format!("cli-{name}"));
            std::fs::create_dir_all(dir.path()).unwrap();
            let config = dir.join("postern.toml");
            let text = format!(
                "[listen]\nsubmission = \"127.0.0.1:2587\"\n[store]\npath = {:?}\n[spool]\npath = {:?}\n",
                dir.join("var/store.db"),
                dir.join("var/spool"),
            );
            std::fs::write(&config, text).unwrap();
            Self { dir, config }
        }

        /// Runs `postern --config <fixture> args...`; returns (status, stdout, stderr).
        pub(crate) fn run(&self, args: &[&str]) -> (u8, String, String) {
            let mut argv = vec!["postern", "--config", self.config.to_str().unwrap()];
            argv.extend_from_slice(args);
            let cli = match Cli::try_parse_from(argv) {
                Ok(cli) => cli,
                Err(e) => return (e.exit_code() as u8, String::new(), e.to_string()),
            };
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let status = execute(cli, &mut out, &mut err);
            (
                status,
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        }

        pub(crate) fn ok(&self, args: &[&str]) -> String {
            let (status, out, err) = self.run(args);
            assert_eq!(status, 0, "{args:?}: {err}");
            assert!(err.is_empty(), "{err}");
            out
        }

        pub(crate) fn fails(&self, args: &[&str]) -> String {
            let (status, out, err) = self.run(args);
            assert_eq!(status, 1, "{args:?}: {out} {err}");
            assert!(err.starts_with("postern: ") && err.ends_with('\n'), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            err.trim_end().to_string()
        }

        /// Adds a hosting account with one network and one domain.
        pub(crate) fn add_hosting(&self, account: &str, network: &str, domain: &str) {
            self.ok(&[
                "hosting",
                "add",
                account,
                "--network",
                network,
                "--domain",
                domain,
            ]);
        }
    }

    #[test]
    fn time_format() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let at = |s: u64| format_time(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn config_errors_exit_2() {
        let f = Fixture::new("badconfig");
        std::fs::write(&f.config, "[listen]\nsubmision = 1\n").unwrap();
        let (status, out, err) = f.run(&["address", "list"]);
        assert_eq!(status, 2);
        assert!(out.is_empty());
        assert!(
            err.starts_with("postern: ") && err.lines().count() == 1,
            "{err}"
        );
        let missing = f.dir.join("nope.toml");
        let cli = Cli::try_parse_from([
            "postern",
            "address",
            "list",
            "--config",
            missing.to_str().unwrap(),
        ])
        .unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(execute(cli, &mut out, &mut err), 2);
        assert!(String::from_utf8(err).unwrap().contains("cannot read"));
    }

    #[test]
    fn usage_errors_exit_2_and_touch_nothing() {
        let f = Fixture::new("usage");
        for args in [
            &["device", "add", "a@example.org"][..],
            &["address", "add"],
            &["address", "add", "a@example.org", "--plan", "gold"],
            &["address", "frobnicate"],
            &["alias", "add", "x@example.org"],
        ] {
            let (status, _, err) = f.run(args);
            assert_eq!(status, 2, "{args:?}: {err}");
        }
        assert!(!f.dir.join("var").exists(), "the store was created");
    }

    #[test]
    fn address_commands() {
        let f = Fixture::new("address");
        assert_eq!(
            f.ok(&["address", "add", "Alice@Example.org"]),
            "added address alice@example.org (plan starter)\n"
        );
        f.ok(&[
            "address",
            "add",
            "bob@example.org",
            "--plan",
            "my-ksuite-plus",
        ]);
        let list = f.ok(&["address", "list"]);
        let lines: Vec<_> = list.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("alice@example.org  starter         20"),
            "{list}"
        );
        assert!(
            lines[1].starts_with("bob@example.org    my-ksuite-plus  20"),
            "{list}"
        );

        let json: serde_json::Value =
            serde_json::from_str(&f.ok(&["address", "list", "--json"])).unwrap();
        assert_eq!(json[0]["address"], "alice@example.org");
        assert_eq!(json[1]["plan"], "my-ksuite-plus");
        assert!(json[0]["created_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(json.as_array().unwrap().len(), 2);
        let text = f.ok(&["address", "list", "--json"]);
        let key = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
        assert!(
            key("address") < key("plan") && key("plan") < key("created_at"),
            "{text}"
        );

        assert_eq!(
            f.fails(&["address", "add", "alice@example.org"]),
            "postern: an address \"alice@example.org\" already exists"
        );
        assert_eq!(
            f.fails(&["address", "add", "a!b@example.org"]),
            "postern: invalid address \"a!b@example.org\": character '!' at position 2 is not allowed in the local part"
        );
        f.ok(&["address", "remove", "bob@example.org"]);
        assert_eq!(
            f.fails(&["address", "remove", "bob@example.org"]),
            "postern: address \"bob@example.org\" not found"
        );
    }

    #[test]
    fn invalid_address_does_not_open_the_store() {
        let f = Fixture::new("invalid");
        f.fails(&["address", "add", "a-@example.org"]);
        f.fails(&["address", "add", "--", "-a@example.org"]);
        f.fails(&["device", "add", "a@example", "--name", "phone"]);
        f.fails(&["alias", "add", "a@example.org", "b@@example.org"]);
        assert!(!f.dir.join("var").exists());
    }

    #[test]
    fn alias_commands() {
        let f = Fixture::new("alias");
        f.ok(&["address", "add", "alice@example.org"]);
        assert_eq!(
            f.ok(&["alias", "add", "Sales@Example.org", "alice@example.org"]),
            "added alias sales@example.org of alice@example.org\n"
        );
        f.fails(&["alias", "add", "alice@example.org", "alice@example.org"]);
        f.fails(&["alias", "add", "x@example.org", "nobody@example.org"]);
        assert_eq!(
            f.ok(&["alias", "list"]),
            "sales@example.org  alice@example.org\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&f.ok(&["alias", "list", "alice@example.org", "--json"])).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{"alias": "sales@example.org", "address": "alice@example.org"}])
        );
        f.fails(&["alias", "list", "nobody@example.org"]);
        f.ok(&["alias", "remove", "sales@example.org"]);
        assert_eq!(f.ok(&["alias", "list", "--json"]).trim(), "[]");
        f.fails(&["alias", "remove", "sales@example.org"]);
    }

    #[test]
    fn device_commands() {
        let f = Fixture::new("device");
        f.ok(&["address", "add", "alice@example.org"]);
        let out = f.ok(&["device", "add", "alice@example.org", "--name", "phone"]);
        let password = out.lines().last().unwrap().to_string();
        assert_eq!(
            password.len(),
            crate::policy::password::PASSWORD_LEN,
            "{out}"
        );
        assert!(out.lines().count() >= 2);
        f.fails(&["device", "add", "alice@example.org", "--name", "phone"]);
        f.fails(&["device", "add", "alice@example.org", "--name", ""]);
        f.fails(&["device", "add", "bob@example.org", "--name", "phone"]);
        f.ok(&["device", "add", "alice@example.org", "--name", "laptop"]);

        let list = f.ok(&["device", "list", "alice@example.org"]);
        assert!(!list.contains(&password));
        let names: Vec<_> = list
            .lines()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(names, ["laptop", "phone"]);
        let json: serde_json::Value =
            serde_json::from_str(&f.ok(&["device", "list", "alice@example.org", "--json"]))
                .unwrap();
        assert_eq!(json[1]["name"], "phone");
        assert_eq!(json[1].as_object().unwrap().len(), 2, "{json}");

        let out = f.ok(&["device", "rotate", "alice@example.org", "phone"]);
        let rotated = out.lines().last().unwrap();
        assert_ne!(rotated, password);
        assert_eq!(rotated.len(), password.len());
        f.fails(&["device", "rotate", "alice@example.org", "tablet"]);

        f.ok(&["device", "revoke", "alice@example.org", "phone"]);
        f.fails(&["device", "revoke", "alice@example.org", "phone"]);
        assert_eq!(
            f.ok(&["device", "revoke-all", "alice@example.org"]),
            "revoked 1 device of alice@example.org\n"
        );
        assert_eq!(
            f.ok(&["device", "list", "alice@example.org", "--json"])
                .trim(),
            "[]"
        );
    }

    #[test]
    fn config_flag_is_global() {
        let cli = Cli::try_parse_from([
            "postern", "device", "list", "a@b.org", "--config", "/x.toml",
        ])
        .unwrap();
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("/x.toml")));
        assert!(Cli::try_parse_from(["postern", "serve", "--config", "/x.toml"]).is_ok());
    }
}
