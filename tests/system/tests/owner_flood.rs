//! Owner sessions that push the relay hard: a flood of made-up
//! acknowledgements, catch-ups of large envelopes, and a full delivery
//! window of a long backlog. Each must leave everyone else served and the
//! relay's memory bounded (docs/THREAT_MODEL.md P9, P11).
//!
//! Time bounds here are liveness bounds (a send answered within seconds
//! rather than never), not performance figures; those are `bench/run`'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chappe_client::{OwnerSession, Sender};
use chappe_proto::frame::{Frame, MAX_LIST};
use chappe_proto::inbound::Inbound;
use chappe_proto::noise::Keypair;
use chappe_proto::{DeliveryToken, ReceiveId, SendId};
use chappe_system_tests::{Raw, Relay, config_args};
use rand::{RngCore, SeedableRng};

/// How long one send may take to be answered while the relay is under
/// attack: a liveness bound, far above a normal answer (milliseconds).
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// How much the relay's resident memory may grow under a flood.
const RSS_GROWTH_CEILING_KIB: u64 = 64 * 1024;

fn envelope(len: usize) -> Bytes {
    Bytes::from(vec![0x5a; len])
}

/// Sends `n` envelopes one after the other, `pause` apart, each of which
/// must be answered Ok within [`ANSWER_WITHIN`]; returns the slowest.
async fn paced_sends(
    sender: &Sender,
    send_id: SendId,
    token: DeliveryToken,
    n: usize,
    pause: Duration,
) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let start = Instant::now();
        match tokio::time::timeout(ANSWER_WITHIN, sender.send(send_id, token, envelope(1024))).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("send {i} refused: {e}"),
            Err(_) => panic!("send {i} not answered within {ANSWER_WITHIN:?}"),
        }
        slowest = slowest.max(start.elapsed());
        tokio::time::sleep(pause).await;
    }
    slowest
}

/// Reads frames off a raw stream until one matches.
async fn read_frame<T>(
    raw: &mut Raw,
    inbound: &mut Inbound,
    mut pick: impl FnMut(Frame) -> Option<T>,
) -> T {
    loop {
        while let Some(f) = inbound.take_frame().unwrap() {
            if let Some(t) = pick(f) {
                return t;
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), raw.recv.read_chunk(65536, true))
            .await
            .expect("the relay answered nothing")
            .unwrap()
            .expect("the relay ended the stream");
        inbound.extend(&chunk.bytes);
    }
}

/// A self-made owner that creates a mailbox and then streams `Ack` frames
/// of 1,024 random sequence numbers as fast as the relay takes them, while
/// a normal sender's 100 sends must each be answered promptly. Before the
/// fix every Ack frame became a task and a writer request (unbounded), and
/// every number a redb lookup on the writer thread: sends stalled and the
/// relay grew by gigabytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_flood_neither_stalls_sends_nor_grows_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let desc = relay.descriptor();

    let owner = OwnerSession::connect(&desc, &Keypair::generate())
        .await
        .unwrap();
    let token = DeliveryToken::random();
    let (_, send_id) = owner.create_mailbox(&[token]).await.unwrap();
    let sender = Sender::connect(&desc).await.unwrap();
    sender.send(send_id, token, envelope(1024)).await.unwrap();
    let rss_before = relay.rss_kib();

    // The flooder owns its mailbox, so its acks pass the ownership check
    // and reach the sequence numbers.
    let mut raw = Raw::owner(&desc, &Keypair::generate()).await;
    let create = Frame::CreateMailbox {
        req: 1,
        tokens: vec![DeliveryToken::random().digest()],
    };
    raw.send.write_all(&create.encode()).await.unwrap();
    let mut inbound = Inbound::new();
    let flood_box: ReceiveId = read_frame(&mut raw, &mut inbound, |f| match f {
        Frame::MailboxCreated { mailbox, .. } => Some(mailbox),
        _ => None,
    })
    .await;
    let acks_written = Arc::new(AtomicU64::new(0));
    let written = acks_written.clone();
    let flood = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::from_entropy();
        loop {
            let mut batch = Vec::new();
            for _ in 0..16 {
                let seqs = (0..MAX_LIST).map(|_| rng.next_u64()).collect();
                let ack = Frame::Ack {
                    mailbox: flood_box,
                    seqs,
                };
                batch.extend_from_slice(&ack.encode());
            }
            if raw.send.write_all(&batch).await.is_err() {
                return;
            }
            written.fetch_add(16, Ordering::Relaxed);
        }
    });
    // The flood is under way before the first send.
    let started = Instant::now();
    while acks_written.load(Ordering::Relaxed) < 64 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 100 sends, 50 ms apart: at least five seconds of flood.
    let slowest = paced_sends(&sender, send_id, token, 100, Duration::from_millis(50)).await;
    let flood_secs = started.elapsed().as_secs_f64();
    let acks = acks_written.load(Ordering::Relaxed);
    let rss_after = relay.rss_kib();
    flood.abort();
    eprintln!(
        "ack flood: {acks} Ack frames of {MAX_LIST} numbers in {flood_secs:.1} s; slowest send \
         {slowest:?}; relay RSS {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        acks >= 64,
        "the flood never got going ({acks} Ack frames written)"
    );
    assert!(
        rss_after < rss_before + RSS_GROWTH_CEILING_KIB,
        "relay grew from {rss_before} KiB to {rss_after} KiB under the ack flood"
    );
    assert!(relay.is_running(), "relay died");
}

