"""Limits, each at N and N+1: recipients, message size (small and the real 201 MB), bad
commands, AUTH failures, sessions, timeouts."""

import ssl
import time

import pytest

from support import (AUTH_FAILED, AUTH_OK, DATA_GO, DEFAULT_MAX_SIZE, GREETING, MAIL_OK, OK,
                     RCPT_OK, SINK, TOO_BIG, TOO_MANY_AUTH_FAILURES, TOO_MANY_ERRORS,
                     TOO_MANY_RCPTS, UNRECOGNIZED, ConnectionClosed, SmtpClient, b64, make_message,
                     queue_id, sized_message, wait_until)


# --- recipients -------------------------------------------------------------------------------

def test_recipient_limit_100_and_101(make_server, mx):
    """RCPTs 1-100 get `250 2.1.5 Ok`, the 101st (and later) `452 4.5.3 Too many recipients`;
    the message is accepted and delivered to exactly the first 100."""
    srv = make_server(delivery_port=mx.port)
    alice = srv.alice
    rcpts = [f"r{i:03}@plain.test" for i in range(102)]
    client = srv.login(alice.address, alice.password)
    client.send(f"MAIL FROM:<{alice.address}>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts))
    replies = client.replies(1 + len(rcpts))
    assert replies[0] == MAIL_OK
    assert all(r == RCPT_OK for r in replies[1:101]), [r for r in replies[1:101] if r != RCPT_OK]
    assert replies[101:] == [TOO_MANY_RCPTS, TOO_MANY_RCPTS]
    assert client.cmd("DATA") == DATA_GO
    queue_id(client.send_data(make_message(sender=alice.address, to=rcpts[0])))

    def delivered():
        got = {r for m in mx.plain.received() for r in m.rcpt_tos}
        return got if len(got) >= 100 else None
    got = wait_until(delivered, 20, "delivery to 100 recipients")
    assert got == set(rcpts[:100])


# --- message size -----------------------------------------------------------------------------

@pytest.fixture
def small_server(make_server):
    """A server with max_message_size = 1000 (N/N+1 checks without big transfers)."""
    return make_server(limits={"max_message_size": 1000})


def test_size_limit_advertised(small_server):
    """EHLO advertises the configured maximum: `SIZE 1000`."""
    client = small_server.login(small_server.alice.address, small_server.alice.password)
    keywords = client.ehlo().keywords()
    assert "SIZE 1000" in keywords, keywords


@pytest.mark.parametrize("size,ok", [(1000, True), (1001, False)])
def test_mail_size_parameter(small_server, size, ok):
    """MAIL SIZE=1000 gets `250 2.1.0 Ok`, SIZE=1001 the exact 552 line; the session goes on."""
    alice = small_server.alice
    client = small_server.login(alice.address, alice.password)
    assert client.cmd(f"MAIL FROM:<{alice.address}> SIZE={size}") == (MAIL_OK if ok else TOO_BIG)
    client.cmd("RSET")
    client.transaction(alice.address, [f"r@{SINK}"], make_message(sender=alice.address,
                                                                   to=f"r@{SINK}"))


@pytest.mark.parametrize("size,ok", [(1000, True), (1001, False)])
@pytest.mark.parametrize("verb", ["DATA", "BDAT"])
def test_message_size_n_and_n_plus_1(small_server, verb, size, ok):
    """Exactly 1000 bytes of message (header and body, final CRLF included) are queued; 1001 get
    `552 5.3.4 Message size exceeds fixed maximum message size`, the data is read to its end and
    the session goes on."""
    alice = small_server.alice
    client = small_server.login(alice.address, alice.password)
    msg = b"".join(sized_message(size, sender=alice.address, to=f"r@{SINK}"))
    assert len(msg) == size
    assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}>") == RCPT_OK
    if verb == "DATA":
        assert client.cmd("DATA") == DATA_GO
        reply = client.send_data(msg)
    else:
        client.send(f"BDAT {size} LAST\r\n".encode() + msg)
        reply = client.reply()
    if ok:
        queue_id(reply)
    else:
        assert reply == TOO_BIG
    assert client.cmd("NOOP") == OK
    client.transaction(alice.address, [f"r@{SINK}"], make_message(sender=alice.address,
                                                                   to=f"r@{SINK}"))


