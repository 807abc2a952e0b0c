//! Random operation sequences keep `meta`'s totals equal to a recount.

use chappe_proto::envelope::BUCKETS;
use chappe_proto::{DeliveryToken, OwnerKey, TokenDigest};
use proptest::prelude::*;

use super::{Fixture, Mb, ct};

#[derive(Clone, Debug)]
enum Step {
    Create {
        owner: usize,
    },
    Enqueue {
        mb: usize,
        bucket: usize,
        good_token: bool,
    },
    Ack {
        mb: usize,
        seqs: Vec<u64>,
    },
    Delete {
        mb: usize,
    },
    Rotate {
        mb: usize,
    },
    Expire {
        hours: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0..2usize).prop_map(|owner| Step::Create { owner }),
        5 => (0..4usize, 0..BUCKETS.len(), prop::bool::weighted(0.9))
            .prop_map(|(mb, bucket, good_token)| Step::Enqueue { mb, bucket, good_token }),
        2 => (0..4usize, prop::collection::vec(0..12u64, 0..5))
            .prop_map(|(mb, seqs)| Step::Ack { mb, seqs }),
        1 => (0..4usize).prop_map(|mb| Step::Delete { mb }),
        1 => (0..4usize).prop_map(|mb| Step::Rotate { mb }),
        1 => (0..3u64).prop_map(|hours| Step::Expire { hours }),
    ]
}

async fn run(steps: Vec<Step>) {
    let f = Fixture::new(|c| {
        c.envelope_ttl = std::time::Duration::from_secs(2 * 3600);
        c.max_envelopes_per_mailbox = 6;
        c.max_mailboxes_per_owner = 3;
    });
    let owners = [OwnerKey::random(), OwnerKey::random()];
    let mut boxes: Vec<Mb> = Vec::new();
    for s in steps {
        match s {
            Step::Create { owner } => {
                let token = DeliveryToken::random();
                let owner = owners[owner];
                if let Ok(info) = f.store.create_mailbox(owner, vec![token.digest()]).await {
                    boxes.push(Mb { info, owner, token });
                }
            }
            Step::Enqueue {
                mb,
                bucket,
                good_token,
            } => {
                let Some(m) = boxes.get(mb % boxes.len().max(1)) else {
                    continue;
                };
                let token = if good_token {
                    m.token
                } else {
                    DeliveryToken::random()
                };
                let r = f
                    .store
                    .enqueue(m.info.send_id, token, ct(BUCKETS[bucket]))
                    .await;
                if !good_token {
                    assert!(r.is_err());
                }
            }
            Step::Ack { mb, seqs } => {
                let Some(m) = boxes.get(mb % boxes.len().max(1)) else {
                    continue;
                };
                let _ = f.store.ack(m.owner, m.info.receive_id, seqs).await;
            }
            Step::Delete { mb } => {
                let Some(m) = boxes.get(mb % boxes.len().max(1)).copied() else {
                    continue;
                };
                // Deleted mailboxes stay in `boxes`: later steps hit unknown ids.
                let _ = f.store.delete_mailbox(m.owner, m.info.receive_id).await;
            }
            Step::Rotate { mb } => {
                let i = mb % boxes.len().max(1);
                let Some(m) = boxes.get_mut(i) else { continue };
                let token = DeliveryToken::random();
                let digests = vec![token.digest(), TokenDigest([0; 32])];
                if f.store
                    .set_tokens(m.owner, m.info.receive_id, digests)
                    .await
                    .is_ok()
                {
                    m.token = token;
                }
            }
            Step::Expire { hours } => {
                f.advance_hours(hours);
                f.store.sweep_expired().await.unwrap();
            }
        }
    }
    f.assert_consistent().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn totals_match_a_recount(steps in prop::collection::vec(step(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(steps));
    }
}

/// One request of a batch, against one of three mailboxes.
#[derive(Clone, Debug)]
enum Req {
    Enqueue { mb: usize, good_token: bool },
    Ack { mb: usize, seqs: Vec<u64> },
    Delete { mb: usize },
    Rotate { mb: usize },
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        6 => (0..3usize, prop::bool::weighted(0.9))
            .prop_map(|(mb, good_token)| Req::Enqueue { mb, good_token }),
        2 => (0..3usize, prop::collection::vec(1..10u64, 0..4))
            .prop_map(|(mb, seqs)| Req::Ack { mb, seqs }),
        1 => (0..3usize).prop_map(|mb| Req::Delete { mb }),
        1 => (0..3usize).prop_map(|mb| Req::Rotate { mb }),
    ]
}

