//! Writes the seed corpus under `fuzz/seeds/<target>/`: real encoded frames,
//! handshake messages made with the fuzz targets' fixed keys, a valid
//! contact card and valid envelopes, each prefixed with the mode byte its
//! target expects (see `src/lib.rs` and each target's docs).
//!
//! Run from `fuzz/`: `cargo run --example gen_seeds`. Files are overwritten;
//! handshake, card and envelope seeds carry fresh randomness each run, so
//! only regenerate when a format changes.

use std::fs;
use std::path::Path;

use chappe_client::card::Card;
use chappe_client::seal::{self, ENC_LEN, MAILBOX_SECRET_KEY_LEN};
use chappe_fuzz::{EXPORTER, NOW, SEND_ID};
use chappe_proto::descriptor::Descriptor;
use chappe_proto::error::ResultCode;
use chappe_proto::frame::{Frame, MailboxEntry};
use chappe_proto::noise::payload::{TAG_PQ_PSK, TAG_VERSION};
use chappe_proto::noise::wire::{Mode, encode_message};
use chappe_proto::noise::{Hello, OwnerInitiator, SenderInitiator};
use chappe_proto::{DeliveryToken, ReceiveId, SendId, TokenDigest};
use hpke::{Deserializable as _, OpModeR};

use bytes::Bytes;
use chappe_store::effect::Effect;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A point of order 8 (X25519 public key the relay must refuse).
const LOW_ORDER: [u8; 32] = [
    0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
    0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00,
];

