//! Chappe client library: the end-to-end layer the relay never sees inside.
//!
//! - [`identity`]: a person's long-term Ed25519 identity, the short-lived
//!   sender certificates it issues, and the identity file.
//! - [`seal`]: sealed envelopes, HPKE with X-Wing to a mailbox's key, padded
//!   to the relay's fixed buckets, with the sender's certificate and signature
//!   inside.
//! - [`card`]: the signed one-line contact card that tells a sender where
//!   and how to write to a mailbox.
//!
//! These three modules read no clock and touch no network: callers pass the
//! time in, so the same code runs under tests, fuzzers and the CLI.
//!
//! - [`transport`]: QUIC to a relay with its certificate pinned, the shared
//!   TLS policy, a fresh endpoint per connection.
//! - [`session`]: the Noise handshake, then [`OwnerSession`] (XK: mailboxes,
//!   deliveries, acks) or [`Sender`] (NK: anonymous, pipelined sends).
//! - [`home`]: the CLI's files (identity, owner key, mailboxes).
//! - [`terminal`]: message bodies escaped so that printing one cannot forge
//!   a line or drive the terminal.
//! - [`error`]: [`ClientError`], carrying the relay's result code on refusal.
//!
//! A minimal exchange (see `examples/roundtrip.rs` for a complete one):
//!
//! ```no_run
//! # async fn demo(desc: chappe_proto::descriptor::Descriptor) -> Result<(), chappe_client::ClientError> {
//! use chappe_client::{OwnerSession, Sender};
//! use chappe_proto::{DeliveryToken, noise::Keypair};
//! let owner = Keypair::generate();
//! let mut me = OwnerSession::connect(&desc, &owner).await?;
//! let token = DeliveryToken::random();
//! let (mailbox, send_id) = me.create_mailbox(&[token]).await?;
//! me.subscribe(mailbox).await?;
//! let anon = Sender::connect(&desc).await?;
//! anon.send(send_id, token, vec![0u8; 2048].into()).await?;
//! let d = me.next_delivery().await.expect("delivery");
//! me.ack(d.mailbox, vec![d.seq]).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod aead;
pub mod card;
pub mod error;
pub mod home;
pub mod identity;
pub mod seal;
pub mod session;
pub mod terminal;
pub mod transport;

pub use error::ClientError;
pub use session::{Delivery, OwnerSession, Sender};
pub mod bench;
