//! `Frame::decode` on arbitrary bytes, until it wants more or refuses.
//!
//! Invariants: `Ok(None)` consumes nothing; every decoded frame re-encodes to
//! exactly the bytes it was split from (the encoding is canonical), and that
//! encoding decodes back to an equal frame.
#![no_main]

use bytes::BytesMut;
use chappe_proto::frame::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut offset = 0;
    loop {
        let before = buf.len();
        match Frame::decode(&mut buf) {
            Ok(Some(frame)) => {
                let consumed = before - buf.len();
                let wire = data.get(offset..offset + consumed);
                assert!(wire.is_some(), "decode consumed past the input");
                chappe_fuzz::check_frame(&frame, wire);
                offset += consumed;
            }
            Ok(None) => {
                assert_eq!(
                    &buf[..],
                    data.get(offset..).unwrap_or_default(),
                    "Ok(None) consumed bytes"
                );
                if let Some(&[a, b, c, d]) = buf.get(..4) {
                    let len = u32::from_be_bytes([a, b, c, d]) as usize;
                    assert!(buf.len() < 4 + len, "Ok(None) with a whole frame buffered");
                }
                break;
            }
            Err(_) => break,
        }
    }
});
