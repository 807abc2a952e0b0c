//! The journal under the store: what survives a crash before the applier
//! got to it, what never reaches redb, and journals that do not fit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chappe_proto::OwnerKey;
use proptest::prelude::*;
use redb::{ReadableDatabase, ReadableTableMetadata};
use tempfile::TempDir;

use super::{Fixture, Mb, T0, config, ct, mailbox};
use crate::clock::Clock;
use crate::schema::ENVELOPES;
use crate::{Store, StoreError};

fn reopen(dir: &TempDir) -> Result<Store, StoreError> {
    Store::open_with_clock(config(dir), Clock::Manual(Arc::new(AtomicU64::new(T0))))
}

fn seqs(store: &Store, m: &Mb) -> Vec<u64> {
    store
        .fetch(m.owner, m.info.receive_id, 0, 100_000, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

fn redb_envelopes(store: &Store) -> u64 {
    let txn = store.db().begin_read().unwrap();
    txn.open_table(ENVELOPES).unwrap().len().unwrap()
}

#[tokio::test]
async fn acknowledged_sends_survive_a_crash_before_they_reach_redb() {
    let Fixture { dir, store, .. } = Fixture::new(|_| {});
    let m = mailbox(&store, OwnerKey::random()).await;
    for i in 0..20u8 {
        let body = bytes::Bytes::from(vec![i; 1024]);
        store.enqueue(m.info.send_id, m.token, body).await.unwrap();
    }
    store
        .ack(m.owner, m.info.receive_id, vec![2, 3, 19])
        .await
        .unwrap();
    // Nothing of it is in redb yet: the applier holds it back for acks.
    assert_eq!(redb_envelopes(&store), 0);
    store.crash();
    drop(store);

    let store = reopen(&dir).unwrap();
    let want: Vec<u64> = (1..=20).filter(|s| ![2, 3, 19].contains(s)).collect();
    assert_eq!(seqs(&store, &m), want);
    let got = store
        .fetch(m.owner, m.info.receive_id, 5, 1, usize::MAX)
        .unwrap();
    assert_eq!(got[0].ciphertext, bytes::Bytes::from(vec![4u8; 1024]));
    let s = store.stats();
    assert_eq!((s.envelopes, s.bytes), (17, 17 * 1024));
    // Replayed into redb at open, not only into memory.
    assert_eq!(redb_envelopes(&store), 17);
    // Numbering goes on after the highest journaled number.
    let e = store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap();
    assert_eq!(e.seq, 21);
    let report = store.check().await.unwrap();
    assert!(report.is_consistent(), "{report:#?}");
}

/// Without a flush or a full journal, the applier's own clock moves what
/// the window holds into redb: the live envelopes once they have waited
/// the hold, and the mark past the cancelled ones too.
#[tokio::test]
async fn held_envelopes_reach_redb_on_their_own() {
    let f = Fixture::new(|_| {});
    let m = mailbox(&f.store, OwnerKey::random()).await;
    for _ in 0..10 {
        f.store
            .enqueue(m.info.send_id, m.token, ct(1024))
            .await
            .unwrap();
    }
    let got = seqs(&f.store, &m);
    f.store
        .ack(m.owner, m.info.receive_id, got[..5].to_vec())
        .await
        .unwrap();
    // Liveness, not timing: the hold is 200 ms; allow far more.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while f.store.memtable_len() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(f.store.memtable_len(), 0, "everything applied");
    let s = f.store.stats();
    assert_eq!((s.unwritten, s.envelopes), (5, 5), "{s:?}");
    assert!(s.checkpoints > 0, "{s:?}");
    assert_eq!(redb_envelopes(&f.store), 5, "the live ones are in redb");
    assert_eq!(seqs(&f.store, &m), got[5..].to_vec());
    f.assert_consistent().await;
}

#[tokio::test]
async fn envelopes_acked_while_held_are_never_written_to_redb() {
    let f = Fixture::new(|_| {});
    let m = mailbox(&f.store, OwnerKey::random()).await;
    for _ in 0..50 {
        f.store
            .enqueue(m.info.send_id, m.token, ct(2048))
            .await
            .unwrap();
    }
    let got = seqs(&f.store, &m);
    assert_eq!(got.len(), 50);
    f.store.ack(m.owner, m.info.receive_id, got).await.unwrap();
    assert!(seqs(&f.store, &m).is_empty());
    f.store.flush().await.unwrap();
    let s = f.store.stats();
    assert_eq!(s.unwritten, 50, "{s:?}");
    assert_eq!((s.envelopes, s.bytes), (0, 0));
    assert_eq!(f.store.memtable_len(), 0, "nothing left behind");
    // Their numbers stay used.
    let e = f
        .store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap();
    assert_eq!(e.seq, 51);
    f.assert_consistent().await;
}

/// Far more than the 1 MiB test ring holds, from many tasks at once, with
/// acks mixed in: the writer has to wait for the applier, the ring wraps
/// many times, and a crash in the middle of it loses nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_wraps_under_load_and_a_crash_loses_nothing() {
    let Fixture { dir, store, .. } = Fixture::new(|c| c.max_envelopes_per_mailbox = 100_000);
    let m = mailbox(&store, OwnerKey::random()).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut stored = Vec::new();
            for i in 0..400 {
                let len = if (t + i) % 50 == 0 { 16 * 1024 } else { 1024 };
                let e = s.enqueue(m.info.send_id, m.token, ct(len)).await.unwrap();
                stored.push(e.seq);
                if stored.len() == 10 {
                    s.ack(m.owner, m.info.receive_id, std::mem::take(&mut stored))
                        .await
                        .unwrap();
                }
            }
            stored
        }));
    }
    let mut left = Vec::new();
    for t in tasks {
        left.extend(t.await.unwrap());
    }
    left.sort_unstable();
    assert!(store.stats().commits < 3200, "batches formed");
    store.crash();
    drop(store);

    let store = reopen(&dir).unwrap();
    assert_eq!(seqs(&store, &m), left);
    let report = store.check().await.unwrap();
    assert!(report.is_consistent(), "{report:#?}");
    assert_eq!(report.counted.envelopes, left.len() as u64);
}

