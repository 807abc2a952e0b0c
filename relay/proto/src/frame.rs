//! The frames a session exchanges after its handshake, and their codec.
//!
//! Every frame is `len u32 BE || type u8 || body`, where `len` counts the type
//! byte and the body. Integers are big-endian; ids, tokens and digests are 32
//! raw bytes; ciphertext runs to the end of the frame. A decoder reads the
//! length first and refuses anything above [`MAX_FRAME_LEN`] before buffering
//! it, so a peer can never make the relay hold more than one large frame.
//!
//! Decoding borrows nothing and copies nothing: the frame is split off the
//! receive buffer as `Bytes`, and the ciphertext is a slice of it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::envelope::MAX_CIPHERTEXT;
use crate::error::ResultCode;
use crate::ids::{DeliveryToken, ID_LEN, ReceiveId, SendId, TokenDigest};

/// Largest `len` a frame may announce: the biggest envelope plus its header.
pub const MAX_FRAME_LEN: usize = MAX_CIPHERTEXT + 128;
/// Most tokens a mailbox may hold at once (current plus overlap).
pub const MAX_TOKENS: usize = 8;
/// Most entries in one `MailboxList` and sequence numbers in one `Ack`.
pub const MAX_LIST: usize = 1024;
/// Bytes before the body: `len` and `type`.
pub const HEADER_LEN: usize = 5;

/// Frame type codes: the first byte after the length.
pub mod kind {
    pub const CREATE_MAILBOX: u8 = 0x10;
    pub const DELETE_MAILBOX: u8 = 0x11;
    pub const SET_TOKENS: u8 = 0x12;
    pub const LIST_MAILBOXES: u8 = 0x13;
    pub const SUBSCRIBE: u8 = 0x14;
    pub const ACK: u8 = 0x15;
    pub const SEND: u8 = 0x30;
    pub const RESULT: u8 = 0x40;
    pub const MAILBOX_CREATED: u8 = 0x41;
    pub const MAILBOX_LIST: u8 = 0x42;
    pub const DELIVER: u8 = 0x43;
}

/// One line of a `MailboxList`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxEntry {
    pub mailbox: ReceiveId,
    pub send_id: SendId,
    /// Envelopes stored and not yet acknowledged.
    pub stored: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    // ---- owner to relay ----
    /// Create a mailbox whose senders must show one of these tokens. The owner
    /// sends digests, so the relay never holds a token it could send with.
    CreateMailbox {
        req: u32,
        tokens: Vec<TokenDigest>,
    },
    DeleteMailbox {
        req: u32,
        mailbox: ReceiveId,
    },
    /// Replace the mailbox's token digests (rotation: old ones stop working).
    SetTokens {
        req: u32,
        mailbox: ReceiveId,
        tokens: Vec<TokenDigest>,
    },
    ListMailboxes {
        req: u32,
    },
    /// Start delivering this mailbox: stored envelopes, then new ones live.
    Subscribe {
        req: u32,
        mailbox: ReceiveId,
    },
    /// The owner has these envelopes safe; the relay deletes them.
    Ack {
        mailbox: ReceiveId,
        seqs: Vec<u64>,
    },
    // ---- anonymous sender to relay ----
    Send {
        req: u32,
        send_id: SendId,
        token: DeliveryToken,
        ciphertext: Bytes,
    },
    // ---- relay to client ----
    /// The answer to any request: `Ok` or why not.
    Result {
        req: u32,
        code: ResultCode,
    },
    MailboxCreated {
        req: u32,
        mailbox: ReceiveId,
        send_id: SendId,
    },
    MailboxList {
        req: u32,
        entries: Vec<MailboxEntry>,
    },
    Deliver {
        mailbox: ReceiveId,
        seq: u64,
        ciphertext: Bytes,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame announces {0} bytes, more than the maximum {MAX_FRAME_LEN}")]
    TooLong(usize),
    #[error("empty frame (no type byte)")]
    Empty,
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("frame type {0:#04x} is truncated")]
    Truncated(u8),
    #[error("frame type {0:#04x} has {1} trailing bytes")]
    Trailing(u8, usize),
    #[error("frame type {0:#04x}: {1}")]
    BadValue(u8, &'static str),
}

