"""DKIM signing (issue 4): signatures checked by two independent verifiers, mail-auth's (through
`postern dkim verify`) and dkimpy's, both reading the public keys over the wire from a knotd on
loopback whose zones hold the record lines `postern dkim generate`/`import` printed, pasted as
they are. Messages go in through 587/465/25 and are taken at the receiving MX (an aiosmtpd
server) as Postern delivered them.

One Postern, one knotd and one receiver serve the whole module; each test uses its own From
domain, so the keys of one never sign another's messages:

* rsa.test     RSA key r1 (active)
* dual.test    RSA key r1 and Ed25519 key e1 (both active): two signatures
* rotate.test  RSA key s1 (active); the rotation test adds s2
* import.test  keys imported from openssl's PEM files by the import test
* nokey.test   no key: relayed unsigned
* cli.test     the CLI tests' keys, in stores of their own (the zone serves their records)
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import stat
import subprocess
import time
import uuid
from email.utils import formatdate
from pathlib import Path

import dkim
import dns.resolver
import pytest

from support import (AUTH_OK, EHLO_FIRST, HOSTNAME, MAIL_OK, RCPT_OK, ZONES, Account, Knot, Postern,
                     SmtpReceiver, free_port, header_values, last_line, make_message, queue_id,
                     run, sized_message, wait_until)

RSA, DUAL, ROTATE, IMPORT, NOKEY = "rsa.test", "dual.test", "rotate.test", "import.test", \
    "nokey.test"
CLI = "cli.test"                 # the CLI tests' domain (their own store; zone for the paste check)
KEY_DOMAINS = (RSA, DUAL, ROTATE, IMPORT, CLI)
SIGNED_HEADERS = {h.lower() for h in (
    "From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "In-Reply-To", "References",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "List-Unsubscribe",
    "List-Unsubscribe-Post")}
# What a private key looks like in text: PEM armour, or the base64 start of a PKCS#8 RSA
# (SEQUENCE, INTEGER 0, rsaEncryption), PKCS#1 RSA or PKCS#8 Ed25519 (v1, v2) DER encoding.
PRIVATE_KEY_RE = re.compile(r"PRIVATE|BEGIN|MII[A-Za-z0-9+/]{3}IBADAN|MII[A-Za-z0-9+/]{3}IBAAK|"
                            r"MC4CAQAwBQYDK2Vw|MFECAQEwBQYDK2Vw")
RECORD_RE = re.compile(r'^(?P<name>[a-z0-9.-]+\._domainkey\.[a-z0-9.-]+\.) IN TXT '
                       r'(?P<strings>"[^"]*"(?: "[^"]*")*)$')


# ---------------------------------------------------------------------------------------------
# The module's server, DNS and receiving MX
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Dkim:
    pt: Postern
    knot: Knot
    mx: SmtpReceiver               # plain.test's MX (127.0.0.3), where every test's mail lands
    alice: Account                 # alice@rsa.test, aliases alice@<every other domain>
    dir: Path

    def publish(self, record_line: str):
        """Pastes a printed record line into its domain's zone and has knotd serve it."""
        name = RECORD_RE.match(record_line).group("name")
        zone = next(f"{d}." for d in KEY_DOMAINS if name.endswith(f"._domainkey.{d}."))
        self.knot.zones[zone].append(record_line)
        self.knot.reload()


@pytest.fixture(scope="module")
def dk(postern_bin, certs, tmp_path_factory) -> Dkim:
    base = tmp_path_factory.mktemp("dkim")
    zones = {zone: list(records) for zone, records in ZONES.items()}
    zones.update({f"{d}.": [] for d in KEY_DOMAINS})
    knot = Knot(base / "knot", zones)
    mx_port = free_port("127.0.0.3")
    mx = SmtpReceiver("127.0.0.3", mx_port).start()
    pt = Postern(postern_bin, base / "postern", cert=certs.server, dns_port=knot.port,
                 delivery_port=mx_port)
    try:
        # The CLI needs only the config and the store: make the keys, paste their records into
        # the zones, then start knotd (it writes the zone files at start) and the server.
        for domain, selector, algorithm in ((RSA, "r1", "rsa"), (DUAL, "r1", "rsa"),
                                            (DUAL, "e1", "ed25519"), (ROTATE, "s1", "rsa")):
            out = pt.cli("dkim", "generate", domain, "--selector", selector,
                         "--algorithm", algorithm, "--activate").stdout
            zones[f"{domain}."].append(last_line(out))
        knot.start()
        alice = pt.add_account(f"alice@{RSA}", "laptop")
        for domain in (DUAL, ROTATE, IMPORT, NOKEY):
            pt.add_alias(f"alice@{domain}", alice.address)
        pt.start()
        yield Dkim(pt, knot, mx, alice, base)
    finally:
        pt.stop()
        knot.stop()
        mx.stop()


@pytest.fixture
def d(dk, request) -> Dkim:
    """The module's context; the server's log tail is attached to a failing test's report."""
    request.node.posterns = [dk.pt]
    return dk


def fresh_rcpt(tag: str = "r") -> str:
    """A recipient no other test uses, at plain.test (the module's MX)."""
    return f"{tag}-{uuid.uuid4().hex[:10]}@plain.test"


