//! `postern-bench`: how fast the real `postern` binary accepts mail, and what it costs.
//!
//! # Run
//! ```text
//! cargo build --release                                  # target/release/postern (and this bench)
//! cargo run --release --bin postern-bench -- --quick     # smoke run, about 1 minute
//! cargo run --release --bin postern-bench                # full run, about 2 minutes
//! cargo run --release --bin postern-bench -- --postfix   # + Postfix comparison (root, ~10 more minutes)
//! ```
//! Progress goes to stderr; the results go to stdout as Markdown tables (for `benches/README.md`).
//!
//! # What is measured, and why
//! The bench starts `target/release/postern serve` itself with a temporary config: loopback
//! listeners on free ports, a store and spool in a temporary directory on the same disk as the
//! production spool would be (the spool's fsync is part of what is measured), `[log] level =
//! "info"` as in production (one log line per message), and **`[delivery] workers = 0`**, so
//! that nothing is delivered and the figures are the cost of *accepting* mail only: SMTP,
//! TLS, AUTH, header checks and the group-committed journal with its fsync before each `250`.
//! It creates an address and a device with the admin CLI (`postern address add`, `postern
//! device add`; the password is the last line of stdout), exactly as an operator would.
//!
//! 1. **Submission throughput** (the issue's target: at least 2,000 accepted 1 KB messages/s
//!    with 100 sessions over reused TLS). Each session connects to the submission port, does
//!    EHLO, STARTTLS, EHLO, AUTH PLAIN once, then sends messages back to back on the same TLS
//!    connection until the window closes. Per message the client pipelines `MAIL FROM`,
//!    `RCPT TO` and `DATA` in one write (the server advertises PIPELINING, RFC 2920), waits for
//!    `250 250 354`, sends the data with the final dot in one write, and waits for `250`: two
//!    round trips per message, as a pipelining MUA or MTA does. Cases: body of 1,000 and
//!    100,000 bytes (as in the Postfix baseline, plus about 200 bytes of headers) × 1, 20 and
//!    100 concurrent sessions; each case gets a fresh server and an empty spool.
//!    - *accepted msg/s*: final `250`s received inside the measurement window (after a
//!      warm-up) divided by the window's length.
//!    - *p50 / p99*: from the moment the data and its final dot were written to the socket to
//!      the final `250` (what the spool's group commit costs a client), over the window.
//!    - *server CPU µs/msg* and *server cores*: `utime + stime` of the server process
//!      (`/proc/PID/stat`, all threads) over the window.
//!    - *client cores*: the bench's own CPU (`getrusage`). The client is one current-thread
//!      tokio runtime so it takes as little as possible of the machine's 2 cores.
//!    - *VmRSS / VmHWM*: `/proc/PID/status` of the server at the end of the window. With
//!      delivery off, the spool index holds every accepted envelope, so RSS grows with the
//!      number of messages accepted: that is part of what is reported.
//!    - *msgs/fsync*: messages per group commit in the window, from the server's
//!      `/metrics` (`postern_spool_commit_batch_messages_{sum,count}`).
//! 2. **Idle sessions** (targets: 10,000 idle sessions and 100,000 idle TLS sessions, each
//!    under 1 GiB RSS). `--idle N`: N TCP connections to the submission port, each reads its
//!    `220` greeting and then stays silent. `--idle-tls N`: each also says EHLO, STARTTLS,
//!    completes the TLS handshake and says EHLO again (a mail client between messages), then
//!    stays silent. Connections come from several loopback source addresses (127.0.0.2
//!    onwards, `--idle-sources K`, by default enough that each uses at most 3/4 of
//!    `net.ipv4.ip_local_port_range`: one source address has only that many ports towards
//!    one server port), at most 100 in flight. Reported: the server's VmRSS before and
//!    after, VmHWM, the increase per session, the server's and the bench's CPU per session
//!    while connecting, the bench's own VmRSS (it holds a rustls client session per TLS
//!    connection), and the number of file descriptors the server holds. The bench raises
//!    `RLIMIT_NOFILE` for itself before it spawns the server, which inherits it; the idle
//!    servers get `[limits] max_sessions` and `max_sessions_per_ip` of N + 1,000 (at least
//!    20,000; the default 200 per IP would refuse the connections) and `[timeouts] command`
//!    and `session` of 2 h, so that the first sessions outlive minutes of TLS handshakes.
//! 3. **Postfix comparison** (`--postfix`, needs root): runs
//!    `/work/shared/bench/postfix-baseline.sh` with Postern as its relay under test
//!    (`RELAY_CMD`, `RELAY_PORT`, `EXTRA_CASES`, `CASES`, `RUNS`, `SCALE`). That script drives
//!    both Postfix and Postern with Postfix's `smtp-source` (plain SMTP, no AUTH, on Postern's
//!    relay port) and measures *delivered* mail at its `smtp-sink`, so here Postern delivers:
//!    `[delivery] relayhost = "[127.0.0.1]:2525"` with 20 workers, the same concurrency as
//!    Postfix's default destination concurrency. The bench prints the commands it ran, the
//!    rows of both servers and the Postern/Postfix ratios.
//!
//! The machine has 2 cores shared by server and client, and is shared with other users:
//! each case runs for a fixed window (`--duration`) after a warm-up, and the table shows the
//! client's CPU so that the share left to the server is visible.

use anyhow::{Context, Result, ensure};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;
use support::{admin, free_port};

/// Benchmarks the `postern` binary: submission throughput, latency, CPU and memory.
#[derive(Debug, Parser)]
#[command(name = "postern-bench")]
struct Options {
    /// Short smoke run: 2 s windows, 1,000 idle sessions, Postfix messages scaled by 0.1.
    #[arg(long)]
    quick: bool,
    /// Measurement window of each throughput case, in seconds [default: 10, --quick: 2].
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Warm-up before each window, in seconds [default: 1, --quick: 0.5].
    #[arg(long, value_name = "SECS")]
    warmup: Option<f64>,
    /// Concurrent sessions of the throughput cases.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 20, 100])]
    sessions: Vec<usize>,
    /// Body sizes (bytes) of the throughput cases.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 100_000])]
    sizes: Vec<usize>,
    /// Idle sessions to open; 0 skips the idle test [default: 10000, --quick: 1000].
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    /// Idle TLS sessions to open (EHLO, STARTTLS, EHLO, then silent); 0 skips them.
    #[arg(long, value_name = "N", default_value_t = 0)]
    idle_tls: usize,
    /// Loopback source addresses the idle connections are spread over (127.0.0.2 onwards)
    /// [default: enough for 3/4 of the ephemeral port range each].
    #[arg(long, value_name = "K")]
    idle_sources: Option<usize>,
    /// The server binary [default: `postern` next to this bench, i.e. target/release/postern].
    #[arg(long, value_name = "PATH")]
    postern: Option<PathBuf>,
    /// Directory for the temporary store, spools and logs [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Keep the temporary directory (server logs, configs) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// The server's `[log] level`.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// The server's `[spool] segment_max_bytes` [default: the server's default].
    #[arg(long, value_name = "BYTES")]
    segment_max: Option<u64>,
    /// Record a `perf` profile of the server during each throughput window into the work
    /// directory (implies --keep; the figures of a profiled run are perturbed).
    #[arg(long)]
    perf: bool,
    /// Skip the throughput cases (e.g. with --postfix only).
    #[arg(long)]
    no_throughput: bool,
    /// Also run the Postfix comparison through postfix-baseline.sh (root; installs Postfix).
    #[arg(long)]
    postfix: bool,
    /// The Postfix baseline script.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/work/shared/bench/postfix-baseline.sh"
    )]
    postfix_script: PathBuf,
    /// RUNS for the Postfix script (each cell is the median of this many runs).
    #[arg(long, default_value_t = 1)]
    postfix_runs: usize,
    /// SCALE for the Postfix script (messages per run = 10,000 × SCALE) [default: 1, --quick: 0.1].
    #[arg(long)]
    postfix_scale: Option<f64>,
}

