//! Reads, done in the caller's thread in their own read transaction.
//!
//! redb gives every read transaction a consistent snapshot without locking
//! out the applier, so fetches and listings need no lock of ours on the
//! database and never wait for a commit. What the journal holds and redb
//! does not yet comes from the [`MemTable`], looked at *before* the redb
//! snapshot is taken (its module says why that order is enough).
//!
//! [`View`] is the writer's own snapshot, for what it must look up in redb
//! to decide a request.

use std::collections::HashMap;
use std::ops::Bound;

use bytes::{Bytes, BytesMut};
use chappe_proto::envelope::MAX_CIPHERTEXT;
use chappe_proto::{OwnerKey, ReceiveId, SendId};
use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata,
};

use crate::clock::is_expired;
use crate::error::{RequestError, StoreError};
use crate::memtable::{MemTable, Slot};
use crate::ops::Fail;
use crate::records::{MailboxRecord, byte_len, may_have_parts, read_envelope, stored_len};
use crate::request::StoredEnvelope;
use crate::schema::{
    self, ENVELOPE_PARTS, ENVELOPES, EXPIRY, MAILBOXES, META, OWNER_INDEX, SEND_INDEX, Totals,
    envelope_key, expiry_key, owner_key, owner_key_mailbox, owner_range, part_range,
    split_envelope_key, split_expiry_key, split_part_key,
};

/// A stored envelope as a fetch reads it: its number, and its expiry hour
/// and ciphertext unless the value is damaged.
type Row = (u64, Option<(u32, Bytes)>);

pub(crate) struct FetchArgs {
    pub owner: OwnerKey,
    pub id: ReceiveId,
    pub from_seq: u64,
    pub max_count: usize,
    pub max_bytes: usize,
    pub now_hour: u32,
}

pub(crate) fn fetch(
    db: &Database,
    mem: &MemTable,
    a: &FetchArgs,
) -> Result<Vec<StoredEnvelope>, RequestError> {
    fetch_inner(db, mem, a).map_err(|f| match f {
        Fail::Refuse(e) => e,
        Fail::Abort(e) => RequestError::internal(e),
    })
}

fn fetch_inner(db: &Database, mem: &MemTable, a: &FetchArgs) -> Result<Vec<StoredEnvelope>, Fail> {
    // First the memtable, then the snapshot: see the module doc.
    let recent = mem.snapshot(&a.id, a.from_seq, a.max_count);
    let txn = db.begin_read().map_err(StoreError::from)?;
    let mailboxes = txn.open_table(MAILBOXES).map_err(StoreError::from)?;
    let owned = match mailboxes.get(&a.id.0)? {
        Some(v) => MailboxRecord::decode(v.value())?.owner == a.owner,
        None => false,
    };
    if !owned {
        return Err(RequestError::UnknownMailbox.into());
    }
    let envelopes = txn.open_table(ENVELOPES).map_err(StoreError::from)?;
    let parts = txn.open_table(ENVELOPE_PARTS).map_err(StoreError::from)?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    if a.max_count == 0 {
        return Ok(out);
    }
    let (lo, hi) = (
        envelope_key(&a.id, a.from_seq),
        envelope_key(&a.id, u64::MAX),
    );
    let mut disk = envelopes.range::<&[u8; 40]>(&lo..=&hi)?;
    let mut recent = recent.into_iter();
    let mut next_disk = || -> Result<Option<Row>, StoreError> {
        let Some(row) = disk.next() else {
            return Ok(None);
        };
        let (k, v) = row?;
        let seq = split_envelope_key(k.value()).1;
        let whole = read_envelope(v.value()).and_then(|(expiry, first)| {
            Ok((expiry, join_parts(&parts, &a.id, seq, v.value(), first)?))
        });
        match whole {
            Ok(e) => Ok(Some((seq, Some(e)))),
            Err(e) => {
                // Skipped rather than failing the fetch, so one damaged
                // envelope cannot wedge its mailbox; the owner may ack it.
                tracing::warn!(seq, error = %e, "skipping a damaged envelope");
                Ok(Some((seq, None)))
            }
        }
    };
    let mut d = next_disk()?;
    let mut m = recent.next();
    loop {
        let from_disk = match (&d, &m) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((ds, _)), Some((ms, _))) => ds < ms,
        };
        let (seq, found) = if from_disk {
            let Some(next) = d.take() else { break };
            d = next_disk()?;
            next
        } else {
            let Some((seq, slot)) = m.take() else { break };
            m = recent.next();
            // The memtable has the last word on a number it holds.
            if d.as_ref().is_some_and(|(ds, _)| *ds == seq) {
                d = next_disk()?;
            }
            match slot {
                Slot::Live { expiry, ciphertext } => (seq, Some((expiry, ciphertext))),
                Slot::Gone => (seq, None),
            }
        };
        let Some((expiry, ct)) = found else {
            continue;
        };
        if is_expired(expiry, a.now_hour) {
            continue;
        }
        // Always at least one envelope, so a small byte budget still moves.
        if !out.is_empty() && bytes.saturating_add(ct.len()) > a.max_bytes {
            break;
        }
        bytes = bytes.saturating_add(ct.len());
        out.push(StoredEnvelope {
            seq,
            ciphertext: ct,
        });
        if out.len() >= a.max_count {
            break;
        }
    }
    Ok(out)
}

