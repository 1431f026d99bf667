"""The delivery log (issue 5): one record per recipient per attempt, read with `postern log`.

Receivers from conftest: tls.test's MX (127.0.0.2) offers STARTTLS, plain.test's (127.0.0.3)
does not; their default policy answers ``reject*`` with 550 5.1.1 and ``tempfail*`` with 451
4.3.0 on the first attempt."""

import socket
import time

import pytest

from support import delivery_log, make_message, wait_until
from support import submit_as_alice as submit

# A table line: time, replica, queue id, sender, recipient, mx[ip], tls, state, dsn, reply
# (spaces).
COLUMNS = ("time", "replica", "queue_id", "sender", "recipient", "peer", "tls", "state", "dsn",
           "reply")


@pytest.fixture
def dsrv(make_server, mx):
    """A server delivering to the test MX hosts (retry_initial 1s, retry_max 2s)."""
    return make_server(delivery_port=mx.port)


def log_rows(srv, *args) -> list[dict]:
    """`postern log ARGS...` (table form) parsed into dicts."""
    out = srv.cli("log", *args).stdout
    return [dict(zip(COLUMNS, line.split(None, len(COLUMNS) - 1))) for line in out.splitlines()]


def wait_rows(srv, address, n, *args, timeout=20) -> list[dict]:
    """Polls until `postern log ADDRESS ARGS` has at least ``n`` rows; returns them."""
    return wait_until(lambda: (rows := log_rows(srv, address, *args)) and len(rows) >= n
                      and rows, timeout, f"{n} delivery log rows for {address}")


def test_starttls_delivery_is_logged_opportunistic(dsrv, mx):
    qid = submit(dsrv, ["t1@tls.test"])
    mx.tls.wait_for("t1@tls.test")
    [row] = wait_rows(dsrv, "t1@tls.test", 1)
    assert row["queue_id"] == qid
    assert row["replica"] == socket.gethostname()   # no [server] replica: the host name
    assert row["sender"] == dsrv.alice.address
    assert row["recipient"] == "t1@tls.test"
    assert row["peer"] == "mx.tls.test[127.0.0.2]"
    mode, version, cipher = row["tls"].split("/")
    assert (mode, version) == ("opportunistic", "TLSv1.3"), row
    assert cipher.startswith("TLS13_"), row
    assert row["state"] == "delivered" and row["dsn"] == "2.0.0", row
    assert "250 2.0.0 Message accepted" in row["reply"], row
    [rec] = delivery_log(dsrv, "t1@tls.test")
    assert (rec["tls_mode"], rec["tls_version"], rec["tls_cipher"]) == (mode, version, cipher)
    assert rec["attempt"] == 1 and rec["mx"] == "mx.tls.test" and rec["ip"] == "127.0.0.2"


def test_cleartext_delivery_is_logged_plaintext(dsrv, mx):
    submit(dsrv, ["p1@plain.test"])
    mx.plain.wait_for("p1@plain.test")
    [row] = wait_rows(dsrv, "p1@plain.test", 1)
    assert row["tls"] == "plaintext", row
    assert row["peer"] == "mx.plain.test[127.0.0.3]"
    assert row["state"] == "delivered"
    [rec] = delivery_log(dsrv, "p1@plain.test")
    assert rec["tls_mode"] == "plaintext"
    assert rec["tls_version"] is None and rec["tls_cipher"] is None


def test_4xx_then_success_logs_both_attempts_in_order(dsrv, mx):
    qid = submit(dsrv, ["tempfail-1@plain.test"])
    mx.plain.wait_for("tempfail-1@plain.test", timeout=20)
    rows = wait_rows(dsrv, "tempfail-1@plain.test", 2)
    assert [r["state"] for r in rows] == ["deferred", "delivered"], rows
    assert rows[0]["dsn"] == "4.3.0" and "451 4.3.0 Try again later" in rows[0]["reply"]
    assert "250" in rows[1]["reply"]
    assert {r["queue_id"] for r in rows} == {qid}
    recs = delivery_log(dsrv, "tempfail-1@plain.test")
    assert [r["attempt"] for r in recs] == [1, 2]
    assert recs[0]["time_ms"] <= recs[1]["time_ms"]
    assert [r["state"] for r in log_rows(dsrv, "tempfail-1@plain.test", "--status",
                                         "deferred")] == ["deferred"]