/// Everything a case needs: the options, the server binary, the store and credentials.
struct Bench {
    bin: PathBuf,
    work: WorkDir,
    store: PathBuf,
    login: String,
    password: String,
    log_level: String,
    segment_max: Option<u64>,
    perf: bool,
    window: Duration,
    warmup: Duration,
}

/// The address the bench creates, authenticates as and sends from.
const LOGIN: &str = "bench@example.org";
/// The envelope and `To:` recipient (never delivered: `workers = 0`).
const RECIPIENT: &str = "rcpt@example.net";
/// Idle sessions: connections opened concurrently, at most this many at a time. Below the
/// server's listen backlog (4096), so that no SYN is dropped and retried after 1 s.
const IDLE_CONNECT_BATCH: usize = 100;
/// File descriptors beyond the idle sessions, for the bench and the server's own files.
const FD_HEADROOM: u64 = 4096;
/// The least headroom that will do (the server holds about 20 files of its own), when the
/// hard limit cannot be raised (no `CAP_SYS_RESOURCE`, e.g. in a container).
const FD_MIN_HEADROOM: u64 = 200;
const TARGET_MSGS_PER_SEC: f64 = 2_000.0;
const TARGET_IDLE_SESSIONS: usize = 10_000;
const TARGET_IDLE_TLS_SESSIONS: usize = 100_000;
const TARGET_IDLE_RSS_KIB: u64 = 1024 * 1024;

fn main() -> Result<()> {
    let opts = Options::parse();
    let idle = opts.idle.unwrap_or(if opts.quick { 1_000 } else { 10_000 });
    let bin = match &opts.postern {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("postern"),
    };
    ensure!(
        bin.is_file(),
        "{} not found: build it first with `cargo build --release`",
        bin.display()
    );
    warn_if_stale(&bin);
    // The client and the server each hold one descriptor per idle session.
    let sessions = idle.max(opts.idle_tls) as u64;
    let limit = procfs::raise_nofile(sessions + FD_HEADROOM, sessions + FD_MIN_HEADROOM)?;
    eprintln!(
        "RLIMIT_NOFILE {} -> {} (inherited by the server)",
        limit.0, limit.1
    );

    let work = WorkDir::create(opts.workdir.as_deref(), opts.keep || opts.perf)?;
    let store = work.path().join("store/postern.db");
    let password = provision(&bin, &work, &store)?;
    let seconds = |value: Option<f64>, normal: f64, quick: f64| {
        Duration::from_secs_f64(value.unwrap_or(if opts.quick { quick } else { normal }))
    };
    let bench = Bench {
        bin,
        store,
        login: LOGIN.to_string(),
        password,
        log_level: opts.log_level.clone(),
        segment_max: opts.segment_max,
        perf: opts.perf,
        window: seconds(opts.duration, 10.0, 2.0),
        warmup: seconds(opts.warmup, 1.0, 0.5),
        work,
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut cases = Vec::new();
    if !opts.no_throughput {
        for &size in &opts.sizes {
            for &sessions in &opts.sessions {
                let result = runtime
                    .block_on(throughput::run(&bench, size, sessions))
                    .with_context(|| format!("case {}", throughput::label(size, sessions)))?;
                eprintln!("  {}", result.summary());
                cases.push(result);
            }
        }
    }
    let mut idle_results = Vec::new();
    for (n, kind) in [
        (idle, idle::Kind::Greeting),
        (opts.idle_tls, idle::Kind::Tls),
    ] {
        if n == 0 {
            continue;
        }
        let sources = idle::Sources::new(n, opts.idle_sources)?;
        let result = runtime
            .block_on(idle::run(&bench, n, kind, &sources))
            .with_context(|| format!("idle sessions ({})", kind.label()))?;
        idle_results.push(result);
    }
    let comparison = if opts.postfix {
        let scale = opts
            .postfix_scale
            .unwrap_or(if opts.quick { 0.1 } else { 1.0 });
        Some(postfix::compare(
            &bench,
            &opts.postfix_script,
            opts.postfix_runs,
            scale,
        )?)
    } else {
        None
    };

    report::print(&bench, &cases, &idle_results, comparison.as_ref());
    Ok(())
}

/// Creates the address and a device with the admin CLI; returns the device password.
fn provision(bin: &Path, work: &WorkDir, store: &Path) -> Result<String> {
    let config = server::ConfigFile {
        submission: Some(free_port()?),
        store: store.to_path_buf(),
        spool: work.path().join("admin-spool"),
        ..server::ConfigFile::default()
    }
    .write(&work.path().join("admin.toml"))?;
    admin(bin, &config, &["address", "add", LOGIN])?;
    // The daily quota (500 for the default plan) is enforced on this path, as in production:
    // every RCPT is a real hold and every message a real commit in the embedded quota store.
    // The limit is raised so the window measures throughput, not the refusal.
    admin(
        bin,
        &config,
        &["limit", "set", LOGIN, "--daily", "4000000000"],
    )?;
    let out = admin(bin, &config, &["device", "add", LOGIN, "--name", "bench"])?;
    let password = out.lines().last().map(str::trim).unwrap_or_default();
    ensure!(
        !password.is_empty(),
        "`postern device add` printed no password"
    );
    Ok(password.to_string())
}

/// Warns when a source file is newer than the server binary (a forgotten `cargo build`).
fn warn_if_stale(bin: &Path) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(bin) else { return };
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            if path.is_dir() {
                stack.push(path);
            } else if modified(&path).is_some_and(|m| m > built) {
                eprintln!(
                    "warning: {} is newer than {}: run `cargo build --release`",
                    path.display(),
                    bin.display()
                );
                return;
            }
        }
    }
}

/// The temporary directory of one bench run; removed on drop unless kept.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create(parent: Option<&Path>, keep: bool) -> Result<Self> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let path = parent.join(format!("postern-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Starting and stopping the server under test, and reading its `/metrics`.
mod server {
    use super::{Bench, free_port};
    use anyhow::{Context, Result, bail};
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const READY_TIMEOUT: Duration = Duration::from_secs(30);
    const STOP_TIMEOUT: Duration = Duration::from_secs(40);

