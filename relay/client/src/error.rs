//! The client library's error type: one enum, since callers mostly report
//! it, and the variants that carry a relay result code let them react
//! (retry, ask for a new card, give up).

use chappe_proto::frame::FrameError;
use chappe_proto::inbound::StartError;
use chappe_proto::noise::HandshakeError;
use chappe_proto::{CloseCode, ResultCode};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    #[error("the relay descriptor has no TLS fingerprint to pin")]
    NoFingerprint,
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("QUIC configuration: {0}")]
    Quic(#[from] quinn::ConfigError),
    #[error("local socket: {0}")]
    Io(std::io::Error),
    #[error("connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("Noise handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("relay sent a bad handshake message: {0}")]
    Start(#[from] StartError),
    #[error("relay sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("relay sent an unexpected frame type {0:#04x}")]
    Unexpected(u8),
    #[error("the relay refused: {0}")]
    Refused(ResultCode),
    #[error("the relay closed the connection: {0:?}")]
    Closed(Option<CloseCode>),
}

impl ClientError {
    /// The relay's result code, when this is a refusal.
    pub fn code(&self) -> Option<ResultCode> {
        match self {
            ClientError::Refused(c) => Some(*c),
            _ => None,
        }
    }
}
