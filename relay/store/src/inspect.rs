//! The offline check of a stopped store: `store.redb` recounted and
//! cross-checked ([`reads::check`]), and `store.journal` read from the
//! store's mark exactly as the next start would read it
//! ([`examine`](crate::store::examine)), changing nothing. What
//! `chappe-relay check` prints.

use std::fmt;
use std::path::Path;

use redb::{ReadOnlyDatabase, ReadableDatabase};

use crate::config::StoreConfig;
use crate::error::{JournalLoss, StoreError};
use crate::reads::{self, CheckReport};
use crate::schema::{self, SCHEMA_VERSION};
use crate::store::{Examined, examine, loss_of_units};

/// What the check found.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// `store.redb`'s schema version.
    pub schema_version: u64,
    /// `store.redb` alone: its totals against a recount, its indexes.
    pub store: CheckReport,
    pub journal: JournalState,
}

/// The journal as the next start would find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalState {
    /// The store has no journal mark (new, or from before the journal): a
    /// new journal is made at the start; `stray` if a file is there.
    Unmarked { stray: bool },
    /// No journal file. After a clean stop nothing is lost (a new one is
    /// made); after an unclean one the start refuses.
    Missing { clean: bool },
    /// The journal next to the store belongs to another store.
    Mismatch,
    /// A journal of an older format: replaced after a clean stop, refused
    /// after an unclean one.
    OldFormat { version: u32, clean: bool },
    /// The records after the mark form an unbroken chain (`replay`, which
    /// the next start applies; after a torn last record, the chain ends
    /// before it, as it should).
    Intact { clean: bool, replay: JournalLoss },
    /// The chain breaks at `pos`, after record `after_seq`, and intact
    /// records follow the break: the start refuses; discarding drops
    /// `lost`.
    Damaged {
        pos: u64,
        after_seq: u64,
        replay: JournalLoss,
        lost: JournalLoss,
    },
}

impl Inspection {
    /// Whether anything needs the operator: the store would not start, or
    /// `store.redb` disagrees with itself.
    pub fn has_problems(&self) -> bool {
        !self.store.is_consistent()
            || self.schema_version != SCHEMA_VERSION
            || matches!(
                self.journal,
                JournalState::Missing { clean: false }
                    | JournalState::Mismatch
                    | JournalState::OldFormat { clean: false, .. }
                    | JournalState::Damaged { .. }
            )
    }
}

/// Checks the stopped store of `cfg`. Refused while a relay has it open
/// (redb's lock says so).
pub fn inspect(cfg: &StoreConfig) -> Result<Inspection, StoreError> {
    let path = &cfg.path;
    if !path.exists() {
        return Err(StoreError::NoStore { path: path.clone() });
    }
    let db = match ReadOnlyDatabase::open(path) {
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(StoreError::StoreRunning { path: path.clone() });
        }
        other => other?,
    };
    let (schema_version, mark) = {
        let txn = db.begin_read()?;
        let meta = txn.open_table(schema::META)?;
        let version = match meta.get(schema::META_VERSION)? {
            Some(v) => crate::records::read_u64(v.value())?,
            None => 0,
        };
        (version, schema::read_mark(&meta)?)
    };
    let store = reads::check(&db)?;
    let journal = match examine(&cfg.journal_path(), mark)? {
        Examined::Unmarked { stray } => JournalState::Unmarked { stray },
        Examined::Missing { clean } => JournalState::Missing { clean },
        Examined::Mismatch => JournalState::Mismatch,
        Examined::OldFormat { version, clean } => JournalState::OldFormat { version, clean },
        Examined::Read(r) => {
            let replay = loss_of_units(&r.units);
            match r.damage {
                None => JournalState::Intact {
                    clean: r.mark.clean,
                    replay,
                },
                Some((lost, _)) => JournalState::Damaged {
                    pos: r.head,
                    after_seq: r.last_seq,
                    replay,
                    lost,
                },
            }
        }
    };
    Ok(Inspection {
        schema_version,
        store,
        journal,
    })
}

/// A human-readable report, one finding a line.
pub struct Report<'a> {
    pub inspection: &'a Inspection,
    pub store: &'a Path,
    pub journal: &'a Path,
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = self.inspection;
        let (s, j) = (self.store.display(), self.journal.display());
        let c = &i.store.counted;
        writeln!(
            f,
            "{s}: schema version {}{}; {} mailboxes, {} envelopes, {} bytes of ciphertext",
            i.schema_version,
            if i.schema_version == SCHEMA_VERSION {
                ""
            } else {
                " (not this build's)"
            },
            c.mailboxes,
            c.envelopes,
            c.bytes
        )?;
        if i.store.is_consistent() {
            writeln!(
                f,
                "{s}: consistent (totals and indexes agree with a recount)"
            )?;
        } else {
            let r = &i.store.recorded;
            writeln!(
                f,
                "{s}: INCONSISTENT: records say {} mailboxes, {} envelopes, {} bytes",
                r.mailboxes, r.envelopes, r.bytes
            )?;
            for p in &i.store.problems {
                writeln!(f, "  {p}")?;
            }
        }
        match &i.journal {
            JournalState::Unmarked { stray: false } => {
                writeln!(f, "{j}: none yet (made at the next start)")?
            }
            JournalState::Unmarked { stray: true } => writeln!(
                f,
                "{j}: belongs to no store (the store has no journal mark); replaced at the next \
                 start"
            )?,
            JournalState::Missing { clean: true } => writeln!(
                f,
                "{j}: missing after a clean stop: nothing is lost, a new one is made at the next \
                 start"
            )?,
            JournalState::Missing { clean: false } => writeln!(
                f,
                "{j}: MISSING after an unclean stop: what it held beyond the store's last \
                 checkpoint is lost unless the file comes back; the start refuses"
            )?,
            JournalState::Mismatch => writeln!(
                f,
                "{j}: BELONGS TO ANOTHER STORE (the journal ids differ); the start refuses"
            )?,
            JournalState::OldFormat { version, clean } => writeln!(
                f,
                "{j}: format version {version}, older than this build's; {}",
                if *clean {
                    "fully applied by a clean stop, replaced at the next start"
                } else {
                    "NOT STOPPED CLEANLY: this build cannot replay it; the start refuses"
                }
            )?,
            JournalState::Intact { clean, replay } => {
                if *clean && replay.records == 0 {
                    writeln!(f, "{j}: stopped cleanly, nothing to replay")?
                } else {
                    writeln!(f, "{j}: intact; the next start replays {replay}")?
                }
            }
            JournalState::Damaged {
                pos,
                after_seq,
                replay,
                lost,
            } => {
                writeln!(
                    f,
                    "{j}: DAMAGED at position {pos}, after record {after_seq}; intact records \
                     follow the damage, so the start refuses"
                )?;
                writeln!(f, "  before the damage, replayed: {replay}")?;
                writeln!(f, "  after the damage, lost if discarded: {lost}")?;
            }
        }
        Ok(())
    }
}