    /// The parts of `postern.toml` the bench varies; everything else keeps its default.
    #[derive(Debug, Clone)]
    pub(crate) struct ConfigFile {
        pub(crate) submission: Option<SocketAddr>,
        pub(crate) relay: Option<SocketAddr>,
        pub(crate) http: Option<SocketAddr>,
        pub(crate) store: PathBuf,
        pub(crate) spool: PathBuf,
        pub(crate) workers: usize,
        pub(crate) relayhost: Option<String>,
        pub(crate) segment_max: Option<u64>,
        pub(crate) log_level: String,
        /// `[limits] max_sessions` and `max_sessions_per_ip` (all clients are on loopback).
        pub(crate) max_sessions: usize,
        /// `[timeouts] command` and `session`, when the default would end idle sessions
        /// before a long connect phase is over.
        pub(crate) idle_timeout: Option<&'static str>,
    }

    /// The sessions a case's server admits: enough for every throughput case and the
    /// default idle test.
    pub(crate) const DEFAULT_MAX_SESSIONS: usize = 20_000;

    impl Default for ConfigFile {
        fn default() -> Self {
            Self {
                submission: None,
                relay: None,
                http: None,
                store: PathBuf::new(),
                spool: PathBuf::new(),
                workers: 0,
                relayhost: None,
                segment_max: None,
                log_level: "info".into(),
                max_sessions: DEFAULT_MAX_SESSIONS,
                idle_timeout: None,
            }
        }
    }

    impl ConfigFile {
        /// The TOML text; checked with Postern's own parser so that a config the server would
        /// refuse fails here with the key named.
        pub(crate) fn render(&self) -> Result<String> {
            let addr = |key: &str, a: Option<SocketAddr>| {
                a.map(|a| format!("{key} = \"{a}\"\n")).unwrap_or_default()
            };
            let relayhost = self
                .relayhost
                .as_ref()
                .map(|h| format!("relayhost = {h:?}\n"))
                .unwrap_or_default();
            let segment_max = self
                .segment_max
                .map(|b| format!("segment_max_bytes = {b}\n"))
                .unwrap_or_default();
            let timeouts = self
                .idle_timeout
                .map(|t| format!("[timeouts]\ncommand = {t:?}\nsession = {t:?}\n"))
                .unwrap_or_default();
            let text = format!(
                "# written by postern-bench\n\
                 [listen]\n{}{}{}\
                 [store]\npath = {:?}\n\
                 [spool]\npath = {:?}\n{segment_max}\
                 [delivery]\nworkers = {}\n{relayhost}\
                 [relay]\nnetworks = [\"127.0.0.0/8\"]\n\
                 [limits]\nmax_sessions = {max}\nmax_sessions_per_ip = {max}\n\
                 {timeouts}\
                 [log]\nlevel = {:?}\n",
                addr("submission", self.submission),
                addr("relay", self.relay),
                addr("http", self.http),
                self.store,
                self.spool,
                self.workers,
                self.log_level,
                max = self.max_sessions,
            );
            postern::config::Config::parse(&text)
                .map_err(|e| anyhow::anyhow!("bench config: {e}"))?;
            Ok(text)
        }

        /// Writes the config to `path` (creating its directory); returns the path.
        pub(crate) fn write(&self, path: &Path) -> Result<PathBuf> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, self.render()?)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(path.to_path_buf())
        }
    }

    /// A running `postern serve` with a submission and an HTTP listener.
    pub(crate) struct Server {
        child: tokio::process::Child,
        pid: u32,
        pub(crate) submission: SocketAddr,
        http: SocketAddr,
        dir: PathBuf,
        log: PathBuf,
    }

    impl Server {
        /// Starts a server with a fresh spool in `bench`'s work directory under `name`, and
        /// waits for `/readyz`.
        pub(crate) async fn start(bench: &Bench, name: &str) -> Result<Self> {
            Self::start_with(bench, name, DEFAULT_MAX_SESSIONS, None).await
        }

        /// [`Self::start`] with other session caps and idle timeouts (see [`ConfigFile`]).
        pub(crate) async fn start_with(
            bench: &Bench,
            name: &str,
            max_sessions: usize,
            idle_timeout: Option<&'static str>,
        ) -> Result<Self> {
            let dir = bench.work.path().join(name);
            let (submission, http) = (free_port()?, free_port()?);
            let config = ConfigFile {
                submission: Some(submission),
                http: Some(http),
                store: bench.store.clone(),
                spool: dir.join("spool"),
                workers: 0,
                segment_max: bench.segment_max,
                log_level: bench.log_level.clone(),
                max_sessions,
                idle_timeout,
                ..ConfigFile::default()
            }
            .write(&dir.join("postern.toml"))?;
            let log = dir.join("server.log");
            let child = tokio::process::Command::new(&bench.bin)
                .arg("--config")
                .arg(&config)
                .arg("serve")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", bench.bin.display()))?;
            let pid = child.id().context("server exited at once")?;
            let mut server = Self {
                child,
                pid,
                submission,
                http,
                dir,
                log,
            };
            server.wait_ready().await?;
            Ok(server)
        }

        pub(crate) fn pid(&self) -> u32 {
            self.pid
        }

        async fn wait_ready(&mut self) -> Result<()> {
            let deadline = Instant::now() + READY_TIMEOUT;
            while Instant::now() < deadline {
                if let Some(status) = self.child.try_wait()? {
                    bail!(
                        "server exited ({status}) during start:\n{}",
                        self.log_tail()
                    );
                }
                if let Ok((200, _)) = http_get(self.http, "/readyz").await {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            bail!(
                "server not ready after {READY_TIMEOUT:?}:\n{}",
                self.log_tail()
            )
        }

        /// The server's spool counters from `/metrics`.
        pub(crate) async fn counters(&self) -> Result<Counters> {
            let (status, body) = http_get(self.http, "/metrics").await?;
            if status != 200 {
                bail!("/metrics answered {status}");
            }
            Ok(Counters::parse(&body))
        }

        /// SIGTERM, wait for the exit, delete the spool (keep config and log with --keep).
        pub(crate) async fn stop(mut self) -> Result<()> {
            // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
            let status = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
                Ok(status) => status?,
                Err(_) => bail!("server did not stop within {STOP_TIMEOUT:?}"),
            };
            if !status.success() {
                bail!("server exited with {status}:\n{}", self.log_tail());
            }
            let _ = std::fs::remove_dir_all(self.dir.join("spool"));
            Ok(())
        }

        fn log_tail(&self) -> String {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
    }

    /// Group-commit counters of the spool.
    #[derive(Debug, Clone, Copy, Default)]
    pub(crate) struct Counters {
        /// Group commits (each one write and one fsync).
        pub(crate) commits: f64,
        /// Messages those commits carried.
        pub(crate) committed: f64,
        /// Messages in the spool now.
        pub(crate) spooled: f64,
    }

    impl Counters {
        fn parse(text: &str) -> Self {
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                    .unwrap_or(0.0)
            };
            Self {
                commits: value("postern_spool_commit_batch_messages_count"),
                committed: value("postern_spool_commit_batch_messages_sum"),
                spooled: value("postern_spool_messages"),
            }
        }

        /// Messages per group commit between `self` and a later sample.
        pub(crate) fn batch_until(&self, later: &Counters) -> Option<f64> {
            let commits = later.commits - self.commits;
            (commits > 0.0).then(|| (later.committed - self.committed) / commits)
        }
    }

    /// `perf record` attached to the server for the length of a measurement window.
    pub(crate) struct Profile {
        child: std::process::Child,
        path: PathBuf,
    }

    impl Profile {
        pub(crate) fn start(pid: u32, path: PathBuf) -> Result<Self> {
            let child = std::process::Command::new("perf")
                .args([
                    "record",
                    "--quiet",
                    "-F",
                    "299",
                    "--call-graph",
                    "dwarf,16384",
                    "-p",
                ])
                .arg(pid.to_string())
                .arg("-o")
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("starting perf (apt-get install linux-perf)")?;
            Ok(Self { child, path })
        }

        /// Stops the recording (SIGINT, as perf expects) and waits for the file.
        pub(crate) fn finish(mut self) -> Result<PathBuf> {
            // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
            self.child.wait()?;
            Ok(self.path)
        }
    }

    /// A one-shot HTTP/1.1 GET; returns the status and the body.
    async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response)).await??;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("malformed HTTP response")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("malformed HTTP status line")?;
        Ok((status, body.to_string()))
    }
}

