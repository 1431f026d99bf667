//! `postern-race`: Postern, Postfix and Haraka doing the same submission work on this machine,
//! driven by the same Rust load client in one invocation, delivered to the same sink.
//!
//! # Run (root: packages, /etc/postfix, cgroups)
//! ```text
//! cargo build --release
//! target/release/postern-race --quick              # every case once, 3 s windows: a few minutes
//! target/release/postern-race --runs 3             # 10 s windows, medians of 3: about 25 minutes
//! ```
//! The peers are installed, configured, started and stopped by `benches/race-setup.sh` (next to
//! this file; `--setup PATH`), which says exactly how each is configured.
//!
//! # The work, for each server
//! Authenticated submission: EHLO, STARTTLS, EHLO, AUTH PLAIN with the same user and device
//! password, then MAIL/RCPT/DATA (pipelined in one write when the server advertises PIPELINING)
//! and the data with its final dot in one write. Every reply code is checked exactly. The
//! server signs with an RSA-2048 DKIM key, counts the sender against a quota, and relays to
//! the sink, a process of this bench (`--sink-only`) that counts the messages and how many
//! arrived with a `DKIM-Signature:` header.
//! - Postern: `postern serve`, submission listener, embedded store and quotas, an active DKIM
//!   key (`postern dkim generate --activate`), the RSA-2048 TLS pair the peers serve, spool
//!   fsync before every `250`, 100 delivery workers to `relayhost` = the sink. `postern-redis`: the same with `[quota] backend =
//!   "redis"` and a redis-server of its own (no persistence, as Haraka's), in its cgroup.
//! - Postfix: see race-setup.sh (TLS required, Dovecot SASL, opendkim milter, relayhost).
//! - Haraka: see race-setup.sh (tls, auth/flat_file, dkim, limit in Redis, smtp_forward).
//!   Haraka has no durable queue on this path: it answers `250` after the sink did.
//!
//! # What is measured
//! Cases: body size × concurrent sessions × connection mode (`reuse`: one TLS session per
//! client session, messages back to back; `conn`: a new connection, STARTTLS and AUTH for
//! every message). For each case, each run and each server in turn (interleaved, so that
//! the machine's other load falls on all three alike):
//! - *accepted msg/s*: final `250`s that arrived inside the window, over the window.
//! - *delivered msg/s*: messages the sink counted inside the window, over the window.
//! - *p50 / p99*: from the written final dot to the final `250`, inside the window.
//! - *server µs/msg*: CPU of the server's cgroup (every process: Postfix's daemons, Dovecot and
//!   opendkim; Haraka's node processes and its Redis; Postern) from the first connect until
//!   the sink has every accepted message, divided by the messages accepted in that span.
//!   Client µs/msg likewise, from this process's `getrusage`.
//! - *PSS*: memory of the server's processes at the end of the window, the sum of their
//!   proportional set sizes (`/proc/PID/smaps_rollup`), so that pages shared by Postfix's
//!   daemons or Haraka's workers count once. VmRSS summed over processes would count them
//!   once per process.
//! - *resumed*: share of TLS handshakes that resumed a session (rustls keeps tickets, as a
//!   mail client does).
//!
//! Each cell of the table is the median over `--runs`. The machine is shared: figures are noisy.

use anyhow::{Context, Result, ensure};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;

/// Postern against Postfix and Haraka on the same authenticated submission work.
#[derive(Debug, Parser)]
#[command(name = "postern-race")]
struct Options {
    /// Every case once with 3 s windows (a few minutes).
    #[arg(long)]
    quick: bool,
    /// Runs per case and server; each table cell is the median [default: 3, --quick: 1].
    #[arg(long)]
    runs: Option<usize>,
    /// Measurement window in seconds [default: 10, --quick: 3].
    #[arg(long)]
    duration: Option<f64>,
    /// Warm-up before each window in seconds [default: 1, --quick: 0.5].
    #[arg(long)]
    warmup: Option<f64>,
    /// Body sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 100_000])]
    sizes: Vec<usize>,
    /// Concurrent sessions.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 20, 100])]
    sessions: Vec<usize>,
    /// Connection modes: `reuse` (one TLS session per client session) and `conn` (a new
    /// connection, STARTTLS and AUTH per message).
    #[arg(long, value_delimiter = ',', default_values_t = [Mode::Reuse, Mode::Conn])]
    modes: Vec<Mode>,
    /// Servers to run, in this order within each run.
    #[arg(long, value_delimiter = ',', default_values_t = [Peer::Postern, Peer::PosternRedis, Peer::Postfix, Peer::Haraka])]
    servers: Vec<Peer>,
    /// The peers' setup script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/race-setup.sh"))]
    setup: PathBuf,
    /// Skip `race-setup.sh install` (apt-get, npm).
    #[arg(long)]
    no_install: bool,
    /// The Postern binary [default: `postern` next to this bench].
    #[arg(long)]
    postern: Option<PathBuf>,
    /// Keep Postern's work directory (config, store, log).
    #[arg(long)]
    keep: bool,
    /// The sink's address (the peers' relayhost).
    #[arg(long, default_value = "127.0.0.1:2625")]
    sink: SocketAddr,
    /// Internal: run only the counting sink on this address.
    #[arg(long, hide = true)]
    sink_only: Option<SocketAddr>,
}

