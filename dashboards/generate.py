#!/usr/bin/env python3
"""Writes Postern's Grafana dashboards, and the copies the Helm chart packages.

    python3 dashboards/generate.py            # rewrite the committed files
    python3 dashboards/generate.py --out DIR  # write the same layout under DIR (the test diffs it)

Outputs, relative to the repository (or DIR):
- dashboards/<name>.json: the four dashboards Grafana imports (schemaVersion 39);
- helm/postern/files/dashboards/<name>.json: byte-identical copies for the chart's ConfigMap;
- helm/postern/files/alerts.yml: a byte-identical copy of dashboards/alerts.yml (the hand-written
  rules) for the chart's PrometheusRule: Helm reads files inside the chart only.

Plain Python and the standard library: the grafana-foundation-sdk package is not on the package
index these machines can reach, and the JSON below is small enough to build directly. Every
panel query carries the `job`/`instance` filter through `sel()`, so no panel escapes the
variables; tests/py/test_dashboards.py checks that and the metric names against the code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FILTER = 'job=~"$job",instance=~"$instance"'
SCHEMA_VERSION = 39


def sel(metric: str, matchers: str = "") -> str:
    """A selector with the dashboard's job/instance filter and optional extra matchers."""
    extra = f",{matchers}" if matchers else ""
    return f"{metric}{{{FILTER}{extra}}}"


def rate(metric: str, matchers: str = "") -> str:
    return f"rate({sel(metric, matchers)}[$__rate_interval])"


def quantile(q: float, histogram: str, by: str = "", matchers: str = "") -> str:
    labels = ", ".join(["le", *filter(None, [by])])
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(histogram + '_bucket', matchers)}))"


def target(expr: str, legend: str, ref: str) -> dict:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def steps(*pairs: tuple[float | None, str]) -> dict:
    """Absolute thresholds: (None, base colour), then (from value, colour) upwards."""
    return {"mode": "absolute",
            "steps": [{"color": colour, "value": value} for value, colour in pairs]}


GREEN = steps((None, "green"))


