//! Crash recovery's reading of the journal (`chappe_store::journal`), on an
//! image that was written correctly and then damaged at will.
//!
//! The input is cut into record payloads (byte 0 says how many records and
//! how long, the rest is their content); the image is built exactly as the
//! writer writes, wrapping around the 1 MiB ring when the records are
//! long, and then the last bytes of the input, read as (offset, xor) pairs,
//! flip bytes anywhere in it: a torn write, a damaged sector, an old lap,
//! bytes a sender chose.
//!
//! Invariants: the scan never panics and ends; every record it returns is
//! one that was written, with its payload unchanged, in increasing sequence
//! order; with no damage it returns every record still in the ring.
#![no_main]

use chappe_store::journal::{KEY_LEN, image, scan_image};
use libfuzzer_sys::fuzz_target;

const RING: u64 = 1 << 20;
const KEY: [u8; KEY_LEN] = [0x5a; KEY_LEN];

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(shape % 8) + 1;
    // Long records (byte 0's high bit) make the ring wrap.
    let stretch = if shape & 0x80 != 0 { 300_000 } else { 1 };
    let (body, damage) = rest.split_at(rest.len() - rest.len() / 4);
    let chunk = body.len().div_ceil(count).max(1);
    let payloads: Vec<Vec<u8>> = body
        .chunks(chunk)
        .map(|c| {
            let len = (c.len() * stretch).min(400_000);
            c.iter().cycle().take(len).copied().collect()
        })
        .collect();
    let records: Vec<(u64, &[u8])> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, p.as_slice()))
        .collect();
    if records.is_empty() {
        return;
    }
    let Some(mut img) = image(RING, KEY, &records) else {
        return; // a record longer than the ring
    };
    // Where each record starts, to scan from the oldest one still whole.
    let mut starts = Vec::new();
    let mut head = 0u64;
    for (_, p) in &records {
        let size = (32 + p.len() as u64).div_ceil(8) * 8;
        if RING - head % RING < size {
            head += RING - head % RING;
        }
        starts.push(head);
        head += size;
    }
    // The records a writer with this ring could still need: those within
    // the last lap.
    let first = starts.iter().position(|&s| head - s <= RING).unwrap_or(0);
    let (from, after) = (starts[first], first as u64);
    let damaged = !damage.is_empty();
    for pair in damage.chunks_exact(4) {
        let off = u32::from_be_bytes([pair[0], pair[1], pair[2], 0]) as usize % img.len();
        img[off] ^= pair[3] | 1;
    }
    let Ok(scan) = scan_image(&img, from, after) else {
        assert!(damaged, "an undamaged header must decode");
        return;
    };
    let mut last = after;
    let mut got = 0usize;
    for (seq, payload) in scan {
        assert!(seq > last, "sequence numbers must increase");
        last = seq;
        let want = records
            .iter()
            .find(|r| r.0 == seq)
            .expect("a record that was never written");
        assert_eq!(&payload[..], want.1, "record {seq} changed");
        // What recovery does next with it.
        let _ = chappe_store::effect::decode(&payload);
        got += 1;
    }
    if !damaged {
        assert_eq!(got, records.len() - first, "records lost without damage");
    }
});
