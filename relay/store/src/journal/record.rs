//! The journal's on-disk layout: the file header and the record header,
//! with no I/O, so that a fuzzer can feed both arbitrary bytes.
//!
//! ```text
//! file header (block 0, FILE_HEADER bytes, written once at creation):
//!   magic "CHAPPEJ1" | version u32 | zero u32 | ring size u64 | journal id [16]
//!   | MAC key [32] | crc32 of the preceding 72 bytes u32 | zeros
//!
//! record header (RECORD_HEADER bytes, at an 8-aligned ring position),
//! followed by the payload:
//!   seq u64 | payload length u32 | kind u8 | zero [3]
//!   | MAC [16] = HMAC-SHA256(key, position u64 ‖ the 16 bytes before ‖ payload)[..16]
//! ```
//!
//! Why a MAC and not only a checksum: the journal holds ciphertext that
//! anyone with a contact card can choose. After a crash, recovery reads the
//! bytes that follow the last record written, which may be what an earlier
//! lap of the ring left there, ciphertext included. A CRC is no obstacle to
//! someone who wants those bytes to look like a record of their making; a
//! MAC under a key that never leaves the state directory is. The MAC covers
//! the record's position too, so a genuine record is valid only where it
//! was written, and its sequence number, so an older lap's genuine records
//! are told apart from the current one's (recovery wants increasing
//! numbers). The MAC covers the payload itself: format version 1 bound only a
//! CRC of it, and a CRC is not a commitment (bytes with the same CRC are
//! easy to make), so the payload of a genuine header could have been
//! replaced without the MAC noticing. Version 2 (this one) has no CRC; a
//! version 1 journal is only accepted if it holds nothing to replay (see
//! `crate::store`).

use aws_lc_rs::hmac;

/// Bytes before the ring: the file header, padded to one block.
pub(crate) const FILE_HEADER: u64 = 4096;
/// Bytes of a record header.
pub(crate) const RECORD_HEADER: usize = 32;
/// Records start at multiples of this.
pub(crate) const ALIGN: u64 = 8;

const MAGIC: [u8; 8] = *b"CHAPPEJ1";
/// The format this build writes and replays.
pub(crate) const VERSION: u32 = 2;
/// The format with a header-only MAC and a CRC of the payload: recognised
/// so that an upgrade can say what to do with it, never replayed.
pub(crate) const VERSION_1: u32 = 1;
const FILE_HEADER_USED: usize = 76;
const MAC_LEN: usize = 16;
const BODY_LEN: usize = RECORD_HEADER - MAC_LEN;
/// Bytes of the journal's MAC key.
pub const KEY_LEN: usize = 32;
pub(crate) const ID_LEN: usize = 16;

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One batch of the writer: the store's changes, in order.
    Batch = 1,
    /// Nothing more in this lap: the record with the same sequence number
    /// starts at the beginning of the ring.
    Wrap = 2,
}

/// What the file header holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileHeader {
    /// [`VERSION`] or [`VERSION_1`].
    pub version: u32,
    pub ring: u64,
    pub id: [u8; ID_LEN],
    pub key: [u8; KEY_LEN],
}

/// Why a file header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a Chappe journal (bad magic)")]
    Magic,
    #[error("journal format version {0}, this build reads version 2")]
    Version(u32),
    #[error("journal header checksum does not match")]
    Checksum,
    #[error("journal ring size {0} is not a multiple of 4096 of at least 1 MiB")]
    RingSize(u64),
    #[error("journal header is shorter than {FILE_HEADER_USED} bytes")]
    Short,
}

/// The smallest ring the journal accepts: a few of the largest batches.
pub(crate) const MIN_RING: u64 = 1 << 20;

/// Whether `ring` is a usable ring size.
pub(crate) fn ring_ok(ring: u64) -> bool {
    ring >= MIN_RING && ring.is_multiple_of(FILE_HEADER)
}

