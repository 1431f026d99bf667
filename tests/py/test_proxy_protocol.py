"""The PROXY protocol on the SMTP listeners (issue 11): clients behind a load balancer.

Real PROXY-speaking peers: HAProxy (Debian's) in TCP mode in front of Postern, sending v1
(`send-proxy`) and v2 (`send-proxy-v2`) from 127.0.0.9, the balancer Postern trusts
(`[listen] proxy_protocol = ["127.0.0.9/32"]`); and curl's `--haproxy-protocol` (v1). Clients
connect to HAProxy from 127.0.0.5 or 127.0.0.6, so the address Postern must see is never the
address of the socket it accepted. No network is trusted for relaying (`[relay] networks =
[]`): on port 25 a client is a hosting account's server or nobody."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from support import (AUTH_FAILED, AUTH_OK, GREETING, MAIL_OK, RCPT_OK, RELAY_DENIED, SINK,
                     ConnectionClosed, SmtpClient, free_port, make_message, run, stop_process,
                     wait_until)

BALANCER = "127.0.0.9"
CLIENT = "127.0.0.5"            # the hosting account's web server, behind the balancer
OTHER = "127.0.0.6"             # another client behind the balancer, in no hosting network
STRANGER = "127.0.0.7"          # a source that is neither balancer nor hosting server
DOMAIN = "shop.test"
REQUIRED = "421 4.7.0 PROXY protocol header required, closing connection"
NOT_ACCEPTED = "421 4.7.0 PROXY protocol header not accepted from your address, closing connection"
TOO_MANY_FROM_IP = "421 4.7.0 Too many connections from your address, try again later"
V1_HEADER = b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 25\r\n"


def refused(srv, reason: str) -> float:
    return srv.metric(f'postern_smtp_proxy_refused_total{{reason="{reason}"}}') or 0


class HAProxy:
    """HAProxy in TCP mode: one frontend per (name, backend port, server options), each on a
    free port, its backend connection made from ``source``."""

    def __init__(self, workdir: Path, source: str = BALANCER):
        self.workdir = workdir
        self.source = source
        self.frontends: dict[str, int] = {}
        self.lines = ["global", "    maxconn 200", "defaults", "    mode tcp",
                      "    timeout connect 5s", "    timeout client 60s",
                      "    timeout server 60s"]
        self.proc: subprocess.Popen | None = None

    def frontend(self, name: str, backend_port: int, options: str) -> HAProxy:
        port = free_port()
        self.frontends[name] = port
        self.lines += [f"frontend {name}", f"    bind 127.0.0.1:{port}",
                       f"    default_backend {name}_servers",
                       f"backend {name}_servers",
                       f"    server postern 127.0.0.1:{backend_port} source {self.source} "
                       f"{options}"]
        return self

    def start(self) -> HAProxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "haproxy.cfg"
        config.write_text("\n".join(self.lines) + "\n")
        run(["haproxy", "-c", "-f", str(config)])
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)],
                                     stdout=(self.workdir / "haproxy.log").open("ab"),
                                     stderr=subprocess.STDOUT)

        def listening():
            assert self.proc.poll() is None, (self.workdir / "haproxy.log").read_text()
            for port in self.frontends.values():
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except OSError:
                    return False
            return True
        wait_until(listening, 10, "haproxy listening")
        return self

    def connect(self, name: str, source: str, *, implicit_tls: bool = False) -> SmtpClient:
        """A client of frontend ``name`` from ``source``, Postern's greeting asserted."""
        client = SmtpClient("127.0.0.1", self.frontends[name], source=source,
                            implicit_tls=implicit_tls)
        assert client.reply() == GREETING
        return client

    def stop(self):
        stop_process(self.proc)


@pytest.fixture
def make_haproxy(tmp_path):
    made: list[HAProxy] = []

    def factory() -> HAProxy:
        proxy = HAProxy(tmp_path / f"haproxy{len(made)}")
        made.append(proxy)
        return proxy
    yield factory
    for proxy in made:
        proxy.stop()


@pytest.fixture
def behind(make_server):
    """A server trusting the balancer 127.0.0.9, with hosting account web1 whose only network
    is the real client's address 127.0.0.5/32. A trusted source without header gets 1 s."""
    srv = make_server(listen={"proxy_protocol": [f"{BALANCER}/32"]}, relay={"networks": []},
                      timeouts={"proxy_header": "1s"})
    srv.add_hosting("web1", [f"{CLIENT}/32"], [DOMAIN])
    return srv


def transaction_lines(srv) -> list[str]:
    return [line for line in srv.log_text().splitlines() if "transaction" in line]


