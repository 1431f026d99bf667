//! `postern-quota-bench`: recipient holds per second, and their latency, through the quota
//! backends: one Redis server (started by the bench on a free port) and the embedded SQLite
//! store, with 1, 16 and 128 concurrent sessions.
//!
//! # Run
//! ```text
//! cargo run --release --bin postern-quota-bench            # ~1 minute
//! cargo run --release --bin postern-quota-bench -- --duration 3 --concurrency 1,16,128
//! ```
//!
//! # What is measured
//! Each simulated session runs transactions back to back the way the listener does: hold one
//! recipient per RCPT (5 per transaction), then commit the transaction's holds. Every call is
//! the real `QuotaStore` call of `postern serve` (for Redis: one `EVALSHA` of the atomic
//! check-and-hold script over one shared `ConnectionManager`, as in the server). Sessions use
//! distinct addresses with a limit high enough never to refuse, so every hold takes the full
//! path. Reported: holds per second over the window (commits are extra work in the same
//! window), p50/p99 latency of a hold, and the bench's CPU (client and backend share the
//! 2 cores; for Redis the server process's CPU is reported too).

use anyhow::{Context, bail};
use postern::policy::quota::QuotaWindow;
use postern::store::quota::builder::{QuotaBackend, QuotaStoreConfig, open_quota_store};
use postern::store::quota::{QuotaHold, QuotaKey, QuotaSettings, QuotaStore};
use postern::unix_time::now_ms;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    duration: Duration,
    concurrency: Vec<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        duration: Duration::from_secs(5),
        concurrency: vec![1, 16, 128],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--duration" => {
                let secs: f64 = it.next().context("--duration SECS")?.parse()?;
                args.duration = Duration::from_secs_f64(secs);
            }
            "--concurrency" => {
                args.concurrency = it
                    .next()
                    .context("--concurrency N,N,...")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            other => bail!("unknown argument {other} (use --duration SECS, --concurrency N,N)"),
        }
    }
    Ok(args)
}

/// A redis-server of our own on a free port, stopped on drop.
struct RedisServer {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl RedisServer {
    fn start() -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("postern-quota-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .context("redis-server (apt-get install redis-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, port, dir })
    }

    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.child.id())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no memory-safety preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

struct Row {
    backend: &'static str,
    sessions: usize,
    holds: u64,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    bench_cores: f64,
    redis_cores: Option<f64>,
}

async fn run_case(
    store: Arc<dyn QuotaStore>,
    sessions: usize,
    duration: Duration,
    tag: &str,
) -> anyhow::Result<(u64, Vec<Duration>)> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let store = store.clone();
        let key = QuotaKey::Address(format!("bench{s}-{tag}@example.org"));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut tx = 0u64;
            while Instant::now() < deadline {
                tx += 1;
                let hold_id = format!("tx{tx}");
                for _ in 0..5 {
                    let started = Instant::now();
                    let outcome = store.hold(&key, &hold_id, u32::MAX / 2, now_ms()).await?;
                    latencies.push(started.elapsed());
                    if !matches!(outcome, QuotaHold::Held { .. }) {
                        bail!("hold refused under a limit that should never be reached");
                    }
                }
                store.commit(&key, &hold_id, now_ms()).await?;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all.len() as u64, all))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn settings() -> anyhow::Result<QuotaSettings> {
    Ok(QuotaSettings {
        window: QuotaWindow::new(86_400_000, 60_000)?,
        hold_ttl_ms: 900_000,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let redis = RedisServer::start()?;
    let dir = std::env::temp_dir().join(format!("postern-quota-bench-db-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut rows = Vec::new();
    for backend in ["redis", "embedded"] {
        let mut config = QuotaStoreConfig::new(match backend {
            "redis" => QuotaBackend::Redis {
                url: format!("redis://127.0.0.1:{}/", redis.port),
            },
            _ => QuotaBackend::Embedded {
                path: dir.join("quota.db"),
            },
        });
        config.settings = settings()?;
        let store = open_quota_store(&config).await?;
        for &sessions in &args.concurrency {
            eprintln!("{backend}: {sessions} sessions for {:?}", args.duration);
            let cpu0 = process_cpu_seconds(std::process::id());
            let redis0 = redis.cpu_seconds();
            let started = Instant::now();
            let tag = format!("{backend}{sessions}");
            let (holds, mut latencies) =
                run_case(store.clone(), sessions, args.duration, &tag).await?;
            let elapsed = started.elapsed().as_secs_f64();
            latencies.sort();
            rows.push(Row {
                backend: if backend == "redis" {
                    "Redis (1 server)"
                } else {
                    "embedded (SQLite)"
                },
                sessions,
                holds,
                per_second: holds as f64 / elapsed,
                p50: percentile(&latencies, 0.50),
                p99: percentile(&latencies, 0.99),
                bench_cores: (process_cpu_seconds(std::process::id()) - cpu0) / elapsed,
                redis_cores: (backend == "redis").then(|| (redis.cpu_seconds() - redis0) / elapsed),
            });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "| backend | sessions | holds | holds/s | p50 ms | p99 ms | bench cores | redis-server cores |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.2} | {} |",
            r.backend,
            r.sessions,
            r.holds,
            r.per_second,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.bench_cores,
            r.redis_cores.map_or("-".to_string(), |c| format!("{c:.2}")),
        );
    }
    Ok(())
}
