"""The dashboards and alert rules of issue 12 against a live Prometheus.

One real `postern serve` (Redis as the quota backend, PostgreSQL as the directory, DNS from the
test knotd, delivering to an aiosmtpd MX) is scraped every second by a real Prometheus
(Debian's `prometheus`) as job "postern", with the repository's `dashboards/alerts.yml` as its
rule file, evaluated every second. Real clients (smtplib) drive it first: accepted mail
delivered to the MX, failed AUTHs, a quota refusal and a deferral (the MX answers 451 once).
Then, in this order:

* every target expression of every panel of every dashboard in `dashboards/*.json`, with the
  Grafana variables substituted, must parse in that Prometheus and return data;
* every alerting and recording rule expression of `alerts.yml` must parse, and the rules API
  must show every group of the file loaded with every rule healthy;
* with Redis stopped, `PosternQuotaBackendDown` goes from not active to firing.

The files are the repository's (`$POSTERN_DASHBOARDS_DIR` can point the harness at others for
trying it out); missing files fail the tests, they are not skipped.
"""

from __future__ import annotations

import base64
import os
import shutil
import smtplib
import ssl
import tempfile
from pathlib import Path

import pytest

from prometheus_util import (PrometheusServer, dashboards_dir, panel_queries, rule_exprs,
                             substitute, template_values, variable_queries)
from support import (DAILY_LIMIT_RE, Postern, PostgresServer, RedisServer, SmtpReceiver,
                     free_port_on, make_message, run, wait_until)

JOB = "postern"
DOMAIN = "plain.test"                 # its MX is the test receiver on 127.0.0.3
ALICE = f"alice@{DOMAIN}"
DAILY = 3                             # alice's override: the 4th recipient is refused
FAILED_AUTHS = 3                      # each in its own session, below every brake
QUOTA_ALERT = "PosternQuotaBackendDown"
# Grafana's $__rate_interval is at least 4 scrape intervals; 1m is what a 15s-scrape
# production Prometheus gets, and holds 60 samples here. $__interval and $__range are what a
# dashboard over the last 5 minutes would send.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000",
            "__range": "5m", "__range_s": "300", "__range_ms": "300000"}
ALERT_WAIT = 150                      # s: `for: 1m` plus detection and evaluation


class Live:
    """What the module's tests share: the servers, and promtool's complaint about alerts.yml
    (None when Prometheus loaded it)."""

    def __init__(self, pt: Postern, prom: PrometheusServer, redis: RedisServer,
                 rules_error: str | None):
        self.pt, self.prom, self.redis = pt, prom, redis
        self.rules_error = rules_error

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.pt.port('http')}"


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def submission(pt: Postern) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", pt.port("submission"), timeout=15)
    assert client.starttls(context=client_context())[0] == 220
    client.ehlo()
    return client


def auth_plain(client: smtplib.SMTP, user: str, password: str):
    """Exactly one AUTH PLAIN (smtplib's login() would go on to LOGIN after a failure)."""
    client.user, client.password = user, password
    return client.auth("PLAIN", client.auth_plain)


def check_rules_file(path: Path) -> str | None:
    """`promtool check rules`: None when clean, else its output (Prometheus would refuse to
    start on a rule file it cannot load, and the panel tests do not need the rules)."""
    if not path.is_file():
        return f"{path} is missing"
    result = run(["promtool", "check", "rules", str(path)], timeout=60)
    return None if result.returncode == 0 else result.stdout + result.stderr