/// A minimal SMTP client: replies, pipelined transactions, STARTTLS and AUTH PLAIN.
mod smtp {
    use anyhow::{Context, Result, bail, ensure};
    use base64::Engine;
    use std::net::{IpAddr, SocketAddr};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
    use tokio::net::{TcpSocket, TcpStream};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    /// Longest wait for any reply; a stalled server fails the case instead of hanging it.
    const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

    /// One SMTP connection, plain or TLS.
    pub(crate) struct Client<S> {
        io: BufReader<S>,
        line: Vec<u8>,
    }

    /// A pre-built message: the pipelined envelope commands, then the data with its dot.
    pub(crate) struct Message {
        envelope: Vec<u8>,
        data: Vec<u8>,
    }

    impl Message {
        /// A message from `from` with a body of `body_len` bytes (78-character lines).
        pub(crate) fn new(from: &str, to: &str, body_len: usize) -> Self {
            let envelope = format!("MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n").into_bytes();
            let data = super::support::message_data(from, to, "postern-bench", body_len);
            Self { envelope, data }
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
        fn new(stream: S) -> Self {
            Self {
                io: BufReader::with_capacity(4096, stream),
                line: Vec::with_capacity(512),
            }
        }

        /// Reads one (possibly multi-line) reply; returns its code and last line.
        async fn reply(&mut self) -> Result<(u16, String)> {
            loop {
                self.line.clear();
                let read = self.io.read_until(b'\n', &mut self.line);
                let n = tokio::time::timeout(REPLY_TIMEOUT, read)
                    .await
                    .context("reply timed out")??;
                ensure!(n > 0, "connection closed by the server");
                let line = String::from_utf8_lossy(&self.line);
                let code = line.get(..3).and_then(|c| c.parse().ok());
                let Some(code) = code else {
                    bail!("malformed reply line {line:?}")
                };
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok((code, line.trim_end().to_string()));
                }
            }
        }

        /// Reads a reply and insists on `code`.
        async fn expect(&mut self, code: u16) -> Result<String> {
            let (got, text) = self.reply().await?;
            ensure!(got == code, "expected {code}, got {text:?}");
            Ok(text)
        }

        async fn send(&mut self, bytes: &[u8]) -> Result<()> {
            let stream = self.io.get_mut();
            stream.write_all(bytes).await?;
            stream.flush().await?;
            Ok(())
        }

        async fn command(&mut self, line: &str, code: u16) -> Result<String> {
            self.send(format!("{line}\r\n").as_bytes()).await?;
            self.expect(code).await
        }

        /// One transaction, MAIL/RCPT/DATA pipelined; returns the time from the written
        /// final dot to the final `250`.
        pub(crate) async fn send_message(&mut self, message: &Message) -> Result<Duration> {
            self.send(&message.envelope).await?;
            self.expect(250).await.context("MAIL FROM")?;
            self.expect(250).await.context("RCPT TO")?;
            self.expect(354).await.context("DATA")?;
            self.send(&message.data).await?;
            let dot = Instant::now();
            self.expect(250).await.context("end of data")?;
            Ok(dot.elapsed())
        }

        /// Says QUIT and waits for the `221` (errors ignored: the work was already done).
        pub(crate) async fn quit(mut self) {
            let _ = self.command("QUIT", 221).await;
        }
    }

    impl<S: AsyncRead> Client<S> {
        /// The stream, once no reply is left unread.
        pub(crate) fn into_stream(self) -> Result<S> {
            ensure!(
                self.io.buffer().is_empty(),
                "unexpected bytes after the reply"
            );
            Ok(self.io.into_inner())
        }
    }

    impl Client<TcpStream> {
        /// Connects and reads the `220` greeting.
        pub(crate) async fn connect(addr: SocketAddr) -> Result<Self> {
            Self::connect_from(addr, None).await
        }

        /// [`Self::connect`] from the local address `source` (port chosen by the kernel):
        /// one source address has only the ephemeral port range's ports towards one server
        /// port.
        pub(crate) async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> Result<Self> {
            let tcp = match source {
                None => TcpStream::connect(addr).await?,
                Some(ip) => {
                    let socket = match ip {
                        IpAddr::V4(_) => TcpSocket::new_v4()?,
                        IpAddr::V6(_) => TcpSocket::new_v6()?,
                    };
                    socket
                        .bind(SocketAddr::new(ip, 0))
                        .with_context(|| format!("binding {ip}"))?;
                    socket.connect(addr).await?
                }
            };
            tcp.set_nodelay(true)?;
            let mut client = Self::new(tcp);
            client.expect(220).await.context("greeting")?;
            Ok(client)
        }

        /// EHLO, STARTTLS, EHLO from `source`: a TLS session that has said hello and now
        /// waits for MAIL or AUTH, as an idle mail client's does.
        pub(crate) async fn idle_tls(
            addr: SocketAddr,
            source: Option<IpAddr>,
            tls: &TlsConnector,
        ) -> Result<TlsStream<TcpStream>> {
            let mut plain = Self::connect_from(addr, source).await?;
            plain.command("EHLO client.bench.test", 250).await?;
            plain.command("STARTTLS", 220).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let tcp = plain.into_stream()?;
            let stream = tls.connect(name, tcp).await.context("TLS handshake")?;
            // A small reader: 100,000 of these live in the bench at once.
            let mut client = Client {
                io: BufReader::with_capacity(512, stream),
                line: Vec::new(),
            };
            client.command("EHLO client.bench.test", 250).await?;
            client.into_stream()
        }

        /// EHLO, STARTTLS, EHLO, AUTH PLAIN: a session ready for mail.
        pub(crate) async fn submission(
            addr: SocketAddr,
            tls: &TlsConnector,
            login: &str,
            password: &str,
        ) -> Result<Client<TlsStream<TcpStream>>> {
            let mut plain = Self::connect(addr).await?;
            plain.command("EHLO client.bench.test", 250).await?;
            plain.command("STARTTLS", 220).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let tcp = plain.into_stream()?;
            let mut client = Client::new(tls.connect(name, tcp).await.context("TLS handshake")?);
            client.command("EHLO client.bench.test", 250).await?;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{login}\0{password}"));
            client
                .command(&format!("AUTH PLAIN {token}"), 235)
                .await
                .context("AUTH PLAIN")?;
            Ok(client)
        }
    }
}

