//! Sealed envelopes: the end-to-end layer the relay carries but cannot read.
//!
//! Each mailbox has its own X-Wing key pair ([`MailboxKeyPair`]); its public
//! half is printed on the mailbox's contact card. A sender encrypts to it with
//! HPKE (RFC 9180) in base mode, suite:
//!
//! | | |
//! | --- | --- |
//! | KEM | X-Wing (ML-KEM-768 + X25519), id `0x647a` |
//! | KDF | HKDF-SHA256, id `0x0001` |
//! | AEAD | ChaCha20-Poly1305, id `0x0003` |
//!
//! Base mode (no HPKE sender authentication) because X-Wing has none; the
//! sender is authenticated *inside* the ciphertext instead, by its identity's
//! certificate and the sender key's signature, which only the recipient sees.
//! The relay thus learns nothing about who wrote an envelope.
//!
//! # Envelope (what the relay stores)
//!
//! | offset | length | field |
//! | -----: | -----: | ----- |
//! | 0 | 1120 | `enc`, the X-Wing encapsulation |
//! | 1120 | `B − 1120` | HPKE ciphertext of the plaintext below, including the 16-byte Poly1305 tag at its end |
//!
//! `B`, the total length, is one of [`BUCKETS`]; [`seal`] picks the smallest
//! that fits. HPKE `info` is the 17 ASCII bytes `"chappe/1 envelope"`
//! followed by the 32-byte send id (so an envelope cannot be replayed into
//! another mailbox of the same owner key); `aad` is empty. One envelope is
//! one single-shot HPKE seal (sequence number 0).
//!
//! # Plaintext, version 1 (`B − 1136` bytes)
//!
//! Integers are big-endian.
//!
//! | offset | length | field |
//! | -----: | -----: | ----- |
//! | 0 | 1 | version, `0x01` |
//! | 1 | 16 | message id, random |
//! | 17 | 8 | timestamp, Unix seconds, u64, set by the sender |
//! | 25 | 32 | sender identity public key (Ed25519) |
//! | 57 | 112 | sender certificate (layout in [`crate::identity`]) |
//! | 169 | 64 | envelope signature by the certified sender key (Ed25519) |
//! | 233 | 4 | body length `L`, u32 |
//! | 237 | `L` | body |
//! | 237 + `L` | rest | padding, all zero |
//!
//! So the fixed overhead is 1120 + 16 + 237 = [`OVERHEAD`] = 1373 bytes and the
//! largest body per bucket is:
//!
//! | bucket | largest body |
//! | -----: | -----: |
//! | 1024 | none (too small for a v1 envelope) |
//! | 2048 | 675 |
//! | 4096 | 2723 |
//! | 16384 | 15011 |
//! | 65536 | 64163 ([`MAX_BODY`]) |
//!
//! The envelope signature covers, with nothing between the parts:
//!
//! ```text
//! "chappe/1 envelope signature"   27 bytes of ASCII, the domain label
//! version                          1   (0x01)
//! sender identity public key      32
//! recipient X-Wing public key   1216
//! send id                         32
//! message id                      16
//! timestamp                        8   (u64, big-endian)
//! body                             L   (last, so its length is implied)
//! ```
//!
//! Binding the recipient key and send id means a recipient cannot take a
//! signed message and re-seal it to a third party as if the sender had written
//! to them; binding the identity key means no other identity can certify the
//! same sender key and claim the message (Ed25519 does not bind signer
//! identity to a statement on its own).
//!
//! # Opening
//!
//! [`open`] accepts an envelope only if, in this order: its length is a
//! bucket of at least [`OVERHEAD`] bytes; the X25519 share in `enc` (its
//! last 32 bytes) is not a low-order point ([`is_low_order_x25519`]), so
//! X-Wing's X25519 part contributes to the key; HPKE decryption succeeds; the
//! version is 1; the identity and sender keys are valid, not small-order
//! points; the body length fits; every padding byte is zero; the certificate
//! verifies under the identity key and covers the message timestamp; and the
//! signature verifies (strict Ed25519). Bodies padded to a larger bucket than
//! necessary are accepted: padding up is how a client hides a size class.
//!
//! The timestamp is the sender's claim. A recipient that wants to bound it
//! against its own clock (for example to spot a leaked, expired sender key
//! being used with a back-dated timestamp) compares [`Opened::timestamp`]
//! with the time the envelope arrived.

use std::fmt;

use chappe_proto::SendId;
use chappe_proto::envelope::{BUCKETS, MAX_CIPHERTEXT, bucket_for};
use ed25519_dalek::{Signature, Signer as _};
use hpke::kem::XWing;
use hpke::{Deserializable as _, Kem as _, OpModeR, OpModeS, Serializable as _};
use rand::RngCore as _;
use rand::rngs::OsRng;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::identity::{
    CERT_LEN, CertError, Identity, IdentityKey, KEY_LEN, SIGNATURE_LEN, SenderCertificate, be_u64,
};

type Kdf = hpke::kdf::HkdfSha256;
type Aead = crate::aead::ChaCha20Poly1305;

/// Version byte of the plaintext layout described in the module docs.
pub const VERSION: u8 = 1;
/// Length of the X-Wing encapsulation at the start of every envelope.
pub const ENC_LEN: usize = 1120;
/// Length of the Poly1305 tag at the end of every envelope.
pub const TAG_LEN: usize = 16;
/// Length of an X-Wing public key, as printed on contact cards.
pub const MAILBOX_PUBLIC_KEY_LEN: usize = 1216;
/// Length of an X-Wing secret key (a seed from which the pair is derived).
pub const MAILBOX_SECRET_KEY_LEN: usize = 32;
/// Length of a message id.
pub const MESSAGE_ID_LEN: usize = 16;
/// Plaintext bytes before the body.
pub const HEADER_LEN: usize = 1 + MESSAGE_ID_LEN + 8 + KEY_LEN + CERT_LEN + SIGNATURE_LEN + 4;
/// Envelope bytes that are not body: encapsulation, tag and header.
pub const OVERHEAD: usize = ENC_LEN + TAG_LEN + HEADER_LEN;
/// The largest body that fits the largest bucket.
pub const MAX_BODY: usize = MAX_CIPHERTEXT - OVERHEAD;

