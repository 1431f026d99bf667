"""TLS to the fleet's PostgreSQL (`[store] tls`, libpq's sslmode names): a real PostgreSQL with
`ssl = on` and a certificate from a test CA made with openssl; a replica logs in through it
with smtplib. A certificate that does not verify (another CA, another name) or a server
without TLS under a mode that needs it is an outage: unready, 454 on AUTH, a log line naming
the server and the reason; `postern migrate` fails with the same reason. Bad TLS settings are
config errors naming the key (exit 2)."""

from __future__ import annotations

import base64
import os

import pytest

from support import AUTH_OK, make_ca, run, wait_until
from test_fleet import AUTH_UNAVAILABLE, auth_reply, readyz, smtplib_login

ALICE = "alice@plain.test"
DATABASE = "dir"


def replica(make_postern, pg, tmp_path, *, url: str | None = None, **store):
    """A configured (not started) replica on ``pg``'s database ``dir`` with ``store`` keys."""
    if not pg.psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"):
        pg.create_database(DATABASE)
    password_file = tmp_path / "pg-password"
    password_file.write_text(pg.password + "\n")
    secret_key_file = tmp_path / "secret.key"
    if not secret_key_file.exists():
        secret_key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    config = {"backend": "postgres", "url": url or pg.url(DATABASE),
              "password_file": password_file, "secret_key_file": secret_key_file, **store}
    return make_postern(store=config, relay={"networks": []})


def migrated(pt, pg) -> None:
    out = pt.cli("migrate").stdout
    assert out.startswith(f"PostgreSQL postern@127.0.0.1:{pg.port}/{DATABASE}: schema "), out


