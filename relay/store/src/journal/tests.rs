use std::collections::VecDeque;

use proptest::prelude::*;
use tempfile::TempDir;

use super::record::{FILE_HEADER, MIN_RING, RECORD_HEADER, aligned};
use super::*;

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

fn append(j: &mut Journal, seq: u64, len: usize) -> Appended {
    j.begin().extend_from_slice(&payload(seq, len));
    j.append(seq).unwrap()
}

fn read_all(j: &Journal, from: u64, after: u64) -> Vec<(u64, usize)> {
    j.scan(from, after)
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r.payload, payload(r.seq, r.payload.len()), "seq {}", r.seq);
            (r.seq, r.payload.len())
        })
        .collect()
}

fn new_journal(dir: &TempDir, ring: u64) -> Journal {
    Journal::create(&dir.path().join("store.journal"), ring).unwrap()
}

#[test]
fn records_read_back_in_order_and_the_file_reopens() {
    let dir = TempDir::new().unwrap();
    let mut j = new_journal(&dir, MIN_RING);
    let mut end = 0;
    for seq in 1..=5 {
        end = append(&mut j, seq, 100 * seq as usize).end;
    }
    j.sync().unwrap();
    assert_eq!(j.head(), end);
    let id = j.id();
    drop(j);
    let j = Journal::open(&dir.path().join("store.journal"))
        .unwrap()
        .unwrap();
    assert_eq!(j.id(), id);
    assert_eq!(
        read_all(&j, 0, 0),
        [(1, 100), (2, 200), (3, 300), (4, 400), (5, 500)]
    );
    // From the middle: only what follows, and only newer numbers.
    let mut s = j.scan(0, 0);
    let second_end = {
        s.next();
        s.next().unwrap().unwrap().end
    };
    assert_eq!(read_all(&j, second_end, 2), [(3, 300), (4, 400), (5, 500)]);
    assert!(
        read_all(&j, second_end, 3).is_empty(),
        "3 is not newer than 3"
    );
    let mut s = j.scan(0, 0);
    assert_eq!(s.by_ref().count(), 5);
    assert_eq!(s.position(), end);
    assert_eq!(s.last_seq(), 5);
    assert!(
        Journal::open(&dir.path().join("none.journal"))
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_torn_or_damaged_record_ends_the_chain() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.journal");
    let mut j = new_journal(&dir, MIN_RING);
    let ends: Vec<u64> = (1..=4).map(|s| append(&mut j, s, 1000).end).collect();
    j.sync().unwrap();
    drop(j);
    // A byte of record 3's payload never made it to disk.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0x55], FILE_HEADER + ends[1] + RECORD_HEADER as u64 + 10)
        .unwrap();
    let j = Journal::open(&path).unwrap().unwrap();
    assert_eq!(read_all(&j, 0, 0), [(1, 1000), (2, 1000)]);
    // A damaged header ends it too.
    f.write_all_at(&[0x55], FILE_HEADER + ends[0] + 3).unwrap();
    assert_eq!(read_all(&j, 0, 0), [(1, 1000)]);
}

#[test]
fn the_ring_wraps_and_older_laps_are_not_read() {
    let dir = TempDir::new().unwrap();
    let mut j = new_journal(&dir, MIN_RING);
    // Records of ~100 KiB: a lap holds ten; keep at most five unapplied.
    let mut live: VecDeque<(u64, u64, Appended)> = VecDeque::new();
    let mut tail = 0;
    for seq in 1..=60u64 {
        let len = 100_000 + (seq as usize % 7) * 1000;
        if live.len() == 5 {
            let (_, _, done) = live.pop_front().unwrap();
            tail = done.end;
        }
        j.begin().extend_from_slice(&payload(seq, len));
        assert!(j.fits(tail), "seq {seq}");
        let start = j.head();
        let a = j.append(seq).unwrap();
        live.push_back((seq, start, a));
    }
    j.sync().unwrap();
    assert!(j.head() > 5 * MIN_RING, "wrapped several times");
    let (first, _, _) = live[0];
    let got: Vec<u64> = read_all(&j, tail, first - 1)
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(got, (first..=60).collect::<Vec<_>>());
    // The ring is full: one more big record does not fit before the tail.
    j.begin().extend_from_slice(&payload(61, 600_000));
    assert!(!j.fits(tail));
}

#[test]
fn bytes_that_imitate_a_record_are_not_one() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.journal");
    let mut j = new_journal(&dir, MIN_RING);
    let end = append(&mut j, 1, 64).end;
    j.sync().unwrap();
    // Someone who knows the layout but not the key writes a well-formed
    // record right where the next one goes.
    let forger = record::Sealer::new(&[0x42; record::KEY_LEN]);
    let fake = b"forged payload".to_vec();
    let h = record::RecordHeader {
        seq: 2,
        len: fake.len() as u32,
        kind: record::Kind::Batch,
    };
    let mut bytes = forger.seal(end, &h, &fake).to_vec();
    bytes.extend_from_slice(&fake);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&bytes, FILE_HEADER + end).unwrap();
    assert_eq!(read_all(&j, 0, 0), [(1, 64)]);
}

