//! `postern-dkim-bench`: DKIM-signed messages per second on one core, beside the two costs
//! that no signer can avoid: the bare signature operation and the bare SHA-256 of the body.
//!
//! # Run
//! ```text
//! cargo run --release --bin postern-dkim-bench              # ~30 seconds
//! cargo run --release --bin postern-dkim-bench -- --seconds 0.3   # quicker, noisier
//! ```
//!
//! # What is measured
//! For RSA-2048 and Ed25519, at 1 KB, 100 KB and 10 MB, on one thread:
//! - *signed*: the relay's whole signing path for one message: the message fed in 64 KiB
//!   pieces (the size of the listener's DATA reads) through [`MessageHasher`] (header section
//!   kept, body canonicalised and hashed), then [`signature_field`] (header canonicalisation,
//!   the signature, the `DKIM-Signature` text);
//! - *sign op*: the key signing 32 bytes, nothing else;
//! - *SHA-256*: aws-lc's SHA-256 over the message bytes in one call.
//!
//! The overhead column is signed time minus (sign op + SHA-256), relative to signed time: what
//! canonicalisation and header handling cost on top of the work any signer must do.

use anyhow::{Context, bail};
use mail_auth::common::crypto::SigningKey;
use postern::dkim::keys::{self, KeyMaterial};
use postern::dkim::{ActiveKey, Algorithm, MessageHasher, signature_field};
use std::hint::black_box;
use std::time::{Duration, Instant};

const PIECE: usize = 64 * 1024;
const SIZES: [(usize, &str); 3] = [(1_000, "1 KB"), (100_000, "100 KB"), (10_000_000, "10 MB")];

fn parse_args() -> anyhow::Result<Duration> {
    let mut seconds = 1.5;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => seconds = it.next().context("--seconds S")?.parse()?,
            other => bail!("unknown argument {other} (use --seconds S)"),
        }
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A plain-text message of about `size` bytes with the usual header fields.
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: Alice Example <alice@example.org>\r\nTo: bob@example.net\r\n\
Subject: Quarterly figures\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\
Message-ID: <bench@example.org>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\n"
        .to_vec();
    let line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

/// Runs `f` repeatedly for at least `window`; returns seconds per call.
fn per_call(window: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < window || calls < 3 {
        f();
        calls += 1;
    }
    start.elapsed().as_secs_f64() / calls as f64
}

fn main() -> anyhow::Result<()> {
    let window = parse_args()?;
    println!(
        "| key | message | signed msg/s | signed µs/msg | sign op µs | SHA-256 µs | overhead |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (algorithm, name) in [
        (Algorithm::Rsa, "RSA-2048"),
        (Algorithm::Ed25519, "Ed25519"),
    ] {
        let material = KeyMaterial::generate(algorithm, 2048)?;
        let key: ActiveKey =
            keys::active_key("example.org", "bench", algorithm, &material.private_key)?;
        let sign_op = per_call(window, || {
            black_box(key.key.sign(&black_box([7u8; 32])[..]).expect("sign"));
        });
        for (size, label) in SIZES {
            let msg = message(size);
            let signed = per_call(window, || {
                let mut hasher = MessageHasher::new();
                for piece in msg.chunks(PIECE) {
                    hasher.write(piece);
                }
                let hashed = hasher.finish().expect("header section fits");
                black_box(signature_field(&hashed, b"", &key, 1_700_000_000).expect("sign"));
            });
            let sha = per_call(window, || {
                black_box(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    black_box(&msg),
                ));
            });
            let overhead = (signed - sign_op - sha) / signed * 100.0;
            println!(
                "| {name} | {label} | {:.0} | {:.1} | {:.1} | {:.1} | {overhead:.0} % |",
                1.0 / signed,
                signed * 1e6,
                sign_op * 1e6,
                sha * 1e6,
            );
        }
    }
    Ok(())
}
