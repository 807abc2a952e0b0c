//! The applier thread: moves journaled batches into redb.
//!
//! The writer hands over each synced batch as a [`Unit`] of effects. The
//! applier keeps them in a window for a while ([`HOLD`]) before it writes
//! them, because most envelopes of a live conversation are acknowledged
//! within milliseconds: when a remove arrives for an envelope still in the
//! window, both are dropped, and that envelope costs redb nothing (it was
//! durable in the journal the whole time it needed to be). Every [`STEP`],
//! what is older than `HOLD`, or everything once the window holds more
//! journal than [`Applier::high`], goes into redb in one transaction,
//! committed with
//! `Durability::Immediate` and redb's quick-repair (so a crash never costs
//! a full file scan), together with the journal mark that says how far the
//! journal is now applied.
//!
//! Mailbox changes (create, delete, tokens) and flushes come as barriers:
//! everything before them is applied and committed with them, and they are
//! answered after that commit.
//!
//! A failed commit leaves redb as it was and the journal intact, but the
//! applier cannot make progress: redb latches the failure until the
//! database is reopened. It marks the store failed (read-only, by the
//! error's kind), the writer refuses further writes, and a restart replays
//! the journal. While the disk is below the store's floor (the writer
//! watches it, `crate::disk`) the applier commits nothing at all, so that
//! a full disk never becomes a failed commit: it waits, with the window
//! and the journal intact, and goes on when there is room again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chappe_proto::{OwnerKey, ReceiveId};
use redb::{Database, Durability};
use tokio::sync::oneshot;

use crate::disk::ReadOnly;
use crate::effect::Effect;
use crate::error::{RequestError, StoreError};
use crate::memtable::MemTable;
use crate::ops::{Fail, Tx};
use crate::records::TokenList;
use crate::request::{Answer, Reply};
use crate::schema::{JournalMark, Totals};
use crate::stats::Counters;

/// How long an envelope waits in the window for its acknowledgement
/// before it is written to redb: between `HOLD` and `HOLD + STEP`.
pub(crate) const HOLD: Duration = Duration::from_millis(200);

/// How often the applier commits what has waited `HOLD`. Small commits
/// often, rather than everything half as old as `HOLD` at once: a commit's
/// pages and its sync sit in front of the journal's next sync on the same
/// disk, and a 100 ms slice of a durable load (a few MB) held every
/// journal sync behind it for 21–40 ms, the whole pipeline of sends with
/// it (durable send p99 37 ms). The hold itself stays long, so that an
/// owner's acknowledgement still finds its envelope in the window.
pub(crate) const STEP: Duration = Duration::from_millis(20);

/// How often an applier held off by a full disk looks again.
const NO_SPACE_WAIT: Duration = Duration::from_millis(250);

/// Messages for the applier. Units do not wake it: it collects them when it
/// wakes on its own (at most `STEP` or `HOLD` later), which spares a
/// thread wake-up per group commit. Everything else rings.
pub(crate) struct Inbox {
    queue: Mutex<VecDeque<ToApplier>>,
    bell: Condvar,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, VecDeque<ToApplier>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message; `ring` wakes the applier now.
    pub(crate) fn send(&self, msg: ToApplier, ring: bool) {
        self.lock().push_back(msg);
        if ring {
            self.bell.notify_one();
        }
    }

    /// Everything queued, waiting at most `limit` if nothing is.
    fn take(&self, limit: Duration) -> VecDeque<ToApplier> {
        let mut q = self.lock();
        if q.is_empty() {
            q = match self.bell.wait_timeout(q, limit) {
                Ok((q, _)) => q,
                Err(p) => p.into_inner().0,
            };
        }
        std::mem::take(&mut *q)
    }
}

/// What the writer and the applier share.
pub(crate) struct Shared {
    pub memtable: MemTable,
    pub counters: Counters,
    /// The writer sequence number of the last unit or barrier committed.
    applied_seq: AtomicU64,
    /// Where the oldest journal record still needed starts.
    applied_pos: AtomicU64,
    /// Rung after every commit, for a writer waiting for journal room.
    room: (Mutex<()>, Condvar),
    pub inbox: Inbox,
}

