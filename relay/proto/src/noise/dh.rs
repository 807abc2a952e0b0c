//! X25519 for `noise-protocol`, refusing non-contributory results.
//!
//! The stock `noise-rust-crypto` X25519 accepts a peer key of low order and
//! returns the all-zero shared secret, which would let a malicious peer force
//! a key both sides "agree" on without either contributing. We refuse an
//! all-zero result and fail the handshake instead.
//!
//! Both multiplications are aws-lc's assembly, which the TLS stack already
//! links. The variable-base one (the Montgomery ladder, three quarters of a
//! handshake's CPU) runs about twice as fast as the portable
//! `curve25519-dalek` ladder, the fixed-base one (deriving a public key)
//! about 2.5 times as fast as `x25519-dalek`'s table: 9–13 µs against
//! 24–30 µs per key on this machine. `x25519-dalek` still draws the secrets
//! and derives a public key should aws-lc ever refuse one, so `pubkey`
//! cannot fail.

use std::sync::{Arc, OnceLock};

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey};
use noise_protocol::{DH, U8Array};
use noise_rust_crypto::sensitive::Sensitive;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// The Noise DH function "25519", with the contributory check.
pub enum X25519 {}

/// An X25519 secret scalar, and aws-lc's import of it once one was made.
///
/// aws-lc derives the public key (a base-point multiplication) every time a
/// raw secret is imported, and `noise-protocol` hands the raw key to each
/// `pubkey` and `dh` call. Imported afresh each time, a responder's ephemeral
/// key was imported twice per handshake and the relay's static key once, each
/// import a multiplication nobody used. The import here lives exactly as long
/// as the key, and clones share it, so no secret is held longer than before;
/// aws-lc wipes its copy when the last clone is dropped.
pub struct SecretKey {
    bytes: Zeroizing<[u8; 32]>,
    imported: OnceLock<Option<Arc<PrivateKey>>>,
}

impl SecretKey {
    /// The secret scalar, for writing a key file; zeroed when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.bytes)
    }

    /// aws-lc's form of the key, imported on first use. `None` only if aws-lc
    /// refuses 32 bytes as an X25519 key, which it does not.
    fn imported(&self) -> Option<&PrivateKey> {
        self.imported
            .get_or_init(|| {
                PrivateKey::from_private_key(&agreement::X25519, self.bytes.as_slice())
                    .ok()
                    .map(Arc::new)
            })
            .as_deref()
    }
}

impl From<[u8; 32]> for SecretKey {
    fn from(bytes: [u8; 32]) -> Self {
        SecretKey {
            bytes: Zeroizing::new(bytes),
            imported: OnceLock::new(),
        }
    }
}

impl U8Array for SecretKey {
    fn new() -> Self {
        SecretKey::from([0; 32])
    }

    fn new_with(x: u8) -> Self {
        SecretKey::from([x; 32])
    }

    /// # Panics
    ///
    /// If `data` is not 32 bytes long, as `noise-protocol`'s own arrays do.
    /// Only key files and our own code make keys, and both check the length.
    fn from_slice(data: &[u8]) -> Self {
        let mut key = SecretKey::new();
        key.bytes.copy_from_slice(data);
        key
    }

    fn len() -> usize {
        32
    }

    fn as_slice(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// The import no longer matches bytes that are about to change.
    fn as_mut(&mut self) -> &mut [u8] {
        self.imported = OnceLock::new();
        self.bytes.as_mut_slice()
    }

    fn clone(&self) -> Self {
        SecretKey {
            bytes: self.bytes.clone(),
            imported: self.imported.clone(),
        }
    }
}

impl DH for X25519 {
    type Key = SecretKey;
    type Pubkey = [u8; 32];
    type Output = Sensitive<[u8; 32]>;

    fn name() -> &'static str {
        "25519"
    }

    fn genkey() -> Self::Key {
        SecretKey::from(StaticSecret::random_from_rng(rand::rngs::OsRng).to_bytes())
    }

    fn pubkey(k: &Self::Key) -> Self::Pubkey {
        k.imported()
            .and_then(|secret| secret.compute_public_key().ok())
            .and_then(|public| <[u8; 32]>::try_from(public.as_ref()).ok())
            .unwrap_or_else(|| *PublicKey::from(&StaticSecret::from(*k.bytes)).as_bytes())
    }

    fn dh(k: &Self::Key, pk: &Self::Pubkey) -> Result<Self::Output, ()> {
        let secret = k.imported().ok_or(())?;
        let peer = UnparsedPublicKey::new(&agreement::X25519, pk);
        agreement::agree(secret, peer, (), |shared| {
            // A low-order peer key gives all zeroes (aws-lc refuses it too;
            // this check does not depend on that).
            if bool::from(shared.ct_eq(&[0u8; 32])) || shared.len() != 32 {
                return Err(());
            }
            Ok(Sensitive::from_slice(shared))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_order_point_is_refused() {
        let k = X25519::genkey();
        // The identity point and a point of order 8 both give an all-zero output.
        assert!(X25519::dh(&k, &[0u8; 32]).is_err());
        let order8: [u8; 32] = [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ];
        assert!(X25519::dh(&k, &order8).is_err());
    }

    /// aws-lc and dalek agree on public keys and shared secrets, so a peer on either
    /// implementation derives the same keys.
    #[test]
    fn matches_dalek() {
        for _ in 0..32 {
            let a = X25519::genkey();
            let b = X25519::genkey();
            assert_eq!(
                X25519::pubkey(&a),
                *PublicKey::from(&StaticSecret::from(*a.bytes)).as_bytes()
            );
            let ours = X25519::dh(&a, &X25519::pubkey(&b)).unwrap();
            let dalek =
                StaticSecret::from(*a.bytes).diffie_hellman(&PublicKey::from(X25519::pubkey(&b)));
            assert_eq!(ours.as_slice(), dalek.as_bytes());
        }
    }

    /// A key imports once, its clones share the import, and changing its bytes
    /// drops the import rather than computing with the old scalar.
    #[test]
    fn import_is_kept_with_the_key_and_only_while_it_matches() {
        let a = X25519::genkey();
        let b = X25519::genkey();
        let pub_b = X25519::pubkey(&b);
        let first = X25519::dh(&a, &pub_b).unwrap();
        let copy = U8Array::clone(&a);
        let (Some(Some(mine)), Some(Some(theirs))) = (a.imported.get(), copy.imported.get()) else {
            panic!("dh left no import behind");
        };
        assert!(Arc::ptr_eq(mine, theirs));
        assert_eq!(
            X25519::dh(&copy, &pub_b).unwrap().as_slice(),
            first.as_slice()
        );

        let mut changed = U8Array::clone(&a);
        changed.as_mut().copy_from_slice(b.as_slice());
        assert!(changed.imported.get().is_none());
        assert_eq!(X25519::pubkey(&changed), pub_b);
        let with_b = X25519::dh(&changed, &X25519::pubkey(&a)).unwrap();
        assert_eq!(with_b.as_slice(), first.as_slice());
    }

    #[test]
    fn agrees() {
        let a = X25519::genkey();
        let b = X25519::genkey();
        let ab = X25519::dh(&a, &X25519::pubkey(&b)).unwrap();
        let ba = X25519::dh(&b, &X25519::pubkey(&a)).unwrap();
        assert_eq!(ab.as_slice(), ba.as_slice());
    }
}
