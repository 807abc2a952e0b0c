//! `handshake-flood`: a QUIC handshake flood against a relay, for the
//! "sends during a handshake flood" row of `bench/run`.
//!
//! Sends the first Initial packet of fresh connection attempts, made by
//! quinn-proto with the client's own TLS policy (so the relay sees a real
//! ClientHello with an X25519MLKEM768 share) and never continued: what an
//! attacker who spoofs or discards answers sends. The packets are made
//! before the flood starts (making one costs an ML-KEM key generation, on
//! the same cores as the relay here, where a real attacker would use its
//! own), then paced out from several loopback source addresses.
//!
//! Prints `flooding` on stderr when the packets start going out, and one
//! JSON object on stdout at the end.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chappe_client::transport::{Role, client_config, resolve};
use chappe_proto::descriptor::Descriptor;
use clap::Parser;
use serde::Serialize;

#[derive(Parser)]
struct Args {
    /// The relay's descriptor.
    #[arg(long)]
    relay: Descriptor,
    /// Connection attempts per second.
    #[arg(long, conflicts_with = "rate_of")]
    rate: Option<f64>,
    /// Instead of --rate: `--factor` times the `handshakes_per_sec` of this
    /// `chappe-handshakes` result file.
    #[arg(long)]
    rate_of: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 10.0)]
    factor: f64,
    /// Seconds to flood for.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Source addresses 127.0.0.10 onwards.
    #[arg(long, default_value_t = 10)]
    sources: u8,
    /// The relay's metrics listener, to report its Retry counter.
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

#[derive(Serialize)]
struct Report {
    rate_target: f64,
    seconds: f64,
    sources: u8,
    initials_sent: usize,
    initials_per_sec: f64,
    relay_retries: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rate = match (&args.rate, &args.rate_of) {
        (Some(r), _) => *r,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let base = v
                .get("handshakes_per_sec")
                .and_then(serde_json::Value::as_f64)
                .context("no handshakes_per_sec in the --rate-of file")?;
            base * args.factor
        }
        (None, None) => anyhow::bail!("give --rate or --rate-of"),
    };
    anyhow::ensure!(rate >= 1.0, "a rate of at least 1/s");
    // Whole packets only: the count is small enough for f64 to hold exactly.
    let n = (rate * args.seconds).ceil() as usize;
    let packets = initials(&args.relay, n)?;
    let to = resolve(&args.relay)?;
    let sockets = (0..args.sources.max(1))
        .map(|i| UdpSocket::bind(SocketAddr::from(([127, 0, 0, 10 + i], 0))))
        .collect::<Result<Vec<_>, _>>()
        .context("binding 127.0.0.10 onwards")?;
    eprintln!("flooding");
    let start = Instant::now();
    let mut sent = 0;
    for (p, s) in packets.iter().zip(sockets.iter().cycle()) {
        if s.send_to(p, to).is_ok() {
            sent += 1;
        }
        // Paced: packet k is due k / rate seconds in.
        let due = Duration::from_secs_f64(sent as f64 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let took = start.elapsed().as_secs_f64();
    chappe_bench::print_json(&Report {
        rate_target: rate,
        seconds: took,
        sources: args.sources,
        initials_sent: sent,
        initials_per_sec: sent as f64 / took,
        relay_retries: args
            .metrics
            .and_then(|m| scrape(m, "chappe_quic_retries_total").ok()),
    })
}

/// The first datagram of `n` fresh connection attempts.
fn initials(desc: &Descriptor, n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let cfg = client_config(desc, Role::Owner, chappe_proto::tls::crypto_provider())?;
    let to = resolve(desc)?;
    let fp = desc
        .tls_fingerprint
        .context("the descriptor has no certificate fingerprint")?;
    let name = chappe_proto::tls::key_hint_name(&fp);
    let mut out = Vec::with_capacity(n);
    // A fresh endpoint now and then: each keeps every connection it made.
    let mut ep = None;
    while out.len() < n {
        if out.len() % 4096 == 0 {
            ep = Some(quinn_proto::Endpoint::new(
                Arc::new(quinn_proto::EndpointConfig::default()),
                None,
                false,
                None,
            ));
        }
        let ep = ep.as_mut().context("no endpoint")?;
        let now = Instant::now();
        let (_, mut conn) = ep.connect(now, cfg.clone(), to, &name)?;
        let mut buf = Vec::new();
        if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            buf.truncate(t.size);
            out.push(buf);
        }
    }
    Ok(out)
}

/// One metric's value from the relay's `/metrics`.
fn scrape(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .context("metric not found")
}
