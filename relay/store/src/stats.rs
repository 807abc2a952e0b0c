//! Counters the writer publishes after each commit, for metrics and health
//! checks that must not touch the database.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::schema::Totals;

/// A snapshot of the store's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Envelopes stored, as of the last commit.
    pub envelopes: u64,
    /// Their ciphertext bytes.
    pub bytes: u64,
    pub mailboxes: u64,
    /// Write transactions committed since open.
    pub commits: u64,
    /// Requests in the last committed batch.
    pub last_batch_size: u64,
    /// Free disk was below the watermark at the last check.
    pub disk_low: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    envelopes: AtomicU64,
    bytes: AtomicU64,
    mailboxes: AtomicU64,
    commits: AtomicU64,
    last_batch_size: AtomicU64,
    disk_low: AtomicBool,
}

impl Counters {
    pub(crate) fn new(t: Totals) -> Self {
        let c = Counters::default();
        c.set_totals(t);
        c
    }

    fn set_totals(&self, t: Totals) {
        self.envelopes.store(t.envelopes, Relaxed);
        self.bytes.store(t.bytes, Relaxed);
        self.mailboxes.store(t.mailboxes, Relaxed);
    }

    pub(crate) fn committed(&self, t: Totals, batch: usize, disk_low: bool) {
        self.set_totals(t);
        self.commits.fetch_add(1, Relaxed);
        self.last_batch_size
            .store(u64::try_from(batch).unwrap_or(u64::MAX), Relaxed);
        self.disk_low.store(disk_low, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StoreStats {
        StoreStats {
            envelopes: self.envelopes.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            mailboxes: self.mailboxes.load(Relaxed),
            commits: self.commits.load(Relaxed),
            last_batch_size: self.last_batch_size.load(Relaxed),
            disk_low: self.disk_low.load(Relaxed),
        }
    }
}
