"""The metrics of issue 12 against the real binary: every series of the contract exists from
start-up at zero (before any traffic), then real clients drive it and the counters move by
exactly what they did.

Receivers from conftest: plain.test's MX (127.0.0.3) accepts everything except ``tempfail*``,
which gets 451 on its first attempt (the retry is set far enough away that the message stays
deferred while the test looks)."""

from __future__ import annotations

import base64
import os
import re
import smtplib
import ssl
import tomllib

from support import (AUTH_FAILED, DAILY_LIMIT_RE, MAIL_OK, OK, RCPT_OK, REPO, REVOKED,
                     TOO_MANY_RCPTS, make_message, wait_until)
from conftest import start_with_accounts

# A sample line of the text exposition: name, optional {labels}, value, optional timestamp.
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)( -?\d+)?$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

DOMAIN = "plain.test"
HOSTING_ACCOUNT = "web1"
HOSTING_DOMAIN = "shop.test"
MAX_RECIPIENTS = 3

REASONS = ["auth_required", "bad_credentials", "tls_required", "quota", "quota_unavailable",
           "too_many_recipients", "size", "sender_not_owned", "relay_denied", "smuggling",
           "brake", "bad_syntax", "bad_sequence", "spool_full", "spool_error", "dkim_error",
           "directory_unavailable", "connection_limit"]
REDIS_OPERATIONS = ["quota_hold", "quota_commit", "quota_release", "quota_refund",
                    "quota_usage", "brake_login", "brake_message", "health"]
POSTGRES_OPERATIONS = ["login", "live_credentials", "generation", "senders",
                       "hosting_account", "limits", "dkim_keys", "health", "log_write"]
LISTENERS = ["submission", "submissions", "relay"]

# The contract's families and their types.
FAMILIES = {
    "postern_build_info": "gauge",
    "postern_delivery_duration_seconds": "histogram",
    "postern_delivery_smtp_transaction_seconds": "histogram",
    "postern_queue_messages": "gauge",
    "postern_queue_oldest_message_age_seconds": "gauge",
    "postern_spool_filesystem_free_bytes": "gauge",
    "postern_spool_filesystem_free_ratio": "gauge",
    "postern_spool_fsync_seconds": "histogram",
    "postern_redis_operation_seconds": "histogram",
    "postern_postgres_operation_seconds": "histogram",
    "postern_directory_generation": "gauge",
    "postern_directory_revocation_apply_seconds": "histogram",
    "postern_smtp_rejections_total": "counter",
    "postern_quota_refusals_total": "counter",
}


class Exposition:
    """One /metrics answer, parsed: the TYPE of each family and every sample by name and
    labels. Asserts every line is a comment, a HELP/TYPE line or a well-formed sample."""

    def __init__(self, text: str):
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset], float] = {}
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                self.types[name] = kind
                continue
            if line.startswith("#"):
                assert line.startswith("# HELP "), line
                continue
            m = SAMPLE_RE.match(line)
            assert m, f"not a sample line: {line!r}"
            labels = frozenset(LABEL_RE.findall(m.group(2) or ""))
            key = (m.group(1), labels)
            assert key not in self.samples, f"duplicate series {line!r}"
            self.samples[key] = float(m.group(3))

    def get(self, name: str, **labels) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels) -> float:
        """A series that must exist."""
        v = self.get(name, **labels)
        assert v is not None, f"{name}{labels} missing"
        return v

    def label_values(self, name: str, label: str) -> set[str]:
        return {v for (n, labels) in self.samples if n == name
                for k, v in labels if k == label}


def scrape(pt) -> Exposition:
    status, _, text = pt.http_get("/metrics")
    assert status == 200, status
    return Exposition(text)


def version() -> str:
    return tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]


def rejections(m: Exposition) -> dict[str, float]:
    return {r: m.value("postern_smtp_rejections_total", reason=r) for r in REASONS}


