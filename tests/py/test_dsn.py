"""Bounces (issue 5): RFC 3464 DSNs in an RFC 6522 multipart/report, sent from <> to the
envelope sender through the sender's own MX, honouring NOTIFY, RET, ENVID and ORCPT.

Messages are submitted with smtplib on the relay port (25) from 127.0.0.1, a trusted network
in the test config, so any sender is allowed: senders are at plain.test, whose MX (127.0.0.3,
the ``mx.plain`` receiver) receives both the original's recipients and the DSN. Receivers
answer ``reject*`` with 550 5.1.1 and ``defer*`` (this file's policy) always with 451 4.3.0."""

import email
import email.policy
import smtplib
import time

import pytest

from support import HOSTNAME, default_policy, make_message, wait_until


def policy(address: str, attempt: int) -> str | None:
    """The default receiver policy plus ``defer*``: 451 on every attempt."""
    if address.split("@", 1)[0].lower().startswith("defer"):
        return "451 4.3.0 Try again later"
    return default_policy(address, attempt)


@pytest.fixture
def plain(mx):
    mx.plain.policy = policy
    return mx.plain


@pytest.fixture
def dsrv(make_server, mx):
    """Delivering to the test MX hosts (retry_initial 1s, retry_max 2s)."""
    return make_server(delivery_port=mx.port)


def send(srv, sender: str, rcpts: list[str], *, mail_options=(), rcpt_options=None,
         msg: bytes | None = None) -> str:
    """One transaction on the relay port with smtplib; every reply code asserted exactly.
    ``rcpt_options`` maps a recipient to its RCPT parameters. Returns the queue id."""
    msg = msg or make_message(sender=sender or "nobody@plain.test", to=rcpts[0],
                              subject="dsn test", body="Body line.\r\n")
    with smtplib.SMTP("127.0.0.1", srv.port("relay"), timeout=10) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        assert s.has_extn("dsn")
        assert s.mail(sender, list(mail_options))[0] == 250
        for r in rcpts:
            assert s.rcpt(r, list((rcpt_options or {}).get(r, ())))[0] == 250
        code, text = s.data(msg)
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[-1]


def dsns_to(receiver, sender: str) -> list:
    """Messages from <> to ``sender`` that ``receiver`` got, parsed."""
    return [email.message_from_bytes(m.content, policy=email.policy.default)
            for m in receiver.received() if m.mail_from == "<>" and sender in m.rcpt_tos]


def wait_dsn(receiver, sender: str, timeout: float = 20):
    """The first DSN to ``sender``, parsed."""
    return wait_until(lambda: dsns_to(receiver, sender), timeout, f"a DSN to {sender}")[0]


def report(dsn) -> tuple[list, list]:
    """Asserts the RFC 6522/3464 structure; returns (parts, field groups of the
    message/delivery-status part: per-message first, then one per recipient)."""
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = dsn.get_payload()
    assert [p.get_content_type() for p in parts[:2]] == ["text/plain",
                                                         "message/delivery-status"]
    assert len(parts) == 3
    groups = parts[1].get_payload()
    return parts, groups


def spool_empty(srv) -> bool:
    return srv.metric("postern_spool_messages") == 0


def bounces(srv, kind: str) -> float:
    return srv.metric(f'postern_delivery_bounces_total{{kind="{kind}"}}') or 0


