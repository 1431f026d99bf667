"""Self-tests of the harness: they need no Postern, only the real peers the suite relies on."""

import smtplib
import ssl
import tomllib

import pytest

from support import (SmtpClient, client_tls_context, dot_stuff, free_port_on, header_values,
                     make_message, merge, sized_message, to_toml)


def test_knot_serves_the_test_zones_over_the_wire(knot):
    """knotd answers MX and A queries for the delivery zones on its loopback port."""
    assert knot.query("tls.test.", "MX") == ["10 mx.tls.test."]
    assert knot.query("mx.tls.test.", "A") == ["127.0.0.2"]
    assert knot.query("plain.test.", "MX") == ["10 mx.plain.test."]
    assert knot.query("mx.plain.test.", "A") == ["127.0.0.3"]
    assert knot.query("implicit.test.", "MX") == []
    assert knot.query("implicit.test.", "A") == ["127.0.0.3"]
    assert knot.query("nullmx.test.", "MX") == ["0 ."]


def _send(host, port, *, starttls, rcpts, msg):
    with smtplib.SMTP(host, port, timeout=10) as s:
        s.ehlo("client.test")
        if starttls:
            s.starttls(context=client_tls_context())
            s.ehlo("client.test")
        return s.sendmail("sender@example.org", rcpts, msg)


def test_receivers_record_messages_with_and_without_tls(mx):
    """The MX receivers accept mail, record envelope, raw bytes and whether STARTTLS was used."""
    msg = make_message(sender="sender@example.org", to="a@tls.test")
    assert _send("127.0.0.2", mx.port, starttls=True, rcpts=["a@tls.test"], msg=msg) == {}
    got = mx.tls.wait_for("a@tls.test")
    assert got.tls and got.mail_from == "sender@example.org" and got.content == msg

    with smtplib.SMTP("127.0.0.3", mx.port, timeout=10) as s:
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
    assert _send("127.0.0.3", mx.port, starttls=False, rcpts=["b@plain.test"], msg=msg) == {}
    got = mx.plain.wait_for("b@plain.test")
    assert not got.tls and got.content == msg


def test_receiver_policy_rejects_and_tempfails(mx):
    """``reject*`` recipients always get 550, ``tempfail*`` 451 once and then 250."""
    msg = make_message(sender="s@example.org", to="x@plain.test")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        _send("127.0.0.3", mx.port, starttls=False, rcpts=["reject-1@plain.test"], msg=msg)
    assert e.value.recipients["reject-1@plain.test"][0] == 550
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        _send("127.0.0.3", mx.port, starttls=False, rcpts=["tempfail-1@plain.test"], msg=msg)
    assert _send("127.0.0.3", mx.port, starttls=False, rcpts=["tempfail-1@plain.test"],
                 msg=msg) == {}
    assert [a.reply[:3] for a in mx.plain.attempts_for("tempfail-1@plain.test")] == ["451", "250"]


def test_broken_tls_receiver_fails_modern_handshakes(mx):
    """127.0.0.4 offers STARTTLS but a TLS 1.2+ client cannot complete the handshake."""
    client = SmtpClient("127.0.0.4", mx.port)
    assert client.reply().code == 220
    assert "STARTTLS" in client.ehlo().keywords()
    with pytest.raises(ssl.SSLError):
        client.starttls(client_tls_context(min_version=ssl.TLSVersion.TLSv1_2))
    client.close()


def test_free_port_on_several_loopback_addresses():
    """One port number bindable on 127.0.0.2, .3 and .4 at once."""
    port = free_port_on("127.0.0.2", "127.0.0.3", "127.0.0.4")
    assert 1024 < port < 65536


@pytest.mark.parametrize("size", [1000, 1001, 4096, 200_000, 3_000_001])
def test_sized_message_is_exact_and_valid(size):
    """Generated messages have exactly the requested size, CRLF lines <= 998, no leading dot."""
    data = b"".join(sized_message(size, sender="a@example.org", to="b@example.org",
                                  block_bytes=64 * 1024))
    assert len(data) == size and data.endswith(b"\r\n")
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert not any(line.startswith(b".") for line in data.split(b"\r\n"))


def test_message_helpers():
    """Dot-stuffing, header lookup, TOML writer and config merge behave as the tests assume."""
    assert dot_stuff(b".a\r\n.b\r\nc\r\n") == b"..a\r\n..b\r\nc\r\n"
    msg = make_message(sender="a@x.test", to="b@y.test", message_id=False,
                       headers=["X-Long: one\r\n two"])
    assert header_values(msg, "message-id") == [] and header_values(msg, "x-long") == ["one two"]
    cfg = merge({"a": {"x": 1, "y": "s"}, "b": {"z": [1]}}, {"a": {"y": None}, "b": None,
                                                             "c": {"t": True}})
    assert tomllib.loads(to_toml(cfg)) == {"a": {"x": 1}, "c": {"t": True}}


def test_raw_client_against_a_real_smtp_server(mx):
    """SmtpClient: greeting, multi-line EHLO, STARTTLS handshake, a full transaction and QUIT
    against aiosmtpd."""
    client = SmtpClient("127.0.0.2", mx.port)
    assert client.reply().code == 220
    ehlo = client.ehlo()
    assert ehlo.code == 250 and "STARTTLS" in ehlo.keywords()
    assert client.starttls().code == 220 and client.tls
    assert client.ehlo().code == 250
    msg = make_message(sender="s@example.org", to="raw@tls.test", body=".dot\r\nend\r\n")
    assert client.cmd("MAIL FROM:<s@example.org>").code == 250
    assert client.cmd("RCPT TO:<raw@tls.test>").code == 250
    assert client.cmd("DATA").code == 354
    assert client.send_data(msg).code == 250
    assert client.cmd("QUIT").code == 221
    client.expect_closed()
    got = mx.tls.wait_for("raw@tls.test")
    assert got.tls and got.content == msg


def test_generated_config_matches_the_config_schema(tmp_path, certs):
    """The TOML the Postern helper writes parses, and uses only sections of src/config."""
    from support import REPO, Postern
    pt = Postern(tmp_path / "bin-not-needed", tmp_path / "pt", cert=certs.server, dns_port=5353,
                 delivery_port=2525, overrides={"limits": {"max_message_size": 1000}})
    parsed = tomllib.loads(pt.config_path.read_text())
    schema = (REPO / "src" / "config" / "mod.rs").read_text()
    for section, table in parsed.items():
        assert f"pub {section}:" in schema, section
        for key in table:
            assert f"pub {key}:" in schema, f"{section}.{key}"
    assert parsed["limits"] == {"auth_failure_delay": "10ms", "max_message_size": 1000}
    assert parsed["dns"]["servers"] == ["127.0.0.1:5353"]
