//! Hostile clients against the real daemon on loopback: each test plays an
//! attacker who can reach the UDP port, and checks that the relay's memory
//! stays bounded, its limits refuse the attacker (and count it), and
//! everyone else keeps being served.
//!
//! Several tests use more than one loopback source address (127.0.0.2,
//! 127.0.0.10–19): Linux routes all of 127.0.0.0/8 to `lo`, so a client
//! socket can bind any of them. Memory ceilings are stated per test; no
//! test asserts a duration beyond "answered within a few seconds".

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chappe_client::transport::{Role, client_config};
use chappe_client::{OwnerSession, Sender};
use chappe_proto::descriptor::Descriptor;
use chappe_proto::frame::Frame;
use chappe_proto::noise::{Hello, Keypair, Mode, SenderInitiator, wire};
use chappe_proto::{CloseCode, DeliveryToken, ResultCode, SendId};
use chappe_system_tests::{Relay, config_args, relay_bin, wait_until};

/// A relay with `limits` added to a config that otherwise keeps the
/// defaults.
fn relay_with(dir: &std::path::Path, limits: &str) -> Relay {
    let args = config_args(dir, &format!("[limits]\n{limits}\n"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Relay::start_with(dir, &args)
}

/// A QUIC connection from `source` (a loopback address) to the relay, on
/// a fresh endpoint, with the client's own TLS policy.
/// `window`, if given, is the stream receive window the client offers.
async fn connect_from(
    desc: &Descriptor,
    source: [u8; 4],
    window: Option<u32>,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::from((source, 0))).map_err(|e| e.to_string())?;
    let mut cfg = client_config(desc, Role::Owner, chappe_proto::tls::crypto_provider())
        .map_err(|e| e.to_string())?;
    if let Some(w) = window {
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(w.into());
        cfg.transport_config(Arc::new(t));
    }
    endpoint.set_default_client_config(cfg);
    let fp = desc.tls_fingerprint.ok_or("no fingerprint")?;
    let addr = chappe_client::transport::resolve(desc).map_err(|e| e.to_string())?;
    let conn = endpoint
        .connect(addr, &chappe_proto::tls::key_hint_name(&fp))
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok((endpoint, conn))
}

/// An anonymous sender session from `source`, Noise NK done by hand.
struct RawSender {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl RawSender {
    async fn open(desc: &Descriptor, source: [u8; 4]) -> Result<RawSender, String> {
        RawSender::open_with(desc, source, None).await
    }

    async fn open_with(
        desc: &Descriptor,
        source: [u8; 4],
        window: Option<u32>,
    ) -> Result<RawSender, String> {
        let (endpoint, conn) = connect_from(desc, source, window).await?;
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, chappe_proto::noise::EXPORTER_LABEL, b"")
            .map_err(|_| "exporter")?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let (init, m1) = SenderInitiator::start(&desc.relay_key, &exporter, &Hello::default())
            .map_err(|e| e.to_string())?;
        let mut first = vec![Mode::Sender as u8];
        first.extend(wire::encode_message(&m1));
        send.write_all(&first).await.map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        let mut m2 = vec![0u8; usize::from(u16::from_be_bytes(len))];
        recv.read_exact(&mut m2).await.map_err(|e| e.to_string())?;
        init.finish(&m2).map_err(|e| e.to_string())?;
        Ok(RawSender {
            _endpoint: endpoint,
            conn,
            send,
            recv,
        })
    }

    /// One send, and the result code the relay answers.
    async fn send(&mut self, send_id: SendId, token: DeliveryToken) -> ResultCode {
        let f = Frame::Send {
            req: 1,
            send_id,
            token,
            ciphertext: Bytes::from(vec![5u8; 1024]),
        };
        self.send.write_all(&f.encode()).await.unwrap();
        let mut buf = BytesMut::new();
        loop {
            if let Some(Frame::Result { code, .. }) = Frame::decode(&mut buf).unwrap() {
                return code;
            }
            let chunk = self.recv.read_chunk(4096, true).await.unwrap().unwrap();
            buf.extend_from_slice(&chunk.bytes);
        }
    }
}

fn rss_mib(relay: &Relay) -> u64 {
    relay.rss_kib() / 1024
}

/// Finding 2: DATAGRAM frames the relay never reads, and stream data it
/// cannot read yet, from 500 connections at once. quinn's defaults let
/// each connection park 1.25 MB of datagrams (and more in its windows):
/// here the relay's growth must stay under 200 MiB, about 400 KiB per
/// connection, a third of what the datagram buffer alone used to take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_and_full_windows_from_500_connections_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with(
        dir.path(),
        "handshakes_per_source_per_sec = 100000\nretry_above_handshakes_per_sec = 100000\nmax_connections_per_source = 100000",
    );
    let desc = relay.descriptor();
    let before = rss_mib(&relay);
    let datagrams_sent = Arc::new(AtomicU64::new(0));
    let mut held = Vec::new();
    for batch in 0..10u8 {
        let mut tasks = Vec::new();
        for i in 0..50u8 {
            let desc = desc.clone();
            let sent = datagrams_sent.clone();
            tasks.push(tokio::spawn(async move {
                let source = [127, 0, 1 + batch, 1 + i];
                let mut s = RawSender::open(&desc, source).await.unwrap();
                // A frame announcing the largest length, all but its last
                // byte sent: the relay must hold it to parse it.
                let mut partial = Frame::Send {
                    req: 1,
                    send_id: SendId([1; 32]),
                    token: DeliveryToken([2; 32]),
                    ciphertext: Bytes::from(vec![3u8; 64 * 1024]),
                }
                .encode()
                .to_vec();
                partial.pop();
                s.send.write_all(&partial).await.unwrap();
                // 1.1 MB of datagrams, as far as the relay lets them come.
                for _ in 0..1000 {
                    match s
                        .conn
                        .send_datagram_wait(Bytes::from(vec![7u8; 1100]))
                        .await
                    {
                        Ok(()) => {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => break,
                    }
                }
                s
            }));
        }
        for t in tasks {
            held.push(t.await.unwrap());
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mib(&relay);
    eprintln!(
        "relay RSS {before} MiB -> {after} MiB with {} connections holding a partial frame; {} datagrams accepted by the client stack",
        held.len(),
        datagrams_sent.load(Ordering::Relaxed)
    );
    assert!(
        after < before + 200,
        "relay grew from {before} MiB to {after} MiB"
    );
    assert_eq!(
        relay.metric("chappe_connections_active{mode=\"sender\"}"),
        Some(500.0)
    );
    assert_eq!(relay.http_get("/readyz").0, 200);
}

/// Finding 5: idle anonymous sessions from one address must not take every
/// slot. 127.0.0.1 may hold 40 of the 50; 127.0.0.2 still gets in and its
/// send completes. Then the idle sessions are closed after
/// `sender_idle_secs` although their clients send keep-alives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_from_one_source_leave_room_for_another() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with(
        dir.path(),
        "max_connections = 50\nmax_connections_per_source = 40\nsender_idle_secs = 8",
    );
    let desc = relay.descriptor();
    let owner = OwnerSession::connect(&desc, &Keypair::generate())
        .await
        .unwrap();
    let token = DeliveryToken::random();
    let (_mailbox, send_id) = owner.create_mailbox(&[token]).await.unwrap();

    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        match RawSender::open(&desc, [127, 0, 0, 1]).await {
            Ok(s) => idle.push(s),
            Err(_) => refused += 1,
        }
    }
    eprintln!(
        "{} idle sessions held from 127.0.0.1, {refused} refused",
        idle.len()
    );
    // The owner session above is one of 127.0.0.1's connections too.
    assert_eq!(idle.len(), 39, "the per-source limit did not hold");
    assert_eq!(
        relay.metric("chappe_connections_refused_total{reason=\"max_connections_per_source\"}"),
        Some(21.0)
    );
    let mut other = tokio::time::timeout(
        Duration::from_secs(10),
        RawSender::open(&desc, [127, 0, 0, 2]),
    )
    .await
    .expect("a session from 127.0.0.2 is answered")
    .expect("a session from 127.0.0.2 gets a slot");
    assert_eq!(other.send(send_id, token).await, ResultCode::Ok);

    // The idle ones are closed within a few seconds of sender_idle_secs.
    for s in &idle {
        let closed = tokio::time::timeout(Duration::from_secs(15), s.conn.closed())
            .await
            .expect("an idle sender session was left open");
        match closed {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(
                    c.error_code.into_inner(),
                    u64::from(CloseCode::Normal.to_u32())
                );
            }
            e => panic!("closed by {e}"),
        }
    }
    assert!(relay.metric("chappe_sender_idle_closed_total") >= Some(39.0));
    // No log line per refusal: the 21 are in one summary line.
    let summed = |relay: &Relay| {
        relay
            .log_text()
            .lines()
            .filter(|l| l.contains("max_connections_per_source"))
            .count()
    };
    wait_until(Duration::from_secs(15), || summed(&relay) > 0);
    assert_eq!(
        summed(&relay),
        1,
        "refusals not summed up in one line:\n{}",
        relay.log_text()
    );
    // The owner session is not a sender: it stays.
    assert!(owner.close_code().is_none(), "the owner session was closed");
}

