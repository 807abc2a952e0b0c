//! `raw-fsync`: the disk's durable small-write rate — 4 KiB written, then
//! `fdatasync`, one after another, in a temp file in `--dir` (put it on the
//! relay state dir's filesystem). The floor under the relay's single-sender
//! OK latency: a durable answer costs at least one of these.
//!
//! `--mode overwrite` (default) rewrites blocks of a preallocated 16 MiB file
//! in sequence, so each fdatasync flushes data only; `--mode append` grows
//! the file, so each one also commits the size change to the journal.
//!
//! `--gap-us N` sleeps that long after each sync before the next write.
//! Back to back, every sync finds the virtual disk still busy from the
//! last one; a relay's single sender cannot, since a network round trip
//! lies between one answer and the next send. On the CI machine a sync
//! after a 200 µs pause took 1.3–1.8× as long as one back to back
//! (`fdatasync` p50 131–151 µs back to back, 247–254 µs after 200 µs).
//! `bench/run` reports both; its single-sender target is against the
//! back-to-back figure.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use chappe_bench::{Percentiles, histogram, print_json, record};
use clap::{Parser, ValueEnum};
use rand::RngCore;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Overwrite,
    Append,
}

#[derive(Parser, Debug)]
#[command(about = "fdatasync'd 4 KiB write rate")]
struct Args {
    /// Directory for the temp file.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    #[arg(long, value_enum, default_value = "overwrite")]
    mode: Mode,
    /// Bytes per write.
    #[arg(long, default_value_t = 4096)]
    block: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Microseconds to sleep after each sync (0: back to back).
    #[arg(long, default_value_t = 0)]
    gap_us: u64,
}

#[derive(Serialize)]
struct Report {
    mode: Mode,
    block: usize,
    gap_us: u64,
    seconds: f64,
    ops: u64,
    ops_per_sec: f64,
    /// write + fdatasync.
    op_latency: Percentiles,
    /// fdatasync alone.
    fsync_latency: Percentiles,
}

const PREALLOC: u64 = 16 << 20;

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let duration = chappe_bench::seconds(a.seconds)?;
    let block = a.block.max(1);
    let mut f: File = tempfile::Builder::new()
        .prefix("raw-fsync.")
        .tempfile_in(&a.dir)
        .with_context(|| format!("creating a temp file in {}", a.dir.display()))?
        .into_file();
    let mut buf = vec![0u8; block];
    rand::thread_rng().fill_bytes(&mut buf);
    let blocks = (PREALLOC / u64::try_from(block).unwrap_or(1)).max(1);
    if a.mode == Mode::Overwrite {
        for _ in 0..blocks {
            f.write_all(&buf)?;
        }
        f.sync_all()?;
        f.seek(SeekFrom::Start(0))?;
    }
    let mut op_hist = histogram()?;
    let mut fsync_hist = histogram()?;
    let mut ops = 0u64;
    let gap = std::time::Duration::from_micros(a.gap_us);
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        let began = Instant::now();
        if let Some(b) = buf.get_mut(..8) {
            b.copy_from_slice(&ops.to_be_bytes());
        }
        if a.mode == Mode::Overwrite && ops.is_multiple_of(blocks) {
            f.seek(SeekFrom::Start(0))?;
        }
        f.write_all(&buf)?;
        let synced = Instant::now();
        f.sync_data()?;
        record(&mut fsync_hist, synced.elapsed());
        record(&mut op_hist, began.elapsed());
        ops += 1;
        if a.gap_us > 0 {
            std::thread::sleep(gap);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    print_json(&Report {
        mode: a.mode,
        block,
        gap_us: a.gap_us,
        seconds,
        ops,
        ops_per_sec: ops as f64 / seconds,
        op_latency: Percentiles::of(&op_hist),
        fsync_latency: Percentiles::of(&fsync_hist),
    })
}
