//! The TLS policy both ends of a Chappe connection share.
//!
//! One place decides it so the relay and the client cannot drift apart:
//! TLS 1.3 only, key exchange X25519MLKEM768 only (a classical-only peer
//! fails the handshake), aws-lc-rs as the crypto backend.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs;

/// The aws-lc-rs provider restricted to the hybrid post-quantum group.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: vec![aws_lc_rs::kx_group::X25519MLKEM768],
        ..aws_lc_rs::default_provider()
    })
}

/// Protocol versions allowed: TLS 1.3 alone.
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// Server name the client presents when the descriptor holds a DNS name (an
/// IP address is presented as itself), and the name in the relay's
/// self-signed certificate. The certificate is pinned by fingerprint, so the
/// name is not what authenticates the relay.
pub const DEFAULT_SERVER_NAME: &str = "chappe-relay";
