//! Crash tests: many senders in flight, the relay killed (-9) or stopped
//! (SIGTERM) in the middle; every send that was answered OK must be
//! delivered after the restart. Sends that got no answer may or may not
//! have landed, which is what at-least-once promises the client.
//!
//! After kill -9 the relay replays its journal (and says so in its log);
//! redb never needs its full repair, because every checkpoint records the
//! allocator state. With the owner connected during the load, most
//! envelopes are acknowledged before they reach redb, so the crash also
//! cuts through envelopes that exist only in the journal.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chappe_client::{OwnerSession, Sender};
use chappe_proto::DeliveryToken;
use chappe_proto::noise::Keypair;
use chappe_system_tests::{Relay, config_args};
use tokio::sync::Mutex;

const REPAIR_WARNING: &str = "checking and repairing it before serving";
const REPLAY_WARNING: &str = "replayed its journal";

/// The envelope's id, which the test writes into its first 8 bytes.
fn id_of(ct: &[u8]) -> u64 {
    u64::from_be_bytes(ct[..8].try_into().unwrap())
}

async fn crash_while_sending(sigterm: bool, owner_online: bool) {
    let dir = tempfile::tempdir().unwrap();
    let args = config_args(
        dir.path(),
        // Eight senders to one mailbox: its send rate out of the way too.
        "[limits]\nmax_envelopes_per_mailbox = 10000000\nmax_bytes_per_mailbox = 100000000000\nsends_per_send_id_per_sec = 1000000000\n",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut relay = Relay::start_with(dir.path(), &args);
    let desc = relay.descriptor();
    let owner_key = Keypair::generate();
    let mut owner = OwnerSession::connect(&desc, &owner_key).await.unwrap();
    let token = DeliveryToken::random();
    let (mailbox, send_id) = owner.create_mailbox(&[token]).await.unwrap();
    // Ids of envelopes the owner acknowledged before the crash.
    let owner_acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let reader = if owner_online {
        owner.subscribe(mailbox).await.unwrap();
        let owner_acked = owner_acked.clone();
        Some(tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Ok(Some(d)) =
                tokio::time::timeout(Duration::from_secs(2), owner.next_delivery()).await
            {
                let id = id_of(&d.ciphertext);
                batch.push((d.seq, id));
                if batch.len() >= 32 {
                    let seqs = batch.iter().map(|b| b.0).collect();
                    if owner.ack(mailbox, seqs).await.is_err() {
                        break;
                    }
                    owner_acked
                        .lock()
                        .await
                        .extend(batch.drain(..).map(|b| b.1));
                }
            }
        }))
    } else {
        owner.close().await;
        None
    };

    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let dead = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for conn in 0..8u64 {
        let desc = desc.clone();
        let acked = acked.clone();
        let dead = dead.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(sender) = Sender::connect(&desc).await else {
                return;
            };
            let sender = Arc::new(sender);
            let mut inflight = Vec::new();
            // Far more than fits before the crash; the loop ends when the
            // relay goes away.
            for i in 0..200_000u64 {
                if dead.load(Ordering::Relaxed) {
                    break;
                }
                let id = conn * 1_000_000 + i;
                let mut body = vec![0u8; 1024];
                body[..8].copy_from_slice(&id.to_be_bytes());
                let s = sender.clone();
                let acked = acked.clone();
                let dead = dead.clone();
                inflight.push(tokio::spawn(async move {
                    if s.send(send_id, token, Bytes::from(body)).await.is_ok() {
                        acked.lock().await.insert(id);
                    } else {
                        dead.store(true, Ordering::Relaxed);
                    }
                }));
                if inflight.len() >= 32 {
                    for t in inflight.drain(..) {
                        let _ = t.await;
                    }
                }
            }
            for t in inflight {
                let _ = t.await;
            }
        }));
    }
    // Let the load build up, then pull the plug.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    if sigterm {
        assert!(relay.stop().success());
    } else {
        relay.kill9();
    }
    // After kill -9 the clients only notice at their idle timeout; sends
    // still unanswered by then are unknown either way, so stop waiting.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout_at(give_up, t).await.is_err() {
            abort.abort();
        }
    }
    if let Some(r) = reader {
        let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
    }
    let acked = acked.lock().await.clone();
    let owner_acked = owner_acked.lock().await.clone();
    assert!(
        !acked.is_empty(),
        "no send was acknowledged before the crash"
    );
    if owner_online {
        assert!(!owner_acked.is_empty(), "the owner acknowledged nothing");
    }

    let log_before = relay.log_text().len();
    relay.restart();
    let restart_log = relay.log_text().get(log_before..).unwrap_or("").to_string();
    assert!(
        !restart_log.contains(REPAIR_WARNING),
        "no full repair, ever; restart log:\n{restart_log}"
    );
    assert_eq!(
        restart_log.contains(REPLAY_WARNING),
        !sigterm,
        "journal replay after kill -9 only; restart log:\n{restart_log}"
    );
    let mut owner = OwnerSession::connect(&desc, &owner_key).await.unwrap();
    owner.subscribe(mailbox).await.unwrap();
    let mut found = HashSet::new();
    let mut to_ack = Vec::new();
    while let Ok(Some(d)) =
        tokio::time::timeout(Duration::from_secs(3), owner.next_delivery()).await
    {
        found.insert(id_of(&d.ciphertext));
        to_ack.push(d.seq);
        if to_ack.len() >= 128 {
            owner
                .ack(mailbox, std::mem::take(&mut to_ack))
                .await
                .unwrap();
        }
    }
    // What the owner acknowledged may come again (its ack may not have
    // been journaled yet); everything else the relay accepted must.
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !found.contains(id) && !owner_acked.contains(id))
        .collect();
    let redelivered = found.intersection(&owner_acked).count();
    eprintln!(
        "{} sends acknowledged before the {}, {} of them acknowledged by the owner, {} delivered \
         after restart ({redelivered} again), {} lost",
        acked.len(),
        if sigterm { "SIGTERM" } else { "kill -9" },
        owner_acked.len(),
        found.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged sends lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged() {
    crash_while_sending(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_the_owner_online_loses_nothing_acknowledged() {
    crash_while_sending(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_nothing_acknowledged() {
    crash_while_sending(true, false).await;
}
