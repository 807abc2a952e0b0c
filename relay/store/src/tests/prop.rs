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
        5 => (0..4usize, 0..3usize, prop::bool::weighted(0.9))
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
    f.assert_consistent();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn totals_match_a_recount(steps in prop::collection::vec(step(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(steps));
    }
}
