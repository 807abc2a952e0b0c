//! The harness for the system tests: builds the real binaries once, starts
//! `chappe-relay` as a process on loopback ports of its own, and runs the
//! `chappe` CLI against it. Nothing here is mocked; a test that passes here
//! passed against the daemon an operator would run.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chappe_proto::descriptor::Descriptor;

/// `target/<profile>`, holding the binaries under test.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<test binary>
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args([
            "build",
            "--bins",
            "-p",
            "chappe-server",
            "-p",
            "chappe-client",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("running cargo build");
        assert!(st.success(), "building the binaries failed");
        dir
    })
}

pub fn relay_bin() -> PathBuf {
    bin_dir().join("chappe-relay")
}

pub fn chappe_bin() -> PathBuf {
    bin_dir().join("chappe")
}

/// A free loopback port (UDP and TCP both probed).
pub fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running `chappe-relay` with its own state directory and ports.
pub struct Relay {
    pub state: PathBuf,
    pub port: u16,
    pub metrics_port: u16,
    pub descriptor: String,
    pub log: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Relay {
    /// Starts a relay in `dir/state`, logging at debug level to `dir/relay.log`
    /// (debug on purpose: the log audit must hold at the chattiest level).
    pub fn start(dir: &Path) -> Relay {
        Relay::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, extra: &[&str]) -> Relay {
        let mut r = Relay {
            state: dir.join("state"),
            port: free_port(),
            metrics_port: free_port(),
            descriptor: String::new(),
            log: dir.join("relay.log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        if !self.state.exists() {
            // With a config file the relay no longer creates its keys.
            let out = Command::new(relay_bin())
                .arg("--state-dir")
                .arg(&self.state)
                .args(&self.extra)
                .arg("init")
                .output()
                .expect("running chappe-relay init");
            assert!(out.status.success(), "chappe-relay init: {out:?}");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(relay_bin())
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .args(&self.extra)
            .env("CHAPPE_LOG", "debug")
            // CI runs as root; the refusal itself is tested on its own.
            .env("CHAPPE_ALLOW_ROOT", "1")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting chappe-relay");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("chappe1:"),
            "relay did not print its descriptor: {line:?}; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        self.descriptor = line.trim().to_string();
        self.child = Some(child);
    }

    pub fn descriptor(&self) -> Descriptor {
        self.descriptor.parse().unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap()
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("relay running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap()
    }

    /// kill -9: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("relay running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Starts again on the same state and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the relay first");
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// GET a path on the metrics listener; returns (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        (status, body)
    }

    /// The value of one metric line (exact name with labels), if present.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Resident memory of the relay process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// `chappe-relay ARGS` on this relay's state directory and config (an
    /// admin command, not the daemon), to run from any thread.
    pub fn admin_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(relay_bin());
        c.arg("--state-dir")
            .arg(&self.state)
            .args(&self.extra)
            .args(args);
        c
    }

    /// Runs [`Relay::admin_cmd`].
    pub fn admin(&self, args: &[&str]) -> Output {
        self.admin_cmd(args).output().expect("running chappe-relay")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `chappe` CLI user with its own home directory.
pub struct User {
    pub home: PathBuf,
}

impl User {
    pub fn new(dir: &Path, name: &str) -> User {
        let home = dir.join(name);
        let u = User { home };
        u.ok(&["init"]);
        u
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(chappe_bin());
        c.env("CHAPPE_HOME", &self.home).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running chappe")
    }

    /// Runs and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "chappe {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Waits until `f` holds, up to `limit` (for a process to come up, not a
/// performance assertion).
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Every byte string of `needle` found in `hay`, to audit files for secrets.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Lines a background process prints, readable with a deadline.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
}

impl Lines {
    pub fn of(stdout: std::process::ChildStdout) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    pub fn next(&self, limit: Duration) -> Option<String> {
        self.rx.recv_timeout(limit).ok()
    }
}

/// Writes a relay config file and returns the arguments that load it.
pub fn config_args(dir: &Path, toml: &str) -> Vec<String> {
    let path = dir.join("relay.toml");
    std::fs::write(&path, toml).unwrap();
    vec!["--config".into(), path.display().to_string()]
}

/// The pieces of a hand-driven connection, for tests that must send what a
/// well-behaved client never would.
pub struct Raw {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub exporter: [u8; 32],
}

impl Raw {
    pub async fn connect(desc: &Descriptor) -> Raw {
        let (endpoint, conn) =
            chappe_client::transport::connect(desc, chappe_client::transport::Role::Owner)
                .await
                .unwrap();
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, chappe_proto::noise::EXPORTER_LABEL, b"")
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        Raw {
            endpoint,
            conn,
            send,
            recv,
            exporter,
        }
    }

    /// Completes an anonymous-sender (NK) handshake by hand.
    pub async fn sender(desc: &Descriptor) -> Raw {
        use chappe_proto::noise::{Hello, Mode, SenderInitiator, wire};
        let mut raw = Raw::connect(desc).await;
        let (init, m1) =
            SenderInitiator::start(&desc.relay_key, &raw.exporter, &Hello::default()).unwrap();
        let mut first = vec![Mode::Sender as u8];
        first.extend(wire::encode_message(&m1));
        raw.send.write_all(&first).await.unwrap();
        let mut len = [0u8; 2];
        raw.recv.read_exact(&mut len).await.unwrap();
        let mut m2 = vec![0u8; usize::from(u16::from_be_bytes(len))];
        raw.recv.read_exact(&mut m2).await.unwrap();
        init.finish(&m2).unwrap();
        raw
    }

    /// Completes a mailbox-owner (XK) handshake by hand with `key`.
    pub async fn owner(desc: &Descriptor, key: &chappe_proto::noise::Keypair) -> Raw {
        use chappe_proto::noise::{Hello, Mode, OwnerInitiator, wire};
        let mut raw = Raw::connect(desc).await;
        let (init, m1) =
            OwnerInitiator::start(key, &desc.relay_key, &raw.exporter, &Hello::default()).unwrap();
        let mut first = vec![Mode::Owner as u8];
        first.extend(wire::encode_message(&m1));
        raw.send.write_all(&first).await.unwrap();
        let mut len = [0u8; 2];
        raw.recv.read_exact(&mut len).await.unwrap();
        let mut m2 = vec![0u8; usize::from(u16::from_be_bytes(len))];
        raw.recv.read_exact(&mut m2).await.unwrap();
        let (m3, _) = init.finish(&m2).unwrap();
        raw.send
            .write_all(&wire::encode_message(&m3))
            .await
            .unwrap();
        raw
    }

    /// Waits for the relay to close the connection; returns its close code.
    pub async fn close_code(&self) -> Option<u32> {
        let closed = tokio::time::timeout(Duration::from_secs(10), self.conn.closed())
            .await
            .ok()?;
        match closed {
            quinn::ConnectionError::ApplicationClosed(c) => {
                u32::try_from(c.error_code.into_inner()).ok()
            }
            _ => None,
        }
    }
}
