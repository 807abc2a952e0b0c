//! The two error types: [`StoreError`] for the store itself, [`RequestError`]
//! for one client request.
//!
//! They are split because they go to different people. A `StoreError` is for
//! the operator (a full disk, a damaged file, a version mismatch); a
//! `RequestError` is what the relay answers on the wire, and it must not leak
//! more than its [`ResultCode`] says. In particular "you do not own this
//! mailbox" and "no such mailbox" are the same answer, so an owner cannot
//! probe for other people's receive ids.

use std::path::PathBuf;
use std::sync::Arc;

use chappe_proto::ResultCode;
use thiserror::Error;

use crate::journal::JournalError;

/// Something went wrong with the database, not with the request.
///
/// `Clone` so that one failed commit can be reported to every request of its
/// batch; redb's own error is shared behind an `Arc` for that.
#[derive(Clone, Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[source] Arc<redb::Error>),
    #[error(
        "the store {path} has schema version {found}, but this build reads version {expected}; \
         run the chappe-relay version that wrote it, or migrate the store"
    )]
    SchemaMismatch {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error(
        "the store {path} has tables but no schema version: it was not written by chappe-relay, \
         or its meta table is damaged"
    )]
    MissingSchema { path: PathBuf },
    #[error("corrupt entry in table `{table}`: {detail}")]
    Corrupt {
        table: &'static str,
        detail: &'static str,
    },
    #[error("cannot start the store writer thread: {0}")]
    Spawn(#[source] Arc<std::io::Error>),
    #[error("the store writer has stopped")]
    WriterStopped,
    #[error("journal: {0}")]
    Journal(#[source] Arc<JournalError>),
    #[error(
        "{path} belongs to another store than the one next to it (their journal ids differ): \
         it was copied from another relay's state directory, or store.redb was restored without \
         it. Put back the pair that belongs together; or, accepting that the envelopes in it are \
         lost, move {path} away and start again (a new journal is created)"
    )]
    JournalMismatch { path: PathBuf },
    #[error(
        "{path}: record {seq} is intact but cannot be read ({detail}); it was written by a \
         different build, or the file is damaged. Nothing was changed"
    )]
    JournalRecord {
        path: PathBuf,
        seq: u64,
        detail: String,
    },
    /// The journal's chain of records breaks before its end: a record that
    /// was written and synced is damaged, and intact records follow it.
    #[error(
        "{path} is damaged at position {pos}, after record {after_seq}, and intact records \
         follow the damage: {lost}. Starting would drop them, so the relay does not start. \
         `chappe-relay check` reports the same; to start anyway, dropping them for good, \
         run `chappe-relay check --discard-damaged-journal` once, then start the relay"
    )]
    JournalDamaged {
        path: PathBuf,
        pos: u64,
        after_seq: u64,
        lost: JournalLoss,
    },
    /// The store was not shut down cleanly and its journal is gone: what it
    /// held beyond the store's mark is lost unless the file comes back.
    #[error(
        "the store was not stopped cleanly and its journal {path} is missing: it holds the \
         envelopes and acknowledgements of the last moments before the stop. Put the file back \
         (from wherever it was moved, or the backup it came with); or, accepting that they are \
         lost, run `chappe-relay check --discard-damaged-journal` once, then start the relay"
    )]
    JournalMissing { path: PathBuf },
    /// A journal in an older format still holds records to replay.
    #[error(
        "{path} is in journal format {version}, which this build does not replay, and the store \
         was not stopped cleanly, so it may hold acknowledged envelopes. Start the previous \
         chappe-relay version once and stop it cleanly (`systemctl stop`), then upgrade; or, \
         accepting their loss, run `chappe-relay check --discard-damaged-journal` once"
    )]
    JournalFormat { path: PathBuf, version: u32 },
    /// A journal or database write failed earlier; see the log for which.
    #[error(
        "the store stopped taking writes after a failed disk write (see the earlier error); \
         restart the relay once the disk is fixed: nothing acknowledged is lost"
    )]
    Failed,
    /// `chappe-relay check` reads a stopped store only.
    #[error(
        "{path} is open in a running relay; `check` reads a stopped store: stop the relay first \
         (`systemctl stop chappe-relay`)"
    )]
    StoreRunning { path: PathBuf },
    #[error("there is no store at {path}: nothing to check (check `state_dir`)")]
    NoStore { path: PathBuf },
    /// The disk is below the store's floor: no writes until there is room.
    #[error(
        "the disk holding the store is full: the store takes no writes until there is room again"
    )]
    NoSpace,
    /// Something the code guarantees did not hold; a bug, not a disk fault.
    #[error("store invariant broken: {0}")]
    Invariant(&'static str),
    #[error("{path} exists; a backup never overwrites a file: name a new one")]
    BackupExists { path: PathBuf },
    #[error("backup {path}: {source}")]
    BackupIo {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error(
        "{path} is not a backup: its journal mark says it needs a journal to be complete (it is \
         a copy of a live store.redb, not one `chappe-relay backup` wrote)"
    )]
    BackupNeedsJournal { path: PathBuf },
    #[error("the backup fails the consistency check ({problems} problems); nothing was changed")]
    BackupInconsistent { problems: usize },
    #[error(
        "{path} is open in a running relay; stop it first (`systemctl stop chappe-relay`): a \
         restore replaces the store under it"
    )]
    StoreInUse { path: PathBuf },
}