/// A sender flooding one send id gets `rate_limited` beyond the send id's
/// rate; a send to another mailbox is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_send_id_is_rate_limited_and_another_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with(dir.path(), "sends_per_send_id_per_sec = 10");
    let desc = relay.descriptor();
    let owner = OwnerSession::connect(&desc, &Keypair::generate())
        .await
        .unwrap();
    let token = DeliveryToken::random();
    let (_a, flooded) = owner.create_mailbox(&[token]).await.unwrap();
    let (_b, quiet) = owner.create_mailbox(&[token]).await.unwrap();

    let sender = Arc::new(Sender::connect(&desc).await.unwrap());
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let s = sender.clone();
        tasks.push(tokio::spawn(async move {
            s.send(flooded, token, Bytes::from(vec![1u8; 1024])).await
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Some(ResultCode::RateLimited) => limited += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    eprintln!("{ok} OK, {limited} rate_limited");
    // The bucket holds two seconds' worth (20), plus what refilled.
    assert!(limited > 0, "200 sends at once were all accepted");
    assert!(ok >= 20, "fewer than the burst were accepted: {ok}");
    // The same session, another send id: accepted.
    sender
        .send(quiet, token, Bytes::from(vec![2u8; 1024]))
        .await
        .unwrap();
    assert_eq!(
        relay.metric("chappe_sends_limited_total{limit=\"sends_per_send_id_per_sec\"}"),
        Some(f64::from(limited))
    );
    assert_eq!(
        relay.metric("chappe_envelopes_received_total{result=\"rate_limited\"}"),
        Some(f64::from(limited))
    );
}

/// Finding 6, through the command an operator runs: settings that would
/// defeat a protection are refused with the key named, and a metrics
/// listener off loopback is a warning.
#[test]
fn check_config_refuses_settings_that_defeat_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let check = |toml: &str| {
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, toml).unwrap();
        std::process::Command::new(relay_bin())
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .output()
            .unwrap()
    };
    let keep_alive = chappe_client::transport::KEEP_ALIVE.as_secs();
    for (toml, key) in [
        (
            format!("[limits]\nidle_timeout_secs = {keep_alive}"),
            "limits.idle_timeout_secs",
        ),
        (
            "[limits]\nmin_free_disk_bytes = 0".to_string(),
            "limits.min_free_disk_bytes",
        ),
    ] {
        let out = check(&toml);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml} was accepted");
        assert!(err.contains(&format!("`{key}`")), "{toml}: {err}");
    }
    let out = check("[metrics]\nlisten = \"0.0.0.0:9464\"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("warning:") && text.contains("`metrics.listen`"),
        "{text}"
    );
}

