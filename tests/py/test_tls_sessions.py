"""TLS for reconnecting clients: session resumption (tickets and the session cache), the ECDSA
certificate beside the RSA one, and the checks of both pairs at load. The client is OpenSSL's
``s_client`` (``-starttls smtp`` on 587, implicit TLS on 465), as a mail client would be."""

import re
import subprocess
from pathlib import Path

import pytest

from support import BYE, EHLO_FIRST, GREETING, make_cert, port_open, run

VERSIONS = {"1.3": ["-tls1_3"], "1.2": ["-tls1_2"], "1.2-no-ticket": ["-tls1_2", "-no_ticket"]}
PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", re.S)


class Handshake:
    """One ``openssl s_client`` session: EHLO and QUIT after the handshake."""

    def __init__(self, result: subprocess.CompletedProcess):
        self.out = result.stdout
        # Postern closes after 221 without a TLS close_notify, which s_client reports as an
        # unexpected EOF (status 1); anything else is a failure.
        assert result.returncode == 0 or (
            result.returncode == 1 and "unexpected eof while reading" in result.stderr), (
            result.returncode, result.stdout, result.stderr)
        found = re.search(r"^(New|Reused), (TLSv1\.[23]),", self.out, re.M)
        assert found, self.out
        self.state, self.version = found.group(1), found.group(2)
        self.replies = re.findall(r"^\d{3}[ -].*$", self.out, re.M)
        self.ticket = "TLS session ticket lifetime hint" in self.out

    def served_cert(self) -> str:
        """The leaf certificate the server sent, PEM."""
        found = PEM_CERT.search(self.out)
        assert found, self.out
        return found.group(0)


def s_client(port: int, role: str, *args: str) -> Handshake:
    """A session on ``role``'s ``port`` with extra ``s_client`` arguments; the SMTP replies
    after the handshake are checked exactly."""
    starttls = ["-starttls", "smtp"] if role == "submission" else []
    result = run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *starttls,
                  "-servername", "postern.test", "-ign_eof", "-showcerts", *args],
                 timeout=20, input="EHLO client.test\r\nQUIT\r\n")
    shake = Handshake(result)
    # s_client does the plaintext EHLO and STARTTLS itself and does not print them.
    expected_first = EHLO_FIRST if role == "submission" else GREETING
    assert shake.replies[0] == expected_first, shake.replies
    if role == "submissions":
        assert shake.replies[1] == EHLO_FIRST, shake.replies
    assert shake.replies[-1] == BYE, shake.replies
    return shake


def key_type(pem: str) -> str:
    """``openssl x509``'s name of the certificate's public key algorithm."""
    result = run(["openssl", "x509", "-noout", "-text"], input=pem)
    assert result.returncode == 0, result.stderr
    found = re.search(r"Public Key Algorithm: (\S+)", result.stdout)
    assert found, result.stdout
    return found.group(1)


@pytest.fixture(scope="module")
def ecdsa_pair(tmp_path_factory):
    """A P-256 pair for postern.test, the second certificate beside conftest's RSA one."""
    return make_cert(tmp_path_factory.mktemp("ecdsa"), "postern.test", key_type="ec")


# --- resumption -----------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["submission", "submissions"])
@pytest.mark.parametrize("version", list(VERSIONS))
def test_reconnecting_client_resumes(server, tmp_path, role, version):
    """A client that kept its session resumes it on the next connection: TLS 1.3 and TLS 1.2
    with a ticket, TLS 1.2 without ticket support from the session cache."""
    session = tmp_path / "session.pem"
    port = server.port(role)
    first = s_client(port, role, *VERSIONS[version], "-sess_out", str(session))
    assert (first.state, first.version) == ("New", "TLSv1.3" if version == "1.3" else "TLSv1.2")
    # A 1.2 client that asks for a ticket gets one; one that does not gets a session id.
    assert first.ticket == (version != "1.2-no-ticket")
    second = s_client(port, role, *VERSIONS[version], "-sess_in", str(session))
    assert (second.state, second.version) == ("Reused", first.version)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_without_tickets_the_session_cache_resumes(make_server, tmp_path, version):
    """session_tickets = false: no ticket is sealed, the sessions in memory still resume."""
    srv = make_server(tls={"session_tickets": False})
    session = tmp_path / "session.pem"
    port = srv.port("submissions")
    first = s_client(port, "submissions", *VERSIONS[version], "-sess_out", str(session))
    if version != "1.3":
        # TLS 1.3 always sends NewSessionTicket; without a ticketer it carries a cache id.
        assert not first.ticket
    second = s_client(port, "submissions", *VERSIONS[version], "-sess_in", str(session))
    assert (first.state, second.state) == ("New", "Reused")


