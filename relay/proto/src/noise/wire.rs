//! How handshake messages ride on the first bidirectional QUIC stream.
//!
//! The client opens the stream with one *mode* byte saying which handshake
//! follows, then each handshake message is `len u16 BE || message`. After the
//! last handshake message the same stream carries frames (see `frame`).

use super::handshake::MAX_HANDSHAKE_MSG;

/// Which session the client asks for; the first byte of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Mailbox owner, Noise XK.
    Owner = 0x01,
    /// Anonymous sender, Noise NK.
    Sender = 0x02,
}

impl Mode {
    pub fn from_u8(b: u8) -> Option<Mode> {
        match b {
            0x01 => Some(Mode::Owner),
            0x02 => Some(Mode::Sender),
            _ => None,
        }
    }
}

/// Prefixes a handshake message with its length.
pub fn encode_message(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + msg.len());
    // Handshake messages are built by this crate and far below u16::MAX.
    out.extend_from_slice(&u16::try_from(msg.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Reads the length prefix of a handshake message; `Err` when it announces
/// more than any handshake message may hold.
pub fn decode_len(prefix: [u8; 2]) -> Result<usize, super::HandshakeError> {
    let len = usize::from(u16::from_be_bytes(prefix));
    if len > MAX_HANDSHAKE_MSG {
        Err(super::HandshakeError::TooLong)
    } else {
        Ok(len)
    }
}
