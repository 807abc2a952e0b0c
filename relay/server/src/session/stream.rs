//! Reading handshake messages and frames off the session stream, and the
//! writer task that owns its send half.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chappe_proto::frame::{Batch, Frame};
use chappe_proto::inbound::Inbound;
use chappe_proto::noise::wire;
use quinn::{RecvStream, SendStream};
use tokio::sync::Notify;

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

/// Frames queued for the peer; the writer task takes everything queued at
/// once and writes it in one stream write.
///
/// A plain queue under a lock with two bells (one for the writer, one for
/// a producer waiting for room), not a tokio channel: a channel holds its
/// first block of slots for the session's whole life, and most sessions
/// are idle. Pushing never waits: a session that waited here for a slow
/// peer would stop reading that peer's frames, and a peer that waits to
/// write before it reads again would then wait for ever. Dropping the
/// outbox lets the writer finish the stream once it has written what is
/// queued.
pub struct Outbox(Arc<Queue>);

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    rung: Notify,
    room: Notify,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    /// The outbox was dropped: nothing more will come.
    done: bool,
    /// The writer stopped (the stream failed).
    gone: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Outbox {
    /// Queues a frame, whatever is queued already; `Err` once the writer
    /// is gone (the stream failed). Never waits, so the session keeps
    /// reading while the peer is slow to read: the session bounds what it
    /// queues itself (deliveries while [`Outbox::has_room`], one answer
    /// per request it reads).
    pub fn push(&self, frame: Frame) -> Result<(), WriterGone> {
        let mut s = self.0.lock();
        if s.gone {
            return Err(WriterGone);
        }
        s.frames.push_back(frame);
        drop(s);
        self.0.rung.notify_one();
        Ok(())
    }

    /// Frames queued and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.0.lock().frames.len()
    }

    /// Fewer than [`OUTBOX_DEPTH`] frames are queued.
    pub fn has_room(&self) -> bool {
        self.queued() < OUTBOX_DEPTH
    }

    /// Resolves once the writer has taken frames (or stopped) since the
    /// last call; a producer that found no room waits here.
    pub async fn room(&self) {
        self.0.room.notified().await;
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.0.lock().done = true;
        self.0.rung.notify_one();
    }
}

#[derive(Debug)]
pub struct WriterGone;

/// Frames that may wait in an outbox before a session stops queueing
/// deliveries.
pub const OUTBOX_DEPTH: usize = 512;
/// How long a finished stream may take to be acknowledged by the peer.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub fn spawn_writer(mut send: SendStream) -> (Outbox, tokio::task::JoinHandle<()>) {
    let queue = Arc::new(Queue::default());
    let q = queue.clone();
    let task = tokio::spawn(async move {
        // Grown on first use and let go after each write: most sessions are
        // idle, and an idle one should cost as little as a bare QUIC
        // connection.
        let mut batch = Batch::default();
        loop {
            let (frames, done) = {
                let mut s = q.lock();
                (std::mem::take(&mut s.frames), s.done)
            };
            if frames.is_empty() {
                if done {
                    break;
                }
                q.rung.notified().await;
                continue;
            }
            q.room.notify_one();
            for f in &frames {
                batch.push(f);
            }
            drop(frames);
            if send.write_all_chunks(batch.chunks()).await.is_err() {
                q.lock().gone = true;
                q.room.notify_one();
                return;
            }
            batch.clear();
        }
        finish(send).await;
    });
    (Outbox(queue), task)
}

/// Finishes the stream, then waits until the peer has everything (or gave
/// up), so closing the connection right after cannot drop the last frames.
pub async fn finish(mut send: SendStream) {
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.stopped()).await;
    }
}