@pytest.mark.parametrize("version", list(VERSIONS))
def test_resumption_off_gives_full_handshakes(make_server, tmp_path, version):
    """session_tickets = false and session_cache = 0: the server offers no session to resume,
    so every connection is a full handshake."""
    srv = make_server(tls={"session_tickets": False, "session_cache": 0})
    session = tmp_path / "session.pem"
    port = srv.port("submission")
    first = s_client(port, "submission", *VERSIONS[version], "-sess_out", str(session))
    assert first.state == "New" and not first.ticket
    # Nothing to resume with: no NewSessionTicket (1.3), an empty session id (1.2), so
    # s_client had no session to save.
    assert not session.exists()


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_ticket_of_another_replica_falls_back_to_a_full_handshake(make_server, tmp_path,
                                                                  version):
    """Ticket keys live in one process: another replica (same certificate) cannot open the
    ticket, and the client gets a full handshake and a working session there; the replica
    that issued it still resumes it."""
    one, two = make_server(), make_server()
    session = tmp_path / "session.pem"
    issued = s_client(one.port("submission"), "submission", *VERSIONS[version],
                      "-sess_out", str(session))
    assert issued.ticket
    elsewhere = s_client(two.port("submission"), "submission", *VERSIONS[version],
                         "-sess_in", str(session))
    assert elsewhere.state == "New"
    back = s_client(one.port("submission"), "submission", *VERSIONS[version],
                    "-sess_in", str(session))
    assert back.state == "Reused"


def test_tickets_do_not_survive_a_restart(make_server, tmp_path):
    """The ticket keys are made at start: after a restart an old ticket gets a full handshake."""
    srv = make_server(tls={"session_cache": 0})
    session = tmp_path / "session.pem"
    port = srv.port("submissions")
    s_client(port, "submissions", "-tls1_3", "-sess_out", str(session))
    assert s_client(port, "submissions", "-tls1_3", "-sess_in", str(session)).state == "Reused"
    srv.restart()
    assert s_client(port, "submissions", "-tls1_3", "-sess_in", str(session)).state == "New"


# --- the ECDSA certificate ------------------------------------------------------------------

CHOICES = [
    # (s_client arguments, the certificate served)
    (["-tls1_3"], "ecdsa"),
    (["-tls1_3", "-sigalgs", "RSA-PSS+SHA256"], "rsa"),
    (["-tls1_3", "-sigalgs", "ECDSA+SHA256"], "ecdsa"),
    (["-tls1_2"], "ecdsa"),
    (["-tls1_2", "-sigalgs", "RSA+SHA256:RSA-PSS+SHA256"], "rsa"),
    (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], "rsa"),
    (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"], "ecdsa"),
]


@pytest.mark.parametrize("role", ["submission", "submissions"])
@pytest.mark.parametrize("args,served", CHOICES, ids=[" ".join(c[0]) for c in CHOICES])
def test_ecdsa_certificate_for_clients_that_take_it(make_server, certs, ecdsa_pair, role, args,
                                                    served):
    """With both pairs, a client that accepts ECDSA signatures gets the ECDSA certificate and
    one limited to RSA signatures (or RSA cipher suites in 1.2) gets the RSA one."""
    srv = make_server(tls={"ecdsa_cert": ecdsa_pair.cert, "ecdsa_key": ecdsa_pair.key})
    shake = s_client(srv.port(role), role, *args)
    pem = shake.served_cert()
    pair = ecdsa_pair if served == "ecdsa" else certs.server
    assert pem == pair.cert.read_text()
    assert key_type(pem) == {"ecdsa": "id-ecPublicKey", "rsa": "rsaEncryption"}[served]
    assert re.search(r"^Peer signature type: (\S+)", shake.out, re.M).group(1) in (
        ["ECDSA"] if served == "ecdsa" else ["RSA-PSS", "RSA"])


