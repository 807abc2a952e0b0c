//! Long-term identities and the short-lived sender certificates they issue.
//!
//! A person is their **identity key**, an Ed25519 key pair that is meant to
//! live for years and is what other people verify out of band (by comparing
//! [`IdentityKey::fingerprint`]s). The identity key never signs messages
//! itself. Instead it certifies a **sender key**, a fresh Ed25519 key pair
//! valid for a short window (seven days by default), and the sender key signs
//! envelopes. A device that leaks its sender key therefore leaks the power to
//! sign for at most one window, and the identity secret can stay in colder
//! storage than the key that is used for every message.
//!
//! # Sender certificate, binary form (112 bytes)
//!
//! This is the form carried inside every sealed envelope. Integers are
//! big-endian.
//!
//! | offset | length | field |
//! | -----: | -----: | ----- |
//! | 0 | 32 | sender public key (Ed25519, compressed point) |
//! | 32 | 8 | `not_before`, Unix seconds, u64 |
//! | 40 | 8 | `not_after`, Unix seconds, u64 (inclusive) |
//! | 48 | 64 | Ed25519 signature by the identity key |
//!
//! The signature covers, with nothing between the parts:
//!
//! ```text
//! "chappe/1 sender certificate"   27 bytes of ASCII, the domain label
//! identity public key             32
//! sender public key               32
//! not_before                       8  (u64, big-endian)
//! not_after                        8  (u64, big-endian)
//! ```
//!
//! A certificate is valid at time `t` when its signature verifies strictly
//! (`S < L`, `R` and the keys canonical and not of small order, the
//! cofactorless equation; `docs/PROTOCOL.md` section 0.2) under the
//! identity key, `not_before <= t <= not_after`, and the window is no
//! longer than [`MAX_CERT_LIFETIME`].
//!
//! # Identity file (TOML)
//!
//! The CLI keeps an identity in one TOML file; every key is required and no
//! other key is allowed:
//!
//! ```toml
//! # Chappe identity: SECRET. Whoever holds this file can sign as you.
//! # fingerprint: 1a2b 3c4d 5e6f 7081 92a3 b4c5 d6e7 f809 1a2b 3c4d
//! version = 1
//! identity_secret = "<base64url, no padding, of the 32-byte Ed25519 seed>"
//! sender_secret = "<base64url, no padding, of the 32-byte Ed25519 seed>"
//! sender_certificate = "<base64url, no padding, of the 112-byte certificate>"
//! ```
//!
//! Loading checks that the certificate was issued by `identity_secret` for
//! `sender_secret`, but not that it is still valid: an expired certificate is
//! what [`Identity::renew_if_needed`] is for.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of an Ed25519 public key, secret seed, and of [`IdentityKey`] bytes.
pub const KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a [`SenderCertificate`] in binary form.
pub const CERT_LEN: usize = KEY_LEN + 8 + 8 + SIGNATURE_LEN;
/// How long a freshly issued sender certificate is valid: one week, short
/// enough that a leaked sender key soon stops working, long enough that a
/// device that is offline over a weekend still has a valid one.
pub const DEFAULT_CERT_LIFETIME: u64 = 7 * 24 * 3600;
/// When less than this is left of a certificate, [`Identity::needs_renewal`]
/// says so: a message sealed just before expiry may sit in a mailbox for a
/// while, but it is checked against its own timestamp, so two days only keeps
/// the sender from ever having to seal with a certificate that has minutes left.
pub const RENEW_BEFORE: u64 = 2 * 24 * 3600;
/// The longest window a verifier accepts. Bounds the damage of a leaked sender
/// key even when the issuing client was misconfigured to issue long windows.
pub const MAX_CERT_LIFETIME: u64 = 31 * 24 * 3600;
/// Bytes of SHA-256 shown in a fingerprint: 160 bits, beyond any
/// second-preimage search, short enough to read aloud.
pub const FINGERPRINT_BYTES: usize = 20;

/// Domain label of the identity key's signature over a sender certificate.
pub(crate) const CERT_LABEL: &[u8] = b"chappe/1 sender certificate";

/// Version of the identity file format.
const FILE_VERSION: u32 = 1;

