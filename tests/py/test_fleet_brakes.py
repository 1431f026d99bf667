"""Fleet-wide brakes and Redis robustness (issue 11): two `postern serve` replicas (own ports
and spools, one directory file) sharing one real `redis-server` started by the test count the
failed-login brake and the message burst brake together; with Redis stopped both fail closed
with the exact 4xx replies and service returns when Redis does; on a three-master Redis
Cluster `/readyz` and `postern_quota_backend_up` follow whether every slot is served; the
persistence settings are exported and warned about at start."""
from __future__ import annotations

from support import (AUTH_FAILED, AUTH_OK, AUTH_TEMPORARY, EHLO_FIRST, GREETING, MAIL_OK, MESSAGE_BRAKE,
                     QUOTA_UNAVAILABLE, RCPT_OK, SINK, TLS_GO, SmtpClient, make_message, wait_until)

FAILED_LOGINS_FROM_ADDRESS = "421 4.7.0 Too many failed logins from your address, try again later"
PER_IP = 4


def fleet_on_redis(make_fleet, redis, **overrides):
    """Two started replicas on `redis`, with alice (laptop) and bob (desktop)."""
    fleet = make_fleet(2, quota={"backend": "redis", "redis_url": redis.url}, **overrides)
    alice = fleet[0].add_account("alice@example.org", "laptop")
    bob = fleet[0].add_account("bob@example.net", "desktop")
    for pt in fleet:
        pt.start()
    return fleet, alice, bob


def tls_session(pt) -> SmtpClient:
    """587: greeting, EHLO, STARTTLS, EHLO, each asserted; ready for AUTH."""
    client = pt.connect("submission")
    assert client.ehlo().lines[0] == EHLO_FIRST
    assert client.starttls() == TLS_GO
    assert client.ehlo().lines[0] == EHLO_FIRST
    return client


def refused_at_connect(pt) -> None:
    client = SmtpClient("127.0.0.1", pt.port("submission"))
    assert client.reply() == FAILED_LOGINS_FROM_ADDRESS
    client.expect_closed()


def test_failed_logins_across_two_replicas(make_fleet, make_redis):
    """`max_auth_failures_per_ip = 4`, failures from 127.0.0.1 alternating between the two
    replicas, one session each: after 3 both still greet; the 4th failure engages the brake on
    both, so a new connection to either gets `421 4.7.0 Too many failed logins from your
    address, try again later` and is closed, and a session opened on the other replica before
    the 4th failure gets the same 421 at its next AUTH, even with the right password."""
    fleet, alice, _ = fleet_on_redis(make_fleet, make_redis(),
                                     limits={"max_auth_failures_per_ip": PER_IP})
    waiting = tls_session(fleet[1])
    for n in range(PER_IP):
        for pt in fleet:
            pt.connect("submission").close()                  # asserts the greeting
        client = tls_session(fleet[n % 2])
        assert client.auth_plain(alice.address, "wrong") == AUTH_FAILED, n
        client.close()
    for pt in fleet:
        refused_at_connect(pt)
    assert waiting.auth_plain(alice.address, alice.password) == FAILED_LOGINS_FROM_ADDRESS
    waiting.expect_closed()
    # Another client address is not braked.
    other = SmtpClient("127.0.0.1", fleet[0].port("submission"), source="127.0.0.2")
    assert other.reply() == GREETING
    other.close()


def send_one(client: SmtpClient, sender: str, n: int) -> None:
    assert client.cmd(f"MAIL FROM:<{sender}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<m{n}@{SINK}>") == RCPT_OK
    assert client.cmd("DATA").code == 354
    final = client.send_data(make_message(sender=sender, to=f"m{n}@{SINK}"))
    assert final.code == 250, final


def test_message_burst_across_two_replicas(make_fleet, make_redis):
    """`messages_per_identity_per_minute = 3`: alice sends two messages through replica 0 and
    one through replica 1; her fourth message's first RCPT gets `450 4.7.1 Too many messages
    in a short time, retry in a minute` on either replica; bob is not braked by it."""
    fleet, alice, bob = fleet_on_redis(make_fleet, make_redis(),
                                       brakes={"messages_per_identity_per_minute": 3})
    first = fleet[0].login(alice.address, alice.password)
    second = fleet[1].login(alice.address, alice.password)
    send_one(first, alice.address, 0)
    send_one(second, alice.address, 1)
    send_one(first, alice.address, 2)
    for client in (first, second):
        assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
        assert client.cmd(f"RCPT TO:<m9@{SINK}>") == MESSAGE_BRAKE
        assert client.cmd("RSET").code == 250
    other = fleet[1].login(bob.address, bob.password)
    send_one(other, bob.address, 3)