def assert_zero_series_at_start(m: Exposition, unconfigured: str):
    """The contract's series at start; `unconfigured`, the backend family that has none (a
    family without series is not exposed at all)."""
    for family, kind in FAMILIES.items():
        expected = None if family == unconfigured else kind
        assert m.types.get(family) == expected, (family, m.types.get(family))
    assert m.value("postern_build_info", version=version()) == 1
    assert m.label_values("postern_build_info", "version") == {version()}
    assert rejections(m) == {r: 0 for r in REASONS}
    assert m.label_values("postern_smtp_rejections_total", "reason") == set(REASONS)
    for scope in ["address", "hosting"]:
        assert m.value("postern_quota_refusals_total", scope=scope) == 0
    for result in ["delivered", "bounced"]:
        assert m.value("postern_delivery_duration_seconds_count", result=result) == 0
        assert m.value("postern_delivery_duration_seconds_bucket", result=result,
                       le="+Inf") == 0
    for result in ["ok", "failed"]:
        assert m.value("postern_delivery_smtp_transaction_seconds_count", result=result) == 0
    for state in ["ready", "deferred"]:
        assert m.value("postern_queue_messages", state=state) == 0
        assert m.value("postern_queue_oldest_message_age_seconds", state=state) == 0
    assert m.value("postern_directory_revocation_apply_seconds_count") == 0
    assert m.value("postern_directory_generation") >= 0
    # The spool's first segment is fsynced at start: the histogram exists, perhaps counted.
    assert m.value("postern_spool_fsync_seconds_count") >= 0
    # Existing labelled metrics are pre-created too, for the listeners configured only.
    for listener in LISTENERS:
        assert m.value("postern_smtp_connections_total", listener=listener) == 0
        assert m.value("postern_smtp_sessions_active", listener=listener) == 0
        for result in ["ok", "failed", "timeout"]:
            assert m.value("postern_smtp_tls_handshakes_total", listener=listener,
                           result=result) == 0
    assert m.label_values("postern_smtp_connections_total", "listener") == set(LISTENERS)
    for mechanism in ["plain", "login"]:
        for result in ["ok", "failed", "error", "braked"]:
            assert m.value("postern_smtp_auth_attempts_total", mechanism=mechanism,
                           result=result) == 0
    for result in ["delivered", "deferred", "bounced"]:
        for tls in ["plaintext", "opportunistic", "dane", "mta-sts", "none"]:
            assert m.value("postern_delivery_recipients_total", result=result, tls=tls) == 0
    for kind in ["failure", "delay", "success"]:
        assert m.value("postern_delivery_bounces_total", kind=kind) == 0
    for result in ["held", "full", "unavailable"]:
        assert m.value("postern_quota_holds_total", result=result) == 0
    assert m.value("postern_dkim_messages_total", result="signed") == 0
    assert m.value("postern_dkim_signatures_total", algorithm="rsa-sha256") == 0
    assert m.value("postern_delivery_dane_failures_total", reason="tlsa_mismatch") == 0
    assert m.value("postern_delivery_mta_sts_failures_total", reason="handshake") == 0
    assert m.value("postern_smtp_connections_rejected_total", reason="per_ip") == 0
    assert m.value("postern_smtp_proxy_refused_total", reason="missing") == 0
    assert m.value("postern_directory_cache_lookups_total", kind="login", result="hit") == 0


