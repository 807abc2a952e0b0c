//! The result codes a relay answers requests with, and the QUIC close codes.
//!
//! Codes are part of the wire format: never renumber, only append.

use std::fmt;

/// Outcome of one request (a send, or an owner's mailbox operation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ResultCode {
    Ok = 0,
    /// No mailbox has that send id (or receive id, for its owner).
    UnknownMailbox = 1,
    /// The delivery token is not among the mailbox's current tokens.
    BadToken = 2,
    /// The mailbox holds its maximum number of envelopes or bytes.
    QuotaExceeded = 3,
    /// The ciphertext length is not one of the bucket sizes.
    BadSize = 4,
    /// The ciphertext is longer than the largest bucket.
    TooLarge = 5,
    /// The relay's disk is at its watermark; retry later or elsewhere.
    RelayFull = 6,
    /// The client sent too much too fast; retry after backing off.
    RateLimited = 7,
    /// The owner already holds the maximum number of mailboxes.
    TooManyMailboxes = 8,
    /// A well-formed request with a value out of range (e.g. no tokens).
    BadRequest = 9,
    /// The relay is shutting down; nothing was stored, retry.
    ShuttingDown = 10,
    /// The relay failed; nothing was stored, retry.
    Internal = 11,
}

impl ResultCode {
    pub const ALL: [ResultCode; 12] = [
        ResultCode::Ok,
        ResultCode::UnknownMailbox,
        ResultCode::BadToken,
        ResultCode::QuotaExceeded,
        ResultCode::BadSize,
        ResultCode::TooLarge,
        ResultCode::RelayFull,
        ResultCode::RateLimited,
        ResultCode::TooManyMailboxes,
        ResultCode::BadRequest,
        ResultCode::ShuttingDown,
        ResultCode::Internal,
    ];

    pub fn to_u16(self) -> u16 {
        self as u16
    }

    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.to_u16() == v)
    }

    /// Stable lower-case name, used in metrics labels and CLI output.
    pub fn name(self) -> &'static str {
        match self {
            ResultCode::Ok => "ok",
            ResultCode::UnknownMailbox => "unknown_mailbox",
            ResultCode::BadToken => "bad_token",
            ResultCode::QuotaExceeded => "quota_exceeded",
            ResultCode::BadSize => "bad_size",
            ResultCode::TooLarge => "too_large",
            ResultCode::RelayFull => "relay_full",
            ResultCode::RateLimited => "rate_limited",
            ResultCode::TooManyMailboxes => "too_many_mailboxes",
            ResultCode::BadRequest => "bad_request",
            ResultCode::ShuttingDown => "shutting_down",
            ResultCode::Internal => "internal",
        }
    }

    /// Whether the same request may succeed later unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ResultCode::RelayFull
                | ResultCode::RateLimited
                | ResultCode::ShuttingDown
                | ResultCode::Internal
                | ResultCode::QuotaExceeded
        )
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.to_u16())
    }
}

/// QUIC application close codes (the `error_code` of CONNECTION_CLOSE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly close by either side.
    Normal = 0,
    /// The peer sent bytes that do not parse as the protocol (a bad frame,
    /// a frame not allowed in this session, an oversize length).
    ProtocolViolation = 1,
    /// The Noise handshake failed (wrong key, replayed message, bad binding).
    HandshakeFailed = 2,
    /// The relay is shutting down; reconnect later.
    ShuttingDown = 3,
    /// The relay hit an internal error serving this connection.
    Internal = 4,
    /// The peer does not speak a protocol version this relay supports.
    UnsupportedVersion = 5,
    /// The peer was too slow or sent too much (rate or buffer limits).
    Overloaded = 6,
}

impl CloseCode {
    pub fn to_u32(self) -> u32 {
        self as u32
    }

    pub fn from_u32(v: u32) -> Option<Self> {
        [
            CloseCode::Normal,
            CloseCode::ProtocolViolation,
            CloseCode::HandshakeFailed,
            CloseCode::ShuttingDown,
            CloseCode::Internal,
            CloseCode::UnsupportedVersion,
            CloseCode::Overloaded,
        ]
        .into_iter()
        .find(|c| c.to_u32() == v)
    }

    /// Reason phrase sent in CONNECTION_CLOSE.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::ProtocolViolation => "protocol violation",
            CloseCode::HandshakeFailed => "handshake failed",
            CloseCode::ShuttingDown => "shutting down",
            CloseCode::Internal => "internal error",
            CloseCode::UnsupportedVersion => "unsupported version",
            CloseCode::Overloaded => "overloaded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in ResultCode::ALL {
            assert_eq!(ResultCode::from_u16(c.to_u16()), Some(c));
        }
        assert_eq!(ResultCode::from_u16(999), None);
        for v in 0..7 {
            assert_eq!(CloseCode::from_u32(v).map(|c| c.to_u32()), Some(v));
        }
    }
}
