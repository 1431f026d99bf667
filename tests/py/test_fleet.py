"""A fleet (issue 11): three `postern serve` replicas sharing one PostgreSQL directory and one
Redis quota store, each with its own ports and spool. What is made with the CLI on one machine
works on every replica; a revocation cuts live sessions everywhere within 2 s, also when a
replica's notification connection was killed; PostgreSQL down gives 454 on AUTH, 451 on port
25, an unready /readyz, and service comes back by itself. All of it with the directory cache
on (`[store] cache_ttl`, default 5s); the last tests set it to 30s and show that it is used,
that a revocation clears it on every replica, and that it serves nothing while PostgreSQL is
down.

The replicas trust no relay network (`[relay] networks = []`): a port-25 client is a hosting
account's server or nobody."""

from __future__ import annotations

import base64
import os
import smtplib
import ssl
import time

import pytest

from support import (AUTH_FAILED, AUTH_OK, QUOTA_UNAVAILABLE, RCPT_OK, RELAY_DENIED, MAIL_OK,
                     REVOKED, last_line, make_message, wait_until)
from test_dkim import knot_txt

import dkim

REPLICAS = 3
AUTH_UNAVAILABLE = "454 4.7.0 Temporary authentication failure, try again later"
DOMAIN = "plain.test"          # its MX is the test receiver on 127.0.0.3
ALICE = f"alice@{DOMAIN}"
HOSTING_CLIENT = "127.0.0.9"   # the hosting account's web server


@pytest.fixture
def fleet(make_postern, postgres, make_redis, mx, tmp_path):
    """Three configured (not started) replicas on a migrated PostgreSQL database and one
    Redis, delivering to the receiver of plain.test."""
    database = postgres.create_database("fleet")
    password_file = tmp_path / "pg-password"
    password_file.write_text(postgres.password + "\n")
    secret_key_file = tmp_path / "secret.key"
    secret_key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    store = {"backend": "postgres", "url": postgres.url(database), "tls": "disable",
             "password_file": password_file, "secret_key_file": secret_key_file}
    redis = make_redis()
    replicas = [make_postern(delivery_port=mx.port, store=store, relay={"networks": []},
                             quota={"backend": "redis", "redis_url": redis.url})
                for _ in range(REPLICAS)]
    out = replicas[0].cli("migrate").stdout
    assert out == f"PostgreSQL postern@127.0.0.1:{postgres.port}/fleet: schema migrated " \
                  "from version 0 to 2\n", out
    return replicas


def start_all(replicas):
    for pt in replicas:
        pt.start()


def smtplib_login(pt, user: str, password: str) -> tuple[int, bytes]:
    """AUTH PLAIN with Python's smtplib on 587 after STARTTLS: the reply code and text."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", pt.port("submission"), timeout=15) as client:
        client.starttls(context=ctx)
        try:
            return client.login(user, password)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code, e.smtp_error


def auth_reply(pt, user: str, password: str):
    client = pt.connect("submissions")
    client.ehlo()
    reply = client.auth_plain(user, password)
    client.close()
    return reply


def test_what_the_cli_makes_once_works_on_every_replica(fleet, knot, mx):
    """An address and device made with the CLI of replica 0 log in on all three (smtplib);
    a wrong password gets 535 on all three. A hosting account added with replica 1's CLI relays
    on all three (before: 550 5.7.1 Relaying denied). A DKIM key generated once with replica
    2's CLI signs mail submitted on each replica, and dkimpy verifies every signature."""
    start_all(fleet)
    fleet[0].add_address(ALICE)
    password = fleet[0].add_device(ALICE, "laptop")
    for pt in fleet:
        assert smtplib_login(pt, ALICE, password) == (235, b"2.7.0 Authentication successful")
        assert smtplib_login(pt, ALICE, "wrong")[0] == 535

    def relay_rcpt(pt):
        client = pt.connect("relay", source=HOSTING_CLIENT)
        client.ehlo()
        assert client.cmd(f"MAIL FROM:<www@{DOMAIN}>") == MAIL_OK
        reply = client.cmd(f"RCPT TO:<r@{DOMAIN}>")
        client.quit()
        return reply

    assert [relay_rcpt(pt) for pt in fleet] == [RELAY_DENIED] * REPLICAS
    fleet[1].add_hosting("web1", [f"{HOSTING_CLIENT}/32"], [DOMAIN])
    assert [relay_rcpt(pt) for pt in fleet] == [RCPT_OK] * REPLICAS

    out = fleet[2].cli("dkim", "generate", DOMAIN, "--selector", "fleet1",
                       "--algorithm", "ed25519", "--activate").stdout
    knot.zones[f"{DOMAIN}."].append(last_line(out))
    knot.reload()
    for i, pt in enumerate(fleet):
        rcpt = f"signed{i}@{DOMAIN}"
        client = pt.login(ALICE, password, role="submissions")
        client.transaction(ALICE, [rcpt], make_message(sender=ALICE, to=rcpt))
        client.quit()
        got = mx.plain.wait_for(rcpt, timeout=30).content
        assert b"s=fleet1" in got and b"d=plain.test" in got, got[:400]
        assert dkim.verify(got, dnsfunc=knot_txt(knot.port)), f"replica {i}"


