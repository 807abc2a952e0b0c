//! What the relay keeps: after a real exchange, the redb file and the
//! relay's debug-level log contain no sender identity, no delivery token in
//! clear (raw, hex or base64) and no plaintext.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chappe_client::home::Home;
use chappe_system_tests::{Relay, User, contains};

#[test]
fn store_and_logs_hold_no_sender_token_or_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path());
    let alice = User::new(dir.path(), "alice");
    let bob = User::new(dir.path(), "bob");
    let card = alice.ok(&["mailbox", "create", "--relay", &relay.descriptor]);
    let secret_text = "the-plaintext-canary-4242";
    // Several envelopes stay stored (unread) so the file holds them.
    for i in 0..5 {
        bob.ok(&["send", card.trim(), &format!("{secret_text} #{i}")]);
    }
    relay.stop();

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let bob_home = Home::open(bob.home.clone()).unwrap();
    let bob_key = bob_home.identity(now).unwrap().public_key();
    let alice_home = Home::open(alice.home.clone()).unwrap();
    let token = alice_home.mailboxes().unwrap()[0].tokens[0];

    let fingerprint = bob_key.fingerprint();
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("sender identity key".into(), bob_key.to_bytes().to_vec()),
        (
            "sender key hex".into(),
            hex::encode(bob_key.to_bytes()).into_bytes(),
        ),
        (
            "sender key base64".into(),
            URL_SAFE_NO_PAD.encode(bob_key.to_bytes()).into_bytes(),
        ),
        (
            "sender fingerprint".into(),
            fingerprint.clone().into_bytes(),
        ),
        (
            "sender fingerprint, no spaces".into(),
            fingerprint.replace(' ', "").into_bytes(),
        ),
        ("token".into(), token.as_bytes().to_vec()),
        (
            "token hex".into(),
            hex::encode(token.as_bytes()).into_bytes(),
        ),
        (
            "token base64url".into(),
            URL_SAFE_NO_PAD.encode(token.as_bytes()).into_bytes(),
        ),
        (
            "token base64".into(),
            STANDARD.encode(token.as_bytes()).into_bytes(),
        ),
        ("plaintext".into(), secret_text.as_bytes().to_vec()),
    ];
    needles.push(("sender certificate key".into(), {
        let id = bob_home.identity(now).unwrap();
        id.certificate().sender_key().to_vec()
    }));

    let store = std::fs::read(relay.state.join("store.redb")).unwrap();
    assert!(
        store.len() > 5 * 2048,
        "the store should hold the envelopes"
    );
    // The journal holds every envelope too (until its ring comes round).
    let journal = std::fs::read(relay.state.join("store.journal")).unwrap();
    let log = std::fs::read(&relay.log).unwrap();
    assert!(!log.is_empty());
    for (what, needle) in &needles {
        assert!(!contains(&store, needle), "store.redb contains the {what}");
        assert!(
            !contains(&journal, needle),
            "store.journal contains the {what}"
        );
        assert!(!contains(&log, needle), "the relay log contains the {what}");
    }
}
