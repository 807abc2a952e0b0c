use std::time::Duration;

use chappe_proto::OwnerKey;

use super::{Fixture, ct, mailbox};

#[tokio::test]
async fn expired_envelopes_are_hidden_then_swept() {
    let f = Fixture::new(|c| c.envelope_ttl = Duration::from_secs(2 * 3600));
    let m = mailbox(&f.store, OwnerKey::random()).await;
    let (owner, id) = (m.owner, m.info.receive_id);
    let seqs = |f: &Fixture| {
        f.store
            .fetch(owner, id, 0, 100, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>()
    };
    f.store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap();
    f.advance_hours(1);
    f.store
        .enqueue(m.info.send_id, m.token, ct(2048))
        .await
        .unwrap();
    assert_eq!(f.store.sweep_expired().await.unwrap(), 0);
    assert_eq!(seqs(&f), [1, 2]);

    // T0 is mid-hour, so the first envelope (stored at T0, ttl 2 h) is
    // gone from the start of hour(T0) + 3.
    f.advance_hours(2);
    assert_eq!(seqs(&f), [2], "fetch hides it before any sweep");
    assert_eq!(f.store.stats().envelopes, 2);
    assert_eq!(f.store.sweep_expired().await.unwrap(), 1);
    let s = f.store.stats();
    assert_eq!((s.envelopes, s.bytes), (1, 2048));
    assert_eq!(f.store.list_mailboxes(owner).await.unwrap()[0].envelopes, 1);
    f.assert_consistent().await;

    f.advance_hours(1);
    assert!(seqs(&f).is_empty());
    assert_eq!(f.store.sweep_expired().await.unwrap(), 1);
    assert_eq!(f.store.sweep_expired().await.unwrap(), 0);
    let s = f.store.stats();
    assert_eq!((s.envelopes, s.bytes), (0, 0));
    // Acking something the sweep already took is fine.
    f.store.ack(owner, id, vec![1, 2]).await.unwrap();
    f.assert_consistent().await;
}

#[tokio::test]
async fn sweep_leaves_unexpired_and_other_mailboxes_alone() {
    let f = Fixture::new(|c| c.envelope_ttl = Duration::from_secs(3600));
    let a = mailbox(&f.store, OwnerKey::random()).await;
    let b = mailbox(&f.store, OwnerKey::random()).await;
    for _ in 0..3 {
        f.store
            .enqueue(a.info.send_id, a.token, ct(1024))
            .await
            .unwrap();
    }
    f.advance_hours(5);
    f.store
        .enqueue(b.info.send_id, b.token, ct(1024))
        .await
        .unwrap();
    f.store
        .enqueue(a.info.send_id, a.token, ct(1024))
        .await
        .unwrap();
    assert_eq!(f.store.sweep_expired().await.unwrap(), 3);
    let left = f
        .store
        .fetch(a.owner, a.info.receive_id, 0, 10, usize::MAX)
        .unwrap();
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [4]);
    assert_eq!(
        f.store
            .fetch(b.owner, b.info.receive_id, 0, 10, usize::MAX)
            .unwrap()
            .len(),
        1
    );
    f.assert_consistent().await;
}
