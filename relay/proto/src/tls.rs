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

/// Bytes of the pinned certificate fingerprint a client names in its
/// server name (SNI), so that a relay holding two key generations during a
/// rotation overlap can present the one the client pins. Eight bytes tell
/// generations apart; the full fingerprint is still what the client checks.
pub const KEY_HINT_LEN: usize = 8;
const KEY_HINT_PREFIX: &str = "k";
const KEY_HINT_SUFFIX: &str = ".chappe.invalid";

/// The server name a client presents: `k` + hex of the first
/// [`KEY_HINT_LEN`] bytes of the pinned certificate's SHA-256 +
/// `.chappe.invalid` (a reserved domain, never resolved).
pub fn key_hint_name(fingerprint: &[u8; 32]) -> String {
    let prefix = fingerprint.get(..KEY_HINT_LEN).unwrap_or_default();
    format!("{KEY_HINT_PREFIX}{}{KEY_HINT_SUFFIX}", hex::encode(prefix))
}

/// The fingerprint prefix in a server name made by [`key_hint_name`], or
/// `None` for any other name (older clients, or none at all).
pub fn parse_key_hint(name: &str) -> Option<[u8; KEY_HINT_LEN]> {
    let hex = name
        .strip_prefix(KEY_HINT_PREFIX)?
        .strip_suffix(KEY_HINT_SUFFIX)?;
    let mut out = [0u8; KEY_HINT_LEN];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hint_round_trips_and_refuses_other_names() {
        let mut fp = [0u8; 32];
        for (i, b) in fp.iter_mut().enumerate() {
            *b = u8::try_from(i * 7).unwrap_or(0);
        }
        let name = key_hint_name(&fp);
        assert_eq!(name, "k00070e151c232a31.chappe.invalid");
        assert!(rustls::pki_types::ServerName::try_from(name.as_str()).is_ok());
        assert_eq!(parse_key_hint(&name), Some([0, 7, 14, 21, 28, 35, 42, 49]));
        for other in [
            DEFAULT_SERVER_NAME,
            "k00.chappe.invalid",
            "k00070e151c232a3g.chappe.invalid",
            "k+0070e151c232a31.chappe.invalid",
            "",
        ] {
            assert_eq!(parse_key_hint(other), None, "{other}");
        }
    }
}