/// How a client session uses its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Reuse,
    Conn,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Reuse => "reuse",
            Mode::Conn => "conn",
        })
    }
}

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Peer {
    /// Quotas in the embedded store.
    Postern,
    /// The same with `[quota] backend = "redis"` (its own redis-server, in its cgroup).
    PosternRedis,
    Postfix,
    Haraka,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Postern => "postern",
            Peer::PosternRedis => "postern-redis",
            Peer::Postfix => "postfix",
            Peer::Haraka => "haraka",
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

const LOGIN: &str = "bench@example.org";
const RECIPIENT: &str = "rcpt@example.net";
/// The ports race-setup.sh configures by default.
const POSTFIX_PORT: u16 = 10687;
const HARAKA_PORT: u16 = 10787;
/// Longest wait for the sink to receive every accepted message after a window.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

fn main() -> Result<()> {
    let opts = Options::parse();
    if let Some(addr) = opts.sink_only {
        return sink::serve(addr);
    }
    ensure!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "run as root (packages, /etc/postfix, cgroups)"
    );
    let plan = Plan::from(&opts);
    let cg = cgroup::Cgroups::create(&[
        "race_postern",
        "race_postern_redis",
        "race_postfix",
        "race_haraka",
        "race_sink",
    ])?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rig = rig::Rig::start(&opts, &cg, &runtime)?;
    let result = runtime.block_on(plan.run(&rig));
    let commands = std::mem::take(&mut rig.commands);
    drop(rig); // stops the servers and the sink, also when a case failed
    report::print(&plan, &result?, &commands);
    Ok(())
}

/// The cases, their order and the window lengths.
struct Plan {
    cases: Vec<Case>,
    servers: Vec<Peer>,
    runs: usize,
    window: Duration,
    warmup: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    size: usize,
    sessions: usize,
    mode: Mode,
}

impl Case {
    fn label(&self) -> String {
        let size = if self.size >= 1000 {
            format!("{}k", self.size / 1000)
        } else {
            format!("{}B", self.size)
        };
        format!("{size}-s{}-{}", self.sessions, self.mode)
    }
}

impl Plan {
    fn from(opts: &Options) -> Self {
        let secs = |v: Option<f64>, normal: f64, quick: f64| {
            Duration::from_secs_f64(v.unwrap_or(if opts.quick { quick } else { normal }))
        };
        let mut cases = Vec::new();
        for &size in &opts.sizes {
            for &mode in &opts.modes {
                for &sessions in &opts.sessions {
                    cases.push(Case {
                        size,
                        sessions,
                        mode,
                    });
                }
            }
        }
        Self {
            cases,
            servers: opts.servers.clone(),
            runs: opts.runs.unwrap_or(if opts.quick { 1 } else { 3 }).max(1),
            window: secs(opts.duration, 10.0, 3.0),
            warmup: secs(opts.warmup, 1.0, 0.5),
        }
    }

    async fn run(&self, rig: &rig::Rig<'_>) -> Result<Vec<report::Row>> {
        let mut rows = Vec::new();
        for case in &self.cases {
            let mut runs: Vec<Vec<load::Measured>> = vec![Vec::new(); self.servers.len()];
            for run in 1..=self.runs {
                for (i, &peer) in self.servers.iter().enumerate() {
                    let target = rig.target(peer);
                    let m = load::measure(rig, &target, case, self.warmup, self.window)
                        .await
                        .with_context(|| format!("{} {} run {run}", case.label(), peer))?;
                    eprintln!(
                        "  {:<16} {:<8} run {run}: {}",
                        case.label(),
                        peer,
                        m.summary()
                    );
                    runs[i].push(m);
                }
            }
            for (i, &peer) in self.servers.iter().enumerate() {
                rows.push(report::Row::median(*case, peer, &runs[i]));
            }
        }
        Ok(rows)
    }
}

/// CPU accounting per server: one cgroup each (v2 `cpu.stat`, or v1 `cpuacct`).
mod cgroup {
    use anyhow::{Context, Result, bail};
    use std::path::PathBuf;
    use std::time::Duration;

    pub(crate) struct Cgroups {
        root: PathBuf,
        v2: bool,
        names: Vec<String>,
    }

    impl Cgroups {
        pub(crate) fn create(names: &[&str]) -> Result<Self> {
            let (root, v2) = if PathBuf::from("/sys/fs/cgroup/cgroup.controllers").exists() {
                (PathBuf::from("/sys/fs/cgroup"), true)
            } else if PathBuf::from("/sys/fs/cgroup/cpuacct/cpuacct.usage").exists() {
                (PathBuf::from("/sys/fs/cgroup/cpuacct"), false)
            } else {
                bail!("neither cgroup v2 nor a v1 cpuacct hierarchy is mounted")
            };
            for name in names {
                let dir = root.join(name);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating cgroup {}", dir.display()))?;
            }
            Ok(Self {
                root,
                v2,
                names: names.iter().map(|n| n.to_string()).collect(),
            })
        }

        /// The file a process writes its PID to in order to join `name`.
        pub(crate) fn procs(&self, name: &str) -> PathBuf {
            self.root.join(name).join("cgroup.procs")
        }

        /// CPU used by every process that ever ran in `name`.
        pub(crate) fn cpu(&self, name: &str) -> Result<Duration> {
            let dir = self.root.join(name);
            if self.v2 {
                let text = std::fs::read_to_string(dir.join("cpu.stat"))?;
                parse_cpu_stat(&text).context("no usage_usec in cpu.stat")
            } else {
                let text = std::fs::read_to_string(dir.join("cpuacct.usage"))?;
                Ok(Duration::from_nanos(text.trim().parse()?))
            }
        }

        /// Sum of the proportional set sizes (KiB) of the processes now in `name`: pages
        /// shared between processes (Postfix's daemons, Haraka's workers) count once in all.
        pub(crate) fn pss_kib(&self, name: &str) -> u64 {
            let Ok(pids) = std::fs::read_to_string(self.procs(name)) else {
                return 0;
            };
            pids.lines()
                .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
                .filter_map(|rollup| parse_kib(&rollup, "Pss:"))
                .sum()
        }
    }

    impl Drop for Cgroups {
        fn drop(&mut self) {
            // Only empty groups can be removed; a leftover process keeps its group.
            for name in &self.names {
                let _ = std::fs::remove_dir(self.root.join(name));
            }
        }
    }

    pub(crate) fn parse_cpu_stat(text: &str) -> Option<Duration> {
        text.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_micros)
    }

    /// The KiB figure of the `field` line (e.g. `Pss:`) of a /proc file.
    pub(crate) fn parse_kib(text: &str, field: &str) -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(field))?;
        line[field.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }
}