def test_5xx_bounces_one_dsn_to_the_sender(dsrv, plain):
    """Two recipients refused with 550 and one delivered in one attempt: one DSN to the
    sender listing both refusals with the remote reply, and the original attached whole."""
    sender = "s1@plain.test"
    rcpts = ["reject-1a@plain.test", "reject-1b@plain.test", "ok-1@plain.test"]
    qid = send(dsrv, sender, rcpts)
    dsn = wait_dsn(plain, sender)
    assert dsn["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOSTNAME}>"
    assert [a.addr_spec for a in dsn["To"].addresses] == [sender]
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["Date"] and dsn["Message-ID"].endswith(f"@{HOSTNAME}>")
    parts, groups = report(dsn)
    assert groups[0]["Reporting-MTA"] == f"dns; {HOSTNAME}"
    assert groups[0]["Original-Envelope-Id"] is None and groups[0]["Arrival-Date"]
    assert [g["Final-Recipient"] for g in groups[1:]] == [
        "rfc822; reject-1a@plain.test", "rfc822; reject-1b@plain.test"]
    for g in groups[1:]:
        assert g["Action"] == "failed"
        assert g["Status"] == "5.1.1"
        assert g["Remote-MTA"] == "dns; mx.plain.test"
        assert g["Diagnostic-Code"] == "smtp; 550 5.1.1 Mailbox unavailable"
        assert g["Original-Recipient"] is None and g["Last-Attempt-Date"]
    text = parts[0].get_content()
    assert "<reject-1a@plain.test>: mx.plain.test[127.0.0.3] said: 550 5.1.1 Mailbox " \
           "unavailable (in reply to RCPT TO)" in text, text
    assert parts[2].get_content_type() == "message/rfc822"
    original = parts[2].get_payload()[0]
    assert original["Subject"] == "dsn test"
    assert original.get_content().rstrip("\r\n") == "Body line."
    # The delivered recipient got the message once; the DSN is the only one to the sender.
    assert len([m for m in plain.received() if "ok-1@plain.test" in m.rcpt_tos]) == 1
    wait_until(lambda: spool_empty(dsrv), 20, "the DSN delivered")
    assert len(dsns_to(plain, sender)) == 1
    assert bounces(dsrv, "failure") == 1
    assert [line for line in dsrv.log_text().splitlines() if "DSN enqueued" in line
            and f"queue_id={qid}" in line and 'kind="failure"' in line and "recipients=2" in line]


def test_null_sender_is_never_bounced(dsrv, plain):
    """A message from <> refused with 550: no DSN is made (the spool empties, no bounce
    counted, nothing sent anywhere but the refused attempt)."""
    send(dsrv, "", ["reject-2@plain.test"])
    wait_until(lambda: plain.attempts_for("reject-2@plain.test"), 20, "the RCPT attempt")
    wait_until(lambda: spool_empty(dsrv), 20, "the message finished")
    assert bounces(dsrv, "failure") == 0
    time.sleep(1)
    assert plain.received() == []


def test_notify_never_and_notify_without_failure_suppress(dsrv, plain):
    """NOTIFY=NEVER, and an explicit NOTIFY list without FAILURE, get no failure DSN; a
    recipient of the same message with NOTIFY=FAILURE does, alone."""
    sender = "s3@plain.test"
    send(dsrv, sender, ["reject-3a@plain.test", "reject-3b@plain.test", "reject-3c@plain.test"],
         rcpt_options={"reject-3a@plain.test": ["NOTIFY=NEVER"],
                       "reject-3b@plain.test": ["NOTIFY=DELAY"],
                       "reject-3c@plain.test": ["NOTIFY=FAILURE"]})
    _, groups = report(wait_dsn(plain, sender))
    assert [g["Final-Recipient"] for g in groups[1:]] == ["rfc822; reject-3c@plain.test"]

    send(dsrv, "s3b@plain.test", ["reject-3d@plain.test"],
         rcpt_options={"reject-3d@plain.test": ["NOTIFY=NEVER"]})
    wait_until(lambda: plain.attempts_for("reject-3d@plain.test"), 20, "the RCPT attempt")
    wait_until(lambda: spool_empty(dsrv), 20, "everything finished")
    assert bounces(dsrv, "failure") == 1
    assert dsns_to(plain, "s3b@plain.test") == []


def test_envid_orcpt_and_ret_hdrs(dsrv, plain):
    """ENVID and ORCPT (xtext-decoded) come back as Original-Envelope-Id and
    Original-Recipient; RET=HDRS returns the header section only, as text/rfc822-headers."""
    sender = "s4@plain.test"
    send(dsrv, sender, ["reject-4@plain.test"], mail_options=["RET=HDRS", "ENVID=QQ314159"],
         rcpt_options={"reject-4@plain.test": ["NOTIFY=FAILURE",
                                               "ORCPT=rfc822;Orig+2Bfour@example.com"]})
    parts, groups = report(wait_dsn(plain, sender))
    assert groups[0]["Original-Envelope-Id"] == "QQ314159"
    assert groups[1]["Original-Recipient"] == "rfc822; Orig+four@example.com"
    assert groups[1]["Final-Recipient"] == "rfc822; reject-4@plain.test"
    assert parts[2].get_content_type() == "text/rfc822-headers"
    headers = parts[2].get_payload() if isinstance(parts[2].get_payload(), str) \
        else parts[2].as_string()
    assert "Subject: dsn test" in headers
    assert "Body line." not in headers


def test_expired_recipient_bounces_with_5_4_7(make_server, mx, plain):
    """A recipient answered 451 until delivery.max_age (3 s) passes fails as expired: a DSN
    with Status 5.4.7 and the last remote reply as Diagnostic-Code."""
    srv = make_server(delivery_port=mx.port, delivery={"max_age": "3s"})
    sender = "s5@plain.test"
    send(srv, sender, ["defer-5@plain.test"])
    dsn = wait_dsn(plain, sender, timeout=30)
    _, groups = report(dsn)
    g = groups[1]
    assert g["Final-Recipient"] == "rfc822; defer-5@plain.test"
    assert (g["Action"], g["Status"]) == ("failed", "5.4.7")
    assert g["Diagnostic-Code"] == "smtp; 451 4.3.0 Try again later"
    assert len(plain.attempts_for("defer-5@plain.test")) >= 2
    assert bounces(srv, "failure") == 1


def test_delay_notice_sent_once_across_restart(make_server, mx, plain):
    """delay_warning = 1s: one delay DSN (Action: delayed, headers only, Will-Retry-Until)
    while retries go on, and no second one, also after a restart."""
    srv = make_server(delivery_port=mx.port, delivery={"delay_warning": "1s"})
    sender = "s6@plain.test"
    send(srv, sender, ["defer-6@plain.test"])
    dsn = wait_dsn(plain, sender)
    assert dsn["Subject"] == "Delivery Status Notification (Delay)"
    parts, groups = report(dsn)
    g = groups[1]
    assert (g["Action"], g["Status"]) == ("delayed", "4.3.0")
    assert g["Diagnostic-Code"] == "smtp; 451 4.3.0 Try again later"
    assert g["Will-Retry-Until"]
    assert parts[2].get_content_type() == "text/rfc822-headers"
    wait_until(lambda: bounces(srv, "delay") == 1, 10, "the delay DSN counted")
    seen = len(plain.attempts_for("defer-6@plain.test"))
    srv.restart()
    wait_until(lambda: len(plain.attempts_for("defer-6@plain.test")) >= seen + 3, 30,
               "three more attempts after the restart")
    assert len(dsns_to(plain, sender)) == 1
    assert bounces(srv, "delay") == 0, "none after the restart"
    assert bounces(srv, "failure") == 0


def test_delay_notice_respects_notify(make_server, mx, plain):
    """NOTIFY=FAILURE (no DELAY): no delay notice while retries go on."""
    srv = make_server(delivery_port=mx.port, delivery={"delay_warning": "1s"})
    send(srv, "s7@plain.test", ["defer-7@plain.test"],
         rcpt_options={"defer-7@plain.test": ["NOTIFY=FAILURE"]})
    wait_until(lambda: len(plain.attempts_for("defer-7@plain.test")) >= 3, 30,
               "three attempts")
    assert dsns_to(plain, "s7@plain.test") == []
    assert bounces(srv, "delay") == 0


def test_notify_success_gets_a_relayed_dsn(dsrv, plain):
    """NOTIFY=SUCCESS: a DSN with Action: relayed once the recipient's server accepted."""
    sender = "s8@plain.test"
    send(dsrv, sender, ["ok-8@plain.test"],
         rcpt_options={"ok-8@plain.test": ["NOTIFY=SUCCESS"]})
    _, groups = report(wait_dsn(plain, sender))
    assert groups[1]["Final-Recipient"] == "rfc822; ok-8@plain.test"
    assert (groups[1]["Action"], groups[1]["Status"]) == ("relayed", "2.0.0")
    assert bounces(dsrv, "success") == 1
