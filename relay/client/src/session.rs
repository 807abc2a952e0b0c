//! Sessions with a relay: the Noise handshake on the first stream, then two
//! background tasks: one routes the relay's frames to whoever waits for
//! them (a request's answer by its id, deliveries to a queue), the other
//! owns the stream's send half and writes every frame already queued in
//! one stream write, so that many requests in flight cost one write (and
//! one wake-up of the connection's driver) instead of one each.
//!
//! [`OwnerSession`] is the mailbox owner (Noise XK, authenticated by the
//! owner's static key); [`Sender`] is the anonymous sender (Noise NK, no
//! client key, its own endpoint and UDP port).
//!
//! `close` returns once the close frame has left: a program that exits
//! right after closing would otherwise take it down with its socket, and
//! the relay would keep the session (a connection slot, and an owner's
//! pushes) until its idle timeout, and hold its own shutdown on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chappe_proto::descriptor::Descriptor;
use chappe_proto::frame::{Batch, Frame, MAX_LIST, MAX_TOKENS, MailboxEntry};
use chappe_proto::inbound::Inbound;
use chappe_proto::noise::{
    EXPORTER_LABEL, EXPORTER_LEN, Hello, Keypair, Mode, OwnerInitiator, SenderInitiator, wire,
};
use chappe_proto::{CloseCode, DeliveryToken, ReceiveId, ResultCode, SendId};
use tokio::sync::{mpsc, oneshot};

use crate::error::ClientError;
use crate::transport;

/// Largest chunk read from QUIC at once.
const READ_CHUNK: usize = 64 * 1024;
/// Deliveries buffered before the reader stops reading (and QUIC flow
/// control slows the relay down).
const DELIVERY_QUEUE: usize = 1024;
/// Frames queued for the writer before senders wait.
const OUTBOX: usize = 256;
/// Frames written per stream write, at most.
const WRITE_BATCH: usize = 64;
/// How long an owner's close waits for the relay to acknowledge the last
/// frames (acks, which have no answer) before it closes anyway.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a close waits for its close frame to be sent.
const CLOSE_SENT_TIMEOUT: Duration = Duration::from_millis(250);
/// Times a close yields to the runtime, for quinn's connection driver to
/// send the close frame, before it polls on a timer. The driver is woken by
/// the close and usually sends within one yield; tokio's timer ticks in
/// whole milliseconds, which at once was most of the time a session that
/// is opened, used once and closed took.
const CLOSE_SENT_YIELDS: u32 = 64;

/// An envelope pushed by the relay to its mailbox owner.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub mailbox: ReceiveId,
    pub seq: u64,
    pub ciphertext: Bytes,
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Frame>>>>;

/// What the writer task is asked to do.
enum Out {
    Frame(Frame),
    /// Write what is queued, then end the stream as the [`Flush`] says.
    Finish(Flush),
}

/// Whether closing waits until the relay has acknowledged every frame.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// An owner's acks have no answer: without the wait, closing the
    /// connection can drop the last of them, and the relay delivers those
    /// envelopes again.
    UntilAcked,
    /// Every frame written was a request, answered (or to fail with the
    /// close): the relay learns nothing more from the end of the stream
    /// than from the close, so the stream is not finished at all. A finish
    /// left quinn in a datagram of its own, ahead of the close, and the
    /// relay, seeing its session end, answered it with a close of its own:
    /// two of the 18 datagrams a one-off sender session took on loopback.
    No,
}

/// The part both session kinds share.
struct Link {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    out: mpsc::Sender<Out>,
    writer: tokio::sync::Mutex<Option<tokio::task::JoinHandle<Option<quinn::SendStream>>>>,
    pending: Pending,
    next_req: AtomicU32,
}

/// Writes queued frames, as many per stream write as are queued, until the
/// stream fails or is finished; hands the stream back unfinished when asked
/// to end with [`Flush::No`], for the connection's close to end it.
async fn writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Out>,
) -> Option<quinn::SendStream> {
    let mut batch = Batch::default();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut finish = None;
        while let Some(out) = next.take() {
            match out {
                Out::Frame(f) => batch.push(&f),
                Out::Finish(flush) => {
                    finish = Some(flush);
                    break;
                }
            }
            if batch.frames() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if batch.frames() > 0 && send.write_all_chunks(batch.chunks()).await.is_err() {
            return None;
        }
        batch.clear();
        match finish {
            Some(Flush::UntilAcked) => {
                if send.finish().is_ok() {
                    let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.stopped()).await;
                }
                return None;
            }
            Some(Flush::No) => return Some(send),
            None => {}
        }
    }
    None
}

