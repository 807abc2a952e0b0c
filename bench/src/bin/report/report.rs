//! The report's tables and prose, from one [`Run`].

use std::fmt::Write as _;

use serde_json::Value;

use crate::{ONCE, Run, Series, capacity, fmt, group, median, num, ratios, zip};

/// One line of a result's main figures, for `bench/run`'s progress output.
pub fn brief(d: &Value) -> String {
    let mut out = Vec::new();
    for k in [
        "delivered_per_sec",
        "send_per_sec",
        "published_per_sec",
        "drain_per_sec",
        "handshakes_per_sec",
        "insert_values_per_sec",
        "drain_values_per_sec",
        "ops_per_sec",
        "bytes_per_sec",
    ] {
        if let Some(v) = num(d, k) {
            out.push(format!("{k}={v:.0}"));
        }
    }
    for k in [
        "alive",
        "dropped",
        "relay_bytes_per_session",
        "unwritten_share",
        "relay_cpu_cores",
        "envelopes",
    ] {
        if let Some(v) = num(d, k) {
            out.push(format!("{k}={v}"));
        }
    }
    for (k, path) in [
        ("send_p50", "send_latency.p50_us"),
        ("fsync_p50", "fsync_latency.p50_us"),
    ] {
        if let Some(v) = num(d, path) {
            out.push(format!("{k}={v}us"));
        }
    }
    for k in ["handshakes", "bulk", "fwd", "idle"] {
        for f in [
            "per_sec",
            "mb_per_sec",
            "oks_per_sec",
            "server_bytes_per_conn",
            "relay_bytes_per_session",
        ] {
            if let Some(v) = num(d, &format!("{k}.{f}")) {
                out.push(format!("{k}.{f}={v:.1}"));
            }
        }
        if num(d, &format!("{k}.ok_latency.count")).is_some_and(|c| c > 0.0)
            && let Some(v) = num(d, &format!("{k}.ok_latency.p50_us"))
        {
            out.push(format!("{k}.ok_p50={v}us"));
        }
    }
    if let Some(runs) = d.get("runs").and_then(Value::as_array) {
        let t: Vec<String> = runs
            .iter()
            .filter_map(|r| {
                Some(format!(
                    "{}={}s",
                    r.get("kind")?.as_str()?,
                    num(r, "ready_seconds")?
                ))
            })
            .collect();
        out.push(t.join(" "));
    }
    if let Some(s) = d.get("skipped").and_then(Value::as_str) {
        out.push(format!("skipped: {s}"));
    }
    if d.get("errors")
        .is_some_and(|e| e.as_object().is_some_and(|o| !o.is_empty()))
    {
        out.push(format!(
            "errors={}",
            d.get("errors").map_or(String::new(), Value::to_string)
        ));
    }
    out.join(" ")
}

enum Target {
    AtLeast(f64, &'static str),
    AtMost(f64, &'static str),
    Info,
}

struct Row {
    scenario: String,
    relay: String,
    baseline: String,
    figure: String,
    ratio: String,
    target: String,
    met: String,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            self.scenario,
            self.relay,
            self.baseline,
            self.figure,
            self.ratio,
            self.target,
            self.met
        )
    }
}

/// A row setting the relay's figure against a baseline measured in the same
/// rounds: the ratio is the median of the per-round ratios.
fn ratio_row(
    scenario: &str,
    a: &Series,
    b: &Series,
    baseline: &str,
    unit: &str,
    target: Target,
    skip: Option<&str>,
) -> Row {
    let ratio = median(&ratios(a, b));
    // Two decimals, or three where two would round a miss onto the target.
    let shown = |r: f64, t: f64| {
        let two = format!("{r:.2}");
        if two == format!("{t:.2}") && r != t {
            format!("{r:.3}×")
        } else {
            format!("{two}×")
        }
    };
    let threshold = match &target {
        Target::AtLeast(t, _) | Target::AtMost(t, _) => Some(*t),
        Target::Info => None,
    };
    let (target_text, met) = match (&target, ratio) {
        (Target::AtLeast(t, text), Some(r)) => {
            (text.to_string(), if r >= *t { "yes" } else { "**no**" })
        }
        (Target::AtMost(t, text), Some(r)) => {
            (text.to_string(), if r <= *t { "yes" } else { "**no**" })
        }
        (Target::AtLeast(_, text) | Target::AtMost(_, text), None) => (text.to_string(), "—"),
        (Target::Info, _) => ("(info)".to_owned(), "—"),
    };
    if let Some(why) = skip {
        return Row {
            scenario: scenario.to_owned(),
            relay: fmt(median(a), unit),
            baseline: baseline.to_owned(),
            figure: format!("skipped: {why}"),
            ratio: "—".to_owned(),
            target: target_text,
            met: "—".to_owned(),
        };
    }
    Row {
        scenario: scenario.to_owned(),
        relay: fmt(median(a), unit),
        baseline: baseline.to_owned(),
        figure: fmt(median(b), unit),
        ratio: ratio.map_or("—".to_owned(), |r| match threshold {
            Some(t) => shown(r, t),
            None => format!("{r:.2}×"),
        }),
        target: target_text,
        met: met.to_owned(),
    }
}

/// Wraps `text` at about `width` columns; continuation lines get `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line = indent.to_owned();
        } else if !line.is_empty() && line != indent {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

fn bullet(text: &str) -> String {
    wrap(&format!("- {text}"), 110, "  ")
}

fn para(text: &str) -> String {
    wrap(text, 110, "")
}

/// Figures of one run, named once for the rows and the prose.
struct Figures<'a> {
    run: &'a Run,
}

impl Figures<'_> {
    fn s(&self, name: &str, path: &str) -> Series {
        self.run.series(name, path, 1.0)
    }
    fn m(&self, name: &str, path: &str) -> Option<f64> {
        self.run.med(name, path)
    }
    /// Median of `name.num ÷ name.den × scale` per round.
    fn per(&self, name: &str, num_path: &str, den_path: &str, scale: f64) -> Option<f64> {
        median(&zip(
            &self.s(name, num_path),
            &self.s(name, den_path),
            |a, b| (b > 0.0).then(|| a / b * scale),
        ))
    }
}