def test_rsa_only_server_serves_rsa_to_every_client(server, certs):
    """Without the ECDSA pair a default client gets the RSA certificate (and nothing else)."""
    pem = s_client(server.port("submissions"), "submissions", "-tls1_3").served_cert()
    assert pem == certs.server.cert.read_text() and key_type(pem) == "rsaEncryption"


def test_development_certificate_is_ecdsa_p256(make_server):
    """Without [tls] the generated certificate is rcgen's default: ECDSA on P-256."""
    srv = make_server(cert=None)
    pem = s_client(srv.port("submissions"), "submissions", "-tls1_3").served_cert()
    text = run(["openssl", "x509", "-noout", "-text"], input=pem).stdout
    assert "id-ecPublicKey" in text and "prime256v1" in text, text


# --- checks at load -------------------------------------------------------------------------

def bad_pairs(certs, ecdsa_pair, other_ecdsa, tmp: Path):
    """(the [tls] section, the exact start of the message after the key's name)."""
    absent = tmp / "absent.pem"
    rsa = {"cert": certs.server.cert, "key": certs.server.key}
    return [
        ({**rsa, "ecdsa_cert": ecdsa_pair.cert, "ecdsa_key": other_ecdsa.key},
         f"tls.ecdsa_key: {other_ecdsa.key}: not the key of the certificate in tls.ecdsa_cert "
         f"({ecdsa_pair.cert}): "),
        ({**rsa, "ecdsa_cert": certs.server.cert, "ecdsa_key": certs.server.key},
         f"tls.ecdsa_key: {certs.server.key}: an RSA key, not ECDSA"),
        ({"cert": certs.server.cert, "key": ecdsa_pair.key},
         f"tls.key: {ecdsa_pair.key}: not the key of the certificate in tls.cert "
         f"({certs.server.cert}): "),
        ({**rsa, "ecdsa_cert": absent, "ecdsa_key": ecdsa_pair.key},
         f"tls.ecdsa_cert: {absent}: "),
        ({**rsa, "ecdsa_cert": ecdsa_pair.key, "ecdsa_key": ecdsa_pair.key},
         f"tls.ecdsa_cert: {ecdsa_pair.key}: no CERTIFICATE block found"),
        ({**rsa, "ecdsa_cert": ecdsa_pair.cert, "ecdsa_key": ecdsa_pair.cert},
         f"tls.ecdsa_key: {ecdsa_pair.cert}: no PRIVATE KEY block found"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_pairs_are_checked_at_load_and_the_key_named(make_postern, certs, ecdsa_pair, tmp_path,
                                                     case):
    """A key that is not its certificate's, an ECDSA pair that is RSA, an unreadable or empty
    file: `serve` exits 2 without listening and `config check --files` exits 2, both with one
    line naming the key."""
    other = make_cert(tmp_path / "other", "postern.test", key_type="ec")
    tls, message = bad_pairs(certs, ecdsa_pair, other, tmp_path)[case]
    pt = make_postern(cert=None, tls=tls)
    r = run([pt.binary, "--config", pt.config_path, "serve"], timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"postern: error: {message}"), last
    assert not port_open(pt.ports["submission"])
    r = run([pt.binary, "--config", pt.config_path, "config", "check", "--files"])
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith(f"postern: {message}") and r.stderr.count("\n") == 1, r.stderr


def test_good_pairs_pass_config_check(make_postern, certs, ecdsa_pair):
    """The same check accepts two matching pairs."""
    pt = make_postern(tls={"ecdsa_cert": ecdsa_pair.cert, "ecdsa_key": ecdsa_pair.key})
    r = run([pt.binary, "--config", pt.config_path, "config", "check", "--files"])
    assert (r.returncode, r.stdout) == (
        0, f"{pt.config_path}: keys, values and the files it names are valid\n")
