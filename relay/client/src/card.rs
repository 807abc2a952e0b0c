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
//! outside the alphabet are rejected). Leading and trailing whitespace around
//! the line is ignored, since copy and paste adds it; nothing else is.
//!
//! # Binary form
//!
//! Integers are big-endian. `R` is the length of the relay descriptor.
//!
//! | offset | length | field |
//! | -----: | -----: | ----- |
//! | 0 | 2 | `R`, u16, 1 ≤ `R` ≤ [`MAX_RELAY_LEN`] |
//! | 2 | `R` | relay descriptor, UTF-8 without control characters (opaque here) |
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
//! The signature is by the identity key, not a sender key, so a card stays
//! valid as long as the mailbox does. It lets a sender who has checked the
//! owner's fingerprint know that the relay, send id and mailbox key are the
//! owner's choice and not a substitute planted on the way.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chappe_proto::ids::ID_LEN;
use chappe_proto::{DeliveryToken, SendId};
use ed25519_dalek::Signature;

use crate::identity::{Identity, IdentityKey, KEY_LEN, SIGNATURE_LEN};
use crate::seal::{MAILBOX_PUBLIC_KEY_LEN, MailboxPublicKey};

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
/// Longest text a valid card can be, checked before decoding anything.
const MAX_CARD_TEXT: usize = CARD_PREFIX.len() + (CARD_FIXED_LEN + MAX_RELAY_LEN).div_ceil(3) * 4;

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
    #[error("relay descriptor is not UTF-8 text without control characters")]
    RelayText,
    #[error("contact card mailbox key is not a valid X-Wing public key")]
    BadMailboxKey,
    #[error("contact card owner key is not a valid Ed25519 public key")]
    BadOwnerKey,
    #[error("contact card signature does not verify")]
    BadSignature,
}

/// A signed contact card (see the module docs for the format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    relay: String,
    send_id: SendId,
    token: DeliveryToken,
    recipient: MailboxPublicKey,
    owner: IdentityKey,
    signature: Signature,
}

