"""Rolling 24-hour recipient quotas (issue 3): plan limits and overrides at N and N+1, the
rolling window, holds and their release, exactness across a fleet of relays on Redis and Redis
Cluster, a Redis outage, the per-minute brakes and `postern quota show`.

Each test runs against the embedded store and Redis unless it is about one of them. Recipients
are in the null-MX domain SINK: nothing is delivered, so nothing retries."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from support import (AUTH_OK, AUTH_TEMPORARY, CONNECTION_BRAKE, DATA_GO, EHLO_FIRST, MAIL_OK,
                     MESSAGE_BRAKE, OK, QUOTA_UNAVAILABLE, RCPT_OK, SINK, TLS_GO, RedisServer, SmtpClient, daily_limit_minute, make_message,
                     minutes_of_day, queue_id, wait_until)

STARTER = 500          # the FAQ's limit of the starter plan (the default plan of `address add`)


def rcpts(tag: str, n: int, domain: str = SINK) -> list[str]:
    """``n`` distinct recipients ``TAG-000@DOMAIN`` ..."""
    return [f"{tag}-{i:03}@{domain}" for i in range(n)]


def utc_minute(epoch_minute: int) -> str:
    """RFC 3339 UTC (to the second) of the start of a minute counted from the epoch."""
    return datetime.fromtimestamp(epoch_minute * 60, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_minute_of(minute_of_day: int, start: float, end: float) -> int:
    """The minute since the epoch, between ``start`` and ``end`` (± 1 minute), whose UTC time of
    day is ``minute_of_day``."""
    found = [m for m in range(int(start // 60) - 1, int(end // 60) + 2)
             if m % 1440 == minute_of_day]
    assert len(found) == 1, (minute_of_day, start, end)
    return found[0]


def set_limit(pt, *target: str, daily: int):
    pt.cli("limit", "set", *target, "--daily", str(daily))


# --- plans and overrides ----------------------------------------------------------------------

def test_starter_plan_500_then_450(make_server, quota_backend):
    """Plan starter (500): 500 recipients over six messages are accepted; the 501st RCPT of the
    sixth message gets `450 4.7.1 Daily sending limit reached (500 recipients per 24 hours);
    retry after HH:MM UTC`, HH:MM being the minute the first recipient was counted (it frees up
    24 hours later); the 50 recipients before it stay accepted and the message is queued with
    them. The next transaction's first RCPT gets the same 450, and `quota show --json` says
    500 used, 0 held, 0 available, next free 24 hours after the first count."""
    srv = make_server(quota=quota_backend.quota())
    alice = srv.alice
    client = srv.login(alice.address, alice.password)

    started = time.time()
    first = client.try_transaction(alice.address, rcpts("first", 50))
    counted = time.time()
    assert len(first.accepted) == 50 and first.queued, first
    for n in range(4):
        full = client.try_transaction(alice.address, rcpts(f"m{n}", 100))
        assert len(full.accepted) == 100 and full.queued, full.refusals()[:1]

    last = client.try_transaction(alice.address, rcpts("last", 60))
    assert last.rcpt_replies[:50] == [RCPT_OK] * 50
    refusal = last.rcpt_replies[50]
    minute = daily_limit_minute(refusal, STARTER)
    assert minute in minutes_of_day(started, counted), (refusal, started, counted)
    assert last.rcpt_replies[50:] == [refusal] * 10
    assert last.queued, last.final

    again = client.try_transaction(alice.address, [f"late@{SINK}"])
    assert again.rcpt_replies == [refusal] and again.final is None
    client.quit()

    shown = srv.quota(alice.address)
    first_minute = epoch_minute_of(minute, started, counted)
    assert shown == {
        "kind": "address", "name": alice.address, "used": 500, "held": 0, "limit": 500,
        "available": 0, "limit_source": "plan", "plan": "starter",
        "next_free": utc_minute(first_minute + 1440), "window_seconds": 86400,
    }


def test_override_3_then_clear_back_to_plan(make_server, quota_backend):
    """`postern limit set ADDRESS --daily 3`: three recipients pass and the fourth, in the same
    message, gets the 450 with `(3 recipients per 24 hours); retry after HH:MM UTC`, HH:MM being
    this minute (the three are counted now and free up in 24 hours); so does the next message's
    first RCPT. `quota show` names the override. `postern limit clear
    ADDRESS` brings the plan's 500 back for the next message, in the same session (the limit
    is read at each transaction)."""
    srv = make_server(quota=quota_backend.quota())
    bob = srv.bob
    set_limit(srv, bob.address, daily=3)
    client = srv.login(bob.address, bob.password)

    started = time.time()
    attempt = client.try_transaction(bob.address, rcpts("o", 4))
    counted = time.time()
    assert attempt.rcpt_replies[:3] == [RCPT_OK] * 3 and attempt.queued
    # The three held recipients are counted at the end of this message: capacity returns 24
    # hours after this minute (not when their holds would expire).
    minute = daily_limit_minute(attempt.rcpt_replies[3], 3)
    assert minute in minutes_of_day(started, counted), attempt.rcpt_replies[3]
    shown = srv.quota(bob.address)
    assert (shown["used"], shown["limit"], shown["limit_source"]) == (3, 3, "override")
    next_one = client.try_transaction(bob.address, [f"n@{SINK}"])
    assert next_one.rcpt_replies == [attempt.rcpt_replies[3]]

    srv.cli("limit", "clear", bob.address)
    after = client.try_transaction(bob.address, [f"after-clear@{SINK}"])
    assert after.rcpt_replies == [RCPT_OK] and after.queued, after
    shown = srv.quota(bob.address)
    assert (shown["used"], shown["limit"], shown["limit_source"]) == (4, 500, "plan")


# --- the rolling window -----------------------------------------------------------------------

def test_rolling_window_gives_capacity_back(make_server, quota_backend):
    """With `window = "4s"` and `bucket = "1s"` and a limit of 2: a message to two recipients
    is queued, the next message's RCPT gets the 450; capacity returns by itself one window
    after the count (not before the window less one bucket) and the next message is
    accepted."""
    srv = make_server(quota=quota_backend.quota(window="4s", bucket="1s"))
    alice = srv.alice
    set_limit(srv, alice.address, daily=2)
    client = srv.login(alice.address, alice.password)

    started = time.time()
    attempt = client.try_transaction(alice.address, rcpts("w", 2))
    counted = time.time()
    assert attempt.rcpt_replies == [RCPT_OK] * 2 and attempt.queued
    over = client.try_transaction(alice.address, [f"over@{SINK}"])
    assert over.final is None
    minute = daily_limit_minute(over.rcpt_replies[0], 2)
    assert minute in minutes_of_day(started + 3, counted + 4)

    def capacity_back():
        retry = client.try_transaction(alice.address, [f"again@{SINK}"])
        return retry if retry.accepted else None
    retry = wait_until(capacity_back, 10, "capacity to return after the 4 s window",
                       interval=0.05)
    back = time.time()
    assert retry.queued, retry.final
    assert back >= started + 3.0, f"capacity back {back - started:.2f}s after the count"
    assert back <= counted + 4.0 + 1.0, f"capacity back {back - counted:.2f}s after the count"
    assert srv.quota(alice.address)["used"] == 1


# --- holds ------------------------------------------------------------------------------------

def open_transaction(srv, account) -> SmtpClient:
    """A logged-in session with `MAIL FROM` accepted."""
    client = srv.login(account.address, account.password)
    assert client.cmd(f"MAIL FROM:<{account.address}>") == MAIL_OK
    return client


def test_holds_count_and_are_released(make_server, quota_backend):
    """Limit 1. A recipient held by an open transaction counts: another session's RCPT gets the
    450 while it is held. RSET releases the hold, so does QUIT, so does a connection dropped
    without QUIT; the last holder's message is then accepted and counted once."""
    srv = make_server(quota=quota_backend.quota())
    alice = srv.alice
    set_limit(srv, alice.address, daily=1)
    a, b = open_transaction(srv, alice), open_transaction(srv, alice)

    assert a.cmd(f"RCPT TO:<a@{SINK}>") == RCPT_OK
    daily_limit_minute(b.cmd(f"RCPT TO:<b@{SINK}>"), 1)
    shown = srv.quota(alice.address)
    assert (shown["used"], shown["held"], shown["available"]) == (0, 1, 0)

    assert a.cmd("RSET") == OK                                    # RSET releases
    assert b.cmd(f"RCPT TO:<b@{SINK}>") == RCPT_OK
    assert a.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
    daily_limit_minute(a.cmd(f"RCPT TO:<a@{SINK}>"), 1)

    b.quit()                                                      # QUIT releases
    wait_until(lambda: a.cmd(f"RCPT TO:<a@{SINK}>") == RCPT_OK, 5, "the hold released by QUIT")

    c = open_transaction(srv, alice)
    daily_limit_minute(c.cmd(f"RCPT TO:<c@{SINK}>"), 1)
    a.close()                                                     # a dropped connection releases
    wait_until(lambda: c.cmd(f"RCPT TO:<c@{SINK}>") == RCPT_OK, 5,
               "the hold released by the dropped connection")
    assert c.cmd("DATA") == DATA_GO
    queue_id(c.send_data(make_message(sender=alice.address, to=f"c@{SINK}")))
    shown = srv.quota(alice.address)
    assert (shown["used"], shown["held"]) == (1, 0)