def send(d: Dkim, sender: str, *, role: str = "submission", rcpt: str | None = None,
         message: bytes | None = None, **make_kw) -> tuple[str, bytes]:
    """Submits one message from ``sender`` (an address of alice's) to ``rcpt`` (a fresh one by
    default) on ``role`` (587 and 465 authenticated, 25 from a relay network), made by
    ``make_message(**make_kw)`` unless given; returns the queue ID and the message as the
    receiving MX got it."""
    rcpt = rcpt or fresh_rcpt()
    if role == "relay":
        client = d.pt.connect("relay")
        assert client.ehlo().lines[0] == EHLO_FIRST
    else:
        client = d.pt.login(d.alice.address, d.alice.password, role=role)
    msg = message or make_message(sender=sender, to=rcpt, **make_kw)
    qid = client.transaction(sender, [rcpt], msg)
    client.quit()
    got = d.mx.wait_for(rcpt, timeout=30)
    assert got.mail_from == sender and got.rcpt_tos == [rcpt]
    return qid, got.content


def raw_message(sender: str, to: str, head: list[str], body: bytes | None) -> bytes:
    """From, To, Message-ID, Date, then ``head``; the body after an empty line (None: no
    empty line and no body, a message of header fields alone)."""
    fields = [f"From: <{sender}>", f"To: <{to}>", f"Message-ID: <{uuid.uuid4().hex}@client.test>",
              f"Date: {formatdate()}", *head]
    message = "".join(f"{f}\r\n" for f in fields).encode()
    return message if body is None else message + b"\r\n" + body


def send_raw(d: Dkim, sender: str, head: list[str], body: bytes | None) -> bytes:
    """Sends ``raw_message(...)``; returns it as delivered, asserted unchanged but for the
    fields Postern put in front."""
    rcpt = fresh_rcpt("raw")
    message = raw_message(sender, rcpt, head, body)
    _, got = send(d, sender, rcpt=rcpt, message=message)
    assert got.endswith(message), "the message was changed beyond the added fields"
    return got


# ---------------------------------------------------------------------------------------------
# The two verifiers
# ---------------------------------------------------------------------------------------------
def mail_auth_verify(d: Dkim, message: bytes) -> tuple[int, list[str]]:
    """`postern dkim verify FILE` (mail-auth, keys from the config's [dns] servers: the test
    knotd): its exit status and output lines."""
    path = d.dir / f"verify-{uuid.uuid4().hex}.eml"
    path.write_bytes(message)
    try:
        r = d.pt.cli("dkim", "verify", path, check=False)
    finally:
        path.unlink()
    assert r.returncode in (0, 1), (r.returncode, r.stdout, r.stderr)
    assert r.stderr == ("" if r.returncode == 0 else "postern: DKIM verification failed\n"), \
        r.stderr
    return r.returncode, r.stdout.splitlines()


