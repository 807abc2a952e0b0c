//! The [`Store`] handle: where callers meet the writer thread and the
//! database, and where a store is opened and its journal recovered.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use bytes::Bytes;
use chappe_proto::envelope::check_len;
use chappe_proto::frame::MAX_LIST;
use chappe_proto::{DeliveryToken, OwnerKey, ReceiveId, SendId, TokenDigest};
use redb::Database;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::answers::{Answers, Sink};
use crate::applier::{Applier, Shared, Unit};
use crate::backup::Snapshot;
use crate::clock::Clock;
use crate::config::StoreConfig;
use crate::disk::DiskGauge;
use crate::effect;
use crate::error::{JournalLoss, RequestError, StoreError};
use crate::journal::{Journal, record};
use crate::overlay::Overlay;
use crate::reads::{self, CheckReport, FetchArgs};
use crate::records::TokenList;
use crate::request::{Enqueued, MailboxInfo, Msg, Op, Reply, Request, StoredEnvelope};
use crate::schema::{self, JournalMark};
use crate::stats::{Counters, StoreStats};
use crate::writer::Writer;

/// A handle on an open store. Cloning is cheap; all clones share one
/// database, one journal and their two threads, which stop when the last
/// clone is dropped (after committing what was queued) or on
/// [`Store::shutdown`].
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    /// The directory holding the files, for free-space readings.
    dir: std::path::PathBuf,
    tx: mpsc::Sender<Msg>,
    /// The writer's queue slots for acknowledgements: see [`ACK_SLOTS`].
    slots: Arc<Semaphore>,
    closing: AtomicBool,
    shared: Arc<Shared>,
    clock: Clock,
    writer: Option<JoinHandle<()>>,
    applier: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    /// Waits for the writer to finish its queue and the applier to put the
    /// whole journal into redb, so that once the last handle is gone the
    /// file is closed and can be opened again (redb locks it). This blocks
    /// for at most the batches still queued and one redb commit.
    fn drop(&mut self) {
        drop(self.tx.send(Msg::Shutdown(None)));
        if let Some(t) = self.writer.take()
            && t.join().is_err()
        {
            tracing::error!("store writer thread panicked");
            // The writer passes the shutdown on; a dead one cannot.
            self.shared
                .inbox
                .send(crate::applier::ToApplier::Shutdown(None), true);
        }
        if let Some(t) = self.applier.take()
            && t.join().is_err()
        {
            tracing::error!("store applier thread panicked");
        }
    }
}

/// Acknowledgements that may wait for the writer at once, relay-wide.
///
/// An ack is the one request a session hands over without waiting for its
/// answer before it reads on, so without a bound a peer streaming `Ack`
/// frames grows the writer's queue as fast as it can write. The writer's
/// channel is a std one (the writer thread blocks on it), so the bound
/// lives here: [`Store::ack`] first waits for a slot, which the request
/// carries and the writer gives back once it has decided it. A caller that
/// finds the slots taken waits without holding a tokio worker, and the
/// session waiting on it stops reading, so QUIC flow control holds the
/// flooding peer back. Full slots hold at most 8 MiB of sequence numbers
/// (1,024 per ack), and one full batch (`StoreConfig::max_batch`, 1,024 by
/// default) fits, so the bound never shortens a batch.
///
/// Everything else is bounded before it gets here: a send by the relay's
/// send limits (per connection and relay-wide), and a mailbox request by
/// its session, which waits for the answer before it reads the next frame.
pub const ACK_SLOTS: usize = 1024;

/// A request handed to the writer, whose answer has not come yet.
///
/// The writer answers in the order requests were queued, and answers a
/// whole batch at once; a caller with many requests outstanding can wait
/// for the oldest and then collect every later one that is already
/// answered with [`Pending::try_wait`], and so reply to its peer in one
/// write instead of one per request.
pub struct Pending<T>(Result<oneshot::Receiver<Result<T, RequestError>>, RequestError>);

