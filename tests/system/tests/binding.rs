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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classical_only_tls_client_fails() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let desc = relay.descriptor();
    let classical = Arc::new(CryptoProvider {
        kx_groups: vec![aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1],
        ..aws_lc_rs::default_provider()
    });
    let r = transport::connect_with(&desc, classical).await;
    assert!(
        matches!(r, Err(ClientError::Connection(_))),
        "classical-only client connected: {:?}",
        r.err()
    );
    // The same client with the hybrid group connects.
    transport::connect(&desc).await.unwrap();
    assert!(relay.metric("chappe_handshakes_total{mode=\"tls\",result=\"failed\"}") >= Some(1.0));
}
