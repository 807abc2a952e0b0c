//! The receive side of a session stream as a buffer: bytes go in as they
//! arrive, whole messages come out.
//!
//! Both the relay and the client feed it from QUIC; fuzzers feed it directly.
//! It never holds more than one maximum-size message plus one read chunk,
//! because lengths are checked before any payload is waited for.

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::{Frame, FrameError};
use crate::noise::HandshakeError;
use crate::noise::wire::{self, Mode};

/// What went wrong reading the stream start (mode byte, handshake messages).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartError {
    #[error("unknown session mode {0:#04x}")]
    BadMode(u8),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

#[derive(Default)]
pub struct Inbound {
    buf: BytesMut,
}

impl Inbound {
    pub fn new() -> Self {
        Inbound::default()
    }

    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Lets go of the buffer once every message in it has been taken.
    ///
    /// Call it before waiting for more input: an idle session then holds no
    /// receive buffer at all (most sessions are idle most of the time), and
    /// the next chunk gets a fresh allocation of its own size instead of
    /// growing one that taken frames still share.
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The mode byte that opens a client's stream, once it has arrived.
    pub fn take_mode(&mut self) -> Result<Option<Mode>, StartError> {
        let Some(&b) = self.buf.first() else {
            return Ok(None);
        };
        self.buf.advance(1);
        Mode::from_u8(b).map(Some).ok_or(StartError::BadMode(b))
    }

    /// One length-prefixed handshake message, once it has fully arrived.
    pub fn take_handshake(&mut self) -> Result<Option<Bytes>, StartError> {
        let Some(Ok(prefix)) = self.buf.get(..2).map(<[u8; 2]>::try_from) else {
            return Ok(None);
        };
        let len = wire::decode_len(prefix)?;
        if self.buf.len() < 2 + len {
            return Ok(None);
        }
        self.buf.advance(2);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// The next whole frame, if one has arrived.
    pub fn take_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        Frame::decode(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_by_byte() {
        let mut wire_bytes = vec![Mode::Sender as u8];
        wire_bytes.extend(wire::encode_message(b"hello"));
        wire_bytes.extend_from_slice(&Frame::ListMailboxes { req: 9 }.encode());
        let mut inb = Inbound::new();
        let mut got = (None, None, None);
        for b in wire_bytes {
            inb.extend(&[b]);
            if got.0.is_none() {
                got.0 = inb.take_mode().unwrap();
            } else if got.1.is_none() {
                got.1 = inb.take_handshake().unwrap();
            } else if got.2.is_none() {
                got.2 = inb.take_frame().unwrap();
            }
        }
        assert_eq!(got.0, Some(Mode::Sender));
        assert_eq!(got.1.as_deref(), Some(&b"hello"[..]));
        assert_eq!(got.2, Some(Frame::ListMailboxes { req: 9 }));
        assert!(inb.is_empty());
        inb.release_if_empty();
        assert_eq!(inb.buf.capacity(), 0);
    }

    #[test]
    fn bad_mode_and_oversize_handshake() {
        let mut inb = Inbound::new();
        inb.extend(&[0x7f]);
        assert_eq!(inb.take_mode(), Err(StartError::BadMode(0x7f)));
        inb.extend(&[0xff, 0xff]);
        assert_eq!(
            inb.take_handshake(),
            Err(StartError::Handshake(HandshakeError::TooLong))
        );
    }
}
