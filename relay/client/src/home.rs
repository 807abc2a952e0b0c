//! The CLI's local state, `$CHAPPE_HOME` (default `~/.chappe`):
//!
//! ```text
//! identity.toml            0600  the identity and its sender certificate
//! owner.key                0600  Noise static key that authenticates mailbox ownership
//! mailboxes/<id>.toml      0600  one per mailbox: relay, ids, tokens, X-Wing secret
//! seen                     0600  message ids already shown (at-least-once → once)
//! ```
//!
//! Files holding secrets are created 0600 from the start and replaced
//! atomically (write to a temporary file, fsync, rename), so a crash never
//! leaves half a key behind.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chappe_proto::noise::Keypair;
use chappe_proto::{DeliveryToken, ReceiveId, SendId};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::identity::Identity;
use crate::seal::MailboxKeyPair;

/// Message ids remembered for de-duplication.
const SEEN_KEEP: usize = 100_000;

#[derive(Clone)]
pub struct Home {
    dir: PathBuf,
}

/// A mailbox as the owner keeps it.
pub struct Mailbox {
    pub relay: String,
    pub receive_id: ReceiveId,
    pub send_id: SendId,
    /// Tokens currently valid, newest first; the card shows the first.
    pub tokens: Vec<DeliveryToken>,
    pub keys: MailboxKeyPair,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxFile {
    relay: String,
    receive_id: String,
    send_id: String,
    tokens: Vec<String>,
    secret: String,
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn unb64_32(what: &str, s: &str) -> anyhow::Result<[u8; 32]> {
    URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| anyhow!("{what} is not 32 bytes of base64url"))
}

impl Home {
    pub fn open(dir: PathBuf) -> anyhow::Result<Home> {
        if !dir.exists() {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
        fs::create_dir_all(dir.join("mailboxes"))?;
        Ok(Home { dir })
    }

    pub fn default_dir() -> PathBuf {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".chappe")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write_secret(&self, path: &Path, data: &[u8]) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    fn read_secret(&self, path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let mode = fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
        Ok(Zeroizing::new(fs::read(path)?))
    }

    pub fn has_identity(&self) -> bool {
        self.dir.join("identity.toml").exists()
    }

    /// Creates the identity and owner key if missing.
    pub fn init(&self, now: u64) -> anyhow::Result<Identity> {
        if !self.has_identity() {
            let id = Identity::generate(now);
            self.save_identity(&id)?;
        }
        let owner = self.dir.join("owner.key");
        if !owner.exists() {
            let kp = Keypair::generate();
            self.write_secret(&owner, kp.secret_bytes().as_slice())?;
        }
        self.identity(now)
    }

    pub fn save_identity(&self, id: &Identity) -> anyhow::Result<()> {
        self.write_secret(&self.dir.join("identity.toml"), id.to_toml().as_bytes())
    }

    /// Loads the identity, renewing (and saving) its sender certificate
    /// when it is about to expire.
    pub fn identity(&self, now: u64) -> anyhow::Result<Identity> {
        let path = self.dir.join("identity.toml");
        if !path.exists() {
            bail!(
                "no identity in {}: run `chappe init` first",
                self.dir.display()
            );
        }
        let text = self.read_secret(&path)?;
        let text = std::str::from_utf8(&text).context("identity.toml is not UTF-8")?;
        let mut id = Identity::from_toml(text).context("identity.toml")?;
        if id.renew_if_needed(now) {
            self.save_identity(&id)?;
        }
        Ok(id)
    }

    pub fn owner_key(&self) -> anyhow::Result<Keypair> {
        let bytes = self.read_secret(&self.dir.join("owner.key"))?;
        let secret: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| anyhow!("owner.key is damaged (not 32 bytes)"))?;
        Ok(Keypair::from_secret(secret))
    }

    fn mailbox_path(&self, id: &ReceiveId) -> PathBuf {
        self.dir
            .join("mailboxes")
            .join(format!("{}.toml", id.to_hex()))
    }