/// An envelope's whole ciphertext: `first`, the ciphertext in its
/// `envelopes` value, followed by its parts, if it may have any.
fn join_parts(
    parts: &impl ReadableTable<&'static [u8; 41], &'static [u8]>,
    id: &ReceiveId,
    seq: u64,
    value: &[u8],
    first: &[u8],
) -> Result<Bytes, StoreError> {
    if !may_have_parts(value) {
        return Ok(Bytes::copy_from_slice(first));
    }
    let mut whole = BytesMut::with_capacity(MAX_CIPHERTEXT);
    whole.extend_from_slice(first);
    let (lo, hi) = part_range(id, seq, seq);
    for (want, row) in (1..=u8::MAX).zip(parts.range::<&[u8; 41]>(&lo..=&hi)?) {
        let (k, v) = row?;
        if split_part_key(k.value()).2 != want {
            return Err(StoreError::corrupt("envelope_parts", "a part is missing"));
        }
        whole.extend_from_slice(v.value());
    }
    Ok(whole.freeze())
}

/// The writer's snapshot of redb, begun when first needed.
pub(crate) struct View {
    mailboxes: ReadOnlyTable<&'static [u8; 32], &'static [u8]>,
    sends: ReadOnlyTable<&'static [u8; 32], &'static [u8; 32]>,
    owners: ReadOnlyTable<&'static [u8; 64], ()>,
    envelopes: ReadOnlyTable<&'static [u8; 40], &'static [u8]>,
    parts: ReadOnlyTable<&'static [u8; 41], &'static [u8]>,
    expiry: ReadOnlyTable<&'static [u8; 44], ()>,
    _txn: ReadTransaction,
}

impl View {
    pub(crate) fn begin(db: &Database) -> Result<View, StoreError> {
        let txn = db.begin_read()?;
        Ok(View {
            mailboxes: txn.open_table(MAILBOXES)?,
            sends: txn.open_table(SEND_INDEX)?,
            owners: txn.open_table(OWNER_INDEX)?,
            envelopes: txn.open_table(ENVELOPES)?,
            parts: txn.open_table(ENVELOPE_PARTS)?,
            expiry: txn.open_table(EXPIRY)?,
            _txn: txn,
        })
    }

