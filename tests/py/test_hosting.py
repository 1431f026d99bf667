"""Web hosting on port 25 (issue 3): hosting accounts by client network, their sender domains,
their 50 recipients a day, and PHP's mail() through `postern sendmail`.

These servers trust no network (`[relay] networks = []`): a client on 127.0.0.0/8 is then a
hosting account's server or nobody, never an unmetered trusted network."""

from __future__ import annotations

import os
import time

import pytest

from support import (MAIL_OK, RCPT_OK, RELAY_DENIED, SINK, daily_limit_minute, domain_not_allowed,
                     header_values, minutes_of_day, run, wait_until)

HOSTING = 50                 # the FAQ's daily recipients of a hosting account
ACCOUNT = "web1"
DOMAIN = "shop.test"
NO_TRUSTED_NETWORKS = {"networks": []}
EX_TEMPFAIL, EX_UNAVAILABLE = 75, 69


def relay_session(srv):
    """A port-25 session after EHLO."""
    client = srv.connect("relay")
    assert client.ehlo().code == 250
    return client


@pytest.fixture
def hosting(make_server, quota_backend):
    """A server trusting no network, with hosting account web1 (127.0.0.0/8, shop.test)."""
    srv = make_server(relay=NO_TRUSTED_NETWORKS, quota=quota_backend.quota())
    srv.add_hosting(ACCOUNT, ["127.0.0.0/8"], [DOMAIN])
    return srv


def test_hosting_account_sender_domains(make_server):
    """Before `hosting add`, port 25 from 127.0.0.1 relays nothing (`550 5.7.1 Relaying
    denied`). After `postern hosting add web1 --network 127.0.0.0/8 --domain shop.test` (server
    running), MAIL FROM in shop.test gets 250 (any case) and its RCPT 250; a sender outside it
    gets `550 5.7.1 Sender address rejected: domain not allowed for hosting account web1`.
    `hosting list --json` shows the account; after `hosting remove` relaying is denied again."""
    srv = make_server(relay=NO_TRUSTED_NETWORKS)
    client = relay_session(srv)
    assert client.cmd(f"MAIL FROM:<wp@{DOMAIN}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}>") == RELAY_DENIED
    client.quit()

    srv.add_hosting(ACCOUNT, ["127.0.0.0/8"], [DOMAIN])
    listed = srv.cli("hosting", "list", "--json").stdout
    assert '"web1"' in listed and '"127.0.0.0/8"' in listed and f'"{DOMAIN}"' in listed
    client = relay_session(srv)
    assert client.cmd(f"MAIL FROM:<wordpress@{DOMAIN}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}>") == RCPT_OK
    assert client.cmd("RSET").code == 250
    assert client.cmd("MAIL FROM:<WordPress@Shop.Test>") == MAIL_OK
    assert client.cmd("RSET").code == 250
    for sender in ("wordpress@other.test", f"wordpress@{DOMAIN}.evil.test"):
        assert client.cmd(f"MAIL FROM:<{sender}>") == domain_not_allowed(ACCOUNT), sender
    client.quit()

    srv.cli("hosting", "remove", ACCOUNT)
    client = relay_session(srv)
    assert client.cmd(f"MAIL FROM:<wp@{DOMAIN}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}>") == RELAY_DENIED


def test_hosting_50_recipients_a_day(hosting):
    """A hosting account's first 50 recipients of the day pass (49, then the 50th in a second
    message); the 51st RCPT gets `450 4.7.1 Daily sending limit reached (50 recipients per 24
    hours); retry after HH:MM UTC` (HH:MM: the minute of the first count) and the message is
    queued with the 50th; `quota show --hosting web1 --json` reports 50 of 50 (hosting
    default). `limit set --hosting web1 --daily 52` then lets exactly two more through."""
    client = relay_session(hosting)
    sender = f"wp@{DOMAIN}"
    started = time.time()
    first = client.try_transaction(sender, [f"h{i:02}@{SINK}" for i in range(49)])
    counted = time.time()
    assert len(first.accepted) == 49 and first.queued, first.refusals()[:1]
    second = client.try_transaction(sender, [f"h49@{SINK}", f"h50@{SINK}"])
    assert second.rcpt_replies[0] == RCPT_OK and second.queued
    minute = daily_limit_minute(second.rcpt_replies[1], HOSTING)
    assert minute in minutes_of_day(started, counted)
    third = client.try_transaction(sender, [f"h51@{SINK}"])
    assert third.rcpt_replies == [second.rcpt_replies[1]] and third.final is None
    client.quit()

    shown = hosting.quota("--hosting", ACCOUNT)
    assert {k: shown[k] for k in ("kind", "name", "used", "held", "limit", "available",
                                  "limit_source", "plan")} == {
        "kind": "hosting", "name": ACCOUNT, "used": 50, "held": 0, "limit": 50,
        "available": 0, "limit_source": "hosting default", "plan": None}

    hosting.cli("limit", "set", "--hosting", ACCOUNT, "--daily", "52")
    client = relay_session(hosting)
    more = client.try_transaction(sender, [f"x{i}@{SINK}" for i in range(3)])
    assert more.rcpt_replies[:2] == [RCPT_OK] * 2 and more.queued
    daily_limit_minute(more.rcpt_replies[2], 52)


