//! The QUIC endpoint: TLS policy, transport limits, the accept loop.
//!
//! No 0-RTT (replayable), no session tickets and no NEW_TOKEN frames (each
//! would let the relay link an anonymous sender's connections to one another
//! or to its owner session).
//!
//! Memory a peer can make the relay hold is sized here: no DATAGRAM frames
//! (the protocol has none, and quinn would buffer 1.25 MB of them per
//! connection for a reader that never comes), and receive windows sized
//! for the largest frame rather than quinn's bulk-transfer defaults.
//!
//! Admission, before any per-connection state: QUIC Retry while the
//! relay-wide handshake rate is high, a handshake rate and a connection
//! count per source address, and `max_connections`. Refusals are counted
//! and summed up in one log line every few seconds, never logged one by
//! one (a flood would become a log flood).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::Notify;

use crate::config::Limits;
use crate::keys::KeyRing;
use crate::limits::{Buckets, Counts, Held, REFUSAL_LOG_EVERY, Refusals, RetrySwitch, Turned};
use crate::relay::{Live, Relay};
use crate::service::ProbeRequests;
use crate::session;

/// Presents the certificate of the key generation the client pins (named
/// by its server name, see [`KeyRing::select`]); read at every handshake,
/// so a reload that rotates keys applies to the next connection.
struct PinnedCert(Arc<Live<KeyRing>>);

impl std::fmt::Debug for PinnedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinnedCert")
    }
}

impl ResolvesServerCert for PinnedCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get().select(hello.server_name()).certified.clone())
    }
}

pub fn server_config(
    keys: Arc<Live<KeyRing>>,
    limits: &Limits,
) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(chappe_proto::tls::crypto_provider())
        .with_protocol_versions(chappe_proto::tls::VERSIONS)
        .context("TLS 1.3 with the aws-lc-rs provider")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(PinnedCert(keys)));
    tls.alpn_protocols = vec![chappe_proto::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(NoServerSessionStorage {});
    let crypto = QuicServerConfig::try_from(tls).context("QUIC TLS configuration")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(1u8.into())
        .max_concurrent_uni_streams(0u8.into())
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0)
        .stream_receive_window(RECEIVE_WINDOW.into())
        .receive_window(RECEIVE_WINDOW.into())
        .send_window(SEND_WINDOW)
        .max_idle_timeout(Some(
            limits
                .idle_timeout
                .try_into()
                .context("limits.idle_timeout_secs")?,
        ));
    cfg.transport_config(Arc::new(transport));
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.sent(0);
    cfg.validation_token_config(tokens);
    Ok(cfg)
}

/// Binds the endpoint on `addr`, or on the socket systemd passed
/// (`inherited`), speaking QUIC version 1 only (quinn would also accept
/// the pre-RFC drafts, which nothing of ours needs).
pub fn bind(
    addr: SocketAddr,
    inherited: Option<UdpSocket>,
    cfg: quinn::ServerConfig,
) -> anyhow::Result<quinn::Endpoint> {
    let socket = match inherited {
        Some(s) => s,
        None => UdpSocket::bind(addr).with_context(|| format!("binding QUIC on {addr} (udp)"))?,
    };
    let mut endpoint = quinn::EndpointConfig::default();
    endpoint.supported_versions(vec![QUIC_V1]);
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    quinn::Endpoint::new(endpoint, Some(cfg), socket, runtime)
        .with_context(|| format!("starting QUIC on {addr} (udp)"))
}

/// RFC 9000.
const QUIC_V1: u32 = 1;

/// What a peer may send ahead of the relay's reading, per stream and per
/// connection (the one stream): four of the largest frame (64 KiB
/// envelope plus header), so a sender pipelines full-size envelopes
/// without waiting a round trip for each, while 20,000 connections that
/// stop being read hold at most 5 GiB between them, not quinn's
/// 1.25 MB per stream and unbounded per connection.
pub(crate) const RECEIVE_WINDOW: u32 = 4 * chappe_proto::frame::MAX_FRAME_LEN as u32;
/// What the relay keeps sent and unacknowledged towards one peer: eight
/// frames, enough for an owner's catch-up to stream at full speed, against
/// quinn's default of 10 MB per connection.
const SEND_WINDOW: u64 = 8 * chappe_proto::frame::MAX_FRAME_LEN as u64;
/// Source addresses whose handshake rate is tracked at once (about 5 MiB).
const SOURCE_KEYS: usize = 65_536;

/// Connections being served, against `limits.max_connections` and
/// `limits.max_connections_per_source` as they are at each accept (a
/// reload may raise or lower them).
#[derive(Default)]
pub struct Slots {
    taken: AtomicU32,
    freed: Notify,
    by_source: Arc<Counts<IpAddr>>,
}

/// One connection's place; given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    _source: Held<IpAddr>,
}

impl Slots {
    /// A place for a connection from `source`, or the limit that refused.
    fn try_take(self: &Arc<Self>, source: IpAddr, limits: &Limits) -> Result<Slot, &'static str> {
        let held = self
            .by_source
            .try_hold(source, limits.max_connections_per_source)
            .ok_or("max_connections_per_source")?;
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limits.max_connections).then_some(n + 1)
            })
            .map_err(|_| "max_connections")?;
        Ok(Slot {
            slots: self.clone(),
            _source: held,
        })
    }

    async fn all_free(&self) {
        loop {
            let freed = self.freed.notified();
            if self.taken.load(Ordering::Acquire) == 0 {
                return;
            }
            freed.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.taken.fetch_sub(1, Ordering::AcqRel);
        self.slots.freed.notify_waiters();
    }
}