impl Shared {
    pub(crate) fn new(counters: Counters, mark: &JournalMark) -> Self {
        Shared {
            memtable: MemTable::default(),
            counters,
            applied_seq: AtomicU64::new(mark.seq),
            applied_pos: AtomicU64::new(mark.pos),
            room: (Mutex::new(()), Condvar::new()),
            inbox: Inbox {
                queue: Mutex::new(VecDeque::new()),
                bell: Condvar::new(),
            },
        }
    }

    pub(crate) fn applied_seq(&self) -> u64 {
        self.applied_seq.load(Ordering::Acquire)
    }

    pub(crate) fn applied_pos(&self) -> u64 {
        self.applied_pos.load(Ordering::Acquire)
    }

    /// Waits (at most `limit`) for the applier to commit something.
    pub(crate) fn wait_for_room(&self, limit: Duration) {
        let (lock, bell) = &self.room;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        drop(bell.wait_timeout(guard, limit));
    }

    fn ring(&self) {
        let (lock, bell) = &self.room;
        drop(lock.lock().unwrap_or_else(|p| p.into_inner()));
        bell.notify_all();
    }
}

/// A synced journal record's effects.
pub(crate) struct Unit {
    pub seq: u64,
    /// Where the next journal record starts.
    pub end: u64,
    pub effects: Vec<Effect>,
}

/// A mailbox change or flush, answered after the commit that holds it.
pub(crate) struct Barrier {
    pub seq: u64,
    pub op: BarrierOp,
    pub reply: Reply,
}

pub(crate) enum BarrierOp {
    Create {
        owner: OwnerKey,
        tokens: Box<TokenList>,
        /// `max_mailboxes_per_owner` when the writer took the request.
        max_owned: u32,
    },
    Delete {
        owner: OwnerKey,
        id: ReceiveId,
    },
    SetTokens {
        owner: OwnerKey,
        id: ReceiveId,
        tokens: Box<TokenList>,
    },
    Flush,
}

pub(crate) enum ToApplier {
    Unit(Unit),
    Barrier(Barrier),
    /// The writer is out of journal room: apply everything now.
    MakeRoom,
    /// Apply everything, record a clean mark, stop.
    Shutdown(Option<oneshot::Sender<()>>),
    /// Tests: stop now, applying nothing.
    #[cfg(test)]
    Crash,
}

/// An effect waiting in the window.
enum Held {
    /// `None` once cancelled by a remove in the window.
    Put {
        id: ReceiveId,
        seq: u64,
        expiry: u32,
        ciphertext: Option<Bytes>,
    },
    Remove {
        id: ReceiveId,
        /// To delete from redb.
        seqs: Vec<u64>,
        /// Cancelled against puts in the window: their tombstones go.
        cancelled: Vec<u64>,
    },
    Unindex {
        id: ReceiveId,
        seq: u64,
        hour: u32,
    },
}

struct HeldUnit {
    seq: u64,
    end: u64,
    arrived: Instant,
    effects: Vec<Held>,
}

/// What a commit changed besides redb, to be published after it.
#[derive(Default)]
struct Applied {
    stored: Vec<(ReceiveId, u64)>,
    removed: Vec<(ReceiveId, u64)>,
    deleted: Vec<ReceiveId>,
    unwritten: u64,
    /// One per barrier, in order.
    answers: Vec<Result<Answer, RequestError>>,
}

pub(crate) struct Applier {
    db: Arc<Database>,
    shared: Arc<Shared>,
    totals: Totals,
    mark: JournalMark,
    window: VecDeque<HeldUnit>,
    /// Puts in the window not yet cancelled: where to find them.
    puts: HashMap<(ReceiveId, u64), u64>,
    barriers: Vec<Barrier>,
    /// Apply everything once the window holds this many journal bytes...
    high: u64,
    /// ...down to this many.
    low: u64,
    failed: bool,
    /// The directory holding the store, and the free space a checkpoint
    /// needs there (`crate::disk::floor_for`).
    dir: std::path::PathBuf,
    floor: u64,
}