impl<T> Pending<T> {
    pub async fn wait(self) -> Result<T, RequestError> {
        match self.0 {
            // A dropped sender means the writer stopped before reaching it.
            Ok(rx) => rx.await.unwrap_or(Err(RequestError::ShuttingDown)),
            Err(e) => Err(e),
        }
    }

    /// The answer if it has come, without waiting; otherwise the request
    /// back, still pending.
    pub fn try_wait(self) -> Result<Result<T, RequestError>, Pending<T>> {
        match self.0 {
            Ok(mut rx) => match rx.try_recv() {
                Ok(answer) => Ok(answer),
                Err(oneshot::error::TryRecvError::Empty) => Err(Pending(Ok(rx))),
                Err(oneshot::error::TryRecvError::Closed) => Ok(Err(RequestError::ShuttingDown)),
            },
            Err(e) => Ok(Err(e)),
        }
    }
}

/// An enqueue request, or its refusal before the queue: a bad length costs
/// the writer nothing.
fn enqueue_op(send: SendId, token: &DeliveryToken, ciphertext: Bytes) -> Result<Op, RequestError> {
    check_len(ciphertext.len()).map_err(RequestError::from_len_code)?;
    Ok(Op::Enqueue {
        send,
        digest: token.digest(),
        ciphertext,
    })
}

fn token_list(tokens: &[TokenDigest]) -> Result<TokenList, RequestError> {
    TokenList::new(tokens).ok_or(RequestError::BadRequest("a mailbox needs 1 to 8 tokens"))
}

