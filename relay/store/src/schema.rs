//! The tables, their key layouts, and opening a file with a version check.
//!
//! All keys are fixed-width byte arrays compared as bytes, with integers
//! big-endian, so byte order is numeric order and a range scan over a prefix
//! walks one mailbox (or one hour) in sequence order:
//!
//! | table        | key                                              | value            |
//! |--------------|--------------------------------------------------|------------------|
//! | `meta`       | name (`&str`)                                    | `u64` BE         |
//! | `mailboxes`  | receive id [32]                                  | mailbox record   |
//! | `send_index` | send id [32]                                     | receive id [32]  |
//! | `owner_index`| owner key [32] ‖ receive id [32]                 | `()`             |
//! | `envelopes`  | receive id [32] ‖ seq u64                        | expiry u32 ‖ ciphertext (its first part) |
//! | `envelope_parts` | receive id [32] ‖ seq u64 ‖ part u8 (from 1) | the next part of the ciphertext |
//! | `expiry`     | expiry hour u32 ‖ receive id [32] ‖ seq u64      | `()`             |
//!
//! Value layouts are in [`crate::records`], which also says when an envelope
//! is split into parts and why. `meta` holds `schema_version`, the running
//! totals `envelopes`, `bytes` (ciphertext only) and `mailboxes`, which
//! every applier transaction updates (opening a store reads three numbers
//! instead of counting a million envelopes), and the journal mark: which
//! journal file belongs to this store (`journal_id`, 16 bytes), the last
//! journal record applied (`journal_seq`), where the next one starts
//! (`journal_pos`), and whether the journal was fully applied by a clean
//! shutdown (`journal_clean`, 0 or 1).
//!
//! The `meta` table's definition must never change: it is opened first, to
//! read the version, before any table whose layout a later version might
//! alter (which would otherwise surface as an opaque type mismatch).

use std::path::Path;

use chappe_proto::{OwnerKey, ReceiveId};
use redb::{
    Builder, Database, ReadableTable, RepairSession, Table, TableDefinition, TableHandle,
    WriteTransaction,
};

use crate::error::StoreError;
use crate::records::read_u64;

/// Bumped on any change to a table definition, a value layout, or what the
/// file means on its own.
pub(crate) const SCHEMA_VERSION: u64 = 3;

/// Versions this build opens and upgrades in place.
///
/// - Version 1 had no `envelope_parts` table and kept every envelope whole
///   in `envelopes`; such an envelope still reads correctly (see
///   [`crate::records::FIRST_PART`]), so the upgrade creates the table.
/// - Version 2 had no journal: every commit of `store.redb` was durable on
///   its own. A version 3 file is the state up to its journal mark, and the
///   journal holds what came after; the upgrade writes a mark for a new,
///   empty journal.
///
/// The reverse is refused: a version 1 build would read split envelopes cut
/// short, and a version 2 build would ignore the journal, losing envelopes
/// whose senders were told they were stored.
const UPGRADES_FROM: &[u64] = &[1, 2];

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const MAILBOXES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("mailboxes");
pub(crate) const SEND_INDEX: TableDefinition<&[u8; 32], &[u8; 32]> =
    TableDefinition::new("send_index");
pub(crate) const OWNER_INDEX: TableDefinition<&[u8; 64], ()> = TableDefinition::new("owner_index");
pub(crate) const ENVELOPES: TableDefinition<&[u8; 40], &[u8]> = TableDefinition::new("envelopes");
pub(crate) const ENVELOPE_PARTS: TableDefinition<&[u8; 41], &[u8]> =
    TableDefinition::new("envelope_parts");
pub(crate) const EXPIRY: TableDefinition<&[u8; 44], ()> = TableDefinition::new("expiry");

pub(crate) const META_VERSION: &str = "schema_version";
const META_ENVELOPES: &str = "envelopes";
const META_BYTES: &str = "bytes";
const META_MAILBOXES: &str = "mailboxes";
const META_JOURNAL_ID: &str = "journal_id";
const META_JOURNAL_SEQ: &str = "journal_seq";
const META_JOURNAL_POS: &str = "journal_pos";
const META_JOURNAL_CLEAN: &str = "journal_clean";

/// How far the journal has been applied to this file (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JournalMark {
    pub id: [u8; 16],
    pub seq: u64,
    pub pos: u64,
    pub clean: bool,
}

/// Store-wide counts, as kept in `meta`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub envelopes: u64,
    /// Ciphertext bytes (envelope headers and redb overhead not included).
    pub bytes: u64,
    pub mailboxes: u64,
}