/// `/proc` and resource limits.
mod procfs {
    use anyhow::{Context, Result, bail};
    use std::time::Duration;

    /// `utime + stime` of a process, all threads.
    pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the parenthesised command name (which may contain spaces); utime and
        // stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
            + fields.get(12).context("no stime")?.parse::<u64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(Duration::from_secs_f64(ticks as f64 / hz))
    }

    /// Resident set size now and at its peak (KiB), and the number of threads.
    #[derive(Debug, Clone, Copy, Default)]
    pub(crate) struct Memory {
        pub(crate) rss_kib: u64,
        pub(crate) hwm_kib: u64,
        pub(crate) threads: u64,
    }

    pub(crate) fn memory(pid: u32) -> Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .context(name.to_string())?;
            Ok(line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()?)
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
            threads: field("Threads:")?,
        })
    }

    /// File descriptors the process holds.
    pub(crate) fn open_fds(pid: u32) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
    }

    /// Raises the soft (and if needed the hard) `RLIMIT_NOFILE` to at least `want`, or to
    /// the hard limit when that cannot be raised but is at least `need`; returns the soft
    /// limit before and after.
    pub(crate) fn raise_nofile(want: u64, need: u64) -> Result<(u64, u64)> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        let before = limit.rlim_cur;
        if before >= want {
            return Ok((before, before));
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: limit.rlim_max.max(want),
        };
        // SAFETY: as above; raising the hard limit needs CAP_SYS_RESOURCE and fails cleanly.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok((before, want));
        }
        let hard = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above; the soft limit may always rise to the hard one.
        if limit.rlim_max < need || unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &hard) } != 0 {
            bail!(
                "cannot raise RLIMIT_NOFILE to {want} (hard limit {}): {}; run as root or \
                 `ulimit -n {want}` first, or pass a smaller --idle or --idle-tls",
                limit.rlim_max,
                std::io::Error::last_os_error()
            );
        }
        Ok((before, limit.rlim_max))
    }
}

/// Throughput cases: N authenticated TLS sessions sending back to back.
mod throughput {
    use super::procfs::{self, Memory};
    use super::server::{Profile, Server};
    use super::smtp::{Client, Message};
    use super::support::percentile;
    use super::{Bench, RECIPIENT};
    use anyhow::{Context, Result};
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::task::JoinSet;
    use tokio_rustls::TlsConnector;

    /// What one case measured.
    pub(crate) struct CaseResult {
        pub(crate) size: usize,
        pub(crate) sessions: usize,
        pub(crate) messages: u64,
        pub(crate) window: Duration,
        pub(crate) p50: Duration,
        pub(crate) p99: Duration,
        pub(crate) server_cpu: Duration,
        pub(crate) client_cpu: Duration,
        pub(crate) memory: Memory,
        pub(crate) per_commit: Option<f64>,
        pub(crate) spooled: u64,
        pub(crate) profile: Option<PathBuf>,
    }

    impl CaseResult {
        pub(crate) fn rate(&self) -> f64 {
            self.messages as f64 / self.window.as_secs_f64()
        }

        pub(crate) fn server_us_per_msg(&self) -> f64 {
            self.server_cpu.as_secs_f64() * 1e6 / self.messages.max(1) as f64
        }

        pub(crate) fn cores(&self, cpu: Duration) -> f64 {
            cpu.as_secs_f64() / self.window.as_secs_f64()
        }

        pub(crate) fn summary(&self) -> String {
            format!(
                "{:<10} {:>8.0} msg/s  p50 {:>6.2} ms  p99 {:>6.2} ms  server {:>5.0} µs/msg ({:.2} cores)  client {:.2} cores  RSS {} MiB",
                label(self.size, self.sessions),
                self.rate(),
                millis(self.p50),
                millis(self.p99),
                self.server_us_per_msg(),
                self.cores(self.server_cpu),
                self.cores(self.client_cpu),
                self.memory.rss_kib / 1024,
            )
        }
    }

    pub(crate) fn label(size: usize, sessions: usize) -> String {
        let size = if size >= 1000 {
            format!("{}k", size / 1000)
        } else {
            format!("{size}B")
        };
        format!("{size}-s{sessions}")
    }

    pub(crate) fn millis(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    /// The measurement window, shared by every session of a case.
    #[derive(Clone, Copy)]
    struct Window {
        start: Instant,
        end: Instant,
    }

    /// Messages whose final `250` arrived inside the window, and their latencies.
    #[derive(Default)]
    struct Tally {
        latencies: Vec<Duration>,
    }

    pub(crate) async fn run(bench: &Bench, size: usize, sessions: usize) -> Result<CaseResult> {
        let name = format!("case-{}", label(size, sessions));
        eprintln!("{name}: starting server, {sessions} sessions (STARTTLS + AUTH PLAIN)");
        let server = Server::start(bench, &name).await?;
        let profile = bench
            .perf
            .then(|| bench.work.path().join(format!("{name}.perf.data")));
        let result = measure(bench, &server, size, sessions, profile).await;
        server.stop().await?;
        result
    }

    async fn measure(
        bench: &Bench,
        server: &Server,
        size: usize,
        sessions: usize,
        profile: Option<PathBuf>,
    ) -> Result<CaseResult> {
        let tls = TlsConnector::from(postern::delivery::tls::opportunistic_client_config()?);
        let mut connecting = JoinSet::new();
        for _ in 0..sessions {
            let (tls, login, password) = (tls.clone(), bench.login.clone(), bench.password.clone());
            let addr = server.submission;
            connecting
                .spawn(async move { Client::submission(addr, &tls, &login, &password).await });
        }
        let mut clients = Vec::with_capacity(sessions);
        while let Some(client) = connecting.join_next().await {
            clients.push(client??);
        }

        let message = Arc::new(Message::new(&bench.login, RECIPIENT, size));
        let start = Instant::now() + bench.warmup;
        let window = Window {
            start,
            end: start + bench.window,
        };
        let mut load = JoinSet::new();
        for mut client in clients {
            let message = message.clone();
            load.spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < window.end {
                    let latency = client.send_message(&message).await?;
                    let done = Instant::now();
                    if done >= window.start && done < window.end {
                        tally.latencies.push(latency);
                    }
                }
                client.quit().await;
                anyhow::Ok(tally)
            });
        }

        tokio::time::sleep_until(window.start.into()).await;
        let profile = profile
            .map(|path| Profile::start(server.pid(), path))
            .transpose()?;
        let (server0, client0) = (
            procfs::cpu_time(server.pid())?,
            super::support::own_cpu_time(),
        );
        let counters0 = server.counters().await?;
        tokio::time::sleep_until(window.end.into()).await;
        let (server1, client1) = (
            procfs::cpu_time(server.pid())?,
            super::support::own_cpu_time(),
        );
        let memory = procfs::memory(server.pid())?;
        let counters1 = server.counters().await?;

