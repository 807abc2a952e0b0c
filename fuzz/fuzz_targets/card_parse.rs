//! `Card::parse` on arbitrary text, and `Card::new`/`encode` on arbitrary
//! relay descriptors.
//!
//! Invariants:
//! - a card that parses is printed back as exactly the input without its
//!   surrounding ASCII whitespace, and parses again to an equal card;
//! - `Card::new` with the fixed identity accepts a descriptor (host from
//!   the input, port and keys from its first byte) iff the descriptor is
//!   valid (host a DNS name, IPv4 address or bracketed IPv6 address; port
//!   not 0) and prints as at most `MAX_RELAY_LEN` bytes; a card it makes
//!   carries that descriptor, parses back equal (also with whitespace
//!   around it), and changing any one character of its base64 body makes
//!   it unparseable.
#![no_main]

use std::sync::LazyLock;

use chappe_client::card::{CARD_PREFIX, Card, MAX_RELAY_LEN};
use chappe_client::identity::Identity;
use chappe_client::seal::MailboxKeyPair;
use chappe_proto::descriptor::Descriptor;
use chappe_proto::{DeliveryToken, SendId};
use libfuzzer_sys::fuzz_target;

static IDENTITY: LazyLock<Identity> = LazyLock::new(chappe_fuzz::identity);
static MAILBOX: LazyLock<MailboxKeyPair> = LazyLock::new(chappe_fuzz::mailbox);

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn host_ok(host: &str) -> bool {
    match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(card) = Card::parse(text) {
            assert_eq!(card.encode(), text.trim_ascii(), "card text is not canonical");
            assert_eq!(Card::parse(&card.to_string()).as_ref(), Ok(&card));
        }
    }

    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    let relay = Descriptor {
        host: String::from_utf8_lossy(rest).into_owned(),
        port: u16::from(b).wrapping_mul(257),
        relay_key: [b; 32],
        tls_fingerprint: (b & 1 == 1).then_some([!b; 32]),
    };
    let made = Card::new(
        &IDENTITY,
        &relay,
        SendId([b; 32]),
        DeliveryToken([!b; 32]),
        MAILBOX.public_key().clone(),
    );
    let valid =
        host_ok(&relay.host) && relay.port != 0 && relay.to_string().len() <= MAX_RELAY_LEN;
    assert_eq!(
        made.is_ok(),
        valid,
        "Card::new on {relay:?}: {:?}",
        made.as_ref().err()
    );
    let Ok(card) = made else {
        return;
    };
    assert_eq!(card.relay(), &relay);
    assert_eq!(card.owner(), &IDENTITY.public_key());
    let text = card.encode();
    assert_eq!(Card::parse(&text).as_ref(), Ok(&card));
    assert_eq!(Card::parse(&format!(" \t{text}\r\n")).as_ref(), Ok(&card));

    // Replace one base64 character (position and replacement from `b`).
    let body = text.len() - CARD_PREFIX.len();
    let pos = CARD_PREFIX.len() + usize::from(b) * 7919 % body;
    let mut bytes = text.into_bytes();
    let old = bytes[pos];
    let mut new = B64URL[usize::from(b) % B64URL.len()];
    if new == old {
        new = if old == b'A' { b'B' } else { b'A' };
    }
    bytes[pos] = new;
    let tampered = String::from_utf8(bytes).unwrap_or_default();
    assert!(
        Card::parse(&tampered).is_err(),
        "card with one character changed at {pos} parsed"
    );
});
