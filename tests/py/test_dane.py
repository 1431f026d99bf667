"""DANE (RFC 7672) against a DNSSEC lab made at test start (dnssec_lab.py): zones signed by
knotd on loopback, Postern validating from the lab's own trust anchor, aiosmtpd receivers on
127.0.0.11-15 with certificates made here. Every case asserts the `postern log` line.

Receivers (one port, the [delivery] port):
  .11  STARTTLS, self-signed "mx.ee.lab" (the DANE-EE certificate)
  .12  no STARTTLS
  .13  STARTTLS, self-signed "other.lab" (matches no TLSA record)
  .14  STARTTLS, lab CA -> "mx.ta.lab" (DANE-TA, right name)
  .15  STARTTLS, lab CA -> "wrong.example" (DANE-TA, wrong name)
"""

from __future__ import annotations

import dataclasses

import pytest

from dnssec_lab import LabCa, SignedKnot, self_signed, server_context, tlsa_digest
from support import SmtpReceiver, free_port_on, run, submit_as_alice, wait_until

COLUMNS = ("time", "replica", "queue_id", "sender", "recipient", "peer", "tls", "state", "dsn",
           "reply")
HOSTS = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14", "127.0.0.15"]


@dataclasses.dataclass
class Lab:
    dns: SignedKnot
    port: int
    ee: SmtpReceiver
    plain: SmtpReceiver
    other: SmtpReceiver
    ta: SmtpReceiver
    ta_wrong: SmtpReceiver
    ee_records: list[str]           # the records of ee.lab (MX to .11, its TLSA 3 1 1)

    def receivers(self):
        return [self.ee, self.plain, self.other, self.ta, self.ta_wrong]

    def saw(self, address: str) -> bool:
        """Whether any receiver got a RCPT or message for ``address``."""
        return any(r.attempts_for(address) or any(address in m.rcpt_tos for m in r.received())
                   for r in self.receivers())


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    d = tmp_path_factory.mktemp("dane-lab")
    ee = self_signed(d / "certs", "mx.ee.lab")
    other = self_signed(d / "certs", "other.lab")
    ca = LabCa(d / "ca")
    ta_ok, ta_wrong = ca.issue("mx.ta.lab"), ca.issue("wrong.example")
    ee_311 = f"_25._tcp.mx IN TLSA 3 1 1 {tlsa_digest(ee.cert)}"
    ca_211 = f"_25._tcp.mx IN TLSA 2 1 1 {tlsa_digest(ca.cert)}"
    mx = lambda ip: ["@ IN MX 10 mx", f"mx IN A {ip}"]  # noqa: E731
    children = {
        "ee": mx("127.0.0.11") + [ee_311],
        "mismatch": mx("127.0.0.13") + [ee_311],
        "notls": mx("127.0.0.12") + [ee_311],
        "twomx": ["@ IN MX 10 mx1", "@ IN MX 20 mx2", "mx1 IN A 127.0.0.13",
                  "mx2 IN A 127.0.0.11",
                  f"_25._tcp.mx1 IN TLSA 3 1 1 {tlsa_digest(ee.cert)}",
                  f"_25._tcp.mx2 IN TLSA 3 1 1 {tlsa_digest(ee.cert)}"],
        "bogus": mx("127.0.0.11") + [ee_311],
        "bogustlsa": mx("127.0.0.11"),
        "_tcp.mx.bogustlsa": [f"_25 IN TLSA 3 1 1 {tlsa_digest(ee.cert)}"],
        "ta": mx("127.0.0.14") + [ca_211],
        "tawrong": mx("127.0.0.15") + [ca_211],
        "pkix": mx("127.0.0.13") + [f"_25._tcp.mx IN TLSA 1 1 1 {tlsa_digest(ee.cert)}"],
        "insecure": mx("127.0.0.13") + [ee_311],
        "insecureplain": mx("127.0.0.12"),
        # No MX: the securely denied MX RRset makes the domain itself the implicit MX, and
        # DANE applies to it (RFC 7672 2.2.1).
        "implicit": ["@ IN A 127.0.0.11", f"_25._tcp IN TLSA 3 1 1 {tlsa_digest(ee.cert)}"],
        "implicitbad": ["@ IN A 127.0.0.13", f"_25._tcp IN TLSA 3 1 1 {tlsa_digest(ee.cert)}"],
        # Row 5: the MX host's addresses are in the bogus zone.
        "bogushost": ["@ IN MX 10 mx.bogus.lab."],
        # Row 6: secure MX RRset, host in the unsigned zone (whose TLSA would not match).
        "insecurehost": ["@ IN MX 10 mx.insecure.lab."],
        # Row 7: the MX host is a secure CNAME to mx.ee.lab, whose TLSA record matches.
        "cname": ["@ IN MX 10 mx", "mx IN CNAME mx.ee.lab."],
        # Row 9: signed zone, no TLSA record for the host.
        "notlsa": mx("127.0.0.13"),
    }
    dns = SignedKnot(d / "knot", children, unsigned={"insecure", "insecureplain"},
                     bogus_ds={"bogus", "_tcp.mx.bogustlsa"}).start()
    port = free_port_on(*HOSTS)
    receivers = [
        SmtpReceiver("127.0.0.11", port, tls_context=server_context(ee)),
        SmtpReceiver("127.0.0.12", port),
        SmtpReceiver("127.0.0.13", port, tls_context=server_context(other)),
        SmtpReceiver("127.0.0.14", port, tls_context=server_context(ta_ok)),
        SmtpReceiver("127.0.0.15", port, tls_context=server_context(ta_wrong)),
    ]
    for r in receivers:
        r.start()
    yield Lab(dns, port, *receivers, ee_records=children["ee"])
    for r in receivers:
        r.stop()
    dns.stop()


