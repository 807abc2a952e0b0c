//! `peer-nats`: drives a local nats-server, closed loop, N publisher
//! connections with `--window` outstanding messages each.
//!
//! - `--mode core`: core pub/sub, one subscriber connection; a publisher's
//!   window is credited back when the subscriber receives its message, so
//!   the server never has to buffer (or drop, as a slow consumer) more than
//!   N × window messages. Reports deliveries per second at the subscriber
//!   and the delivery latency (the send time travels in the payload).
//! - `--mode jetstream`: a file-store stream; each of the window's workers
//!   publishes and waits for the PubAck (the server has stored the message;
//!   whether it fsynced depends on the server's sync settings — nats-server
//!   2.9 does not fsync per message). Reports acked publishes per second and
//!   the publish → PubAck latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use chappe_bench::{
    Errors, Load, Percentiles, ServerUsage, histogram, nanos_since, parse_header, payload,
    print_json, proc_sample, record, record_us,
};
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Core,
    Jetstream,
}

#[derive(Parser, Debug)]
#[command(about = "NATS benchmark: core pub/sub or JetStream acked publish")]
struct Args {
    #[command(flatten)]
    load: Load,
    /// host:port of the nats-server.
    #[arg(long, default_value = "127.0.0.1:4222")]
    server: String,
    #[arg(long, value_enum, default_value = "core")]
    mode: Mode,
}

#[derive(Serialize)]
struct Report {
    peer: &'static str,
    mode: Mode,
    publishers: usize,
    window: usize,
    size: usize,
    seconds: f64,
    published: u64,
    published_per_sec: f64,
    /// Core: messages the subscriber received. JetStream: PubAcks.
    delivered: u64,
    delivered_per_sec: f64,
    /// Core: send → subscriber. JetStream: publish → PubAck.
    latency: Percentiles,
    #[serde(flatten)]
    server: ServerUsage,
    errors: std::collections::BTreeMap<String, u64>,
}

struct Shared {
    epoch: Instant,
    stop: AtomicBool,
    published: AtomicU64,
    delivered: AtomicU64,
    hist: std::sync::Mutex<Histogram<u64>>,
    errors: Errors,
}

const CORE_SUBJECT: &str = "chappe.bench.core";
const JS_SUBJECT: &str = "chappe.bench.js";
const JS_STREAM: &str = "CHAPPE_BENCH";

async fn connect(server: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connect(server)
        .await
        .with_context(|| format!("connecting to nats-server at {server}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let duration = chappe_bench::seconds(a.load.seconds)?;
    let publishers = a.load.publishers.max(1);
    let window = a.load.window.max(1);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        published: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        hist: std::sync::Mutex::new(histogram()?),
        errors: Errors::default(),
    });

    let mut clients = Vec::new();
    for _ in 0..publishers {
        clients.push(connect(&a.server).await?);
    }

    let (s0, t0, tasks, subscriber) = match a.mode {
        Mode::Core => {
            let windows: Arc<Vec<Semaphore>> =
                Arc::new((0..publishers).map(|_| Semaphore::new(window)).collect());
            let sub_client = connect(&a.server).await?;
            let mut sub = sub_client
                .subscribe(CORE_SUBJECT)
                .await
                .context("subscribing")?;
            sub_client
                .flush()
                .await
                .context("flushing the subscription")?;
            let subscriber = {
                let (shared, windows) = (shared.clone(), windows.clone());
                tokio::spawn(async move {
                    while let Some(m) = sub.next().await {
                        let now = nanos_since(shared.epoch);
                        if let Some((t, publisher)) = parse_header(&m.payload) {
                            if let Ok(mut h) = shared.hist.lock() {
                                record_us(&mut h, now.saturating_sub(t) / 1000);
                            }
                            if let Some(w) =
                                usize::try_from(publisher).ok().and_then(|i| windows.get(i))
                            {
                                w.add_permits(1);
                            }
                        }
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(sub_client);
                })
            };
            let s0 = a.load.server_pid.and_then(proc_sample);
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for (i, c) in clients.into_iter().enumerate() {
                let (shared, windows, size) = (shared.clone(), windows.clone(), a.load.size);
                tasks.push(tokio::spawn(async move {
                    let Some(w) = windows.get(i) else { return };
                    let mut seq = 0u64;
                    while !shared.stop.load(Ordering::Relaxed) {
                        let Ok(Ok(permit)) =
                            tokio::time::timeout(Duration::from_millis(50), w.acquire()).await
                        else {
                            continue;
                        };
                        permit.forget();
                        seq += 1;
                        let p = payload(size, shared.epoch, u64::try_from(i).unwrap_or(0), seq);
                        match c.publish(CORE_SUBJECT, p).await {
                            Ok(()) => {
                                shared.published.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                shared.errors.add(format!("publish: {e}"));
                                break;
                            }
                        }
                    }
                    let _ = c.flush().await;
                }));
            }
            (s0, t0, tasks, Some(subscriber))
        }
        Mode::Jetstream => {
            let admin = jetstream::new(connect(&a.server).await?);
            let _ = admin.delete_stream(JS_STREAM).await;
            admin
                .create_stream(jetstream::stream::Config {
                    name: JS_STREAM.to_string(),
                    subjects: vec![JS_SUBJECT.to_string()],
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .context("creating the JetStream stream (is nats-server running with -js?)")?;
            let s0 = a.load.server_pid.and_then(proc_sample);
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for (i, c) in clients.into_iter().enumerate() {
                let js = jetstream::new(c);
                for w in 0..window {
                    let (shared, js, size) = (shared.clone(), js.clone(), a.load.size);
                    tasks.push(tokio::spawn(async move {
                        let mut seq = u64::try_from(w).unwrap_or(0) << 32;
                        let publisher = u64::try_from(i).unwrap_or(0);
                        while !shared.stop.load(Ordering::Relaxed) {
                            seq += 1;
                            let began = Instant::now();
                            let p = payload(size, shared.epoch, publisher, seq);
                            let acked = async { js.publish(JS_SUBJECT, p).await?.await }.await;
                            shared.published.fetch_add(1, Ordering::Relaxed);
                            match acked {
                                Ok(_) => {
                                    if let Ok(mut h) = shared.hist.lock() {
                                        record(&mut h, began.elapsed());
                                    }
                                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => shared.errors.add(format!("publish: {e}")),
                            }
                        }
                    }));
                }
            }
            (s0, t0, tasks, None)
        }
    };

    tokio::time::sleep(duration).await;
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let s1 = a.load.server_pid.and_then(proc_sample);
    let published = shared.published.load(Ordering::Relaxed);
    if let Some(sub) = subscriber {
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.delivered.load(Ordering::Relaxed) < published && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sub.abort();
        let _ = sub.await;
    }
    if a.mode == Mode::Jetstream
        && let Ok(c) = connect(&a.server).await
    {
        let _ = jetstream::new(c).delete_stream(JS_STREAM).await;
    }
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let report = Report {
        peer: "nats-server",
        mode: a.mode,
        publishers,
        window,
        size: a.load.size,
        seconds,
        published,
        published_per_sec: published as f64 / seconds,
        delivered,
        delivered_per_sec: delivered as f64 / seconds,
        latency: shared
            .hist
            .lock()
            .map(|h| Percentiles::of(&h))
            .unwrap_or_default(),
        server: ServerUsage::between(s0, s1),
        errors: shared.errors.take(),
    };
    print_json(&report)
}
