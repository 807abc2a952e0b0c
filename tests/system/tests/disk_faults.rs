//! A full disk under the running relay, on a real file system: a small
//! tmpfs this test mounts as the state directory and fills. The relay
//! turns read-only (sends refused `relay_full`, acks dropped, `/readyz` 503
//! naming `no_space`, `chappe_store_read_only{reason="no_space"} 1`), still
//! delivers what it holds, damages nothing it acknowledged, and takes
//! writes again by itself once space returns; `chappe-relay check` on the
//! stopped relay then finds nothing wrong.
//!
//! A journal damaged on disk in the middle stops the start until the
//! operator, shown what is lost by `chappe-relay check`, discards it.
//!
//! The disk-full test needs root (to mount); without it, or where mounting
//! is not allowed, it says SKIP and why. Failed writes other than a full
//! disk (EIO) are injected in the store's own tests
//! (`relay/store/src/tests/faults.rs`), through a seam the relay binary
//! does not contain.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use chappe_client::{ClientError, OwnerSession, Sender};
use chappe_proto::noise::Keypair;
use chappe_proto::{DeliveryToken, ResultCode};
use chappe_system_tests::{Relay, config_args, relay_bin, wait_until};

const NO_SPACE: &str = r#"chappe_store_read_only{reason="no_space"}"#;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `at`, or says why it cannot.
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root: mounting a tmpfs needs root".into());
        }
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn code(r: Result<(), ClientError>) -> Option<ResultCode> {
    match r {
        Ok(()) => Some(ResultCode::Ok),
        Err(e) => e.code(),
    }
}

fn env(i: u8) -> Bytes {
    Bytes::from(vec![i; 1024])
}

/// Writes into `path` until the file system refuses: the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x11u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    let small = [0x11u8; 4096];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_relay_read_only_and_it_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Declared before the relay, so dropped after it: unmounted once the
    // relay is gone.
    let _fs = match Tmpfs::mount(&state, "48m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIP a_full_disk_makes_the_relay_read_only_...: {why}");
            return;
        }
    };
    // The smallest journal (the store's floor is then 6 MiB) and a
    // watermark of one byte, so that it is the full disk the relay meets.
    let args = config_args(
        dir.path(),
        "[limits]\nmin_free_disk_bytes = 1\n[store]\njournal_mib = 1\ncache_mib = 16\n",
    );
    let init = Command::new(relay_bin())
        .arg("--state-dir")
        .arg(&state)
        .args(&args)
        .arg("init")
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut relay = Relay::start_with(dir.path(), &args);
    let desc = relay.descriptor();

    let owner_key = Keypair::generate();
    let owner = OwnerSession::connect(&desc, &owner_key).await.unwrap();
    let token = DeliveryToken::random();
    let (mailbox, send_id) = owner.create_mailbox(&[token]).await.unwrap();
    owner.close().await;
    let sender = Sender::connect(&desc).await.unwrap();
    for i in 1..=3 {
        assert_eq!(
            code(sender.send(send_id, token, env(i)).await),
            Some(ResultCode::Ok)
        );
    }
    assert_eq!(relay.metric(NO_SPACE), Some(0.0));
    assert_eq!(relay.http_get("/readyz").0, 200);

    let filler = state.join("filler");
    fill(&filler);
    assert!(
        wait_until(Duration::from_secs(20), || relay.metric(NO_SPACE)
            == Some(1.0)),
        "the relay did not notice the full disk; log:\n{}",
        relay.log_text()
    );
    let (status, body) = relay.http_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no_space"), "{body}");
    assert_eq!(
        relay.metric("chappe_store_failed"),
        Some(0.0),
        "a write failed for want of space; log:\n{}",
        relay.log_text()
    );
    assert_eq!(
        code(sender.send(send_id, token, env(9)).await),
        Some(ResultCode::RelayFull)
    );
    // Reads go on: the owner gets what is stored.
    let mut owner = OwnerSession::connect(&desc, &owner_key).await.unwrap();
    owner.subscribe(mailbox).await.unwrap();
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), owner.next_delivery())
            .await
            .expect("a stored envelope while the disk is full")
            .expect("delivery");
        seqs.push(d.seq);
    }
    assert!(relay.log_text().contains("the disk is full"));

    // Space returns: the relay takes writes again by itself.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || relay.metric(NO_SPACE)
            == Some(0.0)),
        "the relay did not resume; log:\n{}",
        relay.log_text()
    );
    assert_eq!(relay.http_get("/readyz").0, 200);
    assert_eq!(
        code(sender.send(send_id, token, env(4)).await),
        Some(ResultCode::Ok),
        "log:\n{}",
        relay.log_text()
    );
    assert_eq!(
        code(owner.ack(mailbox, vec![seqs[0]]).await),
        Some(ResultCode::Ok)
    );
    owner.close().await;
    sender.close().await;

    // Nothing acknowledged was damaged: after a stop the check is clean
    // and a start delivers envelopes 2, 3 and 4.
    assert!(relay.stop().success());
    let check = relay.admin(&["check"]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{report}\n{check:?}");
    assert!(report.contains("no problems found"), "{report}");
    relay.restart();
    let desc = relay.descriptor();
    let mut owner = OwnerSession::connect(&desc, &owner_key).await.unwrap();
    owner.subscribe(mailbox).await.unwrap();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), owner.next_delivery())
            .await
            .expect("delivery after the restart")
            .expect("delivery");
        bodies.push(d.ciphertext[0]);
    }
    bodies.sort_unstable();
    assert_eq!(bodies, [2, 3, 4]);
    owner.close().await;
    drop(relay);
}