def knot_txt(port: int):
    """A dkimpy ``dnsfunc``: the TXT record of a name, asked of the test knotd over the wire
    with dnspython, its character-strings joined (None when there is none)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(next(iter(answer)).strings)

    return dnsfunc


def dkimpy_verify(d: Dkim, message: bytes) -> list[bool]:
    """dkimpy's verdict on each DKIM-Signature field, topmost first. ``dkim.verify`` checks
    the topmost one only; the others are checked the same way through ``DKIM.verify(idx)``."""
    dnsfunc = knot_txt(d.knot.port)
    count = len(header_values(message, "DKIM-Signature"))
    results = [dkim.verify(message, dnsfunc=dnsfunc)] if count else []
    for idx in range(1, count):
        try:
            results.append(dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc))
        except dkim.DKIMException:
            results.append(False)
    return results


def signatures(message: bytes) -> list[dict[str, str]]:
    """The tags of every DKIM-Signature field, topmost first (all whitespace removed)."""
    out = []
    for value in header_values(message, "DKIM-Signature"):
        tags = [t for t in re.sub(r"\s+", "", value).split(";") if t]
        out.append(dict(t.split("=", 1) for t in tags))
    return out


def assert_verifies(d: Dkim, message: bytes, *expected: tuple[str, str, str]):
    """The message carries exactly the signatures ``expected`` ((a, d, s) each, in any order:
    the order of a dual signature is not specified) and both verifiers pass every one."""
    sigs = signatures(message)
    assert sorted((s["a"], s["d"], s["s"]) for s in sigs) == sorted(expected), sigs
    status, lines = mail_auth_verify(d, message)
    assert sorted(lines) == sorted(f"pass d={dom} s={sel} a={alg}" for alg, dom, sel in expected)
    assert status == 0
    assert dkimpy_verify(d, message) == [True] * len(expected)


def assert_fails(d: Dkim, message: bytes, count: int):
    """Each of the ``count`` signatures fails in both verifiers; the verify command exits 1."""
    status, lines = mail_auth_verify(d, message)
    assert status == 1
    assert len(lines) == count and not any(l.startswith("pass") for l in lines), lines
    assert all(re.match(r"^(fail|neutral)\(.*\) d=\S+ s=\S+ a=\S+$", l) for l in lines), lines
    assert dkimpy_verify(d, message) == [False] * count


# ---------------------------------------------------------------------------------------------
# Signing and verification
# ---------------------------------------------------------------------------------------------
def test_published_records_answer_over_the_wire(d):
    """The record lines printed by `dkim generate`, pasted into knot's zones unchanged, are
    served: each TXT answer's strings join to the key's `txt` of `dkim list --json`."""
    keys = json.loads(d.pt.cli("dkim", "list", "--json").stdout)
    assert {(k["domain"], k["selector"]) for k in keys} >= {
        (RSA, "r1"), (DUAL, "r1"), (DUAL, "e1"), (ROTATE, "s1")}
    dnsfunc = knot_txt(d.knot.port)
    for key in keys:
        answer = d.knot.query(key["record"], "TXT")            # kdig +short
        assert len(answer) == 1, answer
        assert "".join(re.findall(r'"([^"]*)"', answer[0])) == key["txt"]
        assert dnsfunc(key["record"].encode()) == key["txt"].encode()


@pytest.mark.parametrize("role", ["submission", "submissions", "relay"])
def test_signed_message_verifies_in_both_verifiers(d, role):
    """A message from rsa.test, accepted on 587 (STARTTLS + AUTH), 465 or 25 (relay network),
    arrives with one rsa-sha256 signature that mail-auth and dkimpy both pass."""
    sender = f"alice@{RSA}" if role != "relay" else f"www@{RSA}"
    _, got = send(d, sender, role=role, subject=f"signed via {role}")
    assert_verifies(d, got, ("rsa-sha256", RSA, "r1"))


def test_dual_signed_message_has_two_verifying_signatures(d):
    """dual.test has an active RSA and an active Ed25519 key: the message carries two
    DKIM-Signature fields, and both verifiers pass both."""
    _, got = send(d, f"alice@{DUAL}", subject="dual")
    assert_verifies(d, got, ("rsa-sha256", DUAL, "r1"), ("ed25519-sha256", DUAL, "e1"))
    sigs = signatures(got)
    assert sigs[0]["bh"] == sigs[1]["bh"], "one relaxed body, one body hash"


def tamper_header(message: bytes) -> bytes:
    """One byte of the (signed) Subject value changed."""
    assert message.count(b"\r\nSubject: tamper me\r\n") == 1
    return message.replace(b"\r\nSubject: tamper me\r\n", b"\r\nSubject: tamper mE\r\n")


def tamper_body(message: bytes) -> bytes:
    """One byte of the body changed."""
    assert message.count(b"\r\n\r\nBody line one.\r\n") == 1
    return message.replace(b"\r\n\r\nBody line one.\r\n", b"\r\n\r\nBody line onE.\r\n")


def add_from(message: bytes) -> bytes:
    """A second From: field added on top (over-signing makes this break the signature)."""
    return b"From: <mallory@evil.test>\r\n" + message


@pytest.mark.parametrize("tamper", [tamper_header, tamper_body, add_from],
                         ids=["header-byte", "body-byte", "added-from"])
def test_change_after_signing_fails_both_verifiers(d, tamper):
    """A dual-signed message verifies as delivered; with one header byte or one body byte
    changed, or a second From: added, every signature fails in both verifiers (`dkim verify`
    exits 1, dkimpy returns False)."""
    _, got = send(d, f"alice@{DUAL}", subject="tamper me", body="Body line one.\r\nTwo.\r\n")
    assert_verifies(d, got, ("rsa-sha256", DUAL, "r1"), ("ed25519-sha256", DUAL, "e1"))
    assert_fails(d, tamper(got), 2)


def test_mail_auth_names_what_changed(d):
    """mail-auth tells a changed body (body hash mismatch: neutral) from a changed or added
    signed header field (the signature itself fails)."""
    _, got = send(d, f"alice@{RSA}", subject="tamper me", body="Body line one.\r\n")
    assert_verifies(d, got, ("rsa-sha256", RSA, "r1"))
    for tamper, verdict in ((tamper_body, "neutral(dkim(failedbodyhashmatch))"),
                            (tamper_header, "fail(crypto(failedverification))"),
                            (add_from, "fail(crypto(failedverification))")):
        assert mail_auth_verify(d, tamper(got)) == (1, [f"{verdict} d={RSA} s=r1 a=rsa-sha256"])


def test_rotation_applies_to_the_next_message_without_restart(d):
    """s1 signs; a new s2 (inactive until activated) does not sign; after its record is
    published and `dkim activate rotate.test s2`, the very next message is signed with s2 and
    verifies, with the same server process."""
    pid = d.pt.pid
    _, got = send(d, f"alice@{ROTATE}", subject="before rotation")
    assert_verifies(d, got, ("rsa-sha256", ROTATE, "s1"))

    out = d.pt.cli("dkim", "generate", ROTATE, "--selector", "s2").stdout
    assert out.splitlines()[:-1] == [
        f"; DKIM key rsa-2048 for {ROTATE}, selector s2",
        f"; inactive: publish this record, then run: postern dkim activate {ROTATE} s2"]
    _, got = send(d, f"alice@{ROTATE}", subject="s2 generated, not active")
    assert_verifies(d, got, ("rsa-sha256", ROTATE, "s1"))

    d.publish(last_line(out))
    r = d.pt.cli("dkim", "activate", ROTATE, "s2")
    assert r.stdout == f"{ROTATE} now signs with selector s2 (was s1)\n"
    _, got = send(d, f"alice@{ROTATE}", subject="after rotation")
    assert_verifies(d, got, ("rsa-sha256", ROTATE, "s2"))
    assert d.pt.pid == pid and d.pt.proc.poll() is None, "the server was restarted"
    # s1 stays published: mail signed with it before the rotation still verifies.


def test_swaks_submission_end_to_end(d, tmp_path):
    """swaks submits over 587 (STARTTLS, AUTH PLAIN with a device password); Postern delivers
    to the MX; the message verifies there in both verifiers. The signature: relaxed/relaxed,
    t= the signing time, no l=, h= naming exactly the present fields of the signed list and
    From once more than it occurs."""
    rcpt = fresh_rcpt("swaks")
    sender = f"alice@{RSA}"
    message = make_message(sender=sender, to=rcpt, subject="swaks dkim", headers=[
        "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
        f"Reply-To: <{sender}>", "List-Unsubscribe: <mailto:unsub@rsa.test>",
        "X-Not-Signed: yes"], body="Hello from swaks.\r\n")
    path = tmp_path / "swaks.eml"
    path.write_bytes(message[:-2])        # swaks ends the data with its own CRLF before the dot
    before = int(time.time())
    r = run(["swaks", "--server", "127.0.0.1", "--port", d.pt.port("submission"), "-tls",
             "--auth", "PLAIN", "--auth-user", d.alice.address,
             "--auth-password", d.alice.devices["laptop"], "--from", sender, "--to", rcpt,
             "--helo", "client.test", "--data", f"@{path}"])
    after = int(time.time())
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(rf"^<~ +{re.escape(AUTH_OK)}$", r.stdout, re.M), r.stdout
    assert re.search(r"^<~ +250 2\.0\.0 Ok: queued as \S+$", r.stdout, re.M), r.stdout
    got = d.mx.wait_for(rcpt, timeout=30)
    assert got.content.endswith(message), "the message was changed beyond the added fields"
    assert_verifies(d, got.content, ("rsa-sha256", RSA, "r1"))

    [sig] = signatures(got.content)
    assert sig["v"] == "1" and sig["c"] == "relaxed/relaxed"
    assert "l" not in sig and "x" not in sig, sig
    assert before <= int(sig["t"]) <= after, (before, sig["t"], after)
    h = [name.lower() for name in sig["h"].split(":")]
    assert h.count("from") == 2, h
    assert sorted(h) == sorted(["from", "from", "to", "subject", "message-id", "date",
                                "mime-version", "content-type", "reply-to", "list-unsubscribe"])
    assert set(h) <= SIGNED_HEADERS


def test_added_message_id_and_date_are_signed(d):
    """A submission without Message-ID and Date gets Postern's, and they are in h=: changing
    the added Message-ID breaks the signature."""
    _, got = send(d, f"alice@{RSA}", message_id=False, date=False, subject="no id, no date")
    [mid] = header_values(got, "Message-ID")
    assert mid.endswith(f"@{HOSTNAME}>"), mid
    assert len(header_values(got, "Date")) == 1
    assert_verifies(d, got, ("rsa-sha256", RSA, "r1"))
    h = [name.lower() for name in signatures(got)[0]["h"].split(":")]
    assert "message-id" in h and "date" in h, h
    assert_fails(d, got.replace(mid.encode(), b"<forged@elsewhere.test>"), 1)


# Content whose relaxed canonical form differs from the bytes: what the streaming body hash
# and the header canonicalisation must get right.
CONTENT = {
    "whitespace": (["Subject:   spaced \t  subject \t", "X-Folded: a\r\n\t b  \r\n   c"],
                   b"a  b\t\tc   \r\n \t \r\n\t\r\nend \t\r\n\r\n\r\n"),
    "folded-signed-fields": (["Subject: first part\r\n second part\r\n\t third part",
                              "References: <a@x.test>\r\n <b@x.test>\r\n <c@x.test>"],
                             b"Body.\r\n"),
    "empty-body": (["Subject: empty body"], b""),
    "empty-lines-only": (["Subject: empty lines only"], b"\r\n\r\n\r\n"),
    "no-body": (["Subject: no empty line, no body"], None),
    "leading-dots": (["Subject: dots"], b".one dot\r\n..two dots\r\n.\r\nlast\r\n"),
    "odd-case-names": (["SUBJECT: upper-case name", "mime-version: 1.0",
                        "content-TYPE: text/plain"], b"Body.\r\n"),
    "utf8": (["Subject: Gr\u00fc\u00dfe \u2713"],
             "Gr\u00fc\u00dfe aus K\u00f6ln \u2713\r\n".encode()),
    "long-lines": (["Subject: long lines"], b"x" * 998 + b"\r\n" + b" " * 998 + b"\r\ny\r\n"),
}


@pytest.mark.parametrize("case", list(CONTENT))
def test_canonicalisation_edge_cases_verify(d, case):
    """Whitespace runs and trailing whitespace, folded fields, trailing empty lines, an empty
    body, no body at all, dot-stuffed lines, field names in odd case, UTF-8 and 998-octet
    lines: each message is signed and verifies in both verifiers."""
    head, body = CONTENT[case]
    got = send_raw(d, f"alice@{DUAL}", head, body)
    assert_verifies(d, got, ("rsa-sha256", DUAL, "r1"), ("ed25519-sha256", DUAL, "e1"))


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 section 3.4.4, transcribed: per line, runs of WSP become one SP and WSP at the
    end goes; then the empty lines at the end go; a non-empty body ends with CRLF."""
    lines = body.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    lines = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in lines]
    while lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