/// Relay CPU µs per envelope of an offline run: the relay's cores over the
/// send and the drain, per envelope sent.
pub fn stored_cpu_us(run: &Run, name: &str) -> Option<f64> {
    let rounds = run.data.get(name)?;
    let per: Series = rounds
        .iter()
        .filter_map(|(r, v)| {
            let cores = num(v, "relay_cpu_cores")?;
            let wall = num(v, "seconds")? + num(v, "drain_seconds")?;
            let sent = num(v, "sent")?;
            (sent > 0.0).then(|| (*r, cores * wall / sent * 1e6))
        })
        .collect();
    median(&per)
}

fn restart_medians(v: &Value) -> (Option<f64>, Option<f64>, usize, usize) {
    let runs = v
        .get("runs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let of = |kind: &str| -> Series {
        runs.iter()
            .filter(|r| r.get("kind").and_then(Value::as_str) == Some(kind))
            .filter_map(|r| num(r, "ready_seconds"))
            .enumerate()
            .collect()
    };
    let (c, k) = (of("clean"), of("crash"));
    (median(&c), median(&k), c.len(), k.len())
}

fn restart_label(v: &Value, run: &Run) -> String {
    let n = num(v, "envelopes").unwrap_or(0.0);
    let want = num(v, "wanted").unwrap_or(n);
    if n < want {
        let why = if run.quick() { "--quick: " } else { "only " };
        format!(
            "{} stored envelopes ({why}{} filled)",
            group(want),
            group(n)
        )
    } else {
        format!("{} stored envelopes", group(n))
    }
}