impl Store {
    /// Opens the store at `cfg.path`, creating it if missing, and starts
    /// the writer thread. Blocking (it reads the file); call it at startup
    /// or from `spawn_blocking`.
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        Store::open_with_clock(cfg, Clock::System)
    }

    pub(crate) fn open_with_clock(cfg: StoreConfig, clock: Clock) -> Result<Store, StoreError> {
        let schema::Opened { db, totals, mark } =
            schema::open_with(&cfg.path, cfg.cache_bytes, &cfg.faults)?;
        let db = Arc::new(db);
        let Recovered {
            journal,
            mark,
            units,
            head,
        } = recover(&cfg, mark)?;
        let replayed = units.len();
        let shared = Arc::new(Shared::new(Counters::new(totals), &mark));
        shared.counters.set_journal_capacity(journal.ring());
        let mut applier = Applier::new(db.clone(), shared.clone(), totals, mark, journal.ring());
        let last_seq = units.last().map_or(mark.seq, |u| u.seq);
        for unit in units {
            applier.take(unit);
        }
        // Also records the mark for a journal created just now.
        applier.commit_all()?;
        shared.counters.set_totals(applier.totals());
        if replayed > 0 {
            tracing::warn!(
                records = replayed,
                "the store was not closed cleanly; replayed its journal"
            );
        }
        let mut journal = journal;
        let journal_ring = journal.ring();
        journal.set_head(head);
        journal.set_faults(cfg.faults.clone());
        let dir = match cfg.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => ".".into(),
        };
        let writer = Writer {
            db: db.clone(),
            disk: DiskGauge::new(
                dir.clone(),
                cfg.min_free_disk_bytes,
                crate::disk::floor_for(journal.ring()),
            ),
            cfg,
            clock: clock.clone(),
            shared: shared.clone(),
            journal,
            overlay: Overlay::default(),
            next_seq: last_seq.max(applier.mark().seq) + 1,
            totals: applier.totals(),
            failed: false,
        };
        applier.watch_space(dir.clone(), crate::disk::floor_for(journal_ring));
        let spawn = |name: &str| std::thread::Builder::new().name(name.into());
        let applier = spawn("chappe-apply")
            .spawn(move || applier.run())
            .map_err(|e| StoreError::Spawn(Arc::new(e)))?;
        let (tx, rx) = mpsc::channel();
        let slots = Arc::new(Semaphore::new(ACK_SLOTS));
        let writer = spawn("chappe-store")
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Spawn(Arc::new(e)))?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                dir,
                tx,
                slots,
                closing: AtomicBool::new(false),
                shared,
                clock,
                writer: Some(writer),
                applier: Some(applier),
            }),
        })
    }

    fn submit<T>(
        &self,
        op: Op,
        reply: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Reply,
    ) -> Pending<T> {
        self.submit_in(None, op, reply)
    }

    fn submit_in<T>(
        &self,
        slot: Option<OwnedSemaphorePermit>,
        op: Op,
        reply: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Reply,
    ) -> Pending<T> {
        let (tx, rx) = oneshot::channel();
        match self.queue(Request {
            op,
            reply: reply(tx),
            slot,
        }) {
            Ok(()) => Pending(Ok(rx)),
            Err(e) => Pending(Err(e)),
        }
    }

    /// Hands a request to the writer. `ShuttingDown` once the store is
    /// closing or the writer has stopped; the request is then dropped with
    /// its reply (a [`Sink`] answers `ShuttingDown` when dropped).
    fn queue(&self, req: Request) -> Result<(), RequestError> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(RequestError::ShuttingDown);
        }
        self.inner
            .tx
            .send(Msg::Request(req))
            .map_err(|_| RequestError::ShuttingDown)
    }

    /// Creates a mailbox for `owner`, accepting senders that show a token
    /// whose digest is in `tokens` (1..=8). The relay draws both ids.
    pub async fn create_mailbox(
        &self,
        owner: OwnerKey,
        tokens: Vec<TokenDigest>,
    ) -> Result<MailboxInfo, RequestError> {
        self.submit_create(owner, &tokens).wait().await
    }

    pub(crate) fn submit_create(
        &self,
        owner: OwnerKey,
        tokens: &[TokenDigest],
    ) -> Pending<MailboxInfo> {
        match token_list(tokens) {
            Ok(tokens) => self.submit(
                Op::Create {
                    owner,
                    tokens: Box::new(tokens),
                },
                Reply::Info,
            ),
            Err(e) => Pending(Err(e)),
        }
    }

    /// Deletes a mailbox with everything in it. Its send id stops working
    /// at once.
    pub async fn delete_mailbox(&self, owner: OwnerKey, id: ReceiveId) -> Result<(), RequestError> {
        self.submit_delete(owner, id).wait().await
    }

    pub(crate) fn submit_delete(&self, owner: OwnerKey, id: ReceiveId) -> Pending<()> {
        self.submit(Op::Delete { owner, id }, Reply::Unit)
    }

    /// Replaces the mailbox's token digests: senders holding only a token
    /// left out are refused from the commit on.
    pub async fn set_tokens(
        &self,
        owner: OwnerKey,
        id: ReceiveId,
        tokens: Vec<TokenDigest>,
    ) -> Result<(), RequestError> {
        self.submit_set_tokens(owner, id, &tokens).wait().await
    }

    pub(crate) fn submit_set_tokens(
        &self,
        owner: OwnerKey,
        id: ReceiveId,
        tokens: &[TokenDigest],
    ) -> Pending<()> {
        match token_list(tokens) {
            Ok(tokens) => self.submit(
                Op::SetTokens {
                    owner,
                    id,
                    tokens: Box::new(tokens),
                },
                Reply::Unit,
            ),
            Err(e) => Pending(Err(e)),
        }
    }

    /// The mailboxes `owner` holds, in receive id order, with what each
    /// holds as of now (the writer answers, so nothing just sent or
    /// acknowledged is missed).
    pub async fn list_mailboxes(&self, owner: OwnerKey) -> Result<Vec<MailboxInfo>, StoreError> {
        self.submit(Op::List { owner }, Reply::List)
            .wait()
            .await
            .map_err(|e| match e {
                RequestError::Internal(e) => e,
                _ => StoreError::WriterStopped,
            })
    }

    /// Stores an envelope. `Ok` means it is on disk: the batch holding it
    /// was committed with an fsync.
    pub async fn enqueue(
        &self,
        send: SendId,
        token: DeliveryToken,
        ciphertext: Bytes,
    ) -> Result<Enqueued, RequestError> {
        self.submit_enqueue(send, &token, ciphertext).wait().await
    }

    /// [`Store::enqueue`] without waiting: the envelope is queued for the
    /// next group commit, and the answer comes through the [`Pending`].
    pub fn submit_enqueue(
        &self,
        send: SendId,
        token: &DeliveryToken,
        ciphertext: Bytes,
    ) -> Pending<Enqueued> {
        match enqueue_op(send, token, ciphertext) {
            Ok(op) => self.submit(op, Reply::Enqueued),
            Err(e) => Pending(Err(e)),
        }
    }

    /// [`Store::submit_enqueue`] with the answer going to `answers`,
    /// tagged `tag`, together with the ciphertext: for a session with many
    /// sends in flight, whose answers it writes in batches.
    pub fn submit_enqueue_to(
        &self,
        send: SendId,
        token: &DeliveryToken,
        ciphertext: Bytes,
        answers: &Arc<Answers>,
        tag: u32,
    ) {
        let sink = Sink::new(answers, tag, ciphertext.clone());
        match enqueue_op(send, token, ciphertext) {
            // Not queued: the sink, dropped with the request, answers.
            Ok(op) => drop(self.queue(Request {
                op,
                reply: Reply::Sink(sink),
                slot: None,
            })),
            Err(e) => sink.send(Err(e)),
        }
    }

    /// Up to `max_count` envelopes with sequence numbers from `from_seq`
    /// on, in order, skipping expired ones, stopping before `max_bytes` of
    /// ciphertext would be exceeded (but always returning at least one if
    /// any is there).
    pub fn fetch(
        &self,
        owner: OwnerKey,
        id: ReceiveId,
        from_seq: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEnvelope>, RequestError> {
        let args = FetchArgs {
            owner,
            id,
            from_seq,
            max_count,
            max_bytes,
            now_hour: self.inner.clock.now_hour(),
        };
        reads::fetch(&self.inner.db, &self.inner.shared.memtable, &args)
    }

    /// [`Store::fetch`] on tokio's blocking pool, for async callers: a read
    /// may wait on the disk (a cold mailbox) and copies up to `max_bytes`,
    /// which on an async worker would stall every other task on it, from
    /// handshakes to the answers of sends.
    pub async fn fetch_async(
        &self,
        owner: OwnerKey,
        id: ReceiveId,
        from_seq: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEnvelope>, RequestError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.fetch(owner, id, from_seq, max_count, max_bytes))
            .await
            .unwrap_or_else(|_| {
                Err(RequestError::internal(StoreError::Invariant(
                    "a store read ended without an answer",
                )))
            })
    }

    /// Deletes the given envelopes (at most 1024). Unknown or already
    /// deleted sequence numbers are ignored, so a repeated ack is harmless.
    /// Waits first for one of the [`ACK_SLOTS`].
    pub async fn ack(
        &self,
        owner: OwnerKey,
        id: ReceiveId,
        seqs: Vec<u64>,
    ) -> Result<(), RequestError> {
        if seqs.len() > MAX_LIST {
            return Err(RequestError::BadRequest("too many sequence numbers"));
        }
        let slot = self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RequestError::ShuttingDown)?;
        self.submit_in(Some(slot), Op::Ack { owner, id, seqs }, Reply::Unit)
            .wait()
            .await
    }

    /// [`Store::ack`] without a slot, for tests that queue many at once.
    #[cfg(test)]
    pub(crate) fn submit_ack(&self, owner: OwnerKey, id: ReceiveId, seqs: Vec<u64>) -> Pending<()> {
        if seqs.len() > MAX_LIST {
            return Pending(Err(RequestError::BadRequest("too many sequence numbers")));
        }
        self.submit(Op::Ack { owner, id, seqs }, Reply::Unit)
    }

    /// Answers once the writer thread takes requests: for a watchdog that
    /// must not vouch for a store whose writer hangs (on a stuck disk, say).
    pub async fn ping(&self) -> Result<(), RequestError> {
        self.submit(Op::Ping, Reply::Unit).wait().await
    }

    /// Applies new limits to every request queued after this call; answers
    /// once the writer has taken them.
    pub async fn set_quotas(&self, quotas: crate::config::Quotas) -> Result<(), RequestError> {
        self.submit(Op::SetQuotas(Box::new(quotas)), Reply::Unit)
            .wait()
            .await
    }

    /// Free bytes on the file system holding the store, as an unprivileged
    /// user sees them (one `statvfs`); `None` if it cannot be read.
    pub fn free_disk_bytes(&self) -> Option<u64> {
        crate::disk::free_bytes(&self.inner.dir).ok()
    }

    /// Counters as of the last commit; no database access.
    pub fn stats(&self) -> StoreStats {
        self.inner.shared.counters.snapshot()
    }

    /// Removes every expired envelope now and returns how many. The writer
    /// also does this by itself every minute, in slices.
    pub async fn sweep_expired(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            if self.inner.closing.load(Ordering::Acquire) {
                return Err(StoreError::WriterStopped);
            }
            let (tx, rx) = oneshot::channel();
            let msg = Msg::Request(Request {
                op: Op::Sweep,
                reply: Reply::Swept(tx),
                slot: None,
            });
            if self.inner.tx.send(msg).is_err() {
                return Err(StoreError::WriterStopped);
            }
            match rx.await.unwrap_or(Err(StoreError::WriterStopped))? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// Waits until everything queued before this call is in redb itself,
    /// not only in the journal. Listings then count it, and a copy of the
    /// redb file alone holds it.
    pub async fn flush(&self) -> Result<(), RequestError> {
        self.submit(Op::Flush, Reply::Unit).wait().await
    }

    /// Puts everything journaled into redb, then recounts the whole store
    /// and cross-checks its indexes, in one read snapshot. For tests and
    /// audits; reads everything.
    pub async fn check(&self) -> Result<CheckReport, StoreError> {
        self.flush().await.map_err(|e| match e {
            RequestError::Internal(e) => e,
            _ => StoreError::WriterStopped,
        })?;
        reads::check(&*self.inner.db)
    }

    /// The store as of one instant, for [`Snapshot::write`]: waits until
    /// everything answered before the call is in redb, then opens one read
    /// transaction. The relay keeps serving meanwhile; see [`crate::backup`].
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.flush().await.map_err(|e| match e {
            RequestError::Internal(e) => e,
            _ => StoreError::WriterStopped,
        })?;
        Snapshot::begin(&self.inner.db)
    }

    /// Stops taking requests, lets the writer commit and answer everything
    /// queued before and the applier put it all into redb, then stops both.
    /// Later requests get `ShuttingDown`; reads keep working until the last
    /// handle is dropped.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Msg::Shutdown(Some(tx))).is_ok() {
            drop(rx.await);
        }
    }

    /// Tests: the writer stops after its current batch until the returned
    /// sender is used or dropped; everything queued meanwhile is one batch.
    #[cfg(test)]
    pub(crate) fn hold(&self) -> mpsc::Sender<()> {
        let (gate, rx) = mpsc::channel();
        drop(self.inner.tx.send(Msg::Hold(rx)));
        gate
    }

    /// Tests: the database, to look at tables no method reports on.
    #[cfg(test)]
    pub(crate) fn db(&self) -> &Database {
        &self.inner.db
    }

    /// Tests: stops the writer and the applier as a kill would, without
    /// applying what is journaled; drop the store afterwards and open it
    /// again to recover.
    #[cfg(test)]
    pub(crate) fn crash(&self) {
        self.inner.closing.store(true, Ordering::Release);
        drop(self.inner.tx.send(Msg::Crash));
    }

    /// Tests: slots in the memtable.
    #[cfg(test)]
    pub(crate) fn memtable_len(&self) -> usize {
        self.inner.shared.memtable.len()
    }

    #[cfg(test)]
    pub(crate) fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }
}