class Dashboard:
    """Panels laid out left to right on Grafana's 24-column grid, wrapping to new rows."""

    def __init__(self, uid: str, title: str, description: str):
        self.uid, self.title, self.description = uid, title, description
        self.panels: list[dict] = []
        self.x = self.y = self.row_height = 0

    def _place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_height = max(self.row_height, h)
        return pos

    def _panel(self, kind: str, title: str, description: str, queries: list[tuple[str, str]],
               unit: str, thresholds: dict, w: int, h: int, custom: dict, options: dict,
               extra_defaults: dict | None = None) -> None:
        defaults = {"unit": unit, "thresholds": thresholds, "color": {"mode": "palette-classic"}
                    if kind == "timeseries" else {"mode": "thresholds"}, "custom": custom}
        defaults.update(extra_defaults or {})
        self.panels.append({
            "datasource": DATASOURCE,
            "description": description,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "gridPos": self._place(w, h),
            "id": len(self.panels) + 1,
            "options": options,
            "targets": [target(expr, legend, chr(ord("A") + i))
                        for i, (expr, legend) in enumerate(queries)],
            "title": title,
            "type": kind,
        })

    def timeseries(self, title: str, description: str, queries: list[tuple[str, str]], *,
                   unit: str, thresholds: dict = GREEN, w: int = 12, h: int = 8,
                   stack: str = "none", minimum: float | None = 0) -> None:
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack == "none" else 60,
                  "showPoints": "never", "spanNulls": False,
                  "stacking": {"group": "A", "mode": stack},
                  # A line that crosses a threshold is coloured by it only when one is set.
                  "thresholdsStyle": {"mode": "off" if thresholds is GREEN else "line+area"}}
        extra = {} if minimum is None else {"min": minimum}
        self._panel("timeseries", title, description, queries, unit, thresholds, w, h, custom,
                    {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                     "tooltip": {"mode": "multi", "sort": "desc"}}, extra)

    def stat(self, title: str, description: str, queries: list[tuple[str, str]], *, unit: str,
             thresholds: dict, w: int = 6, h: int = 4, mappings: list | None = None,
             text_mode: str = "auto") -> None:
        self._panel("stat", title, description, queries, unit, thresholds, w, h, {},
                    {"colorMode": "background", "graphMode": "area", "justifyMode": "auto",
                     "orientation": "auto", "textMode": text_mode,
                     "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
                    {"mappings": mappings or []})

    def to_json(self) -> dict:
        return {
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts", "type": "dashboard"}]},
            "description": self.description,
            "editable": True,
            "fiscalYearStartMonth": 0,
            "graphTooltip": 1,
            "links": [{"asDropdown": True, "includeVars": True, "keepTime": True,
                       "tags": ["postern"], "title": "Postern", "type": "dashboards"}],
            "panels": self.panels,
            "refresh": "30s",
            "schemaVersion": SCHEMA_VERSION,
            "tags": ["postern", "smtp"],
            "templating": {"list": VARIABLES},
            "time": {"from": "now-6h", "to": "now"},
            "timepicker": {},
            "timezone": "utc",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
        }


def query_variable(name: str, label: str, query: str) -> dict:
    return {"current": {}, "datasource": DATASOURCE, "definition": query, "includeAll": True,
            "allValue": ".*", "label": label, "multi": True, "name": name,
            "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "regex": "", "sort": 1, "type": "query"}


VARIABLES = [
    {"current": {}, "hide": 0, "includeAll": False, "label": "Data source", "multi": False,
     "name": "datasource", "options": [], "query": "prometheus", "refresh": 1, "regex": "",
     "type": "datasource"},
    query_variable("job", "Job", "label_values(postern_build_info, job)"),
    query_variable("instance", "Instance",
                   'label_values(postern_build_info{job=~"$job"}, instance)'),
]

UP_DOWN = [{"options": {"0": {"color": "red", "index": 0, "text": "down"},
                        "1": {"color": "green", "index": 1, "text": "up"}}, "type": "value"}]


def agg(op: str, inner: str, by: str = "") -> str:
    return f"{op} by ({by}) ({inner})" if by else f"{op}({inner})"


def per_second(metric: str, matchers: str = "", by: str = "") -> str:
    """Fleet-wide events per second (summed over the selected replicas)."""
    return agg("sum", rate(metric, matchers), by)


def last_hour(metric: str, matchers: str = "") -> str:
    return agg("sum", f"increase({sel(metric, matchers)}[1h])")


def fleet_overview() -> Dashboard:
    d = Dashboard("postern-fleet-overview", "Postern / Fleet overview",
                  "Replicas, sessions, accepted and refused mail, the queue and delivery.")
    d.stat("Replicas up", "Scrape targets of the selected jobs answering /metrics.",
           [(agg("sum", sel("up")), "up")], unit="short",
           thresholds=steps((None, "red"), (1, "green")))
    d.stat("Replicas by version", "postern_build_info: one series per replica; a mixed count "
           "during a rollout is expected, after it is not.",
           [(agg("count", sel("postern_build_info"), "version"), "{{version}}")],
           unit="short", thresholds=GREEN, text_mode="value_and_name")
    d.stat("Replicas draining", "Replicas in `postern drain` (preStop): unready, handing off.",
           [(agg("sum", sel("postern_draining")), "draining")], unit="short",
           thresholds=steps((None, "green"), (1, "yellow")))
    d.stat("Oldest ready message", "Age since acceptance of the oldest message due now or in "
           "flight (alert PosternQueueOldestAgeHigh at 30 min).",
           [(agg("max", sel("postern_queue_oldest_message_age_seconds", 'state="ready"')),
             "ready")], unit="s", thresholds=steps((None, "green"), (600, "yellow"), (1800, "red")))
    d.timeseries("Sessions by listener", "Open SMTP sessions per listener role.",
                 [(agg("sum", sel("postern_smtp_sessions_active"), "listener"), "{{listener}}")],
                 unit="short")
    d.timeseries("Accepted messages and recipients", "Messages accepted at end of data and "
                 "recipients accepted at RCPT, per second.",
                 [(per_second("postern_smtp_messages_total", 'result="accepted"'), "messages"),
                  (per_second("postern_smtp_recipients_total", 'result="accepted"'),
                   "recipients")], unit="ops")
    d.timeseries("Rejections by reason", "Every 4xx/5xx the SMTP front door answers, one per "
                 "refused command.",
                 [(per_second("postern_smtp_rejections_total", by="reason"), "{{reason}}")],
                 unit="ops", stack="normal")
    d.timeseries("Queue by state", "ready: due now or in flight; deferred: waiting for a retry.",
                 [(agg("sum", sel("postern_queue_messages"), "state"), "{{state}}")],
                 unit="short", stack="normal")
    d.timeseries("Oldest message age by state", "Age since acceptance of the oldest message in "
                 "each state. Deferred mail may wait up to delivery.max_age (5 days by default).",
                 [(agg("max", sel("postern_queue_oldest_message_age_seconds"), "state"),
                   "{{state}}")], unit="s",
                 thresholds=steps((None, "green"), (1800, "yellow"), (86400, "red")))
    d.timeseries("Delivery results", "Recipient delivery attempts per second by result.",
                 [(per_second("postern_delivery_recipients_total", by="result"), "{{result}}")],
                 unit="ops", stack="normal")
    d.timeseries("Delivery latency (acceptance to delivered)", "From the 250 at end of data to "
                 "the final delivery, per recipient (alert PosternDeliveryLatencyP99High at 1 h).",
                 [(quantile(q, "postern_delivery_duration_seconds", matchers='result="delivered"'),
                   f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)], unit="s",
                 thresholds=steps((None, "green"), (3600, "red")))
    d.timeseries("Outbound SMTP transaction duration", "MAIL FROM to the final reply of "
                 "DATA/BDAT on a connected session, by result.",
                 [(quantile(0.95, "postern_delivery_smtp_transaction_seconds", by="result"),
                   "p95 {{result}}"),
                  (quantile(0.99, "postern_delivery_smtp_transaction_seconds", by="result"),
                   "p99 {{result}}")], unit="s")
    return d


def abuse_and_quotas() -> Dashboard:
    d = Dashboard("postern-abuse-and-quotas", "Postern / Abuse and quotas",
                  "Authentication failures, brakes, quota refusals and revocations.")
    d.stat("Quota backend", "postern_quota_backend_up of the least healthy replica "
           "(alert PosternQuotaBackendDown).",
           [(agg("min", sel("postern_quota_backend_up")), "quota backend")], unit="none",
           thresholds=steps((None, "red"), (1, "green")), mappings=UP_DOWN)
    d.stat("Directory", "postern_directory_available of the least healthy replica "
           "(alert PosternDirectoryUnavailable).",
           [(agg("min", sel("postern_directory_available")), "directory")], unit="none",
           thresholds=steps((None, "red"), (1, "green")), mappings=UP_DOWN)
    d.stat("Failed AUTH per second", "Wrong credentials across the selection (alert "
           "PosternAuthFailureSpike at 1/s).",
           [(per_second("postern_smtp_auth_attempts_total", 'result="failed"'), "failed")],
           unit="ops", thresholds=steps((None, "green"), (0.2, "yellow"), (1, "red")))
    d.stat("Directory generation spread", "Newest minus oldest directory generation applied "
           "by the replicas: 0 when all are in step.",
           [(agg("max", sel("postern_directory_generation")) + " - "
             + agg("min", sel("postern_directory_generation")), "generations behind")],
           unit="short", thresholds=steps((None, "green"), (1, "yellow"), (5, "red")))
    d.timeseries("AUTH attempts by result", "ok, failed (wrong credentials), braked (the "
                 "per-IP brake answered), error (the directory failed).",
                 [(per_second("postern_smtp_auth_attempts_total", by="result"), "{{result}}")],
                 unit="ops", stack="normal")
    d.timeseries("Brakes", "Refusals by the fleet brakes: commands refused with reason brake, "
                 "AUTH braked, connections refused at connect by reason.",
                 [(per_second("postern_smtp_rejections_total", 'reason="brake"'),
                   "commands braked"),
                  (per_second("postern_smtp_auth_attempts_total", 'result="braked"'),
                   "AUTH braked"),
                  (per_second("postern_smtp_connections_rejected_total", by="reason"),
                   "connections: {{reason}}")], unit="ops")
    d.timeseries("Quota refusals (addresses and plans)", "Recipients refused because an "
                 "authenticated address's daily quota is full.",
                 [(per_second("postern_quota_refusals_total", 'scope="address"'),
                   "address quota full")], unit="ops")
    d.timeseries("Port-25 hosting cap", "Recipients refused on the relay port because the "
                 "hosting account's daily cap is full: one customer hitting its cap, or a "
                 "compromised site sending spam.",
                 [(per_second("postern_quota_refusals_total", 'scope="hosting"'),
                   "hosting cap full")], unit="ops")
    d.timeseries("Quota holds by result", "held, full, unavailable (the backend did not answer: "
                 "mail refused with 451).",
                 [(per_second("postern_quota_holds_total", by="result"), "{{result}}")],
                 unit="ops", stack="normal")
    d.timeseries("Revocations", "Live sessions cut because their device password was revoked "
                 "or rotated.",
                 [(per_second("postern_smtp_sessions_revoked_total"), "sessions cut")],
                 unit="ops")
    d.timeseries("Revocation apply time", "From the revoking directory write to this replica "
                 "having applied it (alert PosternRevocationSlow at p99 5 s).",
                 [(quantile(0.99, "postern_directory_revocation_apply_seconds"), "p99"),
                  (quantile(0.5, "postern_directory_revocation_apply_seconds"), "p50")],
                 unit="s", thresholds=steps((None, "green"), (5, "red")))
    d.timeseries("PROXY protocol refusals", "Connections refused over their PROXY header by "
                 "reason: untrusted or malformed senders in front of the relay.",
                 [(per_second("postern_smtp_proxy_refused_total", by="reason"), "{{reason}}")],
                 unit="ops")
    return d


def transport_security() -> Dashboard:
    d = Dashboard("postern-transport-security", "Postern / Transport security",
                  "How outbound mail is protected (TLS modes, DANE, MTA-STS) and DKIM signing.")
    d.stat("DKIM signing errors (1 h)", "Messages refused with 451 because signing failed "
           "(alert PosternDkimSigningFailures).",
           [(last_hour("postern_dkim_messages_total", 'result="error"'), "errors")],
           unit="short", thresholds=steps((None, "green"), (1, "red")))
    d.stat("DANE failures (1 h)", "Deliveries refused by DANE (RFC 7672).",
           [(last_hour("postern_delivery_dane_failures_total"), "DANE")],
           unit="short", thresholds=steps((None, "green"), (1, "yellow"), (50, "red")))
    d.stat("MTA-STS failures (1 h)", "Deliveries refused by MTA-STS enforce (RFC 8461).",
           [(last_hour("postern_delivery_mta_sts_failures_total"), "MTA-STS")],
           unit="short", thresholds=steps((None, "green"), (1, "yellow"), (50, "red")))
    d.stat("Inbound TLS handshake failures (1 h)", "Failed or timed-out handshakes on the "
           "listeners.",
           [(last_hour("postern_smtp_tls_handshakes_total", 'result!="ok"'), "failed")],
           unit="short", thresholds=steps((None, "green"), (100, "yellow")))
    d.timeseries("Delivery TLS mode mix", "Share of delivered recipients by the protection of "
                 "the session: dane, mta-sts, opportunistic, plaintext.",
                 [(per_second("postern_delivery_recipients_total", 'result="delivered"', "tls"),
                   "{{tls}}")], unit="ops", stack="percent")
    d.timeseries("Delivery results by TLS mode", "Recipient attempts by result and TLS mode; "
                 "none = no server gave a transaction answer.",
                 [(per_second("postern_delivery_recipients_total", by="result, tls"),
                   "{{result}} {{tls}}")], unit="ops")
    d.timeseries("DANE failures by reason", "bogus_* = DNSSEC validation failed; tlsa_mismatch "
                 "= the server's certificate matches no TLSA record.",
                 [(per_second("postern_delivery_dane_failures_total", by="reason"),
                   "{{reason}}")], unit="ops", stack="normal")
    d.timeseries("MTA-STS failures by reason", "Hosts refused under an enforce policy.",
                 [(per_second("postern_delivery_mta_sts_failures_total", by="reason"),
                   "{{reason}}")], unit="ops", stack="normal")
    d.timeseries("DKIM outcome of accepted messages", "signed, or why a message went out "
                 "unsigned (no_key, no_from_domain, header_too_large); error is refused.",
                 [(per_second("postern_dkim_messages_total", by="result"), "{{result}}")],
                 unit="ops", stack="normal")
    d.timeseries("DKIM signatures by algorithm", "A dual-signed message counts once per "
                 "algorithm.",
                 [(per_second("postern_dkim_signatures_total", by="algorithm"),
                   "{{algorithm}}")], unit="ops")
    d.timeseries("Inbound TLS handshakes", "By listener and result (ok, failed, timeout).",
                 [(per_second("postern_smtp_tls_handshakes_total", by="listener, result"),
                   "{{listener}} {{result}}")], unit="ops", w=24)
    return d


def spool_and_dependencies() -> Dashboard:
    d = Dashboard("postern-spool-and-dependencies", "Postern / Spool and dependencies",
                  "The spool's disk and fsyncs, group commits, Redis and PostgreSQL.")
    d.stat("Spool free space (least)", "Free ratio of the fullest spool file system (alert "
           "PosternSpoolDiskLow below 10 %).",
           [(agg("min", sel("postern_spool_filesystem_free_ratio")), "free")],
           unit="percentunit", thresholds=steps((None, "red"), (0.1, "yellow"), (0.2, "green")))
    d.stat("Spool messages", "Messages in the spools of the selection.",
           [(agg("sum", sel("postern_spool_messages")), "messages")], unit="short",
           thresholds=GREEN)
    d.stat("Delivery log records dropped (1 h)", "History rows given up (the log may lose "
           "rows, never mail).",
           [(last_hour("postern_delivery_log_dropped_records_total"), "dropped")],
           unit="short", thresholds=steps((None, "green"), (1, "yellow")))
    d.stat("Dead destinations", "Destinations taken for dead (concurrency 1, retries spread).",
           [(agg("sum", sel("postern_delivery_dead_destinations")), "dead")], unit="short",
           thresholds=steps((None, "green"), (10, "yellow")))
    d.timeseries("Spool free space", "Free bytes of each replica's spool file system.",
                 [(sel("postern_spool_filesystem_free_bytes"), "{{instance}}")], unit="bytes",
                 thresholds=steps((None, "red"), (1073741824, "green")))
    d.timeseries("fsync latency", "Every fsync/fdatasync the spool makes.",
                 [(quantile(q, "postern_spool_fsync_seconds"), f"p{round(q * 100)}")
                  for q in (0.5, 0.99)], unit="s",
                 thresholds=steps((None, "green"), (0.1, "red")))
    d.timeseries("Group commit batch size", "Messages made durable by one group commit: large "
                 "batches mean many concurrent DATA ends share one fsync.",
                 [(quantile(q, "postern_spool_commit_batch_messages"), f"p{round(q * 100)}")
                  for q in (0.5, 0.99)], unit="short")
    d.timeseries("Group commit duration", "Write and fsync of one group commit.",
                 [(quantile(0.99, "postern_spool_commit_seconds"), "p99")], unit="s",
                 thresholds=steps((None, "green"), (0.5, "red")))
    d.timeseries("Redis latency (p99)", "Round trips of the quota and brake backends by "
                 "operation.",
                 [(quantile(0.99, "postern_redis_operation_seconds", by="operation"),
                   "{{operation}}")], unit="s", thresholds=steps((None, "green"), (0.1, "red")))
    d.timeseries("Redis errors", "Failed Redis round trips per second by operation.",
                 [(per_second("postern_redis_operation_seconds_count", 'status="error"',
                              "operation"), "{{operation}}")], unit="ops",
                 thresholds=steps((None, "green"), (0.01, "red")))
    d.timeseries("PostgreSQL latency (p99)", "Round trips of the directory and delivery log "
                 "by operation.",
                 [(quantile(0.99, "postern_postgres_operation_seconds", by="operation"),
                   "{{operation}}")], unit="s", thresholds=steps((None, "green"), (0.25, "red")))
    d.timeseries("PostgreSQL errors", "Failed PostgreSQL round trips per second by operation.",
                 [(per_second("postern_postgres_operation_seconds_count", 'status="error"',
                              "operation"), "{{operation}}")], unit="ops",
                 thresholds=steps((None, "green"), (0.01, "red")))
    d.timeseries("Directory cache lookups", "By kind and how they were answered.",
                 [(per_second("postern_directory_cache_lookups_total", by="kind, result"),
                   "{{kind}} {{result}}")], unit="ops", w=24)
    return d


DASHBOARDS = {
    "fleet-overview": fleet_overview,
    "abuse-and-quotas": abuse_and_quotas,
    "transport-security": transport_security,
    "spool-and-dependencies": spool_and_dependencies,
}


def outputs() -> dict[str, bytes]:
    """Relative path -> content of every generated file."""
    files = {}
    for name, build in DASHBOARDS.items():
        text = (json.dumps(build().to_json(), indent=2, sort_keys=True) + "\n").encode()
        files[f"dashboards/{name}.json"] = text
        files[f"helm/postern/files/dashboards/{name}.json"] = text
    files["helm/postern/files/alerts.yml"] = (REPO / "dashboards" / "alerts.yml").read_bytes()
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO,
                        help="root to write under (default: the repository)")
    args = parser.parse_args()
    for relative, content in outputs().items():
        path = args.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


if __name__ == "__main__":
    main()
