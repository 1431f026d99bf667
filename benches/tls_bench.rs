//! `postern-tls-bench`: what a TLS handshake costs Postern, apart from the mail it carries.
//!
//! # Run
//! ```text
//! cargo build --release                                    # target/release/postern (and this bench)
//! target/release/postern-tls-bench --quick                 # 2 s windows, about 1 minute
//! target/release/postern-tls-bench                         # 5 s windows, about 3 minutes
//! target/release/postern-tls-bench --tls 1.3,1.2 --clients 1,20,100
//! target/release/postern-tls-bench --clients 20 --aes128   # client offers AES-128-GCM-SHA256 only
//! ```
//! Progress goes to stderr; the table goes to stdout as Markdown (for `benches/README.md`).
//!
//! # What is measured
//! For each certificate (`--certs`: a self-signed RSA-2048 and an ECDSA P-256 one, made with
//! rcgen at start) the bench starts the real `target/release/postern serve` with a temporary
//! config: the submission (587 role, STARTTLS) and submissions (465 role, implicit TLS)
//! listeners on free loopback ports, `[tls] cert`/`key` = that pair, the `[tls]` resumption
//! keys at their defaults (tickets on, 20,000 cached sessions), `[delivery] workers = 0`,
//! `[limits] max_sessions_per_ip = 20000`, `[log] level = "info"` as in production.
//!
//! Each of `--clients` N concurrent clients (tasks of one current-thread tokio runtime, so the
//! client takes as little of the 2 cores as it can) opens connections back to back until the
//! window closes. One connection is one session without mail:
//! - `587`: TCP connect, `220`, EHLO `250`, STARTTLS `220`, the TLS handshake, EHLO `250`,
//!   QUIT `221`; `465`: TCP connect, the handshake, `220`, EHLO `250`, QUIT `221`.
//! - `plain` (the baseline, 587): `220`, EHLO `250`, QUIT `221` without TLS: what the
//!   session costs without the handshake.
//! - handshake `full`: the client keeps no sessions (rustls `Resumption::disabled()`), so every
//!   handshake is a full one (key exchange X25519, the certificate's signature).
//! - handshake `resumed`: the client keeps what the server gives it (rustls's in-memory
//!   `Resumption` store, one per client: TLS 1.3 tickets, TLS 1.2 tickets or session ids) and
//!   offers it on the next connection, as a mail client that reconnects does. The first connection of every
//!   client (in the warm-up) is full. The "resumed" column is the share of handshakes in the
//!   window that rustls reports as `HandshakeKind::Resumed`.
//!
//! Every reply code is checked exactly. Columns:
//! - *conn/s*: sessions completed (`221` read) inside the window, over the window.
//! - *server µs/conn*: `utime + stime` of the server process (`/proc/PID/stat`) over the
//!   window, divided by the sessions completed in it. *TLS µs* is that minus the `plain`
//!   row's figure at the same client count: the handshake's own cost (for 587 it also holds
//!   the STARTTLS exchange and the second EHLO).
//! - *server cores*: the server's CPU over the window's length.
//! - *client µs/conn*, *client cores*: the same for this process (`getrusage`).
//! - *p50 / p99*: from the TCP connect to the EHLO `250` after the handshake: how long a client
//!   waits for a usable session.
//!
//! The machine has 2 cores shared by the server and the client (and other users): the client's
//! CPU is shown so that the share left to the server is visible; compare rows of one run.

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use rustls::client::Resumption;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::{free_port, own_cpu_time, percentile};