@pytest.fixture(scope="module")
def live(postern_bin, certs, knot, tmp_path_factory):
    base = tmp_path_factory.mktemp("prometheus-live")
    stack = []                                  # stopped in reverse order at teardown
    try:
        port = free_port_on("127.0.0.3")
        mx = SmtpReceiver("127.0.0.3", port).start()
        stack.append(mx)
        # Outside pytest's tmp_path, whose parents only root may enter: PostgreSQL runs as
        # the postgres user.
        pg_dir = Path(tempfile.mkdtemp(prefix="postern-pg-"))
        pg = PostgresServer(pg_dir)
        stack.append(pg)
        pg.start()
        redis = RedisServer(base / "redis").start()
        stack.append(redis)

        pg.create_database("live")
        password_file = base / "pg-password"
        password_file.write_text(pg.password + "\n")
        secret_key_file = base / "secret.key"
        secret_key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        pt = Postern(postern_bin, base / "postern", cert=certs.server, dns_port=knot.port,
                     delivery_port=port, overrides={
                         "store": {"backend": "postgres", "url": pg.url("live"),
                                   "tls": "disable", "password_file": password_file,
                                   "secret_key_file": secret_key_file},
                         "quota": {"backend": "redis", "redis_url": redis.url}})
        stack.append(pt)
        pt.cli("migrate")
        pt.add_address(ALICE)
        password = pt.add_device(ALICE, "laptop")
        pt.cli("limit", "set", ALICE, "--daily", str(DAILY))
        pt.start()

        rules = dashboards_dir() / "alerts.yml"
        rules_error = check_rules_file(rules)
        prom = PrometheusServer(base / "prometheus", {JOB: [f"127.0.0.1:{pt.port('http')}"]},
                                [] if rules_error else [rules])
        stack.append(prom)
        prom.start()
        live = Live(pt, prom, redis, rules_error)
        wait_until(lambda: prom.targets_up(JOB), 30, "Prometheus to scrape postern")
        try:
            drive(live, mx, password)
        except AssertionError as e:
            # conftest attaches server logs to failed tests, not to a failed module set-up.
            raise AssertionError(f"{e}\n--- postern log (tail) ---\n{pt.log_tail(30)}"
                                 f"\n--- prometheus log (tail) ---\n{prom.log_tail(15)}") from e
        yield live
    finally:
        for server in reversed(stack):
            if isinstance(server, PostgresServer):
                server.stop("immediate")
                shutil.rmtree(server.dir, ignore_errors=True)
            else:
                server.stop()


def drive(live: Live, mx: SmtpReceiver, password: str):
    """The traffic the panels show, every reply asserted: three messages delivered (one after
    a 451 deferral), three failed AUTHs, one quota refusal. Returns once Prometheus has
    scraped the counters of all of it."""
    pt, prom = live.pt, live.prom
    for rcpt in (f"delivered-1@{DOMAIN}", f"tempfail-1@{DOMAIN}", f"delivered-2@{DOMAIN}"):
        with submission(pt) as client:
            assert auth_plain(client, ALICE, password) == (
                235, b"2.7.0 Authentication successful")
            assert client.sendmail(ALICE, [rcpt], make_message(sender=ALICE, to=rcpt)) == {}
        mx.wait_for(rcpt, timeout=30)
    # The MX answered tempfail-1's first RCPT with 451 and took the retry.
    assert [a.reply for a in mx.attempts_for(f"tempfail-1@{DOMAIN}")] == [
        "451 4.3.0 Try again later", "250 2.1.5 Ok"]

    for _ in range(FAILED_AUTHS):
        with submission(pt) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                auth_plain(client, ALICE, "not-the-password")
            assert (failed.value.smtp_code, failed.value.smtp_error) == (
                535, b"5.7.0 authentication failed")

    over = f"over-quota@{DOMAIN}"
    with submission(pt) as client:
        assert auth_plain(client, ALICE, password)[0] == 235
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail(ALICE, [over], make_message(sender=ALICE, to=over))
    code, text = refused.value.recipients[over]
    reply = f"{code} {text.decode()}"
    assert code == 450 and DAILY_LIMIT_RE.match(reply), reply
    assert f"({DAILY} recipients per 24 hours)" in reply, reply

    def scraped(expr: str, at_least: int) -> bool:
        return any(float(v) >= at_least for _, v in prom.values(f"sum({expr})"))
    wait_until(lambda: scraped('postern_smtp_auth_attempts_total{result="failed"}', FAILED_AUTHS)
               and scraped('postern_delivery_recipients_total{result="delivered"}', 3)
               and scraped('postern_delivery_recipients_total{result="deferred"}', 1)
               and scraped('postern_smtp_recipients_total', DAILY + 1),
               30, "Prometheus to scrape the traffic's counters")
    # One scrape more: then every series has two samples, which rate() over
    # $__rate_interval needs to return anything, however late the series was born (main's
    # labelled counters appear at their first event; start-up zeros are the metrics tests'
    # concern, not this one's).
    last = f'timestamp(up{{job="{JOB}"}})'
    [(_, seen)] = prom.values(last)
    wait_until(lambda: float(prom.values(last)[0][1]) > float(seen), 10, "one more scrape",
               interval=0.2)


def describe(answer: dict) -> str:
    if answer.get("status") != "success":
        return f"error: {answer.get('errorType', '')} {answer.get('error', answer)}"
    return "empty result"


