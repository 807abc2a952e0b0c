//! `idle-owners`: holds many authenticated mailbox-owner sessions (QUIC +
//! Noise XK, `chappe_client::OwnerSession`, one identity each) open and idle
//! against a running relay, long enough for the client's QUIC keep-alive
//! pings to be what keeps them up, then checks that none dropped.
//!
//! Each session has its own UDP socket (the client library gives every
//! connection its own endpoint), so the sessions are spread over worker
//! processes of `--per-process` sessions each, to stay under the open-files
//! limit; this process coordinates them over their stdin/stdout:
//!
//! 1. every worker opens its share, `--concurrency` handshakes in flight in
//!    all, and reports;
//! 2. the sessions stay idle for `--hold-seconds`, while this process reads
//!    the relay's `chappe_connections_active{mode="owner"}` every 5 s;
//! 3. every worker checks every session: not closed by the relay, and it
//!    still answers a request (`list_mailboxes`);
//! 4. the relay's gauge is read again, then every session is closed.
//!
//! The relay's RSS (`--relay-pid`) before opening, once everything is open
//! and at the end of the hold gives the memory per idle owner session.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use chappe_bench::{Errors, print_json, proc_sample, rss_kib};
use chappe_client::OwnerSession;
use chappe_proto::descriptor::Descriptor;
use chappe_proto::noise::Keypair;
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

#[derive(Parser, Debug)]
#[command(about = "Hold many idle Chappe owner sessions (Noise XK) and check none drops")]
struct Args {
    /// The relay descriptor.
    #[arg(long, env = "CHAPPE_RELAY")]
    relay: String,
    /// Owner sessions to hold, each with its own identity.
    #[arg(long, default_value_t = 20_000)]
    sessions: usize,
    /// Sessions per worker process (each needs one open file per session).
    #[arg(long, default_value_t = 5_000)]
    per_process: usize,
    /// Handshakes in flight at once, over all workers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds to hold the sessions idle once all are open.
    #[arg(long, default_value_t = 60.0)]
    hold_seconds: f64,
    /// The relay's pid, for its RSS and CPU.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// The relay's metrics listener (host:port), for its session gauge.
    #[arg(long)]
    metrics: Option<String>,
    /// Internal: run as a worker holding `--sessions` sessions.
    #[arg(long, hide = true)]
    worker: bool,
}

/// What a worker reports once its sessions are open.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Opened {
    opened: usize,
    errors: BTreeMap<String, u64>,
    seconds: f64,
}

/// What a worker reports after checking its sessions.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checked {
    alive: usize,
    dropped: usize,
    /// Why sessions were found dropped (close code, or the request's error).
    reasons: BTreeMap<String, u64>,
    rss_kib: u64,
}

#[derive(Serialize)]
struct Report {
    sessions_requested: usize,
    sessions_opened: usize,
    processes: usize,
    concurrency: usize,
    open_seconds: f64,
    open_errors: BTreeMap<String, u64>,
    hold_seconds: f64,
    /// Seconds from the first session being opened to the check: the longest
    /// any session sat idle, to compare with the idle timeout.
    longest_idle_seconds: f64,
    /// `chappe_connections_active{mode="owner"}`: when the hold began, its
    /// lowest and highest value during the hold, and after the check.
    relay_owner_gauge_start: Option<i64>,
    relay_owner_gauge_min: Option<i64>,
    relay_owner_gauge_max: Option<i64>,
    relay_owner_gauge_after_check: Option<i64>,
    /// Sessions that still answered after the hold, and those that did not.
    alive: usize,
    dropped: usize,
    drop_reasons: BTreeMap<String, u64>,
    relay_rss_before_kib: Option<u64>,
    relay_rss_open_kib: Option<u64>,
    relay_rss_end_kib: Option<u64>,
    /// Relay RSS growth per held session, at the end of the hold.
    relay_bytes_per_session: Option<f64>,
    /// The same right after opening (+1 s).
    relay_bytes_per_session_open: Option<f64>,
    relay_cpu_cores_during_hold: Option<f64>,
    /// UDP datagrams the host received during the hold (all sockets, from
    /// /proc/net/snmp): the keep-alive pings and their acks.
    udp_datagrams_during_hold: Option<u64>,
    clients_rss_kib: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let desc = chappe_bench::descriptor(&a.relay)?;
    if a.worker {
        worker(&desc, a.sessions, a.concurrency).await
    } else {
        coordinate(&a).await
    }
}