def test_5xx_is_logged_bounced_with_the_remote_reply(dsrv, mx):
    submit(dsrv, ["reject-1@plain.test", "ok-2@plain.test"])
    mx.plain.wait_for("ok-2@plain.test")
    [row] = wait_rows(dsrv, "reject-1@plain.test", 1)
    assert row["state"] == "bounced" and row["dsn"] == "5.1.1", row
    assert "550 5.1.1 Mailbox unavailable" in row["reply"] and "RCPT TO" in row["reply"], row
    [ok] = wait_rows(dsrv, "ok-2@plain.test", 1)
    assert ok["state"] == "delivered" and ok["queue_id"] == row["queue_id"]


def test_filters_and_json(dsrv, mx):
    submit(dsrv, ["f1@tls.test"])
    # NOTIFY=NEVER: no bounce to alice, whose own (deferred) rows would join the filters.
    alice = dsrv.alice
    client = dsrv.login(alice.address, alice.devices["laptop"])
    assert client.cmd(f"MAIL FROM:<{alice.address}>").code == 250
    assert client.cmd("RCPT TO:<reject-f@plain.test> NOTIFY=NEVER").code == 250
    assert client.cmd("DATA").code == 354
    client.send_data(make_message(sender=alice.address, to="reject-f@plain.test"))
    client.quit()
    wait_rows(dsrv, "f1@tls.test", 1)
    wait_rows(dsrv, "reject-f@plain.test", 1)

    # ADDRESS matches the sender too, case-insensitively.
    by_sender = log_rows(dsrv, dsrv.alice.address.upper())
    assert {r["recipient"] for r in by_sender} == {"f1@tls.test", "reject-f@plain.test"}
    assert log_rows(dsrv, "F1@TLS.test")[0]["recipient"] == "f1@tls.test"
    assert log_rows(dsrv, "nobody@tls.test") == []

    assert [r["recipient"] for r in log_rows(dsrv, "--status", "bounced")] == \
        ["reject-f@plain.test"]
    assert [r["recipient"] for r in log_rows(dsrv, "--status", "delivered")] == ["f1@tls.test"]
    assert log_rows(dsrv, "--status", "deferred") == []

    assert len(log_rows(dsrv, "--since", "1h")) == 2
    time.sleep(1.2)
    assert dsrv.cli("log", "--since", "1s").stdout == ""

    recs = delivery_log(dsrv, "--status", "delivered")
    assert len(recs) == 1
    assert set(recs[0]) == {"time", "time_ms", "replica", "queue_id", "sender", "recipient", "mx", "ip",
                            "tls_mode", "tls_version", "tls_cipher", "state", "dsn", "reply",
                            "attempt"}
    assert recs[0]["time"].endswith("Z") and recs[0]["sender"] == dsrv.alice.address
    assert dsrv.cli("log", "nobody@tls.test", "--json").stdout == ""
    # --queue-id: that message's rows only.
    [bounced] = log_rows(dsrv, "--status", "bounced")
    assert [r["recipient"] for r in log_rows(dsrv, "--queue-id", bounced["queue_id"])] == \
        ["reject-f@plain.test"]
    assert log_rows(dsrv, "--queue-id", "NO-SUCH-ID") == []


def test_usage_errors(dsrv):
    bad = dsrv.cli("log", "--status", "lost", check=False)
    assert bad.returncode == 2 and "lost" in bad.stderr
    bad = dsrv.cli("log", "--since", "yesterday", check=False)
    assert bad.returncode in (1, 2) and "--since" in bad.stderr and bad.stderr.strip()
    assert bad.stdout == ""


def test_fresh_store_without_log_prints_nothing(make_postern):
    pt = make_postern()
    pt.add_address("x@example.org")
    result = pt.cli("log")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert pt.cli("log", "x@example.org", "--json").stdout == ""
    assert not (pt.dir / "delivery-log.db").exists()