/// QUIC Initial packets of fresh connection attempts, made by quinn-proto
/// with the client's TLS policy and never continued: a handshake flood
/// that costs its sender almost nothing and cannot answer a Retry.
fn initials(desc: &Descriptor, n: usize) -> Vec<Vec<u8>> {
    let cfg = client_config(desc, Role::Owner, chappe_proto::tls::crypto_provider()).unwrap();
    let addr = chappe_client::transport::resolve(desc).unwrap();
    let name = chappe_proto::tls::key_hint_name(&desc.tls_fingerprint.unwrap());
    let mut ep = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let now = Instant::now();
        let (_, mut conn) = ep.connect(now, cfg.clone(), addr, &name).unwrap();
        let mut buf = Vec::new();
        if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            buf.truncate(t.size);
            out.push(buf);
        }
    }
    out
}

/// A handshake flood at about ten times what the relay completes, from ten
/// loopback addresses: Retry turns on, each attempt then costs one
/// stateless packet, the relay stays ready with its memory under 300 MiB
/// of growth, an established sender keeps completing sends, and Retry
/// turns off again after the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_turns_retry_on_and_sends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    let relay = relay_with(dir.path(), "retry_above_handshakes_per_sec = 1000000");
    let desc = relay.descriptor();
    let owner = OwnerSession::connect(&desc, &Keypair::generate())
        .await
        .unwrap();
    let token = DeliveryToken::random();
    let (_mailbox, send_id) = owner.create_mailbox(&[token]).await.unwrap();

    // The relay's handshake rate here, one after another.
    let start = Instant::now();
    for _ in 0..20 {
        Sender::connect(&desc).await.unwrap().close().await;
    }
    let rate = (20.0 / start.elapsed().as_secs_f64()).max(10.0);
    // Retry above that rate; a reload applies it.
    std::fs::write(
        &path,
        format!(
            "[limits]\nretry_above_handshakes_per_sec = {}\n",
            rate.ceil() as u64
        ),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(relay.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        relay.metric("chappe_reloads_total{result=\"ok\"}") == Some(1.0)
    }));
    assert_eq!(relay.metric("chappe_quic_retry_active"), Some(0.0));

    // An established sender session, before the flood.
    let sender = Sender::connect(&desc).await.unwrap();
    let before = rss_mib(&relay);

    // Ten times the measured rate for 6 s, from 127.0.0.10..19.
    let flood_rate = (rate * 10.0) as usize;
    let seconds = 6;
    let desc2 = desc.clone();
    let packets = tokio::task::spawn_blocking(move || initials(&desc2, flood_rate * seconds))
        .await
        .unwrap();
    let port = relay.port;
    let flood = std::thread::spawn(move || {
        let sockets: Vec<std::net::UdpSocket> = (10..20u8)
            .map(|i| std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, i], 0))).unwrap())
            .collect();
        let start = Instant::now();
        for (n, p) in packets.iter().enumerate() {
            let _ = sockets[n % sockets.len()].send_to(p, ("127.0.0.1", port));
            // Paced: n packets by n / flood_rate seconds.
            let due = Duration::from_secs_f64(n as f64 / flood_rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        packets.len()
    });

    let mut sends = 0;
    let mut retry_seen = false;
    let mut max_rss = before;
    while !flood.is_finished() {
        tokio::time::timeout(
            Duration::from_secs(5),
            sender.send(send_id, token, Bytes::from(vec![9u8; 1024])),
        )
        .await
        .expect("a send during the flood was not answered within 5 s")
        .expect("a send during the flood was refused");
        sends += 1;
        retry_seen |= relay.metric("chappe_quic_retry_active") == Some(1.0);
        assert_eq!(
            relay.http_get("/readyz").0,
            200,
            "not ready during the flood"
        );
        max_rss = max_rss.max(rss_mib(&relay));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = flood.join().unwrap();
    let retries = relay.metric("chappe_quic_retries_total").unwrap_or(0.0);
    eprintln!(
        "measured {rate:.0} handshakes/s; flood of {sent} Initials at {flood_rate}/s; {retries} Retry packets; {sends} sends completed during it; RSS {before} -> max {max_rss} MiB"
    );
    assert!(retry_seen, "Retry never turned on");
    assert!(
        retries > sent as f64 / 2.0,
        "most of the flood was not answered by a Retry: {retries} of {sent}"
    );
    assert!(sends > 0);
    assert!(
        max_rss < before + 300,
        "relay grew from {before} MiB to {max_rss} MiB"
    );
    // After the flood, Retry goes off again, and new clients get in.
    assert!(
        wait_until(Duration::from_secs(20), || {
            relay.metric("chappe_quic_retry_active") == Some(0.0)
        }),
        "Retry stayed on after the flood"
    );
    let late = Sender::connect(&desc).await.unwrap();
    late.send(send_id, token, Bytes::from(vec![4u8; 1024]))
        .await
        .unwrap();
}