def postern_connections(pg) -> list[str]:
    """`t`/`f` (encrypted or not) of each connection of Postern, as PostgreSQL sees them."""
    out = pg.psql(DATABASE, "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                            "WHERE a.application_name = 'postern'")
    return out.splitlines()


def assert_outage(pt, pg, reason: str) -> None:
    """Started unready; AUTH 454; the log names the server and ``reason``, never the password;
    `postern migrate` exits 1 with the reason."""
    pt.start(ready=False)
    assert readyz(pt) == 503
    assert auth_reply(pt, ALICE, "any-password") == AUTH_UNAVAILABLE
    wait_until(lambda: "directory not answering: not ready" in pt.log_text(), 10,
               "the readiness watcher's log line")
    lines = [line for line in pt.log_text().splitlines()
             if "directory unavailable at start" in line or "directory not answering" in line
             or "directory notifications lost" in line]
    assert lines and all(f"postern@127.0.0.1:{pg.port}/{DATABASE}" in line and reason in line
                         for line in lines), "\n".join(lines)
    assert pg.password not in pt.log_text()
    r = pt.cli("migrate", check=False)
    assert r.returncode == 1 and reason in r.stderr, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1, r.stderr
    pt.stop()


def test_default_verify_full_with_the_right_ca_logs_in_through_tls(make_postern, make_postgres,
                                                                   tmp_path):
    """No `tls` key (the default, verify-full) and `ca_file` the test CA: migrate, the CLI and
    serve go through TLS; smtplib logs in (235); every connection of Postern is encrypted,
    the pool's and the LISTEN one."""
    pg = make_postgres(tls_names=["127.0.0.1"])
    pt = replica(make_postern, pg, tmp_path, ca_file=pg.ca.cert)
    migrated(pt, pg)
    pt.add_address(ALICE)
    password = pt.add_device(ALICE, "laptop")
    pt.start()
    assert smtplib_login(pt, ALICE, password) == (235, b"2.7.0 Authentication successful")
    wait_until(lambda: len(postern_connections(pg)) >= 2, 10, "the pool and LISTEN connections")
    assert set(postern_connections(pg)) == {"t"}


def test_a_certificate_of_another_ca_is_an_outage(make_postern, make_postgres, tmp_path):
    """verify-full with a CA that did not issue the server's certificate: unready, 454, the
    log names the server and UnknownIssuer."""
    pg = make_postgres(tls_names=["127.0.0.1"])
    other = make_ca(tmp_path / "other-ca", "Someone else")
    pt = replica(make_postern, pg, tmp_path, tls="verify-full", ca_file=other.cert)
    assert_outage(pt, pg, "invalid peer certificate: UnknownIssuer")


def test_a_certificate_for_another_name_fails_verify_full_not_verify_ca(make_postern,
                                                                        make_postgres, tmp_path):
    """The server's certificate is for db.internal, the URL says 127.0.0.1: verify-full is an
    outage naming the name; verify-ca (the chain only) logs in."""
    pg = make_postgres(tls_names=["db.internal"])
    pt = replica(make_postern, pg, tmp_path, tls="verify-full", ca_file=pg.ca.cert)
    assert_outage(pt, pg, "certificate not valid for name")
    pt.write_config(store={"tls": "verify-ca"})
    migrated(pt, pg)
    pt.add_address(ALICE)
    password = pt.add_device(ALICE, "laptop")
    pt.start()
    assert auth_reply(pt, ALICE, password) == AUTH_OK


def test_require_refuses_a_server_without_tls_prefer_falls_back(make_postern, postgres,
                                                                 tmp_path):
    """Against a server without TLS: require is an outage ("server does not support TLS");
    prefer goes on in plaintext and logs in."""
    pt = replica(make_postern, postgres, tmp_path, tls="require")
    assert_outage(pt, postgres, "server does not support TLS")
    pt.write_config(store={"tls": "prefer"})
    migrated(pt, postgres)
    pt.add_address(ALICE)
    password = pt.add_device(ALICE, "laptop")
    pt.start()
    assert auth_reply(pt, ALICE, password) == AUTH_OK
    assert set(postern_connections(postgres)) == {"f"}


def test_the_url_sslmode_is_honoured_and_a_conflict_refused(make_postern, make_postgres,
                                                            tmp_path):
    """`?sslmode=verify-full` in the URL (as managed services hand out) counts as `tls`: with
    the right CA it connects; the same value in `tls` is fine; another one is refused, exit 2
    naming store.tls, for serve and the CLI."""
    pg = make_postgres(tls_names=["127.0.0.1"])
    url = pg.url(DATABASE) + "?sslmode=verify-full&connect_timeout=5"
    pt = replica(make_postern, pg, tmp_path, url=url, ca_file=pg.ca.cert)
    migrated(pt, pg)
    other = make_ca(tmp_path / "other-ca", "Someone else")
    pt.write_config(store={"ca_file": other.cert})
    r = pt.cli("migrate", check=False)
    assert r.returncode == 1 and "UnknownIssuer" in r.stderr, r.stderr
    pt.write_config(store={"ca_file": pg.ca.cert, "tls": "verify-full"})
    migrated(pt, pg)
    pt.write_config(store={"tls": "require"})
    for command in (["migrate"], ["address", "list"], ["serve"]):
        r = run([pt.binary, "--config", pt.config_path, *command], timeout=15)
        assert r.returncode == 2, (command, r.returncode, r.stderr)
        assert r.stderr.strip().splitlines() == [
            f'postern: {pt.config_path}: store.tls: "require" conflicts with sslmode=verify-full '
            "in store.url: keep one of them"], r.stderr


BAD_TLS = [
    # (store keys, the line's start after "postern: ")
    ({"tls": "verify-everything"}, "store.tls: unknown variant `verify-everything`"),
    ({"tls": "allow"}, "store.tls: unknown variant `allow`"),
    ({"url": "postgres://postern@db.example/dir?sslmode=allow"},
     "store.url: sslmode=allow in the URL: must be disable, prefer, require, verify-ca or "
     "verify-full"),
    ({"url": "postgres://postern@db.example/dir?sslrootcert=/etc/ca.pem"},
     "store.url: sslrootcert in the URL is not read: set store.ca_file instead"),
    ({"url": "host=db.example user=postern dbname=dir sslmode=require"},
     "store.url: sslmode in a key=value connection string: set store.tls instead"),
    ({"ca_file": "/nonexistent/ca.pem"}, "store.ca_file: /nonexistent/ca.pem: cannot read: "),
    ({"tls": "prefer", "ca_file": "/etc/hostname"},
     'store.ca_file: has no use with store.tls = "prefer"'),
    ({"tls": "require", "ca_file": "/etc/hostname"},
     "store.ca_file: /etc/hostname: no CERTIFICATE block found"),
    ({"client_cert_file": "/etc/hostname"}, "store.client_key_file: required with "
                                            "client_cert_file"),
    ({"tls": "disable", "client_cert_file": "/a.crt", "client_key_file": "/a.key"},
     'store.client_cert_file: has no use with store.tls = "disable"'),
]


@pytest.mark.parametrize("store,message", BAD_TLS, ids=[m.split(":")[0] + "-" + str(i)
                                                         for i, (_, m) in enumerate(BAD_TLS)])
@pytest.mark.parametrize("command", [["serve"], ["address", "list"]])
def test_bad_tls_settings_exit_2_naming_the_key(make_postern, tmp_path, store, message, command):
    """No server needed: each is refused before any connection, in one line."""
    secret_key_file = tmp_path / "secret.key"
    secret_key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    config = {"backend": "postgres", "url": "postgres://postern@127.0.0.1:9/dir",
              "secret_key_file": secret_key_file, **store}
    pt = make_postern(store=config)
    r = run([pt.binary, "--config", pt.config_path, *command], timeout=15)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    # Errors found while reading the file name it; those of files read at open do not (and a
    # failing serve says "error: ").
    line = lines[0].removeprefix(f"postern: {pt.config_path}: ").removeprefix("postern: ")
    line = line.removeprefix("error: ")
    assert len(lines) == 1 and line.startswith(message), lines
