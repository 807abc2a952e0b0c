//! Counters the writer and the applier publish, for metrics and health
//! checks that must not touch the database. Each counter has one owner:
//! envelope totals, group commits and the journal's fill belong to the
//! writer (which decides them), mailbox totals and checkpoints to the
//! applier (which makes them).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};

use crate::disk::ReadOnly;
use crate::schema::Totals;

/// A snapshot of the store's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Envelopes stored and not yet acknowledged or expired.
    pub envelopes: u64,
    /// Their ciphertext bytes.
    pub bytes: u64,
    pub mailboxes: u64,
    /// Group commits (journal syncs) since open.
    pub commits: u64,
    /// Requests in the last group commit.
    pub last_batch_size: u64,
    /// Free disk was below the watermark at the last check.
    pub disk_low: bool,
    /// Transactions that moved journaled batches into redb, since open.
    pub checkpoints: u64,
    /// Envelopes acknowledged before they reached redb, so never written
    /// there, since open.
    pub unwritten: u64,
    /// Journal bytes not yet applied to redb.
    pub journal_bytes: u64,
    /// A journal or database write failed: the store takes no more writes
    /// until the relay is restarted (recovery then replays the journal).
    pub failed: bool,
    /// Why the store takes no writes, if it does not: a failed write
    /// (`failed`, by the error's kind), or a disk below the store's floor
    /// (which clears by itself).
    pub read_only: Option<ReadOnly>,
    /// Size of the journal's ring: how far the applier may lag.
    pub journal_capacity: u64,
    /// Envelopes removed by expiry since open.
    pub expired: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    envelopes: AtomicU64,
    bytes: AtomicU64,
    mailboxes: AtomicU64,
    commits: AtomicU64,
    last_batch_size: AtomicU64,
    disk_low: AtomicBool,
    checkpoints: AtomicU64,
    unwritten: AtomicU64,
    journal_bytes: AtomicU64,
    failed: AtomicBool,
    /// 0: writable; 1: no space; 2: I/O error ([`ReadOnly`]).
    read_only: AtomicU8,
    journal_capacity: AtomicU64,
    expired: AtomicU64,
}

impl Counters {
    pub(crate) fn new(t: Totals) -> Self {
        let c = Counters::default();
        c.set_totals(t);
        c
    }

    /// After recovery replayed the journal.
    pub(crate) fn set_totals(&self, t: Totals) {
        self.envelopes.store(t.envelopes, Relaxed);
        self.bytes.store(t.bytes, Relaxed);
        self.mailboxes.store(t.mailboxes, Relaxed);
    }

    /// The writer, after a group commit.
    pub(crate) fn committed(&self, t: Totals, batch: usize, disk_low: bool, journal_bytes: u64) {
        self.envelopes.store(t.envelopes, Relaxed);
        self.bytes.store(t.bytes, Relaxed);
        self.commits.fetch_add(1, Relaxed);
        self.last_batch_size
            .store(u64::try_from(batch).unwrap_or(u64::MAX), Relaxed);
        self.disk_low.store(disk_low, Relaxed);
        self.journal_bytes.store(journal_bytes, Relaxed);
    }

    /// The applier, after a checkpoint.
    pub(crate) fn checkpointed(&self, mailboxes: u64, unwritten: u64) {
        self.mailboxes.store(mailboxes, Relaxed);
        self.checkpoints.fetch_add(1, Relaxed);
        self.unwritten.fetch_add(unwritten, Relaxed);
    }

    pub(crate) fn set_journal_capacity(&self, bytes: u64) {
        self.journal_capacity.store(bytes, Relaxed);
    }

    /// The writer, after a commit that removed expired envelopes.
    pub(crate) fn expired(&self, n: u64) {
        self.expired.fetch_add(n, Relaxed);
    }

    /// A write failed: read-only until a restart.
    pub(crate) fn fail(&self, why: ReadOnly) {
        self.failed.store(true, Relaxed);
        self.read_only.store(code(Some(why)), Relaxed);
    }

    /// The writer, after looking at free space: read-only while below the
    /// floor (a failure, once recorded, stays).
    pub(crate) fn set_no_space(&self, full: bool) {
        if !self.is_failed() {
            let want = if full { Some(ReadOnly::NoSpace) } else { None };
            self.read_only.store(code(want), Relaxed);
        }
    }

    pub(crate) fn read_only(&self) -> Option<ReadOnly> {
        match self.read_only.load(Relaxed) {
            1 => Some(ReadOnly::NoSpace),
            2 => Some(ReadOnly::Io),
            _ => None,
        }
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Relaxed)
    }

    pub(crate) fn snapshot(&self) -> StoreStats {
        StoreStats {
            envelopes: self.envelopes.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            mailboxes: self.mailboxes.load(Relaxed),
            commits: self.commits.load(Relaxed),
            last_batch_size: self.last_batch_size.load(Relaxed),
            disk_low: self.disk_low.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            unwritten: self.unwritten.load(Relaxed),
            journal_bytes: self.journal_bytes.load(Relaxed),
            failed: self.failed.load(Relaxed),
            read_only: self.read_only(),
            journal_capacity: self.journal_capacity.load(Relaxed),
            expired: self.expired.load(Relaxed),
        }
    }
}

fn code(r: Option<ReadOnly>) -> u8 {
    match r {
        None => 0,
        Some(ReadOnly::NoSpace) => 1,
        Some(ReadOnly::Io) => 2,
    }
}