#[tokio::test]
async fn a_journal_from_another_store_is_refused() {
    let a = Fixture::new(|_| {});
    let b = Fixture::new(|_| {});
    let cfg = config(&a.dir);
    let path = cfg.journal_path();
    drop(a.store);
    drop(b.store);
    std::fs::copy(config(&b.dir).journal_path(), &path).unwrap();
    let e = reopen(&a.dir).err().unwrap();
    assert!(matches!(e, StoreError::JournalMismatch { .. }), "{e}");
    assert!(e.to_string().contains("store.journal"), "{e}");
    // Moving it away is the way out the message gives.
    std::fs::remove_file(&path).unwrap();
    reopen(&a.dir).unwrap();
}

#[tokio::test]
async fn a_missing_journal_after_a_clean_stop_is_made_anew() {
    let Fixture { dir, store, .. } = Fixture::new(|_| {});
    let m = mailbox(&store, OwnerKey::random()).await;
    store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap();
    store.shutdown().await;
    drop(store);
    std::fs::remove_file(config(&dir).journal_path()).unwrap();
    let store = reopen(&dir).unwrap();
    assert_eq!(seqs(&store, &m), [1]);
    let e = store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap();
    assert_eq!(e.seq, 2);
    store.crash();
    drop(store);
    let store = reopen(&dir).unwrap();
    assert_eq!(seqs(&store, &m), [1, 2]);
}

#[derive(Clone, Debug)]
enum Step {
    Send {
        mb: usize,
        big: bool,
    },
    /// Acknowledge the `nth` stored envelope (modulo how many there are).
    Ack {
        mb: usize,
        nth: usize,
    },
    Flush,
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..2usize, prop::bool::weighted(0.1)).prop_map(|(mb, big)| Step::Send { mb, big }),
        4 => (0..2usize, any::<usize>()).prop_map(|(mb, nth)| Step::Ack { mb, nth }),
        1 => Just(Step::Flush),
        1 => Just(Step::Crash),
    ]
}

async fn crash_model(steps: Vec<Step>) {
    let dir = TempDir::new().unwrap();
    let mut store = reopen(&dir).unwrap();
    let mut boxes = Vec::new();
    for _ in 0..2 {
        boxes.push(mailbox(&store, OwnerKey::random()).await);
    }
    // Per mailbox: seq -> length, as answered.
    let mut model: Vec<BTreeMap<u64, usize>> = vec![BTreeMap::new(); 2];
    let mut next = [1u64, 1];
    for s in steps {
        match s {
            Step::Send { mb, big } => {
                let len = if big { 64 * 1024 } else { 1024 };
                let m = &boxes[mb];
                let e = store
                    .enqueue(m.info.send_id, m.token, ct(len))
                    .await
                    .unwrap();
                assert_eq!(e.seq, next[mb]);
                next[mb] += 1;
                model[mb].insert(e.seq, len);
            }
            Step::Ack { mb, nth } => {
                let Some(&seq) = model[mb].keys().nth(nth % model[mb].len().max(1)) else {
                    continue;
                };
                let m = &boxes[mb];
                store
                    .ack(m.owner, m.info.receive_id, vec![seq])
                    .await
                    .unwrap();
                model[mb].remove(&seq);
            }
            Step::Flush => store.flush().await.unwrap(),
            Step::Crash => {
                store.crash();
                drop(store);
                store = reopen(&dir).unwrap();
            }
        }
    }
    store.crash();
    drop(store);
    let store = reopen(&dir).unwrap();
    for (m, want) in boxes.iter().zip(&model) {
        let got = store
            .fetch(m.owner, m.info.receive_id, 0, 100_000, usize::MAX)
            .unwrap();
        let got: BTreeMap<u64, usize> = got.iter().map(|e| (e.seq, e.ciphertext.len())).collect();
        assert_eq!(&got, want);
    }
    let s = store.stats();
    let n: usize = model.iter().map(BTreeMap::len).sum();
    let bytes: usize = model.iter().flat_map(|m| m.values()).sum();
    assert_eq!((s.envelopes, s.bytes), (n as u64, bytes as u64));
    let report = store.check().await.unwrap();
    assert!(report.is_consistent(), "{report:#?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Whatever mix of sends, acks, flushes and crashes: after recovery the
    /// store holds exactly what was answered as stored and not acked, with
    /// totals and indexes that agree.
    #[test]
    fn recovery_restores_exactly_what_was_answered(steps in prop::collection::vec(step(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(crash_model(steps));
    }
}
