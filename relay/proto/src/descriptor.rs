//! The relay descriptor: the one line that names a relay and pins its keys.
//!
//! `chappe1:<relay key>[.<tls fingerprint>]@<host>:<port>`
//!
//! - relay key: the relay's Noise static public key, 32 bytes, base64url
//!   without padding (43 characters);
//! - tls fingerprint: SHA-256 of the relay's DER certificate, same encoding;
//!   present when the certificate is self-signed (the appliance default);
//! - host: a DNS name, an IPv4 address or a bracketed IPv6 address;
//! - port: 1 to 65535 in decimal digits, without sign or leading zero, so
//!   that every port has one spelling.
//!
//! Leading and trailing ASCII whitespace (space, tab, line feed, form feed,
//! carriage return) is ignored. Apart from that, a descriptor that parses
//! prints back as exactly its text.
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

#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum DescriptorError {
    #[error("a relay descriptor starts with \"{PREFIX}\"")]
    Prefix,
    #[error("a relay descriptor needs \"@host:port\" after the keys")]
    NoAddress,
    #[error("the relay key is not 32 bytes of base64url")]
    BadKey,
    #[error("the TLS fingerprint is not 32 bytes of base64url")]
    BadFingerprint,
    #[error(
        "the address is not host:port with a port from 1 to 65535 (decimal digits, no sign, no leading zero)"
    )]
    BadAddress,
}

fn key32(s: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()
}

/// `port = %x31-39 *4DIGIT` with a value of at most 65535. `u16::from_str`
/// alone would also take `+4433` and `04433`.
fn port(s: &str) -> Option<u16> {
    let canonical = s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
    canonical.then(|| s.parse().ok()).flatten()
}

impl FromStr for Descriptor {
    type Err = DescriptorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim_ascii()
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
        let port = self::port(port).ok_or(DescriptorError::BadAddress)?;
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

    #[test]
    fn port_is_digits_without_sign_or_leading_zero() {
        let k = URL_SAFE_NO_PAD.encode([0u8; 32]);
        let parse = |port: &str| format!("chappe1:{k}@h:{port}").parse::<Descriptor>();
        for (text, port) in [
            ("1", 1),
            ("9", 9),
            ("10", 10),
            ("4433", 4433),
            ("65535", 65535),
        ] {
            assert_eq!(parse(text).map(|d| d.port), Ok(port), "{text}");
        }
        for text in [
            "",
            "0",
            "00",
            "04433",
            "014433",
            "+4433",
            "+14433",
            "-1",
            "65536",
            "99999",
            "100000",
            " 4433",
            "4433 x",
            "4_433",
            "0x11",
            "\u{0664}\u{0664}",
            "４４３３",
        ] {
            assert_eq!(parse(text), Err(DescriptorError::BadAddress), "{text:?}");
        }
        // Trailing whitespace belongs to the whole line, not to the port.
        assert_eq!(parse("4433 \r\n").map(|d| d.port), Ok(4433));
    }

    #[test]
    fn only_ascii_whitespace_is_trimmed() {
        let d = Descriptor {
            host: "h".into(),
            port: 1,
            relay_key: [1; 32],
            tls_fingerprint: Some([2; 32]),
        };
        let text = d.to_string();
        for ws in [" ", "\t", "\n", "\r", "\x0c", " \r\n\t"] {
            assert_eq!(
                format!("{ws}{text}{ws}").parse::<Descriptor>(),
                Ok(d.clone())
            );
        }
        assert_eq!(
            format!("\u{a0}{text}").parse::<Descriptor>(),
            Err(DescriptorError::Prefix)
        );
        assert_eq!(
            format!("{text}\u{a0}").parse::<Descriptor>(),
            Err(DescriptorError::BadAddress)
        );
        assert_eq!(
            format!("\x0b{text}").parse::<Descriptor>(),
            Err(DescriptorError::Prefix)
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = s.parse::<Descriptor>();
        }

        /// Whatever parses, with nothing around it to trim, prints back as
        /// exactly its text: one spelling per descriptor.
        #[test]
        fn parsed_text_is_canonical(
            key in any::<[u8; 32]>(),
            fp in proptest::option::of(any::<[u8; 32]>()),
            host in r"[a-z0-9.\-]{1,12}|\[[0-9a-f:]{2,12}\]|[ a-z:@+_]{0,4}",
            port in "[+0-9]{0,7}",
        ) {
            let fp = fp.map(|f| format!(".{}", URL_SAFE_NO_PAD.encode(f))).unwrap_or_default();
            let text = format!("{PREFIX}{}{fp}@{host}:{port}", URL_SAFE_NO_PAD.encode(key));
            if let Ok(d) = text.parse::<Descriptor>() {
                prop_assert_eq!(d.to_string(), text);
            }
        }
    }
}