@pytest.fixture
def dsrv(make_server, lab):
    """A server validating from the lab's trust anchor, delivering to the lab receivers."""
    return make_server(delivery_port=lab.port,
                       dns={"servers": [f"127.0.0.1:{lab.dns.port}"], "dnssec": True,
                            "trust_anchor": lab.dns.anchor_file})


def log_rows(srv, address) -> list[dict]:
    out = srv.cli("log", address).stdout
    return [dict(zip(COLUMNS, line.split(None, len(COLUMNS) - 1))) for line in out.splitlines()]


def first_row(srv, address, timeout=20) -> dict:
    return wait_until(lambda: (rows := log_rows(srv, address)) and rows[-1], timeout,
                      f"a delivery log row for {address}")


def assert_deferred_dane(srv, lab, rcpt, reply_part, reason=None):
    row = first_row(srv, rcpt)
    assert (row["tls"], row["state"]) == ("dane", "deferred"), row
    assert reply_part in row["reply"], row
    assert row["dsn"].startswith("4."), row
    assert not lab.saw(rcpt), "the receiver saw the transaction although DANE failed"
    if reason:
        assert srv.metric(f'postern_delivery_dane_failures_total{{reason="{reason}"}}'), reason


def test_lab_answers_are_signed(lab):
    """The lab is what the cases assume: signed answers, a trust anchor file of DNSKEYs."""
    assert lab.dns.query("_25._tcp.mx.ee.lab", "TLSA")
    assert "DNSKEY" in lab.dns.anchor_file.read_text()
    r = run(["kdig", "@127.0.0.1", "-p", str(lab.dns.port), "+dnssec", "MX", "ee.lab"])
    assert "RRSIG" in r.stdout


def test_dane_ee_match_delivers_with_mode_dane(dsrv, lab):
    """3 1 1 matching the receiver's key: delivered, logged `dane` with version and cipher."""
    submit_as_alice(dsrv, "ee1@ee.lab")
    got = lab.ee.wait_for("ee1@ee.lab")
    assert got.tls
    row = first_row(dsrv, "ee1@ee.lab")
    mode, version, _cipher = row["tls"].split("/")
    assert (mode, row["state"]) == ("dane", "delivered"), row
    assert version.startswith("TLSv1."), row
    assert row["peer"] == "mx.ee.lab[127.0.0.11]", row


