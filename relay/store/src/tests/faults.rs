//! Disk faults injected into the store's file layer (`crate::disk::Faults`):
//! a journal write or `fdatasync`, or a redb write or sync, fails. The
//! store turns read-only with the reason, refuses writes with the code the
//! reason calls for, keeps serving reads, never answers `ok` for a batch
//! whose sync failed, and loses nothing it acknowledged: a restart on a
//! healthy disk finds all of it.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chappe_proto::{OwnerKey, ResultCode};
use nix::libc::{EIO, ENOSPC};
use tempfile::TempDir;

use super::{Mb, T0, config, ct, mailbox};
use crate::clock::Clock;
use crate::{FaultAt, Faults, ReadOnly, Store};

struct Faulty {
    dir: TempDir,
    store: Store,
    faults: Faults,
    m: Mb,
}

/// A store whose file layer can be made to fail, with a mailbox holding
/// three acknowledged envelopes.
async fn faulty() -> Faulty {
    let dir = TempDir::new().unwrap();
    let faults = Faults::injectable();
    let mut cfg = config(&dir);
    cfg.faults = faults.clone();
    let store = Store::open_with_clock(cfg, Clock::Manual(Arc::new(AtomicU64::new(T0)))).unwrap();
    let m = mailbox(&store, OwnerKey::random()).await;
    for _ in 0..3 {
        store
            .enqueue(m.info.send_id, m.token, ct(1024))
            .await
            .unwrap();
    }
    Faulty {
        dir,
        store,
        faults,
        m,
    }
}

fn seqs(store: &Store, m: &Mb) -> Vec<u64> {
    let got = store.fetch(m.owner, m.info.receive_id, 0, 1000, usize::MAX);
    got.unwrap().iter().map(|e| e.seq).collect()
}

async fn send(f: &Faulty) -> Result<u64, ResultCode> {
    f.store
        .enqueue(f.m.info.send_id, f.m.token, ct(1024))
        .await
        .map(|e| e.seq)
        .map_err(|e| e.code())
}

/// Drops the failed store and opens the directory again on a healthy disk.
fn restart(f: Faulty) -> (TempDir, Store, Mb) {
    let Faulty { dir, store, m, .. } = f;
    drop(store);
    let store =
        Store::open_with_clock(config(&dir), Clock::Manual(Arc::new(AtomicU64::new(T0)))).unwrap();
    (dir, store, m)
}

/// After a failed `fdatasync` the kernel may have dropped the pages and
/// cleared the error: the batch is answered `internal`, never `ok`, and
/// the store does not try again even once the disk works, until restart.
#[tokio::test]
async fn a_failed_journal_sync_refuses_its_batch_and_every_write_until_restart() {
    let f = faulty().await;
    f.faults.arm(FaultAt::JournalSync, EIO);
    assert_eq!(send(&f).await, Err(ResultCode::Internal));
    let s = f.store.stats();
    assert!(s.failed, "{s:?}");
    assert_eq!(s.read_only, Some(ReadOnly::Io));
    // The disk works again; the store still refuses.
    f.faults.arm(FaultAt::JournalSync, 0);
    assert_eq!(send(&f).await, Err(ResultCode::Internal));
    let ack = f.store.ack(f.m.owner, f.m.info.receive_id, vec![1]).await;
    assert_eq!(ack.unwrap_err().code(), ResultCode::Internal);
    // Reads go on: what was acknowledged is there.
    assert_eq!(seqs(&f.store, &f.m), [1, 2, 3]);
    let (_dir, store, m) = restart(f);
    let got = seqs(&store, &m);
    // The failed batch was written, only its sync failed: it may be
    // replayed (at least once), but everything answered ok is there.
    assert!(got.starts_with(&[1, 2, 3]) && got.len() <= 4, "{got:?}");
    assert!(store.stats().read_only.is_none());
    let report = store.check().await.unwrap();
    assert!(report.is_consistent(), "{report:#?}");
    store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failed_journal_write_refuses_its_batch_and_loses_nothing_acknowledged() {
    let f = faulty().await;
    f.faults.arm(FaultAt::JournalWrite, EIO);
    assert_eq!(send(&f).await, Err(ResultCode::Internal));
    assert_eq!(send(&f).await, Err(ResultCode::Internal));
    assert_eq!(f.store.stats().read_only, Some(ReadOnly::Io));
    let (_dir, store, m) = restart(f);
    assert_eq!(seqs(&store, &m), [1, 2, 3]);
    let report = store.check().await.unwrap();
    assert!(report.is_consistent(), "{report:#?}");
}

/// A journal write that finds the disk full: the batch is `internal` (it
/// may be half written), every later send `relay_full`, and the metric
/// reason says space.
#[tokio::test]
async fn a_journal_write_without_space_refuses_later_sends_relay_full() {
    let f = faulty().await;
    f.faults.arm(FaultAt::JournalWrite, ENOSPC);
    assert_eq!(send(&f).await, Err(ResultCode::Internal));
    assert_eq!(send(&f).await, Err(ResultCode::RelayFull));
    let s = f.store.stats();
    assert_eq!((s.failed, s.read_only), (true, Some(ReadOnly::NoSpace)));
    let (_dir, store, m) = restart(f);
    assert_eq!(seqs(&store, &m), [1, 2, 3]);
}

/// A checkpoint into redb fails (its write, or its sync): redb is left as
/// it was and latches the error; the journal still holds every send, and
/// the restart replays them all.
#[tokio::test]
async fn a_failed_redb_commit_makes_the_store_read_only_and_the_journal_keeps_everything() {
    for at in [FaultAt::DbWrite, FaultAt::DbSync] {
        let f = faulty().await;
        f.faults.arm(at, EIO);
        let e = f.store.flush().await.unwrap_err();
        assert_eq!(e.code(), ResultCode::Internal, "{at:?}");
        let s = f.store.stats();
        assert_eq!(
            (s.failed, s.read_only),
            (true, Some(ReadOnly::Io)),
            "{at:?}"
        );
        assert_eq!(send(&f).await, Err(ResultCode::Internal), "{at:?}");
        let made = f
            .store
            .create_mailbox(
                OwnerKey::random(),
                vec![chappe_proto::DeliveryToken::random().digest()],
            )
            .await;
        assert_eq!(made.unwrap_err().code(), ResultCode::Internal);
        assert_eq!(seqs(&f.store, &f.m), [1, 2, 3], "{at:?}");
        f.faults.arm(at, 0);
        let (_dir, store, m) = restart(f);
        assert_eq!(seqs(&store, &m), [1, 2, 3], "{at:?}");
        let report = store.check().await.unwrap();
        assert!(report.is_consistent(), "{at:?} {report:#?}");
        assert_eq!(report.counted.envelopes, 3, "{at:?}: in redb itself");
    }
}
