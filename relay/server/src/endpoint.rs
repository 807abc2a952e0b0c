//! The QUIC endpoint: TLS policy, transport limits, the accept loop.
//!
//! No 0-RTT (replayable), no session tickets and no NEW_TOKEN frames (each
//! would let the relay link an anonymous sender's connections to one another
//! or to its owner session).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::Notify;

use crate::config::Limits;
use crate::keys::KeyRing;
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

/// Connections being served, against `limits.max_connections` as it is
/// at each accept (a reload may raise or lower it).
#[derive(Default)]
pub struct Slots {
    taken: AtomicU32,
    freed: Notify,
}

/// One connection's place; given back when dropped.
pub struct Slot(Arc<Slots>);

impl Slots {
    fn try_take(self: &Arc<Self>, max: u32) -> Option<Slot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
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
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

/// Accepts connections until shutdown; returns once every session ended or
/// the grace period ran out. Between connections it answers the
/// watchdog's probes, which shows that it turns over.
pub async fn serve(endpoint: quinn::Endpoint, relay: Arc<Relay>, mut probes: ProbeRequests) {
    let slots = Arc::new(Slots::default());
    let mut shutdown = relay.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            Some(answer) = probes.recv() => {
                let _ = answer.send(());
                continue;
            }
            _ = shutdown.wait() => break,
        };
        let Some(incoming) = incoming else { break };
        let max = relay.limits().max_connections;
        let Some(slot) = slots.try_take(max) else {
            relay
                .metrics
                .connections_refused_total
                .with_label_values(&["max_connections"])
                .inc();
            tracing::warn!("connection refused: limits.max_connections ({max}) reached");
            incoming.refuse();
            continue;
        };
        // The session future itself is the task: a wrapping `async move`
        // block would keep its own copy of the 384-byte `Incoming` next to
        // the one inside, for the whole life of every connection. Boxed, so
        // the session future does not reserve it either. The accept itself
        // starts in the task, so this loop only hands connections out.
        tokio::spawn(session::run(relay.clone(), Box::new(incoming), slot));
    }
    // Sessions see the same shutdown signal: they stop reading, answer what
    // is in flight, and close with `shutting down`.
    let _ = tokio::time::timeout(relay.limits().shutdown_grace, slots.all_free()).await;
    endpoint.close(
        chappe_proto::CloseCode::ShuttingDown.to_u32().into(),
        chappe_proto::CloseCode::ShuttingDown.reason().as_bytes(),
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
}