/// Why a sender certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("sender certificate must be {CERT_LEN} bytes, got {got}")]
    BadLength { got: usize },
    #[error("sender certificate holds an invalid or weak Ed25519 public key")]
    BadSenderKey,
    #[error("sender certificate is not signed by this identity")]
    BadSignature,
    #[error(
        "sender certificate window is inverted (not_before {not_before} > not_after {not_after})"
    )]
    InvertedWindow { not_before: u64, not_after: u64 },
    #[error(
        "sender certificate window of {lifetime} s exceeds the maximum of {MAX_CERT_LIFETIME} s"
    )]
    TooLong { lifetime: u64 },
    #[error("sender certificate is not valid before {not_before} (checked at {at})")]
    NotYetValid { at: u64, not_before: u64 },
    #[error("sender certificate expired at {not_after} (checked at {at})")]
    Expired { at: u64, not_after: u64 },
}

/// Why an identity or identity key could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The message only: the TOML parser's own rendering quotes the offending
    /// line, which in this file is secret.
    #[error("identity file is not valid: {0}")]
    Toml(String),
    #[error("identity file version {0} is not supported (expected {FILE_VERSION})")]
    UnsupportedVersion(u32),
    #[error("identity file field `{field}` is not base64url without padding")]
    BadEncoding { field: &'static str },
    #[error("identity file field `{field}` must decode to {expected} bytes, got {got}")]
    BadLength {
        field: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("invalid or weak Ed25519 identity public key")]
    BadPublicKey,
    #[error("identity file certificate is unusable: {0}")]
    Certificate(CertError),
    #[error("identity file certificate does not certify its sender_secret")]
    CertificateKeyMismatch,
}

/// The public half of an identity: what a contact verifies, pins and sees
/// as the sender of a message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdentityKey(VerifyingKey);

impl IdentityKey {
    /// Parses an Ed25519 public key, refusing small-order points: with such a
    /// key almost any signature verifies, so it could never identify anyone.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<Self, IdentityError> {
        parse_public_key(bytes)
            .map(Self)
            .ok_or(IdentityError::BadPublicKey)
    }

    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    /// The string people compare out of band to be sure a card or message
    /// comes from whom they think: the first 20 bytes of SHA-256 of the public
    /// key as lower-case hex in ten groups of four (`1a2b 3c4d … 1a2b`).
    /// Hex, not base64, because it survives being read over a phone line.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut out = String::with_capacity(FINGERPRINT_BYTES * 2 + FINGERPRINT_BYTES / 2);
        for (i, b) in digest.iter().take(FINGERPRINT_BYTES).enumerate() {
            if i > 0 && i % 2 == 0 {
                out.push(' ');
            }
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", self.fingerprint())
    }
}

impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// An identity's statement "this sender key speaks for me from `not_before`
/// to `not_after`", which travels inside every envelope so that the recipient
/// needs nothing but the envelope to check who sent it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SenderCertificate {
    sender_key: VerifyingKey,
    not_before: u64,
    not_after: u64,
    signature: Signature,
}

impl SenderCertificate {
    fn issue(
        identity: &SigningKey,
        sender_key: VerifyingKey,
        not_before: u64,
        not_after: u64,
    ) -> Self {
        let msg = cert_message(
            &identity.verifying_key(),
            &sender_key,
            not_before,
            not_after,
        );
        Self {
            sender_key,
            not_before,
            not_after,
            signature: identity.sign(&msg),
        }
    }

    /// The binary form (see the module docs for the layout).
    pub fn to_bytes(&self) -> [u8; CERT_LEN] {
        let mut out = [0u8; CERT_LEN];
        let (key, rest) = out.split_at_mut(KEY_LEN);
        let (nb, rest) = rest.split_at_mut(8);
        let (na, sig) = rest.split_at_mut(8);
        key.copy_from_slice(self.sender_key.as_bytes());
        nb.copy_from_slice(&self.not_before.to_be_bytes());
        na.copy_from_slice(&self.not_after.to_be_bytes());
        sig.copy_from_slice(&self.signature.to_bytes());
        out
    }