/// The journal as recovery found it.
struct Recovered {
    journal: Journal,
    /// The mark, with this journal's id.
    mark: JournalMark,
    /// Records newer than the mark, to apply before serving.
    units: Vec<Unit>,
    /// Where the writer continues.
    head: u64,
}

/// What the journal next to a store holds, read without changing anything:
/// what opening the store acts on, and what `chappe-relay check` reports.
pub(crate) enum Examined {
    /// The store has no mark (new, or upgraded from before the journal):
    /// a new journal is made; one found there belongs to nothing.
    Unmarked { stray: bool },
    /// The store has a mark and there is no journal file.
    Missing { clean: bool },
    /// The journal belongs to another store.
    Mismatch,
    /// The journal is in an older format.
    OldFormat { version: u32, clean: bool },
    /// The journal, read from the mark.
    Read(Box<Reading>),
}

/// The journal read from the store's mark.
pub(crate) struct Reading {
    pub journal: Journal,
    pub mark: JournalMark,
    /// The chain of records after the mark: replayed at open.
    pub units: Vec<Unit>,
    /// Where the chain ends: the writer continues here.
    pub head: u64,
    /// The chain's last sequence number (the mark's, if it is empty).
    pub last_seq: u64,
    /// Intact records beyond a break in the chain (damage in the middle),
    /// and the highest number among them; `None` after a clean stop (the
    /// chain then ends where the last run stopped writing) or when nothing
    /// follows the break (a torn tail, or no tail at all).
    pub damage: Option<(JournalLoss, u64)>,
}

