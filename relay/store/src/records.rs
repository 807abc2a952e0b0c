//! Codecs for the values the store writes (keys live in [`crate::schema`]).
//!
//! Everything is fixed-width big-endian with no framing beyond what the
//! layout needs. Decoding never trusts the disk: a short, long or
//! out-of-range value is a [`StoreError::Corrupt`], never a panic.
//!
//! Mailbox record (value of `mailboxes`), 85 + 32·n bytes:
//!
//! ```text
//! send id [32] | owner key [32] | envelopes u32 | bytes u64 | next seq u64 | n u8 (1..=8) | n × token digest [32]
//! ```
//!
//! Envelope (value of `envelopes`), 4 + up to [`FIRST_PART`] ciphertext
//! bytes, and the rest of a longer ciphertext in `envelope_parts`, in parts
//! of up to [`PART`] bytes numbered from 1:
//!
//! ```text
//! expiry hour u32 | ciphertext[..FIRST_PART]        (envelopes)
//! ciphertext[FIRST_PART + (n-1)·PART ..][..PART]    (envelope_parts, part n)
//! ```
//!
//! Why split: redb gives a leaf that outgrows a page a run of pages rounded
//! up to a power of two. A 64 KiB envelope plus its key and header is just
//! over 64 KiB, so it took a 128 KiB run that was zeroed, checksummed,
//! written and synced whole (measured with `raw-redb` on tmpfs: 65,540-byte
//! values insert at 229–291 MB/s and grow the file by 200–258 KB each,
//! 32,700-byte values at 535–617 MB/s and 40–46 KB each). Parts sized so
//! that a leaf holding one of them fits 32 KiB waste at most the last part's
//! slack. An envelope whose first part is shorter than [`FIRST_PART`] has no
//! other parts, which is also how a version 1 store, whose envelopes were
//! never split, still reads correctly.
//!
//! Meta values are one `u64`, 8 bytes.

use chappe_proto::frame::MAX_TOKENS;
use chappe_proto::ids::ID_LEN;
use chappe_proto::{OwnerKey, SendId, TokenDigest};

use crate::error::StoreError;

/// Bytes before the ciphertext in an envelope value.
pub(crate) const ENVELOPE_HEADER: usize = 4;

/// A redb leaf page holding one entry: a 4-byte page header, the value's
/// 4-byte end offset (keys are fixed-width and carry none), the key (40
/// bytes in `envelopes`, 41 in `envelope_parts`), the value. The limits
/// below keep such a leaf within one 32 KiB run.
const LEAF_RUN: usize = 32 * 1024;
const LEAF_OVERHEAD: usize = 4 + 4;

/// Most ciphertext bytes kept in the `envelopes` value itself.
pub(crate) const FIRST_PART: usize = LEAF_RUN - LEAF_OVERHEAD - 40 - ENVELOPE_HEADER;

/// Most ciphertext bytes in one `envelope_parts` value.
pub(crate) const PART: usize = LEAF_RUN - LEAF_OVERHEAD - 41;

// Part numbers are one byte.
const _: () = assert!(
    (chappe_proto::envelope::MAX_CIPHERTEXT - FIRST_PART).div_ceil(PART) < u8::MAX as usize
);

/// The ciphertext kept in the `envelopes` value, and the parts that follow
/// it, in order.
pub(crate) fn split_ciphertext(ct: &[u8]) -> (&[u8], std::slice::Chunks<'_, u8>) {
    let (first, rest) = ct.split_at(ct.len().min(FIRST_PART));
    (first, rest.chunks(PART))
}

/// Whether an `envelopes` value may be followed by parts: only a full
/// first part can be.
pub(crate) fn may_have_parts(value: &[u8]) -> bool {
    value.len() == ENVELOPE_HEADER + FIRST_PART
}

/// Up to [`MAX_TOKENS`] digests, inline, so decoding a record on the send
/// path allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TokenList {
    digests: [TokenDigest; MAX_TOKENS],
    len: usize,
}

impl TokenList {
    /// `None` unless 1..=[`MAX_TOKENS`] digests: a mailbox nobody can send
    /// to is useless, and the cap bounds the constant-time comparison.
    pub(crate) fn new(tokens: &[TokenDigest]) -> Option<Self> {
        if tokens.is_empty() || tokens.len() > MAX_TOKENS {
            return None;
        }
        let mut digests = [TokenDigest([0; ID_LEN]); MAX_TOKENS];
        for (slot, t) in digests.iter_mut().zip(tokens) {
            *slot = *t;
        }
        Some(TokenList {
            digests,
            len: tokens.len(),
        })
    }

