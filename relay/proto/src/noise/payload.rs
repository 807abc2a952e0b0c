//! The encrypted payloads carried inside handshake messages.
//!
//! A payload is a list of TLV items: `tag u8, len u16 BE, value`. Tags below
//! 0x80 that a reader does not know are skipped, so a later version can add
//! hints without breaking v1 peers; tags 0x80 and above are *critical*, and a
//! reader that does not know one must fail the handshake. The post-quantum PSK
//! (an ML-KEM ciphertext in message 1) is reserved as critical tag 0x81.

use thiserror::Error;

/// Protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Tag of the protocol version item (value: u16 BE).
pub const TAG_VERSION: u8 = 0x01;
/// Reserved: ML-KEM-768 ciphertext for the planned PQ PSK upgrade.
pub const TAG_PQ_PSK: u8 = 0x81;

/// Largest payload accepted, far above v1's few bytes but bounded so a
/// handshake can never make the reader allocate much.
pub const MAX_PAYLOAD: usize = 2048;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("handshake payload truncated")]
    Truncated,
    #[error("handshake payload longer than {MAX_PAYLOAD} bytes")]
    TooLong,
    #[error("handshake payload has unknown critical item {0:#04x}")]
    UnknownCritical(u8),
    #[error("handshake payload item {0:#04x} has a bad length")]
    BadLength(u8),
    #[error("handshake payload has no protocol version")]
    NoVersion,
}

/// What each side says about itself during the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the sender speaks (client) or chose (relay).
    pub version: u16,
}

impl Default for Hello {
    fn default() -> Self {
        Hello {
            version: PROTOCOL_VERSION,
        }
    }
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5);
        out.push(TAG_VERSION);
        out.extend_from_slice(&2u16.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out
    }

    pub fn decode(mut buf: &[u8]) -> Result<Hello, PayloadError> {
        if buf.len() > MAX_PAYLOAD {
            return Err(PayloadError::TooLong);
        }
        let mut version = None;
        while !buf.is_empty() {
            let [tag, l0, l1, rest @ ..] = buf else {
                return Err(PayloadError::Truncated);
            };
            let len = usize::from(u16::from_be_bytes([*l0, *l1]));
            let (value, rest) = rest.split_at_checked(len).ok_or(PayloadError::Truncated)?;
            match *tag {
                TAG_VERSION => {
                    let v: [u8; 2] = value
                        .try_into()
                        .map_err(|_| PayloadError::BadLength(TAG_VERSION))?;
                    version = Some(u16::from_be_bytes(v));
                }
                t if t >= 0x80 => return Err(PayloadError::UnknownCritical(t)),
                _ => {}
            }
            buf = rest;
        }
        Ok(Hello {
            version: version.ok_or(PayloadError::NoVersion)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_extensions() {
        let h = Hello { version: 7 };
        assert_eq!(Hello::decode(&h.encode()), Ok(h.clone()));
        // An unknown non-critical item is skipped.
        let mut with_hint = vec![0x10, 0, 3, 1, 2, 3];
        with_hint.extend(h.encode());
        assert_eq!(Hello::decode(&with_hint), Ok(h));
        // An unknown critical one is refused.
        assert_eq!(
            Hello::decode(&[TAG_PQ_PSK, 0, 0]),
            Err(PayloadError::UnknownCritical(TAG_PQ_PSK))
        );
        assert_eq!(Hello::decode(&[]), Err(PayloadError::NoVersion));
        assert_eq!(Hello::decode(&[1, 0]), Err(PayloadError::Truncated));
        assert_eq!(Hello::decode(&[1, 0, 5, 0]), Err(PayloadError::Truncated));
        assert_eq!(
            Hello::decode(&[1, 0, 1, 0]),
            Err(PayloadError::BadLength(TAG_VERSION))
        );
    }
}
