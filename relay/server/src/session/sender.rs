//! The anonymous sender session: `Send` in, `Result` out.
//!
//! Sends are pipelined: the session reads a send, queues it for the store's
//! group commit and reads the next, so one connection can keep many
//! envelopes in the same batch. A semaphore bounds how many are
//! outstanding; when it is exhausted the session stops reading, and QUIC
//! flow control pushes back on the client. Refused sends (a length that is
//! no bucket) count too: a client that sends bad lengths and never reads
//! its results runs out of permits like any other.
//!
//! The store leaves each answer in the session's [`Answers`] queue. One
//! task per session takes everything queued whenever it is woken and
//! writes all those results in one stream write, then gives their permits
//! back. Answering each send from its own task, as the first version did,
//! cost one UDP datagram per envelope (`perf stat`: 204,434 `sendmsg` calls
//! for about 207,000 durable sends); a oneshot channel per send, as the
//! second did, cost an allocation and a queue entry per send.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chappe_proto::ResultCode;
use chappe_proto::frame::{Batch, Frame};
use chappe_store::{Answered, Answers};
use tokio::sync::Semaphore;

use super::SessionError;
use super::stream::{FrameReader, finish};
use crate::relay::Relay;
use crate::router::Push;

/// What the reading loop and the answering task share.
struct Flow {
    answers: Arc<Answers>,
    permits: Semaphore,
    /// Sends handed to the store whose answer was not yet written.
    outstanding: AtomicUsize,
    /// The reading loop has ended: no more sends will come.
    done: AtomicBool,
}

pub async fn run(
    relay: &Arc<Relay>,
    send: quinn::SendStream,
    mut reader: FrameReader,
) -> Result<(), SessionError> {
    let max = usize::try_from(relay.limits().max_inflight_sends).unwrap_or(1024);
    let flow = Arc::new(Flow {
        answers: Answers::new(),
        permits: Semaphore::new(max),
        outstanding: AtomicUsize::new(0),
        done: AtomicBool::new(false),
    });
    let mut answerer = tokio::spawn(answer(relay.clone(), send, flow.clone()));
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
        // Given back by the answering task once the result is written.
        match flow.permits.acquire().await {
            Ok(p) => p.forget(),
            Err(_) => break Ok(()),
        }
        flow.outstanding.fetch_add(1, Ordering::AcqRel);
        relay
            .store
            .submit_enqueue_to(send_id, &token, ciphertext, &flow.answers, req);
    };
    // Every accepted send gets its answer before the stream closes: the
    // answering task writes until none is outstanding (the store answers
    // even while stopping), unless that takes longer than the grace period.
    flow.done.store(true, Ordering::Release);
    flow.answers.ring();
    if tokio::time::timeout(relay.limits().shutdown_grace, &mut answerer)
        .await
        .is_err()
    {
        answerer.abort();
    }
    result
}

/// Writes the results, as many per stream write as are queued.
async fn answer(relay: Arc<Relay>, mut send: quinn::SendStream, flow: Arc<Flow>) {
    let mut batch = Batch::default();
    // When each send of the batch being written was submitted, for its
    // latency; kept across batches so a busy session does not allocate.
    let mut submitted = Vec::new();
    loop {
        let answered = flow.answers.take();
        if answered.is_empty() {
            if flow.done.load(Ordering::Acquire) && flow.outstanding.load(Ordering::Acquire) == 0 {
                break;
            }
            flow.answers.rung().await;
            continue;
        }
        let n = answered.len();
        // Each send is timed from its own submission to this write.
        submitted.extend(answered.iter().map(|a| a.submitted));
        for a in answered {
            batch.push(&result(&relay, a));
        }
        let written = send.write_all_chunks(batch.chunks()).await;
        for at in submitted.drain(..) {
            relay
                .metrics
                .send_duration_seconds
                .observe(at.elapsed().as_secs_f64());
        }
        batch.clear();
        flow.outstanding.fetch_sub(n, Ordering::AcqRel);
        flow.permits.add_permits(n);
        if written.is_err() {
            // Nobody reads the results: stop taking sends.
            flow.permits.close();
            return;
        }
    }
    finish(send).await;
}

/// The result frame for an answered send; an OK also goes to the owner if
/// connected.
fn result(relay: &Relay, a: Answered) -> Frame {
    let code = match a.outcome {
        Ok(done) => {
            relay.router.push(Push {
                mailbox: done.receive_id,
                seq: done.seq,
                ciphertext: a.ciphertext,
                durable_at: std::time::Instant::now(),
            });
            ResultCode::Ok
        }
        Err(e) => e.code(),
    };
    relay.metrics.received(code);
    Frame::Result { req: a.tag, code }
}
