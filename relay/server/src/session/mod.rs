//! One QUIC connection: TLS (done by quinn), then the Noise handshake on the
//! first bidirectional stream, then an owner or a sender session.
//!
//! - [`stream`]: frame reader and writer task over the session stream.
//! - [`owner`]: the mailbox owner session (XK): mailbox management, live
//!   push and catch-up from the store, acknowledgements.
//! - [`sender`]: the anonymous sender session (NK): sends, answered once
//!   durable.
//!
//! Every way a peer can misbehave ends here as a [`SessionError`], which
//! decides the QUIC close code; nothing a peer sends can panic the relay.

pub mod owner;
pub mod sender;
pub mod stream;

use std::sync::Arc;

use chappe_proto::CloseCode;
use chappe_proto::frame::FrameError;
use chappe_proto::inbound::StartError;
use chappe_proto::noise::{
    EXPORTER_LABEL, EXPORTER_LEN, HandshakeError, Hello, Mode, OwnerResponder, SenderResponder,
    wire,
};
use thiserror::Error;
use tokio::time::timeout_at;

use crate::relay::Relay;
use stream::FrameReader;

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("stream start: {0}")]
    Start(#[from] StartError),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("frame type {0:#04x} is not allowed in this session")]
    WrongFrame(u8),
    #[error("stream ended inside a message")]
    Truncated,
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("TLS exporter unavailable")]
    Exporter,
    #[error("relay shutting down")]
    ShuttingDown,
    #[error("the owner key holds limits.max_sessions_per_owner sessions already")]
    OwnerSessions,
    #[error("no send for limits.sender_idle_secs")]
    SenderIdle,
}

impl SessionError {
    fn close_code(&self) -> CloseCode {
        match self {
            SessionError::Handshake(HandshakeError::UnsupportedVersion(_)) => {
                CloseCode::UnsupportedVersion
            }
            SessionError::Handshake(_)
            | SessionError::HandshakeTimeout
            | SessionError::Start(_) => CloseCode::HandshakeFailed,
            SessionError::Frame(_) | SessionError::WrongFrame(_) | SessionError::Truncated => {
                CloseCode::ProtocolViolation
            }
            SessionError::ShuttingDown => CloseCode::ShuttingDown,
            SessionError::OwnerSessions => CloseCode::Overloaded,
            SessionError::SenderIdle => CloseCode::Normal,
            SessionError::Read(_) | SessionError::Write(_) | SessionError::Connection(_) => {
                CloseCode::Normal
            }
            SessionError::Exporter => CloseCode::Internal,
        }
    }

    /// Label for `chappe_protocol_errors_total`, if this is the peer's fault.
    fn violation_kind(&self) -> Option<&'static str> {
        match self {
            SessionError::Frame(_) => Some("bad_frame"),
            SessionError::WrongFrame(_) => Some("wrong_frame"),
            SessionError::Truncated => Some("truncated"),
            SessionError::Start(_) => Some("bad_start"),
            _ => None,
        }
    }
}

/// Serves one incoming connection to its end; `_slot` is its place under
/// `limits.max_connections`, given back when the session is over.
///
/// `limits.handshake_timeout_secs` runs from the first packet to the end
/// of the Noise handshake: QUIC and TLS, then Noise, share one deadline,
/// so a peer that stalls either holds its slot no longer than that.
pub async fn run(relay: Arc<Relay>, incoming: Box<quinn::Incoming>, _slot: crate::endpoint::Slot) {
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::from_std(started) + relay.limits().handshake_timeout;
    let conn = match timeout_at(deadline, *incoming).await {
        Ok(Ok(c)) => c,
        Err(_) => {
            tracing::debug!("QUIC/TLS handshake timed out");
            relay
                .metrics
                .handshakes_total
                .with_label_values(&["tls", "failed"])
                .inc();
            return;
        }
        Ok(Err(e)) => {
            // Includes a client offering only classical key exchange.
            tracing::debug!(error = %e, "QUIC/TLS handshake failed");
            relay
                .metrics
                .handshakes_total
                .with_label_values(&["tls", "failed"])
                .inc();
            return;
        }
    };
    relay.metrics.connections_total.inc();
    let result = serve(&relay, &conn, started, deadline).await;
    let code = match &result {
        Ok(()) => CloseCode::Normal,
        Err(e) => {
            if let Some(kind) = e.violation_kind() {
                relay
                    .metrics
                    .protocol_errors_total
                    .with_label_values(&[kind])
                    .inc();
            }
            tracing::debug!(error = %e, "session ended");
            e.close_code()
        }
    };
    conn.close(code.to_u32().into(), code.reason().as_bytes());
}