# Bodies whose last lines hold only white space: RFC 6376 makes them empty lines (white space
# at the end of a line is ignored), then drops them (empty lines at the end are ignored).
WHITE_SPACE_TAIL = {"space-line": b"x\r\n \r\n", "tab-line": b"x\r\n\t\r\n",
                    "mixed-tail": b"end \t\r\n\r\n\r\n \t \r\n\r\n", "only-space": b" \r\n"}


@pytest.mark.parametrize("case", list(WHITE_SPACE_TAIL))
def test_white_space_lines_at_the_end_of_the_body(d, case):
    """A body ending in lines of only white space: bh= is SHA-256 of the RFC's relaxed body
    (computed here independently) and dkimpy passes both signatures."""
    body = WHITE_SPACE_TAIL[case]
    got = send_raw(d, f"alice@{DUAL}", ["Subject: white space tail"], body)
    expected = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
    assert [s["bh"] for s in signatures(got)] == [expected, expected]
    assert dkimpy_verify(d, got) == [True, True]


def test_dkim_verify_passes_white_space_tail(d):
    """`postern dkim verify` passes an RFC-conforming signature over a body that ends with a
    line of only white space (mail-auth 0.13.3 alone would not: the command canonicalises the
    body the RFC's way first)."""
    got = send_raw(d, f"alice@{RSA}", ["Subject: white space tail"], b"x\r\n \r\n")
    assert dkimpy_verify(d, got) == [True]
    assert mail_auth_verify(d, got) == (0, [f"pass d={RSA} s=r1 a=rsa-sha256"])


