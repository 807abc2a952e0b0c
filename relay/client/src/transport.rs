//! QUIC connections to a relay, with the certificate pinned by the
//! descriptor's fingerprint and the shared TLS policy (TLS 1.3, hybrid
//! post-quantum key exchange only).
//!
//! Every connection gets its own endpoint (a fresh UDP port), no session
//! resumption, no 0-RTT and no address-validation tokens: an anonymous send
//! must look, to the relay, like it came from nobody in particular.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use chappe_proto::descriptor::Descriptor;
use quinn::crypto::rustls::QuicClientConfig;
use quinn_proto::RandomConnectionIdGenerator;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ClientError;

/// Keep-alive for long-lived owner sessions, below the relay's idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Accepts exactly the certificate whose SHA-256 the descriptor pins, and
/// still checks the TLS 1.3 handshake signature made with its key.
#[derive(Debug)]
struct PinnedCert {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if bool::from(got.ct_eq(&self.fingerprint)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client TLS/QUIC configuration for one relay and one kind of session.
pub fn client_config(
    desc: &Descriptor,
    role: Role,
    provider: Arc<CryptoProvider>,
) -> Result<quinn::ClientConfig, ClientError> {
    let fingerprint = desc.tls_fingerprint.ok_or(ClientError::NoFingerprint)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(chappe_proto::tls::VERSIONS)
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert {
            fingerprint,
            provider,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![chappe_proto::ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.token_store(Arc::new(quinn::NoneTokenStore));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    if role == Role::Sender {
        transport.mtu_discovery_config(Some(sender_mtu_discovery()));
    }
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Resolves the descriptor's address (first result).
pub fn resolve(desc: &Descriptor) -> Result<SocketAddr, ClientError> {
    desc.address()
        .to_socket_addrs()
        .map_err(|e| ClientError::Resolve(desc.address(), e.to_string()))?
        .next()
        .ok_or_else(|| ClientError::Resolve(desc.address(), "no address".into()))
}

/// The session a connection will carry, which decides the largest datagram
/// its endpoint takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An owner session: the relay pushes envelopes of up to 64 KiB, in
    /// datagrams as large as the path carries.
    Owner,
    /// An anonymous sender: the relay only ever answers, in a few bytes.
    Sender,
}

/// The largest UDP payload a sender's endpoint accepts: QUIC's minimum.
/// Advertised as the `max_udp_payload_size` transport parameter, it caps
/// the relay's path MTU search towards this client at where it starts, so
/// the relay sends no probes (with their acknowledgements, 8 datagrams on
/// loopback) into a session that receives nothing large, and most sender
/// sessions carry one send. The sender's own search, for its uploads, is
/// bounded by what the relay accepts and is unchanged. It also sizes the
/// endpoint's receive buffer, which quinn zero-fills for every endpoint.
const SENDER_MAX_UDP_PAYLOAD: u16 = 1200;

/// The largest UDP payload of a 1500-byte Ethernet MTU under IPv6, and
/// quinn's upper bound for its path MTU search.
const ETHERNET_UDP_PAYLOAD: u16 = 1452;

/// A sender's own path MTU search, for its uploads: one probe, straight to
/// Ethernet's size, instead of quinn's binary search (four probes from
/// 1200, each acknowledged). Most sender sessions carry one envelope, sent
/// before a search of several round trips would end, so the probes were
/// most of what such a session sent after its handshake; one probe still
/// gives a long-lived sender (a bulk upload) full-size packets within a
/// round trip. A path that drops the probe stays at 1200 until quinn
/// searches again (every 10 minutes).
fn sender_mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(ETHERNET_UDP_PAYLOAD);
    // quinn probes the upper bound at once when the midpoint would change
    // the MTU by less than this.
    mtud.minimum_change(ETHERNET_UDP_PAYLOAD - SENDER_MAX_UDP_PAYLOAD);
    mtud
}

/// A client endpoint on a fresh UDP port.
///
/// A sender's endpoint carries one connection and is dropped with it, so it
/// names that connection with a zero-length connection ID (RFC 9000 §5.1):
/// it then issues the relay no spare IDs and lets the relay issue it one
/// instead of four (quinn's defaults, four each way, took a datagram of
/// their own in every sender session). Spare IDs let a connection move to a
/// new path without the two paths being linked; a one-off sender does not
/// move.
fn endpoint(bind: SocketAddr, role: Role) -> Result<quinn::Endpoint, ClientError> {
    let mut config = quinn::EndpointConfig::default();
    if role == Role::Sender {
        config
            .max_udp_payload_size(SENDER_MAX_UDP_PAYLOAD)?
            .cid_generator(|| Box::new(RandomConnectionIdGenerator::new(0)));
    }
    let socket = std::net::UdpSocket::bind(bind).map_err(ClientError::Io)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ClientError::Io(std::io::Error::other("no async runtime found")))?;
    quinn::Endpoint::new(config, None, socket, runtime).map_err(ClientError::Io)
}

/// Opens a QUIC connection on a fresh endpoint, with the given TLS policy
/// (tests pass a classical-only provider to check that the relay refuses it).
pub async fn connect_with(
    desc: &Descriptor,
    role: Role,
    provider: Arc<CryptoProvider>,
) -> Result<(quinn::Endpoint, quinn::Connection), ClientError> {
    let addr = resolve(desc)?;
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut endpoint = endpoint(bind, role)?;
    endpoint.set_default_client_config(client_config(desc, role, provider)?);
    // The pinned fingerprint's hint, never the real host name: a relay in
    // a key-rotation overlap presents the certificate this client pins.
    let name = match &desc.tls_fingerprint {
        Some(fp) => chappe_proto::tls::key_hint_name(fp),
        None => chappe_proto::tls::DEFAULT_SERVER_NAME.to_string(),
    };
    let conn = endpoint.connect(addr, &name)?.await?;
    Ok((endpoint, conn))
}

pub async fn connect(
    desc: &Descriptor,
    role: Role,
) -> Result<(quinn::Endpoint, quinn::Connection), ClientError> {
    connect_with(desc, role, chappe_proto::tls::crypto_provider()).await
}