        let mut latencies = Vec::new();
        while let Some(tally) = load.join_next().await {
            latencies.extend(tally?.context("session")?.latencies);
        }
        let profile = profile.map(Profile::finish).transpose()?;
        latencies.sort_unstable();
        Ok(CaseResult {
            size,
            sessions,
            messages: latencies.len() as u64,
            window: window.end - window.start,
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            server_cpu: server1.saturating_sub(server0),
            client_cpu: client1.saturating_sub(client0),
            memory,
            per_commit: counters0.batch_until(&counters1),
            spooled: counters1.spooled as u64,
            profile,
        })
    }
}

/// Idle sessions: connections that read the greeting (or also do EHLO, STARTTLS, EHLO) and
/// then say nothing.
mod idle {
    use super::procfs::{self, Memory};
    use super::server::{DEFAULT_MAX_SESSIONS, Server};
    use super::smtp::Client;
    use super::{Bench, IDLE_CONNECT_BATCH};
    use anyhow::{Context, Result, ensure};
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;
    use tokio::task::JoinSet;
    use tokio_rustls::TlsConnector;

    /// Settling time before memory is read (allocator and kernel bookkeeping).
    const SETTLE: Duration = Duration::from_secs(2);
    /// `[timeouts] command` and `session` of the idle servers: 100,000 TLS handshakes take
    /// minutes, longer than the default 5-minute command timeout would let the first
    /// sessions wait.
    const IDLE_TIMEOUT: &str = "2h";
    /// Sessions the server admits beyond those the bench opens.
    const SESSION_MARGIN: usize = 1_000;

