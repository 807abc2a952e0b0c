//! The load generator behind `chappe bench`: owner sessions and anonymous
//! senders over real QUIC against a running relay.
//!
//! Envelopes are random bytes of a bucket size (the relay cannot tell them
//! from sealed ones), except for a 16-byte header: nanoseconds since the
//! bench started and a sequence number, which the owner side reads back to
//! measure delivery latency. Latencies go into HDR histograms (µs).
//!
//! - *online*: owners are subscribed; a send counts when its owner got the
//!   envelope (and acks it in batches); the send's own latency is the time
//!   to a durable OK.
//! - *offline*: senders fill the mailboxes with nobody listening; then the
//!   owners subscribe and fetch + ack the whole backlog, timed separately.
//!
//! Closed loop (`rate = 0`) keeps `inflight` sends outstanding per
//! connection; open loop starts sends on a fixed schedule, each in its own
//! task, whether or not earlier ones were answered, so a relay that stalls
//! cannot hold back the sends behind the stall: each counts its full wait
//! (no coordinated omission). Its latency runs from the moment the send
//! starts, as the envelope's own timestamp does, not from the instant it
//! was due: tokio's timer fires on whole milliseconds, and counting from
//! the due instant put up to a millisecond of the generator's own rounding
//! into every send (a p50 of 1.9 ms at 5,000 sends/s whose deliveries, timed
//! from the envelope's timestamp, took 1.1 ms). How late the generator
//! started its sends is reported apart, as the schedule lag: a generator
//! that cannot keep its schedule shows there, and in a rate below target.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chappe_proto::descriptor::Descriptor;
use chappe_proto::noise::Keypair;
use chappe_proto::{DeliveryToken, ReceiveId, SendId};
use hdrhistogram::Histogram;
use rand::RngCore;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::error::ClientError;
use crate::session::{OwnerSession, Sender};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Online,
    Offline,
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub owners: usize,
    pub senders: usize,
    /// Envelope size in bytes; must be a bucket size.
    pub size: usize,
    pub mode: Mode,
    /// Target sends per second over all senders; 0 = closed loop.
    pub rate: u64,
    /// Outstanding sends per sender connection (closed loop).
    pub inflight: usize,
    pub duration: Duration,
    /// The relay's pid, to report its CPU time and memory.
    pub relay_pid: Option<u32>,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    /// Reads the percentiles off a histogram of microseconds (all zero when
    /// it is empty). `bench/run`'s baselines use the same type.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub mode: Mode,
    pub owners: usize,
    pub senders: usize,
    pub size: usize,
    pub rate_target: u64,
    pub seconds: f64,
    /// Sends answered OK (durable on the relay).
    pub sent: u64,
    pub send_per_sec: f64,
    /// Online: envelopes received by owners during the run.
    pub delivered: u64,
    pub delivered_per_sec: f64,
    pub errors: BTreeMap<String, u64>,
    pub send_latency: Percentiles,
    pub delivery_latency: Option<Percentiles>,
    /// Open loop: how late after its due instant each send started (the
    /// generator's own lateness, not the relay's).
    pub schedule_lag: Option<Percentiles>,
    /// Offline: seconds and rate to fetch + ack the backlog.
    pub drain_seconds: Option<f64>,
    pub drain_per_sec: Option<f64>,
    /// Relay CPU time used during the run, in cores (1.0 = one core busy).
    pub relay_cpu_cores: Option<f64>,
    pub relay_rss_kib: Option<u64>,
    pub relay_peak_rss_kib: Option<u64>,
}

// 1 µs .. 100 s at 3 significant digits: constant, valid bounds.
#[allow(clippy::expect_used)]
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("constant histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record(micros(d));
}

/// `d` in whole microseconds, within the histograms' bounds.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 100_000_000)
}

/// Latencies one task measured that are not yet in a shared histogram.
///
/// A histogram per worker (1 µs to 100 s at 3 digits is some 18,000
/// counters, 147 KB) put 37 MB of histograms behind the 256 workers of the
/// online shape: every record was a cache miss, 6 % of the load
/// generator's CPU in `perf`. Tasks buffer a batch of values and fold it
/// into the one shared histogram, which stays in cache.
struct Samples(Vec<u64>);

impl Samples {
    const BATCH: usize = 256;

    fn new() -> Self {
        Samples(Vec::with_capacity(Self::BATCH))
    }

    /// Adds one; says whether the batch is full and should be flushed.
    fn add(&mut self, d: Duration) -> bool {
        self.0.push(micros(d));
        self.0.len() >= Self::BATCH
    }

