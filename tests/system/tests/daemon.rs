//! The daemon as an operator meets it: first run, subcommands, config
//! errors that name the key, key-file permissions, core dumps disabled.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use chappe_system_tests::{Relay, relay_bin};

fn relay(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(relay_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn init_descriptor_and_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let (ok, first, _) = relay(&["init", "--state-dir", state]);
    assert!(ok);
    assert!(first.starts_with("chappe1:"), "{first}");
    // init never overwrites: the same keys, the same descriptor.
    let (ok, again, _) = relay(&["init", "--state-dir", state]);
    assert!(ok);
    assert_eq!(first, again);
    let (ok, desc, _) = relay(&["descriptor", "--state-dir", state]);
    assert!(ok);
    assert_eq!(first, desc);
    for f in ["relay.key", "tls.key", "store.redb", "store.journal"] {
        let p = dir.path().join("state").join(f);
        if p.exists() {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{f} has mode {mode:o}");
        }
    }

    let cfg = dir.path().join("bad.toml");
    for (text, key) in [
        ("listen = \"0.0.0.0\"\n", "`listen`"),
        ("listen = \"0.0.0.0:4433\"\n", "`public_address`"),
        (
            "[limits]\nenvelope_ttl_hours = 0\n",
            "`limits.envelope_ttl_hours`",
        ),
        ("[metrics]\nlisten = \"here\"\n", "`metrics.listen`"),
        ("[limits]\nmax_conections = 5\n", "max_conections"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let (ok, _, err) = relay(&["check-config", "--config", cfg.to_str().unwrap()]);
        assert!(!ok, "{text} was accepted");
        assert!(
            err.contains(key),
            "error for {text:?} does not name {key}: {err}"
        );
    }
    std::fs::write(
        &cfg,
        "listen = \"0.0.0.0:4433\"\npublic_address = \"relay.example:4433\"\n",
    )
    .unwrap();
    let (ok, out, err) = relay(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("config ok"));
}

#[test]
fn refuses_keys_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    assert!(relay(&["init", "--state-dir", state.to_str().unwrap()]).0);
    let key = state.join("relay.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = relay(&[
        "serve",
        "--state-dir",
        state.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!ok, "relay started with a world-readable key");
    assert!(
        err.contains("relay.key") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn core_dumps_are_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", relay.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], &["0", "0"], "{core}");
    // Everything the daemon created is private to its user.
    for f in ["relay.key", "tls.key", "store.redb", "store.journal"] {
        let mode = std::fs::metadata(relay.state.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode & 0o077, 0, "{f} has mode {mode:o}");
    }
}