def test_holds_of_a_killed_relay_expire(make_fleet, quota_backend):
    """Two relays on one quota store (a shared Redis, or the shared embedded file), limit 1,
    `hold_ttl = "2s"`. Relay 1 holds the only recipient and is killed with SIGKILL: relay 2's
    RCPT gets the 450 while the hold lives, and 250 once it expired (not before 2 s)."""
    ttl = 2.0
    p1, p2 = make_fleet(2, quota=quota_backend.quota(hold_ttl="2s"))
    alice = p1.add_account("alice@example.org", "laptop")
    set_limit(p1, alice.address, daily=1)
    p1.start()
    p2.start()

    a, b = open_transaction(p1, alice), open_transaction(p2, alice)
    assert a.cmd(f"RCPT TO:<a@{SINK}>") == RCPT_OK
    held_at = time.monotonic()
    p1.kill9()
    daily_limit_minute(b.cmd(f"RCPT TO:<b@{SINK}>"), 1)
    assert time.monotonic() - held_at < ttl, "too slow to see the hold before its expiry"

    wait_until(lambda: b.cmd(f"RCPT TO:<b@{SINK}>") == RCPT_OK, 10,
               "the dead relay's hold to expire", interval=0.05)
    freed = time.monotonic() - held_at
    assert freed >= ttl - 0.1, f"hold gone after {freed:.2f}s, hold_ttl is {ttl}s"
    assert b.cmd("DATA") == DATA_GO
    queue_id(b.send_data(make_message(sender=alice.address, to=f"b@{SINK}")))
    assert p2.quota(alice.address)["used"] == 1


