//! Typestate wrappers over `noise-protocol`'s `HandshakeState`.
//!
//! The crate panics when a message is read or written out of turn, and its
//! non-`_vec` calls panic on a wrongly sized buffer. Each state below owns the
//! `HandshakeState` and only offers the one call that is legal next, consuming
//! itself, so misuse does not compile; lengths are checked before the crate
//! sees them.
//!
//! Both patterns use the prologue `chappe/1 || exporter`, where `exporter` is
//! 32 bytes of TLS keying material of the QUIC connection the handshake runs
//! in (label [`EXPORTER_LABEL`], empty context). A handshake message copied
//! into another connection is decrypted under a different prologue hash and
//! fails.

use noise_protocol::patterns::{noise_nk, noise_xk};
use noise_protocol::{DH, ErrorKind, HandshakeState, HandshakeStateBuilder, U8Array};
use noise_rust_crypto::{Aes256Gcm, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use super::dh::{SecretKey, X25519};
use super::payload::{Hello, MAX_PAYLOAD, PROTOCOL_VERSION, PayloadError};
use crate::ALPN;
use crate::ids::OwnerKey;

type State = HandshakeState<X25519, Aes256Gcm, Sha256>;

/// TLS exporter label for the channel binding (RFC 5705 / RFC 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-chappe/1 noise binding";
/// Bytes of exporter output mixed into the prologue.
pub const EXPORTER_LEN: usize = 32;
/// Longest handshake message either side will read.
pub const MAX_HANDSHAKE_MSG: usize = 96 + MAX_PAYLOAD;

/// Why a handshake failed. The relay answers every one of these by closing
/// the connection with `CloseCode::HandshakeFailed`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("handshake message too short")]
    TooShort,
    #[error("handshake message too long")]
    TooLong,
    #[error("handshake message failed to decrypt (wrong relay key, replay, or tampering)")]
    Decrypt,
    #[error("peer sent a low-order (non-contributory) X25519 key")]
    NonContributory,
    #[error("bad handshake payload: {0}")]
    Payload(#[from] PayloadError),
    #[error("peer speaks protocol version {0}, this side speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u16),
    #[error("handshake state error")]
    State,
}

fn map_err(e: noise_protocol::Error) -> HandshakeError {
    match e.kind() {
        ErrorKind::DH => HandshakeError::NonContributory,
        ErrorKind::Decryption => HandshakeError::Decrypt,
        ErrorKind::TooShort => HandshakeError::TooShort,
        _ => HandshakeError::State,
    }
}

/// A Noise static key pair (the relay's identity, or a mailbox owner's).
pub struct Keypair {
    secret: SecretKey,
    public: [u8; 32],
}

impl Keypair {
    pub fn generate() -> Self {
        let secret = X25519::genkey();
        let public = X25519::pubkey(&secret);
        Keypair { secret, public }
    }

    pub fn from_secret(bytes: [u8; 32]) -> Self {
        let secret = SecretKey::from(bytes);
        let public = X25519::pubkey(&secret);
        Keypair { secret, public }
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The secret scalar, for writing the key file; zeroed when dropped.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.secret.to_bytes()
    }

    fn secret_copy(&self) -> SecretKey {
        self.secret.clone()
    }
}

impl Clone for Keypair {
    fn clone(&self) -> Self {
        Keypair {
            secret: self.secret_copy(),
            public: self.public,
        }
    }
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keypair(public={})",
            crate::ids::hex_encode(&self.public)
        )
    }
}

/// `chappe/1 || exporter`: binds the handshake to one QUIC connection.
pub fn prologue(exporter: &[u8; EXPORTER_LEN]) -> [u8; 8 + EXPORTER_LEN] {
    let mut p = [0u8; 8 + EXPORTER_LEN];
    let (alpn, rest) = p.split_at_mut(8);
    alpn.copy_from_slice(ALPN);
    rest.copy_from_slice(exporter);
    p
}

/// What both sides know once a handshake completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Established {
    /// The Noise handshake hash: a unique name for this authenticated session.
    pub handshake_hash: [u8; 32],
    /// What the peer said about itself.
    pub peer_hello: Hello,
}

/// The handshake state every wrapper below starts from. The prologue is a
/// parameter (the wrappers pass [`prologue`]) so that the published Noise
/// vectors, whose prologues are arbitrary, run through this same function.
fn build(
    pattern: noise_protocol::patterns::HandshakePattern,
    initiator: bool,
    prologue: &[u8],
    s: Option<&Keypair>,
    rs: Option<[u8; 32]>,
) -> State {
    let mut b = HandshakeStateBuilder::<X25519>::new();
    b.set_pattern(pattern)
        .set_is_initiator(initiator)
        .set_prologue(prologue);
    if let Some(s) = s {
        b.set_s(s.secret_copy());
    }
    if let Some(rs) = rs {
        b.set_rs(rs);
    }
    #[cfg(test)]
    if let Some(e) = fixed_ephemeral::take() {
        b.set_e(e);
    }
    b.build_handshake_state()
}

