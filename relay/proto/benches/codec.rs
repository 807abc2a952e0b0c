//! Hot paths of the protocol core: frame encode/decode of a 1 KiB send and
//! a full NK and XK handshake (both sides, in memory).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use chappe_proto::frame::Frame;
use chappe_proto::noise::{
    Hello, Keypair, OwnerInitiator, OwnerResponder, SenderInitiator, SenderResponder,
};
use chappe_proto::{DeliveryToken, SendId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn frames(c: &mut Criterion) {
    let send = Frame::Send {
        req: 7,
        send_id: SendId([1; 32]),
        token: DeliveryToken([2; 32]),
        ciphertext: Bytes::from(vec![3u8; 1024]),
    };
    let wire = send.encode();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_parts send 1KiB", |b| {
        b.iter(|| black_box(&send).encode_parts())
    });
    g.bench_function("decode send 1KiB", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            Frame::decode(black_box(&mut buf)).unwrap()
        })
    });
    g.finish();
}

fn handshakes(c: &mut Criterion) {
    let relay = Keypair::generate();
    let owner = Keypair::generate();
    let exporter = [9u8; 32];
    let mut g = c.benchmark_group("handshake");
    g.bench_function("nk both sides", |b| {
        b.iter(|| {
            let (i, m1) =
                SenderInitiator::start(&relay.public(), &exporter, &Hello::default()).unwrap();
            let r = SenderResponder::read_request(&relay, &exporter, &m1).unwrap();
            let (m2, _) = r.respond(&Hello::default()).unwrap();
            i.finish(&m2).unwrap()
        })
    });
    g.bench_function("xk both sides", |b| {
        b.iter(|| {
            let (i, m1) =
                OwnerInitiator::start(&owner, &relay.public(), &exporter, &Hello::default())
                    .unwrap();
            let r = OwnerResponder::read_request(&relay, &exporter, &m1).unwrap();
            let (w, m2) = r.respond(&Hello::default()).unwrap();
            let (m3, _) = i.finish(&m2).unwrap();
            w.read_final(&m3).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, frames, handshakes);
criterion_main!(benches);