/// HPKE `info` prefix; the send id follows.
const INFO_LABEL: &[u8] = b"chappe/1 envelope";
/// Domain label of the sender key's signature.
const SIG_LABEL: &[u8] = b"chappe/1 envelope signature";

/// Why an envelope could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("body of {len} bytes exceeds the largest envelope body of {MAX_BODY} bytes")]
    TooLarge { len: usize },
    /// Renew the identity's certificate ([`Identity::renew_if_needed`]) and
    /// seal again: recipients would reject this envelope.
    #[error("sender certificate is not valid now: {0}")]
    Certificate(CertError),
    #[error("HPKE encryption failed: {0}")]
    Hpke(hpke::HpkeError),
}

/// Why an envelope was refused. None of these says which key or byte was
/// wrong beyond what the envelope itself shows, and none is a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("envelope length {len} is not a bucket that can hold a v1 envelope")]
    BadSize { len: usize },
    /// The X25519 share in the encapsulation is a low-order point, so X-Wing's
    /// X25519 part would contribute nothing to the key.
    #[error("envelope's X25519 share is a low-order point (non-contributory)")]
    NonContributory,
    /// Wrong mailbox key or send id, or the envelope was altered.
    #[error("envelope does not decrypt with this mailbox key and send id")]
    Decrypt,
    #[error("envelope plaintext version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error("envelope plaintext is truncated")]
    Truncated,
    #[error("envelope body length {len} exceeds the {room} bytes available")]
    BadBodyLength { len: u64, room: usize },
    #[error("envelope padding is not all zero")]
    NonZeroPadding,
    #[error("envelope names an invalid or weak sender identity key")]
    BadIdentityKey,
    #[error("envelope sender certificate is invalid: {0}")]
    Certificate(CertError),
    #[error("envelope signature does not verify")]
    BadSignature,
}

/// The public half of a mailbox's X-Wing key pair: what senders encrypt to.
///
/// The 1216 bytes are the ML-KEM-768 encapsulation key (bytes 0..1184:
/// 1152 bytes of 768 packed 12-bit coefficients, then the 32-byte seed
/// `rho`) followed by the X25519 public key (bytes 1184..1216), the order
/// of draft-connolly-cfrg-xwing-kem-06 and of the `x-wing` crate.
#[derive(Clone, PartialEq, Eq)]
pub struct MailboxPublicKey(<XWing as hpke::Kem>::PublicKey);

impl MailboxPublicKey {
    /// Parses the 1216-byte X-Wing encoding. Refuses an ML-KEM half that
    /// fails the FIPS 203 §7.2 encapsulation-key check (a coefficient that
    /// is not below q = 3329) and an X25519 half that is a low-order point
    /// ([`is_low_order_x25519`]): encrypting to either would leave that half
    /// contributing nothing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let (ml_kem, x25519) = bytes
            .split_at_checked(ML_KEM_PUBLIC_KEY_LEN)
            .and_then(|(m, x)| Some((m, <&[u8; X25519_LEN]>::try_from(x).ok()?)))
            .ok_or(KeyError::BadLength {
                expected: MAILBOX_PUBLIC_KEY_LEN,
                got: bytes.len(),
            })?;
        if !ml_kem_coefficients_reduced(ml_kem) {
            return Err(KeyError::MlKemCoefficient);
        }
        if is_low_order_x25519(x25519) {
            return Err(KeyError::LowOrderX25519);
        }
        // The crate repeats the ML-KEM check; it has no other reason to refuse.
        <XWing as hpke::Kem>::PublicKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| KeyError::MlKemCoefficient)
    }

    pub fn to_bytes(&self) -> [u8; MAILBOX_PUBLIC_KEY_LEN] {
        let mut out = [0u8; MAILBOX_PUBLIC_KEY_LEN];
        out.copy_from_slice(&self.0.to_bytes());
        out
    }
}

impl fmt::Debug for MailboxPublicKey {
    // 1216 bytes of hex help nobody; a short digest tells keys apart.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = Sha256::digest(self.to_bytes());
        write!(f, "MailboxPublicKey(sha256:")?;
        for b in d.iter().take(6) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Why a mailbox key could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("mailbox key must be {expected} bytes, got {got}")]
    BadLength { expected: usize, got: usize },
    #[error("mailbox key's ML-KEM-768 half has a coefficient not below q = 3329 (FIPS 203 §7.2)")]
    MlKemCoefficient,
    #[error("mailbox key's X25519 half is a low-order point")]
    LowOrderX25519,
    #[error("mailbox secret key was refused")]
    Invalid,
}

/// Length of the ML-KEM-768 encapsulation key at the start of an X-Wing
/// public key.
pub const ML_KEM_PUBLIC_KEY_LEN: usize = 1184;
/// Bytes of packed 12-bit coefficients at the start of the ML-KEM-768
/// encapsulation key (3 polynomials of 256 coefficients); `rho` follows.
const ML_KEM_T_LEN: usize = 1152;
/// ML-KEM's modulus q.
const ML_KEM_Q: u16 = 3329;
/// Length of an X25519 public key (and of the X25519 share in `enc`).
const X25519_LEN: usize = 32;
/// Where the X25519 share starts in the X-Wing encapsulation (after the
/// 1088-byte ML-KEM-768 ciphertext).
const ENC_X25519_OFFSET: usize = ENC_LEN - X25519_LEN;

/// FIPS 203 §7.2 modulus check, `ByteEncode12(ByteDecode12(t)) == t`:
/// every 12-bit coefficient, read as ByteDecode12 does (three bytes
/// `b0 b1 b2` hold `b0 | (b1 & 0x0f) << 8` and `b1 >> 4 | b2 << 4`), is
/// below q. `ek` is the whole 1184-byte encapsulation key.
fn ml_kem_coefficients_reduced(ek: &[u8]) -> bool {
    let Some(t) = ek.get(..ML_KEM_T_LEN) else {
        return false;
    };
    t.chunks_exact(3).all(|c| match *c {
        [b0, b1, b2] => {
            let d1 = u16::from(b0) | (u16::from(b1 & 0x0f) << 8);
            let d2 = u16::from(b1 >> 4) | (u16::from(b2) << 4);
            d1 < ML_KEM_Q && d2 < ML_KEM_Q
        }
        _ => false,
    })
}

