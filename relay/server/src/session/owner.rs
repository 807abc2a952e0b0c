//! The mailbox owner session.
//!
//! Requests (create, delete, set tokens, list, subscribe) are answered in
//! order. Delivery runs per subscribed mailbox with a cursor (the next
//! sequence number to deliver) and a window of unacknowledged envelopes:
//! live pushes that continue the cursor go straight out; anything else (a
//! gap, an out-of-order push, a full window, a backlog) is caught up by
//! reading the store from the cursor. The store is the truth, pushes are only
//! a shortcut, so a lost push delays an envelope but never loses it.

use std::collections::HashMap;
use std::sync::Arc;

use chappe_proto::frame::{Frame, MailboxEntry};
use chappe_proto::{OwnerKey, ReceiveId, ResultCode};
use chappe_store::RequestError;

use super::SessionError;
use super::stream::{FrameReader, Outbox, spawn_writer};
use crate::relay::Relay;
use crate::router::{Listener, Push, Pushes, SessionId};

/// Bytes one catch-up read may return.
const FETCH_BYTES: usize = 1 << 20;

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
    };
    let mut shutdown = relay.shutdown.clone();
    let result = loop {
        tokio::select! {
            f = reader.next_frame() => match f {
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
                        owner.reply(frame).await;
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
            _ = shutdown.wait() => break Err(SessionError::ShuttingDown),
        }
        // Boxed, and only when needed: a catch-up holds a store read and its
        // frames, which an idle session should not reserve room for.
        if owner.behind() {
            Box::pin(owner.pump()).await;
        }
    };
    for id in owner.subs.keys() {
        relay.router.unsubscribe(id, owner.session);
    }
    drop(owner);
    let _ = writer.await;
    result
}

impl Owner<'_> {
    async fn reply(&self, frame: Frame) {
        let _ = self.outbox.send(frame).await;
    }

    async fn result(&self, req: u32, r: Result<(), RequestError>) {
        let code = match r {
            Ok(()) => ResultCode::Ok,
            Err(e) => e.code(),
        };
        self.count(code);
        self.reply(Frame::Result { req, code }).await;
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
                        })
                        .await;
                    }
                    Err(e) => self.result(req, Err(e)).await,
                }
            }
            Frame::DeleteMailbox { req, mailbox } => {
                let r = store.delete_mailbox(self.key, mailbox).await;
                if r.is_ok() {
                    self.subs.remove(&mailbox);
                    self.relay.router.unsubscribe(&mailbox, self.session);
                }
                self.result(req, r).await;
            }
            Frame::SetTokens {
                req,
                mailbox,
                tokens,
            } => {
                let r = store.set_tokens(self.key, mailbox, tokens).await;
                self.result(req, r).await;
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
                    self.reply(Frame::MailboxList { req, entries }).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing mailboxes failed");
                    self.count(ResultCode::Internal);
                    self.reply(Frame::Result {
                        req,
                        code: ResultCode::Internal,
                    })
                    .await;
                }
            },
            Frame::Subscribe { req, mailbox } => {
                // Ownership first (a stranger must not displace the owner's
                // listener), then register for pushes, then the first store
                // read happens in `pump`: nothing committed in between can
                // fall through the gap.
                match store.fetch(self.key, mailbox, u64::MAX, 0, 0) {
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
                        self.result(req, Ok(())).await;
                    }
                    Err(e) => self.result(req, Err(e)).await,
                }
            }
            Frame::Ack { mailbox, seqs } => {
                if let Some(sub) = self.subs.get_mut(&mailbox) {
                    let n = u32::try_from(seqs.len()).unwrap_or(u32::MAX);
                    sub.inflight = sub.inflight.saturating_sub(n);
                }
                let n = seqs.len();
                let relay = self.relay.clone();
                let key = self.key;
                // Acks ride the next group commit; the session does not wait.
                tokio::spawn(async move {
                    match relay.store.ack(key, mailbox, seqs).await {
                        Ok(()) => relay
                            .metrics
                            .envelopes_acked_total
                            .inc_by(u64::try_from(n).unwrap_or(0)),
                        Err(e) => tracing::debug!(error = %e, "ack refused"),
                    }
                });
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
    /// the window; otherwise the mailbox is marked for a catch-up read.
    fn on_push(&mut self, push: Push) -> Option<Frame> {
        let window = self.relay.limits().delivery_window;
        let sub = self.subs.get_mut(&push.mailbox)?;
        if push.seq < sub.cursor {
            return None; // already delivered from the store
        }
        if !sub.need_fetch && push.seq == sub.cursor && sub.inflight < window {
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

    /// Catches up every subscription that fell behind, within its window.
    async fn pump(&mut self) {
        let window = self.relay.limits().delivery_window;
        loop {
            let ids: Vec<ReceiveId> = self.lagging().collect();
            if ids.is_empty() {
                return;
            }
            for id in ids {
                self.catch_up(id, window).await;
            }
        }
    }

    async fn catch_up(&mut self, id: ReceiveId, window: u32) {
        {
            let Some(sub) = self.subs.get(&id) else {
                return;
            };
            let want = usize::try_from(window - sub.inflight).unwrap_or(0);
            let batch = match self
                .relay
                .store
                .fetch(self.key, id, sub.cursor, want, FETCH_BYTES)
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
                self.reply(f).await;
            }
        }
    }
}