def test_bdat_chunks_split_at_the_header_end_verify(d):
    """BDAT chunks cut inside the CRLF CRLF that ends the header section (and one byte into the
    body): the streamed header/body split is still right, and the signatures verify."""
    sender, rcpt = f"alice@{DUAL}", fresh_rcpt("bdat")
    message = raw_message(sender, rcpt, ["Subject: chunked"], b"Body  line. \r\n\r\n")
    b = message.index(b"\r\n\r\n")
    cuts = [0, b + 1, b + 3, b + 4, b + 5, len(message)]
    chunks = [message[i:j] for i, j in zip(cuts, cuts[1:])]
    client = d.pt.login(d.alice.address, d.alice.password)
    assert client.cmd(f"MAIL FROM:<{sender}>") == MAIL_OK
    assert client.cmd(f"RCPT TO:<{rcpt}>") == RCPT_OK
    sent = 0
    for chunk in chunks[:-1]:
        client.send(f"BDAT {len(chunk)}\r\n".encode() + chunk)
        sent += len(chunk)
        # N counts the message so far (a CR at a chunk's end waits for the next chunk).
        reply = client.reply()
        m = re.fullmatch(r"250 2\.0\.0 Ok: (\d+) octets received", reply.text)
        assert m and sent - 1 <= int(m.group(1)) <= sent, (sent, reply)
    client.send(f"BDAT {len(chunks[-1])} LAST\r\n".encode() + chunks[-1])
    queue_id(client.reply())
    client.quit()
    got = d.mx.wait_for(rcpt, timeout=30).content
    assert got.endswith(message)
    assert_verifies(d, got, ("rsa-sha256", DUAL, "r1"), ("ed25519-sha256", DUAL, "e1"))


def metric(d: Dkim, series: str) -> float:
    return d.pt.metric(series) or 0.0


def transaction_line(d: Dkim, qid: str) -> str:
    """The transaction log line of queue ID ``qid``."""
    def find():
        return [l for l in d.pt.log_text().splitlines()
                if qid in l and " postern::transaction: " in l]
    [line] = wait_until(find, 5, f"the transaction line of {qid}")
    return line


def dkim_field(line: str) -> str:
    """The ``dkim`` field of a log line (quoted or not)."""
    m = re.search(r'\bdkim=(?:"([^"]*)"|(\S+))', line)
    assert m, f"no dkim field in {line!r}"
    return m.group(1) if m.group(1) is not None else m.group(2)


def test_no_key_relayed_unsigned_and_counted(d):
    """nokey.test has no key: delivered without any DKIM-Signature, logged `dkim=unsigned
    (no_key)`, counted in result="no_key". A signed message (dual.test) is logged with its
    signatures and counted in result="signed" and once per algorithm."""
    series = {name: f'postern_dkim_messages_total{{result="{name}"}}'
              for name in ("signed", "no_key")}
    algs = {a: f'postern_dkim_signatures_total{{algorithm="{a}"}}'
            for a in ("rsa-sha256", "ed25519-sha256")}
    before = {k: metric(d, s) for k, s in {**series, **algs}.items()}

    qid, got = send(d, f"alice@{NOKEY}", subject="unsigned")
    assert header_values(got, "DKIM-Signature") == []
    assert dkim_field(transaction_line(d, qid)) == "unsigned (no_key)"
    assert metric(d, series["no_key"]) == before["no_key"] + 1
    assert metric(d, series["signed"]) == before["signed"]

    qid, got = send(d, f"alice@{DUAL}", subject="signed")
    assert len(signatures(got)) == 2
    assert sorted(dkim_field(transaction_line(d, qid)).split(" ")) == \
        [f"ed25519-sha256:e1@{DUAL}", f"rsa-sha256:r1@{DUAL}"]
    assert metric(d, series["signed"]) == before["signed"] + 1
    assert metric(d, series["no_key"]) == before["no_key"] + 1
    for a in algs:
        assert metric(d, algs[a]) == before[a] + 1, a


def test_large_message_signed_and_verified(d):
    """A 20 MB message (body hash computed while it streams to the spool) is signed and
    verifies in both verifiers."""
    rcpt = fresh_rcpt("big")
    sender = f"alice@{DUAL}"
    client = d.pt.login(d.alice.address, d.alice.password)
    client.transaction(sender, [rcpt], sized_message(20_000_000, sender=sender, to=rcpt))
    client.quit()
    got = d.mx.wait_for(rcpt, timeout=60).content
    assert len(got) > 20_000_000
    assert_verifies(d, got, ("rsa-sha256", DUAL, "r1"), ("ed25519-sha256", DUAL, "e1"))
    assert_fails(d, got[:-3] + b"z\r\n", 2)          # last body byte changed


# ---------------------------------------------------------------------------------------------
# Importing keys made by openssl
# ---------------------------------------------------------------------------------------------
def openssl(*args: str) -> subprocess.CompletedProcess:
    r = run(["openssl", *args])
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}"
    return r


