//! The Chappe relay's mailbox store: envelopes waiting for their owner, in
//! one [redb] file, with a write-ahead journal in front of it.
//!
//! The relay holds ciphertext for mailboxes until the owner fetches and
//! acknowledges it, or until it expires. What the store keeps is the least
//! that job needs: no sender data, no addresses, no delivery token in clear
//! (only its digest), and no time finer than the hour an envelope expires.
//!
//! # How data moves
//!
//! ```text
//!  callers (any task)          writer thread                 applier thread
//!  ──────────────────          ─────────────                 ──────────────
//!  Store::enqueue / ack ...
//!   │ check what needs no disk
//!   └─► channel ─► take a batch; decide each request
//!                  (tokens, quotas, numbers: overlay)
//!                  one journal record, one fdatasync
//!                  publish to the memtable ──────────► window of units (~200 ms):
//!   ◄── answer ◄── answer                              a remove cancels a put still
//!                                                      held; the rest goes into redb
//!  create / delete / tokens ──► barrier ─────────────► in one durable transaction
//!   ◄──────────────────────────────────────────────── answered after that commit
//!
//!  Store::fetch ─► memtable first, then a redb read snapshot; merged
//!  Store::stats ─► atomics published by both threads
//! ```
//!
//! A send is durable once its journal record is synced; it reaches redb a
//! little later, or never, if its owner acknowledged it first (the common
//! case for an owner that is online). After a crash, opening the store
//! replays the journal from the mark the last redb commit recorded.
//!
//! # Modules
//!
//! - [`store`]: the [`Store`] handle; opening and journal recovery.
//! - `writer`: the group-commit thread, which decides every write.
//! - `applier`: the thread that moves journaled batches into redb.
//! - [`backup`]: the online backup's consistent [`Snapshot`], checking a
//!   backup before a restore, and figures read from a stopped store.
//! - [`journal`]: the journal file (a ring of authenticated records).
//! - [`inspect`]: the offline check of a stopped store and its journal
//!   (`chappe-relay check`).
//! - [`effect`]: what a journal record holds: the envelope changes a batch made.
//! - `memtable`: journaled envelopes and acks redb does not have yet, for reads.
//! - `overlay`: the writer's view of mailbox records ahead of redb.
//! - `ops`: the changes to redb's tables, inside the applier's transaction.
//! - `reads`: fetch, listing, the full consistency [`check`](Store::check),
//!   and the writer's snapshot.
//! - `schema`: table definitions, key layouts, the journal mark, opening with
//!   a version check.
//! - `records`: value codecs (mailbox record, envelope, meta numbers).
//! - `request`: the messages between handles and the writer.
//! - [`error`]: [`StoreError`] for operators, [`RequestError`] for the wire.
//! - `config`, `stats`, `clock` (hour arithmetic), `disk` (free-space
//!   watermark).
#![forbid(unsafe_code)]

mod answers;
mod applier;
pub mod backup;
mod clock;
mod config;
mod disk;
pub mod effect;
pub mod error;
pub mod inspect;
pub mod journal;
mod memtable;
mod ops;
mod overlay;
mod reads;
mod records;
mod request;
mod schema;
mod stats;
pub mod store;
mod writer;

#[cfg(test)]
mod tests;

pub use answers::{Answered, Answers};
pub use backup::{BackupSummary, OfflineStats, Snapshot};
pub use config::{Quotas, StoreConfig};
pub use disk::{FaultAt, Faults, ReadOnly};
pub use error::{JournalLoss, RequestError, StoreError};
pub use reads::{CheckReport, MAX_PROBLEMS};
pub use request::{Enqueued, MailboxInfo, StoredEnvelope};
pub use schema::Totals;
pub use stats::StoreStats;
pub use store::{Pending, Store};
