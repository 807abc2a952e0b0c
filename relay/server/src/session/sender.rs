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
//!
//! Two limits refuse a send `rate_limited` before it reaches the store:
//! its send id's token bucket (`limits.sends_per_send_id_per_sec`), and
//! the relay-wide budget of ciphertext bytes read and not yet answered
//! (`limits.max_inflight_send_bytes`), which a send waits for only
//! briefly. Neither buffers anything: a refused send is answered at once,
//! by the same answering task, and holds its permit until then. A session
//! that sends nothing for `limits.sender_idle_secs` is closed, keep-alives
//! or not, so idle connections cannot hold the slots.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chappe_proto::ResultCode;
use chappe_proto::frame::{Batch, Frame};
use chappe_store::{Answered, Answers};
use tokio::sync::{Semaphore, TryAcquireError};

use super::SessionError;
use super::stream::{FrameReader, finish};
use crate::relay::Relay;
use crate::router::Push;

/// How long a send waits for room under `limits.max_inflight_send_bytes`
/// before it is refused: long enough to ride out one group commit (a few
/// milliseconds under load, BENCHMARKS.md), short enough that the session
/// is not parked behind a relay that is full.
const BUDGET_WAIT: Duration = Duration::from_millis(50);

/// What the reading loop and the answering task share.
struct Flow {
    relay: Arc<Relay>,
    answers: Arc<Answers>,
    permits: Semaphore,
    /// Sends handed to the store whose answer was not yet written.
    outstanding: AtomicUsize,
    /// The reading loop has ended: no more sends will come.
    done: AtomicBool,
    /// Request ids of sends refused `rate_limited` by this session, to be
    /// answered; at most `max_inflight_sends` (each holds a permit).
    limited: Mutex<Vec<u32>>,
    /// Bytes this session holds of the relay's send budget.
    budget: AtomicUsize,
}

impl Flow {
    /// Answers `req` `rate_limited` (the answering task writes it).
    fn limit(&self, req: u32, limit: &'static str) {
        self.relay
            .metrics
            .sends_limited_total
            .with_label_values(&[limit])
            .inc();
        self.limited
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(req);
        self.answers.ring();
    }

    /// Takes `bytes` of the relay's send budget, waiting [`BUDGET_WAIT`]
    /// at most.
    async fn take_budget(&self, bytes: u32) -> bool {
        let budget = &self.relay.send_budget;
        let permit = match budget.try_acquire_many(bytes) {
            Ok(p) => Some(p),
            Err(TryAcquireError::NoPermits) => {
                tokio::time::timeout(BUDGET_WAIT, budget.acquire_many(bytes))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(TryAcquireError::Closed) => None,
        };
        let Some(permit) = permit else { return false };
        permit.forget();
        self.budget.fetch_add(bytes as usize, Ordering::AcqRel);
        true
    }

    fn give_budget(&self, bytes: usize) {
        self.budget.fetch_sub(bytes, Ordering::AcqRel);
        self.relay.send_budget.add_permits(bytes);
    }
}

impl Drop for Flow {
    /// A session that ends with sends unanswered (its results unwritable,
    /// or the grace period over) gives their budget back all the same.
    fn drop(&mut self) {
        let held = self.budget.load(Ordering::Acquire);
        if held > 0 {
            self.relay.send_budget.add_permits(held);
        }
    }
}

pub async fn run(
    relay: &Arc<Relay>,
    send: quinn::SendStream,
    mut reader: FrameReader,
) -> Result<(), SessionError> {
    // The limits as the session starts; a reload applies to the next one.
    let limits = relay.limits();
    let max = usize::try_from(limits.max_inflight_sends).unwrap_or(1024);
    let rate = limits.sends_per_send_id_per_sec;
    let flow = Arc::new(Flow {
        relay: relay.clone(),
        answers: Answers::new(),
        permits: Semaphore::new(max),
        outstanding: AtomicUsize::new(0),
        done: AtomicBool::new(false),
        limited: Mutex::default(),
        budget: AtomicUsize::new(0),
    });
    let mut answerer = tokio::spawn(answer(relay.clone(), send, flow.clone()));
    let mut shutdown = relay.shutdown.clone();
    // Boxed: a timer entry should not size every idle session's future.
    let mut idle = Box::pin(tokio::time::sleep(limits.sender_idle));
    let result = loop {
        let frame = tokio::select! {
            f = reader.next_frame() => f,
            _ = idle.as_mut() => {
                idle.as_mut().reset(tokio::time::Instant::now() + limits.sender_idle);
                // Sends waiting for the disk are not idleness.
                if flow.outstanding.load(Ordering::Acquire) > 0 {
                    continue;
                }
                relay.metrics.sender_idle_closed_total.inc();
                break Err(SessionError::SenderIdle);
            }
            _ = shutdown.wait() => break Err(SessionError::ShuttingDown),
        };
        idle.as_mut()
            .reset(tokio::time::Instant::now() + limits.sender_idle);
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
        if !relay
            .send_rates
            .take(send_id, Instant::now(), rate, 2 * rate)
        {
            flow.limit(req, "sends_per_send_id_per_sec");
            continue;
        }
        if !flow
            .take_budget(u32::try_from(ciphertext.len()).unwrap_or(u32::MAX))
            .await
        {
            flow.limit(req, "max_inflight_send_bytes");
            continue;
        }
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
        let limited =
            std::mem::take(&mut *flow.limited.lock().unwrap_or_else(PoisonError::into_inner));
        if answered.is_empty() && limited.is_empty() {
            if flow.done.load(Ordering::Acquire) && flow.outstanding.load(Ordering::Acquire) == 0 {
                break;
            }
            flow.answers.rung().await;
            continue;
        }
        let n = answered.len() + limited.len();
        let bytes: usize = answered.iter().map(|a| a.ciphertext.len()).sum();
        // Each send is timed from its own submission to this write.
        submitted.extend(answered.iter().map(|a| a.submitted));
        for a in answered {
            batch.push(&result(&relay, a));
        }
        for req in limited {
            relay.metrics.received(ResultCode::RateLimited);
            batch.push(&Frame::Result {
                req,
                code: ResultCode::RateLimited,
            });
        }
        let written = send.write_all_chunks(batch.chunks()).await;
        flow.give_budget(bytes);
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
