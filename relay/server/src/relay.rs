//! The state every session shares: store, router, keys, limits, metrics.
//!
//! Keys and limits can change while the relay runs (a reload): each is an
//! `Arc` behind a lock, swapped whole, and a session takes a snapshot when
//! it needs one, so it never sees half of an old and half of a new set.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use chappe_proto::{OwnerKey, SendId};
use chappe_store::Store;
use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::keys::KeyRing;
use crate::limits::{Buckets, Counts};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::shutdown::Shutdown;

pub struct Relay {
    pub store: Store,
    pub router: Router,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    keys: Arc<Live<KeyRing>>,
    limits: Live<Limits>,
    ready: AtomicBool,
    next_session: AtomicU64,
    /// `limits.sends_per_send_id_per_sec`, by send id.
    pub send_rates: Buckets<SendId>,
    /// `limits.max_sessions_per_owner`: owner sessions by owner key.
    pub owner_sessions: Arc<Counts<OwnerKey>>,
    /// `limits.max_inflight_send_bytes`: ciphertext bytes of sends read and
    /// not yet answered, relay-wide; fixed at start.
    pub send_budget: Semaphore,
}

/// Send ids whose send rate is tracked at once: at about 80 bytes an
/// entry, 5 MiB at most, and far more mailboxes than are written to in the
/// two seconds a bucket takes to refill.
const SEND_RATE_KEYS: usize = 65_536;

impl Relay {
    pub fn new(
        store: Store,
        keys: KeyRing,
        limits: Limits,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Arc<Relay> {
        Arc::new(Relay {
            store,
            router: Router::default(),
            metrics,
            shutdown,
            keys: Arc::new(Live::new(keys)),
            send_budget: Semaphore::new(
                usize::try_from(limits.max_inflight_send_bytes).unwrap_or(Semaphore::MAX_PERMITS),
            ),
            limits: Live::new(limits),
            ready: AtomicBool::new(false),
            next_session: AtomicU64::new(1),
            send_rates: Buckets::new(SEND_RATE_KEYS),
            owner_sessions: Arc::default(),
        })
    }

    /// The key generations in force now.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.get()
    }

    /// The same, shared with the TLS certificate resolver.
    pub fn live_keys(&self) -> Arc<Live<KeyRing>> {
        self.keys.clone()
    }

    pub fn set_keys(&self, keys: KeyRing) {
        self.keys.set(keys);
    }

    /// The limits in force now.
    pub fn limits(&self) -> Arc<Limits> {
        self.limits.get()
    }

    pub fn set_limits(&self, limits: Limits) {
        self.limits.set(limits);
    }

    /// What `systemctl status` shows: where it listens, which key it
    /// presents, how busy it is.
    pub fn status_line(&self, listen: SocketAddr) -> String {
        let fp = self.keys().current.fingerprint;
        let fp = fp.get(..4).map(hex_upper).unwrap_or_default();
        let owners = self
            .metrics
            .connections_active
            .with_label_values(&["owner"])
            .get();
        let senders = self
            .metrics
            .connections_active
            .with_label_values(&["sender"])
            .get();
        let s = self.store.stats();
        let state = if self.is_ready() {
            "serving"
        } else {
            "not ready"
        };
        format!(
            "{state} on {listen}/udp, certificate {fp}…; sessions: {owners} owner, {senders} sender; stored: {} envelopes in {} mailboxes",
            s.envelopes, s.mailboxes
        )
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.metrics.ready.set(i64::from(ready));
    }

    /// Ready to take traffic: serving, not draining, and the store takes
    /// writes (read-only after a failed disk write, or while the disk is
    /// full, it refuses them all).
    pub fn is_ready(&self) -> bool {
        self.not_ready_because().is_none()
    }

    /// Why the relay is not ready, for `/readyz`; `None` when it is.
    pub fn not_ready_because(&self) -> Option<&'static str> {
        if !self.ready.load(Ordering::Acquire) || self.shutdown.is_set() {
            return Some("not ready\n");
        }
        match self.store.stats().read_only {
            None => None,
            Some(chappe_store::ReadOnly::NoSpace) => {
                Some("not ready: the store is read-only (no_space: the disk is full)\n")
            }
            Some(chappe_store::ReadOnly::Io) => {
                Some("not ready: the store is read-only (io_error: a disk write failed)\n")
            }
        }
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
        m.store_journal_capacity_bytes
            .set(clamp(s.journal_capacity));
        m.store_expired_envelopes_total.inc_by(
            s.expired
                .saturating_sub(m.store_expired_envelopes_total.get()),
        );
        let limits = self.limits();
        m.store_disk_watermark_bytes
            .set(clamp(limits.min_free_disk_bytes));
        m.store_max_bytes.set(clamp(limits.max_store_bytes));
        if let Some(free) = self.store.free_disk_bytes() {
            m.store_disk_free_bytes.set(clamp(free));
        }
        m.store_failed.set(i64::from(s.failed));
        for why in [chappe_store::ReadOnly::NoSpace, chappe_store::ReadOnly::Io] {
            m.store_read_only
                .with_label_values(&[why.name()])
                .set(i64::from(s.read_only == Some(why)));
        }
        m.key_generations
            .set(1 + i64::from(self.keys().previous.is_some()));
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A value a reload replaces whole; readers take a snapshot.
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Live(RwLock::new(Arc::new(value)))
    }

    pub fn get(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}
