//! Contact cards: everything a sender needs to write to one mailbox, in one
//! line the owner can paste into a chat, an e-mail or a QR code.
//!
//! A card is a capability: it carries the delivery token, so whoever holds it
//! can drop envelopes into the mailbox (they still cannot read it). Hand each
//! correspondent their own mailbox and card, and rotate the token to revoke.
//!
//! # Text form
//!
//! `chappe-card1:` followed by the binary form below in base64url without
//! padding (RFC 4648 §5; padding, non-canonical trailing bits and characters
//! outside the alphabet are rejected). Leading and trailing ASCII whitespace
//! (space, tab, line feed, form feed, carriage return) is removed first,
//! since copy and paste adds it; nothing else is. What remains may be at
//! most [`MAX_CARD_TEXT`] bytes (3216, the longest valid card), checked
//! before anything is decoded.
//!
//! # Binary form
//!
//! Integers are big-endian. `R` is the length of the relay descriptor.
//!
//! | offset | length | field |
//! | -----: | -----: | ----- |
//! | 0 | 2 | `R`, u16, 1 ≤ `R` ≤ [`MAX_RELAY_LEN`] |
//! | 2 | `R` | relay descriptor: printable ASCII (`0x21..=0x7e`) that parses as a [`Descriptor`] |
//! | 2 + `R` | 32 | send id |
//! | 34 + `R` | 32 | delivery token |
//! | 66 + `R` | 1216 | mailbox X-Wing public key |
//! | 1282 + `R` | 32 | owner identity public key (Ed25519) |
//! | 1314 + `R` | 64 | Ed25519 signature by the owner identity key |
//!
//! Total `1378 + R` bytes; no bytes may follow. The signature covers the
//! 21 ASCII bytes `"chappe/1 contact card"` followed by bytes `0 .. 1314 + R`
//! (everything before the signature).
//!
//! The mailbox key must pass [`MailboxPublicKey::from_bytes`] (ML-KEM
//! coefficients below q, X25519 half not of low order) and the owner key
//! must be a canonical Ed25519 point not of small order; the signature is
//! verified strictly (canonical `S`, cofactorless equation, `R` not of
//! small order).
//!
//! The signature is by the identity key, not a sender key, so a card stays
//! valid as long as the mailbox does. It lets a sender who has checked the
//! owner's fingerprint know that the relay, send id and mailbox key are the
//! owner's choice and not a substitute planted on the way.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chappe_proto::descriptor::{Descriptor, DescriptorError};
use chappe_proto::ids::ID_LEN;
use chappe_proto::{DeliveryToken, SendId};
use ed25519_dalek::Signature;

use crate::identity::{Identity, IdentityKey, KEY_LEN, SIGNATURE_LEN};
use crate::seal::{KeyError, MAILBOX_PUBLIC_KEY_LEN, MailboxPublicKey};

/// What every version-1 card starts with.
pub const CARD_PREFIX: &str = "chappe-card1:";
/// Longest relay descriptor a card carries. Descriptors are a few hundred
/// bytes; the bound keeps a hostile card from being large.
pub const MAX_RELAY_LEN: usize = 1024;
/// Binary bytes besides the relay descriptor.
pub const CARD_FIXED_LEN: usize =
    2 + ID_LEN + ID_LEN + MAILBOX_PUBLIC_KEY_LEN + KEY_LEN + SIGNATURE_LEN;

/// Domain label of the owner's signature.
const CARD_LABEL: &[u8] = b"chappe/1 contact card";
/// Any future card version shares this stem, so it can be told from garbage.
const CARD_STEM: &str = "chappe-card";
/// Longest text a valid card can be (3216 bytes: the prefix and the
/// unpadded base64url of `CARD_FIXED_LEN + MAX_RELAY_LEN` bytes), checked
/// after trimming and before decoding anything.
pub const MAX_CARD_TEXT: usize =
    CARD_PREFIX.len() + ((CARD_FIXED_LEN + MAX_RELAY_LEN) * 4).div_ceil(3);

