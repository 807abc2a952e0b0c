//! The capacity model of docs/CAPACITY.md: per-unit costs measured by one
//! run of `bench/run`, and the sizing of a service from them.

use std::fmt::Write as _;

use serde_json::Value;

use crate::report::stored_cpu_us;
use crate::{Run, fmt, group, median, num, zip};

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

/// The service to size: `bench/capacity --users N ...`.
#[derive(clap::Args, Debug)]
pub struct Service {
    /// Users (N).
    #[arg(long, default_value_t = 2000.0)]
    pub users: f64,
    /// Envelopes each user sends per day (M), one per recipient device: a
    /// message to a group of 10 people with one device each is 10.
    #[arg(long, default_value_t = 200.0)]
    pub per_day: f64,
    /// Peak rate as a multiple of the day's average (P).
    #[arg(long, default_value_t = 10.0)]
    pub peak: f64,
    /// Days an envelope may wait for an offline owner (K; the relay's
    /// `envelope_ttl_hours` ÷ 24).
    #[arg(long, default_value_t = 14.0)]
    pub days: f64,
    /// Owner sessions each user holds open (devices, D).
    #[arg(long, default_value_t = 2.0)]
    pub devices: f64,
    /// Mailboxes per user (one per conversation is the private use).
    #[arg(long, default_value_t = 50.0)]
    pub mailboxes: f64,
    /// Share of envelopes in the 64 KiB bucket (attachments); the rest 1 KiB.
    #[arg(long, default_value_t = 0.05)]
    pub large_share: f64,
    /// The relay's `[store] cache_mib`.
    #[arg(long, default_value_t = 1024.0)]
    pub cache_mib: f64,
}

impl Service {
    fn example() -> Service {
        Service {
            users: 2000.0,
            per_day: 200.0,
            peak: 10.0,
            days: 14.0,
            devices: 2.0,
            mailboxes: 50.0,
            large_share: 0.05,
            cache_mib: 1024.0,
        }
    }
}

/// Per-unit costs from one run; each names the report line it is printed on.
pub struct Inputs {
    pub rate: String,
    pub cpu_online_us: Option<f64>,
    pub cpu_stored_us: Option<f64>,
    pub cpu_online_closed_us: Option<f64>,
    pub cpu_stored_closed_us: Option<f64>,
    pub cpu_large_us: Option<f64>,
    pub cpu_session_us: Option<f64>,
    pub cpu_idle_us: Option<f64>,
    pub ram_base: Option<f64>,
    pub ram_owner: Option<f64>,
    pub ram_sender: Option<f64>,
    pub disk_small: Option<f64>,
    pub disk_large: Option<f64>,
    pub disk_mid: Option<f64>,
    pub disk_mailbox: Option<f64>,
    pub sync_p50_us: Option<f64>,
    pub sync_per_sec: Option<f64>,
    pub max_stored_rate: Option<f64>,
    pub max_online_rate: Option<f64>,
}

fn per_round(run: &Run, name: &str, a: &str, b: &str, scale: f64) -> Option<f64> {
    median(&zip(
        &run.series(name, a, 1.0),
        &run.series(name, b, 1.0),
        |x, y| (y > 0.0).then(|| x / y * scale),
    ))
}

/// The largest restart store: store.redb bytes and envelopes.
pub fn restart_store(run: &Run) -> Option<(f64, f64)> {
    ["restart_big", "restart"].iter().find_map(|name| {
        let v = run.once(name)?;
        let n = num(v, "envelopes")?;
        let bytes = num(v, "fill.file_bytes")?;
        (n > 0.0).then_some((bytes, n))
    })
}

/// store.redb bytes per envelope of `size`, from the footprint fills.
fn disk_per_envelope(fp: Option<&Value>, size: f64) -> Option<f64> {
    let fp = fp?;
    let base = num(fp, "base.file_bytes")?;
    let b = fp
        .get("buckets")?
        .as_array()?
        .iter()
        .find(|b| num(b, "size") == Some(size))?;
    let n = num(b, "envelopes")?;
    let file = num(b, "file_bytes")?;
    (n > 0.0).then(|| (file - base) / n)
}

