//! `bench-report`: turns what `bench/run` measured into documents.
//!
//! `bench/run` starts the processes and leaves one JSON object per
//! measurement in a results directory (`NAME.rROUND.json`), with
//! `meta.txt` (the machine, the versions, the shapes, one `KEY=VALUE` a
//! line) and `commands.txt` (every command as run). This program reads that
//! directory and nothing else, so a report can be written again from
//! `target/bench/last/` without measuring again.
//!
//! - `bench-report brief FILE`: one line of a result's main figures (the
//!   progress lines of `bench/run`).
//! - `bench-report write --results DIR --out FILE [--capacity FILE]`: the
//!   report (`docs/BENCHMARKS.md` for a full run): machine, results table
//!   with targets, what bounds each row, scenarios, commands. With
//!   `--capacity`, the generated blocks of `docs/CAPACITY.md` are replaced
//!   with this run's inputs and worked sizing. Prints the table.
//! - `bench-report capacity --results DIR [--users N ...]`: the capacity
//!   inputs of that run and the sizing for the given service (`bench/capacity`).
//!
//! `report.rs` holds the tables and the prose, `capacity.rs` the model.

mod capacity;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(about = "Write the benchmark report and the capacity model from bench/run's results")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One line of the main figures of one result file.
    Brief { file: PathBuf },
    /// The markdown report, and the table on stdout.
    Write {
        /// The results directory (`target/bench/last` after a run).
        #[arg(long, default_value = "target/bench/last")]
        results: PathBuf,
        /// Where to write the report.
        #[arg(long)]
        out: PathBuf,
        /// Replace the generated blocks of this file (docs/CAPACITY.md).
        #[arg(long)]
        capacity: Option<PathBuf>,
        /// Cargo.lock, for the crate versions.
        #[arg(long, default_value = "Cargo.lock")]
        lock: PathBuf,
    },
    /// The capacity inputs of a run and the sizing of a service.
    Capacity {
        #[arg(long, default_value = "target/bench/last")]
        results: PathBuf,
        #[command(flatten)]
        service: capacity::Service,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Brief { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            println!("{}", report::brief(&v));
            Ok(())
        }
        Command::Write {
            results,
            out,
            capacity,
            lock,
        } => {
            let run = Run::load(&results)?;
            let versions = std::fs::read_to_string(&lock).unwrap_or_default();
            let (md, table) = report::markdown(&run, &versions);
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
            println!();
            print!("{table}");
            for w in report::warnings(&run) {
                println!("WARNING: {w}");
            }
            println!("written to {}", out.display());
            if let Some(path) = capacity {
                let doc = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let doc = capacity::splice(&doc, &run)?;
                std::fs::write(&path, doc)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("capacity inputs and sizing written into {}", path.display());
            }
            Ok(())
        }
        Command::Capacity { results, service } => {
            let run = Run::load(&results)?;
            print!("{}", capacity::inputs_table(&run));
            println!();
            print!(
                "{}",
                capacity::sizing(&capacity::Inputs::of(&run), &service)
            );
            Ok(())
        }
    }
}

/// One run of `bench/run`: every result it left, by name and round.
pub struct Run {
    pub runs: usize,
    pub data: BTreeMap<String, BTreeMap<usize, Value>>,
    pub meta: BTreeMap<String, String>,
    pub commands: String,
}

/// Scenarios measured once per run, not once per round.
pub const ONCE: [&str; 4] = ["idle_owners", "restart", "restart_big", "footprint"];

impl Run {
    pub fn load(dir: &Path) -> anyhow::Result<Run> {
        let meta_text = std::fs::read_to_string(dir.join("meta.txt")).with_context(|| {
            format!(
                "{}: no meta.txt (not a bench/run results directory?)",
                dir.display()
            )
        })?;
        let meta: BTreeMap<String, String> = meta_text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let commands = std::fs::read_to_string(dir.join("commands.txt")).unwrap_or_default();
        let mut data: BTreeMap<String, BTreeMap<usize, Value>> = BTreeMap::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            let Some(stem) = file.strip_suffix(".json") else {
                continue;
            };
            let Some((name, round)) = stem.rsplit_once(".r") else {
                continue;
            };
            let Ok(round) = round.parse::<usize>() else {
                continue;
            };
            let text = std::fs::read_to_string(&path)?;
            // A measurement that printed no valid JSON counts as missing.
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                data.entry(name.to_owned()).or_default().insert(round, v);
            }
        }
        let runs = meta.get("RUNS").and_then(|r| r.parse().ok()).unwrap_or(1);
        Ok(Run {
            runs,
            data,
            meta,
            commands,
        })
    }

    pub fn meta(&self, key: &str) -> &str {
        self.meta.get(key).map_or("?", String::as_str)
    }

    pub fn quick(&self) -> bool {
        self.meta("QUICK") == "1"
    }

    /// `path` (dotted) of `name` in every round that has it, times `scale`.
    pub fn series(&self, name: &str, path: &str, scale: f64) -> Series {
        self.data
            .get(name)
            .map(|rounds| {
                rounds
                    .iter()
                    .filter_map(|(r, v)| num(v, path).map(|x| (*r, x * scale)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Median over the rounds.
    pub fn med(&self, name: &str, path: &str) -> Option<f64> {
        median(&self.series(name, path, 1.0))
    }

    /// The result of a once-per-run scenario.
    pub fn once(&self, name: &str) -> Option<&Value> {
        self.data.get(name).and_then(|r| r.get(&1))
    }
}

/// Figures by round.
pub type Series = BTreeMap<usize, f64>;

/// A number at a dotted path.
pub fn num(v: &Value, path: &str) -> Option<f64> {
    let mut v = v;
    for p in path.split('.') {
        v = v.get(p)?;
    }
    v.as_f64()
}

pub fn median(s: &Series) -> Option<f64> {
    let mut v: Vec<f64> = s.values().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return None;
    }
    let hi = v.get(n / 2).copied()?;
    if n % 2 == 1 {
        Some(hi)
    } else {
        Some((v.get(n / 2 - 1).copied()? + hi) / 2.0)
    }
}

/// Per round `f(a, b)`, for the rounds that have both.
pub fn zip(a: &Series, b: &Series, f: impl Fn(f64, f64) -> Option<f64>) -> Series {
    a.iter()
        .filter_map(|(r, x)| b.get(r).and_then(|y| f(*x, *y)).map(|z| (*r, z)))
        .collect()
}

/// Per round `a ÷ b`.
pub fn ratios(a: &Series, b: &Series) -> Series {
    zip(a, b, |x, y| (y != 0.0).then(|| x / y))
}

/// A figure as the report prints it: thousands grouped above 100, one
/// decimal above 10, two below; "—" for a missing one.
pub fn fmt(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(v) if v.is_finite() => {
            let s = if v.abs() >= 100.0 {
                group(v)
            } else if v.abs() >= 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.2}")
            };
            format!("{s}{unit}")
        }
        _ => "—".to_owned(),
    }
}

/// `v` rounded, with thousands separated by commas.
pub fn group(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    let n = digits.len();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (n - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 && digits != "0" {
        format!("-{out}")
    } else {
        out
    }
}