@pytest.mark.parametrize("size,ok", [(DEFAULT_MAX_SIZE, True), (DEFAULT_MAX_SIZE + 1, False)])
def test_default_size_parameter(server, size, ok):
    """Default limit at MAIL: SIZE=210763776 accepted, SIZE=210763777 gets the exact 552."""
    client = server.login(server.alice.address, server.alice.password)
    reply = client.cmd(f"MAIL FROM:<{server.alice.address}> SIZE={size}")
    assert reply == (MAIL_OK if ok else TOO_BIG)


@pytest.mark.slow
def test_201_mb_message_streamed(server):
    """A message of exactly 210,763,776 bytes is queued and one of 210,763,777 refused with 552
    (rest read and discarded, session goes on); both streamed over STARTTLS, and the server's
    peak RSS stays far below the message size (DATA streams to the spool)."""
    alice = server.alice
    client = server.login(alice.address, alice.password)
    client.timeout = 120
    for size, ok in ((DEFAULT_MAX_SIZE, True), (DEFAULT_MAX_SIZE + 1, False)):
        assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
        assert client.cmd(f"RCPT TO:<big@{SINK}>") == RCPT_OK
        assert client.cmd("DATA") == DATA_GO
        reply = client.send_data(sized_message(size, sender=alice.address, to=f"big@{SINK}"))
        if ok:
            queue_id(reply)
        else:
            assert reply == TOO_BIG
        assert client.cmd("NOOP") == OK
    peak_mb = server.peak_rss_kb() / 1024
    assert peak_mb < 100, f"server peak RSS {peak_mb:.0f} MB for a 201 MB message"


# --- bad commands and AUTH failures -------------------------------------------------------------

def test_bad_commands_limit(server):
    """max_bad_commands = 10: ten unknown commands each get the 500 and the session still
    works; the 11th gets `421 4.7.0 Too many errors, closing connection` and the server closes."""
    client = server.connect("submission")
    client.ehlo()
    for i in range(10):
        assert client.cmd(f"BOGUS{i}") == UNRECOGNIZED, i
    assert client.cmd("NOOP") == OK
    assert client.cmd("BOGUS10") == TOO_MANY_ERRORS
    client.expect_closed()


def test_auth_failures_at_limit_still_allow_login(server):
    """max_auth_failures = 3: three failed AUTHs get 535 each; a correct AUTH then succeeds."""
    alice = server.alice
    client = server.connect("submissions")
    client.ehlo()
    for _ in range(3):
        assert client.auth_plain(alice.address, "wrong") == AUTH_FAILED
    assert client.auth_plain(alice.address, alice.password) == AUTH_OK


def test_auth_failures_over_limit_close_session(server):
    """The 4th failed AUTH gets `421 4.7.0 Too many authentication failures, closing connection`
    and the server closes the connection."""
    alice = server.alice
    client = server.connect("submissions")
    client.ehlo()
    for _ in range(3):
        assert client.auth_plain(alice.address, "wrong") == AUTH_FAILED
    assert client.auth_plain(alice.address, "wrong") == TOO_MANY_AUTH_FAILURES
    client.expect_closed()


def assert_refused_on_connect(srv, role: str):
    """A refused new connection: on 587/25 a plaintext 421 then close; on 465 nothing in
    plaintext (implicit TLS from the first byte): a 421 inside TLS, or just a close."""
    if role != "submissions":
        client = SmtpClient("127.0.0.1", srv.port(role))
        assert client.reply().code == 421
        client.expect_closed()
        return
    try:
        client = SmtpClient("127.0.0.1", srv.port(role), implicit_tls=True)
    except ssl.SSLError as e:
        assert "WRONG_VERSION_NUMBER" not in str(e), \
            f"465 answered in plaintext before TLS ({e}): not implicit TLS from the first byte"
        return                                   # handshake refused/closed: acceptable
    except (ConnectionResetError, BrokenPipeError):
        return
    try:
        assert client.reply().code == 421
    except ConnectionClosed:
        return
    client.expect_closed()


@pytest.mark.parametrize("role", ["submission", "submissions"])
def test_auth_failures_per_ip_across_sessions(make_server, role):
    """max_auth_failures_per_ip = 2: after one failure a new connection is still greeted; after
    the second, new connections from the IP are refused (421) and closed."""
    srv = make_server(limits={"max_auth_failures_per_ip": 2})
    alice = srv.alice
    client = srv.connect("submissions")
    client.ehlo()
    assert client.auth_plain(alice.address, "wrong") == AUTH_FAILED
    srv.connect(role).close()                              # asserts the 220 greeting
    assert client.auth_plain(alice.address, "wrong") == AUTH_FAILED
    assert_refused_on_connect(srv, role)


