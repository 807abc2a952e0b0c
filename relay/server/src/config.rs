//! The relay's configuration: a TOML file where every key is optional.
//!
//! Defaults describe the embedded newcomer setup (loopback, `./chappe-data`).
//! Validation runs before anything binds or touches the state directory, and
//! every error names the key and how to fix it, because the person reading
//! it is an operator at a console, not a developer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// QUIC listen address when none is configured: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4433";
/// Metrics/health listen address when none is configured.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// State directory when none is configured, relative to the working directory.
pub const DEFAULT_STATE_DIR: &str = "chappe-data";
/// How long a rotated-out key keeps working: 14 days, long enough for
/// clients that sync their relay list weekly to pick up the new descriptor.
pub const DEFAULT_ROTATION_OVERLAP_SECS: u64 = 14 * 86_400;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {problem}; {fix}")]
    Invalid {
        key: &'static str,
        problem: String,
        fix: &'static str,
    },
}

fn invalid(key: &'static str, problem: impl Into<String>, fix: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
        fix,
    }
}

/// Values given on the command line, which win over the file.
#[derive(Debug, Default)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
}

/// The file as written; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    public_address: Option<String>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    metrics: MetricsFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    store: StoreFile,
    #[serde(default)]
    log: LogFile,
    #[serde(default)]
    keys: KeysFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    rotation_overlap_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    journal_mib: Option<u64>,
    cache_mib: Option<u64>,
    /// Accepted so that configs written for 0.1 still load: every
    /// checkpoint uses redb's quick-repair now.
    quick_repair: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    listen: Option<String>,
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_connections: Option<u32>,
    max_envelopes_per_mailbox: Option<u32>,
    max_bytes_per_mailbox: Option<u64>,
    max_mailboxes_per_owner: Option<u32>,
    envelope_ttl_hours: Option<u32>,
    min_free_disk_bytes: Option<u64>,
    max_store_bytes: Option<u64>,
    idle_timeout_secs: Option<u64>,
    handshake_timeout_secs: Option<u64>,
    max_inflight_sends: Option<u32>,
    delivery_window: Option<u32>,
    shutdown_grace_secs: Option<u64>,
    max_connections_per_source: Option<u32>,
    handshakes_per_source_per_sec: Option<u32>,
    retry_above_handshakes_per_sec: Option<u32>,
    sender_idle_secs: Option<u64>,
    sends_per_send_id_per_sec: Option<u32>,
    max_sessions_per_owner: Option<u32>,
    max_inflight_send_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    level: Option<String>,
}

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the config came from, for the startup log line.
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    /// `host:port` written into the descriptor (defaults to `listen`).
    pub public_address: String,
    pub state_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub limits: Limits,
    /// `[store] journal_mib`: see [`chappe_store::StoreConfig::journal_bytes`].
    pub journal_mib: u64,
    /// `[store] cache_mib`: see [`chappe_store::StoreConfig::cache_bytes`].
    pub cache_mib: u64,
    pub log_level: String,
    /// `[keys] rotation_overlap_secs`: how long a rotated-out relay key
    /// keeps working for clients still pinned to it.
    pub rotation_overlap: Duration,
    /// Settings that load but no longer do anything, with what to do about
    /// them; logged at start and printed by `check-config`.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: u32,
    pub max_envelopes_per_mailbox: u32,
    pub max_bytes_per_mailbox: u64,
    pub max_mailboxes_per_owner: u32,
    pub envelope_ttl: Duration,
    pub min_free_disk_bytes: u64,
    pub max_store_bytes: u64,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Sends one anonymous connection may have waiting for the disk.
    pub max_inflight_sends: u32,
    /// Deliveries an owner may have unacknowledged per mailbox.
    pub delivery_window: u32,
    /// How long SIGTERM waits for in-flight work before closing connections.
    pub shutdown_grace: Duration,
    /// Connections one source address may hold at once (handshakes
    /// included), so one host cannot take every slot.
    pub max_connections_per_source: u32,
    /// New connections one source address may start per second (a token
    /// bucket holding one second's worth).
    pub handshakes_per_source_per_sec: u32,
    /// Above this many incoming connections per second, relay-wide, new
    /// connections must prove their address with a QUIC Retry first.
    pub retry_above_handshakes_per_sec: u32,
    /// A sender session that sends nothing for this long is closed, even
    /// while its client keeps the connection alive.
    pub sender_idle: Duration,
    /// Sends per second one send id takes (a token bucket holding two
    /// seconds' worth); more are refused `rate_limited`.
    pub sends_per_send_id_per_sec: u32,
    /// Owner sessions one owner key may hold at once.
    pub max_sessions_per_owner: u32,
    /// Ciphertext bytes, relay-wide, of sends read and not yet answered.
    pub max_inflight_send_bytes: u64,
}