impl Card {
    /// Signs a card for a mailbox the owner created on `relay` (a relay
    /// descriptor, kept as opaque text here).
    pub fn new(
        owner: &Identity,
        relay: impl Into<String>,
        send_id: SendId,
        token: DeliveryToken,
        recipient: MailboxPublicKey,
    ) -> Result<Self, CardError> {
        let relay = relay.into();
        check_relay(&relay)?;
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
        let text = text.trim();
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

        let relay = String::from_utf8(relay.to_vec()).map_err(|_| CardError::RelayText)?;
        check_relay(&relay)?;
        let card = Self {
            relay,
            send_id: SendId(*send_id),
            token: DeliveryToken(*token),
            recipient: MailboxPublicKey::from_bytes(recipient)
                .map_err(|_| CardError::BadMailboxKey)?,
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
        let mut out = Vec::with_capacity(CARD_FIXED_LEN + self.relay.len());
        // `check_relay` bounded the length when the card was made.
        let len = u16::try_from(self.relay.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(self.relay.as_bytes());
        out.extend_from_slice(self.send_id.as_bytes());
        out.extend_from_slice(self.token.as_bytes());
        out.extend_from_slice(&self.recipient.to_bytes());
        out.extend_from_slice(&self.owner.to_bytes());
        out
    }

    /// The relay descriptor, to be parsed by whoever connects to it.
    pub fn relay(&self) -> &str {
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

fn check_relay(relay: &str) -> Result<(), CardError> {
    if relay.is_empty() || relay.len() > MAX_RELAY_LEN {
        return Err(CardError::RelayLength { len: relay.len() });
    }
    // Control characters would let a card rewrite the terminal it is shown in.
    if relay.chars().any(char::is_control) {
        return Err(CardError::RelayText);
    }
    Ok(())
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
    const RELAY: &str = "chappe-relay1:127.0.0.1:4433#noise=abc";

    fn card_with(owner: &Identity, relay: &str) -> Card {
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

    #[test]
    fn round_trip() {
        let owner = Identity::generate(NOW);
        let card = card_with(&owner, RELAY);
        let text = card.encode();
        assert!(text.starts_with(CARD_PREFIX));
        assert!(!text.contains(char::is_whitespace));
        assert_eq!(decode(&text).len(), CARD_FIXED_LEN + RELAY.len());
        let back = Card::parse(&text).unwrap();
        assert_eq!(back, card);
        assert_eq!(back.relay(), RELAY);
        assert_eq!(back.owner(), &owner.public_key());
        assert_eq!(format!("  {text}\r\n").parse::<Card>().unwrap(), card);
        assert_eq!(card.to_string(), text);
    }

    #[test]
    fn binary_layout_offsets() {
        let owner = Identity::generate(NOW);
        let card = card_with(&owner, RELAY);
        let bin = decode(&card.encode());
        let r = RELAY.len();
        assert_eq!(bin[0..2], (r as u16).to_be_bytes());
        assert_eq!(&bin[2..2 + r], RELAY.as_bytes());
        assert_eq!(bin[2 + r..34 + r], card.send_id().0);
        assert_eq!(bin[34 + r..66 + r], card.token().0);
        assert_eq!(bin[66 + r..1282 + r], card.recipient().to_bytes());
        assert_eq!(bin[1282 + r..1314 + r], owner.public_key().to_bytes());
        assert_eq!(bin.len(), 1378 + r);
    }

    #[test]
    fn every_byte_is_covered_by_the_signature() {
        let owner = Identity::generate(NOW);
        let bin = decode(&card_with(&owner, RELAY).encode());
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
        let bin = decode(&card_with(&owner, RELAY).encode());
        let r = RELAY.len();
        // Mallory's own mailbox key in Alice's card.
        let mut t = bin.clone();
        t[66 + r..1282 + r].copy_from_slice(&MailboxKeyPair::generate().public_key().to_bytes());
        assert_eq!(Card::parse(&encode_bin(&t)), Err(CardError::BadSignature));
        // Mallory's identity over Alice's fields without re-signing.
        let mut t = bin.clone();
        t[1282 + r..1314 + r].copy_from_slice(&mallory.public_key().to_bytes());
        assert_eq!(Card::parse(&encode_bin(&t)), Err(CardError::BadSignature));
        // A different relay of the same length.
        let mut t = bin.clone();
        t[2] = b'X';
        assert_eq!(Card::parse(&encode_bin(&t)), Err(CardError::BadSignature));
    }

    #[test]
    fn strict_structure() {
        let owner = Identity::generate(NOW);
        let bin = decode(&card_with(&owner, RELAY).encode());

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
        let r = RELAY.len();
        let mut bad_key = bin.clone();
        bad_key[66 + r..1282 + r].fill(0xFF);
        assert_eq!(
            Card::parse(&encode_bin(&bad_key)),
            Err(CardError::BadMailboxKey)
        );
        let mut weak_owner = bin.clone();
        weak_owner[1282 + r..1314 + r].fill(0);
        assert_eq!(
            Card::parse(&encode_bin(&weak_owner)),
            Err(CardError::BadOwnerKey)
        );
    }

    #[test]
    fn text_errors() {
        let owner = Identity::generate(NOW);
        let text = card_with(&owner, RELAY).encode();
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
        let long = format!("{CARD_PREFIX}{}", "A".repeat(MAX_CARD_TEXT));
        assert!(matches!(Card::parse(&long), Err(CardError::TooLong { .. })));
    }

    #[test]
    fn relay_bounds() {
        let owner = Identity::generate(NOW);
        let max = "r".repeat(MAX_RELAY_LEN);
        let card = card_with(&owner, &max);
        let text = card.encode();
        assert!(text.len() <= MAX_CARD_TEXT);
        assert_eq!(Card::parse(&text).unwrap(), card);
        let pk = MailboxKeyPair::generate().public_key().clone();
        let make = |relay: &str| {
            Card::new(
                &owner,
                relay,
                SendId::random(),
                DeliveryToken::random(),
                pk.clone(),
            )
        };
        assert_eq!(make("").unwrap_err(), CardError::RelayLength { len: 0 });
        assert_eq!(
            make(&"r".repeat(MAX_RELAY_LEN + 1)).unwrap_err(),
            CardError::RelayLength {
                len: MAX_RELAY_LEN + 1
            }
        );
        assert_eq!(make("a\nb").unwrap_err(), CardError::RelayText);
        assert!(make("relais-ministère.example:4433").is_ok());
    }

    #[test]
    fn debug_does_not_print_the_token() {
        let owner = Identity::generate(NOW);
        let card = card_with(&owner, RELAY);
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
