//! `Descriptor` parsing (`str::parse`) and its `Display`.
//!
//! Two checks per input:
//! - the input as text (if UTF-8): whatever parses prints as exactly the
//!   input without its surrounding ASCII whitespace (one spelling per
//!   descriptor), and that parses to the same value;
//! - the input as fields (keys, port, host): a descriptor built from them
//!   prints as text that parses back to it exactly when the host is a DNS
//!   name, IPv4 address or bracketed IPv6 address and the port is not 0,
//!   and otherwise is refused for its address.
#![no_main]

use chappe_proto::descriptor::{Descriptor, DescriptorError};
use libfuzzer_sys::fuzz_target;

fn host_ok(host: &str) -> bool {
    match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = text.parse::<Descriptor>() {
            let printed = d.to_string();
            assert_eq!(printed, text.trim_ascii(), "descriptor text is not canonical");
            assert_eq!(printed.parse::<Descriptor>().as_ref(), Ok(&d), "{printed}");
            assert_eq!(
                printed
                    .parse::<Descriptor>()
                    .map(|d2| d2.to_string())
                    .as_deref(),
                Ok(printed.as_str())
            );
            assert_eq!(d.address(), format!("{}:{}", d.host, d.port));
            assert!(host_ok(&d.host) && d.port != 0, "accepted {d:?}");
        }
    }

    let Some((fixed, host)) = data.split_first_chunk::<67>() else {
        return;
    };
    let mut relay_key = [0u8; 32];
    relay_key.copy_from_slice(&fixed[..32]);
    let mut fp = [0u8; 32];
    fp.copy_from_slice(&fixed[33..65]);
    let d = Descriptor {
        host: String::from_utf8_lossy(host).into_owned(),
        port: u16::from_be_bytes([fixed[65], fixed[66]]),
        relay_key,
        tls_fingerprint: (fixed[32] & 1 == 1).then_some(fp),
    };
    let printed = d.to_string();
    let back = printed.parse::<Descriptor>();
    if host_ok(&d.host) && d.port != 0 {
        assert_eq!(back.as_ref(), Ok(&d), "{printed}");
    } else {
        assert_eq!(back, Err(DescriptorError::BadAddress), "{printed}");
    }
});