async fn read_until<T>(
    recv: &mut quinn::RecvStream,
    inbound: &mut Inbound,
    mut take: impl FnMut(&mut Inbound) -> Result<Option<T>, ClientError>,
) -> Result<Option<T>, ClientError> {
    loop {
        if let Some(v) = take(inbound)? {
            return Ok(Some(v));
        }
        inbound.release_if_empty();
        match recv.read_chunk(READ_CHUNK, true).await? {
            Some(c) => inbound.extend(&c.bytes),
            None => return Ok(None),
        }
    }
}

fn close_code(conn: &quinn::Connection) -> Option<CloseCode> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(c) => u32::try_from(c.error_code.into_inner())
            .ok()
            .and_then(CloseCode::from_u32),
        _ => None,
    }
}

impl Link {
    async fn open(
        desc: &Descriptor,
        owner: Option<&Keypair>,
        deliveries: Option<mpsc::Sender<Delivery>>,
    ) -> Result<Link, ClientError> {
        let role = match owner {
            Some(_) => transport::Role::Owner,
            None => transport::Role::Sender,
        };
        let (endpoint, conn) = transport::connect(desc, role).await?;
        let mut exporter = [0u8; EXPORTER_LEN];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .map_err(|_| ClientError::Tls("TLS exporter unavailable".into()))?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut inbound = Inbound::new();
        let hello = Hello::default();
        let result = async {
            // Mode byte and message 1 in one write, then message 2 back.
            let mut exchange = async |mode: Mode, m1: Vec<u8>| {
                let mut first = vec![mode as u8];
                first.extend(wire::encode_message(&m1));
                send.write_all(&first).await?;
                read_until(&mut recv, &mut inbound, |i| Ok(i.take_handshake()?))
                    .await?
                    .ok_or(ClientError::Closed(close_code(&conn)))
            };
            match owner {
                Some(kp) => {
                    let (init, m1) = OwnerInitiator::start(kp, &desc.relay_key, &exporter, &hello)?;
                    let m2 = exchange(Mode::Owner, m1).await?;
                    let (m3, _) = init.finish(&m2)?;
                    send.write_all(&wire::encode_message(&m3)).await?;
                }
                None => {
                    let (init, m1) = SenderInitiator::start(&desc.relay_key, &exporter, &hello)?;
                    let m2 = exchange(Mode::Sender, m1).await?;
                    init.finish(&m2)?;
                }
            }
            Ok::<(), ClientError>(())
        }
        .await;
        if let Err(e) = result {
            // A relay that refused us says why in its close code.
            return Err(match (&e, close_code(&conn)) {
                (ClientError::Handshake(_), _) => e,
                (_, Some(code)) => ClientError::Closed(Some(code)),
                _ => e,
            });
        }
        let pending: Pending = Arc::default();
        tokio::spawn(reader(recv, inbound, pending.clone(), deliveries));
        let (out, rx) = mpsc::channel(OUTBOX);
        let writer = tokio::spawn(writer(send, rx));
        Ok(Link {
            _endpoint: endpoint,
            conn,
            out,
            writer: tokio::sync::Mutex::new(Some(writer)),
            pending,
            next_req: AtomicU32::new(1),
        })
    }

    /// Queues a frame for the writer task; an error once the stream failed.
    async fn write(&self, frame: Frame) -> Result<(), ClientError> {
        self.out
            .send(Out::Frame(frame))
            .await
            .map_err(|_| ClientError::Closed(close_code(&self.conn)))
    }

