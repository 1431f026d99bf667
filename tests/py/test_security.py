"""TLS, STARTTLS injection, the relay port's rules, sender ownership."""

import ssl

import pytest

from support import (AUTH_ON_RELAY, AUTH_REQUIRED, BAD_SEQUENCE, DATA_GO, EHLO_FIRST,
                     MAIL_OK, NO_RCPTS, OK, RCPT_OK, RELAY_DENIED, SINK, TLS_GO, SmtpClient, b64,
                     client_tls_context, make_message, not_owned, queue_id)


# --- TLS ------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["submission", "submissions"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_12_and_13_accepted(server, role, version):
    """Both listeners complete TLS 1.2 and TLS 1.3 handshakes."""
    ctx = client_tls_context(min_version=version, max_version=version)
    if role == "submissions":
        client = SmtpClient("127.0.0.1", server.port(role), implicit_tls=True, tls_context=ctx)
        client.reply()
    else:
        client = server.connect(role)
        client.ehlo()
        assert client.starttls(ctx) == TLS_GO
    assert client.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                     ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    assert client.ehlo().lines[0] == EHLO_FIRST
    client.quit()


def test_tls_11_refused(server):
    """A client limited to TLS 1.0/1.1 cannot complete a handshake on 465 (rustls: 1.2+ only)."""
    ctx = client_tls_context(min_version=ssl.TLSVersion.MINIMUM_SUPPORTED,
                             max_version=ssl.TLSVersion.TLSv1_1)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as e:
        SmtpClient("127.0.0.1", server.port("submissions"), implicit_tls=True, tls_context=ctx)
    if "NO_PROTOCOLS_AVAILABLE" in str(e.value):
        pytest.skip("local OpenSSL cannot offer TLS 1.1 at all")
    assert "ALERT" in str(e.value), f"expected the server's TLS alert, got {e.value}"


def test_starttls_after_tls_is_refused(server):
    """STARTTLS inside TLS (465) is refused with a 5xx (the exact line is not specified) and the
    session goes on."""
    client = server.connect("submissions")
    client.ehlo()
    assert client.cmd("STARTTLS").code // 100 == 5
    assert client.cmd("NOOP") == OK


# --- STARTTLS command injection (CVE-2011-0411 class) ----------------------------------------

def test_plaintext_pipelined_after_starttls_is_discarded_on_submission(server):
    """`STARTTLS\\r\\nEHLO evil\\r\\nAUTH PLAIN <valid>` in one packet: after the handshake the
    injected commands got no reply and did not run: the session is fresh (not authenticated)."""
    alice = server.alice
    client = server.connect("submission")
    client.ehlo()
    credentials = b64("\0" + alice.address + "\0" + alice.password)
    injected = f"EHLO evil\r\nAUTH PLAIN {credentials}\r\n"
    client.send("STARTTLS\r\n" + injected)
    assert client.reply() == TLS_GO
    client.wrap_tls()
    # Had the injected EHLO/AUTH run, their 250/235 would be read as the replies below.
    assert client.ehlo().lines[0] == EHLO_FIRST
    assert client.cmd(f"MAIL FROM:<{alice.address}>") == AUTH_REQUIRED
    assert client.cmd("NOOP") == OK


def test_plaintext_pipelined_after_starttls_is_discarded_on_relay(server):
    """On 25, `STARTTLS\\r\\nMAIL FROM:<x@y>` in one packet: after TLS and a fresh EHLO, RCPT gets
    503 (the injected MAIL never ran), and no stray reply is pending."""
    client = server.connect("relay")
    client.ehlo()
    client.send("STARTTLS\r\nMAIL FROM:<x@hosting.example>\r\n")
    assert client.reply() == TLS_GO
    client.wrap_tls()
    assert client.ehlo().lines[0] == EHLO_FIRST
    assert client.cmd(f"RCPT TO:<r@{SINK}>") == BAD_SEQUENCE
    assert client.cmd("NOOP") == OK


