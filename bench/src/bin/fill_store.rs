//! `fill-store`: puts N envelopes into a relay state directory's store, for
//! the restart measurement of `bench/run`, and checks afterwards, through a
//! running relay, that they are all still there.
//!
//! - `fill-store fill --state-dir D`: opens `D/store.redb` with the real
//!   `chappe-store` API (the file the relay opens, in the format it writes),
//!   creates `--mailboxes` mailboxes spread over `--owners` owner keys and
//!   enqueues `--envelopes` envelopes of `--size` bytes round-robin into
//!   them, `--inflight` at a time so the store's group commit fills its
//!   batches. Owner secrets go to `--owners-file` (hex, one per line, mode
//!   0600) for `verify`. The relay must not be running on `D`.
//! - `fill-store verify --relay DESCRIPTOR --owners-file F`: connects as
//!   every owner (Noise XK), lists the mailboxes and sums what the relay says
//!   they hold, then subscribes to one mailbox and waits for its first
//!   envelope. Acks nothing, so the store is left as it was.
//!
//! Both print one JSON object on stdout.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use chappe_bench::print_json;
use chappe_client::OwnerSession;
use chappe_proto::noise::Keypair;
use chappe_proto::{DeliveryToken, OwnerKey, SendId};
use chappe_store::{Store, StoreConfig};
use clap::{Parser, Subcommand};
use rand::RngCore;
use serde::Serialize;

/// The file the relay keeps its store in, inside its state directory
/// (`chappe-relay`'s `main.rs`: `state_dir.join("store.redb")`).
const STORE_FILE: &str = "store.redb";

#[derive(Parser, Debug)]
#[command(about = "Fill a relay state directory's store with envelopes, or verify them")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fill `<state-dir>/store.redb` (the relay must not be running).
    Fill(FillArgs),
    /// Through a running relay, count what every owner's mailboxes hold.
    Verify(VerifyArgs),
}

#[derive(clap::Args, Debug)]
struct FillArgs {
    /// The relay's state directory (`chappe-relay init --state-dir` made it).
    #[arg(long)]
    state_dir: PathBuf,
    /// Envelopes to store in all.
    #[arg(long, default_value_t = 1_000_000)]
    envelopes: u64,
    /// Ciphertext bytes per envelope: one of the protocol's buckets.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Mailboxes, filled round-robin.
    #[arg(long, default_value_t = 100)]
    mailboxes: usize,
    /// Owner keys the mailboxes are spread over.
    #[arg(long, default_value_t = 10)]
    owners: usize,
    /// Enqueues in flight at once (the writer commits up to 1024 per batch).
    #[arg(long, default_value_t = 4096)]
    inflight: usize,
    /// Where to write the owners' secret keys for `verify`.
    #[arg(long)]
    owners_file: PathBuf,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// The relay descriptor.
    #[arg(long, env = "CHAPPE_RELAY")]
    relay: String,
    /// The file `fill` wrote.
    #[arg(long)]
    owners_file: PathBuf,
}

#[derive(Serialize)]
struct FillReport {
    envelopes: u64,
    size: usize,
    mailboxes: usize,
    owners: usize,
    inflight: usize,
    seconds: f64,
    envelopes_per_sec: f64,
    /// What the store counts after the last commit.
    store_envelopes: u64,
    store_bytes: u64,
    store_mailboxes: u64,
    commits: u64,
    file_bytes: u64,
}

#[derive(Serialize)]
struct VerifyReport {
    owners: usize,
    mailboxes: usize,
    /// Sum of what the relay lists as stored in every mailbox.
    envelopes: u64,
    /// Time from subscribing to one mailbox to its first envelope.
    first_delivery_ms: Option<f64>,
    first_delivery_bytes: Option<usize>,
    seconds: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fill(a) => fill(a).await,
        Command::Verify(a) => verify(a).await,
    }
}

fn store_config(dir: &std::path::Path) -> StoreConfig {
    // Only limits differ from the relay's: they are not stored in the file,
    // and filling must not hit them.
    StoreConfig {
        max_envelopes_per_mailbox: u32::MAX,
        max_bytes_per_mailbox: u64::MAX,
        max_mailboxes_per_owner: 512,
        min_free_disk_bytes: 0,
        max_store_bytes: 0,
        ..StoreConfig::new(dir.join(STORE_FILE))
    }
}

