//! The writer thread: group commit into the journal.
//!
//! One thread decides every write, so that sequence numbers, quotas and
//! tokens are judged against one consistent view ([`Overlay`]). It blocks
//! for a request, takes whatever else is already queued (up to
//! `max_batch`, and no more than one journal record holds), decides each
//! one, writes what they did as one journal record, syncs it once, and only
//! then publishes the batch to readers ([`MemTable`]), hands it to the
//! applier and answers. Under load batches grow by themselves and the sync
//! is shared; when idle a request waits for nobody.
//!
//! A send is answered `Ok` only after the sync that holds it returned, so
//! `Ok` means "on disk". Mailbox changes are not journaled: they go to the
//! applier as barriers and are answered after its redb commit.
//!
//! If a journal write or sync fails, every request of the batch hears
//! `Internal` and the store refuses writes from then on: after a failed
//! `fdatasync` the kernel may have dropped the data and cleared the error,
//! so retrying could report success for bytes that are gone. The batch's
//! decisions (numbers, quotas) are already in the writer's view, too, and
//! would have to be unwound. A restart recovers whatever the journal
//! really holds. Later requests hear `RelayFull` if the failure was a full
//! disk, `Internal` otherwise.
//!
//! Before each batch the writer looks at free space (cached, see
//! `crate::disk`): below the store's floor it refuses every request that
//! writes with `RelayFull`, decides nothing, and so never has a batch fail
//! for want of space; reads and pings are answered as usual. It looks at
//! least every [`SPACE_WATCH`], requests or not, and takes writes again
//! once there is room. (The applier looks again right before each
//! checkpoint: the disk may have filled since.)

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chappe_proto::{OwnerKey, ReceiveId, SendId, TokenDigest};
use redb::Database;
use tokio::sync::oneshot;

use crate::applier::{Barrier, BarrierOp, Shared, ToApplier, Unit};
use crate::clock::{Clock, expiry_hour, hour_of, is_expired};
use crate::config::StoreConfig;
use crate::disk::{DiskGauge, ReadOnly};
use crate::effect::{Effect, MAX_REMOVE, PUT_OVERHEAD};
use crate::error::{RequestError, StoreError};
use crate::journal::Journal;
use crate::memtable::Lookup;
use crate::overlay::Overlay;
use crate::reads::View;
use crate::records::byte_len;
use crate::request::{Answer, Enqueued, MailboxInfo, Msg, Op, Reply, Request};
use crate::schema::Totals;

/// How often the writer sweeps expired envelopes on its own.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Most envelopes one sweep removes, so that a backlog (say after a long
/// downtime) is worked off in slices between batches instead of one record
/// that stalls every send.
const SWEEP_SLICE: usize = 4096;
/// When a slice was full, the next one comes this soon.
const SWEEP_AGAIN: Duration = Duration::from_secs(1);
/// Journal bytes a removed sequence number may take, for sizing batches.
const REMOVE_COST: usize = 48;
/// How often the writer looks at free space when no request comes: a
/// disk filled by something else turns the store read-only (and
/// `/readyz` 503) within this, and a freed one writable again.
const SPACE_WATCH: Duration = Duration::from_millis(500);

pub(crate) struct Writer {
    pub db: Arc<Database>,
    pub cfg: StoreConfig,
    pub clock: Clock,
    pub disk: DiskGauge,
    pub shared: Arc<Shared>,
    pub journal: Journal,
    pub overlay: Overlay,
    /// The next writer sequence number (journal records and barriers).
    pub next_seq: u64,
    /// Envelope totals as the writer has decided them (`mailboxes` is the
    /// applier's).
    pub totals: Totals,
    pub failed: bool,
}

/// What one batch decided, kept until its sync.
#[derive(Default)]
struct Decided {
    effects: Vec<Effect>,
    live: Vec<(ReceiveId, u64, u32, Bytes)>,
    /// This batch's new envelopes and their lengths: an ack later in the
    /// same batch may name one (sequence numbers are easy to guess).
    fresh: HashMap<(ReceiveId, u64), u64>,
    /// Envelopes this batch removes because they expired.
    expired: u64,
    gone: Vec<(ReceiveId, u64)>,
    gone_set: HashSet<(ReceiveId, u64)>,
    answers: Vec<(Reply, Result<Answer, RequestError>)>,
    barriers: Vec<Barrier>,
}