impl FileHeader {
    pub(crate) fn encode(&self) -> [u8; FILE_HEADER_USED] {
        let mut out = [0u8; FILE_HEADER_USED];
        let body = [
            &MAGIC[..],
            &self.version.to_be_bytes(),
            &[0; 4],
            &self.ring.to_be_bytes(),
            &self.id,
            &self.key,
        ]
        .concat();
        let crc = crc32fast::hash(&body);
        for (dst, src) in out.iter_mut().zip(body.iter().chain(&crc.to_be_bytes())) {
            *dst = *src;
        }
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Result<FileHeader, HeaderError> {
        let (body, rest) = b
            .split_first_chunk::<{ FILE_HEADER_USED - 4 }>()
            .ok_or(HeaderError::Short)?;
        let crc = rest.first_chunk::<4>().ok_or(HeaderError::Short)?;
        let (magic, f) = body.split_first_chunk::<8>().ok_or(HeaderError::Short)?;
        if *magic != MAGIC {
            return Err(HeaderError::Magic);
        }
        let (version, f) = f.split_first_chunk::<4>().ok_or(HeaderError::Short)?;
        let version = u32::from_be_bytes(*version);
        if version != VERSION && version != VERSION_1 {
            return Err(HeaderError::Version(version));
        }
        if crc32fast::hash(body).to_be_bytes() != *crc {
            return Err(HeaderError::Checksum);
        }
        let (_zero, f) = f.split_first_chunk::<4>().ok_or(HeaderError::Short)?;
        let (ring, f) = f.split_first_chunk::<8>().ok_or(HeaderError::Short)?;
        let ring = u64::from_be_bytes(*ring);
        if !ring_ok(ring) {
            return Err(HeaderError::RingSize(ring));
        }
        let (id, f) = f.split_first_chunk::<ID_LEN>().ok_or(HeaderError::Short)?;
        let key = f.first_chunk::<KEY_LEN>().ok_or(HeaderError::Short)?;
        Ok(FileHeader {
            version,
            ring,
            id: *id,
            key: *key,
        })
    }
}

/// A record header as read back, before its MAC was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub seq: u64,
    pub len: u32,
    pub kind: Kind,
}

/// Signs and checks records with the journal's key.
#[derive(Clone)]
pub(crate) struct Sealer {
    key: hmac::Key,
}

