//! Online backup, its verification before a restore, and the figures an
//! operator reads from a stopped store.
//!
//! redb locks its file, so no other process can read the store while the
//! relay serves; a backup is made *by* the relay. [`Store::snapshot`]
//! first waits until everything journaled before the call is in redb (the
//! same barrier as [`Store::flush`]), then opens one redb read
//! transaction. Every redb commit holds a prefix of the journal, so the
//! snapshot is the store as of one instant: it has every send answered
//! before the backup began, nothing answered after the snapshot was
//! taken, and, for the sends in between, per mailbox, the ones up to some
//! point. (An envelope whose owner acknowledged it within the applier's
//! hold window after that instant may be absent although it was stored
//! then: the applier drops a put its remove caught up with, and the owner
//! already has the envelope.) The writer keeps committing
//! meanwhile; redb readers never block it.
//!
//! [`Snapshot::write`] copies every table into a new redb file rather
//! than copying the live file's pages: the copy is compact (no free
//! pages, no pending repair), and it is self-contained. Its journal mark
//! says "fully applied, shut down cleanly" with a new journal id, so a
//! relay opening it starts a new, empty journal, and refuses (instead of
//! replaying) any other store's journal left next to it.
//!
//! [`Store::snapshot`]: crate::Store::snapshot
//! [`Store::flush`]: crate::Store::flush

use std::fs::File;
use std::path::{Path, PathBuf};

use redb::{
    Builder, Database, Durability, Key, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    ReadableTable, TableDefinition, Value, WriteTransaction,
};

use crate::error::StoreError;
use crate::journal::Journal;
use crate::reads::{self, CheckReport};
use crate::schema::{self, JournalMark, Totals};

/// The store as of one instant, held open for copying.
pub struct Snapshot {
    txn: ReadTransaction,
}

/// What [`Snapshot::write`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    pub totals: Totals,
    /// Size of the copy on disk.
    pub file_bytes: u64,
}

impl Snapshot {
    pub(crate) fn begin(db: &Database) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            txn: db.begin_read()?,
        })
    }

    /// The totals `meta` records as of the snapshot.
    pub fn totals(&self) -> Result<Totals, StoreError> {
        schema::read_totals(&self.txn.open_table(schema::META)?)
    }

    /// The hour (since the Unix epoch) the oldest envelope expires.
    pub fn oldest_expiry_hour(&self) -> Result<Option<u32>, StoreError> {
        match self.txn.open_table(schema::EXPIRY) {
            Ok(t) => Ok(t
                .first()?
                .map(|(k, _)| schema::split_expiry_key(k.value()).0)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the snapshot as a new store file at `dest`, which must not
    /// exist: first to `dest` with a `.partial` suffix, synced, then
    /// renamed, and the directory synced, so `dest` is either absent or
    /// complete. Blocking; reads the whole store.
    pub fn write(&self, dest: &Path) -> Result<BackupSummary, StoreError> {
        if dest.exists() {
            return Err(StoreError::BackupExists {
                path: dest.to_owned(),
            });
        }
        let partial = partial_path(dest);
        // A leftover from an interrupted backup is ours to replace.
        match std::fs::remove_file(&partial) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::backup_io(&partial, e));
            }
            _ => {}
        }
        let result = self.copy_into(&partial).and_then(|totals| {
            std::fs::rename(&partial, dest).map_err(|e| StoreError::backup_io(dest, e))?;
            sync_dir(dest)?;
            let file_bytes = std::fs::metadata(dest)
                .map_err(|e| StoreError::backup_io(dest, e))?
                .len();
            Ok(BackupSummary { totals, file_bytes })
        });
        if result.is_err() {
            drop(std::fs::remove_file(&partial));
        }
        result
    }

    fn copy_into(&self, path: &Path) -> Result<Totals, StoreError> {
        let db = Builder::new().create(path)?;
        let mut out = db.begin_write()?;
        out.set_durability(Durability::Immediate)?;
        let src = &self.txn;
        copy(src, &out, schema::META)?;
        copy(src, &out, schema::MAILBOXES)?;
        copy(src, &out, schema::SEND_INDEX)?;
        copy(src, &out, schema::OWNER_INDEX)?;
        copy(src, &out, schema::ENVELOPES)?;
        copy(src, &out, schema::ENVELOPE_PARTS)?;
        copy(src, &out, schema::EXPIRY)?;
        let totals = {
            let mut meta = out.open_table(schema::META)?;
            let seq = schema::read_mark(&meta)?.map_or(0, |m| m.seq);
            let mut id = [0u8; 16];
            aws_lc_rs::rand::fill(&mut id)
                .map_err(|_| StoreError::Invariant("no randomness for a journal id"))?;
            let mark = JournalMark {
                id,
                seq,
                pos: 0,
                clean: true,
            };
            schema::write_mark(&mut meta, &mark)?;
            schema::read_totals(&meta)?
        };
        out.commit()?;
        drop(db);
        // redb synced its commit; this also covers the file's length.
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::backup_io(path, e))?;
        Ok(totals)
    }
}