/// The X25519 u-coordinates of the points of order 1, 2, 4 and 8 on
/// Curve25519 and its twist, as 32 little-endian bytes with bit 255 clear:
/// 0, 1, the two points of order 8, p − 1, and the non-canonical p and
/// p + 1 (p = 2^255 − 19). No other value below 2^255 is of low order.
const X25519_LOW_ORDER: [[u8; 32]; 7] = [
    [0; 32],
    {
        let mut one = [0; 32];
        one[0] = 1;
        one
    },
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    p_plus(-1),
    p_plus(0),
    p_plus(1),
];

/// `p + d` as 32 little-endian bytes, for `d` in −19..=18.
const fn p_plus(d: i16) -> [u8; 32] {
    let mut out = [0xff; 32];
    out[0] = (0xed + d) as u8;
    out[31] = 0x7f;
    out
}

/// Whether a 32-byte X25519 public value is a point of low order (order 1,
/// 2, 4 or 8), ignoring bit 255 as X25519 does. For these and only these,
/// X25519 with any clamped scalar gives the all-zero output: a clamped
/// scalar is 8·m with 0 < m < 2^252, below both large prime orders (ℓ on
/// the curve, about 2^253 on the twist), so it kills the low-order part of
/// a point and never the rest.
pub fn is_low_order_x25519(u: &[u8; 32]) -> bool {
    let mut masked = *u;
    masked[31] &= 0x7f;
    X25519_LOW_ORDER.contains(&masked)
}

/// A mailbox's X-Wing key pair, held by its owner. The secret half is wiped
/// from memory on drop.
#[derive(Clone)]
pub struct MailboxKeyPair {
    secret: <XWing as hpke::Kem>::PrivateKey,
    public: MailboxPublicKey,
}

impl MailboxKeyPair {
    /// A fresh key pair from the operating system's random source. One per
    /// mailbox, so that a mailbox given up (or a key leaked) exposes only the
    /// envelopes sent to that one.
    pub fn generate() -> Self {
        let (secret, public) = XWing::gen_keypair();
        Self {
            secret,
            public: MailboxPublicKey(public),
        }
    }

    /// Restores a pair from its 32-byte secret seed; the public key is derived
    /// from it, so only the seed needs storing.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() != MAILBOX_SECRET_KEY_LEN {
            return Err(KeyError::BadLength {
                expected: MAILBOX_SECRET_KEY_LEN,
                got: bytes.len(),
            });
        }
        let secret =
            <XWing as hpke::Kem>::PrivateKey::from_bytes(bytes).map_err(|_| KeyError::Invalid)?;
        let public = MailboxPublicKey(XWing::sk_to_pk(&secret));
        Ok(Self { secret, public })
    }

    /// The seed to store, in a wiping container.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; MAILBOX_SECRET_KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; MAILBOX_SECRET_KEY_LEN]);
        out.copy_from_slice(&Zeroizing::new(self.secret.to_bytes()));
        out
    }

    pub fn public_key(&self) -> &MailboxPublicKey {
        &self.public
    }
}

impl fmt::Debug for MailboxKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxKeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// What a recipient learns from a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Random, chosen by the sender: lets the recipient drop duplicates that
    /// at-least-once delivery produces.
    pub message_id: [u8; MESSAGE_ID_LEN],
    /// The sender's clock at sealing, Unix seconds; the certificate was
    /// checked against it.
    pub timestamp: u64,
    /// Who signed, verified through the certificate; compare its fingerprint
    /// with the one you expect for this conversation.
    pub sender_identity: IdentityKey,
    pub body: Vec<u8>,
}

/// Seals `body` from `sender` to the mailbox with public key `recipient` and
/// send id `send_id`, at time `now` (Unix seconds, used as the message
/// timestamp). The result is exactly one bucket long, the smallest that fits.
///
/// Fails rather than produce an envelope the recipient would reject: when the
/// sender certificate does not cover `now`, or the body exceeds [`MAX_BODY`].
pub fn seal(
    sender: &Identity,
    recipient: &MailboxPublicKey,
    send_id: &SendId,
    body: &[u8],
    now: u64,
) -> Result<Vec<u8>, SealError> {
    sender
        .certificate()
        .verify(&sender.public_key(), now)
        .map_err(SealError::Certificate)?;
    let mut message_id = [0u8; MESSAGE_ID_LEN];
    OsRng.fill_bytes(&mut message_id);
    let signature = sign(sender, recipient, send_id, &message_id, now, body);
    let pt = encode_plaintext(sender, &message_id, now, &signature, body)?;
    hpke_seal(recipient, send_id, &pt)
}

/// Opens an envelope addressed to the mailbox `recipient` under `send_id`;
/// see the module docs for every check, in order.
pub fn open(
    recipient: &MailboxKeyPair,
    send_id: &SendId,
    envelope: &[u8],
) -> Result<Opened, OpenError> {
    let len = envelope.len();
    if len < OVERHEAD || !BUCKETS.contains(&len) {
        return Err(OpenError::BadSize { len });
    }
    let (enc, ct) = envelope
        .split_at_checked(ENC_LEN)
        .ok_or(OpenError::BadSize { len })?;
    // X-Wing's X25519 would give all zeroes for a low-order share, leaving
    // the key to ML-KEM alone; the `hpke` crate's X-Wing accepts that, so
    // the share is checked here, before decapsulation.
    let share = enc
        .get(ENC_X25519_OFFSET..)
        .and_then(|x| <&[u8; X25519_LEN]>::try_from(x).ok())
        .ok_or(OpenError::BadSize { len })?;
    if is_low_order_x25519(share) {
        return Err(OpenError::NonContributory);
    }
    let enc = <XWing as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| OpenError::Decrypt)?;
    let pt = Zeroizing::new(
        hpke::single_shot_open::<Aead, Kdf, XWing>(
            &OpModeR::Base,
            &recipient.secret,
            &enc,
            &info(send_id),
            ct,
            &[],
        )
        .map_err(|_| OpenError::Decrypt)?,
    );
    let p = parse_plaintext(&pt)?;
    p.certificate
        .verify(&p.identity, p.timestamp)
        .map_err(OpenError::Certificate)?;
    let msg = signed_message(
        &p.identity,
        &recipient.public,
        send_id,
        &p.message_id,
        p.timestamp,
        p.body,
    );
    p.certificate
        .sender_verifying_key()
        .verify_strict(&msg, &p.signature)
        .map_err(|_| OpenError::BadSignature)?;
    Ok(Opened {
        message_id: p.message_id,
        timestamp: p.timestamp,
        sender_identity: p.identity,
        body: p.body.to_vec(),
    })
}