/// The report and, apart, the results table as printed at the end of a run.
pub fn markdown(run: &Run, lock: &str) -> (String, String) {
    let f = Figures { run };
    let mq = (run.meta("HAVE_MQTT") != "1").then(|| run.meta("MQTT_WHY"));
    let nt = (run.meta("HAVE_NATS") != "1").then(|| run.meta("NATS_WHY"));
    let online = f.s("relay_online", "delivered_per_sec");
    let durable = f.s("relay_durable", "send_per_sec");
    let single = f.s("relay_single", "send_latency.p50_us");
    let paced = f.s("raw_fsync_paced", "fsync_latency.p50_us");
    let fsync = f.s("raw_fsync", "fsync_latency.p50_us");
    let rtt = f.s("raw_quinn_ok1", "fwd.ok_latency.p50_us");
    let floor = zip(&rtt, &paced, |a, b| Some(a + b));
    let bulk = run.series("relay_bulk", "delivered_per_sec", 65536.0 / 1e6);
    let hs = run.meta("HS_CONC");
    let idle_k = run.meta("IDLE_K");

    let mut targets = vec![
        ratio_row(
            "Online delivery, 1 KiB, owner connected — delivered/s",
            &online,
            &f.s("mqtt_qos0", "delivered_per_sec"),
            "mosquitto QoS 0 delivered/s",
            "/s",
            Target::AtLeast(1.2, "≥ 1.2×"),
            mq,
        ),
        ratio_row(
            "Online delivery, 1 KiB, owner connected — delivered/s",
            &online,
            &f.s("mqtt_qos1", "delivered_per_sec"),
            "mosquitto QoS 1 delivered/s",
            "/s",
            Target::AtLeast(2.0, "≥ 2×"),
            mq,
        ),
        ratio_row(
            "Durable sends, 1 KiB, 128 outstanding — OK/s",
            &durable,
            &f.s("raw_redb", "insert_values_per_sec"),
            "redb, 1000 values per durable commit, values/s",
            "/s",
            Target::AtLeast(0.7, "≥ 0.7×"),
            None,
        ),
        ratio_row(
            "Single sender, one send at a time — p50 OK latency",
            &single,
            &floor,
            "floor: bare quinn's one-at-a-time OK round trip + one paced fdatasync, p50s",
            " µs",
            Target::AtMost(1.25, "≤ 1.25×"),
            None,
        ),
        ratio_row(
            "Fetch + ack of the stored backlog — envelopes/s",
            &f.s("relay_durable", "drain_per_sec"),
            &f.s("raw_redb", "drain_values_per_sec"),
            "redb read + delete, 1000 per transaction, values/s",
            "/s",
            Target::AtLeast(0.5, "≥ 0.5×"),
            None,
        ),
        ratio_row(
            "64 KiB envelopes, 1 sender, 1 owner — MB/s delivered",
            &bulk,
            &f.s("raw_quinn_fwd64", "fwd.mb_per_sec"),
            "bare quinn forwarding the same shape (two hops, no store, no Noise), MB/s",
            " MB/s",
            Target::AtLeast(0.8, "≥ 0.8×"),
            None,
        ),
        ratio_row(
            &format!("Session establishment (QUIC + Noise NK), {hs} concurrent — /s"),
            &f.s("relay_handshakes", "handshakes_per_sec"),
            &f.s("raw_quinn", "handshakes.per_sec"),
            "bare quinn handshakes/s, same TLS policy",
            "/s",
            Target::AtLeast(0.8, "≥ 0.8×"),
            None,
        ),
        ratio_row(
            "Durable sends during a handshake flood (10× the session rate, 10 source addresses) — OK/s",
            &f.s("relay_flood", "send_per_sec"),
            &f.s("relay_noflood", "send_per_sec"),
            "the same sends to the same relay without the flood, OK/s",
            "/s",
            Target::AtLeast(0.8, "≥ 0.8×"),
            None,
        ),
        ratio_row(
            "Envelope AEAD (ChaCha20-Poly1305, aws-lc), 16 KiB seals — MB/s",
            &run.series("raw_aead", "bytes_per_sec", 1e-6),
            &run.series("openssl_aead", "bytes_per_sec", 1e-6),
            "`openssl speed -evp chacha20-poly1305`, 16 KiB, MB/s",
            " MB/s",
            Target::AtLeast(0.5, "≥ 0.5×"),
            None,
        ),
    ];
    let quinn_idle = f.m("raw_quinn", "idle.server_bytes_per_conn");
    let io = run.once("idle_owners");
    if let Some(io) = io {
        let requested = num(io, "sessions_requested").unwrap_or(0.0);
        let alive = num(io, "alive").unwrap_or(0.0);
        let dropped = num(io, "dropped").unwrap_or(0.0);
        let errors = io
            .get("open_errors")
            .and_then(Value::as_object)
            .is_some_and(|o| !o.is_empty());
        let ok = num(io, "sessions_opened") == Some(requested) && dropped == 0.0 && !errors;
        targets.push(Row {
            scenario: format!(
                "Idle owner sessions (XK) held {} s with keep-alive pings — held / dropped",
                num(io, "hold_seconds").map_or("—".to_owned(), group)
            ),
            relay: format!("{} / {}", group(alive), group(dropped)),
            baseline: "sessions requested".to_owned(),
            figure: group(requested),
            ratio: "—".to_owned(),
            target: "20,000 held, none dropped".to_owned(),
            met: if ok && alive >= 20000.0 {
                "yes"
            } else {
                "**no**"
            }
            .to_owned(),
        });
        let per = num(io, "relay_bytes_per_session");
        let r = per
            .zip(quinn_idle)
            .and_then(|(a, b)| (b > 0.0).then(|| a / b));
        targets.push(Row {
            scenario: format!(
                "Idle owner session — relay RSS per session ({} held)",
                group(alive)
            ),
            relay: fmt(per.map(|p| p / 1024.0), " KiB"),
            baseline: format!("bare quinn server RSS per idle connection ({idle_k} held)"),
            figure: fmt(quinn_idle.map(|q| q / 1024.0), " KiB"),
            ratio: r.map_or("—".to_owned(), |r| format!("{r:.2}×")),
            target: "≤ 1.2×".to_owned(),
            met: r
                .map_or("—", |r| if r <= 1.2 { "yes" } else { "**no**" })
                .to_owned(),
        });
    }
    if let Some(rs) = run.once("restart") {
        let (clean, crash, nc, nk) = restart_medians(rs);
        let label = restart_label(rs, run);
        for (v, k, what) in [
            (clean, nc, "after a clean stop"),
            (
                crash,
                nk,
                "after kill -9 under write load (journal replayed)",
            ),
        ] {
            let of = if k > 1 {
                format!("median of {k}")
            } else {
                "one start".to_owned()
            };
            targets.push(Row {
                scenario: format!("Restart with {label}, {what} — seconds to /readyz 200 ({of})"),
                relay: fmt(v, " s"),
                baseline: "target".to_owned(),
                figure: "2 s".to_owned(),
                ratio: "—".to_owned(),
                target: "≤ 2 s".to_owned(),
                met: v
                    .map_or("**no**", |v| if v <= 2.0 { "yes" } else { "**no**" })
                    .to_owned(),
            });
        }
    }
    if let Some(rb) = run.once("restart_big") {
        let label = restart_label(rb, run);
        if let Some(why) = rb.get("skipped").and_then(Value::as_str) {
            targets.push(Row {
                scenario: format!("Restart with {label} — clean stop / kill -9"),
                relay: format!("skipped: {why}"),
                baseline: "target".to_owned(),
                figure: "2 s".to_owned(),
                ratio: "—".to_owned(),
                target: "≤ 2 s".to_owned(),
                met: "—".to_owned(),
            });
        } else {
            let (clean, crash, _, _) = restart_medians(rb);
            let ok = clean.is_some_and(|c| c <= 2.0) && crash.is_some_and(|c| c <= 2.0);
            targets.push(Row {
                scenario: format!(
                    "Restart with {label}, after a clean stop / after kill -9 under write load — seconds to /readyz 200"
                ),
                relay: format!("{} / {}", fmt(clean, " s"), fmt(crash, " s")),
                baseline: "target".to_owned(),
                figure: "2 s".to_owned(),
                ratio: "—".to_owned(),
                target: "≤ 2 s".to_owned(),
                met: if ok { "yes" } else { "**no**" }.to_owned(),
            });
        }
    }

    let two_fsync: Series = fsync.iter().map(|(r, v)| (*r, 2.0 * v)).collect();
    let info = [
        ratio_row(
            "Single sender — p50 OK latency",
            &single,
            &two_fsync,
            "2 × p50 of one 4 KiB fdatasync, back to back",
            " µs",
            Target::Info,
            None,
        ),
        ratio_row(
            "64 KiB envelopes — MB/s delivered",
            &bulk,
            &f.s("raw_quinn", "bulk.mb_per_sec"),
            "bare quinn, one connection, 64 KiB writes (one hop), MB/s",
            " MB/s",
            Target::Info,
            None,
        ),
        ratio_row(
            "Online delivery, 1 KiB — delivered/s",
            &online,
            &f.s("raw_quinn_fwd", "fwd.per_sec"),
            "bare quinn forwarding the same shape (no store, no Noise), delivered/s",
            "/s",
            Target::Info,
            None,
        ),
        ratio_row(
            "Durable sends, 1 KiB — OK/s",
            &durable,
            &f.s("raw_quinn_ok", "fwd.oks_per_sec"),
            "bare quinn answering the same shape with no disk, OK/s",
            "/s",
            Target::Info,
            None,
        ),
        ratio_row(
            "Online delivery, 1 KiB — delivered/s",
            &online,
            &f.s("nats_core", "delivered_per_sec"),
            "NATS core pub/sub delivered/s",
            "/s",
            Target::Info,
            nt,
        ),
        ratio_row(
            "Durable sends, 1 KiB — OK/s",
            &durable,
            &f.s("nats_js", "delivered_per_sec"),
            "NATS JetStream file store, acked publishes/s (no sync per message)",
            "/s",
            Target::Info,
            nt,
        ),
        ratio_row(
            "Idle sender session — relay RSS per session",
            &run.series(
                "relay_handshakes",
                "idle.relay_bytes_per_session",
                1.0 / 1024.0,
            ),
            &run.series("raw_quinn", "idle.server_bytes_per_conn", 1.0 / 1024.0),
            &format!("bare quinn server RSS per idle connection ({idle_k} held)"),
            " KiB",
            Target::Info,
            None,
        ),
    ];

    let head = "| scenario | Chappe relay | baseline | baseline figure | ratio | target | met? |\n|---|---:|---|---:|---:|---|---|\n";
    let table: String = std::iter::once(head.to_owned())
        .chain(targets.iter().map(Row::line))
        .collect();
    let info_table: String = std::iter::once(head.to_owned())
        .chain(info.iter().map(Row::line))
        .collect();

    let mut md = String::new();
    header(&mut md, run);
    md.push_str("## Results\n\n");
    md.push_str(&table);
    md.push_str(
        "\nRatios are Chappe ÷ baseline, each the median of the per-round ratios (so it can differ slightly from\n\
         the quotient of the two medians); for the latency row lower is better. Reference rows, no target:\n\n",
    );
    md.push_str(&info_table);
    md.push_str("\n## What bounds each row\n\n");
    md.push_str(&bounds(run, &f));
    md.push_str("\n## Scenarios\n\n");
    md.push_str(&scenarios(run));
    md.push_str("\n## More figures\n\n");
    md.push_str(&more_figures(run, &f));
    if run.runs > 1 {
        md.push_str("\n## Per round\n\n");
        md.push_str(&per_round(run));
    }
    md.push_str(&problems(run));
    md.push_str("\n## Machine and versions\n\n");
    md.push_str(&machine(run, lock));
    md.push_str("\n## Commands\n\n");
    md.push_str(
        "Binaries are `target/release/*` from `cargo build --release --bins`; `$TMP` is a fresh directory under\n\
         `target/bench/` (the filesystem above), `$DESCRIPTOR` the line the relay printed.\n\n```\n",
    );
    md.push_str(run.commands.trim());
    md.push_str("\n```\n");
    (md, table)
}

