//! Identifiers and secrets that cross the wire as 32 opaque bytes.
//!
//! Each gets its own newtype so that a send id can never be passed where a
//! receive id is expected: the whole privacy argument rests on the relay never
//! confusing (or revealing) the two sides of a mailbox.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of every id, token and public key on the wire.
pub const ID_LEN: usize = 32;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; ID_LEN]);

        impl $name {
            /// A fresh id from the operating system's CSPRNG.
            pub fn random() -> Self {
                let mut b = [0u8; ID_LEN];
                rand::rngs::OsRng.fill_bytes(&mut b);
                Self(b)
            }

            pub fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }

            /// Lower-case hex, for logs at debug level and for the CLI.
            pub fn to_hex(&self) -> String {
                hex_encode(&self.0)
            }

            /// Parses 64 hex digits.
            pub fn from_hex(s: &str) -> Option<Self> {
                hex_decode32(s).map(Self)
            }
        }

        impl From<[u8; ID_LEN]> for $name {
            fn from(b: [u8; ID_LEN]) -> Self {
                Self(b)
            }
        }

        impl fmt::Debug for $name {
            // Only a prefix: enough to correlate in a debug session, and it
            // keeps full ids out of panics and test output.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let h = self.to_hex();
                write!(f, concat!(stringify!($name), "({}…)"), h.get(..8).unwrap_or(&h))
            }
        }
    };
}

id_type!(
    /// The owner-side name of a mailbox: only the owner and the relay know it.
    ReceiveId
);
id_type!(
    /// The sender-side name of a mailbox, printed on contact cards.
    SendId
);
id_type!(
    /// A mailbox owner's Noise static public key (the XK initiator key).
    OwnerKey
);

/// A delivery token: the capability a sender must show to drop an envelope.
///
/// Its `Debug` never prints the value, and the relay only ever stores its
/// [`TokenDigest`], so a copy of the database does not let anyone send.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeliveryToken(pub [u8; ID_LEN]);

impl DeliveryToken {
    pub fn random() -> Self {
        let mut b = [0u8; ID_LEN];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(b)
    }

    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// The one-way digest the relay stores and compares against.
    pub fn digest(&self) -> TokenDigest {
        let mut h = Sha256::new();
        h.update(b"chappe/1 delivery token");
        h.update(self.0);
        TokenDigest(h.finalize().into())
    }
}

impl fmt::Debug for DeliveryToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeliveryToken(<redacted>)")
    }
}

/// SHA-256 of a [`DeliveryToken`] under a domain label, as kept in the store.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TokenDigest(pub [u8; ID_LEN]);

impl TokenDigest {
    /// Constant-time: a sender learns nothing about a valid token from timing.
    pub fn ct_eq(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// True when `self` equals any of `set`; every entry is compared so the
    /// time does not depend on which one matched.
    pub fn ct_in(&self, set: &[TokenDigest]) -> bool {
        let mut hit = subtle::Choice::from(0u8);
        for d in set {
            hit |= self.0.ct_eq(&d.0);
        }
        hit.into()
    }
}

/// Lower-case hex of any byte string.
pub fn hex_encode(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Parses exactly 64 hex digits into 32 bytes.
pub fn hex_decode32(s: &str) -> Option<[u8; ID_LEN]> {
    let mut out = [0u8; ID_LEN];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = SendId::random();
        assert_eq!(SendId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(SendId::from_hex("zz"), None);
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = DeliveryToken([7; 32]);
        assert!(!format!("{t:?}").contains('7'));
    }

    #[test]
    fn digest_membership() {
        let a = DeliveryToken::random();
        let b = DeliveryToken::random();
        assert!(a.digest().ct_in(&[b.digest(), a.digest()]));
        assert!(!a.digest().ct_in(&[b.digest()]));
        assert!(!a.digest().ct_in(&[]));
    }
}