def test_message_whose_holds_expired_is_not_accepted_uncounted(make_server, quota_backend):
    """`hold_ttl = "1s"`: a live session holds a recipient, then sends its data only after the
    hold expired (a slow upload, or a client waiting on purpose). The message must not be
    accepted uncounted: either it is queued and counted (used 1), or it is refused with a 4xx."""
    srv = make_server(quota=quota_backend.quota(hold_ttl="1s"))
    alice = srv.alice
    client = open_transaction(srv, alice)
    assert client.cmd(f"RCPT TO:<slow@{SINK}>") == RCPT_OK
    wait_until(lambda: srv.quota(alice.address)["held"] == 0, 5, "the hold to expire",
               interval=0.1)
    assert client.cmd("DATA") == DATA_GO
    final = client.send_data(make_message(sender=alice.address, to=f"slow@{SINK}"))
    used = srv.quota(alice.address)["used"]
    if final.code == 250:
        queue_id(final)
        assert used == 1, f"message accepted ({final.text}) but counted {used} recipients"
    else:
        assert 400 <= final.code < 500 and used == 0, (final, used)


# --- exactness under concurrency --------------------------------------------------------------

RELAYS = 3
CLIENTS_PER_RELAY = 8
RCPTS_PER_MESSAGE = 7          # 500 is not a multiple: the last messages are partly refused
QUEUED_LOG_RE = re.compile(r'postern::transaction: .* recipients=(\d+) size=\d+ result="queued"')


@pytest.mark.parametrize("quota_backend", ["redis", "cluster", "embedded"], indirect=True)
def test_exactly_500_across_three_relays(make_fleet, quota_backend):
    """Three `postern serve` processes (own ports and spools, one store; one Redis, one Redis
    Cluster, or the shared embedded file), eight concurrent SMTP clients each, all as one
    starter address (500): each client sends messages of 7 recipients until one has none
    accepted. Exactly 500 recipients end up accepted in queued messages, every other RCPT gets
    exactly the 450 text; the store says 500 used, 0 held, and the relays' transaction logs
    add up to 500 queued recipients."""
    fleet = make_fleet(RELAYS, quota=quota_backend.quota())
    alice = fleet[0].add_account("alice@example.org", "laptop")
    for pt in fleet:
        pt.start()

    def sender(relay: int, n: int) -> tuple[int, list]:
        client = fleet[relay].login(alice.address, alice.password)
        accepted, refusals = 0, []
        for k in range(1000):
            attempt = client.try_transaction(
                alice.address, rcpts(f"r{relay}c{n}m{k}", RCPTS_PER_MESSAGE))
            refusals += attempt.refusals()
            if attempt.final is None:
                break
            assert attempt.queued, attempt.final
            accepted += len(attempt.accepted)
        client.quit()
        return accepted, refusals

    started = time.time()
    with ThreadPoolExecutor(RELAYS * CLIENTS_PER_RELAY) as pool:
        futures = [pool.submit(sender, relay, n)
                   for relay in range(RELAYS) for n in range(CLIENTS_PER_RELAY)]
        results = [f.result(timeout=60) for f in futures]
    ended = time.time()

    assert sum(accepted for accepted, _ in results) == STARTER
    refusals = [r for _, rs in results for r in rs]
    assert len(refusals) >= RELAYS * CLIENTS_PER_RELAY * RCPTS_PER_MESSAGE
    # One text: capacity returns when the first counted minute leaves the window.
    texts = {r.text for r in refusals}
    assert len(texts) == 1, texts
    assert daily_limit_minute(texts.pop(), STARTER) in minutes_of_day(started, ended)
    wait_until(lambda: fleet[0].quota(alice.address)["held"] == 0, 5, "holds released")
    assert fleet[0].quota(alice.address)["used"] == STARTER
    # The relays' own account: recipients of the transactions they logged as queued.
    logged = [sum(map(int, QUEUED_LOG_RE.findall(pt.log_text()))) for pt in fleet]
    assert sum(logged) == STARTER, logged


