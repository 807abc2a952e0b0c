//! A complete exchange through a running relay, with the library alone:
//! an owner creates a mailbox, an anonymous sender seals and sends a message
//! to it, the owner receives, opens, verifies and acknowledges it.
//!
//! ```sh
//! chappe-relay &                                   # prints its descriptor
//! cargo run -p chappe-client --example roundtrip -- 'chappe1:…@127.0.0.1:4433'
//! ```
#![allow(clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use chappe_client::identity::Identity;
use chappe_client::seal::{self, MailboxKeyPair};
use chappe_client::{OwnerSession, Sender};
use chappe_proto::DeliveryToken;
use chappe_proto::descriptor::Descriptor;
use chappe_proto::noise::Keypair;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let desc: Descriptor = std::env::args()
        .nth(1)
        .ok_or("usage: roundtrip <relay descriptor>")?
        .parse()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();

    // The owner: a Noise key proves mailbox ownership to the relay; the
    // X-Wing key pair is what senders seal to, and never leaves the owner.
    let owner_key = Keypair::generate();
    let mut owner = OwnerSession::connect(&desc, &owner_key).await?;
    let token = DeliveryToken::random();
    let (mailbox, send_id) = owner.create_mailbox(&[token]).await?;
    let mailbox_keys = MailboxKeyPair::generate();
    owner.subscribe(mailbox).await?;

    // The sender: an identity for signing, and an anonymous connection.
    let alice = Identity::generate(now);
    let envelope = seal::seal(&alice, mailbox_keys.public_key(), &send_id, b"hello", now)?;
    let sender = Sender::connect(&desc).await?;
    sender.send(send_id, token, envelope.into()).await?; // Ok = durable on the relay
    sender.close().await;

    let delivery = owner
        .next_delivery()
        .await
        .expect("the relay closed the session");
    let opened = seal::open(&mailbox_keys, &send_id, &delivery.ciphertext)?;
    assert_eq!(opened.sender_identity, alice.public_key());
    println!(
        "from {}: {}",
        opened.sender_identity.fingerprint(),
        String::from_utf8_lossy(&opened.body)
    );
    owner.ack(delivery.mailbox, vec![delivery.seq]).await?;
    owner.delete_mailbox(mailbox).await?;
    owner.close().await;
    Ok(())
}
