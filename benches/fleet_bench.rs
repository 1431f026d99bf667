//! `postern-fleet-bench`: AUTH through the PostgreSQL directory with and without the directory
//! cache, and submission throughput of a fleet of replicas against one.
//!
//! # Run
//! ```text
//! cargo build --release
//! cargo run --release --bin postern-fleet-bench                 # ~1.5 minutes
//! cargo run --release --bin postern-fleet-bench -- --duration 3 --auth-sessions 1,16
//! ```
//! Progress goes to stderr, Markdown tables to stdout (for README "Performance").
//!
//! # What is measured
//! The bench starts its own PostgreSQL (Debian's `initdb`/`pg_ctl`, run as `postgres` when
//! the bench runs as root; `fsync=off`, loopback, a free port) and Redis (`redis-server`, no
//! persistence), runs `postern migrate`, and creates an address and a device with the CLI. Then,
//! each case with fresh `postern serve` processes on that database (`[delivery] workers = 0`,
//! `[quota] backend = "redis"`, log level `info`):
//!
//! 1. **AUTH** (`cache_ttl = "5s"`, the default, and `"0s"`, the cache off): N client sessions
//!    each loop over: connect to port 465 (TLS from the first byte), read the greeting, EHLO,
//!    `AUTH PLAIN`, QUIT. *AUTH/s* counts the `235`s inside the window (a whole session each,
//!    TLS handshake included, since a client cannot AUTH twice in one session); *p50/p99* are
//!    of the AUTH command alone (written to `235`), which is what the cache changes: one
//!    failed-login brake check in Redis plus, on a miss, the store's queries (devices, aliases,
//!    then the limits of the meter). *hit ratio* is read from the server's
//!    `postern_directory_cache_lookups_total`.
//! 2. **Fleet**: 1 KB messages over STARTTLS + AUTH on port 587 (as `postern-bench`: MAIL,
//!    RCPT and DATA pipelined, reused sessions), S sessions spread round-robin over 1 replica,
//!    then over 3 replicas sharing the database and Redis. *msg/s* counts final `250`s in the
//!    window.
//!
//! All processes share the machine's cores with the client (one current-thread runtime) and
//! with whatever else runs; the tables print the client's CPU and the load average. Compare
//! rows of one run, not figures across machines.

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

#[path = "support/mod.rs"]
mod support;
use support::own_cpu_time;
use tokio_rustls::TlsConnector;

const LOGIN: &str = "bench@bench.test";
const RECIPIENT: &str = "sink@sink.test";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_PASSWORD: &str = "bench-only-pg-password";
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

struct Options {
    duration: Duration,
    warmup: Duration,
    auth_sessions: Vec<usize>,
    fleet_sessions: usize,
    replicas: usize,
    keep: bool,
}

fn options() -> Result<Options> {
    let mut o = Options {
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(1),
        auth_sessions: vec![1, 16],
        fleet_sessions: 30,
        replicas: 3,
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    let list = |v: Option<String>| -> Result<Vec<usize>> {
        v.context("a value")?
            .split(',')
            .map(|n| n.parse().context("a number"))
            .collect()
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--duration" => {
                o.duration = Duration::from_secs_f64(args.next().context("SECS")?.parse()?)
            }
            "--warmup" => o.warmup = Duration::from_secs_f64(args.next().context("SECS")?.parse()?),
            "--auth-sessions" => o.auth_sessions = list(args.next())?,
            "--fleet-sessions" => o.fleet_sessions = args.next().context("N")?.parse()?,
            "--replicas" => o.replicas = args.next().context("N")?.parse()?,
            "--keep" => o.keep = true,
            other => bail!(
                "unknown argument {other} (--duration SECS, --warmup SECS, --auth-sessions N,N, \
                 --fleet-sessions N, --replicas N, --keep)"
            ),
        }
    }
    Ok(o)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn run(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A PostgreSQL cluster of the bench's own, stopped on drop.
struct Postgres {
    dir: PathBuf,
    port: u16,
}

impl Postgres {
    fn pg(program: &str) -> Command {
        let path = Path::new(PG_BIN).join(program);
        if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn start(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("pwfile"), format!("{PG_PASSWORD}\n"))?;
        if is_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&dir);
            run(chown, "chown")?;
        }
        let mut initdb = Self::pg("initdb");
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postern", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", dir.join("pwfile").display()))
            .args(["-E", "UTF8", "--locale=C"]);
        run(initdb, "initdb (apt-get install postgresql)")?;
        let port = free_port()?;
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c max_connections=200",
            dir.display()
        );
        let mut pg_ctl = Self::pg("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-o", &options, "-w", "-t", "30", "start"]);
        run(pg_ctl, "pg_ctl start")?;
        let mut psql = Command::new(Path::new(PG_BIN).join("psql"));
        psql.env("PGPASSWORD", PG_PASSWORD)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postern"])
            .args(["-d", "postgres", "-c", "CREATE DATABASE bench"]);
        let server = Self { dir, port };
        run(psql, "psql CREATE DATABASE")?;
        Ok(server)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut pg_ctl = Self::pg("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = pg_ctl.status();
    }
}

