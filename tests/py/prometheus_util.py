"""A real Prometheus server for the tests (Debian's `prometheus`, /usr/bin/prometheus), and the
reading of the Grafana dashboards and Prometheus rule files of `dashboards/`.

``PrometheusServer`` runs on a free loopback port with its own data directory, scraping the
given targets every second and evaluating the given rule files every second, and answers the
HTTP API (``query``, ``rules``, ``alerts``). The dashboard helpers walk Grafana dashboard JSON
(panels nested in rows included) and substitute the template variables the way Grafana would
before it sends an expression to the data source.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from support import REPO, free_port, stop_process, wait_until

PROMETHEUS = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")


def dashboards_dir() -> Path:
    """The directory of the dashboards and alerts.yml under test: $POSTERN_DASHBOARDS_DIR (for
    trying the harness on other files), else the repository's dashboards/."""
    return Path(os.environ.get("POSTERN_DASHBOARDS_DIR", REPO / "dashboards"))


class PrometheusServer:
    """``prometheus`` on 127.0.0.1:<free port>, data in ``workdir``; ``scrape`` maps a job name to
    a list of ``host:port`` targets; ``rule_files`` are loaded as they are (not copied)."""

    def __init__(self, workdir: Path, scrape: dict[str, list[str]], rule_files: list[Path],
                 interval: str = "1s"):
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / "prometheus.log"
        self.config_path = workdir / "prometheus.yml"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in scrape.items()],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        if shutil.which(PROMETHEUS) is None:
            raise AssertionError(f"{PROMETHEUS} not found: run tests/install-deps.sh")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.config_path}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=info"],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n"
                                     f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    return resp.status == 200
            except OSError:
                return False
        wait_until(ready, timeout, "prometheus to be ready", interval=0.1)
        return self

    def stop(self):
        stop_process(self.proc)

    def log_tail(self, n: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-n:])

    def api(self, path: str, **params) -> dict:
        """GET /api/v1/PATH?params: the decoded JSON body, for errors too (Prometheus answers
        a bad expression with 400 and ``status: error``)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return json.loads(body)
            except ValueError:
                return {"status": "error", "error": f"HTTP {e.code}: {body[:200]!r}"}

    def query(self, expr: str) -> dict:
        """An instant query at the server's now: ``{"status", "data"|"error", ...}``."""
        return self.api("query", query=expr)

    def values(self, expr: str) -> list[tuple[dict, str]]:
        """The (labels, value) pairs of an instant vector query; fails on an error."""
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        return [(r["metric"], r["value"][1]) for r in answer["data"]["result"]]

    def targets_up(self, job: str) -> bool:
        return any(v == "1" for _, v in self.values(f'up{{job="{job}"}}'))

    def alerts(self, name: str) -> list[dict]:
        """The active (pending or firing) alerts called ``name``."""
        answer = self.api("alerts")
        assert answer["status"] == "success", answer
        return [a for a in answer["data"]["alerts"] if a["labels"].get("alertname") == name]

    def rule_groups(self) -> list[dict]:
        answer = self.api("rules")
        assert answer["status"] == "success", answer
        return answer["data"]["groups"]


# ---------------------------------------------------------------------------------------------
# Grafana dashboards and rule files
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PanelQuery:
    dashboard: str         # file name
    panel: str             # panel title (row titles before it, "row / panel")
    ref: str               # the target's refId
    expr: str              # as written in the dashboard

    def where(self) -> str:
        return f"{self.dashboard}: panel {self.panel!r} target {self.ref}"


def _walk_panels(panels: list[dict], prefix: str = ""):
    for panel in panels:
        title = f"{prefix}{panel.get('title') or '(untitled)'}"
        if panel.get("type") == "row":
            # A collapsed row carries its panels inside it; an open row's follow it at top level.
            yield from _walk_panels(panel.get("panels", []), f"{title} / ")
        else:
            yield title, panel


def panel_queries(path: Path) -> list[PanelQuery]:
    """Every expression of every (non-hidden) Prometheus target of every panel of a dashboard."""
    dashboard = json.loads(path.read_text())
    dashboard = dashboard.get("dashboard", dashboard)      # an API export wraps it
    found = []
    for title, panel in _walk_panels(dashboard.get("panels", [])):
        for i, target in enumerate(panel.get("targets", [])):
            if target.get("hide") or "expr" not in target:
                continue
            found.append(PanelQuery(path.name, title, target.get("refId", str(i)),
                                    target["expr"]))
    return found


def template_values(path: Path) -> dict[str, str]:
    """The dashboard's own template variables that are not the data source, job or instance
    (custom, constant, interval, textbox): their current value, else the first option."""
    dashboard = json.loads(path.read_text())
    dashboard = dashboard.get("dashboard", dashboard)
    values = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") in ("datasource", "query", "adhoc"):
            continue
        current = (var.get("current") or {}).get("value")
        if isinstance(current, list):
            current = "|".join(current)
        if current in (None, "", "$__all"):
            options = var.get("options") or []
            current = options[0].get("value") if options else var.get("query", "")
        values[var["name"]] = str(current)
    return values


def variable_queries(path: Path) -> list[tuple[str, str]]:
    """The dashboard's query variables as (name, PromQL) whose result must not be empty for
    the variable's drop-down to offer anything: ``label_values(SELECTOR, LABEL)`` becomes
    ``count by (LABEL) (SELECTOR)``, ``query_result(EXPR)`` EXPR; other forms are left out."""
    dashboard = json.loads(path.read_text())
    dashboard = dashboard.get("dashboard", dashboard)
    found = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query") or var.get("definition") or ""
        if isinstance(query, dict):
            query = query.get("query", "")
        query = query.strip()
        if m := re.fullmatch(r"label_values\((.+),\s*(\w+)\s*\)", query, re.S):
            found.append((var["name"], f"count by ({m.group(2)}) ({m.group(1)})"))
        elif m := re.fullmatch(r"label_values\(\s*(\w+)\s*\)", query):
            found.append((var["name"], f'count by ({m.group(1)}) ({{{m.group(1)}!=""}})'))
        elif m := re.fullmatch(r"query_result\((.+)\)", query, re.S):
            found.append((var["name"], m.group(1)))
    return found


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")


def substitute(expr: str, values: dict[str, str]) -> tuple[str, list[str]]:
    """Grafana's variable syntaxes ($name, ${name}, ${name:fmt}, [[name]]) replaced from
    ``values``; returns the expression and the names it did not know."""
    unknown = []

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name.isdigit():          # $1 in label_replace's replacement is PromQL's own
            return m.group(0)
        if name in values:
            return values[name]
        unknown.append(name)
        return m.group(0)
    return _VARIABLE.sub(one, expr), unknown


@dataclasses.dataclass
class RuleExpr:
    group: str
    name: str              # alert name or recorded series
    kind: str              # "alert" or "record"
    expr: str


def rule_exprs(path: Path) -> list[RuleExpr]:
    """Every rule of a Prometheus rule file (``groups: [{name, rules: [...]}]``)."""
    doc = yaml.safe_load(path.read_text())
    found = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            kind = "alert" if "alert" in rule else "record"
            found.append(RuleExpr(group["name"], rule.get(kind, "?"), kind, str(rule["expr"])))
    return found
