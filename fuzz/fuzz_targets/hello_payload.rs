//! `Hello::decode` (the TLV payload inside handshake messages).
//!
//! Invariants: what decodes re-encodes to something that decodes to the same
//! hello; nothing longer than `MAX_PAYLOAD` decodes; appending an unknown
//! non-critical item never changes the outcome of a payload whose items are
//! all complete.
#![no_main]

use chappe_proto::noise::Hello;
use chappe_proto::noise::payload::{MAX_PAYLOAD, PayloadError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let got = Hello::decode(data);
    if let Ok(h) = &got {
        assert!(data.len() <= MAX_PAYLOAD);
        let enc = h.encode();
        assert_eq!(Hello::decode(&enc).as_ref(), Ok(h), "round trip");
        assert_eq!(
            Hello::decode(&enc).map(|h2| h2.encode()),
            Ok(enc),
            "encode is canonical"
        );
    }
    if data.len() + 3 <= MAX_PAYLOAD && got != Err(PayloadError::Truncated) {
        let mut extended = data.to_vec();
        extended.extend_from_slice(&[0x10, 0, 0]);
        assert_eq!(
            Hello::decode(&extended),
            got,
            "unknown non-critical item changed the outcome"
        );
    }
});
