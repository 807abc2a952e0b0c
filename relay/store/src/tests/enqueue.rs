use std::collections::HashMap;

use bytes::Bytes;
use chappe_proto::envelope::{BUCKETS, MAX_CIPHERTEXT};
use chappe_proto::{DeliveryToken, OwnerKey, ResultCode, SendId, TokenDigest};

use super::{Fixture, ct, mailbox};

#[tokio::test]
async fn enqueue_fetch_ack() {
    let f = Fixture::new(|_| {});
    let m = mailbox(&f.store, OwnerKey::random()).await;
    let (owner, id) = (m.owner, m.info.receive_id);
    let mut sent = Vec::new();
    for (i, len) in [1024, 4096, 2048].into_iter().enumerate() {
        let body = Bytes::from(vec![i as u8; len]);
        let e = f
            .store
            .enqueue(m.info.send_id, m.token, body.clone())
            .await
            .unwrap();
        assert_eq!(e.receive_id, id);
        assert_eq!(e.seq, i as u64 + 1);
        sent.push(body);
    }
    let s = f.store.stats();
    assert_eq!((s.envelopes, s.bytes), (3, 1024 + 4096 + 2048));

    let all = f.store.fetch(owner, id, 0, 100, usize::MAX).unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        all.iter().map(|e| e.ciphertext.clone()).collect::<Vec<_>>(),
        sent
    );
    let from2 = f.store.fetch(owner, id, 2, 1, usize::MAX).unwrap();
    assert_eq!(from2.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    // A byte budget stops before the envelope that would overflow it, but
    // always yields at least one.
    let tight = f.store.fetch(owner, id, 0, 100, 1024 + 100).unwrap();
    assert_eq!(tight.len(), 1);
    assert_eq!(f.store.fetch(owner, id, 2, 100, 1).unwrap().len(), 1);
    assert!(
        f.store
            .fetch(owner, id, 0, 0, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert!(
        f.store
            .fetch(owner, id, 4, 10, usize::MAX)
            .unwrap()
            .is_empty()
    );

    f.store.ack(owner, id, vec![1, 2]).await.unwrap();
    // Repeats and unknown numbers are fine.
    f.store.ack(owner, id, vec![2, 3, 3, 99]).await.unwrap();
    assert!(
        f.store
            .fetch(owner, id, 0, 100, usize::MAX)
            .unwrap()
            .is_empty()
    );
    let s = f.store.stats();
    assert_eq!((s.envelopes, s.bytes), (0, 0));
    assert_eq!(f.store.list_mailboxes(owner).await.unwrap()[0].envelopes, 0);
    f.assert_consistent().await;
}

#[tokio::test]
async fn sizes_are_checked_before_the_writer() {
    let f = Fixture::new(|_| {});
    let m = mailbox(&f.store, OwnerKey::random()).await;
    let commits = f.store.stats().commits;
    let send = |len| f.store.enqueue(m.info.send_id, m.token, ct(len));
    assert_eq!(send(0).await.unwrap_err().code(), ResultCode::BadSize);
    assert_eq!(send(1000).await.unwrap_err().code(), ResultCode::BadSize);
    assert_eq!(
        send(MAX_CIPHERTEXT + 1).await.unwrap_err().code(),
        ResultCode::TooLarge
    );
    assert_eq!(f.store.stats().commits, commits);
    for len in BUCKETS {
        send(len).await.unwrap();
    }
}

/// Every kind of refusal in one batch, next to sends that succeed: each
/// gets its own answer and the successes are committed.
#[tokio::test]
async fn one_batch_many_outcomes() {
    let f = Fixture::new(|c| {
        c.max_envelopes_per_mailbox = 3;
        c.max_bytes_per_mailbox = 5 * 1024;
        c.max_mailboxes_per_owner = 2;
    });
    let s = &f.store;
    let good = mailbox(s, OwnerKey::random()).await;
    let by_count = mailbox(s, OwnerKey::random()).await;
    let by_bytes = mailbox(s, OwnerKey::random()).await;
    let rotated = mailbox(s, OwnerKey::random()).await;
    let full_owner = OwnerKey::random();
    mailbox(s, full_owner).await;
    let doomed = mailbox(s, full_owner).await;
    let new_token = DeliveryToken::random();
    s.set_tokens(
        rotated.owner,
        rotated.info.receive_id,
        vec![new_token.digest()],
    )
    .await
    .unwrap();
    let before = s.stats();

    let gate = s.hold();
    let send = |m: &super::Mb, t: DeliveryToken, len| s.submit_enqueue(m.info.send_id, &t, ct(len));
    let mut oks = Vec::new();
    let mut refusals = Vec::new();
    oks.push(send(&good, good.token, 1024));
    refusals.push((
        send(&good, DeliveryToken::random(), 1024),
        ResultCode::BadToken,
    ));
    refusals.push((send(&rotated, rotated.token, 1024), ResultCode::BadToken));
    oks.push(send(&rotated, new_token, 1024));
    refusals.push((
        s.submit_enqueue(SendId::random(), &good.token, ct(1024)),
        ResultCode::UnknownMailbox,
    ));
    for _ in 0..3 {
        oks.push(send(&by_count, by_count.token, 1024));
    }
    refusals.push((
        send(&by_count, by_count.token, 1024),
        ResultCode::QuotaExceeded,
    ));
    oks.push(send(&by_bytes, by_bytes.token, 4096));
    refusals.push((
        send(&by_bytes, by_bytes.token, 2048),
        ResultCode::QuotaExceeded,
    ));
    oks.push(send(&by_bytes, by_bytes.token, 1024));
    let foreign_ack = s.submit_ack(OwnerKey::random(), good.info.receive_id, vec![1]);
    let too_many = s.submit_create(full_owner, &[TokenDigest([1; 32])]);
    let created = s.submit_create(OwnerKey::random(), &[TokenDigest([1; 32])]);
    // A delete early in the batch makes a later send to that mailbox unknown.
    let delete = s.submit_delete(doomed.owner, doomed.info.receive_id);
    refusals.push((
        send(&doomed, doomed.token, 1024),
        ResultCode::UnknownMailbox,
    ));
    // Never reaches the writer.
    let bad_size = send(&good, good.token, 1000);
    let too_large = send(&good, good.token, MAX_CIPHERTEXT + 1);
    let queued = oks.len() + refusals.len() + 4;
    drop(gate);

    for p in oks {
        p.wait().await.unwrap();
    }
    for (p, code) in refusals {
        assert_eq!(p.wait().await.unwrap_err().code(), code);
    }
    assert_eq!(
        too_many.wait().await.unwrap_err().code(),
        ResultCode::TooManyMailboxes
    );
    created.wait().await.unwrap();
    let e = foreign_ack.wait().await.unwrap_err();
    assert_eq!(e.code(), ResultCode::UnknownMailbox);
    delete.wait().await.unwrap();
    assert_eq!(
        bad_size.wait().await.unwrap_err().code(),
        ResultCode::BadSize
    );
    assert_eq!(
        too_large.wait().await.unwrap_err().code(),
        ResultCode::TooLarge
    );

    let after = s.stats();
    assert_eq!(after.commits, before.commits + 1, "one batch, one commit");
    assert_eq!(after.last_batch_size as usize, queued);
    assert_eq!(after.envelopes, before.envelopes + 7);
    assert_eq!(after.mailboxes, before.mailboxes);
    for (m, n) in [(&good, 1), (&by_count, 3), (&by_bytes, 2), (&rotated, 1)] {
        assert_eq!(s.list_mailboxes(m.owner).await.unwrap()[0].envelopes, n);
    }
    f.assert_consistent().await;
}

/// Many tasks sending at once: all land, sequence numbers are dense and
/// unique per mailbox, and batches form (fewer commits than sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_share_commits() {
    let f = Fixture::new(|_| {});
    let mut boxes = Vec::new();
    for _ in 0..4 {
        boxes.push(mailbox(&f.store, OwnerKey::random()).await);
    }
    let before = f.store.stats().commits;
    let gate = f.store.hold();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let m = boxes[i % 4];
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            store.enqueue(m.info.send_id, m.token, ct(1024)).await
        }));
    }
    // Let some tasks queue up behind the held writer, then release it.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    drop(gate);
    let mut seqs: HashMap<_, Vec<u64>> = HashMap::new();
    for t in tasks {
        let e = t.await.unwrap().unwrap();
        seqs.entry(e.receive_id).or_default().push(e.seq);
    }
    for (_, mut s) in seqs {
        s.sort_unstable();
        assert_eq!(s, (1..=50).collect::<Vec<_>>());
    }
    let stats = f.store.stats();
    assert_eq!(stats.envelopes, 200);
    assert!(stats.commits - before < 200, "{stats:?}");
    f.assert_consistent().await;
}

