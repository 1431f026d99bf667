"""Submission with real clients: greeting, EHLO, smtplib, swaks, curl, pipelining, BDAT."""

import re
import smtplib

import pytest

from support import (AUTH_OK, BAD_SEQUENCE, BYE, DATA_GO, EHLO_FIRST, MAIL_OK, OK, RCPT_OK, SINK,
                     TLS_GO, UNRECOGNIZED, Reply, client_tls_context, make_message, queue_id, run)

BASE_EXTENSIONS = ["PIPELINING", "SIZE 210763776", "8BITMIME", "SMTPUTF8",
                   "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]


def assert_ehlo(reply: Reply, *, starttls: bool, auth: bool):
    """EHLO reply: exact first line, the base extensions, STARTTLS/AUTH present or absent."""
    assert reply.lines[0] == EHLO_FIRST, reply
    assert reply.code == 250 and all(l.startswith("250-") for l in reply.lines[:-1]), reply
    keywords = reply.keywords()
    missing = [k for k in BASE_EXTENSIONS if k not in keywords]
    assert not missing, f"EHLO lacks {missing}: {reply}"
    assert ("STARTTLS" in keywords) == starttls, reply
    auth_lines = [k for k in keywords if k.upper().startswith("AUTH")]
    assert auth_lines == (["AUTH PLAIN LOGIN"] if auth else []), reply


def smtplib_line(code_and_text: tuple[int, bytes]) -> str:
    code, text = code_and_text
    return f"{code} {text.decode()}"


def smtplib_transaction(s: smtplib.SMTP, sender: str, rcpts: list[str], msg: bytes) -> str:
    """MAIL/RCPT/DATA through smtplib with every reply asserted exactly; returns the queue ID."""
    assert smtplib_line(s.mail(sender)) == MAIL_OK
    for r in rcpts:
        assert smtplib_line(s.rcpt(r)) == RCPT_OK
    return queue_id(Reply([smtplib_line(s.data(msg))]))


# --- greeting and EHLO ----------------------------------------------------------------------

@pytest.mark.parametrize("role", ["submission", "submissions", "relay"])
def test_greeting_on_every_listener(server, role):
    """Every SMTP listener greets with exactly `220 postern.test ESMTP Postern` (465: inside TLS)."""
    client = server.connect(role)          # connect() asserts the greeting line
    client.quit()


def test_ehlo_on_submission_before_and_after_starttls(server):
    """587: STARTTLS offered and AUTH not before TLS; after TLS, AUTH PLAIN LOGIN, no STARTTLS."""
    client = server.connect("submission")
    assert_ehlo(client.ehlo(), starttls=True, auth=False)
    assert client.starttls() == TLS_GO
    assert_ehlo(client.ehlo(), starttls=False, auth=True)
    client.quit()


def test_ehlo_on_submissions_implicit_tls(server):
    """465: implicit TLS; EHLO offers AUTH PLAIN LOGIN and no STARTTLS."""
    client = server.connect("submissions")
    assert client.tls
    assert_ehlo(client.ehlo(), starttls=False, auth=True)
    client.quit()


def test_ehlo_on_relay_never_offers_auth(server):
    """25: STARTTLS offered before TLS; AUTH is never offered, before or after TLS."""
    client = server.connect("relay")
    assert_ehlo(client.ehlo(), starttls=True, auth=False)
    assert client.starttls() == TLS_GO
    assert_ehlo(client.ehlo(), starttls=False, auth=False)
    client.quit()


def test_noop_rset_quit_replies(server):
    """NOOP and RSET answer `250 2.0.0 Ok`, QUIT `221 2.0.0 Bye` and the server closes."""
    client = server.login(server.alice.address, server.alice.password)
    assert client.cmd("NOOP") == OK
    assert client.cmd(f"MAIL FROM:<{server.alice.address}>") == MAIL_OK
    assert client.cmd("RSET") == OK
    assert client.cmd(f"RCPT TO:<x@{SINK}>") == BAD_SEQUENCE      # RSET ended the transaction
    assert client.cmd("QUIT") == BYE
    client.expect_closed()


# --- smtplib --------------------------------------------------------------------------------

def smtplib_client(server, role: str) -> smtplib.SMTP:
    if role == "submissions":
        s = smtplib.SMTP_SSL("127.0.0.1", server.port(role), local_hostname="client.test",
                             context=client_tls_context(), timeout=15)
        s.ehlo()
    else:
        s = smtplib.SMTP("127.0.0.1", server.port(role), local_hostname="client.test",
                         timeout=15)
        s.ehlo()
        assert smtplib_line(s.starttls(context=client_tls_context())) == TLS_GO
        s.ehlo()
    return s


@pytest.mark.parametrize("role", ["submission", "submissions"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "LOGIN-initial-response", "login()"])
def test_smtplib_submits(server, role, mechanism):
    """smtplib submits over STARTTLS (587) and implicit TLS (465) with AUTH PLAIN, AUTH LOGIN
    (dialog and initial response) and login()'s own pick; every reply is exact."""
    alice = server.alice
    s = smtplib_client(server, role)
    assert s.has_extn("auth") and s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
    s.user, s.password = alice.address, alice.devices["laptop"]
    if mechanism == "PLAIN":
        reply = s.auth("PLAIN", s.auth_plain)
    elif mechanism == "LOGIN":
        reply = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    elif mechanism == "LOGIN-initial-response":
        reply = s.auth("LOGIN", s.auth_login, initial_response_ok=True)
    else:
        reply = s.login(alice.address, alice.devices["laptop"])
    assert smtplib_line(reply) == AUTH_OK
    msg = make_message(sender=alice.address, to=f"r@{SINK}")
    smtplib_transaction(s, alice.address, [f"r@{SINK}"], msg)
    assert smtplib_line(s.quit()) == BYE


def test_smtplib_wrong_password_gets_535(server):
    """A wrong device password is refused with exactly `535 5.7.0 authentication failed`."""
    s = smtplib_client(server, "submission")
    with pytest.raises(smtplib.SMTPAuthenticationError) as e:
        s.login(server.alice.address, "not-the-password")
    assert (e.value.smtp_code, e.value.smtp_error) == (535, b"5.7.0 authentication failed")
    s.close()


# --- swaks and curl -------------------------------------------------------------------------

def write_message(tmp_path, sender, to) -> str:
    path = tmp_path / "message.eml"
    path.write_bytes(make_message(sender=sender, to=to))
    return str(path)


@pytest.mark.parametrize("role,tls_flag,mechanism", [
    ("submission", "-tls", "PLAIN"), ("submission", "-tls", "LOGIN"),
    ("submissions", "-tlsc", "PLAIN")])
def test_swaks_submits(server, tmp_path, role, tls_flag, mechanism):
    """swaks submits with STARTTLS (587) or TLS on connect (465) and AUTH PLAIN/LOGIN."""
    alice, rcpt = server.alice, f"r@{SINK}"
    r = run(["swaks", "--server", "127.0.0.1", "--port", server.port(role), tls_flag,
             "--auth", mechanism, "--auth-user", alice.address,
             "--auth-password", alice.devices["phone"], "--from", alice.address, "--to", rcpt,
             "--helo", "client.test", "--data", "@" + write_message(tmp_path, alice.address, rcpt)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(rf"^<~ +{re.escape(AUTH_OK)}$", r.stdout, re.M), r.stdout
    assert re.search(r"^<~ +250 2\.0\.0 Ok: queued as \S+$", r.stdout, re.M), r.stdout


@pytest.mark.parametrize("scheme,role", [("smtp", "submission"), ("smtps", "submissions")])
def test_curl_submits(server, tmp_path, scheme, role):
    """curl submits over smtp:// with --ssl-reqd (STARTTLS) and smtps:// (implicit TLS)."""
    alice, rcpt = server.alice, f"r@{SINK}"
    r = run(["curl", "-sS", "-v", "--ssl-reqd", "-k", f"{scheme}://127.0.0.1:{server.port(role)}",
             "--mail-from", alice.address, "--mail-rcpt", rcpt,
             "--user", f"{alice.address}:{alice.devices['laptop']}",
             "--upload-file", write_message(tmp_path, alice.address, rcpt)])
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^< {re.escape(AUTH_OK)}\r?$", r.stderr, re.M), r.stderr
    assert re.search(r"^< 250 2\.0\.0 Ok: queued as \S+\r?$", r.stderr, re.M), r.stderr


# --- raw protocol: pipelining, BDAT, extension parameters ------------------------------------

def test_pipelined_transaction_replies_in_order(server):
    """MAIL, three RCPTs and DATA sent in one write get their five replies in order."""
    alice = server.alice
    client = server.login(alice.address, alice.password)
    rcpts = [f"p{i}@{SINK}" for i in range(3)]
    client.send(f"MAIL FROM:<{alice.address}>\r\n"
                + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts) + "DATA\r\n")
    assert client.replies(5) == [MAIL_OK, RCPT_OK, RCPT_OK, RCPT_OK, DATA_GO]
    queue_id(client.send_data(make_message(sender=alice.address, to=rcpts[0])))
    client.quit()


def test_pipelined_error_keeps_its_place(server):
    """An unknown command inside a pipelined group gets its 500 in place; the rest goes on."""
    alice = server.alice
    client = server.login(alice.address, alice.password)
    client.send(f"MAIL FROM:<{alice.address}>\r\nRCPT TO:<a@{SINK}>\r\nFOO\r\n"
                f"RCPT TO:<b@{SINK}>\r\nNOOP\r\n")
    assert client.replies(5) == [MAIL_OK, RCPT_OK, UNRECOGNIZED, RCPT_OK, OK]
    assert client.cmd("DATA") == DATA_GO
    queue_id(client.send_data(make_message(sender=alice.address, to=f"a@{SINK}")))


def test_bdat_single_and_multiple_chunks(server):
    """CHUNKING: one `BDAT n LAST` chunk, and two chunks ending with `BDAT 0 LAST`, are queued."""
    alice = server.alice
    client = server.login(alice.address, alice.password)
    msg = make_message(sender=alice.address, to=f"r@{SINK}")
    assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}>") == RCPT_OK
    client.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
    queue_id(client.reply())

    assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}>") == RCPT_OK
    half = len(msg) // 2
    client.send(f"BDAT {half}\r\n".encode() + msg[:half])
    first = client.reply()
    assert first.code == 250 and first.text.startswith("250 2."), first
    client.send(f"BDAT {len(msg) - half}\r\n".encode() + msg[half:])
    assert client.reply().code == 250
    client.send(b"BDAT 0 LAST\r\n")
    queue_id(client.reply())
    client.quit()