/// Why a card was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("not a contact card: it must start with `{CARD_PREFIX}`")]
    MissingPrefix,
    #[error("contact card version is not supported (this client reads `{CARD_PREFIX}`)")]
    UnsupportedVersion,
    #[error("contact card is {len} characters, more than any valid card")]
    TooLong { len: usize },
    #[error("contact card is not base64url without padding: {0}")]
    Base64(base64::DecodeError),
    #[error("contact card is truncated")]
    Truncated,
    #[error("contact card has {0} bytes after its signature")]
    TrailingBytes(usize),
    #[error("relay descriptor length {len} is outside 1..={MAX_RELAY_LEN}")]
    RelayLength { len: usize },
    #[error("relay descriptor holds a byte outside printable ASCII (0x21 to 0x7e)")]
    RelayText,
    #[error("relay descriptor in the card is not valid: {0}")]
    RelayDescriptor(DescriptorError),
    #[error("contact card mailbox key is not a valid X-Wing public key: {0}")]
    BadMailboxKey(KeyError),
    #[error("contact card owner key is not a valid Ed25519 public key")]
    BadOwnerKey,
    #[error("contact card signature does not verify")]
    BadSignature,
}

/// A signed contact card (see the module docs for the format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    relay: Descriptor,
    send_id: SendId,
    token: DeliveryToken,
    recipient: MailboxPublicKey,
    owner: IdentityKey,
    signature: Signature,
}

impl Card {
    /// Signs a card for a mailbox the owner created on `relay`. Refuses a
    /// descriptor whose text is longer than [`MAX_RELAY_LEN`] or does not
    /// parse back (its fields are public, so it can hold a bad host).
    pub fn new(
        owner: &Identity,
        relay: &Descriptor,
        send_id: SendId,
        token: DeliveryToken,
        recipient: MailboxPublicKey,
    ) -> Result<Self, CardError> {
        let relay = check_relay(relay.to_string().as_bytes())?;
        let mut card = Self {
            relay,
            send_id,
            token,
            recipient,
            owner: owner.public_key(),
            signature: Signature::from_bytes(&[0; SIGNATURE_LEN]),
        };
        card.signature = owner.sign_with_identity(&signed_message(&card.unsigned_bytes()));
        Ok(card)
    }

    /// The one-line text form.
    pub fn encode(&self) -> String {
        let mut bin = self.unsigned_bytes();
        bin.extend_from_slice(&self.signature.to_bytes());
        format!("{CARD_PREFIX}{}", URL_SAFE_NO_PAD.encode(bin))
    }

    /// Parses and verifies a card. A card that parses is signed by
    /// [`owner`](Self::owner); whether that is the person the user meant is
    /// for the user to check, by fingerprint.
    pub fn parse(text: &str) -> Result<Self, CardError> {
        let text = text.trim_ascii();
        if text.len() > MAX_CARD_TEXT {
            return Err(CardError::TooLong { len: text.len() });
        }
        let b64 = match text.strip_prefix(CARD_PREFIX) {
            Some(rest) => rest,
            None if text.starts_with(CARD_STEM) => return Err(CardError::UnsupportedVersion),
            None => return Err(CardError::MissingPrefix),
        };
        let bin = URL_SAFE_NO_PAD.decode(b64).map_err(CardError::Base64)?;
        Self::from_bytes(&bin)
    }