@pytest.mark.parametrize("option", ["send-proxy", "send-proxy-v2"])
def test_haproxy_gives_the_real_client_to_hosting_matching_and_the_log(behind, make_haproxy,
                                                                        option):
    """Through HAProxy (`OPTION`, from 127.0.0.9) the web server 127.0.0.5 relays as hosting
    account web1: RCPT 250 and the message queued, its transaction logged with
    client_ip=127.0.0.5. A client 127.0.0.6 through the same balancer is in no hosting network:
    `550 5.7.1 Relaying denied`. The balancer's own address is never the client."""
    proxy = make_haproxy().frontend("relay", behind.port("relay"), option).start()
    client = proxy.connect("relay", CLIENT)
    assert client.ehlo().code == 250
    client.transaction(f"wp@{DOMAIN}", [f"r@{SINK}"],
                       make_message(sender=f"wp@{DOMAIN}", to=f"r@{SINK}"))
    client.quit()
    logged = transaction_lines(behind)
    assert any(f'client_ip="{CLIENT}"' in line for line in logged), logged
    assert not any(BALANCER in line for line in logged), logged

    other = proxy.connect("relay", OTHER)
    assert other.ehlo().code == 250
    assert other.cmd(f"MAIL FROM:<wp@{DOMAIN}>") == MAIL_OK
    assert other.cmd(f"RCPT TO:<r@{SINK}>") == RELAY_DENIED
    other.quit()
    assert refused(behind, "timeout") == 0 and refused(behind, "untrusted") == 0


def test_balancer_without_header_is_refused_and_untrusted_header_too(behind):
    """Straight from the balancer's address without a header: no greeting; after
    `timeouts.proxy_header` (1 s) `421 4.7.0 PROXY protocol header required, closing
    connection` and the connection is closed (refused{reason="timeout"} 1). The same at once
    for a first line that is no header (refused{reason="malformed"} 1). From 127.0.0.5 itself (in the
    hosting network, but no balancer) a PROXY header naming someone else is refused after the
    greeting with `421 4.7.0 PROXY protocol header not accepted from your address, closing
    connection` (refused{reason="untrusted"} 1), and without header 127.0.0.5 is served as
    always (RCPT 250)."""
    direct = SmtpClient("127.0.0.1", behind.port("relay"), source=BALANCER)
    assert direct.reply(timeout=10) == REQUIRED
    direct.expect_closed()
    assert refused(behind, "timeout") == 1

    garbage = SmtpClient("127.0.0.1", behind.port("relay"), source=BALANCER)
    garbage.send(b"EHLO balancer.test\r\n")
    assert garbage.reply() == REQUIRED
    garbage.expect_closed()
    assert refused(behind, "malformed") == 1

    spoofer = SmtpClient("127.0.0.1", behind.port("relay"), source=CLIENT)
    assert spoofer.reply() == GREETING
    spoofer.send(V1_HEADER + b"EHLO spoofer.test\r\n")
    assert spoofer.reply() == NOT_ACCEPTED
    spoofer.expect_closed()
    assert refused(behind, "untrusted") == 1

    plain = SmtpClient("127.0.0.1", behind.port("relay"), source=CLIENT)
    assert plain.reply() == GREETING
    assert plain.ehlo().code == 250
    assert plain.cmd(f"MAIL FROM:<wp@{DOMAIN}>") == MAIL_OK
    assert plain.cmd(f"RCPT TO:<r@{SINK}>") == RCPT_OK
    plain.quit()
    # A stranger is neither balancer nor hosting server: served, and denied relaying.
    stranger = SmtpClient("127.0.0.1", behind.port("relay"), source=STRANGER)
    assert stranger.reply() == GREETING
    assert stranger.ehlo().code == 250
    assert stranger.cmd(f"MAIL FROM:<wp@{DOMAIN}>") == MAIL_OK
    assert stranger.cmd(f"RCPT TO:<r@{SINK}>") == RELAY_DENIED
    stranger.quit()


def test_per_ip_cap_counts_the_client_behind_the_balancer(make_server, make_haproxy):
    """`max_sessions_per_ip = 1` behind HAProxy (send-proxy-v2): one session from 127.0.0.5 is
    greeted, a second from 127.0.0.5 gets `421 4.7.0 Too many connections from your address,
    try again later`, while 127.0.0.6 through the same balancer is greeted: the cap counts
    clients, not the balancer."""
    srv = make_server(listen={"proxy_protocol": [f"{BALANCER}/32"]},
                      limits={"max_sessions_per_ip": 1})
    proxy = make_haproxy().frontend("submission", srv.port("submission"), "send-proxy-v2").start()
    first = proxy.connect("submission", CLIENT)
    second = SmtpClient("127.0.0.1", proxy.frontends["submission"], source=CLIENT)
    assert second.reply() == TOO_MANY_FROM_IP
    second.expect_closed()
    other = proxy.connect("submission", OTHER)
    other.quit()
    first.quit()


