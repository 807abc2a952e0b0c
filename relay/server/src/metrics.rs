//! Prometheus metrics: `chappe_` prefix, base units, no per-mailbox labels
//! (a label per mailbox would both blow up cardinality and hand whoever reads
//! the dashboard a list of active conversations).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use chappe_proto::ResultCode;

pub struct Metrics {
    pub registry: Registry,
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
        let m = Metrics {
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
