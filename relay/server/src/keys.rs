//! The relay's long-term secrets in the state directory, and their rotation.
//!
//! ```text
//! <state_dir>/              0700
//!   relay.key               0600  Noise static secret, 32 raw bytes
//!   tls.key                 0600  TLS private key, PKCS#8 PEM
//!   tls.crt                 0644  self-signed TLS certificate, PEM
//!   previous/               0700  the generation before the last rotation,
//!     relay.key tls.key tls.crt     during its overlap only
//!     retired                 0600  when it was retired, Unix seconds
//!   store.redb, store.journal     the mailbox store
//! ```
//!
//! Secrets are created with mode 0600 from the first byte (never chmod'ed
//! after the fact), and the daemon refuses to start when another user could
//! read them: a key that leaked once must be rotated, and saying so at start
//! is cheaper than finding out later.
//!
//! **Rotation** ([`rotate`]) makes a new generation (Noise key and TLS
//! certificate) and keeps the old one in `previous/` for an overlap, so that
//! clients still pinned to the old descriptor keep working while they learn
//! the new one. A client names the certificate it pins in its TLS server
//! name ([`chappe_proto::tls::key_hint_name`]); the relay presents that
//! generation's certificate and answers the Noise handshake with the same
//! generation's key ([`KeyRing::select`]). When the overlap ends the old
//! generation is destroyed ([`destroy_previous`]).
//!
//! A rotation writes the new generation into `next/` first, then copies
//! the current one into `previous/` (one rename), then moves the three new
//! files into place. A crash between those renames leaves `next/` behind,
//! and the next [`load_ring`] or [`rotate`] completes the move, so the files
//! at the top never mix two generations for longer than a crash.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chappe_proto::descriptor::Descriptor;
use chappe_proto::noise::Keypair;
use chappe_proto::tls::KEY_HINT_LEN;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