/// Reads the journal at `path` against the store's `mark`.
pub(crate) fn examine(path: &Path, mark: Option<JournalMark>) -> Result<Examined, StoreError> {
    let existing = Journal::open(path)?;
    let (mark, journal) = match (mark, existing) {
        (None, j) => return Ok(Examined::Unmarked { stray: j.is_some() }),
        (Some(m), None) => return Ok(Examined::Missing { clean: m.clean }),
        (Some(m), Some(j)) if j.id() != m.id => return Ok(Examined::Mismatch),
        (Some(m), Some(j)) if j.version() != record::VERSION => {
            return Ok(Examined::OldFormat {
                version: j.version(),
                clean: m.clean,
            });
        }
        (Some(m), Some(j)) => (m, j),
    };
    let mut scan = journal.scan(mark.pos, mark.seq);
    let mut units = Vec::new();
    for rec in scan.by_ref() {
        let rec = rec.map_err(|e| StoreError::journal_io(path, e))?;
        units.push(unit(path, rec)?);
    }
    let (head, last_seq) = (scan.position(), scan.last_seq());
    drop(scan);
    // After a clean stop nothing was written past the chain's end. After
    // any other, the writer may have reached one ring past the mark.
    let damage = if mark.clean {
        None
    } else {
        let later = journal
            .later(head, mark.pos + journal.ring(), last_seq)
            .map_err(|e| StoreError::journal_io(path, e))?;
        (!later.is_empty()).then(|| (loss(&later.records), later.last))
    };
    Ok(Examined::Read(Box::new(Reading {
        journal,
        mark,
        units,
        head,
        last_seq,
        damage,
    })))
}

