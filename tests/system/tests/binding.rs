//! Who is on the other end: handshakes are bound to their QUIC connection,
//! clients pin the relay's keys, and TLS is hybrid post-quantum or nothing.

use std::sync::Arc;

use chappe_client::{ClientError, OwnerSession, Sender, transport};
use chappe_proto::CloseCode;
use chappe_proto::noise::{Hello, Keypair, Mode, OwnerInitiator, SenderInitiator, wire};
use chappe_system_tests::{Raw, Relay};
use rustls::crypto::{CryptoProvider, aws_lc_rs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_replayed_into_another_connection_fails() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let desc = relay.descriptor();

    for mode in [Mode::Owner, Mode::Sender] {
        // Message 1 made for connection A...
        let a = Raw::connect(&desc).await;
        let m1 = match mode {
            Mode::Owner => {
                OwnerInitiator::start(
                    &Keypair::generate(),
                    &desc.relay_key,
                    &a.exporter,
                    &Hello::default(),
                )
                .unwrap()
                .1
            }
            Mode::Sender => {
                SenderInitiator::start(&desc.relay_key, &a.exporter, &Hello::default())
                    .unwrap()
                    .1
            }
        };
        // ...replayed into connection B.
        let mut b = Raw::connect(&desc).await;
        assert_ne!(a.exporter, b.exporter);
        let mut bytes = vec![mode as u8];
        bytes.extend(wire::encode_message(&m1));
        b.send.write_all(&bytes).await.unwrap();
        assert_eq!(
            b.close_code().await,
            Some(CloseCode::HandshakeFailed.to_u32()),
            "{mode:?} replay was not refused"
        );
    }
    // The relay is still serving.
    Sender::connect(&desc).await.unwrap();
    assert!(relay.metric("chappe_handshakes_total{mode=\"noise\",result=\"failed\"}") >= Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pinned_to_another_relay_fails() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let mut wrong_key = relay.descriptor();
    wrong_key.relay_key = Keypair::generate().public();
    match Sender::connect(&wrong_key).await {
        Err(ClientError::Closed(Some(CloseCode::HandshakeFailed))) => {}
        other => panic!("sender pinned to another key: {:?}", other.err()),
    }
    match OwnerSession::connect(&wrong_key, &Keypair::generate()).await {
        Err(ClientError::Closed(Some(CloseCode::HandshakeFailed))) => {}
        other => panic!("owner pinned to another key: {:?}", other.err()),
    }
    // Another TLS certificate than the pinned one: refused by the client.
    let mut wrong_cert = relay.descriptor();
    wrong_cert.tls_fingerprint = Some([7; 32]);
    assert!(matches!(
        Sender::connect(&wrong_cert).await,
        Err(ClientError::Connection(_))
    ));
    Sender::connect(&relay.descriptor()).await.unwrap();
}

/// A client that offers no group the relay accepts gets the TLS alert
/// `handshake_failure` (40) as QUIC transport error 0x0100 + 40 (PROTOCOL.md
/// 3.1 and 7.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classical_only_tls_client_fails() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let desc = relay.descriptor();
    for groups in [
        vec![aws_lc_rs::kx_group::X25519],
        vec![aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1],
    ] {
        let classical = Arc::new(CryptoProvider {
            kx_groups: groups,
            ..aws_lc_rs::default_provider()
        });
        match transport::connect_with(&desc, transport::Role::Sender, classical).await {
            Err(ClientError::Connection(quinn::ConnectionError::ConnectionClosed(close))) => {
                assert_eq!(u64::from(close.error_code), 0x0128, "{close:?}");
            }
            other => panic!("classical-only client: {:?}", other.err()),
        }
    }
    // The same client with the hybrid group connects.
    transport::connect(&desc, transport::Role::Sender)
        .await
        .unwrap();
    assert!(relay.metric("chappe_handshakes_total{mode=\"tls\",result=\"failed\"}") >= Some(1.0));
}

/// A bare connection of each kind to a fresh relay, each on its own endpoint,
/// for reading what quinn exchanged on them. Endpoints come first in each
/// pair: dropping one ends its connection.
async fn sender_and_owner(relay: &Relay) -> [(quinn::Endpoint, quinn::Connection); 2] {
    let desc = relay.descriptor();
    let sender = transport::connect(&desc, transport::Role::Sender)
        .await
        .unwrap();
    let owner = transport::connect(&desc, transport::Role::Owner)
        .await
        .unwrap();
    [sender, owner]
}

/// Waits up to 5 s for `done`, then 200 ms more for anything either side
/// would still send; `state` says what was seen if it never came.
async fn settle(done: impl Fn() -> bool, state: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{}", state());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
}

/// A sender's endpoint takes no datagram larger than QUIC's minimum, so the
/// relay sends no path MTU probes into its connection, and it probes its own
/// path once, straight to 1452 bytes; an owner's endpoint keeps quinn's
/// search both ways (PROTOCOL.md 3.2). quinn's probes are PING frames, and
/// nothing else sends one here: the relay sends no keep-alives, the
/// client's come after 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_connections_probe_once_and_are_not_probed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let [(_se, sender), (_oe, owner)] = sender_and_owner(&relay).await;
    // Loopback carries 1452 bytes: both searches end there, the owner's
    // after several probes, and the relay's towards the owner too.
    settle(
        || {
            sender.stats().path.current_mtu == 1452
                && owner.stats().path.current_mtu == 1452
                && owner.stats().frame_rx.ping >= 2
        },
        || {
            format!(
                "MTU searches did not end: sender {:?}, owner {:?}",
                sender.stats().path,
                owner.stats().path
            )
        },
    )
    .await;
    let (s, o) = (sender.stats(), owner.stats());
    assert_eq!(s.path.sent_plpmtud_probes, 1, "sender: {:?}", s.path);
    assert!(o.path.sent_plpmtud_probes > 1, "owner: {:?}", o.path);
    assert_eq!(s.frame_rx.ping, 0, "the relay probed a sender's path");
}

/// A sender's endpoint names its one connection with a zero-length
/// connection ID, so it issues no spare IDs and the relay issues it one; an
/// owner's endpoint exchanges quinn's spares (four or more) each way, for
/// moving to a new network unlinked (PROTOCOL.md 3.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_connections_use_zero_length_connection_ids() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let [(_se, sender), (_oe, owner)] = sender_and_owner(&relay).await;
    settle(
        || {
            owner.stats().frame_rx.new_connection_id >= 4
                && owner.stats().frame_tx.new_connection_id >= 4
                && sender.stats().frame_rx.new_connection_id >= 1
        },
        || {
            format!(
                "connection IDs not issued: sender {:?}, owner {:?}",
                sender.stats().frame_rx,
                owner.stats().frame_rx
            )
        },
    )
    .await;
    let (s, o) = (sender.stats(), owner.stats());
    assert_eq!(s.frame_tx.new_connection_id, 0, "sender issued IDs");
    assert_eq!(s.frame_rx.new_connection_id, 1, "relay issued a sender");
    assert!(o.frame_tx.new_connection_id >= 4, "owner issued {o:?}");
    assert!(
        o.frame_rx.new_connection_id >= 4,
        "relay issued an owner {o:?}"
    );
}