/// A child process killed on drop (Redis, the replicas).
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID, not reaped yet.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn redis(port: u16) -> Result<Process> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .context("redis-server (apt-get install redis-server)")?;
    Ok(Process(child))
}

/// Paths and addresses shared by every replica.
struct Setup {
    bin: PathBuf,
    work: PathBuf,
    pg_port: u16,
    redis_port: u16,
}

/// One replica's ports.
struct Replica {
    process: Process,
    submission: SocketAddr,
    submissions: SocketAddr,
    http: SocketAddr,
}

impl Setup {
    fn config(&self, name: &str, cache_ttl: &str, ports: [u16; 3]) -> Result<PathBuf> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir)?;
        let secret = self.work.join("secret.key");
        let text = format!(
            "[listen]\nsubmission = \"127.0.0.1:{}\"\nsubmissions = \"127.0.0.1:{}\"\n\
             http = \"127.0.0.1:{}\"\n\
             [store]\nbackend = \"postgres\"\nurl = \"postgres://postern@127.0.0.1:{}/bench\"\ntls = \"disable\"\n\
             password_file = {:?}\nsecret_key_file = {:?}\ncache_ttl = {cache_ttl:?}\n\
             [quota]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/\"\n\
             [spool]\npath = {:?}\n[delivery]\nworkers = 0\n\
             [limits]\nmax_sessions = 20000\nmax_sessions_per_ip = 20000\n\
             max_sessions_per_subnet = 20000\n[log]\nlevel = \"info\"\n",
            ports[0],
            ports[1],
            ports[2],
            self.pg_port,
            self.work.join("pg-password"),
            secret,
            self.redis_port,
            dir.join("spool"),
        );
        postern::config::Config::parse(&text).map_err(|e| anyhow::anyhow!("bench config: {e}"))?;
        let path = dir.join("postern.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn cli(&self, config: &Path, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(config).args(args);
        run(cmd, &format!("postern {}", args.join(" ")))
    }

    async fn start(&self, name: &str, cache_ttl: &str) -> Result<Replica> {
        let ports = [free_port()?, free_port()?, free_port()?];
        let config = self.config(name, cache_ttl, ports)?;
        let log = std::fs::File::create(self.work.join(name).join("server.log"))?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let replica = Replica {
            process: Process(child),
            submission: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            submissions: SocketAddr::from(([127, 0, 0, 1], ports[1])),
            http: SocketAddr::from(([127, 0, 0, 1], ports[2])),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(replica.http, "/readyz").await {
                return Ok(replica);
            }
            ensure!(Instant::now() < deadline, "{name} not ready within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed status")?;
    Ok((status, body.to_string()))
}

/// Sum of `postern_directory_cache_lookups_total` series whose labels contain `labels`.
async fn cache_lookups(replica: &Replica, labels: &str) -> Result<f64> {
    let (_, body) = http_get(replica.http, "/metrics").await?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("postern_directory_cache_lookups_total{") && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// `utime + stime` of a process.
fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |s| s.1)
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / hz)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One SMTP connection.
struct Client<S> {
    io: BufReader<S>,
    line: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(stream: S) -> Self {
        Self {
            io: BufReader::new(stream),
            line: Vec::new(),
        }
    }

