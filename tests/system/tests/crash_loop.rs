//! The crash loop: a durable load from many senders while the relay is
//! killed with SIGKILL at random moments, cycle after cycle, then one
//! owner fetches everything and the test checks what at-least-once
//! promises:
//!
//! - every send the relay answered OK is delivered (none lost);
//! - every delivered envelope is byte for byte what was sent (none
//!   corrupted, none invented);
//! - an envelope is delivered twice only if its sender sent it twice: a
//!   send whose answer the kill cut off is retried after the restart
//!   with the same id, and both copies may have been stored. That is the
//!   one duplicate the protocol allows; receivers drop it by message id
//!   (`chappe recv` keeps the ids it has shown, see `relay/client/src/home.rs`).
//!
//! The owner stays offline during the load, so every envelope waits in
//! the store across many kills: in the journal only, in redb, or with a
//! checkpoint cut in half.
//!
//! 50 cycles by default (in `cargo test`, so in `tests/run`);
//! `CHAPPE_CRASH_CYCLES=1000` is the long mode. The kill moments come
//! from a seeded generator: the seed is printed, and `CHAPPE_CRASH_SEED`
//! replays a run. The last line printed holds the figures: cycles, sends
//! acknowledged, delivered, duplicates.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chappe_client::{OwnerSession, Sender};
use chappe_proto::noise::Keypair;
use chappe_proto::{DeliveryToken, SendId};
use chappe_system_tests::{Relay, config_args};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::task::JoinSet;

/// Concurrent senders, each with its own connection and mailbox.
const SENDERS: u64 = 12;
/// Sends each sender keeps in flight.
const IN_FLIGHT: usize = 8;
/// Envelope size: a bucket the relay accepts.
const BODY: usize = 1024;
/// The owner drains and checks every this many cycles, so that the long
/// mode's store stays small.
const DRAIN_EVERY: u32 = 50;
/// The longest a cycle's load runs before the kill.
const MAX_RUN: Duration = Duration::from_millis(700);

/// The body of envelope `id`: its id, then bytes drawn from a generator
/// seeded with the id, so the receiver can recompute every byte.
fn body(id: u64) -> Vec<u8> {
    let mut b = vec![0u8; BODY];
    let (head, rest) = b.split_at_mut(8);
    head.copy_from_slice(&id.to_be_bytes());
    StdRng::seed_from_u64(id).fill_bytes(rest);
    b
}

/// One sender's progress across cycles.
#[derive(Default)]
struct SenderState {
    next: u64,
    /// Ids sent whose answer has not come (the kill cut it off): sent
    /// again, first thing, after the restart.
    unanswered: BTreeSet<u64>,
}

/// What every sender shares with the checker.
#[derive(Default)]
struct Ledger {
    /// Ids the relay answered OK.
    acked: HashSet<u64>,
    /// Ids sent more than once (a retry of an unanswered send).
    retried: HashSet<u64>,
    /// Ids ever sent.
    sent: HashSet<u64>,
    /// Answers other than OK (a refusal, not a lost connection): none is
    /// expected, the limits are set out of the way.
    refused: Vec<String>,
}

struct Mailbox {
    send: SendId,
    token: DeliveryToken,
}

/// One sender's load, until the task is aborted by the kill (or its
/// connection fails).
async fn load(
    desc: chappe_proto::descriptor::Descriptor,
    n: u64,
    mb: Arc<Mailbox>,
    state: Arc<Mutex<SenderState>>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let Ok(sender) = Sender::connect(&desc).await else {
        return;
    };
    let sender = Arc::new(sender);
    let mut flight = JoinSet::new();
    let mut retries: Vec<u64> = state.lock().unwrap().unanswered.iter().copied().collect();
    loop {
        while flight.len() < IN_FLIGHT {
            let id = match retries.pop() {
                Some(id) => {
                    ledger.lock().unwrap().retried.insert(id);
                    id
                }
                None => {
                    let mut s = state.lock().unwrap();
                    let id = n * 1_000_000_000 + s.next;
                    s.next += 1;
                    s.unanswered.insert(id);
                    ledger.lock().unwrap().sent.insert(id);
                    id
                }
            };
            let (s, mb) = (sender.clone(), mb.clone());
            flight.spawn(async move {
                let r = s.send(mb.send, mb.token, Bytes::from(body(id))).await;
                (id, r)
            });
        }
        match flight.join_next().await {
            Some(Ok((id, Ok(())))) => {
                state.lock().unwrap().unanswered.remove(&id);
                ledger.lock().unwrap().acked.insert(id);
            }
            Some(Ok((_, Err(e @ chappe_client::ClientError::Refused(_))))) => {
                ledger.lock().unwrap().refused.push(e.to_string());
                return;
            }
            // The relay is gone (or refused): stop; what is unanswered
            // stays so and is retried next cycle.
            _ => return,
        }
    }
}

/// What the owner's drains found, over the whole run.
#[derive(Default)]
struct Found {
    /// How many times each id was delivered.
    count: HashMap<u64, u32>,
    corrupt: Vec<u64>,
    delivered: u64,
}

