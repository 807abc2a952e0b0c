//! Relay side of the owner (XK) handshake: `OwnerResponder::read_request` on
//! message 1. The first byte picks the mode (see `chappe_fuzz::MsgMode`):
//! raw bytes, a genuine message 1 tampered with or truncated, or a valid
//! message 1 carrying an arbitrary payload.
//!
//! Invariants: length checks come first and a low-order ephemeral is refused
//! as such; a genuine message is accepted iff unchanged; a valid message is
//! judged exactly as `Hello::decode` judges its payload; and whatever is
//! accepted completes into a handshake both sides agree on.
#![no_main]

use std::sync::LazyLock;

use chappe_fuzz::{
    E_MSG_OVERHEAD, EXPORTER, MsgMode, OWNER_SECRET, RawState, check_raw_outcome, expected_hello,
    msg_mode, mutate, raw_read, raw_state, raw_write,
};
use chappe_proto::OwnerKey;
use chappe_proto::noise::{Hello, Keypair, OwnerInitiator, OwnerResponder, PROTOCOL_VERSION};
use libfuzzer_sys::fuzz_target;
use noise_protocol::patterns::noise_xk;

static RELAY: LazyLock<Keypair> = LazyLock::new(chappe_fuzz::relay_keypair);
static OWNER: LazyLock<Keypair> = LazyLock::new(chappe_fuzz::owner_keypair);

/// The client side, to finish a handshake the relay accepted.
enum Client {
    Wrapped(OwnerInitiator),
    Raw(Box<RawState>),
    /// A replayed message 1: its initiator is gone.
    None,
}

fn complete(resp: OwnerResponder, client: Client) {
    let Ok((wait, msg2)) = resp.respond(&Hello::default()) else {
        panic!("relay could not answer an accepted message 1");
    };
    let (msg3, client_hash) = match client {
        Client::None => return,
        Client::Wrapped(init) => match init.finish(&msg2) {
            Ok((msg3, est)) => {
                assert_eq!(est.peer_hello, Hello::default());
                (msg3, est.handshake_hash.to_vec())
            }
            Err(e) => panic!("client refused the relay's message 2: {e:?}"),
        },
        Client::Raw(mut hs) => {
            let relay_hello = raw_read(&mut hs, &msg2);
            assert_eq!(Hello::decode(&relay_hello), Ok(Hello::default()));
            let msg3 = raw_write(&mut hs, &[]);
            (msg3, hs.get_hash().to_vec())
        }
    };
    match wait.read_final(&msg3) {
        Ok((key, est)) => {
            assert_eq!(key, OwnerKey(OWNER.public()), "wrong owner key");
            assert_eq!(
                est.handshake_hash.to_vec(),
                client_hash,
                "handshake hashes differ"
            );
        }
        Err(e) => panic!("relay refused a genuine message 3: {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, _)) = msg_mode(data) else {
        return;
    };
    match mode {
        MsgMode::Raw(msg) => {
            let r = OwnerResponder::read_request(&RELAY, &EXPORTER, msg);
            check_raw_outcome(msg, E_MSG_OVERHEAD, true, r.as_ref().map(|_| ()));
            // Only a replay of a genuine message 1 (the exporter is fixed
            // here; a real relay's differs per connection) gets through.
            if let Ok(resp) = r {
                assert_eq!(resp.client_hello().version, PROTOCOL_VERSION);
                complete(resp, Client::None);
            }
        }
        MsgMode::Tamper(_) | MsgMode::Truncate(_) => {
            let Ok((init, genuine)) =
                OwnerInitiator::start(&OWNER, &RELAY.public(), &EXPORTER, &Hello::default())
            else {
                panic!("OwnerInitiator::start failed");
            };
            let (msg, same) = mutate(mode, &genuine);
            let r = OwnerResponder::read_request(&RELAY, &EXPORTER, &msg);
            check_raw_outcome(&msg, E_MSG_OVERHEAD, true, r.as_ref().map(|_| ()));
            assert_eq!(
                r.is_ok(),
                same,
                "changed message 1 accepted, or genuine one refused: {:?}",
                r.as_ref().err()
            );
            if let Ok(resp) = r {
                complete(resp, Client::Wrapped(init));
            }
        }
        MsgMode::Payload(payload) => {
            let payload = chappe_fuzz::cap_payload(payload);
            let mut hs = raw_state(noise_xk(), true, Some(&OWNER_SECRET), Some(RELAY.public()));
            let msg = raw_write(&mut hs, payload);
            let r = OwnerResponder::read_request(&RELAY, &EXPORTER, &msg);
            let want = expected_hello(payload, msg.len());
            assert_eq!(r.as_ref().map(OwnerResponder::client_hello), want.as_ref());
            if let Ok(resp) = r {
                complete(resp, Client::Raw(Box::new(hs)));
            }
        }
    }
});