def test_every_dashboard_panel_parses_and_returns_data(live, request):
    """Every target of every panel of every `dashboards/*.json` (rows' panels included), the
    Grafana variables substituted ($job, $instance, $__rate_interval = 1m, $__interval,
    $__range, the dashboard's own custom variables): the instant query succeeds and its
    result is not empty; so do the label_values() queries of the dashboard's query variables.
    All failing panels are listed in one assertion."""
    request.node.posterns = [live.pt]
    directory = dashboards_dir()
    files = sorted(directory.glob("*.json"))
    assert files, f"no Grafana dashboards (*.json) in {directory}"
    problems, checked = [], 0
    for path in files:
        queries = panel_queries(path)
        if not queries:
            problems.append(f"{path.name}: no panel has a Prometheus target expression")
        values = {**BUILTINS, **template_values(path), "job": JOB, "instance": live.instance}
        # The drop-downs: an empty $job or $instance list leaves every panel empty in Grafana.
        for name, query in variable_queries(path):
            expr, unknown = substitute(query, values)
            answer = live.prom.query(expr) if not unknown else {"status": "error",
                                                                "error": f"unknown {unknown}"}
            checked += 1
            if answer.get("status") != "success" or not answer["data"]["result"]:
                problems.append(f"{path.name}: variable ${name}: {describe(answer)}\n"
                                f"    query: {expr}")
        for q in queries:
            expr, unknown = substitute(q.expr, values)
            if unknown:
                problems.append(f"{q.where()}: unknown variables {sorted(set(unknown))} in "
                                f"{q.expr!r}")
                continue
            answer = live.prom.query(expr)
            checked += 1
            if answer.get("status") != "success" or not answer["data"]["result"]:
                problems.append(f"{q.where()}: {describe(answer)}\n    expr: {expr}")
    assert not problems, (f"{len(problems)} of {checked} panel queries failed "
                          f"(instance {live.instance}):\n" + "\n".join(problems))


def test_every_rule_parses_and_every_group_loads(live, request):
    """Every alerting and recording rule expression of alerts.yml parses as an instant query;
    the rules API lists every group of the file, each rule of it evaluated with health "ok"."""
    request.node.posterns = [live.pt]
    path = dashboards_dir() / "alerts.yml"
    assert live.rules_error is None, f"alerts.yml not loadable:\n{live.rules_error}"
    rules = rule_exprs(path)
    assert rules, f"{path} has no rules"
    problems = []
    for rule in rules:
        answer = live.prom.query(rule.expr)
        if answer.get("status") != "success":
            problems.append(f"group {rule.group} {rule.kind} {rule.name}: {describe(answer)}"
                            f"\n    expr: {rule.expr}")

    expected = {}
    for rule in rules:
        expected.setdefault(rule.group, []).append(rule.name)

    def evaluated():
        # A rule not evaluated yet has health "unknown" and the zero time as lastEvaluation.
        groups = live.prom.rule_groups()
        done = all(not r.get("lastEvaluation", "0001").startswith("0001")
                   for g in groups for r in g["rules"])
        return groups if done else None
    groups = wait_until(evaluated, 30, "every rule to be evaluated once", interval=0.5)
    loaded = {g["name"]: g for g in groups}
    for name, names in expected.items():
        group = loaded.get(name)
        if group is None:
            problems.append(f"group {name}: not loaded by Prometheus")
            continue
        got = [r["name"] for r in group["rules"]]
        if got != names:
            problems.append(f"group {name}: Prometheus loaded {got}, the file has {names}")
        for r in group["rules"]:
            if r["health"] != "ok":
                problems.append(f"group {name} rule {r['name']}: health {r['health']!r} "
                                f"{r.get('lastError', '')}")
    assert not problems, f"{len(problems)} rule problems:\n" + "\n".join(problems)


def test_quota_backend_down_alert_fires_when_redis_stops(live, request):
    """Redis up: `postern_quota_backend_up` is 1 and PosternQuotaBackendDown is neither pending
    nor firing. Redis stopped: the alert is firing within 150 s (its `for` is 1m)."""
    request.node.posterns = [live.pt]
    path = dashboards_dir() / "alerts.yml"
    assert live.rules_error is None, f"alerts.yml not loadable:\n{live.rules_error}"
    assert QUOTA_ALERT in [r.name for r in rule_exprs(path) if r.kind == "alert"], (
        f"{path} has no alert {QUOTA_ALERT}")
    prom = live.prom
    selector = f'postern_quota_backend_up{{job="{JOB}",instance="{live.instance}"}}'
    assert [v for _, v in prom.values(selector)] == ["1"]
    assert prom.alerts(QUOTA_ALERT) == []

    live.redis.stop()
    wait_until(lambda: [v for _, v in prom.values(selector)] == ["0"], 30,
               "Prometheus to see postern_quota_backend_up 0")
    firing = wait_until(lambda: [a for a in prom.alerts(QUOTA_ALERT) if a["state"] == "firing"],
                        ALERT_WAIT, f"{QUOTA_ALERT} to fire", interval=1)
    # The alert names the fleet it is about (routes and silences go by job).
    assert [a["labels"].get("job") for a in firing] == [JOB], firing
