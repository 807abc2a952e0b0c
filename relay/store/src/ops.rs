//! The operations, as applied inside the writer's batch transaction.
//!
//! Every operation validates first and mutates after, and the only failures
//! possible once it mutates are redb I/O errors, which abort the whole batch.
//! So a refused request leaves nothing behind, and the other requests of its
//! batch commit as if it had never been there.
//!
//! Deletes are lenient about damage (an envelope whose value cannot be
//! decoded is still removed and its length still subtracted), because a
//! damaged entry that blocks its own deletion would never go away.

use std::collections::HashMap;
use std::ops::Bound;

use chappe_proto::{OwnerKey, ReceiveId, SendId, TokenDigest};
use redb::{ReadableTable, Table, WriteTransaction};

use crate::clock::{expiry_hour, hour_of, is_expired};
use crate::config::StoreConfig;
use crate::disk::DiskGauge;
use crate::error::{RequestError, StoreError};
use crate::records::{
    ENVELOPE_HEADER, MailboxRecord, TokenList, byte_len, may_have_parts, read_envelope,
    split_ciphertext, stored_len, write_envelope,
};
use crate::request::{Answer, Enqueued, MailboxInfo, Op};
use crate::schema::{
    self, ENVELOPE_PARTS, ENVELOPES, EXPIRY, MAILBOXES, META, OWNER_INDEX, SEND_INDEX, Totals,
    envelope_key, expiry_key, owner_key, owner_range, part_key, part_range, split_envelope_key,
    split_expiry_key,
};

/// The sequence number of a mailbox's first envelope; 0 stays free to mean
/// "nothing seen yet" for an owner resuming a fetch.
pub(crate) const FIRST_SEQ: u64 = 1;

/// How an operation did not succeed.
pub(crate) enum Fail {
    /// This request alone is refused; the batch goes on.
    Refuse(RequestError),
    /// The transaction cannot be trusted any more; the batch is dropped.
    Abort(StoreError),
}

impl From<RequestError> for Fail {
    fn from(e: RequestError) -> Self {
        Fail::Refuse(e)
    }
}

impl From<StoreError> for Fail {
    /// Damage found while validating refuses only the request that found
    /// it: one corrupt record must not stop every send in its batch.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } | StoreError::Invariant(_) => {
                Fail::Refuse(RequestError::internal(e))
            }
            e => Fail::Abort(e),
        }
    }
}

impl From<redb::StorageError> for Fail {
    fn from(e: redb::StorageError) -> Self {
        Fail::Abort(e.into())
    }
}

/// What an operation needs besides the tables.
pub(crate) struct Ctx<'c> {
    pub cfg: &'c StoreConfig,
    /// Read once per batch: every envelope of a batch gets the same expiry.
    pub now_secs: u64,
    pub disk: &'c mut DiskGauge,
}

impl Ctx<'_> {
    fn relay_full(&mut self, stored: u64, add: u64) -> bool {
        let cap = self.cfg.max_store_bytes;
        (cap > 0 && stored.saturating_add(add) > cap) || self.disk.is_low()
    }
}

type Tbl<'t, K, V> = Table<'t, K, V>;

/// The open tables of one write transaction, plus the totals as this batch
/// has changed them so far.
pub(crate) struct Tx<'t> {
    mailboxes: Tbl<'t, &'static [u8; 32], &'static [u8]>,
    sends: Tbl<'t, &'static [u8; 32], &'static [u8; 32]>,
    owners: Tbl<'t, &'static [u8; 64], ()>,
    envelopes: Tbl<'t, &'static [u8; 40], &'static [u8]>,
    parts: Tbl<'t, &'static [u8; 41], &'static [u8]>,
    expiry: Tbl<'t, &'static [u8; 44], ()>,
    meta: Tbl<'t, &'static str, &'static [u8]>,
    totals: Totals,
    saved: Totals,
    scratch: Vec<u8>,
}