/// Version 1 bound the payload through a CRC, which the MAC covered: the
/// payload of a genuine record could be swapped for other bytes with the
/// same CRC. Now the MAC covers the payload: a record whose header is
/// untouched but whose payload changed is not genuine, whatever its CRC.
#[test]
fn a_record_with_a_replaced_payload_is_not_genuine() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.journal");
    let mut j = new_journal(&dir, MIN_RING);
    let ends: Vec<u64> = (1..=2).map(|s| append(&mut j, s, 64).end).collect();
    j.sync().unwrap();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(
        &payload(99, 64),
        FILE_HEADER + ends[0] + RECORD_HEADER as u64,
    )
    .unwrap();
    assert_eq!(read_all(&j, 0, 0), [(1, 64)]);
}

/// A crash tears only the record being written, which nobody was told
/// was stored: nothing genuine follows it, and the search says so. Damage
/// to a record that has others after it is found, with every record after
/// it, across the end of the ring.
#[test]
fn later_records_tell_damage_in_the_middle_from_a_torn_tail() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.journal");
    let mut j = new_journal(&dir, MIN_RING);
    // Three laps of records, applied as they go, then 8 live ones that
    // wrap across the end of the ring.
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    for seq in 1..=40u64 {
        starts.push(j.head());
        j.begin().extend_from_slice(&payload(seq, 90_000));
        let tail = (seq as usize).checked_sub(10).map_or(0, |i| ends[i]);
        assert!(j.fits(tail), "seq {seq}");
        let a = j.append(seq).unwrap();
        ends.push(a.end);
    }
    j.sync().unwrap();
    let (mark_seq, mark_pos) = (32u64, ends[31]);
    let until = mark_pos + j.ring();
    let mut s = j.scan(mark_pos, mark_seq);
    assert_eq!(s.by_ref().count(), 8);
    let head = s.position();
    drop(s);
    assert!(j.later(head, until, 40).unwrap().is_empty(), "clean end");

    // The last record torn: the chain ends before it, nothing after.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    let tear = |i: usize, at: u64| {
        f.write_all_at(&[0x5a], FILE_HEADER + (starts[i] + at) % j.ring())
            .unwrap()
    };
    tear(39, 50_000);
    let mut s = j.scan(mark_pos, mark_seq);
    assert_eq!(s.by_ref().count(), 7);
    let (head, last) = (s.position(), s.last_seq());
    drop(s);
    assert_eq!((head, last), (starts[39], 39));
    assert!(j.later(head, until, last).unwrap().is_empty(), "torn tail");

    // Record 35 damaged (a byte of its payload): 36 to 39 are intact
    // after it, and the search finds every one.
    tear(34, 1_000);
    let mut s = j.scan(mark_pos, mark_seq);
    assert_eq!(s.by_ref().count(), 2);
    let (head, last) = (s.position(), s.last_seq());
    drop(s);
    assert_eq!((head, last), (starts[34], 34));
    let later = j.later(head, until, last).unwrap();
    let seqs: Vec<u64> = later.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [36, 37, 38, 39]);
    for r in &later.records {
        assert_eq!(r.payload, payload(r.seq, 90_000));
    }
    assert_eq!((later.first, later.last), (Some(36), 39));
    // Older laps' records (1 to 32) lie all over the ring, whole, and
    // none of them counts: they are not newer, nor valid where they lie.
    assert!(j.later(head, until, 40).unwrap().is_empty());
}

/// A wrap marker and the record it announces are written together; a
/// crash can tear the marker and leave the record whole. The chain steps
/// over the marker: the record was written by this journal's writer, next
/// in line, and it is replayed rather than reported as damage.
#[test]
fn a_torn_wrap_marker_does_not_hide_the_record_after_it() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.journal");
    let mut j = new_journal(&dir, MIN_RING);
    let mut starts = Vec::new();
    for seq in 1..=4u64 {
        starts.push(j.head());
        append(&mut j, seq, 300_000);
    }
    j.sync().unwrap();
    // Record 4 did not fit before the end: a marker sits after record 3,
    // and record 4 at the start of the next lap.
    let marker = starts[3];
    assert_eq!(marker, starts[2] + aligned(RECORD_HEADER as u64 + 300_000));
    assert_eq!(j.head(), MIN_RING + aligned(RECORD_HEADER as u64 + 300_000));
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0; RECORD_HEADER], FILE_HEADER + marker)
        .unwrap();
    let got: Vec<u64> = read_all(&j, starts[1], 1)
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(got, [2, 3, 4]);
    // Only the next number: with record 3 missing from the chain, record 4
    // is not taken.
    assert!(read_all(&j, marker, 2).is_empty());
}

