//! Tests against real redb files in temporary directories.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chappe_proto::{DeliveryToken, OwnerKey};
use tempfile::TempDir;

use crate::clock::Clock;
use crate::{MailboxInfo, Store, StoreConfig};

mod damage;
mod durability;
mod enqueue;
mod expiry;
mod faults;
mod journal;
mod mailbox;
mod prop;

/// A fixed start time (mid-hour), so expiry hours are predictable.
pub(crate) const T0: u64 = 1_700_000_000;

pub(crate) struct Fixture {
    pub dir: TempDir,
    pub store: Store,
    pub clock: Arc<AtomicU64>,
}

impl Fixture {
    pub(crate) fn new(tune: impl FnOnce(&mut StoreConfig)) -> Fixture {
        let dir = TempDir::new().unwrap();
        let mut cfg = config(&dir);
        tune(&mut cfg);
        let clock = Arc::new(AtomicU64::new(T0));
        let store = Store::open_with_clock(cfg, Clock::Manual(clock.clone())).unwrap();
        Fixture { dir, store, clock }
    }

    pub(crate) fn advance_hours(&self, h: u64) {
        self.clock.fetch_add(h * 3600, Ordering::Relaxed);
    }

    pub(crate) async fn assert_consistent(&self) {
        let report = self.store.check().await.unwrap();
        assert!(report.is_consistent(), "{report:#?}");
        let s = self.store.stats();
        assert_eq!(
            (s.envelopes, s.bytes, s.mailboxes),
            (
                report.counted.envelopes,
                report.counted.bytes,
                report.counted.mailboxes
            )
        );
    }
}

pub(crate) fn config(dir: &TempDir) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir.path().join("store.redb"));
    // Test machines may have little free disk; the watermark has its own test.
    cfg.min_free_disk_bytes = 0;
    // The smallest journal: tests create many stores, and a small ring
    // makes the applier and the wrap-around work hard.
    cfg.journal_bytes = 1 << 20;
    cfg
}

pub(crate) fn ct(len: usize) -> Bytes {
    Bytes::from(vec![0xab; len])
}

/// A mailbox with its owner and one valid token.
#[derive(Clone, Copy)]
pub(crate) struct Mb {
    pub info: MailboxInfo,
    pub owner: OwnerKey,
    pub token: DeliveryToken,
}

pub(crate) async fn mailbox(store: &Store, owner: OwnerKey) -> Mb {
    let token = DeliveryToken::random();
    let info = store
        .create_mailbox(owner, vec![token.digest()])
        .await
        .unwrap();
    Mb { info, owner, token }
}
