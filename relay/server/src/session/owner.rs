//! The mailbox owner session.
//!
//! Requests (create, delete, set tokens, list, subscribe) are answered in
//! order. Delivery runs per subscribed mailbox with a cursor (the next
//! sequence number to deliver) and a window of unacknowledged envelopes:
//! live pushes that continue the cursor go straight out; anything else (a
//! gap, an out-of-order push, a full window, a full outbox, a backlog) is
//! caught up by reading the store from the cursor. The store is the truth,
//! pushes are only a shortcut, so a lost push delays an envelope but never
//! loses it.
//!
//! Reading and writing are independent: the session never waits for the
//! peer to read before it reads the next frame. Deliveries are queued only
//! while the outbox has room (otherwise the mailbox is caught up from the
//! store once there is), answers at once. A client that waits to write its
//! acks before it reads more deliveries therefore always gets its acks
//! read; were the session to wait on the outbox, both sides would wait for
//! ever while keep-alives held the connection open.
//!
//! What a peer can make the session hold is bounded: acks by
//! [`ACKS_IN_FLIGHT`] and [`ACKS_HELD`] (then the session stops reading,
//! and QUIC flow control holds the peer back), deliveries by the outbox's
//! depth and the delivery window, answers by [`OUTBOX_LIMIT`]. Store reads
//! run on tokio's blocking pool, so a cold mailbox costs its own session
//! time, not everyone else's.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chappe_proto::frame::{Frame, MAX_LIST, MailboxEntry};
use chappe_proto::{OwnerKey, ReceiveId, ResultCode};
use chappe_store::RequestError;
use tokio::task::{JoinError, JoinSet};

use super::SessionError;
use super::stream::{FrameReader, OUTBOX_DEPTH, Outbox, spawn_writer};
use crate::relay::Relay;
use crate::router::{Listener, Push, Pushes, SessionId};

/// Bytes one catch-up read may return.
const FETCH_BYTES: usize = 1 << 20;
/// Ack requests one session may have at the store at once. Acks read
/// meanwhile are held and merged, so an owner that acknowledges each
/// envelope in a frame of its own still has them deleted in requests of up
/// to 1,024 numbers: the bound costs an honest owner no throughput.
const ACKS_IN_FLIGHT: usize = 4;
/// Sequence numbers read and held while [`ACKS_IN_FLIGHT`] requests are at
/// the store; with this many held, the session reads no more frames until
/// one of those requests is answered.
const ACKS_HELD: usize = 4 * MAX_LIST;
/// Frames queued for the peer beyond which the session reads no more
/// frames. Deliveries stop at [`OUTBOX_DEPTH`], so only answers take the
/// outbox this far: a peer that sends requests without reading their
/// answers.
const OUTBOX_LIMIT: usize = 2 * OUTBOX_DEPTH;

struct Subscription {
    cursor: u64,
    inflight: u32,
    need_fetch: bool,
}

struct Owner<'a> {
    relay: &'a Arc<Relay>,
    key: OwnerKey,
    session: SessionId,
    outbox: Outbox,
    listener: Listener,
    subs: HashMap<ReceiveId, Subscription>,
    acks: Acks,
}

