//! What the Chappe fuzz targets share: fixed keys (so runs reproduce), the
//! way a target turns its input into a handshake message, the outcome each
//! kind of message must have, and a frame round-trip check.
//!
//! Handshake targets read the first input byte as a *mode* ([`MsgMode`]) and
//! the rest as its argument, so one target covers both garbage and messages
//! that decrypt:
//!
//! | `byte0 % 4` | message given to the reader | must be |
//! | --- | --- | --- |
//! | 0 `Raw` | the rest, as is | refused (except a replayed genuine msg1), with the length and low-order checks first |
//! | 1 `Tamper` | a genuine message, XORed with the rest (longer rest appends) | accepted iff unchanged |
//! | 2 `Truncate` | a genuine message cut to `u16(rest[..2]) % (len+1)` bytes | accepted iff whole |
//! | 3 `Payload` | a valid message whose Noise payload is the rest | what [`Hello::decode`] says of the payload |
//!
//! Genuine messages need fresh Noise ephemerals (the wrapper draws them from
//! the OS), so the bytes differ between runs but the outcome never does.

use bytes::{Bytes, BytesMut};
use chappe_proto::frame::Frame;
use chappe_proto::noise::dh::{SecretKey, X25519};
use chappe_proto::noise::{
    EXPORTER_LEN, HandshakeError, Hello, Keypair, MAX_HANDSHAKE_MSG, PROTOCOL_VERSION, prologue,
};
use noise_protocol::patterns::HandshakePattern;
use noise_protocol::{DH, HandshakeState, HandshakeStateBuilder};
use noise_rust_crypto::{Aes256Gcm, Sha256};

/// The relay's Noise static secret in every handshake target.
pub const RELAY_SECRET: [u8; 32] = [0x11; 32];
/// The mailbox owner's Noise static secret (XK targets).
pub const OWNER_SECRET: [u8; 32] = [0x22; 32];
/// The TLS exporter value both sides bind the handshake to.
pub const EXPORTER: [u8; EXPORTER_LEN] = [0x33; EXPORTER_LEN];

/// Unix time used for sealing and checking envelopes (inside the fixed
/// identity's sender certificate window).
pub const NOW: u64 = 1_700_000_000 + 60;
/// Seed of the fixed mailbox X-Wing key pair (envelope and card targets).
pub const MAILBOX_SEED: [u8; 32] = [0x44; 32];
/// Send id the fixed mailbox is addressed by.
pub const SEND_ID: [u8; 32] = [0x55; 32];
/// A fixed identity whose sender certificate covers [`NOW`].
pub const IDENTITY_TOML: &str = include_str!("fixed_identity.toml");

/// Bytes of overhead of `-> e, es` / `<- e, ee` messages (ephemeral + tag).
pub const E_MSG_OVERHEAD: usize = 32 + 16;
/// Bytes of overhead of XK message 3 `-> s, se` (encrypted static + tag).
pub const S_MSG_OVERHEAD: usize = 32 + 16 + 16;

pub fn relay_keypair() -> Keypair {
    Keypair::from_secret(RELAY_SECRET)
}

pub fn owner_keypair() -> Keypair {
    Keypair::from_secret(OWNER_SECRET)
}

pub fn identity() -> chappe_client::identity::Identity {
    match chappe_client::identity::Identity::from_toml(IDENTITY_TOML) {
        Ok(id) => id,
        Err(e) => panic!("fixed fuzz identity does not load: {e}"),
    }
}

pub fn mailbox() -> chappe_client::seal::MailboxKeyPair {
    match chappe_client::seal::MailboxKeyPair::from_secret_bytes(&MAILBOX_SEED) {
        Ok(k) => k,
        Err(e) => panic!("fixed fuzz mailbox key does not load: {e}"),
    }
}

// ---- handshake messages ---------------------------------------------------