# --- Redis outage -----------------------------------------------------------------------------

@pytest.mark.parametrize("quota_backend", ["redis"], indirect=True)
def test_redis_outage_fails_closed_and_recovers(make_server, mx, quota_backend):
    """Redis stops mid-test: RCPT gets `451 4.3.0 Quota service unavailable, try again later`,
    a message whose recipients were held before the outage is refused at end of data with the
    same 451 (never accepted uncounted), `/readyz` turns 503 and `postern_quota_backend_up` 0,
    and the message accepted before the outage is still delivered. Once redis-server restarts
    on the same port, the same session's RCPT gets 250 again, `/readyz` 200, the gauge 1,
    without any action on Postern."""
    redis = quota_backend.redis
    srv = make_server(delivery_port=mx.port, quota=quota_backend.quota())
    alice = srv.alice
    wait_until(lambda: srv.metric("postern_quota_backend_up") == 1, 5, "quota backend up")
    client = srv.login(alice.address, alice.password)
    inflight = open_transaction(srv, alice)
    assert inflight.cmd("RCPT TO:<inflight@plain.test>") == RCPT_OK
    client.transaction(alice.address, ["before@plain.test"],
                       make_message(sender=alice.address, to="before@plain.test"))

    redis.stop()
    assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
    assert client.cmd("RCPT TO:<during@plain.test>") == QUOTA_UNAVAILABLE
    assert inflight.cmd("DATA") == DATA_GO
    refused = inflight.send_data(make_message(sender=alice.address, to="inflight@plain.test"))
    assert refused == QUOTA_UNAVAILABLE
    wait_until(lambda: srv.http_get("/readyz", timeout=1)[0] == 503, 5, "/readyz 503")
    wait_until(lambda: srv.metric("postern_quota_backend_up") == 0, 5, "quota backend down")
    mx.plain.wait_for("before@plain.test")

    redis.start()
    wait_until(lambda: client.cmd("RCPT TO:<after@plain.test>") == RCPT_OK, 10,
               "RCPT accepted again after Redis restarted", interval=0.1)
    assert client.cmd("DATA") == DATA_GO
    queue_id(client.send_data(make_message(sender=alice.address, to="after@plain.test")))
    wait_until(lambda: srv.http_get("/readyz", timeout=1)[0] == 200, 5, "/readyz 200")
    wait_until(lambda: srv.metric("postern_quota_backend_up") == 1, 5, "quota backend up again")
    mx.plain.wait_for("after@plain.test")
    assert not mx.plain.attempts_for("inflight@plain.test"), "a refused message was delivered"
    assert srv.quota(alice.address)["used"] == 1