# --- relay port rules -----------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("command", ["AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHg=", "AUTH LOGIN"])
def test_auth_on_relay_port_gets_573(server, tls, command):
    """Any AUTH on 25, with or without TLS, gets exactly the 573 line of the FAQ."""
    client = server.connect("relay")
    client.ehlo()
    if tls:
        assert client.starttls() == TLS_GO
        client.ehlo()
    assert client.cmd(command) == AUTH_ON_RELAY
    client.close()


def test_relay_denied_outside_relay_networks(make_server):
    """With [relay] networks = 10.99.0.0/16, RCPT on 25 from 127.0.0.1 gets exactly
    `550 5.7.1 Relaying denied`; authenticated submission on 587 is unaffected."""
    srv = make_server(relay={"networks": ["10.99.0.0/16"]})
    client = srv.connect("relay")
    client.ehlo()
    assert client.cmd("MAIL FROM:<www@hosting.example>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}>") == RELAY_DENIED
    assert client.cmd("DATA") == NO_RCPTS
    client.close()
    alice = srv.alice
    session = srv.login(alice.address, alice.password)
    session.transaction(alice.address, [f"r@{SINK}"], make_message(sender=alice.address,
                                                                   to=f"r@{SINK}"))


def test_relay_port_refuses_everyone_with_empty_networks(make_server):
    """With no [relay] networks at all, nobody may relay on 25."""
    srv = make_server(relay=None)
    client = srv.connect("relay")
    client.ehlo()
    assert client.cmd("MAIL FROM:<www@hosting.example>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}>") == RELAY_DENIED


# --- sender ownership -----------------------------------------------------------------------

def test_mail_from_must_be_owned(server):
    """MAIL FROM another address gets exactly `550 5.7.1 Sender address rejected: not owned by
    user alice@example.org`; the address itself and its alias are accepted."""
    alice = server.alice
    client = server.login(alice.address, alice.password)
    for foreign in (server.bob.address, "someone@example.org", "info@example.net"):
        assert client.cmd(f"MAIL FROM:<{foreign}>") == not_owned(alice.address), foreign
    for own in (alice.address, "info@example.org"):
        assert client.cmd(f"MAIL FROM:<{own}>") == MAIL_OK
        assert client.cmd("RSET") == OK


def test_alias_of_someone_else_is_not_owned(server):
    """bob cannot send as alice's alias info@example.org."""
    bob = server.bob
    client = server.login(bob.address, bob.password, role="submissions")
    assert client.cmd("MAIL FROM:<info@example.org>") == not_owned(bob.address)


@pytest.mark.parametrize("header_from,accepted", [
    ("<alice@example.org>", True),
    ("Alice Example <alice@example.org>", True),
    ("<info@example.org>", True),
    ("<bob@example.net>", False),
    ("Alice <alice@example.org.evil.test>", False),
])
def test_header_from_must_be_owned(server, header_from, accepted):
    """The header From: is checked at end of data with the same rule and the same 550 line."""
    alice = server.alice
    client = server.login(alice.address, alice.password)
    assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}>") == RCPT_OK
    assert client.cmd("DATA") == DATA_GO
    msg = make_message(sender=alice.address, to=f"r@{SINK}").replace(
        f"From: <{alice.address}>".encode(), f"From: {header_from}".encode(), 1)
    reply = client.send_data(msg)
    if accepted:
        queue_id(reply)
    else:
        assert reply == not_owned(alice.address)
    client.transaction(alice.address, [f"r@{SINK}"], make_message(sender=alice.address,
                                                                   to=f"r@{SINK}"))


def test_removed_alias_is_no_longer_owned(server):
    """After `alias remove`, MAIL FROM the alias is refused (store read live)."""
    alice = server.alice
    server.cli("alias", "remove", "info@example.org")
    client = server.login(alice.address, alice.password)
    assert client.cmd("MAIL FROM:<info@example.org>") == not_owned(alice.address)
