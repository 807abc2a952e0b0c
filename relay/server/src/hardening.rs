//! Process hardening applied before any key is read, and who the process
//! runs as.
//!
//! A core dump or a ptrace-attached debugger would copy the relay's private
//! keys (and the session state) out of memory. We set the core size limit to
//! zero and mark the process non-dumpable, which also stops other processes
//! of the same user from attaching or reading `/proc/<pid>/mem`. The umask
//! makes everything the daemon creates (the store included, which redb
//! would otherwise create world-readable) private to its user.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;
use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};

pub fn apply() -> Result<(), nix::Error> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    prctl::set_dumpable(false)?;
    umask(Mode::from_bits_truncate(0o077));
    Ok(())
}

/// `serve` with a config file refuses to run as root unless `allowed`:
/// the relay parses what anyone who reaches its port sends, and needs no
/// privilege (systemd or the operator binds the port).
pub fn refuse_root(allowed: bool) -> anyhow::Result<()> {
    if Uid::effective().is_root() && !allowed {
        anyhow::bail!(
            "refusing to serve as root: run it as its own user (the package's unit does, as \
             `_chappe`), or pass --allow-root (CHAPPE_ALLOW_ROOT=1) if you really mean it"
        );
    }
    Ok(())
}

/// Admin commands that write keys (`init`, `rotate-keys`), run as root on
/// a state directory another user owns, switch to that user first, so the
/// files they create stay readable by the relay and by no one else.
pub fn act_as_state_owner(state_dir: &Path) -> anyhow::Result<()> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(state_dir) else {
        return Ok(()); // created by root, for a relay that runs as root
    };
    let (uid, gid) = (Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid()));
    if uid.is_root() {
        return Ok(());
    }
    setgroups(&[]).context("dropping supplementary groups")?;
    setgid(gid).with_context(|| format!("switching to group {gid}, the state directory's"))?;
    setuid(uid).with_context(|| format!("switching to user {uid}, the state directory's owner"))?;
    Ok(())
}
