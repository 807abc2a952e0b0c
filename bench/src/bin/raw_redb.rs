//! `raw-redb`: what redb itself does on this disk, without a relay around
//! it — the ceiling for the relay's durable send and fetch + ack rates.
//!
//! 1. insert: write transactions of `--batch` values of `--size` bytes each,
//!    committed with `Durability::Immediate`, for `--seconds` (or until
//!    `--max-values`). Keys are laid out like the relay's envelope table
//!    (receive id [32] ‖ seq u64 BE, one mailbox).
//! 2. drain: the same values back in batches of `--batch`: one read
//!    transaction reads a batch (and touches every byte), one write
//!    transaction (Durability::Immediate) deletes it — the shape of a fetch
//!    followed by an ack.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use chappe_bench::{Percentiles, histogram, print_json, record};
use clap::Parser;
use rand::RngCore;
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use serde::Serialize;

const ENVELOPES: TableDefinition<&[u8; 40], &[u8]> = TableDefinition::new("envelopes");

#[derive(Parser, Debug)]
#[command(about = "redb commit and read+delete rates on this disk")]
struct Args {
    /// Directory for the database (put it on the relay state dir's filesystem).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Values per write transaction.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Seconds to insert for.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop inserting after this many values (bounds the drain's length).
    #[arg(long, default_value_t = 2_000_000)]
    max_values: u64,
    /// Commit with redb's quick-repair (2-phase commit plus the allocator
    /// state), as the relay does with `[store] quick_repair = true`.
    #[arg(long)]
    quick_repair: bool,
}

#[derive(Serialize)]
struct Report {
    batch: usize,
    quick_repair: bool,
    size: usize,
    insert_seconds: f64,
    inserted: u64,
    insert_values_per_sec: f64,
    insert_commits_per_sec: f64,
    insert_commit_latency: Percentiles,
    drain_seconds: f64,
    drained: u64,
    drain_values_per_sec: f64,
    drain_batches_per_sec: f64,
    /// One batch: read transaction + delete transaction.
    drain_batch_latency: Percentiles,
    file_bytes_after_insert: u64,
}

fn key(mailbox: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    let (a, b) = k.split_at_mut(32);
    a.copy_from_slice(mailbox);
    b.copy_from_slice(&seq.to_be_bytes());
    k
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let duration = chappe_bench::seconds(a.seconds)?;
    let batch = a.batch.max(1);
    let dir = tempfile::Builder::new()
        .prefix("raw-redb.")
        .tempdir_in(&a.dir)
        .with_context(|| format!("creating a temp dir in {}", a.dir.display()))?;
    let path = dir.path().join("bench.redb");
    let db = Database::create(&path).context("creating the database")?;
    let mut mailbox = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut mailbox);
    let mut value = vec![0u8; a.size];
    rand::thread_rng().fill_bytes(&mut value);

    // 1. Inserts.
    let mut commit_hist = histogram()?;
    let mut seq = 0u64;
    let mut commits = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < duration && seq < a.max_values {
        let began = Instant::now();
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(a.quick_repair);
        {
            let mut t = txn.open_table(ENVELOPES)?;
            for _ in 0..batch {
                seq += 1;
                // Vary the bytes a little so nothing can be deduplicated.
                if let Some(b) = value.get_mut(..8) {
                    b.copy_from_slice(&seq.to_be_bytes());
                }
                t.insert(&key(&mailbox, seq), value.as_slice())?;
            }
        }
        txn.commit()?;
        record(&mut commit_hist, began.elapsed());
        commits += 1;
    }
    let insert_seconds = t0.elapsed().as_secs_f64();
    let inserted = seq;
    let file_bytes_after_insert = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);

    // 2. Read + delete in batches.
    let mut drain_hist = histogram()?;
    let mut drained = 0u64;
    let mut batches = 0u64;
    let mut touched = 0u64;
    let t1 = Instant::now();
    loop {
        let began = Instant::now();
        let keys: Vec<[u8; 40]> = {
            let r = db.begin_read()?;
            let t = r.open_table(ENVELOPES)?;
            let mut keys = Vec::with_capacity(batch);
            let lo = key(&mailbox, 0);
            for row in t.range::<&[u8; 40]>(&lo..)?.take(batch) {
                let (k, v) = row?;
                touched = touched.wrapping_add(v.value().iter().map(|&b| u64::from(b)).sum());
                keys.push(*k.value());
            }
            keys
        };
        if keys.is_empty() {
            break;
        }
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(a.quick_repair);
        {
            let mut t = txn.open_table(ENVELOPES)?;
            for k in &keys {
                t.remove(k)?;
            }
        }
        txn.commit()?;
        record(&mut drain_hist, began.elapsed());
        drained += u64::try_from(keys.len()).unwrap_or(0);
        batches += 1;
    }
    let drain_seconds = t1.elapsed().as_secs_f64();
    // Keep the checksum alive so the reads cannot be optimised away.
    std::hint::black_box(touched);
    drop(db);

    print_json(&Report {
        batch,
        quick_repair: a.quick_repair,
        size: a.size,
        insert_seconds,
        inserted,
        insert_values_per_sec: inserted as f64 / insert_seconds,
        insert_commits_per_sec: commits as f64 / insert_seconds,
        insert_commit_latency: Percentiles::of(&commit_hist),
        drain_seconds,
        drained,
        drain_values_per_sec: drained as f64 / drain_seconds,
        drain_batches_per_sec: batches as f64 / drain_seconds,
        drain_batch_latency: Percentiles::of(&drain_hist),
        file_bytes_after_insert,
    })
}
