//! The store's hot path on a real redb file: durable enqueue (group commit
//! under concurrency) and fetch + ack of what was stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use chappe_proto::{DeliveryToken, OwnerKey, SendId};
use chappe_store::{Store, StoreConfig};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const BATCH: u64 = 256;

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("bench.redb"));
    cfg.max_envelopes_per_mailbox = u32::MAX;
    cfg.max_bytes_per_mailbox = u64::MAX;
    cfg.min_free_disk_bytes = 0;
    let store = Store::open(cfg).unwrap();
    let owner = OwnerKey([1; 32]);
    let token = DeliveryToken([2; 32]);
    let info = rt
        .block_on(store.create_mailbox(owner, vec![token.digest()]))
        .unwrap();
    let ct = Bytes::from(vec![7u8; 1024]);

    let mut g = c.benchmark_group("store");
    g.sample_size(10);
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("enqueue 256 concurrent 1KiB (durable)", |b| {
        b.iter(|| rt.block_on(fill(&store, info.send_id, token, &ct)))
    });
    g.bench_function("fetch + ack 256", |b| {
        b.iter_batched(
            // Untimed: store a full batch to read back.
            || rt.block_on(fill(&store, info.send_id, token, &ct)),
            |()| {
                rt.block_on(async {
                    let envs = store
                        .fetch(owner, info.receive_id, 0, BATCH as usize, usize::MAX)
                        .unwrap();
                    let seqs = envs.iter().map(|e| e.seq).collect();
                    store.ack(owner, info.receive_id, seqs).await.unwrap();
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    rt.block_on(store.shutdown());
}

/// BATCH concurrent durable sends, so they share group commits.
async fn fill(store: &Store, send_id: SendId, token: DeliveryToken, ct: &Bytes) {
    let mut tasks = Vec::new();
    for _ in 0..BATCH {
        let (s, ct) = (store.clone(), ct.clone());
        tasks.push(tokio::spawn(async move {
            s.enqueue(send_id, token, ct).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

criterion_group!(benches, store);
criterion_main!(benches);