impl Inputs {
    pub fn of(run: &Run) -> Inputs {
        let fp = run.once("footprint");
        let io = run.once("idle_owners");
        Inputs {
            rate: run.meta("OPEN_RATE").to_owned(),
            cpu_online_us: per_round(
                run,
                "relay_open",
                "relay_cpu_cores",
                "delivered_per_sec",
                1e6,
            ),
            cpu_stored_us: stored_cpu_us(run, "relay_open_offline"),
            cpu_online_closed_us: per_round(
                run,
                "relay_online",
                "relay_cpu_cores",
                "delivered_per_sec",
                1e6,
            ),
            cpu_stored_closed_us: stored_cpu_us(run, "relay_durable"),
            cpu_large_us: per_round(
                run,
                "relay_bulk",
                "relay_cpu_cores",
                "delivered_per_sec",
                1e6,
            ),
            cpu_session_us: per_round(
                run,
                "relay_handshakes",
                "relay_cpu_cores",
                "handshakes_per_sec",
                1e6,
            ),
            cpu_idle_us: io.and_then(|v| {
                let alive = num(v, "alive")?;
                (alive > 0.0)
                    .then(|| num(v, "relay_cpu_cores_during_hold").map(|c| c / alive * 1e6))?
            }),
            ram_base: io
                .and_then(|v| num(v, "relay_rss_before_kib"))
                .map(|k| k * 1024.0),
            ram_owner: io.and_then(|v| num(v, "relay_bytes_per_session")),
            ram_sender: run.med("relay_handshakes", "idle.relay_bytes_per_session"),
            disk_small: restart_store(run).map(|(bytes, n)| bytes / n),
            disk_mid: disk_per_envelope(fp, 16384.0),
            disk_large: disk_per_envelope(fp, 65536.0),
            disk_mailbox: fp.and_then(|fp| {
                let d = num(fp, "mailboxes.mailboxes")? - num(fp, "base.mailboxes")?;
                (d > 0.0).then(|| {
                    Some((num(fp, "mailboxes.file_bytes")? - num(fp, "base.file_bytes")?) / d)
                })?
            }),
            sync_p50_us: run.med("raw_fsync_paced", "fsync_latency.p50_us"),
            sync_per_sec: run.med("raw_fsync", "ops_per_sec"),
            max_stored_rate: run.med("relay_durable", "send_per_sec"),
            max_online_rate: run.med("relay_online", "delivered_per_sec"),
        }
    }
}

fn bytes(v: Option<f64>) -> String {
    match v {
        Some(b) if b >= GIB => fmt(Some(b / GIB), " GiB"),
        Some(b) if b >= MIB => fmt(Some(b / MIB), " MiB"),
        Some(b) if b >= 10.0 * 1024.0 => fmt(Some(b / 1024.0), " KiB"),
        Some(b) => fmt(Some(b), " B"),
        None => "—".to_owned(),
    }
}

/// The capacity lines of the report's "More figures" table; CAPACITY.md
/// cites them by these names.
pub fn figure_lines(run: &Run) -> Vec<(String, String)> {
    let i = Inputs::of(run);
    let us = |v: Option<f64>| fmt(v, " µs");
    vec![
        (
            format!("relay CPU per 1 KiB envelope, open loop {}/s: delivered online / stored, fetched and acked", i.rate),
            format!("{} / {}", us(i.cpu_online_us), us(i.cpu_stored_us)),
        ),
        (
            "relay CPU per 1 KiB envelope, closed loop: delivered online / stored, fetched and acked".to_owned(),
            format!("{} / {}", us(i.cpu_online_closed_us), us(i.cpu_stored_closed_us)),
        ),
        ("relay CPU per 64 KiB envelope delivered online".to_owned(), us(i.cpu_large_us)),
        ("relay CPU per sender session established".to_owned(), us(i.cpu_session_us)),
        (
            "relay CPU per idle owner session, per second (keep-alive pings)".to_owned(),
            us(i.cpu_idle_us),
        ),
        (
            "relay RSS: at start / per idle owner session / per idle sender session".to_owned(),
            format!("{} / {} / {}", bytes(i.ram_base), bytes(i.ram_owner), bytes(i.ram_sender)),
        ),
        (
            format!(
                "store.redb bytes per stored envelope: 1 KiB (store of {}) / 16 KiB / 64 KiB bucket",
                restart_store(run).map_or("—".to_owned(), |(_, n)| group(n))
            ),
            format!("{} / {} / {}", bytes(i.disk_small), bytes(i.disk_mid), bytes(i.disk_large)),
        ),
        ("store.redb bytes per mailbox".to_owned(), bytes(i.disk_mailbox)),
        (
            "fdatasync 4 KiB: back to back, per second / p50 100 µs after the last".to_owned(),
            format!("{} / {}", fmt(i.sync_per_sec, "/s"), us(i.sync_p50_us)),
        ),
    ]
}