    /// The view in `slot`, begun now if there is none yet.
    pub(crate) fn get<'v>(
        slot: &'v mut Option<View>,
        db: &Database,
    ) -> Result<&'v View, StoreError> {
        match slot {
            Some(v) => Ok(v),
            None => Ok(slot.insert(View::begin(db)?)),
        }
    }

    pub(crate) fn send_route(&self, send: &SendId) -> Result<Option<ReceiveId>, StoreError> {
        Ok(self.sends.get(&send.0)?.map(|v| ReceiveId(*v.value())))
    }

    pub(crate) fn record(&self, id: &ReceiveId) -> Result<Option<MailboxRecord>, StoreError> {
        match self.mailboxes.get(&id.0)? {
            Some(v) => MailboxRecord::decode(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The mailboxes `owner_index` lists for `owner`, in receive id order.
    pub(crate) fn owned(&self, owner: &OwnerKey) -> Result<Vec<ReceiveId>, StoreError> {
        let (lo, hi) = owner_range(owner);
        let mut out = Vec::new();
        for row in self.owners.range::<&[u8; 64]>(&lo..=&hi)? {
            out.push(owner_key_mailbox(row?.0.value()));
        }
        Ok(out)
    }

    /// An envelope's own expiry hour (unless its value is damaged) and its
    /// ciphertext length, parts included, if it is stored.
    pub(crate) fn envelope(
        &self,
        id: &ReceiveId,
        seq: u64,
    ) -> Result<Option<(Option<u32>, u64)>, StoreError> {
        let Some(v) = self.envelopes.get(&envelope_key(id, seq))? else {
            return Ok(None);
        };
        let v = v.value();
        let mut len = stored_len(v);
        if may_have_parts(v) {
            let (lo, hi) = part_range(id, seq, seq);
            for row in self.parts.range::<&[u8; 41]>(&lo..=&hi)? {
                len = len.saturating_add(byte_len(row?.1.value()));
            }
        }
        Ok(Some((read_envelope(v).ok().map(|e| e.0), len)))
    }

    /// Up to `limit` expiry index rows for hour `now_hour` or earlier, from
    /// the oldest: (hour, mailbox, seq).
    pub(crate) fn due(
        &self,
        now_hour: u32,
        limit: usize,
    ) -> Result<Vec<(u32, ReceiveId, u64)>, StoreError> {
        let end = match now_hour.checked_add(1) {
            Some(h) => Bound::Excluded(expiry_key(h, &ReceiveId([0; 32]), 0)),
            None => Bound::Unbounded,
        };
        let mut due = Vec::new();
        for row in self
            .expiry
            .range::<&[u8; 44]>((Bound::Unbounded, end.as_ref()))?
            .take(limit)
        {
            due.push(split_expiry_key(row?.0.value()));
        }
        Ok(due)
    }
}

/// The result of [`Store::check`](crate::Store::check): the totals `meta`
/// claims, the totals a full recount finds, and every disagreement between
/// tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub recorded: Totals,
    pub counted: Totals,
    /// One line per problem found (at most [`MAX_PROBLEMS`], then a count).
    pub problems: Vec<String>,
}

/// Problems listed one by one in a [`CheckReport`].
pub const MAX_PROBLEMS: usize = 100;

impl CheckReport {
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty() && self.recorded == self.counted
    }
}

/// (envelopes, bytes) of one mailbox.
type Counts = (u64, u64);

struct Problems {
    list: Vec<String>,
    more: usize,
}

impl Problems {
    fn add(&mut self, p: String) {
        if self.list.len() < MAX_PROBLEMS {
            self.list.push(p);
        } else {
            self.more += 1;
        }
    }
}

