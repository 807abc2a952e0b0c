//! Relay side of the anonymous sender (NK) handshake:
//! `SenderResponder::read_request` on message 1. Modes and invariants as in
//! `handshake_owner_msg1` (see `chappe_fuzz::MsgMode`).
#![no_main]

use std::sync::LazyLock;

use chappe_fuzz::{
    E_MSG_OVERHEAD, EXPORTER, MsgMode, RawState, check_raw_outcome, expected_hello, msg_mode,
    mutate, raw_read, raw_state, raw_write,
};
use chappe_proto::noise::{Hello, Keypair, PROTOCOL_VERSION, SenderInitiator, SenderResponder};
use libfuzzer_sys::fuzz_target;
use noise_protocol::patterns::noise_nk;

static RELAY: LazyLock<Keypair> = LazyLock::new(chappe_fuzz::relay_keypair);

enum Client {
    Wrapped(SenderInitiator),
    Raw(Box<RawState>),
    None,
}

fn complete(resp: SenderResponder, client: Client) {
    let client_hello = resp.client_hello().clone();
    let Ok((msg2, relay_est)) = resp.respond(&Hello::default()) else {
        panic!("relay could not answer an accepted message 1");
    };
    assert_eq!(relay_est.peer_hello, client_hello);
    let client_hash = match client {
        Client::None => return,
        Client::Wrapped(init) => match init.finish(&msg2) {
            Ok(est) => {
                assert_eq!(est.peer_hello, Hello::default());
                est.handshake_hash.to_vec()
            }
            Err(e) => panic!("sender refused the relay's message 2: {e:?}"),
        },
        Client::Raw(mut hs) => {
            let relay_hello = raw_read(&mut hs, &msg2);
            assert_eq!(Hello::decode(&relay_hello), Ok(Hello::default()));
            hs.get_hash().to_vec()
        }
    };
    assert_eq!(
        relay_est.handshake_hash.to_vec(),
        client_hash,
        "handshake hashes differ"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, _)) = msg_mode(data) else {
        return;
    };
    match mode {
        MsgMode::Raw(msg) => {
            let r = SenderResponder::read_request(&RELAY, &EXPORTER, msg);
            check_raw_outcome(msg, E_MSG_OVERHEAD, true, r.as_ref().map(|_| ()));
            if let Ok(resp) = r {
                assert_eq!(resp.client_hello().version, PROTOCOL_VERSION);
                complete(resp, Client::None);
            }
        }
        MsgMode::Tamper(_) | MsgMode::Truncate(_) => {
            let Ok((init, genuine)) =
                SenderInitiator::start(&RELAY.public(), &EXPORTER, &Hello::default())
            else {
                panic!("SenderInitiator::start failed");
            };
            let (msg, same) = mutate(mode, &genuine);
            let r = SenderResponder::read_request(&RELAY, &EXPORTER, &msg);
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
            let mut hs = raw_state(noise_nk(), true, None, Some(RELAY.public()));
            let msg = raw_write(&mut hs, payload);
            let r = SenderResponder::read_request(&RELAY, &EXPORTER, &msg);
            let want = expected_hello(payload, msg.len());
            assert_eq!(r.as_ref().map(SenderResponder::client_hello), want.as_ref());
            if let Ok(resp) = r {
                complete(resp, Client::Raw(Box::new(hs)));
            }
        }
    }
});