/// The largest body an envelope of `bucket` bytes can carry, if any.
pub fn max_body_for(bucket: usize) -> Option<usize> {
    if BUCKETS.contains(&bucket) {
        bucket.checked_sub(OVERHEAD)
    } else {
        None
    }
}

fn info(send_id: &SendId) -> Vec<u8> {
    let mut info = Vec::with_capacity(INFO_LABEL.len() + send_id.as_bytes().len());
    info.extend_from_slice(INFO_LABEL);
    info.extend_from_slice(send_id.as_bytes());
    info
}

fn signed_message(
    identity: &IdentityKey,
    recipient: &MailboxPublicKey,
    send_id: &SendId,
    message_id: &[u8; MESSAGE_ID_LEN],
    timestamp: u64,
    body: &[u8],
) -> Zeroizing<Vec<u8>> {
    let mut msg = Zeroizing::new(Vec::with_capacity(
        SIG_LABEL.len()
            + 1
            + KEY_LEN
            + MAILBOX_PUBLIC_KEY_LEN
            + 32
            + MESSAGE_ID_LEN
            + 8
            + body.len(),
    ));
    msg.extend_from_slice(SIG_LABEL);
    msg.push(VERSION);
    msg.extend_from_slice(&identity.to_bytes());
    msg.extend_from_slice(&recipient.to_bytes());
    msg.extend_from_slice(send_id.as_bytes());
    msg.extend_from_slice(message_id);
    msg.extend_from_slice(&timestamp.to_be_bytes());
    msg.extend_from_slice(body);
    msg
}

fn sign(
    sender: &Identity,
    recipient: &MailboxPublicKey,
    send_id: &SendId,
    message_id: &[u8; MESSAGE_ID_LEN],
    timestamp: u64,
    body: &[u8],
) -> Signature {
    let msg = signed_message(
        &sender.public_key(),
        recipient,
        send_id,
        message_id,
        timestamp,
        body,
    );
    sender.sender_signing_key().sign(&msg)
}

/// Lays out the plaintext, padded so that the envelope fills the smallest
/// bucket that holds it.
fn encode_plaintext(
    sender: &Identity,
    message_id: &[u8; MESSAGE_ID_LEN],
    timestamp: u64,
    signature: &Signature,
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let too_large = SealError::TooLarge { len: body.len() };
    let bucket = OVERHEAD
        .checked_add(body.len())
        .and_then(bucket_for)
        .ok_or(too_large.clone())?;
    let body_len = u32::try_from(body.len()).map_err(|_| too_large)?;
    let mut pt = Zeroizing::new(Vec::with_capacity(bucket - ENC_LEN - TAG_LEN));
    pt.push(VERSION);
    pt.extend_from_slice(message_id);
    pt.extend_from_slice(&timestamp.to_be_bytes());
    pt.extend_from_slice(&sender.public_key().to_bytes());
    pt.extend_from_slice(&sender.certificate().to_bytes());
    pt.extend_from_slice(&signature.to_bytes());
    pt.extend_from_slice(&body_len.to_be_bytes());
    pt.extend_from_slice(body);
    pt.resize(bucket - ENC_LEN - TAG_LEN, 0);
    Ok(pt)
}

fn hpke_seal(
    recipient: &MailboxPublicKey,
    send_id: &SendId,
    pt: &[u8],
) -> Result<Vec<u8>, SealError> {
    let (enc, ct) = hpke::single_shot_seal::<Aead, Kdf, XWing>(
        &OpModeS::Base,
        &recipient.0,
        &info(send_id),
        pt,
        &[],
    )
    .map_err(SealError::Hpke)?;
    let mut out = Vec::with_capacity(ENC_LEN + ct.len());
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ct);
    Ok(out)
}

struct Parsed<'a> {
    message_id: [u8; MESSAGE_ID_LEN],
    timestamp: u64,
    identity: IdentityKey,
    certificate: SenderCertificate,
    signature: Signature,
    body: &'a [u8],
}

/// Bounds-checked reads off the front of a byte string.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], OpenError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(OpenError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], OpenError> {
        self.take(N)?.try_into().map_err(|_| OpenError::Truncated)
    }
}

