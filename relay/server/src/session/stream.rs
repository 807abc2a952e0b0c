//! Reading handshake messages and frames off the session stream, and the
//! writer task that owns its send half.

use bytes::Bytes;
use chappe_proto::frame::{Batch, Frame};
use chappe_proto::inbound::Inbound;
use chappe_proto::noise::wire;
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;

use super::SessionError;

/// Largest chunk taken from QUIC at once.
const READ_CHUNK: usize = 64 * 1024;

pub struct FrameReader {
    recv: RecvStream,
    inbound: Inbound,
}

impl FrameReader {
    pub fn new(recv: RecvStream) -> Self {
        FrameReader {
            recv,
            inbound: Inbound::new(),
        }
    }

    /// Reads one more chunk; `false` at the end of the stream.
    async fn read_more(&mut self) -> Result<bool, SessionError> {
        self.inbound.release_if_empty();
        match self.recv.read_chunk(READ_CHUNK, true).await? {
            Some(chunk) => {
                self.inbound.extend(&chunk.bytes);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub async fn read_mode(&mut self) -> Result<wire::Mode, SessionError> {
        loop {
            if let Some(m) = self.inbound.take_mode()? {
                return Ok(m);
            }
            if !self.read_more().await? {
                return Err(SessionError::Truncated);
            }
        }
    }

    pub async fn read_handshake(&mut self) -> Result<Bytes, SessionError> {
        loop {
            if let Some(m) = self.inbound.take_handshake()? {
                return Ok(m);
            }
            if !self.read_more().await? {
                return Err(SessionError::Truncated);
            }
        }
    }

    /// The next frame, or `None` when the peer finished the stream cleanly
    /// between frames.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, SessionError> {
        loop {
            if let Some(f) = self.inbound.take_frame()? {
                return Ok(Some(f));
            }
            if !self.read_more().await? {
                return if self.inbound.is_empty() {
                    Ok(None)
                } else {
                    Err(SessionError::Truncated)
                };
            }
        }
    }
}

/// Frames queued for the peer; the writer task drains them in batches so
/// many small results cost one stream write.
///
/// Frames travel boxed: a tokio channel allocates its first block of 32
/// slots up front, and 32 pointers cost an idle session 256 bytes where 32
/// inline frames would cost over 3 KiB.
#[derive(Clone)]
pub struct Outbox(mpsc::Sender<Box<Frame>>);

impl Outbox {
    /// Queues a frame; `Err` once the writer is gone (the stream failed).
    ///
    /// Almost always there is room, and then this never suspends. Only a
    /// full queue waits, in a boxed future: tokio's `send` future is close
    /// to 300 bytes, and every session future that can await a reply would
    /// otherwise carry that much for its whole life, idle or not.
    pub async fn send(&self, frame: Frame) -> Result<(), WriterGone> {
        match self.0.try_send(Box::new(frame)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(frame)) => {
                Box::pin(self.0.send(frame)).await.map_err(|_| WriterGone)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(WriterGone),
        }
    }
}

#[derive(Debug)]
pub struct WriterGone;

/// Frames that may wait in an outbox before producers block.
pub const OUTBOX_DEPTH: usize = 512;
/// How long a finished stream may take to be acknowledged by the peer.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Frames written per stream write.
const WRITE_BATCH: usize = 64;

pub fn spawn_writer(mut send: SendStream) -> (Outbox, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Box<Frame>>(OUTBOX_DEPTH);
    let task = tokio::spawn(async move {
        // Grown on first use and let go after each write: most sessions are
        // idle, and an idle one should cost as little as a bare QUIC
        // connection.
        let mut batch = Batch::default();
        while let Some(first) = rx.recv().await {
            batch.push(&first);
            while batch.frames() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(f) => batch.push(&f),
                    Err(_) => break,
                }
            }
            if send.write_all_chunks(batch.chunks()).await.is_err() {
                return;
            }
            batch.clear();
        }
        finish(send).await;
    });
    (Outbox(tx), task)
}

/// Finishes the stream, then waits until the peer has everything (or gave
/// up), so closing the connection right after cannot drop the last frames.
pub async fn finish(mut send: SendStream) {
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.stopped()).await;
    }
}