    pub fn save_mailbox(&self, m: &Mailbox) -> anyhow::Result<()> {
        let file = MailboxFile {
            relay: m.relay.clone(),
            receive_id: m.receive_id.to_hex(),
            send_id: m.send_id.to_hex(),
            tokens: m.tokens.iter().map(|t| b64(t.as_bytes())).collect(),
            secret: b64(m.keys.secret_bytes().as_slice()),
        };
        let text = Zeroizing::new(toml::to_string(&file)?);
        self.write_secret(&self.mailbox_path(&m.receive_id), text.as_bytes())
    }

    pub fn delete_mailbox(&self, id: &ReceiveId) -> anyhow::Result<()> {
        fs::remove_file(self.mailbox_path(id)).context("removing the mailbox file")
    }

    pub fn mailboxes(&self) -> anyhow::Result<Vec<Mailbox>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.dir.join("mailboxes"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                out.push(self.load_mailbox(&path)?);
            }
        }
        out.sort_by_key(|m| m.receive_id);
        Ok(out)
    }

    fn load_mailbox(&self, path: &Path) -> anyhow::Result<Mailbox> {
        let text = self.read_secret(path)?;
        let ctx = || format!("mailbox file {}", path.display());
        let f: MailboxFile =
            toml::from_str(std::str::from_utf8(&text).with_context(ctx)?).with_context(ctx)?;
        let secret = Zeroizing::new(unb64_32("secret", &f.secret).with_context(ctx)?);
        Ok(Mailbox {
            relay: f.relay,
            receive_id: ReceiveId::from_hex(&f.receive_id)
                .ok_or_else(|| anyhow!("bad receive_id"))
                .with_context(ctx)?,
            send_id: SendId::from_hex(&f.send_id)
                .ok_or_else(|| anyhow!("bad send_id"))
                .with_context(ctx)?,
            tokens: f
                .tokens
                .iter()
                .map(|t| unb64_32("token", t).map(DeliveryToken))
                .collect::<anyhow::Result<_>>()
                .with_context(ctx)?,
            keys: MailboxKeyPair::from_secret_bytes(secret.as_slice())
                .map_err(|e| anyhow!("{e}"))
                .with_context(ctx)?,
        })
    }

    /// Finds a mailbox by receive id or a unique prefix of it; with no id,
    /// the only mailbox there is.
    pub fn find_mailbox(&self, id: Option<&str>) -> anyhow::Result<Mailbox> {
        let all = self.mailboxes()?;
        let mut hits: Vec<Mailbox> = match id {
            Some(p) => all
                .into_iter()
                .filter(|m| m.receive_id.to_hex().starts_with(&p.to_ascii_lowercase()))
                .collect(),
            None => all,
        };
        match hits.len() {
            1 => hits.pop().ok_or_else(|| anyhow!("no mailbox")),
            0 => bail!("no such mailbox; `chappe mailbox list` shows yours"),
            _ => bail!("several mailboxes match; give more of the id"),
        }
    }

    pub fn seen(&self) -> anyhow::Result<HashSet<[u8; 16]>> {
        let path = self.dir.join("seen");
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(HashSet::new());
        };
        Ok(text
            .lines()
            .filter_map(|l| {
                let mut b = [0u8; 16];
                hex::decode_to_slice(l, &mut b).ok().map(|_| b)
            })
            .collect())
    }

    /// Records a shown message id before it is acknowledged, so a lost ack
    /// (the relay redelivers) never shows the message twice.
    pub fn mark_seen(&self, id: &[u8; 16]) -> anyhow::Result<()> {
        let path = self.dir.join("seen");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        writeln!(f, "{}", hex::encode(id))?;
        f.sync_data()?;
        if f.metadata()?.len() > (SEEN_KEEP as u64) * 33 * 2 {
            let text = fs::read_to_string(&path)?;
            let lines: Vec<&str> = text.lines().collect();
            let keep = lines
                .get(lines.len().saturating_sub(SEEN_KEEP)..)
                .unwrap_or(&[]);
            self.write_secret(&path, (keep.join("\n") + "\n").as_bytes())?;
        }
        Ok(())
    }
}