/// The owner fetches and acknowledges everything waiting in every
/// mailbox, checking each envelope's content. One mailbox at a time: a
/// subscription's answer queues behind the deliveries of the previous
/// one, which the owner would not be reading.
async fn drain(relay: &Relay, owner_key: &Keypair, found: &mut Found) {
    let desc = relay.descriptor();
    let mut owner = OwnerSession::connect(&desc, owner_key).await.unwrap();
    for entry in owner.list_mailboxes().await.unwrap() {
        owner.subscribe(entry.mailbox).await.unwrap();
        let mut to_ack = Vec::new();
        for _ in 0..entry.stored {
            let d = tokio::time::timeout(Duration::from_secs(30), owner.next_delivery())
                .await
                .expect("the owner waited 30 s for an envelope the listing counted")
                .expect("the owner's connection closed");
            found.delivered += 1;
            let id = d
                .ciphertext
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            if d.ciphertext.as_ref() != body(id).as_slice() {
                found.corrupt.push(id);
            }
            *found.count.entry(id).or_default() += 1;
            to_ack.push(d.seq);
            if to_ack.len() >= 256 {
                owner
                    .ack(entry.mailbox, std::mem::take(&mut to_ack))
                    .await
                    .unwrap();
            }
        }
        owner.ack(entry.mailbox, to_ack).await.unwrap();
    }
    // Closing waits until the relay has taken every ack.
    owner.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_corrupts_nothing() {
    let cycles: u32 = std::env::var("CHAPPE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("CHAPPE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    eprintln!("crash loop: {cycles} cycles, seed {seed} (CHAPPE_CRASH_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let args = config_args(
        dir.path(),
        // The quotas and each mailbox's send rate out of the way: this is
        // about what a kill does to sends, not about refusals.
        "[limits]\nmax_envelopes_per_mailbox = 10000000\nmax_bytes_per_mailbox = 100000000000\n\
         sends_per_send_id_per_sec = 1000000000\n",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut relay = Relay::start_with(dir.path(), &args);
    let owner_key = Keypair::generate();
    let mut boxes = Vec::new();
    {
        let owner = OwnerSession::connect(&relay.descriptor(), &owner_key)
            .await
            .unwrap();
        for _ in 0..SENDERS {
            let token = DeliveryToken::random();
            let (_, send) = owner.create_mailbox(&[token]).await.unwrap();
            boxes.push(Arc::new(Mailbox { send, token }));
        }
        owner.close().await;
    }
    let states: Vec<Arc<Mutex<SenderState>>> = (0..SENDERS).map(|_| Arc::default()).collect();
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let mut found = Found::default();
    let started = Instant::now();

    for cycle in 1..=cycles {
        let desc = relay.descriptor();
        let mut senders = JoinSet::new();
        for (n, (mb, st)) in (0u64..).zip(boxes.iter().zip(&states)) {
            senders.spawn(load(
                desc.clone(),
                n,
                mb.clone(),
                st.clone(),
                ledger.clone(),
            ));
        }
        // Anywhere from during the senders' handshakes to well into the load.
        let run = rng.gen_range(Duration::ZERO..MAX_RUN);
        tokio::time::sleep(run).await;
        relay.kill9();
        senders.shutdown().await;
        relay.restart();
        if cycle % DRAIN_EVERY == 0 || cycle == cycles {
            drain(&relay, &owner_key, &mut found).await;
        }
    }

    let ledger = ledger.lock().unwrap();
    let lost: Vec<u64> = ledger
        .acked
        .iter()
        .copied()
        .filter(|id| !found.count.contains_key(id))
        .collect();
    let invented: Vec<u64> = found
        .count
        .keys()
        .copied()
        .filter(|id| !ledger.sent.contains(id))
        .collect();
    let duplicates: Vec<u64> = found
        .count
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, _)| *id)
        .collect();
    let unexplained: Vec<u64> = duplicates
        .iter()
        .copied()
        .filter(|id| !ledger.retried.contains(id))
        .collect();
    eprintln!(
        "crash loop: {cycles} cycles, {} sends acknowledged, {} delivered, {} duplicates \
         ({} sends retried after a kill), {} lost, {} corrupted, seed {seed}, {:.0} s",
        ledger.acked.len(),
        found.delivered,
        duplicates.len(),
        ledger.retried.len(),
        lost.len(),
        found.corrupt.len() + invented.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        ledger.acked.len() as u64 >= u64::from(cycles),
        "the load barely ran: {} sends acknowledged in {cycles} cycles",
        ledger.acked.len()
    );
    assert!(
        ledger.refused.is_empty(),
        "sends refused: {:?}",
        ledger.refused.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged sends lost (seed {seed}), e.g. {:?}",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        found.corrupt.is_empty() && invented.is_empty(),
        "corrupted envelopes (seed {seed}): {:?}, never sent: {:?}",
        found.corrupt.iter().take(10).collect::<Vec<_>>(),
        invented.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        unexplained.is_empty(),
        "delivered twice without a retry (seed {seed}): {:?}",
        unexplained.iter().take(10).collect::<Vec<_>>()
    );
}