impl<'t> Tx<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction, totals: Totals) -> Result<Self, StoreError> {
        Ok(Tx {
            mailboxes: txn.open_table(MAILBOXES)?,
            sends: txn.open_table(SEND_INDEX)?,
            owners: txn.open_table(OWNER_INDEX)?,
            envelopes: txn.open_table(ENVELOPES)?,
            parts: txn.open_table(ENVELOPE_PARTS)?,
            expiry: txn.open_table(EXPIRY)?,
            meta: txn.open_table(META)?,
            totals,
            saved: totals,
            scratch: Vec::with_capacity(512),
        })
    }

    pub(crate) fn totals(&self) -> Totals {
        self.totals
    }

    /// Writes the totals into `meta` if the batch changed them.
    pub(crate) fn save_totals(&mut self) -> Result<(), StoreError> {
        if self.totals != self.saved {
            schema::write_totals(&mut self.meta, &self.totals)?;
            self.saved = self.totals;
        }
        Ok(())
    }

    pub(crate) fn apply(&mut self, ctx: &mut Ctx<'_>, op: &Op) -> Result<Answer, Fail> {
        match op {
            Op::Create { owner, tokens } => self.create(ctx, owner, tokens).map(Answer::Info),
            Op::Delete { owner, id } => self.delete(owner, id).map(|()| Answer::Unit),
            Op::SetTokens { owner, id, tokens } => {
                self.set_tokens(owner, id, tokens).map(|()| Answer::Unit)
            }
            Op::Enqueue {
                send,
                digest,
                ciphertext,
            } => self
                .enqueue(ctx, send, digest, ciphertext)
                .map(Answer::Enqueued),
            Op::Ack { owner, id, seqs } => self.ack(owner, id, seqs).map(|()| Answer::Unit),
            Op::Sweep => self
                .sweep(hour_of(ctx.now_secs), usize::MAX)
                .map(Answer::Swept)
                .map_err(Fail::Abort),
        }
    }

    fn record(&self, id: &ReceiveId) -> Result<Option<MailboxRecord>, StoreError> {
        match self.mailboxes.get(&id.0)? {
            Some(v) => MailboxRecord::decode(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The record of a mailbox `owner` owns; anything else is "unknown".
    fn owned(&self, owner: &OwnerKey, id: &ReceiveId) -> Result<MailboxRecord, Fail> {
        match self.record(id)? {
            Some(rec) if rec.owner == *owner => Ok(rec),
            _ => Err(RequestError::UnknownMailbox.into()),
        }
    }

    fn put(&mut self, id: &ReceiveId, rec: &MailboxRecord) -> Result<(), StoreError> {
        rec.encode_into(&mut self.scratch);
        self.mailboxes.insert(&id.0, self.scratch.as_slice())?;
        Ok(())
    }

    fn create(
        &mut self,
        ctx: &Ctx<'_>,
        owner: &OwnerKey,
        tokens: &TokenList,
    ) -> Result<MailboxInfo, Fail> {
        let (lo, hi) = owner_range(owner);
        let mut owned = 0u64;
        for row in self.owners.range::<&[u8; 64]>(&lo..=&hi)? {
            row?;
            owned += 1;
        }
        if owned >= u64::from(ctx.cfg.max_mailboxes_per_owner) {
            return Err(RequestError::TooManyMailboxes.into());
        }
        let (id, send_id) = self.fresh_ids()?;
        let rec = MailboxRecord {
            send_id,
            owner: *owner,
            envelopes: 0,
            bytes: 0,
            next_seq: FIRST_SEQ,
            tokens: *tokens,
        };
        self.put(&id, &rec)?;
        self.sends.insert(&send_id.0, &id.0)?;
        self.owners.insert(&owner_key(owner, &id), ())?;
        self.totals.mailboxes += 1;
        Ok(MailboxInfo {
            receive_id: id,
            send_id,
            envelopes: 0,
            bytes: 0,
        })
    }

    /// Random ids not in use. A collision of 256-bit random ids will not
    /// happen, but checking costs two lookups and makes it impossible for a
    /// broken RNG to hand one owner's mailbox to another.
    fn fresh_ids(&self) -> Result<(ReceiveId, SendId), StoreError> {
        for _ in 0..4 {
            let id = ReceiveId::random();
            let send = SendId::random();
            if self.mailboxes.get(&id.0)?.is_none() && self.sends.get(&send.0)?.is_none() {
                return Ok((id, send));
            }
        }
        Err(StoreError::Invariant("random mailbox ids keep colliding"))
    }

    fn delete(&mut self, owner: &OwnerKey, id: &ReceiveId) -> Result<(), Fail> {
        let rec = self.owned(owner, id)?;
        let (lo, hi) = (envelope_key(id, 0), envelope_key(id, u64::MAX));
        let (mut count, mut bytes) = (0u64, 0u64);
        let mut rows = Vec::new();
        self.envelopes
            .retain_in::<&[u8; 40], _>(&lo..=&hi, |k, v| {
                count += 1;
                bytes = bytes.saturating_add(stored_len(v));
                if let Ok((expiry, _)) = read_envelope(v) {
                    rows.push(expiry_key(expiry, id, split_envelope_key(k).1));
                }
                false
            })?;
        for row in &rows {
            self.expiry.remove(row)?;
        }
        let (lo, hi) = part_range(id, 0, u64::MAX);
        self.parts.retain_in::<&[u8; 41], _>(&lo..=&hi, |_, v| {
            bytes = bytes.saturating_add(byte_len(v));
            false
        })?;
        self.sends.remove(&rec.send_id.0)?;
        self.owners.remove(&owner_key(owner, id))?;
        self.mailboxes.remove(&id.0)?;
        if count != u64::from(rec.envelopes) || bytes != rec.bytes {
            tracing::debug!(mailbox = ?id, "mismatched counts");
            tracing::warn!("deleted mailbox's counts did not match its envelopes");
        }
        self.totals.envelopes = self.totals.envelopes.saturating_sub(count);
        self.totals.bytes = self.totals.bytes.saturating_sub(bytes);
        self.totals.mailboxes = self.totals.mailboxes.saturating_sub(1);
        Ok(())
    }

    fn set_tokens(
        &mut self,
        owner: &OwnerKey,
        id: &ReceiveId,
        tokens: &TokenList,
    ) -> Result<(), Fail> {
        let mut rec = self.owned(owner, id)?;
        rec.tokens = *tokens;
        self.put(id, &rec)?;
        Ok(())
    }

    fn enqueue(
        &mut self,
        ctx: &mut Ctx<'_>,
        send: &SendId,
        digest: &TokenDigest,
        ciphertext: &[u8],
    ) -> Result<Enqueued, Fail> {
        let Some(id) = self.sends.get(&send.0)?.map(|v| ReceiveId(*v.value())) else {
            return Err(RequestError::UnknownMailbox.into());
        };
        let Some(mut rec) = self.record(&id)? else {
            return Err(StoreError::corrupt("send_index", "points at a missing mailbox").into());
        };
        if !digest.ct_in(rec.tokens.as_slice()) {
            return Err(RequestError::BadToken.into());
        }
        let len = byte_len(ciphertext);
        if ctx.relay_full(self.totals.bytes, len) {
            return Err(RequestError::RelayFull.into());
        }
        if rec.envelopes >= ctx.cfg.max_envelopes_per_mailbox
            || rec.bytes.saturating_add(len) > ctx.cfg.max_bytes_per_mailbox
        {
            return Err(RequestError::QuotaExceeded.into());
        }
        let seq = rec.next_seq;
        let (Some(next_seq), Some(envelopes)) = (seq.checked_add(1), rec.envelopes.checked_add(1))
        else {
            return Err(StoreError::corrupt("mailboxes", "counter at its maximum").into());
        };
        let expiry = expiry_hour(ctx.now_secs, ctx.cfg.envelope_ttl);
        let (first, rest) = split_ciphertext(ciphertext);
        {
            let key = envelope_key(&id, seq);
            let mut slot = self
                .envelopes
                .insert_reserve(&key, ENVELOPE_HEADER + first.len())?;
            if !write_envelope(slot.as_mut(), expiry, first) {
                // The slot is already in the tree: the batch must not commit.
                return Err(Fail::Abort(StoreError::Invariant(
                    "reserved envelope slot has the wrong size",
                )));
            }
        }
        for (n, part) in (1..=u8::MAX).zip(rest) {
            self.parts.insert(&part_key(&id, seq, n), part)?;
        }
        self.expiry.insert(&expiry_key(expiry, &id, seq), ())?;
        rec.next_seq = next_seq;
        rec.envelopes = envelopes;
        rec.bytes = rec.bytes.saturating_add(len);
        self.put(&id, &rec)?;
        self.totals.envelopes += 1;
        self.totals.bytes = self.totals.bytes.saturating_add(len);
        Ok(Enqueued {
            receive_id: id,
            seq,
        })
    }

    fn ack(&mut self, owner: &OwnerKey, id: &ReceiveId, seqs: &[u64]) -> Result<(), Fail> {
        let mut rec = self.owned(owner, id)?;
        let mut changed = false;
        for &seq in seqs {
            // Already acked, expired or never stored: acks are idempotent.
            let Some((expiry, len)) = self.remove_envelope(id, seq)? else {
                continue;
            };
            if let Some(expiry) = expiry {
                self.expiry.remove(&expiry_key(expiry, id, seq))?;
            }
            rec.envelopes = rec.envelopes.saturating_sub(1);
            rec.bytes = rec.bytes.saturating_sub(len);
            self.totals.envelopes = self.totals.envelopes.saturating_sub(1);
            self.totals.bytes = self.totals.bytes.saturating_sub(len);
            changed = true;
        }
        if changed {
            self.put(id, &rec)?;
        }
        Ok(())
    }

    /// Removes one envelope and its parts, but not its expiry row; returns
    /// its expiry hour (unless its value is damaged) and ciphertext length.
    fn remove_envelope(
        &mut self,
        id: &ReceiveId,
        seq: u64,
    ) -> Result<Option<(Option<u32>, u64)>, StoreError> {
        let Some((expiry, mut len, parts)) =
            self.envelopes.remove(&envelope_key(id, seq))?.map(|v| {
                let v = v.value();
                (
                    read_envelope(v).ok().map(|e| e.0),
                    stored_len(v),
                    may_have_parts(v),
                )
            })
        else {
            return Ok(None);
        };
        if parts {
            let (lo, hi) = part_range(id, seq, seq);
            self.parts.retain_in::<&[u8; 41], _>(&lo..=&hi, |_, v| {
                len = len.saturating_add(byte_len(v));
                false
            })?;
        }
        Ok(Some((expiry, len)))
    }

    /// Deletes up to `limit` envelopes whose expiry hour is `now_hour` or
    /// earlier, walking the expiry index from its start so that nothing
    /// unexpired is read. Returns how many were deleted.
    pub(crate) fn sweep(&mut self, now_hour: u32, limit: usize) -> Result<u64, StoreError> {
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
            due.push(*row?.0.value());
        }
        let mut per_box: HashMap<ReceiveId, (u32, u64)> = HashMap::new();
        let mut swept = 0u64;
        for row in &due {
            self.expiry.remove(row)?;
            let (_, id, seq) = split_expiry_key(row);
            let key = envelope_key(&id, seq);
            // An index row that disagrees with its envelope is dropped, but
            // the envelope is only deleted if it has expired itself.
            let expired = match self.envelopes.get(&key)? {
                Some(v) => read_envelope(v.value()).map_or(true, |(e, _)| is_expired(e, now_hour)),
                None => false,
            };
            if !expired {
                continue;
            }
            if let Some((_, len)) = self.remove_envelope(&id, seq)? {
                let e = per_box.entry(id).or_default();
                e.0 = e.0.saturating_add(1);
                e.1 = e.1.saturating_add(len);
                self.totals.envelopes = self.totals.envelopes.saturating_sub(1);
                self.totals.bytes = self.totals.bytes.saturating_sub(len);
                swept += 1;
            }
        }
        for (id, (count, bytes)) in per_box {
            match self.record(&id) {
                Ok(Some(mut rec)) => {
                    rec.envelopes = rec.envelopes.saturating_sub(count);
                    rec.bytes = rec.bytes.saturating_sub(bytes);
                    self.put(&id, &rec)?;
                }
                Ok(None) => {}
                Err(StoreError::Corrupt { .. }) => {
                    tracing::debug!(mailbox = ?id, "damaged mailbox record");
                    tracing::warn!("sweep left a damaged mailbox record as is");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(swept)
    }
}