fn parse_plaintext(pt: &[u8]) -> Result<Parsed<'_>, OpenError> {
    let mut r = Reader(pt);
    let [version] = r.array::<1>()?;
    if version != VERSION {
        return Err(OpenError::UnsupportedVersion(version));
    }
    let message_id = r.array::<MESSAGE_ID_LEN>()?;
    let timestamp = be_u64(r.take(8)?).ok_or(OpenError::Truncated)?;
    let identity =
        IdentityKey::from_bytes(&r.array::<KEY_LEN>()?).map_err(|_| OpenError::BadIdentityKey)?;
    let certificate =
        SenderCertificate::from_bytes(r.take(CERT_LEN)?).map_err(OpenError::Certificate)?;
    let signature = Signature::from_bytes(&r.array::<SIGNATURE_LEN>()?);
    let len = u32::from_be_bytes(r.array::<4>()?);
    let room = r.0.len();
    let body = usize::try_from(len)
        .ok()
        .and_then(|l| r.take(l).ok())
        .ok_or(OpenError::BadBodyLength {
            len: u64::from(len),
            room,
        })?;
    if r.0.iter().fold(0u8, |acc, b| acc | b) != 0 {
        return Err(OpenError::NonZeroPadding);
    }
    Ok(Parsed {
        message_id,
        timestamp,
        identity,
        certificate,
        signature,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DEFAULT_CERT_LIFETIME;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;

    struct World {
        alice: Identity,
        bob: MailboxKeyPair,
        send_id: SendId,
    }

    fn world() -> World {
        World {
            alice: Identity::generate(NOW),
            bob: MailboxKeyPair::generate(),
            send_id: SendId::random(),
        }
    }

    /// Seals with every field chosen by the test and no sender-side checks:
    /// a stand-in for a malicious or buggy sender.
    fn seal_raw(
        sender: &Identity,
        recipient: &MailboxPublicKey,
        sig_send_id: &SendId,
        info_send_id: &SendId,
        body: &[u8],
        timestamp: u64,
        edit: impl FnOnce(&mut Vec<u8>),
    ) -> Vec<u8> {
        let message_id = [7u8; MESSAGE_ID_LEN];
        let signature = sign(sender, recipient, sig_send_id, &message_id, timestamp, body);
        let mut pt = encode_plaintext(sender, &message_id, timestamp, &signature, body).unwrap();
        edit(&mut pt);
        hpke_seal(recipient, info_send_id, &pt).unwrap()
    }

    #[test]
    fn layout_constants() {
        assert_eq!(HEADER_LEN, 237);
        assert_eq!(OVERHEAD, 1373);
        assert_eq!(MAX_BODY, 64163);
        assert_eq!(max_body_for(1024), None);
        assert_eq!(max_body_for(2048), Some(675));
        assert_eq!(max_body_for(4096), Some(2723));
        assert_eq!(max_body_for(16384), Some(15011));
        assert_eq!(max_body_for(65536), Some(64163));
        assert_eq!(max_body_for(3000), None);
        assert_eq!(<XWing as hpke::Kem>::EncappedKey::size(), ENC_LEN);
        assert_eq!(
            <XWing as hpke::Kem>::PublicKey::size(),
            MAILBOX_PUBLIC_KEY_LEN
        );
        assert_eq!(
            <XWing as hpke::Kem>::PrivateKey::size(),
            MAILBOX_SECRET_KEY_LEN
        );
    }

    #[test]
    fn round_trip() {
        let w = world();
        let env = seal(&w.alice, w.bob.public_key(), &w.send_id, b"hello", NOW + 5).unwrap();
        assert_eq!(env.len(), 2048);
        let o = open(&w.bob, &w.send_id, &env).unwrap();
        assert_eq!(o.body, b"hello");
        assert_eq!(o.timestamp, NOW + 5);
        assert_eq!(o.sender_identity, w.alice.public_key());
        let again = seal(&w.alice, w.bob.public_key(), &w.send_id, b"hello", NOW + 5).unwrap();
        assert_ne!(
            open(&w.bob, &w.send_id, &again).unwrap().message_id,
            o.message_id
        );
    }

    #[test]
    fn plaintext_layout_offsets() {
        let w = world();
        let body = b"layout";
        let message_id = [9u8; MESSAGE_ID_LEN];
        let sig = sign(
            &w.alice,
            w.bob.public_key(),
            &w.send_id,
            &message_id,
            NOW,
            body,
        );
        let pt = encode_plaintext(&w.alice, &message_id, NOW, &sig, body).unwrap();
        assert_eq!(pt.len(), 2048 - ENC_LEN - TAG_LEN);
        assert_eq!(pt[0], VERSION);
        assert_eq!(pt[1..17], message_id);
        assert_eq!(pt[17..25], NOW.to_be_bytes());
        assert_eq!(pt[25..57], w.alice.public_key().to_bytes());
        assert_eq!(pt[57..169], w.alice.certificate().to_bytes());
        assert_eq!(pt[169..233], sig.to_bytes());
        assert_eq!(pt[233..237], 6u32.to_be_bytes());
        assert_eq!(&pt[237..243], body);
        assert!(pt[243..].iter().all(|&b| b == 0));
    }

    #[test]
    fn every_bucket_boundary() {
        let w = world();
        let pk = w.bob.public_key();
        let usable: Vec<usize> = BUCKETS.iter().copied().filter(|&b| b >= OVERHEAD).collect();
        assert_eq!(usable, [2048, 4096, 16384, 65536]);
        for (i, &bucket) in usable.iter().enumerate() {
            let fit = bucket - OVERHEAD;
            let env = seal(&w.alice, pk, &w.send_id, &vec![0xAB; fit], NOW).unwrap();
            assert_eq!(env.len(), bucket, "body {fit} should just fit {bucket}");
            assert_eq!(open(&w.bob, &w.send_id, &env).unwrap().body.len(), fit);

            let over = vec![0xCD; fit + 1];
            match usable.get(i + 1) {
                Some(&next) => {
                    let env = seal(&w.alice, pk, &w.send_id, &over, NOW).unwrap();
                    assert_eq!(
                        env.len(),
                        next,
                        "body {} should overflow into {next}",
                        fit + 1
                    );
                    assert_eq!(open(&w.bob, &w.send_id, &env).unwrap().body, over);
                }
                None => assert_eq!(
                    seal(&w.alice, pk, &w.send_id, &over, NOW),
                    Err(SealError::TooLarge { len: MAX_BODY + 1 })
                ),
            }
        }
        let empty = seal(&w.alice, pk, &w.send_id, b"", NOW).unwrap();
        assert_eq!(empty.len(), 2048);
        assert_eq!(open(&w.bob, &w.send_id, &empty).unwrap().body, b"");
    }

    #[test]
    fn tampering_any_byte_fails() {
        let w = world();
        let env = seal(
            &w.alice,
            w.bob.public_key(),
            &w.send_id,
            b"do not touch",
            NOW,
        )
        .unwrap();
        for i in 0..env.len() {
            let mut t = env.clone();
            t[i] ^= 0x80;
            assert_eq!(
                open(&w.bob, &w.send_id, &t),
                Err(OpenError::Decrypt),
                "byte {i}"
            );
        }
    }

    #[test]
    fn wrong_lengths_fail() {
        let w = world();
        let env = seal(&w.alice, w.bob.public_key(), &w.send_id, b"x", NOW).unwrap();
        for len in [0, 1, ENC_LEN, 1024, OVERHEAD, 2047, 2049] {
            let mut t = env.clone();
            t.resize(len, 0);
            assert_eq!(
                open(&w.bob, &w.send_id, &t),
                Err(OpenError::BadSize { len })
            );
        }
        let mut longer = env.clone();
        longer.resize(4096, 0);
        assert_eq!(open(&w.bob, &w.send_id, &longer), Err(OpenError::Decrypt));
    }

    #[test]
    fn wrong_recipient_or_send_id_fails() {
        let w = world();
        let env = seal(&w.alice, w.bob.public_key(), &w.send_id, b"for bob", NOW).unwrap();
        let carol = MailboxKeyPair::generate();
        assert_eq!(open(&carol, &w.send_id, &env), Err(OpenError::Decrypt));
        assert_eq!(
            open(&w.bob, &SendId::random(), &env),
            Err(OpenError::Decrypt)
        );
    }

    #[test]
    fn signature_for_another_send_id_fails() {
        let w = world();
        let other = SendId::random();
        let env = seal_raw(
            &w.alice,
            w.bob.public_key(),
            &other,
            &w.send_id,
            b"hi",
            NOW,
            |_| {},
        );
        assert_eq!(open(&w.bob, &w.send_id, &env), Err(OpenError::BadSignature));
    }

    #[test]
    fn resealing_to_a_third_party_fails() {
        // Bob opens Alice's signed message and re-seals the same plaintext to
        // Carol's mailbox. The signature names Bob's key, so Carol refuses it.
        let w = world();
        let carol = MailboxKeyPair::generate();
        let carol_send = SendId::random();
        let message_id = [1u8; MESSAGE_ID_LEN];
        let sig = sign(
            &w.alice,
            w.bob.public_key(),
            &w.send_id,
            &message_id,
            NOW,
            b"to bob",
        );
        let pt = encode_plaintext(&w.alice, &message_id, NOW, &sig, b"to bob").unwrap();
        let env = hpke_seal(carol.public_key(), &carol_send, &pt).unwrap();
        assert_eq!(
            open(&carol, &carol_send, &env),
            Err(OpenError::BadSignature)
        );
        // Same mailbox key, other send id (signature still for the first one).
        let env = hpke_seal(w.bob.public_key(), &carol_send, &pt).unwrap();
        assert_eq!(
            open(&w.bob, &carol_send, &env),
            Err(OpenError::BadSignature)
        );
    }

    #[test]
    fn tampered_plaintext_fields_fail() {
        let w = world();
        let pk = w.bob.public_key();
        let open_edit = |edit: &dyn Fn(&mut Vec<u8>)| {
            let env = seal_raw(&w.alice, pk, &w.send_id, &w.send_id, b"body", NOW, |pt| {
                edit(pt)
            });
            open(&w.bob, &w.send_id, &env)
        };
        assert_eq!(open_edit(&|_| {}).map(|o| o.body), Ok(b"body".to_vec()));
        assert_eq!(
            open_edit(&|pt| pt[0] = 2),
            Err(OpenError::UnsupportedVersion(2))
        );
        assert_eq!(open_edit(&|pt| pt[1] ^= 1), Err(OpenError::BadSignature));
        assert_eq!(open_edit(&|pt| pt[24] ^= 1), Err(OpenError::BadSignature));
        assert_eq!(open_edit(&|pt| pt[237] ^= 1), Err(OpenError::BadSignature));
        assert_eq!(open_edit(&|pt| pt[200] ^= 1), Err(OpenError::BadSignature));
        assert_eq!(
            open_edit(&|pt| pt[25..57].copy_from_slice(&[0u8; 32])),
            Err(OpenError::BadIdentityKey)
        );
        assert_eq!(
            open_edit(&|pt| pt[57..89].copy_from_slice(&[0u8; 32])),
            Err(OpenError::Certificate(CertError::BadSenderKey))
        );
        assert_eq!(
            open_edit(&|pt| pt[120] ^= 1),
            Err(OpenError::Certificate(CertError::BadSignature))
        );
        let last = 2048 - ENC_LEN - TAG_LEN - 1;
        assert_eq!(
            open_edit(&|pt| pt[last] = 1),
            Err(OpenError::NonZeroPadding)
        );
        assert_eq!(open_edit(&|pt| pt[241] = 1), Err(OpenError::NonZeroPadding));
        // Body length one past, and far past, what is left.
        let room = 2048 - ENC_LEN - TAG_LEN - HEADER_LEN;
        assert_eq!(
            open_edit(&|pt| pt[233..237].copy_from_slice(&(room as u32 + 1).to_be_bytes())),
            Err(OpenError::BadBodyLength {
                len: room as u64 + 1,
                room
            })
        );
        assert_eq!(
            open_edit(&|pt| pt[233..237].copy_from_slice(&u32::MAX.to_be_bytes())),
            Err(OpenError::BadBodyLength {
                len: u64::from(u32::MAX),
                room
            })
        );
        // A shorter length turns body bytes into non-zero padding.
        assert_eq!(
            open_edit(&|pt| pt[233..237].copy_from_slice(&3u32.to_be_bytes())),
            Err(OpenError::NonZeroPadding)
        );
        // A longer one (into the zeros) changes the signed body.
        assert_eq!(
            open_edit(&|pt| pt[233..237].copy_from_slice(&5u32.to_be_bytes())),
            Err(OpenError::BadSignature)
        );
    }

    #[test]
    fn truncated_plaintext_fails() {
        for len in [0, 1, 17, 24, 56] {
            let mut pt = vec![0u8; len];
            if let Some(b) = pt.first_mut() {
                *b = VERSION;
            }
            assert_eq!(
                parse_plaintext(&pt).err(),
                Some(OpenError::Truncated),
                "len {len}"
            );
        }
    }

    #[test]
    fn expired_or_not_yet_valid_certificate_fails() {
        let w = world();
        let pk = w.bob.public_key();
        let end = NOW + DEFAULT_CERT_LIFETIME;
        for (ts, want) in [
            (
                NOW - 1,
                CertError::NotYetValid {
                    at: NOW - 1,
                    not_before: NOW,
                },
            ),
            (
                end + 1,
                CertError::Expired {
                    at: end + 1,
                    not_after: end,
                },
            ),
        ] {
            let env = seal_raw(&w.alice, pk, &w.send_id, &w.send_id, b"late", ts, |_| {});
            assert_eq!(
                open(&w.bob, &w.send_id, &env),
                Err(OpenError::Certificate(want.clone()))
            );
            assert_eq!(
                seal(&w.alice, pk, &w.send_id, b"late", ts),
                Err(SealError::Certificate(want))
            );
        }
        // Still valid at both ends of the window.
        for ts in [NOW, end] {
            let env = seal(&w.alice, pk, &w.send_id, b"edge", ts).unwrap();
            assert!(open(&w.bob, &w.send_id, &env).is_ok());
        }
        // An old envelope stays openable after the certificate has expired:
        // validity is checked at the message's timestamp.
        let mut renewed = Identity::from_toml(&w.alice.to_toml()).unwrap();
        renewed.renew(end + 10);
        let env = seal(&renewed, pk, &w.send_id, b"new key", end + 10).unwrap();
        assert_eq!(
            open(&w.bob, &w.send_id, &env).unwrap().sender_identity,
            w.alice.public_key()
        );
    }

    #[test]
    fn certificate_from_another_identity_fails() {
        let w = world();
        let mallory = Identity::generate(NOW);
        let forged = w.alice.with_certificate(&mallory, NOW, NOW + 100);
        let env = seal_raw(
            &forged,
            w.bob.public_key(),
            &w.send_id,
            &w.send_id,
            b"it's alice",
            NOW,
            |_| {},
        );
        assert_eq!(
            open(&w.bob, &w.send_id, &env),
            Err(OpenError::Certificate(CertError::BadSignature))
        );
        assert_eq!(
            seal(&forged, w.bob.public_key(), &w.send_id, b"x", NOW),
            Err(SealError::Certificate(CertError::BadSignature))
        );
    }

    #[test]
    fn identity_swap_fails() {
        // Mallory certifies Alice's sender key under Mallory's identity and
        // swaps identity and certificate in Alice's plaintext: the signature
        // names Alice's identity, so this fails.
        let w = world();
        let mallory = Identity::generate(NOW);
        let alice_sender = w.alice.certificate().sender_verifying_key();
        let cert = {
            let msg = {
                let mut m = crate::identity::CERT_LABEL.to_vec();
                m.extend_from_slice(&mallory.public_key().to_bytes());
                m.extend_from_slice(alice_sender.as_bytes());
                m.extend_from_slice(&NOW.to_be_bytes());
                m.extend_from_slice(&(NOW + 100).to_be_bytes());
                m
            };
            let sig = mallory.sign_with_identity(&msg);
            let mut b = [0u8; CERT_LEN];
            b[..32].copy_from_slice(alice_sender.as_bytes());
            b[32..40].copy_from_slice(&NOW.to_be_bytes());
            b[40..48].copy_from_slice(&(NOW + 100).to_be_bytes());
            b[48..].copy_from_slice(&sig.to_bytes());
            b
        };
        let env = seal_raw(
            &w.alice,
            w.bob.public_key(),
            &w.send_id,
            &w.send_id,
            b"mine",
            NOW,
            |pt| {
                pt[25..57].copy_from_slice(&mallory.public_key().to_bytes());
                pt[57..169].copy_from_slice(&cert);
            },
        );
        assert_eq!(open(&w.bob, &w.send_id, &env), Err(OpenError::BadSignature));
    }

    #[test]
    fn mailbox_keys_round_trip() {
        let k = MailboxKeyPair::generate();
        let back = MailboxKeyPair::from_secret_bytes(&*k.secret_bytes()).unwrap();
        assert_eq!(back.public_key(), k.public_key());
        let pk = MailboxPublicKey::from_bytes(&k.public_key().to_bytes()).unwrap();
        assert_eq!(&pk, k.public_key());
        assert_eq!(
            MailboxPublicKey::from_bytes(&[0u8; 10]),
            Err(KeyError::BadLength {
                expected: MAILBOX_PUBLIC_KEY_LEN,
                got: 10
            })
        );
        assert_eq!(
            MailboxPublicKey::from_bytes(&[0xFF; MAILBOX_PUBLIC_KEY_LEN]),
            Err(KeyError::MlKemCoefficient)
        );
        assert!(MailboxKeyPair::from_secret_bytes(&[1u8; 31]).is_err());
        assert!(!format!("{k:?}").contains(&format!("{:?}", &k.secret_bytes()[..4])));
    }

    /// Writes 12-bit coefficient `i` of the ML-KEM key as ByteEncode12 does.
    fn set_coefficient(key: &mut [u8], i: usize, v: u16) {
        let at = i / 2 * 3;
        if i.is_multiple_of(2) {
            key[at] = v as u8;
            key[at + 1] = (key[at + 1] & 0xf0) | (v >> 8) as u8;
        } else {
            key[at + 1] = (key[at + 1] & 0x0f) | ((v & 0x0f) << 4) as u8;
            key[at + 2] = (v >> 4) as u8;
        }
    }

    fn coefficient(key: &[u8], i: usize) -> u16 {
        let at = i / 2 * 3;
        let (b0, b1, b2) = (
            u16::from(key[at]),
            u16::from(key[at + 1]),
            u16::from(key[at + 2]),
        );
        if i.is_multiple_of(2) {
            b0 | (b1 & 0x0f) << 8
        } else {
            b1 >> 4 | b2 << 4
        }
    }

    #[test]
    fn mailbox_key_ml_kem_coefficients_must_be_below_q() {
        let good = MailboxKeyPair::generate().public_key().to_bytes();
        for i in [0, 1, 2, 3, 500, 767] {
            let mut k = good;
            set_coefficient(&mut k, i, 3328);
            assert_eq!(coefficient(&k, i), 3328);
            assert!(MailboxPublicKey::from_bytes(&k).is_ok(), "q - 1 at {i}");
            for v in [3329, 4095] {
                set_coefficient(&mut k, i, v);
                assert_eq!(coefficient(&k, i), v);
                assert_eq!(
                    MailboxPublicKey::from_bytes(&k),
                    Err(KeyError::MlKemCoefficient),
                    "coefficient {v} at {i}"
                );
            }
        }
        // `rho` (bytes 1152..1184) is a seed: any value goes.
        let mut k = good;
        k[ML_KEM_T_LEN..ML_KEM_PUBLIC_KEY_LEN].fill(0xFF);
        assert!(MailboxPublicKey::from_bytes(&k).is_ok());
    }

    #[test]
    fn mailbox_key_x25519_half_must_not_be_low_order() {
        let good = MailboxKeyPair::generate().public_key().to_bytes();
        assert!(!is_low_order_x25519(
            good[ML_KEM_PUBLIC_KEY_LEN..].try_into().unwrap()
        ));
        for point in X25519_LOW_ORDER {
            for top in [0x00, 0x80] {
                let mut k = good;
                k[ML_KEM_PUBLIC_KEY_LEN..].copy_from_slice(&point);
                k[MAILBOX_PUBLIC_KEY_LEN - 1] |= top;
                assert_eq!(
                    MailboxPublicKey::from_bytes(&k),
                    Err(KeyError::LowOrderX25519),
                    "{point:02x?} top bit {top:#x}"
                );
            }
        }
        // p + 2 is 2, an ordinary point: non-canonical but not low order.
        let mut k = good;
        k[ML_KEM_PUBLIC_KEY_LEN..].copy_from_slice(&p_plus(2));
        assert!(MailboxPublicKey::from_bytes(&k).is_ok());
    }

    /// The low-order list is exactly what makes X25519 output all zeroes:
    /// aws-lc (which refuses an all-zero result) refuses every listed value,
    /// with or without bit 255, and accepts real keys and their neighbours.
    #[test]
    fn low_order_list_matches_x25519() {
        use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey};
        let x25519_ok = |u: &[u8; 32]| {
            let k = PrivateKey::generate(&agreement::X25519).unwrap();
            agreement::agree(
                &k,
                UnparsedPublicKey::new(&agreement::X25519, u),
                (),
                |ss| Ok(ss.iter().any(|&b| b != 0)),
            )
            .unwrap_or(false)
        };
        assert_eq!(p_plus(-1)[0], 0xec, "p - 1");
        assert_eq!(p_plus(0)[..2], [0xed, 0xff], "p");
        for point in X25519_LOW_ORDER {
            for top in [0x00, 0x80] {
                let mut u = point;
                u[31] |= top;
                assert!(is_low_order_x25519(&u));
                assert!(!x25519_ok(&u), "{u:02x?} is not of low order");
            }
        }
        for d in 2..=18 {
            assert!(!is_low_order_x25519(&p_plus(d)));
            assert!(x25519_ok(&p_plus(d)), "p + {d}");
        }
        for _ in 0..16 {
            let pk = MailboxKeyPair::generate().public_key().to_bytes();
            let u: [u8; 32] = pk[ML_KEM_PUBLIC_KEY_LEN..].try_into().unwrap();
            assert!(!is_low_order_x25519(&u));
            assert!(x25519_ok(&u));
        }
    }

    #[test]
    fn low_order_x25519_share_is_refused() {
        let w = world();
        let env = seal(&w.alice, w.bob.public_key(), &w.send_id, b"x", NOW).unwrap();
        for point in X25519_LOW_ORDER {
            for top in [0x00, 0x80] {
                let mut t = env.clone();
                t[ENC_X25519_OFFSET..ENC_LEN].copy_from_slice(&point);
                t[ENC_LEN - 1] |= top;
                assert_eq!(
                    open(&w.bob, &w.send_id, &t),
                    Err(OpenError::NonContributory),
                    "{point:02x?} top bit {top:#x}"
                );
                // The crate's X-Wing decapsulates it without complaint: the
                // refusal is this module's own check.
                let enc = <XWing as hpke::Kem>::EncappedKey::from_bytes(&t[..ENC_LEN]).unwrap();
                assert!(<XWing as hpke::Kem>::decap(&w.bob.secret, None, &enc).is_ok());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn seal_open_round_trip(body in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            let w = world();
            let env = seal(&w.alice, w.bob.public_key(), &w.send_id, &body, NOW).unwrap();
            prop_assert_eq!(Some(env.len()), bucket_for(OVERHEAD + body.len()));
            let o = open(&w.bob, &w.send_id, &env).unwrap();
            prop_assert_eq!(o.body, body);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn open_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let w = MailboxKeyPair::generate();
            prop_assert!(open(&w, &SendId([0; 32]), &bytes).is_err());
        }

        #[test]
        fn open_never_panics_on_bucket_sized_noise(seed in any::<[u8; 32]>(), bucket in 0usize..2) {
            // Full buckets of noise reach decapsulation and AEAD.
            let len = [2048, 4096][bucket];
            let mut bytes = Vec::with_capacity(len);
            while bytes.len() < len {
                bytes.extend_from_slice(&Sha256::digest([&seed[..], &bytes.len().to_be_bytes()].concat()));
            }
            bytes.truncate(len);
            let w = MailboxKeyPair::generate();
            prop_assert_eq!(open(&w, &SendId([0; 32]), &bytes), Err(OpenError::Decrypt));
        }

        /// The ML-KEM check here agrees with the `ml-kem` crate's on keys
        /// with random coefficient bytes (about half of them out of range).
        #[test]
        fn ml_kem_check_matches_the_crate(
            seed in any::<[u8; 32]>(),
            at in 0usize..ML_KEM_T_LEN,
            bytes in any::<[u8; 3]>(),
        ) {
            let mut k = MailboxKeyPair::from_secret_bytes(&seed).unwrap().public_key().to_bytes();
            for (i, b) in bytes.iter().enumerate() {
                if let Some(slot) = k.get_mut(at + i).filter(|_| at + i < ML_KEM_T_LEN) {
                    *slot = *b;
                }
            }
            let ours = ml_kem_coefficients_reduced(&k[..ML_KEM_PUBLIC_KEY_LEN]);
            let crates = <XWing as hpke::Kem>::PublicKey::from_bytes(&k).is_ok();
            prop_assert_eq!(ours, crates);
        }

        #[test]
        fn parse_never_panics_on_arbitrary_plaintext(pt in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = parse_plaintext(&pt);
        }
    }
}
