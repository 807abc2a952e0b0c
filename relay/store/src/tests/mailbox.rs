use chappe_proto::frame::{MAX_LIST, MAX_TOKENS};
use chappe_proto::{DeliveryToken, OwnerKey, ResultCode, TokenDigest};

use super::{Fixture, ct, mailbox};

#[tokio::test]
async fn create_list_delete() {
    let f = Fixture::new(|_| {});
    let (a, b) = (OwnerKey::random(), OwnerKey::random());
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(mailbox(&f.store, a).await);
    }
    let theirs = mailbox(&f.store, b).await;

    let mut listed = f.store.list_mailboxes(a).await.unwrap();
    let mut want: Vec<_> = mine.iter().map(|m| m.info).collect();
    want.sort_by_key(|i| i.receive_id);
    assert_eq!(listed, want);
    assert_eq!(f.store.list_mailboxes(b).await.unwrap(), vec![theirs.info]);
    assert!(
        f.store
            .list_mailboxes(OwnerKey::random())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(f.store.stats().mailboxes, 4);
    assert_ne!(mine[0].info.send_id.0, mine[0].info.receive_id.0);

    let gone = mine.remove(0);
    f.store
        .enqueue(gone.info.send_id, gone.token, ct(1024))
        .await
        .unwrap();
    f.store
        .delete_mailbox(a, gone.info.receive_id)
        .await
        .unwrap();
    listed = f.store.list_mailboxes(a).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|i| i.receive_id != gone.info.receive_id));
    assert_eq!(f.store.stats().mailboxes, 3);
    assert_eq!(f.store.stats().envelopes, 0);

    let again = f.store.delete_mailbox(a, gone.info.receive_id).await;
    assert_eq!(again.unwrap_err().code(), ResultCode::UnknownMailbox);
    let send = f
        .store
        .enqueue(gone.info.send_id, gone.token, ct(1024))
        .await;
    assert_eq!(send.unwrap_err().code(), ResultCode::UnknownMailbox);
    f.assert_consistent().await;
}

#[tokio::test]
async fn other_owners_see_nothing() {
    let f = Fixture::new(|_| {});
    let m = mailbox(&f.store, OwnerKey::random()).await;
    f.store
        .enqueue(m.info.send_id, m.token, ct(2048))
        .await
        .unwrap();
    let eve = OwnerKey::random();
    let id = m.info.receive_id;
    let codes = [
        f.store.delete_mailbox(eve, id).await.unwrap_err().code(),
        f.store
            .set_tokens(eve, id, vec![TokenDigest([1; 32])])
            .await
            .unwrap_err()
            .code(),
        f.store.ack(eve, id, vec![1]).await.unwrap_err().code(),
        f.store.fetch(eve, id, 0, 10, 1 << 20).unwrap_err().code(),
    ];
    assert_eq!(codes, [ResultCode::UnknownMailbox; 4]);
    // The same answer as for a mailbox that does not exist at all.
    let none = f
        .store
        .fetch(m.owner, chappe_proto::ReceiveId::random(), 0, 10, 1 << 20);
    assert_eq!(none.unwrap_err().code(), ResultCode::UnknownMailbox);
    assert_eq!(f.store.fetch(m.owner, id, 0, 10, 1 << 20).unwrap().len(), 1);
}

#[tokio::test]
async fn token_count_and_ack_size_are_checked() {
    let f = Fixture::new(|_| {});
    let owner = OwnerKey::random();
    let nine = vec![TokenDigest([7; 32]); MAX_TOKENS + 1];
    let eight = vec![TokenDigest([7; 32]); MAX_TOKENS];
    let bad = [
        f.store.create_mailbox(owner, vec![]).await.unwrap_err(),
        f.store
            .create_mailbox(owner, nine.clone())
            .await
            .unwrap_err(),
    ];
    assert!(bad.iter().all(|e| e.code() == ResultCode::BadRequest));
    let m = f.store.create_mailbox(owner, eight).await.unwrap();
    let id = m.receive_id;
    for tokens in [vec![], nine] {
        let e = f.store.set_tokens(owner, id, tokens).await.unwrap_err();
        assert_eq!(e.code(), ResultCode::BadRequest);
    }
    let e = f.store.ack(owner, id, vec![1; MAX_LIST + 1]).await;
    assert_eq!(e.unwrap_err().code(), ResultCode::BadRequest);
    f.store.ack(owner, id, vec![1; MAX_LIST]).await.unwrap();
}

#[tokio::test]
async fn mailboxes_per_owner_are_capped() {
    let f = Fixture::new(|c| c.max_mailboxes_per_owner = 2);
    let owner = OwnerKey::random();
    let first = mailbox(&f.store, owner).await;
    mailbox(&f.store, owner).await;
    let t = vec![TokenDigest([1; 32])];
    let e = f.store.create_mailbox(owner, t.clone()).await.unwrap_err();
    assert_eq!(e.code(), ResultCode::TooManyMailboxes);
    f.store
        .create_mailbox(OwnerKey::random(), t.clone())
        .await
        .unwrap();
    f.store
        .delete_mailbox(owner, first.info.receive_id)
        .await
        .unwrap();
    f.store.create_mailbox(owner, t).await.unwrap();
    f.assert_consistent().await;
}

#[tokio::test]
async fn token_rotation() {
    let f = Fixture::new(|_| {});
    let m = mailbox(&f.store, OwnerKey::random()).await;
    let (old, new) = (m.token, DeliveryToken::random());
    let id = m.info.receive_id;
    let send = m.info.send_id;
    // Overlap: both work.
    f.store
        .set_tokens(m.owner, id, vec![old.digest(), new.digest()])
        .await
        .unwrap();
    f.store.enqueue(send, old, ct(1024)).await.unwrap();
    f.store.enqueue(send, new, ct(1024)).await.unwrap();
    // Rotated out: only the new one.
    f.store
        .set_tokens(m.owner, id, vec![new.digest()])
        .await
        .unwrap();
    let e = f.store.enqueue(send, old, ct(1024)).await.unwrap_err();
    assert_eq!(e.code(), ResultCode::BadToken);
    f.store.enqueue(send, new, ct(1024)).await.unwrap();
    // The digest itself is not a token.
    let as_token = DeliveryToken(new.digest().0);
    let e = f.store.enqueue(send, as_token, ct(1024)).await.unwrap_err();
    assert_eq!(e.code(), ResultCode::BadToken);
    assert_eq!(
        f.store.list_mailboxes(m.owner).await.unwrap()[0].envelopes,
        3
    );
}