def test_tlsa_mismatch_defers_and_sends_nothing(dsrv, lab):
    submit_as_alice(dsrv, "mm1@mismatch.lab")
    assert_deferred_dane(dsrv, lab, "mm1@mismatch.lab", "no TLSA record matches",
                         "tlsa_mismatch")
    assert not lab.other.received()


def test_no_starttls_under_dane_defers(dsrv, lab):
    submit_as_alice(dsrv, "nt1@notls.lab")
    assert_deferred_dane(dsrv, lab, "nt1@notls.lab", "STARTTLS not offered",
                         "starttls_not_offered")


def test_first_mx_fails_dane_second_delivers(dsrv, lab):
    submit_as_alice(dsrv, "two1@twomx.lab")
    lab.ee.wait_for("two1@twomx.lab")
    row = first_row(dsrv, "two1@twomx.lab")
    assert row["tls"].startswith("dane/") and row["state"] == "delivered", row
    assert row["peer"] == "mx2.twomx.lab[127.0.0.11]", row
    assert not lab.other.attempts_for("two1@twomx.lab")
    assert dsrv.metric('postern_delivery_dane_failures_total{reason="tlsa_mismatch"}')


def test_bogus_mx_defers(dsrv, lab):
    submit_as_alice(dsrv, "bg1@bogus.lab")
    row = first_row(dsrv, "bg1@bogus.lab")
    assert (row["tls"], row["state"]) == ("-", "deferred"), row
    assert "bogus" in row["reply"] and row["dsn"] == "4.7.5", row
    assert not lab.saw("bg1@bogus.lab")
    assert dsrv.metric('postern_delivery_dane_failures_total{reason="bogus_mx"}')


def test_bogus_tlsa_defers(dsrv, lab):
    submit_as_alice(dsrv, "bt1@bogustlsa.lab")
    assert_deferred_dane(dsrv, lab, "bt1@bogustlsa.lab", "bogus", "bogus_tlsa")


def test_dane_ta_chain_and_name_deliver(dsrv, lab):
    submit_as_alice(dsrv, "ta1@ta.lab")
    lab.ta.wait_for("ta1@ta.lab")
    row = first_row(dsrv, "ta1@ta.lab")
    assert row["tls"].startswith("dane/") and row["state"] == "delivered", row


def test_dane_ta_wrong_name_defers(dsrv, lab):
    submit_as_alice(dsrv, "tw1@tawrong.lab")
    assert_deferred_dane(dsrv, lab, "tw1@tawrong.lab", "names none of", "name_mismatch")


def test_only_unusable_tlsa_means_mandatory_unauthenticated_tls(dsrv, lab):
    """PKIX-EE(1) is unusable for SMTP: TLS without authentication, logged opportunistic."""
    submit_as_alice(dsrv, "px1@pkix.lab")
    got = lab.other.wait_for("px1@pkix.lab")
    assert got.tls
    row = first_row(dsrv, "px1@pkix.lab")
    assert row["tls"].startswith("opportunistic/") and row["state"] == "delivered", row


def test_insecure_zone_is_opportunistic(dsrv, lab):
    """An unsigned zone (no DS): its TLSA record is ignored, STARTTLS without checks."""
    submit_as_alice(dsrv, "in1@insecure.lab")
    assert lab.other.wait_for("in1@insecure.lab").tls
    row = first_row(dsrv, "in1@insecure.lab")
    assert row["tls"].startswith("opportunistic/") and row["state"] == "delivered", row


def test_insecure_zone_without_starttls_is_cleartext(dsrv, lab):
    submit_as_alice(dsrv, "ip1@insecureplain.lab")
    assert not lab.plain.wait_for("ip1@insecureplain.lab").tls
    row = first_row(dsrv, "ip1@insecureplain.lab")
    assert (row["tls"], row["state"]) == ("plaintext", "delivered"), row


