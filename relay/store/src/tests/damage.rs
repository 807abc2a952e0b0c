//! A journal damaged on disk: recovery truncates a torn tail by itself,
//! refuses damage in the middle and a journal that went missing after an
//! unclean stop, and does what the operator's override says.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chappe_proto::OwnerKey;
use redb::{Database, ReadableDatabase};
use tempfile::TempDir;

use super::{Fixture, Mb, T0, config, ct, mailbox};
use crate::clock::Clock;
use crate::journal::Journal;
use crate::journal::record::{FILE_HEADER, FileHeader, RECORD_HEADER, VERSION_1, aligned};
use crate::schema::{META, read_mark};
use crate::{Store, StoreError};

fn open(dir: &TempDir, discard: bool) -> Result<Store, StoreError> {
    let mut cfg = config(dir);
    cfg.discard_damaged_journal = discard;
    Store::open_with_clock(cfg, Clock::Manual(Arc::new(AtomicU64::new(T0))))
}

fn seqs(store: &Store, m: &Mb) -> Vec<u64> {
    let got = store.fetch(m.owner, m.info.receive_id, 0, 1000, usize::MAX);
    got.unwrap().iter().map(|e| e.seq).collect()
}

/// Where each record after the store's mark starts, as (position, seq).
fn chain(dir: &TempDir) -> Vec<(u64, u64)> {
    let cfg = config(dir);
    let mark = {
        let db = Database::create(&cfg.path).unwrap();
        let txn = db.begin_read().unwrap();
        read_mark(&txn.open_table(META).unwrap()).unwrap().unwrap()
    };
    let j = Journal::open(&cfg.journal_path()).unwrap().unwrap();
    j.scan(mark.pos, mark.seq)
        .map(|r| {
            let r = r.unwrap();
            let size = aligned(RECORD_HEADER as u64 + r.payload.len() as u64);
            (r.end - size, r.seq)
        })
        .collect()
}

/// Flips one byte of the payload of the record that starts at `pos`.
fn damage(dir: &TempDir, pos: u64) {
    let path = config(dir).journal_path();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = FILE_HEADER + (pos % (1 << 20)) + RECORD_HEADER as u64 + 7;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
}

/// Ten sends, each its own journal record, none of them in redb yet; then
/// a crash.
async fn ten_sends_then_crash() -> (TempDir, Mb) {
    let Fixture { dir, store, .. } = Fixture::new(|_| {});
    let m = mailbox(&store, OwnerKey::random()).await;
    for _ in 0..10 {
        store
            .enqueue(m.info.send_id, m.token, ct(1024))
            .await
            .unwrap();
    }
    store.crash();
    drop(store);
    (dir, m)
}

#[tokio::test]
async fn damage_in_the_middle_refuses_to_open_and_says_what_would_be_lost() {
    let (dir, m) = ten_sends_then_crash().await;
    let records = chain(&dir);
    assert!(records.len() >= 4, "{records:?}");
    // The third record from the end is damaged; two intact ones follow.
    let (pos, bad_seq) = records[records.len() - 3];
    damage(&dir, pos);
    let e = open(&dir, false).err().expect("refused");
    match &e {
        StoreError::JournalDamaged {
            pos: at,
            after_seq,
            lost,
            ..
        } => {
            assert_eq!(*at, pos);
            assert_eq!(*after_seq, bad_seq - 1);
            assert_eq!((lost.records, lost.envelopes, lost.bytes), (2, 2, 2048));
            assert_eq!((lost.first_seq, lost.last_seq), (bad_seq + 1, bad_seq + 2));
        }
        other => panic!("expected JournalDamaged, got {other}"),
    }
    let text = e.to_string();
    assert!(text.contains("store.journal"), "{text}");
    assert!(text.contains("--discard-damaged-journal"), "{text}");
    // Refusing changed nothing: the same refusal again.
    assert!(matches!(
        open(&dir, false),
        Err(StoreError::JournalDamaged { .. })
    ));

    // The override drops the damaged record and everything after it.
    let store = open(&dir, true).unwrap();
    assert_eq!(seqs(&store, &m), (1..=7).collect::<Vec<_>>());
    let e = store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap();
    assert_eq!(e.seq, 8, "the dropped envelopes' numbers are free again");
    store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap();
    store.crash();
    drop(store);
    // The dropped records are still in the ring, whole; the numbering went
    // past them, so an ordinary crash afterwards opens without the
    // override and without them.
    let store = open(&dir, false).unwrap();
    assert_eq!(seqs(&store, &m), (1..=9).collect::<Vec<_>>());
    let report = store.check().await.unwrap();
    assert!(report.is_consistent(), "{report:#?}");
}