/// The servers and the sink: started before the cases, stopped after.
mod rig {
    use super::cgroup::Cgroups;
    use super::support::{admin, free_port};
    use super::{HARAKA_PORT, LOGIN, Options, POSTFIX_PORT, Peer};
    use anyhow::{Context, Result, bail, ensure};
    use std::net::{SocketAddr, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Where the load goes for one server, and whose CPU it is.
    pub(crate) struct Target {
        pub(crate) addr: SocketAddr,
        pub(crate) cgroup: &'static str,
    }

    pub(crate) struct Rig<'a> {
        pub(crate) cg: &'a Cgroups,
        pub(crate) sink: SocketAddr,
        pub(crate) password: String,
        pub(crate) commands: Vec<String>,
        setup: PathBuf,
        postern_addr: SocketAddr,
        postern_redis_addr: SocketAddr,
        sink_child: Option<Child>,
        children: Vec<Child>,
        started: Vec<Peer>,
        work: PathBuf,
        keep: bool,
    }

    impl<'a> Rig<'a> {
        pub(crate) fn start(
            opts: &Options,
            cg: &'a Cgroups,
            runtime: &tokio::runtime::Runtime,
        ) -> Result<Self> {
            let bin = match &opts.postern {
                Some(p) => p.clone(),
                None => std::env::current_exe()?.with_file_name("postern"),
            };
            ensure!(
                bin.is_file(),
                "{} not found: cargo build --release",
                bin.display()
            );
            let work = std::env::temp_dir().join(format!("postern-race-{}", std::process::id()));
            std::fs::create_dir_all(&work)?;
            let (postern_addr, postern_redis_addr) = (free_port()?, free_port()?);
            let mut rig = Self {
                cg,
                sink: opts.sink,
                password: String::new(),
                commands: Vec::new(),
                setup: opts.setup.clone(),
                postern_addr,
                postern_redis_addr,
                sink_child: None,
                children: Vec::new(),
                started: Vec::new(),
                work,
                keep: opts.keep,
            };
            for port in [opts.sink.port(), POSTFIX_PORT, HARAKA_PORT] {
                ensure!(
                    TcpStream::connect(("127.0.0.1", port)).is_err(),
                    "127.0.0.1:{port} is in use: stop whatever listens there"
                );
            }
            let me = std::env::current_exe()?;
            rig.sink_child = Some(
                rig.spawn_in(
                    "race_sink",
                    Command::new(&me)
                        .arg("--sink-only")
                        .arg(opts.sink.to_string()),
                    None,
                )?,
            );
            wait_port(opts.sink, Duration::from_secs(10))?;

            // The RSA-2048 pair Postfix and Haraka serve, made before Postern needs it.
            rig.script("tls", None)?;
            let tls = race_tls_pair();
            let config = rig.work.join("postern.toml");
            let store = rig.work.join("store");
            std::fs::write(
                &config,
                postern_config(&rig.work, &store, postern_addr, opts.sink, None, &tls),
            )?;
            let admin = |args: &[&str]| admin(&bin, &config, args);
            admin(&["address", "add", LOGIN])?;
            // The quota is enforced on this path as in production; raised so it never refuses.
            admin(&["limit", "set", LOGIN, "--daily", "4000000000"])?;
            let out = admin(&["device", "add", LOGIN, "--name", "race"])?;
            rig.password = out.lines().last().unwrap_or_default().trim().to_string();
            ensure!(
                !rig.password.is_empty(),
                "`postern device add` printed no password"
            );
            let domain = LOGIN.split('@').nth(1).unwrap_or_default();
            admin(&[
                "dkim",
                "generate",
                domain,
                "--selector",
                "race",
                "--activate",
            ])?;

            if opts.servers.contains(&Peer::Postern) {
                rig.start_postern(&bin, &config, "race_postern", postern_addr)?;
                rig.started.push(Peer::Postern);
            }
            if opts.servers.contains(&Peer::PosternRedis) {
                // Its own copy of the provisioned store, so the two servers share no file.
                let store2 = rig.work.join("store-redis");
                std::fs::create_dir_all(&store2)?;
                for entry in std::fs::read_dir(&store)? {
                    let entry = entry?;
                    if entry.file_type()?.is_file() {
                        std::fs::copy(entry.path(), store2.join(entry.file_name()))?;
                    }
                }
                let redis = free_port()?;
                let mut cmd = Command::new("redis-server");
                // As Haraka's Redis: no persistence (race-setup.sh starts it the same way).
                cmd.args([
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--port",
                ])
                .arg(redis.port().to_string());
                let child = rig.spawn_in("race_postern_redis", &mut cmd, None)?;
                rig.children.push(child);
                wait_port(redis, Duration::from_secs(10))?;
                let work2 = rig.work.join("redis");
                std::fs::create_dir_all(&work2)?;
                let config2 = work2.join("postern.toml");
                let text = postern_config(
                    &work2,
                    &store2,
                    postern_redis_addr,
                    opts.sink,
                    Some(redis),
                    &tls,
                );
                std::fs::write(&config2, text)?;
                rig.start_postern(&bin, &config2, "race_postern_redis", postern_redis_addr)?;
                rig.started.push(Peer::PosternRedis);
            }
            let peers: Vec<Peer> = opts
                .servers
                .iter()
                .copied()
                .filter(|p| matches!(p, Peer::Postfix | Peer::Haraka))
                .collect();
            if !peers.is_empty() {
                if !opts.no_install {
                    rig.script("install", None)?;
                }
                rig.script("configure", None)?;
            }
            for peer in peers {
                rig.script(&format!("start-{peer}"), Some(rig.target_cgroup(peer)))?;
                rig.started.push(peer);
            }
            runtime.block_on(super::load::sanity(&rig))?;
            Ok(rig)
        }

        fn target_cgroup(&self, peer: Peer) -> &'static str {
            match peer {
                Peer::Postern => "race_postern",
                Peer::PosternRedis => "race_postern_redis",
                Peer::Postfix => "race_postfix",
                Peer::Haraka => "race_haraka",
            }
        }