/// What the accept loop decides for one incoming connection.
enum Admit {
    Serve(Slot),
    /// Ask it to prove its address first (stateless).
    Retry,
    /// Refused by the limit named (a config key under `[limits]`).
    Refuse(&'static str),
}

/// The accept loop's admission state; see the module doc.
struct Gate {
    slots: Arc<Slots>,
    handshakes: Buckets<IpAddr>,
    retry: RetrySwitch,
    refusals: Refusals,
    summed_up: Instant,
}

impl Gate {
    fn new(now: Instant) -> Self {
        Gate {
            slots: Arc::new(Slots::default()),
            handshakes: Buckets::new(SOURCE_KEYS),
            retry: RetrySwitch::new(now),
            refusals: Refusals::default(),
            summed_up: now,
        }
    }

    fn admit(&mut self, relay: &Relay, incoming: &quinn::Incoming, now: Instant) -> Admit {
        let limits = relay.limits();
        // A validated address has answered a Retry: it is the sender's own,
        // and the second leg of an attempt already counted.
        let validated = incoming.remote_address_validated();
        let per_sec = limits.retry_above_handshakes_per_sec;
        let turned = if validated {
            self.retry.tick(now, per_sec)
        } else {
            self.retry.observe(now, per_sec)
        };
        self.show(relay, turned, &limits);
        if self.retry.is_on() && !validated {
            return Admit::Retry;
        }
        // Only attempts that get a handshake are charged, so answering a
        // Retry does not cost a client twice.
        let source = source(incoming.remote_address().ip());
        let rate = limits.handshakes_per_source_per_sec;
        if !self.handshakes.take(source, now, rate, rate) {
            return Admit::Refuse("handshakes_per_source_per_sec");
        }
        match self.slots.try_take(source, &limits) {
            Ok(slot) => Admit::Serve(slot),
            Err(reason) => Admit::Refuse(reason),
        }
    }

    /// Called a few times a second: the Retry switch goes off after a
    /// flood even when nothing arrives, and refusals are summed up.
    fn tick(&mut self, relay: &Relay, now: Instant) {
        let limits = relay.limits();
        let turned = self.retry.tick(now, limits.retry_above_handshakes_per_sec);
        self.show(relay, turned, &limits);
        if now.saturating_duration_since(self.summed_up) >= REFUSAL_LOG_EVERY {
            self.summed_up = now;
            if let Some(s) = self.refusals.summary() {
                tracing::warn!(
                    "connections refused in the last {} s: {s} (chappe_connections_refused_total)",
                    REFUSAL_LOG_EVERY.as_secs()
                );
            }
        }
    }

    fn show(&self, relay: &Relay, turned: Turned, limits: &Limits) {
        let per_sec = limits.retry_above_handshakes_per_sec;
        match turned {
            Turned::On => {
                relay.metrics.quic_retry_active.set(1);
                tracing::warn!(
                    "more than {per_sec} connections a second (limits.retry_above_handshakes_per_sec): new connections must answer a QUIC Retry"
                );
            }
            Turned::Off => {
                relay.metrics.quic_retry_active.set(0);
                tracing::info!("connection rate back below {per_sec}/s: QUIC Retry off");
            }
            Turned::Same => {}
        }
    }
}

/// What the per-source limits count as one source: an IPv4 address, or an
/// IPv6 /64 (one host or LAN is usually given a whole /64, so counting
/// single IPv6 addresses would give one attacker 2⁶⁴ allowances).
fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// How often the accept loop looks at its clocks with nothing arriving.
const TICK: Duration = Duration::from_millis(250);

/// Accepts connections until shutdown; returns once every session ended or
/// the grace period ran out. Between connections it answers the
/// watchdog's probes, which shows that it turns over.
pub async fn serve(endpoint: quinn::Endpoint, relay: Arc<Relay>, mut probes: ProbeRequests) {
    let mut gate = Gate::new(Instant::now());
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = relay.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            Some(answer) = probes.recv() => {
                let _ = answer.send(());
                continue;
            }
            _ = ticks.tick() => {
                gate.tick(&relay, Instant::now());
                continue;
            }
            _ = shutdown.wait() => break,
        };
        let Some(incoming) = incoming else { break };
        match gate.admit(&relay, &incoming, Instant::now()) {
            // The session future itself is the task: a wrapping `async
            // move` block would keep its own copy of the 384-byte
            // `Incoming` next to the one inside, for the whole life of
            // every connection. Boxed, so the session future does not
            // reserve it either. The accept itself starts in the task, so
            // this loop only hands connections out.
            Admit::Serve(slot) => {
                tokio::spawn(session::run(relay.clone(), Box::new(incoming), slot));
            }
            Admit::Retry => {
                relay.metrics.quic_retries_total.inc();
                // Only refused for an address already validated, which
                // `admit` never retries.
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
            }
            Admit::Refuse(reason) => {
                relay
                    .metrics
                    .connections_refused_total
                    .with_label_values(&[reason])
                    .inc();
                gate.refusals.note(reason);
                incoming.refuse();
            }
        }
    }
    let slots = gate.slots;
    // Sessions see the same shutdown signal: they stop reading, answer what
    // is in flight, and close with `shutting down`.
    let _ = tokio::time::timeout(relay.limits().shutdown_grace, slots.all_free()).await;
    endpoint.close(
        chappe_proto::CloseCode::ShuttingDown.to_u32().into(),
        chappe_proto::CloseCode::ShuttingDown.reason().as_bytes(),
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_64() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(source(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source(a), source(b));
        assert_ne!(source(a), source(c));
        assert_eq!(source(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }
}
