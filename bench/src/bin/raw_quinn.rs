//! `raw-quinn`: bare quinn 0.11 on loopback with the relay's TLS policy
//! (TLS 1.3, X25519MLKEM768 only, aws-lc-rs, self-signed ECDSA certificate
//! pinned by the client, no tickets, no 0-RTT, no address-validation
//! tokens): the ceiling for everything the relay does over QUIC.
//!
//! The server runs as a child process (`raw-quinn serve`), like the relay
//! does, so client and server do not share a runtime and the server's RSS
//! can be read on its own.
//!
//! - handshakes: closed loop, `--handshake-concurrency` workers, each a new
//!   client endpoint (fresh UDP port, as the chappe client does) and a new
//!   connection, closed once established.
//! - rr: 1 KiB request → 1 KiB response over ONE connection with
//!   `--rr-streams` concurrent workers, both as a new bidirectional stream
//!   per request and as long-lived streams carrying one request at a time.
//! - bulk: one connection, one stream, 64 KiB writes for `--seconds`; the
//!   server counts what it read and answers with the count at the end.
//! - fwd: the ceiling for the relay's online shape. `--fwd-senders`
//!   connections each keep `--fwd-window` messages of `--fwd-size` bytes
//!   outstanding on one long-lived stream; the server answers each with a
//!   4-byte OK and hands it, through a channel, to the one receiver
//!   connection's stream, whose client acks every 32 messages. That is the
//!   relay's path with no store, no Noise and no per-send task: two QUIC
//!   hops per message, and the rate is what the receiver got. With
//!   `--fwd-no-receiver` the server answers OK and drops the message: the
//!   durable-send shape with no disk, counted in OKs.
//! - idle: after the handshakes (so the server's allocator has seen the same
//!   churn as the relay's in `chappe-handshakes --hold`),
//!   `--idle-connections` established connections on one client endpoint;
//!   server RSS delta per connection.
//!
//! Handshakes and idle connections run against a server with the relay's
//! stream limits (1 bidirectional stream, no unidirectional ones); request/
//! response and bulk against a second one that allows `--rr-streams`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use chappe_bench::{
    Errors, Percentiles, ServerUsage, histogram, print_json, proc_sample, record, rss_kib,
};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "bare quinn on loopback: handshakes/s, 1 KiB request/response, bulk, idle RSS")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Which measurements to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "handshakes,rr,bulk,idle"
    )]
    tests: Vec<Test>,
    /// Seconds for each timed measurement.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent handshake workers.
    #[arg(long, default_value_t = 4)]
    handshake_concurrency: usize,
    /// Concurrent request/response workers on the one connection.
    #[arg(long, default_value_t = 32)]
    rr_streams: usize,
    /// Request and response size.
    #[arg(long, default_value_t = 1024)]
    rr_size: usize,
    /// Bulk write size.
    #[arg(long, default_value_t = 65536)]
    bulk_chunk: usize,
    /// Sender connections for the forwarding test.
    #[arg(long, default_value_t = 8)]
    fwd_senders: usize,
    /// Messages each forwarding sender keeps outstanding.
    #[arg(long, default_value_t = 32)]
    fwd_window: usize,
    /// Forwarded message size.
    #[arg(long, default_value_t = 1024)]
    fwd_size: usize,
    /// No receiver: the server answers OK and drops each message.
    #[arg(long)]
    fwd_no_receiver: bool,
    /// Idle connections to hold for the RSS measurement.
    #[arg(long, default_value_t = 2000)]
    idle_connections: usize,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// (internal) Run the server; prints `ADDR CERT-HEX`, exits when stdin closes.
    Serve {
        /// Concurrent bidirectional streams a client may open.
        #[arg(long, default_value_t = 1)]
        bidi_streams: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Test {
    Handshakes,
    Rr,
    Bulk,
    Fwd,
    Idle,
}

#[derive(Serialize, Default)]
struct Report {
    handshakes: Option<Rate>,
    rr_stream_per_request: Option<Rate>,
    rr_long_streams: Option<Rate>,
    bulk: Option<Bulk>,
    fwd: Option<Forward>,
    idle: Option<Idle>,
    errors: std::collections::BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Rate {
    concurrency: usize,
    seconds: f64,
    count: u64,
    per_sec: f64,
    latency: Percentiles,
    #[serde(flatten)]
    server: ServerUsage,
}

#[derive(Serialize)]
struct Bulk {
    chunk: usize,
    seconds: f64,
    bytes: u64,
    mb_per_sec: f64,
    #[serde(flatten)]
    server: ServerUsage,
}

#[derive(Serialize)]
struct Forward {
    senders: usize,
    window: usize,
    size: usize,
    seconds: f64,
    receiver: bool,
    /// Messages the receiver got.
    delivered: u64,
    per_sec: f64,
    mb_per_sec: f64,
    /// OKs the senders got.
    oks: u64,
    oks_per_sec: f64,
    /// From the send to the receiver reading it.
    latency: Percentiles,
    /// From the send to its sender reading the OK: with one sender and a
    /// window of 1, a relay's single-sender round trip with no disk.
    ok_latency: Percentiles,
    #[serde(flatten)]
    server: ServerUsage,
}

#[derive(Serialize)]
struct Idle {
    connections: usize,
    server_rss_before_kib: u64,
    server_rss_after_kib: u64,
    server_bytes_per_conn: f64,
    open_seconds: f64,
}

const SERVER_NAME: &str = "chappe-relay";

// ---------------------------------------------------------------- server

fn server_config(bidi_streams: u32) -> anyhow::Result<(quinn::ServerConfig, Vec<u8>)> {
    let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .context("self-signed certificate")?;
    let cert = ck.cert.der().to_vec();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(chappe_proto::tls::crypto_provider())
        .with_protocol_versions(chappe_proto::tls::VERSIONS)
        .context("TLS 1.3")?
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.clone())], key)
        .context("certificate")?;
    tls.alpn_protocols = vec![chappe_proto::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let crypto = QuicServerConfig::try_from(tls).context("QUIC TLS config")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(bidi_streams.into())
        .max_concurrent_uni_streams(0u8.into())
        .max_idle_timeout(Some(Duration::from_secs(60).try_into()?));
    cfg.transport_config(Arc::new(transport));
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.sent(0);
    cfg.validation_token_config(tokens);
    Ok((cfg, cert))
}

