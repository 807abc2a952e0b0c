//! Client side of both handshakes: `OwnerInitiator::finish` (XK) and
//! `SenderInitiator::finish` (NK) on message 2. Bit 2 of the first byte picks
//! the pattern, bits 0-1 the mode (see `chappe_fuzz::MsgMode`).
//!
//! Invariants: length checks come first and a low-order relay ephemeral is
//! refused as such; raw bytes never pass for the pinned relay; a genuine
//! message 2 is accepted iff unchanged; a valid one is judged exactly as
//! `Hello::decode` judges its payload; an accepted XK message 2 yields a
//! message 3 the relay accepts, with agreeing handshake hashes.
#![no_main]

use std::sync::LazyLock;

use chappe_fuzz::{
    E_MSG_OVERHEAD, EXPORTER, MsgMode, RELAY_SECRET, check_raw_outcome, expected_hello, msg_mode,
    mutate, raw_read, raw_state, raw_write,
};
use chappe_proto::OwnerKey;
use chappe_proto::noise::{
    Hello, Keypair, OwnerInitiator, OwnerResponder, SenderInitiator, SenderResponder,
};
use libfuzzer_sys::fuzz_target;
use noise_protocol::patterns::{noise_nk, noise_xk};

static RELAY: LazyLock<Keypair> = LazyLock::new(chappe_fuzz::relay_keypair);
static OWNER: LazyLock<Keypair> = LazyLock::new(chappe_fuzz::owner_keypair);

fn owner(mode: MsgMode<'_>) {
    let Ok((init, msg1)) =
        OwnerInitiator::start(&OWNER, &RELAY.public(), &EXPORTER, &Hello::default())
    else {
        panic!("OwnerInitiator::start failed");
    };
    match mode {
        MsgMode::Raw(msg) => {
            let r = init.finish(msg);
            check_raw_outcome(msg, E_MSG_OVERHEAD, true, r.as_ref().map(|_| ()));
            assert!(r.is_err(), "raw bytes passed for the relay's message 2");
        }
        MsgMode::Tamper(_) | MsgMode::Truncate(_) => {
            let Ok(resp) = OwnerResponder::read_request(&RELAY, &EXPORTER, &msg1) else {
                panic!("relay refused a genuine message 1");
            };
            let Ok((wait, genuine)) = resp.respond(&Hello::default()) else {
                panic!("relay could not write message 2");
            };
            let (msg, same) = mutate(mode, &genuine);
            let r = init.finish(&msg);
            check_raw_outcome(&msg, E_MSG_OVERHEAD, true, r.as_ref().map(|_| ()));
            assert_eq!(
                r.is_ok(),
                same,
                "changed message 2 accepted, or genuine one refused: {:?}",
                r.as_ref().err()
            );
            if let Ok((msg3, est_c)) = r {
                assert_eq!(est_c.peer_hello, Hello::default());
                match wait.read_final(&msg3) {
                    Ok((key, est_r)) => {
                        assert_eq!(key, OwnerKey(OWNER.public()));
                        assert_eq!(est_r.handshake_hash, est_c.handshake_hash);
                    }
                    Err(e) => panic!("relay refused the client's message 3: {e:?}"),
                }
            }
        }
        MsgMode::Payload(payload) => {
            let payload = chappe_fuzz::cap_payload(payload);
            let mut hs = raw_state(noise_xk(), false, Some(&RELAY_SECRET), None);
            let client_hello = raw_read(&mut hs, &msg1);
            assert_eq!(Hello::decode(&client_hello), Ok(Hello::default()));
            let msg2 = raw_write(&mut hs, payload);
            let r = init.finish(&msg2);
            let want = expected_hello(payload, msg2.len());
            assert_eq!(r.as_ref().map(|(_, est)| &est.peer_hello), want.as_ref());
            if let Ok((msg3, est_c)) = r {
                let _ = raw_read(&mut hs, &msg3);
                assert_eq!(
                    hs.get_rs(),
                    Some(OWNER.public()),
                    "message 3 names another key"
                );
                assert_eq!(hs.get_hash(), &est_c.handshake_hash[..]);
            }
        }
    }
}

fn sender(mode: MsgMode<'_>) {
    let Ok((init, msg1)) = SenderInitiator::start(&RELAY.public(), &EXPORTER, &Hello::default())
    else {
        panic!("SenderInitiator::start failed");
    };
    match mode {
        MsgMode::Raw(msg) => {
            let r = init.finish(msg);
            check_raw_outcome(msg, E_MSG_OVERHEAD, true, r.as_ref().map(|_| ()));
            assert!(r.is_err(), "raw bytes passed for the relay's message 2");
        }
        MsgMode::Tamper(_) | MsgMode::Truncate(_) => {
            let Ok(resp) = SenderResponder::read_request(&RELAY, &EXPORTER, &msg1) else {
                panic!("relay refused a genuine message 1");
            };
            let Ok((genuine, est_r)) = resp.respond(&Hello::default()) else {
                panic!("relay could not write message 2");
            };
            let (msg, same) = mutate(mode, &genuine);
            let r = init.finish(&msg);
            check_raw_outcome(&msg, E_MSG_OVERHEAD, true, r.as_ref().map(|_| ()));
            assert_eq!(
                r.is_ok(),
                same,
                "changed message 2 accepted, or genuine one refused: {:?}",
                r.as_ref().err()
            );
            if let Ok(est_c) = r {
                assert_eq!(est_c.peer_hello, Hello::default());
                assert_eq!(est_c.handshake_hash, est_r.handshake_hash);
            }
        }
        MsgMode::Payload(payload) => {
            let payload = chappe_fuzz::cap_payload(payload);
            let mut hs = raw_state(noise_nk(), false, Some(&RELAY_SECRET), None);
            let client_hello = raw_read(&mut hs, &msg1);
            assert_eq!(Hello::decode(&client_hello), Ok(Hello::default()));
            let msg2 = raw_write(&mut hs, payload);
            let r = init.finish(&msg2);
            let want = expected_hello(payload, msg2.len());
            assert_eq!(r.as_ref().map(|est| &est.peer_hello), want.as_ref());
            if let Ok(est_c) = r {
                assert_eq!(hs.get_hash(), &est_c.handshake_hash[..]);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, bits)) = msg_mode(data) else {
        return;
    };
    if bits & 1 == 0 {
        owner(mode);
    } else {
        sender(mode);
    }
});