    async fn expect(&mut self, code: u16) -> Result<()> {
        loop {
            self.line.clear();
            let n = tokio::time::timeout(REPLY_TIMEOUT, self.io.read_until(b'\n', &mut self.line))
                .await
                .context("reply timed out")??;
            ensure!(n > 0, "connection closed by the server");
            let line = String::from_utf8_lossy(&self.line);
            ensure!(
                line.starts_with(&code.to_string()),
                "expected {code}, got {line:?}"
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }

    async fn command(&mut self, line: &str, code: u16) -> Result<()> {
        let stream = self.io.get_mut();
        stream.write_all(line.as_bytes()).await?;
        stream.write_all(b"\r\n").await?;
        stream.flush().await?;
        self.expect(code).await
    }
}

fn auth_plain(password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{LOGIN}\0{password}"));
    format!("AUTH PLAIN {token}")
}

/// One session on 465: TLS, EHLO, AUTH PLAIN, QUIT; returns the AUTH command's latency.
async fn auth_session(addr: SocketAddr, tls: &TlsConnector, auth: &str) -> Result<Duration> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut client = Client::new(tls.connect(name, tcp).await?);
    client.expect(220).await?;
    client.command("EHLO client.bench.test", 250).await?;
    let start = Instant::now();
    client.command(auth, 235).await?;
    let latency = start.elapsed();
    client.command("QUIT", 221).await?;
    Ok(latency)
}

/// A session on 587 ready for mail: EHLO, STARTTLS, EHLO, AUTH PLAIN.
async fn submission(
    addr: SocketAddr,
    tls: &TlsConnector,
    auth: &str,
) -> Result<Client<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut plain = Client::new(tcp);
    plain.expect(220).await?;
    plain.command("EHLO client.bench.test", 250).await?;
    plain.command("STARTTLS", 220).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut client = Client::new(tls.connect(name, plain.io.into_inner()).await?);
    client.command("EHLO client.bench.test", 250).await?;
    client.command(auth, 235).await?;
    Ok(client)
}