pub const NOISE_KEY_FILE: &str = "relay.key";
pub const TLS_KEY_FILE: &str = "tls.key";
pub const TLS_CERT_FILE: &str = "tls.crt";
/// The generation kept during a rotation overlap.
pub const PREVIOUS_DIR: &str = "previous";
/// A rotation in progress: the new generation before it is moved up.
const NEXT_DIR: &str = "next";
/// In `previous/`: when that generation was retired, Unix seconds.
const RETIRED_FILE: &str = "retired";
const GENERATION_FILES: [&str; 3] = [NOISE_KEY_FILE, TLS_KEY_FILE, TLS_CERT_FILE];

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`, and if others may have copied it, treat the key as compromised"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "{path} is damaged: {what}; restore it from backup or move it away and run `chappe-relay init`"
    )]
    Corrupt { path: PathBuf, what: String },
    #[error("no keys in {dir}: run `chappe-relay init --state-dir {dir}` first")]
    Missing { dir: PathBuf },
    #[error("cannot create the TLS certificate: {0}")]
    Cert(String),
    #[error(
        "a rotation overlap is still running (the previous key retires at {until}); clients \
         pinned to it would be cut off now. Wait, or run `chappe-relay rotate-keys --force` to \
         destroy the previous key at once"
    )]
    OverlapRunning { until: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One generation of the relay's identity: the Noise static key and the
/// TLS certificate clients pin together in one descriptor.
pub struct Generation {
    pub noise: Keypair,
    /// The certificate with its signing key, as rustls presents it.
    pub certified: Arc<CertifiedKey>,
    /// SHA-256 of the DER certificate, pinned by clients via the descriptor.
    pub fingerprint: [u8; 32],
}

impl Generation {
    pub fn descriptor(&self, public_address: &str) -> Option<Descriptor> {
        let (host, port) = public_address.rsplit_once(':')?;
        Some(Descriptor {
            host: host.to_string(),
            port: port.parse().ok()?,
            relay_key: self.noise.public(),
            tls_fingerprint: Some(self.fingerprint),
        })
    }

    fn hint(&self) -> Option<[u8; KEY_HINT_LEN]> {
        self.fingerprint.get(..KEY_HINT_LEN)?.try_into().ok()
    }
}

/// The generation the relay presents by default, and the one retired by
/// the last rotation while its overlap lasts.
pub struct KeyRing {
    pub current: Arc<Generation>,
    pub previous: Option<Retiring>,
}

pub struct Retiring {
    pub generation: Arc<Generation>,
    /// When the overlap ends and the generation is destroyed.
    pub until: SystemTime,
}

impl KeyRing {
    /// The generation a client asks for by its TLS server name: the
    /// previous one if the name carries its hint, else the current one.
    pub fn select(&self, server_name: Option<&str>) -> &Arc<Generation> {
        let hint = server_name.and_then(chappe_proto::tls::parse_key_hint);
        match (&self.previous, hint) {
            (Some(p), Some(h)) if p.generation.hint() == Some(h) && !self.is_current(h) => {
                &p.generation
            }
            _ => &self.current,
        }
    }

    fn is_current(&self, hint: [u8; KEY_HINT_LEN]) -> bool {
        self.current.hint() == Some(hint)
    }
}

/// Creates whatever keys are missing (never overwrites). Returns whether
/// anything was created.
pub fn init(dir: &Path) -> Result<bool, KeyError> {
    ensure_dir(dir)?;
    finish_rotation(dir)?;
    let mut created = false;
    let noise_path = dir.join(NOISE_KEY_FILE);
    if !noise_path.exists() {
        write_secret(&noise_path, Keypair::generate().secret_bytes().as_slice())?;
        created = true;
    }
    let key_path = dir.join(TLS_KEY_FILE);
    let cert_path = dir.join(TLS_CERT_FILE);
    if key_path.exists() != cert_path.exists() {
        // Regenerating would silently change the fingerprint every client pins.
        let missing = if key_path.exists() {
            &cert_path
        } else {
            &key_path
        };
        return Err(KeyError::Corrupt {
            path: missing.clone(),
            what: "is missing while its partner exists".into(),
        });
    }
    if !key_path.exists() {
        write_tls(dir)?;
        created = true;
    }
    Ok(created)
}

/// Whether `dir` holds a relay identity at all.
pub fn exists(dir: &Path) -> bool {
    dir.join(NOISE_KEY_FILE).exists() || dir.join(NEXT_DIR).exists()
}

fn write_tls(dir: &Path) -> Result<(), KeyError> {
    let ck = rcgen::generate_simple_self_signed(vec![
        chappe_proto::tls::DEFAULT_SERVER_NAME.to_string(),
    ])
    .map_err(|e| KeyError::Cert(e.to_string()))?;
    let key_pem = Zeroizing::new(ck.key_pair.serialize_pem());
    write_secret(&dir.join(TLS_KEY_FILE), key_pem.as_bytes())?;
    write_file(&dir.join(TLS_CERT_FILE), ck.cert.pem().as_bytes(), 0o644)
}

/// Loads the current generation, refusing files other users can read.
pub fn load(dir: &Path) -> Result<Generation, KeyError> {
    if !dir.join(NOISE_KEY_FILE).exists() {
        return Err(KeyError::Missing {
            dir: dir.to_path_buf(),
        });
    }
    load_generation(dir)
}

/// Loads every generation the relay presents at `now`: the current one,
/// and the previous one while its overlap lasts (one whose overlap has
/// ended is destroyed here).
pub fn load_ring(dir: &Path, overlap: Duration, now: SystemTime) -> Result<KeyRing, KeyError> {
    finish_rotation(dir)?;
    let current = Arc::new(load(dir)?);
    let prev_dir = dir.join(PREVIOUS_DIR);
    let previous = match retired_at(&prev_dir)? {
        None => None,
        Some(at) => {
            let until = at + overlap;
            if until <= now {
                destroy_previous(dir)?;
                None
            } else {
                Some(Retiring {
                    generation: Arc::new(load_generation(&prev_dir)?),
                    until,
                })
            }
        }
    };
    Ok(KeyRing { current, previous })
}

/// Makes a new generation and retires the current one into `previous/`
/// as of `now`. Refuses while an earlier overlap still runs (at
/// `now` with `overlap`) unless `force`, which destroys that generation.
pub fn rotate(dir: &Path, overlap: Duration, now: SystemTime, force: bool) -> Result<(), KeyError> {
    finish_rotation(dir)?;
    load(dir)?; // the generation to retire must be whole
    let prev_dir = dir.join(PREVIOUS_DIR);
    if let Some(at) = retired_at(&prev_dir)? {
        let until = at + overlap;
        if until > now && !force {
            return Err(KeyError::OverlapRunning {
                until: format_time(until),
            });
        }
    }
    // 1. The new generation, complete and synced, beside the current one.
    let next = dir.join(NEXT_DIR);
    if next.exists() {
        fs::remove_dir_all(&next).map_err(io(&next))?;
    }
    make_private_dir(&next)?;
    write_secret(
        &next.join(NOISE_KEY_FILE),
        Keypair::generate().secret_bytes().as_slice(),
    )?;
    write_tls(&next)?;
    sync_dir(&next)?;
    // 2. A copy of the current generation becomes `previous/` in one rename.
    let staging = dir.join("previous.new");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    make_private_dir(&staging)?;
    for name in GENERATION_FILES {
        let bytes = Zeroizing::new(fs::read(dir.join(name)).map_err(io(&dir.join(name)))?);
        let mode = if name == TLS_CERT_FILE { 0o644 } else { 0o600 };
        write_file(&staging.join(name), &bytes, mode)?;
    }
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    write_secret(&staging.join(RETIRED_FILE), secs.to_string().as_bytes())?;
    sync_dir(&staging)?;
    if prev_dir.exists() {
        fs::remove_dir_all(&prev_dir).map_err(io(&prev_dir))?;
    }
    fs::rename(&staging, &prev_dir).map_err(io(&prev_dir))?;
    sync_dir(dir)?;
    // 3. The new files move up; `next/` goes last, marking the end.
    finish_rotation(dir)
}

/// Completes a rotation a crash interrupted: moves what is left in
/// `next/` up, then removes it.
fn finish_rotation(dir: &Path) -> Result<(), KeyError> {
    let next = dir.join(NEXT_DIR);
    if !next.exists() {
        return Ok(());
    }
    for name in GENERATION_FILES {
        let from = next.join(name);
        if from.exists() {
            fs::rename(&from, dir.join(name)).map_err(io(&from))?;
        }
    }
    sync_dir(dir)?;
    fs::remove_dir_all(&next).map_err(io(&next))?;
    sync_dir(dir)
}

/// When the generation in `prev_dir` was retired, if there is one.
fn retired_at(prev_dir: &Path) -> Result<Option<SystemTime>, KeyError> {
    let path = prev_dir.join(RETIRED_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    let secs: u64 = text.trim().parse().map_err(|_| KeyError::Corrupt {
        path: path.clone(),
        what: format!("\"{}\" is not a number of seconds", text.trim()),
    })?;
    Ok(Some(UNIX_EPOCH + Duration::from_secs(secs)))
}

/// Destroys the previous generation: its files are overwritten with zeros,
/// synced, then removed. (On flash storage the old blocks may survive
/// until the device reuses them; the operator guide says so.)
pub fn destroy_previous(dir: &Path) -> Result<(), KeyError> {
    let prev = dir.join(PREVIOUS_DIR);
    if !prev.exists() {
        return Ok(());
    }
    for name in [NOISE_KEY_FILE, TLS_KEY_FILE] {
        let path = prev.join(name);
        if let Ok(meta) = fs::metadata(&path) {
            let mut f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            let zeros = vec![0u8; usize::try_from(meta.len()).unwrap_or(0)];
            f.write_all(&zeros).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
        }
    }
    fs::remove_dir_all(&prev).map_err(io(&prev))?;
    sync_dir(dir)
}

fn load_generation(dir: &Path) -> Result<Generation, KeyError> {
    let noise_path = dir.join(NOISE_KEY_FILE);
    let noise = Zeroizing::new(read_secret(&noise_path)?);
    let noise: [u8; 32] = noise.as_slice().try_into().map_err(|_| KeyError::Corrupt {
        path: noise_path.clone(),
        what: format!("{} bytes, expected 32", noise.len()),
    })?;
    let noise = Keypair::from_secret(noise);

    let key_path = dir.join(TLS_KEY_FILE);
    let key_pem = Zeroizing::new(read_secret(&key_path)?);
    let tls_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| KeyError::Corrupt {
        path: key_path.clone(),
        what: e.to_string(),
    })?;
    let cert_path = dir.join(TLS_CERT_FILE);
    let cert_pem = fs::read(&cert_path).map_err(io(&cert_path))?;
    let cert = CertificateDer::from_pem_slice(&cert_pem).map_err(|e| KeyError::Corrupt {
        path: cert_path.clone(),
        what: e.to_string(),
    })?;
    let signing = chappe_proto::tls::crypto_provider()
        .key_provider
        .load_private_key(tls_key)
        .map_err(|e| KeyError::Corrupt {
            path: key_path.clone(),
            what: e.to_string(),
        })?;
    let fingerprint = Sha256::digest(cert.as_ref()).into();
    let certified = CertifiedKey::new(vec![cert], signing);
    certified.keys_match().map_err(|e| KeyError::Corrupt {
        path: cert_path.clone(),
        what: format!("does not belong to {}: {e}", key_path.display()),
    })?;
    Ok(Generation {
        noise,
        certified: Arc::new(certified),
        fingerprint,
    })
}

/// A date an operator reads: UTC, to the second.
pub fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

fn make_private_dir(dir: &Path) -> Result<(), KeyError> {
    fs::create_dir(dir).map_err(io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    write_file(path, bytes, 0o600)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(())
}

fn read_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    fs::read(path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn init_then_load_and_refuse_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("state");
        assert!(init(&d).unwrap());
        assert!(!init(&d).unwrap(), "second init creates nothing");
        let k = load(&d).unwrap();
        let mode = fs::metadata(d.join(NOISE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let desc = k.descriptor("127.0.0.1:4433").unwrap();
        assert_eq!(desc.relay_key, k.noise.public());
        fs::set_permissions(d.join(TLS_KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load(&d), Err(KeyError::Exposed { .. })));
    }

    #[test]
    fn rotation_keeps_the_old_generation_for_the_overlap_then_destroys_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        init(d).unwrap();
        let old = load(d).unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        rotate(d, 14 * DAY, t0, false).unwrap();
        let ring = load_ring(d, 14 * DAY, t0 + DAY).unwrap();
        assert_ne!(ring.current.fingerprint, old.fingerprint);
        let prev = ring.previous.as_ref().unwrap();
        assert_eq!(prev.generation.fingerprint, old.fingerprint);
        assert_eq!(prev.until, t0 + 14 * DAY);
        // The client's hint picks the generation; anything else the current.
        let old_name = chappe_proto::tls::key_hint_name(&old.fingerprint);
        assert_eq!(
            ring.select(Some(&old_name)).noise.public(),
            old.noise.public()
        );
        let new_name = chappe_proto::tls::key_hint_name(&ring.current.fingerprint);
        assert_eq!(
            ring.select(Some(&new_name)).fingerprint,
            ring.current.fingerprint
        );
        assert_eq!(ring.select(None).fingerprint, ring.current.fingerprint);
        assert_eq!(
            ring.select(Some("chappe-relay")).fingerprint,
            ring.current.fingerprint
        );
        // A second rotation inside the overlap needs --force.
        assert!(matches!(
            rotate(d, 14 * DAY, t0 + DAY, false),
            Err(KeyError::OverlapRunning { .. })
        ));
        // After the overlap the old generation is gone, from disk too.
        let ring = load_ring(d, 14 * DAY, t0 + 15 * DAY).unwrap();
        assert!(ring.previous.is_none());
        assert!(!d.join(PREVIOUS_DIR).exists());
        assert_eq!(
            ring.select(Some(&old_name)).fingerprint,
            ring.current.fingerprint
        );
    }

    #[test]
    fn an_interrupted_rotation_is_completed_not_mixed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        init(d).unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        rotate(d, DAY, t0, false).unwrap();
        let after = load(d).unwrap();
        // Stage a rotation by hand as a crash would leave it: `next/` holds
        // a whole generation, and one of its files already moved up.
        let next = d.join(NEXT_DIR);
        fs::create_dir(&next).unwrap();
        let staged = tempfile::tempdir().unwrap();
        init(staged.path()).unwrap();
        for name in GENERATION_FILES {
            fs::copy(staged.path().join(name), next.join(name)).unwrap();
        }
        fs::rename(next.join(NOISE_KEY_FILE), d.join(NOISE_KEY_FILE)).unwrap();
        let ring = load_ring(d, DAY, t0).unwrap();
        let staged = load(staged.path()).unwrap();
        assert!(!next.exists());
        assert_eq!(ring.current.fingerprint, staged.fingerprint);
        assert_eq!(ring.current.noise.public(), staged.noise.public());
        assert_ne!(ring.current.fingerprint, after.fingerprint);
    }

    #[test]
    fn dates_read_as_utc() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(format_time(t), "2027-01-15 08:00:00 UTC");
    }
}
