//! `chappe bench` works end to end (a few seconds, no timing asserted:
//! performance is measured by bench/run, not by tests).

use chappe_system_tests::{Relay, chappe_bin, config_args};

#[test]
fn bench_runs_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let args = config_args(
        dir.path(),
        "[limits]\nmax_envelopes_per_mailbox = 100000000\nmax_bytes_per_mailbox = 1000000000000\n",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = Relay::start_with(dir.path(), &args);
    for mode in ["online", "offline"] {
        let out = std::process::Command::new(chappe_bin())
            .args([
                "bench",
                "--relay",
                &relay.descriptor,
                "--seconds",
                "2",
                "--senders",
                "2",
            ])
            .args([
                "--mode",
                mode,
                "--json",
                "--relay-pid",
                &relay.pid().to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = String::from_utf8(out.stdout).unwrap();
        eprintln!("{json}");
        assert!(json.contains("\"errors\":{}"), "{json}");
        let sent: u64 = json
            .split("\"sent\":")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(sent > 0, "{json}");
        let delivered: u64 = json
            .split("\"delivered\":")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert_eq!(
            delivered, sent,
            "every durable send reaches its owner: {json}"
        );
        assert!(json.contains("\"relay_cpu_cores\":"), "{json}");
    }
}
