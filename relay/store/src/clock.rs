//! Hours since the Unix epoch: the only notion of time the store keeps.
//!
//! Expiry needs no finer grain, and a coarser clock means a copy of the
//! database says less about when anyone wrote. The clock is swappable so
//! tests can step through expiry without sleeping for hours.

#[cfg(test)]
use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECS_PER_HOUR: u64 = 3600;

#[derive(Clone, Debug, Default)]
pub(crate) enum Clock {
    #[default]
    System,
    /// Seconds since the epoch, set by the test.
    #[cfg(test)]
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub(crate) fn now_secs(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            #[cfg(test)]
            Clock::Manual(secs) => secs.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn now_hour(&self) -> u32 {
        hour_of(self.now_secs())
    }
}

/// The hour `secs` falls in (saturating far in the future).
pub(crate) fn hour_of(secs: u64) -> u32 {
    u32::try_from(secs / SECS_PER_HOUR).unwrap_or(u32::MAX)
}

/// The first hour in which an envelope stored at `now_secs` counts as
/// expired. Rounded up, so an envelope lives at least `ttl` and less than
/// `ttl` plus one hour.
pub(crate) fn expiry_hour(now_secs: u64, ttl: Duration) -> u32 {
    let end = now_secs.saturating_add(ttl.as_secs());
    u32::try_from(end.div_ceil(SECS_PER_HOUR)).unwrap_or(u32::MAX)
}

/// Whether an envelope with expiry hour `expiry` is gone at `now_hour`.
pub(crate) fn is_expired(expiry: u32, now_hour: u32) -> bool {
    expiry <= now_hour
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rounds_up() {
        let ttl = Duration::from_secs(14 * 24 * 3600);
        let now = 1_700_000_123;
        let e = expiry_hour(now, ttl);
        assert!(u64::from(e) * 3600 >= now + ttl.as_secs());
        assert!(u64::from(e) * 3600 < now + ttl.as_secs() + 3600);
        assert!(!is_expired(e, hour_of(now + ttl.as_secs() - 1)));
        assert!(is_expired(e, e));
        assert_eq!(expiry_hour(u64::MAX, ttl), u32::MAX);
    }
}
