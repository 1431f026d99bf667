"""The envelope as clients write it (issue 10): unadvertised MAIL/RCPT parameters, UTF-8
addresses without SMTPUTF8, address-literal recipients, quoted local parts relayed quoted."""

import email
import email.policy
import smtplib
import time

import pytest

from support import MAIL_OK, OK, RCPT_OK, SINK, default_policy, make_message, wait_until

SMTPUTF8_REQUIRED = "553 5.6.7 SMTPUTF8 required for a non-ASCII address"
LITERAL_REFUSED = "550 5.1.2 Address literal recipients are not accepted"
BAD_RCPT_SYNTAX = "501 5.1.3 Bad recipient address syntax"


def mail_param_refused(name: str) -> str:
    return f"555 5.5.4 MAIL FROM parameter {name} not supported"


def rcpt_param_refused(name: str) -> str:
    return f"555 5.5.4 RCPT TO parameter {name} not supported"


def relay_smtp(srv) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", srv.port("relay"), timeout=10)
    assert s.ehlo("client.test")[0] == 250
    return s


def reply_line(code_text: tuple[int, bytes]) -> str:
    code, text = code_text
    return f"{code} {text.decode()}"


# --- unadvertised parameters ------------------------------------------------------------------

# REQUIRETLS is advertised under TLS (test_requiretls.py): refused only in plaintext there.
@pytest.mark.parametrize("param,name", [("FOO=bar", "FOO"), ("foo=bar", "FOO"),
                                        ("MT-PRIORITY=3", "MT-PRIORITY"),
                                        ("HOLDFOR=10", "HOLDFOR"), ("CONPERM", "CONPERM")])
