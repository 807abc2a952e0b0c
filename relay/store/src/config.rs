//! Limits and paths for one store, with the defaults an appliance runs.

use std::path::PathBuf;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The redb file; created with its tables when missing.
    pub path: PathBuf,
    /// Envelopes a mailbox may hold before sends get `QuotaExceeded`.
    pub max_envelopes_per_mailbox: u32,
    /// Ciphertext bytes a mailbox may hold before sends get `QuotaExceeded`.
    pub max_bytes_per_mailbox: u64,
    /// Mailboxes one owner key may hold.
    pub max_mailboxes_per_owner: u32,
    /// How long an unacknowledged envelope is kept (rounded up to the hour).
    pub envelope_ttl: Duration,
    /// Sends get `RelayFull` while the file system holding `path` has less
    /// free space than this (0 disables the check). Leaves room for deletes,
    /// acks and redb's own copy-on-write pages, which all need disk to run.
    pub min_free_disk_bytes: u64,
    /// Sends get `RelayFull` once stored ciphertext would exceed this many
    /// bytes in total (0 = unlimited).
    pub max_store_bytes: u64,
    /// Most requests in one group commit (one journal sync).
    pub max_batch: usize,
    /// Size of the journal's ring, fixed when the journal file is created
    /// (a multiple of 4096, at least 1 MiB). It bounds how much the applier
    /// may lag behind redb: the memory that envelopes not yet in redb take,
    /// and the replay after a crash (about a quarter of it at most).
    pub journal_bytes: u64,
    /// Memory redb may use to cache pages of `store.redb` (reads and the
    /// writes of one applier transaction).
    pub cache_bytes: usize,
    /// Open even if the journal is damaged in the middle (intact records
    /// after a damaged one), missing after an unclean stop, or in an older
    /// format with records to replay: what cannot be read is dropped, and
    /// the log says what. Off by default; the operator's explicit choice
    /// (`chappe-relay check --discard-damaged-journal`), never a config key
    /// that would stay set for the next damage.
    pub discard_damaged_journal: bool,
    /// Faults to inject into the store's file layer: tests only (an empty
    /// value in any build without the `fault-injection` feature).
    pub faults: crate::disk::Faults,
}

impl StoreConfig {
    /// The defaults, storing at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            max_envelopes_per_mailbox: 10_000,
            max_bytes_per_mailbox: 256 * MIB,
            max_mailboxes_per_owner: 256,
            envelope_ttl: Duration::from_secs(14 * 24 * 3600),
            min_free_disk_bytes: 512 * MIB,
            max_store_bytes: 0,
            max_batch: 1024,
            journal_bytes: 64 * MIB,
            cache_bytes: 1 << 30,
            discard_damaged_journal: false,
            faults: crate::disk::Faults::default(),
        }
    }

    /// The limits a running store can change ([`crate::Store::set_quotas`]).
    pub fn quotas(&self) -> Quotas {
        Quotas {
            max_envelopes_per_mailbox: self.max_envelopes_per_mailbox,
            max_bytes_per_mailbox: self.max_bytes_per_mailbox,
            max_mailboxes_per_owner: self.max_mailboxes_per_owner,
            envelope_ttl: self.envelope_ttl,
            min_free_disk_bytes: self.min_free_disk_bytes,
            max_store_bytes: self.max_store_bytes,
        }
    }

    pub(crate) fn set_quotas(&mut self, q: &Quotas) {
        self.max_envelopes_per_mailbox = q.max_envelopes_per_mailbox;
        self.max_bytes_per_mailbox = q.max_bytes_per_mailbox;
        self.max_mailboxes_per_owner = q.max_mailboxes_per_owner;
        self.envelope_ttl = q.envelope_ttl;
        self.min_free_disk_bytes = q.min_free_disk_bytes;
        self.max_store_bytes = q.max_store_bytes;
    }

    /// The journal file: next to the database, `store.redb` → `store.journal`.
    pub fn journal_path(&self) -> PathBuf {
        self.path.with_extension("journal")
    }
}

/// The store's limits that apply to requests from the moment they are set
/// (a configuration reload), unlike the file paths and sizes, which are
/// fixed when the store opens. Fields as in [`StoreConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quotas {
    pub max_envelopes_per_mailbox: u32,
    pub max_bytes_per_mailbox: u64,
    pub max_mailboxes_per_owner: u32,
    pub envelope_ttl: Duration,
    pub min_free_disk_bytes: u64,
    pub max_store_bytes: u64,
}