def test_brakes_fail_closed_while_redis_is_down(make_fleet, make_redis):
    """Redis stopped: AUTH on either replica gets `454 4.7.0 Temporary authentication failure,
    try again later` (the failed-login brake cannot count), an authenticated session's first
    RCPT gets `451 4.3.0 Quota service unavailable, try again later` (the message brake and the
    quota cannot count), and nothing is queued. Redis started again: both replicas turn ready,
    log in and queue a message, with no restart of Postern."""
    redis = make_redis()
    fleet, alice, _ = fleet_on_redis(make_fleet, redis,
                                     brakes={"messages_per_identity_per_minute": 5})
    authenticated = fleet[0].login(alice.address, alice.password)
    redis.stop()
    for pt in fleet:
        wait_until(lambda pt=pt: pt.http_get("/readyz")[0] == 503, 10, "unready")
        client = tls_session(pt)
        assert client.auth_plain(alice.address, alice.password) == AUTH_TEMPORARY
        client.close()
    assert authenticated.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
    assert authenticated.cmd(f"RCPT TO:<down@{SINK}>") == QUOTA_UNAVAILABLE
    assert authenticated.cmd("DATA").code == 554                # no valid recipients
    redis.start()
    for n, pt in enumerate(fleet):
        wait_until(lambda pt=pt: pt.http_get("/readyz")[0] == 200, 15, "ready again")
        client = tls_session(pt)
        assert client.auth_plain(alice.address, alice.password) == AUTH_OK
        send_one(client, alice.address, 10 + n)
        client.quit()


def test_cluster_readiness_follows_slot_coverage(make_postern, redis_cluster):
    """On a three-master Cluster without replicas: ready at start, with
    `postern_quota_backend_persistence{mode="none"}` 1 and a warning in the log (the test's
    servers keep no AOF or snapshot). One master killed: the other two still answer, but a
    third of the slots is unserved, so `/readyz` answers 503 and `postern_quota_backend_up` is
    0. The master restarted: ready again, metric 1."""
    pt = make_postern(quota={"backend": "redis", "redis_cluster": redis_cluster.urls})
    pt.start()
    assert pt.metric("postern_quota_backend_up") == 1
    wait_until(lambda: pt.metric('postern_quota_backend_persistence{mode="none"}') == 1, 10,
               "the persistence metric")
    assert pt.metric('postern_quota_backend_persistence{mode="aof"}') == 0
    assert "QUOTA COUNTS AT RISK" in pt.log_text()
    victim = redis_cluster.nodes[1]
    victim.stop()
    wait_until(lambda: pt.http_get("/readyz")[0] == 503, 20, "unready with a master down")
    assert pt.metric("postern_quota_backend_up") == 0
    for node in (redis_cluster.nodes[0], redis_cluster.nodes[2]):
        assert node.cli("PING").stdout.strip() == "PONG"
    victim.start()
    wait_until(lambda: pt.http_get("/readyz")[0] == 200, 30, "ready with the master back")
    assert pt.metric("postern_quota_backend_up") == 1


def test_redis_password_from_a_file(make_postern, make_redis, tmp_path):
    """A Redis that requires a password (`requirepass`): with `[quota] redis_password_file`
    naming a file whose first line is it, the relay is ready and counts recipients there; with
    a wrong password it starts unready and AUTH gets `454 4.7.0` (the failed-login brake cannot
    count), and the password shows in no log line."""
    redis = make_redis()
    password = "r3dis-pass-of-the-fleet-test"
    assert redis.cli("CONFIG", "SET", "requirepass", password).stdout.strip() == "OK"
    good = tmp_path / "redis-password"
    good.write_text(password + "\n")
    pt = make_postern(quota={"backend": "redis", "redis_url": redis.url,
                             "redis_password_file": str(good)})
    alice = pt.add_account("alice@example.org", "laptop")
    pt.start()
    assert pt.http_get("/readyz")[0] == 200
    client = pt.login(alice.address, alice.password)
    send_one(client, alice.address, 1)
    client.quit()
    assert pt.quota(alice.address)["used"] == 1
    pt.stop()

    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    other = make_postern(quota={"backend": "redis", "redis_url": redis.url,
                                "redis_password_file": str(wrong)})
    bob = other.add_account("bob@example.net", "desktop")
    other.start(ready=False)
    assert other.http_get("/readyz")[0] == 503
    # The failed-login brake cannot count without Redis: AUTH is refused for now.
    client = tls_session(other)
    assert client.auth_plain(bob.address, bob.password) == AUTH_TEMPORARY
    client.close()
    for log in (pt.log_text(), other.log_text()):
        assert password not in log and "not-the-password" not in log