def test_dnssec_off_means_no_dane(make_server, lab):
    """`dnssec = false`: every answer insecure, so the mismatching TLSA record is not used."""
    srv = make_server(delivery_port=lab.port,
                      dns={"servers": [f"127.0.0.1:{lab.dns.port}"], "dnssec": False})
    submit_as_alice(srv, "off1@mismatch.lab")
    assert lab.other.wait_for("off1@mismatch.lab").tls
    row = first_row(srv, "off1@mismatch.lab")
    assert row["tls"].startswith("opportunistic/") and row["state"] == "delivered", row


@pytest.mark.parametrize("dns,word", [
    ({"dnssec": "yes"}, "dns.dnssec"),
    ({"trust_anchor": "/nonexistent/anchor.keys"}, "dns.trust_anchor"),
])
def test_bad_dns_config_exit_2(make_postern, dns, word):
    pt = make_postern()
    pt.write_config(dns=dns)
    r = run([pt.binary, "--config", pt.config_path, "address", "list"], timeout=15)
    assert r.returncode == 2 and word in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
        r.stderr


def test_ds_trust_anchor_delivers_with_mode_dane(make_server, lab):
    """The trust anchor file holds lab.'s DS lines only: Postern fetches lab.'s DNSKEY RRset,
    takes the key the DS names as the anchor, and DANE-EE works as with the DNSKEY file."""
    text = lab.dns.ds_file.read_text()
    assert " DS " in text and "DNSKEY" not in text, text
    srv = make_server(delivery_port=lab.port,
                      dns={"servers": [f"127.0.0.1:{lab.dns.port}"], "dnssec": True,
                           "trust_anchor": lab.dns.ds_file})
    submit_as_alice(srv, "ds1@ee.lab")
    assert lab.ee.wait_for("ds1@ee.lab").tls
    row = first_row(srv, "ds1@ee.lab")
    assert row["tls"].startswith("dane/") and row["state"] == "delivered", row
    # Validation is on: a bogus zone is still refused.
    submit_as_alice(srv, "ds2@bogus.lab")
    row = first_row(srv, "ds2@bogus.lab")
    assert row["state"] == "deferred" and "bogus" in row["reply"], row
    assert not lab.saw("ds2@bogus.lab")


@pytest.mark.parametrize("anchor", ["ds", "ksk"])
def test_split_key_zone_anchored_by_its_ksk_only(make_server, lab, tmp_path, anchor):
    """lab. signed with a KSK (signing only the DNSKEY RRset) and a ZSK (the rest), knot's
    default, and a trust anchor naming only the KSK: its DS lines, or its DNSKEY line alone.
    Postern verifies the DNSKEY RRset's RRSIG by the KSK when it builds its resolver and
    anchors both keys, so DANE-EE to ee.lab is delivered in mode dane (before: every answer
    bogus, every delivery deferred)."""
    split = SignedKnot(tmp_path / "split", {"ee": lab.ee_records}, split_keys=True).start()
    try:
        assert len(split.query("lab.", "DNSKEY")) == 2, "a KSK and a ZSK"
        files = {"ds": split.ds_file, "ksk": split.ksk_file}
        text = files[anchor].read_text()
        tags = {line.split()[-4] for line in text.splitlines() if " DS " in line}
        assert (len(tags) == 1) if anchor == "ds" else text.count("DNSKEY") == 1, text
        srv = make_server(delivery_port=lab.port,
                          dns={"servers": [f"127.0.0.1:{split.port}"], "dnssec": True,
                               "trust_anchor": files[anchor]})
        rcpt = f"split-{anchor}@ee.lab"
        submit_as_alice(srv, rcpt)
        assert lab.ee.wait_for(rcpt).tls
        row = first_row(srv, rcpt)
        assert row["tls"].startswith("dane/") and row["state"] == "delivered", row
    finally:
        split.stop()


