//! The disk under the store: the free-space watermark and floor, what a
//! failed write means, and (tests only) injected faults.
//!
//! `statvfs` is a syscall; a busy relay sends thousands of envelopes a
//! second, and free space does not change meaningfully in a quarter of a
//! second, so the answer is cached.
//!
//! Two thresholds, for two purposes. The *watermark*
//! (`min_free_disk_bytes`, the operator's) refuses sends early, while
//! acknowledgements and mailbox changes still run. The *floor*
//! ([`floor_for`], the store's own) is where the store turns read-only
//! altogether, because below it a checkpoint into redb could run out of
//! space — and redb latches every failed write until the database is
//! reopened, which would leave the store read-only until a restart. Held
//! off before the floor, nothing fails, and the store takes writes again
//! by itself as soon as space returns.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::statvfs::statvfs;

const RECHECK: Duration = Duration::from_millis(250);

/// Why the store takes no writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOnly {
    /// The file system is full (or below the store's floor): sends are
    /// refused `relay_full`. Clears by itself when space returns, unless a
    /// write already failed for it.
    NoSpace,
    /// A write or sync failed for another reason: requests are refused
    /// `internal` until the relay is restarted.
    Io,
}

impl ReadOnly {
    /// The label the metric and the readiness answer use.
    pub fn name(self) -> &'static str {
        match self {
            ReadOnly::NoSpace => "no_space",
            ReadOnly::Io => "io_error",
        }
    }

    /// What a failed write's error says about the disk.
    pub(crate) fn of(e: &io::Error) -> ReadOnly {
        use nix::errno::Errno;
        match e.raw_os_error().map(Errno::from_raw) {
            Some(Errno::ENOSPC | Errno::EDQUOT) => ReadOnly::NoSpace,
            _ => ReadOnly::Io,
        }
    }
}

/// The free space below which the store stops taking writes: room for
/// the largest checkpoint (everything a full journal ring holds, moved
/// into redb, whose copy-on-write pages may take as much again) and some
/// metadata besides.
pub(crate) fn floor_for(journal_ring: u64) -> u64 {
    journal_ring.saturating_mul(2).saturating_add(4 << 20)
}

pub(crate) struct DiskGauge {
    dir: PathBuf,
    min_free: u64,
    floor: u64,
    checked: Option<Instant>,
    low: bool,
    full: bool,
}

impl DiskGauge {
    /// Watches the file system holding `dir`; `min_free == 0` disables the
    /// watermark, `floor == 0` the floor.
    pub(crate) fn new(dir: PathBuf, min_free: u64, floor: u64) -> Self {
        DiskGauge {
            dir,
            min_free,
            floor,
            checked: None,
            low: false,
            full: false,
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
        self.refresh();
        self.low
    }

    /// Whether free space is below the store's floor, as of at most
    /// `RECHECK` ago (a failed `statvfs` counts as room, as above).
    pub(crate) fn is_full(&mut self) -> bool {
        self.refresh();
        self.full
    }

    fn refresh(&mut self) {
        if self.min_free == 0 && self.floor == 0 {
            return;
        }
        if self.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return;
        }
        self.checked = Some(Instant::now());
        let (was_low, was_full) = (self.low, self.full);
        (self.low, self.full) = match free_bytes(&self.dir) {
            Ok(free) => (free < self.min_free, free < self.floor),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "statvfs failed");
                (false, false)
            }
        };
        if self.low != was_low {
            tracing::warn!(
                low = self.low,
                min_free = self.min_free,
                "free disk crossed the watermark"
            );
        }
        if self.full && !was_full {
            tracing::error!(
                floor = self.floor,
                dir = %self.dir.display(),
                "the disk is full: the store takes no writes (sends get relay_full) until there \
                 is room again"
            );
        } else if was_full && !self.full {
            tracing::warn!("disk space is back: the store takes writes again");
        }
    }

    /// The last answer about the watermark, without checking again.
    pub(crate) fn last(&self) -> bool {
        self.low
    }
}

// The field types differ between platforms (u32 on some 32-bit targets).
#[allow(clippy::useless_conversion)]
pub(crate) fn free_bytes(dir: &Path) -> nix::Result<u64> {
    let s = statvfs(dir)?;
    Ok(u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
}

/// Opens (or creates) the redb file: straight from its path, or, in a
/// build with fault injection, through [`FaultyFile`].
pub(crate) fn create_db(
    builder: &redb::Builder,
    path: &Path,
    faults: &Faults,
) -> Result<redb::Database, redb::DatabaseError> {
    #[cfg(any(test, feature = "fault-injection"))]
    if let Some(armed) = &faults.armed {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let inner = redb::backends::FileBackend::new(file)?;
        return builder.create_with_backend(FaultyFile {
            inner,
            armed: armed.clone(),
        });
    }
    let _ = faults;
    builder.create(path)
}

/// Where a fault can be injected. (No `Debug` outside test builds: not
/// even the names of the seam's points are in the relay's binary.)
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(any(test, feature = "fault-injection"), derive(Debug))]
pub enum FaultAt {
    /// A write of `store.journal`.
    JournalWrite,
    /// The `fdatasync` of `store.journal` after a batch.
    JournalSync,
    /// A write of `store.redb` (a checkpoint's pages).
    DbWrite,
    /// The sync that makes a `store.redb` commit durable.
    DbSync,
}

