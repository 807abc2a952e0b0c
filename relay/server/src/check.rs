//! `chappe-relay check`: the offline consistency check of a stopped
//! relay's store and journal, and the one way to start past journal damage.
//!
//! The check itself is `chappe_store::inspect`; this prints its report and
//! turns problems into a non-zero exit. With `--discard-damaged-journal`
//! it then opens the store accepting the loss the report named (the
//! damaged record and everything after it, or a journal that is gone),
//! closes it cleanly, and checks again: the operator decides with the
//! report in front of them, and the relay itself never starts past damage
//! on its own, since a flag on `serve` or in the config would still be set
//! at the next damage.

use anyhow::{Context, bail};
use chappe_store::inspect::{Inspection, JournalState, Report, inspect};
use chappe_store::{Store, StoreConfig};

use crate::config::Config;
use crate::hardening;

pub fn run(cfg: &Config, discard: bool) -> anyhow::Result<()> {
    // A discard writes the store and may make a journal: as its owner.
    hardening::act_as_state_owner(&cfg.state_dir)?;
    let s = cfg.store_config();
    let first = check(&s)?;
    if discard {
        if !discards_something(&first.journal) {
            println!("nothing to discard: the journal is not damaged, missing or unreadable");
        } else {
            let mut open = s.clone();
            open.discard_damaged_journal = true;
            let store = Store::open(open).context("opening the store to discard the damage")?;
            // Dropping the last handle applies the journal and records a
            // clean stop.
            drop(store);
            match &first.journal {
                JournalState::Damaged { lost, .. } => println!("discarded {lost}"),
                _ => println!("discarded the journal; a new one was made"),
            }
            println!("checking again:");
            let again = check(&s)?;
            if again.has_problems() {
                bail!("problems remain after the discard (above)");
            }
            println!("the relay can start");
            return Ok(());
        }
    }
    if first.has_problems() {
        bail!(
            "problems found (above){}",
            if discards_something(&first.journal) {
                "; the relay will not start until they are fixed, or discarded with \
                 `chappe-relay check --discard-damaged-journal`"
            } else {
                ""
            }
        );
    }
    println!("no problems found");
    Ok(())
}

fn check(s: &StoreConfig) -> anyhow::Result<Inspection> {
    let i = inspect(s).with_context(|| format!("checking {}", s.path.display()))?;
    print!(
        "{}",
        Report {
            inspection: &i,
            store: &s.path,
            journal: &s.journal_path(),
        }
    );
    Ok(i)
}

/// Whether the journal is in a state the override exists for.
fn discards_something(j: &JournalState) -> bool {
    matches!(
        j,
        JournalState::Damaged { .. }
            | JournalState::Missing { clean: false }
            | JournalState::OldFormat { clean: false, .. }
    )
}
