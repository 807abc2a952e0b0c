//! The changes the writer journals, and their byte layout inside a journal
//! record.
//!
//! An effect is what a request *did*, decided by the writer (the mailbox,
//! the sequence number, the expiry hour), not what it asked for. Replaying
//! effects needs no validation, no clock and no randomness, so recovery
//! after a crash rebuilds exactly the state the writer had acknowledged.
//!
//! Only envelope changes are journaled. Mailbox changes (create, delete,
//! token rotation) are rare and go to the applier, which commits them to
//! redb before they are answered.
//!
//! ```text
//! payload := effect*
//! put     := 0x01 | receive id [32] | seq u64 | expiry hour u32 | len u32 | ciphertext [len]
//! remove  := 0x02 | receive id [32] | n u16 (1..=MAX_REMOVE) | n × seq u64
//! unindex := 0x03 | receive id [32] | seq u64 | expiry hour u32
//! ```

use bytes::Bytes;
use chappe_proto::ReceiveId;
use chappe_proto::envelope::MAX_CIPHERTEXT;
use chappe_proto::frame::MAX_LIST;

const PUT: u8 = 1;
const REMOVE: u8 = 2;
const UNINDEX: u8 = 3;

/// Most sequence numbers in one remove (an ack frame's limit).
pub const MAX_REMOVE: usize = MAX_LIST;

/// Bytes a put adds to a record besides its ciphertext.
pub(crate) const PUT_OVERHEAD: usize = 1 + 32 + 8 + 4 + 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// An envelope was accepted and numbered.
    Put {
        id: ReceiveId,
        seq: u64,
        expiry: u32,
        ciphertext: Bytes,
    },
    /// Envelopes that existed were acknowledged or expired.
    Remove { id: ReceiveId, seqs: Vec<u64> },
    /// An expiry index row that points at no envelope, or at one that does
    /// not expire then (only damage makes either), is dropped.
    Unindex { id: ReceiveId, seq: u64, hour: u32 },
}

/// Why a payload is not a list of effects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EffectError {
    #[error("unknown effect tag {0:#04x}")]
    Tag(u8),
    #[error("effect cut short")]
    Truncated,
    #[error("put of {0} bytes, more than an envelope can hold")]
    TooLong(u32),
    #[error("remove of {0} sequence numbers (1 to {MAX_REMOVE} allowed)")]
    Count(u16),
}

