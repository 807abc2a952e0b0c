//! Process hardening applied before any key is read.
//!
//! A core dump or a ptrace-attached debugger would copy the relay's private
//! keys (and the session state) out of memory. We set the core size limit to
//! zero and mark the process non-dumpable, which also stops other processes
//! of the same user from attaching or reading `/proc/<pid>/mem`. The umask
//! makes everything the daemon creates (the store included, which redb
//! would otherwise create world-readable) private to its user.

use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::stat::{Mode, umask};

pub fn apply() -> Result<(), nix::Error> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    prctl::set_dumpable(false)?;
    umask(Mode::from_bits_truncate(0o077));
    Ok(())
}