#[tokio::test]
async fn relay_full_by_store_cap() {
    let f = Fixture::new(|c| c.max_store_bytes = 2048);
    let a = mailbox(&f.store, OwnerKey::random()).await;
    let b = mailbox(&f.store, OwnerKey::random()).await;
    f.store
        .enqueue(a.info.send_id, a.token, ct(1024))
        .await
        .unwrap();
    f.store
        .enqueue(b.info.send_id, b.token, ct(1024))
        .await
        .unwrap();
    let e = f
        .store
        .enqueue(a.info.send_id, a.token, ct(1024))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ResultCode::RelayFull);
    // Acks free room again.
    f.store
        .ack(a.owner, a.info.receive_id, vec![1])
        .await
        .unwrap();
    f.store
        .enqueue(a.info.send_id, a.token, ct(1024))
        .await
        .unwrap();
}

#[tokio::test]
async fn relay_full_by_disk_watermark() {
    let f = Fixture::new(|c| c.min_free_disk_bytes = u64::MAX);
    let m = mailbox(&f.store, OwnerKey::random()).await;
    let e = f
        .store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ResultCode::RelayFull);
    assert!(f.store.stats().disk_low);
    // Owners can still manage and empty their mailboxes.
    f.store
        .ack(m.owner, m.info.receive_id, vec![1])
        .await
        .unwrap();
    f.store
        .delete_mailbox(m.owner, m.info.receive_id)
        .await
        .unwrap();
}