fn steal(run: &Run) -> f64 {
    let ticks = |k: &str| -> Option<(f64, f64)> {
        let mut it = run
            .meta(k)
            .split_whitespace()
            .map(|x| x.parse::<f64>().ok());
        Some((it.next()??, it.next()??))
    };
    match (ticks("TICKS_START"), ticks("TICKS_END")) {
        (Some((s0, t0)), Some((s1, t1))) => 100.0 * (s1 - s0) / (t1 - t0).max(1.0),
        _ => 0.0,
    }
}

/// What disturbed the run, if anything: printed, and in the report's header.
pub fn warnings(run: &Run) -> Vec<String> {
    let mut w = Vec::new();
    let busy: u64 = run.meta("BUSY_SEEN").parse().unwrap_or(0);
    if busy > 0 {
        w.push(format!(
            "up to {busy} other compiler processes were running during the measurements; \
             the fsync-bound figures in particular are not representative"
        ));
    }
    let st = steal(run);
    if st >= 5.0 {
        w.push(format!(
            "the hypervisor took {st:.0} % of this VM's CPU time during the run (steal); \
             every figure, baselines included, is lower than on a quiet host"
        ));
    }
    w
}

fn header(md: &mut String, run: &Run) {
    let runs = run.runs;
    md.push_str("# Chappe benchmarks\n\n");
    if run.quick() {
        md.push_str(
            "> **Quick run** (`bench/run --quick`): one short round, fewer restarts; a check that every\n\
             > scenario runs, not figures to quote. `bench/run` makes the reference report.\n\n",
        );
    }
    md.push_str(&para(&format!(
        "Generated by `{}` at commit {}: {runs} round{}, {} s per measurement, {} s in all. Each figure is \
         the median over the rounds, and each ratio divides figures measured in the same round. Everything \
         ran on 127.0.0.1 on one machine: the load generators, the relay or peer, and the disk share its {} \
         cores. How the figures turn into a sizing for an appliance: [CAPACITY.md](CAPACITY.md).",
        run.meta("INVOCATION"),
        run.meta("V_GIT"),
        if runs == 1 { "" } else { "s" },
        run.meta("SECS"),
        run.meta("ELAPSED"),
        run.meta("M_NPROC"),
    )));
    for w in warnings(run) {
        md.push('\n');
        md.push_str(&wrap(&format!("> **Disturbed run:** {w}."), 110, "> "));
    }
    md.push('\n');
}

