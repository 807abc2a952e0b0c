//! Live push: which owner session currently listens on which mailbox.
//!
//! After an envelope is durable, the sender's task hands it here; if the
//! owner is connected, its session gets the ciphertext at once (the same
//! `Bytes`, no copy). Nothing here is authoritative: a push that finds no
//! listener, or a full queue, is simply dropped, and the owner session reads
//! the envelope from the store instead. That keeps the router lock-light and
//! lets a slow owner never slow down senders.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chappe_proto::ReceiveId;
use tokio::sync::{Notify, mpsc};

/// An envelope that just became durable.
#[derive(Debug)]
pub struct Push {
    pub mailbox: ReceiveId,
    pub seq: u64,
    pub ciphertext: Bytes,
}

/// Subscription handle id, so an old session's unsubscribe cannot remove
/// the listener of a newer session on the same mailbox.
pub type SessionId = u64;

/// How a session is reached: its push queue, and a bell rung when a push
/// had to be dropped because the queue was full, so the session knows to
/// catch up from the store instead of waiting for a push that never comes.
#[derive(Clone)]
pub struct Listener {
    pub session: SessionId,
    /// Boxed for the same reason as the session outbox: an idle owner's
    /// channel then costs 32 pointers, not 32 pushes.
    pub tx: mpsc::Sender<Box<Push>>,
    pub lagged: Arc<Notify>,
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
        let listener = match self.listeners.lock() {
            Ok(l) => l.get(&push.mailbox).cloned(),
            Err(_) => None,
        };
        if let Some(l) = listener
            && let Err(mpsc::error::TrySendError::Full(_)) = l.tx.try_send(Box::new(push))
        {
            // The envelope is safe in the store; tell the session to read it.
            l.lagged.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn newest_subscriber_wins_and_old_unsubscribe_is_harmless() {
        let r = Router::default();
        let m = ReceiveId([1; 32]);
        let (tx1, _rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        let bell = Arc::new(Notify::new());
        r.subscribe(
            m,
            Listener {
                session: 1,
                tx: tx1,
                lagged: bell.clone(),
            },
        );
        r.subscribe(
            m,
            Listener {
                session: 2,
                tx: tx2,
                lagged: bell,
            },
        );
        r.unsubscribe(&m, 1);
        r.push(Push {
            mailbox: m,
            seq: 5,
            ciphertext: Bytes::from_static(b"x"),
        });
        assert_eq!(rx2.recv().await.map(|p| p.seq), Some(5));
    }

    #[tokio::test]
    async fn a_full_queue_rings_the_bell() {
        let r = Router::default();
        let m = ReceiveId([2; 32]);
        let (tx, _rx) = mpsc::channel(1);
        let bell = Arc::new(Notify::new());
        r.subscribe(
            m,
            Listener {
                session: 1,
                tx,
                lagged: bell.clone(),
            },
        );
        for seq in 1..=2 {
            r.push(Push {
                mailbox: m,
                seq,
                ciphertext: Bytes::new(),
            });
        }
        // The second push did not fit: the bell has a stored permit.
        tokio::time::timeout(std::time::Duration::from_secs(1), bell.notified())
            .await
            .unwrap();
    }
}
