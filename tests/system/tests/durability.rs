//! Crash tests: many senders in flight, the relay killed (-9) or stopped
//! (SIGTERM) in the middle; every send that was answered OK must be
//! delivered after the restart. Sends that got no answer may or may not
//! have landed, which is what at-least-once promises the client.
//!
//! After kill -9 redb must repair the file before the relay serves: in full
//! (and the relay says so in its log) unless `[store] quick_repair` is on,
//! in which case the last commit's allocator state makes that unnecessary.

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

const REPAIR_WARNING: &str = "store was not closed cleanly";

async fn crash_while_sending(sigterm: bool, quick_repair: bool) {
    let dir = tempfile::tempdir().unwrap();
    let args = config_args(
        dir.path(),
        &format!(
            "[limits]\nmax_envelopes_per_mailbox = 10000000\nmax_bytes_per_mailbox = 100000000000\n\
             [store]\nquick_repair = {quick_repair}\n"
        ),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut relay = Relay::start_with(dir.path(), &args);
    let desc = relay.descriptor();
    let owner_key = Keypair::generate();
    let owner = OwnerSession::connect(&desc, &owner_key).await.unwrap();
    let token = DeliveryToken::random();
    let (mailbox, send_id) = owner.create_mailbox(&[token]).await.unwrap();
    owner.close().await;

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
    let acked = acked.lock().await.clone();
    assert!(
        !acked.is_empty(),
        "no send was acknowledged before the crash"
    );

    let log_before = relay.log_text().len();
    relay.restart();
    let restart_log = relay.log_text().get(log_before..).unwrap_or("").to_string();
    let full_repair = !sigterm && !quick_repair;
    assert_eq!(
        restart_log.contains(REPAIR_WARNING),
        full_repair,
        "full repair expected: {full_repair}; restart log:\n{restart_log}"
    );
    let mut owner = OwnerSession::connect(&desc, &owner_key).await.unwrap();
    owner.subscribe(mailbox).await.unwrap();
    let mut found = HashSet::new();
    let mut to_ack = Vec::new();
    while let Ok(Some(d)) =
        tokio::time::timeout(Duration::from_secs(3), owner.next_delivery()).await
    {
        let id = u64::from_be_bytes(d.ciphertext[..8].try_into().unwrap());
        found.insert(id);
        to_ack.push(d.seq);
        if to_ack.len() >= 128 {
            owner
                .ack(mailbox, std::mem::take(&mut to_ack))
                .await
                .unwrap();
        }
    }
    let lost: Vec<_> = acked.difference(&found).collect();
    eprintln!(
        "{} sends acknowledged before the {}, {} delivered after restart, {} lost",
        acked.len(),
        if sigterm { "SIGTERM" } else { "kill -9" },
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
async fn kill_9_with_quick_repair_loses_nothing_and_skips_the_full_repair() {
    crash_while_sending(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_nothing_acknowledged() {
    crash_while_sending(true, false).await;
}