/// A record's effects, for the applier.
fn unit(path: &Path, rec: crate::journal::Record) -> Result<Unit, StoreError> {
    let effects = effect::decode(&rec.payload).map_err(|e| StoreError::JournalRecord {
        path: path.to_owned(),
        seq: rec.seq,
        detail: e.to_string(),
    })?;
    Ok(Unit {
        seq: rec.seq,
        end: rec.end,
        effects,
    })
}

/// What `records` hold, in the terms an operator weighs a loss in.
pub(crate) fn loss(records: &[crate::journal::Record]) -> JournalLoss {
    let mut l = JournalLoss {
        records: records.len() as u64,
        first_seq: records.first().map_or(0, |r| r.seq),
        last_seq: records.last().map_or(0, |r| r.seq),
        ..JournalLoss::default()
    };
    for r in records {
        match effect::decode(&r.payload) {
            Ok(effects) => count(&mut l, &effects),
            Err(_) => l.undecodable += 1,
        }
    }
    l
}

/// What decoded records hold (the chain a start replays).
pub(crate) fn loss_of_units(units: &[Unit]) -> JournalLoss {
    let mut l = JournalLoss {
        records: units.len() as u64,
        first_seq: units.first().map_or(0, |u| u.seq),
        last_seq: units.last().map_or(0, |u| u.seq),
        ..JournalLoss::default()
    };
    for u in units {
        count(&mut l, &u.effects);
    }
    l
}

