//! Where the writer leaves the answers to one sender session's sends.
//!
//! A session with many sends in flight would otherwise need a oneshot
//! channel per send (an allocation, and a wake-up per answer) and a queue
//! of them in send order. With [`Answers`] the writer appends each answer
//! to the session's queue and rings; the session takes everything there
//! at once and writes it in one stream write. Answers come in the order
//! the writer decided them, which for one session is the order it sent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::error::RequestError;
use crate::request::Enqueued;

/// One send's outcome, with the ciphertext back for a live push.
#[derive(Debug)]
pub struct Answered {
    /// What the caller passed with the send (the wire request id).
    pub tag: u32,
    pub outcome: Result<Enqueued, RequestError>,
    pub ciphertext: Bytes,
    /// When the send was handed to the store, for its latency.
    pub submitted: Instant,
}

/// A session's answer queue; see the module doc.
#[derive(Debug, Default)]
pub struct Answers {
    queue: Mutex<VecDeque<Answered>>,
    bell: Notify,
}

impl Answers {
    pub fn new() -> Arc<Answers> {
        Arc::default()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Answered>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until an answer was added since the last [`Answers::take`]
    /// (or [`Answers::ring`] was called).
    pub async fn rung(&self) {
        self.bell.notified().await;
    }

    /// Wakes the session without an answer (it is ending).
    pub fn ring(&self) {
        self.bell.notify_one();
    }

    /// Every answer queued, oldest first; the queue keeps no buffer.
    pub fn take(&self) -> VecDeque<Answered> {
        std::mem::take(&mut *self.lock())
    }

    pub(crate) fn put(&self, a: Answered) {
        self.lock().push_back(a);
        self.bell.notify_one();
    }
}

/// The writer's handle on one answer: it answers `ShuttingDown` if dropped
/// unanswered (a writer that stopped), so the session never waits forever.
pub(crate) struct Sink {
    to: Arc<Answers>,
    tag: u32,
    ciphertext: Option<Bytes>,
    submitted: Instant,
}

impl Sink {
    pub(crate) fn new(to: &Arc<Answers>, tag: u32, ciphertext: Bytes) -> Self {
        Sink {
            to: to.clone(),
            tag,
            ciphertext: Some(ciphertext),
            submitted: Instant::now(),
        }
    }

    pub(crate) fn send(mut self, outcome: Result<Enqueued, RequestError>) {
        self.answer(outcome);
    }

    fn answer(&mut self, outcome: Result<Enqueued, RequestError>) {
        if let Some(ciphertext) = self.ciphertext.take() {
            self.to.put(Answered {
                tag: self.tag,
                outcome,
                ciphertext,
                submitted: self.submitted,
            });
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.answer(Err(RequestError::ShuttingDown));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_arrive_in_order_and_a_dropped_sink_still_answers() {
        let a = Answers::new();
        Sink::new(&a, 1, Bytes::from_static(b"x")).send(Err(RequestError::BadToken));
        drop(Sink::new(&a, 2, Bytes::new()));
        a.rung().await;
        let got: Vec<(u32, bool)> = a
            .take()
            .into_iter()
            .map(|x| (x.tag, matches!(x.outcome, Err(RequestError::ShuttingDown))))
            .collect();
        assert_eq!(got, [(1, false), (2, true)]);
        assert!(a.take().is_empty());
    }
}
