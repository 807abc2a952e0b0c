//! Every refusal has its own result code, and a refused request never
//! disturbs the relay or other clients.

use bytes::Bytes;
use chappe_client::{ClientError, OwnerSession, Sender};
use chappe_proto::noise::Keypair;
use chappe_proto::{DeliveryToken, ResultCode, SendId};
use chappe_system_tests::{Relay, config_args};

fn code(r: Result<(), ClientError>) -> Option<ResultCode> {
    match r {
        Ok(()) => Some(ResultCode::Ok),
        Err(e) => e.code(),
    }
}

fn env(len: usize) -> Bytes {
    Bytes::from(vec![0x5a; len])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_has_its_code_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let args = config_args(dir.path(), "[limits]\nmax_envelopes_per_mailbox = 3\n");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = Relay::start_with(dir.path(), &args);
    let desc = relay.descriptor();

    let owner = OwnerSession::connect(&desc, &Keypair::generate())
        .await
        .unwrap();
    let token = DeliveryToken::random();
    let (mailbox, send_id) = owner.create_mailbox(&[token]).await.unwrap();
    let other_token = DeliveryToken::random();
    let (_, other_send) = owner.create_mailbox(&[other_token]).await.unwrap();

    let sender = Sender::connect(&desc).await.unwrap();
    let ok = |r| assert_eq!(code(r), Some(ResultCode::Ok));

    // Wrong token.
    assert_eq!(
        code(
            sender
                .send(send_id, DeliveryToken::random(), env(2048))
                .await
        ),
        Some(ResultCode::BadToken)
    );
    // Unknown mailbox.
    assert_eq!(
        code(sender.send(SendId::random(), token, env(2048)).await),
        Some(ResultCode::UnknownMailbox)
    );
    // Not a bucket size, and larger than the largest bucket.
    assert_eq!(
        code(sender.send(send_id, token, env(2000)).await),
        Some(ResultCode::BadSize)
    );
    assert_eq!(
        code(sender.send(send_id, token, env(64 * 1024 + 16)).await),
        Some(ResultCode::TooLarge)
    );
    // The same connection still works after all of that.
    ok(sender.send(send_id, token, env(1024)).await);

    // A rotated-out token stops working at once; the new one works.
    let new_token = DeliveryToken::random();
    owner.set_tokens(mailbox, &[new_token]).await.unwrap();
    assert_eq!(
        code(sender.send(send_id, token, env(1024)).await),
        Some(ResultCode::BadToken)
    );
    ok(sender.send(send_id, new_token, env(1024)).await);

    // Quota: three envelopes fit, the fourth is refused.
    ok(sender.send(send_id, new_token, env(4096)).await);
    assert_eq!(
        code(sender.send(send_id, new_token, env(1024)).await),
        Some(ResultCode::QuotaExceeded)
    );

    // Another mailbox, and another anonymous sender, are unaffected.
    let fresh = Sender::connect(&desc).await.unwrap();
    ok(fresh.send(other_send, other_token, env(2048)).await);
    ok(sender.send(other_send, other_token, env(16 * 1024)).await);

    // The owner side: deleting a mailbox someone else owns is refused as
    // unknown (no existence oracle), and so is a mailbox that is gone.
    let stranger = OwnerSession::connect(&desc, &Keypair::generate())
        .await
        .unwrap();
    assert_eq!(
        code(stranger.delete_mailbox(mailbox).await),
        Some(ResultCode::UnknownMailbox)
    );
    assert_eq!(
        code(stranger.subscribe(mailbox).await),
        Some(ResultCode::UnknownMailbox)
    );
    owner.delete_mailbox(mailbox).await.unwrap();
    assert_eq!(
        code(sender.send(send_id, new_token, env(1024)).await),
        Some(ResultCode::UnknownMailbox)
    );
    assert_eq!(
        relay.metric("chappe_envelopes_received_total{result=\"bad_token\"}"),
        Some(2.0)
    );
}