def test_unadvertised_mail_parameter_is_refused(server, param, name):
    """A MAIL parameter EHLO did not advertise gets `555 5.5.4 MAIL FROM parameter NAME not
    supported` (smtplib on 587); the session goes on and the advertised ones still work."""
    alice = server.alice
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as s:
        s.starttls()
        s.login(alice.address, alice.password)
        assert reply_line(s.mail(alice.address, [param])) == mail_param_refused(name)
        assert s.mail(alice.address, ["SIZE=100", "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS",
                                      "ENVID=e1", f"AUTH=<{alice.address}>"])[0] == 250
        assert s.rcpt(f"r@{SINK}", ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;r@{SINK}"])[0] \
            == 250
        code, _ = s.data(make_message(sender=alice.address, to=f"r@{SINK}"))
        assert code == 250


def test_binarymime_body_is_refused_as_unadvertised(server):
    """BODY=BINARYMIME belongs to RFC 3030's BINARYMIME extension, which is not advertised
    (CHUNKING and 8BITMIME are): `555 5.5.4`, and BODY=8BITMIME still works."""
    alice = server.alice
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as s:
        s.starttls()
        s.login(alice.address, alice.password)
        assert "binarymime" not in s.esmtp_features
        assert reply_line(s.mail(alice.address, ["BODY=BINARYMIME"])) == \
            mail_param_refused("BODY=BINARYMIME")
        assert reply_line(s.mail(alice.address, ["BODY=8BITMIME"])) == MAIL_OK

@pytest.mark.parametrize("param,name", [("FOO=bar", "FOO"), ("CONNEG", "CONNEG"),
                                        ("RRVS=2030-01-01T00:00:00Z", "RRVS")])
def test_unadvertised_rcpt_parameter_is_refused(server, param, name):
    """A RCPT parameter EHLO did not advertise gets `555 5.5.4 RCPT TO parameter NAME not
    supported`; the transaction goes on."""
    with relay_smtp(server) as s:
        assert s.mail("www@hosting.example")[0] == 250
        assert reply_line(s.rcpt(f"r@{SINK}", [param])) == rcpt_param_refused(name)
        assert reply_line(s.rcpt(f"r@{SINK}", ["NOTIFY=NEVER"])) == RCPT_OK
        code, _ = s.data(make_message(sender="www@hosting.example", to=f"r@{SINK}"))
        assert code == 250


# --- SMTPUTF8 (RFC 6531 section 3.4) ---------------------------------------------------------

def test_utf8_address_needs_smtputf8(server):
    """A non-ASCII sender or recipient without SMTPUTF8 on MAIL gets `553 5.6.7 SMTPUTF8
    required for a non-ASCII address`; with SMTPUTF8 both are accepted."""
    client = server.connect("relay")
    client.ehlo()
    assert client.cmd("MAIL FROM:<pelé@hosting.example>") == SMTPUTF8_REQUIRED
    assert client.cmd("MAIL FROM:<www@hosting.example>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<josé@{SINK}>") == SMTPUTF8_REQUIRED
    assert client.cmd(f"RCPT TO:<r@{SINK}>") == RCPT_OK
    assert client.cmd("RSET") == OK
    assert client.cmd("MAIL FROM:<pelé@hosting.example> SMTPUTF8") == MAIL_OK
    assert client.cmd(f"RCPT TO:<josé@{SINK}>") == RCPT_OK
    client.quit()


# --- address literals -------------------------------------------------------------------------

def test_address_literal_recipients_are_refused(make_server, mx):
    """`x@"[127.0.0.3]"` (quoted) gets `550 5.1.2 Address literal recipients are not accepted`,
    `x@[127.0.0.3]` the syntax refusal smtp-proto gives it; the MX at that IP never hears of
    either, and the transaction goes on."""
    srv = make_server(delivery_port=mx.port)
    with relay_smtp(srv) as s:
        assert s.mail("www@plain.test")[0] == 250
        assert reply_line(s.rcpt('x@"[127.0.0.3]"')) == LITERAL_REFUSED
        assert reply_line(s.rcpt("x@[127.0.0.3]")) == BAD_RCPT_SYNTAX
        assert reply_line(s.rcpt("ok@plain.test")) == RCPT_OK
        code, _ = s.data(make_message(sender="www@plain.test", to="ok@plain.test"))
        assert code == 250
    mx.plain.wait_for("ok@plain.test")
    time.sleep(1)
    assert [a.address for a in mx.plain.attempts] == ["ok@plain.test"]


def test_address_literals_allowed_by_config(make_server, mx):
    """`[delivery] allow_address_literals = true`: `x@"[127.0.0.3]"` is accepted and delivered
    to the MX at 127.0.0.3."""
    srv = make_server(delivery_port=mx.port, delivery={"allow_address_literals": True})
    with relay_smtp(srv) as s:
        assert s.mail("www@plain.test")[0] == 250
        assert reply_line(s.rcpt('x@"[127.0.0.3]"')) == RCPT_OK
        code, _ = s.data(make_message(sender="www@plain.test", to="x@[127.0.0.3]"))
        assert code == 250
    mx.plain.wait_for("x@[127.0.0.3]")


# --- quoted local parts (RFC 5321 section 4.1.2) ---------------------------------------------

def bounce_policy(address: str, attempt: int) -> str | None:
    if address.startswith('"bounce me"@'):
        return "550 5.1.1 Mailbox unavailable"
    return default_policy(address, attempt)


def test_quoted_local_part_is_relayed_quoted(make_server, mx):
    """`RCPT TO:<"john doe"@plain.test>` reaches the MX as `<"john doe"@plain.test>`, with a
    quoted sender too; a refused quoted recipient is named quoted in the DSN."""
    mx.plain.policy = bounce_policy
    srv = make_server(delivery_port=mx.port)
    sender = '"web master"@plain.test'
    with relay_smtp(srv) as s:
        assert s.mail(sender)[0] == 250
        assert s.rcpt('"john doe"@plain.test')[0] == 250
        assert s.rcpt('"bounce me"@plain.test')[0] == 250
        code, _ = s.data(make_message(sender="www@plain.test", to="john@plain.test"))
        assert code == 250
    got = mx.plain.wait_for('"john doe"@plain.test')
    assert got.mail_from == sender
    assert got.rcpt_tos == ['"john doe"@plain.test']

    def dsn():
        return [m for m in mx.plain.received() if m.mail_from == "<>" and sender in m.rcpt_tos]
    bounce = email.message_from_bytes(wait_until(dsn, 20, "a DSN")[0].content,
                                      policy=email.policy.default)
    status = bounce.get_payload()[1].get_payload()
    finals = [g["Final-Recipient"] for g in status if g["Final-Recipient"]]
    assert finals == ['rfc822; "bounce me"@plain.test'], finals


# --- control characters -------------------------------------------------------------------------

@pytest.mark.parametrize("local", ['"a\x1b]0;owned\x07b"', '"tab\there"', "del\x7fete", '"c1\u0085"'])
def test_control_characters_in_addresses_are_refused(server, local):
    """RFC 5321's path grammar has no control character anywhere, quoted local parts included:
    one in RCPT gets `501 5.1.3`, in MAIL `501 5.1.7`, and the session goes on (a control
    character that got through would reach DSNs, the next hop and the operators' terminals)."""
    alice = server.alice
    client = server.login(alice.address, alice.password)
    utf8 = " SMTPUTF8" if not local.isascii() else ""
    assert client.cmd(f"MAIL FROM:<{local}@example.org>{utf8}") == "501 5.1.7 Bad sender address syntax"
    assert client.cmd(f"MAIL FROM:<{alice.address}>{utf8}") == MAIL_OK
    assert client.cmd(f"RCPT TO:<{local}@plain.test>") == BAD_RCPT_SYNTAX
    assert client.cmd("RCPT TO:<fine@plain.test>") == RCPT_OK
    client.quit()