async fn fill(a: FillArgs) -> anyhow::Result<()> {
    chappe_proto::envelope::check_len(a.size)
        .map_err(|c| anyhow!("--size {} is not an envelope bucket: {c:?}", a.size))?;
    if a.mailboxes == 0 || a.owners == 0 || a.owners > a.mailboxes {
        bail!("need 1 <= --owners <= --mailboxes");
    }
    if a.mailboxes.div_ceil(a.owners) > 512 {
        bail!("at most 512 mailboxes per owner (the relay's own ceiling)");
    }
    if !a.state_dir.is_dir() {
        bail!(
            "{} is not a directory: run `chappe-relay init --state-dir {}` first",
            a.state_dir.display(),
            a.state_dir.display()
        );
    }
    let cfg = store_config(&a.state_dir);
    let path = cfg.path.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(cfg))
        .await?
        .with_context(|| format!("opening {}", path.display()))?;
    if store.stats().envelopes > 0 || store.stats().mailboxes > 0 {
        bail!("{} is not empty", path.display());
    }
    // Only the relay may read the store (it creates it 0600 itself).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))?;

    let mut secrets = Vec::with_capacity(a.owners);
    for _ in 0..a.owners {
        let mut s = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut s);
        secrets.push(s);
    }
    write_owners(&a.owners_file, &secrets)?;
    let owner_keys: Vec<OwnerKey> = secrets
        .iter()
        .map(|s| OwnerKey(Keypair::from_secret(*s).public()))
        .collect();

    let mut targets: Vec<(SendId, DeliveryToken)> = Vec::with_capacity(a.mailboxes);
    for (i, owner) in owner_keys.iter().cycle().take(a.mailboxes).enumerate() {
        let token = DeliveryToken::random();
        let info = store
            .create_mailbox(*owner, vec![token.digest()])
            .await
            .map_err(|e| anyhow!("creating mailbox {i}: {e}"))?;
        targets.push((info.send_id, token));
    }
    let targets = Arc::new(targets);

    // A few distinct random ciphertexts, shared (Bytes clones are cheap).
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..64)
            .map(|_| {
                let mut b = vec![0u8; a.size];
                rand::thread_rng().fill_bytes(&mut b);
                Bytes::from(b)
            })
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let total = a.envelopes;
    let t0 = Instant::now();
    let workers: Vec<_> = (0..a.inflight.max(1))
        .map(|_| {
            let (store, targets, bodies, next, done) = (
                store.clone(),
                targets.clone(),
                bodies.clone(),
                next.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let slot = usize::try_from(i).unwrap_or(0);
                    let (send, token) = targets
                        .get(slot % targets.len())
                        .ok_or_else(|| anyhow!("no mailbox"))?;
                    let body = bodies
                        .get(slot % bodies.len())
                        .ok_or_else(|| anyhow!("no body"))?
                        .clone();
                    store
                        .enqueue(*send, *token, body)
                        .await
                        .map_err(|e| anyhow!("enqueue #{i}: {e}"))?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = done.load(Ordering::Relaxed);
                eprintln!(
                    "fill-store: {n}/{total} envelopes after {:.0} s",
                    t0.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut first_error = None;
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // Stop the others quickly: no more indices to take.
                next.store(total, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.into());
            }
        }
    }
    progress.abort();
    let seconds = t0.elapsed().as_secs_f64();
    store.shutdown().await;
    let stats = store.stats();
    // The last handle: joins the writer, closes the file.
    tokio::task::spawn_blocking(move || drop(store)).await?;
    if let Some(e) = first_error {
        return Err(e);
    }
    let file_bytes = std::fs::metadata(&path)
        .with_context(|| format!("{}", path.display()))?
        .len();
    print_json(&FillReport {
        envelopes: total,
        size: a.size,
        mailboxes: a.mailboxes,
        owners: a.owners,
        inflight: a.inflight.max(1),
        seconds,
        envelopes_per_sec: total as f64 / seconds,
        store_envelopes: stats.envelopes,
        store_bytes: stats.bytes,
        store_mailboxes: stats.mailboxes,
        commits: stats.commits,
        file_bytes,
    })
}

fn write_owners(path: &std::path::Path, secrets: &[[u8; 32]]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    for s in secrets {
        writeln!(f, "{}", chappe_proto::ids::hex_encode(s))?;
    }
    f.sync_all()?;
    Ok(())
}

fn read_owners(path: &std::path::Path) -> anyhow::Result<Vec<Keypair>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let b = chappe_proto::ids::hex_decode32(l.trim())
                .ok_or_else(|| anyhow!("bad owner line in file"))?;
            Ok(Keypair::from_secret(b))
        })
        .collect()
}

async fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let desc = chappe_bench::descriptor(&a.relay)?;
    let owners = read_owners(&a.owners_file)?;
    let t0 = Instant::now();
    let mut mailboxes = 0usize;
    let mut envelopes = 0u64;
    let mut probe = None;
    for kp in &owners {
        let s = OwnerSession::connect(&desc, kp)
            .await
            .context("owner session")?;
        let list = s.list_mailboxes().await.context("listing mailboxes")?;
        mailboxes += list.len();
        envelopes += list.iter().map(|e| u64::from(e.stored)).sum::<u64>();
        match (&probe, list.iter().find(|e| e.stored > 0)) {
            (None, Some(e)) => probe = Some((s, e.mailbox)),
            _ => s.close().await,
        }
    }
    let (mut first_delivery_ms, mut first_delivery_bytes) = (None, None);
    if let Some((mut s, mailbox)) = probe {
        let began = Instant::now();
        s.subscribe(mailbox).await.context("subscribing")?;
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(10), s.next_delivery()).await
        {
            first_delivery_ms = Some(began.elapsed().as_secs_f64() * 1e3);
            first_delivery_bytes = Some(d.ciphertext.len());
        }
        s.close().await;
    }
    print_json(&VerifyReport {
        owners: owners.len(),
        mailboxes,
        envelopes,
        first_delivery_ms,
        first_delivery_bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
