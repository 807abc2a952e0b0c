//! What the relay tells its service manager, and what it takes from it.
//!
//! Under systemd (`Type=notify`) the relay says `READY=1` only once the
//! store is open and both listeners accept, keeps a `STATUS=` line current
//! for `systemctl status`, extends its start timeout while a long journal
//! replay runs, and pings the watchdog only while a real check passes
//! ([`watchdog`]). With socket activation it takes the QUIC and metrics
//! sockets systemd opened ([`Inherited::take`]), so the service itself needs
//! no capability and no network namespace of its own.
//!
//! Outside systemd every notification is a no-op (`NOTIFY_SOCKET` unset)
//! and the relay binds its own sockets: the same binary serves both ways.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::relay::Relay;

/// A `FileDescriptorName=` for the QUIC socket, where it has a unit of its own.
pub const QUIC_SOCKET_NAME: &str = "quic";
/// A `FileDescriptorName=` for the metrics socket, likewise.
pub const METRICS_SOCKET_NAME: &str = "metrics";

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error(
        "inherited socket {index} (`{name}`): {source}; check ListenDatagram=/ListenStream= in chappe-relay.socket"
    )]
    Socket {
        index: usize,
        name: String,
        source: std::io::Error,
    },
    #[error(
        "systemd passed socket `{name}`, which is neither UDP (QUIC, ListenDatagram=) nor TCP (metrics, ListenStream=)"
    )]
    UnknownName { name: String },
}

/// Sockets systemd opened for the relay (socket activation).
#[derive(Default)]
pub struct Inherited {
    pub quic: Option<UdpSocket>,
    pub metrics: Option<TcpListener>,
}

impl Inherited {
    /// Takes the sockets systemd passed (`LISTEN_FDS`): the UDP one is
    /// QUIC's, the TCP one the metrics listener. One `.socket` unit can
    /// carry both, and `FileDescriptorName=` names every socket of a unit
    /// alike, so the type decides; a name of `quic` or `metrics` (two
    /// units) must match it. Call before any thread starts: it clears
    /// `LISTEN_FDS`/`LISTEN_PID` so no child inherits them.
    pub fn take() -> Result<Inherited, ServiceError> {
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|v| v.split(':').map(str::to_string).collect())
            .unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        let mut out = Inherited::default();
        for index in 0..fds.len() {
            let name = names.get(index).map_or("", String::as_str);
            let err = |source| ServiceError::Socket {
                index,
                name: name.to_string(),
                source,
            };
            let duplicate = |what: &str| ServiceError::Socket {
                index,
                name: name.to_string(),
                source: std::io::Error::other(format!("a second {what} socket")),
            };
            match name {
                QUIC_SOCKET_NAME => out.quic = fds.take_udp_socket(index).map_err(err)?,
                METRICS_SOCKET_NAME => out.metrics = fds.take_tcp_listener(index).map_err(err)?,
                _ => {
                    if let Ok(Some(s)) = fds.take_udp_socket(index) {
                        if out.quic.replace(s).is_some() {
                            return Err(duplicate("UDP"));
                        }
                    } else if let Ok(Some(l)) = fds.take_tcp_listener(index) {
                        if out.metrics.replace(l).is_some() {
                            return Err(duplicate("TCP"));
                        }
                    } else {
                        return Err(ServiceError::UnknownName {
                            name: name.to_string(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|s| s.local_addr().ok())
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|s| s.local_addr().ok())
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Start-up is done: the store is open and both listeners accept.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// A reload starts; [`ready`] ends it. `MONOTONIC_USEC` is required with
/// `Type=notify-reload` and harmless otherwise.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading")];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}

pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing in-flight sends"),
    ]);
}

/// Asks for `by` more start-up time (while the journal is replayed).
pub fn extend_timeout(by: Duration) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    notify(&[
        NotifyState::ExtendTimeoutUsec(usec),
        NotifyState::Status(
            "opening the store (a journal replay after an unclean stop takes a while)",
        ),
    ]);
}

/// Keeps asking for more start-up time until aborted, so that a replay
/// that takes longer than `TimeoutStartSec=` is not killed half-way. A
/// store that opens within the first interval (the usual case) asks for
/// nothing.
pub fn extend_while_opening() -> tokio::task::JoinHandle<()> {
    const EVERY: Duration = Duration::from_secs(5);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            extend_timeout(3 * EVERY);
        }
    })
}

/// The accept loop's side of the watchdog: each request is answered by
/// the loop itself, between two connections, so an answer proves it runs.
pub struct AcceptProbe(mpsc::Sender<oneshot::Sender<()>>);
pub type ProbeRequests = mpsc::Receiver<oneshot::Sender<()>>;

pub fn accept_probe() -> (AcceptProbe, ProbeRequests) {
    let (tx, rx) = mpsc::channel(1);
    (AcceptProbe(tx), rx)
}

impl AcceptProbe {
    async fn check(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.0.send(tx).await.is_ok() && rx.await.is_ok()
    }
}

/// The watchdog systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Pings the watchdog every `interval / 2`, but only after the store's
/// writer answered and the accept loop turned over, each within a quarter
/// of the interval. A relay whose writer hangs on the disk, or whose
/// runtime is stuck, stops pinging, and systemd restarts it.
pub async fn watchdog(relay: Arc<Relay>, probe: AcceptProbe, interval: Duration) {
    let mut shutdown = relay.shutdown.clone();
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let budget = interval / 4;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let store = tokio::time::timeout(budget, relay.store.ping()).await;
        let accept = tokio::time::timeout(budget, probe.check()).await;
        match (store, accept) {
            // A read-only store (full disk, failed write) still answers the
            // ping: it is alive, and /readyz already says it is not ready; a
            // restart would not bring the space or the disk back.
            (Ok(Ok(())), Ok(true)) => notify(&[NotifyState::Watchdog]),
            (store, accept) => tracing::error!(
                store_answered = matches!(store, Ok(Ok(()))),
                accept_loop_answered = matches!(accept, Ok(true)),
                "watchdog check failed; not pinging systemd, which restarts the relay if this lasts"
            ),
        }
    }
}

/// Refreshes the `STATUS=` line every few seconds while serving.
pub async fn status_line(relay: Arc<Relay>, listen: SocketAddr) {
    let mut shutdown = relay.shutdown.clone();
    loop {
        status(&relay.status_line(listen));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.wait() => return,
        }
    }
}