        pub(crate) fn target(&self, peer: Peer) -> Target {
            let addr = match peer {
                Peer::Postern => self.postern_addr,
                Peer::PosternRedis => self.postern_redis_addr,
                Peer::Postfix => SocketAddr::from(([127, 0, 0, 1], POSTFIX_PORT)),
                Peer::Haraka => SocketAddr::from(([127, 0, 0, 1], HARAKA_PORT)),
            };
            Target {
                addr,
                cgroup: self.target_cgroup(peer),
            }
        }

        fn start_postern(
            &mut self,
            bin: &Path,
            config: &Path,
            group: &str,
            addr: SocketAddr,
        ) -> Result<()> {
            let mut cmd = Command::new(bin);
            cmd.arg("--config").arg(config).arg("serve");
            self.commands.push(format!(
                "{} --config {} serve",
                bin.display(),
                config.display()
            ));
            let log = config.with_file_name("postern.log");
            let child = self.spawn_in(group, &mut cmd, Some(&log))?;
            self.children.push(child);
            wait_port(addr, Duration::from_secs(30))
        }

        pub(crate) fn started(&self) -> &[Peer] {
            &self.started
        }

        /// Runs `CMD` as a member of cgroup `group`: a shell joins the group, then execs it, so
        /// every process it starts is accounted there too.
        fn spawn_in(&self, group: &str, cmd: &mut Command, log: Option<&Path>) -> Result<Child> {
            let mut wrapped = Command::new("/bin/sh");
            wrapped
                .arg("-c")
                .arg("echo $$ > \"$0\" && exec \"$@\"")
                .arg(self.cg.procs(group))
                .arg(cmd.get_program())
                .args(cmd.get_args())
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            if let Some(log) = log {
                wrapped.stderr(std::fs::File::create(log)?);
            }
            wrapped
                .spawn()
                .with_context(|| format!("starting {:?}", cmd.get_program()))
        }

        /// `race-setup.sh STEP`, in `group` when given.
        fn script(&mut self, step: &str, group: Option<&str>) -> Result<()> {
            let mut cmd = Command::new("bash");
            cmd.arg(&self.setup)
                .arg(step)
                .env("RACE_PASSWORD", &self.password)
                .env("RACE_SINK", self.sink.to_string())
                .env("RACE_USER", LOGIN);
            self.commands.push(format!(
                "RACE_SINK={} RACE_USER={LOGIN} RACE_PASSWORD=… bash {} {step}",
                self.sink,
                self.setup.display()
            ));
            let status = match group {
                Some(g) => {
                    let mut wrapped = Command::new("/bin/sh");
                    wrapped
                        .arg("-c")
                        .arg("echo $$ > \"$0\" && exec \"$@\"")
                        .arg(self.cg.procs(g))
                        .arg("bash")
                        .arg(&self.setup)
                        .arg(step)
                        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
                    wrapped.status()?
                }
                None => cmd.status()?,
            };
            if !status.success() {
                bail!("race-setup.sh {step}: {status}");
            }
            Ok(())
        }

        pub(crate) fn stop(&mut self) {
            for peer in std::mem::take(&mut self.started) {
                if matches!(peer, Peer::Postfix | Peer::Haraka) {
                    let _ = self.script(&format!("stop-{peer}"), None);
                }
            }
            // Postern first (it may still deliver to the sink), its Redis after it.
            for child in std::mem::take(&mut self.children) {
                stop_child(child);
            }
            if let Some(child) = self.sink_child.take() {
                stop_child(child);
            }
            if self.keep {
                eprintln!("kept {}", self.work.display());
            } else {
                let _ = std::fs::remove_dir_all(&self.work);
            }
        }
    }

    impl Drop for Rig<'_> {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn stop_child(mut child: Child) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The certificate and key `race-setup.sh tls` makes for all three servers (under
    /// `RACE_STATE`, as the script), so that Postern serves the same RSA-2048 chain as Postfix
    /// and Haraka instead of its ECDSA development certificate.
    fn race_tls_pair() -> (PathBuf, PathBuf) {
        let state = std::env::var_os("RACE_STATE")
            .map_or_else(|| PathBuf::from("/var/tmp/postern-race"), PathBuf::from);
        (state.join("tls.pem"), state.join("tls.key"))
    }

    /// Postern's config: submission (STARTTLS with the RSA-2048 pair of [`race_tls_pair`]),
    /// embedded store and quotas, default spool (fsync before 250), 100 workers and 100
    /// transactions at once to the sink (the operator's own relay host, tuned as in
    /// benches/README.md; the defaults are 32 and 20). The failed-login brake keeps its
    /// defaults: 100 sessions logging in at once from 127.0.0.1 wait for each other's checks.
    fn postern_config(
        work: &Path,
        store: &Path,
        submission: SocketAddr,
        sink: SocketAddr,
        redis: Option<SocketAddr>,
        (cert, key): &(PathBuf, PathBuf),
    ) -> String {
        let quota = redis
            .map(|r| format!("[quota]\nbackend = \"redis\"\nredis_url = \"redis://{r}/\"\n"))
            .unwrap_or_default();
        format!(
            "# written by postern-race\n\
             [listen]\nsubmission = \"{submission}\"\n\
             [tls]\ncert = {cert:?}\nkey = {key:?}\n\
             [store]\npath = {:?}\n\
             [spool]\npath = {:?}\n\
             [delivery]\nworkers = 100\nmax_per_destination = 100\nrelayhost = \"[{}]:{}\"\n\
             [limits]\nmax_sessions = 20000\nmax_sessions_per_ip = 20000\n\
             [log]\nlevel = \"info\"\n{quota}",
            store.join("postern.db"),
            work.join("spool"),
            sink.ip(),
            sink.port(),
        )
    }

    fn wait_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if TcpStream::connect(addr).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nothing listens on {addr} after {timeout:?}")
    }
}

/// The counting sink: accepts every message, answers `XCOUNT` with its counters.
mod sink {
    use anyhow::Result;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
    use tokio::net::TcpStream;

    static MESSAGES: AtomicU64 = AtomicU64::new(0);
    static SIGNED: AtomicU64 = AtomicU64::new(0);