/// A cursor over one frame body that turns every short read into an error.
struct Reader {
    ty: u8,
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.buf.remaining() < n {
            Err(FrameError::Truncated(self.ty))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn id(&mut self) -> Result<[u8; ID_LEN], FrameError> {
        self.need(ID_LEN)?;
        let mut b = [0u8; ID_LEN];
        self.buf.copy_to_slice(&mut b);
        Ok(b)
    }
    fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }
    fn count(&mut self, max: usize, what: &'static str) -> Result<usize, FrameError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(FrameError::BadValue(self.ty, what));
        }
        Ok(n)
    }
    fn digests(&mut self) -> Result<Vec<TokenDigest>, FrameError> {
        let n = usize::from(self.u8()?);
        if n > MAX_TOKENS {
            return Err(FrameError::BadValue(self.ty, "too many tokens"));
        }
        (0..n).map(|_| self.id().map(TokenDigest)).collect()
    }
    fn finish(self) -> Result<(), FrameError> {
        match self.buf.remaining() {
            0 => Ok(()),
            n => Err(FrameError::Trailing(self.ty, n)),
        }
    }
}

impl Frame {
    /// Splits one whole frame off the front of `buf`.
    ///
    /// `Ok(None)` means more bytes are needed. An error means the stream is
    /// not speaking the protocol and the connection should be closed.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(Ok(prefix)) = buf.get(..4).map(<[u8; 4]>::try_from) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix);
        let len = usize::try_from(len).map_err(|_| FrameError::TooLong(usize::MAX))?;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLong(len));
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if buf.len() < 4 + len {
            buf.reserve(4 + len - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        let body = buf.split_to(len).freeze();
        Frame::decode_body(body).map(Some)
    }

    /// Decodes `type || body` (a frame without its length prefix).
    pub fn decode_body(mut body: Bytes) -> Result<Frame, FrameError> {
        if body.is_empty() {
            return Err(FrameError::Empty);
        }
        let ty = body.get_u8();
        let mut r = Reader { ty, buf: body };
        let frame = match ty {
            kind::CREATE_MAILBOX => Frame::CreateMailbox {
                req: r.u32()?,
                tokens: r.digests()?,
            },
            kind::DELETE_MAILBOX => Frame::DeleteMailbox {
                req: r.u32()?,
                mailbox: ReceiveId(r.id()?),
            },
            kind::SET_TOKENS => Frame::SetTokens {
                req: r.u32()?,
                mailbox: ReceiveId(r.id()?),
                tokens: r.digests()?,
            },
            kind::LIST_MAILBOXES => Frame::ListMailboxes { req: r.u32()? },
            kind::SUBSCRIBE => Frame::Subscribe {
                req: r.u32()?,
                mailbox: ReceiveId(r.id()?),
            },
            kind::ACK => {
                let mailbox = ReceiveId(r.id()?);
                let n = r.count(MAX_LIST, "too many sequence numbers")?;
                let seqs = (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?;
                Frame::Ack { mailbox, seqs }
            }
            kind::SEND => Frame::Send {
                req: r.u32()?,
                send_id: SendId(r.id()?),
                token: DeliveryToken(r.id()?),
                ciphertext: r.rest(),
            },
            kind::RESULT => {
                let req = r.u32()?;
                let code = ResultCode::from_u16(r.u16()?)
                    .ok_or(FrameError::BadValue(ty, "unknown result code"))?;
                Frame::Result { req, code }
            }
            kind::MAILBOX_CREATED => Frame::MailboxCreated {
                req: r.u32()?,
                mailbox: ReceiveId(r.id()?),
                send_id: SendId(r.id()?),
            },
            kind::MAILBOX_LIST => {
                let req = r.u32()?;
                let n = r.count(MAX_LIST, "too many entries")?;
                let entries = (0..n)
                    .map(|_| {
                        Ok(MailboxEntry {
                            mailbox: ReceiveId(r.id()?),
                            send_id: SendId(r.id()?),
                            stored: r.u32()?,
                        })
                    })
                    .collect::<Result<_, FrameError>>()?;
                Frame::MailboxList { req, entries }
            }
            kind::DELIVER => Frame::Deliver {
                mailbox: ReceiveId(r.id()?),
                seq: r.u64()?,
                ciphertext: r.rest(),
            },
            other => return Err(FrameError::UnknownType(other)),
        };
        r.finish()?;
        Ok(frame)
    }

    /// The type byte of this frame.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::CreateMailbox { .. } => kind::CREATE_MAILBOX,
            Frame::DeleteMailbox { .. } => kind::DELETE_MAILBOX,
            Frame::SetTokens { .. } => kind::SET_TOKENS,
            Frame::ListMailboxes { .. } => kind::LIST_MAILBOXES,
            Frame::Subscribe { .. } => kind::SUBSCRIBE,
            Frame::Ack { .. } => kind::ACK,
            Frame::Send { .. } => kind::SEND,
            Frame::Result { .. } => kind::RESULT,
            Frame::MailboxCreated { .. } => kind::MAILBOX_CREATED,
            Frame::MailboxList { .. } => kind::MAILBOX_LIST,
            Frame::Deliver { .. } => kind::DELIVER,
        }
    }

    /// Encodes the frame as a header and an optional ciphertext tail, so the
    /// sender can hand both to the transport without copying the ciphertext.
    pub fn encode_parts(&self) -> (Bytes, Option<Bytes>) {
        let mut b = BytesMut::new();
        let tail = self.encode_head_into(&mut b);
        (b.freeze(), tail)
    }

    /// Appends the frame's header (everything but a ciphertext) to `b` and
    /// returns the ciphertext that follows it on the wire, if any. Frames
    /// written together can so share one header buffer: see [`Batch`].
    pub fn encode_head_into(&self, b: &mut BytesMut) -> Option<Bytes> {
        let start = b.len();
        b.reserve(96);
        b.put_u32(0); // patched below
        b.put_u8(self.kind());
        let tail = match self {
            Frame::CreateMailbox { req, tokens } => {
                b.put_u32(*req);
                put_digests(b, tokens);
                None
            }
            Frame::DeleteMailbox { req, mailbox } | Frame::Subscribe { req, mailbox } => {
                b.put_u32(*req);
                b.put_slice(&mailbox.0);
                None
            }
            Frame::SetTokens {
                req,
                mailbox,
                tokens,
            } => {
                b.put_u32(*req);
                b.put_slice(&mailbox.0);
                put_digests(b, tokens);
                None
            }
            Frame::ListMailboxes { req } => {
                b.put_u32(*req);
                None
            }
            Frame::Ack { mailbox, seqs } => {
                b.put_slice(&mailbox.0);
                let seqs = seqs.get(..MAX_LIST).unwrap_or(seqs);
                b.put_u16(u16::try_from(seqs.len()).unwrap_or(0));
                for s in seqs {
                    b.put_u64(*s);
                }
                None
            }
            Frame::Send {
                req,
                send_id,
                token,
                ciphertext,
            } => {
                b.put_u32(*req);
                b.put_slice(&send_id.0);
                b.put_slice(&token.0);
                Some(ciphertext.clone())
            }
            Frame::Result { req, code } => {
                b.put_u32(*req);
                b.put_u16(code.to_u16());
                None
            }
            Frame::MailboxCreated {
                req,
                mailbox,
                send_id,
            } => {
                b.put_u32(*req);
                b.put_slice(&mailbox.0);
                b.put_slice(&send_id.0);
                None
            }
            Frame::MailboxList { req, entries } => {
                b.put_u32(*req);
                let entries = entries.get(..MAX_LIST).unwrap_or(entries);
                b.put_u16(u16::try_from(entries.len()).unwrap_or(0));
                for e in entries {
                    b.put_slice(&e.mailbox.0);
                    b.put_slice(&e.send_id.0);
                    b.put_u32(e.stored);
                }
                None
            }
            Frame::Deliver {
                mailbox,
                seq,
                ciphertext,
            } => {
                b.put_slice(&mailbox.0);
                b.put_u64(*seq);
                Some(ciphertext.clone())
            }
        };
        let len = b.len() - start - 4 + tail.as_ref().map_or(0, Bytes::len);
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        if let Some(prefix) = b.get_mut(start..start + 4) {
            prefix.copy_from_slice(&len.to_be_bytes());
        }
        tail
    }

    /// The whole frame in one buffer (copies the ciphertext; for tests and
    /// small frames).
    pub fn encode(&self) -> BytesMut {
        let (head, tail) = self.encode_parts();
        let mut out = BytesMut::with_capacity(head.len() + tail.as_ref().map_or(0, Bytes::len));
        out.put_slice(&head);
        if let Some(t) = tail {
            out.put_slice(&t);
        }
        out
    }

    /// Whether a client may send this frame (as opposed to the relay).
    pub fn is_from_client(&self) -> bool {
        self.kind() < kind::RESULT
    }
}