async fn serve(
    relay: &Arc<Relay>,
    conn: &quinn::Connection,
    started: std::time::Instant,
    deadline: tokio::time::Instant,
) -> Result<(), SessionError> {
    let mut exporter = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| SessionError::Exporter)?;
    // Boxed: the handshake's state (Noise keys, buffers) is needed once,
    // and inline it would size every session's future for its whole life.
    let hs = timeout_at(deadline, Box::pin(handshake(relay, conn, &exporter)));
    let (mode, send, reader, owner) = match hs.await {
        // A stream that ends before the handshake is done is a failed
        // handshake, not a bad frame.
        Ok(Err(SessionError::Truncated)) => Err(SessionError::Handshake(HandshakeError::TooShort)),
        Ok(r) => r,
        Err(_) => Err(SessionError::HandshakeTimeout),
    }
    .inspect_err(|e| {
        relay
            .metrics
            .handshakes_total
            .with_label_values(&["noise", "failed"])
            .inc();
        tracing::debug!(error = %e, "Noise handshake failed");
    })?;
    let label = match mode {
        Mode::Owner => "owner",
        Mode::Sender => "sender",
    };
    relay
        .metrics
        .handshakes_total
        .with_label_values(&[label, "ok"])
        .inc();
    relay
        .metrics
        .handshake_duration_seconds
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    // Held for the session's life: one owner key cannot take every slot.
    let _held = match owner {
        Some(key) => {
            let max = relay.limits().max_sessions_per_owner;
            let held = relay.owner_sessions.try_hold(key, max);
            if held.is_none() {
                relay
                    .metrics
                    .connections_refused_total
                    .with_label_values(&["max_sessions_per_owner"])
                    .inc();
                return Err(SessionError::OwnerSessions);
            }
            held
        }
        None => None,
    };
    let active = relay.metrics.connections_active.with_label_values(&[label]);
    active.inc();
    let result = match owner {
        Some(owner) => owner::run(relay, send, reader, owner).await,
        None => sender::run(relay, send, reader).await,
    };
    active.dec();
    result
}

type Handshaken = (
    Mode,
    quinn::SendStream,
    FrameReader,
    Option<chappe_proto::OwnerKey>,
);

async fn handshake(
    relay: &Relay,
    conn: &quinn::Connection,
    exporter: &[u8; EXPORTER_LEN],
) -> Result<Handshaken, SessionError> {
    let (mut send, recv) = conn.accept_bi().await?;
    let mut reader = FrameReader::new(recv);
    // The Noise key of the generation whose certificate TLS presented.
    let keys = relay.keys();
    let noise = &keys.select(server_name(conn).as_deref()).noise;
    let mode = reader.read_mode().await?;
    let msg1 = reader.read_handshake().await?;
    match mode {
        Mode::Owner => {
            let resp = OwnerResponder::read_request(noise, exporter, &msg1)?;
            let (wait, msg2) = resp.respond(&Hello::default())?;
            send.write_all(&wire::encode_message(&msg2)).await?;
            let msg3 = reader.read_handshake().await?;
            let (owner, _est) = wait.read_final(&msg3)?;
            Ok((mode, send, reader, Some(owner)))
        }
        Mode::Sender => {
            let resp = SenderResponder::read_request(noise, exporter, &msg1)?;
            let (msg2, _est) = resp.respond(&Hello::default())?;
            send.write_all(&wire::encode_message(&msg2)).await?;
            Ok((mode, send, reader, None))
        }
    }
}

/// The server name (SNI) the client sent, which names the key generation
/// it pins.
fn server_name(conn: &quinn::Connection) -> Option<String> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .server_name
}
