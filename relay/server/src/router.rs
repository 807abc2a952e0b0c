//! Live push: which owner session currently listens on which mailbox.
//!
//! After an envelope is durable, the sender's task hands it here; if the
//! owner is connected, its session gets the ciphertext at once (the same
//! `Bytes`, no copy). Nothing here is authoritative: a push that finds no
//! listener, or a full queue, is simply dropped, and the owner session reads
//! the envelope from the store instead. That keeps the router lock-light and
//! lets a slow owner never slow down senders.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use chappe_proto::ReceiveId;
use tokio::sync::mpsc;

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

#[derive(Default)]
pub struct Router {
    listeners: Mutex<HashMap<ReceiveId, (SessionId, mpsc::Sender<Push>)>>,
}

impl Router {
    /// The newest session to subscribe to a mailbox wins.
    pub fn subscribe(&self, mailbox: ReceiveId, session: SessionId, tx: mpsc::Sender<Push>) {
        if let Ok(mut l) = self.listeners.lock() {
            l.insert(mailbox, (session, tx));
        }
    }

    pub fn unsubscribe(&self, mailbox: &ReceiveId, session: SessionId) {
        if let Ok(mut l) = self.listeners.lock()
            && l.get(mailbox).is_some_and(|(s, _)| *s == session)
        {
            l.remove(mailbox);
        }
    }

    pub fn push(&self, push: Push) {
        let tx = match self.listeners.lock() {
            Ok(l) => l.get(&push.mailbox).map(|(_, tx)| tx.clone()),
            Err(_) => None,
        };
        if let Some(tx) = tx {
            // Full or closed: the session will find it in the store.
            let _ = tx.try_send(push);
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
        r.subscribe(m, 1, tx1);
        r.subscribe(m, 2, tx2);
        r.unsubscribe(&m, 1);
        r.push(Push {
            mailbox: m,
            seq: 5,
            ciphertext: Bytes::from_static(b"x"),
        });
        assert_eq!(rx2.recv().await.map(|p| p.seq), Some(5));
    }
}