fn write(target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = Path::new("seeds").join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn frames() -> Vec<(&'static str, Frame)> {
    let id = [7u8; 32];
    vec![
        (
            "create_mailbox",
            Frame::CreateMailbox {
                req: 1,
                tokens: vec![TokenDigest([1; 32]), TokenDigest([2; 32])],
            },
        ),
        (
            "delete_mailbox",
            Frame::DeleteMailbox {
                req: 2,
                mailbox: ReceiveId(id),
            },
        ),
        (
            "set_tokens",
            Frame::SetTokens {
                req: 3,
                mailbox: ReceiveId(id),
                tokens: vec![TokenDigest([3; 32])],
            },
        ),
        ("list_mailboxes", Frame::ListMailboxes { req: 4 }),
        (
            "subscribe",
            Frame::Subscribe {
                req: 5,
                mailbox: ReceiveId(id),
            },
        ),
        (
            "ack",
            Frame::Ack {
                mailbox: ReceiveId(id),
                seqs: vec![1, 2, u64::MAX],
            },
        ),
        (
            "send",
            Frame::Send {
                req: 6,
                send_id: SendId([8; 32]),
                token: DeliveryToken([9; 32]),
                ciphertext: vec![0xaa; 64].into(),
            },
        ),
        (
            "result",
            Frame::Result {
                req: 7,
                code: ResultCode::BadToken,
            },
        ),
        (
            "mailbox_created",
            Frame::MailboxCreated {
                req: 8,
                mailbox: ReceiveId(id),
                send_id: SendId([8; 32]),
            },
        ),
        (
            "mailbox_list",
            Frame::MailboxList {
                req: 9,
                entries: vec![MailboxEntry {
                    mailbox: ReceiveId(id),
                    send_id: SendId([8; 32]),
                    stored: 3,
                }],
            },
        ),
        (
            "deliver",
            Frame::Deliver {
                mailbox: ReceiveId(id),
                seq: 42,
                ciphertext: vec![0xbb; 64].into(),
            },
        ),
    ]
}

fn main() -> Result<()> {
    let relay = chappe_fuzz::relay_keypair();
    let owner = chappe_fuzz::owner_keypair();
    let hello = Hello::default().encode();

    // ---- frames and the inbound stream ----
    let all = frames();
    let mut stream = Vec::new();
    for (name, f) in &all {
        let enc = f.encode();
        write("frame_decode", name, &enc)?;
        stream.extend_from_slice(&enc);
    }
    write("frame_decode", "all_kinds", &stream)?;

    let (_, owner_msg1) =
        OwnerInitiator::start(&owner, &relay.public(), &EXPORTER, &Hello::default())?;
    let (_, sender_msg1) = SenderInitiator::start(&relay.public(), &EXPORTER, &Hello::default())?;
    let owner_frames = all
        .iter()
        .filter(|(_, f)| f.is_from_client() && !matches!(f, Frame::Send { .. }))
        .flat_map(|(_, f)| f.encode().to_vec())
        .collect::<Vec<_>>();
    let send = all
        .iter()
        .find(|(n, _)| *n == "send")
        .map(|(_, f)| f.encode().to_vec())
        .unwrap_or_default();
    // First byte: chunking seed (3 = chunks of up to 16 bytes, 0 = up to 2).
    write(
        "inbound_stream",
        "owner_session",
        &cat(&[
            &[3, Mode::Owner as u8],
            &encode_message(&owner_msg1),
            &encode_message(&[0x5a; 64]),
            &owner_frames,
        ]),
    )?;
    write(
        "inbound_stream",
        "sender_session",
        &cat(&[
            &[0, Mode::Sender as u8],
            &encode_message(&sender_msg1),
            &send,
            &send,
        ]),
    )?;

    // ---- hello payloads ----
    write("hello_payload", "default", &hello)?;
    write("hello_payload", "version2", &Hello { version: 2 }.encode())?;
    write(
        "hello_payload",
        "noncritical_item",
        &cat(&[&[0x10, 0, 3, 1, 2, 3], &hello]),
    )?;
    write(
        "hello_payload",
        "critical_item",
        &cat(&[&hello, &[TAG_PQ_PSK, 0, 1, 0]]),
    )?;
    write("hello_payload", "bad_length", &[TAG_VERSION, 0, 1, 1])?;

    // ---- handshakes (mode byte: 0 raw, 1 tamper, 2 truncate, 3 payload) ----
    let low_order_msg = cat(&[&LOW_ORDER, &[0u8; 21]]);
    for (target, msg1) in [
        ("handshake_owner_msg1", &owner_msg1),
        ("handshake_sender_msg1", &sender_msg1),
    ] {
        write(target, "raw_genuine_replay", &cat(&[&[0], msg1]))?;
        write(target, "raw_low_order", &cat(&[&[0], &low_order_msg]))?;
        write(target, "tamper_none", &[1])?;
        write(target, "tamper_first", &[1, 1])?;
        write(target, "truncate", &[2, 0, 40])?;
        write(target, "payload_hello", &cat(&[&[3], &hello]))?;
        write(
            target,
            "payload_version2",
            &cat(&[&[3], &Hello { version: 2 }.encode()]),
        )?;
        write(target, "payload_critical", &[3, TAG_PQ_PSK, 0, 0])?;
    }
    let t = "handshake_owner_msg3";
    write(t, "raw", &cat(&[&[0], &[0x5a; 64]]))?;
    write(t, "tamper_none", &[1])?;
    write(t, "tamper_last", &cat(&[&[1], &[0; 63], &[0x80]]))?;
    write(t, "truncate", &[2, 0, 63])?;
    write(t, "payload_empty", &[3])?;
    write(t, "payload_hello", &cat(&[&[3], &hello]))?;
    let t = "handshake_client_msg2";
    for (who, bit) in [("owner", 0u8), ("sender", 4u8)] {
        write(
            t,
            &format!("{who}_raw_low_order"),
            &cat(&[&[bit], &low_order_msg]),
        )?;
        write(t, &format!("{who}_tamper_none"), &[bit | 1])?;
        write(t, &format!("{who}_truncate"), &[bit | 2, 0, 47])?;
        write(
            t,
            &format!("{who}_payload_hello"),
            &cat(&[&[bit | 3], &hello]),
        )?;
        write(
            t,
            &format!("{who}_payload_version2"),
            &cat(&[&[bit | 3], &Hello { version: 2 }.encode()]),
        )?;
    }

    // ---- descriptors ----
    for (name, host, fp) in [
        ("v4_fingerprint", "127.0.0.1", Some([3u8; 32])),
        ("v6", "[::1]", None),
        ("dns_name", "relay.ministry.example", Some([4u8; 32])),
    ] {
        let d = Descriptor {
            host: host.into(),
            port: 4433,
            relay_key: relay.public(),
            tls_fingerprint: fp,
        };
        write("descriptor_parse", name, d.to_string().as_bytes())?;
    }

    // ---- contact card ----
    let identity = chappe_fuzz::identity();
    let mailbox = chappe_fuzz::mailbox();
    let desc = Descriptor {
        host: "127.0.0.1".into(),
        port: 4433,
        relay_key: relay.public(),
        tls_fingerprint: Some([3; 32]),
    };
    let card = Card::new(
        &identity,
        &desc,
        SendId(SEND_ID),
        DeliveryToken([6; 32]),
        mailbox.public_key().clone(),
    )?;
    write("card_parse", "valid", card.encode().as_bytes())?;

    // ---- envelopes (byte 0: bucket = BUCKETS[b % 5], mode = b / 5 % 3) ----
    let env = seal::seal(
        &identity,
        mailbox.public_key(),
        &SendId(SEND_ID),
        b"hello",
        NOW,
    )?;
    write("envelope_open", "raw_genuine_2048", &cat(&[&[1], &env]))?;
    write(
        "envelope_open",
        "seal_hello",
        &cat(&[&[10, 0, 0, 0], b"hello"]),
    )?;
    write(
        "envelope_open",
        "seal_tampered",
        &cat(&[&[10, 0, 5, 1], b"hello"]),
    )?;
    // The plaintext of `env`, for mode 1 (sealed by the target itself).
    let secret = mailbox.secret_bytes();
    let sk =
        <hpke::kem::XWing as hpke::Kem>::PrivateKey::from_bytes(&secret[..MAILBOX_SECRET_KEY_LEN])
            .map_err(|e| format!("{e:?}"))?;
    let enc = <hpke::kem::XWing as hpke::Kem>::EncappedKey::from_bytes(&env[..ENC_LEN])
        .map_err(|e| format!("{e:?}"))?;
    let pt = hpke::single_shot_open::<
        hpke::aead::ChaCha20Poly1305,
        hpke::kdf::HkdfSha256,
        hpke::kem::XWing,
    >(
        &OpModeR::Base,
        &sk,
        &enc,
        &cat(&[b"chappe/1 envelope", &SEND_ID]),
        &env[ENC_LEN..],
        &[],
    )
    .map_err(|e| format!("{e:?}"))?;
    // 6: bucket 2048, mode 1. Trailing zero padding is implied by the target.
    let used = pt.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    write(
        "envelope_open",
        "plaintext_valid",
        &cat(&[&[6], &pt[..used]]),
    )?;
    write("envelope_open", "raw_zeros_1024", &[0])?;

    // The journal: a record payload as the writer builds it (a put, an
    // ack's remove, an unindex), and images of short and wrapping records.
    let mut payload = Vec::new();
    for e in [
        Effect::Put {
            id: ReceiveId([7; 32]),
            seq: 1,
            expiry: 500_000,
            ciphertext: Bytes::from(vec![0xab; 1024]),
        },
        Effect::Remove {
            id: ReceiveId([7; 32]),
            seqs: vec![1, 2, 3],
        },
        Effect::Unindex {
            id: ReceiveId([8; 32]),
            seq: 9,
            hour: 499_000,
        },
    ] {
        e.encode_into(&mut payload);
    }
    write("journal_effects", "put_remove_unindex", &payload)?;
    // journal_scan: byte 0 = record count - 1 (low 3 bits), bit 7 = long
    // records; the last quarter of the rest is damage.
    write("journal_scan", "three_records", &cat(&[&[2], &payload]))?;
    write("journal_scan", "wrapping", &cat(&[&[0x83], &payload[..64]]))?;
    write(
        "journal_scan",
        "damaged",
        &cat(&[&[1], &payload[..120], &[0, 0, 40, 0xff]]),
    )?;

    println!("seeds written under fuzz/seeds/");
    Ok(())
}
