"""Retries across restarts (issue 5: "a 4xx then a 2xx: delivered on retry, log shows both
attempts; restart between them") and the delivery and queue metrics.

Receivers from conftest: tls.test's MX (127.0.0.2) offers STARTTLS, plain.test's (127.0.0.3)
does not; their default policy answers ``tempfail*`` with 451 4.3.0 on the first attempt
(counted by the receiver, which keeps running while Postern restarts) and ``reject*`` with
550 5.1.1."""

import time

import pytest

from support import SINK, delivery_log, wait_until
from support import submit_as_alice as submit

RETRY_INITIAL = 6.0       # seconds: long enough to restart Postern before the retry is due
JITTER = 0.1              # the retry schedule's ±10 %


def wait_states(srv, address, states, timeout=30) -> list[dict]:
    """Polls `postern log ADDRESS --json` until its states are ``states``; returns the records."""
    wait_until(lambda: [r["state"] for r in delivery_log(srv, address)] == states, timeout,
               f"delivery log of {address} to be {states}")
    return delivery_log(srv, address)


def metric(srv, series) -> float:
    """A /metrics series; an absent counter series is 0."""
    value = srv.metric(series)
    return 0.0 if value is None else value


def recipients(result, tls) -> str:
    return f'postern_delivery_recipients_total{{result="{result}",tls="{tls}"}}'


NEW_CONNECTIONS = 'postern_delivery_connections_total{reused="false"}'
REUSED_CONNECTIONS = 'postern_delivery_connections_total{reused="true"}'
RETRIES = "postern_delivery_retries_total"
QUEUED = "postern_spool_messages"
OLDEST_AGE = "postern_spool_oldest_message_age_seconds"
COMMITS = "postern_spool_commit_batch_messages_sum"


@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
def test_4xx_then_2xx_across_a_restart(make_server, mx, stop):
    """The receiver answers 451 to the first attempt; Postern is stopped (SIGTERM, or kill -9)
    once that attempt is logged and recorded in the spool, then started again on the same spool
    and store. The retry comes at the time the spool scheduled (not at once at start) and
    delivers; `postern log ADDRESS` shows attempt 1 deferred, then attempt 2 delivered."""
    rcpt = f"tempfail-{stop}@plain.test"
    srv = make_server(delivery_port=mx.port,
                      delivery={"retry_initial": f"{RETRY_INITIAL:g}s",
                                "retry_max": f"{2 * RETRY_INITIAL:g}s"})
    qid = submit(srv, [rcpt])

    [first] = wait_states(srv, rcpt, ["deferred"])
    assert (first["queue_id"], first["attempt"], first["dsn"]) == (qid, 1, "4.3.0"), first
    assert "451 4.3.0 Try again later" in first["reply"], first
    assert first["tls_mode"] == "plaintext" and first["ip"] == "127.0.0.3", first
    # The attempt is in the spool once its group commit is done (the message was the first).
    wait_until(lambda: metric(srv, COMMITS) >= 2, 10, "the attempt's spool commit")
    assert metric(srv, recipients("deferred", "plaintext")) == 1
    assert metric(srv, RETRIES) == 0
    assert metric(srv, QUEUED) == 1 and metric(srv, OLDEST_AGE) > 0

    if stop == "sigterm":
        srv.stop()
        assert srv.proc.returncode == 0, srv.log_tail()
    else:
        srv.kill9()
    assert [a.reply[:3] for a in mx.plain.attempts_for(rcpt)] == ["451"]
    srv.start()
    restarted = time.monotonic()

    # The restarted process has the message queued (the spool replayed it) and waits for its
    # scheduled retry.
    assert metric(srv, QUEUED) == 1
    age = metric(srv, OLDEST_AGE)
    assert age > 0, age
    got = mx.plain.wait_for(rcpt, timeout=4 * RETRY_INITIAL)
    assert rcpt in got.rcpt_tos and not got.tls
    attempts = mx.plain.attempts_for(rcpt)
    assert [a.reply[:3] for a in attempts] == ["451", "250"], attempts
    gap = attempts[1].at - attempts[0].at
    assert gap >= RETRY_INITIAL * (1 - JITTER) - 0.3, (
        f"retried {gap:.2f}s after the first attempt: the schedule was lost in the restart")
    assert attempts[1].at - restarted > 0.5, "retried at once at start"

    recs = wait_states(srv, rcpt, ["deferred", "delivered"])
    assert [r["attempt"] for r in recs] == [1, 2], recs
    assert {r["queue_id"] for r in recs} == {qid}
    assert recs[0]["time_ms"] <= recs[1]["time_ms"]
    assert recs[1]["dsn"] == "2.0.0" and "250" in recs[1]["reply"], recs[1]
    rows = srv.cli("log", rcpt).stdout.splitlines()
    assert len(rows) == 2 and " deferred " in rows[0] and " delivered " in rows[1], rows

    # Counters are per process: the new one saw one attempt, a retry, on a new connection.
    assert metric(srv, recipients("delivered", "plaintext")) == 1
    assert metric(srv, recipients("deferred", "plaintext")) == 0
    assert metric(srv, RETRIES) == 1
    assert metric(srv, NEW_CONNECTIONS) == 1
    wait_until(lambda: metric(srv, QUEUED) == 0, 10, "an empty spool")
    assert metric(srv, OLDEST_AGE) == 0


