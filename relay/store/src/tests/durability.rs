use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chappe_proto::{OwnerKey, ResultCode};
use redb::{Database, TableDefinition};
use tempfile::TempDir;

use super::{Fixture, T0, config, ct, mailbox};
use crate::clock::Clock;
use crate::schema::{ENVELOPE_PARTS, ENVELOPES, MAILBOXES, META, META_VERSION, SCHEMA_VERSION};
use crate::{Store, StoreError};

fn reopen(dir: &TempDir) -> Result<Store, StoreError> {
    Store::open_with_clock(config(dir), Clock::Manual(Arc::new(AtomicU64::new(T0))))
}

#[tokio::test]
async fn survives_close_and_reopen() {
    let Fixture { dir, store, .. } = Fixture::new(|_| {});
    let m = mailbox(&store, OwnerKey::random()).await;
    for len in [1024, 2048, 4096] {
        store
            .enqueue(m.info.send_id, m.token, ct(len))
            .await
            .unwrap();
    }
    store
        .ack(m.owner, m.info.receive_id, vec![1])
        .await
        .unwrap();
    let clone = store.clone();
    drop(store);
    drop(clone);

    let store = reopen(&dir).unwrap();
    let s = store.stats();
    assert_eq!((s.envelopes, s.bytes, s.mailboxes), (2, 6144, 1));
    let got = store
        .fetch(m.owner, m.info.receive_id, 0, 10, usize::MAX)
        .unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(got[1].ciphertext, ct(4096));
    // Sequence numbers continue; the token still works.
    let e = store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap();
    assert_eq!(e.seq, 4);
    assert_eq!(
        store.list_mailboxes(m.owner).await.unwrap(),
        vec![crate::MailboxInfo {
            envelopes: 3,
            bytes: 7168,
            ..m.info
        }]
    );
    let report = store.check().await.unwrap();
    assert!(report.is_consistent(), "{report:#?}");
}

#[tokio::test]
async fn shutdown_drains_the_queue() {
    let f = Fixture::new(|_| {});
    let m = mailbox(&f.store, OwnerKey::random()).await;
    let gate = f.store.hold();
    let pending: Vec<_> = (0..10)
        .map(|_| f.store.submit_enqueue(m.info.send_id, &m.token, ct(1024)))
        .collect();
    let store = f.store.clone();
    let shutdown = tokio::spawn(async move { store.shutdown().await });
    // Wait until shutdown has flagged the store, then let the writer go.
    while !f.store.is_closing() {
        tokio::task::yield_now().await;
    }
    drop(gate);
    shutdown.await.unwrap();
    for p in pending {
        p.wait().await.unwrap();
    }
    let e = f
        .store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ResultCode::ShuttingDown);
    assert!(matches!(
        f.store.sweep_expired().await,
        Err(StoreError::WriterStopped)
    ));
    // Reads still work, and see everything that was answered Ok.
    let got = f
        .store
        .fetch(m.owner, m.info.receive_id, 0, 100, usize::MAX)
        .unwrap();
    assert_eq!(got.len(), 10);
    f.store.shutdown().await; // twice is fine
}

