//! `chappe bench` works end to end (a few seconds, no timing asserted:
//! performance is measured by bench/run, not by tests).

use chappe_system_tests::{Relay, chappe_bin, config_args};

#[test]
fn bench_runs_online_offline_and_open_loop() {
    let dir = tempfile::tempdir().unwrap();
    let args = config_args(
        dir.path(),
        // All senders write to one mailbox: its send rate limit out of the
        // way too.
        "[limits]\nmax_envelopes_per_mailbox = 100000000\nmax_bytes_per_mailbox = 1000000000000\nsends_per_send_id_per_sec = 100000000\n",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = Relay::start_with(dir.path(), &args);
    // (mode, sends per second; 0 = closed loop)
    for (mode, rate) in [("online", 0), ("offline", 0), ("online", 2000)] {
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
                "--rate",
                &rate.to_string(),
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
        let r: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(r["errors"], serde_json::json!({}), "{json}");
        let sent = r["sent"].as_u64().unwrap();
        assert!(sent > 0, "{json}");
        assert_eq!(
            r["delivered"].as_u64(),
            Some(sent),
            "every durable send reaches its owner: {json}"
        );
        // Every latency measured made it into the histograms.
        assert_eq!(r["send_latency"]["count"].as_u64(), Some(sent), "{json}");
        if mode == "online" {
            assert_eq!(
                r["delivery_latency"]["count"].as_u64(),
                Some(sent),
                "{json}"
            );
        } else {
            assert!(
                r["drain_per_sec"].as_f64().is_some_and(|d| d > 0.0),
                "{json}"
            );
        }
        // Open loop: every send's start was checked against its schedule.
        if rate > 0 {
            assert_eq!(r["schedule_lag"]["count"].as_u64(), Some(sent), "{json}");
        } else {
            assert!(r["schedule_lag"].is_null(), "{json}");
        }
        assert!(r["relay_cpu_cores"].as_f64().is_some(), "{json}");
    }
}