impl Sealer {
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Self {
        Sealer {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    fn mac(&self, pos: u64, body: &[u8; BODY_LEN], payload: &[u8]) -> [u8; MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&pos.to_be_bytes());
        ctx.update(body);
        ctx.update(payload);
        let tag = ctx.sign();
        tag.as_ref()
            .first_chunk::<MAC_LEN>()
            .copied()
            .unwrap_or_default()
    }

    /// The header of a record at ring position `pos` holding `payload`.
    pub(crate) fn seal(&self, pos: u64, h: &RecordHeader, payload: &[u8]) -> [u8; RECORD_HEADER] {
        let mut body = [0u8; BODY_LEN];
        let (seq, rest) = body.split_at_mut(8);
        seq.copy_from_slice(&h.seq.to_be_bytes());
        let (len, rest) = rest.split_at_mut(4);
        len.copy_from_slice(&h.len.to_be_bytes());
        if let Some(kind) = rest.first_mut() {
            *kind = h.kind as u8;
        }
        let mac = self.mac(pos, &body, payload);
        let mut out = [0u8; RECORD_HEADER];
        let (b, m) = out.split_at_mut(BODY_LEN);
        b.copy_from_slice(&body);
        m.copy_from_slice(&mac);
        out
    }

    /// What a header says, if it is laid out as one (zeros where zeros
    /// belong, a known kind). Cheap, so that a search through the ring
    /// only reads the payload and computes a MAC where a record could be;
    /// says nothing about whether this journal wrote it ([`Sealer::verify`]).
    pub(crate) fn parse(raw: &[u8; RECORD_HEADER]) -> Option<RecordHeader> {
        let (body, _) = raw.split_first_chunk::<BODY_LEN>()?;
        let [
            s0,
            s1,
            s2,
            s3,
            s4,
            s5,
            s6,
            s7,
            l0,
            l1,
            l2,
            l3,
            kind,
            z0,
            z1,
            z2,
        ] = *body;
        if (z0, z1, z2) != (0, 0, 0) {
            return None;
        }
        let kind = match kind {
            1 => Kind::Batch,
            2 => Kind::Wrap,
            _ => return None,
        };
        let len = u32::from_be_bytes([l0, l1, l2, l3]);
        if kind == Kind::Wrap && len != 0 {
            return None;
        }
        Some(RecordHeader {
            seq: u64::from_be_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            len,
            kind,
        })
    }

    /// Whether the record at ring position `pos` with this header and
    /// `payload` is one this journal wrote there: anything else (zeros, a
    /// torn write, an older lap's bytes, forged or damaged bytes) fails.
    pub(crate) fn verify(&self, pos: u64, raw: &[u8; RECORD_HEADER], payload: &[u8]) -> bool {
        let Some((body, mac)) = raw.split_first_chunk::<BODY_LEN>() else {
            return false;
        };
        let want = self.mac(pos, body, payload);
        // Constant time: the MAC is what keeps chosen bytes from parsing.
        aws_lc_rs::constant_time::verify_slices_are_equal(&want, mac).is_ok()
    }
}

/// `n` rounded up to the record alignment.
pub(crate) fn aligned(n: u64) -> u64 {
    n.div_ceil(ALIGN).saturating_mul(ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> FileHeader {
        FileHeader {
            version: VERSION,
            ring: 4 << 20,
            id: [7; ID_LEN],
            key: [9; KEY_LEN],
        }
    }

    #[test]
    fn file_header_round_trip_and_damage() {
        let h = header();
        let b = h.encode();
        assert_eq!(FileHeader::decode(&b), Ok(h));
        for i in 0..b.len() {
            let mut d = b;
            d[i] ^= 0x01;
            assert!(FileHeader::decode(&d).is_err(), "byte {i}");
        }
        for len in 0..b.len() {
            assert_eq!(FileHeader::decode(&b[..len]), Err(HeaderError::Short));
        }
        let mut odd = header();
        odd.ring = (4 << 20) + 8;
        assert_eq!(
            FileHeader::decode(&odd.encode()),
            Err(HeaderError::RingSize((4 << 20) + 8))
        );
        let old = FileHeader {
            version: VERSION_1,
            ..header()
        };
        assert_eq!(FileHeader::decode(&old.encode()), Ok(old));
        let future = FileHeader {
            version: 3,
            ..header()
        };
        assert_eq!(
            FileHeader::decode(&future.encode()),
            Err(HeaderError::Version(3))
        );
    }

    #[test]
    fn a_record_is_bound_to_key_position_header_and_payload() {
        let s = Sealer::new(&[1; KEY_LEN]);
        let payload = b"the batch".to_vec();
        let h = RecordHeader {
            seq: 42,
            len: payload.len() as u32,
            kind: Kind::Batch,
        };
        let raw = s.seal(4096, &h, &payload);
        assert_eq!(Sealer::parse(&raw), Some(h));
        assert!(s.verify(4096, &raw, &payload));
        assert!(!s.verify(4104, &raw, &payload), "moved");
        assert!(
            !Sealer::new(&[2; KEY_LEN]).verify(4096, &raw, &payload),
            "other key"
        );
        for i in 0..RECORD_HEADER {
            let mut d = raw;
            d[i] ^= 0x80;
            assert!(!s.verify(4096, &d, &payload), "header byte {i}");
        }
        for i in 0..payload.len() {
            let mut p = payload.clone();
            p[i] ^= 0x01;
            assert!(!s.verify(4096, &raw, &p), "payload byte {i}");
        }
        assert_eq!(Sealer::parse(&[0; RECORD_HEADER]), None, "zeros");
        let wrap = RecordHeader {
            kind: Kind::Wrap,
            len: 0,
            ..h
        };
        let raw = s.seal(8, &wrap, &[]);
        assert_eq!(Sealer::parse(&raw), Some(wrap));
        assert!(s.verify(8, &raw, &[]));
    }

    #[test]
    fn alignment() {
        assert_eq!(aligned(0), 0);
        assert_eq!(aligned(1), 8);
        assert_eq!(aligned(32), 32);
        assert_eq!(aligned(33), 40);
    }
}