    fn from_bytes(bin: &[u8]) -> Result<Self, CardError> {
        let (len, rest) = bin.split_first_chunk::<2>().ok_or(CardError::Truncated)?;
        let relay_len = usize::from(u16::from_be_bytes(*len));
        if relay_len == 0 || relay_len > MAX_RELAY_LEN {
            return Err(CardError::RelayLength { len: relay_len });
        }
        let (relay, rest) = rest
            .split_at_checked(relay_len)
            .ok_or(CardError::Truncated)?;
        let (send_id, rest) = rest
            .split_first_chunk::<ID_LEN>()
            .ok_or(CardError::Truncated)?;
        let (token, rest) = rest
            .split_first_chunk::<ID_LEN>()
            .ok_or(CardError::Truncated)?;
        let (recipient, rest) = rest
            .split_first_chunk::<MAILBOX_PUBLIC_KEY_LEN>()
            .ok_or(CardError::Truncated)?;
        let (owner, rest) = rest
            .split_first_chunk::<KEY_LEN>()
            .ok_or(CardError::Truncated)?;
        let (signature, rest) = rest
            .split_first_chunk::<SIGNATURE_LEN>()
            .ok_or(CardError::Truncated)?;
        if !rest.is_empty() {
            return Err(CardError::TrailingBytes(rest.len()));
        }

        let card = Self {
            relay: check_relay(relay)?,
            send_id: SendId(*send_id),
            token: DeliveryToken(*token),
            recipient: MailboxPublicKey::from_bytes(recipient).map_err(CardError::BadMailboxKey)?,
            owner: IdentityKey::from_bytes(owner).map_err(|_| CardError::BadOwnerKey)?,
            signature: Signature::from_bytes(signature),
        };
        let signed = bin
            .len()
            .checked_sub(SIGNATURE_LEN)
            .and_then(|n| bin.get(..n))
            .ok_or(CardError::Truncated)?;
        card.owner
            .verifying_key()
            .verify_strict(&signed_message(signed), &card.signature)
            .map_err(|_| CardError::BadSignature)?;
        Ok(card)
    }

