//! `chappe_store::effect::decode`: the payload of a journal record, which
//! recovery replays into the store.
//!
//! Invariants: never panics; a payload that decodes re-encodes to exactly
//! its input bytes (the layout is canonical), and every ciphertext it
//! yields is a slice of the input no longer than the largest bucket.
#![no_main]

use bytes::Bytes;
use chappe_store::effect::{Effect, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    let Ok(effects) = decode(&payload) else {
        return;
    };
    let mut again = Vec::with_capacity(data.len());
    for e in &effects {
        if let Effect::Put { ciphertext, .. } = e {
            assert!(ciphertext.len() <= chappe_proto::envelope::MAX_CIPHERTEXT);
        }
        e.encode_into(&mut again);
    }
    assert_eq!(again, data, "decode then encode must give the input back");
});