impl Config {
    /// Parses and validates `text`, with command-line `overrides` applied on
    /// top (after parsing, so error positions point into the file as written).
    pub fn from_toml(
        text: &str,
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.map(Path::to_path_buf).unwrap_or_default(),
            message: e.to_string(),
        })?;
        if let Some(d) = &overrides.state_dir {
            file.state_dir = Some(d.clone());
        }
        if let Some(l) = &overrides.listen {
            file.listen = Some(l.clone());
        }
        if let Some(m) = &overrides.metrics_listen {
            file.metrics.listen = Some(m.clone());
        }
        let listen_text = file.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                format!("\"{listen_text}\" is not an IP address and port"),
                "write it like \"0.0.0.0:4433\" or \"[::]:4433\"",
            )
        })?;
        let public_address = match file.public_address {
            Some(a) => {
                // The same parser clients use, so whatever passes here makes
                // a descriptor they accept.
                let probe = format!("{}{}@{a}", chappe_proto::descriptor::PREFIX, "A".repeat(43));
                if probe
                    .parse::<chappe_proto::descriptor::Descriptor>()
                    .is_err()
                {
                    return Err(invalid(
                        "public_address",
                        format!("\"{a}\" is not host:port"),
                        "write the name or address clients reach, e.g. \"relay.interior.example:4433\" or \"[fd00::1]:4433\"",
                    ));
                }
                a
            }
            None => {
                if listen.ip().is_unspecified() {
                    // Clients need an address they can reach.
                    return Err(invalid(
                        "public_address",
                        format!("missing while `listen` is the wildcard {listen}"),
                        "set it to the address clients use to reach this relay, e.g. \"10.1.2.3:4433\"",
                    ));
                }
                listen.to_string() // SocketAddr brackets IPv6: a valid descriptor host
            }
        };
        let state_dir = file
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if state_dir.as_os_str().is_empty() {
            return Err(invalid(
                "state_dir",
                "is empty",
                "give a directory path such as \"/var/lib/chappe\"",
            ));
        }
        let metrics_listen = if file.metrics.enabled == Some(false) {
            None
        } else {
            let m = file
                .metrics
                .listen
                .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_string());
            Some(m.parse().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("\"{m}\" is not an IP address and port"),
                    "write it like \"127.0.0.1:9464\"",
                )
            })?)
        };
        let l = file.limits;
        let limits = Limits {
            max_connections: positive("limits.max_connections", l.max_connections, 20_000)?,
            max_envelopes_per_mailbox: positive(
                "limits.max_envelopes_per_mailbox",
                l.max_envelopes_per_mailbox,
                10_000,
            )?,
            max_bytes_per_mailbox: positive(
                "limits.max_bytes_per_mailbox",
                l.max_bytes_per_mailbox,
                256 << 20,
            )?,
            max_mailboxes_per_owner: range(
                "limits.max_mailboxes_per_owner",
                l.max_mailboxes_per_owner,
                256,
                1,
                // A MailboxList frame must hold every one of them.
                512,
            )?,
            envelope_ttl: Duration::from_secs(
                u64::from(range(
                    "limits.envelope_ttl_hours",
                    l.envelope_ttl_hours,
                    14 * 24,
                    1,
                    24 * 365,
                )?) * 3600,
            ),
            // 0 used to switch the watermark off silently: a full disk then
            // fails writes (and the store stops taking any) instead of
            // refusing sends `relay_full` while there is room to recover.
            min_free_disk_bytes: positive(
                "limits.min_free_disk_bytes",
                l.min_free_disk_bytes,
                512 << 20,
            )
            .map_err(|_| {
                invalid(
                    "limits.min_free_disk_bytes",
                    "is 0, which would switch off the free-disk watermark",
                    "give the free space to keep, in bytes (the default is 536870912, 512 MiB)",
                )
            })?,
            max_store_bytes: l.max_store_bytes.unwrap_or(0),
            idle_timeout: Duration::from_secs(idle_timeout(l.idle_timeout_secs)?),
            handshake_timeout: Duration::from_secs(range(
                "limits.handshake_timeout_secs",
                l.handshake_timeout_secs,
                10,
                1,
                120,
            )?),
            max_inflight_sends: range(
                "limits.max_inflight_sends",
                l.max_inflight_sends,
                1024,
                1,
                65_536,
            )?,
            delivery_window: range(
                "limits.delivery_window",
                l.delivery_window,
                256,
                1,
                MAX_DELIVERY_WINDOW,
            )?,
            shutdown_grace: Duration::from_secs(range(
                "limits.shutdown_grace_secs",
                l.shutdown_grace_secs,
                5,
                0,
                600,
            )?),
            // A NAT gateway may put a whole office behind one address: a
            // tenth of the default `max_connections`, so ten hosts are
            // needed to fill the slots.
            max_connections_per_source: positive(
                "limits.max_connections_per_source",
                l.max_connections_per_source,
                2_000,
            )?,
            // A fifth of what the relay completes on 2 cores
            // (BENCHMARKS.md, sessions: 1,081/s).
            handshakes_per_source_per_sec: positive(
                "limits.handshakes_per_source_per_sec",
                l.handshakes_per_source_per_sec,
                200,
            )?,
            // Half of the measured 1,081 sessions/s: above it the relay
            // nears what its cores can handshake, and a flood of spoofed
            // Initials must cost one stateless packet each.
            retry_above_handshakes_per_sec: positive(
                "limits.retry_above_handshakes_per_sec",
                l.retry_above_handshakes_per_sec,
                500,
            )?,
            sender_idle: Duration::from_secs(range(
                "limits.sender_idle_secs",
                l.sender_idle_secs,
                30,
                1,
                3600,
            )?),
            // A conversation's mailbox: far above any human pace, and
            // about 1 % of the relay's durable rate (84,532/s), so one
            // mailbox cannot take the writer from the others.
            sends_per_send_id_per_sec: positive(
                "limits.sends_per_send_id_per_sec",
                l.sends_per_send_id_per_sec,
                1_000,
            )?,
            max_sessions_per_owner: positive(
                "limits.max_sessions_per_owner",
                l.max_sessions_per_owner,
                32,
            )?,
            // 16 times the most the benchmarks keep in flight (32 × 64 KiB,
            // or 128 × 1 KiB), and the size of the journal ring.
            max_inflight_send_bytes: range(
                "limits.max_inflight_send_bytes",
                l.max_inflight_send_bytes,
                64 << 20,
                u64::try_from(chappe_proto::frame::MAX_FRAME_LEN).unwrap_or(1 << 17),
                // A semaphore of bytes: tokio's limit, with room.
                1 << 40,
            )?,
        };
        let mut warnings: Vec<String> = file
            .store
            .quick_repair
            .map(|_| {
                "config key `store.quick_repair` no longer has an effect: every store \
                 checkpoint now uses quick-repair, so a restart after a crash never scans the \
                 whole file; remove the key"
                    .to_string()
            })
            .into_iter()
            .collect();
        if let Some(m) = metrics_listen.filter(|m: &SocketAddr| !m.ip().is_loopback()) {
            warnings.push(format!(
                "config key `metrics.listen` is {m}, off loopback: /metrics, /healthz and \
                 /readyz have no authentication, and anyone who reaches that address reads the \
                 relay's traffic figures; keep it on 127.0.0.1 or firewall it to the monitoring host"
            ));
        }
        let log_level = file.log.level.unwrap_or_else(|| "info".to_string());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(invalid(
                "log.level",
                format!("\"{log_level}\" is not a level or filter"),
                "use one of error, warn, info, debug, trace",
            ));
        }
        Ok(Config {
            source: path.map(Path::to_path_buf),
            listen,
            public_address,
            state_dir,
            metrics_listen,
            limits,
            journal_mib: range("store.journal_mib", file.store.journal_mib, 64, 1, 4096)?,
            cache_mib: range("store.cache_mib", file.store.cache_mib, 1024, 16, 1 << 20)?,
            log_level,
            rotation_overlap: Duration::from_secs(range(
                "keys.rotation_overlap_secs",
                file.keys.rotation_overlap_secs,
                DEFAULT_ROTATION_OVERLAP_SECS,
                0,
                365 * 86_400,
            )?),
            warnings,
        })
    }

    /// The keys set differently in `new` that only a restart applies.
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.listen != new.listen {
            keys.push("listen");
        }
        if self.state_dir != new.state_dir {
            keys.push("state_dir");
        }
        if self.metrics_listen != new.metrics_listen {
            keys.push("metrics.listen");
        }
        if self.journal_mib != new.journal_mib {
            keys.push("store.journal_mib");
        }
        if self.cache_mib != new.cache_mib {
            keys.push("store.cache_mib");
        }
        if self.limits.max_inflight_send_bytes != new.limits.max_inflight_send_bytes {
            keys.push("limits.max_inflight_send_bytes");
        }
        keys
    }

    /// The store's settings: the file in the state directory, the limits
    /// that the store enforces, and `[store]`.
    pub fn store_config(&self) -> chappe_store::StoreConfig {
        let l = &self.limits;
        chappe_store::StoreConfig {
            max_envelopes_per_mailbox: l.max_envelopes_per_mailbox,
            max_bytes_per_mailbox: l.max_bytes_per_mailbox,
            max_mailboxes_per_owner: l.max_mailboxes_per_owner,
            envelope_ttl: l.envelope_ttl,
            min_free_disk_bytes: l.min_free_disk_bytes,
            max_store_bytes: l.max_store_bytes,
            journal_bytes: self.journal_mib << 20,
            cache_bytes: usize::try_from(self.cache_mib << 20).unwrap_or(usize::MAX),
            ..chappe_store::StoreConfig::new(self.state_dir.join(STORE_FILE))
        }
    }
}