fn bounds(run: &Run, f: &Figures) -> String {
    let us = |v: Option<f64>| fmt(v, " µs");
    let per_s = |v: Option<f64>| fmt(v, "/s");
    let mut out = String::new();

    let relay_cores = f.m("relay_online", "relay_cpu_cores");
    let online_us = f.per("relay_online", "relay_cpu_cores", "delivered_per_sec", 1e6);
    let mq_cores = f.m("mqtt_qos0", "server_cpu_cores");
    let mq_us = f.per("mqtt_qos0", "server_cpu_cores", "delivered_per_sec", 1e6);
    let fwd = f.m("raw_quinn_fwd", "fwd.per_sec");
    let online = f.m("relay_online", "delivered_per_sec");
    let unwritten = f
        .m("relay_online_store", "unwritten_share")
        .map(|x| x * 100.0);
    out.push_str(&bullet(&format!(
        "**Online delivery** is CPU-bound: the load generator, the relay and the broker share {} cores. The \
         relay used {} cores, {} of CPU per envelope delivered, spread over its tokio workers and journal \
         writer; mosquitto used {} cores, {} per message, on its one thread. Bare quinn forwarding the same \
         shape with no journal and no Noise reached {} (the relay {} of it): that is the ceiling for any \
         QUIC relay here. {} % of the envelopes were acknowledged within the applier's 200 ms hold and never \
         written to `store.redb`, so this row pays one journal sync per batch and no redb work.",
        run.meta("M_NPROC"),
        fmt(relay_cores, ""),
        us(online_us),
        fmt(mq_cores, ""),
        us(mq_us),
        per_s(fwd),
        online.zip(fwd).map_or("—".to_owned(), |(a, b)| format!("{:.2}×", a / b)),
        fmt(unwritten, ""),
    )));

    let p50 = f.m("relay_durable", "send_latency.p50_us");
    let redb = f.m("raw_redb", "insert_values_per_sec");
    out.push_str(&bullet(&format!(
        "**Durable sends** are a closed loop of 128 outstanding sends, so the rate is 128 ÷ a send's latency \
         (p50 {}: 128 ÷ p50 = {}). A send waits for the sync of the journal batch it lands in (one 4 KiB \
         fdatasync: {} back to back here; a ~100 KB batch takes longer) while the applier inserts every \
         envelope into `store.redb` on the same two cores, as `raw-redb` does at {} of one core per value. \
         Bare quinn answering the same shape with no disk reached {}. [CAPACITY.md](CAPACITY.md) splits the \
         row by file.",
        us(p50),
        per_s(p50.filter(|p| *p > 0.0).map(|p| 128.0 / p * 1e6)),
        us(f.m("raw_fsync", "fsync_latency.p50_us")),
        us(redb.filter(|r| *r > 0.0).map(|r| 1e6 / r)),
        per_s(f.m("raw_quinn_ok", "fwd.oks_per_sec")),
    )));

    let rtt = f.m("raw_quinn_ok1", "fwd.ok_latency.p50_us");
    let paced = f.m("raw_fsync_paced", "fsync_latency.p50_us");
    let single = f.m("relay_single", "send_latency.p50_us");
    let floor = rtt.zip(paced).map(|(a, b)| a + b);
    out.push_str(&bullet(&format!(
        "**Single sender**: every OK waits for one loopback QUIC round trip and one sync that finds the disk \
         idle. Measured in this run: bare quinn's one-at-a-time OK round trip with no disk {}, one 4 KiB \
         fdatasync 100 µs after the last {} (back to back: {}), so the floor is {}. The relay's p50 is {}, {}",
        us(rtt),
        us(paced),
        us(f.m("raw_fsync", "fsync_latency.p50_us")),
        us(floor),
        us(single),
        match single.zip(floor).map(|(a, b)| a - b) {
            Some(d) if d >= 0.0 => format!(
                "{} above the floor: the hand-offs from quinn's driver to the session task, the journal \
                 writer and back, each a thread wake-up on another vCPU.",
                us(Some(d))
            ),
            Some(d) => format!(
                "{} below the floor: the floor's paced sync was slower than the relay's own syncs in this \
                 run (a disturbed disk), so this row's ratio means nothing here.",
                us(Some(-d))
            ),
            None => "—.".to_owned(),
        },
    )));

    out.push_str(&bullet(&format!(
        "**Fetch + ack**: the owner has at most `delivery_window` (256) envelopes unacknowledged per mailbox \
         and acknowledges 64 at a time, so the drain is a window over round trips; the applier deletes \
         acknowledged runs from `store.redb` on the same cores. The relay drained {}; `raw-redb` reads and \
         deletes {} with no network and no window.",
        per_s(f.m("relay_durable", "drain_per_sec")),
        per_s(f.m("raw_redb", "drain_values_per_sec")),
    )));

    let bulk = f
        .m("relay_bulk", "delivered_per_sec")
        .map(|d| d * 65536.0 / 1e6);
    out.push_str(&bullet(&format!(
        "**64 KiB envelopes**: every byte is decrypted from the sender's connection, copied into a journal \
         record and synced, and encrypted into the owner's connection. Bare quinn doing the same two hops \
         with no journal moved {} ({} server cores); one connection, one hop, {}. The relay moved {} at {} \
         cores: the journal write and its sync are what it does beyond bare forwarding.",
        fmt(f.m("raw_quinn_fwd64", "fwd.mb_per_sec"), " MB/s"),
        fmt(f.m("raw_quinn_fwd64", "fwd.server_cpu_cores"), ""),
        fmt(f.m("raw_quinn", "bulk.mb_per_sec"), " MB/s"),
        fmt(bulk, " MB/s"),
        fmt(f.m("relay_bulk", "relay_cpu_cores"), ""),
    )));

    out.push_str(&bullet(&format!(
        "**Sessions**: a sender session is the baseline's QUIC + TLS 1.3 handshake (X25519MLKEM768, ECDSA) \
         plus a Noise NK round trip with four X25519 operations across both sides, and both ends run on the \
         same cores. p50 to an established session: relay {}, bare quinn {}; the relay spent {} of CPU per \
         session.",
        us(f.m("relay_handshakes", "latency.p50_us")),
        us(f.m("raw_quinn", "handshakes.latency.p50_us")),
        us(f.per("relay_handshakes", "relay_cpu_cores", "handshakes_per_sec", 1e6)),
    )));

    out.push_str(&bullet(&format!(
        "**Handshake flood**: {} Initials/s reached the relay, and it answered {} of them, per run, with a \
         stateless Retry (its default `retry_above_handshakes_per_sec` is 500); established senders kept {} \
         OK/s against {} without the flood. What they lose is CPU: the flood's packets are decrypted and \
         answered on the same two cores, and the generator shares them too.",
        fmt(f.m("flood", "initials_per_sec"), ""),
        fmt(f.m("flood", "relay_retries"), ""),
        fmt(f.m("relay_flood", "send_per_sec"), ""),
        fmt(f.m("relay_noflood", "send_per_sec"), ""),
    )));

    out.push_str(&bullet(&format!(
        "**AEAD**: aws-lc's ChaCha20-Poly1305 ({}) against OpenSSL's ({}), which has AVX-512 code paths \
         that aws-lc lacks; on CPUs with AVX-512 the row follows the CPU, not the relay. RustCrypto's \
         portable code, `hpke`'s default: {}.",
        fmt(run.med("raw_aead", "bytes_per_sec").map(|b| b / 1e6), " MB/s"),
        fmt(run.med("openssl_aead", "bytes_per_sec").map(|b| b / 1e6), " MB/s"),
        fmt(run.med("raw_aead_rustcrypto", "bytes_per_sec").map(|b| b / 1e6), " MB/s"),
    )));

    if let Some(io) = run.once("idle_owners") {
        out.push_str(&bullet(&format!(
            "**Idle owner sessions**: what a session adds to a QUIC connection is its task, its one open \
             stream, and the push queue and bell of an owner: {} per session against bare quinn's {} per \
             connection. Holding them cost the relay {} cores for keep-alive pings.",
            fmt(num(io, "relay_bytes_per_session").map(|b| b / 1024.0), " KiB"),
            fmt(f.m("raw_quinn", "idle.server_bytes_per_conn").map(|b| b / 1024.0), " KiB"),
            fmt(num(io, "relay_cpu_cores_during_hold"), ""),
        )));
    }
    let r1 = run.once("restart").map(restart_medians);
    let r2 = run.once("restart_big").map(restart_medians);
    let pair = |r: Option<(Option<f64>, Option<f64>, usize, usize)>| {
        r.map_or("—".to_owned(), |(a, b, _, _)| {
            format!("{} / {}", fmt(a, " s"), fmt(b, " s"))
        })
    };
    out.push_str(&bullet(&format!(
        "**Restart**: after a clean stop the journal is empty and opening reads `store.redb`'s header and \
         totals; after kill -9 the relay replays what the journal holds beyond `store.redb` (at most about a \
         quarter of the 64 MiB ring) and redb loads the allocator state its last commit saved, so neither \
         grows with the store. Clean / kill -9: {} with {} envelopes, {} with {}.",
        pair(r1),
        run.once("restart").and_then(|v| num(v, "envelopes")).map_or("—".to_owned(), group),
        pair(r2),
        run.once("restart_big").and_then(|v| num(v, "envelopes")).map_or("—".to_owned(), group),
    )));
    out
}