/// Test builds only: ephemeral keys queued for the next [`build`] calls on
/// this thread, so that a handshake can be checked byte for byte against
/// published vectors. Outside `cargo test` of this crate the module does not
/// exist, and every ephemeral key is fresh from the OS RNG.
#[cfg(test)]
mod fixed_ephemeral {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::SecretKey;

    thread_local! {
        static NEXT: RefCell<VecDeque<[u8; 32]>> = const { RefCell::new(VecDeque::new()) };
    }

    /// The next state built on this thread uses `secret` as its ephemeral key.
    pub fn push(secret: [u8; 32]) {
        NEXT.with(|next| next.borrow_mut().push_back(secret));
    }

    pub fn take() -> Option<SecretKey> {
        NEXT.with(|next| next.borrow_mut().pop_front())
            .map(SecretKey::from)
    }
}

fn write(hs: &mut State, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    if hs.completed() || !hs.is_write_turn() {
        return Err(HandshakeError::State);
    }
    hs.write_message_vec(payload).map_err(map_err)
}

fn read(hs: &mut State, msg: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    if hs.completed() || hs.is_write_turn() {
        return Err(HandshakeError::State);
    }
    if msg.len() > MAX_HANDSHAKE_MSG {
        return Err(HandshakeError::TooLong);
    }
    if msg.len() < hs.get_next_message_overhead() {
        return Err(HandshakeError::TooShort);
    }
    hs.read_message_vec(msg).map_err(map_err)
}

fn read_hello(hs: &mut State, msg: &[u8]) -> Result<Hello, HandshakeError> {
    let hello = Hello::decode(&read(hs, msg)?)?;
    if hello.version != PROTOCOL_VERSION {
        return Err(HandshakeError::UnsupportedVersion(hello.version));
    }
    Ok(hello)
}

fn established(hs: &State, peer_hello: Hello) -> Result<Established, HandshakeError> {
    if !hs.completed() {
        return Err(HandshakeError::State);
    }
    let handshake_hash = hs
        .get_hash()
        .try_into()
        .map_err(|_| HandshakeError::State)?;
    Ok(Established {
        handshake_hash,
        peer_hello,
    })
}

// ---- mailbox owner: Noise XK, the client initiates ------------------------

/// Owner side after sending message 1 (`-> e, es`), waiting for message 2.
pub struct OwnerInitiator {
    hs: State,
}

impl OwnerInitiator {
    /// Starts an XK handshake to the relay whose static key is pinned.
    pub fn start(
        owner: &Keypair,
        relay_key: &[u8; 32],
        exporter: &[u8; EXPORTER_LEN],
        hello: &Hello,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut hs = build(
            noise_xk(),
            true,
            &prologue(exporter),
            Some(owner),
            Some(*relay_key),
        );
        let msg1 = write(&mut hs, &hello.encode())?;
        Ok((OwnerInitiator { hs }, msg1))
    }

    /// Reads message 2 (`<- e, ee`), which only the pinned relay can produce,
    /// and writes message 3 (`-> s, se`), which reveals and proves the owner key.
    pub fn finish(mut self, msg2: &[u8]) -> Result<(Vec<u8>, Established), HandshakeError> {
        let relay_hello = read_hello(&mut self.hs, msg2)?;
        let msg3 = write(&mut self.hs, &[])?;
        let est = established(&self.hs, relay_hello)?;
        Ok((msg3, est))
    }
}

/// Relay side of XK after reading message 1.
pub struct OwnerResponder {
    hs: State,
    client_hello: Hello,
}

impl OwnerResponder {
    pub fn read_request(
        relay: &Keypair,
        exporter: &[u8; EXPORTER_LEN],
        msg1: &[u8],
    ) -> Result<Self, HandshakeError> {
        let mut hs = build(noise_xk(), false, &prologue(exporter), Some(relay), None);
        let client_hello = read_hello(&mut hs, msg1)?;
        Ok(OwnerResponder { hs, client_hello })
    }

    pub fn client_hello(&self) -> &Hello {
        &self.client_hello
    }

    /// Writes message 2.
    pub fn respond(
        mut self,
        hello: &Hello,
    ) -> Result<(OwnerAwaitingFinal, Vec<u8>), HandshakeError> {
        let msg2 = write(&mut self.hs, &hello.encode())?;
        Ok((
            OwnerAwaitingFinal {
                hs: self.hs,
                client_hello: self.client_hello,
            },
            msg2,
        ))
    }
}

/// Relay side of XK waiting for message 3, the owner's static key.
pub struct OwnerAwaitingFinal {
    hs: State,
    client_hello: Hello,
}

impl OwnerAwaitingFinal {
    /// Reads message 3; only now is the owner authenticated.
    pub fn read_final(mut self, msg3: &[u8]) -> Result<(OwnerKey, Established), HandshakeError> {
        read(&mut self.hs, msg3)?;
        let owner = self.hs.get_rs().ok_or(HandshakeError::State)?;
        let est = established(&self.hs, self.client_hello)?;
        Ok((OwnerKey(owner), est))
    }
}

// ---- anonymous sender: Noise NK, no client static key ----------------------

