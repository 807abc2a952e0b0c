//! Two people, one relay, the real CLI: messages both ways while online, and
//! a message to an offline owner that survives a relay restart (SIGTERM and
//! kill -9) and is shown exactly once, then gone from the store.

use std::process::Stdio;
use std::time::Duration;

use chappe_system_tests::{Lines, Relay, User, wait_until};

fn waiting(user: &User) -> String {
    user.ok(&["mailbox", "list"])
}

#[test]
fn both_online_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let alice = User::new(dir.path(), "alice");
    let bob = User::new(dir.path(), "bob");
    let alice_card = alice.ok(&["mailbox", "create", "--relay", &relay.descriptor]);
    let bob_card = bob.ok(&["mailbox", "create", "--relay", &relay.descriptor]);
    let alice_fp = alice.ok(&["whoami"]).trim().to_string();
    let bob_fp = bob.ok(&["whoami"]).trim().to_string();

    let mut alice_rx = alice
        .cmd(&["recv", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bob_rx = bob
        .cmd(&["recv", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let alice_lines = Lines::of(alice_rx.stdout.take().unwrap());
    let bob_lines = Lines::of(bob_rx.stdout.take().unwrap());
    // Let both subscribe before the first send; delivery would work either
    // way (from the store), this checks the live push path.
    std::thread::sleep(Duration::from_millis(500));

    bob.ok(&["send", alice_card.trim(), "hi alice, bob here"]);
    let got = alice_lines
        .next(Duration::from_secs(20))
        .expect("alice got nothing");
    assert_eq!(got, format!("from {bob_fp}: hi alice, bob here"));

    alice.ok(&["send", bob_card.trim(), "hello bob"]);
    let got = bob_lines
        .next(Duration::from_secs(20))
        .expect("bob got nothing");
    assert_eq!(got, format!("from {alice_fp}: hello bob"));

    // Acknowledged once shown: nothing waits on the relay any more.
    assert!(wait_until(Duration::from_secs(10), || relay
        .metric("chappe_store_envelopes")
        == Some(0.0)));
    alice_rx.kill().unwrap();
    bob_rx.kill().unwrap();
    let _ = alice_rx.wait();
    let _ = bob_rx.wait();
}

fn offline_survives(kill9: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let alice = User::new(dir.path(), "alice");
    let bob = User::new(dir.path(), "bob");
    let card = alice.ok(&["mailbox", "create", "--relay", &relay.descriptor]);
    let bob_fp = bob.ok(&["whoami"]).trim().to_string();

    // Alice is offline; Bob's send is answered only once it is on disk.
    bob.ok(&["send", card.trim(), "while you were away"]);
    assert!(
        waiting(&alice).contains(" 1 waiting"),
        "{}",
        waiting(&alice)
    );

    if kill9 {
        relay.kill9();
    } else {
        assert!(relay.stop().success(), "relay exited badly on SIGTERM");
    }
    relay.restart();

    let out = alice.ok(&["recv"]);
    assert_eq!(out, format!("from {bob_fp}: while you were away\n"));
    // Acknowledged: gone from the store, and a second recv shows nothing.
    assert!(
        wait_until(Duration::from_secs(5), || waiting(&alice)
            .contains(" 0 waiting")),
        "{}",
        waiting(&alice)
    );
    assert_eq!(alice.ok(&["recv"]), "");
    assert_eq!(relay.metric("chappe_store_envelopes"), Some(0.0));
}

#[test]
fn offline_message_survives_sigterm_restart() {
    offline_survives(false);
}

#[test]
fn offline_message_survives_kill_9() {
    offline_survives(true);
}

#[test]
fn readyz_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    assert_eq!(relay.http_get("/healthz").0, 200);
    assert_eq!(relay.http_get("/readyz").0, 200);
    let (status, body) = relay.http_get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "chappe_connections_total",
        "chappe_handshakes_total",
        "chappe_envelopes_received_total",
        "chappe_store_envelopes",
        "chappe_ready 1",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
    assert_eq!(relay.http_get("/nope").0, 404);
    assert!(relay.stop().success());
}

#[test]
fn library_example_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let out = std::process::Command::new(chappe_system_tests::bin_dir().join("examples/roundtrip"))
        .arg(&relay.descriptor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": hello\n"));
}

/// The CLI exits right after closing its sessions: the close frame must
/// leave before the socket goes, or the relay keeps each session until its
/// idle timeout (60 s here), or at best until it gives up waiting for the
/// vanished client to acknowledge the end of its stream (5 s), and holds its
/// own shutdown on it. The 2 s limit sits below both.
#[test]
fn sessions_end_when_the_cli_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let alice = User::new(dir.path(), "alice");
    let bob = User::new(dir.path(), "bob");
    let card = alice.ok(&["mailbox", "create", "--relay", &relay.descriptor]);
    bob.ok(&["send", card.trim(), "one"]);
    bob.ok(&["send", card.trim(), "two"]);
    alice.ok(&["recv"]);
    let active = |mode: &str| {
        relay
            .metric(&format!("chappe_connections_active{{mode=\"{mode}\"}}"))
            .unwrap_or(-1.0)
    };
    assert!(
        wait_until(Duration::from_secs(2), || active("sender") == 0.0
            && active("owner") == 0.0),
        "sessions still open at the relay: {} sender, {} owner",
        active("sender"),
        active("owner")
    );
    assert_eq!(relay.metric("chappe_connections_total"), Some(4.0));
    // The owner's acks made it before its close: nothing is left to deliver.
    assert_eq!(relay.metric("chappe_store_envelopes"), Some(0.0));
    assert!(relay.stop().success());
}
