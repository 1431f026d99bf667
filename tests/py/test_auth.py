"""AUTH rules and device passwords: where AUTH is allowed, wrong credentials, revocation and
rotation cutting live sessions, passwords stored hashed."""

import time

import pytest

from support import (AUTH_FAILED, AUTH_OK, AUTH_REQUIRED, ENCRYPTION_REQUIRED, MAIL_OK, OK,
                     RCPT_OK, REVOKED, SINK, TLS_GO, make_message, last_line)


def test_auth_before_starttls_on_submission_gets_538(server):
    """587 without TLS: AUTH PLAIN and AUTH LOGIN get exactly
    `538 5.7.11 Encryption required for requested authentication mechanism`."""
    client = server.connect("submission")
    client.ehlo()
    assert client.auth_plain(server.alice.address, server.alice.password) == ENCRYPTION_REQUIRED
    assert client.cmd("AUTH LOGIN") == ENCRYPTION_REQUIRED
    client.quit()


@pytest.mark.parametrize("role,starttls", [("submission", True), ("submission", False),
                                           ("submissions", False)])
def test_mail_before_auth_gets_530(server, role, starttls):
    """MAIL before AUTH on 587 (with or without TLS) and on 465 gets exactly
    `530 5.7.0 Authentication required`."""
    client = server.connect(role)
    client.ehlo()
    if starttls:
        assert client.starttls() == TLS_GO
        client.ehlo()
    assert client.cmd(f"MAIL FROM:<{server.alice.address}>") == AUTH_REQUIRED
    client.quit()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("case", ["wrong password", "unknown address", "other user's password",
                                  "empty password", "address without domain"])
def test_wrong_credentials_get_535(server, mechanism, case):
    """Every wrong login gets exactly `535 5.7.0 authentication failed` (the same line, so it
    does not tell which part was wrong); a later correct AUTH in the session still works."""
    alice, bob = server.alice, server.bob
    user, password = {
        "wrong password": (alice.address, alice.password + "x"),
        "unknown address": ("nobody@example.org", alice.password),
        "other user's password": (alice.address, bob.password),
        "empty password": (alice.address, ""),
        "address without domain": ("alice", alice.password),
    }[case]
    client = server.connect("submissions")
    client.ehlo()
    auth = client.auth_plain if mechanism == "PLAIN" else client.auth_login
    assert auth(user, password) == AUTH_FAILED
    assert client.auth_plain(alice.address, alice.password) == AUTH_OK
    client.quit()



def test_hostile_login_is_logged_escaped(server):
    """A failed login is logged with the name the client gave, which is the client's text: an
    ESC sequence (one that would set the operator's terminal title) and a line break in it are
    written as escapes, so the log line is neither acted on by a terminal nor split in two."""
    client = server.connect("submissions")
    client.ehlo()
    assert client.auth_plain("a\x1b]0;owned\x07b\nforged=1", "x") == AUTH_FAILED
    client.quit()
    line = next(line for line in server.log_text().splitlines() if "auth failed" in line)
    assert "login=a\\x1b]0;owned\\x07b\\x0aforged=1 " in line, line
    assert "\x1b" not in server.log_text() and "\x07" not in server.log_text()

def test_device_passwords_are_strong_and_distinct(server):
    """Generated passwords: at least 128 bits (>= 22 characters of base64 or longer encodings),
    a different one for every device."""
    passwords = [*server.alice.devices.values(), *server.bob.devices.values()]
    assert len(set(passwords)) == len(passwords)
    for pw in passwords:
        assert len(pw) >= 22 and pw == pw.strip() and " " not in pw, pw


def test_passwords_never_stored_in_clear(server):
    """The store (database, WAL and any other file next to it) never holds a password."""
    server.stop()
    store_files = list(server.dir.glob("store.db*"))
    assert store_files
    blob = b"".join(p.read_bytes() for p in store_files)
    for pw in [*server.alice.devices.values(), *server.bob.devices.values()]:
        assert pw.encode() not in blob


# --- revocation and rotation ------------------------------------------------------------------

def assert_cut(client, within: float, who: str):
    """The server sends exactly `421 4.7.0 Credentials revoked, closing connection` unprompted
    within ``within`` seconds and closes the connection."""
    try:
        reply = client.reply(timeout=max(within, 0.01))
    except TimeoutError:
        pytest.fail(f"{who}: session not cut within 2 s of the CLI command")
    assert reply == REVOKED, who
    client.expect_closed(2.0)


def still_works(srv, client, sender):
    assert client.cmd("NOOP") == OK
    client.transaction(sender, [f"still@{SINK}"], make_message(sender=sender, to=f"still@{SINK}"))


def login_result(srv, user, password):
    client = srv.connect("submissions")
    client.ehlo()
    reply = client.auth_plain(user, password)
    client.close()
    return reply


def cli_then_deadline(srv, *args):
    result = srv.cli(*args)
    return result, time.monotonic() + 2.0


def test_revoke_cuts_live_session_of_that_device_only(server):
    """`device revoke` cuts the device's live session (mid-transaction) within 2 s with the 421;
    the other device's session keeps working; the old password then fails with 535."""
    alice = server.alice
    laptop = server.login(alice.address, alice.devices["laptop"], role="submission")
    assert laptop.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
    assert laptop.cmd(f"RCPT TO:<r@{SINK}>") == RCPT_OK
    phone = server.login(alice.address, alice.devices["phone"], role="submissions")

    _, deadline = cli_then_deadline(server, "device", "revoke", alice.address, "laptop")
    assert_cut(laptop, deadline - time.monotonic(), "laptop")
    still_works(server, phone, alice.address)
    assert login_result(server, alice.address, alice.devices["laptop"]) == AUTH_FAILED
    assert login_result(server, alice.address, alice.devices["phone"]) == AUTH_OK


def test_rotate_cuts_session_and_replaces_password(server):
    """`device rotate` prints a new password alone on the last line; the device's live session is
    cut within 2 s; the old password fails with 535, the new one logs in; other device unaffected."""
    alice = server.alice
    laptop = server.login(alice.address, alice.devices["laptop"], role="submissions")
    phone = server.login(alice.address, alice.devices["phone"], role="submission")

    result, deadline = cli_then_deadline(server, "device", "rotate", alice.address, "laptop")
    new_password = last_line(result.stdout)
    assert new_password != alice.devices["laptop"] and len(new_password) >= 22
    assert_cut(laptop, deadline - time.monotonic(), "laptop")
    still_works(server, phone, alice.address)
    assert login_result(server, alice.address, alice.devices["laptop"]) == AUTH_FAILED
    assert login_result(server, alice.address, new_password) == AUTH_OK


def test_revoke_all_cuts_every_session_of_the_address(server):
    """`device revoke-all` cuts every live session of the address within 2 s, both passwords
    then fail; another address's session keeps working."""
    alice, bob = server.alice, server.bob
    sessions = {name: server.login(alice.address, pw, role=role)
                for (name, pw), role in zip(alice.devices.items(), ("submission", "submissions"))}
    bob_session = server.login(bob.address, bob.password)

    _, deadline = cli_then_deadline(server, "device", "revoke-all", alice.address)
    for name, client in sessions.items():
        assert_cut(client, deadline - time.monotonic(), name)
    still_works(server, bob_session, bob.address)
    for pw in alice.devices.values():
        assert login_result(server, alice.address, pw) == AUTH_FAILED


def test_new_device_works_without_restart(server):
    """A device added while the server runs can log in at once (CLI and server share the store)."""
    alice = server.alice
    password = server.add_device(alice.address, "tablet")
    assert login_result(server, alice.address, password) == AUTH_OK