/// What to do once the current batch is committed.
enum After {
    Continue,
    Stop(Option<oneshot::Sender<()>>),
    #[cfg(test)]
    Hold(std::sync::mpsc::Receiver<()>),
    #[cfg(test)]
    Crash,
}

/// The context one batch is decided in.
struct Batch {
    /// The sequence number of the batch's journal record.
    seq: u64,
    now_secs: u64,
    view: Option<View>,
}

impl Writer {
    /// Runs until a shutdown message or until every handle is gone.
    pub(crate) fn run(mut self, rx: Receiver<Msg>) {
        let max_batch = self.cfg.max_batch.max(1);
        let room = self.journal.max_payload();
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        let mut carry: Option<Msg> = None;
        let stop = loop {
            let full = self.check_space();
            let wait = next_sweep
                .saturating_duration_since(Instant::now())
                .min(SPACE_WATCH);
            let mut batch = Vec::new();
            let mut cost = 0usize;
            let mut after = After::Continue;
            let first = match carry.take() {
                Some(m) => Ok(m),
                None => rx.recv_timeout(wait),
            };
            match first {
                Ok(first) => {
                    cost += msg_cost(&first);
                    after = take(first, &mut batch);
                    while matches!(after, After::Continue) && batch.len() < max_batch {
                        match rx.try_recv() {
                            Ok(msg) => {
                                let c = msg_cost(&msg);
                                if cost + c > room / 2 {
                                    carry = Some(msg);
                                    break;
                                }
                                cost += c;
                                after = take(msg, &mut batch);
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break None,
            }
            let sweep = Instant::now() >= next_sweep && !full;
            if !batch.is_empty() || sweep {
                let swept = self.run_batch(batch, sweep);
                if sweep {
                    let full = swept >= self.sweep_slice() as u64;
                    next_sweep = Instant::now() + if full { SWEEP_AGAIN } else { SWEEP_EVERY };
                }
            }
            match after {
                After::Continue => {}
                After::Stop(done) => break done,
                #[cfg(test)]
                After::Hold(gate) => drop(gate.recv()),
                #[cfg(test)]
                After::Crash => {
                    self.shared.inbox.send(ToApplier::Crash, true);
                    return;
                }
            }
        };
        self.shared.inbox.send(ToApplier::Shutdown(stop), true);
        tracing::debug!("store writer stopped");
    }

    /// Looks at free space (at most every `RECHECK`, `crate::disk`) and
    /// publishes whether the store is read-only for want of it.
    fn check_space(&mut self) -> bool {
        let full = self.disk.is_full();
        self.shared.counters.set_no_space(full);
        full
    }

    /// The refusal for a request the store cannot take: `RelayFull` for a
    /// full disk, `Internal` for anything else.
    fn refusal(&self) -> RequestError {
        match self.shared.counters.read_only() {
            Some(ReadOnly::NoSpace) => RequestError::RelayFull,
            _ => RequestError::Internal(StoreError::Failed),
        }
    }

    /// Most envelopes one sweep removes: a slice, and what one record holds.
    fn sweep_slice(&self) -> usize {
        SWEEP_SLICE.min(self.journal.max_payload() / (4 * REMOVE_COST))
    }

    /// Decides, journals and answers one batch; returns how many envelopes
    /// the periodic sweep (if asked for) removed.
    fn run_batch(&mut self, batch: Vec<Request>, sweep: bool) -> u64 {
        let n = batch.len();
        self.failed |= self.shared.counters.is_failed();
        // Read-only: writes are refused, reads and pings still answered.
        let batch = if self.failed || self.check_space() {
            let (writes, rest): (Vec<Request>, Vec<Request>) =
                batch.into_iter().partition(|r| r.op.writes());
            for req in writes {
                req.reply.refuse(self.refusal());
            }
            if rest.is_empty() {
                return 0;
            }
            rest
        } else {
            batch
        };
        let sweep = sweep && self.shared.counters.read_only().is_none();
        self.overlay.trim(self.shared.applied_seq());
        let mut b = Batch {
            seq: self.next_seq,
            now_secs: self.clock.now_secs(),
            view: None,
        };
        let mut d = Decided::default();
        for req in batch {
            self.decide(&mut b, &mut d, req);
        }
        let mut swept = 0;
        if sweep {
            match self.sweep(&mut b, &mut d, self.sweep_slice()) {
                Ok(n) => swept = n,
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed; trying again later"),
            }
        }
        self.next_seq = b.seq + 1 + d.barriers.len() as u64;
        drop(b.view.take());
        if !d.effects.is_empty()
            && let Err(e) = self.journal_batch(b.seq, &mut d)
        {
            tracing::error!(
                error = %e,
                "journal write failed; the store takes no more writes until the relay is \
                 restarted, which recovers what the journal holds"
            );
            self.failed = true;
            self.shared.counters.fail(e.read_only_kind());
            for (reply, _) in d.answers {
                reply.refuse(RequestError::Internal(StoreError::Failed));
            }
            for barrier in d.barriers {
                barrier
                    .reply
                    .refuse(RequestError::Internal(StoreError::Failed));
            }
            return 0;
        }
        for barrier in d.barriers {
            self.shared.inbox.send(ToApplier::Barrier(barrier), true);
        }
        if d.expired > 0 {
            self.shared.counters.expired(d.expired);
        }
        let used = self
            .journal
            .head()
            .saturating_sub(self.shared.applied_pos());
        self.shared
            .counters
            .committed(self.totals, n, self.disk.last(), used);
        for (reply, out) in d.answers {
            reply.send(out);
        }
        if swept > 0 {
            tracing::debug!(swept, "expired envelopes removed");
        }
        swept
    }

    /// Writes and syncs the batch's record, then publishes it.
    fn journal_batch(&mut self, seq: u64, d: &mut Decided) -> Result<(), StoreError> {
        let buf = self.journal.begin();
        for e in &d.effects {
            e.encode_into(buf);
        }
        let mut asked = false;
        while !self.journal.fits(self.shared.applied_pos()) {
            if self.shared.counters.is_failed() {
                return Err(StoreError::Failed);
            }
            if !asked {
                tracing::debug!("journal full; waiting for the applier");
                self.shared.inbox.send(ToApplier::MakeRoom, true);
                asked = true;
            }
            self.shared.wait_for_room(Duration::from_millis(50));
        }
        let appended = self.journal.append(seq)?;
        self.journal.sync()?;
        self.shared
            .memtable
            .publish(d.live.drain(..), d.gone.drain(..));
        let unit = Unit {
            seq,
            end: appended.end,
            effects: std::mem::take(&mut d.effects),
        };
        // Quiet unless a quarter of the ring waits: the applier then has
        // to catch up before the writer runs out of room.
        let behind =
            appended.end.saturating_sub(self.shared.applied_pos()) > self.journal.ring() / 4;
        self.shared.inbox.send(ToApplier::Unit(unit), behind);
        Ok(())
    }

    fn decide(&mut self, b: &mut Batch, d: &mut Decided, req: Request) {
        let Request { op, reply, slot } = req;
        // The queue slot goes back as soon as the request is taken apart.
        drop(slot);
        let out = match op {
            Op::Enqueue {
                send,
                digest,
                ciphertext,
            } => self
                .enqueue(b, d, &send, &digest, ciphertext)
                .map(Answer::Enqueued),
            Op::Ack { owner, id, seqs } => {
                self.ack(b, d, &owner, &id, &seqs).map(|()| Answer::Unit)
            }
            Op::Sweep => self
                .sweep(b, d, self.sweep_slice())
                .map(Answer::Swept)
                .map_err(RequestError::Internal),
            Op::Create { owner, tokens } => {
                let max_owned = self.cfg.max_mailboxes_per_owner;
                let op = BarrierOp::Create {
                    owner,
                    tokens,
                    max_owned,
                };
                self.barrier(b, d, op, reply);
                return;
            }
            Op::Delete { owner, id } => match self.owned(b, &owner, &id) {
                Ok(()) => {
                    let seq = b.seq + 1 + d.barriers.len() as u64;
                    if let Ok(Some(e)) = self.overlay.by_id(&mut b.view, &self.db, &id) {
                        self.totals.envelopes = self
                            .totals
                            .envelopes
                            .saturating_sub(u64::from(e.rec.envelopes));
                        self.totals.bytes = self.totals.bytes.saturating_sub(e.rec.bytes);
                    }
                    self.overlay.delete(&id, seq);
                    self.barrier(b, d, BarrierOp::Delete { owner, id }, reply);
                    return;
                }
                Err(e) => Err(e),
            },
            Op::SetTokens { owner, id, tokens } => match self.owned(b, &owner, &id) {
                Ok(()) => {
                    let seq = b.seq + 1 + d.barriers.len() as u64;
                    if let Ok(Some(e)) = self.overlay.by_id(&mut b.view, &self.db, &id) {
                        e.rec.tokens = *tokens;
                        e.touched = seq;
                    }
                    self.barrier(b, d, BarrierOp::SetTokens { owner, id, tokens }, reply);
                    return;
                }
                Err(e) => Err(e),
            },
            Op::Flush => {
                self.barrier(b, d, BarrierOp::Flush, reply);
                return;
            }
            Op::List { owner } => self.list(b, &owner).map(Answer::List),
            Op::Ping => Ok(Answer::Unit),
            Op::SetQuotas(q) => {
                self.cfg.set_quotas(&q);
                self.disk.set_min_free(q.min_free_disk_bytes);
                Ok(Answer::Unit)
            }
        };
        d.answers.push((reply, out));
    }

    fn barrier(&mut self, b: &Batch, d: &mut Decided, op: BarrierOp, reply: Reply) {
        let seq = b.seq + 1 + d.barriers.len() as u64;
        d.barriers.push(Barrier { seq, op, reply });
    }

    /// `Ok` if `owner` owns mailbox `id`; anything else is "unknown".
    fn owned(
        &mut self,
        b: &mut Batch,
        owner: &OwnerKey,
        id: &ReceiveId,
    ) -> Result<(), RequestError> {
        match self.overlay.by_id(&mut b.view, &self.db, id)? {
            Some(e) if e.rec.owner == *owner => Ok(()),
            _ => Err(RequestError::UnknownMailbox),
        }
    }

    /// The owner's mailboxes, with counts as of this batch: listings come
    /// through the writer because redb's counts lag behind it.
    fn list(&mut self, b: &mut Batch, owner: &OwnerKey) -> Result<Vec<MailboxInfo>, RequestError> {
        let ids = View::get(&mut b.view, &self.db)?.owned(owner)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.overlay.by_id(&mut b.view, &self.db, &id)? {
                Some(e) if e.rec.owner == *owner => out.push(MailboxInfo {
                    receive_id: id,
                    send_id: e.rec.send_id,
                    envelopes: e.rec.envelopes,
                    bytes: e.rec.bytes,
                }),
                Some(_) => {
                    return Err(RequestError::internal(StoreError::corrupt(
                        "owner_index",
                        "lists a mailbox of another owner",
                    )));
                }
                // Deleted, and the applier has not committed it yet.
                None => {}
            }
        }
        Ok(out)
    }

    fn enqueue(
        &mut self,
        b: &mut Batch,
        d: &mut Decided,
        send: &SendId,
        digest: &TokenDigest,
        ciphertext: Bytes,
    ) -> Result<Enqueued, RequestError> {
        let Some((id, e)) = self.overlay.by_send(&mut b.view, &self.db, send)? else {
            return Err(RequestError::UnknownMailbox);
        };
        if !digest.ct_in(e.rec.tokens.as_slice()) {
            return Err(RequestError::BadToken);
        }
        let len = byte_len(&ciphertext);
        let cap = self.cfg.max_store_bytes;
        if (cap > 0 && self.totals.bytes.saturating_add(len) > cap) || self.disk.is_low() {
            return Err(RequestError::RelayFull);
        }
        if e.rec.envelopes >= self.cfg.max_envelopes_per_mailbox
            || e.rec.bytes.saturating_add(len) > self.cfg.max_bytes_per_mailbox
        {
            return Err(RequestError::QuotaExceeded);
        }
        let seq = e.rec.next_seq;
        let (Some(next_seq), Some(envelopes)) =
            (seq.checked_add(1), e.rec.envelopes.checked_add(1))
        else {
            return Err(RequestError::internal(StoreError::corrupt(
                "mailboxes",
                "counter at its maximum",
            )));
        };
        let expiry = expiry_hour(b.now_secs, self.cfg.envelope_ttl);
        e.rec.next_seq = next_seq;
        e.rec.envelopes = envelopes;
        e.rec.bytes = e.rec.bytes.saturating_add(len);
        e.touched = b.seq;
        self.totals.envelopes += 1;
        self.totals.bytes = self.totals.bytes.saturating_add(len);
        d.live.push((id, seq, expiry, ciphertext.clone()));
        d.fresh.insert((id, seq), len);
        d.effects.push(Effect::Put {
            id,
            seq,
            expiry,
            ciphertext,
        });
        Ok(Enqueued {
            receive_id: id,
            seq,
        })
    }

    fn ack(
        &mut self,
        b: &mut Batch,
        d: &mut Decided,
        owner: &OwnerKey,
        id: &ReceiveId,
        seqs: &[u64],
    ) -> Result<(), RequestError> {
        // A number at or above the mailbox's next one was never assigned:
        // dropped here, before any lookup, so made-up numbers cost no
        // redb read.
        let next = match self.overlay.by_id(&mut b.view, &self.db, id)? {
            Some(e) if e.rec.owner == *owner => e.rec.next_seq,
            _ => return Err(RequestError::UnknownMailbox),
        };
        let mut wanted: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| *s < next && !d.gone_set.contains(&(*id, *s)))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let found = self.find(b, d, id, &wanted)?;
        self.remove(b, d, id, found);
        Ok(())
    }

    /// Which of `seqs` are stored, with their lengths: this batch's new
    /// envelopes, the memtable, then a snapshot taken after it (an envelope
    /// the applier moved out of the memtable meanwhile is in that snapshot).
    /// `seqs` are not yet removed in this batch.
    fn find(
        &mut self,
        b: &mut Batch,
        d: &Decided,
        id: &ReceiveId,
        seqs: &[u64],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let looks = self.shared.memtable.lookup(id, seqs);
        let mut found = Vec::with_capacity(seqs.len());
        let mut absent = Vec::new();
        for (s, l) in seqs.iter().zip(looks) {
            if let Some(len) = d.fresh.get(&(*id, *s)) {
                found.push((*s, *len));
                continue;
            }
            match l {
                Lookup::Live { len } => found.push((*s, len)),
                Lookup::Gone => {}
                Lookup::Absent => absent.push(*s),
            }
        }
        if !absent.is_empty() {
            let view = b.view.insert(View::begin(&self.db)?);
            for s in absent {
                if let Some((_, len)) = view.envelope(id, s)? {
                    found.push((s, len));
                }
            }
        }
        Ok(found)
    }

    /// Takes found envelopes out of their mailbox's counts and journals
    /// their removal.
    fn remove(&mut self, b: &mut Batch, d: &mut Decided, id: &ReceiveId, found: Vec<(u64, u64)>) {
        if found.is_empty() {
            return;
        }
        let count = u32::try_from(found.len()).unwrap_or(u32::MAX);
        let bytes = found.iter().map(|f| f.1).fold(0u64, u64::saturating_add);
        if let Ok(Some(e)) = self.overlay.by_id(&mut b.view, &self.db, id) {
            e.rec.envelopes = e.rec.envelopes.saturating_sub(count);
            e.rec.bytes = e.rec.bytes.saturating_sub(bytes);
            e.touched = b.seq;
        }
        self.totals.envelopes = self.totals.envelopes.saturating_sub(u64::from(count));
        self.totals.bytes = self.totals.bytes.saturating_sub(bytes);
        let seqs: Vec<u64> = found.into_iter().map(|f| f.0).collect();
        for s in &seqs {
            d.gone.push((*id, *s));
            d.gone_set.insert((*id, *s));
        }
        for chunk in seqs.chunks(MAX_REMOVE) {
            d.effects.push(Effect::Remove {
                id: *id,
                seqs: chunk.to_vec(),
            });
        }
    }

    /// Removes up to `limit` expired envelopes: live ones in the memtable,
    /// and those redb's expiry index says are due. Returns how many.
    fn sweep(&mut self, b: &mut Batch, d: &mut Decided, limit: usize) -> Result<u64, StoreError> {
        let now_hour = hour_of(b.now_secs);
        let mut doomed: HashMap<ReceiveId, Vec<u64>> = HashMap::new();
        let mut n = 0usize;
        for (id, seq) in self.shared.memtable.expired(now_hour, limit) {
            if !d.gone_set.contains(&(id, seq)) {
                doomed.entry(id).or_default().push(seq);
                n += 1;
            }
        }
        let rows = View::begin(&self.db)?.due(now_hour, limit.saturating_sub(n))?;
        let mut candidates = Vec::new();
        for (hour, id, seq) in rows {
            if d.gone_set.contains(&(id, seq)) {
                continue;
            }
            // Gone: its removal is on its way. Live: it is in the memtable
            // too, and expires there (above).
            if self.shared.memtable.lookup(&id, &[seq]).first() == Some(&Lookup::Absent) {
                candidates.push((hour, id, seq));
            }
        }
        if !candidates.is_empty() {
            let view = b.view.insert(View::begin(&self.db)?);
            for (hour, id, seq) in candidates {
                match view.envelope(&id, seq)? {
                    // A damaged value counts as expired, so it goes too.
                    Some((own, _)) if own.is_none_or(|e| is_expired(e, now_hour)) => {
                        doomed.entry(id).or_default().push(seq);
                        if own.is_some_and(|e| e != hour) {
                            d.effects.push(Effect::Unindex { id, seq, hour });
                        }
                    }
                    // The row disagrees with its envelope, or points at
                    // nothing: only the row goes.
                    _ => d.effects.push(Effect::Unindex { id, seq, hour }),
                }
            }
        }
        let mut swept = 0u64;
        for (id, seqs) in doomed {
            let found = self.find(b, d, &id, &seqs)?;
            // Deleted meanwhile: the delete takes its envelopes.
            if self.overlay.by_id(&mut b.view, &self.db, &id)?.is_some() {
                swept += found.len() as u64;
                self.remove(b, d, &id, found);
            }
        }
        d.expired += swept;
        Ok(swept)
    }
}

/// Journal bytes a message may add to a batch's record (an upper bound).
fn msg_cost(msg: &Msg) -> usize {
    match msg {
        Msg::Request(Request {
            op: Op::Enqueue { ciphertext, .. },
            ..
        }) => PUT_OVERHEAD + ciphertext.len(),
        Msg::Request(Request {
            op: Op::Ack { seqs, .. },
            ..
        }) => 40 + 8 * seqs.len(),
        Msg::Request(Request { op: Op::Sweep, .. }) => SWEEP_SLICE * REMOVE_COST,
        _ => 0,
    }
}

/// Sorts one message into the batch or into what happens after it.
fn take(msg: Msg, batch: &mut Vec<Request>) -> After {
    match msg {
        Msg::Request(req) => {
            batch.push(req);
            After::Continue
        }
        Msg::Shutdown(done) => After::Stop(done),
        #[cfg(test)]
        Msg::Hold(gate) => After::Hold(gate),
        #[cfg(test)]
        Msg::Crash => After::Crash,
    }
}
