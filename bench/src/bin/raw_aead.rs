//! `raw-aead`: the speed of the envelope AEAD as the client links it.
//!
//! The client seals each envelope with HPKE, whose AEAD is ChaCha20-Poly1305
//! from aws-lc (`chappe_client::aead`); `--impl rustcrypto` measures the
//! portable crate `hpke` would use by default, for comparison. This seals
//! one `--size` buffer in place again and again (a fresh nonce each time)
//! and reports bytes per second, for bench/run to set beside `openssl speed
//! -evp chacha20-poly1305` measured in the same run: the target is at least
//! half of OpenSSL's rate.

use std::time::Instant;

use anyhow::anyhow;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chappe_bench::print_json;
use chappe_client::aead::AwsLcChaCha20Poly1305;
use clap::{Parser, ValueEnum};
use rand::RngCore;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "ChaCha20-Poly1305 seal rate of the client's AEAD crate")]
struct Args {
    #[arg(long = "impl", value_enum, default_value = "aws-lc")]
    implementation: Impl,
    /// Bytes per seal (OpenSSL's `speed` reports 16384 as its largest block).
    #[arg(long, default_value_t = 16384)]
    size: usize,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Impl {
    /// What the client links (`chappe_client::aead`).
    AwsLc,
    /// RustCrypto's `chacha20poly1305`.
    Rustcrypto,
}

#[derive(Serialize)]
struct Report {
    implementation: Impl,
    size: usize,
    seconds: f64,
    seals: u64,
    bytes_per_sec: f64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let duration = chappe_bench::seconds(a.seconds)?;
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    let (seals, secs) = match a.implementation {
        Impl::AwsLc => run(&AwsLcChaCha20Poly1305::new(&key.into()), a.size, duration)?,
        Impl::Rustcrypto => run(
            &chacha20poly1305::ChaCha20Poly1305::new(&key.into()),
            a.size,
            duration,
        )?,
    };
    let bytes = seals as f64 * a.size as f64;
    print_json(&Report {
        implementation: a.implementation,
        size: a.size,
        seconds: secs,
        seals,
        bytes_per_sec: bytes / secs,
    })
}

fn run<A: AeadInOut<NonceSize = chacha20poly1305::aead::consts::U12>>(
    aead: &A,
    size: usize,
    duration: std::time::Duration,
) -> anyhow::Result<(u64, f64)> {
    let mut buf = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut buf);
    let mut nonce = [0u8; 12];
    let mut seals = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        // 64 seals between clock reads keep the clock out of the figure.
        for _ in 0..64 {
            for (n, b) in nonce.iter_mut().zip(seals.to_le_bytes()) {
                *n = b;
            }
            let tag = aead
                .encrypt_inout_detached(&nonce.into(), b"", buf.as_mut_slice().into())
                .map_err(|_| anyhow!("seal failed"))?;
            std::hint::black_box(&tag);
            seals += 1;
        }
    }
    Ok((seals, start.elapsed().as_secs_f64()))
}