    pub(crate) fn serve(addr: SocketAddr) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            loop {
                let (tcp, _) = listener.accept().await?;
                tokio::spawn(async move {
                    let _ = session(tcp).await;
                });
            }
        })
    }

    async fn session(tcp: TcpStream) -> std::io::Result<()> {
        tcp.set_nodelay(true)?;
        let (read, write) = tcp.into_split();
        let mut input = BufReader::with_capacity(64 * 1024, read);
        let mut out = BufWriter::new(write);
        out.write_all(b"220 sink ESMTP\r\n").await?;
        out.flush().await?;
        let mut line = Vec::with_capacity(1024);
        let (mut in_data, mut in_header, mut signed) = (false, false, false);
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            if in_data {
                if line == b".\r\n" {
                    in_data = false;
                    MESSAGES.fetch_add(1, Ordering::Relaxed);
                    if signed {
                        SIGNED.fetch_add(1, Ordering::Relaxed);
                    }
                    out.write_all(b"250 2.0.0 counted\r\n").await?;
                } else if in_header {
                    if line == b"\r\n" {
                        in_header = false;
                    } else if line.len() > 15 && line[..15].eq_ignore_ascii_case(b"DKIM-Signature:")
                    {
                        signed = true;
                    }
                }
            } else {
                let verb = line
                    .iter()
                    .take_while(|b| b.is_ascii_alphabetic())
                    .map(u8::to_ascii_uppercase)
                    .collect::<Vec<u8>>();
                match &verb[..] {
                    b"EHLO" => {
                        out.write_all(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE\r\n")
                            .await?
                    }
                    b"DATA" => {
                        (in_data, in_header, signed) = (true, true, false);
                        out.write_all(b"354 go on\r\n").await?
                    }
                    b"QUIT" => {
                        out.write_all(b"221 bye\r\n").await?;
                        out.flush().await?;
                        return Ok(());
                    }
                    b"XCOUNT" => {
                        let reply = format!(
                            "250 {} {}\r\n",
                            MESSAGES.load(Ordering::Relaxed),
                            SIGNED.load(Ordering::Relaxed)
                        );
                        out.write_all(reply.as_bytes()).await?
                    }
                    b"HELO" | b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => {
                        out.write_all(b"250 ok\r\n").await?
                    }
                    _ => out.write_all(b"502 5.5.1 not here\r\n").await?,
                }
            }
            // Pipelined commands are answered together: flush once nothing more is buffered.
            if input.buffer().is_empty() {
                out.flush().await?;
            }
        }
    }

    /// The counters in the text of an `XCOUNT` reply (after `250 `): messages, and how many
    /// of them arrived DKIM-signed.
    pub(crate) fn parse_count(text: &str) -> Option<(u64, u64)> {
        let mut words = text.split_whitespace();
        let messages = words.next()?.parse().ok()?;
        let signed = words.next()?.parse().ok()?;
        Some((messages, signed))
    }
}

/// The load client: sessions over STARTTLS + AUTH PLAIN, pipelined when offered.
mod load {
    use super::rig::{Rig, Target};
    use super::support::percentile;
    use super::{Case, DRAIN_TIMEOUT, LOGIN, Mode, RECIPIENT};
    use anyhow::{Context, Result, bail, ensure};
    use base64::Engine;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

