//! The Chappe relay's mailbox store: envelopes waiting for their owner, in
//! one [redb] file.
//!
//! The relay holds ciphertext for mailboxes until the owner fetches and
//! acknowledges it, or until it expires. What the store keeps is the least
//! that job needs: no sender data, no addresses, no delivery token in clear
//! (only its digest), and no time finer than the hour an envelope expires.
//!
//! # How data moves
//!
//! ```text
//!  callers (any thread/task)                       writer thread
//!  ─────────────────────────                       ─────────────
//!  Store::enqueue / ack / create_mailbox ...
//!     │ validate what needs no disk (size, counts)
//!     │ hash the token
//!     └──► channel ──► take 1 request, then all queued (≤ max_batch)
//!                       one write txn: apply each (ops), refusals stay local
//!                       update meta totals, commit (one fsync)
//!     ◄── oneshot ◄──── answer each request
//!
//!  Store::fetch / list_mailboxes / check ──► own read txn (MVCC snapshot)
//!  Store::stats ──► atomics published by the writer after each commit
//! ```
//!
//! # Modules
//!
//! - [`store`]: the [`Store`] handle; submits writes, runs reads.
//! - `writer`: the group-commit thread and its periodic expiry sweep.
//! - `ops`: each write operation as applied inside the batch transaction,
//!   validate-then-mutate, so one refused request never stains the batch.
//! - `reads`: fetch, listing, and the full consistency [`check`](Store::check).
//! - `schema`: table definitions, key layouts, opening with a version check.
//! - `records`: value codecs (mailbox record, envelope, meta numbers).
//! - `request`: the messages between handles and the writer.
//! - [`error`]: [`StoreError`] for operators, [`RequestError`] for the wire.
//! - `config`, `stats`, `clock` (hour arithmetic), `disk` (free-space
//!   watermark).
#![forbid(unsafe_code)]

mod clock;
mod config;
mod disk;
pub mod error;
mod ops;
mod reads;
mod records;
mod request;
mod schema;
mod stats;
pub mod store;
mod writer;

#[cfg(test)]
mod tests;

pub use config::StoreConfig;
pub use error::{RequestError, StoreError};
pub use reads::{CheckReport, MAX_PROBLEMS};
pub use request::{Enqueued, MailboxInfo, StoredEnvelope};
pub use schema::Totals;
pub use stats::StoreStats;
pub use store::{Pending, Store};