fn message() -> (Vec<u8>, Vec<u8>) {
    let envelope = format!("MAIL FROM:<{LOGIN}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n").into_bytes();
    let mut data = format!(
        "From: <{LOGIN}>\r\nTo: <{RECIPIENT}>\r\nSubject: postern-fleet-bench\r\n\
         Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nMessage-ID: <fleet@client.bench.test>\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..12 {
        data.extend(std::iter::repeat_n(b'X', 78));
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    (envelope, data)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn after(warmup: Duration, length: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + length,
        }
    }

    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

struct AuthRow {
    cache_ttl: &'static str,
    sessions: usize,
    auths: usize,
    rate: f64,
    p50: f64,
    p99: f64,
    hit_ratio: Option<f64>,
    server_us: f64,
    client_cores: f64,
}

async fn auth_case(
    setup: &Setup,
    opts: &Options,
    password: &str,
    cache_ttl: &'static str,
    sessions: usize,
) -> Result<AuthRow> {
    let name = format!("auth-{}-s{sessions}", cache_ttl.trim_end_matches('s'));
    eprintln!(
        "{name}: cache_ttl {cache_ttl:?}, {sessions} sessions (465, TLS + EHLO + AUTH PLAIN + QUIT)"
    );
    let replica = setup.start(&name, cache_ttl).await?;
    let tls = TlsConnector::from(postern::delivery::tls::opportunistic_client_config()?);
    let auth = Arc::new(auth_plain(password));
    let window = Window::after(opts.warmup, opts.duration);
    let mut load = JoinSet::new();
    for _ in 0..sessions {
        let (tls, auth, addr) = (tls.clone(), auth.clone(), replica.submissions);
        load.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < window.end {
                let latency = auth_session(addr, &tls, &auth).await?;
                if window.contains(Instant::now()) {
                    latencies.push(latency);
                }
            }
            anyhow::Ok(latencies)
        });
    }
    tokio::time::sleep_until(window.start.into()).await;
    let pid = replica.process.0.id();
    let (server0, client0) = (cpu_time(pid), own_cpu_time());
    let (hits0, all0) = (
        cache_lookups(&replica, "result=\"hit\"").await?,
        cache_lookups(&replica, "kind=").await?,
    );
    tokio::time::sleep_until(window.end.into()).await;
    let (server1, client1) = (cpu_time(pid), own_cpu_time());
    let (hits1, all1) = (
        cache_lookups(&replica, "result=\"hit\"").await?,
        cache_lookups(&replica, "kind=").await?,
    );
    let mut latencies = Vec::new();
    while let Some(done) = load.join_next().await {
        latencies.extend(done??);
    }
    latencies.sort_unstable();
    let seconds = opts.duration.as_secs_f64();
    let auths = latencies.len();
    Ok(AuthRow {
        cache_ttl,
        sessions,
        auths,
        rate: auths as f64 / seconds,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        hit_ratio: (all1 > all0).then(|| (hits1 - hits0) / (all1 - all0)),
        server_us: (server1 - server0).as_secs_f64() * 1e6 / auths.max(1) as f64,
        client_cores: (client1 - client0).as_secs_f64() / seconds,
    })
}

struct FleetRow {
    replicas: usize,
    sessions: usize,
    messages: usize,
    rate: f64,
    p99: f64,
    server_cores: f64,
    client_cores: f64,
}

async fn fleet_case(
    setup: &Setup,
    opts: &Options,
    password: &str,
    replicas: usize,
) -> Result<FleetRow> {
    let sessions = opts.fleet_sessions;
    eprintln!(
        "fleet-r{replicas}: {sessions} sessions round-robin over {replicas} replica(s), 1 KB"
    );
    let mut started = Vec::new();
    for i in 0..replicas {
        started.push(setup.start(&format!("fleet-r{replicas}-{i}"), "5s").await?);
    }
    let tls = TlsConnector::from(postern::delivery::tls::opportunistic_client_config()?);
    let auth = auth_plain(password);
    let mut clients = Vec::new();
    for i in 0..sessions {
        let addr = started[i % replicas].submission;
        clients.push(submission(addr, &tls, &auth).await?);
    }
    let (envelope, data) = message();
    let (envelope, data) = (Arc::new(envelope), Arc::new(data));
    let window = Window::after(opts.warmup, opts.duration);
    let mut load = JoinSet::new();
    for mut client in clients {
        let (envelope, data) = (envelope.clone(), data.clone());
        load.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < window.end {
                let stream = client.io.get_mut();
                stream.write_all(&envelope).await?;
                stream.flush().await?;
                client.expect(250).await?;
                client.expect(250).await?;
                client.expect(354).await?;
                let stream = client.io.get_mut();
                stream.write_all(&data).await?;
                stream.flush().await?;
                let dot = Instant::now();
                client.expect(250).await?;
                if window.contains(Instant::now()) {
                    latencies.push(dot.elapsed());
                }
            }
            let _ = client.command("QUIT", 221).await;
            anyhow::Ok(latencies)
        });
    }
    tokio::time::sleep_until(window.start.into()).await;
    let pids: Vec<u32> = started.iter().map(|r| r.process.0.id()).collect();
    let server0: Duration = pids.iter().map(|&p| cpu_time(p)).sum();
    let client0 = own_cpu_time();
    tokio::time::sleep_until(window.end.into()).await;
    let server1: Duration = pids.iter().map(|&p| cpu_time(p)).sum();
    let client1 = own_cpu_time();
    let mut latencies = Vec::new();
    while let Some(done) = load.join_next().await {
        latencies.extend(done??);
    }
    latencies.sort_unstable();
    let seconds = opts.duration.as_secs_f64();
    Ok(FleetRow {
        replicas,
        sessions,
        messages: latencies.len(),
        rate: latencies.len() as f64 / seconds,
        p99: percentile(&latencies, 0.99),
        server_cores: (server1 - server0).as_secs_f64() / seconds,
        client_cores: (client1 - client0).as_secs_f64() / seconds,
    })
}