/// Measures TLS handshakes against the `postern` binary: full and resumed, RSA and ECDSA.
#[derive(Debug, Parser)]
#[command(name = "postern-tls-bench")]
struct Options {
    /// Short run: 2 s windows after 0.5 s of warm-up.
    #[arg(long)]
    quick: bool,
    /// Measurement window per case in seconds [default: 5, --quick: 2].
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Warm-up before each window in seconds [default: 1, --quick: 0.5].
    #[arg(long, value_name = "SECS")]
    warmup: Option<f64>,
    /// Concurrent clients.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 20])]
    clients: Vec<usize>,
    /// Server certificates.
    #[arg(long, value_delimiter = ',', default_values = ["rsa2048", "ecdsa-p256"])]
    certs: Vec<CertKind>,
    /// TLS versions the client offers (one per case).
    #[arg(long, value_delimiter = ',', default_values = ["1.3"])]
    tls: Vec<TlsVersion>,
    /// The server binary [default: `postern` next to this bench].
    #[arg(long)]
    postern: Option<PathBuf>,
    /// The server's `[log] level`.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// The client offers only the AES-128-GCM suites with SHA-256 (TLS 1.3
    /// TLS_AES_128_GCM_SHA256, TLS 1.2 ECDHE-*-AES128-GCM-SHA256) instead of rustls's default
    /// list, which puts AES-256-GCM with SHA-384 first: what a server preference for them
    /// would save.
    #[arg(long)]
    aes128: bool,
    /// Keep the work directory (configs, certificates, server logs).
    #[arg(long)]
    keep: bool,
}

/// The server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CertKind {
    /// Self-signed, RSA 2048-bit key.
    Rsa2048,
    /// Self-signed, ECDSA key on P-256.
    EcdsaP256,
}

impl CertKind {
    fn label(self) -> &'static str {
        match self {
            Self::Rsa2048 => "RSA-2048",
            Self::EcdsaP256 => "ECDSA P-256",
        }
    }
}

/// The protocol version the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TlsVersion {
    #[value(name = "1.3")]
    Tls13,
    #[value(name = "1.2")]
    Tls12,
}

impl TlsVersion {
    fn label(self) -> &'static str {
        match self {
            Self::Tls13 => "1.3",
            Self::Tls12 => "1.2",
        }
    }

    fn rustls(self) -> &'static rustls::SupportedProtocolVersion {
        match self {
            Self::Tls13 => &rustls::version::TLS13,
            Self::Tls12 => &rustls::version::TLS12,
        }
    }
}

/// Which listener and how the session gets (or does not get) TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// 587 role: STARTTLS after the first EHLO.
    Submission,
    /// 465 role: TLS from the first byte.
    Submissions,
}

impl Port {
    fn label(self) -> &'static str {
        match self {
            Self::Submission => "587 STARTTLS",
            Self::Submissions => "465",
        }
    }
}

/// What the client does about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// No TLS: the baseline session on 587.
    Plain,
    /// TLS, no session kept by the client.
    Full,
    /// TLS, sessions kept and offered again.
    Resumed,
}

impl Handshake {
    fn label(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Full => "full",
            Self::Resumed => "resumed",
        }
    }
}

/// One row of the table.
struct CaseResult {
    cert: CertKind,
    port: Port,
    version: Option<TlsVersion>,
    handshake: Handshake,
    clients: usize,
    sessions: u64,
    resumed: u64,
    errors: u64,
    first_error: Option<String>,
    window: Duration,
    server_cpu: Duration,
    client_cpu: Duration,
    latencies: Vec<Duration>,
}

impl CaseResult {
    fn per_session(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.sessions.max(1) as f64
    }

    fn server_us(&self) -> f64 {
        self.per_session(self.server_cpu)
    }

    fn summary(&self) -> String {
        format!(
            "{} {} {} {} c{}: {:.0} conn/s, server {:.0} µs/conn, {} errors",
            self.cert.label(),
            self.port.label(),
            self.version.map_or("-", TlsVersion::label),
            self.handshake.label(),
            self.clients,
            self.sessions as f64 / self.window.as_secs_f64(),
            self.server_us(),
            self.errors
        )
    }
}