def assert_cut_within(clients, deadline: float):
    for i, client in enumerate(clients):
        try:
            reply = client.reply(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            pytest.fail(f"replica {i}: session not cut within 2 s of the CLI command")
        assert reply == REVOKED, f"replica {i}"
        client.expect_closed(2.0)


def test_revocation_reaches_every_replica(fleet, postgres):
    """A live authenticated session on each replica is cut within 2 s of `postern device
    revoke` run with replica 0's CLI, and the password then fails everywhere (535). The same
    after every replica's notification connection was killed with pg_terminate_backend."""
    start_all(fleet)
    fleet[0].add_address(ALICE)
    phone = fleet[0].add_device(ALICE, "phone")
    laptop = fleet[0].add_device(ALICE, "laptop")
    wait_until(lambda: postgres.psql("fleet", "SELECT count(*) FROM pg_stat_activity "
                                     "WHERE query LIKE 'LISTEN%'") == str(REPLICAS),
               10, "every replica listening")
    sessions = [pt.login(ALICE, phone, role="submissions") for pt in fleet]
    fleet[0].cli("device", "revoke", ALICE, "phone")
    assert_cut_within(sessions, time.monotonic() + 2.0)
    assert [auth_reply(pt, ALICE, phone) for pt in fleet] == [AUTH_FAILED] * REPLICAS
    assert [auth_reply(pt, ALICE, laptop) for pt in fleet] == [AUTH_OK] * REPLICAS

    sessions = [pt.login(ALICE, laptop, role="submissions") for pt in fleet]
    killed = postgres.psql("fleet", "SELECT count(pg_terminate_backend(pid)) FROM "
                           "pg_stat_activity WHERE query LIKE 'LISTEN%' "
                           "AND pid <> pg_backend_pid()")
    assert killed == str(REPLICAS)
    fleet[1].cli("device", "revoke", ALICE, "laptop")
    assert_cut_within(sessions, time.monotonic() + 2.0)
    assert [auth_reply(pt, ALICE, laptop) for pt in fleet] == [AUTH_FAILED] * REPLICAS


CACHE_HITS = 'postern_directory_cache_lookups_total{kind="%s",result="hit"}'


def cache_hits(pt, kind: str) -> float:
    return pt.metric(CACHE_HITS % kind) or 0.0


def start_with_cache_ttl(fleet, postgres, ttl: str):
    """Starts every replica with `[store] cache_ttl = ttl` and waits until each listens for
    notifications (the cache serves only then)."""
    for pt in fleet:
        pt.write_config(store={"cache_ttl": ttl})
    start_all(fleet)
    wait_until(lambda: postgres.psql("fleet", "SELECT count(*) FROM pg_stat_activity "
                                     "WHERE query LIKE 'LISTEN%'") == str(REPLICAS),
               10, "every replica listening")


def test_cache_answers_repeated_lookups_and_a_revocation_clears_it_everywhere(fleet, postgres):
    """With cache_ttl = "30s", repeated AUTHs of one device are answered from each replica's
    cache (the hit counters of logins and limits move; the counter is 0 before). After `postern
    device revoke` on replica 0 the password fails (535) on every replica within 2 s, far
    inside the TTL: the notification (or the generation check) cleared every cache. The other
    device of the address still logs in."""
    start_with_cache_ttl(fleet, postgres, "30s")
    fleet[0].add_address(ALICE)
    phone = fleet[0].add_device(ALICE, "phone")
    laptop = fleet[0].add_device(ALICE, "laptop")
    for pt in fleet:
        assert cache_hits(pt, "login") == 0.0
        # The first AUTH of a change the replica has seen may race the watcher's
        # generation check (which clears); after three, at least one was answered from memory.
        wait_until(lambda pt=pt: auth_reply(pt, ALICE, phone) == AUTH_OK
                   and cache_hits(pt, "login") >= 1, 5, "a cached login")
        assert cache_hits(pt, "limits") >= 1
    fleet[0].cli("device", "revoke", ALICE, "phone")
    deadline = time.monotonic() + 2.0
    for i, pt in enumerate(fleet):
        while (reply := auth_reply(pt, ALICE, phone)) != AUTH_FAILED:
            assert reply == AUTH_OK, reply
            assert time.monotonic() < deadline, f"replica {i}: revoked password still works"
            time.sleep(0.05)
    assert [auth_reply(pt, ALICE, laptop) for pt in fleet] == [AUTH_OK] * REPLICAS


def test_cache_serves_nothing_while_postgres_is_down(fleet, postgres):
    """With cache_ttl = "30s" and fresh cached answers for a login and a hosting account on
    every replica, PostgreSQL stopped still gives AUTH 454 4.7.0 and the hosting account's RCPT
    451 4.3.0 on every replica (the cache stops serving when its notification connection or
    the store fails); started again, both work again."""
    start_with_cache_ttl(fleet, postgres, "30s")
    fleet[0].add_address(ALICE)
    password = fleet[0].add_device(ALICE, "laptop")
    fleet[0].add_hosting("web1", [f"{HOSTING_CLIENT}/32"], [DOMAIN])

    def relay_rcpt(pt):
        client = pt.connect("relay", source=HOSTING_CLIENT)
        client.ehlo()
        assert client.cmd(f"MAIL FROM:<www@{DOMAIN}>") == MAIL_OK
        reply = client.cmd(f"RCPT TO:<r@{DOMAIN}>")
        client.quit()
        return reply

    for pt in fleet:
        wait_until(lambda pt=pt: auth_reply(pt, ALICE, password) == AUTH_OK
                   and cache_hits(pt, "login") >= 1, 5, "a cached login")
        wait_until(lambda pt=pt: relay_rcpt(pt) == RCPT_OK
                   and cache_hits(pt, "hosting_account") >= 1, 5, "a cached hosting account")
    postgres.stop()
    for pt in fleet:
        assert auth_reply(pt, ALICE, password) == AUTH_UNAVAILABLE
        assert relay_rcpt(pt) == QUOTA_UNAVAILABLE
    postgres.start()
    for pt in fleet:
        wait_until(lambda pt=pt: readyz(pt) == 200, 15, "ready again")
        wait_until(lambda pt=pt: auth_reply(pt, ALICE, password) == AUTH_OK, 5, "AUTH again")
        assert relay_rcpt(pt) == RCPT_OK


def readyz(pt) -> int:
    return pt.http_get("/readyz")[0]


def test_postgres_outage_fails_closed_and_recovers(fleet, postgres):
    """PostgreSQL stopped: AUTH answers 454 4.7.0, a hosting account's RCPT 451 4.3.0,
    /readyz 503 and postern_directory_available 0 on every replica; started again, every replica
    logs in and relays again without a restart."""
    start_all(fleet)
    fleet[0].add_address(ALICE)
    password = fleet[0].add_device(ALICE, "laptop")
    fleet[0].add_hosting("web1", [f"{HOSTING_CLIENT}/32"], [DOMAIN])
    for pt in fleet:
        assert pt.metric("postern_directory_available") == 1.0
    postgres.stop()
    for pt in fleet:
        assert auth_reply(pt, ALICE, password) == AUTH_UNAVAILABLE
        client = pt.connect("relay", source=HOSTING_CLIENT)
        client.ehlo()
        assert client.cmd(f"MAIL FROM:<www@{DOMAIN}>") == MAIL_OK
        assert client.cmd(f"RCPT TO:<r@{DOMAIN}>") == QUOTA_UNAVAILABLE
        client.quit()
        wait_until(lambda pt=pt: readyz(pt) == 503, 10, "unready during the outage")
        assert pt.metric("postern_directory_available") == 0.0
    postgres.start()
    for pt in fleet:
        wait_until(lambda pt=pt: readyz(pt) == 200, 15, "ready again")
        assert pt.metric("postern_directory_available") == 1.0
        assert auth_reply(pt, ALICE, password) == AUTH_OK


def test_replica_started_while_postgres_is_down(fleet, postgres):
    """A replica started while PostgreSQL is down starts (listeners open), unready, answers
    AUTH with 454; it becomes ready by itself once PostgreSQL answers, and logs in."""
    fleet[0].add_address(ALICE)
    password = fleet[0].add_device(ALICE, "laptop")
    postgres.stop()
    pt = fleet[0]
    pt.start(ready=False)
    assert readyz(pt) == 503
    assert auth_reply(pt, ALICE, password) == AUTH_UNAVAILABLE
    postgres.start()
    wait_until(lambda: readyz(pt) == 200, 15, "ready once PostgreSQL answers")
    assert auth_reply(pt, ALICE, password) == AUTH_OK


def test_schema_and_secret_key_are_checked(fleet, postgres, tmp_path):
    """Admin commands and serve refuse a database at another schema version with one line
    naming `postern migrate` (exit 2); a missing secret key file is a config error naming the
    key (exit 2); the database password appears in no output."""
    pt = fleet[0]
    postgres.psql("fleet", "UPDATE schema_version SET version = 0")
    for args in (["address", "list"], ["serve"]):
        r = pt.cli(*args, check=False)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and "run `postern migrate" in r.stderr, r.stderr
    postgres.psql("fleet", "UPDATE schema_version SET version = 2")
    assert pt.cli("address", "list").returncode == 0
    secret_key_file = pt.config["store"]["secret_key_file"]
    pt.write_config(store={"secret_key_file": tmp_path / "absent.key"})
    r = pt.cli("address", "list", check=False)
    assert r.returncode == 2
    assert r.stderr.startswith("postern: store.secret_key_file: "), r.stderr
    (tmp_path / "wrong").write_text("not-the-password-77\n")
    pt.write_config(store={"secret_key_file": secret_key_file,
                           "password_file": tmp_path / "wrong"})
    r = pt.cli("address", "list", check=False)
    assert r.returncode == 1 and "password authentication failed" in r.stderr, r.stderr
    assert "not-the-password-77" not in r.stderr + r.stdout
    assert postgres.password not in r.stderr + r.stdout