impl Effect {
    /// Appends the effect's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Effect::Put {
                id,
                seq,
                expiry,
                ciphertext,
            } => {
                out.reserve(PUT_OVERHEAD + ciphertext.len());
                out.push(PUT);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&expiry.to_be_bytes());
                out.extend_from_slice(&len_u32(ciphertext.len()).to_be_bytes());
                out.extend_from_slice(ciphertext);
            }
            Effect::Remove { id, seqs } => {
                // The writer never builds more; cut rather than corrupt.
                let seqs = seqs.get(..seqs.len().min(MAX_REMOVE)).unwrap_or_default();
                out.push(REMOVE);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&u16::try_from(seqs.len()).unwrap_or(0).to_be_bytes());
                for s in seqs {
                    out.extend_from_slice(&s.to_be_bytes());
                }
            }
            Effect::Unindex { id, seq, hour } => {
                out.push(UNINDEX);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&hour.to_be_bytes());
            }
        }
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Decodes a whole payload. Ciphertexts are slices of `payload`, not
/// copies.
pub fn decode(payload: &Bytes) -> Result<Vec<Effect>, EffectError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let bytes = payload.as_ref();
    let take = |at: &mut usize, n: usize| -> Result<&[u8], EffectError> {
        let s = bytes
            .get(*at..)
            .and_then(|r| r.get(..n))
            .ok_or(EffectError::Truncated)?;
        *at += n;
        Ok(s)
    };
    fn arr<const N: usize>(s: &[u8]) -> Result<[u8; N], EffectError> {
        s.try_into().map_err(|_| EffectError::Truncated)
    }
    while at < bytes.len() {
        let [tag] = arr::<1>(take(&mut at, 1)?)?;
        let id = ReceiveId(arr(take(&mut at, 32)?)?);
        match tag {
            PUT => {
                let seq = u64::from_be_bytes(arr(take(&mut at, 8)?)?);
                let expiry = u32::from_be_bytes(arr(take(&mut at, 4)?)?);
                let len = u32::from_be_bytes(arr(take(&mut at, 4)?)?);
                let n = usize::try_from(len).unwrap_or(usize::MAX);
                if n > MAX_CIPHERTEXT {
                    return Err(EffectError::TooLong(len));
                }
                let start = at;
                take(&mut at, n)?;
                out.push(Effect::Put {
                    id,
                    seq,
                    expiry,
                    ciphertext: payload.slice(start..at),
                });
            }
            REMOVE => {
                let n = u16::from_be_bytes(arr(take(&mut at, 2)?)?);
                if n == 0 || usize::from(n) > MAX_REMOVE {
                    return Err(EffectError::Count(n));
                }
                let raw = take(&mut at, usize::from(n) * 8)?;
                let seqs = raw
                    .chunks_exact(8)
                    .map(|c| arr::<8>(c).map(u64::from_be_bytes))
                    .collect::<Result<_, _>>()?;
                out.push(Effect::Remove { id, seqs });
            }
            UNINDEX => {
                let seq = u64::from_be_bytes(arr(take(&mut at, 8)?)?);
                let hour = u32::from_be_bytes(arr(take(&mut at, 4)?)?);
                out.push(Effect::Unindex { id, seq, hour });
            }
            t => return Err(EffectError::Tag(t)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn effect() -> impl Strategy<Value = Effect> {
        prop_oneof![
            (
                any::<[u8; 32]>(),
                any::<u64>(),
                any::<u32>(),
                prop::collection::vec(any::<u8>(), 0..3000)
            )
                .prop_map(|(id, seq, expiry, ct)| Effect::Put {
                    id: ReceiveId(id),
                    seq,
                    expiry,
                    ciphertext: Bytes::from(ct),
                }),
            (
                any::<[u8; 32]>(),
                prop::collection::vec(any::<u64>(), 1..50)
            )
                .prop_map(|(id, seqs)| Effect::Remove {
                    id: ReceiveId(id),
                    seqs
                }),
            (any::<[u8; 32]>(), any::<u64>(), any::<u32>()).prop_map(|(id, seq, hour)| {
                Effect::Unindex {
                    id: ReceiveId(id),
                    seq,
                    hour,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(effects in prop::collection::vec(effect(), 0..20)) {
            let mut buf = Vec::new();
            for e in &effects {
                e.encode_into(&mut buf);
            }
            prop_assert_eq!(decode(&Bytes::from(buf)).unwrap(), effects);
        }

        /// Any prefix that cuts an effect is an error, never a panic or a
        /// shorter list passed off as whole.
        #[test]
        fn cut_short_is_an_error(e in effect(), cut in any::<prop::sample::Index>()) {
            let mut buf = Vec::new();
            e.encode_into(&mut buf);
            let cut = cut.index(buf.len());
            prop_assume!(cut > 0);
            prop_assert_eq!(decode(&Bytes::copy_from_slice(&buf[..cut])), Err(EffectError::Truncated));
        }
    }

    #[test]
    fn limits() {
        let id = [0u8; 32];
        let mut b = vec![PUT];
        b.extend_from_slice(&id);
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&(MAX_CIPHERTEXT as u32 + 1).to_be_bytes());
        assert_eq!(
            decode(&Bytes::from(b)),
            Err(EffectError::TooLong(MAX_CIPHERTEXT as u32 + 1))
        );
        let mut b = vec![REMOVE];
        b.extend_from_slice(&id);
        b.extend_from_slice(&0u16.to_be_bytes());
        assert_eq!(decode(&Bytes::from(b)), Err(EffectError::Count(0)));
        let mut b = vec![9];
        b.extend_from_slice(&id);
        assert_eq!(decode(&Bytes::from(b)), Err(EffectError::Tag(9)));
        assert_eq!(decode(&Bytes::new()), Ok(vec![]));
    }
}