    /// Everything before the signature, as laid out in the module docs.
    fn unsigned_bytes(&self) -> Vec<u8> {
        let relay = self.relay.to_string();
        let mut out = Vec::with_capacity(CARD_FIXED_LEN + relay.len());
        // `check_relay` bounded the length when the card was made.
        let len = u16::try_from(relay.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(relay.as_bytes());
        out.extend_from_slice(self.send_id.as_bytes());
        out.extend_from_slice(self.token.as_bytes());
        out.extend_from_slice(&self.recipient.to_bytes());
        out.extend_from_slice(&self.owner.to_bytes());
        out
    }

    /// The relay the mailbox is on.
    pub fn relay(&self) -> &Descriptor {
        &self.relay
    }

    pub fn send_id(&self) -> &SendId {
        &self.send_id
    }

    pub fn token(&self) -> &DeliveryToken {
        &self.token
    }

    /// The key to seal envelopes to ([`crate::seal::seal`]).
    pub fn recipient(&self) -> &MailboxPublicKey {
        &self.recipient
    }

    /// Who signed the card; show its fingerprint before first use.
    pub fn owner(&self) -> &IdentityKey {
        &self.owner
    }
}

impl fmt::Display for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl FromStr for Card {
    type Err = CardError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The card's relay field: 1 to [`MAX_RELAY_LEN`] bytes, each printable
/// ASCII (`0x21..=0x7e`: no space, no C0 control, no DEL, nothing from
/// 0x80 up, so no C1 control either, which would let a card rewrite the
/// terminal it is shown in), forming a relay descriptor. Such a text has no
/// whitespace to trim, so it is the descriptor's canonical printing.
fn check_relay(relay: &[u8]) -> Result<Descriptor, CardError> {
    if relay.is_empty() || relay.len() > MAX_RELAY_LEN {
        return Err(CardError::RelayLength { len: relay.len() });
    }
    if !relay.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(CardError::RelayText);
    }
    std::str::from_utf8(relay)
        .map_err(|_| CardError::RelayText)?
        .parse()
        .map_err(CardError::RelayDescriptor)
}

fn signed_message(unsigned: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(CARD_LABEL.len() + unsigned.len());
    msg.extend_from_slice(CARD_LABEL);
    msg.extend_from_slice(unsigned);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::MailboxKeyPair;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;

    /// A relay descriptor whose text is `len` bytes (at least 102).
    fn relay_of_len(len: usize) -> Descriptor {
        let d = Descriptor {
            host: String::new(),
            port: 4433,
            relay_key: [1; 32],
            tls_fingerprint: Some([2; 32]),
        };
        let fixed = d.to_string().len();
        Descriptor {
            host: "r".repeat(len - fixed),
            ..d
        }
    }

    fn relay() -> Descriptor {
        Descriptor {
            host: "127.0.0.1".into(),
            port: 4433,
            relay_key: [1; 32],
            tls_fingerprint: Some([2; 32]),
        }
    }

    fn card_with(owner: &Identity, relay: &Descriptor) -> Card {
        Card::new(
            owner,
            relay,
            SendId::random(),
            DeliveryToken::random(),
            MailboxKeyPair::generate().public_key().clone(),
        )
        .unwrap()
    }

    fn decode(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(text.strip_prefix(CARD_PREFIX).unwrap())
            .unwrap()
    }

    fn encode_bin(bin: &[u8]) -> String {
        format!("{CARD_PREFIX}{}", URL_SAFE_NO_PAD.encode(bin))
    }

    /// A card's binary form with `relay` as its relay field and `edit`
    /// applied to the mailbox key, signed by `owner` afterwards: what a
    /// careless or hostile owner could publish.
    fn signed_bin(owner: &Identity, relay: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut key = MailboxKeyPair::generate().public_key().to_bytes();
        edit(&mut key);
        let mut bin = (relay.len() as u16).to_be_bytes().to_vec();
        bin.extend_from_slice(relay);
        bin.extend_from_slice(&[5; ID_LEN]);
        bin.extend_from_slice(&[6; ID_LEN]);
        bin.extend_from_slice(&key);
        bin.extend_from_slice(&owner.public_key().to_bytes());
        let sig = owner.sign_with_identity(&signed_message(&bin));
        bin.extend_from_slice(&sig.to_bytes());
        bin
    }

    #[test]
    fn round_trip() {
        let owner = Identity::generate(NOW);
        let card = card_with(&owner, &relay());
        let text = card.encode();
        assert!(text.starts_with(CARD_PREFIX));
        assert!(!text.contains(char::is_whitespace));
        let r = relay().to_string().len();
        assert_eq!(decode(&text).len(), CARD_FIXED_LEN + r);
        let back = Card::parse(&text).unwrap();
        assert_eq!(back, card);
        assert_eq!(back.relay(), &relay());
        assert_eq!(back.owner(), &owner.public_key());
        assert_eq!(format!("  {text}\r\n").parse::<Card>().unwrap(), card);
        assert_eq!(card.to_string(), text);
    }

    #[test]
    fn binary_layout_offsets() {
        let owner = Identity::generate(NOW);
        let card = card_with(&owner, &relay());
        let bin = decode(&card.encode());
        let text = relay().to_string();
        let r = text.len();
        assert_eq!(CARD_FIXED_LEN, 1378);
        assert_eq!(bin[0..2], (r as u16).to_be_bytes());
        assert_eq!(&bin[2..2 + r], text.as_bytes());
        assert_eq!(bin[2 + r..34 + r], card.send_id().0);
        assert_eq!(bin[34 + r..66 + r], card.token().0);
        assert_eq!(bin[66 + r..1282 + r], card.recipient().to_bytes());
        assert_eq!(bin[1282 + r..1314 + r], owner.public_key().to_bytes());
        assert_eq!(bin.len(), 1378 + r);
    }

    #[test]
    fn every_byte_is_covered_by_the_signature() {
        let owner = Identity::generate(NOW);
        let bin = decode(&card_with(&owner, &relay()).encode());
        for i in 0..bin.len() {
            let mut t = bin.clone();
            t[i] ^= 0x01;
            assert!(
                Card::parse(&encode_bin(&t)).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn substituted_fields_fail() {
        let owner = Identity::generate(NOW);
        let mallory = Identity::generate(NOW);
        let bin = decode(&card_with(&owner, &relay()).encode());
        let r = relay().to_string().len();
        // Mallory's own mailbox key in Alice's card.
        let mut t = bin.clone();
        t[66 + r..1282 + r].copy_from_slice(&MailboxKeyPair::generate().public_key().to_bytes());
        assert_eq!(Card::parse(&encode_bin(&t)), Err(CardError::BadSignature));
        // Mallory's identity over Alice's fields without re-signing.
        let mut t = bin.clone();
        t[1282 + r..1314 + r].copy_from_slice(&mallory.public_key().to_bytes());
        assert_eq!(Card::parse(&encode_bin(&t)), Err(CardError::BadSignature));
        // Another valid relay of the same length: port 4434 for 4433.
        let mut t = bin.clone();
        assert_eq!(t[2 + r - 1], b'3');
        t[2 + r - 1] = b'4';
        assert_eq!(Card::parse(&encode_bin(&t)), Err(CardError::BadSignature));
    }

    #[test]
    fn strict_structure() {
        let owner = Identity::generate(NOW);
        let bin = decode(&card_with(&owner, &relay()).encode());

        let mut trailing = bin.clone();
        trailing.push(0);
        assert_eq!(
            Card::parse(&encode_bin(&trailing)),
            Err(CardError::TrailingBytes(1))
        );
        for cut in [0, 1, 2, 10, bin.len() - 65, bin.len() - 1] {
            assert_eq!(
                Card::parse(&encode_bin(&bin[..cut])),
                Err(CardError::Truncated),
                "cut {cut}"
            );
        }
        let mut zero_len = bin.clone();
        zero_len[0..2].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(
            Card::parse(&encode_bin(&zero_len)),
            Err(CardError::RelayLength { len: 0 })
        );
        let mut huge = bin.clone();
        huge[0..2].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            Card::parse(&encode_bin(&huge)),
            Err(CardError::RelayLength {
                len: usize::from(u16::MAX)
            })
        );
        let mut not_utf8 = bin.clone();
        not_utf8[2] = 0xFF;
        assert_eq!(
            Card::parse(&encode_bin(&not_utf8)),
            Err(CardError::RelayText)
        );
        let mut control = bin.clone();
        control[2] = 0x1B;
        assert_eq!(
            Card::parse(&encode_bin(&control)),
            Err(CardError::RelayText)
        );
        let r = relay().to_string().len();
        let mut bad_key = bin.clone();
        bad_key[66 + r..1282 + r].fill(0xFF);
        assert_eq!(
            Card::parse(&encode_bin(&bad_key)),
            Err(CardError::BadMailboxKey(KeyError::MlKemCoefficient))
        );
        let mut weak_owner = bin.clone();
        weak_owner[1282 + r..1314 + r].fill(0);
        assert_eq!(
            Card::parse(&encode_bin(&weak_owner)),
            Err(CardError::BadOwnerKey)
        );
    }

    /// The relay field: printable ASCII only, and a descriptor that parses.
    /// Each card here is properly signed, so only the field's rule refuses it.
    #[test]
    fn relay_field_rules() {
        let owner = Identity::generate(NOW);
        let good = relay().to_string();
        let parse = |relay: &[u8]| Card::parse(&encode_bin(&signed_bin(&owner, relay, |_| {})));
        assert_eq!(parse(good.as_bytes()).unwrap().relay(), &relay());
        // Every character outside 0x21..=0x7e, as a prefix or a suffix:
        // space, C0 controls, DEL, C1 controls (as UTF-8), other non-ASCII.
        for bad in [
            " ", "\t", "\n", "\r", "\x00", "\x1b", "\x7f", "\u{80}", "\u{85}", "\u{9b}", "\u{a0}",
            "é",
        ] {
            for text in [format!("{bad}{good}"), format!("{good}{bad}")] {
                assert_eq!(
                    parse(text.as_bytes()),
                    Err(CardError::RelayText),
                    "{text:?}"
                );
            }
        }
        // Printable, but not a descriptor.
        for (text, why) in [
            (
                "chappe-relay1:127.0.0.1:4433".to_string(),
                DescriptorError::Prefix,
            ),
            (good.replace(":4433", ":+4433"), DescriptorError::BadAddress),
            (good.replace(":4433", ":04433"), DescriptorError::BadAddress),
            (good.replace(":4433", ":65536"), DescriptorError::BadAddress),
            (
                good.replace("127.0.0.1", "127.0.0.1_"),
                DescriptorError::BadAddress,
            ),
        ] {
            assert_eq!(
                parse(text.as_bytes()),
                Err(CardError::RelayDescriptor(why)),
                "{text:?}"
            );
        }
        // A descriptor without a fingerprint is a descriptor (whether to
        // connect without one is the client's policy, not the card's).
        let no_fp = Descriptor {
            tls_fingerprint: None,
            ..relay()
        };
        assert!(parse(no_fp.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn invalid_mailbox_keys_are_refused() {
        let owner = Identity::generate(NOW);
        let relay = relay().to_string();
        let parse = |edit: &dyn Fn(&mut [u8])| {
            Card::parse(&encode_bin(&signed_bin(&owner, relay.as_bytes(), edit)))
        };
        assert!(parse(&|_| {}).is_ok());
        // The X25519 half (the last 32 bytes) all zero: the key the CLI
        // used to seal to without complaint.
        assert_eq!(
            parse(&|k| k[1184..].fill(0)),
            Err(CardError::BadMailboxKey(KeyError::LowOrderX25519))
        );
        // u = 1, a point of order 4, with bit 255 set (X25519 ignores it).
        assert_eq!(
            parse(&|k| {
                k[1184..].fill(0);
                k[1184] = 1;
                k[1215] = 0x80;
            }),
            Err(CardError::BadMailboxKey(KeyError::LowOrderX25519))
        );
        // The first ML-KEM coefficient set to q = 3329 (0xd01): bytes 0 and
        // the low nibble of byte 1.
        assert_eq!(
            parse(&|k| {
                k[0] = 0x01;
                k[1] = (k[1] & 0xf0) | 0x0d;
            }),
            Err(CardError::BadMailboxKey(KeyError::MlKemCoefficient))
        );
        // q − 1 = 3328 (0xd00) is a coefficient like any other.
        assert!(
            parse(&|k| {
                k[0] = 0x00;
                k[1] = (k[1] & 0xf0) | 0x0d;
            })
            .is_ok()
        );
    }

    #[test]
    fn text_errors() {
        let owner = Identity::generate(NOW);
        let text = card_with(&owner, &relay()).encode();
        assert_eq!(Card::parse(""), Err(CardError::MissingPrefix));
        assert_eq!(Card::parse("hello"), Err(CardError::MissingPrefix));
        assert_eq!(
            Card::parse(&text.replace("card1:", "card2:")),
            Err(CardError::UnsupportedVersion)
        );
        assert!(matches!(
            Card::parse(&format!("{text}=")),
            Err(CardError::Base64(_))
        ));
        assert!(matches!(
            Card::parse(&format!("{text}==")),
            Err(CardError::Base64(_))
        ));
        // Standard-alphabet characters are not base64url.
        let mut std_alphabet = text.clone();
        std_alphabet.replace_range(40..41, "+");
        assert!(matches!(
            Card::parse(&std_alphabet),
            Err(CardError::Base64(_))
        ));
        let inner_space = format!("{} {}", &text[..40], &text[40..]);
        assert!(matches!(
            Card::parse(&inner_space),
            Err(CardError::Base64(_))
        ));
        // Only ASCII whitespace is trimmed: not a no-break space, not a
        // vertical tab.
        assert_eq!(
            Card::parse(&format!("\u{a0}{text}")),
            Err(CardError::MissingPrefix)
        );
        assert!(matches!(
            Card::parse(&format!("{text}\u{a0}")),
            Err(CardError::Base64(_))
        ));
        assert!(matches!(
            Card::parse(&format!("{text}\x0b")),
            Err(CardError::Base64(_))
        ));
        assert_eq!(
            Card::parse(&format!(" \t\n\x0c\r{text}\r\n\x0c\t "))
                .unwrap()
                .encode(),
            text
        );
    }

    #[test]
    fn longest_card_is_3216_bytes() {
        assert_eq!(MAX_CARD_TEXT, 3216);
        let owner = Identity::generate(NOW);
        let longest = relay_of_len(MAX_RELAY_LEN);
        assert_eq!(longest.to_string().len(), MAX_RELAY_LEN);
        let card = card_with(&owner, &longest);
        let text = card.encode();
        assert_eq!(text.len(), MAX_CARD_TEXT);
        assert_eq!(Card::parse(&text).unwrap(), card);
        // Whitespace is trimmed before the limit applies.
        let padded = format!("\n\n  {text}  \r\n\r\n");
        assert!(padded.len() > MAX_CARD_TEXT);
        assert_eq!(Card::parse(&padded).unwrap(), card);
        // One byte more is refused before decoding.
        assert_eq!(
            Card::parse(&format!("{text}A")),
            Err(CardError::TooLong {
                len: MAX_CARD_TEXT + 1
            })
        );
        let long = format!("{CARD_PREFIX}{}", "A".repeat(MAX_CARD_TEXT));
        assert!(matches!(Card::parse(&long), Err(CardError::TooLong { .. })));
    }

    #[test]
    fn relay_bounds() {
        let owner = Identity::generate(NOW);
        let pk = MailboxKeyPair::generate().public_key().clone();
        let make = |relay: &Descriptor| {
            Card::new(
                &owner,
                relay,
                SendId::random(),
                DeliveryToken::random(),
                pk.clone(),
            )
        };
        assert!(make(&relay_of_len(MAX_RELAY_LEN)).is_ok());
        assert_eq!(
            make(&relay_of_len(MAX_RELAY_LEN + 1)).unwrap_err(),
            CardError::RelayLength {
                len: MAX_RELAY_LEN + 1
            }
        );
        // Descriptor fields are public; one that does not print as a valid
        // descriptor makes no card.
        for host in ["", "a b", "a\nb", "relais-ministère.example", "[::1"] {
            let d = Descriptor {
                host: host.into(),
                ..relay()
            };
            assert!(
                matches!(
                    make(&d),
                    Err(CardError::RelayText | CardError::RelayDescriptor(_))
                ),
                "{host:?}"
            );
        }
        let zero_port = Descriptor { port: 0, ..relay() };
        assert_eq!(
            make(&zero_port).unwrap_err(),
            CardError::RelayDescriptor(DescriptorError::BadAddress)
        );
    }

    #[test]
    fn debug_does_not_print_the_token() {
        let owner = Identity::generate(NOW);
        let card = card_with(&owner, &relay());
        let dbg = format!("{card:?}");
        assert!(dbg.contains("DeliveryToken(<redacted>)"), "{dbg}");
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(s in ".{0,4000}") {
            let _ = Card::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bin in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert!(Card::parse(&encode_bin(&bin)).is_err());
        }

        #[test]
        fn parse_never_panics_on_plausible_headers(
            relay_len in 0u16..1100,
            fill in any::<u8>(),
            extra in 0usize..1500,
        ) {
            let mut bin = relay_len.to_be_bytes().to_vec();
            bin.resize(2 + usize::from(relay_len) + extra, fill);
            prop_assert!(Card::parse(&encode_bin(&bin)).is_err());
        }
    }
}