def smtplib_failed_login(pt, user: str) -> tuple[int, bytes]:
    """One AUTH PLAIN with a wrong password, with Python's smtplib on 587 after STARTTLS."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", pt.port("submission"), timeout=15) as client:
        client.starttls(context=ctx)
        client.ehlo()
        # One attempt: smtplib would otherwise try LOGIN after PLAIN failed.
        client.esmtp_features["auth"] = "PLAIN"
        try:
            client.login(user, "not-the-password")
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code, e.smtp_error
    raise AssertionError("a wrong password logged in")


def test_every_series_exists_at_start_and_moves_with_traffic(make_postern, mx, make_redis):
    redis = make_redis()
    pt = make_postern(delivery_port=mx.port,
                      # The deferred message stays deferred while the test looks.
                      delivery={"retry_initial": "10m", "retry_max": "20m"},
                      limits={"max_recipients": MAX_RECIPIENTS},
                      # No trusted network: a port-25 client is the hosting account's.
                      relay={"networks": []},
                      quota={"backend": "redis", "redis_url": redis.url})
    pt.add_hosting(HOSTING_ACCOUNT, ["127.0.0.0/8"], [HOSTING_DOMAIN])
    srv = start_with_accounts(pt)
    alice, bob = srv.alice, srv.bob

    start = scrape(srv)
    assert_zero_series_at_start(start, unconfigured="postern_postgres_operation_seconds")
    for operation in REDIS_OPERATIONS:
        for status in ["ok", "error"]:
            assert start.get("postern_redis_operation_seconds_count", operation=operation,
                             status=status) is not None, (operation, status)
    # No traffic yet: no quota round trip (the readiness check's health pings may be counted).
    assert start.value("postern_redis_operation_seconds_count", operation="quota_hold",
                       status="ok") == 0
    # Not configured: no PostgreSQL series.
    assert not start.label_values("postern_postgres_operation_seconds_count", "operation")

    # An accepted and delivered message.
    client = srv.login(alice.address, alice.password)
    client.transaction(alice.address, [f"ok@{DOMAIN}"],
                       make_message(sender=alice.address, to=f"ok@{DOMAIN}"))
    client.quit()
    mx.plain.wait_for(f"ok@{DOMAIN}", timeout=30)
    wait_until(lambda: scrape(srv).value("postern_delivery_duration_seconds_count",
                                         result="delivered") == 1,
               10, "the delivered recipient's duration")

    # A failed AUTH (smtplib).
    assert smtplib_failed_login(srv, alice.address) == (535, b"5.7.0 authentication failed")

    # An address quota: an override of 1, the second recipient is refused.
    srv.cli("limit", "set", bob.address, "--daily", "1")
    client = srv.login(bob.address, bob.password)
    assert client.cmd(f"MAIL FROM:<{bob.address}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<q1@{DOMAIN}>") == RCPT_OK
    refused = client.cmd(f"RCPT TO:<q2@{DOMAIN}>")
    assert refused.code == 450 and DAILY_LIMIT_RE.match(refused.text), refused
    assert "(1 recipients per 24 hours)" in refused.text, refused
    assert client.cmd("RSET") == OK
    client.quit()

    # The port-25 hosting account's cap: 1, the second recipient is refused.
    srv.cli("limit", "set", "--hosting", HOSTING_ACCOUNT, "--daily", "1")
    client = srv.connect("relay")
    assert client.ehlo().code == 250
    assert client.cmd(f"MAIL FROM:<www@{HOSTING_DOMAIN}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<h1@{DOMAIN}>") == RCPT_OK
    refused = client.cmd(f"RCPT TO:<h2@{DOMAIN}>")
    assert refused.code == 450 and DAILY_LIMIT_RE.match(refused.text), refused
    assert client.cmd("RSET") == OK
    client.quit()

    # Too many recipients.
    client = srv.login(alice.address, alice.password)
    assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
    rcpts = [f"many{i}@{DOMAIN}" for i in range(MAX_RECIPIENTS + 1)]
    assert client.rcpts(rcpts) == [RCPT_OK] * MAX_RECIPIENTS + [TOO_MANY_RCPTS]
    assert client.cmd("RSET") == OK
    client.quit()

    # A deferral: the receiver answers 451.
    client = srv.login(alice.address, alice.password)
    client.transaction(alice.address, [f"tempfail@{DOMAIN}"],
                       make_message(sender=alice.address, to=f"tempfail@{DOMAIN}"))
    client.quit()
    wait_until(lambda: [a.reply[:3] for a in mx.plain.attempts_for(f"tempfail@{DOMAIN}")]
               == ["451"], 30, "the 451")
    wait_until(lambda: scrape(srv).value("postern_queue_messages", state="deferred") == 1,
               10, "the message deferred")

    end = scrape(srv)
    delta = {r: end.value("postern_smtp_rejections_total", reason=r)
             - start.value("postern_smtp_rejections_total", reason=r) for r in REASONS}
    expected = {r: 0 for r in REASONS}
    expected.update(bad_credentials=1, quota=2, too_many_recipients=1)
    assert delta == expected
    assert end.value("postern_quota_refusals_total", scope="address") == 1
    assert end.value("postern_quota_refusals_total", scope="hosting") == 1
    assert end.value("postern_smtp_auth_attempts_total", mechanism="plain",
                     result="failed") == 1

    assert end.value("postern_delivery_duration_seconds_count", result="delivered") == 1
    assert end.value("postern_delivery_duration_seconds_count", result="bounced") == 0
    # Delivered within seconds of its acceptance.
    assert end.value("postern_delivery_duration_seconds_bucket", result="delivered",
                     le="60") == 1
    # Two transactions answered: the delivery, and the 451 to the deferred message.
    assert end.value("postern_delivery_smtp_transaction_seconds_count", result="ok") == 2
    assert end.value("postern_delivery_smtp_transaction_seconds_count", result="failed") == 0

    assert end.value("postern_queue_messages", state="deferred") == 1
    assert end.value("postern_queue_messages", state="ready") == 0
    assert end.value("postern_queue_oldest_message_age_seconds", state="deferred") > 0
    assert end.value("postern_queue_oldest_message_age_seconds", state="ready") == 0

    assert end.value("postern_spool_fsync_seconds_count") > start.value(
        "postern_spool_fsync_seconds_count")
    assert end.value("postern_spool_filesystem_free_bytes") > 0
    assert 0 < end.value("postern_spool_filesystem_free_ratio") <= 1

    assert end.value("postern_redis_operation_seconds_count", operation="quota_hold",
                     status="ok") > 0
    assert end.value("postern_redis_operation_seconds_count", operation="quota_commit",
                     status="ok") > 0
    assert end.value("postern_redis_operation_seconds_count", operation="quota_hold",
                     status="error") == 0


def test_postgres_operations_generation_and_revocation_apply(make_postern, postgres, tmp_path):
    database = postgres.create_database("metrics")
    password_file = tmp_path / "pg-password"
    password_file.write_text(postgres.password + "\n")
    secret_key_file = tmp_path / "secret.key"
    secret_key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    pt = make_postern(store={"backend": "postgres", "url": postgres.url(database),
                             "tls": "disable", "password_file": password_file,
                             "secret_key_file": secret_key_file})
    pt.cli("migrate")
    pt.start()

    start = scrape(pt)
    assert_zero_series_at_start(start, unconfigured="postern_redis_operation_seconds")
    for operation in POSTGRES_OPERATIONS:
        for status in ["ok", "error"]:
            assert start.get("postern_postgres_operation_seconds_count", operation=operation,
                             status=status) is not None, (operation, status)
    assert start.value("postern_postgres_operation_seconds_count", operation="login",
                       status="ok") == 0
    assert not start.label_values("postern_redis_operation_seconds_count", "operation")

    address = "carol@plain.test"
    pt.add_address(address)
    password = pt.add_device(address, "phone")
    wait_until(lambda: postgres.psql(database, "SELECT count(*) FROM pg_stat_activity "
                                     "WHERE query LIKE 'LISTEN%'") == "1", 10, "listening")
    client = pt.login(address, password, role="submissions")

    def db_generation() -> float:
        return float(postgres.psql(database, "SELECT value FROM directory_generation"))

    before = db_generation()
    wait_until(lambda: scrape(pt).value("postern_directory_generation") == before, 10,
               "the generation before the revocation")
    assert scrape(pt).value("postern_directory_revocation_apply_seconds_count") == 0

    pt.cli("device", "revoke", address, "phone")
    assert client.reply(timeout=5) == REVOKED
    client.expect_closed(2.0)
    after = db_generation()
    assert after == before + 1
    wait_until(lambda: scrape(pt).value("postern_directory_revocation_apply_seconds_count")
               == 1, 10, "the revocation's apply time")
    end = scrape(pt)
    assert end.value("postern_directory_generation") == after
    # Applied within the slowest bucket the alert cares about.
    assert end.value("postern_directory_revocation_apply_seconds_bucket", le="60") == 1
    assert end.value("postern_postgres_operation_seconds_count", operation="login",
                     status="ok") == 1
    assert end.value("postern_postgres_operation_seconds_count", operation="generation",
                     status="ok") > start.value("postern_postgres_operation_seconds_count",
                                                operation="generation", status="ok")
    assert end.value("postern_postgres_operation_seconds_count", operation="live_credentials",
                     status="ok") >= 1
    # The revoked password no longer logs in.
    client = pt.connect("submissions")
    client.ehlo()
    assert client.auth_plain(address, password) == AUTH_FAILED
    client.close()
