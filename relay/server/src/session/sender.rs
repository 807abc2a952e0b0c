//! The anonymous sender session: `Send` in, `Result` out.
//!
//! Sends are pipelined: the session reads a send, queues it for the store's
//! group commit and reads the next, so one connection can keep many
//! envelopes in the same batch. A semaphore bounds how many are
//! outstanding; when it is exhausted the session stops reading, and QUIC
//! flow control pushes back on the client.
//!
//! One task per session answers, in the order the sends came. The store
//! answers a whole batch at once, so after waiting for the oldest send the
//! task takes every later one that is already answered and writes all their
//! results in one stream write. Answering each send from its own task, as
//! this did before, cost one UDP datagram per envelope: `perf stat` counted
//! 204,434 `sendmsg` calls for about 207,000 durable sends.

use std::sync::Arc;

use bytes::Bytes;
use chappe_proto::ResultCode;
use chappe_proto::envelope::check_len;
use chappe_proto::frame::{Batch, Frame};
use chappe_store::{Enqueued, Pending};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::SessionError;
use super::stream::{FrameReader, finish};
use crate::relay::Relay;
use crate::router::Push;

/// A send whose result is still to be written. It holds a permit of the
/// session's semaphore until its result is taken for writing, refusals too:
/// a client that sends bad lengths and never reads its results must run
/// out of permits like any other, not grow the queue.
struct Queued {
    req: u32,
    outcome: Outcome,
    permit: OwnedSemaphorePermit,
}

enum Outcome {
    /// Refused before the store (a length that is no bucket size).
    Refused(ResultCode),
    Stored {
        pending: Pending<Enqueued>,
        /// Kept for the live push to the owner once the envelope is stored.
        ciphertext: Bytes,
    },
}

impl Queued {
    /// The result frame, once the store has answered; the permit goes with
    /// `self`.
    async fn wait(self, relay: &Relay) -> Frame {
        let code = match self.outcome {
            Outcome::Refused(code) => code,
            Outcome::Stored {
                pending,
                ciphertext,
            } => stored(relay, pending.wait().await, ciphertext),
        };
        result(relay, self.req, code)
    }

    /// The result frame if the answer is already here; otherwise the send
    /// back, still queued.
    fn try_frame(self, relay: &Relay) -> Result<Frame, Self> {
        let Queued {
            req,
            outcome,
            permit,
        } = self;
        let code = match outcome {
            Outcome::Refused(code) => code,
            Outcome::Stored {
                pending,
                ciphertext,
            } => match pending.try_wait() {
                Ok(answer) => stored(relay, answer, ciphertext),
                Err(pending) => {
                    return Err(Queued {
                        req,
                        outcome: Outcome::Stored {
                            pending,
                            ciphertext,
                        },
                        permit,
                    });
                }
            },
        };
        Ok(result(relay, req, code))
    }
}

pub async fn run(
    relay: &Arc<Relay>,
    send: quinn::SendStream,
    mut reader: FrameReader,
) -> Result<(), SessionError> {
    let max = relay.limits.max_inflight_sends;
    let inflight = Arc::new(Semaphore::new(usize::try_from(max).unwrap_or(1024)));
    // Unbounded, but never longer than the semaphore's permits: every
    // queued send holds one. Boxed like the owner's outbox: a tokio channel
    // allocates its first block of 32 slots up front, and an idle session
    // should pay for 32 pointers, not 32 queued sends.
    let (queue, answers) = mpsc::unbounded_channel::<Box<Queued>>();
    let mut answerer = tokio::spawn(answer(relay.clone(), send, answers));
    let mut shutdown = relay.shutdown.clone();
    let result = loop {
        let frame = tokio::select! {
            f = reader.next_frame() => f,
            _ = shutdown.wait() => break Err(SessionError::ShuttingDown),
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let Frame::Send {
            req,
            send_id,
            token,
            ciphertext,
        } = frame
        else {
            break Err(SessionError::WrongFrame(frame.kind()));
        };
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break Ok(());
        };
        let outcome = match check_len(ciphertext.len()) {
            Err(code) => Outcome::Refused(code),
            Ok(()) => Outcome::Stored {
                pending: relay
                    .store
                    .submit_enqueue(send_id, &token, ciphertext.clone()),
                ciphertext,
            },
        };
        let queued = Queued {
            req,
            outcome,
            permit,
        };
        if queue.send(Box::new(queued)).is_err() {
            // The answering task is gone: the stream failed.
            break Ok(());
        }
    };
    // Every accepted send gets its answer before the stream closes: the
    // answering task drains the queue (the store answers even while
    // stopping), unless that takes longer than the grace period.
    drop(queue);
    if tokio::time::timeout(relay.limits.shutdown_grace, &mut answerer)
        .await
        .is_err()
    {
        answerer.abort();
    }
    result
}

/// Writes the results, in order, as many per stream write as are ready.
async fn answer(
    relay: Arc<Relay>,
    mut send: quinn::SendStream,
    mut queue: mpsc::UnboundedReceiver<Box<Queued>>,
) {
    let mut batch = Batch::default();
    // A send taken off the queue whose answer had not come yet.
    let mut held: Option<Box<Queued>> = None;
    loop {
        let oldest = match held.take() {
            Some(q) => q,
            None => match queue.recv().await {
                Some(q) => q,
                None => break,
            },
        };
        batch.push(&oldest.wait(&relay).await);
        // Everything behind it that is already answered goes in the same write.
        while let Ok(next) = queue.try_recv() {
            match next.try_frame(&relay) {
                Ok(frame) => batch.push(&frame),
                Err(next) => {
                    held = Some(Box::new(next));
                    break;
                }
            }
        }
        if send.write_all_chunks(batch.chunks()).await.is_err() {
            return;
        }
        batch.clear();
    }
    finish(send).await;
}

/// The code for a stored send; an OK also goes to the owner if connected.
fn stored(
    relay: &Relay,
    answer: Result<Enqueued, chappe_store::RequestError>,
    ciphertext: Bytes,
) -> ResultCode {
    match answer {
        Ok(done) => {
            relay.router.push(Push {
                mailbox: done.receive_id,
                seq: done.seq,
                ciphertext,
            });
            ResultCode::Ok
        }
        Err(e) => e.code(),
    }
}

fn result(relay: &Relay, req: u32, code: ResultCode) -> Frame {
    relay.metrics.received(code);
    Frame::Result { req, code }
}