/// What a mailbox should hold, kept by the test alongside the store.
struct Model {
    mb: Mb,
    alive: bool,
    next_seq: u64,
    stored: std::collections::BTreeSet<u64>,
}

const BATCH_QUOTA: u32 = 5;

/// Whole batches of requests applied in one transaction (the writer is held
/// while they queue) must answer exactly as if each ran alone: sequence
/// numbers continue within the batch, a mailbox deleted earlier in the batch
/// is unknown to later sends, a rotated token is refused at once, and the
/// quota counts what the batch already added.
async fn run_batches(batches: Vec<Vec<Req>>) {
    let f = Fixture::new(|c| c.max_envelopes_per_mailbox = BATCH_QUOTA);
    let mut models = Vec::new();
    for owner in [OwnerKey::random(), OwnerKey::random(), OwnerKey::random()] {
        models.push(Model {
            mb: super::mailbox(&f.store, owner).await,
            alive: true,
            next_seq: crate::ops::FIRST_SEQ,
            stored: Default::default(),
        });
    }
    for batch in batches {
        let gate = f.store.hold();
        let mut pending = Vec::new();
        for r in &batch {
            let i = match r {
                Req::Enqueue { mb, .. }
                | Req::Ack { mb, .. }
                | Req::Delete { mb }
                | Req::Rotate { mb } => *mb,
            };
            let m = &mut models[i];
            let s = &f.store;
            match r {
                Req::Enqueue { good_token, .. } => {
                    let token = if *good_token {
                        m.mb.token
                    } else {
                        DeliveryToken::random()
                    };
                    let expect = if !m.alive {
                        Err(crate::RequestError::UnknownMailbox.code())
                    } else if !good_token {
                        Err(crate::RequestError::BadToken.code())
                    } else if m.stored.len() >= BATCH_QUOTA as usize {
                        Err(crate::RequestError::QuotaExceeded.code())
                    } else {
                        m.stored.insert(m.next_seq);
                        m.next_seq += 1;
                        Ok(m.next_seq - 1)
                    };
                    let p = s.submit_enqueue(m.mb.info.send_id, &token, ct(BUCKETS[0]));
                    pending.push(Box::pin(async move {
                        let got = p.wait().await.map(|e| e.seq).map_err(|e| e.code());
                        assert_eq!(got, expect, "enqueue");
                    })
                        as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>);
                }
                Req::Ack { seqs, .. } => {
                    let expect = if m.alive {
                        for q in seqs {
                            m.stored.remove(q);
                        }
                        Ok(())
                    } else {
                        Err(crate::RequestError::UnknownMailbox.code())
                    };
                    let p = s.submit_ack(m.mb.owner, m.mb.info.receive_id, seqs.clone());
                    pending.push(Box::pin(async move {
                        assert_eq!(p.wait().await.map_err(|e| e.code()), expect, "ack");
                    }));
                }
                Req::Delete { .. } => {
                    let expect = if m.alive {
                        Ok(())
                    } else {
                        Err(crate::RequestError::UnknownMailbox.code())
                    };
                    m.alive = false;
                    m.stored.clear();
                    let p = s.submit_delete(m.mb.owner, m.mb.info.receive_id);
                    pending.push(Box::pin(async move {
                        assert_eq!(p.wait().await.map_err(|e| e.code()), expect, "delete");
                    }));
                }
                Req::Rotate { .. } => {
                    let expect = if m.alive {
                        m.mb.token = DeliveryToken::random();
                        Ok(())
                    } else {
                        Err(crate::RequestError::UnknownMailbox.code())
                    };
                    let p = s.submit_set_tokens(
                        m.mb.owner,
                        m.mb.info.receive_id,
                        &[m.mb.token.digest()],
                    );
                    pending.push(Box::pin(async move {
                        assert_eq!(p.wait().await.map_err(|e| e.code()), expect, "rotate");
                    }));
                }
            }
        }
        drop(gate);
        for p in pending {
            p.await;
        }
        f.assert_consistent().await;
    }
    for m in &models {
        let got = f
            .store
            .fetch(m.mb.owner, m.mb.info.receive_id, 0, 64, usize::MAX);
        match got {
            Ok(envs) => {
                assert!(m.alive);
                let seqs: Vec<u64> = envs.iter().map(|e| e.seq).collect();
                assert_eq!(seqs, m.stored.iter().copied().collect::<Vec<_>>());
            }
            Err(e) => {
                assert!(!m.alive, "{e}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn batches_answer_as_if_each_request_ran_alone(
        batches in prop::collection::vec(prop::collection::vec(req(), 1..16), 1..5)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_batches(batches));
    }
}
