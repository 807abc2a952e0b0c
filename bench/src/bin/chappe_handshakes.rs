//! `chappe-handshakes`: session establishment against a running relay —
//! QUIC + TLS (X25519MLKEM768) + the Noise NK handshake bound to it — with
//! the client library's own `Sender::connect`, closed loop with
//! `--concurrency` workers, each session closed once it is up. `chappe
//! bench` has no handshake mode; this is it.
//!
//! With `--hold K` it then opens K anonymous sender sessions and keeps them
//! idle, to read the relay's RSS per idle session (`--relay-pid`). Each
//! session has its own UDP socket, so the open-files limit must allow K.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use chappe_bench::{
    Errors, Percentiles, ServerUsage, histogram, print_json, proc_sample, record, rss_kib,
};
use chappe_client::Sender;
use clap::Parser;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Chappe session establishment rate (QUIC + Noise NK)")]
struct Args {
    /// The relay descriptor.
    #[arg(long, env = "CHAPPE_RELAY")]
    relay: String,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent handshake workers.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// The relay's pid, to report its CPU and memory.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Idle sessions to hold afterwards for the RSS measurement (0 = none).
    #[arg(long, default_value_t = 0)]
    hold: usize,
}

#[derive(Serialize)]
struct Report {
    concurrency: usize,
    seconds: f64,
    handshakes: u64,
    handshakes_per_sec: f64,
    latency: Percentiles,
    relay_cpu_cores: Option<f64>,
    relay_rss_kib: Option<u64>,
    idle: Option<Idle>,
    errors: std::collections::BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Idle {
    sessions: usize,
    relay_rss_before_kib: u64,
    relay_rss_after_kib: u64,
    relay_bytes_per_session: f64,
    open_seconds: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let desc = chappe_bench::descriptor(&a.relay)?;
    let desc = Arc::new(desc);
    let duration = chappe_bench::seconds(a.seconds)?;
    let errors = Arc::new(Errors::default());
    let count = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(std::sync::Mutex::new(histogram()?));

    let s0 = a.relay_pid.and_then(proc_sample);
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let workers: Vec<_> = (0..a.concurrency.max(1))
        .map(|_| {
            let (desc, errors, count, hist) =
                (desc.clone(), errors.clone(), count.clone(), hist.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let began = Instant::now();
                    match Sender::connect(&desc).await {
                        Ok(s) => {
                            let took = began.elapsed();
                            count.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut h) = hist.lock() {
                                record(&mut h, took);
                            }
                            s.close().await;
                        }
                        Err(e) => {
                            errors.add(format!("handshake: {e}"));
                            // Do not spin on a relay that refuses.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        if let Err(e) = w.await {
            errors.add(e);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let s1 = a.relay_pid.and_then(proc_sample);
    let usage = ServerUsage::between(s0, s1);

    let mut idle = None;
    if a.hold > 0 {
        // Let the closed sessions drain first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = a
            .relay_pid
            .ok_or_else(|| anyhow!("--hold needs --relay-pid"))?;
        let before = rss_kib(pid).unwrap_or(0);
        let t1 = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(32));
        let tasks: Vec<_> = (0..a.hold)
            .map(|_| {
                let (desc, sem) = (desc.clone(), sem.clone());
                tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await?;
                    Ok::<_, anyhow::Error>(Sender::connect(&desc).await?)
                })
            })
            .collect();
        let mut held = Vec::with_capacity(a.hold);
        for t in tasks {
            match t.await {
                Ok(Ok(s)) => held.push(s),
                Ok(Err(e)) => errors.add(format!("hold: {e:#}")),
                Err(e) => errors.add(e),
            }
        }
        let open_seconds = t1.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(pid).unwrap_or(0);
        idle = Some(Idle {
            sessions: held.len(),
            relay_rss_before_kib: before,
            relay_rss_after_kib: after,
            relay_bytes_per_session: after.saturating_sub(before) as f64 * 1024.0
                / held.len().max(1) as f64,
            open_seconds,
        });
        chappe_bench::close_all(held.into_iter().map(Sender::close)).await;
    }

    let handshakes = count.load(Ordering::Relaxed);
    let latency = hist.lock().map(|h| Percentiles::of(&h)).unwrap_or_default();
    print_json(&Report {
        concurrency: a.concurrency.max(1),
        seconds,
        handshakes,
        handshakes_per_sec: handshakes as f64 / seconds,
        latency,
        relay_cpu_cores: usage.server_cpu_cores,
        relay_rss_kib: usage.server_rss_kib,
        idle,
        errors: errors.take(),
    })
}