# --- PHP mail() through postern sendmail ------------------------------------------------------

PHP_MAIL = 'echo mail($argv[1], $argv[2], $argv[3], $argv[4]) ? "true" : "false";'


def php_mail(srv, to: str, subject: str, body: str, headers: str,
             sendmail_path: str | None = None) -> bool:
    """Real PHP's mail() with `sendmail_path = "postern --config CFG sendmail -t -i"` (or the
    given ``sendmail_path``), without POSTERN_CONFIG in its environment."""
    if sendmail_path is None:
        sendmail_path = f"{srv.binary} --config {srv.config_path} sendmail -t -i"
    env = {k: v for k, v in os.environ.items() if k != "POSTERN_CONFIG"}
    result = run(["php", "-n", "-d", f"sendmail_path={sendmail_path}", "-r", PHP_MAIL,
                  "--", to, subject, body, headers], env=env, cwd=srv.dir)
    assert result.returncode == 0 and result.stdout in ("true", "false"), result
    return result.stdout == "true"


def sendmail(srv, message: str, *args: str):
    """`postern sendmail ARGS` with ``message`` on stdin (exit status not checked)."""
    return srv.cli("sendmail", *args, input=message, check=False)


def refused_reply(stderr: str, code: str) -> str:
    """The server reply that `postern sendmail` printed on stderr (its first line with
    ``code``), without the `postern sendmail: STAGE: ` prefix."""
    for line in stderr.splitlines():
        at = line.find(f": {code} ")
        if line.startswith("postern sendmail: ") and at >= 0:
            return line[at + 2:]
    raise AssertionError(f"no {code} reply on stderr: {stderr!r}")


@pytest.mark.parametrize("quota_backend", ["embedded"], indirect=True)
def test_php_mail_50_recipients_then_tempfail(make_server, mx, quota_backend):
    """PHP's mail() via `postern sendmail -t -i` into port 25 as hosting account web1:
    - a From outside shop.test: mail() returns false, `postern sendmail` exits 69 with the 550
      `domain not allowed for hosting account web1` on stderr, and nothing is counted;
    - five mails of ten recipients each (4 To, 3 Cc, 3 Bcc): mail() returns true; every
      recipient, Bcc ones included, is delivered, and the delivered message has no Bcc header;
    - after the fourth, a mail of twelve recipients would cross the limit: mail() returns false,
      nothing of it is delivered, and its ten held recipients are released (40 used);
    - the 51st recipient: mail() returns false, and `postern sendmail -t -i` exits 75 with the
      450 daily-limit line (50 recipients) on stderr."""
    srv = make_server(delivery_port=mx.port, relay=NO_TRUSTED_NETWORKS,
                      quota=quota_backend.quota())
    srv.add_hosting(ACCOUNT, ["127.0.0.0/8"], [DOMAIN])

    outsider = "From: Intruder <web@other.test>"
    assert php_mail(srv, f"x@{SINK}", "no", "Not from the shop.\n", outsider) is False
    result = sendmail(srv, f"{outsider}\nTo: x@{SINK}\nSubject: no\n\nNo.\n", "-t", "-i")
    assert result.returncode == EX_UNAVAILABLE, result
    assert refused_reply(result.stderr, "550") == domain_not_allowed(ACCOUNT)
    assert srv.quota("--hosting", ACCOUNT)["used"] == 0

    def order(n: str, per_field: tuple[int, int, int]) -> tuple[bool, tuple]:
        to, cc, bcc = ([f"{field}{n}-{i}@plain.test" for i in range(count)]
                       for field, count in zip(("to", "cc", "bcc"), per_field))
        headers = (f"From: Web Shop <shop@{DOMAIN}>\r\nCc: {', '.join(cc)}\r\n"
                   f"Bcc: {', '.join(bcc)}")
        sent = php_mail(srv, ", ".join(to), f"Order {n}", f"Order {n} shipped.\n", headers)
        return sent, (to, cc, bcc)

    mails = []
    for n in range(4):
        sent, fields = order(str(n), (4, 3, 3))
        assert sent, n
        mails.append(fields)
    # 12 more would cross the limit: all or nothing, the 10 held ones are released.
    sent, crossing = order("x", (4, 4, 4))
    assert sent is False
    wait_until(lambda: srv.quota("--hosting", ACCOUNT)["held"] == 0, 5, "holds released")
    assert srv.quota("--hosting", ACCOUNT)["used"] == 40
    sent, fields = order("4", (4, 3, 3))
    assert sent
    mails.append(fields)

    assert php_mail(srv, "late@plain.test", "Order 5", "Too many.\n",
                    f"From: shop@{DOMAIN}") is False
    started = time.time()
    result = sendmail(srv, f"From: shop@{DOMAIN}\nTo: late@plain.test\nSubject: 6\n\nSix.\n",
                      "-t", "-i")
    assert result.returncode == EX_TEMPFAIL, result
    minute = daily_limit_minute(refused_reply(result.stderr, "450"), HOSTING)
    assert minute in minutes_of_day(started - 60, time.time())

    for n, (to, cc, bcc) in enumerate(mails):
        got = mx.plain.wait_for(bcc[-1])
        assert sorted(got.rcpt_tos) == sorted(to + cc + bcc), n
        assert header_values(got.content, "Bcc") == [], got.content[:500]
        assert header_values(got.content, "Cc") == [", ".join(cc)]
        assert header_values(got.content, "Subject") == [f"Order {n}"]
    for address in ["late@plain.test", *sum(crossing, [])]:
        assert not mx.plain.attempts_for(address), address
    assert srv.quota("--hosting", ACCOUNT)["used"] == HOSTING