def test_metrics_by_result_tls_retries_and_queue_age(make_server, mx):
    """One message to tls.test (delivered over STARTTLS) and to a 451-then-250 recipient of
    plain.test: recipients by result and TLS mode, retries, connections, queue depth and the
    age of the oldest message, before and after the retry."""
    srv = make_server(delivery_port=mx.port,
                      delivery={"retry_initial": "3s", "retry_max": "6s"})
    assert metric(srv, QUEUED) == 0 and metric(srv, OLDEST_AGE) == 0
    before_submit = time.time()
    submit(srv, ["m1@tls.test", "tempfail-m@plain.test"])
    after_submit = time.time()
    wait_states(srv, "m1@tls.test", ["delivered"])
    wait_states(srv, "tempfail-m@plain.test", ["deferred"])
    wait_until(lambda: metric(srv, COMMITS) >= 2, 10, "the attempt's spool commit")

    assert metric(srv, recipients("delivered", "opportunistic")) == 1
    assert metric(srv, recipients("deferred", "plaintext")) == 1
    assert metric(srv, recipients("delivered", "plaintext")) == 0
    assert metric(srv, RETRIES) == 0
    assert metric(srv, NEW_CONNECTIONS) == 2, "one connection per destination"
    assert metric(srv, QUEUED) == 1
    time.sleep(0.3)
    age, now = metric(srv, OLDEST_AGE), time.time()
    assert now - after_submit - 0.05 <= age <= now - before_submit + 0.05, \
        (age, now - before_submit)

    mx.plain.wait_for("tempfail-m@plain.test", timeout=15)
    wait_states(srv, "tempfail-m@plain.test", ["deferred", "delivered"])
    wait_until(lambda: metric(srv, QUEUED) == 0, 10, "an empty spool")
    assert metric(srv, OLDEST_AGE) == 0
    assert metric(srv, recipients("delivered", "plaintext")) == 1
    assert metric(srv, recipients("deferred", "plaintext")) == 1
    assert metric(srv, recipients("delivered", "opportunistic")) == 1
    assert metric(srv, RETRIES) == 1, "one retry of one message"
    # The retry (3 s later) finds plain.test's session still idle (connection_idle 5 s).
    assert metric(srv, NEW_CONNECTIONS) == 2
    assert metric(srv, REUSED_CONNECTIONS) == 1


def test_bounces_are_counted_with_their_tls_mode(make_server, mx):
    """A 550 from plain.test's MX is `bounced` over `plaintext`; a null-MX domain (no server
    reached) is `bounced` with TLS `none`. The old `postern_delivery_attempts_total` and its
    `failed` label are gone."""
    srv = make_server(delivery_port=mx.port)
    submit(srv, ["reject-m@plain.test", f"n1@{SINK}"])
    wait_states(srv, "reject-m@plain.test", ["bounced"])
    wait_states(srv, f"n1@{SINK}", ["bounced"])
    assert metric(srv, recipients("bounced", "plaintext")) == 1
    # At least: the bounce notice to alice (example.org, unresolvable here) may add its own.
    assert metric(srv, recipients("bounced", "none")) >= 1
    text = srv.http_get("/metrics")[2]
    assert "postern_delivery_attempts_total" not in text
    # (`failed` is a label of the transaction histogram, not of the recipient counter.)
    assert 'postern_delivery_recipients_total{result="failed"' not in text
