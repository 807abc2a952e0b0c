//! The Noise handshakes that authenticate each session inside QUIC.
//!
//! - [`dh`]: X25519 that refuses non-contributory results.
//! - [`handshake`]: typestate initiator/responder for XK (owners) and NK
//!   (anonymous senders), bound to the QUIC connection by the prologue.
//! - [`payload`]: the TLV hello inside handshake messages (version, and room
//!   for the post-quantum PSK).
//! - [`wire`]: the mode byte and length prefixes on the stream.

pub mod dh;
pub mod handshake;
pub mod payload;
pub mod wire;

pub use handshake::{
    EXPORTER_LABEL, EXPORTER_LEN, Established, HandshakeError, Keypair, MAX_HANDSHAKE_MSG,
    OwnerAwaitingFinal, OwnerInitiator, OwnerResponder, SenderInitiator, SenderResponder, prologue,
};
pub use payload::{Hello, PROTOCOL_VERSION};
pub use wire::Mode;
