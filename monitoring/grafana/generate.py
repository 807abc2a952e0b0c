#!/usr/bin/env python3
"""Writes chappe-relay.json, the Grafana dashboard for chappe-relay.

    monitoring/grafana/generate.py           rewrite chappe-relay.json
    monitoring/grafana/generate.py --check   exit 1 if chappe-relay.json is not what this writes

The committed JSON is what operators import; edit this file, run it, and
commit both. Panels read the recording rules of
monitoring/prometheus/chappe.rules.yml where one exists, so the dashboard
and the alerts show the same numbers. Standard library only.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("chappe-relay.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
INST = 'instance=~"$instance"'  # every query's instance selector
JOB_INST = 'job="chappe", ' + INST  # for families other exporters also have (up, process_*)

panels = []
_next_id = 1
_x = 0
_y = 0
_row_h = 0


def _place(w, h):
    global _x, _y, _row_h
    if _x + w > 24:
        _x, _y, _row_h = 0, _y + _row_h, 0
    pos = {"x": _x, "y": _y, "w": w, "h": h}
    _x += w
    _row_h = max(_row_h, h)
    return pos


def _id():
    global _next_id
    _next_id += 1
    return _next_id - 1


def row(title):
    global _x, _y, _row_h
    _y += _row_h
    _x, _row_h = 0, 0
    panels.append({"type": "row", "id": _id(), "title": title, "collapsed": False,
                   "gridPos": {"x": 0, "y": _y, "w": 24, "h": 1}, "panels": []})
    _y += 1


def _targets(queries):
    return [{"refId": chr(ord("A") + n), "datasource": DS, "expr": expr, "legendFormat": legend,
             "range": True, "instant": False}
            for n, (expr, legend) in enumerate(queries)]


def timeseries(title, description, queries, unit, w=8, h=8, stack=False, min0=True):
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 30,
              "showPoints": "never", "spanNulls": False,
              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults = {"unit": unit, "custom": custom}
    if min0:
        defaults["min"] = 0
    panels.append({
        "type": "timeseries", "id": _id(), "title": title, "description": description,
        "datasource": DS, "gridPos": _place(w, h), "targets": _targets(queries),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    })


def stat(title, description, queries, unit="none", mappings=None, thresholds=None, text_mode="value", w=4, h=4):
    steps = thresholds or [{"color": "green", "value": None}]
    panels.append({
        "type": "stat", "id": _id(), "title": title, "description": description,
        "datasource": DS, "gridPos": _place(w, h), "targets": _targets(queries),
        "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                                     "thresholds": {"mode": "absolute", "steps": steps},
                                     "color": {"mode": "thresholds"}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "none", "textMode": text_mode,
                    "justifyMode": "auto", "orientation": "auto"},
    })


def gauge(title, description, queries, unit, thresholds, maximum, w=6, h=8):
    panels.append({
        "type": "gauge", "id": _id(), "title": title, "description": description,
        "datasource": DS, "gridPos": _place(w, h), "targets": _targets(queries),
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, "max": maximum,
                                     "thresholds": {"mode": "absolute", "steps": thresholds},
                                     "color": {"mode": "thresholds"}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "showThresholdLabels": False, "showThresholdMarkers": True},
    })


def heatmap(title, description, expr, w=8, h=8):
    panels.append({
        "type": "heatmap", "id": _id(), "title": title, "description": description,
        "datasource": DS, "gridPos": _place(w, h),
        "targets": [{"refId": "A", "datasource": DS, "expr": expr, "legendFormat": "{{le}}",
                     "format": "heatmap", "range": True, "instant": False}],
        "options": {"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1,
                    "color": {"mode": "scheme", "scheme": "Oranges", "exponent": 0.5, "steps": 64},
                    "tooltip": {"show": True, "yHistogram": False}, "legend": {"show": False}},
        "fieldConfig": {"defaults": {}, "overrides": []},
    })


BAD = [{"color": "green", "value": None}, {"color": "red", "value": 1}]
GOOD = [{"color": "red", "value": None}, {"color": "green", "value": 1}]
PCT = "percentunit"

row("Overview")
stat("Up", "Prometheus's scrape of /metrics (alert ChappeRelayDown).",
     [(f"up{{{JOB_INST}}}", "{{instance}}")], thresholds=GOOD,
     mappings=[{"type": "value", "options": {"0": {"text": "down"}, "1": {"text": "up"}}}])
stat("Ready", "chappe_ready: 1 while the relay accepts connections (alert ChappeRelayNotReady).",
     [(f"chappe_ready{{{INST}}}", "{{instance}}")], thresholds=GOOD,
     mappings=[{"type": "value", "options": {"0": {"text": "not ready"}, "1": {"text": "ready"}}}])
stat("Store", "chappe_store_failed: 1 once a disk write failed and the store takes no more writes until a restart (alert ChappeStoreFailed).",
     [(f"chappe_store_failed{{{INST}}}", "{{instance}}")], thresholds=BAD,
     mappings=[{"type": "value", "options": {"0": {"text": "writable"}, "1": {"text": "FAILED"}}}])
stat("Uptime", "Time since the relay process started (alert ChappeRestartLoop).",
     [(f"time() - process_start_time_seconds{{{JOB_INST}}}", "{{instance}}")], unit="s",
     thresholds=[{"color": "orange", "value": None}, {"color": "green", "value": 600}])
stat("Key generations", "chappe_key_generations: 2 during a key rotation's overlap, 1 otherwise.",
     [(f"chappe_key_generations{{{INST}}}", "{{instance}}")],
     thresholds=[{"color": "green", "value": None}, {"color": "blue", "value": 2}])
stat("Version", "chappe_build_info: the relay's version and source revision.",
     [(f"chappe_build_info{{{INST}}}", "{{version}} {{revision}}")], text_mode="name",
     thresholds=[{"color": "text", "value": None}])

row("Traffic")
timeseries("Sends answered, by result", "Send requests answered per second, by result (chappe_envelopes_received_total).",
           [(f"instance_result:chappe_envelopes_received:rate5m{{{INST}}}", "{{instance}} {{result}}")], "reqps", stack=True)
timeseries("Deliveries and acknowledgements", "Envelopes written to owner sessions (live or from the store; redeliveries count again) and sequence numbers owners acknowledged, per second.",
           [(f"instance:chappe_envelopes_delivered:rate5m{{{INST}}}", "{{instance}} delivered"),
            (f"instance:chappe_envelopes_acked:rate5m{{{INST}}}", "{{instance}} acknowledged")], "ops")
timeseries("Owner requests, by result", "Mailbox create, delete, token, list and subscribe requests per second, by result (acknowledgements are not counted here).",
           [(f"instance_result:chappe_owner_requests:rate5m{{{INST}}}", "{{instance}} {{result}}")], "reqps", stack=True)
timeseries("Store writes", "Group commits (one journal fdatasync each), checkpoints into store.redb, envelopes acknowledged before they reached store.redb, and envelopes expired, per second.",
           [(f"instance:chappe_store_commits:rate5m{{{INST}}}", "{{instance}} commits"),
            (f"instance:chappe_store_checkpoints:rate5m{{{INST}}}", "{{instance}} checkpoints"),
            (f"instance:chappe_store_unwritten_envelopes:rate5m{{{INST}}}", "{{instance}} acked before store.redb"),
            (f"instance:chappe_store_expired_envelopes:rate5m{{{INST}}}", "{{instance}} expired")], "ops", w=12)
timeseries("Stored envelopes and mailboxes", "Envelopes waiting for their owners, and mailboxes, in the store.",
           [(f"chappe_store_envelopes{{{INST}}}", "{{instance}} envelopes"),
            (f"chappe_store_mailboxes{{{INST}}}", "{{instance}} mailboxes")], "short", w=12)

row("Latency")
timeseries("Send latency p50 / p99", "From a send request read to its answer written, including the journal sync (alert ChappeSendLatencyHigh at p99 > 250 ms).",
           [(f"instance_quantile:chappe_send_duration_seconds:histogram_quantile{{{INST}}}", "{{instance}} q{{quantile}}")], "s")
timeseries("Delivery latency p50 / p99", "From durable (journal commit) to written to a connected owner's stream, live pushes only (alert ChappeDeliveryLatencyHigh at p99 > 500 ms).",
           [(f"instance_quantile:chappe_delivery_latency_seconds:histogram_quantile{{{INST}}}", "{{instance}} q{{quantile}}")], "s")
timeseries("Handshake duration p50 / p99", "From connection accepted to Noise handshake done, by session mode.",
           [(f"instance_mode_quantile:chappe_handshake_duration_seconds:histogram_quantile{{{INST}}}", "{{instance}} {{mode}} q{{quantile}}")], "s")
heatmap("Send latency distribution", "Sends per latency bucket (chappe_send_duration_seconds).",
        f"sum by (le) (increase(chappe_send_duration_seconds_bucket{{{INST}}}[$__rate_interval]))", w=12)
heatmap("Delivery latency distribution", "Live deliveries per latency bucket (chappe_delivery_latency_seconds).",
        f"sum by (le) (increase(chappe_delivery_latency_seconds_bucket{{{INST}}}[$__rate_interval]))", w=12)

row("Sessions and handshakes")
timeseries("Active sessions, by mode", "Sessions that completed the Noise handshake and are still open.",
           [(f"chappe_connections_active{{{INST}}}", "{{instance}} {{mode}}")], "short", stack=True)
timeseries("Handshakes, by mode and result", "Completed handshakes (owner, sender) and failed ones (at the TLS or the Noise stage), per second.",
           [(f"instance_mode_result:chappe_handshakes:rate5m{{{INST}}}", "{{instance}} {{mode}} {{result}}")], "ops")
timeseries("Handshake failure ratio", "Failed TLS and Noise handshakes over all handshakes (alert ChappeHandshakeFailures above 25 %).",
           [(f"instance:chappe_handshakes_failed:ratio_rate5m{{{INST}}}", "{{instance}}")], PCT)
timeseries("New connections", "QUIC connections accepted per second (TLS handshake completed).",
           [(f"instance:chappe_connections:rate5m{{{INST}}}", "{{instance}}")], "ops", w=12)
timeseries("Protocol errors, by kind", "Connections closed because the client broke the protocol, per second.",
           [(f"instance_kind:chappe_protocol_errors:rate5m{{{INST}}}", "{{instance}} {{kind}}")], "ops", w=12)

row("Refusals")
timeseries("Sends refused, share by result", "Share of sends answered with each result other than ok. relay_full and internal are the relay's own (alert ChappeSendsRefused above 1 %); the others come from the request (alert ChappeSendsRejected above 25 %).",
           [(f'instance_result:chappe_envelopes_received:ratio_rate5m{{result!="ok", {INST}}}', "{{instance}} {{result}}")], PCT, w=12)
timeseries("Connections refused, by reason", "QUIC connections refused per second, by reason (alert ChappeConnectionsRefused above 1 % of attempts).",
           [(f"instance_reason:chappe_connections_refused:rate5m{{{INST}}}", "{{instance}} {{reason}}")], "ops", w=6)
timeseries("Reloads in the last hour", "Configuration reloads by result; failed: the relay kept its previous configuration (alert ChappeReloadFailed).",
           [(f"sum by (instance, result) (increase(chappe_reloads_total{{{INST}}}[1h]))", "{{instance}} {{result}}")], "short", w=6)

row("Store and disk headroom")
gauge("Store cap used", "chappe_store_bytes over limits.max_store_bytes; empty when there is no cap (alert ChappeStoreNearCap above 90 %).",
      [(f"instance:chappe_store_bytes_per_max_bytes:ratio{{{INST}}}", "{{instance}}")], PCT,
      [{"color": "green", "value": None}, {"color": "orange", "value": 0.8}, {"color": "red", "value": 0.9}], 1)
gauge("Free disk, in watermarks", "Free space on the state directory's file system over limits.min_free_disk_bytes; below 1 sends get relay_full; empty when the watermark is disabled (alert ChappeDiskNearWatermark below 2).",
      [(f"instance:chappe_store_disk_free_per_watermark:ratio{{{INST}}}", "{{instance}}")], "x",
      [{"color": "red", "value": None}, {"color": "orange", "value": 1}, {"color": "green", "value": 2}], 10)
gauge("Journal pending", "Journal bytes not yet moved into store.redb, over the journal's size: the applier's lag. Normally at most about 25 % (alert ChappeJournalBacklog above 50 %).",
      [(f"instance:chappe_store_journal_bytes_per_capacity:ratio{{{INST}}}", "{{instance}}")], PCT,
      [{"color": "green", "value": None}, {"color": "orange", "value": 0.25}, {"color": "red", "value": 0.5}], 1)
timeseries("Journal pending bytes", "Journal bytes not yet in store.redb, and the journal's size.",
           [(f"chappe_store_journal_bytes{{{INST}}}", "{{instance}} pending"),
            (f"chappe_store_journal_capacity_bytes{{{INST}}}", "{{instance}} capacity")], "bytes", w=6)
timeseries("Stored ciphertext and cap", "chappe_store_bytes (ciphertext, not the file size) and limits.max_store_bytes (0 = no cap).",
           [(f"chappe_store_bytes{{{INST}}}", "{{instance}} stored"),
            (f"chappe_store_max_bytes{{{INST}}}", "{{instance}} cap")], "bytes", w=12)
timeseries("Free disk and watermark", "Free space on the state directory's file system and limits.min_free_disk_bytes (0 = disabled).",
           [(f"chappe_store_disk_free_bytes{{{INST}}}", "{{instance}} free"),
            (f"chappe_store_disk_watermark_bytes{{{INST}}}", "{{instance}} watermark")], "bytes", w=12)

row("Process")
timeseries("CPU", "Cores the relay process uses (1 = one core busy).",
           [(f"instance:process_cpu_seconds:rate5m{{{JOB_INST}}}", "{{instance}}")], "short", w=6)
timeseries("Memory", "Resident and virtual memory of the relay process.",
           [(f"process_resident_memory_bytes{{{JOB_INST}}}", "{{instance}} resident"),
            (f"process_virtual_memory_bytes{{{JOB_INST}}}", "{{instance}} virtual")], "bytes", w=6)
timeseries("File descriptors", "Open file descriptors and the process's limit.",
           [(f"process_open_fds{{{JOB_INST}}}", "{{instance}} open"),
            (f"process_max_fds{{{JOB_INST}}}", "{{instance}} limit")], "short", w=6)
timeseries("Threads", "Threads of the relay process.",
           [(f"process_threads{{{JOB_INST}}}", "{{instance}}")], "short", w=6)

dashboard = {
    "title": "Chappe relay",
    "uid": "chappe-relay",
    "description": "chappe-relay: traffic, latency, sessions, refusals, store headroom and process. Reads the recording rules in monitoring/prometheus/chappe.rules.yml.",
    "tags": ["chappe"],
    "timezone": "browser",
    "editable": True,
    "graphTooltip": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "schemaVersion": 39,
    "version": 1,
    "links": [],
    "annotations": {"list": [{
        "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
        "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": [], "includeAll": False, "multi": False},
        {"name": "instance", "label": "Relay", "type": "query", "datasource": DS,
         "query": 'label_values(chappe_build_info{job="chappe"}, instance)',
         "definition": 'label_values(chappe_build_info{job="chappe"}, instance)',
         "current": {}, "hide": 0, "refresh": 2, "regex": "", "sort": 1, "options": [],
         "includeAll": True, "allValue": ".+", "multi": True},
    ]},
    "panels": panels,
}

text = json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"
if sys.argv[1:] == ["--check"]:
    if not OUT.exists() or OUT.read_text() != text:
        sys.exit(f"{OUT} is not what {Path(__file__).name} writes: run {sys.argv[0]} and commit the result")
elif sys.argv[1:]:
    sys.exit(__doc__)
else:
    OUT.write_text(text)
