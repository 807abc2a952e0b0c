//! Online backup, restore and stats, with the daemon serving a load.
//!
//! The backup must be the store as of one instant T while sends keep
//! being answered. Each sender here has one send in flight at a time, so
//! its sends are ordered; the test records when each was submitted and
//! when it was answered OK, and checks the restored store against them:
//!
//! - every send answered before `backup` was started is in it;
//! - no send submitted after `backup` returned is in it;
//! - closed under "happened before": if a send is in it, so is every send
//!   (of any sender, to any mailbox) answered before that one was
//!   submitted; per mailbox that makes the contents a prefix of what was
//!   sent, and across mailboxes one cut through time;
//! - every envelope is intact.
//!
//! `stats` is checked against known contents, from the running relay and
//! from a stopped store; `restore` refuses while the relay runs and keeps
//! the store it replaces.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chappe_client::{OwnerSession, Sender};
use chappe_proto::DeliveryToken;
use chappe_proto::noise::Keypair;
use chappe_system_tests::{Relay, config_args};

const SENDERS: u64 = 6;
const BODY: usize = 1024;

fn body(id: u64) -> Bytes {
    let mut b = vec![(id % 251) as u8; BODY];
    b[..8].copy_from_slice(&id.to_be_bytes());
    Bytes::from(b)
}

/// A send answered OK: when it was submitted and when answered.
#[derive(Clone, Copy)]
struct Sent {
    submitted: Instant,
    answered: Instant,
}

