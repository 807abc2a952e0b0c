//! Chappe protocol, version 1: everything that is bytes and state, nothing
//! that is sockets or clocks.
//!
//! - [`ids`]: the 32-byte names (receive id, send id, owner key) and delivery
//!   tokens, each its own type so the two sides of a mailbox never mix.
//! - [`envelope`]: the fixed ciphertext buckets the relay accepts.
//! - [`error`]: result codes for requests, close codes for connections.
//! - [`frame`]: the frames a session exchanges after its handshake, and the
//!   length-prefixed codec that splits them off a receive buffer.
//! - [`noise`]: the XK (owner) and NK (anonymous sender) handshakes as
//!   typestate machines bound to the QUIC connection's TLS exporter.
//! - [`descriptor`]: the one-line relay name that pins its keys.
//! - [`inbound`]: the receive buffer both ends feed from QUIC: mode byte,
//!   handshake messages, then frames.
//!
//! Data moves like this: the client writes a mode byte and handshake messages
//! ([`noise::wire`]); once both sides hold an [`noise::Established`], each
//! side turns requests into [`frame::Frame`]s and back. `docs/PROTOCOL.md`
//! specifies the same bytes in prose.
//!
//! The daemon (`chappe-relay`) and the client library are glue around these
//! modules; fuzzers and unit tests drive them byte by byte.
#![forbid(unsafe_code)]

pub mod descriptor;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod ids;
pub mod inbound;
pub mod noise;
#[cfg(feature = "tls")]
pub mod tls;

pub use error::{CloseCode, ResultCode};
pub use ids::{DeliveryToken, OwnerKey, ReceiveId, SendId, TokenDigest};

/// ALPN of protocol v1 on QUIC; also the start of the Noise prologue.
pub const ALPN: &[u8] = b"chappe/1";
