"""MTA-STS (RFC 8461, issue 5): policies discovered in DNS (a knotd on loopback), fetched over
HTTPS from a Python server with a certificate from the test's own CA, and honoured by delivery
to aiosmtpd receivers whose certificates the same CA issued.

Domains (each `_mta-sts` TXT record points at the policy server, each MX at a receiver):
- good.test: enforce; its MX presents a valid certificate for its name -> delivered, `mta-sts`;
- wrongname.test: enforce; the MX certificate names another host -> deferred, nothing sent;
- testing.test: testing mode, same wrong-name MX -> delivered (opportunistic);
- nomatch.test: enforce, but the policy's mx pattern does not cover the MX -> deferred;
- nostarttls.test: enforce, the MX offers no STARTTLS -> deferred;
- nopolicy.test: a TXT record but the policy URL answers 404 -> no policy, opportunistic.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from pathlib import Path

import pytest

from support import (Knot, SmtpReceiver, delivery_log, free_port, free_port_on, run,
                     submit_as_alice, wait_until)

GOOD_MX, BAD_MX, PLAIN_MX, POLICY_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"

POLICIES = {
    "good.test": "version: STSv1\nmode: enforce\nmx: *.good.test\nmax_age: 86400\n",
    "wrongname.test": "version: STSv1\nmode: enforce\nmx: mx.wrongname.test\nmax_age: 86400\n",
    "testing.test": "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n",
    "nomatch.test": "version: STSv1\nmode: enforce\nmx: mail.elsewhere.test\nmax_age: 86400\n",
    "nostarttls.test": "version: STSv1\nmode: enforce\nmx: mx.nostarttls.test\nmax_age: 86400\n",
}
MX_OF = {"good.test": GOOD_MX, "wrongname.test": BAD_MX, "testing.test": BAD_MX,
         "nomatch.test": GOOD_MX, "nostarttls.test": PLAIN_MX, "nopolicy.test": BAD_MX}


def zones() -> dict[str, list[str]]:
    out = {}
    for domain, ip in MX_OF.items():
        out[f"{domain}."] = [f"@ IN MX 10 mx.{domain}.", f"mx IN A {ip}",
                             '_mta-sts IN TXT "v=STSv1; id=20261125;"',
                             f"mta-sts IN A {POLICY_IP}"]
    return out


class LabCa:
    """An openssl CA issuing certificates for the test names."""

    def __init__(self, directory: Path):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = directory / "ca.crt", directory / "ca.key"
        r = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=Lab CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-keyout", self.key, "-out", self.cert])
        assert r.returncode == 0, r.stderr

    def issue(self, name: str, sans: list[str]) -> tuple[Path, Path]:
        key, csr, cert = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext = self.dir / f"{name}.ext"
        ext.write_text("subjectAltName=" + ",".join(f"DNS:{s}" for s in sans) + "\n"
                       "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
        r = run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-subj", f"/CN={sans[0]}", "-keyout", key, "-out", csr])
        assert r.returncode == 0, r.stderr
        r = run(["openssl", "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
                 "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", cert])
        assert r.returncode == 0, r.stderr
        return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


class PolicyServer:
    """HTTPS on ``ip`` serving /.well-known/mta-sts.txt by Host header from ``policies``
    (domain -> policy text); counts fetches."""

    def __init__(self, ctx: ssl.SSLContext, port: int, *, ip: str = POLICY_IP,
                 policies: dict[str, str] = POLICIES):
        self.fetches: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = self.headers.get("Host", "").split(":")[0]
                domain = host.removeprefix("mta-sts.")
                outer.fetches.append(domain)
                body = policies.get(domain)
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((ip, port), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("mta-sts")
    ca = LabCa(d / "ca")
    policy_cert = ca.issue("policy", [f"mta-sts.{dom}" for dom in MX_OF])
    good_cert = ca.issue("good-mx", ["mx.good.test"])
    wrong_cert = ca.issue("wrong-mx", ["somewhere.else.test"])
    knot = Knot(d / "knot", zones())
    knot.start()
    https_port = free_port(POLICY_IP)
    policy = PolicyServer(server_context(*policy_cert), https_port).start()
    port = free_port_on(GOOD_MX, BAD_MX, PLAIN_MX)
    receivers = {
        GOOD_MX: SmtpReceiver(GOOD_MX, port, tls_context=server_context(*good_cert)).start(),
        BAD_MX: SmtpReceiver(BAD_MX, port, tls_context=server_context(*wrong_cert)).start(),
        PLAIN_MX: SmtpReceiver(PLAIN_MX, port).start(),
    }
    yield {"ca": ca, "knot": knot, "https_port": https_port, "policy": policy,
           "port": port, "rx": receivers}
    for r in receivers.values():
        r.stop()
    policy.stop()
    knot.stop()


@pytest.fixture(scope="module")
def srv(lab, tmp_path_factory, postern_bin):
    from conftest import start_with_accounts
    from support import Postern
    pt = Postern(postern_bin, tmp_path_factory.mktemp("postern-sts"), cert=None,
                 dns_port=lab["knot"].port, delivery_port=lab["port"],
                 overrides={"mta_sts": {"port": lab["https_port"], "roots": str(lab["ca"].cert)},
                            "delivery": {"retry_initial": "1s", "retry_max": "1s"}})
    server = start_with_accounts(pt)
    yield server
    pt.stop()


def wait_log(srv, address: str, n: int = 1) -> list[dict]:
    return wait_until(lambda: (rows := delivery_log(srv, address)) and len(rows) >= n and rows, 20,
                      f"{n} delivery log rows for {address}")


def test_enforce_with_a_valid_certificate_delivers_as_mta_sts(srv, lab):
    submit_as_alice(srv, "a@good.test")
    lab["rx"][GOOD_MX].wait_for("a@good.test")
    [row] = wait_log(srv, "a@good.test")
    assert (row["state"], row["tls_mode"], row["mx"]) == ("delivered", "mta-sts", "mx.good.test")
    assert row["tls_version"] == "TLSv1.3"
    assert "good.test" in lab["policy"].fetches


def test_enforce_with_a_certificate_for_another_name_defers(srv, lab):
    submit_as_alice(srv, "b@wrongname.test")
    rows = wait_log(srv, "b@wrongname.test")
    assert rows[0]["state"] == "deferred", rows
    assert rows[0]["dsn"].startswith("4."), rows
    assert "MTA-STS" in rows[0]["reply"], rows
    assert not any("b@wrongname.test" in m.rcpt_tos for m in lab["rx"][BAD_MX].received())


def test_testing_mode_delivers_despite_the_bad_certificate(srv, lab):
    submit_as_alice(srv, "c@testing.test")
    lab["rx"][BAD_MX].wait_for("c@testing.test")
    [row] = wait_log(srv, "c@testing.test")
    assert (row["state"], row["tls_mode"]) == ("delivered", "opportunistic"), row


def test_enforce_with_no_matching_mx_defers(srv, lab):
    submit_as_alice(srv, "d@nomatch.test")
    rows = wait_log(srv, "d@nomatch.test")
    assert rows[0]["state"] == "deferred", rows
    assert "MTA-STS" in rows[0]["reply"], rows
    assert not any("d@nomatch.test" in m.rcpt_tos for m in lab["rx"][GOOD_MX].received())


def test_enforce_without_starttls_defers(srv, lab):
    submit_as_alice(srv, "e@nostarttls.test")
    rows = wait_log(srv, "e@nostarttls.test")
    assert rows[0]["state"] == "deferred", rows
    assert not any("e@nostarttls.test" in m.rcpt_tos for m in lab["rx"][PLAIN_MX].received())


def test_unfetchable_policy_means_no_policy(srv, lab):
    submit_as_alice(srv, "f@nopolicy.test")
    lab["rx"][BAD_MX].wait_for("f@nopolicy.test")
    [row] = wait_log(srv, "f@nopolicy.test")
    assert (row["state"], row["tls_mode"]) == ("delivered", "opportunistic"), row
    assert "nopolicy.test" in lab["policy"].fetches