/// The largest `limits.delivery_window`.
///
/// An owner that acknowledges each envelope in an `Ack` of its own, as
/// `chappe recv` does, writes [`ONE_ACK_LEN`] bytes per delivered envelope;
/// a whole window of those (4,096 × 47 = 188 KiB) fits in the relay's
/// stream receive window ([`crate::endpoint::RECEIVE_WINDOW`], 256.5 KiB),
/// so such an owner can acknowledge everything it was given without ever
/// waiting for the relay to read. The owner session also never stops
/// reading for a slow reader (`session::owner`); the cap keeps the
/// guarantee from resting on that alone, and bounds what one subscription
/// may have in flight (4,096 envelopes of up to 64 KiB).
pub const MAX_DELIVERY_WINDOW: u32 = 4096;

/// An `Ack` frame naming one sequence number: header, mailbox id, count,
/// the number.
const ONE_ACK_LEN: usize = chappe_proto::frame::HEADER_LEN + 32 + 2 + 8;

const _: () = assert!(
    MAX_DELIVERY_WINDOW as usize * ONE_ACK_LEN <= crate::endpoint::RECEIVE_WINDOW as usize,
    "a full delivery window of single acks must fit in the stream receive window"
);

/// The client's keep-alive interval
/// (`chappe_client::transport::KEEP_ALIVE`); an idle timeout must leave
/// room for it.
pub const CLIENT_KEEP_ALIVE_SECS: u64 = 15;