def public_der_b64(pem: Path) -> str:
    """The key's SubjectPublicKeyInfo (DER, base64), as openssl derives it."""
    der = pem.with_suffix(".pub.der")
    openssl("pkey", "-in", str(pem), "-pubout", "-outform", "DER", "-out", str(der))
    return base64.b64encode(der.read_bytes()).decode()


def record_txt(record_line: str) -> str:
    m = RECORD_RE.match(record_line)
    assert m, f"not a record line: {record_line!r}"
    strings = re.findall(r'"([^"]*)"', m.group("strings"))
    assert all(len(s) <= 255 for s in strings), [len(s) for s in strings]
    return "".join(strings)


def test_imported_openssl_keys_sign_verifiably(d, tmp_path):
    """Keys made by `openssl genrsa -traditional` (PKCS#1), `openssl genpkey -algorithm RSA`
    (PKCS#8) and `openssl genpkey -algorithm ed25519` import; the printed records carry the
    public keys openssl derives; published and activated, each signs verifiably."""
    pkcs1, pkcs8, ed = tmp_path / "pkcs1.pem", tmp_path / "pkcs8.pem", tmp_path / "ed.pem"
    openssl("genrsa", "-traditional", "-out", str(pkcs1), "2048")
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out",
            str(pkcs8))
    openssl("genpkey", "-algorithm", "ed25519", "-out", str(ed))
    assert pkcs1.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert pkcs8.read_text().startswith("-----BEGIN PRIVATE KEY-----")

    for selector, pem, kind in (("pkcs1", pkcs1, "rsa-2048"), ("pkcs8", pkcs8, "rsa-2048"),
                                ("ed", ed, "ed25519-256")):
        r = d.pt.cli("dkim", "import", IMPORT, selector, "--key-file", pem)
        lines = r.stdout.splitlines()
        assert lines[:-1] == [
            f"; DKIM key {kind} for {IMPORT}, selector {selector}",
            f"; inactive: publish this record, then run: postern dkim activate {IMPORT} "
            f"{selector}"], r.stdout
        spki = public_der_b64(pem)
        if kind.startswith("rsa"):
            assert record_txt(lines[-1]) == f"v=DKIM1; k=rsa; p={spki}"
        else:                             # RFC 8463: the raw 32-byte key, not the SPKI
            raw = base64.b64encode(base64.b64decode(spki)[-32:]).decode()
            assert record_txt(lines[-1]) == f"v=DKIM1; k=ed25519; p={raw}"
        assert "PRIVATE" not in r.stdout + r.stderr
        d.publish(lines[-1])

    shown = d.pt.cli("dkim", "show", IMPORT).stdout + d.pt.cli("dkim", "list", "--json").stdout
    assert not PRIVATE_KEY_RE.search(shown), shown
    for pem in (pkcs1, pkcs8, ed):
        # A line of the PEM holding private parts only (an RSA key's early lines hold the
        # modulus, which the public key shares byte for byte): the last full line of an RSA
        # key (the CRT coefficient), the one line of an Ed25519 key.
        body = [l for l in pem.read_text().splitlines() if not l.startswith("-----")]
        secret = body[-2] if len(body) > 2 else body[0]
        assert secret not in shown, f"{pem.name}'s private key shown"

    _, got = send(d, f"alice@{IMPORT}", subject="imported, none active")
    assert header_values(got, "DKIM-Signature") == []
    d.pt.cli("dkim", "activate", IMPORT, "pkcs1")
    d.pt.cli("dkim", "activate", IMPORT, "ed")
    _, got = send(d, f"alice@{IMPORT}", subject="pkcs1 + ed25519")
    assert_verifies(d, got, ("rsa-sha256", IMPORT, "pkcs1"), ("ed25519-sha256", IMPORT, "ed"))
    r = d.pt.cli("dkim", "activate", IMPORT, "pkcs8")
    assert r.stdout == f"{IMPORT} now signs with selector pkcs8 (was pkcs1)\n"
    _, got = send(d, f"alice@{IMPORT}", subject="pkcs8 + ed25519")
    assert_verifies(d, got, ("rsa-sha256", IMPORT, "pkcs8"), ("ed25519-sha256", IMPORT, "ed"))


# ---------------------------------------------------------------------------------------------
# The CLI (a store of its own; the server is not running)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def cli(postern_bin, certs, dk, tmp_path, request) -> Postern:
    pt = Postern(postern_bin, tmp_path / "cli", cert=certs.server, dns_port=dk.knot.port)
    request.node.posterns = [pt]
    return pt


def keys_json(pt: Postern, *domain: str) -> list[dict]:
    return json.loads(pt.cli("dkim", "list", *domain, "--json").stdout)


def generate(pt: Postern, selector: str, *args: str, domain: str = CLI) -> list[str]:
    """`dkim generate`; asserts the output's form (comments, then the record line last)."""
    r = pt.cli("dkim", "generate", domain, "--selector", selector, *args)
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert len(lines) >= 2 and all(l.startswith(";") for l in lines[:-1]), r.stdout
    assert RECORD_RE.match(lines[-1]), lines[-1]
    assert lines[-1].startswith(f"{selector}._domainkey.{domain}. IN TXT \"")
    assert "PRIVATE" not in r.stdout
    return lines


def rsa_bits(spki_b64: str, tmp_path: Path) -> int:
    """The modulus size of a base64 DER SubjectPublicKeyInfo, read by openssl."""
    der = tmp_path / f"{uuid.uuid4().hex}.der"
    der.write_bytes(base64.b64decode(spki_b64, validate=True))
    text = openssl("pkey", "-pubin", "-inform", "DER", "-in", str(der), "-noout",
                   "-text").stdout
    return int(re.search(r"Public-Key: \((\d+) bit\)", text).group(1))