fn main() -> Result<()> {
    let opts = Options::parse();
    let bin = match &opts.postern {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("postern"),
    };
    ensure!(
        bin.is_file(),
        "{} not found: build it first with `cargo build --release`",
        bin.display()
    );
    let seconds = |value: Option<f64>, normal: f64, quick: f64| {
        Duration::from_secs_f64(value.unwrap_or(if opts.quick { quick } else { normal }))
    };
    let window = seconds(opts.duration, 5.0, 2.0);
    let warmup = seconds(opts.warmup, 1.0, 0.5);
    let work = std::env::temp_dir().join(format!("postern-tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    let outcome = (|| -> Result<()> {
        for &cert in &opts.certs {
            let dir = work.join(cert.label().replace([' ', '-'], "_").to_lowercase());
            let server = Server::start(&bin, &dir, cert, &opts.log_level)?;
            for &clients in &opts.clients {
                let plain = Case {
                    port: Port::Submission,
                    version: None,
                    handshake: Handshake::Plain,
                    clients,
                };
                let mut cases = vec![plain];
                for &version in &opts.tls {
                    for port in [Port::Submission, Port::Submissions] {
                        for handshake in [Handshake::Full, Handshake::Resumed] {
                            cases.push(Case {
                                port,
                                version: Some(version),
                                handshake,
                                clients,
                            });
                        }
                    }
                }
                for case in cases {
                    let result = runtime
                        .block_on(measure(&server, cert, case, warmup, window, opts.aes128))
                        .with_context(|| format!("{} {case:?}", cert.label()))?;
                    eprintln!("  {}", result.summary());
                    results.push(result);
                }
            }
            server.stop()?;
        }
        Ok(())
    })();
    if opts.keep {
        eprintln!("kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    outcome?;
    print_table(&results, window, warmup);
    Ok(())
}

/// One measurement: the listener, the TLS version, the handshake kind, the client count.
#[derive(Debug, Clone, Copy)]
struct Case {
    port: Port,
    version: Option<TlsVersion>,
    handshake: Handshake,
    clients: usize,
}

/// What one client task counted inside the window.
#[derive(Default)]
struct Tally {
    sessions: u64,
    resumed: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<Duration>,
}

async fn measure(
    server: &Server,
    cert: CertKind,
    case: Case,
    warmup: Duration,
    window: Duration,
    aes128: bool,
) -> Result<CaseResult> {
    let addr = match case.port {
        Port::Submission => server.submission,
        Port::Submissions => server.submissions,
    };
    let start = Instant::now() + warmup;
    let end = start + window;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..case.clients {
        // A config, so a session store, per client, as every mail client has its own (one
        // shared store would hand out its few tickets per server name to all of them).
        let connector = case
            .version
            .map(|v| client_config(v, case.handshake, aes128))
            .transpose()?
            .map(tokio_rustls::TlsConnector::from);
        let port = case.port;
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < end {
                let began = Instant::now();
                let outcome = session(addr, port, connector.as_ref()).await;
                let done = Instant::now();
                let inside = began >= start && done < end;
                match outcome {
                    Ok(session) if inside => {
                        tally.sessions += 1;
                        tally.resumed += u64::from(session.resumed);
                        tally.latencies.push(session.ready - began);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            tally
        });
    }
    // Sampled by this task at the window's edges (the client tasks yield at every read).
    tokio::time::sleep_until(start.into()).await;
    let (server0, own0) = (procfs_cpu(server.pid)?, own_cpu_time());
    tokio::time::sleep_until(end.into()).await;
    let (server1, own1) = (procfs_cpu(server.pid)?, own_cpu_time());
    let mut total = Tally::default();
    while let Some(tally) = tasks.join_next().await {
        let tally = tally?;
        total.sessions += tally.sessions;
        total.resumed += tally.resumed;
        total.errors += tally.errors;
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
        total.latencies.extend(tally.latencies);
    }
    total.latencies.sort();
    Ok(CaseResult {
        cert,
        port: case.port,
        version: case.version,
        handshake: case.handshake,
        clients: case.clients,
        sessions: total.sessions,
        resumed: total.resumed,
        errors: total.errors,
        first_error: total.first_error,
        window,
        server_cpu: server1.saturating_sub(server0),
        client_cpu: own1.saturating_sub(own0),
        latencies: total.latencies,
    })
}

/// The client's rustls config: one protocol version, any certificate (the bench's own
/// self-signed ones; the signatures are still verified), sessions kept or not.
fn client_config(
    version: TlsVersion,
    handshake: Handshake,
    aes128: bool,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if aes128 {
        use rustls::CipherSuite::{
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS13_AES_128_GCM_SHA256,
        };
        provider.cipher_suites.retain(|s| {
            matches!(
                s.suite(),
                TLS13_AES_128_GCM_SHA256
                    | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            )
        });
    }
    let provider = Arc::new(provider);
    let verifier = Arc::new(postern::any_certificate::AnyCertificate::new(&provider));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version.rustls()])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = match handshake {
        Handshake::Resumed => Resumption::in_memory_sessions(1024),
        Handshake::Plain | Handshake::Full => Resumption::disabled(),
    };
    Ok(Arc::new(config))
}

/// How one session went.
struct Session {
    /// When the EHLO after the handshake (or the only EHLO, plain) was answered.
    ready: Instant,
    resumed: bool,
}

/// One session as the case describes it, every reply code checked.
async fn session(
    addr: SocketAddr,
    port: Port,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<Session> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    match (port, tls) {
        (_, None) => {
            let mut smtp = Smtp::new(tcp);
            smtp.expect(220).await.context("greeting")?;
            smtp.command("EHLO client.bench.test", 250).await?;
            let ready = Instant::now();
            smtp.command("QUIT", 221).await?;
            Ok(Session {
                ready,
                resumed: false,
            })
        }
        (Port::Submission, Some(tls)) => {
            let mut plain = Smtp::new(tcp);
            plain.expect(220).await.context("greeting")?;
            plain.command("EHLO client.bench.test", 250).await?;
            plain.command("STARTTLS", 220).await?;
            let stream = tls
                .connect(name, plain.into_inner()?)
                .await
                .context("TLS handshake")?;
            let resumed = is_resumed(&stream);
            let mut smtp = Smtp::new(stream);
            smtp.command("EHLO client.bench.test", 250).await?;
            let ready = Instant::now();
            smtp.command("QUIT", 221).await?;
            Ok(Session { ready, resumed })
        }
        (Port::Submissions, Some(tls)) => {
            let stream = tls.connect(name, tcp).await.context("TLS handshake")?;
            let resumed = is_resumed(&stream);
            let mut smtp = Smtp::new(stream);
            smtp.expect(220).await.context("greeting")?;
            smtp.command("EHLO client.bench.test", 250).await?;
            let ready = Instant::now();
            smtp.command("QUIT", 221).await?;
            Ok(Session { ready, resumed })
        }
    }
}

fn is_resumed(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> bool {
    stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

/// Longest wait for any reply: a stalled server fails the session instead of hanging the case.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// SMTP replies over any stream.
struct Smtp<S> {
    io: tokio::io::BufReader<S>,
    line: Vec<u8>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Smtp<S> {
    fn new(stream: S) -> Self {
        Self {
            io: tokio::io::BufReader::with_capacity(4096, stream),
            line: Vec::with_capacity(256),
        }
    }

    /// Reads one reply (all its lines) and insists on `code`.
    async fn expect(&mut self, code: u16) -> Result<()> {
        use tokio::io::AsyncBufReadExt;
        loop {
            self.line.clear();
            let read = self.io.read_until(b'\n', &mut self.line);
            let n = tokio::time::timeout(REPLY_TIMEOUT, read)
                .await
                .context("reply timed out")??;
            ensure!(n > 0, "connection closed by the server");
            let text = String::from_utf8_lossy(&self.line);
            let got: Option<u16> = text.get(..3).and_then(|c| c.parse().ok());
            ensure!(
                got == Some(code),
                "expected {code}, got {:?}",
                text.trim_end()
            );
            if self.line.get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }

    async fn command(&mut self, line: &str, code: u16) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let stream = self.io.get_mut();
        stream.write_all(format!("{line}\r\n").as_bytes()).await?;
        stream.flush().await?;
        self.expect(code).await.with_context(|| line.to_string())
    }

    /// The stream, once no reply is left unread (before the TLS handshake).
    fn into_inner(self) -> Result<S> {
        ensure!(
            self.io.buffer().is_empty(),
            "unexpected bytes after the reply"
        );
        Ok(self.io.into_inner())
    }
}

/// `utime + stime` of a process, all threads (`/proc/PID/stat` fields 14 and 15).
fn procfs_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
        + fields.get(12).context("no stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64(ticks as f64 / hz))
}

/// A running `postern serve` with both submission listeners and one certificate.
struct Server {
    child: std::process::Child,
    pid: u32,
    submission: SocketAddr,
    submissions: SocketAddr,
    log: PathBuf,
}

impl Server {
    const READY_TIMEOUT: Duration = Duration::from_secs(30);
    const STOP_TIMEOUT: Duration = Duration::from_secs(30);

    /// Makes the certificate, writes the config under `dir`, starts the server and waits for
    /// `/readyz`.
    fn start(bin: &Path, dir: &Path, cert: CertKind, log_level: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        let key = match cert {
            CertKind::Rsa2048 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            CertKind::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        }?;
        let certificate =
            rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
        std::fs::write(&cert_path, certificate.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        let (submission, submissions, http) = (free_port()?, free_port()?, free_port()?);
        let text = format!(
            "# written by postern-tls-bench\n\
             [server]\nhostname = \"localhost\"\n\
             [listen]\nsubmission = \"{submission}\"\nsubmissions = \"{submissions}\"\n\
             http = \"{http}\"\n\
             [tls]\ncert = {cert_path:?}\nkey = {key_path:?}\n\
             [store]\npath = {:?}\n\
             [spool]\npath = {:?}\n\
             [delivery]\nworkers = 0\n\
             [limits]\nmax_sessions = 20000\nmax_sessions_per_ip = 20000\n\
             [log]\nlevel = {log_level:?}\n",
            dir.join("store/postern.db"),
            dir.join("spool"),
        );
        postern::config::Config::parse(&text).map_err(|e| anyhow::anyhow!("bench config: {e}"))?;
        let config = dir.join("postern.toml");
        std::fs::write(&config, text)?;
        let log = dir.join("server.log");
        let child = std::process::Command::new(bin)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let mut server = Self {
            child,
            pid,
            submission,
            submissions,
            log,
        };
        let deadline = Instant::now() + Self::READY_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "server exited ({status}) during start:\n{}",
                    server.log_tail()
                );
            }
            if readyz(http) {
                eprintln!("{}: postern serve (pid {pid}) ready", cert.label());
                return Ok(server);
            }
            if Instant::now() > deadline {
                server.kill();
                bail!("server not ready after 30 s:\n{}", server.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Self::STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(
                    status.success(),
                    "server exited with {status}:\n{}",
                    self.log_tail()
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("server did not stop within {:?}", Self::STOP_TIMEOUT);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Whether `GET /readyz` answers 200.
fn readyz(http: SocketAddr) -> bool {
    let Ok(mut tcp) = std::net::TcpStream::connect_timeout(&http, Duration::from_secs(1)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    tcp.write_all(request.as_bytes()).is_ok()
        && tcp.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

fn print_table(results: &[CaseResult], window: Duration, warmup: Duration) {
    println!(
        "Window {:.1} s per case after {:.1} s of warm-up; `{}`; {}.\n",
        window.as_secs_f64(),
        warmup.as_secs_f64(),
        std::env::args().collect::<Vec<_>>().join(" "),
        machine()
    );
    println!(
        "| cert | port | TLS | handshake | clients | sessions | conn/s | resumed | server µs/conn | TLS µs | server cores | client µs/conn | client cores | p50 ms | p99 ms | errors |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let plain = results.iter().find(|p| {
            p.cert == r.cert && p.clients == r.clients && p.handshake == Handshake::Plain
        });
        let tls_us = match (r.handshake, plain) {
            (Handshake::Plain, _) | (_, None) => "-".to_string(),
            (_, Some(p)) => format!("{:.0}", r.server_us() - p.server_us()),
        };
        let secs = r.window.as_secs_f64();
        let resumed = match r.handshake {
            Handshake::Plain => "-".to_string(),
            _ => format!(
                "{:.0}%",
                100.0 * r.resumed as f64 / r.sessions.max(1) as f64
            ),
        };
        let ms = |p: f64| percentile(&r.latencies, p).as_secs_f64() * 1e3;
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {:.0} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            r.cert.label(),
            r.port.label(),
            r.version.map_or("-", TlsVersion::label),
            r.handshake.label(),
            r.clients,
            r.sessions,
            r.sessions as f64 / secs,
            resumed,
            r.server_us(),
            tls_us,
            r.server_cpu.as_secs_f64() / secs,
            r.per_session(r.client_cpu),
            r.client_cpu.as_secs_f64() / secs,
            ms(0.5),
            ms(0.99),
            r.errors,
        );
    }
    for r in results.iter().filter(|r| r.errors > 0) {
        println!(
            "\n{} {} {} c{}: first error: {}",
            r.cert.label(),
            r.port.label(),
            r.handshake.label(),
            r.clients,
            r.first_error.as_deref().unwrap_or("?")
        );
    }
}

/// The machine's cores and load average, for the record.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cores} cores, load average {}", load.join(" "))
}
