//! `chappe-relay restore SRC`: a backup in place of a stopped relay's store.
//!
//! Offline on purpose: the relay holds the store open, and a store swapped
//! under it would be overwritten by its next checkpoint. The checks and
//! the swap are `chappe_store::backup::install`; this is the operator's
//! side: refusing while the relay answers on its admin socket, and
//! writing as the state directory's owner so that the relay can open what
//! root restored.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::config::Config;
use crate::{admin, hardening};

pub fn run(cfg: &Config, src: &Path) -> anyhow::Result<()> {
    if admin::connect(&cfg.state_dir)?.is_some() {
        bail!(
            "the relay is running on {}: stop it first (`systemctl stop chappe-relay`), then \
             restore, then start it",
            cfg.state_dir.display()
        );
    }
    if !cfg.state_dir.is_dir() {
        bail!(
            "no state directory {}: restore the relay's keys there first (or `chappe-relay init` \
             for a relay with a new identity), then the store",
            cfg.state_dir.display()
        );
    }
    // Opened as the caller, who may read what the relay's user cannot.
    let mut file = std::fs::File::open(src)
        .with_context(|| format!("cannot read the backup {}", src.display()))?;
    hardening::act_as_state_owner(&cfg.state_dir)?;
    let s = cfg.store_config();
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = cfg.state_dir.join(format!("replaced-{secs}"));
    let done = chappe_store::backup::install(&mut file, &s.path, &s.journal_path(), &aside)
        .with_context(|| format!("restoring {}", src.display()))?;
    let t = done.report.counted;
    eprintln!(
        "restored {} into {}: {} mailboxes, {} envelopes, {} bytes; the check found nothing wrong",
        src.display(),
        s.path.display(),
        t.mailboxes,
        t.envelopes,
        t.bytes
    );
    match done.aside {
        Some(dir) => eprintln!(
            "the replaced store and journal are in {}; delete it once the relay runs well",
            dir.display()
        ),
        None => eprintln!("there was no store to replace"),
    }
    Ok(())
}
