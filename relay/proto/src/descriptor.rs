//! The relay descriptor: the one line that names a relay and pins its keys.
//!
//! `chappe1:<relay key>[.<tls fingerprint>]@<host>:<port>`
//!
//! - relay key: the relay's Noise static public key, 32 bytes, base64url
//!   without padding (43 characters);
//! - tls fingerprint: SHA-256 of the relay's DER certificate, same encoding;
//!   present when the certificate is self-signed (the appliance default);
//! - host: a DNS name, an IPv4 address or a bracketed IPv6 address.
//!
//! Example: `chappe1:Zm9v….YmFy…@127.0.0.1:4433`.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use thiserror::Error;

pub const PREFIX: &str = "chappe1:";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// `host:port` as written (resolved by the client, not here).
    pub host: String,
    pub port: u16,
    pub relay_key: [u8; 32],
    pub tls_fingerprint: Option<[u8; 32]>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DescriptorError {
    #[error("a relay descriptor starts with \"{PREFIX}\"")]
    Prefix,
    #[error("a relay descriptor needs \"@host:port\" after the keys")]
    NoAddress,
    #[error("the relay key is not 32 bytes of base64url")]
    BadKey,
    #[error("the TLS fingerprint is not 32 bytes of base64url")]
    BadFingerprint,
    #[error("the address is not host:port with a port from 1 to 65535")]
    BadAddress,
}

fn key32(s: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()
}

impl FromStr for Descriptor {
    type Err = DescriptorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(DescriptorError::Prefix)?;
        let (keys, addr) = rest.split_once('@').ok_or(DescriptorError::NoAddress)?;
        let (key, fp) = match keys.split_once('.') {
            Some((k, f)) => (k, Some(f)),
            None => (keys, None),
        };
        let relay_key = key32(key).ok_or(DescriptorError::BadKey)?;
        let tls_fingerprint = match fp {
            Some(f) => Some(key32(f).ok_or(DescriptorError::BadFingerprint)?),
            None => None,
        };
        let (host, port) = addr.rsplit_once(':').ok_or(DescriptorError::BadAddress)?;
        let port: u16 = port.parse().map_err(|_| DescriptorError::BadAddress)?;
        let host_ok = if let Some(v6) = host.strip_prefix('[') {
            v6.strip_suffix(']')
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        };
        if port == 0 || !host_ok {
            return Err(DescriptorError::BadAddress);
        }
        Ok(Descriptor {
            host: host.to_string(),
            port,
            relay_key,
            tls_fingerprint,
        })
    }
}

impl fmt::Display for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", URL_SAFE_NO_PAD.encode(self.relay_key))?;
        if let Some(fp) = &self.tls_fingerprint {
            write!(f, ".{}", URL_SAFE_NO_PAD.encode(fp))?;
        }
        write!(f, "@{}:{}", self.host, self.port)
    }
}

impl Descriptor {
    /// `host:port`, ready for name resolution.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_v4_v6_name() {
        for host in ["127.0.0.1", "[::1]", "relay.ministry.example"] {
            let d = Descriptor {
                host: host.into(),
                port: 4433,
                relay_key: [9; 32],
                tls_fingerprint: Some([3; 32]),
            };
            assert_eq!(d.to_string().parse::<Descriptor>(), Ok(d));
        }
        let d = Descriptor {
            host: "h".into(),
            port: 1,
            relay_key: [1; 32],
            tls_fingerprint: None,
        };
        assert_eq!(d.to_string().parse::<Descriptor>(), Ok(d));
    }

    #[test]
    fn errors_say_what() {
        assert_eq!("x".parse::<Descriptor>(), Err(DescriptorError::Prefix));
        assert_eq!(
            "chappe1:abc".parse::<Descriptor>(),
            Err(DescriptorError::NoAddress)
        );
        assert_eq!(
            "chappe1:abc@h:1".parse::<Descriptor>(),
            Err(DescriptorError::BadKey)
        );
        let k = URL_SAFE_NO_PAD.encode([0u8; 32]);
        assert_eq!(
            format!("chappe1:{k}@h:0").parse::<Descriptor>(),
            Err(DescriptorError::BadAddress)
        );
        assert_eq!(
            format!("chappe1:{k}.zz@h:1").parse::<Descriptor>(),
            Err(DescriptorError::BadFingerprint)
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = s.parse::<Descriptor>();
        }
    }
}
