//! Chappe protocol, version 1: everything that is bytes and state, nothing
//! that is sockets or clocks.
//!
//! - [`ids`]: the 32-byte names (receive id, send id, owner key) and delivery
//!   tokens, each its own type so the two sides of a mailbox never mix.
//! - [`envelope`]: the fixed ciphertext buckets the relay accepts.
//! - [`error`]: result codes for requests, close codes for connections.
//!
//! The daemon (`chappe-relay`) and the client library are glue around these
//! modules; fuzzers and unit tests drive them byte by byte.
#![forbid(unsafe_code)]

pub mod envelope;
pub mod error;
pub mod ids;

pub use error::{CloseCode, ResultCode};
pub use ids::{DeliveryToken, OwnerKey, ReceiveId, SendId, TokenDigest};

/// ALPN of protocol v1 on QUIC; also the start of the Noise prologue.
pub const ALPN: &[u8] = b"chappe/1";