    /// Parses the binary form. Checks the length and the sender key's
    /// encoding only; whether the certificate is valid, and for whom, is
    /// [`SenderCertificate::verify`]'s question.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertError> {
        let arr: &[u8; CERT_LEN] = bytes
            .try_into()
            .map_err(|_| CertError::BadLength { got: bytes.len() })?;
        let (key, rest) = arr.split_at(KEY_LEN);
        let (nb, rest) = rest.split_at(8);
        let (na, sig) = rest.split_at(8);
        let sender_key = key
            .try_into()
            .ok()
            .and_then(parse_public_key)
            .ok_or(CertError::BadSenderKey)?;
        let signature = sig
            .try_into()
            .map(Signature::from_bytes)
            .map_err(|_| CertError::BadLength { got: bytes.len() })?;
        Ok(Self {
            sender_key,
            not_before: be_u64(nb).ok_or(CertError::BadLength { got: bytes.len() })?,
            not_after: be_u64(na).ok_or(CertError::BadLength { got: bytes.len() })?,
            signature,
        })
    }

    /// Checks that `identity` issued this certificate and that it covers time
    /// `at`. Recipients pass the message's own timestamp, so a message stays
    /// verifiable after the certificate that signed it has expired.
    pub fn verify(&self, identity: &IdentityKey, at: u64) -> Result<(), CertError> {
        self.verify_signature(identity)?;
        if at < self.not_before {
            return Err(CertError::NotYetValid {
                at,
                not_before: self.not_before,
            });
        }
        if at > self.not_after {
            return Err(CertError::Expired {
                at,
                not_after: self.not_after,
            });
        }
        Ok(())
    }

    /// Everything in [`verify`](Self::verify) except the clock.
    fn verify_signature(&self, identity: &IdentityKey) -> Result<(), CertError> {
        if self.not_before > self.not_after {
            return Err(CertError::InvertedWindow {
                not_before: self.not_before,
                not_after: self.not_after,
            });
        }
        let lifetime = self.not_after - self.not_before;
        if lifetime > MAX_CERT_LIFETIME {
            return Err(CertError::TooLong { lifetime });
        }
        let msg = cert_message(
            identity.verifying_key(),
            &self.sender_key,
            self.not_before,
            self.not_after,
        );
        identity
            .verifying_key()
            .verify_strict(&msg, &self.signature)
            .map_err(|_| CertError::BadSignature)
    }

    /// The sender public key this certificate vouches for.
    pub fn sender_key(&self) -> [u8; KEY_LEN] {
        self.sender_key.to_bytes()
    }

    pub fn not_before(&self) -> u64 {
        self.not_before
    }

    /// Inclusive: the certificate is still valid at this second.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    pub(crate) fn sender_verifying_key(&self) -> &VerifyingKey {
        &self.sender_key
    }
}

impl fmt::Debug for SenderCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderCertificate")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A person's secret identity together with the sender key it currently
/// certifies: everything needed to seal envelopes. Both secrets are wiped
/// from memory when it is dropped.
pub struct Identity {
    identity: SigningKey,
    sender: SigningKey,
    cert: SenderCertificate,
}

impl Identity {
    /// A new identity with a sender certificate valid from `now` (Unix
    /// seconds) for [`DEFAULT_CERT_LIFETIME`]. The time is a parameter so that
    /// this crate never reads a clock and tests can move it freely.
    pub fn generate(now: u64) -> Self {
        let identity = SigningKey::generate(&mut OsRng);
        let (sender, cert) = new_sender(&identity, now);
        Self {
            identity,
            sender,
            cert,
        }
    }

    pub fn public_key(&self) -> IdentityKey {
        IdentityKey(self.identity.verifying_key())
    }

    pub fn certificate(&self) -> &SenderCertificate {
        &self.cert
    }

    /// True when the current certificate does not cover `now` or will stop
    /// doing so within [`RENEW_BEFORE`].
    pub fn needs_renewal(&self, now: u64) -> bool {
        now < self.cert.not_before || now.saturating_add(RENEW_BEFORE) > self.cert.not_after
    }

    /// Replaces the sender key with a fresh one certified from `now` for
    /// [`DEFAULT_CERT_LIFETIME`]. A new key rather than a new window for the
    /// old one, so that renewal also ends whatever a leak of the old one
    /// allowed. The caller must save the identity afterwards.
    pub fn renew(&mut self, now: u64) {
        let (sender, cert) = new_sender(&self.identity, now);
        self.sender = sender;
        self.cert = cert;
    }