fn serve(bidi_streams: u32) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(async {
        let (cfg, cert) = server_config(bidi_streams)?;
        let endpoint = quinn::Endpoint::server(cfg, ([127, 0, 0, 1], 0).into())?;
        let addr = endpoint.local_addr()?;
        println!("{addr} {}", hex_encode(&cert));
        // Exit when the parent closes our stdin (or dies).
        std::thread::spawn(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                sink.clear();
            }
            std::process::exit(0);
        });
        let sink = Sink::default();
        while let Some(incoming) = endpoint.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(stream(send, recv, sink.clone()));
                }
            });
        }
        Ok(())
    })
}

/// The forwarding receiver's queue, once its stream has said `R`.
type Sink = Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Bytes>>>>;

/// How many forwarded messages may wait for the receiver's stream: the
/// relay's owner push queue is as deep.
const FWD_QUEUE: usize = 1024;

/// Reads one forwarding message, its 4-byte length prefix included, so the
/// server passes it on as read, without a copy.
async fn read_msg(recv: &mut quinn::RecvStream) -> anyhow::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let body = usize::try_from(u32::from_be_bytes(len))?;
    let mut m = vec![0u8; 4 + body];
    m.get_mut(..4)
        .ok_or_else(|| anyhow!("short buffer"))?
        .copy_from_slice(&len);
    recv.read_exact(m.get_mut(4..).ok_or_else(|| anyhow!("short buffer"))?)
        .await?;
    Ok(Some(Bytes::from(m)))
}

fn msg(body: &[u8]) -> anyhow::Result<Bytes> {
    let mut m = Vec::with_capacity(4 + body.len());
    m.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
    m.extend_from_slice(body);
    Ok(Bytes::from(m))
}