    async fn request(&self, build: impl FnOnce(u32) -> Frame) -> Result<Frame, ClientError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(req, tx);
        }
        self.write(build(req)).await?;
        rx.await
            .map_err(|_| ClientError::Closed(close_code(&self.conn)))
    }

    /// Hands what is queued to QUIC and ends the stream as `flush` says,
    /// closes the connection, and waits until the close frame has been sent.
    ///
    /// A closed connection sends nothing but its close frame, so the first
    /// datagram quinn counts after `close` is that frame, built and handed
    /// to the socket in the same step. `Endpoint::wait_idle` would also
    /// tell, but only after the draining period (three probe timeouts,
    /// 80–200 ms on loopback), which a close has no use for; a relay that
    /// closed first needs no frame at all.
    async fn close(&self, flush: Flush) {
        let mut unfinished = None;
        if self.out.send(Out::Finish(flush)).await.is_ok()
            && let Some(w) = self.writer.lock().await.take()
        {
            unfinished = w.await.ok().flatten();
        }
        if self.conn.close_reason().is_some() {
            return;
        }
        let sent = self.conn.stats().udp_tx.datagrams;
        self.conn.close(
            CloseCode::Normal.to_u32().into(),
            CloseCode::Normal.reason().as_bytes(),
        );
        // Dropped only now: before the close, dropping it would finish it.
        drop(unfinished);
        let deadline = tokio::time::Instant::now() + CLOSE_SENT_TIMEOUT;
        let mut yields = 0;
        while self.conn.stats().udp_tx.datagrams == sent && tokio::time::Instant::now() < deadline {
            if yields < CLOSE_SENT_YIELDS {
                yields += 1;
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Routes frames from the relay until the stream ends.
async fn reader(
    mut recv: quinn::RecvStream,
    mut inbound: Inbound,
    pending: Pending,
    deliveries: Option<mpsc::Sender<Delivery>>,
) {
    loop {
        let frame = match read_until(&mut recv, &mut inbound, |i| Ok(i.take_frame()?)).await {
            Ok(Some(f)) => f,
            _ => break,
        };
        let req = match &frame {
            Frame::Result { req, .. }
            | Frame::MailboxCreated { req, .. }
            | Frame::MailboxList { req, .. } => *req,
            Frame::Deliver {
                mailbox,
                seq,
                ciphertext,
            } => {
                if let Some(d) = &deliveries {
                    let delivery = Delivery {
                        mailbox: *mailbox,
                        seq: *seq,
                        ciphertext: ciphertext.clone(),
                    };
                    if d.send(delivery).await.is_err() {
                        break;
                    }
                }
                continue;
            }
            _ => break, // a relay never sends client frames
        };
        let waiter = pending.lock().ok().and_then(|mut p| p.remove(&req));
        if let Some(w) = waiter {
            let _ = w.send(frame);
        }
    }
    // Dropping the waiters wakes every pending request with "closed".
    if let Ok(mut p) = pending.lock() {
        p.clear();
    }
}

/// The codec would truncate a longer list; refuse it here instead.
fn digests(tokens: &[DeliveryToken]) -> Result<Vec<chappe_proto::TokenDigest>, ClientError> {
    if tokens.is_empty() || tokens.len() > MAX_TOKENS {
        return Err(ClientError::Invalid(
            "a mailbox takes 1 to 8 delivery tokens",
        ));
    }
    Ok(tokens.iter().map(DeliveryToken::digest).collect())
}

fn expect_ok(frame: Frame) -> Result<(), ClientError> {
    match frame {
        Frame::Result {
            code: ResultCode::Ok,
            ..
        } => Ok(()),
        Frame::Result { code, .. } => Err(ClientError::Refused(code)),
        other => Err(ClientError::Unexpected(other.kind())),
    }
}

/// A mailbox owner's session (Noise XK).
pub struct OwnerSession {
    link: Link,
    deliveries: mpsc::Receiver<Delivery>,
    /// Whether an ack was written: the only frame an owner writes that
    /// gets no answer, so the only one a close can lose unseen.
    acked: AtomicBool,
}

impl OwnerSession {
    pub async fn connect(desc: &Descriptor, owner: &Keypair) -> Result<Self, ClientError> {
        let (tx, rx) = mpsc::channel(DELIVERY_QUEUE);
        let link = Link::open(desc, Some(owner), Some(tx)).await?;
        Ok(OwnerSession {
            link,
            deliveries: rx,
            acked: AtomicBool::new(false),
        })
    }

    /// Creates a mailbox accepting the given tokens; the relay only ever
    /// learns their digests. Returns (receive id, send id).
    pub async fn create_mailbox(
        &self,
        tokens: &[DeliveryToken],
    ) -> Result<(ReceiveId, SendId), ClientError> {
        let tokens = digests(tokens)?;
        match self
            .link
            .request(|req| Frame::CreateMailbox { req, tokens })
            .await?
        {
            Frame::MailboxCreated {
                mailbox, send_id, ..
            } => Ok((mailbox, send_id)),
            Frame::Result { code, .. } => Err(ClientError::Refused(code)),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    pub async fn delete_mailbox(&self, mailbox: ReceiveId) -> Result<(), ClientError> {
        expect_ok(
            self.link
                .request(|req| Frame::DeleteMailbox { req, mailbox })
                .await?,
        )
    }

    /// Replaces the tokens senders must show; tokens not listed stop working
    /// at once.
    pub async fn set_tokens(
        &self,
        mailbox: ReceiveId,
        tokens: &[DeliveryToken],
    ) -> Result<(), ClientError> {
        let tokens = digests(tokens)?;
        expect_ok(
            self.link
                .request(|req| Frame::SetTokens {
                    req,
                    mailbox,
                    tokens,
                })
                .await?,
        )
    }

    pub async fn list_mailboxes(&self) -> Result<Vec<MailboxEntry>, ClientError> {
        match self
            .link
            .request(|req| Frame::ListMailboxes { req })
            .await?
        {
            Frame::MailboxList { entries, .. } => Ok(entries),
            Frame::Result { code, .. } => Err(ClientError::Refused(code)),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Asks for the mailbox's stored envelopes, then new ones as they come.
    pub async fn subscribe(&self, mailbox: ReceiveId) -> Result<(), ClientError> {
        expect_ok(
            self.link
                .request(|req| Frame::Subscribe { req, mailbox })
                .await?,
        )
    }

    /// The next delivered envelope; `None` once the connection is gone.
    pub async fn next_delivery(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }

    /// A delivery that has already arrived, without waiting: for draining
    /// a burst after [`OwnerSession::next_delivery`] returned one.
    pub fn try_next_delivery(&mut self) -> Option<Delivery> {
        self.deliveries.try_recv().ok()
    }

    /// Tells the relay these envelopes are safe here; it deletes them.
    pub async fn ack(&self, mailbox: ReceiveId, seqs: Vec<u64>) -> Result<(), ClientError> {
        self.acked.store(true, Ordering::Relaxed);
        for chunk in seqs.chunks(MAX_LIST) {
            self.link
                .write(Frame::Ack {
                    mailbox,
                    seqs: chunk.to_vec(),
                })
                .await?;
        }
        Ok(())
    }

    /// Why the relay closed the connection, if it did.
    pub fn close_code(&self) -> Option<CloseCode> {
        close_code(&self.link.conn)
    }

    /// Closes once the relay has been told, and, if this session acked
    /// anything, once the relay has acknowledged all of it; see the module
    /// doc.
    pub async fn close(self) {
        let flush = if self.acked.load(Ordering::Relaxed) {
            Flush::UntilAcked
        } else {
            Flush::No
        };
        self.link.close(flush).await;
    }
}

/// An anonymous sender's session (Noise NK): many sends may be in flight.
pub struct Sender {
    link: Link,
}

impl Sender {
    pub async fn connect(desc: &Descriptor) -> Result<Self, ClientError> {
        Ok(Sender {
            link: Link::open(desc, None, None).await?,
        })
    }

    /// Sends one envelope; `Ok` means the relay has it on disk.
    pub async fn send(
        &self,
        send_id: SendId,
        token: DeliveryToken,
        ciphertext: Bytes,
    ) -> Result<(), ClientError> {
        expect_ok(
            self.link
                .request(|req| Frame::Send {
                    req,
                    send_id,
                    token,
                    ciphertext,
                })
                .await?,
        )
    }

    pub fn close_code(&self) -> Option<CloseCode> {
        close_code(&self.link.conn)
    }

    /// Closes once the relay has been told; sends still in flight fail.
    pub async fn close(self) {
        self.link.close(Flush::No).await;
    }
}
