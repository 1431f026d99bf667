"""Command-level protocol rules: sequence and syntax errors, line ends and line lengths in
commands and in DATA/BDAT (SMTP smuggling class)."""

import pytest

from support import (BAD_SEQUENCE, BARE_LF_COMMAND, BARE_LF_DATA, DATA_GO, LINE_TOO_LONG,
                     LONG_LINE_DATA, MAIL_OK, NUL_DATA, NO_RCPTS, OK, RCPT_OK, SINK, SYNTAX_ERROR,
                     UNRECOGNIZED, make_message, queue_id)


@pytest.fixture
def alice_session(server):
    """An authenticated 587 session of alice (STARTTLS + AUTH PLAIN)."""
    client = server.login(server.alice.address, server.alice.password)
    yield client
    client.close()


def start_data(client, sender, rcpt=f"r@{SINK}"):
    assert client.cmd(f"MAIL FROM:<{sender}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<{rcpt}>") == RCPT_OK
    assert client.cmd("DATA") == DATA_GO


def assert_session_goes_on(client, sender):
    """After a refusal the same session can still complete a transaction."""
    client.transaction(sender, [f"next@{SINK}"], make_message(sender=sender, to=f"next@{SINK}"))


def test_unknown_command(alice_session):
    """An unknown verb gets exactly `500 5.5.1 Command unrecognized`."""
    assert alice_session.cmd("FROBNICATE now") == UNRECOGNIZED
    assert alice_session.cmd("NOOP") == OK


def test_bad_parameter_syntax(server, alice_session):
    """A malformed MAIL parameter (SIZE=abc) gets exactly `501 5.5.4 Syntax error in parameters`."""
    assert alice_session.cmd(f"MAIL FROM:<{server.alice.address}> SIZE=abc") == SYNTAX_ERROR


@pytest.mark.parametrize("steps", [
    ["RCPT TO:<r@nullmx.test>"],                                         # RCPT before MAIL
    ["DATA"],                                                            # DATA before MAIL
    ["MAIL FROM:<alice@example.org>", "MAIL FROM:<alice@example.org>"],  # nested MAIL
])
def test_bad_sequence(alice_session, steps):
    """Commands out of order get exactly `503 5.5.1 Bad sequence of commands`."""
    for step in steps[:-1]:
        assert alice_session.cmd(step).code == 250
    assert alice_session.cmd(steps[-1]) == BAD_SEQUENCE


def test_data_without_recipients(server, alice_session):
    """DATA after MAIL but no accepted RCPT gets exactly `554 5.5.1 No valid recipients`."""
    assert alice_session.cmd(f"MAIL FROM:<{server.alice.address}>") == MAIL_OK
    assert alice_session.cmd("DATA") == NO_RCPTS


def test_command_with_bare_lf(alice_session):
    """A command ending in bare LF gets `500 5.5.2 Bare LF not allowed, use CRLF`; the session
    goes on."""
    alice_session.send(b"NOOP\n")
    assert alice_session.reply() == BARE_LF_COMMAND
    assert alice_session.cmd("NOOP") == OK


def test_command_line_too_long(alice_session):
    """A 10,000-octet command line gets `500 5.5.2 Line too long`; the session goes on."""
    alice_session.send(b"NOOP " + b"x" * 10_000 + b"\r\n")
    assert alice_session.reply() == LINE_TOO_LONG
    assert alice_session.cmd("NOOP") == OK


@pytest.mark.parametrize("body,why", [
    (b"line one\nline two\r\n", "bare LF"),
    (b"line one\rline two\r\n", "bare CR"),
    (b"bare LF just before a CRLF\n\r\n", "bare LF then CRLF"),
])
def test_data_with_bare_lf_or_cr_is_refused(server, alice_session, body, why):
    """A bare LF or bare CR anywhere in DATA gets `554 5.6.0 Bare LF or CR in message data`,
    and the next transaction in the same session works."""
    sender = server.alice.address
    start_data(alice_session, sender)
    head = make_message(sender=sender, to=f"r@{SINK}", body="")
    assert alice_session.send_data(head + body) == BARE_LF_DATA, why
    assert_session_goes_on(alice_session, sender)


