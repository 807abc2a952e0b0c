//! The relay as a service: what it tells systemd (over a notify socket the
//! test binds, as systemd would), live reload on SIGHUP, key rotation with
//! an overlap, and the start-up refusals that protect its identity.
//!
//! The same behaviours run again under a real systemd in a booted Debian
//! container (`tests/debian/package`); these run everywhere, fast.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use chappe_client::{OwnerSession, Sender};
use chappe_proto::descriptor::Descriptor;
use chappe_proto::noise::Keypair;
use chappe_proto::{DeliveryToken, ResultCode};
use chappe_system_tests::{Relay, config_args, relay_bin, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn hup(relay: &Relay) {
    kill(Pid::from_raw(relay.pid()), Signal::SIGHUP).unwrap();
}

fn reloads(relay: &Relay, result: &str) -> f64 {
    relay
        .metric(&format!("chappe_reloads_total{{result=\"{result}\"}}"))
        .unwrap_or(-1.0)
}

async fn send_code(
    desc: &Descriptor,
    send: chappe_proto::SendId,
    token: DeliveryToken,
) -> ResultCode {
    let sender = Sender::connect(desc).await.unwrap();
    match sender.send(send, token, Bytes::from(vec![7u8; 2048])).await {
        Ok(()) => ResultCode::Ok,
        Err(e) => e.code().unwrap_or(ResultCode::Internal),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_limits_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let args = config_args(dir.path(), "[limits]\nmax_envelopes_per_mailbox = 2\n");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = Relay::start_with(dir.path(), &args);
    let pid = relay.pid();
    let desc = relay.descriptor();
    let owner = OwnerSession::connect(&desc, &Keypair::generate())
        .await
        .unwrap();
    let token = DeliveryToken::random();
    let (_, send) = owner.create_mailbox(&[token]).await.unwrap();
    for _ in 0..2 {
        assert_eq!(send_code(&desc, send, token).await, ResultCode::Ok);
    }
    assert_eq!(
        send_code(&desc, send, token).await,
        ResultCode::QuotaExceeded
    );

    // A higher quota, live, same process.
    std::fs::write(
        dir.path().join("relay.toml"),
        "[limits]\nmax_envelopes_per_mailbox = 4\n",
    )
    .unwrap();
    hup(&relay);
    assert!(wait_until(Duration::from_secs(10), || reloads(
        &relay, "ok"
    ) == 1.0));
    assert_eq!(send_code(&desc, send, token).await, ResultCode::Ok);
    assert_eq!(relay.pid(), pid);

    // A broken file changes nothing, and the relay keeps serving.
    std::fs::write(
        dir.path().join("relay.toml"),
        "[limits]\nmax_envelopes_per_mailbox = 0\n",
    )
    .unwrap();
    hup(&relay);
    assert!(wait_until(Duration::from_secs(10), || reloads(
        &relay, "failed"
    ) == 1.0));
    assert_eq!(relay.http_get("/readyz").0, 200);
    assert_eq!(send_code(&desc, send, token).await, ResultCode::Ok);
    assert_eq!(
        send_code(&desc, send, token).await,
        ResultCode::QuotaExceeded
    );
    let log = relay.log_text();
    assert!(
        log.contains("reload refused") && log.contains("limits.max_envelopes_per_mailbox"),
        "the refusal names the key:\n{log}"
    );

    // A key only a restart applies is named, and keeps its running value.
    std::fs::write(
        dir.path().join("relay.toml"),
        "[limits]\nmax_envelopes_per_mailbox = 4\n[store]\njournal_mib = 32\n",
    )
    .unwrap();
    hup(&relay);
    assert!(wait_until(Duration::from_secs(10), || reloads(
        &relay, "ok"
    ) == 2.0));
    assert!(relay.log_text().contains("store.journal_mib"));
}

fn descriptors(state: &Path, config: &[String]) -> Vec<String> {
    let out = Command::new(relay_bin())
        .arg("--state-dir")
        .arg(state)
        .args(config)
        .args(["descriptor", "--all"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_keeps_old_clients_working_until_the_overlap_ends() {
    let dir = tempfile::tempdir().unwrap();
    let overlap = 8;
    let config = config_args(
        dir.path(),
        &format!("[keys]\nrotation_overlap_secs = {overlap}\n"),
    );
    let args: Vec<&str> = config.iter().map(String::as_str).collect();
    let relay = Relay::start_with(dir.path(), &args);
    let old = relay.descriptor();
    let owner_key = Keypair::generate();
    let owner = OwnerSession::connect(&old, &owner_key).await.unwrap();
    let token = DeliveryToken::random();
    let (_, send) = owner.create_mailbox(&[token]).await.unwrap();
    drop(owner);

    let rotated = Command::new(relay_bin())
        .arg("--state-dir")
        .arg(&relay.state)
        .args(&config)
        .arg("rotate-keys")
        .output()
        .unwrap();
    assert!(rotated.status.success(), "{rotated:?}");
    hup(&relay);
    assert!(wait_until(Duration::from_secs(10), || {
        relay.metric("chappe_key_generations") == Some(2.0)
    }));
    let all = descriptors(&relay.state, &config);
    assert_eq!(all.len(), 2, "{all:?}");
    let previous: Descriptor = all[1].parse().unwrap();
    assert_eq!(
        (previous.relay_key, previous.tls_fingerprint),
        (old.relay_key, old.tls_fingerprint)
    );
    let new: Descriptor = all[0].parse().unwrap();
    let new = Descriptor {
        host: old.host.clone(),
        port: old.port,
        ..new
    };
    assert_ne!(new.relay_key, old.relay_key);
    assert_ne!(new.tls_fingerprint, old.tls_fingerprint);

    // Both descriptors work during the overlap, for both kinds of session.
    assert_eq!(send_code(&old, send, token).await, ResultCode::Ok);
    assert_eq!(send_code(&new, send, token).await, ResultCode::Ok);
    assert!(OwnerSession::connect(&old, &owner_key).await.is_ok());
    assert!(OwnerSession::connect(&new, &owner_key).await.is_ok());
    // A client pinned to neither is refused.
    let stranger = Descriptor {
        tls_fingerprint: Some([9; 32]),
        ..new.clone()
    };
    assert!(Sender::connect(&stranger).await.is_err());

    // After the overlap the old key is gone, in memory and on disk.
    assert!(wait_until(Duration::from_secs(overlap + 10), || relay
        .metric("chappe_key_generations")
        == Some(1.0)));
    assert!(!relay.state.join("previous").exists());
    assert!(Sender::connect(&old).await.is_err());
    assert_eq!(send_code(&new, send, token).await, ResultCode::Ok);
    assert_eq!(descriptors(&relay.state, &config).len(), 1);
}

#[test]
fn with_a_config_file_a_state_dir_without_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_args(dir.path(), "");
    let out = Command::new(relay_bin())
        .arg("--state-dir")
        .arg(dir.path().join("typo"))
        .args(&config)
        .env("CHAPPE_ALLOW_ROOT", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no relay keys") && err.contains("init"),
        "{err}"
    );
    assert!(!dir.path().join("typo").exists(), "nothing created");
}

#[test]
fn root_is_refused_with_a_config_file_unless_allowed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to show the refusal (this test runs as a user)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config_args(dir.path(), "");
    let out = Command::new(relay_bin())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(&config)
        .env_remove("CHAPPE_ALLOW_ROOT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to serve as root"), "{err}");
}

/// The notifications systemd would get, read from a socket bound where
/// `NOTIFY_SOCKET` points, with a watchdog of one second.
#[test]
fn it_tells_the_service_manager_ready_status_watchdog_reload_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let port = chappe_system_tests::free_port();
    let metrics = chappe_system_tests::free_port();
    let mut child = Command::new(relay_bin())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Every message until `until` matches one, within `limit`.
    let mut seen = Vec::<String>::new();
    let mut wait_for = |what: &str, limit: Duration| {
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            let mut buf = [0u8; 4096];
            if let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                seen.push(msg.clone());
                if msg.lines().any(|l| l.starts_with(what)) {
                    return msg;
                }
            }
        }
        panic!("no {what} within {limit:?}; seen: {seen:?}");
    };
    let ready = wait_for("READY=1", Duration::from_secs(20));
    assert!(
        ready.contains(&format!("STATUS=serving on 127.0.0.1:{port}/udp")),
        "{ready}"
    );
    // Pinged at half the interval: several within two seconds.
    for _ in 0..3 {
        wait_for("WATCHDOG=1", Duration::from_secs(2));
    }
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGHUP).unwrap();
    let reloading = wait_for("RELOADING=1", Duration::from_secs(5));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    wait_for("READY=1", Duration::from_secs(5));
    // Frozen, it stops pinging: systemd would restart it.
    kill(pid, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    while sock.recv(&mut [0u8; 4096]).is_ok() {}
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    assert!(
        sock.recv(&mut [0u8; 4096]).is_err(),
        "a stopped relay pinged"
    );
    kill(pid, Signal::SIGCONT).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    wait_for("WATCHDOG=1", Duration::from_secs(3));
    kill(pid, Signal::SIGTERM).unwrap();
    wait_for("STOPPING=1", Duration::from_secs(5));
    assert!(child.wait().unwrap().success());
}