@pytest.mark.parametrize("quota_backend", ["embedded"], indirect=True)
def test_php_sendmail_path_with_config_after_options(make_server, mx, quota_backend):
    """PHP's `sendmail_path` as hosting panels write it, `postern sendmail -t -i --config CFG`
    (and `--config=CFG`), with no POSTERN_CONFIG and no config/postern.toml where PHP runs:
    mail() returns true and the message is delivered. `postern sendmail -t --config` (no
    value) exits 64 with `option --config needs a value`."""
    srv = make_server(delivery_port=mx.port, relay=NO_TRUSTED_NETWORKS,
                      quota=quota_backend.quota())
    srv.add_hosting(ACCOUNT, ["127.0.0.0/8"], [DOMAIN])
    assert not (srv.dir / "config" / "postern.toml").exists()
    forms = {"spaced": f"{srv.binary} sendmail -t -i --config {srv.config_path}",
             "equals": f"{srv.binary} sendmail -t -i --config={srv.config_path}"}
    for name, sendmail_path in forms.items():
        assert php_mail(srv, f"{name}@plain.test", f"Form {name}", "Sent.\n",
                        f"From: shop@{DOMAIN}", sendmail_path=sendmail_path) is True, name
    for name in forms:
        got = mx.plain.wait_for(f"{name}@plain.test")
        assert header_values(got.content, "Subject") == [f"Form {name}"]
    result = srv.cli("sendmail", "-t", "--config", input="x\n", check=False,
                     with_config=False)
    assert result.returncode == 64, result
    assert result.stderr.splitlines()[0] == "postern sendmail: option --config needs a value"


@pytest.mark.parametrize("quota_backend", ["embedded"], indirect=True)
def test_sendmail_declares_smtputf8_for_a_utf8_recipient(make_server, mx, quota_backend):
    """`postern sendmail -t` to a UTF-8 address: MAIL carries SMTPUTF8 (RFC 6531 section 3.4;
    without it the relay answers 553 5.6.7), so the message is accepted and delivered."""
    srv = make_server(delivery_port=mx.port, relay=NO_TRUSTED_NETWORKS,
                      quota=quota_backend.quota())
    srv.add_hosting(ACCOUNT, ["127.0.0.0/8"], [DOMAIN])
    result = sendmail(srv, f"From: shop@{DOMAIN}\nTo: jörg@plain.test\nSubject: ü\n\nHallo.\n",
                      "-t", "-i")
    assert result.returncode == 0, result
    got = mx.plain.wait_for("jörg@plain.test")
    assert got.rcpt_tos == ["jörg@plain.test"]