@pytest.mark.parametrize("fake_end", [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n"],
                         ids=["LF.CRLF", "CRLF.LF", "CR.CRLF", "LF.LF"])
def test_smuggled_end_of_data_is_not_an_end(server, alice_session, fake_end):
    """SMTP smuggling: a fake end of data (`<LF>.<CR><LF>` and kin) inside DATA does not end the
    message and the commands after it never run: one 554 for the whole message at the real
    CRLF.CRLF, then nothing else is pending."""
    sender = server.alice.address
    start_data(alice_session, sender)
    smuggled = (make_message(sender=sender, to=f"r@{SINK}", body="innocent")
                + fake_end
                + f"MAIL FROM:<{sender}>\r\nRCPT TO:<victim@{SINK}>\r\nDATA\r\n".encode()
                + b"Subject: smuggled\r\n\r\nevil\r\n")
    alice_session.send(smuggled + b".\r\n")
    assert alice_session.reply() == BARE_LF_DATA
    assert alice_session.cmd("NOOP") == OK            # no reply of a smuggled command pending
    assert_session_goes_on(alice_session, sender)


@pytest.mark.parametrize("verb", ["DATA", "BDAT"])
@pytest.mark.parametrize("body", [b"innocent\r\n\0.\r\n", b"mid\0line\r\n"],
                         ids=["CRLF-NUL-dot-CRLF", "NUL-mid-line"])
def test_nul_in_data_is_refused(server, alice_session, verb, body):
    """A NUL byte in DATA or BDAT gets `554 5.6.0 NUL byte in message data`; `CRLF NUL . CRLF`
    is no end of data (a receiver dropping NULs would read it as one): the pipelined commands
    after it are message text, the session reads on to the real end and goes on."""
    sender = server.alice.address
    assert alice_session.cmd(f"MAIL FROM:<{sender}>") == MAIL_OK
    assert alice_session.cmd(f"RCPT TO:<r@{SINK}>") == RCPT_OK
    smuggled = (make_message(sender=sender, to=f"r@{SINK}", body="") + body
                + f"MAIL FROM:<{sender}>\r\nRCPT TO:<victim@{SINK}>\r\nDATA\r\n".encode()
                + b"Subject: smuggled\r\n\r\nevil\r\n")
    if verb == "DATA":
        assert alice_session.cmd("DATA") == DATA_GO
        alice_session.send(smuggled + b".\r\n")
    else:
        alice_session.send(f"BDAT {len(smuggled)} LAST\r\n".encode() + smuggled)
    assert alice_session.reply() == NUL_DATA
    assert alice_session.cmd("NOOP") == OK            # no reply of a smuggled command pending
    assert_session_goes_on(alice_session, sender)


@pytest.mark.parametrize("length,accepted", [(998, True), (999, False)])
def test_data_line_length_limit(server, alice_session, length, accepted):
    """A 998-octet line (CRLF excluded) is accepted; 999 octets get
    `554 5.6.0 Line longer than 998 octets` and the session goes on."""
    sender = server.alice.address
    start_data(alice_session, sender)
    msg = make_message(sender=sender, to=f"r@{SINK}", body="a" * length + "\r\n")
    reply = alice_session.send_data(msg)
    if accepted:
        queue_id(reply)
    else:
        assert reply == LONG_LINE_DATA
    assert_session_goes_on(alice_session, sender)


def test_header_line_over_998_octets_is_refused(server, alice_session):
    """The 998-octet rule covers header lines too."""
    sender = server.alice.address
    start_data(alice_session, sender)
    msg = make_message(sender=sender, to=f"r@{SINK}", headers=["X-Long: " + "h" * 1000])
    assert alice_session.send_data(msg) == LONG_LINE_DATA


@pytest.mark.parametrize("body,expected", [
    (b"one\ntwo\r\n", BARE_LF_DATA),
    (b"one\rtwo\r\n", BARE_LF_DATA),
    (b"z" * 999 + b"\r\n", LONG_LINE_DATA),
])
def test_bdat_applies_the_same_rules(server, alice_session, body, expected):
    """BDAT chunks get the same bare LF/CR and 998-octet checks as DATA; the session goes on."""
    sender = server.alice.address
    assert alice_session.cmd(f"MAIL FROM:<{sender}>") == MAIL_OK
    assert alice_session.cmd(f"RCPT TO:<r@{SINK}>") == RCPT_OK
    msg = make_message(sender=sender, to=f"r@{SINK}", body="") + body
    alice_session.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
    assert alice_session.reply() == expected
    assert_session_goes_on(alice_session, sender)


def test_dot_stuffed_lines_are_unstuffed(mx, make_server):
    """Transparency: lines starting with a dot reach the MX with exactly one dot, and a lone
    `..` line is not the end of data."""
    srv = make_server(delivery_port=mx.port)
    sender = srv.alice.address
    client = srv.login(sender, srv.alice.password)
    body = ".leading dot\r\n.\r\n..two dots\r\nend\r\n"
    msg = make_message(sender=sender, to="dots@plain.test", body=body)
    client.transaction(sender, ["dots@plain.test"], msg)
    got = mx.plain.wait_for("dots@plain.test")
    assert got.content.endswith(body.encode()), got.content
