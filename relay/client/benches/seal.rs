//! Sealing and opening a 1 KiB message (X-Wing HPKE + Ed25519), the
//! per-message cost on both clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chappe_client::identity::Identity;
use chappe_client::seal::{self, MailboxKeyPair};
use chappe_proto::SendId;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn seal_open(c: &mut Criterion) {
    let now = 1_800_000_000;
    let me = Identity::generate(now);
    let mailbox = MailboxKeyPair::generate();
    let send_id = SendId([5; 32]);
    let body = vec![0x61u8; 1024];
    let sealed = seal::seal(&me, mailbox.public_key(), &send_id, &body, now).unwrap();
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    g.bench_function("seal 1KiB", |b| {
        b.iter(|| seal::seal(&me, mailbox.public_key(), &send_id, black_box(&body), now).unwrap())
    });
    g.bench_function("open 1KiB", |b| {
        b.iter(|| seal::open(&mailbox, &send_id, black_box(&sealed)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, seal_open);
criterion_main!(benches);
