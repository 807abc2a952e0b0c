//! The published Noise vectors (`tests/data/noise-cacophony.json`, a subset
//! of cacophony's) through the functions every handshake wrapper is made
//! of: [`build`] with our X25519, [`write`] and [`read`] with their turn and
//! length checks, then the split into transport ciphers. Every handshake
//! message, the handshake hash and every transport message must match byte
//! for byte.
//!
//! The wrappers fix the prologue (`chappe/1 || exporter`) and the payload
//! (a [`Hello`]), so the vectors' own prologues and payloads can only enter
//! one layer down; [`wrappers_run_on_the_checked_layer`] shows the wrappers,
//! given the vectors' keys, put the vectors' ephemeral keys on the wire and
//! authenticate the vectors' static keys. KK (relay to relay, for
//! federation) has no wrapper yet and runs on the same layer. The PSK
//! variants check the crate's PSK handling, which the planned post-quantum
//! PSK (payload tag 0x81) will use.

use noise_protocol::patterns::{
    HandshakePattern, noise_kk, noise_kk_psk0, noise_kk_psk2, noise_nk, noise_nk_psk0,
    noise_nk_psk2, noise_xk, noise_xk_psk3,
};
use noise_protocol::{Cipher, DH, Hash};
use noise_rust_crypto::{Aes256Gcm, Sha256};
use serde_json::Value;

use super::{
    EXPORTER_LEN, Hello, Keypair, OwnerInitiator, OwnerKey, OwnerResponder, SenderInitiator,
    SenderResponder, State, X25519, build, fixed_ephemeral, read, write,
};

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/noise-cacophony.json"
));

/// One vector; field names as in the file.
struct Vector {
    protocol_name: String,
    pattern: HandshakePattern,
    init_prologue: Vec<u8>,
    init_static: Option<[u8; 32]>,
    init_ephemeral: [u8; 32],
    init_remote_static: Option<[u8; 32]>,
    init_psks: Vec<Vec<u8>>,
    resp_prologue: Vec<u8>,
    resp_static: Option<[u8; 32]>,
    resp_ephemeral: [u8; 32],
    resp_remote_static: Option<[u8; 32]>,
    resp_psks: Vec<Vec<u8>>,
    handshake_hash: Vec<u8>,
    /// `(payload, ciphertext)`, the initiator sending the even ones.
    messages: Vec<(Vec<u8>, Vec<u8>)>,
}

fn bytes(v: &Value, field: &str) -> Vec<u8> {
    let text = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string"));
    hex::decode(text).unwrap_or_else(|e| panic!("{field}: {e}"))
}

fn key(v: &Value, field: &str) -> Option<[u8; 32]> {
    v.get(field)
        .map(|_| bytes(v, field).try_into().expect("a 32-byte key"))
}

fn psks(v: &Value, field: &str) -> Vec<Vec<u8>> {
    v.get(field)
        .and_then(Value::as_array)
        .map_or_else(Vec::new, |list| {
            list.iter()
                .map(|p| hex::decode(p.as_str().expect("a hex PSK")).expect("a hex PSK"))
                .collect()
        })
}

/// The pattern a protocol name asks for; every name in the file must be one
/// of these, so a vector cannot be skipped by accident.
fn pattern(protocol_name: &str) -> HandshakePattern {
    let name = protocol_name
        .strip_prefix("Noise_")
        .and_then(|n| n.strip_suffix("_25519_AESGCM_SHA256"))
        .unwrap_or_else(|| panic!("{protocol_name}: not a 25519_AESGCM_SHA256 vector"));
    match name {
        "NK" => noise_nk(),
        "XK" => noise_xk(),
        "KK" => noise_kk(),
        "NKpsk0" => noise_nk_psk0(),
        "NKpsk2" => noise_nk_psk2(),
        "XKpsk3" => noise_xk_psk3(),
        "KKpsk0" => noise_kk_psk0(),
        "KKpsk2" => noise_kk_psk2(),
        other => panic!("{protocol_name}: no pattern {other} here"),
    }
}