/// `name value` from the `stats` output.
fn stat(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name} in stats output:\n{out}"))
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every envelope in every mailbox of `owner_key`, by id (checked intact),
/// acknowledged.
async fn fetch_all(relay: &Relay, owner_key: &Keypair) -> HashSet<u64> {
    let mut owner = OwnerSession::connect(&relay.descriptor(), owner_key)
        .await
        .unwrap();
    let mut ids = HashSet::new();
    for entry in owner.list_mailboxes().await.unwrap() {
        owner.subscribe(entry.mailbox).await.unwrap();
        let mut seqs = Vec::new();
        for _ in 0..entry.stored {
            let d = tokio::time::timeout(Duration::from_secs(30), owner.next_delivery())
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    let log = relay.log_text();
                    let tail = log.get(log.len().saturating_sub(4000)..).unwrap_or("");
                    panic!(
                        "{} of {} envelopes the listing counted came; relay log:\n{tail}",
                        ids.len(),
                        entry.stored
                    )
                });
            let id = u64::from_be_bytes(d.ciphertext[..8].try_into().unwrap());
            assert_eq!(d.ciphertext, body(id), "envelope {id} is damaged");
            assert!(ids.insert(id), "envelope {id} twice");
            seqs.push(d.seq);
            // The relay pushes a window of unacknowledged envelopes at most.
            if seqs.len() >= 128 {
                owner
                    .ack(entry.mailbox, std::mem::take(&mut seqs))
                    .await
                    .unwrap();
            }
        }
        owner.ack(entry.mailbox, seqs).await.unwrap();
    }
    owner.close().await;
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_is_one_instant_and_restores_into_another_relay() {
    let dir = tempfile::tempdir().unwrap();
    let args = config_args(
        dir.path(),
        "[limits]\nmax_envelopes_per_mailbox = 10000000\nmax_bytes_per_mailbox = 100000000000\n\
         sends_per_send_id_per_sec = 1000000000\n",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a_dir = dir.path().join("a");
    std::fs::create_dir(&a_dir).unwrap();
    let a = Relay::start_with(&a_dir, &args);
    let desc = a.descriptor();
    let owner_key = Keypair::generate();
    let owner = OwnerSession::connect(&desc, &owner_key).await.unwrap();
    let mut boxes = Vec::new();
    for _ in 0..SENDERS {
        let token = DeliveryToken::random();
        boxes.push((owner.create_mailbox(&[token]).await.unwrap().1, token));
    }
    owner.close().await;

    let sent: Arc<Mutex<HashMap<u64, Sent>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (n, (send_id, token)) in (0u64..).zip(boxes) {
        let (desc, sent, stop) = (desc.clone(), sent.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let sender = Sender::connect(&desc).await.unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = n * 1_000_000 + i;
                let submitted = Instant::now();
                sender.send(send_id, token, body(id)).await.unwrap();
                let answered = Instant::now();
                sent.lock().unwrap().insert(
                    id,
                    Sent {
                        submitted,
                        answered,
                    },
                );
                i += 1;
            }
            sender.close().await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let copy = dir.path().join("copy.redb");
    let began = Instant::now();
    let mut cmd = a.admin_cmd(&["backup", path(&copy)]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let ended = Instant::now();
    ok(out, "chappe-relay backup");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let sent = sent.lock().unwrap().clone();
    let during = sent
        .values()
        .filter(|s| s.answered > began && s.answered < ended)
        .count();
    let after = sent.values().filter(|s| s.submitted > ended).count();
    assert!(after > 0, "no send was answered after the backup");
    assert!(copy.exists());
    assert!(
        !dir.path().join("copy.redb.partial").exists() && !a.state.join("backup.spool").exists(),
        "the backup left a temporary file behind"
    );

    // Stats of the running relay: everything sent is stored (the owner
    // is offline).
    let st = ok(a.admin(&["stats"]), "chappe-relay stats");
    assert_eq!(stat(&st, "mailboxes"), SENDERS.to_string(), "{st}");
    assert_eq!(stat(&st, "envelopes"), sent.len().to_string(), "{st}");
    assert_eq!(stat(&st, "bytes"), (sent.len() * BODY).to_string(), "{st}");
    assert!(stat(&st, "oldest expiry").contains("(hour "), "{st}");
    assert!(stat(&st, "journal").ends_with("%)"), "{st}");

    // A restore needs the relay stopped.
    let refused = a.admin(&["restore", path(&copy)]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the relay is running"),
        "{refused:?}"
    );

    // Restore into a second relay with its own keys, replacing its store.
    let b_dir = dir.path().join("b");
    std::fs::create_dir(&b_dir).unwrap();
    let mut b = Relay::start_with(&b_dir, &args);
    assert!(b.stop().success());
    let restored = b.admin(&["restore", path(&copy)]);
    let msg = String::from_utf8_lossy(&restored.stderr).to_string();
    ok(restored, "chappe-relay restore");
    let kept: Vec<_> = std::fs::read_dir(&b.state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("replaced-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{msg}");
    assert!(kept[0].join("store.redb").exists(), "{msg}");

    // Offline stats read the restored store.
    let st = ok(b.admin(&["stats"]), "chappe-relay stats (stopped)");
    assert!(st.contains("stopped store"), "{st}");
    let offline_envelopes: usize = stat(&st, "envelopes").parse().unwrap();
    assert_eq!(stat(&st, "mailboxes"), SENDERS.to_string(), "{st}");

    b.restart();
    let got = fetch_all(&b, &owner_key).await;
    assert_eq!(got.len(), offline_envelopes);

    let before: Vec<u64> = sent
        .iter()
        .filter(|(_, s)| s.answered < began)
        .map(|(id, _)| *id)
        .collect();
    let missing: Vec<_> = before.iter().filter(|id| !got.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "answered before the backup began, not in it: {missing:?}"
    );
    let unknown: Vec<_> = got.iter().filter(|id| !sent.contains_key(id)).collect();
    assert!(unknown.is_empty(), "never answered OK: {unknown:?}");
    let late: Vec<_> = got
        .iter()
        .filter(|id| sent[*id].submitted > ended)
        .collect();
    assert!(
        late.is_empty(),
        "submitted after the backup ended, yet in it: {late:?}"
    );
    let cut = got.iter().map(|id| sent[id].submitted).max().unwrap();
    let torn: Vec<_> = sent
        .iter()
        .filter(|(id, s)| s.answered < cut && !got.contains(id))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        torn.is_empty(),
        "not one instant: these were answered before an envelope in the backup was even sent, \
         but are missing: {torn:?}"
    );
    eprintln!(
        "backup: {} sends answered in all, {} before the backup began, {} while it ran, {} in \
         the copy; restored and fetched from a second relay",
        sent.len(),
        before.len(),
        during,
        got.len()
    );
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// The socket's modes keep other users out; the peer credential check
/// holds even where they do not. Opened up here on purpose, a user other
/// than root and the relay's connects and is refused.
#[test]
fn admin_socket_refuses_other_users() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root, to run the admin command as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let sock = relay.state.join("admin.sock");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sock), 0o600);
    assert_eq!(mode(&relay.state), 0o700);
    for (p, m) in [(dir.path(), 0o711), (&relay.state, 0o711), (&sock, 0o666)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let nobody = 65534;
    let out = relay
        .admin_cmd(&["stats"])
        .uid(nobody)
        .gid(nobody)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains("only root or the relay's user may use the admin socket"),
        "{err}"
    );
    // Root still gets its answer.
    let st = ok(relay.admin(&["stats"]), "chappe-relay stats as root");
    assert_eq!(stat(&st, "mailboxes"), "0", "{st}");
}