/// Frames queued for one stream write: their headers are encoded back to
/// back into one buffer, their ciphertexts passed through uncopied, so a
/// batch of results costs one allocation instead of two per frame.
#[derive(Default)]
pub struct Batch {
    heads: BytesMut,
    chunks: Vec<Bytes>,
    frames: usize,
}

impl Batch {
    pub fn push(&mut self, f: &Frame) {
        if let Some(tail) = f.encode_head_into(&mut self.heads) {
            self.chunks.push(self.heads.split().freeze());
            self.chunks.push(tail);
        }
        self.frames += 1;
    }

    /// Frames pushed since the last [`Batch::clear`].
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// The chunks to write, in order.
    pub fn chunks(&mut self) -> &mut Vec<Bytes> {
        if !self.heads.is_empty() {
            self.chunks.push(self.heads.split().freeze());
        }
        &mut self.chunks
    }

    /// Empties the batch and lets go of its buffers: a session that goes
    /// idle should not keep them.
    pub fn clear(&mut self) {
        self.chunks = Vec::new();
        self.heads = BytesMut::new();
        self.frames = 0;
    }
}

fn put_digests(b: &mut BytesMut, tokens: &[TokenDigest]) {
    let tokens = tokens.get(..MAX_TOKENS).unwrap_or(tokens);
    b.put_u8(u8::try_from(tokens.len()).unwrap_or(0));
    for t in tokens {
        b.put_slice(&t.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = [u8; 32]> {
        any::<[u8; 32]>()
    }

    fn code() -> impl Strategy<Value = ResultCode> {
        proptest::sample::select(ResultCode::ALL.to_vec())
    }

    fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn digests() -> impl Strategy<Value = Vec<TokenDigest>> {
        proptest::collection::vec(id().prop_map(TokenDigest), 0..=MAX_TOKENS)
    }

    pub(crate) fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u32>(), digests())
                .prop_map(|(req, tokens)| Frame::CreateMailbox { req, tokens }),
            (any::<u32>(), id()).prop_map(|(req, m)| Frame::DeleteMailbox {
                req,
                mailbox: ReceiveId(m)
            }),
            (any::<u32>(), id(), digests()).prop_map(|(req, m, tokens)| Frame::SetTokens {
                req,
                mailbox: ReceiveId(m),
                tokens
            }),
            any::<u32>().prop_map(|req| Frame::ListMailboxes { req }),
            (any::<u32>(), id()).prop_map(|(req, m)| Frame::Subscribe {
                req,
                mailbox: ReceiveId(m)
            }),
            (id(), proptest::collection::vec(any::<u64>(), 0..50)).prop_map(|(m, seqs)| {
                Frame::Ack {
                    mailbox: ReceiveId(m),
                    seqs,
                }
            }),
            (any::<u32>(), id(), id(), bytes(3000)).prop_map(|(req, s, t, c)| Frame::Send {
                req,
                send_id: SendId(s),
                token: DeliveryToken(t),
                ciphertext: c
            }),
            (any::<u32>(), code()).prop_map(|(req, code)| Frame::Result { req, code }),
            (any::<u32>(), id(), id()).prop_map(|(req, m, s)| Frame::MailboxCreated {
                req,
                mailbox: ReceiveId(m),
                send_id: SendId(s)
            }),
            (
                any::<u32>(),
                proptest::collection::vec((id(), id(), any::<u32>()), 0..20)
            )
                .prop_map(|(req, es)| Frame::MailboxList {
                    req,
                    entries: es
                        .into_iter()
                        .map(|(m, s, stored)| MailboxEntry {
                            mailbox: ReceiveId(m),
                            send_id: SendId(s),
                            stored
                        })
                        .collect()
                }),
            (id(), any::<u64>(), bytes(3000)).prop_map(|(m, seq, c)| Frame::Deliver {
                mailbox: ReceiveId(m),
                seq,
                ciphertext: c
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(f in frame()) {
            let mut buf = f.encode();
            prop_assert_eq!(Frame::decode(&mut buf), Ok(Some(f)));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn round_trip_split_anywhere(f in frame(), cut in any::<prop::sample::Index>()) {
            // Bytes arriving in two pieces decode to the same frame.
            let whole = f.encode();
            let cut = cut.index(whole.len() + 1);
            let mut buf = BytesMut::from(&whole[..cut]);
            if cut < whole.len() {
                prop_assert_eq!(Frame::decode(&mut buf), Ok(None));
            }
            buf.extend_from_slice(&whole[cut..]);
            prop_assert_eq!(Frame::decode(&mut buf), Ok(Some(f)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = Frame::decode(&mut buf) {}
        }
    }

    #[test]
    fn oversize_length_refused_before_buffering() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0x30][..]);
        assert_eq!(
            Frame::decode(&mut buf),
            Err(FrameError::TooLong(0xffff_ffff))
        );
    }

    #[test]
    fn trailing_and_unknown() {
        let mut f = Frame::ListMailboxes { req: 1 }.encode();
        f[3] += 1;
        f.extend_from_slice(&[0]);
        assert_eq!(
            Frame::decode(&mut f),
            Err(FrameError::Trailing(kind::LIST_MAILBOXES, 1))
        );
        let mut u = BytesMut::from(&[0, 0, 0, 1, 0x99][..]);
        assert_eq!(Frame::decode(&mut u), Err(FrameError::UnknownType(0x99)));
        let mut e = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(Frame::decode(&mut e), Err(FrameError::Empty));
    }

    #[test]
    fn a_batch_writes_what_the_frames_encode_to() {
        let frames = [
            Frame::Result {
                req: 1,
                code: ResultCode::Ok,
            },
            Frame::Deliver {
                mailbox: ReceiveId([3; 32]),
                seq: 9,
                ciphertext: Bytes::from(vec![7u8; 1024]),
            },
            Frame::Result {
                req: 2,
                code: ResultCode::BadToken,
            },
            Frame::Result {
                req: 3,
                code: ResultCode::Ok,
            },
        ];
        let mut batch = Batch::default();
        for f in &frames {
            batch.push(f);
        }
        assert_eq!(batch.frames(), 4);
        let wire: Vec<u8> = batch.chunks().iter().flat_map(|c| c.to_vec()).collect();
        let want: Vec<u8> = frames.iter().flat_map(|f| f.encode().to_vec()).collect();
        assert_eq!(wire, want);
        // Headers share buffers: one chunk before the ciphertext, the
        // ciphertext itself, one after.
        assert_eq!(batch.chunks().len(), 3);
        batch.clear();
        assert_eq!((batch.frames(), batch.chunks().len()), (0, 0));
    }
}