    /// What an idle session did before falling silent.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Kind {
        /// Read the `220` greeting.
        Greeting,
        /// Greeting, EHLO, STARTTLS, TLS handshake, EHLO.
        Tls,
    }

    impl Kind {
        pub(crate) fn label(self) -> &'static str {
            match self {
                Kind::Greeting => "greeting",
                Kind::Tls => "tls+ehlo",
            }
        }
    }

    /// The loopback addresses the client connects from, 127.0.0.2 onwards: towards one
    /// server port, each source address has at most the ephemeral port range's ports.
    pub(crate) struct Sources {
        pub(crate) addrs: Vec<IpAddr>,
    }

    impl Sources {
        /// `count` addresses, or by default enough that none needs more than 3/4 of the
        /// port range for `sessions`.
        pub(crate) fn new(sessions: usize, count: Option<usize>) -> Result<Self> {
            let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                .context("reading ip_local_port_range")?;
            let ports: Vec<usize> = range
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .context("malformed ip_local_port_range")?;
            ensure!(ports.len() == 2, "malformed ip_local_port_range {range:?}");
            let port_range = ports[1].saturating_sub(ports[0]) + 1;
            let per_source = (port_range * 3 / 4).max(1);
            let count = count.unwrap_or(sessions.div_ceil(per_source)).max(1);
            ensure!(
                count <= 250,
                "{count} source addresses: at most 250 (127.0.0.2-127.0.0.251)"
            );
            ensure!(
                sessions.div_ceil(count) <= port_range,
                "{sessions} sessions over {count} source addresses exceed {port_range} ports each"
            );
            let addrs = (0..count)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
                .collect();
            Ok(Self { addrs })
        }

        fn for_session(&self, index: usize) -> IpAddr {
            self.addrs[index % self.addrs.len()]
        }
    }

    pub(crate) struct IdleResult {
        pub(crate) kind: Kind,
        pub(crate) sessions: usize,
        pub(crate) sources: usize,
        pub(crate) before: Memory,
        pub(crate) after: Memory,
        /// The bench's own memory before the connections and with all of them open.
        pub(crate) client: (Memory, Memory),
        pub(crate) fds: usize,
        pub(crate) fd_limit: String,
        pub(crate) connect_time: Duration,
        /// Server and client CPU while the connections were opened.
        pub(crate) connect_cpu: (Duration, Duration),
    }

    impl IdleResult {
        pub(crate) fn kib_per_session(&self) -> f64 {
            self.after.rss_kib.saturating_sub(self.before.rss_kib) as f64 / self.sessions as f64
        }

        pub(crate) fn client_kib_per_session(&self) -> f64 {
            self.client.1.rss_kib.saturating_sub(self.client.0.rss_kib) as f64
                / self.sessions as f64
        }
    }

    pub(crate) async fn run(
        bench: &Bench,
        sessions: usize,
        kind: Kind,
        sources: &Sources,
    ) -> Result<IdleResult> {
        eprintln!(
            "idle ({}): starting server, opening {sessions} connections from {} source addresses",
            kind.label(),
            sources.addrs.len()
        );
        let name = format!("idle-{}", kind.label().replace('+', "-"));
        let max_sessions = (sessions + SESSION_MARGIN).max(DEFAULT_MAX_SESSIONS);
        let server = Server::start_with(bench, &name, max_sessions, Some(IDLE_TIMEOUT)).await?;
        let result = measure(&server, sessions, kind, sources).await;
        server.stop().await?;
        let result = result?;
        eprintln!(
            "  idle ({}): {} sessions in {:.1} s, server VmRSS {} -> {} MiB ({:.1} KiB/session), \
             client {:.1} KiB/session, {} fds",
            kind.label(),
            result.sessions,
            result.connect_time.as_secs_f64(),
            result.before.rss_kib / 1024,
            result.after.rss_kib / 1024,
            result.kib_per_session(),
            result.client_kib_per_session(),
            result.fds
        );
        Ok(result)
    }

    /// An open idle connection, kept until the measurement is done.
    enum Held {
        Plain(#[allow(dead_code)] tokio::net::TcpStream),
        Tls(#[allow(dead_code)] Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    }

    async fn open(
        addr: std::net::SocketAddr,
        source: IpAddr,
        kind: Kind,
        tls: TlsConnector,
    ) -> Result<Held> {
        Ok(match kind {
            Kind::Greeting => Held::Plain(
                Client::connect_from(addr, Some(source))
                    .await?
                    .into_stream()?,
            ),
            Kind::Tls => Held::Tls(Box::new(Client::idle_tls(addr, Some(source), &tls).await?)),
        })
    }

    async fn measure(
        server: &Server,
        sessions: usize,
        kind: Kind,
        sources: &Sources,
    ) -> Result<IdleResult> {
        let tls = TlsConnector::from(postern::delivery::tls::opportunistic_client_config()?);
        tokio::time::sleep(SETTLE).await;
        let before = procfs::memory(server.pid())?;
        let client_before = procfs::memory(std::process::id())?;
        let cpu0 = (
            procfs::cpu_time(server.pid())?,
            super::support::own_cpu_time(),
        );
        let started = std::time::Instant::now();
        let mut held = Vec::with_capacity(sessions);
        // At most IDLE_CONNECT_BATCH connections in flight: a new one starts as one is done.
        let mut connecting = JoinSet::new();
        let mut started_count = 0;
        while held.len() < sessions {
            while started_count < sessions && connecting.len() < IDLE_CONNECT_BATCH {
                let source = sources.for_session(started_count);
                connecting.spawn(open(server.submission, source, kind, tls.clone()));
                started_count += 1;
            }
            let opened = connecting
                .join_next()
                .await
                .context("no connection in flight")?;
            held.push(opened?.with_context(|| format!("session {}", held.len() + 1))?);
            if held.len() % 10_000 == 0 {
                eprintln!(
                    "  {} open after {:.1} s",
                    held.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        let connect_time = started.elapsed();
        let cpu1 = (
            procfs::cpu_time(server.pid())?,
            super::support::own_cpu_time(),
        );
        let connect_cpu = (cpu1.0.saturating_sub(cpu0.0), cpu1.1.saturating_sub(cpu0.1));
        tokio::time::sleep(SETTLE).await;
        let after = procfs::memory(server.pid())?;
        let client_after = procfs::memory(std::process::id())?;
        let fds = procfs::open_fds(server.pid())?;
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid()))?;
        let fd_limit = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| {
                l.split_whitespace()
                    .skip(3)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default();
        drop(held);
        Ok(IdleResult {
            kind,
            sessions,
            sources: sources.addrs.len(),
            before,
            after,
            client: (client_before, client_after),
            fds,
            fd_limit,
            connect_time,
            connect_cpu,
        })
    }
}

/// The Postfix comparison through `postfix-baseline.sh`.
mod postfix {
    use super::server::ConfigFile;
    use super::{Bench, free_port};
    use anyhow::{Context, Result, bail, ensure};
    use std::collections::HashMap;
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// The script's sink, which Postern relays to.
    const SINK: &str = "[127.0.0.1]:2525";
    /// Postfix's default destination concurrency, used as Postern's delivery workers.
    const WORKERS: usize = 20;

    /// One comparison: a Postfix case of the script and the same load on Postern.
    pub(crate) struct Pair {
        pub(crate) postfix: &'static str,
        pub(crate) postern: String,
        client: &'static str,
        pub(crate) sessions: usize,
    }

    const PAIRS: [(&str, &str, usize); 3] = [
        ("plain-1k-r1-s20", "smtp-source", 20),
        ("plain-1k-r1-s100", "smtp-source", 100),
        ("plain-1k-r1-s20-reuse", "smtp-source-d", 20),
    ];

    /// Figures of one row of the script's table.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Row {
        pub(crate) accepted: f64,
        pub(crate) delivered: f64,
        pub(crate) mta_us_per_msg: f64,
        pub(crate) mta_cores: f64,
        pub(crate) error: bool,
    }

    pub(crate) struct Comparison {
        pub(crate) pairs: Vec<Pair>,
        pub(crate) rows: HashMap<String, Row>,
        pub(crate) commands: Vec<String>,
        pub(crate) table: String,
    }

    pub(crate) fn compare(
        bench: &Bench,
        script: &Path,
        runs: usize,
        scale: f64,
    ) -> Result<Comparison> {
        // SAFETY: geteuid has no preconditions.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "--postfix needs root (the script configures Postfix)"
        );
        ensure!(script.is_file(), "{} not found", script.display());
        let dir = bench.work.path().join("postfix");
        let relay = free_port()?;
        let config = ConfigFile {
            relay: Some(relay),
            store: bench.store.clone(),
            spool: dir.join("spool"),
            workers: WORKERS,
            relayhost: Some(SINK.to_string()),
            segment_max: bench.segment_max,
            log_level: bench.log_level.clone(),
            ..ConfigFile::default()
        }
        .write(&dir.join("postern.toml"))?;

        let messages = ((10_000.0 * scale) as usize).max(10);
        let pairs: Vec<Pair> = PAIRS
            .iter()
            .map(|&(postfix, client, sessions)| Pair {
                postfix,
                postern: postfix.replacen("plain", "postern", 1),
                client,
                sessions,
            })
            .collect();
        let cases: String = pairs
            .iter()
            .map(|p| {
                format!(
                    "{}|{}|{}|{}|{messages}|1000|1|pfb_relay\n",
                    p.postern,
                    p.client,
                    relay.port(),
                    p.sessions
                )
            })
            .collect();
        let cases_file = dir.join("postern-cases.txt");
        std::fs::write(&cases_file, &cases)?;
        let labels: Vec<&str> = pairs
            .iter()
            .flat_map(|p| [p.postfix, p.postern.as_str()])
            .collect();
        let relay_cmd = format!(
            "{} --config {} serve",
            bench.bin.display(),
            config.display()
        );
        let mut env = vec![
            ("RUNS", runs.to_string()),
            ("SCALE", scale.to_string()),
            ("CASES", labels.join(",")),
            ("RELAY_CMD", relay_cmd),
            ("RELAY_PORT", relay.port().to_string()),
            ("EXTRA_CASES", cases_file.display().to_string()),
        ];
        let installed = ["postfix", "smtp-source", "smtp-sink", "opendkim"]
            .iter()
            .all(|b| Path::new("/usr/sbin").join(b).is_file());
        if installed {
            env.push(("NO_INSTALL", "1".into()));
        }
        let command = format!(
            "{} bash {}",
            env.iter()
                .map(|(k, v)| format!("{k}='{v}'"))
                .collect::<Vec<_>>()
                .join(" "),
            script.display()
        );
        eprintln!("postfix: {command}");
        let output = Command::new("bash")
            .arg(script)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .context("running the Postfix script")?;
        let table = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!("{} failed ({}):\n{table}", script.display(), output.status);
        }
        let rows = parse_table(&table)?;
        for label in &labels {
            ensure!(
                rows.contains_key(*label),
                "the script's table has no row {label}:\n{table}"
            );
        }
        Ok(Comparison {
            pairs,
            rows,
            commands: vec![
                command,
                format!("# {}:\n{}", cases_file.display(), cases.trim_end()),
            ],
            table,
        })
    }

    /// Reads the script's Markdown table into rows by case label.
    fn parse_table(table: &str) -> Result<HashMap<String, Row>> {
        let mut lines = table.lines().filter(|l| l.starts_with('|'));
        let cells = |l: &str| -> Vec<String> {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        };
        let header = cells(lines.next().context("no table in the script's output")?);
        let column = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("no column {name:?}"))
        };
        let (case, acc, del, us, cores) = (
            column("case")?,
            column("accepted msg/s")?,
            column("delivered msg/s")?,
            column("MTA CPU µs/msg")?,
            column("MTA cores")?,
        );
        let mut rows = HashMap::new();
        for line in lines.skip(1) {
            let c = cells(line);
            let number = |i: usize| c.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            let Some(label) = c.get(case) else { continue };
            let error = label.ends_with("(ERR)");
            let label = label.trim_end_matches("(ERR)").trim().to_string();
            rows.insert(
                label,
                Row {
                    accepted: number(acc),
                    delivered: number(del),
                    mta_us_per_msg: number(us),
                    mta_cores: number(cores),
                    error,
                },
            );
        }
        Ok(rows)
    }
}

/// The Markdown output.
mod report {
    use super::idle::{IdleResult, Kind};
    use super::postfix::Comparison;
    use super::throughput::{CaseResult, label, millis};
    use super::{
        Bench, TARGET_IDLE_RSS_KIB, TARGET_IDLE_SESSIONS, TARGET_IDLE_TLS_SESSIONS,
        TARGET_MSGS_PER_SEC,
    };