/// Owners catching up 256 envelopes of 64 KiB each, read cold from redb
/// (the relay restarted after they were stored), again and again, while
/// another sender's sends must each be answered promptly. Before the fix
/// those reads ran on the async workers and held them for the length of
/// each read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_catch_ups_leave_sends_answered() {
    const STORED: usize = 256;
    const OWNERS: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    // The filling sends come faster than one mailbox may take them.
    let args = config_args(
        dir.path(),
        "[limits]\nsends_per_send_id_per_sec = 1000000\n",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut relay = Relay::start_with(dir.path(), &args);
    let desc = relay.descriptor();

    let owner_key = Arc::new(Keypair::generate());
    let owner = OwnerSession::connect(&desc, &owner_key).await.unwrap();
    let token = DeliveryToken::random();
    let mut boxes = Vec::new();
    for _ in 0..OWNERS {
        boxes.push(owner.create_mailbox(&[token]).await.unwrap());
    }
    let (_, other_send) = owner.create_mailbox(&[token]).await.unwrap();
    owner.close().await;
    let sender = Arc::new(Sender::connect(&desc).await.unwrap());
    let mut fill = tokio::task::JoinSet::new();
    for &(_, send_id) in &boxes {
        for _ in 0..8 {
            let sender = sender.clone();
            fill.spawn(async move {
                for _ in 0..STORED / 8 {
                    sender
                        .send(send_id, token, envelope(64 * 1024))
                        .await
                        .unwrap();
                }
            });
        }
    }
    while let Some(r) = fill.join_next().await {
        r.unwrap();
    }
    drop(sender);
    // Everything goes into redb at a clean stop; the restarted relay reads
    // it from there, not from memory.
    assert!(relay.stop().success());
    relay.restart();

    let rounds = Arc::new(AtomicU64::new(0));
    let mut catch_ups = tokio::task::JoinSet::new();
    for &(mailbox, _) in &boxes {
        let (desc, key, rounds) = (relay.descriptor(), owner_key.clone(), rounds.clone());
        catch_ups.spawn(async move {
            // Never acknowledged: each new session catches up all of it.
            loop {
                let mut s = OwnerSession::connect(&desc, &key).await.unwrap();
                s.subscribe(mailbox).await.unwrap();
                for _ in 0..STORED {
                    let d = tokio::time::timeout(Duration::from_secs(30), s.next_delivery())
                        .await
                        .expect("catch-up stalled")
                        .expect("session closed");
                    assert_eq!(d.ciphertext.len(), 64 * 1024);
                }
                s.close().await;
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let sender = Sender::connect(&relay.descriptor()).await.unwrap();
    let slowest = paced_sends(&sender, other_send, token, 100, Duration::from_millis(20)).await;
    let done = rounds.load(Ordering::Relaxed);
    catch_ups.abort_all();
    while let Some(r) = catch_ups.join_next().await {
        if let Err(e) = r
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    eprintln!(
        "catch-ups: {done} complete catch-ups of {STORED} x 64 KiB; slowest send {slowest:?}"
    );
    assert!(done >= 1, "no catch-up completed while the sends ran");
}

/// The largest delivery window the relay accepts (see `limits.delivery_window`
/// in docs/OPERATOR.md).
const MAX_DELIVERY_WINDOW: u32 = 4096;

/// 40,000 envelopes waiting, the delivery window at its maximum, and an
/// owner that acknowledges each envelope as it takes it, as `chappe recv`
/// does: everything arrives. Before the fix the relay stopped reading while
/// it wrote a window's worth of deliveries; the owner's acks filled the
/// stream, its writes blocked, so it stopped reading, and both sides waited
/// for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_of_a_long_backlog_is_received() {
    const STORED: u64 = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let args = config_args(
        dir.path(),
        &format!(
            "[limits]\ndelivery_window = {MAX_DELIVERY_WINDOW}\nmax_envelopes_per_mailbox = 50000\n\
             sends_per_send_id_per_sec = 1000000\n"
        ),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = Relay::start_with(dir.path(), &args);
    let desc = relay.descriptor();

    let key = Keypair::generate();
    let owner = OwnerSession::connect(&desc, &key).await.unwrap();
    let token = DeliveryToken::random();
    let (mailbox, send_id) = owner.create_mailbox(&[token]).await.unwrap();
    owner.close().await;
    let sender = Arc::new(Sender::connect(&desc).await.unwrap());
    let mut fill = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let sender = sender.clone();
        fill.spawn(async move {
            for _ in 0..STORED / 50 {
                sender.send(send_id, token, envelope(1024)).await.unwrap();
            }
        });
    }
    while let Some(r) = fill.join_next().await {
        r.unwrap();
    }

    let mut owner = OwnerSession::connect(&desc, &key).await.unwrap();
    owner.subscribe(mailbox).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    while (seen.len() as u64) < STORED {
        let d = match tokio::time::timeout(Duration::from_secs(20), owner.next_delivery()).await {
            Ok(Some(d)) => d,
            Ok(None) => panic!(
                "the relay closed the session after {} envelopes",
                seen.len()
            ),
            Err(_) => panic!(
                "no delivery for 20 s after {} of {STORED} envelopes: the session is stuck",
                seen.len()
            ),
        };
        seen.insert(d.seq);
        // A client whose acks the relay does not read waits here.
        tokio::time::timeout(Duration::from_secs(20), owner.ack(mailbox, vec![d.seq]))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "an ack could not be written for 20 s after {} of {STORED} envelopes: the \
                     session is stuck",
                    seen.len()
                )
            })
            .unwrap();
    }
    owner.close().await;
    assert!(chappe_system_tests::wait_until(
        Duration::from_secs(20),
        || relay.metric("chappe_store_envelopes") == Some(0.0)
    ));
}

/// An owner that sends requests and reads none of the answers: once the
/// answers fill the stream, the relay's send window and its outbox, the
/// session stops reading and QUIC flow control stalls the client, with the
/// relay's memory bounded. When the client then reads, the session reads
/// on, and every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_reads_no_answers_is_held_back_then_served() {
    const BATCH: u32 = 1000;
    const BATCHES: u32 = 400;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let desc = relay.descriptor();
    let raw = Raw::owner(&desc, &Keypair::generate()).await;
    let Raw {
        mut send,
        mut recv,
        endpoint,
        conn,
        ..
    } = raw;
    let rss_before = relay.rss_kib();
    // A mailbox with no tokens is refused before the store: a cheap
    // request with a 10-byte answer.
    let mut batch = Vec::new();
    for req in 0..BATCH {
        let f = Frame::CreateMailbox {
            req,
            tokens: Vec::new(),
        };
        batch.extend_from_slice(&f.encode());
    }
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..BATCHES {
            send.write_all(&batch).await.unwrap();
            w.fetch_add(u64::from(BATCH), Ordering::Relaxed);
        }
        send.finish().unwrap();
        send
    });
    // Wait until the writes stall: no progress for two seconds.
    let mut last = 0;
    let stalled = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = written.load(Ordering::Relaxed);
        if now == last {
            break now < u64::from(BATCH * BATCHES);
        }
        last = now;
    };
    let rss_held = relay.rss_kib();
    eprintln!(
        "unread answers: the relay stopped reading after {last} requests; RSS {rss_before} KiB \
         -> {rss_held} KiB"
    );
    assert!(
        stalled,
        "the relay read {} requests whose answers nobody read",
        BATCH * BATCHES
    );
    assert!(
        rss_held < rss_before + RSS_GROWTH_CEILING_KIB,
        "relay grew from {rss_before} KiB to {rss_held} KiB"
    );
    // Now read: the session reads on, and answers every request.
    let mut inbound = Inbound::new();
    let mut answered = 0u64;
    while answered < u64::from(BATCH * BATCHES) {
        let chunk = tokio::time::timeout(Duration::from_secs(20), recv.read_chunk(65536, true))
            .await
            .unwrap_or_else(|_| panic!("stuck after {answered} answers"))
            .unwrap()
            .expect("the relay ended the stream early");
        inbound.extend(&chunk.bytes);
        while let Some(f) = inbound.take_frame().unwrap() {
            assert!(matches!(f, Frame::Result { .. }), "{f:?}");
            answered += 1;
        }
    }
    let _send = writer.await.unwrap();
    drop((conn, endpoint));
    assert!(relay.is_running(), "relay died");
}
