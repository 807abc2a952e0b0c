//! The local HTTP listener: `/metrics`, `/healthz`, `/readyz`.
//!
//! `/healthz` answers 200 while the process serves requests at all (for a
//! watchdog or liveness probe); `/readyz` answers 200 only while the relay
//! accepts QUIC connections (store open and taking writes, endpoint bound,
//! not draining), which is what a load balancer or an upgrade script waits
//! for; its 503 body says why (a read-only store names its reason).
//!
//! The listener starts before the store is opened. Opening can take a
//! moment: after a crash the journal is replayed first. Meanwhile `/healthz`
//! says `opening store` (alive, so nothing restarts it in a loop),
//! `/readyz` says not ready, and `/metrics` serves what exists already,
//! with `chappe_ready 0`.
//!
//! It has no authentication and is meant for loopback, but a slow or
//! hostile client must still not hold it: a request's header must arrive
//! within [`HEADER_TIMEOUT`], a connection lasts at most
//! [`CONNECTION_TIMEOUT`], and beyond [`MAX_CONNECTIONS`] open at once new
//! ones are closed unanswered (`chappe_http_connections_refused_total`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::relay::Relay;
use crate::shutdown::Shutdown;

/// Binds `addr`, or takes the listener systemd passed (`inherited`).
pub async fn bind(
    addr: SocketAddr,
    inherited: Option<std::net::TcpListener>,
) -> std::io::Result<TcpListener> {
    match inherited {
        Some(l) => {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        }
        None => TcpListener::bind(addr).await,
    }
}

/// What the listener reports on: the metrics registries from the start,
/// the relay once the store is open.
pub struct Status {
    registries: Vec<Registry>,
    relay: OnceLock<Arc<Relay>>,
}

impl Status {
    pub fn new(registries: Vec<Registry>) -> Arc<Status> {
        Arc::new(Status {
            registries,
            relay: OnceLock::new(),
        })
    }

    /// The store is open and the relay exists; called once.
    pub fn opened(&self, relay: Arc<Relay>) {
        let _ = self.relay.set(relay);
    }
}

/// How long a client may take to send a request's header (and, between
/// requests on a kept-alive connection, the next one's).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open: many scrapes' worth, after which
/// Prometheus simply connects again.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections open at once: a Prometheus or two, health probes, and a
/// person with curl.
const MAX_CONNECTIONS: usize = 64;

pub async fn serve(listener: TcpListener, status: Arc<Status>, mut shutdown: Shutdown) {
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait() => return,
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                continue;
            }
        };
        let Ok(place) = open.clone().try_acquire_owned() else {
            if let Some(relay) = status.relay.get() {
                relay.metrics.http_connections_refused_total.inc();
            }
            drop(stream);
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let status = status.clone();
                async move { Ok::<_, Infallible>(respond(&status, &req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(place);
        });
    }
}

fn respond(status: &Status, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let relay = status.relay.get();
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => {
            if let Some(relay) = relay {
                relay.refresh_gauges();
            }
            let mut buf = Vec::new();
            let enc = TextEncoder::new();
            let families: Vec<_> = status
                .registries
                .iter()
                .flat_map(Registry::gather)
                .collect();
            if enc.encode(&families, &mut buf).is_err() {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
            }
            let mut r = Response::new(Full::new(Bytes::from(buf)));
            if let Ok(v) = enc.format_type().parse() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        }
        "/healthz" if relay.is_none() => text(StatusCode::OK, "opening store\n"),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match relay.map(|r| r.not_ready_because()) {
            Some(None) => text(StatusCode::OK, "ready\n"),
            Some(Some(why)) => text(StatusCode::SERVICE_UNAVAILABLE, why),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