def test_465_through_haproxy_with_send_proxy_v2(make_server, make_haproxy):
    """Port 465 behind HAProxy in TCP mode (send-proxy-v2; the header comes before the TLS
    handshake): implicit TLS, AUTH as alice 235, and the auth line logs client_ip=127.0.0.5.
    The failed-login brake counts the real client: with `max_auth_failures_per_ip = 1`, one
    failed AUTH from 127.0.0.5 closes 127.0.0.5's next connection before TLS, while
    127.0.0.6 through the same balancer still logs in."""
    srv = make_server(listen={"proxy_protocol": [f"{BALANCER}/32"]},
                      limits={"max_auth_failures_per_ip": 1})
    alice = srv.alice
    proxy = make_haproxy().frontend("tls", srv.port("submissions"), "send-proxy-v2").start()
    client = proxy.connect("tls", CLIENT, implicit_tls=True)
    assert client.ehlo().code == 250
    assert client.auth_plain(alice.address, alice.password) == AUTH_OK
    client.quit()
    assert any("auth ok" in line and f'client_ip="{CLIENT}"' in line
               for line in srv.log_text().splitlines()), srv.log_tail()

    failing = proxy.connect("tls", CLIENT, implicit_tls=True)
    assert failing.ehlo().code == 250
    assert failing.auth_plain(alice.address, "wrong") == AUTH_FAILED
    failing.quit()
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError, ConnectionClosed,
                        OSError)):
        proxy.connect("tls", CLIENT, implicit_tls=True)
    other = proxy.connect("tls", OTHER, implicit_tls=True)
    assert other.ehlo().code == 250
    assert other.auth_plain(alice.address, alice.password) == AUTH_OK
    other.quit()


def test_untrusted_proxy_header_on_465_is_closed_before_tls(behind):
    """On 465 a PROXY header from a source that is no balancer is refused by closing (no
    plaintext on a TLS port): refused{reason="untrusted"} 1."""
    sock = socket.create_connection(("127.0.0.1", behind.port("submissions")), timeout=10,
                                    source_address=(CLIENT, 0))
    sock.sendall(V1_HEADER)
    try:
        answer = sock.recv(100)
    except ConnectionResetError:        # closed with the header unread
        answer = b""
    assert answer == b""
    sock.close()
    wait_until(lambda: refused(behind, "untrusted") == 1, 5, "the refusal counted")


def curl_relay(srv, *extra: str, interface: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "-v", "--max-time", "20", "--interface", interface, *extra,
         f"smtp://127.0.0.1:{srv.port('relay')}", "--mail-from", f"wp@{DOMAIN}",
         "--mail-rcpt", f"r@{SINK}", "-T", "-"],
        input=make_message(sender=f"wp@{DOMAIN}", to=f"r@{SINK}"), capture_output=True,
        timeout=60)


def test_curl_haproxy_protocol(make_server):
    """curl --haproxy-protocol (v1) from the trusted 127.0.0.9, whose header names curl's own
    address 127.0.0.9 (curl 7.88 has no --haproxy-clientip), the hosting network here: the
    message is relayed (curl exits 0) and logged with client_ip=127.0.0.9. The same curl from
    127.0.0.7 (untrusted) gets `421 4.7.0 PROXY protocol header not accepted from your address`;
    curl from 127.0.0.9 without --haproxy-protocol gets `421 4.7.0 PROXY protocol header
    required`."""
    srv = make_server(listen={"proxy_protocol": [f"{BALANCER}/32"]}, relay={"networks": []},
                      timeouts={"proxy_header": "1s"})
    srv.add_hosting("web1", [f"{BALANCER}/32", f"{STRANGER}/32"], [DOMAIN])
    ok = curl_relay(srv, "--haproxy-protocol", interface=BALANCER)
    assert ok.returncode == 0, ok.stderr.decode()
    assert any(f'client_ip="{BALANCER}"' in line for line in transaction_lines(srv))

    untrusted = curl_relay(srv, "--haproxy-protocol", interface=STRANGER)
    assert untrusted.returncode != 0
    assert f"< {NOT_ACCEPTED}" in untrusted.stderr.decode(), untrusted.stderr.decode()

    missing = curl_relay(srv, interface=BALANCER)
    assert missing.returncode != 0
    assert f"< {REQUIRED}" in missing.stderr.decode(), missing.stderr.decode()
    assert refused(srv, "untrusted") == 1 and refused(srv, "timeout") == 1


def test_haproxy_health_checks_are_served_as_the_balancer(make_server, make_haproxy):
    """HAProxy's health checks with send-proxy-v2 (`check`) are its own connections and open
    with a v2 header of their own (LOCAL): Postern reads it and serves the check as a client
    at the balancer's address (the debug line `PROXY header read client_ip=127.0.0.9`),
    refusing none of them."""
    srv = make_server(listen={"proxy_protocol": [f"{BALANCER}/32"]},
                      log={"level": "info,postern::listener=debug"})
    make_haproxy().frontend("relay", srv.port("relay"),
                            "send-proxy-v2 check inter 200ms").start()

    def checked():
        return any("PROXY header read" in line and f"client_ip={BALANCER} " in line
                   for line in srv.log_text().splitlines())
    wait_until(checked, 10, "a health check through the PROXY protocol")
    for reason in ("missing", "timeout", "malformed", "too_long", "unsupported", "untrusted"):
        assert refused(srv, reason) == 0, reason