fn copy<K: Key + 'static, V: Value + 'static>(
    src: &ReadTransaction,
    dst: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    let from = src.open_table(def)?;
    let mut to = dst.open_table(def)?;
    for row in from.iter()? {
        let (k, v) = row?;
        to.insert(k.value(), v.value())?;
    }
    Ok(())
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// Makes a rename in `file`'s directory durable.
fn sync_dir(file: &Path) -> Result<(), StoreError> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::backup_io(dir, e))
}

/// Checks a backup before it replaces a store: it opens as a store of
/// this schema, its journal mark says it needs no journal, and the full
/// consistency check finds nothing. Takes the file's lock, and may add
/// tables a file from an older version lacks; run it on a copy.
pub fn verify_backup(path: &Path) -> Result<CheckReport, StoreError> {
    let schema::Opened { db, mark, .. } = schema::open(path, 16 << 20)?;
    if !mark.is_some_and(|m| m.clean) {
        return Err(StoreError::BackupNeedsJournal {
            path: path.to_owned(),
        });
    }
    reads::check(&db)
}

/// What a stopped store holds, read without changing a byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfflineStats {
    /// As recorded in redb (the journal's unapplied records not included).
    pub totals: Totals,
    /// The hour (since the Unix epoch) the oldest envelope in redb expires.
    pub oldest_expiry_hour: Option<u32>,
    /// Journal bytes not yet applied to redb: the next start replays them.
    pub journal_bytes: u64,
    /// The journal's ring size.
    pub journal_capacity: u64,
}

/// Reads the figures of the store at `path` with its journal at
/// `journal`, both closed. Refused while a relay has the store open (redb
/// holds its lock) and when the store needs the repair only a relay's
/// start does.
pub fn offline_stats(path: &Path, journal: &Path) -> Result<OfflineStats, StoreError> {
    let db = ReadOnlyDatabase::open(path)?;
    let snap = Snapshot {
        txn: db.begin_read()?,
    };
    let mark = schema::read_mark(&snap.txn.open_table(schema::META)?)?;
    let (mut journal_bytes, mut journal_capacity) = (0, 0);
    if let (Some(mark), Some(j)) = (mark, Journal::open(journal)?) {
        journal_capacity = j.ring();
        if j.id() == mark.id {
            let mut scan = j.scan(mark.pos, mark.seq);
            for rec in scan.by_ref() {
                rec.map_err(|e| StoreError::journal_io(journal, e))?;
            }
            journal_bytes = scan.position().saturating_sub(mark.pos);
        }
    }
    Ok(OfflineStats {
        totals: snap.totals()?,
        oldest_expiry_hour: snap.oldest_expiry_hour()?,
        journal_bytes,
        journal_capacity,
    })
}

/// What [`install`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub report: CheckReport,
    /// Where the replaced store and journal went, if there were any.
    pub aside: Option<PathBuf>,
}