/// First byte picks the kind: `E` echoes, `B` counts and answers the count,
/// `S` forwards each message to the `R` stream and answers OK.
async fn stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, sink: Sink) {
    let mut kind = [0u8; 1];
    if recv.read_exact(&mut kind).await.is_err() {
        return;
    }
    match &kind {
        b"E" => {
            while let Ok(Some(c)) = recv.read_chunk(64 * 1024, true).await {
                if send.write_chunk(c.bytes).await.is_err() {
                    return;
                }
            }
        }
        b"B" => {
            let mut n = 0u64;
            while let Ok(Some(c)) = recv.read_chunk(1 << 20, false).await {
                n += u64::try_from(c.bytes.len()).unwrap_or(0);
            }
            let _ = send.write_all(&n.to_be_bytes()).await;
        }
        b"R" => {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(FWD_QUEUE);
            if let Ok(mut s) = sink.lock() {
                *s = Some(tx);
            }
            // Acks are read and dropped, as a store-less relay would.
            tokio::spawn(async move {
                let mut ack = [0u8; 8];
                while recv.read_exact(&mut ack).await.is_ok() {}
            });
            while let Some(m) = rx.recv().await {
                if send.write_chunk(m).await.is_err() {
                    return;
                }
            }
        }
        b"S" => {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(FWD_QUEUE);
            // The sender's answers go out from their own task, as the relay's
            // session writer does, so reading never waits on writing.
            let writer = tokio::spawn(async move {
                while let Some(ok) = rx.recv().await {
                    if send.write_chunk(ok).await.is_err() {
                        return;
                    }
                }
                let _ = send.finish();
            });
            let ok = Bytes::from_static(b"OK\0\0");
            while let Ok(Some(m)) = read_msg(&mut recv).await {
                // No receiver (or a gone one): the message is dropped.
                let out = sink.lock().ok().and_then(|s| s.clone());
                if let Some(out) = out {
                    let _ = out.send(m).await;
                }
                if tx.send(ok.clone()).await.is_err() {
                    break;
                }
            }
            drop(tx);
            let _ = writer.await;
            return;
        }
        _ => {}
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd hex length");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            let pair = s.get(i..i + 2).ok_or_else(|| anyhow!("bad hex"))?;
            u8::from_str_radix(pair, 16).context("bad hex")
        })
        .collect()
}

/// The server child process; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    cert: Vec<u8>,
}

