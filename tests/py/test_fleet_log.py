"""The fleet's delivery log (issue 11): with `[store] backend = "postgres"` every replica writes
its delivery records to the shared database, so `postern log` run with any replica's config
shows the deliveries of all, each with the replica that made it (`[server] replica`, else the
machine's host name). A PostgreSQL outage costs log records (counted in
`postern_delivery_log_dropped_records_total`, reported in a few rate-limited lines), never mail,
and the log is written again once PostgreSQL is back. Records older than `[delivery_log]
retention` are purged. No `[store] path`: the files that stay on a machine (the embedded quota
store) go to the spool directory, and no delivery-log.db is made anywhere."""

from __future__ import annotations

import base64
import os
import socket
import time

import pytest

from support import delivery_log, make_message, wait_until

DOMAIN = "plain.test"          # its MX is the test receiver on 127.0.0.3
ALICE = f"alice@{DOMAIN}"
NAMES = ["relay-a", "relay-b", None]   # None: the default, the machine's host name
DAY_MS = 86_400_000


@pytest.fixture
def fleet(make_postern, postgres, mx, tmp_path):
    """Three configured (not started) replicas on one migrated PostgreSQL database, without
    `[store] path`, delivering to the receiver of plain.test; quotas embedded (each replica's
    own file)."""
    database = postgres.create_database("fleetlog")
    password_file = tmp_path / "pg-password"
    password_file.write_text(postgres.password + "\n")
    secret_key_file = tmp_path / "secret.key"
    secret_key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    store = {"backend": "postgres", "url": postgres.url(database), "tls": "disable", "path": None,
             "password_file": password_file, "secret_key_file": secret_key_file}
    replicas = [make_postern(delivery_port=mx.port, store=store,
                             server={"replica": name} if name else {},
                             delivery_log={"retention": "1d"})
                for name in NAMES]
    out = replicas[0].cli("migrate").stdout
    assert out.endswith("schema migrated from version 0 to 2\n"), out
    return replicas


def send(pt, password: str, rcpt: str):
    client = pt.login(ALICE, password, role="submissions")
    client.transaction(ALICE, [rcpt], make_message(sender=ALICE, to=rcpt))
    client.quit()


def dropped(pt) -> float:
    return pt.metric("postern_delivery_log_dropped_records_total")


def test_log_anywhere_shows_every_replica(fleet, mx, postgres):
    """A message through each replica: `postern log` with replica 1's config (and the table
    with replica 2's) shows all three deliveries, each with its replica's name; the rows are
    in PostgreSQL, no replica has a delivery-log.db, and each replica's embedded quota file is
    in its spool directory."""
    for pt in fleet:
        pt.start()
    fleet[0].add_address(ALICE)
    password = fleet[0].add_device(ALICE, "laptop")
    for i, pt in enumerate(fleet):
        send(pt, password, f"r{i}@{DOMAIN}")
        mx.plain.wait_for(f"r{i}@{DOMAIN}", timeout=30)

    expected = {"r0@plain.test": "relay-a", "r1@plain.test": "relay-b",
                "r2@plain.test": socket.gethostname()}
    records = wait_until(lambda: (rows := delivery_log(fleet[1])) and len(rows) == 3 and rows,
                         20, "three records in the shared log")
    assert {r["recipient"]: r["replica"] for r in records} == expected
    assert [r["state"] for r in records] == ["delivered"] * 3
    assert all(r["dsn"] == "2.0.0" and r["mx"] for r in records), records
    assert [r["recipient"] for r in delivery_log(fleet[0], "r1@plain.test")] == ["r1@plain.test"]
    queue_id = records[0]["queue_id"]
    assert [r["recipient"] for r in delivery_log(fleet[2], "--queue-id", queue_id)] == \
        [records[0]["recipient"]]

    table = fleet[2].cli("log").stdout.splitlines()
    assert len(table) == 3, table
    by_recipient = {line.split()[4]: line.split()[1] for line in table}
    assert by_recipient == expected, table

    assert postgres.psql("fleetlog", "SELECT count(*) FROM delivery_log") == "3"
    for pt in fleet:
        assert not list(pt.dir.rglob("delivery-log.db*")), pt.dir
        assert (pt.dir / "spool" / "quota.db").exists()
        assert dropped(pt) == 0.0


def test_postgres_outage_costs_log_rows_not_mail(fleet, mx, postgres):
    """A message deferred once (logged), then retried while PostgreSQL is down: it is
    delivered all the same; its record is dropped and counted, in at most two error lines.
    With PostgreSQL back, the same replica's next delivery is logged again, without a restart."""
    pt = fleet[0]
    pt.write_config(delivery={"retry_initial": "1h", "retry_max": "1h"})
    pt.start()
    pt.add_address(ALICE)
    password = pt.add_device(ALICE, "laptop")
    rcpt = f"tempfail-outage@{DOMAIN}"
    send(pt, password, rcpt)
    [deferred] = wait_until(lambda: delivery_log(pt, rcpt), 20, "the deferred record")
    assert (deferred["state"], deferred["dsn"], deferred["replica"]) == \
        ("deferred", "4.3.0", "relay-a")

    postgres.stop()
    r = pt.cli("log", check=False)
    assert r.returncode == 1 and r.stderr.startswith("postern: "), r.stderr
    pt.cli("queue", "flush")
    got = mx.plain.wait_for(rcpt, timeout=30)
    assert got is not None
    wait_until(lambda: dropped(pt) == 1.0, 30, "the outage's record counted as dropped")
    lines = [l for l in pt.log_text().splitlines() if "delivery log: records dropped" in l]
    assert 1 <= len(lines) <= 2, lines

    postgres.start()
    after = f"after-outage@{DOMAIN}"
    send(pt, password, after)
    mx.plain.wait_for(after, timeout=30)
    wait_until(lambda: [r["recipient"] for r in delivery_log(pt)] == [rcpt, after], 30,
               "the log written again after the outage")
    assert [r["state"] for r in delivery_log(pt)] == ["deferred", "delivered"]
    assert dropped(pt) == 1.0
    assert "writing again after dropped records" in pt.log_text()


def test_retention_purge_on_postgres(fleet, postgres):
    """Rows older than `[delivery_log] retention` (1 day here) are deleted when the replicas
    start (all three purge at once; one holds the lock, the others skip); newer rows stay."""
    now = int(time.time() * 1000)
    columns = ("time_ms, replica, queue_id, sender, sender_key, recipient, recipient_key, "
               "reply, dsn, state, attempt")
    for name, time_ms in (("old", now - 2 * DAY_MS), ("older", now - 30 * DAY_MS),
                          ("recent", now - DAY_MS // 2)):
        postgres.psql("fleetlog", f"INSERT INTO delivery_log ({columns}) VALUES ({time_ms}, "
                      f"'relay-x', 'Q{name}', 'a@x.test', 'a@x.test', '{name}@y.test', "
                      f"'{name}@y.test', 'said: 250', '2.0.0', 'delivered', 1)")
    for pt in fleet:
        pt.start()
    wait_until(lambda: postgres.psql("fleetlog", "SELECT count(*) FROM delivery_log") == "1",
               20, "old rows purged")
    [left] = delivery_log(fleet[2])
    assert (left["recipient"], left["replica"]) == ("recent@y.test", "relay-x")
    assert postgres.psql("fleetlog", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") \
        == "0"