/// `limits.idle_timeout_secs`: at least two keep-alive intervals, so one
/// lost keep-alive packet does not end an owner session that is only
/// waiting for mail.
fn idle_timeout(v: Option<u64>) -> Result<u64, ConfigError> {
    let v = v.unwrap_or(60);
    if !(2 * CLIENT_KEEP_ALIVE_SECS..=3600).contains(&v) {
        return Err(invalid(
            "limits.idle_timeout_secs",
            format!(
                "is {v}, outside {}..=3600: clients send a keep-alive every {CLIENT_KEEP_ALIVE_SECS} s, \
                 and a timeout below two of them closes idle owner sessions",
                2 * CLIENT_KEEP_ALIVE_SECS
            ),
            "give at least 30 (the default is 60)",
        ));
    }
    Ok(v)
}

/// The store's file name inside the state directory.
pub const STORE_FILE: &str = "store.redb";

fn positive<T: PartialOrd + Default + Copy + std::fmt::Display>(
    key: &'static str,
    v: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    let v = v.unwrap_or(default);
    if v <= T::default() {
        return Err(invalid(key, format!("is {v}"), "give a number above 0"));
    }
    Ok(v)
}

fn range<T: PartialOrd + Copy + std::fmt::Display>(
    key: &'static str,
    v: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let v = v.unwrap_or(default);
    if v < min || v > max {
        return Err(ConfigError::Invalid {
            key,
            problem: format!("is {v}, outside {min}..={max}"),
            fix: "pick a value inside the range (or remove the key for the default)",
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_the_embedded_default() {
        let c = Config::from_toml("", None, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.public_address, DEFAULT_LISTEN);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn overrides_win_and_v6_public_address() {
        let ov = Overrides {
            listen: Some("[::1]:5000".into()),
            ..Overrides::default()
        };
        let c = Config::from_toml("listen = \"127.0.0.1:1\"", None, &ov).unwrap();
        assert_eq!(c.public_address, "[::1]:5000");
        let e = Config::from_toml(
            "listen = \"[::]:4433\"\npublic_address = \"::1:4433\"",
            None,
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`public_address`"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("listen = \"nope\"", None, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`listen`"), "{e}");
        let e = Config::from_toml("listen = \"0.0.0.0:4433\"", None, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`public_address`"), "{e}");
        let e = Config::from_toml(
            "[limits]\nenvelope_ttl_hours = 0",
            None,
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("limits.envelope_ttl_hours"), "{e}");
        let e = Config::from_toml("colour = 1", None, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = Config::from_toml("[log]\nlevel = \"loud[\"", None, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.level"), "{e}");
    }

    #[test]
    fn delivery_window_is_capped() {
        let at = |w: u32| {
            Config::from_toml(
                &format!("[limits]\ndelivery_window = {w}"),
                None,
                &Overrides::default(),
            )
        };
        assert_eq!(
            at(MAX_DELIVERY_WINDOW).unwrap().limits.delivery_window,
            MAX_DELIVERY_WINDOW
        );
        let e = at(MAX_DELIVERY_WINDOW + 1).unwrap_err().to_string();
        assert!(e.contains("limits.delivery_window"), "{e}");
        assert!(e.contains("1..=4096"), "{e}");
    }

    /// Settings that would switch a protection off are refused with the key
    /// named; a metrics listener off loopback loads with a warning.
    #[test]
    fn config_that_defeats_itself_is_refused() {
        let refused = |text: &str, key: &str| {
            let e = Config::from_toml(text, None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        };
        refused(
            "[limits]\nidle_timeout_secs = 15",
            "limits.idle_timeout_secs",
        );
        refused(
            "[limits]\nidle_timeout_secs = 29",
            "limits.idle_timeout_secs",
        );
        refused(
            "[limits]\nmin_free_disk_bytes = 0",
            "limits.min_free_disk_bytes",
        );
        for key in [
            "max_connections_per_source",
            "handshakes_per_source_per_sec",
            "retry_above_handshakes_per_sec",
            "sender_idle_secs",
            "sends_per_send_id_per_sec",
            "max_sessions_per_owner",
            "max_inflight_send_bytes",
        ] {
            refused(&format!("[limits]\n{key} = 0"), &format!("limits.{key}"));
        }
        let ok = Config::from_toml(
            "[limits]\nidle_timeout_secs = 30",
            None,
            &Overrides::default(),
        )
        .unwrap();
        assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
        let open = Config::from_toml(
            "[metrics]\nlisten = \"0.0.0.0:9464\"",
            None,
            &Overrides::default(),
        )
        .unwrap();
        assert!(
            open.warnings.iter().any(|w| w.contains("`metrics.listen`")),
            "{:?}",
            open.warnings
        );
    }

    /// The full example in the operator guide (section 4.2) loads, and its
    /// values are the defaults it says they are.
    #[test]
    fn the_operator_guide_example_loads() {
        let guide = include_str!("../../../docs/OPERATOR.md");
        let start = guide.find("### 4.2").unwrap();
        let body = &guide[start..];
        let toml_start = body.find("```toml\n").unwrap() + "```toml\n".len();
        let toml_len = body[toml_start..].find("```").unwrap();
        let c = Config::from_toml(
            &body[toml_start..toml_start + toml_len],
            None,
            &Overrides::default(),
        )
        .unwrap();
        let d = Config::from_toml(
            "listen = \"0.0.0.0:4433\"\npublic_address = \"relay.interior.example:4433\"\nstate_dir = \"/var/lib/chappe\"",
            None,
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(format!("{:?}", c.limits), format!("{:?}", d.limits));
        assert_eq!((c.journal_mib, c.cache_mib), (d.journal_mib, d.cache_mib));
        assert_eq!(c.store_config().cache_bytes, 1 << 30);
        let e = Config::from_toml("[store]\ncache_mib = 8", None, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.cache_mib"), "{e}");
    }

    /// The packaged /etc/chappe/relay.toml loads, and with every commented
    /// key switched on it still says exactly the defaults: the file an
    /// operator edits cannot drift from what the relay does.
    #[test]
    fn the_shipped_conffile_shows_the_defaults() {
        let shipped = include_str!("../relay.toml");
        let c = Config::from_toml(shipped, None, &Overrides::default()).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/chappe"));
        let uncommented: String = shipped
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let all = Config::from_toml(&uncommented, None, &Overrides::default()).unwrap();
        let defaults = Config::from_toml("", None, &Overrides::default()).unwrap();
        assert!(uncommented.contains("\nrotation_overlap_secs = "));
        assert_eq!(
            format!("{:?}", all.limits),
            format!("{:?}", defaults.limits)
        );
        assert_eq!(
            (
                all.listen,
                all.metrics_listen,
                all.journal_mib,
                all.cache_mib
            ),
            (
                defaults.listen,
                defaults.metrics_listen,
                defaults.journal_mib,
                defaults.cache_mib
            )
        );
        assert_eq!(all.public_address, defaults.public_address);
        assert_eq!(all.rotation_overlap, defaults.rotation_overlap);
        assert_eq!(all.log_level, defaults.log_level);
    }
}
