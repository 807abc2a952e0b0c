//! The writer thread: group commit.
//!
//! redb allows one write transaction at a time and each durable commit costs
//! an fsync, which dominates everything else a send does. So one thread owns
//! all writes: it blocks for a request, takes whatever else is already
//! queued (up to `max_batch`), applies them all in one transaction, commits
//! once, and only then answers. Under load batches grow by themselves and
//! the fsync is shared; when idle a request waits for nobody.
//!
//! A request is answered `Ok` only after the commit that holds it returned,
//! so `Ok` means "on disk". If the commit fails, every request of the batch
//! hears `Internal` and nothing was stored.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Database, Durability};
use tokio::sync::oneshot;

use crate::clock::{Clock, hour_of};
use crate::config::StoreConfig;
use crate::disk::DiskGauge;
use crate::error::{RequestError, StoreError};
use crate::ops::{Ctx, Fail, Tx};
use crate::request::{Answer, Msg, Request};
use crate::schema::Totals;
use crate::stats::Counters;

/// How often the writer sweeps expired envelopes on its own.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Most envelopes one periodic sweep deletes, so that a backlog (say after
/// a long downtime) is worked off in slices between batches instead of one
/// transaction that stalls every send.
const SWEEP_SLICE: usize = 4096;
/// When a slice was full, the next one comes this soon.
const SWEEP_AGAIN: Duration = Duration::from_secs(1);

pub(crate) struct Writer {
    db: Arc<Database>,
    cfg: StoreConfig,
    clock: Clock,
    disk: DiskGauge,
    counters: Arc<Counters>,
    /// As of the last commit; each batch starts from these.
    totals: Totals,
}

/// A batch that made it to disk: one outcome per request, in order.
struct Committed {
    outcomes: Vec<Result<Answer, RequestError>>,
    totals: Totals,
    swept: u64,
}

/// What to do once the current batch is committed.
enum After {
    Continue,
    Stop(Option<oneshot::Sender<()>>),
    #[cfg(test)]
    Hold(std::sync::mpsc::Receiver<()>),
}

impl Writer {
    pub(crate) fn new(
        db: Arc<Database>,
        cfg: StoreConfig,
        clock: Clock,
        counters: Arc<Counters>,
        totals: Totals,
    ) -> Self {
        let dir = match cfg.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => ".".into(),
        };
        let disk = DiskGauge::new(dir, cfg.min_free_disk_bytes);
        Writer {
            db,
            cfg,
            clock,
            disk,
            counters,
            totals,
        }
    }

    /// Runs until a shutdown message or until every handle is gone.
    /// Requests still queued then are dropped, and their callers hear
    /// `ShuttingDown`.
    pub(crate) fn run(mut self, rx: Receiver<Msg>) {
        let max_batch = self.cfg.max_batch.max(1);
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        loop {
            let wait = next_sweep.saturating_duration_since(Instant::now());
            let mut batch = Vec::new();
            let mut after = After::Continue;
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    after = take(first, &mut batch);
                    while matches!(after, After::Continue) && batch.len() < max_batch {
                        match rx.try_recv() {
                            Ok(msg) => after = take(msg, &mut batch),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let sweep = Instant::now() >= next_sweep;
            if !batch.is_empty() || sweep {
                let swept = self.run_batch(batch, sweep.then_some(SWEEP_SLICE));
                if sweep {
                    let full = swept >= SWEEP_SLICE as u64;
                    next_sweep = Instant::now() + if full { SWEEP_AGAIN } else { SWEEP_EVERY };
                }
            }
            match after {
                After::Continue => {}
                After::Stop(done) => {
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    break;
                }
                #[cfg(test)]
                After::Hold(gate) => drop(gate.recv()),
            }
        }
        tracing::debug!("store writer stopped");
    }

    /// Commits one batch and answers its requests; returns how many
    /// envelopes the periodic sweep (if asked for) deleted.
    fn run_batch(&mut self, batch: Vec<Request>, sweep: Option<usize>) -> u64 {
        match self.commit(&batch, sweep) {
            Ok(Committed {
                outcomes,
                totals,
                swept,
            }) => {
                self.totals = totals;
                self.counters
                    .committed(totals, batch.len(), self.disk.last());
                for (req, out) in batch.into_iter().zip(outcomes) {
                    req.reply.send(out);
                }
                if swept > 0 {
                    tracing::debug!(swept, "expired envelopes deleted");
                }
                swept
            }
            Err(e) => {
                tracing::error!(error = %e, requests = batch.len(), "store batch failed, nothing in it was stored");
                for req in batch {
                    req.reply.refuse(RequestError::Internal(e.clone()));
                }
                0
            }
        }
    }

    fn commit(&mut self, batch: &[Request], sweep: Option<usize>) -> Result<Committed, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(self.cfg.quick_repair);
        let now_secs = self.clock.now_secs();
        let (outcomes, totals, swept) = {
            let mut tx = Tx::open(&txn, self.totals)?;
            let mut ctx = Ctx {
                cfg: &self.cfg,
                now_secs,
                disk: &mut self.disk,
            };
            let mut outcomes = Vec::with_capacity(batch.len());
            for req in batch {
                outcomes.push(match tx.apply(&mut ctx, &req.op) {
                    Ok(answer) => Ok(answer),
                    Err(Fail::Refuse(e)) => Err(e),
                    Err(Fail::Abort(e)) => return Err(e),
                });
            }
            let swept = match sweep {
                Some(limit) => tx.sweep(hour_of(now_secs), limit)?,
                None => 0,
            };
            tx.save_totals()?;
            (outcomes, tx.totals(), swept)
        };
        txn.commit()?;
        Ok(Committed {
            outcomes,
            totals,
            swept,
        })
    }
}

/// Sorts one message into the batch or into what happens after it.
fn take(msg: Msg, batch: &mut Vec<Request>) -> After {
    match msg {
        Msg::Request(req) => {
            batch.push(req);
            After::Continue
        }
        Msg::Shutdown(done) => After::Stop(done),
        #[cfg(test)]
        Msg::Hold(gate) => After::Hold(gate),
    }
}