// ------------------------------------------------------------------ worker

async fn worker(desc: &Descriptor, sessions: usize, concurrency: usize) -> anyhow::Result<()> {
    let desc = Arc::new(desc.clone());
    let errors = Errors::default();
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let tasks: Vec<_> = (0..sessions)
        .map(|_| {
            let (desc, sem) = (desc.clone(), sem.clone());
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let owner = Keypair::generate();
                Ok::<_, anyhow::Error>(OwnerSession::connect(&desc, &owner).await?)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(sessions);
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => errors.add(format!("open: {e:#}")),
            Err(e) => errors.add(e),
        }
    }
    say(&Opened {
        opened: held.len(),
        errors: errors.take(),
        seconds: t0.elapsed().as_secs_f64(),
    })?;

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    // "check": every session must still be up and answer a request.
    if stdin.next_line().await?.as_deref() == Some("check") {
        let reasons = Errors::default();
        let sem = Arc::new(tokio::sync::Semaphore::new(256));
        let held_arc = Arc::new(held);
        let checks: Vec<_> = (0..held_arc.len())
            .map(|i| {
                let (held, sem) = (held_arc.clone(), sem.clone());
                tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await?;
                    let s = held.get(i).ok_or_else(|| anyhow!("no session {i}"))?;
                    if let Some(code) = s.close_code() {
                        return Err(anyhow!("closed by the relay: {code:?}"));
                    }
                    match tokio::time::timeout(Duration::from_secs(10), s.list_mailboxes()).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(anyhow!("request failed: {e}")),
                        Err(_) => Err(anyhow!("request timed out (10 s)")),
                    }
                })
            })
            .collect();
        let mut alive = 0;
        for c in checks {
            match c.await {
                Ok(Ok(())) => alive += 1,
                Ok(Err(e)) => reasons.add(e),
                Err(e) => reasons.add(e),
            }
        }
        let reasons = reasons.take();
        say(&Checked {
            alive,
            dropped: reasons
                .values()
                .map(|&n| usize::try_from(n).unwrap_or(0))
                .sum(),
            reasons,
            rss_kib: rss_kib(std::process::id()).unwrap_or(0),
        })?;
        held = Arc::try_unwrap(held_arc).map_err(|_| anyhow!("sessions still shared"))?;
        // Wait for "close" (or the coordinator's end).
        let _ = stdin.next_line().await;
    }
    chappe_bench::close_all(held.into_iter().map(OwnerSession::close)).await;
    Ok(())
}

fn say(v: &impl Serialize) -> anyhow::Result<()> {
    print_json(v)
}

// ------------------------------------------------------------------ coordinator

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn read<T: for<'de> Deserialize<'de>>(&mut self, what: &str) -> anyhow::Result<T> {
        let line = self
            .lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow!("worker exited before reporting {what}"))?;
        serde_json::from_str(&line).with_context(|| format!("worker's {what} report: {line}"))
    }

    async fn tell(&mut self, what: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{what}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }
}

