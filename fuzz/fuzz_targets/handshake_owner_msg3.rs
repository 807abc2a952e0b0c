//! Relay side of the owner (XK) handshake: `OwnerAwaitingFinal::read_final`
//! on message 3, after a real message 1 / message 2 exchange with fixed
//! static keys (fresh ephemerals). Modes as in `chappe_fuzz::MsgMode`.
//!
//! Invariants: length checks come first; raw bytes never authenticate an
//! owner; a genuine message 3 is accepted iff unchanged; a valid message 3
//! with any payload (the relay ignores it) is accepted if it fits; whatever
//! is accepted names the real owner key and the same handshake hash the
//! client computed.
#![no_main]

use std::sync::LazyLock;

use chappe_fuzz::{
    EXPORTER, MsgMode, OWNER_SECRET, S_MSG_OVERHEAD, check_raw_outcome, msg_mode, mutate, raw_read,
    raw_state, raw_write,
};
use chappe_proto::OwnerKey;
use chappe_proto::noise::{
    HandshakeError, Hello, Keypair, MAX_HANDSHAKE_MSG, OwnerAwaitingFinal, OwnerInitiator,
    OwnerResponder,
};
use libfuzzer_sys::fuzz_target;
use noise_protocol::patterns::noise_xk;

static RELAY: LazyLock<Keypair> = LazyLock::new(chappe_fuzz::relay_keypair);
static OWNER: LazyLock<Keypair> = LazyLock::new(chappe_fuzz::owner_keypair);

/// The relay's state after answering `msg1`, and its message 2.
fn relay_after(msg1: &[u8]) -> (OwnerAwaitingFinal, Vec<u8>) {
    let resp = match OwnerResponder::read_request(&RELAY, &EXPORTER, msg1) {
        Ok(r) => r,
        Err(e) => panic!("relay refused a genuine message 1: {e:?}"),
    };
    match resp.respond(&Hello::default()) {
        Ok(x) => x,
        Err(e) => panic!("relay could not write message 2: {e:?}"),
    }
}

fn wrapped_client() -> (OwnerInitiator, Vec<u8>) {
    match OwnerInitiator::start(&OWNER, &RELAY.public(), &EXPORTER, &Hello::default()) {
        Ok(x) => x,
        Err(e) => panic!("OwnerInitiator::start failed: {e:?}"),
    }
}

fn check_accepted(
    r: Result<(OwnerKey, chappe_proto::noise::Established), HandshakeError>,
    client_hash: &[u8],
) {
    match r {
        Ok((key, est)) => {
            assert_eq!(key, OwnerKey(OWNER.public()), "wrong owner key");
            assert_eq!(
                &est.handshake_hash[..],
                client_hash,
                "handshake hashes differ"
            );
            assert_eq!(est.peer_hello, Hello::default());
        }
        Err(e) => panic!("relay refused a valid message 3: {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, _)) = msg_mode(data) else {
        return;
    };
    match mode {
        MsgMode::Raw(msg) => {
            let (_init, msg1) = wrapped_client();
            let (wait, _msg2) = relay_after(&msg1);
            let r = wait.read_final(msg);
            check_raw_outcome(msg, S_MSG_OVERHEAD, false, r.as_ref().map(|_| ()));
            assert!(
                r.is_err(),
                "raw bytes authenticated an owner: {:?}",
                r.ok().map(|x| x.0)
            );
        }
        MsgMode::Tamper(_) | MsgMode::Truncate(_) => {
            let (init, msg1) = wrapped_client();
            let (wait, msg2) = relay_after(&msg1);
            let (genuine, est_c) = match init.finish(&msg2) {
                Ok(x) => x,
                Err(e) => panic!("client refused a genuine message 2: {e:?}"),
            };
            let (msg, same) = mutate(mode, &genuine);
            let r = wait.read_final(&msg);
            check_raw_outcome(&msg, S_MSG_OVERHEAD, false, r.as_ref().map(|_| ()));
            if same {
                check_accepted(r, &est_c.handshake_hash);
            } else {
                assert!(r.is_err(), "changed message 3 accepted");
            }
        }
        MsgMode::Payload(payload) => {
            let payload = chappe_fuzz::cap_payload(payload);
            let mut hs = raw_state(noise_xk(), true, Some(&OWNER_SECRET), Some(RELAY.public()));
            let msg1 = raw_write(&mut hs, &Hello::default().encode());
            let (wait, msg2) = relay_after(&msg1);
            let relay_hello = raw_read(&mut hs, &msg2);
            assert_eq!(Hello::decode(&relay_hello), Ok(Hello::default()));
            let msg3 = raw_write(&mut hs, payload);
            let r = wait.read_final(&msg3);
            if msg3.len() > MAX_HANDSHAKE_MSG {
                assert_eq!(r.err(), Some(HandshakeError::TooLong));
            } else {
                check_accepted(r, hs.get_hash());
            }
        }
    }
});
