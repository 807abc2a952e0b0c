//! `peer-mqtt`: drives a local MQTT broker (mosquitto) the way `chappe bench
//! --mode online` drives the relay: N publishers, one subscriber, payloads of
//! `--size` bytes with the send time inside, closed loop.
//!
//! - QoS 0: a publisher may have `--window` messages that the subscriber has
//!   not received yet (the subscriber hands the credit back), so the broker
//!   is never asked to buffer (or drop) more than N × window messages.
//! - QoS 1: a publisher may have `--window` publishes without a PUBACK; the
//!   subscriber subscribes at QoS 1 and acknowledges every delivery.
//!
//! Reports delivered messages per second at the subscriber and the delivery
//! latency (send → subscriber), plus the PUBACK latency for QoS 1. As in
//! `chappe bench`, deliveries that arrive within 5 s after the send period
//! are counted and divided by the send period.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chappe_bench::{
    Errors, Load, Percentiles, ServerUsage, histogram, nanos_since, parse_header, payload,
    print_json, proc_sample, record, record_us,
};
use clap::Parser;
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use serde::Serialize;
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
#[command(about = "MQTT broker benchmark (closed loop, N publishers, 1 subscriber)")]
struct Args {
    #[command(flatten)]
    load: Load,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// 0 or 1.
    #[arg(long, default_value_t = 0)]
    qos: u8,
}

#[derive(Serialize)]
struct Report {
    peer: &'static str,
    qos: u8,
    publishers: usize,
    window: usize,
    size: usize,
    seconds: f64,
    published: u64,
    /// QoS 1: publishes the broker acknowledged.
    acked: u64,
    published_per_sec: f64,
    delivered: u64,
    delivered_per_sec: f64,
    /// Published but not received within 5 s after the send period.
    undelivered: u64,
    /// Deliveries inside the send period only.
    delivered_in_period_per_sec: f64,
    delivery_latency: Percentiles,
    puback_latency: Option<Percentiles>,
    #[serde(flatten)]
    server: ServerUsage,
    errors: std::collections::BTreeMap<String, u64>,
}

const TOPIC: &str = "chappe/bench";

struct Shared {
    epoch: Instant,
    stop: AtomicBool,
    published: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    /// Per-publisher credit: QoS 0 from the subscriber, QoS 1 from PUBACKs.
    windows: Vec<Arc<Semaphore>>,
    delivery_hist: std::sync::Mutex<Histogram<u64>>,
    puback_hist: std::sync::Mutex<Histogram<u64>>,
    errors: Errors,
}

