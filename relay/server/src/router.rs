//! Live push: which owner session currently listens on which mailbox.
//!
//! After an envelope is durable, the sender's task hands it here; if the
//! owner is connected, its session gets the ciphertext at once (the same
//! `Bytes`, no copy). Nothing here is authoritative: a push that finds no
//! listener, or a full queue, is simply dropped, and the owner session reads
//! the envelope from the store instead. That keeps the router lock-light and
//! lets a slow owner never slow down senders.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chappe_proto::ReceiveId;
use tokio::sync::Notify;

/// Pushes that may queue for one owner session before they are dropped
/// (and later read from the store instead).
pub const PUSH_DEPTH: usize = 1024;

/// An envelope that just became durable.
#[derive(Debug)]
pub struct Push {
    pub mailbox: ReceiveId,
    pub seq: u64,
    pub ciphertext: Bytes,
    /// When the store's answer said it was durable.
    pub durable_at: std::time::Instant,
}

/// Subscription handle id, so an old session's unsubscribe cannot remove
/// the listener of a newer session on the same mailbox.
pub type SessionId = u64;

/// One owner session's queue of pushes.
///
/// A plain queue under a lock, with one bell: senders add and ring, the
/// session takes everything queued when it hears the bell. An idle session
/// holds no buffer (a tokio channel would hold its first block of slots
/// for its whole life), and a burst of pushes costs one wake-up, not one
/// each. A push that does not fit is dropped and the drop remembered, so
/// the session knows to catch up from the store instead of waiting for a
/// push that never comes.
#[derive(Default)]
pub struct Pushes {
    queue: Mutex<Queue>,
    bell: Notify,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Push>,
    dropped: bool,
}

impl Pushes {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every change is one push or one swap: a panic leaves it usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a push (or notes that it was dropped) and rings.
    pub fn offer(&self, push: Push) {
        {
            let mut q = self.lock();
            if q.items.len() >= PUSH_DEPTH {
                q.dropped = true;
            } else {
                q.items.push_back(push);
            }
        }
        self.bell.notify_one();
    }

    /// Waits until something was offered since the last [`Pushes::take`].
    pub async fn rung(&self) {
        self.bell.notified().await;
    }

    /// Everything queued, in order, and whether a push was dropped since
    /// the last take.
    pub fn take(&self) -> (VecDeque<Push>, bool) {
        let mut q = self.lock();
        let dropped = std::mem::take(&mut q.dropped);
        (std::mem::take(&mut q.items), dropped)
    }
}

/// How a session is reached.
#[derive(Clone)]
pub struct Listener {
    pub session: SessionId,
    pub pushes: Arc<Pushes>,
}

#[derive(Default)]
pub struct Router {
    listeners: Mutex<HashMap<ReceiveId, Listener>>,
}

impl Router {
    /// The newest session to subscribe to a mailbox wins.
    pub fn subscribe(&self, mailbox: ReceiveId, listener: Listener) {
        if let Ok(mut l) = self.listeners.lock() {
            l.insert(mailbox, listener);
        }
    }

    pub fn unsubscribe(&self, mailbox: &ReceiveId, session: SessionId) {
        if let Ok(mut l) = self.listeners.lock()
            && l.get(mailbox).is_some_and(|x| x.session == session)
        {
            l.remove(mailbox);
        }
    }

    pub fn push(&self, push: Push) {
        let pushes = match self.listeners.lock() {
            Ok(l) => l.get(&push.mailbox).map(|l| l.pushes.clone()),
            Err(_) => None,
        };
        if let Some(p) = pushes {
            p.offer(push);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(session: SessionId) -> (Listener, Arc<Pushes>) {
        let pushes = Arc::new(Pushes::default());
        (
            Listener {
                session,
                pushes: pushes.clone(),
            },
            pushes,
        )
    }

    fn push(mailbox: ReceiveId, seq: u64) -> Push {
        Push {
            mailbox,
            seq,
            ciphertext: Bytes::from_static(b"x"),
            durable_at: std::time::Instant::now(),
        }
    }

    #[tokio::test]
    async fn newest_subscriber_wins_and_old_unsubscribe_is_harmless() {
        let r = Router::default();
        let m = ReceiveId([1; 32]);
        let (l1, p1) = listener(1);
        let (l2, p2) = listener(2);
        r.subscribe(m, l1);
        r.subscribe(m, l2);
        r.unsubscribe(&m, 1);
        r.push(push(m, 5));
        p2.rung().await;
        let (got, dropped) = p2.take();
        assert_eq!(got.iter().map(|p| p.seq).collect::<Vec<_>>(), [5]);
        assert!(!dropped);
        assert!(p1.take().0.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_says_so_once() {
        let r = Router::default();
        let m = ReceiveId([2; 32]);
        let (l, p) = listener(1);
        r.subscribe(m, l);
        for seq in 1..=PUSH_DEPTH as u64 + 2 {
            r.push(push(m, seq));
        }
        // One bell for the whole burst; everything that fitted, in order.
        tokio::time::timeout(std::time::Duration::from_secs(1), p.rung())
            .await
            .unwrap();
        let (got, dropped) = p.take();
        assert_eq!(got.len(), PUSH_DEPTH);
        assert_eq!(got.front().map(|p| p.seq), Some(1));
        assert!(dropped);
        let (again, dropped) = p.take();
        assert!(again.is_empty() && !dropped);
    }
}