def test_dsn_8bitmime_smtputf8_parameters_accepted(server):
    """Advertised extensions work: BODY=8BITMIME, SMTPUTF8, RET/ENVID, NOTIFY/ORCPT, a UTF-8
    recipient and an 8-bit body."""
    alice = server.alice
    client = server.login(alice.address, alice.password)
    assert client.cmd(f"MAIL FROM:<{alice.address}> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=e1") \
        == MAIL_OK
    assert client.cmd(f"RCPT TO:<r@{SINK}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;r@{SINK}") \
        == RCPT_OK
    assert client.cmd(f"RCPT TO:<pelé@{SINK}>") == RCPT_OK
    assert client.cmd("DATA") == DATA_GO
    msg = make_message(sender=alice.address, to=f"pelé@{SINK}", subject="Grüße",
                       body="Ça marche très bien.\r\n")
    queue_id(client.send_data(msg))
    client.quit()


def test_transaction_over_every_auth_listener(server):
    """A raw client can submit on 587 (after STARTTLS) and on 465, as each device of alice."""
    alice = server.alice
    for role in ("submission", "submissions"):
        for device, password in alice.devices.items():
            client = server.login(alice.address, password, role=role)
            client.transaction(alice.address, [f"{device}@{SINK}"],
                               make_message(sender=alice.address, to=f"{device}@{SINK}"))
            client.quit()


def test_relay_port_accepts_mail_from_relay_networks(server, tmp_path):
    """25: a host in [relay] networks sends without AUTH (swaks, then raw with STARTTLS)."""
    rcpt = f"r@{SINK}"
    r = run(["swaks", "--server", "127.0.0.1", "--port", server.port("relay"),
             "--from", "www@hosting.example", "--to", rcpt, "--helo", "web1.hosting.example",
             "--data", "@" + write_message(tmp_path, "www@hosting.example", rcpt)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^<- +250 2\.0\.0 Ok: queued as \S+$", r.stdout, re.M), r.stdout

    client = server.connect("relay")
    client.ehlo()
    assert client.starttls() == TLS_GO
    client.ehlo()
    client.transaction("www@hosting.example", [rcpt],
                       make_message(sender="www@hosting.example", to=rcpt))
    client.quit()