    async fn flush(&mut self, into: &Mutex<Histogram<u64>>) {
        if self.0.is_empty() {
            return;
        }
        let mut h = into.lock().await;
        for v in self.0.drain(..) {
            let _ = h.record(v);
        }
    }
}

struct Target {
    send_id: SendId,
    token: DeliveryToken,
}

struct Shared {
    start: Instant,
    stop: AtomicBool,
    /// Online owners stop at their next quiet moment (after flushing).
    owners_finish: AtomicBool,
    sent: AtomicU64,
    delivered: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    send_hist: Mutex<Histogram<u64>>,
    delivery_hist: Mutex<Histogram<u64>>,
    /// Open loop: how long after its due instant each send started.
    lag_hist: Mutex<Histogram<u64>>,
}

impl Shared {
    async fn error(&self, e: &ClientError) {
        let key = match e.code() {
            Some(c) => c.name().to_string(),
            None => "connection".to_string(),
        };
        *self.errors.lock().await.entry(key).or_insert(0) += 1;
    }
}

/// Random bytes of one envelope's size, drawn once per worker: every
/// envelope is this body behind its own 16-byte header. Drawing fresh
/// random bytes for each (ChaCha, about 0.7 µs per KiB) cost the load
/// generator more than some of what it measures.
fn body(size: usize) -> Vec<u8> {
    let mut b = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

fn envelope(body: &[u8], start: Instant, n: u64) -> Bytes {
    let t = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let mut b = bytes::BytesMut::with_capacity(body.len().max(16));
    b.extend_from_slice(&t.to_be_bytes());
    b.extend_from_slice(&n.to_be_bytes());
    b.extend_from_slice(body.get(16..).unwrap_or_default());
    b.freeze()
}

fn sent_at(ciphertext: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(ciphertext.get(..8)?.try_into().ok()?))
}

/// Process CPU ticks (user + system) and RSS/peak RSS from /proc.
fn proc_sample(pid: u32) -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((utime + stime, kib("VmRSS:")?, kib("VmHWM:")?))
}

/// Clock ticks per second for /proc times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

