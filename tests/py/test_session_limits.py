"""Session hardening (issue 10): the junk-command limit, the session's and the message
transfer's total time, and the sender list re-read per transaction."""

import smtplib
import time

import pytest

from support import (MAIL_OK, OK, SINK, TOO_MANY_ERRORS, UNRECOGNIZED, ConnectionClosed,
                     not_owned)

SESSION_TIME_EXCEEDED = "421 4.4.2 Session time limit exceeded, closing connection"
TRANSFER_TIME_EXCEEDED = "421 4.4.2 Message transfer time limit exceeded, closing connection"
VRFY = "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
HELP = "214 2.0.0 See RFC 5321 and RFC 6409; submission needs AUTH after STARTTLS"
JUNK = [("NOOP", OK), ("RSET", OK), ("VRFY x", VRFY), ("HELP", HELP)]


# --- junk commands ----------------------------------------------------------------------------

def junk(n: int) -> tuple[list[str], list[str]]:
    """n junk commands (NOOP, RSET, VRFY, HELP in turn) and their normal replies."""
    cycle = [JUNK[i % len(JUNK)] for i in range(n)]
    return [c for c, _ in cycle], [r for _, r in cycle]


@pytest.mark.parametrize("limit,bad,config", [(5, 2, {"max_junk_commands": 5,
                                                      "max_bad_commands": 2}),
                                              (100, 10, {})], ids=["configured", "default"])
def test_junk_commands_at_n_and_n_plus_one(make_server, limit, bad, config):
    """max_junk_commands = N: N pipelined NOOP/RSET/VRFY/HELP and then max_bad_commands unknown
    commands are all answered and the session goes on; with N + 1 junk commands the extra one
    counts as a bad command, so the last unknown command gets the 421 and the server closes."""
    srv = make_server(limits={"auth_failure_delay": "10ms", **config})
    commands, replies = junk(limit)
    client = srv.connect("relay")
    client.ehlo()
    client.send("".join(c + "\r\n" for c in commands + ["BOGUS"] * bad))
    assert [r.text for r in client.replies(limit + bad)] == replies + [UNRECOGNIZED] * bad
    assert client.cmd("MAIL FROM:<www@hosting.example>") == MAIL_OK
    client.close()

    commands, replies = junk(limit + 1)
    client = srv.connect("relay")
    client.ehlo()
    client.send("".join(c + "\r\n" for c in commands + ["BOGUS"] * bad))
    got = [r.text for r in client.replies(limit + bad + 1)]
    assert got == replies + [UNRECOGNIZED] * (bad - 1) + [TOO_MANY_ERRORS]
    client.expect_closed()


# --- total times ------------------------------------------------------------------------------

def drip_until_reply(client, byte: bytes, every: float, limit: float):
    """Sends ``byte`` every ``every`` seconds (each well within the per-read timeout) until
    the server says something; returns (reply, seconds since the start)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            return client.reply(timeout=every), time.monotonic() - start
        except TimeoutError:
            client.send(byte)
    raise AssertionError(f"no reply within {limit}s of dripping")


def test_session_time_limit_ends_a_dripping_session(make_server):
    """timeouts.session = 2s: a client dripping a command line byte by byte (each byte within
    timeouts.command) gets `421 4.4.2 Session time limit exceeded, closing connection` after
    about 2 s, and the connection is closed."""
    srv = make_server(timeouts={"session": "2s", "command": "1s"})
    client = srv.connect("relay")
    start = time.monotonic()
    assert client.ehlo().code == 250
    client.send(b"NOOP")
    reply, _ = drip_until_reply(client, b" ", 0.3, 10)
    elapsed = time.monotonic() - start
    assert reply == SESSION_TIME_EXCEEDED
    assert 1.5 <= elapsed < 4, elapsed
    client.expect_closed()


def test_session_time_limit_ends_an_idle_session(make_server):
    """timeouts.session = 2s is shorter than timeouts.command (10s): the idle session ends at
    2 s with the session's 421, not the idle timeout's."""
    srv = make_server(timeouts={"session": "2s", "command": "10s"})
    client = srv.connect("submission")
    start = time.monotonic()
    assert client.reply(timeout=8) == SESSION_TIME_EXCEEDED
    assert 1.5 <= time.monotonic() - start < 4
    client.expect_closed()


@pytest.mark.parametrize("verb", ["DATA", "BDAT"])
def test_message_transfer_time_limit_ends_a_drip(make_server, verb):
    """timeouts.data_total = 2s: one byte every 0.3 s (within timeouts.data = 1s) into DATA or a
    BDAT chunk gets `421 4.4.2 Message transfer time limit exceeded, closing connection`."""
    srv = make_server(timeouts={"data_total": "2s", "data": "1s"})
    client = srv.connect("relay")
    client.ehlo()
    assert client.cmd("MAIL FROM:<www@hosting.example>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}>").code == 250
    if verb == "DATA":
        assert client.cmd("DATA").code == 354
    else:
        client.send(b"BDAT 100000 LAST\r\n")
    start = time.monotonic()
    reply, _ = drip_until_reply(client, b"x", 0.3, 10)
    assert reply == TRANSFER_TIME_EXCEEDED
    assert 1.5 <= time.monotonic() - start < 4
    client.expect_closed()


def test_message_transfer_time_limit_spans_bdat_chunks(make_server):
    """timeouts.data_total = 2s covers a BDAT message from its first chunk to its last: one-byte
    chunks every 0.3 s, each answered at once, still end at about 2 s with the transfer's 421."""
    srv = make_server(timeouts={"data_total": "2s", "command": "1s"})
    client = srv.connect("relay")
    client.ehlo()
    assert client.cmd("MAIL FROM:<www@hosting.example>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}>").code == 250
    start = time.monotonic()
    chunks = 0
    while time.monotonic() - start < 10:
        client.send(b"BDAT 1\r\nx")
        reply = client.reply()
        if reply.code == 421:
            break
        assert reply == f"250 2.0.0 Ok: {chunks + 1} octets received"
        chunks += 1
        try:
            reply = client.reply(timeout=0.3)      # the 421 may come between two chunks
            break
        except TimeoutError:
            pass
    assert reply == TRANSFER_TIME_EXCEEDED
    assert chunks >= 3
    assert 1.5 <= time.monotonic() - start < 4
    client.expect_closed()


# --- senders re-read per transaction ----------------------------------------------------------

def test_alias_removed_during_the_session_is_refused_at_next_mail(server):
    """alice sends as her alias info@example.org; `postern alias remove` runs beside the open
    session; the same session's next MAIL FROM with the alias gets the not-owned 550, her own
    address still works."""
    alice = server.alice
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as s:
        s.starttls()
        s.login(alice.address, alice.password)
        s.sendmail("info@example.org", [f"r@{SINK}"],
                   f"From: <info@example.org>\r\nTo: <r@{SINK}>\r\nSubject: x\r\n\r\nhi\r\n")
        server.cli("alias", "remove", "info@example.org")
        time.sleep(1.2)          # the watcher publishes the directory generation every 500 ms
        code, text = s.mail("info@example.org")
        assert f"{code} {text.decode()}" == not_owned(alice.address)
        assert s.mail(alice.address)[0] == 250
