//! The relay's long-term secrets in the state directory.
//!
//! ```text
//! <state_dir>/            0700
//!   relay.key             0600  Noise static secret, 32 raw bytes
//!   tls.key               0600  TLS private key, PKCS#8 PEM
//!   tls.crt               0644  self-signed TLS certificate, PEM
//!   store.redb            0600  the mailbox store
//! ```
//!
//! Secrets are created with mode 0600 from the first byte (never chmod'ed
//! after the fact), and the daemon refuses to start when another user could
//! read them: a key that leaked once must be rotated, and saying so at start
//! is cheaper than finding out later.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chappe_proto::descriptor::Descriptor;
use chappe_proto::noise::Keypair;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

pub const NOISE_KEY_FILE: &str = "relay.key";
pub const TLS_KEY_FILE: &str = "tls.key";
pub const TLS_CERT_FILE: &str = "tls.crt";

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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The relay's loaded identity.
pub struct Keys {
    pub noise: Keypair,
    pub cert: CertificateDer<'static>,
    pub tls_key: PrivateKeyDer<'static>,
    /// SHA-256 of the DER certificate, pinned by clients via the descriptor.
    pub fingerprint: [u8; 32],
}

impl Keys {
    pub fn descriptor(&self, public_address: &str) -> Option<Descriptor> {
        let (host, port) = public_address.rsplit_once(':')?;
        Some(Descriptor {
            host: host.to_string(),
            port: port.parse().ok()?,
            relay_key: self.noise.public(),
            tls_fingerprint: Some(self.fingerprint),
        })
    }
}

/// Creates whatever keys are missing (never overwrites). Returns whether
/// anything was created.
pub fn init(dir: &Path) -> Result<bool, KeyError> {
    ensure_dir(dir)?;
    let mut created = false;
    let noise_path = dir.join(NOISE_KEY_FILE);
    if !noise_path.exists() {
        let kp = Keypair::generate();
        write_secret(&noise_path, kp.secret_bytes().as_slice())?;
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
        let ck = rcgen::generate_simple_self_signed(vec![
            chappe_proto::tls::DEFAULT_SERVER_NAME.to_string(),
        ])
        .map_err(|e| KeyError::Cert(e.to_string()))?;
        let key_pem = Zeroizing::new(ck.key_pair.serialize_pem());
        write_secret(&key_path, key_pem.as_bytes())?;
        write_file(&cert_path, ck.cert.pem().as_bytes(), 0o644)?;
        created = true;
    }
    Ok(created)
}

/// Loads the keys, refusing files other users can read.
pub fn load(dir: &Path) -> Result<Keys, KeyError> {
    let noise_path = dir.join(NOISE_KEY_FILE);
    if !noise_path.exists() {
        return Err(KeyError::Missing {
            dir: dir.to_path_buf(),
        });
    }
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
    let fingerprint = Sha256::digest(cert.as_ref()).into();
    Ok(Keys {
        noise,
        cert,
        tls_key,
        fingerprint,
    })
}

fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
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
}