def test_generate_prints_paste_ready_records(d, cli, tmp_path):
    """RSA-2048 by default; --bits 4096 a longer key in more strings; Ed25519 `k=ed25519`
    with the 44-character base64 of a 32-byte key. Each TXT string is at most 255 characters,
    they join to `v=DKIM1; k=...; p=...`, and the line pasted into a zone is served as such."""
    lines = generate(cli, "r2048")
    assert lines[:-1] == [
        f"; DKIM key rsa-2048 for {CLI}, selector r2048",
        f"; inactive: publish this record, then run: postern dkim activate {CLI} r2048"]
    txt = record_txt(lines[-1])
    assert txt.startswith("v=DKIM1; k=rsa; p=")
    assert rsa_bits(txt.removeprefix("v=DKIM1; k=rsa; p="), tmp_path) == 2048

    big = generate(cli, "r4096", "--bits", "4096")
    big_txt = record_txt(big[-1])
    assert big[0] == f"; DKIM key rsa-4096 for {CLI}, selector r4096"
    assert rsa_bits(big_txt.removeprefix("v=DKIM1; k=rsa; p="), tmp_path) == 4096
    assert len(big_txt) > len(txt) and big[-1].count('" "') >= 2     # three strings or more

    ed = generate(cli, "e1", "--algorithm", "ed25519", "--activate")
    assert ed[:-1] == [f"; DKIM key ed25519-256 for {CLI}, selector e1",
                       f"; active: messages from {CLI} are signed with it from now on"]
    ed_txt = record_txt(ed[-1])
    p = ed_txt.removeprefix("v=DKIM1; k=ed25519; p=")
    assert ed_txt.startswith("v=DKIM1; k=ed25519; p=") and len(p) == 44
    assert len(base64.b64decode(p, validate=True)) == 32

    for line, value in ((lines[-1], txt), (big[-1], big_txt), (ed[-1], ed_txt)):
        d.publish(line)
        name = RECORD_RE.match(line).group("name")
        [answer] = d.knot.query(name, "TXT")
        assert "".join(re.findall(r'"([^"]*)"', answer)) == value