/// What the records beyond a break in the journal hold: what would be
/// lost by starting without them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalLoss {
    /// Intact batch records after the damage.
    pub records: u64,
    /// Their sequence numbers, lowest and highest.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Envelopes they stored (each one a send answered `ok`).
    pub envelopes: u64,
    /// Their ciphertext bytes.
    pub bytes: u64,
    /// Envelopes they removed (acknowledged or expired): lost, these come
    /// back and are delivered again.
    pub removed: u64,
    /// Records whose contents could not be decoded (counted, not read).
    pub undecodable: u64,
}

impl std::fmt::Display for JournalLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records (numbers {} to {}) holding {} envelopes ({} bytes of ciphertext) and \
             {} removals",
            self.records, self.first_seq, self.last_seq, self.envelopes, self.bytes, self.removed
        )?;
        if self.undecodable > 0 {
            write!(f, ", {} of the records unreadable", self.undecodable)?;
        }
        Ok(())
    }
}

impl StoreError {
    pub(crate) fn corrupt(table: &'static str, detail: &'static str) -> Self {
        StoreError::Corrupt { table, detail }
    }

    pub(crate) fn backup_io(path: &std::path::Path, source: std::io::Error) -> Self {
        StoreError::BackupIo {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }

    /// What this failure says about the disk, for a store that turns
    /// read-only on it: out of space, or anything else.
    pub(crate) fn read_only_kind(&self) -> crate::disk::ReadOnly {
        use crate::disk::ReadOnly;
        match self {
            StoreError::Journal(j) => match &**j {
                JournalError::Io { source, .. } => ReadOnly::of(source),
                _ => ReadOnly::Io,
            },
            StoreError::Db(e) => match &**e {
                redb::Error::Io(e) => ReadOnly::of(e),
                _ => ReadOnly::Io,
            },
            _ => ReadOnly::Io,
        }
    }

    pub(crate) fn journal_io(path: &std::path::Path, source: std::io::Error) -> Self {
        JournalError::Io {
            path: path.to_owned(),
            source,
        }
        .into()
    }
}

impl From<JournalError> for StoreError {
    fn from(e: JournalError) -> Self {
        StoreError::Journal(Arc::new(e))
    }
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Db(Arc::new(e))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Arc::new(redb::Error::from(e)))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Why one request was refused. Maps one-to-one onto a wire [`ResultCode`].
#[derive(Clone, Debug, Error)]
pub enum RequestError {
    /// No such mailbox, or the caller does not own it (deliberately the same).
    #[error("unknown mailbox")]
    UnknownMailbox,
    #[error("delivery token not accepted")]
    BadToken,
    #[error("mailbox quota exceeded")]
    QuotaExceeded,
    #[error("ciphertext length is not a bucket size")]
    BadSize,
    #[error("ciphertext longer than the largest bucket")]
    TooLarge,
    #[error("relay storage is full")]
    RelayFull,
    #[error("owner holds the maximum number of mailboxes")]
    TooManyMailboxes,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("store is shutting down")]
    ShuttingDown,
    /// The store failed; nothing was stored. The cause is logged where it
    /// happened and kept here for the caller's logs, never for the wire.
    #[error("internal store error: {0}")]
    Internal(StoreError),
}

impl RequestError {
    /// The code to answer on the wire.
    pub fn code(&self) -> ResultCode {
        match self {
            RequestError::UnknownMailbox => ResultCode::UnknownMailbox,
            RequestError::BadToken => ResultCode::BadToken,
            RequestError::QuotaExceeded => ResultCode::QuotaExceeded,
            RequestError::BadSize => ResultCode::BadSize,
            RequestError::TooLarge => ResultCode::TooLarge,
            RequestError::RelayFull => ResultCode::RelayFull,
            RequestError::TooManyMailboxes => ResultCode::TooManyMailboxes,
            RequestError::BadRequest(_) => ResultCode::BadRequest,
            RequestError::ShuttingDown => ResultCode::ShuttingDown,
            RequestError::Internal(_) => ResultCode::Internal,
        }
    }

    /// Wraps a store failure, logging it once here so that no `Internal`
    /// answer goes out without a trace for the operator.
    pub(crate) fn internal(e: StoreError) -> Self {
        tracing::error!(error = %e, "store request failed");
        RequestError::Internal(e)
    }

    /// The refusal [`check_len`](chappe_proto::envelope::check_len) named.
    pub(crate) fn from_len_code(code: ResultCode) -> Self {
        match code {
            ResultCode::TooLarge => RequestError::TooLarge,
            _ => RequestError::BadSize,
        }
    }
}

impl From<StoreError> for RequestError {
    fn from(e: StoreError) -> Self {
        RequestError::internal(e)
    }
}