async fn coordinate(a: &Args) -> anyhow::Result<()> {
    let per = a.per_process.max(1);
    let processes = a.sessions.div_ceil(per).max(1);
    let concurrency = a.concurrency.max(processes);
    let hold = chappe_bench::seconds(a.hold_seconds)?;
    let exe = std::env::current_exe().context("own executable")?;
    let metrics = a.metrics.as_deref();

    let rss_before = a.relay_pid.and_then(rss_kib);
    let t0 = Instant::now();
    let mut workers = Vec::with_capacity(processes);
    let mut left = a.sessions;
    for i in 0..processes {
        let n = left.div_ceil(processes - i);
        left -= n;
        let share = concurrency / processes + usize::from(i < concurrency % processes);
        let mut child = tokio::process::Command::new(&exe)
            .arg("--worker")
            .args(["--relay", &a.relay])
            .args(["--sessions", &n.to_string()])
            .args(["--concurrency", &share.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("worker stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("worker stdout"))?;
        workers.push(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        });
    }

    let mut opened = 0;
    let mut open_errors = BTreeMap::new();
    for w in &mut workers {
        let r: Opened = w.read("opened").await?;
        opened += r.opened;
        for (k, v) in r.errors {
            *open_errors.entry(k).or_insert(0) += v;
        }
    }
    let open_seconds = t0.elapsed().as_secs_f64();
    eprintln!(
        "idle-owners: {opened}/{} sessions open after {open_seconds:.1} s; holding {:.0} s",
        a.sessions,
        hold.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_open = a.relay_pid.and_then(rss_kib);

    // The hold: nothing but keep-alives on the wire.
    let gauge_start = owner_gauge(metrics).await;
    let (mut gmin, mut gmax) = (gauge_start, gauge_start);
    let udp0 = udp_in_datagrams();
    let cpu0 = a.relay_pid.and_then(proc_sample);
    let end = Instant::now() + hold;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(5).min(end - Instant::now())).await;
        if let Some(g) = owner_gauge(metrics).await {
            gmin = Some(gmin.map_or(g, |m: i64| m.min(g)));
            gmax = Some(gmax.map_or(g, |m: i64| m.max(g)));
        }
    }
    let cpu1 = a.relay_pid.and_then(proc_sample);
    let udp1 = udp_in_datagrams();
    let rss_end = a.relay_pid.and_then(rss_kib);
    let longest_idle_seconds = t0.elapsed().as_secs_f64();

    let mut checked = Checked::default();
    for w in &mut workers {
        w.tell("check").await?;
    }
    let mut clients_rss_kib = 0;
    for w in &mut workers {
        let r: Checked = w.read("checked").await?;
        checked.alive += r.alive;
        checked.dropped += r.dropped;
        clients_rss_kib += r.rss_kib;
        for (k, v) in r.reasons {
            *checked.reasons.entry(k).or_insert(0) += v;
        }
    }
    let gauge_after = owner_gauge(metrics).await;
    for w in &mut workers {
        w.tell("close").await?;
    }
    for w in &mut workers {
        if !w.child.wait().await?.success() {
            bail!("a worker failed");
        }
    }

    let per_session = |rss: Option<u64>| {
        Some(rss?.saturating_sub(rss_before?) as f64 * 1024.0 / opened.max(1) as f64)
    };
    print_json(&Report {
        sessions_requested: a.sessions,
        sessions_opened: opened,
        processes,
        concurrency,
        open_seconds,
        open_errors,
        hold_seconds: hold.as_secs_f64(),
        longest_idle_seconds,
        relay_owner_gauge_start: gauge_start,
        relay_owner_gauge_min: gmin,
        relay_owner_gauge_max: gmax,
        relay_owner_gauge_after_check: gauge_after,
        alive: checked.alive,
        dropped: checked.dropped,
        drop_reasons: checked.reasons,
        relay_rss_before_kib: rss_before,
        relay_rss_open_kib: rss_open,
        relay_rss_end_kib: rss_end,
        relay_bytes_per_session: per_session(rss_end),
        relay_bytes_per_session_open: per_session(rss_open),
        relay_cpu_cores_during_hold: chappe_bench::cpu_cores(cpu0, cpu1),
        udp_datagrams_during_hold: udp0.zip(udp1).map(|(a, b)| b.saturating_sub(a)),
        clients_rss_kib,
    })
}

/// `chappe_connections_active{mode="owner"}` from the relay's /metrics.
async fn owner_gauge(metrics: Option<&str>) -> Option<i64> {
    let text = http_get(metrics?, "/metrics").await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("chappe_connections_active{mode=\"owner\"} "))?
        .trim()
        .parse()
        .ok()
}

/// A minimal HTTP/1.0 GET (the relay's metrics listener is plain HTTP).
async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<_, anyhow::Error>(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow!("GET {path}: timed out"))??;
    Ok(body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// `Udp: InDatagrams` from /proc/net/snmp (host-wide).
fn udp_in_datagrams() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let names = udp.next()?;
    let values = udp.next()?;
    let i = names.split_whitespace().position(|n| n == "InDatagrams")?;
    values.split_whitespace().nth(i)?.parse().ok()
}