impl Applier {
    pub(crate) fn new(
        db: Arc<Database>,
        shared: Arc<Shared>,
        totals: Totals,
        mark: JournalMark,
        ring: u64,
    ) -> Self {
        Applier {
            db,
            shared,
            totals,
            mark,
            window: VecDeque::new(),
            puts: HashMap::new(),
            barriers: Vec::new(),
            high: ring / 4,
            low: ring / 8,
            failed: false,
            dir: ".".into(),
            floor: 0,
        }
    }

    /// Makes every running checkpoint first look for `floor` bytes free in
    /// `dir`; without it (recovery at open) it does not look.
    pub(crate) fn watch_space(&mut self, dir: std::path::PathBuf, floor: u64) {
        self.dir = dir;
        self.floor = floor;
    }

    /// Journal bytes in the window.
    fn window_bytes(&self) -> u64 {
        self.window
            .back()
            .map_or(0, |u| u.end.saturating_sub(self.mark.pos))
    }

    /// Takes a unit into the window, cancelling its removes against puts
    /// still there.
    pub(crate) fn take(&mut self, unit: Unit) {
        let mut effects = Vec::with_capacity(unit.effects.len());
        for e in unit.effects {
            effects.push(match e {
                Effect::Put {
                    id,
                    seq,
                    expiry,
                    ciphertext,
                } => {
                    self.puts.insert((id, seq), unit.seq);
                    Held::Put {
                        id,
                        seq,
                        expiry,
                        ciphertext: Some(ciphertext),
                    }
                }
                Effect::Remove { id, seqs } => {
                    let (cancelled, seqs): (Vec<u64>, Vec<u64>) =
                        seqs.into_iter().partition(|s| self.cancel(&id, *s));
                    Held::Remove {
                        id,
                        seqs,
                        cancelled,
                    }
                }
                Effect::Unindex { id, seq, hour } => Held::Unindex { id, seq, hour },
            });
        }
        self.window.push_back(HeldUnit {
            seq: unit.seq,
            end: unit.end,
            arrived: Instant::now(),
            effects,
        });
    }

    /// Cancels the put of `(id, seq)` if it is in the window.
    fn cancel(&mut self, id: &ReceiveId, seq: u64) -> bool {
        let Some(unit_seq) = self.puts.remove(&(*id, seq)) else {
            return false;
        };
        let Ok(i) = self.window.binary_search_by_key(&unit_seq, |u| u.seq) else {
            return false;
        };
        let Some(unit) = self.window.get_mut(i) else {
            return false;
        };
        for e in &mut unit.effects {
            if let Held::Put {
                id: pid,
                seq: ps,
                ciphertext,
                ..
            } = e
                && pid == id
                && *ps == seq
            {
                *ciphertext = None;
                return true;
            }
        }
        false
    }