def test_redis_down_at_start_serves_unready_then_connects(make_postern, mx, tmp_path):
    """`postern serve` with `[quota] backend = "redis"` and no redis-server listening yet: it
    starts anyway (it exited before), `/readyz` answers 503 and `postern_quota_backend_up` is 0,
    AUTH gets `454 4.7.0 Temporary authentication failure, try again later` (the failed-login
    brake counts in Redis and fails closed, as a session's RCPT would with 451) and the session
    goes on. Once redis-server starts on that port, Postern connects by itself: `/readyz` 200,
    the gauge 1, and the same session's AUTH succeeds, its RCPT gets 250 and the message is
    queued, counted and delivered."""
    redis = RedisServer(tmp_path / "redis-later")          # its port chosen, not started
    pt = make_postern(delivery_port=mx.port,
                      quota={"backend": "redis", "redis_url": redis.url})
    alice = pt.add_account("alice@example.org", "laptop")
    try:
        pt.start(ready=False)
        assert pt.http_get("/readyz", timeout=1)[0] == 503
        assert pt.metric("postern_quota_backend_up") == 0
        client = pt.connect("submission")
        assert client.ehlo().lines[0] == EHLO_FIRST
        assert client.starttls() == TLS_GO
        assert client.ehlo().lines[0] == EHLO_FIRST
        assert client.auth_plain(alice.address, alice.password) == AUTH_TEMPORARY
        assert client.cmd("NOOP") == OK
        time.sleep(1.5)                                    # a reconnect attempt or two fail
        assert pt.http_get("/readyz", timeout=1)[0] == 503
        assert client.auth_plain(alice.address, alice.password) == AUTH_TEMPORARY

        redis.start()
        wait_until(lambda: pt.http_get("/readyz", timeout=1)[0] == 200, 10, "/readyz 200")
        assert pt.metric("postern_quota_backend_up") == 1
        assert client.auth_plain(alice.address, alice.password) == AUTH_OK
        assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
        assert client.cmd("RCPT TO:<later@plain.test>") == RCPT_OK
        assert client.cmd("DATA") == DATA_GO
        queue_id(client.send_data(make_message(sender=alice.address, to="later@plain.test")))
        client.quit()
        mx.plain.wait_for("later@plain.test")
        assert pt.quota(alice.address)["used"] == 1
    finally:
        redis.stop()


# --- per-minute brakes ------------------------------------------------------------------------

def test_connection_brake_fourth_connection(make_server):
    """`connections_per_ip_per_minute = 3`: three connections get the greeting, the fourth (on
    any SMTP listener) gets `421 4.7.0 Too many connections from your address in a short time,
    retry in a minute` and is closed."""
    srv = make_server(brakes={"connections_per_ip_per_minute": 3})
    clients = [srv.connect("submission") for _ in range(2)] + [srv.connect("relay")]
    for role in ("submission", "relay"):
        refused = SmtpClient("127.0.0.1", srv.port(role))
        assert refused.reply() == CONNECTION_BRAKE
        refused.expect_closed()
    for client in clients:
        client.quit()


def test_message_brake_third_message(make_server):
    """`messages_per_identity_per_minute = 2`: two messages are queued, the third message's
    first RCPT gets `450 4.7.1 Too many messages in a short time, retry in a minute`; another
    address is not braked by it."""
    srv = make_server(brakes={"messages_per_identity_per_minute": 2})
    alice, bob = srv.alice, srv.bob
    client = srv.login(alice.address, alice.password)
    for n in range(2):
        client.transaction(alice.address, [f"b{n}@{SINK}"],
                           make_message(sender=alice.address, to=f"b{n}@{SINK}"))
    third = client.try_transaction(alice.address, [f"b2@{SINK}"])
    assert third.rcpt_replies == [MESSAGE_BRAKE] and third.final is None
    other = srv.login(bob.address, bob.password)
    other.transaction(bob.address, [f"bob@{SINK}"], make_message(sender=bob.address,
                                                                   to=f"bob@{SINK}"))


# --- quota show -------------------------------------------------------------------------------

def test_quota_show_json_matches_what_was_sent(make_server, quota_backend):
    """`postern quota show ADDRESS --json`: all free at first; after a queued message of 3
    recipients and an open transaction holding 2: used 3, held 2, limit 500, available 495;
    the held ones go back when that transaction is reset."""
    srv = make_server(quota=quota_backend.quota())
    alice = srv.alice
    fresh = srv.quota(alice.address)
    assert fresh == {"kind": "address", "name": alice.address, "used": 0, "held": 0,
                     "limit": 500, "available": 500, "limit_source": "plan", "plan": "starter",
                     "next_free": None, "window_seconds": 86400}

    client = srv.login(alice.address, alice.password)
    client.transaction(alice.address, rcpts("s", 3), make_message(sender=alice.address,
                                                                   to=f"s-000@{SINK}"))
    holder = open_transaction(srv, alice)
    assert holder.rcpts(rcpts("h", 2)) == [RCPT_OK] * 2
    shown = srv.quota(alice.address)
    assert (shown["used"], shown["held"], shown["limit"], shown["available"]) == (3, 2, 500, 495)
    assert shown["next_free"] is None

    assert holder.cmd("RSET") == OK
    shown = srv.quota(alice.address)
    assert (shown["used"], shown["held"], shown["available"]) == (3, 0, 497)
