//! `seal::open` with a fixed mailbox key. The first byte picks a bucket
//! (`BUCKETS[b % 5]`) and a mode (`b / 5 % 3`):
//!
//! - 0: the rest, padded with zeros or cut to the bucket, as the envelope.
//!   Must be refused (`BadSize` exactly when the bucket is below `OVERHEAD`),
//!   unless it is a genuine envelope from the fixed identity (a replay).
//! - 1: the rest, padded or cut to the bucket's plaintext size, sealed with
//!   HPKE to the mailbox as the spec says (deterministic test RNG), so that
//!   the plaintext parser is reached. Must never be `Decrypt`/`BadSize`; if
//!   it opens, the sender is the fixed identity (no one else can sign) and
//!   the fields are those of the plaintext.
//! - 2: a genuine `seal` of the rest (after 3 bytes: a position and an XOR
//!   value) by the fixed identity, changed at that position when the XOR
//!   value is not 0. Opens, to the same body, iff unchanged; a changed one
//!   fails to decrypt.
#![no_main]

use std::sync::LazyLock;

use chappe_client::identity::Identity;
use chappe_client::seal::{self, ENC_LEN, MailboxKeyPair, OVERHEAD, OpenError, TAG_LEN};
use chappe_fuzz::{NOW, SEND_ID, SplitMix};
use chappe_proto::SendId;
use chappe_proto::envelope::BUCKETS;
use hpke::{Deserializable as _, OpModeS, Serializable as _};
use libfuzzer_sys::fuzz_target;

type XWing = hpke::kem::XWing;

static IDENTITY: LazyLock<Identity> = LazyLock::new(chappe_fuzz::identity);
static MAILBOX: LazyLock<MailboxKeyPair> = LazyLock::new(chappe_fuzz::mailbox);
static RECIPIENT: LazyLock<<XWing as hpke::Kem>::PublicKey> = LazyLock::new(|| {
    match <XWing as hpke::Kem>::PublicKey::from_bytes(&MAILBOX.public_key().to_bytes()) {
        Ok(pk) => pk,
        Err(e) => panic!("mailbox public key does not load in hpke: {e:?}"),
    }
});

fn resized(data: &[u8], len: usize) -> Vec<u8> {
    let mut v = data.get(..len).unwrap_or(data).to_vec();
    v.resize(len, 0);
    v
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

fuzz_target!(|data: &[u8]| {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    let bucket = BUCKETS[usize::from(b) % BUCKETS.len()];
    let send_id = SendId(SEND_ID);
    match b / 5 % 3 {
        1 if bucket >= OVERHEAD => {
            let pt = resized(rest, bucket - ENC_LEN - TAG_LEN);
            let mut info = b"chappe/1 envelope".to_vec();
            info.extend_from_slice(&SEND_ID);
            let mut rng = SplitMix(u64::from(b));
            let sealed = hpke::single_shot_seal_with_rng::<
                hpke::aead::ChaCha20Poly1305,
                hpke::kdf::HkdfSha256,
                XWing,
            >(&OpModeS::Base, &RECIPIENT, &info, &pt, &[], &mut rng);
            let (enc, ct) = match sealed {
                Ok(x) => x,
                Err(e) => panic!("hpke seal failed: {e:?}"),
            };
            let mut env = enc.to_bytes().to_vec();
            env.extend_from_slice(&ct);
            assert_eq!(env.len(), bucket);
            match seal::open(&MAILBOX, &send_id, &env) {
                Ok(o) => {
                    assert_eq!(o.sender_identity, IDENTITY.public_key(), "forged sender");
                    assert_eq!(pt.get(1..17), Some(&o.message_id[..]));
                    assert_eq!(pt.get(17..25).and_then(be_u64), Some(o.timestamp));
                    assert_eq!(pt.get(237..237 + o.body.len()), Some(&o.body[..]));
                }
                Err(e) => assert!(
                    !matches!(e, OpenError::Decrypt | OpenError::BadSize { .. }),
                    "a correctly sealed envelope failed with {e:?}"
                ),
            }
        }
        2 => {
            let [p0, p1, x, body @ ..] = rest else {
                return;
            };
            let env = match seal::seal(&IDENTITY, MAILBOX.public_key(), &send_id, body, NOW) {
                Ok(env) => env,
                Err(seal::SealError::TooLarge { .. }) if body.len() > seal::MAX_BODY => return,
                Err(e) => panic!("seal failed: {e:?}"),
            };
            assert!(BUCKETS.contains(&env.len()));
            let mut env = env;
            let pos = usize::from(u16::from_be_bytes([*p0, *p1])) % env.len();
            env[pos] ^= *x;
            match seal::open(&MAILBOX, &send_id, &env) {
                Ok(o) => {
                    assert_eq!(*x, 0, "envelope changed at {pos} still opened");
                    assert_eq!(o.body, body);
                    assert_eq!(o.timestamp, NOW);
                    assert_eq!(o.sender_identity, IDENTITY.public_key());
                }
                Err(e) => {
                    assert_ne!(*x, 0, "genuine envelope refused: {e:?}");
                    assert_eq!(e, OpenError::Decrypt, "changed at {pos}");
                }
            }
        }
        _ => {
            let env = resized(rest, bucket);
            let r = seal::open(&MAILBOX, &send_id, &env);
            if bucket < OVERHEAD {
                assert_eq!(r, Err(OpenError::BadSize { len: bucket }));
            } else {
                match r {
                    // Only a replayed genuine envelope (as in the seeds) opens.
                    Ok(o) => assert_eq!(o.sender_identity, IDENTITY.public_key(), "forged sender"),
                    Err(e) => assert!(!matches!(e, OpenError::BadSize { .. }), "{e:?}"),
                }
            }
        }
    }
});
