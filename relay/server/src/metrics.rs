//! Prometheus metrics: `chappe_` prefix, base units, no per-mailbox labels
//! (a label per mailbox would both blow up cardinality and hand whoever reads
//! the dashboard a list of active conversations). Every label takes values
//! from a short fixed list (session mode, result code, error kind), so the
//! number of series is the same for ten users as for ten thousand.
//!
//! Histogram buckets span what `docs/BENCHMARKS.md` measured on the
//! reference machine: a send's OK in 80 µs (one sync, idle) to tens of
//! milliseconds under load, a handshake in about 4 ms; the top buckets catch
//! a stalling disk.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Seconds, for sends and deliveries.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];
/// Seconds, for handshakes (QUIC, TLS with ML-KEM, Noise).
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

use chappe_proto::ResultCode;
use chappe_store::ReadOnly;

/// The `reason` label values of `chappe_connections_refused_total`: the
/// config key (under `[limits]`) of the limit that refused.
pub const REFUSAL_REASONS: [&str; 4] = [
    "max_connections",
    "max_connections_per_source",
    "handshakes_per_source_per_sec",
    "max_sessions_per_owner",
];

pub struct Metrics {
    /// The relay's own families, `chappe_` prefixed.
    pub registry: Registry,
    /// The standard `process_*` families (CPU, memory, descriptors, start
    /// time), unprefixed as every exporter names them.
    pub process: Registry,
    pub connections_refused_total: IntCounterVec,
    pub quic_retry_active: IntGauge,
    pub quic_retries_total: IntCounter,
    pub sends_limited_total: IntCounterVec,
    pub sender_idle_closed_total: IntCounter,
    pub http_connections_refused_total: IntCounter,
    pub handshake_duration_seconds: HistogramVec,
    pub send_duration_seconds: Histogram,
    pub delivery_latency_seconds: Histogram,
    pub store_journal_capacity_bytes: IntGauge,
    pub store_disk_free_bytes: IntGauge,
    pub store_disk_watermark_bytes: IntGauge,
    pub store_max_bytes: IntGauge,
    pub store_expired_envelopes_total: IntCounter,
    pub connections_active: IntGaugeVec,
    pub connections_total: IntCounter,
    pub handshakes_total: IntCounterVec,
    pub envelopes_received_total: IntCounterVec,
    pub envelopes_delivered_total: IntCounter,
    pub envelopes_acked_total: IntCounter,
    pub protocol_errors_total: IntCounterVec,
    pub owner_requests_total: IntCounterVec,
    pub store_envelopes: IntGauge,
    pub store_bytes: IntGauge,
    pub store_mailboxes: IntGauge,
    pub store_commits_total: IntCounter,
    pub store_checkpoints_total: IntCounter,
    pub store_unwritten_envelopes_total: IntCounter,
    pub store_journal_bytes: IntGauge,
    pub store_failed: IntGauge,
    pub store_read_only: IntGaugeVec,
    pub ready: IntGauge,
    pub reloads_total: IntCounterVec,
    pub key_generations: IntGauge,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: T,
) -> prometheus::Result<T> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new_custom(Some("chappe".into()), None)?;
        let process = Registry::new();
        process.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build_info = reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "build_info",
                    "1, labelled with the relay's version and source revision.",
                ),
                &["version", "revision"],
            )?,
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("CHAPPE_REVISION")])
            .set(1);
        let m = Metrics {
            process,
            connections_refused_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "connections_refused_total",
                        "QUIC connections refused, by the limit that refused them (max_connections, max_connections_per_source, handshakes_per_source_per_sec before the handshake; max_sessions_per_owner after it).",
                    ),
                    &["reason"],
                )?,
            )?,
            quic_retry_active: reg(
                &r,
                IntGauge::new(
                    "quic_retry_active",
                    "1 while new connections must answer a QUIC Retry first (incoming connections above limits.retry_above_handshakes_per_sec).",
                )?,
            )?,
            quic_retries_total: reg(
                &r,
                IntCounter::new(
                    "quic_retries_total",
                    "QUIC Retry packets sent: connection attempts asked to prove their address.",
                )?,
            )?,
            sends_limited_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "sends_limited_total",
                        "Sends refused rate_limited, by the limit (sends_per_send_id_per_sec, max_inflight_send_bytes).",
                    ),
                    &["limit"],
                )?,
            )?,
            sender_idle_closed_total: reg(
                &r,
                IntCounter::new(
                    "sender_idle_closed_total",
                    "Sender sessions closed after limits.sender_idle_secs without a send.",
                )?,
            )?,
            http_connections_refused_total: reg(
                &r,
                IntCounter::new(
                    "http_connections_refused_total",
                    "Connections to this metrics listener closed at once because too many were open.",
                )?,
            )?,
            handshake_duration_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "handshake_duration_seconds",
                        "From a connection's first packet to its Noise handshake done, by mode (owner, sender).",
                    )
                    .buckets(HANDSHAKE_BUCKETS.to_vec()),
                    &["mode"],
                )?,
            )?,
            send_duration_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "send_duration_seconds",
                        "From a send request read to its result written, the journal sync included.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )?,
            )?,
            delivery_latency_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "delivery_latency_seconds",
                        "From an envelope durable to it handed to its connected owner's stream (live pushes).",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )?,
            )?,
            store_journal_capacity_bytes: reg(
                &r,
                IntGauge::new(
                    "store_journal_capacity_bytes",
                    "Size of the journal ring: how far the store file may lag behind the journal.",
                )?,
            )?,
            store_disk_free_bytes: reg(
                &r,
                IntGauge::new(
                    "store_disk_free_bytes",
                    "Free bytes, as an unprivileged user sees them, on the file system holding the state directory.",
                )?,
            )?,
            store_disk_watermark_bytes: reg(
                &r,
                IntGauge::new(
                    "store_disk_watermark_bytes",
                    "limits.min_free_disk_bytes: sends are refused relay_full below this much free disk (0: no watermark).",
                )?,
            )?,
            store_max_bytes: reg(
                &r,
                IntGauge::new(
                    "store_max_bytes",
                    "limits.max_store_bytes: the cap on stored ciphertext (0: no cap).",
                )?,
            )?,
            store_expired_envelopes_total: reg(
                &r,
                IntCounter::new(
                    "store_expired_envelopes_total",
                    "Envelopes removed unacknowledged because they expired.",
                )?,
            )?,
            connections_active: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "connections_active",
                        "Open QUIC connections, by session mode.",
                    ),
                    &["mode"],
                )?,
            )?,
            connections_total: reg(
                &r,
                IntCounter::new("connections_total", "QUIC connections accepted.")?,
            )?,
            handshakes_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "handshakes_total",
                        "Handshakes by mode (owner, sender; tls or noise when one failed before the mode was known) and result.",
                    ),
                    &["mode", "result"],
                )?,
            )?,
            envelopes_received_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "envelopes_received_total",
                        "Send requests answered, by result code.",
                    ),
                    &["result"],
                )?,
            )?,
            envelopes_delivered_total: reg(
                &r,
                IntCounter::new(
                    "envelopes_delivered_total",
                    "Envelopes written to owner sessions (live or from the store).",
                )?,
            )?,
            envelopes_acked_total: reg(
                &r,
                IntCounter::new("envelopes_acked_total", "Envelopes acknowledged by owners.")?,
            )?,
            protocol_errors_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "protocol_errors_total",
                        "Connections closed for protocol violations, by kind.",
                    ),
                    &["kind"],
                )?,
            )?,
            owner_requests_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "owner_requests_total",
                        "Mailbox owner requests, by result code.",
                    ),
                    &["result"],
                )?,
            )?,
            store_envelopes: reg(
                &r,
                IntGauge::new(
                    "store_envelopes",
                    "Envelopes stored and not yet acknowledged.",
                )?,
            )?,
            store_bytes: reg(
                &r,
                IntGauge::new("store_bytes", "Ciphertext bytes stored.")?,
            )?,
            store_mailboxes: reg(
                &r,
                IntGauge::new("store_mailboxes", "Mailboxes in the store.")?,
            )?,
            store_commits_total: reg(
                &r,
                IntCounter::new(
                    "store_commits_total",
                    "Group commits: journal syncs that made sends durable.",
                )?,
            )?,
            store_checkpoints_total: reg(
                &r,
                IntCounter::new(
                    "store_checkpoints_total",
                    "Transactions that moved journaled changes into the store file.",
                )?,
            )?,
            store_unwritten_envelopes_total: reg(
                &r,
                IntCounter::new(
                    "store_unwritten_envelopes_total",
                    "Envelopes acknowledged before they reached the store file, so never written there.",
                )?,
            )?,
            store_journal_bytes: reg(
                &r,
                IntGauge::new(
                    "store_journal_bytes",
                    "Journal bytes not yet moved into the store file.",
                )?,
            )?,
            store_failed: reg(
                &r,
                IntGauge::new(
                    "store_failed",
                    "1 after a failed disk write: the store takes no writes until a restart.",
                )?,
            )?,
            store_read_only: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "store_read_only",
                        "1 while the store takes no writes, by reason: no_space (the disk is full; clears by itself when space returns, unless a write already failed for it) or io_error (a write or sync failed; until a restart).",
                    ),
                    &["reason"],
                )?,
            )?,
            ready: reg(
                &r,
                IntGauge::new("ready", "1 while the relay accepts connections.")?,
            )?,
            reloads_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "reloads_total",
                        "Configuration reloads (SIGHUP), by result: ok, or failed (the running configuration was kept).",
                    ),
                    &["result"],
                )?,
            )?,
            key_generations: reg(
                &r,
                IntGauge::new(
                    "key_generations",
                    "Relay key generations presented: 2 during a rotation overlap, else 1.",
                )?,
            )?,
            registry: r,
        };
        for result in ["ok", "failed"] {
            m.reloads_total.with_label_values(&[result]);
        }
        for why in [ReadOnly::NoSpace, ReadOnly::Io] {
            m.store_read_only.with_label_values(&[why.name()]);
        }
        for reason in REFUSAL_REASONS {
            m.connections_refused_total.with_label_values(&[reason]);
        }
        for limit in ["sends_per_send_id_per_sec", "max_inflight_send_bytes"] {
            m.sends_limited_total.with_label_values(&[limit]);
        }
        for mode in ["owner", "sender"] {
            m.handshake_duration_seconds.with_label_values(&[mode]);
        }
        for code in ResultCode::ALL {
            m.envelopes_received_total.with_label_values(&[code.name()]);
        }
        for mode in ["owner", "sender"] {
            m.connections_active.with_label_values(&[mode]);
            m.handshakes_total.with_label_values(&[mode, "ok"]);
        }
        for stage in ["tls", "noise"] {
            m.handshakes_total.with_label_values(&[stage, "failed"]);
        }
        for kind in ["bad_frame", "wrong_frame", "truncated", "bad_start"] {
            m.protocol_errors_total.with_label_values(&[kind]);
        }
        for code in ResultCode::ALL {
            m.owner_requests_total.with_label_values(&[code.name()]);
        }
        Ok(m)
    }

    pub fn received(&self, code: ResultCode) {
        self.envelopes_received_total
            .with_label_values(&[code.name()])
            .inc();
    }
}