/// The inputs with where each comes from and how to measure it again.
pub fn inputs_table(run: &Run) -> String {
    let i = Inputs::of(run);
    let us = |v: Option<f64>| fmt(v, " µs");
    let r = &i.rate;
    let big = restart_store(run).map_or("N".to_owned(), |(_, n)| format!("{n}"));
    let mut out = format!(
        "From `{}` at commit {} ({} round{}, {} s per measurement).\n\n",
        run.meta("INVOCATION"),
        run.meta("V_GIT"),
        run.runs,
        if run.runs == 1 { "" } else { "s" },
        run.meta("SECS")
    );
    if run.quick() {
        out.push_str(
            "A `--quick` run: a check that the measurements work, not figures to size with.\n\n",
        );
    }
    for w in crate::report::warnings(run) {
        let _ = writeln!(out, "Disturbed run: {w}.\n");
    }
    out.push_str(
        "| symbol | figure | value | BENCHMARKS.md | measured by |\n|---|---|---:|---|---|\n",
    );
    let rows: [(&str, &str, String, &str, String); 13] = [
        ("c_env", "relay CPU per 1 KiB envelope stored, later fetched and acked", us(i.cpu_stored_us),
         "More figures: relay CPU per 1 KiB envelope, open loop", format!("`chappe bench --mode offline --senders 8 --size 1024 --owners 1 --rate {r} --relay-pid PID --json`: relay_cpu_cores × (seconds + drain_seconds) ÷ sent")),
        ("", "the same, delivered to a connected owner", us(i.cpu_online_us),
         "More figures: relay CPU per 1 KiB envelope, open loop", format!("`chappe bench --mode online --senders 8 --size 1024 --owners 1 --rate {r} --relay-pid PID --json`: relay_cpu_cores ÷ delivered_per_sec")),
        ("c_large", "relay CPU per 64 KiB envelope", us(i.cpu_large_us),
         "More figures: relay CPU per 64 KiB envelope", "the 64 KiB scenario: relay_cpu_cores ÷ delivered_per_sec".to_owned()),
        ("c_hs", "relay CPU per session established", us(i.cpu_session_us),
         "More figures: relay CPU per sender session", "`chappe-handshakes --concurrency 4 --relay-pid PID`: relay_cpu_cores ÷ handshakes_per_sec".to_owned()),
        ("c_idle", "relay CPU per idle owner session, per second", us(i.cpu_idle_us),
         "More figures: relay CPU per idle owner session", "`idle-owners --relay-pid PID`: relay_cpu_cores_during_hold ÷ alive".to_owned()),
        ("m_base", "relay RSS at start", bytes(i.ram_base),
         "More figures: relay RSS", "`idle-owners`: relay_rss_before_kib".to_owned()),
        ("m_owner", "relay RSS per idle owner session", bytes(i.ram_owner),
         "Results: Idle owner session — relay RSS", "`idle-owners`: relay_bytes_per_session".to_owned()),
        ("d_1k", "store.redb bytes per stored 1 KiB envelope, in the largest restart store", bytes(i.disk_small),
         "More figures: store.redb bytes per stored envelope", format!("`fill-store fill --envelopes {big}` (the restart row's store): file_bytes ÷ envelopes")),
        ("d_64k", "store.redb bytes per stored 64 KiB envelope", bytes(i.disk_large),
         "More figures: store.redb bytes per stored envelope", "`fill-store fill --size 65536`: file_bytes growth ÷ envelopes".to_owned()),
        ("d_mbox", "store.redb bytes per mailbox", bytes(i.disk_mailbox),
         "More figures: store.redb bytes per mailbox", "`fill-store fill --envelopes 0 --mailboxes 5000`: file_bytes growth ÷ mailboxes".to_owned()),
        ("s_disk", "4 KiB fdatasyncs per second the disk completes, back to back", fmt(i.sync_per_sec, "/s"),
         "More figures: fdatasync 4 KiB", "`raw-fsync --dir STATE_FS --block 4096 --mode overwrite`".to_owned()),
        ("r_stored", "most stored sends per second (128 outstanding)", fmt(i.max_stored_rate, "/s"),
         "Results: Durable sends", "the durable scenario's send_per_sec".to_owned()),
        ("r_online", "most envelopes per second delivered online", fmt(i.max_online_rate, "/s"),
         "Results: Online delivery", "the online scenario's delivered_per_sec".to_owned()),
    ];
    for (sym, what, v, src, how) in rows {
        let sym = if sym.is_empty() {
            String::new()
        } else {
            format!("`{sym}`")
        };
        let _ = writeln!(out, "| {sym} | {what} | {v} | {src} | {how} |");
    }
    out
}

