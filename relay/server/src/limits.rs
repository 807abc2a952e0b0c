//! Admission limits against hostile or broken clients, as plain state
//! machines: the caller passes the time and acts on the answer, so each is
//! unit-tested without sockets or sleeping.
//!
//! - [`Buckets`]: token buckets keyed by source address or send id, in a
//!   map with a fixed ceiling (an attacker with many addresses or made-up
//!   send ids must not grow it without bound).
//! - [`Counts`]: how many of something a key holds at once (connections
//!   per address, sessions per owner key), given back by a guard.
//! - [`RetrySwitch`]: QUIC Retry on while the relay-wide handshake rate is
//!   above a threshold, off again once it stayed well below it.
//! - [`Refusals`]: a periodic summary line instead of one log line per
//!   refused connection, which a flood would turn into a log flood.
//!
//! Why not `governor`: its keyed limiter keeps every key it has seen until
//! the caller sweeps (`retain_recent`), with no ceiling in between, and a
//! token bucket is the few lines below.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
    }
}

/// Token buckets by key, at most `cap` of them.
///
/// A key seen for the first time starts with a full bucket, so a bucket
/// that has refilled carries no information and is what goes first when
/// the map is full. If the map is still full after that (more keys are
/// busy than it holds), arbitrary entries go until a quarter is free: each
/// sweep costs one pass over the map and buys a quarter of `cap` inserts,
/// and an evicted key only gets a fresh bucket, no more than a new key
/// would.
pub struct Buckets<K> {
    map: Mutex<HashMap<K, Bucket>>,
    cap: usize,
}