def test_burst_of_correct_logins_over_the_per_ip_brake(make_server):
    """max_auth_failures_per_ip = 2 and 30 clients behind one address (an office NAT) send a
    correct AUTH PLAIN at the same moment: every one gets `235 2.7.0`, none the 421 of the
    failed-login brake (attempts count as failed only until their password is checked), and a
    new connection is greeted afterwards."""
    srv = make_server(limits={"max_auth_failures_per_ip": 2})
    alice = srv.alice
    clients = []
    for _ in range(30):
        client = srv.connect("submissions")
        client.ehlo()
        clients.append(client)
    line = f"AUTH PLAIN {b64(chr(0) + alice.address + chr(0) + alice.password)}\r\n"
    for client in clients:
        client.send(line)
    assert [client.reply() for client in clients] == [AUTH_OK] * 30
    srv.connect("submission").close()                      # asserts the 220 greeting


FAILED_LOGINS_FROM_NETWORK = "421 4.7.0 Too many failed logins from your network, try again later"


def test_auth_failures_per_subnet_across_addresses(make_server):
    """max_auth_failures_per_ip = 3, max_auth_failures_per_subnet = 4: one failed AUTH each
    from 127.0.0.10 to .13, none of them near its own brake. After three, a connection from
    127.0.0.14 is still greeted; after the fourth, a connection from 127.0.0.14 (no failure of
    its own) gets `421 4.7.0 Too many failed logins from your network, try again later` and is
    closed, while 127.0.1.1 (another /24) is greeted."""
    srv = make_server(limits={"max_auth_failures_per_ip": 3, "max_auth_failures_per_subnet": 4})
    alice = srv.alice
    for n in range(10, 14):
        if n == 13:
            srv.connect("submission", source="127.0.0.14").close()     # 3 of 4: greeted
        client = srv.connect("submissions", source=f"127.0.0.{n}")
        client.ehlo()
        assert client.auth_plain(alice.address, "wrong") == AUTH_FAILED
        client.close()
    refused = SmtpClient("127.0.0.1", srv.port("submission"), source="127.0.0.14")
    assert refused.reply() == FAILED_LOGINS_FROM_NETWORK
    refused.expect_closed()
    srv.connect("submission", source="127.0.1.1").quit()


# --- sessions and timeouts --------------------------------------------------------------------

@pytest.mark.parametrize("role", ["submission", "submissions"])
@pytest.mark.parametrize("key", ["max_sessions", "max_sessions_per_ip"])
def test_session_caps(make_server, key, role):
    """With a cap of 2 sessions, two connections are greeted, the third is refused (421) and
    closed; once one closes, a new connection is greeted again."""
    srv = make_server(limits={key: 2})
    first = srv.connect("submission")
    second = srv.connect("relay")
    assert_refused_on_connect(srv, role)
    first.quit()

    def greeted():
        client = SmtpClient("127.0.0.1", srv.port("submission"))
        reply = client.reply()
        client.close()
        return reply == GREETING
    wait_until(greeted, 5, "a session slot to free up", interval=0.1)
    second.quit()


def test_idle_command_timeout(make_server):
    """timeouts.command = 500ms: an idle session gets a 421 and is closed after about 0.5 s."""
    srv = make_server(timeouts={"command": "500ms"})
    client = srv.connect("submission")
    start = time.monotonic()
    assert client.reply(timeout=10).code == 421
    assert time.monotonic() - start >= 0.4
    client.expect_closed()


def test_slow_data_timeout(make_server):
    """timeouts.data = 500ms: a client stalling inside DATA gets a 421 and is closed."""
    srv = make_server(timeouts={"data": "500ms"})
    alice = srv.alice
    client = srv.login(alice.address, alice.password)
    assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}>") == RCPT_OK
    assert client.cmd("DATA") == DATA_GO
    client.send(b"Subject: stalled\r\n")
    assert client.reply(timeout=10).code == 421
    client.expect_closed()


def test_tls_handshake_timeout(make_server):
    """timeouts.tls_handshake = 500ms: a client that never starts its handshake on 465 is
    disconnected."""
    srv = make_server(timeouts={"tls_handshake": "500ms"})
    client = SmtpClient("127.0.0.1", srv.port("submissions"))      # plain TCP, no ClientHello
    start = time.monotonic()
    client.expect_closed(timeout=10)
    assert time.monotonic() - start >= 0.4