/// Faults for tests to inject into the store's file layer: a write or sync
/// of the journal or of redb fails with a chosen errno. Only a build with
/// the `fault-injection` feature (or the crate's own tests) can arm them;
/// in any other build this is an empty value and every check is `Ok`, so
/// the seam is not in the relay that operators run.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    #[cfg(any(test, feature = "fault-injection"))]
    armed: Option<std::sync::Arc<Armed>>,
}

impl Faults {
    /// Fails `at` if a test armed it.
    #[inline]
    pub(crate) fn check(&self, at: FaultAt) -> io::Result<()> {
        #[cfg(any(test, feature = "fault-injection"))]
        if let Some(a) = &self.armed {
            return a.check(at);
        }
        let _ = at;
        Ok(())
    }
}

#[cfg(any(test, feature = "fault-injection"))]
mod injection {
    use std::io;
    use std::ops::Bound;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI32, Ordering};

    use redb::backends::FileBackend;
    use redb::{BackendError, StorageBackend};

    use super::{FaultAt, Faults};

    /// The errno each point fails with (0: none).
    #[derive(Debug, Default)]
    pub(crate) struct Armed {
        journal_write: AtomicI32,
        journal_sync: AtomicI32,
        db_write: AtomicI32,
        db_sync: AtomicI32,
    }

    impl Armed {
        fn slot(&self, at: FaultAt) -> &AtomicI32 {
            match at {
                FaultAt::JournalWrite => &self.journal_write,
                FaultAt::JournalSync => &self.journal_sync,
                FaultAt::DbWrite => &self.db_write,
                FaultAt::DbSync => &self.db_sync,
            }
        }

        pub(crate) fn check(&self, at: FaultAt) -> io::Result<()> {
            match self.slot(at).load(Ordering::Acquire) {
                0 => Ok(()),
                errno => Err(io::Error::from_raw_os_error(errno)),
            }
        }
    }

    impl Faults {
        /// A set of faults, none armed yet; give it to the store through
        /// `StoreConfig::faults`.
        pub fn injectable() -> Faults {
            Faults {
                armed: Some(Arc::new(Armed::default())),
            }
        }

        /// From now on, `at` fails with `errno` (0 to stop failing).
        pub fn arm(&self, at: FaultAt, errno: i32) {
            if let Some(a) = &self.armed {
                a.slot(at).store(errno, Ordering::Release);
            }
        }
    }

    /// redb's own file backend, with [`Armed`] faults in front of its
    /// writes and syncs.
    #[derive(Debug)]
    pub(crate) struct FaultyFile {
        pub(crate) inner: FileBackend,
        pub(crate) armed: Arc<Armed>,
    }

    impl StorageBackend for FaultyFile {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.armed.check(FaultAt::DbWrite)?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.armed.check(FaultAt::DbSync)?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.armed.check(FaultAt::DbWrite)?;
            self.inner.write(offset, data)
        }
        fn close(&self) -> io::Result<()> {
            self.inner.close()
        }
        fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.try_lock_range(s, e)
        }
        fn try_lock_shared_range(
            &self,
            s: Bound<u64>,
            e: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.inner.try_lock_shared_range(s, e)
        }
        fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.inner.lock_range(s, e)
        }
        fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.inner.lock_shared_range(s, e)
        }
        fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.inner.unlock_range(s, e)
        }
        fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.query_lock_range(s, e)
        }
    }
}

#[cfg(any(test, feature = "fault-injection"))]
use injection::{Armed, FaultyFile};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_and_floor() {
        let dir = std::env::temp_dir();
        assert!(!DiskGauge::new(dir.clone(), 0, 0).is_low());
        assert!(!DiskGauge::new(dir.clone(), 1, 0).is_low());
        assert!(!DiskGauge::new(dir.clone(), 0, 1).is_full());
        let mut g = DiskGauge::new(dir.clone(), u64::MAX, 0);
        assert!(g.is_low());
        assert!(g.last());
        assert!(!g.is_full());
        let mut g = DiskGauge::new(dir, 0, u64::MAX);
        assert!(g.is_full());
        assert!(!g.is_low());
    }

    #[test]
    fn what_a_failed_write_means() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(ReadOnly::of(&e(nix::libc::ENOSPC)), ReadOnly::NoSpace);
        assert_eq!(ReadOnly::of(&e(nix::libc::EDQUOT)), ReadOnly::NoSpace);
        assert_eq!(ReadOnly::of(&e(nix::libc::EIO)), ReadOnly::Io);
        assert_eq!(ReadOnly::of(&io::Error::other("x")), ReadOnly::Io);
    }
}