pub async fn run(desc: &Descriptor, cfg: &BenchConfig) -> Result<BenchReport, ClientError> {
    chappe_proto::envelope::check_len(cfg.size).map_err(ClientError::Refused)?;
    let shared = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        owners_finish: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        errors: Mutex::default(),
        send_hist: Mutex::new(histogram()),
        delivery_hist: Mutex::new(histogram()),
        lag_hist: Mutex::new(histogram()),
    });

    // Owners and their mailboxes.
    let mut owners = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..cfg.owners.max(1) {
        let s = OwnerSession::connect(desc, &Keypair::generate()).await?;
        let token = DeliveryToken::random();
        let (mailbox, send_id) = s.create_mailbox(&[token]).await?;
        targets.push(Target { send_id, token });
        owners.push((s, mailbox));
    }
    let targets = Arc::new(targets);

    let mut owner_tasks = Vec::new();
    if cfg.mode == Mode::Online {
        for (s, mailbox) in owners.drain(..) {
            s.subscribe(mailbox).await?;
            owner_tasks.push(tokio::spawn(receive(s, mailbox, shared.clone(), None)));
        }
    }

    let sample0 = cfg.relay_pid.and_then(proc_sample);
    let t0 = Instant::now();
    let mut sender_tasks = Vec::new();
    for i in 0..cfg.senders.max(1) {
        let sender = Arc::new(Sender::connect(desc).await?);
        sender_tasks.push(tokio::spawn(drive(
            sender,
            i,
            targets.clone(),
            shared.clone(),
            cfg.clone(),
        )));
    }
    tokio::time::sleep(cfg.duration).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut senders = Vec::new();
    for t in sender_tasks {
        if let Ok(s) = t.await {
            senders.push(s);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let sent = shared.sent.load(Ordering::Relaxed);
    // Closed once timed, and before the owners drain what they sent, so
    // that the relay frees them at once.
    let mut closes = tokio::task::JoinSet::new();
    for s in senders.into_iter().filter_map(Arc::into_inner) {
        closes.spawn(s.close());
    }
    closes.join_all().await;

    let (mut drain_seconds, mut drain_per_sec) = (None, None);
    if cfg.mode == Mode::Online {
        // Give the last deliveries a moment, then stop the owners.
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.delivered.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shared.owners_finish.store(true, Ordering::Relaxed);
        finish_owners(owner_tasks).await;
    } else {
        let d0 = Instant::now();
        let per_owner = sent / u64::try_from(owners.len().max(1)).unwrap_or(1);
        let mut tasks = Vec::new();
        for (s, mailbox) in owners.drain(..) {
            s.subscribe(mailbox).await?;
            shared.stop.store(false, Ordering::Relaxed);
            tasks.push(tokio::spawn(receive(
                s,
                mailbox,
                shared.clone(),
                Some(per_owner),
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while shared.delivered.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let d = d0.elapsed().as_secs_f64();
        shared.owners_finish.store(true, Ordering::Relaxed);
        finish_owners(tasks).await;
        drain_seconds = Some(d);
        drain_per_sec = Some(shared.delivered.load(Ordering::Relaxed) as f64 / d);
    }
    let sample1 = cfg.relay_pid.and_then(proc_sample);
    let wall = t0.elapsed().as_secs_f64();
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let cpu = match (sample0, sample1) {
        (Some(a), Some(b)) => Some((b.0.saturating_sub(a.0)) as f64 / USER_HZ / wall),
        _ => None,
    };
    let errors = shared.errors.lock().await.clone();
    let send_latency = Percentiles::of(&*shared.send_hist.lock().await);
    let dh = shared.delivery_hist.lock().await;
    let lag = shared.lag_hist.lock().await;
    Ok(BenchReport {
        mode: cfg.mode,
        owners: cfg.owners.max(1),
        senders: cfg.senders.max(1),
        size: cfg.size,
        rate_target: cfg.rate,
        seconds,
        sent,
        send_per_sec: sent as f64 / seconds,
        delivered,
        delivered_per_sec: if cfg.mode == Mode::Online {
            delivered as f64 / seconds
        } else {
            0.0
        },
        errors,
        send_latency,
        delivery_latency: (cfg.mode == Mode::Online).then(|| Percentiles::of(&dh)),
        schedule_lag: (cfg.rate > 0).then(|| Percentiles::of(&lag)),
        drain_seconds,
        drain_per_sec,
        relay_cpu_cores: cpu,
        relay_rss_kib: sample1.map(|s| s.1),
        relay_peak_rss_kib: sample1.map(|s| s.2),
    })
}

/// Each owner flushes its last latencies and acks and closes after 5 ms
/// without deliveries (its close waits for those acks to be acknowledged);
/// one that has not within two seconds is cut off.
async fn finish_owners(tasks: Vec<tokio::task::JoinHandle<()>>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for mut t in tasks {
        if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
            t.abort();
        }
    }
}

/// One sender connection: closed loop with `inflight` workers, or open
/// loop at `rate / senders` per second. Gives the sender back, for closing.
async fn drive(
    sender: Arc<Sender>,
    index: usize,
    targets: Arc<Vec<Target>>,
    shared: Arc<Shared>,
    cfg: BenchConfig,
) -> Arc<Sender> {
    let mut workers = Vec::new();
    if cfg.rate == 0 {
        for w in 0..cfg.inflight.max(1) {
            let (sender, targets, shared, size) =
                (sender.clone(), targets.clone(), shared.clone(), cfg.size);
            workers.push(tokio::spawn(async move {
                let body = body(size);
                let mut samples = Samples::new();
                let mut n = u64::try_from(index * 1_000_000 + w * 10_000).unwrap_or(0);
                while !shared.stop.load(Ordering::Relaxed) {
                    n += 1;
                    let Some(t) = targets.get(usize::try_from(n).unwrap_or(0) % targets.len())
                    else {
                        break;
                    };
                    let began = Instant::now();
                    match sender
                        .send(t.send_id, t.token, envelope(&body, shared.start, n))
                        .await
                    {
                        Ok(()) => {
                            shared.sent.fetch_add(1, Ordering::Relaxed);
                            if samples.add(began.elapsed()) {
                                samples.flush(&shared.send_hist).await;
                            }
                        }
                        Err(e) => {
                            shared.error(&e).await;
                            if e.code().is_none() {
                                break;
                            }
                        }
                    }
                }
                samples.flush(&shared.send_hist).await;
            }));
        }
    } else {
        let per_conn = (cfg.rate as f64 / cfg.senders.max(1) as f64).max(0.001);
        let interval = Duration::from_secs_f64(1.0 / per_conn);
        let first = Instant::now();
        let mut n: u64 = u64::try_from(index).unwrap_or(0) * 1_000_000_000;
        let mut k: u32 = 0;
        let body: Arc<[u8]> = body(cfg.size).into();
        while !shared.stop.load(Ordering::Relaxed) {
            let due = first + interval * k;
            k = k.saturating_add(1);
            tokio::time::sleep_until(due.into()).await;
            n += 1;
            let (sender, targets, shared, body) = (
                sender.clone(),
                targets.clone(),
                shared.clone(),
                body.clone(),
            );
            workers.push(tokio::spawn(async move {
                let Some(t) = targets.get(usize::try_from(n).unwrap_or(0) % targets.len()) else {
                    return;
                };
                let began = Instant::now();
                record(
                    &mut *shared.lag_hist.lock().await,
                    began.saturating_duration_since(due),
                );
                match sender
                    .send(t.send_id, t.token, envelope(&body, shared.start, n))
                    .await
                {
                    Ok(()) => {
                        record(&mut *shared.send_hist.lock().await, began.elapsed());
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => shared.error(&e).await,
                }
            }));
            if workers.len() > 4096 {
                workers.retain(|w| !w.is_finished());
            }
        }
    }
    for w in workers {
        let _ = w.await;
    }
    sender
}

/// One owner: takes deliveries, records their latency, acks in batches.
///
/// It waits for one delivery, then takes every one already queued behind
/// it before it waits again, acking each 64 and whatever is left once the
/// relay has gone quiet for 5 ms.
async fn receive(
    mut s: OwnerSession,
    mailbox: ReceiveId,
    shared: Arc<Shared>,
    expect: Option<u64>,
) {
    let mut samples = Samples::new();
    let mut pending = Vec::with_capacity(64);
    let mut got: u64 = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_millis(5), s.next_delivery()).await;
        match next {
            Ok(Some(first)) => {
                let mut d = Some(first);
                while let Some(delivery) = d.take() {
                    if let Some(t) = sent_at(&delivery.ciphertext) {
                        let now = u64::try_from(shared.start.elapsed().as_nanos()).unwrap_or(0);
                        if samples.add(Duration::from_nanos(now.saturating_sub(t))) {
                            samples.flush(&shared.delivery_hist).await;
                        }
                    }
                    pending.push(delivery.seq);
                    got += 1;
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                    if pending.len() >= 64 {
                        let _ = s.ack(mailbox, std::mem::take(&mut pending)).await;
                    }
                    d = s.try_next_delivery();
                }
            }
            Ok(None) => break,
            Err(_) => {
                if !pending.is_empty() {
                    let _ = s.ack(mailbox, std::mem::take(&mut pending)).await;
                }
                // Flush whenever it is quiet too; the task may be aborted.
                samples.flush(&shared.delivery_hist).await;
                if expect.is_some_and(|e| got >= e) || shared.owners_finish.load(Ordering::Relaxed)
                {
                    break;
                }
            }
        }
    }
    if !pending.is_empty() {
        let _ = s.ack(mailbox, pending).await;
    }
    samples.flush(&shared.delivery_hist).await;
    s.close().await;
}

impl BenchReport {
    /// The human-readable summary `chappe bench` prints.
    pub fn render(&self) -> String {
        let p = |x: &Percentiles| {
            format!(
                "p50 {} µs  p90 {} µs  p99 {} µs  p99.9 {} µs  max {} µs  (n={})",
                x.p50_us, x.p90_us, x.p99_us, x.p999_us, x.max_us, x.count
            )
        };
        let mut out = format!(
            "mode {:?}, {} owners, {} senders, {} B envelopes, {}, {:.1} s\n",
            self.mode,
            self.owners,
            self.senders,
            self.size,
            if self.rate_target == 0 {
                "closed loop".to_string()
            } else {
                format!("open loop at {}/s", self.rate_target)
            },
            self.seconds
        );
        out += &format!(
            "sent (durable OK): {} = {:.0}/s\n",
            self.sent, self.send_per_sec
        );
        out += &format!("send latency:      {}\n", p(&self.send_latency));
        if let Some(l) = &self.schedule_lag {
            out += &format!("schedule lag:      {}\n", p(l));
        }
        if let Some(d) = &self.delivery_latency {
            out += &format!(
                "delivered:         {} = {:.0}/s\n",
                self.delivered, self.delivered_per_sec
            );
            out += &format!("delivery latency:  {}\n", p(d));
        }
        if let (Some(s), Some(r)) = (self.drain_seconds, self.drain_per_sec) {
            out += &format!(
                "backlog fetch+ack: {} in {:.2} s = {:.0}/s\n",
                self.delivered, s, r
            );
        }
        if !self.errors.is_empty() {
            out += &format!("errors:            {:?}\n", self.errors);
        }
        if let Some(c) = self.relay_cpu_cores {
            out += &format!(
                "relay:             {:.2} cores, RSS {} KiB (peak {} KiB)\n",
                c,
                self.relay_rss_kib.unwrap_or(0),
                self.relay_peak_rss_kib.unwrap_or(0)
            );
        }
        out
    }
}
