//! Helpers shared by the benchmark binaries of `bench/run`.
//!
//! Every binary prints ONE JSON object on stdout (its results) and talks to
//! 127.0.0.1 only. Latencies go into HDR histograms in microseconds, 1 µs to
//! 100 s at 3 significant digits, reported like `chappe bench` reports them
//! (count, p50, p90, p99, p99.9, max) so `bench/run` reads both the same way.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::RngCore;
use serde::Serialize;

/// Latency percentiles in microseconds: `chappe bench`'s own type, so both
/// report the same fields the same way.
pub use chappe_client::bench::Percentiles;

/// The load shape both broker peers (`peer-mqtt`, `peer-nats`) take, with
/// the same flags `chappe bench` uses for the same knobs.
#[derive(clap::Args, Debug)]
pub struct Load {
    /// Publisher connections.
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// Outstanding messages per publisher.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// The broker's pid, to report its CPU and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// A histogram for 1 µs .. 100 s at 3 significant digits.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 100_000_000, 3).context("histogram bounds")
}

/// Records a duration in µs, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    record_us(h, u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
}

pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, 100_000_000));
}

/// Prints the result object as one line of JSON.
pub fn print_json(v: &impl Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string(v).context("encoding the result")?
    );
    Ok(())
}

/// Nanoseconds since `epoch`, saturating.
pub fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Length of the payload header: send time (ns since the bench's epoch),
/// publisher index, sequence number; all big-endian u64.
pub const HEADER: usize = 24;

/// A payload of `size` random bytes (at least [`HEADER`]) that starts with
/// the header, so the receiving side can compute latency and credit the
/// publisher's window.
pub fn payload(size: usize, epoch: Instant, publisher: u64, seq: u64) -> Bytes {
    let mut b = vec![0u8; size.max(HEADER)];
    rand::thread_rng().fill_bytes(&mut b);
    let mut header = [0u8; HEADER];
    for (i, v) in [nanos_since(epoch), publisher, seq].iter().enumerate() {
        if let Some(slot) = header.get_mut(i * 8..i * 8 + 8) {
            slot.copy_from_slice(&v.to_be_bytes());
        }
    }
    if let Some(h) = b.get_mut(..HEADER) {
        h.copy_from_slice(&header);
    }
    Bytes::from(b)
}

/// Reads (send time ns, publisher) back from a payload.
pub fn parse_header(p: &[u8]) -> Option<(u64, u64)> {
    let t = u64::from_be_bytes(p.get(..8)?.try_into().ok()?);
    let publisher = u64::from_be_bytes(p.get(8..16)?.try_into().ok()?);
    Some((t, publisher))
}

/// Clock ticks per second for /proc times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// A process's CPU time (user + system ticks) and RSS, from /proc.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub ticks: u64,
    pub rss_kib: u64,
    pub at: Instant,
}

pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(ProcSample {
        ticks: utime + stime,
        rss_kib: rss_kib(pid)?,
        at: Instant::now(),
    })
}

/// Resident set size of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Cores a process used between two samples (1.0 = one core busy).
pub fn cpu_cores(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    let (a, b) = (a?, b?);
    let wall = b.at.duration_since(a.at).as_secs_f64();
    (wall > 0.0).then(|| b.ticks.saturating_sub(a.ticks) as f64 / USER_HZ / wall)
}

/// CPU and memory of the server under test, as `chappe bench` reports the
/// relay's.
#[derive(Debug, Default, Serialize)]
pub struct ServerUsage {
    pub server_cpu_cores: Option<f64>,
    pub server_rss_kib: Option<u64>,
}

impl ServerUsage {
    pub fn between(a: Option<ProcSample>, b: Option<ProcSample>) -> ServerUsage {
        ServerUsage {
            server_cpu_cores: cpu_cores(a, b),
            server_rss_kib: b.map(|s| s.rss_kib),
        }
    }
}

/// Errors counted by kind (a message, truncated), like `chappe bench`'s map.
#[derive(Debug, Default)]
pub struct Errors(std::sync::Mutex<std::collections::BTreeMap<String, u64>>);

impl Errors {
    pub fn add(&self, what: impl std::fmt::Display) {
        let mut key = what.to_string();
        key.truncate(80);
        if let Ok(mut m) = self.0.lock() {
            *m.entry(key).or_insert(0) += 1;
        }
    }

    pub fn take(&self) -> std::collections::BTreeMap<String, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Duration from a (positive) number of seconds given on the command line.
/// The `--relay` argument, with the text in the error when it is not one.
pub fn descriptor(text: &str) -> anyhow::Result<chappe_proto::descriptor::Descriptor> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("relay descriptor \"{text}\": {e}"))
}

pub fn seconds(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).context("--seconds must be a positive number")
}

/// Closes sessions a few dozen at a time: one after another, each close
/// waits for its close frame to be sent (an owner's that acked, a round
/// trip for those acks to be acknowledged first), and thousands of close
/// frames at once overflow the relay's socket buffer on loopback, where a
/// lost one leaves the session to the relay's idle timeout (and the
/// relay's shutdown to its grace period).
pub async fn close_all<F: Future<Output = ()>>(closes: impl IntoIterator<Item = F>) {
    use futures_util::StreamExt;
    futures_util::stream::iter(closes)
        .buffer_unordered(32)
        .for_each(|()| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let epoch = Instant::now();
        let p = payload(1024, epoch, 7, 42);
        assert_eq!(p.len(), 1024);
        let (t, publisher) = parse_header(&p).unwrap();
        assert_eq!(publisher, 7);
        assert!(t <= nanos_since(epoch));
        assert_eq!(u64::from_be_bytes(p[16..24].try_into().unwrap()), 42);
    }

    #[test]
    fn percentiles_of_empty_histogram() {
        let h = histogram().unwrap();
        assert_eq!(Percentiles::of(&h).count, 0);
    }

    #[test]
    fn own_process_sample() {
        let s = proc_sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
    }
}