fn scenarios(run: &Run) -> String {
    let m = |k: &str| run.meta(k).to_owned();
    let rate = m("OPEN_RATE");
    let mut out = String::new();
    for text in [
        format!(
            "**Online delivery**: `chappe bench --mode online {}`. 8 anonymous sender connections with 32 \
             sends outstanding each, one owner connected; a send counts once the relay answered OK (synced in \
             its journal) and the owner received it. mosquitto: `peer-mqtt {} --qos 0|1`, one subscriber at \
             the same QoS; its QoS 1 PUBACK does **not** mean \"on disk\" (`persistence true` writes at \
             autosave and exit), and messages the subscriber never got are listed under losses.",
            m("S_ONLINE"),
            m("S_PEER")
        ),
        format!(
            "**Durable sends**: `chappe bench --mode offline {}` (owner offline, 128 outstanding): each OK \
             after the journal batch holding it was synced. `raw-redb --batch 1000 --size 1024`: write \
             transactions of 1000 values of 1 KiB under 40-byte keys, `Durability::Immediate`.",
            m("S_DURABLE")
        ),
        format!(
            "**Single sender**: `chappe bench --mode offline {}`, p50 OK latency. Its floor: `raw-quinn --tests \
             fwd --fwd-senders 1 --fwd-window 1 --fwd-no-receiver` (bare quinn answers each 1 KiB send with 4 \
             bytes, no disk; the sender reads OKs in a task of its own, as the client does), plus `raw-fsync \
             --block 4096 --mode overwrite --gap-us 100` (a 4 KiB overwrite and fdatasync 100 µs after the \
             last, as a single sender's syncs come a round trip apart), on the state directories' filesystem.",
            m("S_SINGLE")
        ),
        "**Fetch + ack**: the durable run's backlog fetched and acknowledged by its owner; against `raw-redb` \
         reading 1000 values in one read transaction and deleting them in one write transaction."
            .to_owned(),
        format!(
            "**64 KiB**: `chappe bench --mode online {}`, delivered envelopes × 65,536 B. Against `raw-quinn \
             --tests fwd --fwd-senders 1 --fwd-window 32 --fwd-size 65536`: a server with the relay's TLS \
             policy that answers each message with a 4-byte OK and passes it to one receiver connection, \
             which acks every 32; no store, no Noise. `raw-quinn` bulk: one connection, one stream.",
            m("S_BULK")
        ),
        format!(
            "**Sessions**: `chappe-handshakes --concurrency {}`: `chappe_client::Sender::connect` (fresh UDP \
             endpoint, QUIC + TLS 1.3 with X25519MLKEM768, Noise NK bound to the connection) and close, closed \
             loop; against `raw-quinn` making the same QUIC/TLS handshake (aws-lc-rs, X25519MLKEM768 only, \
             pinned self-signed ECDSA certificate, no resumption) without Noise.",
            m("HS_CONC")
        ),
        format!(
            "**Handshake flood**: a relay with the default admission limits (other rows put the per-source \
             and Retry limits out of the way); `chappe bench --mode offline {}` alone, then again while \
             `handshake-flood --factor 10` sends the first Initial of fresh QUIC connection attempts (made \
             beforehand by quinn-proto with the client's TLS policy, never continued) at ten times the \
             round's session rate, paced, from 127.0.0.10–19.",
            m("S_DURABLE")
        ),
        "**AEAD**: `raw-aead --size 16384` (aws-lc, what the client seals envelopes with) against `openssl \
         speed -evp chacha20-poly1305 -bytes 16384`."
            .to_owned(),
        format!(
            "**Idle sessions**: relay RSS growth while {} sender sessions (`chappe-handshakes --hold`) are held \
             open, per session; against bare quinn's server per idle connection. Owners (once per run): \
             `idle-owners --sessions {} --hold-seconds {}` opens that many Noise XK owner sessions, one \
             identity each, holds them while only keep-alive pings flow, then checks every one still answers \
             and reads the relay's `chappe_connections_active{{mode=\"owner\"}}`.",
            m("IDLE_K"),
            m("OWNER_SESSIONS"),
            m("OWNER_HOLD")
        ),
        format!(
            "**Restart** (once per run): `fill-store fill` writes {} (and, for the large row, {}) envelopes of \
             1 KiB over 100 mailboxes with the real store code; `chappe-relay` is then timed from exec to the \
             first `/readyz` 200 after a clean stop and after kill -9 under write load, and `fill-store verify` \
             asks the relay, as every owner, how many envelopes it holds.",
            group(run.meta("RESTART_N").parse().unwrap_or(0.0)),
            group(run.meta("RESTART_BIG_N").parse().unwrap_or(0.0))
        ),
        format!(
            "**Open loop and footprint** (inputs of [CAPACITY.md](CAPACITY.md)): `chappe bench --mode \
             online|offline --senders 8 --size 1024 --owners 1 --rate {rate}`, sends started on schedule; \
             `fill-store fill` into empty stores for the disk bytes per envelope by bucket and per mailbox."
        ),
        "**NATS** (reference): `peer-nats` core pub/sub and JetStream with a file-store stream, each publish \
         awaiting its PubAck; nats-server syncs on an interval, not per message."
            .to_owned(),
    ] {
        out.push_str(&bullet(&text));
    }
    out
}