#[tokio::test]
async fn schema_version_is_checked() {
    let Fixture { dir, store, .. } = Fixture::new(|_| {});
    drop(store);
    {
        let db = Database::create(dir.path().join("store.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(META_VERSION, 99u64.to_be_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    match reopen(&dir) {
        Err(
            e @ StoreError::SchemaMismatch {
                found: 99,
                expected: SCHEMA_VERSION,
                ..
            },
        ) => {
            assert!(e.to_string().contains("schema version 99"), "{e}");
        }
        other => panic!("expected a schema mismatch, got {:?}", other.err()),
    }
}

/// A version 1 store kept every envelope whole and had no parts table.
/// Such a file (made here by undoing what version 2 wrote) opens, is
/// upgraded in place, and reads back whole.
#[tokio::test]
async fn version_1_store_is_upgraded_in_place() {
    use chappe_proto::envelope::MAX_CIPHERTEXT;
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

    let Fixture { dir, store, .. } = Fixture::new(|_| {});
    let m = mailbox(&store, OwnerKey::random()).await;
    let big: bytes::Bytes = (0..MAX_CIPHERTEXT).map(|i| (i % 251) as u8).collect();
    for body in [big.clone(), ct(1024)] {
        store.enqueue(m.info.send_id, m.token, body).await.unwrap();
    }
    drop(store);
    {
        let db = Database::create(dir.path().join("store.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut envelopes = txn.open_table(ENVELOPES).unwrap();
            let key = crate::schema::envelope_key(&m.info.receive_id, 1);
            let mut whole = envelopes.get(&key).unwrap().unwrap().value()[..4].to_vec();
            whole.extend_from_slice(&big);
            envelopes.insert(&key, whole.as_slice()).unwrap();
        }
        assert!(txn.delete_table(ENVELOPE_PARTS).unwrap());
        txn.open_table(META)
            .unwrap()
            .insert(META_VERSION, 1u64.to_be_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = reopen(&dir).unwrap();
    let got = store
        .fetch(m.owner, m.info.receive_id, 0, 10, usize::MAX)
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].ciphertext, big);
    let report = store.check().await.unwrap();
    assert!(report.is_consistent(), "{report:#?}");
    {
        let txn = store.db().begin_read().unwrap();
        let version = txn
            .open_table(META)
            .unwrap()
            .get(META_VERSION)
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        assert_eq!(version, SCHEMA_VERSION.to_be_bytes());
        assert_eq!(txn.open_table(ENVELOPE_PARTS).unwrap().len().unwrap(), 0);
    }
    // The whole envelope is acked like any other.
    store
        .ack(m.owner, m.info.receive_id, vec![1])
        .await
        .unwrap();
    assert_eq!(store.stats().bytes, 1024);
    assert!(store.check().await.unwrap().is_consistent());
}

#[test]
fn foreign_file_is_refused() {
    let dir = TempDir::new().unwrap();
    {
        let db = Database::create(dir.path().join("store.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let t: TableDefinition<u64, u64> = TableDefinition::new("something_else");
        txn.open_table(t).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(
        reopen(&dir),
        Err(StoreError::MissingSchema { .. })
    ));
}

/// A damaged record is a typed error for whoever touches it, and does not
/// stop the other requests of its batch.
#[tokio::test]
async fn corrupt_record_is_an_error_not_a_panic() {
    let Fixture { dir, store, .. } = Fixture::new(|_| {});
    let bad = mailbox(&store, OwnerKey::random()).await;
    let good = mailbox(&store, OwnerKey::random()).await;
    drop(store);
    {
        let db = Database::create(dir.path().join("store.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(MAILBOXES)
            .unwrap()
            .insert(&bad.info.receive_id.0, [1u8, 2, 3].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = reopen(&dir).unwrap();
    assert!(matches!(
        store.list_mailboxes(bad.owner).await,
        Err(StoreError::Corrupt {
            table: "mailboxes",
            ..
        })
    ));
    let e = store.fetch(bad.owner, bad.info.receive_id, 0, 10, usize::MAX);
    assert_eq!(e.unwrap_err().code(), ResultCode::Internal);

    let gate = store.hold();
    let to_bad = store.submit_enqueue(bad.info.send_id, &bad.token, ct(1024));
    let to_good = store.submit_enqueue(good.info.send_id, &good.token, ct(1024));
    let ack_bad = store.submit_ack(bad.owner, bad.info.receive_id, vec![1]);
    drop(gate);
    assert_eq!(
        to_bad.wait().await.unwrap_err().code(),
        ResultCode::Internal
    );
    assert_eq!(
        ack_bad.wait().await.unwrap_err().code(),
        ResultCode::Internal
    );
    to_good.wait().await.unwrap();
    assert_eq!(store.stats().last_batch_size, 3);

    let report = store.check().await.unwrap();
    assert!(!report.is_consistent());
    assert!(
        report.problems.iter().any(|p| p.contains("corrupt")),
        "{report:#?}"
    );
}
