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

/// The client TLS/QUIC configuration for one relay.
pub fn client_config(
    desc: &Descriptor,
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

/// Opens a QUIC connection on a fresh endpoint, with the given TLS policy
/// (tests pass a classical-only provider to check that the relay refuses it).
pub async fn connect_with(
    desc: &Descriptor,
    provider: Arc<CryptoProvider>,
) -> Result<(quinn::Endpoint, quinn::Connection), ClientError> {
    let addr = resolve(desc)?;
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(ClientError::Io)?;
    endpoint.set_default_client_config(client_config(desc, provider)?);
    let name = desc.host.trim_start_matches('[').trim_end_matches(']');
    let name = if name.parse::<std::net::IpAddr>().is_ok() {
        name
    } else {
        chappe_proto::tls::DEFAULT_SERVER_NAME
    };
    let conn = endpoint.connect(addr, name)?.await?;
    Ok((endpoint, conn))
}

pub async fn connect(
    desc: &Descriptor,
) -> Result<(quinn::Endpoint, quinn::Connection), ClientError> {
    connect_with(desc, chappe_proto::tls::crypto_provider()).await
}