fn more_figures(run: &Run, f: &Figures) -> String {
    let us = |v: Option<f64>| fmt(v, " µs");
    let rate = run.meta("OPEN_RATE");
    let io = run.once("idle_owners");
    let rs = run.once("restart");
    let mut rows: Vec<(String, String)> = capacity::figure_lines(run);
    rows.extend([
        (
            "relay online 1 KiB: send p50 / delivery p50 / delivery p99".to_owned(),
            format!(
                "{} / {} / {}",
                us(f.m("relay_online", "send_latency.p50_us")),
                us(f.m("relay_online", "delivery_latency.p50_us")),
                us(f.m("relay_online", "delivery_latency.p99_us"))
            ),
        ),
        (
            format!("relay open loop {rate}/s online: send p50 / p99"),
            format!(
                "{} / {}",
                us(f.m("relay_open", "send_latency.p50_us")),
                us(f.m("relay_open", "send_latency.p99_us"))
            ),
        ),
        (
            "relay durable: send p50 / p99; relay CPU cores".to_owned(),
            format!(
                "{} / {}; {}",
                us(f.m("relay_durable", "send_latency.p50_us")),
                us(f.m("relay_durable", "send_latency.p99_us")),
                fmt(f.m("relay_durable", "relay_cpu_cores"), "")
            ),
        ),
        (
            "relay online: envelopes never written to store.redb / group commits".to_owned(),
            format!(
                "{} % / {}",
                fmt(f.m("relay_online_store", "unwritten_share").map(|x| x * 100.0), ""),
                fmt(f.m("relay_online_store", "group_commits"), "")
            ),
        ),
        (
            "mosquitto QoS 0: delivery p50; QoS 1: PUBACK p50".to_owned(),
            format!(
                "{}; {}",
                us(f.m("mqtt_qos0", "delivery_latency.p50_us")),
                us(f.m("mqtt_qos1", "puback_latency.p50_us"))
            ),
        ),
        (
            "redb: durable commits/s of 1000 × 1 KiB / commit p50".to_owned(),
            format!(
                "{} / {}",
                fmt(f.m("raw_redb", "insert_commits_per_sec"), "/s"),
                us(f.m("raw_redb", "insert_commit_latency.p50_us"))
            ),
        ),
        (
            "relay single sender: OK/s / p99".to_owned(),
            format!(
                "{} / {}",
                fmt(f.m("relay_single", "send_per_sec"), "/s"),
                us(f.m("relay_single", "send_latency.p99_us"))
            ),
        ),
        (
            "relay 64 KiB: delivery p50".to_owned(),
            us(f.m("relay_bulk", "delivery_latency.p50_us")),
        ),
        (
            "restart: fill time / store.redb size / envelopes the relay counted after the last start".to_owned(),
            rs.map_or("—".to_owned(), |r| {
                format!(
                    "{} / {} / {}",
                    fmt(num(r, "fill.seconds"), " s"),
                    fmt(num(r, "fill.file_bytes").map(|b| b / f64::from(1u32 << 30)), " GiB"),
                    num(r, "verify.envelopes").map_or("—".to_owned(), group)
                )
            }),
        ),
        (
            "idle owners: open time / UDP datagrams during the hold".to_owned(),
            io.map_or("—".to_owned(), |r| {
                format!(
                    "{} / {}",
                    fmt(num(r, "open_seconds"), " s"),
                    num(r, "udp_datagrams_during_hold").map_or("—".to_owned(), group)
                )
            }),
        ),
        (
            "NATS core: delivery p50; JetStream: PubAck p50".to_owned(),
            format!(
                "{}; {}",
                us(f.m("nats_core", "latency.p50_us")),
                us(f.m("nats_js", "latency.p50_us"))
            ),
        ),
    ]);
    let mut out = "| figure | median |\n|---|---:|\n".to_owned();
    for (k, v) in rows {
        let _ = writeln!(out, "| {k} | {v} |");
    }
    out
}

