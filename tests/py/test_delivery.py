"""Delivery to the recipients' MX: MX answers from knot over the wire, aiosmtpd receivers with
and without STARTTLS on the [delivery] port."""

import re
import time

import pytest

from support import header_values, make_message, wait_until


@pytest.fixture
def dsrv(make_server, mx):
    """A server delivering to the test MX hosts (retry_initial 1s, retry_max 2s)."""
    return make_server(delivery_port=mx.port)


def submit(srv, rcpts, msg=None, device="laptop"):
    """Submits as alice on 587; returns (queue id, message bytes)."""
    alice = srv.alice
    msg = msg or make_message(sender=alice.address, to=rcpts[0], body="Body line.\r\n")
    client = srv.login(alice.address, alice.devices[device])
    qid = client.transaction(alice.address, rcpts, msg)
    client.quit()
    return qid, msg


def assert_delivered_intact(got, sender, rcpts, msg):
    assert got.mail_from == sender
    assert sorted(got.rcpt_tos) == sorted(rcpts)
    assert got.content.endswith(msg), "original message not found unchanged at the end"


def test_delivered_over_starttls(dsrv, mx):
    """tls.test's MX (127.0.0.2) offers STARTTLS: the message arrives over TLS, unchanged."""
    qid, msg = submit(dsrv, ["t1@tls.test"])
    got = mx.tls.wait_for("t1@tls.test")
    assert got.tls, "delivered in cleartext although the MX offers STARTTLS"
    assert_delivered_intact(got, dsrv.alice.address, ["t1@tls.test"], msg)


def test_delivered_in_cleartext(dsrv, mx):
    """plain.test's MX (127.0.0.3) offers no STARTTLS: delivered in cleartext, unchanged."""
    _, msg = submit(dsrv, ["p1@plain.test"])
    got = mx.plain.wait_for("p1@plain.test")
    assert not got.tls
    assert_delivered_intact(got, dsrv.alice.address, ["p1@plain.test"], msg)


def test_implicit_mx_from_a_record(dsrv, mx):
    """A domain with no MX but an A record (implicit.test -> 127.0.0.3) gets its mail there."""
    _, msg = submit(dsrv, ["i1@implicit.test"])
    assert_delivered_intact(mx.plain.wait_for("i1@implicit.test"), dsrv.alice.address,
                            ["i1@implicit.test"], msg)


def test_failed_tls_handshake_falls_back_to_cleartext(dsrv, mx):
    """Opportunistic TLS: badtls.test's MX offers STARTTLS but the handshake fails; Postern
    retries in cleartext and delivers."""
    _, msg = submit(dsrv, ["b1@badtls.test"])
    got = mx.badtls.wait_for("b1@badtls.test", timeout=20)
    assert not got.tls
    assert_delivered_intact(got, dsrv.alice.address, ["b1@badtls.test"], msg)


def test_one_message_to_several_domains(dsrv, mx):
    """Recipients in two domains: each MX gets its own recipients, and only those."""
    rcpts = ["a@tls.test", "b@tls.test", "c@plain.test"]
    _, msg = submit(dsrv, rcpts)
    got_tls = mx.tls.wait_for("a@tls.test")
    got_plain = mx.plain.wait_for("c@plain.test")
    wait_b = mx.tls.wait_for("b@tls.test")
    assert {*got_tls.rcpt_tos, *wait_b.rcpt_tos} == {"a@tls.test", "b@tls.test"}
    assert got_plain.rcpt_tos == ["c@plain.test"]
    assert got_tls.content.endswith(msg) and got_plain.content.endswith(msg)


def test_5xx_fails_the_recipient_without_retry(dsrv, mx):
    """A 550 at RCPT fails that recipient for good (one attempt, none after retry_max), while
    the other recipient of the same message is delivered."""
    submit(dsrv, ["reject-1@plain.test", "ok-1@plain.test"])
    mx.plain.wait_for("ok-1@plain.test")
    first = wait_until(lambda: mx.plain.attempts_for("reject-1@plain.test"), 10,
                       "the RCPT attempt of reject-1")[0]
    # Absence can only be shown by waiting: past retry_max (2 s) plus a second of slack after
    # the first attempt, any retry would have happened.
    time.sleep(max(0.0, first.at + 3.0 - time.monotonic()))
    attempts = mx.plain.attempts_for("reject-1@plain.test")
    assert len(attempts) == 1, f"5xx recipient retried: {attempts}"
    assert len([m for m in mx.plain.received() if "ok-1@plain.test" in m.rcpt_tos]) == 1


def test_4xx_is_retried_then_delivered(dsrv, mx):
    """A 451 at RCPT is retried after retry_initial (1 s) and the second attempt delivers;
    the log has a line per delivery attempt."""
    qid, msg = submit(dsrv, ["tempfail-1@plain.test"])
    got = mx.plain.wait_for("tempfail-1@plain.test", timeout=20)
    assert_delivered_intact(got, dsrv.alice.address, ["tempfail-1@plain.test"], msg)
    attempts = mx.plain.attempts_for("tempfail-1@plain.test")
    assert [a.reply[:3] for a in attempts] == ["451", "250"]
    gap = attempts[1].at - attempts[0].at
    assert 0.9 <= gap <= 10, f"retry after {gap:.2f}s, expected about retry_initial = 1s"
    lines = [l for l in dsrv.log_text().splitlines() if qid in l]
    assert len(lines) >= 3, "expected the transaction line and one line per delivery attempt:\n" \
        + "\n".join(lines)


def test_message_id_and_date_added_when_missing(dsrv, mx):
    """RFC 6409 section 8: a submission without Message-ID and Date gets one of each."""
    alice = dsrv.alice
    msg = make_message(sender=alice.address, to="m1@plain.test", message_id=False, date=False)
    submit(dsrv, ["m1@plain.test"], msg)
    got = mx.plain.wait_for("m1@plain.test")
    ids, dates = header_values(got.content, "Message-ID"), header_values(got.content, "Date")
    assert len(ids) == 1 and re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", ids[0]), ids
    assert len(dates) == 1 and re.search(r"\d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}",
                                         dates[0]), dates
    assert got.content.endswith(msg.split(b"\r\n\r\n", 1)[1])


def test_existing_message_id_and_date_kept(dsrv, mx):
    """A message with its own Message-ID and Date keeps them, not duplicated."""
    alice = dsrv.alice
    msg = make_message(sender=alice.address, to="m2@plain.test")
    submit(dsrv, ["m2@plain.test"], msg)
    got = mx.plain.wait_for("m2@plain.test")
    assert header_values(got.content, "Message-ID") == header_values(msg, "Message-ID")
    assert header_values(got.content, "Date") == header_values(msg, "Date")