    /// Runs until shutdown.
    pub(crate) fn run(mut self) {
        let mut last = Instant::now();
        // The ripe units wrote nothing: the next commit comes `HOLD / 2`
        // after the last.
        let mut idle = false;
        loop {
            let wait = match self.window.front() {
                Some(_) if idle => last + HOLD / 2,
                Some(u) => (u.arrived + HOLD).max(last + STEP),
                None => Instant::now() + HOLD,
            }
            .saturating_duration_since(Instant::now());
            // No space: nothing is due until the writer sees room again.
            let full = self.shared.counters.read_only() == Some(ReadOnly::NoSpace);
            let wait = if full { wait.max(NO_SPACE_WAIT) } else { wait };
            let mut all = false;
            let mut stop = None;
            for msg in self.shared.inbox.take(wait) {
                match msg {
                    ToApplier::Unit(u) => self.take(u),
                    ToApplier::Barrier(b) => {
                        self.barriers.push(b);
                        all = true;
                    }
                    ToApplier::MakeRoom => all = true,
                    ToApplier::Shutdown(done) => {
                        stop = Some(done);
                        break;
                    }
                    #[cfg(test)]
                    ToApplier::Crash => return,
                }
            }
            if let Some(done) = stop {
                self.apply(self.window.len(), true);
                if let Some(done) = done {
                    let _ = done.send(());
                }
                break;
            }
            let now = Instant::now();
            let n = if all {
                self.window.len()
            } else if now >= last + STEP {
                // A commit with nothing to write still costs a redb sync:
                // while acknowledgements cancel everything (an online
                // owner), only every `HOLD / 2`, to move the mark.
                let n = self.due();
                idle = n > 0 && now < last + HOLD / 2 && !self.writes_any(n);
                if idle { 0 } else { n }
            } else {
                0
            };
            if n > 0 || !self.barriers.is_empty() {
                if !self.has_room() {
                    continue;
                }
                self.apply(n, false);
                last = Instant::now();
                idle = false;
            }
        }
        tracing::debug!("store applier stopped");
    }

    /// Whether there is room for a checkpoint: free space above the
    /// store's floor, read now (one `statvfs`, at most once a commit), not
    /// from the writer's cached reading, because the disk may have filled
    /// since. A failed reading counts as room: a broken check must not
    /// stop the store (the commit itself still fails if the disk is full).
    /// A full disk is published at once; only the writer clears it (its
    /// reading decides what it accepts, so the flag and its refusals never
    /// disagree).
    fn has_room(&self) -> bool {
        let room = crate::disk::free_bytes(&self.dir).map_or(true, |free| free >= self.floor);
        if !room {
            self.shared.counters.set_no_space(true);
        }
        room
    }

    /// Whether the first `n` units hold anything redb must write.
    fn writes_any(&self, n: usize) -> bool {
        self.window.iter().take(n).any(|u| {
            u.effects.iter().any(|e| match e {
                Held::Put { ciphertext, .. } => ciphertext.is_some(),
                Held::Remove { seqs, .. } => !seqs.is_empty(),
                Held::Unindex { .. } => true,
            })
        })
    }

    /// How many units to apply now: those at least `HOLD` old, and then
    /// more while the window holds more journal than `high` (down to
    /// `low`).
    fn due(&self) -> usize {
        let now = Instant::now();
        let mut n = self
            .window
            .iter()
            .take_while(|u| now.duration_since(u.arrived) >= HOLD)
            .count();
        let total = self.window_bytes();
        if total > self.high {
            while let Some(u) = self.window.get(n) {
                let left = self
                    .window
                    .back()
                    .map_or(0, |b| b.end.saturating_sub(u.end));
                n += 1;
                if left <= self.low {
                    break;
                }
            }
        }
        n
    }

