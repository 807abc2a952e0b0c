//! What travels from a [`Store`](crate::Store) handle to the writer thread,
//! and the answers that travel back.
//!
//! An operation ([`Op`]) is kept apart from where its answer goes ([`Reply`])
//! so the writer can decide a whole batch by reference and tell each caller
//! only after the journal sync (or the applier after its commit) whether
//! they hear their result or `Internal`.

use bytes::Bytes;
use chappe_proto::{OwnerKey, ReceiveId, SendId, TokenDigest};
use tokio::sync::oneshot;

use crate::answers::Sink;
use crate::error::{RequestError, StoreError};
use crate::records::TokenList;

/// One mailbox as its owner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxInfo {
    pub receive_id: ReceiveId,
    pub send_id: SendId,
    /// Envelopes stored and not yet acknowledged.
    pub envelopes: u32,
    /// Their ciphertext bytes.
    pub bytes: u64,
}

/// Where an accepted envelope went: the server uses it to wake the owner's
/// subscription without another lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    pub receive_id: ReceiveId,
    pub seq: u64,
}

/// An envelope on its way to the owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    pub seq: u64,
    pub ciphertext: Bytes,
}

pub(crate) enum Msg {
    Request(Request),
    /// Finish what was queued before this message, then stop (and say so).
    Shutdown(Option<oneshot::Sender<()>>),
    /// Tests: block the writer until the sender side is used or dropped, so
    /// that everything queued meanwhile lands in one batch.
    #[cfg(test)]
    Hold(std::sync::mpsc::Receiver<()>),
    /// Tests: stop both threads at once, applying nothing more to redb, as
    /// if the process had been killed (the journal keeps what it has).
    #[cfg(test)]
    Crash,
}

pub(crate) struct Request {
    pub op: Op,
    pub reply: Reply,
    /// The queue slot the request holds, if it needs one
    /// ([`crate::store::ACK_SLOTS`]); given back when the writer drops the
    /// request, once it has decided it.
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

pub(crate) enum Op {
    Create {
        owner: OwnerKey,
        /// Boxed: rare, and 8 inline digests would triple every message.
        tokens: Box<TokenList>,
    },
    Delete {
        owner: OwnerKey,
        id: ReceiveId,
    },
    SetTokens {
        owner: OwnerKey,
        id: ReceiveId,
        /// Boxed: rare, and 8 inline digests would triple every message.
        tokens: Box<TokenList>,
    },
    Enqueue {
        send: SendId,
        /// Hashed by the caller, off the writer thread.
        digest: TokenDigest,
        ciphertext: Bytes,
    },
    Ack {
        owner: OwnerKey,
        id: ReceiveId,
        seqs: Vec<u64>,
    },
    Sweep,
    /// Answered once everything queued before it is in redb.
    Flush,
    /// The owner's mailboxes with their counts as the writer has them.
    List {
        owner: OwnerKey,
    },
    /// Answered at once: the writer is alive and taking requests.
    Ping,
    /// New limits for every request queued after this one.
    SetQuotas(Box<crate::config::Quotas>),
}

impl Op {
    /// Whether the request changes the store (a journal record or a redb
    /// commit): what a read-only store refuses.
    pub(crate) fn writes(&self) -> bool {
        match self {
            Op::Create { .. }
            | Op::Delete { .. }
            | Op::SetTokens { .. }
            | Op::Enqueue { .. }
            | Op::Ack { .. }
            | Op::Sweep
            | Op::Flush => true,
            Op::List { .. } | Op::Ping | Op::SetQuotas(_) => false,
        }
    }
}

/// What an applied operation produced, before anyone is told.
pub(crate) enum Answer {
    Info(MailboxInfo),
    Unit,
    Enqueued(Enqueued),
    Swept(u64),
    List(Vec<MailboxInfo>),
}

type Tx<T> = oneshot::Sender<Result<T, RequestError>>;

pub(crate) enum Reply {
    Info(Tx<MailboxInfo>),
    Unit(Tx<()>),
    Enqueued(Tx<Enqueued>),
    /// Into a session's answer queue.
    Sink(Sink),
    Swept(oneshot::Sender<Result<u64, StoreError>>),
    List(Tx<Vec<MailboxInfo>>),
}

impl Reply {
    /// Delivers the outcome. A caller that gave up has dropped its receiver;
    /// that is not an error here.
    pub(crate) fn send(self, out: Result<Answer, RequestError>) {
        match (self, out) {
            (Reply::Info(tx), Ok(Answer::Info(v))) => drop(tx.send(Ok(v))),
            (Reply::Unit(tx), Ok(Answer::Unit)) => drop(tx.send(Ok(()))),
            (Reply::Enqueued(tx), Ok(Answer::Enqueued(v))) => drop(tx.send(Ok(v))),
            (Reply::Sink(s), Ok(Answer::Enqueued(v))) => s.send(Ok(v)),
            (Reply::Swept(tx), Ok(Answer::Swept(n))) => drop(tx.send(Ok(n))),
            (Reply::List(tx), Ok(Answer::List(v))) => drop(tx.send(Ok(v))),
            (reply, Err(e)) => reply.refuse(e),
            (reply, Ok(_)) => reply.refuse(RequestError::internal(StoreError::Invariant(
                "answer does not match request",
            ))),
        }
    }

    pub(crate) fn refuse(self, e: RequestError) {
        match self {
            Reply::Info(tx) => drop(tx.send(Err(e))),
            Reply::Unit(tx) => drop(tx.send(Err(e))),
            Reply::Enqueued(tx) => drop(tx.send(Err(e))),
            Reply::Sink(s) => s.send(Err(e)),
            Reply::List(tx) => drop(tx.send(Err(e))),
            Reply::Swept(tx) => drop(tx.send(Err(match e {
                RequestError::Internal(e) => e,
                RequestError::RelayFull => StoreError::NoSpace,
                _ => StoreError::Invariant("sweep refused"),
            }))),
        }
    }
}