impl<K: Hash + Eq + Copy> Buckets<K> {
    pub fn new(cap: usize) -> Self {
        Buckets {
            map: Mutex::new(HashMap::new()),
            cap: cap.max(4),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Bucket>> {
        // Every change is one entry: a panic elsewhere leaves it usable.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one token from `key`'s bucket; `false` if it is empty.
    /// `per_sec` tokens come back each second, up to `burst`.
    pub fn take(&self, key: K, now: Instant, per_sec: u32, burst: u32) -> bool {
        let (rate, burst) = (f64::from(per_sec), f64::from(burst.max(1)));
        let mut map = self.lock();
        if !map.contains_key(&key) && map.len() >= self.cap {
            Self::sweep(&mut map, self.cap, now, rate, burst);
        }
        let b = map.entry(key).or_insert_with(|| Bucket::full(burst, now));
        b.refill(now, rate, burst);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn sweep(map: &mut HashMap<K, Bucket>, cap: usize, now: Instant, rate: f64, burst: f64) {
        map.retain(|_, b| {
            b.refill(now, rate, burst);
            b.tokens < burst
        });
        let keep = cap - cap / 4;
        if map.len() > keep {
            let mut excess = map.len() - keep;
            map.retain(|_, _| {
                if excess == 0 {
                    return true;
                }
                excess -= 1;
                false
            });
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// How many of something each key holds now; a key holding none has no
/// entry, so the map never outgrows what is held.
pub struct Counts<K: Hash + Eq> {
    map: Mutex<HashMap<K, u32>>,
}

impl<K: Hash + Eq> Default for Counts<K> {
    fn default() -> Self {
        Counts {
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// One place held under [`Counts`]; given back when dropped.
pub struct Held<K: Hash + Eq + Copy> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: Hash + Eq + Copy> Counts<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, u32>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One more for `key`, unless it already holds `max`.
    pub fn try_hold(self: &Arc<Self>, key: K, max: u32) -> Option<Held<K>> {
        let mut map = self.lock();
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            if *n == 0 {
                map.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Held {
            counts: self.clone(),
            key,
        })
    }

    /// Keys holding anything.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.lock().len()
    }
}

impl<K: Hash + Eq + Copy> Drop for Held<K> {
    fn drop(&mut self) {
        let mut map = self.counts.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Incoming connections are counted in windows this long.
const WINDOW: Duration = Duration::from_millis(250);
/// Windows per second.
const WINDOWS_PER_SEC: u32 = 4;
/// Retry goes off after this many windows in a row below half the
/// threshold (5 s): a flood that pauses briefly does not flip it back and
/// forth.
const QUIET_WINDOWS: u32 = 20;

/// Whether new connections must answer a QUIC Retry first.
///
/// On as soon as the incoming connections counted in the current window
/// exceed the threshold's share of it (a flood is answered within a
/// quarter second); off once [`QUIET_WINDOWS`] windows in a row saw fewer
/// than half of it.
#[derive(Debug)]
pub struct RetrySwitch {
    window_start: Instant,
    count: u32,
    quiet: u32,
    on: bool,
}

/// What [`RetrySwitch::observe`] or [`RetrySwitch::tick`] changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Turned {
    On,
    Off,
    Same,
}

impl RetrySwitch {
    pub fn new(now: Instant) -> Self {
        RetrySwitch {
            window_start: now,
            count: 0,
            quiet: 0,
            on: false,
        }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// One incoming connection at `now`, with the threshold in force.
    pub fn observe(&mut self, now: Instant, per_sec: u32) -> Turned {
        let turned = self.tick(now, per_sec);
        self.count = self.count.saturating_add(1);
        if !self.on && self.count > per_sec.div_ceil(WINDOWS_PER_SEC) {
            self.on = true;
            self.quiet = 0;
            return Turned::On;
        }
        turned
    }

    /// Closes the windows that ended by `now` (also called with no
    /// traffic, so the switch goes off when a flood stops dead).
    pub fn tick(&mut self, now: Instant, per_sec: u32) -> Turned {
        let half = per_sec / WINDOWS_PER_SEC / 2;
        let mut turned = Turned::Same;
        while now.saturating_duration_since(self.window_start) >= WINDOW {
            if self.on {
                if self.count < half.max(1) {
                    self.quiet += 1;
                } else {
                    self.quiet = 0;
                }
                if self.quiet >= QUIET_WINDOWS {
                    self.on = false;
                    turned = Turned::Off;
                }
            }
            self.count = 0;
            self.window_start += WINDOW;
            if !self.on && now.saturating_duration_since(self.window_start) >= WINDOW {
                // Nothing to count in the windows skipped over.
                self.window_start = now;
            }
        }
        turned
    }
}

/// How often refusals are summed up in the log.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Refusals since the last summary line, by reason.
#[derive(Default)]
pub struct Refusals {
    counts: Vec<(&'static str, u64)>,
}

impl Refusals {
    pub fn note(&mut self, reason: &'static str) {
        match self.counts.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((reason, 1)),
        }
    }

    /// The summary of what was noted since the last call, if anything.
    pub fn summary(&mut self) -> Option<String> {
        if self.counts.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .counts
            .drain(..)
            .map(|(r, n)| format!("{n} by limits.{r}"))
            .collect();
        Some(parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let b = Buckets::new(16);
        let t = Instant::now();
        assert!((0..5).all(|_| b.take(1u8, t, 5, 5)));
        assert!(!b.take(1, t, 5, 5), "empty after its burst");
        assert!(b.take(2, t, 5, 5), "another key has its own bucket");
        assert!(b.take(1, t + S / 5, 5, 5), "one token back after 1/rate");
        assert!(!b.take(1, t + S / 5, 5, 5));
        assert_eq!((0..10).filter(|_| b.take(1, t + 100 * S, 5, 5)).count(), 5);
    }

    #[test]
    fn the_map_never_outgrows_its_cap() {
        let b = Buckets::new(64);
        let t = Instant::now();
        // Every key busy (its bucket not full): arbitrary ones are evicted.
        for k in 0..10_000u32 {
            b.take(k, t, 1, 2);
            assert!(b.len() <= 64);
        }
        // A sweep drops the full buckets first: a busy key survives it.
        let b = Buckets::new(8);
        for k in 0..7u32 {
            b.take(k, t, 1, 2);
        }
        for _ in 0..2 {
            b.take(u32::MAX, t + 10 * S, 1, 2);
        }
        assert_eq!(b.len(), 8);
        assert!(b.take(7, t + 10 * S, 1, 2));
        assert_eq!(b.len(), 2, "the refilled buckets went");
        assert!(!b.take(u32::MAX, t + 10 * S, 1, 2), "kept, and still empty");
    }

    #[test]
    fn counts_hold_and_give_back() {
        let c = Arc::new(Counts::default());
        let a = c.try_hold(1u8, 2).unwrap();
        let _b = c.try_hold(1, 2).unwrap();
        assert!(c.try_hold(1, 2).is_none());
        assert!(c.try_hold(2, 2).is_some());
        drop(a);
        assert!(c.try_hold(1, 2).is_some());
        assert!(c.try_hold(3, 0).is_none());
        drop(_b);
        assert_eq!(c.keys(), 0, "keys holding nothing leave the map");
    }

    #[test]
    fn retry_turns_on_in_a_flood_and_off_after_it() {
        let t = Instant::now();
        let mut r = RetrySwitch::new(t);
        // 100/s: a quarter second's share is 25.
        for i in 0..25 {
            assert_eq!(r.observe(t + WINDOW * i / 100, 100), Turned::Same);
        }
        assert_eq!(r.observe(t + WINDOW / 2, 100), Turned::On);
        assert!(r.is_on());
        // The flood goes on at 400/s for 10 s: stays on.
        let mut now = t;
        for _ in 0..4_000 {
            now += Duration::from_micros(2_500);
            assert_ne!(r.observe(now, 100), Turned::Off);
        }
        assert!(r.is_on());
        // Quiet for 4 s: still on; by 5 s it is off, with no traffic at all.
        assert_eq!(r.tick(now + 4 * S, 100), Turned::Same);
        assert_eq!(r.tick(now + 5 * S + WINDOW, 100), Turned::Off);
        assert!(!r.is_on());
        // Normal traffic below the threshold never turns it on.
        let mut r = RetrySwitch::new(t);
        for i in 0..1_000u32 {
            assert_eq!(r.observe(t + S * i / 90, 100), Turned::Same);
        }
    }

    #[test]
    fn refusals_are_summed_up_once() {
        let mut r = Refusals::default();
        assert!(r.summary().is_none());
        for _ in 0..3 {
            r.note("max_connections");
        }
        r.note("max_connections_per_source");
        assert_eq!(
            r.summary().as_deref(),
            Some("3 by limits.max_connections, 1 by limits.max_connections_per_source")
        );
        assert!(r.summary().is_none());
    }
}