/// One owner key holds at most `max_sessions_per_owner` sessions: a
/// further one is closed `Overloaded` right after its handshake, and a
/// place freed is a place taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_owner_key_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with(dir.path(), "max_sessions_per_owner = 2");
    let desc = relay.descriptor();
    let key = Keypair::generate();
    let first = OwnerSession::connect(&desc, &key).await.unwrap();
    let second = OwnerSession::connect(&desc, &key).await.unwrap();
    // Another owner key is not affected.
    let other = OwnerSession::connect(&desc, &Keypair::generate())
        .await
        .unwrap();
    other.list_mailboxes().await.unwrap();
    // The handshake completes; then the relay closes the connection.
    let third = OwnerSession::connect(&desc, &key).await.unwrap();
    let mut code = None;
    for _ in 0..100 {
        code = third.close_code();
        if code.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(code, Some(CloseCode::Overloaded));
    assert_eq!(
        relay.metric("chappe_connections_refused_total{reason=\"max_sessions_per_owner\"}"),
        Some(1.0)
    );
    second.list_mailboxes().await.unwrap();
    first.close().await;
    assert!(wait_until(Duration::from_secs(10), || {
        relay.metric("chappe_connections_active{mode=\"owner\"}") == Some(2.0)
    }));
    let again = OwnerSession::connect(&desc, &key).await.unwrap();
    again.list_mailboxes().await.unwrap();
}