/// How a handshake target builds the message it feeds (see the module docs).
#[derive(Clone, Copy, Debug)]
pub enum MsgMode<'a> {
    Raw(&'a [u8]),
    Tamper(&'a [u8]),
    Truncate(&'a [u8]),
    Payload(&'a [u8]),
}

/// Splits the input into the mode (first byte) and its argument, returning
/// also the first byte's remaining bits (`byte0 >> 2`) for targets that
/// choose more than the mode.
pub fn msg_mode(data: &[u8]) -> Option<(MsgMode<'_>, u8)> {
    let (&b, rest) = data.split_first()?;
    let mode = match b % 4 {
        0 => MsgMode::Raw(rest),
        1 => MsgMode::Tamper(rest),
        2 => MsgMode::Truncate(rest),
        _ => MsgMode::Payload(rest),
    };
    Some((mode, b >> 2))
}

/// `genuine` XORed with `edits`; edits past its end are appended.
pub fn tamper(genuine: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut out = genuine.to_vec();
    for (i, &e) in edits.iter().enumerate() {
        match out.get_mut(i) {
            Some(b) => *b ^= e,
            None => out.push(e),
        }
    }
    out
}

/// `genuine` cut to a length read from the first two bytes of `arg`.
pub fn truncate(genuine: &[u8], arg: &[u8]) -> Vec<u8> {
    let n = match arg {
        [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
        [a] => usize::from(*a),
        [] => 0,
    };
    let keep = n % (genuine.len() + 1);
    genuine.get(..keep).unwrap_or(genuine).to_vec()
}

/// Builds the mutated message and says whether it is byte-identical to the
/// genuine one (and so must be accepted).
pub fn mutate(mode: MsgMode<'_>, genuine: &[u8]) -> (Vec<u8>, bool) {
    let msg = match mode {
        MsgMode::Tamper(edits) => tamper(genuine, edits),
        MsgMode::Truncate(arg) => truncate(genuine, arg),
        MsgMode::Raw(m) | MsgMode::Payload(m) => m.to_vec(),
    };
    let same = msg == genuine;
    (msg, same)
}

/// True for X25519 public keys of small order, whose DH output is all zeros
/// for every (clamped) scalar: exactly the keys the relay must refuse.
pub fn is_low_order(pk: &[u8]) -> bool {
    let Some(Ok(pk)) = pk.get(..32).map(<[u8; 32]>::try_from) else {
        return false;
    };
    X25519::dh(&SecretKey::from([0x5a; 32]), &pk).is_err()
}

/// Checks the outcome of reading a message the fuzzer wrote itself: the
/// length checks come first and a low-order ephemeral (for messages that
/// start with one in the clear, `e_first`) is always refused as such.
/// Returns without judging further when none of those apply.
pub fn check_raw_outcome(
    msg: &[u8],
    overhead: usize,
    e_first: bool,
    outcome: Result<(), &HandshakeError>,
) {
    if msg.len() > MAX_HANDSHAKE_MSG {
        assert_eq!(
            outcome,
            Err(&HandshakeError::TooLong),
            "{} byte message",
            msg.len()
        );
    } else if msg.len() < overhead {
        assert_eq!(
            outcome,
            Err(&HandshakeError::TooShort),
            "{} byte message",
            msg.len()
        );
    } else if e_first && is_low_order(msg) {
        assert_eq!(
            outcome,
            Err(&HandshakeError::NonContributory),
            "low-order ephemeral accepted"
        );
    } else if let Err(e) = outcome {
        assert!(
            !matches!(e, HandshakeError::TooLong | HandshakeError::TooShort),
            "length error {e:?} for a {} byte message",
            msg.len()
        );
    }
}

/// What reading a message that decrypts to `payload` must give: the hello,
/// or exactly the payload or version error. `msg_len` is the message size.
pub fn expected_hello(payload: &[u8], msg_len: usize) -> Result<Hello, HandshakeError> {
    if msg_len > MAX_HANDSHAKE_MSG {
        return Err(HandshakeError::TooLong);
    }
    let hello = Hello::decode(payload)?;
    if hello.version != PROTOCOL_VERSION {
        return Err(HandshakeError::UnsupportedVersion(hello.version));
    }
    Ok(hello)
}

/// A Noise state with no Chappe wrapper around it, with the same suite and
/// prologue, for writing messages the wrapper would never write.
pub type RawState = HandshakeState<X25519, Aes256Gcm, Sha256>;

pub fn raw_state(
    pattern: HandshakePattern,
    initiator: bool,
    s: Option<&[u8; 32]>,
    rs: Option<[u8; 32]>,
) -> RawState {
    let p = prologue(&EXPORTER);
    let mut b = HandshakeStateBuilder::<X25519>::new();
    b.set_pattern(pattern)
        .set_is_initiator(initiator)
        .set_prologue(&p);
    if let Some(s) = s {
        b.set_s(SecretKey::from(*s));
    }
    if let Some(rs) = rs {
        b.set_rs(rs);
    }
    b.build_handshake_state()
}

/// Writes a message with the raw state, panicking on failure (the payloads
/// given are bounded well below Noise's 64 KiB message limit).
pub fn raw_write(hs: &mut RawState, payload: &[u8]) -> Vec<u8> {
    match hs.write_message_vec(payload) {
        Ok(m) => m,
        Err(e) => panic!("raw Noise write failed: {e:?}"),
    }
}

pub fn raw_read(hs: &mut RawState, msg: &[u8]) -> Vec<u8> {
    match hs.read_message_vec(msg) {
        Ok(p) => p,
        Err(e) => panic!("raw Noise read of a message the wrapper wrote failed: {e:?}"),
    }
}

/// Payloads above this are cut: a handshake message that long is refused
/// for its length before any decryption anyway.
pub const PAYLOAD_CAP: usize = 4096;

pub fn cap_payload(p: &[u8]) -> &[u8] {
    p.get(..PAYLOAD_CAP).unwrap_or(p)
}

// ---- frames ---------------------------------------------------------------

/// Checks everything a decoded frame promises about its encoding: that
/// `wire` (the bytes it was decoded from, length prefix included) is exactly
/// its encoding, that the two-part encoding agrees, and that the encoding
/// decodes back to it with nothing left over.
pub fn check_frame(frame: &Frame, wire: Option<&[u8]>) {
    let enc = frame.encode();
    if let Some(wire) = wire {
        assert_eq!(&enc[..], wire, "re-encoding {frame:?} changed its bytes");
    }
    assert_eq!(enc.get(4), Some(&frame.kind()), "type byte of {frame:?}");
    let (head, tail) = frame.encode_parts();
    let mut joined = head.to_vec();
    joined.extend_from_slice(tail.as_deref().unwrap_or_default());
    assert_eq!(&joined[..], &enc[..], "encode_parts disagrees with encode");

    let mut buf = BytesMut::from(&enc[..]);
    match Frame::decode(&mut buf) {
        Ok(Some(again)) => assert_eq!(&again, frame, "frame changed in a round trip"),
        other => panic!("encoding of {frame:?} does not decode: {other:?}"),
    }
    assert!(
        buf.is_empty(),
        "{} bytes left after a round trip",
        buf.len()
    );
    let body = Bytes::copy_from_slice(enc.get(4..).unwrap_or_default());
    assert_eq!(Frame::decode_body(body).as_ref(), Ok(frame), "decode_body");
}

/// A small deterministic generator for targets that need more choices than
/// the input gives (chunk sizes, test RNG for HPKE encapsulation).
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl hpke::rand_core::TryRng for SplitMix {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok((self.next_u64() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(v.get(..chunk.len()).unwrap_or(&v));
        }
        Ok(())
    }
}

/// Deterministic, *not* secure: only so that fuzz inputs reproduce exactly.
impl hpke::rand_core::TryCryptoRng for SplitMix {}