/// Restores a backup read from `src` as the store at `store` (journal at
/// `journal`), both closed: copies it next to the store, verifies the copy
/// ([`verify_backup`]), then moves the current store and its journal into
/// a new directory `aside` and renames the copy into place. Nothing is
/// deleted: a bad backup leaves the current store as it was, and the
/// replaced one stays in `aside` until the operator removes it. Files are
/// created with the caller's owner and umask; run it as the relay's user.
pub fn install(
    src: &mut impl std::io::Read,
    store: &Path,
    journal: &Path,
    aside: &Path,
) -> Result<Installed, StoreError> {
    // Absent, or needing the repair a start does: replaced either way.
    if let Err(redb::DatabaseError::DatabaseAlreadyOpen) = ReadOnlyDatabase::open(store) {
        return Err(StoreError::StoreInUse {
            path: store.to_owned(),
        });
    }
    let incoming = partial_path(store);
    let result = (|| {
        let mut f = File::create(&incoming).map_err(|e| StoreError::backup_io(&incoming, e))?;
        std::io::copy(src, &mut f)
            .and_then(|_| f.sync_all())
            .map_err(|e| StoreError::backup_io(&incoming, e))?;
        drop(f);
        let report = verify_backup(&incoming)?;
        if !report.is_consistent() {
            return Err(StoreError::BackupInconsistent {
                problems: report.problems.len(),
            });
        }
        let mut moved = false;
        for file in [store, journal] {
            if file.exists() {
                if !moved {
                    std::fs::create_dir(aside).map_err(|e| StoreError::backup_io(aside, e))?;
                    moved = true;
                }
                let name = file.file_name().unwrap_or(file.as_os_str());
                std::fs::rename(file, aside.join(name))
                    .map_err(|e| StoreError::backup_io(file, e))?;
            }
        }
        std::fs::rename(&incoming, store).map_err(|e| StoreError::backup_io(store, e))?;
        sync_dir(store)?;
        Ok(Installed {
            report,
            aside: moved.then(|| aside.to_owned()),
        })
    })();
    if result.is_err() {
        drop(std::fs::remove_file(&incoming));
    }
    result
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use chappe_proto::OwnerKey;

    use super::*;
    use crate::clock::Clock;
    use crate::tests::{Fixture, config, mailbox};
    use crate::{Store, StoreError};

    fn body(i: u8) -> Bytes {
        Bytes::from(vec![i; 1024])
    }

    /// The copy holds what was answered before the snapshot and nothing
    /// after, opens with no journal, and restores as a whole store.
    #[tokio::test]
    async fn a_snapshot_is_one_instant_and_restores() {
        let f = Fixture::new(|_| {});
        let owner = OwnerKey([7; 32]);
        let mb = mailbox(&f.store, owner).await;
        for i in 0..5 {
            f.store
                .enqueue(mb.info.send_id, mb.token, body(i))
                .await
                .unwrap();
        }
        let snap = f.store.snapshot().await.unwrap();
        // Answered after the snapshot: must not be in the copy.
        for i in 5..9 {
            f.store
                .enqueue(mb.info.send_id, mb.token, body(i))
                .await
                .unwrap();
        }
        let dest = f.dir.path().join("copy.redb");
        let summary = snap.write(&dest).unwrap();
        drop(snap);
        assert_eq!(summary.totals.envelopes, 5);
        assert_eq!(summary.totals.bytes, 5 * 1024);
        assert!(!partial_path(&dest).exists());
        assert!(matches!(
            snap_again(&f.store).await.write(&dest),
            Err(StoreError::BackupExists { .. })
        ));

        let report = verify_backup(&copy_of(&dest)).unwrap();
        assert!(report.is_consistent(), "{report:#?}");

        // Restore into a new directory holding a store of its own.
        let other = tempfile::TempDir::new().unwrap();
        let cfg = config(&other);
        let old = Store::open(cfg.clone()).unwrap();
        mailbox(&old, OwnerKey([9; 32])).await;
        let mut src = File::open(&dest).unwrap();
        assert!(matches!(
            install(
                &mut src,
                &cfg.path,
                &cfg.journal_path(),
                &other.path().join("aside")
            ),
            Err(StoreError::StoreInUse { .. })
        ));
        old.shutdown().await;
        drop(old);
        let mut src = File::open(&dest).unwrap();
        let aside = other.path().join("aside");
        let done = install(&mut src, &cfg.path, &cfg.journal_path(), &aside).unwrap();
        assert_eq!(done.aside.as_deref(), Some(aside.as_path()));
        assert!(aside.join("store.redb").exists() && aside.join("store.journal").exists());

        // The fixture's clock: its envelopes expire by it.
        let restored = Store::open_with_clock(cfg, Clock::Manual(f.clock.clone())).unwrap();
        let got = restored
            .fetch(owner, mb.info.receive_id, 0, 100, usize::MAX)
            .unwrap();
        let firsts: Vec<_> = got.iter().map(|e| e.ciphertext.first().copied()).collect();
        assert_eq!(firsts, (0..5).map(Some).collect::<Vec<_>>());
        assert!(got.iter().all(|e| e.ciphertext == body(e.ciphertext[0])));
        let s = restored.stats();
        assert_eq!((s.envelopes, s.mailboxes), (5, 1));
        // Sends go on where the copy ended.
        restored
            .enqueue(mb.info.send_id, mb.token, body(42))
            .await
            .unwrap();
    }

    /// A `store.redb` taken from a live relay is not a backup: without
    /// its journal it may lack acknowledged envelopes.
    #[tokio::test]
    async fn a_live_store_file_is_not_a_backup() {
        let f = Fixture::new(|_| {});
        mailbox(&f.store, OwnerKey([7; 32])).await;
        let copy = f.dir.path().join("live-copy.redb");
        std::fs::copy(f.dir.path().join("store.redb"), &copy).unwrap();
        assert!(matches!(
            verify_backup(&copy),
            Err(StoreError::BackupNeedsJournal { .. })
        ));
    }

    /// Offline figures of a stopped store.
    #[tokio::test]
    async fn offline_stats_read_a_stopped_store() {
        let f = Fixture::new(|_| {});
        let mb = mailbox(&f.store, OwnerKey([7; 32])).await;
        for i in 0..3 {
            f.store
                .enqueue(mb.info.send_id, mb.token, body(i))
                .await
                .unwrap();
        }
        let path = f.dir.path().join("store.redb");
        let cfg = config(&f.dir);
        assert!(offline_stats(&path, &cfg.journal_path()).is_err(), "open");
        let Fixture { dir, store, .. } = f;
        store.shutdown().await;
        drop(store);
        let st = offline_stats(&path, &cfg.journal_path()).unwrap();
        assert_eq!(
            (st.totals.envelopes, st.totals.bytes, st.totals.mailboxes),
            (3, 3 * 1024, 1)
        );
        assert!(st.oldest_expiry_hour.is_some());
        assert_eq!((st.journal_bytes, st.journal_capacity), (0, 1 << 20));
        drop(dir);
    }

    async fn snap_again(store: &Store) -> Snapshot {
        store.snapshot().await.unwrap()
    }

    /// verify_backup takes the file's lock and may add tables: on a copy.
    fn copy_of(p: &Path) -> PathBuf {
        let c = p.with_extension("check");
        std::fs::copy(p, &c).unwrap();
        c
    }
}