    /// What one run of one case measured for one server.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Measured {
        pub(crate) accepted_rate: f64,
        pub(crate) delivered_rate: f64,
        pub(crate) p50_ms: f64,
        pub(crate) p99_ms: f64,
        pub(crate) server_us_per_msg: f64,
        pub(crate) server_cores: f64,
        pub(crate) client_us_per_msg: f64,
        pub(crate) client_cores: f64,
        pub(crate) pss_mib: f64,
        pub(crate) resumed: f64,
        pub(crate) errors: u64,
        pub(crate) undelivered: u64,
        pub(crate) unsigned: u64,
        pub(crate) first_error: Option<String>,
    }

    impl Measured {
        pub(crate) fn summary(&self) -> String {
            format!(
                "accepted {:>6.0}/s delivered {:>6.0}/s p50 {:>7.2} ms p99 {:>7.2} ms server {:>6.0} µs/msg ({:.2} cores) client {:.2} cores PSS {:.0} MiB{}{}{}",
                self.accepted_rate,
                self.delivered_rate,
                self.p50_ms,
                self.p99_ms,
                self.server_us_per_msg,
                self.server_cores,
                self.client_cores,
                self.pss_mib,
                if self.errors > 0 {
                    format!(
                        " ERRORS {} ({})",
                        self.errors,
                        self.first_error.as_deref().unwrap_or("")
                    )
                } else {
                    String::new()
                },
                if self.undelivered > 0 {
                    format!(" UNDELIVERED {}", self.undelivered)
                } else {
                    String::new()
                },
                if self.unsigned > 0 {
                    format!(" UNSIGNED {}", self.unsigned)
                } else {
                    String::new()
                },
            )
        }
    }

    /// The sink's counters: (messages, DKIM-signed messages).
    pub(crate) async fn sink_count(sink: SocketAddr) -> Result<(u64, u64)> {
        let mut c = Client::connect(sink).await?;
        c.send(b"XCOUNT\r\n").await?;
        let (code, lines) = c.reply().await?;
        ensure!(code == 250, "sink XCOUNT: {lines:?}");
        super::sink::parse_count(lines.last().map(String::as_str).unwrap_or_default())
            .context("malformed XCOUNT reply")
    }

    /// One message through every started server: it must arrive at the sink, signed.
    pub(crate) async fn sanity(rig: &Rig<'_>) -> Result<()> {
        let tls = TlsConnector::from(postern::delivery::tls::opportunistic_client_config()?);
        let message = Message::new(LOGIN, RECIPIENT, 1000);
        for &peer in rig.started() {
            let target = rig.target(peer);
            let before = sink_count(rig.sink).await?;
            let (mut client, _) = Client::submission(target.addr, &tls, &rig.password)
                .await
                .with_context(|| format!("sanity: {peer} submission"))?;
            client
                .send_message(&message)
                .await
                .with_context(|| format!("sanity: {peer}"))?;
            client.quit().await;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let now = sink_count(rig.sink).await?;
                if now.0 > before.0 {
                    ensure!(
                        now.1 > before.1,
                        "sanity: {peer} delivered the message without a DKIM-Signature"
                    );
                    break;
                }
                if Instant::now() > deadline {
                    bail!("sanity: {peer} accepted a message the sink never received");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            eprintln!(
                "sanity: {peer}: STARTTLS, AUTH PLAIN, 250, delivered to the sink with DKIM-Signature"
            );
        }
        Ok(())
    }

    #[derive(Default)]
    struct Tally {
        latencies: Vec<Duration>,
        accepted_total: u64,
        handshakes: u64,
        resumed: u64,
        errors: u64,
        first_error: Option<String>,
    }

    pub(crate) async fn measure(
        rig: &Rig<'_>,
        target: &Target,
        case: &Case,
        warmup: Duration,
        window: Duration,
    ) -> Result<Measured> {
        let tls = TlsConnector::from(postern::delivery::tls::opportunistic_client_config()?);
        let message = Arc::new(Message::new(LOGIN, RECIPIENT, case.size));
        let sink0 = sink_count(rig.sink).await?;
        let cpu0 = rig.cg.cpu(target.cgroup)?;
        let own0 = super::support::own_cpu_time();
        let t0 = Instant::now();
        let start = t0 + warmup;
        let end = start + window;

        let mut sessions = tokio::task::JoinSet::new();
        for _ in 0..case.sessions {
            let (tls, message, password) = (tls.clone(), message.clone(), rig.password.clone());
            let (addr, mode) = (target.addr, case.mode);
            sessions.spawn(async move {
                let mut tally = Tally::default();
                let mut client = None;
                while Instant::now() < end {
                    let step = async {
                        if client.is_none() {
                            let (c, resumed) = Client::submission(addr, &tls, &password).await?;
                            tally.handshakes += 1;
                            tally.resumed += u64::from(resumed);
                            client = Some(c);
                        }
                        let c = client.as_mut().expect("connected above");
                        c.send_message(&message).await
                    };
                    match step.await {
                        Ok(latency) => {
                            tally.accepted_total += 1;
                            let done = Instant::now();
                            if done >= start && done < end {
                                tally.latencies.push(latency);
                            }
                            if mode == Mode::Conn
                                && let Some(c) = client.take()
                            {
                                c.quit().await;
                            }
                        }
                        Err(e) => {
                            tally.errors += 1;
                            tally.first_error.get_or_insert_with(|| format!("{e:#}"));
                            client = None;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                if let Some(c) = client {
                    c.quit().await;
                }
                tally
            });
        }

        tokio::time::sleep_until(start.into()).await;
        let sink_start = sink_count(rig.sink).await?;
        tokio::time::sleep_until(end.into()).await;
        let sink_end = sink_count(rig.sink).await?;
        let pss_kib = rig.cg.pss_kib(target.cgroup);

        let mut all = Tally::default();
        while let Some(t) = sessions.join_next().await {
            let t = t?;
            all.latencies.extend(t.latencies);
            all.accepted_total += t.accepted_total;
            all.handshakes += t.handshakes;
            all.resumed += t.resumed;
            all.errors += t.errors;
            if all.first_error.is_none() {
                all.first_error = t.first_error;
            }
        }
        // Until the sink has everything this run had accepted: the work of a message ends there.
        let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut sink1 = sink_count(rig.sink).await?;
        while sink1.0 - sink0.0 < all.accepted_total && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sink1 = sink_count(rig.sink).await?;
        }
        let span = t0.elapsed().as_secs_f64();
        let cpu = rig
            .cg
            .cpu(target.cgroup)?
            .saturating_sub(cpu0)
            .as_secs_f64();
        let own = super::support::own_cpu_time()
            .saturating_sub(own0)
            .as_secs_f64();
        let delivered = sink1.0 - sink0.0;
        let signed = sink1.1 - sink0.1;
        all.latencies.sort_unstable();
        let per_msg = |secs: f64| secs * 1e6 / all.accepted_total.max(1) as f64;
        Ok(Measured {
            accepted_rate: all.latencies.len() as f64 / window.as_secs_f64(),
            delivered_rate: (sink_end.0 - sink_start.0) as f64 / window.as_secs_f64(),
            p50_ms: percentile(&all.latencies, 0.50).as_secs_f64() * 1e3,
            p99_ms: percentile(&all.latencies, 0.99).as_secs_f64() * 1e3,
            server_us_per_msg: per_msg(cpu),
            server_cores: cpu / span,
            client_us_per_msg: per_msg(own),
            client_cores: own / span,
            pss_mib: pss_kib as f64 / 1024.0,
            resumed: if all.handshakes > 0 {
                all.resumed as f64 / all.handshakes as f64
            } else {
                0.0
            },
            errors: all.errors,
            undelivered: all.accepted_total.saturating_sub(delivered),
            unsigned: delivered.saturating_sub(signed),
            first_error: all.first_error,
        })
    }

    /// A pre-built message: the envelope commands, then the data with its final dot.
    pub(crate) struct Message {
        mail: Vec<u8>,
        rcpt: Vec<u8>,
        data: Vec<u8>,
    }

    impl Message {
        pub(crate) fn new(from: &str, to: &str, body_len: usize) -> Self {
            let data = super::support::message_data(from, to, "postern-race", body_len);
            Self {
                mail: format!("MAIL FROM:<{from}>\r\n").into_bytes(),
                rcpt: format!("RCPT TO:<{to}>\r\n").into_bytes(),
                data,
            }
        }
    }

    /// One SMTP connection, plain or TLS.
    pub(crate) struct Client<S> {
        io: BufReader<S>,
        line: Vec<u8>,
        pipelining: bool,
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
        fn new(stream: S) -> Self {
            Self {
                io: BufReader::with_capacity(16 * 1024, stream),
                line: Vec::with_capacity(512),
                pipelining: false,
            }
        }

        /// One reply, all its lines (without the code and separator).
        async fn reply(&mut self) -> Result<(u16, Vec<String>)> {
            let mut lines = Vec::new();
            loop {
                self.line.clear();
                let n =
                    tokio::time::timeout(REPLY_TIMEOUT, self.io.read_until(b'\n', &mut self.line))
                        .await
                        .context("reply timed out")??;
                ensure!(n > 0, "connection closed by the server");
                let text = String::from_utf8_lossy(&self.line).trim_end().to_string();
                let Some(code) = text.get(..3).and_then(|c| c.parse::<u16>().ok()) else {
                    bail!("malformed reply line {text:?}")
                };
                let last = text.as_bytes().get(3) != Some(&b'-');
                lines.push(text.get(4..).unwrap_or_default().to_string());
                if last {
                    return Ok((code, lines));
                }
            }
        }

        async fn expect(&mut self, code: u16, what: &str) -> Result<Vec<String>> {
            let (got, lines) = self.reply().await?;
            ensure!(got == code, "{what}: expected {code}, got {got} {lines:?}");
            Ok(lines)
        }

        async fn send(&mut self, bytes: &[u8]) -> Result<()> {
            let stream = self.io.get_mut();
            stream.write_all(bytes).await?;
            stream.flush().await?;
            Ok(())
        }

        async fn ehlo(&mut self) -> Result<()> {
            self.send(b"EHLO client.bench.test\r\n").await?;
            let lines = self.expect(250, "EHLO").await?;
            self.pipelining = lines.iter().any(|l| l.eq_ignore_ascii_case("PIPELINING"));
            Ok(())
        }

        /// One transaction; returns the time from the written final dot to the final `250`.
        async fn send_message(&mut self, m: &Message) -> Result<Duration> {
            if self.pipelining {
                let mut envelope = Vec::with_capacity(m.mail.len() + m.rcpt.len() + 6);
                envelope.extend_from_slice(&m.mail);
                envelope.extend_from_slice(&m.rcpt);
                envelope.extend_from_slice(b"DATA\r\n");
                self.send(&envelope).await?;
                self.expect(250, "MAIL FROM").await?;
                self.expect(250, "RCPT TO").await?;
                self.expect(354, "DATA").await?;
            } else {
                self.send(&m.mail).await?;
                self.expect(250, "MAIL FROM").await?;
                self.send(&m.rcpt).await?;
                self.expect(250, "RCPT TO").await?;
                self.send(b"DATA\r\n").await?;
                self.expect(354, "DATA").await?;
            }
            self.send(&m.data).await?;
            let dot = Instant::now();
            self.expect(250, "end of data").await?;
            Ok(dot.elapsed())
        }

        /// QUIT and its `221`; errors are ignored, the message was already accepted.
        async fn quit(mut self) {
            if self.send(b"QUIT\r\n").await.is_ok() {
                let _ = self.expect(221, "QUIT").await;
            }
        }
    }

    impl Client<TcpStream> {
        async fn connect(addr: SocketAddr) -> Result<Self> {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let mut client = Self::new(tcp);
            client.expect(220, "greeting").await?;
            Ok(client)
        }

        /// EHLO, STARTTLS, EHLO, AUTH PLAIN; also whether the TLS session was resumed.
        async fn submission(
            addr: SocketAddr,
            tls: &TlsConnector,
            password: &str,
        ) -> Result<(Client<TlsStream<TcpStream>>, bool)> {
            let mut plain = Self::connect(addr).await?;
            plain.ehlo().await?;
            plain.send(b"STARTTLS\r\n").await?;
            plain.expect(220, "STARTTLS").await?;
            ensure!(
                plain.io.buffer().is_empty(),
                "bytes after the STARTTLS reply"
            );
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let stream = tls
                .connect(name, plain.io.into_inner())
                .await
                .context("TLS handshake")?;
            let resumed =
                stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let mut client = Client::new(stream);
            client.ehlo().await?;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{LOGIN}\0{password}"));
            client
                .send(format!("AUTH PLAIN {token}\r\n").as_bytes())
                .await?;
            client.expect(235, "AUTH PLAIN").await?;
            Ok((client, resumed))
        }
    }
}

/// Medians and the Markdown tables.
mod report {
    use super::load::Measured;
    use super::{Case, Peer, Plan};

    pub(crate) struct Row {
        pub(crate) case: Case,
        pub(crate) peer: Peer,
        pub(crate) m: Measured,
        pub(crate) runs_delivered: Vec<f64>,
    }

    impl Row {
        /// The median of each figure over the runs (errors and losses: the sum).
        pub(crate) fn median(case: Case, peer: Peer, runs: &[Measured]) -> Self {
            let med = |f: fn(&Measured) -> f64| median(runs.iter().map(f).collect());
            let m = Measured {
                accepted_rate: med(|m| m.accepted_rate),
                delivered_rate: med(|m| m.delivered_rate),
                p50_ms: med(|m| m.p50_ms),
                p99_ms: med(|m| m.p99_ms),
                server_us_per_msg: med(|m| m.server_us_per_msg),
                server_cores: med(|m| m.server_cores),
                client_us_per_msg: med(|m| m.client_us_per_msg),
                client_cores: med(|m| m.client_cores),
                pss_mib: med(|m| m.pss_mib),
                resumed: med(|m| m.resumed),
                errors: runs.iter().map(|m| m.errors).sum(),
                undelivered: runs.iter().map(|m| m.undelivered).sum(),
                unsigned: runs.iter().map(|m| m.unsigned).sum(),
                first_error: runs.iter().find_map(|m| m.first_error.clone()),
            };
            Self {
                case,
                peer,
                m,
                runs_delivered: runs.iter().map(|m| m.delivered_rate).collect(),
            }
        }
    }

    /// Median of the values (the mean of the middle two for an even count); 0 when empty.
    pub(crate) fn median(mut values: Vec<f64>) -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        }
    }

    /// `a / b` as "3.1x", or "-" when b is zero or absent.
    pub(crate) fn ratio(a: f64, b: Option<f64>) -> String {
        match b {
            Some(b) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".to_string(),
        }
    }

    pub(crate) fn print(plan: &Plan, rows: &[Row], commands: &[String]) {
        use super::print_summary;
        println!(
            "## Postern, Postfix and Haraka (window {:.0} s after {:.1} s warm-up, median of {} run(s))\n",
            plan.window.as_secs_f64(),
            plan.warmup.as_secs_f64(),
            plan.runs
        );
        let peers: Vec<String> = plan.servers.iter().map(|p| format!("÷ {p}")).collect();
        println!(
            "| case | server | accepted msg/s | delivered msg/s | runs delivered/s | p50 ms | p99 ms | server µs/msg | server cores | PSS MiB | client cores | client µs/msg | TLS resumed | delivered {} | errors | undelivered | unsigned |",
            peers.join(" | ")
        );
        println!(
            "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|{}---:|---:|---:|",
            "---:|".repeat(plan.servers.len())
        );
        for row in rows {
            let peer_rate = |p: Peer| {
                rows.iter()
                    .find(|r| r.peer == p && r.case.label() == row.case.label())
                    .map(|r| r.m.delivered_rate)
            };
            let m = &row.m;
            let runs: Vec<String> = row
                .runs_delivered
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect();
            let ratios: Vec<String> = plan
                .servers
                .iter()
                .map(|&p| ratio(m.delivered_rate, peer_rate(p)))
                .collect();
            println!(
                "| {} | {} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.0}% | {} | {} | {} | {} |",
                row.case.label(),
                row.peer,
                m.accepted_rate,
                m.delivered_rate,
                runs.join("/"),
                m.p50_ms,
                m.p99_ms,
                m.server_us_per_msg,
                m.server_cores,
                m.pss_mib,
                m.client_cores,
                m.client_us_per_msg,
                m.resumed * 100.0,
                ratios.join(" | "),
                m.errors,
                m.undelivered,
                m.unsigned,
            );
        }
        print_summary(plan, rows);
        let first_errors: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                r.m.first_error
                    .as_ref()
                    .map(|e| format!("- {} {}: {e}", r.case.label(), r.peer))
            })
            .collect();
        if !first_errors.is_empty() {
            println!("\nFirst error per row:\n{}", first_errors.join("\n"));
        }
        println!("\nCommands run:\n```");
        for c in commands {
            println!("{c}");
        }
        println!("```");
        if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
            println!("\nLoad average at the end: {}", load.trim());
        }
    }
}