fn options(id: String, a: &Args) -> MqttOptions {
    let mut o = MqttOptions::new(id, a.host.clone(), a.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(a.load.size + 1024, a.load.size + 1024);
    o.set_inflight(u16::try_from(a.load.window.max(1)).unwrap_or(u16::MAX));
    o.set_request_channel_capacity(a.load.window.max(1) + 8);
    o
}

/// A client with TCP_NODELAY (the broker is configured with it too): small
/// messages in a closed loop must not wait for Nagle + delayed ACK.
fn client(id: String, a: &Args, cap: usize) -> (AsyncClient, EventLoop) {
    let (c, mut el) = AsyncClient::new(options(id, a), cap);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    (c, el)
}

/// Polls until the broker answers with `want` (CONNACK or SUBACK).
async fn wait_for(el: &mut EventLoop, want: fn(&Packet) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), el.poll())
            .await
            .context("timed out waiting for the broker")?
            .context("MQTT connection")?;
        if let Event::Incoming(p) = ev
            && want(&p)
        {
            return Ok(());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let qos = match a.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        q => bail!("--qos {q}: only 0 and 1 are measured"),
    };
    let duration = chappe_bench::seconds(a.load.seconds)?;
    let publishers = a.load.publishers.max(1);
    let window = a.load.window.max(1);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        published: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        windows: (0..publishers)
            .map(|_| Arc::new(Semaphore::new(window)))
            .collect(),
        delivery_hist: std::sync::Mutex::new(histogram()?),
        puback_hist: std::sync::Mutex::new(histogram()?),
        errors: Errors::default(),
    });

    // The subscriber first, and only once its SUBACK is in.
    let (sub, mut sub_loop) = client(format!("chappe-bench-sub-{}", std::process::id()), &a, 64);
    wait_for(&mut sub_loop, |p| matches!(p, Packet::ConnAck(_))).await?;
    sub.subscribe(TOPIC, qos).await.context("subscribing")?;
    wait_for(&mut sub_loop, |p| matches!(p, Packet::SubAck(_))).await?;
    let period_end = Arc::new(AtomicU64::new(u64::MAX));
    let in_period = Arc::new(AtomicU64::new(0));
    let mut subscriber = {
        let (shared, period_end, in_period) =
            (shared.clone(), period_end.clone(), in_period.clone());
        let credit = qos == QoS::AtMostOnce;
        tokio::spawn(async move {
            loop {
                match sub_loop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let now = nanos_since(shared.epoch);
                        if let Some((t, publisher)) = parse_header(&p.payload) {
                            if let Ok(mut h) = shared.delivery_hist.lock() {
                                record_us(&mut h, now.saturating_sub(t) / 1000);
                            }
                            if credit
                                && let Some(w) = usize::try_from(publisher)
                                    .ok()
                                    .and_then(|i| shared.windows.get(i))
                            {
                                w.add_permits(1);
                            }
                        }
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                        if now <= period_end.load(Ordering::Relaxed) {
                            in_period.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !shared.stop.load(Ordering::Relaxed) {
                            shared.errors.add(format!("subscriber: {e}"));
                        }
                        break;
                    }
                }
            }
        })
    };

    // Publishers: connected before the clock starts.
    let mut clients = Vec::new();
    let mut loops = Vec::new();
    for i in 0..publishers {
        let (c, mut el) = client(
            format!("chappe-bench-pub-{}-{i}", std::process::id()),
            &a,
            window + 8,
        );
        wait_for(&mut el, |p| matches!(p, Packet::ConnAck(_))).await?;
        let sent_at: Arc<std::sync::Mutex<VecDeque<Instant>>> = Arc::default();
        let (shared2, sent_at2) = (shared.clone(), sent_at.clone());
        let credit_on_ack = qos == QoS::AtLeastOnce;
        loops.push(tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        // The broker acknowledges one connection's publishes in order.
                        let t = sent_at2.lock().ok().and_then(|mut q| q.pop_front());
                        if let (Some(t), Ok(mut h)) = (t, shared2.puback_hist.lock()) {
                            record(&mut h, t.elapsed());
                        }
                        shared2.acked.fetch_add(1, Ordering::Relaxed);
                        if credit_on_ack && let Some(w) = shared2.windows.get(i) {
                            w.add_permits(1);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !shared2.stop.load(Ordering::Relaxed) {
                            shared2.errors.add(format!("publisher: {e}"));
                        }
                        break;
                    }
                }
            }
        }));
        clients.push((c, sent_at));
    }

    let s0 = a.load.server_pid.and_then(proc_sample);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, (c, sent_at)) in clients.into_iter().enumerate() {
        let shared = shared.clone();
        let size = a.load.size;
        tasks.push(tokio::spawn(async move {
            let Some(w) = shared.windows.get(i).cloned() else {
                return c;
            };
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
                if qos == QoS::AtLeastOnce
                    && let Ok(mut q) = sent_at.lock()
                {
                    q.push_back(Instant::now());
                }
                match c.publish_bytes(TOPIC, qos, false, p).await {
                    Ok(()) => {
                        shared.published.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.errors.add(format!("publish: {e}"));
                        break;
                    }
                }
            }
            // Stay connected until the deliveries are in: the broker may
            // treat a publisher's disconnect as a reason to stop sending.
            c
        }));
    }
    tokio::time::sleep(duration).await;
    period_end.store(nanos_since(shared.epoch), Ordering::Relaxed);
    shared.stop.store(true, Ordering::Relaxed);
    let mut publishers_done = Vec::new();
    for t in tasks {
        if let Ok(c) = t.await {
            publishers_done.push(c);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let s1 = a.load.server_pid.and_then(proc_sample);
    let published = shared.published.load(Ordering::Relaxed);
    // Give the last deliveries a moment, like `chappe bench`.
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.delivered.load(Ordering::Relaxed) < published && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in publishers_done {
        let _ = c.disconnect().await;
    }
    let _ = sub.disconnect().await;
    if tokio::time::timeout(Duration::from_secs(1), &mut subscriber)
        .await
        .is_err()
    {
        subscriber.abort();
        let _ = subscriber.await;
    }
    for l in loops {
        l.abort();
        let _ = l.await;
    }
    let pct = |h: &std::sync::Mutex<Histogram<u64>>| {
        h.lock().map(|h| Percentiles::of(&h)).unwrap_or_default()
    };

    let delivered = shared.delivered.load(Ordering::Relaxed);
    let report = Report {
        peer: "mosquitto",
        qos: a.qos,
        publishers,
        window,
        size: a.load.size,
        seconds,
        published,
        acked: shared.acked.load(Ordering::Relaxed),
        published_per_sec: published as f64 / seconds,
        delivered,
        delivered_per_sec: delivered as f64 / seconds,
        undelivered: published.saturating_sub(delivered),
        delivered_in_period_per_sec: in_period.load(Ordering::Relaxed) as f64 / seconds,
        delivery_latency: pct(&shared.delivery_hist),
        puback_latency: (qos == QoS::AtLeastOnce).then(|| pct(&shared.puback_hist)),
        server: ServerUsage::between(s0, s1),
        errors: shared.errors.take(),
    };
    print_json(&report)
}