    /// Applies the first `n` units of the window (and, when every unit is
    /// applied, the barriers) in one transaction. Returns false if the
    /// store failed.
    pub(crate) fn apply(&mut self, n: usize, clean: bool) -> bool {
        let with_barriers = n >= self.window.len();
        if self.failed {
            self.refuse_barriers();
            return false;
        }
        match self.commit(n, with_barriers, clean) {
            Ok(applied) => {
                self.publish(n, with_barriers, applied);
                true
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "store checkpoint failed; the store takes no more writes until the relay \
                     is restarted (the journal keeps everything acknowledged)"
                );
                self.failed = true;
                self.shared.counters.fail(e.read_only_kind());
                self.refuse_barriers();
                self.shared.ring();
                false
            }
        }
    }

    /// Applies the whole window now, for recovery at open: unlike the
    /// running applier, a failure here is the caller's to report.
    pub(crate) fn commit_all(&mut self) -> Result<(), StoreError> {
        let n = self.window.len();
        let applied = self.commit(n, true, false)?;
        self.publish(n, true, applied);
        Ok(())
    }

    fn refuse_barriers(&mut self) {
        for b in self.barriers.drain(..) {
            b.reply
                .refuse(RequestError::Internal(StoreError::WriterStopped));
        }
    }

    fn commit(
        &mut self,
        n: usize,
        with_barriers: bool,
        clean: bool,
    ) -> Result<Applied, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(true);
        let mut out = Applied::default();
        let mut mark = self.mark;
        mark.clean = clean;
        let totals = {
            let mut tx = Tx::open(&txn, self.totals)?;
            for unit in self.window.iter().take(n) {
                for e in &unit.effects {
                    apply_effect(&mut tx, e, &mut out)?;
                }
                mark.seq = mark.seq.max(unit.seq);
                mark.pos = unit.end;
            }
            if with_barriers {
                for b in &self.barriers {
                    let answer = match &b.op {
                        BarrierOp::Create {
                            owner,
                            tokens,
                            max_owned,
                        } => tx.create(*max_owned, owner, tokens).map(Answer::Info),
                        BarrierOp::Delete { owner, id } => tx.delete(owner, id).map(|()| {
                            out.deleted.push(*id);
                            Answer::Unit
                        }),
                        BarrierOp::SetTokens { owner, id, tokens } => {
                            tx.set_tokens(owner, id, tokens).map(|()| Answer::Unit)
                        }
                        BarrierOp::Flush => Ok(Answer::Unit),
                    };
                    match answer {
                        Ok(a) => out.answers.push(Ok(a)),
                        Err(Fail::Refuse(e)) => out.answers.push(Err(e)),
                        Err(Fail::Abort(e)) => return Err(e),
                    }
                    mark.seq = mark.seq.max(b.seq);
                }
            }
            tx.finish(&mark)?;
            tx.totals()
        };
        txn.commit()?;
        self.mark = mark;
        self.totals = totals;
        Ok(out)
    }

    /// After a commit: what readers and the writer may now rely on.
    fn publish(&mut self, n: usize, with_barriers: bool, applied: Applied) {
        let units: Vec<HeldUnit> = self.window.drain(..n).collect();
        for u in &units {
            for e in &u.effects {
                if let Held::Put { id, seq, .. } = e {
                    self.puts.remove(&(*id, *seq));
                }
            }
        }
        // Committed first, released second: a reader that finds a slot
        // gone finds its redb row (or its deletion) in a later snapshot.
        self.shared
            .memtable
            .release(applied.stored, applied.removed);
        for id in &applied.deleted {
            self.shared.memtable.drop_mailbox(id);
        }
        self.shared
            .applied_seq
            .store(self.mark.seq, Ordering::Release);
        self.shared
            .applied_pos
            .store(self.mark.pos, Ordering::Release);
        self.shared
            .counters
            .checkpointed(self.totals.mailboxes, applied.unwritten);
        if with_barriers {
            for (b, answer) in self.barriers.drain(..).zip(applied.answers) {
                b.reply.send(answer);
            }
        }
        self.shared.ring();
    }

    pub(crate) fn mark(&self) -> JournalMark {
        self.mark
    }

    pub(crate) fn totals(&self) -> Totals {
        self.totals
    }
}

fn apply_effect(tx: &mut Tx<'_>, e: &Held, out: &mut Applied) -> Result<(), StoreError> {
    match e {
        Held::Put {
            id,
            seq,
            expiry,
            ciphertext: Some(ct),
        } => {
            tx.put(id, *seq, *expiry, ct)?;
            out.stored.push((*id, *seq));
        }
        Held::Put {
            id,
            seq,
            ciphertext: None,
            ..
        } => {
            tx.skip(id, *seq)?;
            out.unwritten += 1;
        }
        Held::Remove {
            id,
            seqs,
            cancelled,
        } => {
            tx.remove(id, seqs)?;
            out.removed.extend(seqs.iter().map(|s| (*id, *s)));
            out.removed.extend(cancelled.iter().map(|s| (*id, *s)));
        }
        Held::Unindex { id, seq, hour } => tx.unindex(id, *seq, *hour)?,
    }
    Ok(())
}
