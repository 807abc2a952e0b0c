//! What `chappe recv` prints when a sender chooses a hostile body: a body
//! that tries to start a forged `from <fingerprint>:` line, clear the screen,
//! reverse the text or smuggle bytes that are not UTF-8 stays on its own
//! line, escaped, and nothing in the output is a control character.

use std::io::Write;
use std::process::Stdio;

use chappe_system_tests::{Relay, User};

#[test]
fn recv_escapes_a_body_that_forges_lines_and_drives_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let alice = User::new(dir.path(), "alice");
    let bob = User::new(dir.path(), "bob");
    let mallory = User::new(dir.path(), "mallory");
    let card = alice.ok(&["mailbox", "create", "--relay", &relay.descriptor]);
    let bob_fp = bob.ok(&["whoami"]).trim().to_string();
    let mallory_fp = mallory.ok(&["whoami"]).trim().to_string();

    // As a command-line argument: a forged line for Bob, then a screen clear
    // and a cursor move, a right-to-left override and a C1 CSI.
    let forged = format!("hi\nfrom {bob_fp}: forged\x1b[2J\x1b[1;1H\r\u{202e}gnp.exe\u{9b}0m \\n");
    mallory.ok(&["send", card.trim(), &forged]);

    // On standard input: bytes no argument can carry (NUL, invalid UTF-8).
    let mut send = mallory
        .cmd(&["send", card.trim(), "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    send.stdin
        .take()
        .unwrap()
        .write_all(b"nul\x00 bad utf-8 \xff\xfe\nfrom x: y")
        .unwrap();
    let done = send.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );

    let out = alice.run(&["recv"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = &out.stdout;
    assert!(
        !printed
            .iter()
            .any(|&b| (b < 0x20 && b != b'\n') || b == 0x7f),
        "a control byte reached the terminal: {printed:?}"
    );
    let text = String::from_utf8(printed.clone()).expect("recv prints UTF-8");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    let mut expected = vec![
        format!(
            r"from {mallory_fp}: hi\nfrom {bob_fp}: forged\x1b[2J\x1b[1;1H\r\u{{202e}}gnp.exe\u{{9b}}0m \\n"
        ),
        format!(r"from {mallory_fp}: nul\x00 bad utf-8 \xff\xfe\nfrom x: y"),
    ];
    expected.sort_unstable();
    assert_eq!(lines, expected);
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with(&format!("from {bob_fp}"))),
        "{text}"
    );
}