def test_ds_matching_no_key_defers_everything(make_server, lab, tmp_path):
    """A DS naming no key of lab. (the real key tag, a wrong digest): fail-closed, no resolver,
    every delivery deferred, an error in the log naming the anchor file."""
    tag = lab.dns.ds_file.read_text().split()[2]
    anchor = tmp_path / "wrong.ds"
    anchor.write_text(f"lab. DS {tag} 15 2 " + "00" * 32 + "\n")
    srv = make_server(delivery_port=lab.port,
                      dns={"servers": [f"127.0.0.1:{lab.dns.port}"], "dnssec": True,
                           "trust_anchor": anchor})
    for rcpt in ("wd1@ee.lab", "wd2@insecureplain.lab"):
        submit_as_alice(srv, rcpt)
        row = first_row(srv, rcpt)
        assert row["state"] == "deferred" and row["dsn"].startswith("4."), row
        assert not lab.saw(rcpt)
    log = srv.log_text()
    assert "dns.trust_anchor" in log and str(anchor) in log and "lab." in log, srv.log_tail()


@pytest.mark.parametrize("line", [
    "lab. DS 4711 15 1 " + "00" * 20,     # SHA-1 is refused
    "lab. DS 4711 15 2 " + "00" * 31,     # wrong digest length
    "lab. DS 4711 15 2",                  # no digest
])
def test_bad_ds_trust_anchor_exit_2(make_postern, tmp_path, line):
    anchor = tmp_path / "ds.keys"
    anchor.write_text(line + "\n")
    pt = make_postern()
    pt.write_config(dns={"trust_anchor": anchor})
    r = run([pt.binary, "--config", pt.config_path, "address", "list"], timeout=15)
    assert r.returncode == 2 and "dns.trust_anchor" in r.stderr and "DS" in r.stderr, r.stderr


def test_implicit_mx_with_secure_denial_gets_dane(dsrv, lab):
    """A domain without MX records whose denial is signed: its own TLSA record applies."""
    submit_as_alice(dsrv, "i1@implicit.lab")
    lab.ee.wait_for("i1@implicit.lab")
    row = first_row(dsrv, "i1@implicit.lab")
    assert row["state"] == "delivered" and row["tls"].startswith("dane/"), row
    assert row["peer"] == "implicit.lab[127.0.0.11]", row


def test_implicit_mx_tlsa_mismatch_defers(dsrv, lab):
    """The same with a certificate matching no TLSA record: deferred, never cleartext."""
    submit_as_alice(dsrv, "i2@implicitbad.lab")
    assert_deferred_dane(dsrv, lab, "i2@implicitbad.lab", "TLS required by DANE")


def test_bogus_host_addresses_skip_the_host(dsrv, lab):
    """Decision table row 5: the only MX host's A lookup is bogus: deferred, nothing sent."""
    submit_as_alice(dsrv, "bh1@bogushost.lab")
    row = first_row(dsrv, "bh1@bogushost.lab")
    assert row["state"] == "deferred" and row["dsn"].startswith("4."), row
    assert "bogus" in row["reply"], row
    assert not lab.saw("bh1@bogushost.lab")


def test_insecure_host_under_secure_mx_is_opportunistic(dsrv, lab):
    """Row 6: secure MX, host addresses insecure: no TLSA lookup (the unsigned zone's
    mismatching record is ignored), opportunistic TLS."""
    submit_as_alice(dsrv, "ih1@insecurehost.lab")
    assert lab.other.wait_for("ih1@insecurehost.lab").tls
    row = first_row(dsrv, "ih1@insecurehost.lab")
    assert row["tls"].startswith("opportunistic/") and row["state"] == "delivered", row


def test_secure_cname_uses_the_expanded_names_tlsa(dsrv, lab):
    """Row 7: the MX host is a secure CNAME; the TLSA record of the expanded name applies."""
    submit_as_alice(dsrv, "cn1@cname.lab")
    lab.ee.wait_for("cn1@cname.lab")
    row = first_row(dsrv, "cn1@cname.lab")
    assert row["tls"].startswith("dane/") and row["state"] == "delivered", row


def test_secure_zone_without_tlsa_is_opportunistic(dsrv, lab):
    """Row 9: secure MX and addresses, TLSA denied: no DANE for the host, opportunistic TLS."""
    submit_as_alice(dsrv, "nx1@notlsa.lab")
    assert lab.other.wait_for("nx1@notlsa.lab").tls
    row = first_row(dsrv, "nx1@notlsa.lab")
    assert row["tls"].startswith("opportunistic/") and row["state"] == "delivered", row
