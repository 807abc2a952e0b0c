//! Garbage and malformed input: the offending connection is closed with a
//! protocol error, the relay neither panics nor grows without bound, and
//! everyone else keeps being served.

use std::net::UdpSocket;
use std::time::Duration;

use bytes::Bytes;
use chappe_client::{OwnerSession, Sender};
use chappe_proto::frame::Frame;
use chappe_proto::noise::Keypair;
use chappe_proto::{CloseCode, DeliveryToken, ReceiveId};
use chappe_system_tests::{Raw, Relay};
use rand::RngCore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_malformed_frames() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let desc = relay.descriptor();

    // A healthy owner session that must live through all of this.
    let mut owner = OwnerSession::connect(&desc, &Keypair::generate())
        .await
        .unwrap();
    let token = DeliveryToken::random();
    let (mailbox, send_id) = owner.create_mailbox(&[token]).await.unwrap();
    owner.subscribe(mailbox).await.unwrap();

    // Garbage datagrams on the QUIC port, of every size up to a jumbo one.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = rand::thread_rng();
    for i in 0..3000usize {
        let mut buf = vec![0u8; 1 + (i * 7) % 1500];
        rng.fill_bytes(&mut buf);
        if i % 3 == 0 {
            // Looks like a QUIC long header, to get past the first check.
            buf[0] = 0xc0 | (buf[0] & 0x0f);
        }
        let _ = udp.send_to(&buf, ("127.0.0.1", relay.port));
    }

    let rss_before = relay.rss_kib();
    let bad_inputs: Vec<Vec<u8>> = vec![
        // Unknown frame type.
        vec![0, 0, 0, 1, 0x99],
        // A length above the maximum: refused before buffering.
        vec![0xff, 0xff, 0xff, 0xff, 0x30],
        // Zero length.
        vec![0, 0, 0, 0],
        // A truncated Send, then the end of the stream.
        vec![0, 0, 0, 10, 0x30, 1, 2, 3],
        // An owner frame on a sender session.
        Frame::ListMailboxes { req: 1 }.encode().to_vec(),
        // A relay frame from a client.
        Frame::Deliver {
            mailbox: ReceiveId([1; 32]),
            seq: 1,
            ciphertext: Bytes::from_static(&[0; 1024]),
        }
        .encode()
        .to_vec(),
    ];
    for round in 0..20 {
        for bad in &bad_inputs {
            let mut raw = Raw::sender(&desc).await;
            raw.send.write_all(bad).await.unwrap();
            let _ = raw.send.finish();
            assert_eq!(
                raw.close_code().await,
                Some(CloseCode::ProtocolViolation.to_u32()),
                "round {round}: input {bad:02x?} was not refused as a protocol violation"
            );
        }
    }
    // A frame that announces 64 KiB and sends only half, from many
    // connections at once, then silence: each costs at most one frame.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut raw = Raw::sender(&desc).await;
        let mut partial = vec![0, 1, 0, 0x40, 0x30];
        partial.extend(vec![0u8; 32 * 1024]);
        raw.send.write_all(&partial).await.unwrap();
        stalled.push(raw);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = relay.rss_kib();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "relay grew from {rss_before} KiB to {rss_after} KiB"
    );
    drop(stalled);

    assert!(relay.is_running(), "relay died");
    // The owner session from before is still alive and served.
    let sender = Sender::connect(&desc).await.unwrap();
    sender
        .send(send_id, token, Bytes::from(vec![1u8; 2048]))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), owner.next_delivery())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.mailbox, mailbox);
    owner.ack(mailbox, vec![d.seq]).await.unwrap();
    assert!(relay.metric("chappe_protocol_errors_total{kind=\"bad_frame\"}") >= Some(60.0));
}

/// A sender that sends refused envelopes and never reads its results: once
/// its unread results fill the stream and its permits are all held, the
/// relay stops reading, so QUIC flow control stalls the client's writes.
/// The relay must not keep reading and queueing results without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_never_reads_is_stopped_by_flow_control() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let desc = relay.descriptor();
    let mut raw = Raw::sender(&desc).await;
    // 1 byte is no bucket size: answered BadSize without touching the store.
    let mut batch = Vec::new();
    for req in 0..1000u32 {
        let f = Frame::Send {
            req,
            send_id: chappe_proto::SendId([7; 32]),
            token: DeliveryToken([8; 32]),
            ciphertext: Bytes::from_static(&[0]),
        };
        batch.extend_from_slice(&f.encode());
    }
    let rss_before = relay.rss_kib();
    // Far more than the stream windows and the permits can absorb: about
    // 31 MB of frames, whose results alone would be about 4 MB.
    let mut stalled = false;
    for _ in 0..400 {
        match tokio::time::timeout(Duration::from_secs(3), raw.send.write_all(&batch)).await {
            Ok(r) => r.unwrap(),
            Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    assert!(
        stalled,
        "the relay kept reading 400,000 sends whose results nobody read"
    );
    let rss_after = relay.rss_kib();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "relay grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(relay.is_running(), "relay died");
    // Reading the results lets the session go on: the first one is there.
    let mut head = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), raw.recv.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
}
