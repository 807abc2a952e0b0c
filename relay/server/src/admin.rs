//! The admin channel: a Unix socket in the state directory over which
//! `chappe-relay backup` and `chappe-relay stats` ask the running relay.
//!
//! Why a socket at all: redb locks the store file, so while the relay
//! serves no other process can read it; a consistent online copy has to be
//! made by the relay itself (see `chappe_store::backup`). Why this socket:
//! it is never on the network, it lives in the state directory (mode 0700,
//! the relay's user), is itself mode 0600, and every connection's peer
//! credentials (`SO_PEERCRED`) must be root or the relay's own user, the
//! same people who could read the store file anyway.
//!
//! The exchange is one request line, then the answer: `ok` and the
//! payload, or `error <message>`, then the relay closes. For `backup` the
//! payload is the length of the copy in decimal on the `ok` line, then its
//! bytes: the relay writes the copy next to the store (its sandbox lets it
//! write nowhere else) and streams it, and the command, running as the
//! operator, writes the destination. For `stats` it is `name value` lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chappe_store::Store;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{UnixListener, UnixStream as AsyncUnixStream};

use crate::shutdown::Shutdown;

/// The socket's name in the state directory.
pub const SOCKET: &str = "admin.sock";

/// Where the relay writes a backup before streaming it; removed after.
const SPOOL: &str = "backup.spool";

/// The longest request line read.
const MAX_REQUEST: usize = 64;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// The figures `stats` prints, from a running relay or a stopped store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub mailboxes: u64,
    pub envelopes: u64,
    /// Ciphertext bytes.
    pub bytes: u64,
    /// Hours since the Unix epoch.
    pub oldest_expiry_hour: Option<u32>,
    /// Journal bytes not yet applied to redb.
    pub journal_bytes: u64,
    pub journal_capacity: u64,
}

impl Stats {
    fn to_lines(self) -> String {
        let hour = self
            .oldest_expiry_hour
            .map_or_else(|| "none".to_string(), |h| h.to_string());
        format!(
            "mailboxes {}\nenvelopes {}\nbytes {}\noldest_expiry_hour {hour}\njournal_bytes {}\n\
             journal_capacity {}\n",
            self.mailboxes, self.envelopes, self.bytes, self.journal_bytes, self.journal_capacity
        )
    }

    fn from_lines(text: &str) -> anyhow::Result<Stats> {
        let mut s = Stats::default();
        for line in text.lines() {
            let (name, value) = line
                .split_once(' ')
                .with_context(|| format!("the relay sent a malformed stats line {line:?}"))?;
            let num = || {
                value
                    .parse::<u64>()
                    .with_context(|| format!("the relay sent a malformed {name} {value:?}"))
            };
            match name {
                "mailboxes" => s.mailboxes = num()?,
                "envelopes" => s.envelopes = num()?,
                "bytes" => s.bytes = num()?,
                "journal_bytes" => s.journal_bytes = num()?,
                "journal_capacity" => s.journal_capacity = num()?,
                "oldest_expiry_hour" if value == "none" => s.oldest_expiry_hour = None,
                "oldest_expiry_hour" => {
                    s.oldest_expiry_hour = Some(value.parse().with_context(|| {
                        format!("the relay sent a malformed oldest_expiry_hour {value:?}")
                    })?)
                }
                _ => {} // a newer relay's figure
            }
        }
        Ok(s)
    }

    /// What an operator reads.
    pub fn print(&self, source: &str) {
        let pct = (self.journal_bytes.saturating_mul(100))
            .checked_div(self.journal_capacity)
            .unwrap_or(0);
        println!("source             {source}");
        println!("mailboxes          {}", self.mailboxes);
        println!("envelopes          {}", self.envelopes);
        println!("bytes              {}", self.bytes);
        match self.oldest_expiry_hour {
            Some(h) => println!(
                "oldest expiry      {} (hour {h})",
                crate::keys::format_time(
                    std::time::UNIX_EPOCH + Duration::from_secs(u64::from(h) * 3600)
                )
            ),
            None => println!("oldest expiry      none"),
        }
        println!(
            "journal            {} of {} bytes unapplied ({pct} %)",
            self.journal_bytes, self.journal_capacity
        );
    }
}

/// Binds the socket, replacing a stale one (and removing a stale backup
/// spool): only the relay holding the store's lock gets this far, so no
/// other relay can be listening on it or writing the spool.
pub fn bind(state_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = socket_path(state_dir);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the stale {}", path.display()));
        }
        _ => {}
    }
    // A copy a killed relay was writing or streaming.
    drop(std::fs::remove_file(state_dir.join(SPOOL)));
    let l = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(l)
}

/// Answers admin requests until shutdown.
pub async fn serve(l: UnixListener, store: Store, state_dir: PathBuf, mut shutdown: Shutdown) {
    let me = nix::unistd::geteuid().as_raw();
    // One backup at a time: they share the spool file, and a second copy
    // at once would only double the disk and I/O it costs.
    let backup = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        let conn = tokio::select! {
            c = l.accept() => c,
            _ = shutdown.wait() => break,
        };
        let stream = match conn {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("admin socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let allowed = stream
            .peer_cred()
            .is_ok_and(|c| c.uid() == 0 || c.uid() == me);
        let (store, dir, backup) = (store.clone(), state_dir.clone(), backup.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, allowed, store, &dir, &backup).await {
                tracing::warn!("admin request failed: {e:#}");
            }
        });
    }
    drop(std::fs::remove_file(socket_path(&state_dir)));
}

