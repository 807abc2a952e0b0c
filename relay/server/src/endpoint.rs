//! The QUIC endpoint: TLS policy, transport limits, the accept loop.
//!
//! No 0-RTT (replayable), no session tickets and no NEW_TOKEN frames (each
//! would let the relay link an anonymous sender's connections to one another
//! or to its owner session).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::server::NoServerSessionStorage;
use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::keys::Keys;
use crate::relay::Relay;
use crate::session;

pub fn server_config(keys: &Keys, limits: &Limits) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(chappe_proto::tls::crypto_provider())
        .with_protocol_versions(chappe_proto::tls::VERSIONS)
        .context("TLS 1.3 with the aws-lc-rs provider")?
        .with_no_client_auth()
        .with_single_cert(vec![keys.cert.clone()], keys.tls_key.clone_key())
        .context("loading the TLS certificate and key")?;
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

/// Binds the endpoint, speaking QUIC version 1 only (quinn would also accept
/// the pre-RFC drafts, which nothing of ours needs).
pub fn bind(addr: SocketAddr, cfg: quinn::ServerConfig) -> anyhow::Result<quinn::Endpoint> {
    let socket =
        std::net::UdpSocket::bind(addr).with_context(|| format!("binding QUIC on {addr} (udp)"))?;
    let mut endpoint = quinn::EndpointConfig::default();
    endpoint.supported_versions(vec![QUIC_V1]);
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    quinn::Endpoint::new(endpoint, Some(cfg), socket, runtime)
        .with_context(|| format!("starting QUIC on {addr} (udp)"))
}

/// RFC 9000.
const QUIC_V1: u32 = 1;

/// Accepts connections until shutdown; returns once every session ended or
/// the grace period ran out.
pub async fn serve(endpoint: quinn::Endpoint, relay: Arc<Relay>) {
    let max = relay.limits.max_connections;
    let slots = Arc::new(Semaphore::new(usize::try_from(max).unwrap_or(20_000)));
    let mut shutdown = relay.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.wait() => break,
        };
        let Some(incoming) = incoming else { break };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("connection refused: limits.max_connections ({max}) reached");
            incoming.refuse();
            continue;
        };
        // The session future itself is the task: a wrapping `async move`
        // block would keep its own copy of the 384-byte `Incoming` next to
        // the one inside, for the whole life of every connection. Boxed, so
        // the session future does not reserve it either. The accept itself
        // starts in the task, so this loop only hands connections out.
        tokio::spawn(session::run(relay.clone(), Box::new(incoming), permit));
    }
    // Sessions see the same shutdown signal: they stop reading, answer what
    // is in flight, and close with `shutting down`.
    let _ = tokio::time::timeout(relay.limits.shutdown_grace, slots.acquire_many(max)).await;
    endpoint.close(
        chappe_proto::CloseCode::ShuttingDown.to_u32().into(),
        chappe_proto::CloseCode::ShuttingDown.reason().as_bytes(),
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
}
