"""RFC 8689 REQUIRETLS (issue 10): offered and accepted only under TLS; such a message goes
only to a host authenticated by DANE (or MTA-STS) that advertises REQUIRETLS after STARTTLS,
with REQUIRETLS on its MAIL FROM; otherwise its recipients bounce (5.7.30 for a hop without
REQUIRETLS, 5.7.10 when authenticated TLS cannot be had). Its DSNs carry only the header and
go out with REQUIRETLS themselves. `TLS-Required: No` makes DANE failures opportunistic.

DNSSEC lab (dnssec_lab.py, knotd on loopback), aiosmtpd receivers on one port:
  .21  STARTTLS + REQUIRETLS, "mx.rt.lab" (matches the TLSA 3 1 1 records)
  .22  STARTTLS, no REQUIRETLS, the same key
  .23  STARTTLS + REQUIRETLS, "other.lab" (matches no TLSA record)
Zones: rt.lab -> .21, nort.lab -> .22, mismatch.lab -> .23 (signed, TLSA of .21's key);
plainrt.lab -> .21 unsigned (no DANE possible). Senders are at rt.lab, so DSNs reach .21.
Messages go in on the relay port (25) from 127.0.0.1, a trusted network of the test config.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import smtplib

import pytest

from dnssec_lab import SignedKnot, self_signed, server_context, tlsa_digest
from support import (HOSTNAME, MAIL_OK, TLS_GO, Knot, SmtpReceiver, delivery_log, free_port,
                     free_port_on, make_message, wait_until)

HOSTS = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
SENDER = "s@rt.lab"
REFUSED = "555 5.5.4 MAIL FROM parameter REQUIRETLS not supported"


@dataclasses.dataclass
class Lab:
    dns: SignedKnot
    port: int
    rt: SmtpReceiver
    nort: SmtpReceiver
    mismatch: SmtpReceiver

    def saw(self, address: str) -> bool:
        return any(r.attempts_for(address) for r in (self.rt, self.nort, self.mismatch))


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    d = tmp_path_factory.mktemp("requiretls-lab")
    ee = self_signed(d / "certs", "mx.rt.lab")
    other = self_signed(d / "certs", "other.lab")
    tlsa = f"_25._tcp.mx IN TLSA 3 1 1 {tlsa_digest(ee.cert)}"
    mx = lambda ip: ["@ IN MX 10 mx", f"mx IN A {ip}", tlsa]  # noqa: E731
    children = {
        "rt": mx("127.0.0.21"),
        "nort": mx("127.0.0.22"),
        "mismatch": mx("127.0.0.23"),
        "plainrt": ["@ IN MX 10 mx", "mx IN A 127.0.0.21"],
    }
    dns = SignedKnot(d / "knot", children, unsigned={"plainrt"}).start()
    port = free_port_on(*HOSTS)
    receivers = [
        SmtpReceiver("127.0.0.21", port, tls_context=server_context(ee), requiretls=True),
        SmtpReceiver("127.0.0.22", port, tls_context=server_context(ee)),
        SmtpReceiver("127.0.0.23", port, tls_context=server_context(other), requiretls=True),
    ]
    for r in receivers:
        r.start()
    yield Lab(dns, port, *receivers)
    for r in receivers:
        r.stop()
    dns.stop()


def lab_server(make_server, lab, **overrides):
    return make_server(delivery_port=lab.port,
                       dns={"servers": [f"127.0.0.1:{lab.dns.port}"], "dnssec": True,
                            "trust_anchor": lab.dns.anchor_file}, **overrides)


@pytest.fixture
def rsrv(make_server, lab):
    return lab_server(make_server, lab)


def send(srv, rcpt: str, *, requiretls: bool = True, headers=(), ret: str | None = None,
         sender: str = SENDER) -> str:
    """One transaction on the relay port after STARTTLS (smtplib); returns the queue id."""
    msg = make_message(sender=sender, to=rcpt, subject="secret plans",
                       body="The body must not come back.\r\n", headers=headers)
    options = (["REQUIRETLS"] if requiretls else []) + ([f"RET={ret}"] if ret else [])
    with smtplib.SMTP("127.0.0.1", srv.port("relay"), timeout=10) as s:
        s.ehlo("client.test")
        assert s.starttls()[0] == 220
        s.ehlo("client.test")
        assert s.has_extn("requiretls")
        code, text = s.mail(sender, options)
        assert f"{code} {text.decode()}" == MAIL_OK
        assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(msg)
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[-1]


def dsn_for(receiver, rcpt: str, sender: str, timeout: float = 30):
    """The DSN (from <>) to ``sender`` that reports ``rcpt``, as ``receiver`` got it, and its
    received record."""
    def find():
        for m in receiver.received():
            if m.mail_from == "<>" and sender in m.rcpt_tos and rcpt.encode() in m.content:
                return m
        return None
    got = wait_until(find, timeout, f"a DSN about {rcpt}")
    return got, email.message_from_bytes(got.content, policy=email.policy.default)


def assert_bounce(lab, rcpt: str, status: str, text: str, *, receiver=None,
                  sender: str = SENDER):
    """The DSN about ``rcpt`` (at .21 unless ``receiver``): RFC 3464 fields exactly, only the
    header returned, sent with REQUIRETLS under TLS."""
    got, dsn = dsn_for(receiver or lab.rt, rcpt, sender)
    assert got.tls and "REQUIRETLS" in got.mail_options, got.mail_options
    assert dsn.get_content_type() == "multipart/report"
    parts = dsn.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    human = parts[0].get_content()
    assert text in human, human
    assert "only its header is attached" in human, human
    groups = parts[1].get_payload()
    assert groups[0]["Reporting-MTA"] == f"dns; {HOSTNAME}"
    per_rcpt = groups[1]
    assert per_rcpt["Final-Recipient"] == f"rfc822; {rcpt}"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == status
    returned = parts[2].get_payload()
    returned = returned if isinstance(returned, str) else str(returned)
    assert "Subject: secret plans" in returned
    assert b"The body must not come back" not in got.content


# --- the session -----------------------------------------------------------------------------

def test_requiretls_advertised_only_under_tls(server):
    """Exact EHLO replies: no REQUIRETLS on plaintext 25 and 587, REQUIRETLS last after
    STARTTLS on both and on 465."""
    relay = server.connect("relay")
    plain = relay.ehlo().lines
    size = plain[2]
    assert size.startswith("250-SIZE ")
    common = ["250-ENHANCEDSTATUSCODES", "250-8BITMIME", "250-SMTPUTF8", "250-CHUNKING"]
    assert plain == [f"250-{HOSTNAME}", "250-PIPELINING", size, "250-STARTTLS", *common,
                     "250 DSN"]
    assert relay.starttls() == TLS_GO
    assert relay.ehlo().lines == [f"250-{HOSTNAME}", "250-PIPELINING", size, *common,
                                  "250-DSN", "250 REQUIRETLS"]
    relay.close()

    sub = server.connect("submission")
    assert sub.ehlo().lines == [f"250-{HOSTNAME}", "250-PIPELINING", size, "250-STARTTLS",
                                *common, "250 DSN"]
    assert sub.starttls() == TLS_GO
    assert sub.ehlo().lines == [f"250-{HOSTNAME}", "250-PIPELINING", size,
                                "250-AUTH PLAIN LOGIN", *common, "250-DSN", "250 REQUIRETLS"]
    sub.close()

    implicit = server.connect("submissions")
    assert implicit.ehlo().lines == [f"250-{HOSTNAME}", "250-PIPELINING", size,
                                     "250-AUTH PLAIN LOGIN", *common, "250-DSN",
                                     "250 REQUIRETLS"]
    implicit.close()


def test_requiretls_parameter_refused_on_plaintext_accepted_under_tls(server):
    """Port 25 in plaintext: the exact 555 and the session goes on; after STARTTLS (and on
    465 after AUTH) the same MAIL is accepted."""
    relay = server.connect("relay")
    relay.ehlo()
    assert relay.cmd("MAIL FROM:<www@hosting.example> REQUIRETLS") == REFUSED
    assert relay.cmd("MAIL FROM:<www@hosting.example>") == MAIL_OK
    assert relay.cmd("RSET").code == 250
    assert relay.starttls() == TLS_GO
    relay.ehlo()
    assert relay.cmd("MAIL FROM:<www@hosting.example> REQUIRETLS") == MAIL_OK
    assert relay.cmd("MAIL FROM:<x@y.test>").code == 503    # one transaction at a time
    relay.close()

    alice = server.alice
    implicit = server.login(alice.address, alice.password, role="submissions")
    assert implicit.cmd(f"MAIL FROM:<{alice.address}> REQUIRETLS") == MAIL_OK
    implicit.close()


# --- delivery --------------------------------------------------------------------------------

def test_delivered_to_dane_host_that_advertises_requiretls(rsrv, lab):
    """DANE-authenticated host with REQUIRETLS: delivered, MAIL FROM carries REQUIRETLS."""
    send(rsrv, "d1@rt.lab")
    got = lab.rt.wait_for("d1@rt.lab")
    assert got.tls
    assert "REQUIRETLS" in got.mail_options, got.mail_options
    assert got.mail_from == SENDER


def test_hop_without_requiretls_bounces_5_7_30(rsrv, lab):
    """The DANE-valid host does not advertise REQUIRETLS: nothing is sent to it (no RCPT), the
    recipient bounces with 5.7.30; the same message without REQUIRETLS is delivered there."""
    send(rsrv, "n1@nort.lab", ret="FULL")
    assert_bounce(lab, "n1@nort.lab", "5.7.30", "does not support REQUIRETLS")
    assert not lab.nort.attempts_for("n1@nort.lab")
    send(rsrv, "n2@nort.lab", requiretls=False)
    got = lab.nort.wait_for("n2@nort.lab")
    assert "REQUIRETLS" not in got.mail_options


def test_domain_without_dane_or_mta_sts_bounces_5_7_10(rsrv, lab):
    """Unsigned zone, no MTA-STS: opportunistic TLS only, which REQUIRETLS does not accept,
    although the host would advertise REQUIRETLS."""
    send(rsrv, "p1@plainrt.lab")
    assert_bounce(lab, "p1@plainrt.lab", "5.7.10", "cannot be authenticated")
    assert not lab.saw("p1@plainrt.lab")


def test_certificate_not_matching_tlsa_bounces_5_7_10(rsrv, lab):
    """DANE applies and the certificate matches no TLSA record: 5.7.10 (for other messages
    this is a deferral, test_dane.py)."""
    send(rsrv, "m1@mismatch.lab")
    assert_bounce(lab, "m1@mismatch.lab", "5.7.10", "no TLSA record matches")
    assert not lab.mismatch.attempts_for("m1@mismatch.lab")


def test_tls_required_no_ignores_dane_failure(rsrv, lab):
    """`TLS-Required: No` (RFC 8689 section 3): the DANE mismatch no longer holds the message;
    it goes with opportunistic TLS and without REQUIRETLS."""
    send(rsrv, "t1@mismatch.lab", requiretls=False, headers=["TLS-Required: No"])
    got = lab.mismatch.wait_for("t1@mismatch.lab")
    assert got.tls and "REQUIRETLS" not in got.mail_options


def test_requiretls_survives_kill9_before_delivery(make_server, lab):
    """Accepted with delivery held, then `kill -9`: after the restart the flag is still there
    (REQUIRETLS on the MAIL FROM to .21, and a 5.7.30 bounce for the host without it)."""
    srv = lab_server(make_server, lab, delivery={"workers": 0})
    send(srv, "k1@rt.lab")
    send(srv, "k2@nort.lab")
    srv.kill9()
    srv.restart(delivery={"workers": None})
    got = lab.rt.wait_for("k1@rt.lab", timeout=30)
    assert "REQUIRETLS" in got.mail_options, got.mail_options
    assert_bounce(lab, "k2@nort.lab", "5.7.30", "does not support REQUIRETLS")
    assert not lab.nort.attempts_for("k2@nort.lab")


# --- [delivery] relayhost ----------------------------------------------------------------------

def test_relayhost_authenticated_by_dane_gets_requiretls(make_server, lab):
    """The relay host's own name has DNSSEC-secure addresses and TLSA records: DANE
    authenticates it, and the message goes there with REQUIRETLS."""
    srv = lab_server(make_server, lab, delivery={"relayhost": "mx.rt.lab"})
    send(srv, "r1@elsewhere.test")
    got = lab.rt.wait_for("r1@elsewhere.test")
    assert got.tls and "REQUIRETLS" in got.mail_options, got.mail_options


def test_relayhost_without_authentication_bounces_5_7_10(make_server, lab):
    """A relay host in an unsigned zone whose certificate no WebPKI root vouches for: the
    REQUIRETLS message is bounced (5.7.10, in the delivery log: the DSN to SENDER takes the
    same relay and fails too), never sent; a message without REQUIRETLS is delivered."""
    srv = lab_server(make_server, lab, delivery={"relayhost": "mx.plainrt.lab"})
    send(srv, "r2@elsewhere.test")
    row = wait_until(lambda: next((r for r in delivery_log(srv, "r2@elsewhere.test")
                                   if r["state"] == "bounced"), None), 30, "a bounce of r2")
    assert row["dsn"] == "5.7.10", row
    assert "REQUIRETLS" in row["reply"], row
    assert not lab.rt.attempts_for("r2@elsewhere.test")
    send(srv, "r3@elsewhere.test", requiretls=False)
    got = lab.rt.wait_for("r3@elsewhere.test")
    assert "REQUIRETLS" not in got.mail_options


# --- MTA-STS ---------------------------------------------------------------------------------
# An unsigned DNS (no DANE anywhere), policies over HTTPS, receivers with certificates from the
# test CA on .31 (right names, REQUIRETLS) and .32 (another name, REQUIRETLS).
STS_MX, STS_WRONG, STS_POLICY = "127.0.0.31", "127.0.0.32", "127.0.0.33"
STS_SENDER = "s@sts.test"
STS_POLICIES = {
    "sts.test": "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n",
    "ststesting.test": "version: STSv1\nmode: testing\nmx: mx.ststesting.test\nmax_age: 86400\n",
    "stsbad.test": "version: STSv1\nmode: testing\nmx: mx.stsbad.test\nmax_age: 86400\n",
    "stsnomx.test": "version: STSv1\nmode: enforce\nmx: mail.elsewhere.test\nmax_age: 86400\n",
}
STS_MX_OF = {"sts.test": STS_MX, "ststesting.test": STS_MX, "stsbad.test": STS_WRONG,
             "stsnomx.test": STS_MX}


@pytest.fixture(scope="module")
def sts_lab(tmp_path_factory):
    from test_mta_sts import LabCa, PolicyServer
    from test_mta_sts import server_context as pem_context
    d = tmp_path_factory.mktemp("requiretls-sts")
    ca = LabCa(d / "ca")
    policy_cert = ca.issue("policy", [f"mta-sts.{dom}" for dom in STS_MX_OF])
    good = ca.issue("good", ["mx.sts.test", "mx.ststesting.test", "mx.stsnomx.test"])
    wrong = ca.issue("wrong", ["somewhere.else.test"])
    zones = {f"{dom}.": [f"@ IN MX 10 mx.{dom}.", f"mx IN A {ip}",
                         '_mta-sts IN TXT "v=STSv1; id=20261203;"', f"mta-sts IN A {STS_POLICY}"]
             for dom, ip in STS_MX_OF.items()}
    knot = Knot(d / "knot", zones)
    knot.start()
    https_port = free_port(STS_POLICY)
    policy = PolicyServer(pem_context(*policy_cert), https_port, ip=STS_POLICY,
                          policies=STS_POLICIES).start()
    port = free_port_on(STS_MX, STS_WRONG)
    good_rx = SmtpReceiver(STS_MX, port, tls_context=pem_context(*good), requiretls=True).start()
    wrong_rx = SmtpReceiver(STS_WRONG, port, tls_context=pem_context(*wrong),
                            requiretls=True).start()
    yield {"ca": ca, "knot": knot, "https_port": https_port, "port": port, "good": good_rx,
           "wrong": wrong_rx}
    good_rx.stop()
    wrong_rx.stop()
    policy.stop()
    knot.stop()


@pytest.fixture(scope="module")
def sts_srv(sts_lab, tmp_path_factory, postern_bin):
    from conftest import start_with_accounts
    from support import Postern
    pt = Postern(postern_bin, tmp_path_factory.mktemp("postern-requiretls-sts"), cert=None,
                 dns_port=sts_lab["knot"].port, delivery_port=sts_lab["port"],
                 overrides={"mta_sts": {"port": sts_lab["https_port"],
                                        "roots": str(sts_lab["ca"].cert)},
                            "delivery": {"retry_initial": "1s", "retry_max": "1s"}})
    server = start_with_accounts(pt)
    yield server
    pt.stop()


def test_mta_sts_enforce_host_with_webpki_gets_requiretls(sts_srv, sts_lab):
    send(sts_srv, "a@sts.test", sender=STS_SENDER)
    got = sts_lab["good"].wait_for("a@sts.test")
    assert got.tls and "REQUIRETLS" in got.mail_options, got.mail_options


def test_mta_sts_testing_counts_as_enforce(sts_srv, sts_lab):
    """RFC 8689 4.2.1: a `testing` policy is applied as `enforce` to a REQUIRETLS message:
    the valid certificate delivers; the wrong-name one bounces 5.7.10 (a message without
    REQUIRETLS goes there opportunistically, as `testing` wants)."""
    send(sts_srv, "b@ststesting.test", sender=STS_SENDER)
    got = sts_lab["good"].wait_for("b@ststesting.test")
    assert "REQUIRETLS" in got.mail_options, got.mail_options
    send(sts_srv, "c@stsbad.test", sender=STS_SENDER)
    assert_bounce(None, "c@stsbad.test", "5.7.10", "no authenticated TLS",
                  receiver=sts_lab["good"], sender=STS_SENDER)
    assert not sts_lab["wrong"].attempts_for("c@stsbad.test")
    send(sts_srv, "d@stsbad.test", sender=STS_SENDER, requiretls=False)
    got = sts_lab["wrong"].wait_for("d@stsbad.test")
    assert "REQUIRETLS" not in got.mail_options


def test_mta_sts_policy_not_listing_the_mx_bounces_5_7_10(sts_srv, sts_lab):
    send(sts_srv, "e@stsnomx.test", sender=STS_SENDER)
    assert_bounce(None, "e@stsnomx.test", "5.7.10", "not allowed by the MTA-STS policy",
                  receiver=sts_lab["good"], sender=STS_SENDER)
    assert not sts_lab["good"].attempts_for("e@stsnomx.test")