/// The three-way comparison, one row per case: delivered msg/s and CPU per message of each
/// server, and the first server's delivered rate over each other's (the figures of the table
/// above, side by side).
fn print_summary(plan: &Plan, rows: &[report::Row]) {
    let Some(&first) = plan.servers.first() else {
        return;
    };
    let others: Vec<Peer> = plan
        .servers
        .iter()
        .copied()
        .filter(|&p| p != first)
        .collect();
    let names = |suffix: &str| -> String {
        plan.servers
            .iter()
            .map(|p| format!("{p} {suffix}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let over: Vec<String> = others.iter().map(|p| format!("{first} ÷ {p}")).collect();
    let header: Vec<String> = [names("msg/s")]
        .into_iter()
        .chain(over)
        .chain([names("µs/msg")])
        .collect();
    println!(
        "\n### Side by side: delivered msg/s, the ratios, server CPU µs/msg\n\n| case | {} |",
        header.join(" | "),
    );
    let columns = 1 + 2 * plan.servers.len() + others.len();
    println!("|---|{}", "---:|".repeat(columns - 1));
    let mut cases: Vec<String> = Vec::new();
    for row in rows {
        if !cases.contains(&row.case.label()) {
            cases.push(row.case.label());
        }
    }
    for case in cases {
        let of = |p: Peer| rows.iter().find(|r| r.peer == p && r.case.label() == case);
        let rate = |p: Peer| of(p).map(|r| r.m.delivered_rate);
        let rates: Vec<String> = plan
            .servers
            .iter()
            .map(|&p| rate(p).map_or("-".into(), |r| format!("{r:.0}")))
            .collect();
        let ratios: Vec<String> = others
            .iter()
            .map(|&p| match rate(first) {
                Some(r) => report::ratio(r, rate(p)),
                None => "-".into(),
            })
            .collect();
        let cpu: Vec<String> = plan
            .servers
            .iter()
            .map(|&p| of(p).map_or("-".into(), |r| format!("{:.0}", r.m.server_us_per_msg)))
            .collect();
        let cells: Vec<String> = rates.into_iter().chain(ratios).chain(cpu).collect();
        println!("| {case} | {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::cgroup::{parse_cpu_stat, parse_kib};
    use super::report::{median, ratio};
    use super::sink::parse_count;
    use super::support::percentile;
    use std::time::Duration;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn ratios_need_a_peer_figure() {
        assert_eq!(ratio(300.0, Some(100.0)), "3.00x");
        assert_eq!(ratio(300.0, Some(0.0)), "-");
        assert_eq!(ratio(300.0, None), "-");
    }

    #[test]
    fn parses_the_sinks_counters() {
        assert_eq!(parse_count("1200 1199"), Some((1200, 1199)));
        assert_eq!(parse_count("12"), None);
        assert_eq!(parse_count("5.5.1 not here"), None);
    }

    #[test]
    fn parses_cgroup_and_proc_figures() {
        let stat = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n";
        assert_eq!(parse_cpu_stat(stat), Some(Duration::from_micros(1_234_567)));
        assert_eq!(parse_cpu_stat("user_usec 5\n"), None);
        let rollup = "55d0-7ffd [rollup]\nRss:               81234 kB\nPss:               40001 kB\nPss_Anon:          30000 kB\n";
        assert_eq!(parse_kib(rollup, "Pss:"), Some(40001));
        assert_eq!(parse_kib(rollup, "Rss:"), Some(81234));
        assert_eq!(parse_kib("Name:\tkthreadd\n", "Pss:"), None);
    }
}