/// The worked sizing of `s` from `i`, as a markdown table.
pub fn sizing(i: &Inputs, s: &Service) -> String {
    let avg = s.users * s.per_day / 86_400.0;
    let peak = avg * s.peak;
    let sessions = s.users * s.devices;
    let c_env = i
        .cpu_stored_us
        .zip(i.cpu_online_us)
        .map(|(a, b)| a.max(b))
        .or(i.cpu_stored_us)
        .zip(i.cpu_large_us)
        .map(|(small, large)| (1.0 - s.large_share) * small + s.large_share * large);
    let cpu_peak = c_env
        .zip(i.cpu_session_us)
        .zip(i.cpu_idle_us)
        .map(|((e, h), idle)| (peak * (e + h) + sessions * idle) / 1e6);
    let cores = cpu_peak.map(|c| (c / 0.5).ceil().max(2.0));
    let journal_window = 24.0 * MIB;
    let ram = i
        .ram_base
        .zip(i.ram_owner)
        .map(|(b, o)| b + sessions * o + journal_window + s.cache_mib * MIB);
    let ram_rec = ram.map(|r| ((r * 1.5 + GIB) / GIB).ceil().max(2.0));
    let stored = s.users * s.per_day * s.days;
    let per_env = i
        .disk_small
        .zip(i.disk_large)
        .map(|(a, b)| (1.0 - s.large_share) * a + s.large_share * b);
    let disk = per_env
        .zip(i.disk_mailbox)
        .map(|(e, m)| stored * e + s.users * s.mailboxes * m + 64.0 * MIB + 512.0 * MIB);
    let disk_rec = disk.map(|d| (d * 1.5 / GIB).ceil());
    let burst = i.cpu_session_us.map(|h| sessions / 60.0 * h / 1e6);
    let pct = |a: f64, b: Option<f64>| {
        b.filter(|b| *b > 0.0)
            .map_or("—".to_owned(), |b| format!("{:.2} %", 100.0 * a / b))
    };

    let mut out = format!(
        "For N = {} users, M = {} envelopes per user per day, P = {}, K = {} days, D = {} sessions per user, \
         B = {} mailboxes per user, f = {} of envelopes in the 64 KiB bucket, `cache_mib` = {}:\n\n",
        group(s.users),
        group(s.per_day),
        s.peak,
        s.days,
        s.devices,
        group(s.mailboxes),
        s.large_share,
        group(s.cache_mib)
    );
    out.push_str("| quantity | formula | value |\n|---|---|---:|\n");
    let rows = [
        (
            "average rate",
            "N·M ÷ 86,400".to_owned(),
            fmt(Some(avg), " envelopes/s"),
        ),
        (
            "peak rate R",
            "P × average".to_owned(),
            fmt(Some(peak), " envelopes/s"),
        ),
        ("sessions held S", "N·D".to_owned(), group(sessions)),
        (
            "CPU per envelope",
            "(1−f)·c_env + f·c_large".to_owned(),
            fmt(c_env, " µs"),
        ),
        (
            "CPU at peak",
            "R·(CPU per envelope + c_hs) + S·c_idle".to_owned(),
            fmt(cpu_peak, " cores"),
        ),
        (
            "cores",
            "CPU at peak ÷ 0.5, rounded up, at least 2".to_owned(),
            cores.map_or("—".to_owned(), group),
        ),
        (
            "morning reconnect: all S sessions in 60 s",
            "S ÷ 60 · c_hs".to_owned(),
            fmt(burst, " cores"),
        ),
        (
            "relay memory",
            "m_base + S·m_owner + 24 MiB journal window + cache_mib".to_owned(),
            bytes(ram),
        ),
        (
            "RAM",
            "relay memory × 1.5 + 1 GiB for the system, whole GiB, at least 2".to_owned(),
            ram_rec.map_or("—".to_owned(), |r| format!("{} GiB", group(r))),
        ),
        (
            "envelopes stored at most E",
            "N·M·K".to_owned(),
            group(stored),
        ),
        (
            "store.redb at most",
            "E·((1−f)·d_1k + f·d_64k) + N·B·d_mbox + 64 MiB journal + 512 MiB min_free_disk_bytes"
                .to_owned(),
            bytes(disk),
        ),
        (
            "disk",
            "store at most × 1.5, whole GiB".to_owned(),
            disk_rec.map_or("—".to_owned(), |d| format!("{} GiB", group(d))),
        ),
        (
            "syncs at peak",
            "at most one per send: R ÷ s_disk".to_owned(),
            pct(peak, i.sync_per_sec),
        ),
        (
            "peak against the most stored sends",
            "R ÷ r_stored".to_owned(),
            pct(peak, i.max_stored_rate),
        ),
    ];
    for (q, f, v) in rows {
        let _ = writeln!(out, "| {q} | {f} | {v} |");
    }
    let whole = |v: Option<f64>| v.map_or("—".to_owned(), group);
    let _ = write!(
        out,
        "\n**One appliance: {} cores, {} GiB of RAM, {} GiB for the state volume.** At peak the relay keeps \
         {} of those cores busy and asks the disk for {} of the syncs it can do.\n",
        whole(cores),
        whole(ram_rec),
        whole(disk_rec),
        cpu_peak
            .zip(cores)
            .map_or("—".to_owned(), |(c, n)| format!("{:.1} %", 100.0 * c / n)),
        pct(peak, i.sync_per_sec),
    );
    out
}

const BEGIN: &str = "<!-- BEGIN generated by bench/run: ";
const END: &str = "<!-- END generated by bench/run: ";

/// `doc` with its generated blocks (`inputs`, `sizing`) rewritten from `run`.
pub fn splice(doc: &str, run: &Run) -> anyhow::Result<String> {
    let mut doc = doc.to_owned();
    for (name, body) in [
        ("inputs", inputs_table(run)),
        ("sizing", sizing(&Inputs::of(run), &Service::example())),
    ] {
        let begin = format!("{BEGIN}{name} -->");
        let end = format!("{END}{name} -->");
        let (Some(a), Some(b)) = (doc.find(&begin), doc.find(&end)) else {
            anyhow::bail!("no `{begin}` … `{end}` block in the capacity document");
        };
        if b < a {
            anyhow::bail!("`{end}` comes before `{begin}`");
        }
        let start = a + begin.len();
        doc.replace_range(start..b, &format!("\n{body}"));
    }
    Ok(doc)
}