/// Adds what `effects` store and remove to `l`.
pub(crate) fn count(l: &mut JournalLoss, effects: &[effect::Effect]) {
    for e in effects {
        match e {
            effect::Effect::Put { ciphertext, .. } => {
                l.envelopes += 1;
                l.bytes = l.bytes.saturating_add(ciphertext.len() as u64);
            }
            effect::Effect::Remove { seqs, .. } => l.removed += seqs.len() as u64,
            effect::Effect::Unindex { .. } => {}
        }
    }
}

/// Opens the store's journal and reads what it holds beyond `mark`, or
/// creates a journal if there is none. Refuses what would lose
/// acknowledged data unless `cfg.discard_damaged_journal` says to accept it.
fn recover(cfg: &StoreConfig, mark: Option<JournalMark>) -> Result<Recovered, StoreError> {
    let path = &cfg.journal_path();
    let discard = cfg.discard_damaged_journal;
    let fresh = |seq: u64| -> Result<Recovered, StoreError> {
        let journal = Journal::create(path, cfg.journal_bytes)?;
        Ok(Recovered {
            mark: JournalMark {
                id: journal.id(),
                seq,
                pos: 0,
                clean: false,
            },
            journal,
            units: Vec::new(),
            head: 0,
        })
    };
    let seq = mark.map_or(0, |m| m.seq);
    let r = match examine(path, mark)? {
        Examined::Unmarked { stray } => {
            if stray {
                tracing::warn!(
                    path = %path.display(),
                    "replacing a journal that no store refers to"
                );
            }
            return fresh(0);
        }
        Examined::Missing { clean: true } => return fresh(seq),
        Examined::Missing { clean: false } if discard => {
            tracing::warn!(
                path = %path.display(),
                "the journal is missing after an unclean stop; as told \
                 (--discard-damaged-journal), starting a new one: what it held beyond the \
                 store's last checkpoint is lost"
            );
            return fresh(seq);
        }
        Examined::Missing { clean: false } => {
            return Err(StoreError::JournalMissing {
                path: path.to_owned(),
            });
        }
        Examined::Mismatch => {
            return Err(StoreError::JournalMismatch {
                path: path.to_owned(),
            });
        }
        Examined::OldFormat { version, clean } => {
            if clean {
                // A clean stop applied all of it: nothing to replay.
                tracing::info!(
                    path = %path.display(),
                    version,
                    "replacing a fully applied journal of an older format"
                );
            } else if discard {
                tracing::warn!(
                    path = %path.display(),
                    version,
                    "replacing a journal of an older format after an unclean stop, as told \
                     (--discard-damaged-journal): what it held beyond the store's last \
                     checkpoint is lost"
                );
            } else {
                return Err(StoreError::JournalFormat {
                    path: path.to_owned(),
                    version,
                });
            }
            return fresh(seq);
        }
        Examined::Read(r) => r,
    };
    let Reading {
        journal,
        mut mark,
        units,
        head,
        last_seq,
        damage,
    } = *r;
    if let Some((lost, highest)) = damage {
        if !discard {
            return Err(StoreError::JournalDamaged {
                path: path.to_owned(),
                pos: head,
                after_seq: last_seq,
                lost,
            });
        }
        tracing::warn!(
            path = %path.display(),
            position = head,
            after = last_seq,
            "the journal is damaged; as told (--discard-damaged-journal), dropping what follows \
             the damage: {lost}"
        );
        // The dropped records stay in the ring until overwritten. Numbering
        // goes on past them, so that neither the chain nor this search
        // ever takes one of them for a newer record again.
        mark.seq = mark.seq.max(highest);
    }
    if journal.ring() != cfg.journal_bytes {
        tracing::info!(
            size = journal.ring(),
            configured = cfg.journal_bytes,
            "the journal keeps the size it was created with; a new size applies to a new journal"
        );
    }
    Ok(Recovered {
        journal,
        mark,
        units,
        head,
    })
}
