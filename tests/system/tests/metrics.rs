//! The metrics a dashboard relies on: every family is there from the
//! first scrape, and the number of series does not grow with users
//! (no label names a mailbox, a token or an address).

use bytes::Bytes;
use chappe_client::{OwnerSession, Sender};
use chappe_proto::DeliveryToken;
use chappe_proto::noise::Keypair;
use chappe_system_tests::Relay;

/// The series of a scrape: sample lines, each name with its labels.
fn series(relay: &Relay, prefix: &str) -> Vec<String> {
    let (status, body) = relay.http_get("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').map(|(name, _)| name.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_do_not_grow_with_mailboxes_and_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let desc = relay.descriptor();
    let before = series(&relay, "chappe_");
    for family in [
        "chappe_build_info{",
        "chappe_handshake_duration_seconds_bucket{",
        "chappe_send_duration_seconds_bucket{",
        "chappe_delivery_latency_seconds_bucket{",
        "chappe_connections_refused_total{reason=\"max_connections\"}",
        "chappe_store_journal_capacity_bytes",
        "chappe_store_disk_free_bytes",
        "chappe_store_disk_watermark_bytes",
        "chappe_store_max_bytes",
        "chappe_store_expired_envelopes_total",
        "chappe_reloads_total{result=\"failed\"}",
    ] {
        assert!(
            before.iter().any(|s| s.starts_with(family)),
            "{family} missing from the first scrape"
        );
    }
    assert!(
        !series(&relay, "process_").is_empty(),
        "the process collector is missing"
    );

    // Many owners, mailboxes, senders and envelopes, some of them live.
    let mut owners = Vec::new();
    for _ in 0..5 {
        let owner = OwnerSession::connect(&desc, &Keypair::generate())
            .await
            .unwrap();
        for _ in 0..4 {
            let token = DeliveryToken::random();
            let (mailbox, send) = owner.create_mailbox(&[token]).await.unwrap();
            let sender = Sender::connect(&desc).await.unwrap();
            sender
                .send(send, token, Bytes::from(vec![1u8; 1024]))
                .await
                .unwrap();
            let _ = mailbox;
        }
        owners.push(owner);
    }
    let after = series(&relay, "chappe_");
    let grown: Vec<_> = after.iter().filter(|s| !before.contains(s)).collect();
    assert!(grown.is_empty(), "new series appeared: {grown:?}");
    assert_eq!(before.len(), after.len());
    assert!(relay.metric("chappe_store_mailboxes").unwrap_or(0.0) >= 20.0);
    let sends = relay
        .metric("chappe_send_duration_seconds_count")
        .unwrap_or(0.0);
    assert!(sends >= 20.0, "send latency observed {sends} times");
    let handshakes = relay
        .metric("chappe_handshake_duration_seconds_count{mode=\"sender\"}")
        .unwrap_or(0.0);
    assert!(
        handshakes >= 20.0,
        "sender handshakes observed {handshakes}"
    );
}
