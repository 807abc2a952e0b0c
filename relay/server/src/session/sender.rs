//! The anonymous sender session: `Send` in, `Result` out.
//!
//! Sends are pipelined: each one waits for the store's group commit in its
//! own task, so one connection can keep many envelopes in the same batch.
//! A semaphore bounds how many wait at once; when it is exhausted the session
//! stops reading, and QUIC flow control pushes back on the client.

use std::sync::Arc;

use chappe_proto::ResultCode;
use chappe_proto::envelope::check_len;
use chappe_proto::frame::Frame;
use tokio::sync::Semaphore;

use super::SessionError;
use super::stream::{FrameReader, spawn_writer};
use crate::relay::Relay;
use crate::router::Push;

pub async fn run(
    relay: &Arc<Relay>,
    send: quinn::SendStream,
    mut reader: FrameReader,
) -> Result<(), SessionError> {
    let (outbox, writer) = spawn_writer(send);
    let max = relay.limits.max_inflight_sends;
    let inflight = Arc::new(Semaphore::new(usize::try_from(max).unwrap_or(1024)));
    let mut shutdown = relay.shutdown.clone();
    let result = loop {
        let frame = tokio::select! {
            f = reader.next_frame() => f,
            _ = shutdown.wait() => break Err(SessionError::ShuttingDown),
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let Frame::Send {
            req,
            send_id,
            token,
            ciphertext,
        } = frame
        else {
            break Err(SessionError::WrongFrame(frame.kind()));
        };
        if let Err(code) = check_len(ciphertext.len()) {
            relay.metrics.received(code);
            let _ = outbox.send(Frame::Result { req, code }).await;
            continue;
        }
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break Ok(());
        };
        let relay = relay.clone();
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let code = match relay
                .store
                .enqueue(send_id, token, ciphertext.clone())
                .await
            {
                Ok(done) => {
                    relay.router.push(Push {
                        mailbox: done.receive_id,
                        seq: done.seq,
                        ciphertext,
                    });
                    ResultCode::Ok
                }
                Err(e) => e.code(),
            };
            relay.metrics.received(code);
            let _ = outbox.send(Frame::Result { req, code }).await;
            drop(permit);
        });
    };
    // Every accepted send gets its answer before the stream closes: wait for
    // the in-flight ones (the store drains its queue even while stopping).
    let _ = tokio::time::timeout(relay.limits.shutdown_grace, inflight.acquire_many(max)).await;
    drop(outbox);
    let _ = writer.await;
    result
}