def test_show_list_never_print_private_keys(cli):
    """`dkim show` prints, per key, `; SEL ALG-BITS active|inactive` and the record line;
    `dkim list` a table, `--json` the fields; nothing like a private key anywhere, and the
    store file is mode 0600."""
    r2048 = generate(cli, "r1")[-1]
    ed = generate(cli, "e1", "--algorithm", "ed25519", "--activate")[-1]
    generate(cli, "other", domain="other.test")

    show = cli.cli("dkim", "show", CLI)
    assert show.stdout.splitlines() == ["; e1 ed25519-256 active", ed,
                                        "; r1 rsa-2048 inactive", r2048]
    assert cli.cli("dkim", "show", CLI, "--selector", "r1").stdout.splitlines() == [
        "; r1 rsa-2048 inactive", r2048]

    table = cli.cli("dkim", "list").stdout.splitlines()
    assert [l.split()[:4] for l in table] == [
        [CLI, "e1", "ed25519-256", "active"], [CLI, "r1", "rsa-2048", "inactive"],
        ["other.test", "other", "rsa-2048", "inactive"]]
    keys = keys_json(cli, CLI)
    assert [(k["selector"], k["algorithm"], k["bits"], k["active"]) for k in keys] == [
        ("e1", "ed25519", 256, True), ("r1", "rsa", 2048, False)]
    for key, line in zip(keys, (ed, r2048)):
        assert set(key) == {"domain", "selector", "algorithm", "bits", "active", "created_at",
                            "record", "txt"}
        assert key["domain"] == CLI and key["record"] == f"{key['selector']}._domainkey.{CLI}."
        assert key["txt"] == record_txt(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", key["created_at"])
    assert len(keys_json(cli)) == 3

    for text in (show.stdout, "\n".join(table), cli.cli("dkim", "list", "--json").stdout):
        assert not PRIVATE_KEY_RE.search(text), text
    store = Path(cli.config["store"]["path"])
    for path in [store] + [store.with_name(store.name + s) for s in ("-wal", "-shm", "-journal")]:
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_activate_and_remove(cli):
    """`activate` switches the domain's key of that algorithm and says which it replaced;
    `remove` deletes an inactive key at once, the active one only with --force (without it:
    exit 1, nothing changed)."""
    generate(cli, "a")
    generate(cli, "b")
    generate(cli, "e", "--algorithm", "ed25519")

    def active():
        return sorted(k["selector"] for k in keys_json(cli, CLI) if k["active"])

    assert cli.cli("dkim", "activate", CLI, "a").stdout == f"{CLI} now signs with selector a\n"
    assert cli.cli("dkim", "activate", CLI, "a").stdout == \
        f"{CLI} already signs with selector a\n"
    assert cli.cli("dkim", "activate", CLI, "e").stdout == f"{CLI} now signs with selector e\n"
    assert active() == ["a", "e"]                    # one per algorithm
    assert cli.cli("dkim", "activate", CLI, "b").stdout == \
        f"{CLI} now signs with selector b (was a)\n"
    assert active() == ["b", "e"]

    before = keys_json(cli)
    r = cli.cli("dkim", "remove", CLI, "b", check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (
        f'postern: DKIM selector "b" of domain "{CLI}" is the active key: activate another '
        "selector first, or remove it with --force (the domain's messages are then no longer "
        "signed with it)\n")
    assert keys_json(cli) == before

    assert cli.cli("dkim", "remove", CLI, "a").stdout == f"removed DKIM selector a of {CLI}\n"
    assert cli.cli("dkim", "remove", CLI, "b", "--force").stdout == (
        f"removed DKIM selector b of {CLI} (it was active: no longer signing with it)\n")
    assert [(k["selector"], k["active"]) for k in keys_json(cli)] == [("e", True)]

    for args, message in (
            (["remove", CLI, "a"], f'DKIM selector "a" of domain "{CLI}" not found'),
            (["activate", CLI, "zz"], None),
            (["show", CLI, "--selector", "zz"], f'DKIM selector "zz" of domain "{CLI}" not found'),
            (["show", "none.test"], 'domain "none.test" has no DKIM keys')):
        before = keys_json(cli)
        r = cli.cli("dkim", *args, check=False)
        assert r.returncode == 1 and r.stdout == "", (args, r.stdout, r.stderr)
        assert r.stderr.startswith("postern: ") and len(r.stderr.splitlines()) == 1, r.stderr
        if message:
            assert r.stderr == f"postern: {message}\n"
        assert keys_json(cli) == before


@pytest.mark.parametrize("args,status,message", [
    (["generate", CLI, "--selector", "bad_sel"], 1,
     "postern: invalid selector \"bad_sel\": character '_' is not allowed\n"),
    (["generate", "bad..domain", "--selector", "s"], 1, None),
    (["generate", "-bad.test", "--selector", "s"], 2, None),        # looks like an option
    (["generate", "no_underscore.test", "--selector", "s"], 1, None),
    (["generate", CLI, "--selector", "s", "--bits", "1024"], 2, None),
    (["generate", CLI, "--selector", "s", "--algorithm", "ed25519", "--bits", "2048"], 1,
     "postern: --bits applies to RSA keys only; Ed25519 keys have one size\n"),
    (["generate", CLI, "--selector", "s", "--algorithm", "dsa"], 2, None),
    (["generate", CLI, "--selector", "taken"], 1,
     f'postern: DKIM selector "taken" of domain "{CLI}" already exists\n'),
    (["generate", CLI, "--selector", "taken", "--algorithm", "ed25519"], 1,
     f'postern: DKIM selector "taken" of domain "{CLI}" already exists\n'),
    (["generate", CLI], 2, None),                                    # --selector missing
    (["import", CLI, "s"], 2, None),                                 # --key-file missing
], ids=["bad-selector", "bad-domain", "option-like-domain", "underscore-domain", "bits-1024",
        "bits-with-ed25519", "unknown-algorithm", "duplicate-selector",
        "duplicate-selector-other-algorithm", "no-selector", "no-key-file"])
def test_refused_commands_change_nothing(cli, args, status, message):
    """Refusals exit 1 (understood, failed: one `postern: ...` line on stderr) or 2 (usage,
    clap), print nothing on stdout, and leave the keys as they were."""
    generate(cli, "taken", "--activate")
    before = keys_json(cli)
    r = cli.cli("dkim", *args, check=False)
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    if status == 1:
        assert r.stderr.startswith("postern: ") and len(r.stderr.splitlines()) == 1, r.stderr
    if message:
        assert r.stderr == message
    assert keys_json(cli) == before


@pytest.mark.parametrize("make,fragment", [
    (["genrsa", "-traditional"], "DKIM keys must be 2048 to 8192 bits"),
    (["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
     "neither an RSA key of 2048 to 8192 bits nor an Ed25519 key"),
    (["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
     "EC (SEC1) keys cannot sign DKIM: use an RSA or Ed25519 key"),
    (["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
     "neither an RSA key of 2048 to 8192 bits nor an Ed25519 key"),
    (None, "no PEM private key found in the file"),
], ids=["rsa1024-pkcs1", "rsa1024-pkcs8", "ec-sec1", "ec-pkcs8", "certificate"])
def test_import_refuses_unusable_keys(cli, certs, tmp_path, make, fragment):
    """A 1024-bit RSA key (PKCS#1 or PKCS#8), an EC key (SEC1 or PKCS#8) and a file holding
    no private key are refused: exit 1, one `postern: FILE: ...` line, nothing stored."""
    if make is None:
        pem = Path(certs.server.cert)                # a certificate, no key
    else:
        pem = tmp_path / "key.pem"
        openssl(*make, "-out", str(pem), *(["1024"] if make[0] == "genrsa" else []))
    generate(cli, "kept", "--algorithm", "ed25519")
    before = keys_json(cli)
    r = cli.cli("dkim", "import", CLI, "imp", "--key-file", pem, "--activate", check=False)
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith(f"postern: {pem}: ") and fragment in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert keys_json(cli) == before


def test_verify_refuses_unsigned_and_unknown(d, cli, tmp_path):
    """`dkim verify` exits 1 for a message with no signature, and for a signature whose key is
    not published (the selector's name has no record)."""
    unsigned = make_message(sender=f"a@{CLI}", to="b@plain.test")
    path = tmp_path / "unsigned.eml"
    path.write_bytes(unsigned)
    r = cli.cli("dkim", "verify", path, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", "postern: the message has no DKIM signature\n")
    # Signed by the module's server with rsa.test's r1, then the selector renamed: no key.
    _, got = send(d, f"alice@{RSA}", subject="unpublished selector")
    moved = got.replace(b" s=r1;", b" s=nope;", 1)
    assert moved != got
    assert mail_auth_verify(d, moved) == (
        1, [f"permerror(dns(recordnotfound(nxdomain))) d={RSA} s=nope a=rsa-sha256"])
    assert dkimpy_verify(d, moved) == [False]