    /// [`renew`](Self::renew) when [`needs_renewal`](Self::needs_renewal);
    /// returns whether it did, i.e. whether the identity file must be saved.
    pub fn renew_if_needed(&mut self, now: u64) -> bool {
        let due = self.needs_renewal(now);
        if due {
            self.renew(now);
        }
        due
    }

    /// The identity file (see the module docs). Returned in a wiping
    /// container because it holds both secrets.
    pub fn to_toml(&self) -> Zeroizing<String> {
        let file = IdentityFile {
            version: FILE_VERSION,
            identity_secret: URL_SAFE_NO_PAD.encode(Zeroizing::new(self.identity.to_bytes())),
            sender_secret: URL_SAFE_NO_PAD.encode(Zeroizing::new(self.sender.to_bytes())),
            sender_certificate: URL_SAFE_NO_PAD.encode(self.cert.to_bytes()),
        };
        // Serializing four scalars cannot fail; an empty body on the
        // impossible path still parses as an error, never as a weaker identity.
        let body = Zeroizing::new(toml::to_string(&file).unwrap_or_default());
        Zeroizing::new(format!(
            "# Chappe identity: SECRET. Whoever holds this file can sign as you.\n\
             # fingerprint: {}\n{}",
            self.public_key().fingerprint(),
            body.as_str()
        ))
    }

    /// Loads an identity file, checking that its certificate was issued by its
    /// identity for its sender key (a file assembled from two identities would
    /// otherwise seal messages that every recipient rejects).
    pub fn from_toml(text: &str) -> Result<Self, IdentityError> {
        let file: IdentityFile =
            toml::from_str(text).map_err(|e| IdentityError::Toml(e.message().to_owned()))?;
        if file.version != FILE_VERSION {
            return Err(IdentityError::UnsupportedVersion(file.version));
        }
        let identity_seed = decode_fixed::<KEY_LEN>("identity_secret", &file.identity_secret)?;
        let sender_seed = decode_fixed::<KEY_LEN>("sender_secret", &file.sender_secret)?;
        let cert_bytes = decode_fixed::<CERT_LEN>("sender_certificate", &file.sender_certificate)?;
        let identity = SigningKey::from_bytes(&identity_seed);
        let sender = SigningKey::from_bytes(&sender_seed);
        let cert = SenderCertificate::from_bytes(cert_bytes.as_slice())
            .map_err(IdentityError::Certificate)?;
        let public = IdentityKey(identity.verifying_key());
        if public.0.is_weak() {
            return Err(IdentityError::BadPublicKey);
        }
        cert.verify_signature(&public)
            .map_err(IdentityError::Certificate)?;
        if cert.sender_key != sender.verifying_key() {
            return Err(IdentityError::CertificateKeyMismatch);
        }
        Ok(Self {
            identity,
            sender,
            cert,
        })
    }

    pub(crate) fn sender_signing_key(&self) -> &SigningKey {
        &self.sender
    }

    /// Signs with the identity key itself, for statements that must outlive a
    /// sender certificate (contact cards).
    pub(crate) fn sign_with_identity(&self, msg: &[u8]) -> Signature {
        self.identity.sign(msg)
    }