fn per_round(run: &Run) -> String {
    let n = run.runs;
    let mut out = format!(
        "| measurement | {} |\n|---|{}\n",
        (1..=n)
            .map(|r| format!("round {r}"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(n)
    );
    for (label, name, path, scale) in [
        (
            "relay online delivered/s",
            "relay_online",
            "delivered_per_sec",
            1.0,
        ),
        (
            "mosquitto QoS 0 delivered/s",
            "mqtt_qos0",
            "delivered_per_sec",
            1.0,
        ),
        (
            "mosquitto QoS 1 delivered/s",
            "mqtt_qos1",
            "delivered_per_sec",
            1.0,
        ),
        ("relay durable OK/s", "relay_durable", "send_per_sec", 1.0),
        ("redb values/s", "raw_redb", "insert_values_per_sec", 1.0),
        (
            "relay single p50 µs",
            "relay_single",
            "send_latency.p50_us",
            1.0,
        ),
        (
            "quinn OK round trip p50 µs",
            "raw_quinn_ok1",
            "fwd.ok_latency.p50_us",
            1.0,
        ),
        (
            "fdatasync after 100 µs p50 µs",
            "raw_fsync_paced",
            "fsync_latency.p50_us",
            1.0,
        ),
        ("relay fetch+ack/s", "relay_durable", "drain_per_sec", 1.0),
        (
            "redb read+delete/s",
            "raw_redb",
            "drain_values_per_sec",
            1.0,
        ),
        (
            "relay 64 KiB MB/s",
            "relay_bulk",
            "delivered_per_sec",
            65536.0 / 1e6,
        ),
        (
            "quinn forwarding 64 KiB MB/s",
            "raw_quinn_fwd64",
            "fwd.mb_per_sec",
            1.0,
        ),
        (
            "relay sessions/s",
            "relay_handshakes",
            "handshakes_per_sec",
            1.0,
        ),
        ("quinn handshakes/s", "raw_quinn", "handshakes.per_sec", 1.0),
        ("AEAD aws-lc MB/s", "raw_aead", "bytes_per_sec", 1e-6),
        ("openssl speed MB/s", "openssl_aead", "bytes_per_sec", 1e-6),
    ] {
        let s = run.series(name, path, scale);
        let cells: Vec<String> = (1..=n).map(|r| fmt(s.get(&r).copied(), "")).collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    out
}

/// Errors the load generators reported, and measurements that failed.
fn problems(run: &Run) -> String {
    let mut errs = Vec::new();
    for (name, rounds) in &run.data {
        for (r, x) in rounds {
            if let Some(e) = x
                .get("errors")
                .filter(|e| e.as_object().is_some_and(|o| !o.is_empty()))
            {
                errs.push(format!("- {name} round {r}: {e}"));
            }
            if let Some(u) = num(x, "undelivered").filter(|u| *u > 0.0) {
                errs.push(format!(
                    "- {name} round {r}: {} published messages never reached the subscriber (within 5 s)",
                    group(u)
                ));
            }
        }
    }
    let mq = run.meta("HAVE_MQTT") == "1";
    let nt = run.meta("HAVE_NATS") == "1";
    let mut missing = Vec::new();
    for name in [
        "relay_online",
        "mqtt_qos0",
        "mqtt_qos1",
        "relay_durable",
        "raw_redb",
        "relay_single",
        "raw_fsync",
        "raw_fsync_paced",
        "raw_quinn_ok1",
        "relay_bulk",
        "relay_handshakes",
        "raw_quinn",
        "raw_quinn_fwd",
        "raw_quinn_fwd64",
        "raw_quinn_ok",
        "relay_open",
        "relay_open_offline",
        "raw_aead",
        "openssl_aead",
        "nats_core",
        "nats_js",
        "idle_owners",
        "restart",
        "restart_big",
        "footprint",
    ] {
        if (name.starts_with("mqtt") && !mq) || (name.starts_with("nats") && !nt) {
            continue;
        }
        let rounds = if ONCE.contains(&name) { 1 } else { run.runs };
        for r in 1..=rounds {
            if !run.data.get(name).is_some_and(|d| d.contains_key(&r)) {
                missing.push(format!("- {name} round {r}"));
            }
        }
    }
    let mut out = String::new();
    if !errs.is_empty() {
        out.push_str("\n## Errors and losses reported by the load generators\n\n");
        out.push_str(&errs.join("\n"));
        out.push('\n');
    }
    if !missing.is_empty() {
        out.push_str("\n## Missing measurements (the command failed; its stderr is in target/bench/last/)\n\n");
        out.push_str(&missing.join("\n"));
        out.push('\n');
    }
    out
}

/// The version of `krate` in Cargo.lock.
fn version(lock: &str, krate: &str) -> String {
    let needle = format!("name = \"{krate}\"");
    let mut found: Vec<&str> = lock
        .split("[[package]]")
        .filter(|block| block.lines().any(|l| l.trim() == needle))
        .filter_map(|block| {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix("version = \""))
                .and_then(|v| v.strip_suffix('"'))
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    if found.is_empty() {
        "?".to_owned()
    } else {
        found.join(", ")
    }
}

fn machine(run: &Run, lock: &str) -> String {
    let crates: Vec<String> = [
        "quinn",
        "quinn-proto",
        "rustls",
        "aws-lc-rs",
        "redb",
        "tokio",
        "noise-protocol",
        "rumqttc",
        "async-nats",
    ]
    .iter()
    .map(|c| format!("{c} {}", version(lock, c)))
    .collect();
    let mut out = String::new();
    for line in [
        format!(
            "- CPU: {} × {}; RAM: {}",
            run.meta("M_NPROC"),
            run.meta("M_CPU"),
            run.meta("M_RAM")
        ),
        format!(
            "- OS / kernel: {} / {}",
            run.meta("M_OS"),
            run.meta("M_KERNEL")
        ),
        format!(
            "- filesystem of the state directories: {}",
            run.meta("M_FS")
        ),
        format!(
            "- load average before / after: {} / {}; other compiler processes seen: {}; CPU time taken by the \
             hypervisor (steal): {:.1} %",
            run.meta("LOAD_START"),
            run.meta("LOAD_END"),
            run.meta("BUSY_SEEN"),
            steal(run)
        ),
        format!(
            "- {}; {}; {}",
            run.meta("V_RUSTC"),
            run.meta("V_MOSQUITTO"),
            run.meta("V_NATS")
        ),
        format!("- crates: {}", crates.join(", ")),
    ] {
        out.push_str(&bullet(line.trim_start_matches("- ")));
    }
    out
}