/// Starts of the batch records in a journal that has not wrapped yet,
/// read as the format lays them out (header block, then 32-byte record
/// headers: seq u64, length u32, kind u8, three zeros, a 16-byte MAC).
fn record_starts(journal: &Path) -> Vec<u64> {
    let bytes = std::fs::read(journal).unwrap();
    let ring = &bytes[4096..];
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 32 <= ring.len() {
        let h = &ring[pos..pos + 32];
        let len = u32::from_be_bytes(h[8..12].try_into().unwrap()) as usize;
        if h[12] != 1 || h[13..16] != [0, 0, 0] {
            break;
        }
        out.push(pos as u64);
        pos += (32 + len).div_ceil(8) * 8;
    }
    out
}

/// A record in the middle of the journal damaged on disk, with intact
/// records after it: the relay refuses to start and says so, `check`
/// reports the damage and what discarding it loses (exit 1), and
/// `check --discard-damaged-journal` is what lets it start again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_damage_stops_the_start_until_the_operator_discards_it() {
    let dir = tempfile::tempdir().unwrap();
    let args = config_args(
        dir.path(),
        "[limits]\nmax_envelopes_per_mailbox = 1000000\nsends_per_send_id_per_sec = 1000000\n",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut relay = Relay::start_with(dir.path(), &args);
    let desc = relay.descriptor();
    let owner_key = Keypair::generate();
    let owner = OwnerSession::connect(&desc, &owner_key).await.unwrap();
    let token = DeliveryToken::random();
    let (mailbox, send_id) = owner.create_mailbox(&[token]).await.unwrap();
    owner.close().await;
    // Sends one after the other until the relay is killed: the last 200 ms
    // of them are in the journal only, one record each.
    let sender = Sender::connect(&desc).await.unwrap();
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = acked.clone();
    let load = tokio::spawn(async move {
        while sender.send(send_id, token, env(7)).await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // `check` reads a stopped store only; redb's lock tells it the relay runs.
    let running = relay.admin(&["check"]);
    let err = String::from_utf8_lossy(&running.stderr);
    assert!(!running.status.success(), "{running:?}");
    assert!(err.contains("is open in a running relay"), "{err}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    relay.kill9();
    // The sender would notice only at its idle timeout.
    load.abort();
    let acked = acked.load(std::sync::atomic::Ordering::Relaxed);
    assert!(acked > 10, "only {acked} sends before the kill");

    let journal = relay.state.join("store.journal");
    // One record per send (they were sequential), from the journal's
    // first position on: it has not wrapped.
    let starts = record_starts(&journal);
    assert!(
        starts.len() >= acked,
        "{} records, {acked} sends",
        starts.len()
    );
    // A byte of the payload of the third record from the end.
    let at = 4096 + starts[starts.len() - 3] + 32 + 40;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&journal)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    }

    let start = relay
        .admin_cmd(&[
            "--listen",
            &format!("127.0.0.1:{}", relay.port),
            "--metrics-listen",
            &format!("127.0.0.1:{}", relay.metrics_port),
            "serve",
        ])
        .env("CHAPPE_ALLOW_ROOT", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&start.stderr);
    assert!(!start.status.success(), "the relay started: {err}");
    assert!(
        err.contains("store.journal is damaged at position"),
        "{err}"
    );
    assert!(err.contains("--discard-damaged-journal"), "{err}");

    let check = relay.admin(&["check"]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{report}");
    assert!(report.contains("DAMAGED at position"), "{report}");
    assert!(report.contains("lost if discarded: 2 records"), "{report}");

    let discard = relay.admin(&["check", "--discard-damaged-journal"]);
    let out = String::from_utf8_lossy(&discard.stdout);
    assert!(discard.status.success(), "{out}\n{discard:?}");
    assert!(out.contains("discarded 2 records"), "{out}");
    assert!(out.contains("the relay can start"), "{out}");

    relay.restart();
    let desc = relay.descriptor();
    let sender = Sender::connect(&desc).await.unwrap();
    assert_eq!(
        code(sender.send(send_id, token, env(8)).await),
        Some(ResultCode::Ok)
    );
    let mut owner = OwnerSession::connect(&desc, &owner_key).await.unwrap();
    owner.subscribe(mailbox).await.unwrap();
    let mut delivered = 0usize;
    let mut seqs = Vec::new();
    while let Ok(Some(d)) =
        tokio::time::timeout(Duration::from_secs(3), owner.next_delivery()).await
    {
        delivered += 1;
        seqs.push(d.seq);
        if seqs.len() >= 64 {
            owner.ack(mailbox, std::mem::take(&mut seqs)).await.unwrap();
        }
        if d.ciphertext[0] == 8 {
            break;
        }
    }
    // Every send but the damaged record's and the two dropped after it,
    // and the one sent after the start.
    assert_eq!(delivered, starts.len() - 3 + 1, "{acked} sends answered ok");
    owner.close().await;
}