/// Recounts everything and cross-checks the indexes. Reads the whole
/// store, in one snapshot, without stopping the writer.
pub(crate) fn check(db: &impl ReadableDatabase) -> Result<CheckReport, StoreError> {
    let txn = db.begin_read()?;
    let recorded = schema::read_totals(&txn.open_table(META)?)?;
    let mailboxes = txn.open_table(MAILBOXES)?;
    let sends = txn.open_table(SEND_INDEX)?;
    let owners = txn.open_table(OWNER_INDEX)?;
    let envelopes = txn.open_table(ENVELOPES)?;
    let parts = txn.open_table(ENVELOPE_PARTS)?;
    let expiry = txn.open_table(EXPIRY)?;
    let mut p = Problems {
        list: Vec::new(),
        more: 0,
    };
    let mut counted = Totals::default();
    // Per mailbox: (count, bytes) as recorded, and as found.
    let mut boxes: HashMap<ReceiveId, (Counts, Counts)> = HashMap::new();
    for row in mailboxes.iter()? {
        let (k, v) = row?;
        let id = ReceiveId(*k.value());
        counted.mailboxes += 1;
        let rec = match MailboxRecord::decode(v.value()) {
            Ok(r) => r,
            Err(e) => {
                p.add(format!("mailbox {id:?}: {e}"));
                continue;
            }
        };
        boxes.insert(id, ((u64::from(rec.envelopes), rec.bytes), (0, 0)));
        if sends.get(&rec.send_id.0)?.map(|v| *v.value()) != Some(id.0) {
            p.add(format!("mailbox {id:?}: send index does not point back"));
        }
        if owners.get(&owner_key(&rec.owner, &id))?.is_none() {
            p.add(format!("mailbox {id:?}: missing from the owner index"));
        }
    }
    for row in envelopes.iter()? {
        let (k, v) = row?;
        let (id, seq) = split_envelope_key(k.value());
        counted.envelopes += 1;
        counted.bytes = counted.bytes.saturating_add(stored_len(v.value()));
        match boxes.get_mut(&id) {
            Some((_, found)) => {
                found.0 += 1;
                found.1 = found.1.saturating_add(stored_len(v.value()));
            }
            None => p.add(format!("envelope {id:?}/{seq}: no such mailbox")),
        }
        match read_envelope(v.value()) {
            Ok((hour, _)) => {
                if expiry.get(&expiry_key(hour, &id, seq))?.is_none() {
                    p.add(format!(
                        "envelope {id:?}/{seq}: missing from the expiry index"
                    ));
                }
            }
            Err(e) => p.add(format!("envelope {id:?}/{seq}: {e}")),
        }
    }
    let mut last: Option<(ReceiveId, u64, u8)> = None;
    for row in parts.iter()? {
        let (k, v) = row?;
        let (id, seq, n) = split_part_key(k.value());
        let want = match last {
            Some((i, s, m)) if i == id && s == seq => m.saturating_add(1),
            _ => 1,
        };
        if n != want {
            p.add(format!(
                "envelope {id:?}/{seq}: part {n} where part {want} should be"
            ));
        }
        last = Some((id, seq, n));
        let len = byte_len(v.value());
        counted.bytes = counted.bytes.saturating_add(len);
        let first = envelopes.get(&envelope_key(&id, seq))?;
        if !first.is_some_and(|f| may_have_parts(f.value())) {
            p.add(format!(
                "envelope {id:?}/{seq}: part {n} without a full first part"
            ));
        }
        if let Some((_, found)) = boxes.get_mut(&id) {
            found.1 = found.1.saturating_add(len);
        }
    }
    for (id, (recorded, found)) in &boxes {
        if recorded != found {
            p.add(format!(
                "mailbox {id:?}: record says {recorded:?} (envelopes, bytes), found {found:?}"
            ));
        }
    }
    let (n_expiry, n_sends, n_owners) = (expiry.len()?, sends.len()?, owners.len()?);
    if n_expiry != counted.envelopes {
        p.add(format!(
            "expiry index has {n_expiry} rows for {} envelopes",
            counted.envelopes
        ));
    }
    if n_sends != counted.mailboxes || n_owners != counted.mailboxes {
        p.add(format!(
            "{} mailboxes but {n_sends} send index and {n_owners} owner index rows",
            counted.mailboxes
        ));
    }
    if p.more > 0 {
        p.list.push(format!("... and {} more", p.more));
    }
    Ok(CheckReport {
        recorded,
        counted,
        problems: p.list,
    })
}