/// A 64 KiB envelope is kept as a first part and two more (see
/// `records::FIRST_PART`); every path that reads or deletes envelopes must
/// see it whole.
#[tokio::test]
async fn large_envelopes_are_split_and_read_back_whole() {
    use redb::{ReadableDatabase, ReadableTableMetadata};

    use crate::schema::ENVELOPE_PARTS;

    let f = Fixture::new(|_| {});
    let m = mailbox(&f.store, OwnerKey::random()).await;
    let (owner, id) = (m.owner, m.info.receive_id);
    // Distinct bytes everywhere, so a part read out of place shows.
    let body = |i: usize, len: usize| -> Bytes {
        (0..len).map(|j| ((j * 7 + i * 13) % 251) as u8).collect()
    };
    let sent: Vec<Bytes> = [MAX_CIPHERTEXT, 16 * 1024, MAX_CIPHERTEXT, MAX_CIPHERTEXT]
        .into_iter()
        .enumerate()
        .map(|(i, len)| body(i, len))
        .collect();
    for b in &sent {
        f.store
            .enqueue(m.info.send_id, m.token, b.clone())
            .await
            .unwrap();
    }
    // In the journal and the memtable so far; redb is what is looked at.
    f.store.flush().await.unwrap();
    let parts = || {
        let txn = f.store.db().begin_read().unwrap();
        txn.open_table(ENVELOPE_PARTS).unwrap().len().unwrap()
    };
    assert_eq!(parts(), 3 * 2);
    let all = f.store.fetch(owner, id, 0, 100, usize::MAX).unwrap();
    assert_eq!(
        all.iter().map(|e| e.ciphertext.clone()).collect::<Vec<_>>(),
        sent
    );
    // The byte budget counts whole envelopes.
    let tight = f
        .store
        .fetch(owner, id, 0, 100, MAX_CIPHERTEXT + 16 * 1024)
        .unwrap();
    assert_eq!(tight.len(), 2);
    f.assert_consistent().await;

    f.store.ack(owner, id, vec![1]).await.unwrap();
    f.store.flush().await.unwrap();
    assert_eq!(parts(), 2 * 2);
    let s = f.store.stats();
    assert_eq!(
        (s.envelopes, s.bytes),
        (3, 2 * MAX_CIPHERTEXT as u64 + 16 * 1024)
    );
    f.assert_consistent().await;

    f.store.delete_mailbox(owner, id).await.unwrap();
    assert_eq!(parts(), 0);
    f.assert_consistent().await;
}