/// The relay-wide budget of unanswered send bytes, at its smallest (one
/// largest frame). A sender whose 64 KiB send is read but whose result
/// cannot be written (it offers a 128-byte receive window and does not
/// read) holds the whole budget: another sender's 64 KiB send is then
/// answered `rate_limited` within a moment, not parked. Once the first
/// reads its results, the budget is back and the other's send goes
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_budget_refuses_rather_than_buffers_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with(dir.path(), "max_inflight_send_bytes = 65664");
    let desc = relay.descriptor();
    let owner = OwnerSession::connect(&desc, &Keypair::generate())
        .await
        .unwrap();
    let token = DeliveryToken::random();
    let (_mailbox, send_id) = owner.create_mailbox(&[token]).await.unwrap();

    let mut stuck = RawSender::open_with(&desc, [127, 0, 0, 1], Some(128))
        .await
        .unwrap();
    // 100 sends of a length that is no bucket (answered at once, 1,000
    // bytes of results: more than the window), then one real 64 KiB send.
    let mut frames = Vec::new();
    for req in 0..100u32 {
        let f = Frame::Send {
            req,
            send_id,
            token,
            ciphertext: Bytes::from_static(&[0]),
        };
        frames.extend_from_slice(&f.encode());
    }
    let big = Frame::Send {
        req: 100,
        send_id,
        token,
        ciphertext: Bytes::from(vec![6u8; 64 * 1024]),
    };
    frames.extend_from_slice(&big.encode());
    stuck.send.write_all(&frames).await.unwrap();
    // The relay has read it all once its stream window reopened for more.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let other = Sender::connect(&desc).await.unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        other.send(send_id, token, Bytes::from(vec![7u8; 64 * 1024])),
    )
    .await
    .expect("the send was parked instead of refused")
    .unwrap_err();
    assert_eq!(refused.code(), Some(ResultCode::RateLimited), "{refused}");
    assert_eq!(
        relay.metric("chappe_sends_limited_total{limit=\"max_inflight_send_bytes\"}"),
        Some(1.0)
    );

    // The stuck sender reads its 101 results; the last is its 64 KiB OK.
    let mut buf = BytesMut::new();
    let mut codes = Vec::new();
    while codes.len() < 101 {
        while let Some(f) = Frame::decode(&mut buf).unwrap() {
            if let Frame::Result { req, code } = f {
                codes.push((req, code));
            }
        }
        if codes.len() < 101 {
            let chunk =
                tokio::time::timeout(Duration::from_secs(10), stuck.recv.read_chunk(4096, true))
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
            buf.extend_from_slice(&chunk.bytes);
        }
    }
    assert_eq!(codes.last(), Some(&(100, ResultCode::Ok)));
    // The budget is whole again.
    other
        .send(send_id, token, Bytes::from(vec![8u8; 64 * 1024]))
        .await
        .unwrap();
}
