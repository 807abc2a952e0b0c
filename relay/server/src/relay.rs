//! The state every session shares: store, router, keys, limits, metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chappe_proto::noise::Keypair;
use chappe_store::Store;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::shutdown::Shutdown;

pub struct Relay {
    pub store: Store,
    pub router: Router,
    pub noise: Keypair,
    pub limits: Limits,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    ready: AtomicBool,
    next_session: AtomicU64,
}

impl Relay {
    pub fn new(
        store: Store,
        noise: Keypair,
        limits: Limits,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Arc<Relay> {
        Arc::new(Relay {
            store,
            router: Router::default(),
            noise,
            limits,
            metrics,
            shutdown,
            ready: AtomicBool::new(false),
            next_session: AtomicU64::new(1),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.metrics.ready.set(i64::from(ready));
    }

    /// Ready to take traffic: serving, not draining, and the store still
    /// takes writes (after a failed disk write it refuses them all).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutdown.is_set() && !self.store.stats().failed
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Copies the store's counters into the gauges before a scrape.
    pub fn refresh_gauges(&self) {
        let s = self.store.stats();
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.metrics.store_envelopes.set(clamp(s.envelopes));
        self.metrics.store_bytes.set(clamp(s.bytes));
        self.metrics.store_mailboxes.set(clamp(s.mailboxes));
        let m = &self.metrics;
        for (counter, now) in [
            (&m.store_commits_total, s.commits),
            (&m.store_checkpoints_total, s.checkpoints),
            (&m.store_unwritten_envelopes_total, s.unwritten),
        ] {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        m.store_journal_bytes.set(clamp(s.journal_bytes));
        m.store_failed.set(i64::from(s.failed));
    }
}