fn vectors() -> Vec<Vector> {
    let file: Value = serde_json::from_str(VECTORS).expect("the vector file is JSON");
    file["vectors"]
        .as_array()
        .expect("a list of vectors")
        .iter()
        .map(|v| {
            let protocol_name = v["protocol_name"].as_str().expect("a name").to_string();
            Vector {
                pattern: pattern(&protocol_name),
                init_prologue: bytes(v, "init_prologue"),
                init_static: key(v, "init_static"),
                init_ephemeral: key(v, "init_ephemeral").expect("init_ephemeral"),
                init_remote_static: key(v, "init_remote_static"),
                init_psks: psks(v, "init_psks"),
                resp_prologue: bytes(v, "resp_prologue"),
                resp_static: key(v, "resp_static"),
                resp_ephemeral: key(v, "resp_ephemeral").expect("resp_ephemeral"),
                resp_remote_static: key(v, "resp_remote_static"),
                resp_psks: psks(v, "resp_psks"),
                handshake_hash: bytes(v, "handshake_hash"),
                messages: v["messages"]
                    .as_array()
                    .expect("messages")
                    .iter()
                    .map(|m| (bytes(m, "payload"), bytes(m, "ciphertext")))
                    .collect(),
                protocol_name,
            }
        })
        .collect()
}

/// Both handshake states of a vector, built as the wrappers build theirs.
fn states(v: &Vector) -> (State, State) {
    let init_s = v.init_static.map(Keypair::from_secret);
    let resp_s = v.resp_static.map(Keypair::from_secret);
    fixed_ephemeral::push(v.init_ephemeral);
    let mut init = build(
        v.pattern.clone(),
        true,
        &v.init_prologue,
        init_s.as_ref(),
        v.init_remote_static,
    );
    fixed_ephemeral::push(v.resp_ephemeral);
    let mut resp = build(
        v.pattern.clone(),
        false,
        &v.resp_prologue,
        resp_s.as_ref(),
        v.resp_remote_static,
    );
    for psk in &v.init_psks {
        init.push_psk(psk);
    }
    for psk in &v.resp_psks {
        resp.push_psk(psk);
    }
    (init, resp)
}

/// Runs one vector; returns how many messages matched.
fn run(v: &Vector) -> usize {
    let name = &v.protocol_name;
    assert_eq!(
        format!(
            "Noise_{}_{}_{}_{}",
            v.pattern.get_name(),
            X25519::name(),
            Aes256Gcm::name(),
            Sha256::name()
        ),
        *name,
        "the suite we build is the one the vector names"
    );
    let (mut init, mut resp) = states(v);
    let handshake_len = v.pattern.get_message_patterns_len();
    assert!(v.messages.len() > handshake_len, "{name}: no transport");

    for (i, (payload, ciphertext)) in v.messages.iter().take(handshake_len).enumerate() {
        let (sender, receiver) = if i % 2 == 0 {
            (&mut init, &mut resp)
        } else {
            (&mut resp, &mut init)
        };
        let written = write(sender, payload).unwrap_or_else(|e| panic!("{name} #{i}: {e}"));
        assert_eq!(
            hex::encode(&written),
            hex::encode(ciphertext),
            "{name}: handshake message {i}"
        );
        let opened = read(receiver, ciphertext).unwrap_or_else(|e| panic!("{name} #{i}: {e}"));
        assert_eq!(opened, *payload, "{name}: payload of handshake message {i}");
    }
    assert!(init.completed() && resp.completed(), "{name}: not complete");
    assert_eq!(hex::encode(init.get_hash()), hex::encode(&v.handshake_hash));
    assert_eq!(hex::encode(resp.get_hash()), hex::encode(&v.handshake_hash));

    // Transport messages carry on alternating, as the handshake did.
    let (mut init_send, mut init_recv) = init.get_ciphers();
    let (mut resp_recv, mut resp_send) = resp.get_ciphers();
    for (i, (payload, ciphertext)) in v.messages.iter().enumerate().skip(handshake_len) {
        let (send, recv) = if i % 2 == 0 {
            (&mut init_send, &mut resp_recv)
        } else {
            (&mut resp_send, &mut init_recv)
        };
        assert_eq!(
            hex::encode(send.encrypt_vec(payload)),
            hex::encode(ciphertext),
            "{name}: transport message {i}"
        );
        assert_eq!(
            recv.decrypt_vec(ciphertext).ok().as_ref(),
            Some(payload),
            "{name}: transport message {i} opens"
        );
    }
    v.messages.len()
}

