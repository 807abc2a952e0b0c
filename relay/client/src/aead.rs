//! The envelope AEAD: ChaCha20-Poly1305 (RFC 8439) from aws-lc, plugged
//! into the `hpke` crate.
//!
//! `hpke` ships RustCrypto's portable ChaCha20-Poly1305, which runs at about
//! a third of OpenSSL's speed on this hardware (`bench/run` measures both).
//! aws-lc, already linked for TLS, has the same assembly as OpenSSL. The
//! algorithm, and so the wire format and HPKE's AEAD id `0x0003`, are
//! unchanged: the tests below check byte-for-byte agreement with RustCrypto.

use aead::array::Array;
use aead::consts::{U12, U16, U32};
use aead::inout::InOutBuf;
use aead::{AeadCore, AeadInOut, Key, KeyInit, KeySizeUser, Nonce, Tag, TagPosition};
use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce as LcNonce, UnboundKey};
use zeroize::Zeroizing;

/// HPKE's ChaCha20-Poly1305 (RFC 9180 §7.3), on aws-lc.
pub enum ChaCha20Poly1305 {}

impl hpke::aead::Aead for ChaCha20Poly1305 {
    type AeadImpl = AwsLcChaCha20Poly1305;
    const AEAD_ID: u16 = 0x0003;
}

/// One key, with its aws-lc context set up once. `KeyInit::new` cannot
/// fail, so a key aws-lc refused (it never refuses 32 bytes) is kept as
/// `None` and every call with it fails instead of panicking. The bytes stay
/// for `Clone` (aws-lc contexts do not clone) and are wiped on drop.
pub struct AwsLcChaCha20Poly1305 {
    bytes: Zeroizing<[u8; 32]>,
    key: Option<LessSafeKey>,
}

impl AwsLcChaCha20Poly1305 {
    fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes.as_slice())
            .ok()
            .map(LessSafeKey::new);
        AwsLcChaCha20Poly1305 { bytes, key }
    }

    fn key(&self) -> aead::Result<&LessSafeKey> {
        self.key.as_ref().ok_or(aead::Error)
    }
}

impl Clone for AwsLcChaCha20Poly1305 {
    fn clone(&self) -> Self {
        AwsLcChaCha20Poly1305::from_bytes(self.bytes.clone())
    }
}

fn nonce(n: &Nonce<AwsLcChaCha20Poly1305>) -> aead::Result<LcNonce> {
    LcNonce::try_assume_unique_for_key(n.as_slice()).map_err(|_| aead::Error)
}

impl KeySizeUser for AwsLcChaCha20Poly1305 {
    type KeySize = U32;
}

impl KeyInit for AwsLcChaCha20Poly1305 {
    fn new(key: &Key<Self>) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(key.as_slice());
        AwsLcChaCha20Poly1305::from_bytes(bytes)
    }
}

impl AeadCore for AwsLcChaCha20Poly1305 {
    type NonceSize = U12;
    type TagSize = U16;
    const TAG_POSITION: TagPosition = TagPosition::Postfix;
}

impl AeadInOut for AwsLcChaCha20Poly1305 {
    fn encrypt_inout_detached(
        &self,
        nonce_in: &Nonce<Self>,
        associated_data: &[u8],
        buffer: InOutBuf<'_, '_, u8>,
    ) -> aead::Result<Tag<Self>> {
        let key = self.key()?;
        let data = buffer.into_out_with_copied_in();
        let tag = key
            .seal_in_place_separate_tag(nonce(nonce_in)?, Aad::from(associated_data), data)
            .map_err(|_| aead::Error)?;
        Array::try_from(tag.as_ref()).map_err(|_| aead::Error)
    }

    fn decrypt_inout_detached(
        &self,
        nonce_in: &Nonce<Self>,
        associated_data: &[u8],
        buffer: InOutBuf<'_, '_, u8>,
        tag: &Tag<Self>,
    ) -> aead::Result<()> {
        let key = self.key()?;
        let data = buffer.into_out_with_copied_in();
        // aws-lc opens `ciphertext || tag` in one buffer, so this costs one
        // copy (memcpy speed, far above the cipher's); the plaintext that
        // passes through it is wiped.
        let mut joined = Zeroizing::new(Vec::with_capacity(data.len() + tag.len()));
        joined.extend_from_slice(data);
        joined.extend_from_slice(tag.as_slice());
        let plain = key
            .open_in_place(nonce(nonce_in)?, Aad::from(associated_data), &mut joined)
            .map_err(|_| aead::Error)?;
        if plain.len() != data.len() {
            return Err(aead::Error);
        }
        data.copy_from_slice(plain);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Reference = chacha20poly1305::ChaCha20Poly1305;

    /// RFC 8439 §2.8.2.
    #[test]
    fn rfc8439_vector() {
        let key: [u8; 32] = core::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [
            0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
        ];
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let mut msg = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let a = AwsLcChaCha20Poly1305::new(&key.into());
        let tag = a
            .encrypt_inout_detached(&nonce.into(), &aad, msg.as_mut_slice().into())
            .unwrap();
        assert_eq!(
            hex::encode(tag),
            "1ae10b594f09e26a7e902ecbd0600691",
            "the tag of RFC 8439 §2.8.2"
        );
        assert_eq!(hex::encode(&msg[..16]), "d31a8d34648e60db7b86afbc53ef7ec2");
        a.decrypt_inout_detached(&nonce.into(), &aad, msg.as_mut_slice().into(), &tag)
            .unwrap();
        assert!(msg.starts_with(b"Ladies and Gentlemen"));
    }

    proptest! {
        /// Same ciphertext and tag as RustCrypto; each opens the other's;
        /// any flipped bit is refused.
        #[test]
        fn agrees_with_rustcrypto(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 12]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..64),
            msg in proptest::collection::vec(any::<u8>(), 0..2048),
            flip in any::<usize>(),
        ) {
            let ours = AwsLcChaCha20Poly1305::new(&key.into()).clone();
            let theirs = Reference::new(&key.into());
            let mut a = msg.clone();
            let mut b = msg.clone();
            let ta = ours.encrypt_inout_detached(&nonce.into(), &aad, a.as_mut_slice().into()).unwrap();
            let tb = theirs.encrypt_inout_detached(&nonce.into(), &aad, b.as_mut_slice().into()).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(ta.as_slice(), tb.as_slice());

            let mut c = a.clone();
            theirs.decrypt_inout_detached(&nonce.into(), &aad, c.as_mut_slice().into(), &tb).unwrap();
            prop_assert_eq!(&c, &msg);
            ours.decrypt_inout_detached(&nonce.into(), &aad, a.as_mut_slice().into(), &ta).unwrap();
            prop_assert_eq!(&a, &msg);

            let mut bad = b.clone();
            let mut tag = ta;
            if bad.is_empty() {
                tag[flip % 16] ^= 1;
            } else {
                let i = flip % bad.len();
                bad[i] ^= 1;
            }
            prop_assert!(ours.decrypt_inout_detached(&nonce.into(), &aad, bad.as_mut_slice().into(), &tag).is_err());
        }
    }
}