async fn answer(
    stream: AsyncUnixStream,
    allowed: bool,
    store: Store,
    dir: &Path,
    backup: &tokio::sync::Mutex<()>,
) -> anyhow::Result<()> {
    let (rd, mut wr) = stream.into_split();
    if !allowed {
        wr.write_all(b"error only root or the relay's user may use the admin socket\n")
            .await?;
        return Ok(());
    }
    let mut line = String::new();
    let mut rd = AsyncBufReader::new(rd).take(MAX_REQUEST as u64);
    tokio::time::timeout(REQUEST_TIMEOUT, rd.read_line(&mut line))
        .await
        .context("no request")??;
    match line.trim_end() {
        "stats" => match stats(&store).await {
            Ok(s) => {
                wr.write_all(format!("ok\n{}", s.to_lines()).as_bytes())
                    .await?
            }
            Err(e) => wr.write_all(format!("error {e:#}\n").as_bytes()).await?,
        },
        "backup" => {
            let Ok(_one) = backup.try_lock() else {
                wr.write_all(b"error another backup is running; try again when it is done\n")
                    .await?;
                return Ok(());
            };
            tracing::info!("online backup requested");
            let spool = dir.join(SPOOL);
            let made = match store.snapshot().await {
                Ok(snap) => {
                    let path = spool.clone();
                    drop(std::fs::remove_file(&spool));
                    tokio::task::spawn_blocking(move || snap.write(&path))
                        .await
                        .context("the backup thread failed")
                        .and_then(|r| r.context("writing the copy"))
                }
                Err(e) => Err(e).context("taking the snapshot"),
            };
            let result = match made {
                Ok(summary) => stream_file(&spool, summary.file_bytes, &mut wr).await,
                Err(e) => {
                    wr.write_all(format!("error {e:#}\n").as_bytes()).await?;
                    Err(e)
                }
            };
            drop(std::fs::remove_file(&spool));
            match &result {
                Ok(()) => tracing::info!("online backup sent"),
                Err(e) => tracing::warn!("online backup failed: {e:#}"),
            }
        }
        other => {
            wr.write_all(format!("error unknown request {other:?}\n").as_bytes())
                .await?
        }
    }
    wr.shutdown().await?;
    Ok(())
}

async fn stream_file(
    path: &Path,
    len: u64,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
) -> anyhow::Result<()> {
    let mut f = tokio::fs::File::open(path).await?;
    wr.write_all(format!("ok {len}\n").as_bytes()).await?;
    let sent = tokio::io::copy(&mut f, wr).await?;
    if sent != len {
        bail!("sent {sent} bytes of {len}");
    }
    Ok(())
}

async fn stats(store: &Store) -> anyhow::Result<Stats> {
    let live = store.stats();
    // The barrier puts the journal into redb, so the oldest expiry counts
    // every envelope.
    let snap = store.snapshot().await?;
    Ok(Stats {
        mailboxes: live.mailboxes,
        envelopes: live.envelopes,
        bytes: live.bytes,
        oldest_expiry_hour: snap.oldest_expiry_hour()?,
        journal_bytes: live.journal_bytes,
        journal_capacity: live.journal_capacity,
    })
}

/// The client side: connects to a running relay's socket. `Ok(None)` when
/// no relay is listening there.
pub fn connect(state_dir: &Path) -> anyhow::Result<Option<UnixStream>> {
    let path = socket_path(state_dir);
    match UnixStream::connect(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("connecting to {}", path.display())),
    }
}

/// Sends `request`; returns the reader positioned after the `ok` line and
/// what followed `ok` on it.
fn request(mut s: UnixStream, request: &str) -> anyhow::Result<(String, BufReader<UnixStream>)> {
    // A refused caller's request is not read: the refusal is there to
    // read even when the write fails.
    let wrote = s.write_all(format!("{request}\n").as_bytes());
    let mut rd = BufReader::new(s);
    let mut line = String::new();
    let read = rd.read_line(&mut line);
    if line.is_empty() {
        wrote?;
        read?;
        bail!("the relay closed the admin connection without an answer");
    }
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("ok") {
        return Ok((rest.trim().to_string(), rd));
    }
    match line.strip_prefix("error ") {
        Some(msg) => bail!("the relay refused: {msg}"),
        None => bail!("the relay answered {line:?}"),
    }
}

pub fn fetch_stats(s: UnixStream) -> anyhow::Result<Stats> {
    let (_, mut rd) = request(s, "stats")?;
    let mut text = String::new();
    rd.read_to_string(&mut text)?;
    Stats::from_lines(&text)
}

/// Asks the relay for a backup and writes it to `dest` (which must not
/// exist): to `dest.partial`, synced, then renamed.
pub fn fetch_backup(s: UnixStream, dest: &Path) -> anyhow::Result<u64> {
    if dest.exists() {
        bail!(
            "{} exists; a backup never overwrites a file",
            dest.display()
        );
    }
    let (len, rd) = request(s, "backup")?;
    let len: u64 = len
        .parse()
        .with_context(|| format!("the relay announced a malformed length {len:?}"))?;
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let copied = std::io::copy(&mut rd.take(len), &mut out).and_then(|n| {
        out.sync_all()?;
        Ok(n)
    });
    match copied {
        Ok(n) if n == len => {}
        Ok(n) => {
            drop(std::fs::remove_file(&partial));
            bail!("the relay stopped after {n} of {len} bytes; nothing was written");
        }
        Err(e) => {
            drop(std::fs::remove_file(&partial));
            return Err(e).context("receiving the backup");
        }
    }
    std::fs::rename(&partial, dest).with_context(|| format!("renaming to {}", dest.display()))?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    Ok(len)
}