#[test]
fn a_bad_file_is_refused_with_its_path() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.journal");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let e = Journal::open(&path).err().unwrap();
    assert!(e.to_string().contains("store.journal"), "{e}");
    assert!(matches!(
        e,
        JournalError::Header {
            source: HeaderError::Magic,
            ..
        }
    ));
    drop(new_journal(&dir, MIN_RING));
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(FILE_HEADER + MIN_RING - 4096).unwrap();
    assert!(matches!(
        Journal::open(&path),
        Err(JournalError::Length { .. })
    ));
    assert!(Journal::create(&path, MIN_RING + 1).is_err());
}

#[test]
fn an_image_in_memory_scans_like_the_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.journal");
    let mut j = new_journal(&dir, MIN_RING);
    for seq in 1..=3 {
        append(&mut j, seq, 10);
    }
    j.sync().unwrap();
    let image = std::fs::read(&path).unwrap();
    let got: Vec<u64> = scan_image(&image, 0, 0).unwrap().map(|r| r.0).collect();
    assert_eq!(got, [1, 2, 3]);
    assert!(scan_image(&image[..100], 0, 0).is_ok(), "header alone");
    assert_eq!(scan_image(&image[..100], 0, 0).unwrap().count(), 0);
    assert!(scan_image(&[0u8; 10], 0, 0).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the record sizes and however far the applier lags, the
    /// scan from the tail returns exactly the records written after it,
    /// and a record that was being written when the "crash" came (its last
    /// bytes lost) is not among them.
    #[test]
    fn scan_returns_what_was_written_after_the_tail(
        sizes in prop::collection::vec(0usize..200_000, 1..60),
        keep in 1usize..6,
        tear in any::<bool>(),
    ) {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("store.journal");
        let mut j = new_journal(&dir, MIN_RING);
        let mut live: VecDeque<(u64, u64)> = VecDeque::new();
        let mut tail = 0u64;
        let mut after = 0u64;
        for (i, len) in sizes.iter().enumerate() {
            let seq = i as u64 + 1;
            j.begin().extend_from_slice(&payload(seq, *len));
            while !j.fits(tail) {
                let (s, end) = live.pop_front().unwrap();
                tail = end;
                after = s;
            }
            let a = j.append(seq).unwrap();
            live.push_back((seq, a.end));
            if live.len() > keep {
                let (s, end) = live.pop_front().unwrap();
                tail = end;
                after = s;
            }
        }
        j.sync().unwrap();
        let mut want: Vec<u64> = live.iter().map(|x| x.0).collect();
        if tear {
            // The newest record's last byte never reached the disk.
            let last = *sizes.last().unwrap() as u64;
            let end = live.back().unwrap().1;
            let start = end - aligned(RECORD_HEADER as u64 + last);
            let off = FILE_HEADER + (start + RECORD_HEADER as u64 + last - 1) % j.ring();
            let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
            let mut b = [0u8; 1];
            FileExt::read_exact_at(&f, &mut b, off).unwrap();
            f.write_all_at(&[b[0] ^ 0xff], off).unwrap();
            want.pop();
        }
        let got: Vec<u64> = read_all(&j, tail, after).into_iter().map(|r| r.0).collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn an_image_built_in_memory_scans_back_across_the_wrap() {
    let key = [3u8; KEY_LEN];
    let big = vec![7u8; 300_000];
    let recs: Vec<(u64, &[u8])> = (1..=4).map(|s| (s, big.as_slice())).collect();
    // The fourth record does not fit before the end of the 1 MiB ring: it
    // wraps to the start, over the first one.
    let img = image(MIN_RING, key, &recs).unwrap();
    let size = aligned(RECORD_HEADER as u64 + 300_000);
    let got: Vec<u64> = scan_image(&img, size, 1).unwrap().map(|r| r.0).collect();
    assert_eq!(got, [2, 3, 4]);
    assert_eq!(
        scan_image(&img, 0, 0).unwrap().count(),
        0,
        "record 1 is gone"
    );
    assert!(image(MIN_RING + 1, key, &recs).is_none());
    let huge = vec![0u8; MIN_RING as usize];
    assert!(image(MIN_RING, key, &[(1, &huge)]).is_none());
}