/// What split envelopes are for: a 64 KiB envelope must not take a 128 KiB
/// run of pages (it took 200 to 258 KB of file each before they were split).
#[tokio::test]
async fn large_envelopes_do_not_double_the_file() {
    let f = Fixture::new(|_| {});
    let m = mailbox(&f.store, OwnerKey::random()).await;
    let n = 200u64;
    for _ in 0..n {
        f.store
            .enqueue(m.info.send_id, m.token, ct(MAX_CIPHERTEXT))
            .await
            .unwrap();
    }
    let file = std::fs::metadata(f.dir.path().join("store.redb"))
        .unwrap()
        .len();
    let stored = n * MAX_CIPHERTEXT as u64;
    assert!(
        file < stored * 3 / 2,
        "{file} bytes of file for {stored} bytes of ciphertext"
    );
    f.assert_consistent().await;
}

/// Acks remove runs of consecutive numbers from redb with one range
/// delete each (and their expiry rows, per hour): what lies between the
/// runs, in another hour or in a neighbouring mailbox, must stay.
#[tokio::test]
async fn acked_runs_leave_their_neighbours_in_redb() {
    let f = Fixture::new(|_| {});
    let a = mailbox(&f.store, OwnerKey::random()).await;
    let b = mailbox(&f.store, OwnerKey::random()).await;
    for i in 1..=20u64 {
        if i == 11 {
            f.advance_hours(1);
        }
        // One envelope large enough to be stored in parts, inside a run.
        let len = if i == 4 { MAX_CIPHERTEXT } else { 1024 };
        for m in [&a, &b] {
            f.store
                .enqueue(m.info.send_id, m.token, ct(len))
                .await
                .unwrap();
        }
    }
    // Into redb itself, so the deletes below are the applier's.
    f.store.flush().await.unwrap();
    let (owner, id) = (a.owner, a.info.receive_id);
    // Out of order and repeated, spanning the hour boundary at 11.
    f.store
        .ack(owner, id, vec![12, 3, 2, 4, 9, 10, 11, 3, 20, 6])
        .await
        .unwrap();
    f.store.flush().await.unwrap();
    let left: Vec<u64> = f
        .store
        .fetch(owner, id, 0, 100, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, [1, 5, 7, 8, 13, 14, 15, 16, 17, 18, 19]);
    let other = f
        .store
        .fetch(b.owner, b.info.receive_id, 0, 100, usize::MAX)
        .unwrap();
    assert_eq!(other.len(), 20);
    assert_eq!(f.store.stats().envelopes, 31);
    f.assert_consistent().await;
}

/// An ack names numbers at or above the mailbox's next one only if made
/// up: they are dropped before any lookup, judged against the writer's own
/// view, so a number assigned earlier in the same batch is still deleted
/// and one assigned later in the batch is not.
#[tokio::test]
async fn acks_for_numbers_not_yet_assigned_are_dropped() {
    let f = Fixture::new(|_| {});
    let m = mailbox(&f.store, OwnerKey::random()).await;
    let (owner, id) = (m.owner, m.info.receive_id);
    f.store
        .enqueue(m.info.send_id, m.token, ct(1024))
        .await
        .unwrap();
    let gate = f.store.hold();
    let second = f.store.submit_enqueue(m.info.send_id, &m.token, ct(1024));
    // 2 was assigned just above in this batch; 3 is assigned just below.
    let ack = f.store.submit_ack(owner, id, vec![2, 3, u64::MAX]);
    let third = f.store.submit_enqueue(m.info.send_id, &m.token, ct(1024));
    drop(gate);
    assert_eq!(second.wait().await.unwrap().seq, 2);
    ack.wait().await.unwrap();
    assert_eq!(third.wait().await.unwrap().seq, 3);
    let left: Vec<u64> = f
        .store
        .fetch(owner, id, 0, 100, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, [1, 3]);
    f.assert_consistent().await;
}