pub async fn run(
    relay: &Arc<Relay>,
    send: quinn::SendStream,
    mut reader: FrameReader,
    key: OwnerKey,
) -> Result<(), SessionError> {
    let (outbox, writer) = spawn_writer(send);
    let pushes = Arc::new(Pushes::default());
    let session = relay.next_session_id();
    let mut owner = Owner {
        relay,
        key,
        session,
        outbox,
        listener: Listener {
            session,
            pushes: pushes.clone(),
        },
        subs: HashMap::new(),
        acks: Acks::default(),
    };
    let mut shutdown = relay.shutdown.clone();
    let result = loop {
        // Frames are read unless the session holds as many acks or answers
        // as it may; never because the peer is slow to read.
        let answers_unread = owner.outbox.queued() >= OUTBOX_LIMIT;
        let read = owner.acks.may_read() && !answers_unread;
        // A catch-up, or the reading, waiting for the outbox to drain.
        let want_room = answers_unread || (owner.behind() && !owner.outbox.has_room());
        tokio::select! {
            f = reader.next_frame(), if read => match f {
                Ok(Some(frame)) => {
                    // Boxed: requests wait on the store, and that state is
                    // needed per request, not per idle session.
                    if let Err(e) = Box::pin(owner.handle(frame)).await {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            },
            _ = pushes.rung() => {
                let (queued, dropped) = pushes.take();
                for push in queued {
                    let durable_at = push.durable_at;
                    if let Some(frame) = owner.on_push(push) {
                        owner.reply(frame);
                        relay
                            .metrics
                            .delivery_latency_seconds
                            .observe(durable_at.elapsed().as_secs_f64());
                    }
                }
                if dropped {
                    owner.lagged();
                }
            }
            Some(done) = owner.acks.in_flight.join_next() => {
                Acks::answered(relay, done);
                owner.acks.launch(relay, key, ACKS_IN_FLIGHT);
            }
            _ = owner.outbox.room(), if want_room => {}
            _ = shutdown.wait() => break Err(SessionError::ShuttingDown),
        }
        // Boxed, and only when needed: a catch-up holds a store read and its
        // frames, which an idle session should not reserve room for.
        if owner.behind() && owner.outbox.has_room() {
            Box::pin(owner.pump()).await;
        }
    };
    for id in owner.subs.keys() {
        relay.router.unsubscribe(id, owner.session);
    }
    let Owner { acks, outbox, .. } = owner;
    acks.finish(relay, key);
    drop(outbox);
    let _ = writer.await;
    result
}

/// Acknowledgements read from the peer, on their way to the store.
#[derive(Default)]
struct Acks {
    /// Requests at the store (each waits for a slot there, then for its
    /// group commit); the session reads on meanwhile.
    in_flight: JoinSet<(usize, Result<(), RequestError>)>,
    /// Numbers read and not yet handed over, in order; consecutive acks of
    /// one mailbox share an entry of up to [`MAX_LIST`].
    held: VecDeque<(ReceiveId, Vec<u64>)>,
    held_seqs: usize,
}

impl Acks {
    /// Room for another `Ack` frame.
    fn may_read(&self) -> bool {
        self.held_seqs < ACKS_HELD
    }

    fn hold(&mut self, mailbox: ReceiveId, seqs: Vec<u64>) {
        self.held_seqs += seqs.len();
        match self.held.back_mut() {
            Some((m, held)) if *m == mailbox && held.len() + seqs.len() <= MAX_LIST => {
                held.extend(seqs);
            }
            _ => self.held.push_back((mailbox, seqs)),
        }
    }

    /// Hands held acks to the store while fewer than `limit` are there.
    fn launch(&mut self, relay: &Arc<Relay>, key: OwnerKey, limit: usize) {
        while self.in_flight.len() < limit {
            let Some((mailbox, seqs)) = self.held.pop_front() else {
                return;
            };
            self.held_seqs = self.held_seqs.saturating_sub(seqs.len());
            let relay = relay.clone();
            self.in_flight.spawn(async move {
                let n = seqs.len();
                (n, relay.store.ack(key, mailbox, seqs).await)
            });
        }
    }

    fn answered(relay: &Relay, done: Result<(usize, Result<(), RequestError>), JoinError>) {
        match done {
            Ok((n, Ok(()))) => relay
                .metrics
                .envelopes_acked_total
                .inc_by(u64::try_from(n).unwrap_or(0)),
            Ok((_, Err(e))) => tracing::debug!(error = %e, "ack refused"),
            Err(e) => tracing::warn!(error = %e, "an ack task failed"),
        }
    }

    /// At the end of the session: everything held goes to the store, and
    /// what is there completes without the session (an owner that closes
    /// right after its last acks must not see those envelopes again).
    fn finish(mut self, relay: &Arc<Relay>, key: OwnerKey) {
        self.launch(relay, key, usize::MAX);
        self.in_flight.detach_all();
    }
}

impl Owner<'_> {
    /// Queues a frame for the peer without waiting (see the module doc).
    /// A failed stream shows up as a read error next.
    fn reply(&self, frame: Frame) {
        let _ = self.outbox.push(frame);
    }

    fn result(&self, req: u32, r: Result<(), RequestError>) {
        let code = match r {
            Ok(()) => ResultCode::Ok,
            Err(e) => e.code(),
        };
        self.count(code);
        self.reply(Frame::Result { req, code });
    }

    fn count(&self, code: ResultCode) {
        self.relay
            .metrics
            .owner_requests_total
            .with_label_values(&[code.name()])
            .inc();
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), SessionError> {
        let store = &self.relay.store;
        match frame {
            Frame::CreateMailbox { req, tokens } => {
                match store.create_mailbox(self.key, tokens).await {
                    Ok(info) => {
                        self.count(ResultCode::Ok);
                        tracing::debug!(mailbox = %info.receive_id.to_hex(), "mailbox created");
                        self.reply(Frame::MailboxCreated {
                            req,
                            mailbox: info.receive_id,
                            send_id: info.send_id,
                        });
                    }
                    Err(e) => self.result(req, Err(e)),
                }
            }
            Frame::DeleteMailbox { req, mailbox } => {
                let r = store.delete_mailbox(self.key, mailbox).await;
                if r.is_ok() {
                    self.subs.remove(&mailbox);
                    self.relay.router.unsubscribe(&mailbox, self.session);
                }
                self.result(req, r);
            }
            Frame::SetTokens {
                req,
                mailbox,
                tokens,
            } => {
                let r = store.set_tokens(self.key, mailbox, tokens).await;
                self.result(req, r);
            }
            Frame::ListMailboxes { req } => match store.list_mailboxes(self.key).await {
                Ok(list) => {
                    self.count(ResultCode::Ok);
                    let entries = list
                        .into_iter()
                        .map(|m| MailboxEntry {
                            mailbox: m.receive_id,
                            send_id: m.send_id,
                            stored: m.envelopes,
                        })
                        .collect();
                    self.reply(Frame::MailboxList { req, entries });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing mailboxes failed");
                    self.count(ResultCode::Internal);
                    self.reply(Frame::Result {
                        req,
                        code: ResultCode::Internal,
                    });
                }
            },
            Frame::Subscribe { req, mailbox } => {
                // Ownership first (a stranger must not displace the owner's
                // listener), then register for pushes, then the first store
                // read happens in `pump`: nothing committed in between can
                // fall through the gap.
                match store.fetch_async(self.key, mailbox, u64::MAX, 0, 0).await {
                    Ok(_) => {
                        self.relay.router.subscribe(mailbox, self.listener.clone());
                        self.subs.insert(
                            mailbox,
                            Subscription {
                                cursor: 0,
                                inflight: 0,
                                need_fetch: true,
                            },
                        );
                        self.result(req, Ok(()));
                    }
                    Err(e) => self.result(req, Err(e)),
                }
            }
            Frame::Ack { mailbox, seqs } => {
                if let Some(sub) = self.subs.get_mut(&mailbox) {
                    let n = u32::try_from(seqs.len()).unwrap_or(u32::MAX);
                    sub.inflight = sub.inflight.saturating_sub(n);
                }
                // Acks ride a later group commit; the session does not wait
                // for it, but holds only so many.
                self.acks.hold(mailbox, seqs);
                self.acks.launch(self.relay, self.key, ACKS_IN_FLIGHT);
            }
            other => return Err(SessionError::WrongFrame(other.kind())),
        }
        Ok(())
    }

    /// A push was dropped somewhere: catch every mailbox up from the store.
    fn lagged(&mut self) {
        for sub in self.subs.values_mut() {
            sub.need_fetch = true;
        }
    }

    /// The frame to send for a live push, if it continues the cursor within
    /// the window and the outbox has room; otherwise the mailbox is marked
    /// for a catch-up read.
    fn on_push(&mut self, push: Push) -> Option<Frame> {
        let window = self.relay.limits().delivery_window;
        let room = self.outbox.has_room();
        let sub = self.subs.get_mut(&push.mailbox)?;
        if push.seq < sub.cursor {
            return None; // already delivered from the store
        }
        if !sub.need_fetch && push.seq == sub.cursor && sub.inflight < window && room {
            sub.cursor = push.seq + 1;
            sub.inflight += 1;
            self.relay.metrics.envelopes_delivered_total.inc();
            Some(Frame::Deliver {
                mailbox: push.mailbox,
                seq: push.seq,
                ciphertext: push.ciphertext,
            })
        } else {
            sub.need_fetch = true;
            None
        }
    }

    /// The subscriptions that need a catch-up read and have room for it.
    fn lagging(&self) -> impl Iterator<Item = ReceiveId> + '_ {
        let window = self.relay.limits().delivery_window;
        self.subs
            .iter()
            .filter(move |(_, s)| s.need_fetch && s.inflight < window)
            .map(|(id, _)| *id)
    }

    fn behind(&self) -> bool {
        self.lagging().next().is_some()
    }

    /// Catches up every subscription that fell behind, within its window
    /// and while the outbox has room.
    async fn pump(&mut self) {
        let window = self.relay.limits().delivery_window;
        loop {
            let ids: Vec<ReceiveId> = self.lagging().collect();
            if ids.is_empty() {
                return;
            }
            for id in ids {
                if !self.outbox.has_room() {
                    return;
                }
                self.catch_up(id, window).await;
            }
        }
    }

    async fn catch_up(&mut self, id: ReceiveId, window: u32) {
        let Some(sub) = self.subs.get(&id) else {
            return;
        };
        let room = OUTBOX_DEPTH.saturating_sub(self.outbox.queued());
        let want = usize::try_from(window.saturating_sub(sub.inflight))
            .unwrap_or(0)
            .min(room);
        if want == 0 {
            return;
        }
        let batch = match self
            .relay
            .store
            .fetch_async(self.key, id, sub.cursor, want, FETCH_BYTES)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                // Stop catching up this mailbox until the next push (or
                // resubscribe); the envelopes stay in the store.
                tracing::warn!(error = %e, "catch-up read failed");
                if let Some(sub) = self.subs.get_mut(&id) {
                    sub.need_fetch = false;
                }
                return;
            }
        };
        // An empty read means we are caught up; a short one may be only
        // the byte limit, so read again.
        let more = !batch.is_empty();
        let mut frames = Vec::with_capacity(batch.len());
        if let Some(sub) = self.subs.get_mut(&id) {
            for env in batch {
                sub.cursor = env.seq + 1;
                sub.inflight += 1;
                frames.push(Frame::Deliver {
                    mailbox: id,
                    seq: env.seq,
                    ciphertext: env.ciphertext,
                });
            }
            sub.need_fetch = more;
        }
        self.relay
            .metrics
            .envelopes_delivered_total
            .inc_by(u64::try_from(frames.len()).unwrap_or(0));
        for f in frames {
            self.reply(f);
        }
    }
}
