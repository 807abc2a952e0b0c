//! The [`Store`] handle: where callers meet the writer thread and the
//! database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use bytes::Bytes;
use chappe_proto::envelope::check_len;
use chappe_proto::frame::MAX_LIST;
use chappe_proto::{DeliveryToken, OwnerKey, ReceiveId, SendId, TokenDigest};
use redb::Database;
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::config::StoreConfig;
use crate::error::{RequestError, StoreError};
use crate::reads::{self, CheckReport, FetchArgs};
use crate::records::TokenList;
use crate::request::{Enqueued, MailboxInfo, Msg, Op, Reply, Request, StoredEnvelope};
use crate::schema;
use crate::stats::{Counters, StoreStats};
use crate::writer::Writer;

/// A handle on an open store. Cloning is cheap; all clones share one
/// database and one writer thread, which stops when the last clone is
/// dropped (after committing what was queued) or on [`Store::shutdown`].
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    tx: mpsc::Sender<Msg>,
    closing: AtomicBool,
    counters: Arc<Counters>,
    clock: Clock,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    /// Waits for the writer to finish its queue, so that once the last
    /// handle is gone the file is closed and can be opened again (redb
    /// locks it). This blocks for at most the batches still queued.
    fn drop(&mut self) {
        drop(self.tx.send(Msg::Shutdown(None)));
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("store writer thread panicked");
        }
    }
}

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
        let (db, totals) = schema::open(&cfg.path, cfg.quick_repair)?;
        let db = Arc::new(db);
        let counters = Arc::new(Counters::new(totals));
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(db.clone(), cfg, clock.clone(), counters.clone(), totals);
        let writer = std::thread::Builder::new()
            .name("chappe-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Spawn(Arc::new(e)))?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                tx,
                closing: AtomicBool::new(false),
                counters,
                clock,
                writer: Some(writer),
            }),
        })
    }

    fn submit<T>(
        &self,
        op: Op,
        reply: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Reply,
    ) -> Pending<T> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Pending(Err(RequestError::ShuttingDown));
        }
        let (tx, rx) = oneshot::channel();
        let msg = Msg::Request(Request {
            op,
            reply: reply(tx),
        });
        match self.inner.tx.send(msg) {
            Ok(()) => Pending(Ok(rx)),
            Err(_) => Pending(Err(RequestError::ShuttingDown)),
        }
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

    /// The mailboxes `owner` holds, in receive id order.
    pub fn list_mailboxes(&self, owner: OwnerKey) -> Result<Vec<MailboxInfo>, StoreError> {
        reads::list(&self.inner.db, &owner)
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
        // Refused before the queue: a bad length costs the writer nothing.
        if let Err(code) = check_len(ciphertext.len()) {
            return Pending(Err(RequestError::from_len_code(code)));
        }
        let op = Op::Enqueue {
            send,
            digest: token.digest(),
            ciphertext,
        };
        self.submit(op, Reply::Enqueued)
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
        reads::fetch(&self.inner.db, &args)
    }

    /// Deletes the given envelopes (at most 1024). Unknown or already
    /// deleted sequence numbers are ignored, so a repeated ack is harmless.
    pub async fn ack(
        &self,
        owner: OwnerKey,
        id: ReceiveId,
        seqs: Vec<u64>,
    ) -> Result<(), RequestError> {
        self.submit_ack(owner, id, seqs).wait().await
    }

    pub(crate) fn submit_ack(&self, owner: OwnerKey, id: ReceiveId, seqs: Vec<u64>) -> Pending<()> {
        if seqs.len() > MAX_LIST {
            return Pending(Err(RequestError::BadRequest("too many sequence numbers")));
        }
        self.submit(Op::Ack { owner, id, seqs }, Reply::Unit)
    }

    /// Counters as of the last commit; no database access.
    pub fn stats(&self) -> StoreStats {
        self.inner.counters.snapshot()
    }

    /// Deletes every expired envelope now and returns how many. The writer
    /// also does this by itself every minute, in slices.
    pub async fn sweep_expired(&self) -> Result<u64, StoreError> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(StoreError::WriterStopped);
        }
        let (tx, rx) = oneshot::channel();
        let msg = Msg::Request(Request {
            op: Op::Sweep,
            reply: Reply::Swept(tx),
        });
        if self.inner.tx.send(msg).is_err() {
            return Err(StoreError::WriterStopped);
        }
        rx.await.unwrap_or(Err(StoreError::WriterStopped))
    }

    /// Recounts the whole store and cross-checks its indexes, in one read
    /// snapshot. For the offline check command and tests; reads everything.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        reads::check(&self.inner.db)
    }

    /// Stops taking requests, lets the writer commit and answer everything
    /// queued before, then stops it. Later requests get `ShuttingDown`;
    /// reads keep working until the last handle is dropped.
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

    #[cfg(test)]
    pub(crate) fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }
}
