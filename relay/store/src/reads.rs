//! Reads, done in the caller's thread in their own read transaction.
//!
//! redb gives every read transaction a consistent snapshot without locking
//! out the writer, so fetches and listings need no lock of ours and never
//! wait for a commit; they see everything committed before they began.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use chappe_proto::envelope::MAX_CIPHERTEXT;
use chappe_proto::{OwnerKey, ReceiveId};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::clock::is_expired;
use crate::error::{RequestError, StoreError};
use crate::ops::Fail;
use crate::records::{MailboxRecord, byte_len, may_have_parts, read_envelope, stored_len};
use crate::request::{MailboxInfo, StoredEnvelope};
use crate::schema::{
    self, ENVELOPE_PARTS, ENVELOPES, EXPIRY, MAILBOXES, META, OWNER_INDEX, SEND_INDEX, Totals,
    envelope_key, expiry_key, owner_key, owner_key_mailbox, owner_range, part_range,
    split_envelope_key, split_part_key,
};

pub(crate) struct FetchArgs {
    pub owner: OwnerKey,
    pub id: ReceiveId,
    pub from_seq: u64,
    pub max_count: usize,
    pub max_bytes: usize,
    pub now_hour: u32,
}

pub(crate) fn fetch(db: &Database, a: &FetchArgs) -> Result<Vec<StoredEnvelope>, RequestError> {
    fetch_inner(db, a).map_err(|f| match f {
        Fail::Refuse(e) => e,
        Fail::Abort(e) => RequestError::internal(e),
    })
}

fn fetch_inner(db: &Database, a: &FetchArgs) -> Result<Vec<StoredEnvelope>, Fail> {
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
    for row in envelopes.range::<&[u8; 40]>(&lo..=&hi)? {
        let (k, v) = row?;
        let seq = split_envelope_key(k.value()).1;
        let whole = read_envelope(v.value()).and_then(|(expiry, first)| {
            Ok((expiry, join_parts(&parts, &a.id, seq, v.value(), first)?))
        });
        let (expiry, ct) = match whole {
            Ok(e) => e,
            Err(e) => {
                // Skipped rather than failing the fetch, so one damaged
                // envelope cannot wedge its mailbox; the owner may ack it.
                tracing::warn!(seq, error = %e, "skipping a damaged envelope");
                continue;
            }
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

pub(crate) fn list(db: &Database, owner: &OwnerKey) -> Result<Vec<MailboxInfo>, StoreError> {
    let txn = db.begin_read()?;
    let owners = txn.open_table(OWNER_INDEX)?;
    let mailboxes = txn.open_table(MAILBOXES)?;
    let (lo, hi) = owner_range(owner);
    let mut out = Vec::new();
    for row in owners.range::<&[u8; 64]>(&lo..=&hi)? {
        let id = owner_key_mailbox(row?.0.value());
        let Some(v) = mailboxes.get(&id.0)? else {
            return Err(StoreError::corrupt(
                "owner_index",
                "points at a missing mailbox",
            ));
        };
        let rec = MailboxRecord::decode(v.value())?;
        out.push(MailboxInfo {
            receive_id: id,
            send_id: rec.send_id,
            envelopes: rec.envelopes,
            bytes: rec.bytes,
        });
    }
    Ok(out)
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
pub(crate) fn check(db: &Database) -> Result<CheckReport, StoreError> {
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