/// Reads the totals from any view of the `meta` table (missing = 0).
pub(crate) fn read_totals(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Totals, StoreError> {
    let get = |name: &str| -> Result<u64, StoreError> {
        match meta.get(name)? {
            Some(v) => read_u64(v.value()),
            None => Ok(0),
        }
    };
    Ok(Totals {
        envelopes: get(META_ENVELOPES)?,
        bytes: get(META_BYTES)?,
        mailboxes: get(META_MAILBOXES)?,
    })
}

pub(crate) fn write_totals(
    meta: &mut Table<'_, &'static str, &'static [u8]>,
    t: &Totals,
) -> Result<(), StoreError> {
    meta.insert(META_ENVELOPES, t.envelopes.to_be_bytes().as_slice())?;
    meta.insert(META_BYTES, t.bytes.to_be_bytes().as_slice())?;
    meta.insert(META_MAILBOXES, t.mailboxes.to_be_bytes().as_slice())?;
    Ok(())
}

pub(crate) fn write_mark(
    meta: &mut Table<'_, &'static str, &'static [u8]>,
    m: &JournalMark,
) -> Result<(), StoreError> {
    meta.insert(META_JOURNAL_ID, m.id.as_slice())?;
    meta.insert(META_JOURNAL_SEQ, m.seq.to_be_bytes().as_slice())?;
    meta.insert(META_JOURNAL_POS, m.pos.to_be_bytes().as_slice())?;
    meta.insert(
        META_JOURNAL_CLEAN,
        u64::from(m.clean).to_be_bytes().as_slice(),
    )?;
    Ok(())
}

/// The mark, if this file has one (version 3 files always do once opened).
pub(crate) fn read_mark(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<JournalMark>, StoreError> {
    let Some(id) = meta.get(META_JOURNAL_ID)? else {
        return Ok(None);
    };
    let id = <[u8; 16]>::try_from(id.value())
        .map_err(|_| StoreError::corrupt("meta", "journal id is not 16 bytes"))?;
    let num = |name: &str| -> Result<u64, StoreError> {
        match meta.get(name)? {
            Some(v) => read_u64(v.value()),
            None => Err(StoreError::corrupt("meta", "journal mark is incomplete")),
        }
    };
    Ok(Some(JournalMark {
        id,
        seq: num(META_JOURNAL_SEQ)?,
        pos: num(META_JOURNAL_POS)?,
        clean: num(META_JOURNAL_CLEAN)? != 0,
    }))
}

/// What [`open`] found.
pub(crate) struct Opened {
    pub db: Database,
    pub totals: Totals,
    /// `None` for a new file or one upgraded from version 1 or 2.
    pub mark: Option<JournalMark>,
}

/// Opens (or creates) the file, checks or writes the schema version, makes
/// sure every table exists, and returns the totals and journal mark kept in
/// `meta`.
pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<Opened, StoreError> {
    open_with(path, cache_bytes, &crate::disk::Faults::default())
}

/// [`open`], with faults to inject into redb's file (tests).
pub(crate) fn open_with(
    path: &Path,
    cache_bytes: usize,
    faults: &crate::disk::Faults,
) -> Result<Opened, StoreError> {
    let mut builder = Builder::new();
    builder
        .set_cache_size(cache_bytes)
        .set_repair_callback(log_repair);
    let db = crate::disk::create_db(&builder, path, faults)?;
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    let others = txn
        .list_tables()?
        .filter(|t| t.name() != META.name())
        .count();
    let mut upgraded = false;
    let (totals, mark) = {
        let mut meta = txn.open_table(META)?;
        let found = match meta.get(META_VERSION)? {
            Some(v) => Some(read_u64(v.value())?),
            None => None,
        };
        match found {
            Some(SCHEMA_VERSION) => {}
            Some(old) if UPGRADES_FROM.contains(&old) => {
                tracing::info!(
                    from = old,
                    to = SCHEMA_VERSION,
                    "upgrading the store's schema in place"
                );
                meta.insert(META_VERSION, SCHEMA_VERSION.to_be_bytes().as_slice())?;
                upgraded = true;
            }
            Some(found) => {
                return Err(StoreError::SchemaMismatch {
                    path: path.to_owned(),
                    found,
                    expected: SCHEMA_VERSION,
                });
            }
            None if others > 0 => {
                return Err(StoreError::MissingSchema {
                    path: path.to_owned(),
                });
            }
            None => {
                meta.insert(META_VERSION, SCHEMA_VERSION.to_be_bytes().as_slice())?;
                write_totals(&mut meta, &Totals::default())?;
            }
        }
        (read_totals(&meta)?, read_mark(&meta)?)
    };
    if others == TABLES && !upgraded {
        // Nothing to create. Committing anyway would replace the commit the
        // last clean shutdown left, which holds redb's allocator state, with
        // one that does not: a crash before the first real write would then
        // cost a full repair.
        txn.abort()?;
    } else {
        open_all(&txn)?;
        txn.commit()?;
    }
    Ok(Opened { db, totals, mark })
}

/// Tables besides `meta` that [`open_all`] creates.
const TABLES: usize = 6;

/// redb calls this while it repairs a file that was not closed cleanly (the
/// relay was killed or the machine lost power). The repair reads the whole
/// file before the relay can serve, so say so, and how far it is: on a large
/// store it takes seconds to minutes.
fn log_repair(session: &mut RepairSession) {
    let percent = (session.progress() * 100.0).clamp(0.0, 100.0);
    tracing::warn!(
        percent = format_args!("{percent:.0}"),
        "store was not closed cleanly; checking and repairing it before serving"
    );
}

fn open_all(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(MAILBOXES)?;
    txn.open_table(SEND_INDEX)?;
    txn.open_table(OWNER_INDEX)?;
    txn.open_table(ENVELOPES)?;
    txn.open_table(ENVELOPE_PARTS)?;
    txn.open_table(EXPIRY)?;
    Ok(())
}

/// Concatenates `parts` into a fixed-size key (the sizes are constants at
/// every call site, so nothing is truncated or left zero).
fn key<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut k = [0u8; N];
    for (dst, src) in k.iter_mut().zip(parts.iter().flat_map(|p| p.iter())) {
        *dst = *src;
    }
    k
}

pub(crate) fn envelope_key(id: &ReceiveId, seq: u64) -> [u8; 40] {
    key(&[&id.0, &seq.to_be_bytes()])
}

pub(crate) fn split_envelope_key(k: &[u8; 40]) -> (ReceiveId, u64) {
    let [id @ .., s0, s1, s2, s3, s4, s5, s6, s7] = *k;
    (
        ReceiveId(id),
        u64::from_be_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
    )
}

pub(crate) fn part_key(id: &ReceiveId, seq: u64, part: u8) -> [u8; 41] {
    key(&[&id.0, &seq.to_be_bytes(), &[part]])
}

/// Every part key of envelopes `from..=to` of one mailbox.
pub(crate) fn part_range(id: &ReceiveId, from: u64, to: u64) -> ([u8; 41], [u8; 41]) {
    (part_key(id, from, 0), part_key(id, to, u8::MAX))
}

pub(crate) fn split_part_key(k: &[u8; 41]) -> (ReceiveId, u64, u8) {
    let [env @ .., part] = *k;
    let (id, seq) = split_envelope_key(&env);
    (id, seq, part)
}

pub(crate) fn expiry_key(hour: u32, id: &ReceiveId, seq: u64) -> [u8; 44] {
    key(&[&hour.to_be_bytes(), &id.0, &seq.to_be_bytes()])
}

pub(crate) fn split_expiry_key(k: &[u8; 44]) -> (u32, ReceiveId, u64) {
    let [h0, h1, h2, h3, rest @ ..] = *k;
    let (id, seq) = split_envelope_key(&rest);
    (u32::from_be_bytes([h0, h1, h2, h3]), id, seq)
}

pub(crate) fn owner_key(owner: &OwnerKey, id: &ReceiveId) -> [u8; 64] {
    key(&[&owner.0, &id.0])
}

/// The receive id half of an `owner_index` key.
pub(crate) fn owner_key_mailbox(k: &[u8; 64]) -> ReceiveId {
    let [_, _, _, _, _, _, _, _, rest @ ..] = *k;
    let [_, _, _, _, _, _, _, _, rest @ ..] = rest;
    let [_, _, _, _, _, _, _, _, rest @ ..] = rest;
    let [_, _, _, _, _, _, _, _, id @ ..] = rest;
    ReceiveId(id)
}

/// First and last `owner_index` key of one owner.
pub(crate) fn owner_range(owner: &OwnerKey) -> ([u8; 64], [u8; 64]) {
    (
        owner_key(owner, &ReceiveId([0; 32])),
        owner_key(owner, &ReceiveId([0xff; 32])),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back() {
        let id = ReceiveId([3; 32]);
        assert_eq!(split_envelope_key(&envelope_key(&id, 9)), (id, 9));
        assert_eq!(split_expiry_key(&expiry_key(5, &id, 9)), (5, id, 9));
        let owner = OwnerKey([4; 32]);
        assert_eq!(owner_key_mailbox(&owner_key(&owner, &id)), id);
        assert!(envelope_key(&id, 1) < envelope_key(&id, 256));
        assert!(expiry_key(1, &ReceiveId([9; 32]), 9) < expiry_key(2, &id, 0));
        assert_eq!(split_part_key(&part_key(&id, 9, 2)), (id, 9, 2));
        let (lo, hi) = part_range(&id, 9, 9);
        assert!(lo < part_key(&id, 9, 1) && part_key(&id, 9, 2) <= hi);
        assert!(hi < part_key(&id, 10, 0) && part_key(&id, 8, u8::MAX) < lo);
    }
}