#[tokio::test]
async fn a_torn_last_record_is_truncated_without_intervention() {
    let (dir, m) = ten_sends_then_crash().await;
    let records = chain(&dir);
    let (pos, _) = *records.last().unwrap();
    damage(&dir, pos);
    let store = open(&dir, false).unwrap();
    assert_eq!(seqs(&store, &m), (1..=9).collect::<Vec<_>>());
    // The writer goes on where the torn record was.
    let e = store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap();
    assert_eq!(e.seq, 10);
    store.crash();
    drop(store);
    let store = open(&dir, false).unwrap();
    assert_eq!(seqs(&store, &m), (1..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_journal_missing_after_an_unclean_stop_refuses_to_open() {
    let (dir, m) = ten_sends_then_crash().await;
    let path = config(&dir).journal_path();
    let moved = dir.path().join("elsewhere.journal");
    std::fs::rename(&path, &moved).unwrap();
    let e = open(&dir, false).err().expect("refused");
    assert!(matches!(e, StoreError::JournalMissing { .. }), "{e}");
    assert!(e.to_string().contains("store.journal"), "{e}");
    assert!(!path.exists(), "refusing created nothing");
    // Put back, it opens and loses nothing.
    std::fs::rename(&moved, &path).unwrap();
    let store = open(&dir, false).unwrap();
    assert_eq!(seqs(&store, &m).len(), 10);
    store.crash();
    drop(store);
    // Gone for good, the override starts a new journal without it.
    std::fs::remove_file(&path).unwrap();
    let store = open(&dir, true).unwrap();
    assert!(path.exists());
    store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap();
}

/// Rewrites the journal's file header as format version 1.
fn make_v1(dir: &TempDir) {
    let path = config(dir).journal_path();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut raw = [0u8; 128];
    f.read_exact_at(&mut raw, 0).unwrap();
    let mut h = FileHeader::decode(&raw).unwrap();
    h.version = VERSION_1;
    f.write_all_at(&h.encode(), 0).unwrap();
}

/// A journal written by a build before format 2: after a clean stop it
/// holds nothing to replay and is replaced; after a crash it may hold
/// acknowledged envelopes this build cannot check, and the start refuses.
#[tokio::test]
async fn an_older_journal_format_is_replaced_only_after_a_clean_stop() {
    let (dir, m) = ten_sends_then_crash().await;
    make_v1(&dir);
    let e = open(&dir, false).err().expect("refused");
    assert!(
        matches!(e, StoreError::JournalFormat { version: 1, .. }),
        "{e}"
    );
    make_v1(&dir);
    {
        // What the earlier build would do: replay, then stop cleanly. Here:
        // put the v2 header back, open, stop cleanly, and make it v1 again.
        let path = config(&dir).journal_path();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut raw = [0u8; 128];
        f.read_exact_at(&mut raw, 0).unwrap();
        let mut h = FileHeader::decode(&raw).unwrap();
        h.version = crate::journal::record::VERSION;
        f.write_all_at(&h.encode(), 0).unwrap();
    }
    let store = open(&dir, false).unwrap();
    store.shutdown().await;
    drop(store);
    make_v1(&dir);
    let store = open(&dir, false).unwrap();
    assert_eq!(seqs(&store, &m).len(), 10);
    drop(store);
    let j = Journal::open(&config(&dir).journal_path())
        .unwrap()
        .unwrap();
    assert_eq!(j.version(), crate::journal::record::VERSION);
}

/// The offline check reads what the next start would read and says what
/// it would do, changing nothing; it refuses a store a relay has open.
#[tokio::test]
async fn the_offline_check_reports_what_the_start_would_find() {
    use crate::inspect::{JournalState, Report, inspect};

    let (dir, m) = ten_sends_then_crash().await;
    let cfg = config(&dir);
    let i = inspect(&cfg).unwrap();
    match &i.journal {
        JournalState::Intact {
            clean: false,
            replay,
        } => assert!(replay.envelopes >= 3 && replay.envelopes <= 10, "{replay}"),
        other => panic!("{other:?}"),
    }
    assert!(!i.has_problems(), "{i:?}");

    let records = chain(&dir);
    damage(&dir, records[records.len() - 3].0);
    let i = inspect(&cfg).unwrap();
    let JournalState::Damaged { lost, .. } = &i.journal else {
        panic!("{:?}", i.journal);
    };
    assert_eq!((lost.records, lost.envelopes), (2, 2));
    assert!(i.has_problems());
    let text = Report {
        inspection: &i,
        store: &cfg.path,
        journal: &cfg.journal_path(),
    }
    .to_string();
    assert!(text.contains("DAMAGED"), "{text}");
    assert!(text.contains("2 records"), "{text}");
    assert!(text.contains("consistent"), "{text}");
    // Checking changed nothing: the start still refuses.
    assert!(matches!(
        open(&dir, false),
        Err(StoreError::JournalDamaged { .. })
    ));
    // Discarded, then stopped cleanly: nothing left to report.
    let store = open(&dir, true).unwrap();
    assert!(matches!(
        inspect(&cfg),
        Err(StoreError::StoreRunning { .. })
    ));
    store.shutdown().await;
    drop(store);
    let i = inspect(&cfg).unwrap();
    assert!(!i.has_problems(), "{i:?}");
    assert!(
        matches!(&i.journal, JournalState::Intact { clean: true, replay } if replay.records == 0),
        "{:?}",
        i.journal
    );
    assert_eq!(i.store.counted.envelopes, 7);
    let _ = m;
}