#[test]
fn cacophony_vectors_match_byte_for_byte() {
    let all = vectors();
    let mut names = Vec::new();
    for v in &all {
        let n = run(v);
        println!("{}: {n} messages match", v.protocol_name);
        names.push(v.protocol_name.as_str());
    }
    for required in [
        "Noise_NK_25519_AESGCM_SHA256",
        "Noise_XK_25519_AESGCM_SHA256",
        "Noise_KK_25519_AESGCM_SHA256",
    ] {
        assert!(
            names.contains(&required),
            "{required} missing from the file"
        );
    }
    println!("noise vectors: {} of {} passed", all.len(), all.len());
}

/// A flipped bit in any handshake message of a vector is refused as a
/// decryption failure, never accepted and never a panic.
#[test]
fn tampered_vector_messages_are_refused() {
    for v in vectors() {
        let handshake_len = v.pattern.get_message_patterns_len();
        for tampered in 0..handshake_len {
            let (mut init, mut resp) = states(&v);
            for (i, (payload, ciphertext)) in v.messages.iter().take(tampered + 1).enumerate() {
                let (sender, receiver) = if i % 2 == 0 {
                    (&mut init, &mut resp)
                } else {
                    (&mut resp, &mut init)
                };
                write(sender, payload).unwrap();
                let mut msg = ciphertext.clone();
                if i == tampered {
                    *msg.last_mut().unwrap() ^= 0x01;
                    assert_eq!(
                        read(receiver, &msg).err(),
                        Some(super::HandshakeError::Decrypt),
                        "{}: message {i} with a flipped bit",
                        v.protocol_name
                    );
                } else {
                    read(receiver, &msg).unwrap();
                }
            }
        }
    }
}

fn vector(name: &str) -> Vector {
    vectors()
        .into_iter()
        .find(|v| v.protocol_name == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn ephemeral_on_wire(msg: &[u8]) -> String {
    hex::encode(&msg[..32])
}

/// The wrappers, given a vector's static and ephemeral keys (and our own
/// prologue and hello, so the rest of the bytes differ), derive the vector's
/// public keys, send its ephemeral keys first in each message, and agree.
#[test]
fn wrappers_run_on_the_checked_layer() {
    let exporter = [7u8; EXPORTER_LEN];

    let v = vector("Noise_XK_25519_AESGCM_SHA256");
    let owner = Keypair::from_secret(v.init_static.unwrap());
    let relay = Keypair::from_secret(v.resp_static.unwrap());
    assert_eq!(Some(relay.public()), v.init_remote_static);
    fixed_ephemeral::push(v.init_ephemeral);
    let (init, m1) =
        OwnerInitiator::start(&owner, &relay.public(), &exporter, &Hello::default()).unwrap();
    assert_eq!(ephemeral_on_wire(&m1), ephemeral_on_wire(&v.messages[0].1));
    fixed_ephemeral::push(v.resp_ephemeral);
    let resp = OwnerResponder::read_request(&relay, &exporter, &m1).unwrap();
    let (wait, m2) = resp.respond(&Hello::default()).unwrap();
    assert_eq!(ephemeral_on_wire(&m2), ephemeral_on_wire(&v.messages[1].1));
    let (m3, owner_side) = init.finish(&m2).unwrap();
    let (key, relay_side) = wait.read_final(&m3).unwrap();
    assert_eq!(key, OwnerKey(owner.public()));
    assert_eq!(owner_side.handshake_hash, relay_side.handshake_hash);

    let v = vector("Noise_NK_25519_AESGCM_SHA256");
    let relay = Keypair::from_secret(v.resp_static.unwrap());
    assert_eq!(Some(relay.public()), v.init_remote_static);
    fixed_ephemeral::push(v.init_ephemeral);
    let (init, m1) = SenderInitiator::start(&relay.public(), &exporter, &Hello::default()).unwrap();
    assert_eq!(ephemeral_on_wire(&m1), ephemeral_on_wire(&v.messages[0].1));
    fixed_ephemeral::push(v.resp_ephemeral);
    let resp = SenderResponder::read_request(&relay, &exporter, &m1).unwrap();
    let (m2, relay_side) = resp.respond(&Hello::default()).unwrap();
    assert_eq!(ephemeral_on_wire(&m2), ephemeral_on_wire(&v.messages[1].1));
    let sender_side = init.finish(&m2).unwrap();
    assert_eq!(sender_side.handshake_hash, relay_side.handshake_hash);
}