    /// Test-only: an identity whose certificate is arbitrary, to exercise the
    /// recipient's checks with certificates no honest client would issue.
    #[cfg(test)]
    pub(crate) fn with_certificate(
        &self,
        issuer: &Identity,
        not_before: u64,
        not_after: u64,
    ) -> Self {
        let sender = SigningKey::generate(&mut OsRng);
        let cert = SenderCertificate::issue(
            &issuer.identity,
            sender.verifying_key(),
            not_before,
            not_after,
        );
        Self {
            identity: self.identity.clone(),
            sender,
            cert,
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key())
            .field("certificate", &self.cert)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    version: u32,
    identity_secret: String,
    sender_secret: String,
    sender_certificate: String,
}

fn new_sender(identity: &SigningKey, now: u64) -> (SigningKey, SenderCertificate) {
    let sender = SigningKey::generate(&mut OsRng);
    let cert = SenderCertificate::issue(
        identity,
        sender.verifying_key(),
        now,
        now.saturating_add(DEFAULT_CERT_LIFETIME),
    );
    (sender, cert)
}

fn cert_message(
    identity: &VerifyingKey,
    sender: &VerifyingKey,
    not_before: u64,
    not_after: u64,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(CERT_LABEL.len() + 2 * KEY_LEN + 16);
    msg.extend_from_slice(CERT_LABEL);
    msg.extend_from_slice(identity.as_bytes());
    msg.extend_from_slice(sender.as_bytes());
    msg.extend_from_slice(&not_before.to_be_bytes());
    msg.extend_from_slice(&not_after.to_be_bytes());
    msg
}

/// A valid Ed25519 point, canonically encoded, that is not of small order.
///
/// Canonical: the y-coordinate (the bytes with bit 255 clear, little-endian)
/// is below p = 2^255 − 19. `ed25519-dalek` reduces a larger y modulo p
/// instead; the only other non-canonical form, x = 0 with the sign bit set,
/// belongs to small-order points, which are refused anyway.
pub(crate) fn parse_public_key(bytes: &[u8; KEY_LEN]) -> Option<VerifyingKey> {
    if !y_below_p(bytes) {
        return None;
    }
    VerifyingKey::from_bytes(bytes)
        .ok()
        .filter(|k| !k.is_weak())
}

/// Whether a compressed Edwards point's y-coordinate is below p: it is not
/// when bits 0..255 read `p + d` for `d` in 0..=18, that is byte 0 at least
/// `0xed`, bytes 1..31 `0xff`, and byte 31 `0x7f` or `0xff`.
fn y_below_p(bytes: &[u8; KEY_LEN]) -> bool {
    let [first, middle @ .., last] = bytes;
    !(*first >= 0xed && middle.iter().all(|&b| b == 0xff) && *last & 0x7f == 0x7f)
}

pub(crate) fn be_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn decode_fixed<const N: usize>(
    field: &'static str,
    text: &str,
) -> Result<Zeroizing<[u8; N]>, IdentityError> {
    let bytes = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| IdentityError::BadEncoding { field })?,
    );
    let mut out = Zeroizing::new([0u8; N]);
    if bytes.len() != N {
        return Err(IdentityError::BadLength {
            field,
            expected: N,
            got: bytes.len(),
        });
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn certificate_round_trip_and_verify() {
        let id = Identity::generate(NOW);
        let cert = id.certificate();
        assert_eq!(cert.not_before(), NOW);
        assert_eq!(cert.not_after(), NOW + DEFAULT_CERT_LIFETIME);
        let parsed = SenderCertificate::from_bytes(&cert.to_bytes()).unwrap();
        assert_eq!(&parsed, cert);
        assert_eq!(parsed.verify(&id.public_key(), NOW), Ok(()));
        assert_eq!(
            parsed.verify(&id.public_key(), NOW + DEFAULT_CERT_LIFETIME),
            Ok(())
        );
    }

    #[test]
    fn certificate_window_is_enforced() {
        let id = Identity::generate(NOW);
        let pk = id.public_key();
        assert_eq!(
            id.certificate().verify(&pk, NOW - 1),
            Err(CertError::NotYetValid {
                at: NOW - 1,
                not_before: NOW
            })
        );
        let end = NOW + DEFAULT_CERT_LIFETIME;
        assert_eq!(
            id.certificate().verify(&pk, end + 1),
            Err(CertError::Expired {
                at: end + 1,
                not_after: end
            })
        );
    }

    #[test]
    fn certificate_from_another_identity_fails() {
        let alice = Identity::generate(NOW);
        let mallory = Identity::generate(NOW);
        assert_eq!(
            alice.certificate().verify(&mallory.public_key(), NOW),
            Err(CertError::BadSignature)
        );
        // Mallory certifying a key and presenting it under Alice's name.
        let forged = alice.with_certificate(&mallory, NOW, NOW + 10);
        assert_eq!(
            forged.certificate().verify(&alice.public_key(), NOW),
            Err(CertError::BadSignature)
        );
    }

    #[test]
    fn certificate_bad_windows_fail() {
        let id = Identity::generate(NOW);
        let inverted = id.with_certificate(&id, NOW + 10, NOW);
        assert!(matches!(
            inverted.certificate().verify(&id.public_key(), NOW + 5),
            Err(CertError::InvertedWindow { .. })
        ));
        let long = id.with_certificate(&id, NOW, NOW + MAX_CERT_LIFETIME + 1);
        assert!(matches!(
            long.certificate().verify(&id.public_key(), NOW),
            Err(CertError::TooLong { .. })
        ));
        let max = id.with_certificate(&id, NOW, NOW + MAX_CERT_LIFETIME);
        assert_eq!(max.certificate().verify(&id.public_key(), NOW), Ok(()));
    }

    #[test]
    fn certificate_tamper_fails() {
        let id = Identity::generate(NOW);
        let bytes = id.certificate().to_bytes();
        for i in 0..CERT_LEN {
            let mut t = bytes;
            t[i] ^= 0x01;
            let ok = SenderCertificate::from_bytes(&t)
                .map(|c| c.verify(&id.public_key(), NOW + 1).is_ok())
                .unwrap_or(false);
            assert!(!ok, "flipping byte {i} still verified");
        }
    }

    #[test]
    fn certificate_bad_lengths_and_keys() {
        assert_eq!(
            SenderCertificate::from_bytes(&[0u8; CERT_LEN - 1]),
            Err(CertError::BadLength { got: CERT_LEN - 1 })
        );
        assert_eq!(
            SenderCertificate::from_bytes(&[0u8; CERT_LEN + 1]),
            Err(CertError::BadLength { got: CERT_LEN + 1 })
        );
        // All-zero key bytes decode to a small-order point.
        assert_eq!(
            SenderCertificate::from_bytes(&[0u8; CERT_LEN]),
            Err(CertError::BadSenderKey)
        );
        let mut identity = [0u8; KEY_LEN];
        identity[0] = 1; // the identity point, small order
        assert_eq!(
            IdentityKey::from_bytes(&identity),
            Err(IdentityError::BadPublicKey)
        );
    }

    /// `p + d` (p = 2^255 − 19) as 32 little-endian bytes, plus the sign bit.
    fn y_plus_p(d: u8, sign: u8) -> [u8; KEY_LEN] {
        let mut b = [0xff; KEY_LEN];
        b[0] = 0xed + d;
        b[31] = 0x7f | sign;
        b
    }

    #[test]
    fn non_canonical_keys_are_refused() {
        // y = p + d for d in 0..=18 encodes y = d. ed25519-dalek decodes those
        // that are on the curve; none may name an identity or a sender.
        let mut decoded = 0;
        for d in 0..=18u8 {
            for sign in [0x00, 0x80] {
                let non_canonical = y_plus_p(d, sign);
                let mut canonical = [0u8; KEY_LEN];
                canonical[0] = d;
                canonical[31] = sign;
                if VerifyingKey::from_bytes(&non_canonical).is_ok_and(|k| !k.is_weak()) {
                    decoded += 1;
                    // The same point, written canonically, is accepted.
                    assert!(IdentityKey::from_bytes(&canonical).is_ok(), "y = {d}");
                }
                assert_eq!(
                    IdentityKey::from_bytes(&non_canonical),
                    Err(IdentityError::BadPublicKey),
                    "y = p + {d}, sign {sign:#x}"
                );
                let mut cert = Identity::generate(NOW).certificate().to_bytes();
                cert[..KEY_LEN].copy_from_slice(&non_canonical);
                assert_eq!(
                    SenderCertificate::from_bytes(&cert),
                    Err(CertError::BadSenderKey)
                );
            }
        }
        assert!(
            decoded > 0,
            "no non-canonical encoding decodes: the test checks nothing"
        );
        // p − 1 is canonical.
        let mut below = y_plus_p(0, 0);
        below[0] = 0xec;
        assert!(y_below_p(&below));
    }

    #[test]
    fn non_canonical_s_is_refused() {
        // S + L verifies under the cofactorless equation exactly as S does;
        // strict verification refuses it for S ≥ L.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let id = Identity::generate(NOW);
        let good = id.certificate().to_bytes();
        assert!(
            SenderCertificate::from_bytes(&good)
                .unwrap()
                .verify(&id.public_key(), NOW)
                .is_ok()
        );
        let mut t = good;
        let mut carry = 0u16;
        for (s, l) in t[48 + 32..].iter_mut().zip(L) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0);
        assert_eq!(
            SenderCertificate::from_bytes(&t)
                .unwrap()
                .verify(&id.public_key(), NOW),
            Err(CertError::BadSignature)
        );
    }

    #[test]
    fn renewal() {
        let mut id = Identity::generate(NOW);
        let first = *id.certificate();
        assert!(!id.needs_renewal(NOW));
        assert!(!id.needs_renewal(NOW + DEFAULT_CERT_LIFETIME - RENEW_BEFORE));
        assert!(id.needs_renewal(NOW + DEFAULT_CERT_LIFETIME - RENEW_BEFORE + 1));
        assert!(id.needs_renewal(NOW - 1));
        assert!(!id.renew_if_needed(NOW + 60));
        assert_eq!(id.certificate(), &first);

        let later = NOW + 6 * 24 * 3600;
        assert!(id.renew_if_needed(later));
        let second = *id.certificate();
        assert_ne!(second.sender_key(), first.sender_key());
        assert_eq!(second.not_before(), later);
        assert_eq!(second.verify(&id.public_key(), later), Ok(()));
    }

    #[test]
    fn toml_round_trip() {
        let id = Identity::generate(NOW);
        let text = id.to_toml();
        assert!(text.contains(&id.public_key().fingerprint()));
        let back = Identity::from_toml(&text).unwrap();
        assert_eq!(back.public_key(), id.public_key());
        assert_eq!(back.certificate(), id.certificate());
        assert_eq!(back.sender.to_bytes(), id.sender.to_bytes());
    }

    #[test]
    fn toml_rejects_mixed_and_malformed_files() {
        let a = Identity::generate(NOW);
        let b = Identity::generate(NOW);
        let field = |id: &Identity, name: &str| -> String {
            id.to_toml()
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .to_owned()
        };
        // b's certificate in a's file.
        let mixed = a.to_toml().replace(
            &field(&a, "sender_certificate"),
            &field(&b, "sender_certificate"),
        );
        assert_eq!(
            Identity::from_toml(&mixed).unwrap_err(),
            IdentityError::Certificate(CertError::BadSignature)
        );
        // b's sender secret with a's certificate.
        let swapped = a
            .to_toml()
            .replace(&field(&a, "sender_secret"), &field(&b, "sender_secret"));
        assert_eq!(
            Identity::from_toml(&swapped).unwrap_err(),
            IdentityError::CertificateKeyMismatch
        );
        let v2 = a.to_toml().replace("version = 1", "version = 2");
        assert_eq!(
            Identity::from_toml(&v2).unwrap_err(),
            IdentityError::UnsupportedVersion(2)
        );
        let extra = format!("{}extra = 1\n", a.to_toml().as_str());
        assert!(matches!(
            Identity::from_toml(&extra),
            Err(IdentityError::Toml(_))
        ));
        let short = a
            .to_toml()
            .replace(&field(&a, "sender_secret"), "sender_secret = \"AAAA\"");
        assert!(matches!(
            Identity::from_toml(&short),
            Err(IdentityError::BadLength {
                field: "sender_secret",
                ..
            })
        ));
        let bad = a
            .to_toml()
            .replace(&field(&a, "identity_secret"), "identity_secret = \"!!\"");
        assert_eq!(
            Identity::from_toml(&bad).unwrap_err(),
            IdentityError::BadEncoding {
                field: "identity_secret"
            }
        );
        assert!(matches!(
            Identity::from_toml("garbage = ["),
            Err(IdentityError::Toml(_))
        ));
    }

    #[test]
    fn toml_errors_do_not_echo_secrets() {
        let id = Identity::generate(NOW);
        let text = id.to_toml();
        let secret_line = text
            .lines()
            .find(|l| l.starts_with("identity_secret"))
            .unwrap();
        let broken = text.replace(secret_line, &format!("{secret_line} ]"));
        let err = Identity::from_toml(&broken).unwrap_err().to_string();
        let secret = secret_line.split('"').nth(1).unwrap();
        assert!(!err.contains(secret), "{err}");
    }

    #[test]
    fn fingerprint_format() {
        let id = Identity::generate(NOW);
        let fp = id.public_key().fingerprint();
        assert_eq!(fp.len(), 49);
        let groups: Vec<&str> = fp.split(' ').collect();
        assert_eq!(groups.len(), 10);
        assert!(
            groups
                .iter()
                .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit()))
        );
        assert_eq!(format!("{}", id.public_key()), fp);
        assert!(!format!("{id:?}").contains(&URL_SAFE_NO_PAD.encode(id.identity.to_bytes())));
    }
}
