//! The free-disk watermark.
//!
//! `statvfs` is a syscall; a busy relay sends thousands of envelopes a
//! second, and free space does not change meaningfully in a quarter of a
//! second, so the answer is cached.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::statvfs::statvfs;

const RECHECK: Duration = Duration::from_millis(250);

pub(crate) struct DiskGauge {
    dir: PathBuf,
    min_free: u64,
    checked: Option<Instant>,
    low: bool,
}

impl DiskGauge {
    /// Watches the file system holding `dir`; `min_free == 0` disables it.
    pub(crate) fn new(dir: PathBuf, min_free: u64) -> Self {
        DiskGauge {
            dir,
            min_free,
            checked: None,
            low: false,
        }
    }

    /// A new watermark, checked against at the next look.
    pub(crate) fn set_min_free(&mut self, min_free: u64) {
        self.min_free = min_free;
        self.checked = None;
    }

    /// Whether free space is below the watermark, as of at most `RECHECK`
    /// ago. If `statvfs` fails the store keeps accepting: a broken check
    /// must not take the relay down, and a truly full disk still fails the
    /// commit.
    pub(crate) fn is_low(&mut self) -> bool {
        if self.min_free == 0 {
            return false;
        }
        if self.checked.is_none_or(|t| t.elapsed() >= RECHECK) {
            self.checked = Some(Instant::now());
            let was_low = self.low;
            self.low = match free_bytes(&self.dir) {
                Ok(free) => free < self.min_free,
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "statvfs failed");
                    false
                }
            };
            if self.low != was_low {
                tracing::warn!(
                    low = self.low,
                    min_free = self.min_free,
                    "free disk crossed the watermark"
                );
            }
        }
        self.low
    }

    /// The last answer, without checking again.
    pub(crate) fn last(&self) -> bool {
        self.low
    }
}

// The field types differ between platforms (u32 on some 32-bit targets).
#[allow(clippy::useless_conversion)]
pub(crate) fn free_bytes(dir: &std::path::Path) -> nix::Result<u64> {
    let s = statvfs(dir)?;
    Ok(u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark() {
        let dir = std::env::temp_dir();
        assert!(!DiskGauge::new(dir.clone(), 0).is_low());
        assert!(!DiskGauge::new(dir.clone(), 1).is_low());
        let mut g = DiskGauge::new(dir, u64::MAX);
        assert!(g.is_low());
        assert!(g.last());
    }
}