    const MIB: f64 = 1024.0;

    pub(crate) fn print(
        bench: &Bench,
        cases: &[CaseResult],
        idle: &[IdleResult],
        postfix: Option<&Comparison>,
    ) {
        println!("{}", machine());
        if !cases.is_empty() {
            print_cases(bench, cases);
        }
        if !idle.is_empty() {
            print_idle(idle);
        }
        print_targets(cases, idle);
        if let Some(comparison) = postfix {
            print_postfix(comparison);
        }
    }

    fn print_cases(bench: &Bench, cases: &[CaseResult]) {
        println!(
            "\n### Submission over STARTTLS + AUTH PLAIN, reused connections, MAIL/RCPT/DATA pipelined\n\n\
             Window {:.1} s per case after {:.1} s warm-up; `[delivery] workers = 0` (acceptance only); \
             `[spool] segment_max_bytes` = {}; body bytes + ~200 B of headers; latency = written final dot -> `250`; \
             RSS, threads and spooled messages at the end of the window.\n",
            bench.window.as_secs_f64(),
            bench.warmup.as_secs_f64(),
            bench
                .segment_max
                .map_or("default".to_string(), |b| b.to_string()),
        );
        println!(
            "| case | body B | sessions | msgs | accepted msg/s | p50 ms | p99 ms | server CPU µs/msg | server cores | client cores | VmRSS MiB | VmHWM MiB | threads | spooled | msgs/fsync |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for c in cases {
            println!(
                "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} | {} |",
                label(c.size, c.sessions),
                c.size,
                c.sessions,
                c.messages,
                c.rate(),
                millis(c.p50),
                millis(c.p99),
                c.server_us_per_msg(),
                c.cores(c.server_cpu),
                c.cores(c.client_cpu),
                c.memory.rss_kib as f64 / MIB,
                c.memory.hwm_kib as f64 / MIB,
                c.memory.threads,
                c.spooled,
                c.per_commit.map_or("-".into(), |b| format!("{b:.1}")),
            );
        }
        let profiles: Vec<String> = cases
            .iter()
            .filter_map(|c| c.profile.as_ref())
            .map(|p| p.display().to_string())
            .collect();
        if !profiles.is_empty() {
            println!(
                "\nProfiles (`perf report --no-children -i FILE`):\n\n```\n{}\n```",
                profiles.join("\n")
            );
        }
    }

    fn print_idle(results: &[IdleResult]) {
        println!(
            "\n### Idle sessions (greeting: TCP connected, 220 read; tls+ehlo: EHLO, STARTTLS, EHLO; then silent)\n"
        );
        println!(
            "| kind | sessions | sources | connect s | server CPU µs/session | client CPU µs/session | VmRSS before MiB | VmRSS after MiB | VmHWM MiB | KiB/session | client VmRSS MiB | client KiB/session | server fds | server NOFILE soft/hard |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for idle in results {
            let per_session =
                |cpu: std::time::Duration| cpu.as_secs_f64() * 1e6 / idle.sessions as f64;
            println!(
                "| {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
                idle.kind.label(),
                idle.sessions,
                idle.sources,
                idle.connect_time.as_secs_f64(),
                per_session(idle.connect_cpu.0),
                per_session(idle.connect_cpu.1),
                idle.before.rss_kib as f64 / MIB,
                idle.after.rss_kib as f64 / MIB,
                idle.after.hwm_kib as f64 / MIB,
                idle.kib_per_session(),
                idle.client.1.rss_kib as f64 / MIB,
                idle.client_kib_per_session(),
                idle.fds,
                idle.fd_limit,
            );
        }
        let largest = results
            .iter()
            .max_by_key(|r| r.sessions)
            .expect("one result");
        println!(
            "\nThe server needs `RLIMIT_NOFILE` >= sessions + {} (listeners, spool, store, log): \
             set e.g. `LimitNOFILE={}` for {} sessions.",
            largest.fds.saturating_sub(largest.sessions),
            (largest.fds + 1024).next_power_of_two().max(65_536),
            largest.sessions,
        );
    }

    fn print_targets(cases: &[CaseResult], idle: &[IdleResult]) {
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let mut lines = Vec::new();
        if let Some(c) = cases.iter().find(|c| c.size == 1000 && c.sessions == 100) {
            lines.push(format!(
                "- 1 KB messages, 100 sessions over reused TLS: {:.0} msg/s (target >= {TARGET_MSGS_PER_SEC:.0}): {}",
                c.rate(),
                verdict(c.rate() >= TARGET_MSGS_PER_SEC)
            ));
        }
        for i in idle {
            let (target, what) = match i.kind {
                Kind::Greeting => (TARGET_IDLE_SESSIONS, "idle sessions"),
                Kind::Tls => (TARGET_IDLE_TLS_SESSIONS, "idle TLS sessions"),
            };
            // Extrapolated linearly when fewer sessions than the target were opened.
            let projected = i.before.rss_kib as f64 + i.kib_per_session() * target as f64;
            let note = if i.sessions == target {
                String::new()
            } else {
                format!(" (extrapolated from {} sessions)", i.sessions)
            };
            lines.push(format!(
                "- {target} {what}: {:.0} MiB VmRSS{note} (target < 1024 MiB): {}",
                projected / MIB,
                verdict(projected < TARGET_IDLE_RSS_KIB as f64)
            ));
        }
        if !lines.is_empty() {
            println!("\n### Targets\n\n{}", lines.join("\n"));
        }
    }

    fn print_postfix(c: &Comparison) {
        println!(
            "\n### Postern vs Postfix (postfix-baseline.sh, plain SMTP from smtp-source, delivery to smtp-sink)\n"
        );
        println!(
            "| load | sessions | Postfix accepted/s | Postern accepted/s | ratio | Postfix delivered/s | Postern delivered/s | ratio | Postfix µs/msg | Postern µs/msg | Postfix cores | Postern cores |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}x", a / b)
            } else {
                "-".into()
            }
        };
        for p in &c.pairs {
            let (Some(f), Some(n)) = (c.rows.get(p.postfix), c.rows.get(&p.postern)) else {
                continue;
            };
            let err = if f.error || n.error { " (ERR)" } else { "" };
            println!(
                "| {}{err} | {} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.2} | {:.2} |",
                p.postfix.trim_start_matches("plain-"),
                p.sessions,
                f.accepted,
                n.accepted,
                ratio(n.accepted, f.accepted),
                f.delivered,
                n.delivered,
                ratio(n.delivered, f.delivered),
                f.mta_us_per_msg,
                n.mta_us_per_msg,
                f.mta_cores,
                n.mta_cores,
            );
        }
        println!("\nCommands:\n\n```\n{}\n```", c.commands.join("\n"));
        println!("\nThe script's own table:\n\n{}", c.table.trim_end());
    }

    /// One line about the machine and its load at the end of the run.
    fn machine() -> String {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        format!(
            "## postern-bench\n\n{cores} cores; load average at the end {}",
            load.join(" ")
        )
    }
}