    pub(crate) fn as_slice(&self) -> &[TokenDigest] {
        self.digests.get(..self.len).unwrap_or(&[])
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MailboxRecord {
    pub send_id: SendId,
    pub owner: OwnerKey,
    /// Envelopes stored and not yet acknowledged or expired.
    pub envelopes: u32,
    /// Their ciphertext bytes.
    pub bytes: u64,
    /// The sequence number the next envelope gets; never reused, so an owner
    /// can resume a fetch from the last number it saw.
    pub next_seq: u64,
    pub tokens: TokenList,
}

impl MailboxRecord {
    /// Writes the record into `out` (cleared first), so the writer can reuse
    /// one buffer for every record it touches.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let tokens = self.tokens.as_slice();
        out.clear();
        out.reserve(85 + ID_LEN * tokens.len());
        out.extend_from_slice(&self.send_id.0);
        out.extend_from_slice(&self.owner.0);
        out.extend_from_slice(&self.envelopes.to_be_bytes());
        out.extend_from_slice(&self.bytes.to_be_bytes());
        out.extend_from_slice(&self.next_seq.to_be_bytes());
        out.push(u8::try_from(tokens.len()).unwrap_or(0));
        for t in tokens {
            out.extend_from_slice(&t.0);
        }
    }

    pub(crate) fn decode(v: &[u8]) -> Result<Self, StoreError> {
        let mut c = Cursor::new(v, "mailboxes");
        let send_id = SendId(c.take()?);
        let owner = OwnerKey(c.take()?);
        let envelopes = u32::from_be_bytes(c.take()?);
        let bytes = u64::from_be_bytes(c.take()?);
        let next_seq = u64::from_be_bytes(c.take()?);
        let [n] = c.take::<1>()?;
        let n = usize::from(n);
        if n == 0 || n > MAX_TOKENS {
            return Err(c.corrupt("token count out of range"));
        }
        let mut digests = [TokenDigest([0; ID_LEN]); MAX_TOKENS];
        for slot in digests.iter_mut().take(n) {
            *slot = TokenDigest(c.take()?);
        }
        c.finish()?;
        Ok(MailboxRecord {
            send_id,
            owner,
            envelopes,
            bytes,
            next_seq,
            tokens: TokenList { digests, len: n },
        })
    }
}

/// Fills a slot of `ENVELOPE_HEADER + ciphertext.len()` bytes reserved in
/// the table, so the ciphertext is copied once, straight into the page.
/// Returns false if the slot has the wrong size.
pub(crate) fn write_envelope(slot: &mut [u8], expiry: u32, ciphertext: &[u8]) -> bool {
    match slot.split_first_chunk_mut::<ENVELOPE_HEADER>() {
        Some((head, body)) if body.len() == ciphertext.len() => {
            *head = expiry.to_be_bytes();
            body.copy_from_slice(ciphertext);
            true
        }
        _ => false,
    }
}

/// Splits an envelope value into its expiry hour and ciphertext.
pub(crate) fn read_envelope(v: &[u8]) -> Result<(u32, &[u8]), StoreError> {
    let (head, ct) = v
        .split_first_chunk::<ENVELOPE_HEADER>()
        .ok_or(StoreError::corrupt("envelopes", "shorter than its header"))?;
    Ok((u32::from_be_bytes(*head), ct))
}

/// The ciphertext length of an envelope value, even a damaged one: what
/// delete paths subtract from the totals when they cannot decode more.
pub(crate) fn stored_len(v: &[u8]) -> u64 {
    byte_len(v.get(ENVELOPE_HEADER..).unwrap_or_default())
}

/// A length as the store counts bytes.
pub(crate) fn byte_len(v: &[u8]) -> u64 {
    u64::try_from(v.len()).unwrap_or(u64::MAX)
}

pub(crate) fn read_u64(v: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::corrupt("meta", "value is not 8 bytes"))
}

/// A read position that turns every short read into a typed error.
struct Cursor<'a> {
    rest: &'a [u8],
    table: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(rest: &'a [u8], table: &'static str) -> Self {
        Cursor { rest, table }
    }

    fn corrupt(&self, detail: &'static str) -> StoreError {
        StoreError::corrupt(self.table, detail)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(self.corrupt("truncated record"))?;
        self.rest = rest;
        Ok(*head)
    }

    fn finish(self) -> Result<(), StoreError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes after record"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> MailboxRecord {
        let tokens: Vec<_> = (0..n).map(|i| TokenDigest([i as u8; 32])).collect();
        MailboxRecord {
            send_id: SendId([1; 32]),
            owner: OwnerKey([2; 32]),
            envelopes: 7,
            bytes: 7 * 1024,
            next_seq: 42,
            tokens: TokenList::new(&tokens).unwrap(),
        }
    }

    #[test]
    fn record_round_trip() {
        let mut buf = Vec::new();
        for n in 1..=MAX_TOKENS {
            let r = record(n);
            r.encode_into(&mut buf);
            assert_eq!(buf.len(), 85 + 32 * n);
            assert_eq!(MailboxRecord::decode(&buf).unwrap(), r);
            assert_eq!(r.tokens.as_slice().len(), n);
        }
    }

    #[test]
    fn corrupt_records_are_errors() {
        let mut buf = Vec::new();
        record(2).encode_into(&mut buf);
        for len in 0..buf.len() {
            assert!(MailboxRecord::decode(&buf[..len]).is_err(), "len {len}");
        }
        let mut long = buf.clone();
        long.push(0);
        assert!(MailboxRecord::decode(&long).is_err());
        let mut zero = buf.clone();
        zero[84] = 0;
        assert!(MailboxRecord::decode(&zero[..85]).is_err());
        let mut nine = buf;
        nine[84] = 9;
        assert!(MailboxRecord::decode(&nine).is_err());
    }

    #[test]
    fn token_list_bounds() {
        assert!(TokenList::new(&[]).is_none());
        assert!(TokenList::new(&[TokenDigest([0; 32]); MAX_TOKENS + 1]).is_none());
    }

    #[test]
    fn envelope_round_trip() {
        let ct = [9u8; 1024];
        let mut slot = vec![0u8; ENVELOPE_HEADER + ct.len()];
        assert!(write_envelope(&mut slot, 77, &ct));
        let (e, got) = read_envelope(&slot).unwrap();
        assert_eq!((e, got), (77, &ct[..]));
        assert_eq!(stored_len(&slot), 1024);
        assert!(!write_envelope(&mut slot[..10], 1, &ct));
        assert!(read_envelope(&[0, 1]).is_err());
        assert!(read_u64(&[0; 7]).is_err());
        assert_eq!(read_u64(&5u64.to_be_bytes()).unwrap(), 5);
    }
}
