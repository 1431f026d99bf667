//! What the bench binaries share: running the admin CLI, a free loopback port, the load
//! client's own CPU time and nearest-rank percentiles. Each bench includes this file with
//! `#[path = "support/mod.rs"] mod support;` (a bench is a binary of its own, not a module of
//! the library) and uses a part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use anyhow::{Context, Result, ensure};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `postern --config CONFIG ARGS...`, as an operator would; returns its stdout.
pub fn admin(bin: &Path, config: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "postern {}: {}: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A loopback address nobody listens on right now.
pub fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// CPU time (user and system) used by this process: the load client's own cost.
pub fn own_cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Nearest-rank percentile (`p` in 0..=1) of sorted values; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The data of a test message from `from` to `to` with `subject` and a body of `body_len`
/// bytes in lines of at most 78 characters, ending with the final dot (ready to write after
/// the `354`).
pub fn message_data(from: &str, to: &str, subject: &str, body_len: usize) -> Vec<u8> {
    let mut data = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
         Date: Fri, 04 Dec 2026 12:00:00 +0000\r\n\
         Message-ID: <{subject}@client.bench.test>\r\n\r\n"
    )
    .into_bytes();
    let mut left = body_len;
    while left >= 2 {
        let line = (left - 2).min(78);
        data.extend(std::iter::repeat_n(b'X', line));
        data.extend_from_slice(b"\r\n");
        left -= line + 2;
    }
    data.extend_from_slice(b".\r\n");
    data
}