/// Sender side after message 1 (`-> e, es`).
pub struct SenderInitiator {
    hs: State,
}

impl SenderInitiator {
    pub fn start(
        relay_key: &[u8; 32],
        exporter: &[u8; EXPORTER_LEN],
        hello: &Hello,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut hs = build(
            noise_nk(),
            true,
            &prologue(exporter),
            None,
            Some(*relay_key),
        );
        let msg1 = write(&mut hs, &hello.encode())?;
        Ok((SenderInitiator { hs }, msg1))
    }

    /// Reads message 2 (`<- e, ee`): proof that the pinned relay is live here.
    pub fn finish(mut self, msg2: &[u8]) -> Result<Established, HandshakeError> {
        let relay_hello = read_hello(&mut self.hs, msg2)?;
        established(&self.hs, relay_hello)
    }
}

/// Relay side of NK after reading message 1.
pub struct SenderResponder {
    hs: State,
    client_hello: Hello,
}

impl SenderResponder {
    pub fn read_request(
        relay: &Keypair,
        exporter: &[u8; EXPORTER_LEN],
        msg1: &[u8],
    ) -> Result<Self, HandshakeError> {
        let mut hs = build(noise_nk(), false, &prologue(exporter), Some(relay), None);
        let client_hello = read_hello(&mut hs, msg1)?;
        Ok(SenderResponder { hs, client_hello })
    }

    pub fn client_hello(&self) -> &Hello {
        &self.client_hello
    }

    pub fn respond(mut self, hello: &Hello) -> Result<(Vec<u8>, Established), HandshakeError> {
        let msg2 = write(&mut self.hs, &hello.encode())?;
        let est = established(&self.hs, self.client_hello)?;
        Ok((msg2, est))
    }
}

#[cfg(test)]
mod vectors;

#[cfg(test)]
mod tests {
    use super::*;

    fn xk(
        exporter_client: [u8; 32],
        exporter_relay: [u8; 32],
    ) -> Result<(OwnerKey, Established, Established), HandshakeError> {
        let relay = Keypair::generate();
        let owner = Keypair::generate();
        let (init, m1) =
            OwnerInitiator::start(&owner, &relay.public(), &exporter_client, &Hello::default())?;
        let resp = OwnerResponder::read_request(&relay, &exporter_relay, &m1)?;
        let (wait, m2) = resp.respond(&Hello::default())?;
        let (m3, est_c) = init.finish(&m2)?;
        let (key, est_r) = wait.read_final(&m3)?;
        assert_eq!(key, OwnerKey(owner.public()));
        Ok((key, est_c, est_r))
    }

    #[test]
    fn xk_completes_with_matching_hashes() {
        let (_, c, r) = xk([1; 32], [1; 32]).unwrap();
        assert_eq!(c.handshake_hash, r.handshake_hash);
    }

    #[test]
    fn xk_bound_to_connection() {
        assert_eq!(xk([1; 32], [2; 32]).err(), Some(HandshakeError::Decrypt));
    }

    #[test]
    fn nk_wrong_relay_key_fails() {
        let relay = Keypair::generate();
        let other = Keypair::generate();
        let (_, m1) = SenderInitiator::start(&other.public(), &[0; 32], &Hello::default()).unwrap();
        assert_eq!(
            SenderResponder::read_request(&relay, &[0; 32], &m1).err(),
            Some(HandshakeError::Decrypt)
        );
    }

    #[test]
    fn nk_completes() {
        let relay = Keypair::generate();
        let (init, m1) =
            SenderInitiator::start(&relay.public(), &[3; 32], &Hello::default()).unwrap();
        let resp = SenderResponder::read_request(&relay, &[3; 32], &m1).unwrap();
        let (m2, r) = resp.respond(&Hello::default()).unwrap();
        let c = init.finish(&m2).unwrap();
        assert_eq!(c.handshake_hash, r.handshake_hash);
    }

    #[test]
    fn short_and_long_messages_are_errors_not_panics() {
        let relay = Keypair::generate();
        for len in [0, 1, 31, 32, 47, MAX_HANDSHAKE_MSG + 1] {
            let msg = vec![0u8; len];
            assert!(SenderResponder::read_request(&relay, &[0; 32], &msg).is_err());
            assert!(OwnerResponder::read_request(&relay, &[0; 32], &msg).is_err());
        }
    }

    #[test]
    fn low_order_ephemeral_is_refused() {
        let relay = Keypair::generate();
        let mut msg = vec![0u8; 48 + 5];
        msg[0] = 1; // the point 1 is low order: es is all zeros
        assert_eq!(
            OwnerResponder::read_request(&relay, &[0; 32], &msg).err(),
            Some(HandshakeError::NonContributory)
        );
    }

    #[test]
    fn version_mismatch() {
        let relay = Keypair::generate();
        let (_, m1) =
            SenderInitiator::start(&relay.public(), &[0; 32], &Hello { version: 2 }).unwrap();
        assert_eq!(
            SenderResponder::read_request(&relay, &[0; 32], &m1).err(),
            Some(HandshakeError::UnsupportedVersion(2))
        );
    }
}
