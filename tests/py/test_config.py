"""The config file: bad keys and values are named on one line with exit 2; TLS set-ups."""

import ssl

import pytest

from support import EHLO_FIRST, SINK, TLS_GO, make_message, port_open, run


BAD_CONFIGS = [
    # (overrides, the dotted key the message must name, a word of the bad key itself)
    ({"store": {"paht": "x"}}, "store", "paht"),
    ({"store": {"tls": "verify-everything"}}, "store.tls", None),
    ({"store": {"cache_ttl": "61s"}}, "store.cache_ttl", None),
    ({"store": {"cache_ttl": "60001ms"}}, "store.cache_ttl", None),
    ({"store": {"cache_ttl": "5"}}, "store.cache_ttl", None),
    ({"bogus": {"x": 1}}, "bogus", "bogus"),
    ({"listen": {"submission": "localhost:port"}}, "listen.submission", None),
    ({"listen": {"http": "127.0.0.1:99999"}}, "listen.http", None),
    ({"timeouts": {"command": "30"}}, "timeouts.command", None),
    ({"timeouts": {"data": "fast"}}, "timeouts.data", None),
    ({"relay": {"networks": ["10.0.0.0/33"]}}, "relay.networks", None),
    ({"listen": {"proxy_protocol": ["127.0.0.9/33"]}}, "listen.proxy_protocol", None),
    ({"listen": {"proxy_protocol": ["balancer.test"]}}, "listen.proxy_protocol", None),
    ({"listen": {"proxy_protocol": "10.0.0.0/8"}}, "listen.proxy_protocol", None),
    ({"timeouts": {"proxy_header": "0s"}}, "timeouts.proxy_header", None),
    ({"limits": {"max_recipients": 0}}, "limits.max_recipients", None),
    ({"limits": {"max_message_size": "big"}}, "limits.max_message_size", None),
    ({"limits": {"max_received_headers": 0}}, "limits.max_received_headers", None),
    ({"limits": {"max_received_headers": -1}}, "limits.max_received_headers", None),
    ({"limits": {"max_junk_commands": -1}}, "limits.max_junk_commands", None),
    ({"timeouts": {"session": "0s"}}, "timeouts.session", None),
    ({"timeouts": {"data_total": "soon"}}, "timeouts.data_total", None),
    ({"delivery": {"allow_address_literals": "yes"}}, "delivery.allow_address_literals", None),
    ({"delivery": {"port": 0}}, "delivery.port", None),
    ({"delivery": {"max_active_messages": 0}}, "delivery.max_active_messages", None),
    ({"delivery": {"max_active_messages": "many"}}, "delivery.max_active_messages", None),
    ({"delivery": {"retry_initial": "10s", "retry_max": "1s"}}, "delivery.retry_max", None),
    ({"tls": {"key": None}}, "tls.key", None),
    ({"tls": {"ecdsa_cert": "/etc/ec.pem"}}, "tls.ecdsa_key", None),
    ({"tls": {"ecdsa_key": "/etc/ec.key"}}, "tls.ecdsa_cert", None),
    ({"tls": {"cert": None, "key": None, "ecdsa_cert": "/etc/ec.pem",
              "ecdsa_key": "/etc/ec.key"}}, "tls.ecdsa_cert", None),
    ({"tls": {"session_cache": 1000001}}, "tls.session_cache", None),
    ({"tls": {"session_cache": -1}}, "tls.session_cache", None),
    ({"tls": {"session_tickets": "yes"}}, "tls.session_tickets", None),
    ({"tls": {"session_ticket": False}}, "tls", "session_ticket"),
    ({"dns": {"servers": ["not-an-address"]}}, "dns.servers", None),
    ({"server": {"replica": "relay 1"}}, "server.replica", None),
    ({"server": {"replica": ""}}, "server.replica", None),
    ({"server": {"replika": "r1"}}, "server", "replika"),
    ({"store": {"backend": "postgres", "url": "postgres://p@127.0.0.1:1/d",
                "secret_key_file": "/nonexistent"},
      "delivery_log": {"path": "/tmp/x.db"}}, "delivery_log.path", None),
]


@pytest.mark.parametrize("overrides,key,word", BAD_CONFIGS,
                         ids=[c[1] + ("." + c[2] if c[2] and c[2] != c[1] else "")
                              for c in BAD_CONFIGS])
@pytest.mark.parametrize("command", [["serve"], ["address", "list"]])
def test_bad_config_is_named_on_one_line_exit_2(make_postern, overrides, key, word, command):
    """A wrong key or value: exit 2 and exactly one line on stderr naming the dotted key, both
    for `serve` (which must not start) and for CLI commands."""
    pt = make_postern()
    pt.write_config(**overrides)
    r = run([pt.binary, "--config", pt.config_path, *command], timeout=15)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert key in lines[0] and (word is None or word in lines[0]), lines[0]


def test_missing_config_file(make_postern, tmp_path):
    """A config path that does not exist is refused with one line naming it, exit 2."""
    pt = make_postern()
    missing = tmp_path / "nope.toml"
    r = run([pt.binary, "--config", missing, "address", "list"])
    assert r.returncode == 2 and str(missing) in r.stderr and len(r.stderr.strip().splitlines()) == 1


def tls_roundtrip(srv) -> bytes:
    """STARTTLS on 587 and implicit TLS on 465 both work; returns the 465 certificate (DER)."""
    client = srv.connect("submission")
    client.ehlo()
    assert client.starttls() == TLS_GO
    assert client.ehlo().lines[0] == EHLO_FIRST
    client.quit()
    client = srv.connect("submissions")
    der = client.sock.getpeercert(binary_form=True)
    client.quit()
    assert der
    return der


def test_self_signed_certificate_when_tls_not_configured(make_server):
    """Without [tls], a self-signed certificate is generated at first start and reused on the
    next start."""
    srv = make_server(cert=None)
    first = tls_roundtrip(srv)
    srv.restart()
    assert tls_roundtrip(srv) == first, "a new certificate at every start, not at first start"


def test_ec_certificate(make_server, certs):
    """A P-256 certificate with a PKCS#8 key from openssl works as well as the RSA one."""
    srv = make_server(cert=certs.mx)
    tls_roundtrip(srv)


def test_configured_certificate_is_served(server, certs):
    """The certificate of [tls] cert is the one the server presents."""
    der = tls_roundtrip(server)
    pem = certs.server.cert.read_text()
    assert ssl.DER_cert_to_PEM_cert(der).strip() == pem.strip()


def test_disabled_listener(make_server):
    """A role left out of [listen] is not served; the others are."""
    srv = make_server(listen={"relay": None})
    assert "relay" not in srv.config["listen"] and not port_open(srv.ports["relay"])
    alice = srv.alice
    client = srv.login(alice.address, alice.password)
    client.transaction(alice.address, [f"r@{SINK}"], make_message(sender=alice.address,
                                                                   to=f"r@{SINK}"))
