"""The Grafana dashboards and Prometheus rules of dashboards/ (issue 12), checked against the code.

- The committed JSON is what dashboards/generate.py writes, and the chart's copies (helm/postern/
  files/) are byte-identical to dashboards/.
- Each dashboard has the structure Grafana's importer and the SREs rely on: a stable uid, the
  datasource/job/instance variables, unique panel ids, every query on ${datasource} and
  filtered by job and instance, units and thresholds, a layout without overlaps.
- Every metric a panel or rule names exists in src/metrics/mod.rs (or is a recording rule of
  alerts.yml), so a renamed metric breaks this test rather than a dashboard in production.
- Every panel expression parses as PromQL (Grafana's variables replaced), by promtool.
- `promtool check rules` and `promtool test rules` pass, and every alert has a quiet and a
  firing case in dashboards/alerts_test.yml.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import AUTH_FAILED, EHLO_FIRST, REPO, TLS_GO, run, submit_as_alice

DASHBOARDS = REPO / "dashboards"
CHART_FILES = REPO / "helm" / "postern" / "files"
ALERTS = DASHBOARDS / "alerts.yml"
ALERTS_TEST = DASHBOARDS / "alerts_test.yml"
NAMES = ["fleet-overview", "abuse-and-quotas", "transport-security", "spool-and-dependencies"]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FILTER = 'job=~"$job",instance=~"$instance"'
# The alert names of the issue-12 metrics contract (README and runbooks refer to them).
ALERT_NAMES = {
    "PosternQuotaBackendDown", "PosternSpoolDiskLow", "PosternQueueOldestAgeHigh",
    "PosternDeferralRatioHigh", "PosternDaneFailuresSpike", "PosternMtaStsFailuresSpike",
    "PosternAuthFailureSpike", "PosternDkimSigningFailures", "PosternReplicaDown",
    "PosternDeliveryLatencyP99High", "PosternRevocationSlow", "PosternDirectoryUnavailable",
}
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up"}
# PromQL words the expressions may use besides metric names (functions, aggregations, operators).
PROMQL_WORDS = {"sum", "min", "max", "count", "avg", "by", "without", "on", "ignoring", "and",
                "or", "unless", "rate", "increase", "histogram_quantile", "max_over_time",
                "offset", "bool", "group_left", "group_right", "clamp_min"}
GRAFANA_VARIABLES = {"$job", "$instance", "$__rate_interval", "$__interval", "$__range"}


def load(name: str) -> dict:
    return json.loads((DASHBOARDS / f"{name}.json").read_text())


def rule_groups() -> list[dict]:
    return yaml.safe_load(ALERTS.read_text())["groups"]


def alert_rules() -> list[dict]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def recorded_names() -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}


def declared_metrics() -> set[str]:
    return set(re.findall(r'"(postern_[a-z0-9_]+)"', (REPO / "src/metrics/mod.rs").read_text()))


def panel_exprs() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of every query of every dashboard."""
    return [(name, panel["title"], t["expr"]) for name in NAMES for panel in load(name)["panels"]
            for t in panel["targets"]]


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matchers) of each `metric{...}` in expr."""
    return re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr)


def bare_words(expr: str) -> set[str]:
    """Identifiers left once selectors, label lists, ranges, strings and numbers are removed:
    PromQL words, or metric names used without a selector."""
    expr = re.sub(r"[a-zA-Z_:][a-zA-Z0-9_:]*\{[^}]*\}", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", r"\1", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r'"[^"]*"', " ", expr)
    return set(re.findall(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr))


def metric_base(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def known(name: str, metrics: set[str], recorded: set[str]) -> bool:
    return (name in metrics or metric_base(name) in metrics or name in recorded
            or name in PROMETHEUS_SERIES)


# ---------------------------------------------------------------------------------------------
# Generated files
# ---------------------------------------------------------------------------------------------

def test_the_committed_files_are_what_the_generator_writes(tmp_path):
    result = run([sys.executable, str(DASHBOARDS / "generate.py"), "--out", str(tmp_path)])
    assert (result.returncode, result.stderr) == (0, "")
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(
        [f"dashboards/{n}.json" for n in NAMES]
        + [f"helm/postern/files/dashboards/{n}.json" for n in NAMES]
        + ["helm/postern/files/alerts.yml"])
    for relative in written:
        assert (REPO / relative).read_bytes() == (tmp_path / relative).read_bytes(), (
            f"{relative} is stale: run python3 dashboards/generate.py")
    # No dashboard outside the generator's set: the chart packages every file of its folder.
    assert sorted(p.name for p in (CHART_FILES / "dashboards").iterdir()) == sorted(
        f"{n}.json" for n in NAMES)
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(f"{n}.json" for n in NAMES)


def test_the_chart_copies_are_byte_identical():
    assert (CHART_FILES / "alerts.yml").read_bytes() == ALERTS.read_bytes()
    for name in NAMES:
        assert (CHART_FILES / "dashboards" / f"{name}.json").read_bytes() == (
            DASHBOARDS / f"{name}.json").read_bytes()


# ---------------------------------------------------------------------------------------------
# Dashboard structure
# ---------------------------------------------------------------------------------------------

def test_uids_are_stable_and_unique():
    uids = [load(name)["uid"] for name in NAMES]
    assert uids == [f"postern-{name}" for name in NAMES]
    titles = [load(name)["title"] for name in NAMES]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", NAMES)
def test_dashboard_uses_the_current_schema_and_the_three_variables(name):
    board = load(name)
    assert board["schemaVersion"] >= 39
    assert "id" not in board  # Grafana assigns ids on import; a fixed one collides
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance"]
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource", "prometheus")
    for var, query in (("job", "label_values(postern_build_info, job)"),
                       ("instance", 'label_values(postern_build_info{job=~"$job"}, instance)')):
        assert variables[var]["type"] == "query"
        assert variables[var]["datasource"] == DATASOURCE
        assert variables[var]["query"]["query"] == query
        assert variables[var]["definition"] == query
        assert variables[var]["includeAll"] and variables[var]["allValue"] == ".*"


@pytest.mark.parametrize("name", NAMES)
def test_every_panel_has_a_query_on_the_datasource_a_unit_and_thresholds(name):
    panels = load(name)["panels"]
    assert len(panels) >= 6
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids), ids
    for panel in panels:
        where = f"{name}: {panel['title']}"
        assert panel["type"] in {"timeseries", "stat"}, where
        assert panel["datasource"] == DATASOURCE, where
        assert panel["targets"], where
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), where
        for t in panel["targets"]:
            assert t["datasource"] == DATASOURCE, where
            assert t["expr"].strip(), where
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"], where
        thresholds = defaults["thresholds"]
        assert thresholds["mode"] == "absolute" and thresholds["steps"][0]["value"] is None, where
        values = [s["value"] for s in thresholds["steps"][1:]]
        assert values == sorted(values), where
        assert panel["title"] and panel["description"], where


@pytest.mark.parametrize("name", NAMES)
def test_panels_fit_the_grid_without_overlapping(name):
    cells = {}
    for panel in load(name)["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_the_issue_panels_are_there():
    titles = {name: [p["title"] for p in load(name)["panels"]] for name in NAMES}
    # The port-25 hosting cap has a panel of its own, apart from the address quotas.
    hosting = [p for p in load("abuse-and-quotas")["panels"] if p["title"] == "Port-25 hosting cap"]
    assert [t["expr"] for t in hosting[0]["targets"]] == [
        f'sum(rate(postern_quota_refusals_total{{{FILTER},scope="hosting"}}[$__rate_interval]))']
    exprs = {name: " ".join(t["expr"] for p in load(name)["panels"] for t in p["targets"])
             for name in NAMES}
    for name, metrics in {
        "fleet-overview": ["postern_smtp_sessions_active", "postern_smtp_messages_total",
                           "postern_smtp_recipients_total", "postern_smtp_rejections_total",
                           "postern_queue_messages", "postern_queue_oldest_message_age_seconds",
                           "postern_delivery_recipients_total",
                           "postern_delivery_duration_seconds_bucket", "postern_build_info"],
        "abuse-and-quotas": ["postern_smtp_auth_attempts_total", "postern_quota_refusals_total",
                             "postern_smtp_sessions_revoked_total", 'reason="brake"'],
        "transport-security": ["postern_delivery_dane_failures_total",
                               "postern_delivery_mta_sts_failures_total",
                               "postern_dkim_messages_total", "by (tls)"],
        "spool-and-dependencies": ["postern_spool_filesystem_free_bytes",
                                   "postern_spool_fsync_seconds_bucket",
                                   "postern_spool_commit_batch_messages_bucket",
                                   "postern_redis_operation_seconds_bucket",
                                   "postern_postgres_operation_seconds_bucket"],
    }.items():
        for metric in metrics:
            assert metric in exprs[name], f"{name} lacks {metric}: {titles[name]}"
    latency = " ".join(t["expr"] for p in load("fleet-overview")["panels"]
                       if p["title"].startswith("Delivery latency") for t in p["targets"])
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}," in latency


# ---------------------------------------------------------------------------------------------
# Expressions: filters, variables, metric names, PromQL
# ---------------------------------------------------------------------------------------------

def test_every_selector_is_filtered_by_job_and_instance_and_no_metric_is_bare():
    for name, title, expr in panel_exprs():
        found = selectors(expr)
        assert found, f"{name}: {title}: {expr}"
        for metric, matchers in found:
            assert matchers == FILTER or matchers.startswith(FILTER + ","), (
                f"{name}: {title}: {metric}{{{matchers}}}")
        assert bare_words(expr) <= PROMQL_WORDS, f"{name}: {title}: {bare_words(expr) - PROMQL_WORDS}"


def test_only_the_allowed_grafana_variables_and_rate_interval_are_used():
    for name, title, expr in panel_exprs():
        variables = set(re.findall(r"\$\{?\w+\}?", expr))
        assert variables <= GRAFANA_VARIABLES, f"{name}: {title}: {variables}"
        # rate() over $__rate_interval: a fixed range breaks at other scrape intervals.
        for window in re.findall(r"\brate\([^\[]*\[([^\]]*)\]", expr):
            assert window == "$__rate_interval", f"{name}: {title}: {expr}"


def test_every_metric_named_by_a_panel_or_a_rule_exists():
    metrics = declared_metrics()
    recorded = recorded_names()
    unknown = set()
    for name, title, expr in panel_exprs():
        unknown |= {f"{name}: {title}: {m}" for m, _ in selectors(expr)
                    if not known(m, metrics, recorded)}
    for group in rule_groups():
        for rule in group["rules"]:
            expr = rule["expr"]
            names = {m for m, _ in selectors(expr)} | (bare_words(expr) - PROMQL_WORDS)
            unknown |= {f"{rule.get('alert', rule.get('record'))}: {m}" for m in names
                        if not known(m, metrics, recorded)}
    assert not unknown, sorted(unknown)


def test_the_name_checks_catch_an_unknown_or_unfiltered_metric():
    metrics, recorded = declared_metrics(), recorded_names()
    assert not known("postern_smtp_mesages_total", metrics, recorded)
    assert known("postern_spool_commit_seconds_bucket", metrics, recorded)
    assert known("postern:delivery_recipients:rate5m", metrics, recorded)
    assert bare_words("sum(rate(postern_smtp_messages_total[5m]))") == {
        "sum", "rate", "postern_smtp_messages_total"}
    assert selectors('sum by (le) (rate(x_bucket{job=~"$job"}[1m]))') == [("x_bucket", 'job=~"$job"')]


# Labels Prometheus adds to every scraped series, and the histogram bucket bound.
TARGET_LABELS = {"job", "instance", "le"}


def scraped_series(text: str) -> dict[str, list[dict[str, str]]]:
    """Series name -> the label sets of its series, from a /metrics text."""
    series: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head = line.rpartition(" ")[0]
        name, _, labels = head.partition("{")
        series.setdefault(name, []).append(dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)))
    return series


def label_uses(expr: str) -> list[tuple[str, str, str | None]]:
    """(metric, label, value or None) for every label a selector matches (value for `=`) and
    every label an aggregation groups by, paired with each metric of the expression."""
    uses = []
    found = selectors(expr)
    for metric, matchers in found:
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
            uses.append((metric, label, value if op == "=" else None))
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        for label in (x.strip() for x in group.split(",")):
            uses += [(metric, label, None) for metric, _ in found]
    return [u for u in uses if u[1] not in TARGET_LABELS]


def test_label_uses_are_parsed():
    assert label_uses('sum by (le, result) (rate(m_bucket{job=~"$job",state="ready"}[1m]))') == [
        ("m_bucket", "state", "ready"), ("m_bucket", "result", None)]


def test_panels_and_rules_use_labels_and_values_the_server_exports(make_server, make_redis):
    """Every label a query matches or groups by exists on that metric's series in a real
    server's /metrics (Redis configured, a failed AUTH and an accepted message behind it), and
    every value matched with `=` is one the server exports. Series the server has not created
    (a backend not configured here) are skipped. Every series of a fixed label set exists
    from start-up, so a value the server never exports is a typo."""
    redis = make_redis()
    srv = make_server(quota={"backend": "redis", "redis_url": redis.url})
    client = srv.connect()
    assert client.ehlo().lines[0] == EHLO_FIRST
    assert client.starttls() == TLS_GO
    assert client.ehlo().lines[0] == EHLO_FIRST
    assert client.auth_plain(srv.alice.address, "not-the-password") == AUTH_FAILED
    client.quit()
    submit_as_alice(srv, srv.bob.address)
    status, _, text = srv.http_get("/metrics")
    assert status == 200
    series = scraped_series(text)
    assert {"mechanism": "plain", "result": "failed"} in series["postern_smtp_auth_attempts_total"]
    exprs = [expr for _, _, expr in panel_exprs()]
    exprs += [r["expr"] for g in rule_groups() for r in g["rules"]]
    checked, wrong = set(), []
    for expr in exprs:
        for metric, label, value in label_uses(expr):
            if metric not in series:
                continue
            checked.add(metric)
            label_sets = series[metric]
            if not any(label in labels for labels in label_sets):
                wrong.append(f"{metric} has no label {label}: {expr}")
            elif value is not None and value not in {labels.get(label) for labels in label_sets}:
                wrong.append(f"{metric}{{{label}=\"{value}\"}} is not exported: {expr}")
    assert not wrong, "\n".join(wrong)
    assert {"postern_smtp_auth_attempts_total", "postern_smtp_sessions_active",
            "postern_smtp_messages_total"} <= checked, checked


def test_every_panel_expression_parses_as_promql(tmp_path):
    """promtool parses each query as the expression of a recording rule, the Grafana variables
    replaced as Grafana would (a regex and a duration)."""
    replace = {"$job": ".*", "$instance": ".*", "$__rate_interval": "1m", "$__interval": "30s",
               "$__range": "6h"}
    rules = []
    for i, (_, _, expr) in enumerate(panel_exprs()):
        for var, value in sorted(replace.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(var, value)
        rules.append({"record": f"postern:panel_{i}", "expr": expr})
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = run(["promtool", "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
    # And it does refuse a broken one: the check is real.
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": [
        {"record": "postern:broken", "expr": "sum(rate(postern_smtp_messages_total[1m])"}]}]}))
    assert run(["promtool", "check", "rules", str(path)]).returncode == 1


# ---------------------------------------------------------------------------------------------
# Alert rules
# ---------------------------------------------------------------------------------------------

def promtool(*args: str) -> subprocess.CompletedProcess:
    assert shutil.which("promtool"), "promtool is missing: run tests/install-deps.sh"
    return run(["promtool", *args], cwd=DASHBOARDS)


def test_promtool_check_rules_is_clean():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(g["rules"]) for g in rule_groups())
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_documented_and_labelled():
    rules = alert_rules()
    assert {r["alert"] for r in rules} == ALERT_NAMES
    assert len(rules) == len(ALERT_NAMES)
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert set(rule["annotations"]) >= {"summary", "description", "runbook"}, rule["alert"]
        assert len(rule["annotations"]["runbook"]) > 100, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
    quota = next(r for r in rules if r["alert"] == "PosternQuotaBackendDown")
    assert (quota["expr"], quota["for"]) == ("postern_quota_backend_up == 0", "1m")
    assert all(r["record"].startswith("postern:") for g in rule_groups() for r in g["rules"]
               if "record" in r)


def test_every_alert_has_a_quiet_and_a_firing_unit_test():
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    quiet, firing = set(), set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert quiet == ALERT_NAMES, ALERT_NAMES ^ quiet
    assert firing == ALERT_NAMES, ALERT_NAMES ^ firing


def test_a_broken_rule_fails_the_unit_tests(tmp_path):
    """The unit tests notice a threshold moved: a healthy fleet (a fifth of attempts deferred)
    would page."""
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    text = ALERTS.read_text()
    assert "postern:delivery_deferral_ratio:rate15m > 0.25" in text
    (tmp_path / "alerts.yml").write_text(
        text.replace("postern:delivery_deferral_ratio:rate15m > 0.25",
                     "postern:delivery_deferral_ratio:rate15m > 0.15"))
    result = run(["promtool", "test", "rules", "alerts_test.yml"], cwd=tmp_path)
    assert result.returncode == 1
    assert "PosternDeferralRatioHigh" in result.stdout + result.stderr