fn main() -> Result<()> {
    let opts = options()?;
    let bin = std::env::current_exe()?.with_file_name("postern");
    ensure!(
        bin.is_file(),
        "{} not found: cargo build --release",
        bin.display()
    );
    let work = std::env::temp_dir().join(format!("postern-fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = bench(&opts, bin, &work);
    if opts.keep {
        eprintln!("kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

fn bench(opts: &Options, bin: PathBuf, work: &Path) -> Result<()> {
    let postgres = Postgres::start(work.join("pg"))?;
    let redis_port = free_port()?;
    let _redis = redis(redis_port)?;
    std::fs::write(work.join("pg-password"), format!("{PG_PASSWORD}\n"))?;
    let secret: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    std::fs::write(
        work.join("secret.key"),
        base64::engine::general_purpose::STANDARD.encode(secret) + "\n",
    )?;
    let setup = Setup {
        bin,
        work: work.to_path_buf(),
        pg_port: postgres.port,
        redis_port,
    };
    let admin = setup.config("admin", "5s", [free_port()?, free_port()?, free_port()?])?;
    setup.cli(&admin, &["migrate"])?;
    setup.cli(&admin, &["address", "add", LOGIN])?;
    setup.cli(&admin, &["limit", "set", LOGIN, "--daily", "4000000000"])?;
    let out = setup.cli(&admin, &["device", "add", LOGIN, "--name", "bench"])?;
    let password = out.lines().last().unwrap_or_default().trim().to_string();
    ensure!(!password.is_empty(), "no device password printed");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut auth_rows = Vec::new();
    for &sessions in &opts.auth_sessions {
        for ttl in ["5s", "0s"] {
            let row = runtime.block_on(auth_case(&setup, opts, &password, ttl, sessions))?;
            eprintln!(
                "  {:.0} AUTH/s, AUTH p50 {:.2} ms p99 {:.2} ms",
                row.rate, row.p50, row.p99
            );
            auth_rows.push(row);
        }
    }
    let mut fleet_rows = Vec::new();
    for replicas in [1, opts.replicas] {
        let row = runtime.block_on(fleet_case(&setup, opts, &password, replicas))?;
        eprintln!("  {:.0} msg/s", row.rate);
        fleet_rows.push(row);
    }

    println!(
        "Window {:?} after {:?} warm-up; load average at the end: {}\n",
        opts.duration,
        opts.warmup,
        load_average()
    );
    println!(
        "| cache_ttl | sessions | AUTHs | AUTH/s | AUTH p50 ms | AUTH p99 ms | cache hit ratio | server CPU µs/AUTH | client cores |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &auth_rows {
        let hits = r
            .hit_ratio
            .map_or("-".to_string(), |h| format!("{:.0}%", h * 100.0));
        println!(
            "| {:?} | {} | {} | {:.0} | {:.2} | {:.2} | {hits} | {:.0} | {:.2} |",
            r.cache_ttl, r.sessions, r.auths, r.rate, r.p50, r.p99, r.server_us, r.client_cores
        );
    }
    println!();
    println!(
        "| replicas | sessions | msgs | accepted msg/s | p99 ms | server cores (all replicas) | client cores |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in &fleet_rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.replicas, r.sessions, r.messages, r.rate, r.p99, r.server_cores, r.client_cores
        );
    }
    if let [one, many] = &fleet_rows[..] {
        println!(
            "\n{} replicas / 1 replica: {:.2}x",
            many.replicas,
            many.rate / one.rate.max(1e-9)
        );
    }
    Ok(())
}