impl Server {
    fn spawn(bidi_streams: u32) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("own path")?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg(format!("--bidi-streams={bidi_streams}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the server process")?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .context("reading the server's address")?;
        let mut parts = line.split_whitespace();
        let addr = parts
            .next()
            .ok_or_else(|| anyhow!("server printed nothing"))?
            .parse()
            .context("server address")?;
        let cert = hex_decode(parts.next().ok_or_else(|| anyhow!("no certificate"))?)?;
        Ok(Server { child, addr, cert })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- client

/// The chappe client's own QUIC configuration (`chappe_client::transport`),
/// pinned to `cert`: the baseline differs from the relay only by the Noise
/// layer, never by TLS policy. An owner's configuration keeps quinn's path
/// MTU search (a sender's probes once, straight to 1452): the bulk and
/// forwarding baselines get every packet size the relay's connections can.
fn client_config(cert: &[u8]) -> anyhow::Result<quinn::ClientConfig> {
    use sha2::Digest;
    let desc = chappe_proto::descriptor::Descriptor {
        host: "127.0.0.1".into(),
        port: 1,
        relay_key: [0; 32],
        tls_fingerprint: Some(sha2::Sha256::digest(cert).into()),
    };
    chappe_client::transport::client_config(
        &desc,
        chappe_client::transport::Role::Owner,
        chappe_proto::tls::crypto_provider(),
    )
    .map_err(|e| anyhow!("client TLS config: {e}"))
}

fn endpoint(cfg: &quinn::ClientConfig) -> anyhow::Result<quinn::Endpoint> {
    let mut ep = quinn::Endpoint::client(([0, 0, 0, 0], 0).into()).context("client endpoint")?;
    ep.set_default_client_config(cfg.clone());
    Ok(ep)
}

async fn connect(ep: &quinn::Endpoint, addr: SocketAddr) -> anyhow::Result<quinn::Connection> {
    Ok(ep.connect(addr, SERVER_NAME)?.await?)
}

struct Counter {
    count: AtomicU64,
    hist: std::sync::Mutex<Histogram<u64>>,
}

impl Counter {
    fn new() -> anyhow::Result<Arc<Counter>> {
        Ok(Arc::new(Counter {
            count: AtomicU64::new(0),
            hist: std::sync::Mutex::new(histogram()?),
        }))
    }

    fn hit(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.hist.lock() {
            record(&mut h, d);
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn latency(&self) -> Percentiles {
        self.hist
            .lock()
            .map(|h| Percentiles::of(&h))
            .unwrap_or_default()
    }

    fn rate(&self, concurrency: usize, seconds: f64, server: ServerUsage) -> Rate {
        let count = self.count();
        Rate {
            concurrency,
            seconds,
            count,
            per_sec: count as f64 / seconds,
            latency: self.latency(),
            server,
        }
    }
}

/// Runs `workers` copies of `work` until `duration` has passed.
async fn timed<F, Fut>(
    workers: usize,
    duration: Duration,
    server_pid: u32,
    errors: &Arc<Errors>,
    work: F,
) -> anyhow::Result<Rate>
where
    F: Fn(Arc<Counter>, Instant) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let counter = Counter::new()?;
    let s0 = proc_sample(server_pid);
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let tasks: Vec<_> = (0..workers.max(1))
        .map(|_| tokio::spawn(work(counter.clone(), deadline)))
        .collect();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.add(format!("{e:#}")),
            Err(e) => errors.add(e),
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let s1 = proc_sample(server_pid);
    Ok(counter.rate(workers.max(1), seconds, ServerUsage::between(s0, s1)))
}

/// The forwarding test (see the module doc).
async fn forward(
    a: &Args,
    cfg: &quinn::ClientConfig,
    addr: SocketAddr,
    pid: u32,
    duration: Duration,
) -> anyhow::Result<Forward> {
    let size = a.fwd_size.max(8);
    // Counted, with the latency from send to receipt, by the receiver.
    let delivered = Counter::new()?;
    // Counted, with the latency from send to OK, by each sender.
    let oks = Counter::new()?;
    let epoch = Instant::now();
    let receiver = if a.fwd_no_receiver {
        None
    } else {
        let rconn = connect(&endpoint(cfg)?, addr).await?;
        let (mut rs, mut rr) = rconn.open_bi().await?;
        rs.write_all(b"R").await?;
        // The stream reaches the server with its first bytes; give it a
        // moment to register before any sender starts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let delivered = delivered.clone();
        let task = tokio::spawn(async move {
            let mut unacked = 0u32;
            while let Some(m) = read_msg(&mut rr).await? {
                // Each message carries its send time (µs since `epoch`).
                let sent = m
                    .get(4..12)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                delivered.hit(Duration::from_micros(now.saturating_sub(sent)));
                unacked += 1;
                if unacked == 32 {
                    rs.write_all(&[0u8; 8]).await?;
                    unacked = 0;
                }
            }
            anyhow::Ok(())
        });
        Some((rconn, task))
    };
    let s0 = proc_sample(pid);
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut senders = Vec::new();
    for _ in 0..a.fwd_senders.max(1) {
        let conn = connect(&endpoint(cfg)?, addr).await?;
        let window = Arc::new(tokio::sync::Semaphore::new(a.fwd_window.max(1)));
        let oks = oks.clone();
        // Send instants, oldest first: the server answers in order.
        let sent = Arc::new(std::sync::Mutex::new(
            std::collections::VecDeque::<Instant>::new(),
        ));
        senders.push(tokio::spawn(async move {
            let (mut s, mut r) = conn.open_bi().await?;
            s.write_all(b"S").await?;
            let oks = {
                let (window, sent) = (window.clone(), sent.clone());
                tokio::spawn(async move {
                    let mut ok = [0u8; 4];
                    while r.read_exact(&mut ok).await.is_ok() {
                        // Never empty: a send's instant is queued before it is written.
                        let began = sent.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                        if let Some(began) = began {
                            oks.hit(began.elapsed());
                        }
                        window.add_permits(1);
                    }
                })
            };
            let mut body = vec![0x5a_u8; size];
            while Instant::now() < deadline {
                window.acquire().await?.forget();
                // One clock read for both the receiver's stamp and the OK's.
                let began = Instant::now();
                let now =
                    u64::try_from(began.duration_since(epoch).as_micros()).unwrap_or(u64::MAX);
                if let Some(stamp) = body.get_mut(..8) {
                    stamp.copy_from_slice(&now.to_be_bytes());
                }
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(began);
                s.write_chunk(msg(&body)?).await?;
            }
            s.finish()?;
            let _ = oks.await;
            conn.close(0u32.into(), b"done");
            anyhow::Ok(())
        }));
    }
    for t in senders {
        t.await??;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let count = delivered.count();
    let ok_count = oks.count();
    let s1 = proc_sample(pid);
    if let Some((rconn, task)) = receiver {
        rconn.close(0u32.into(), b"done");
        task.abort();
    }
    Ok(Forward {
        senders: a.fwd_senders.max(1),
        window: a.fwd_window.max(1),
        size,
        seconds,
        receiver: !a.fwd_no_receiver,
        delivered: count,
        per_sec: count as f64 / seconds,
        mb_per_sec: count as f64 * size as f64 / seconds / 1e6,
        oks: ok_count,
        oks_per_sec: ok_count as f64 / seconds,
        latency: delivered.latency(),
        ok_latency: oks.latency(),
        server: ServerUsage::between(s0, s1),
    })
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if let Some(Cmd::Serve { bidi_streams }) = a.cmd {
        return serve(bidi_streams);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?
        .block_on(client(a))
}

async fn client(a: Args) -> anyhow::Result<()> {
    let duration = chappe_bench::seconds(a.seconds)?;
    let errors = Arc::new(Errors::default());
    let mut report = Report::default();

    let wants = |t| a.tests.contains(&t);
    // Handshakes and idle connections against a server with the relay's
    // stream limits (1 bidirectional, 0 unidirectional: quinn allocates
    // state for every stream a peer may open, which shows in the RSS).
    if wants(Test::Handshakes) || wants(Test::Idle) {
        let server = Server::spawn(1)?;
        let (addr, pid) = (server.addr, server.pid());
        let cfg = client_config(&server.cert)?;

        if wants(Test::Handshakes) {
            let errs = errors.clone();
            report.handshakes = Some(
                timed(
                    a.handshake_concurrency,
                    duration,
                    pid,
                    &errors,
                    |c, deadline| {
                        let (cfg, errs) = (cfg.clone(), errs.clone());
                        async move {
                            while Instant::now() < deadline {
                                let began = Instant::now();
                                let ep = endpoint(&cfg)?;
                                match connect(&ep, addr).await {
                                    Ok(conn) => {
                                        c.hit(began.elapsed());
                                        conn.close(0u32.into(), b"done");
                                    }
                                    Err(e) => errs.add(format!("handshake: {e:#}")),
                                }
                            }
                            Ok(())
                        }
                    },
                )
                .await?,
            );
        }

        if wants(Test::Idle) {
            let ep = endpoint(&cfg)?;
            let first = connect(&ep, addr).await?;
            // Let closed connections drain first (as chappe-handshakes does).
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let before = rss_kib(pid).unwrap_or(0);
            let k = a.idle_connections.max(1);
            let t0 = Instant::now();
            let sem = Arc::new(tokio::sync::Semaphore::new(32));
            let mut tasks = Vec::with_capacity(k);
            for _ in 0..k {
                let (ep, sem) = (ep.clone(), sem.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await?;
                    connect(&ep, addr).await
                }));
            }
            let mut conns = Vec::with_capacity(k);
            for t in tasks {
                match t.await {
                    Ok(Ok(c)) => conns.push(c),
                    Ok(Err(e)) => errors.add(format!("idle connect: {e:#}")),
                    Err(e) => errors.add(e),
                }
            }
            let open_seconds = t0.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let after = rss_kib(pid).unwrap_or(0);
            let n = conns.len().max(1) as f64;
            report.idle = Some(Idle {
                connections: conns.len(),
                server_rss_before_kib: before,
                server_rss_after_kib: after,
                server_bytes_per_conn: after.saturating_sub(before) as f64 * 1024.0 / n,
                open_seconds,
            });
            for c in conns {
                c.close(0u32.into(), b"done");
            }
            first.close(0u32.into(), b"done");
        }

        drop(server);
    }

    // Request/response and bulk: as many streams as the workers need.
    if wants(Test::Rr) || wants(Test::Bulk) || wants(Test::Fwd) {
        let server = Server::spawn(u32::try_from(a.rr_streams.max(1)).unwrap_or(u32::MAX))?;
        let (addr, pid) = (server.addr, server.pid());
        let cfg = client_config(&server.cert)?;

        if wants(Test::Rr) {
            let conn = connect(&endpoint(&cfg)?, addr).await?;
            let size = a.rr_size;
            let mut req = vec![b'E'];
            req.resize(size + 1, 0x5a);
            let req = Bytes::from(req);
            report.rr_stream_per_request = Some(
                timed(a.rr_streams, duration, pid, &errors, |c, deadline| {
                    let (conn, req) = (conn.clone(), req.clone());
                    async move {
                        while Instant::now() < deadline {
                            let began = Instant::now();
                            let (mut s, mut r) = conn.open_bi().await?;
                            s.write_chunk(req.clone()).await?;
                            s.finish()?;
                            let resp = r.read_to_end(size + 16).await?;
                            if resp.len() != size {
                                bail!("echo returned {} bytes", resp.len());
                            }
                            c.hit(began.elapsed());
                        }
                        Ok(())
                    }
                })
                .await?,
            );
            let body = req.slice(1..);
            report.rr_long_streams = Some(
                timed(a.rr_streams, duration, pid, &errors, |c, deadline| {
                    let (conn, body) = (conn.clone(), body.clone());
                    async move {
                        let (mut s, mut r) = conn.open_bi().await?;
                        s.write_all(b"E").await?;
                        let mut buf = vec![0u8; body.len()];
                        while Instant::now() < deadline {
                            let began = Instant::now();
                            s.write_chunk(body.clone()).await?;
                            r.read_exact(&mut buf).await?;
                            c.hit(began.elapsed());
                        }
                        s.finish()?;
                        Ok(())
                    }
                })
                .await?,
            );
            conn.close(0u32.into(), b"done");
        }

        if wants(Test::Bulk) {
            let conn = connect(&endpoint(&cfg)?, addr).await?;
            let chunk = Bytes::from(vec![0xa5u8; a.bulk_chunk.max(1)]);
            let s0 = proc_sample(pid);
            let t0 = Instant::now();
            let (mut s, mut r) = conn.open_bi().await?;
            s.write_all(b"B").await?;
            while t0.elapsed() < duration {
                s.write_chunk(chunk.clone()).await?;
            }
            s.finish()?;
            let count = r.read_to_end(8).await?;
            let seconds = t0.elapsed().as_secs_f64();
            let s1 = proc_sample(pid);
            let bytes = u64::from_be_bytes(
                count
                    .as_slice()
                    .try_into()
                    .map_err(|_| anyhow!("bad byte count from the server"))?,
            );
            report.bulk = Some(Bulk {
                chunk: chunk.len(),
                seconds,
                bytes,
                mb_per_sec: bytes as f64 / seconds / 1e6,
                server: ServerUsage::between(s0, s1),
            });
            conn.close(0u32.into(), b"done");
        }

        if wants(Test::Fwd) {
            report.fwd = Some(forward(&a, &cfg, addr, pid, duration).await?);
        }
        drop(server);
    }

    report.errors = errors.take();
    print_json(&report)
}
