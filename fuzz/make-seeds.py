#!/usr/bin/env python3
"""Writes the seed inputs each fuzz target starts from (fuzz/seeds/<target>/), in the input
layout its body in src/fuzz_targets/ reads. The committed corpus (fuzz/corpus/) is what the
fuzzer grew from these, minimised with `cargo fuzz cmin`."""
import base64, os, struct, subprocess, sys, tempfile

root = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(root, "seeds")


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# session: settings byte, answers seed, chunking seed, then the client's bytes.
SUBMISSION, SUBMISSIONS, RELAY = 0, 1, 2
ALLOW, HOSTING, STARTTLS, SMALL, STORE_DOWN = 4, 8, 16, 32, 64
plain = base64.b64encode(b"\0alice@example.org\0right-password")
login_user = base64.b64encode(b"alice@example.org")
login_pw = base64.b64encode(b"right-password")
msg = b"From: Alice <alice@example.org>\r\nSubject: hi\r\nReceived: from x\r\n\r\nbody\r\n..dot\r\n"
tx = b"MAIL FROM:<alice@example.org> BODY=8BITMIME\r\nRCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE\r\n"
put("session", "submissions-data", bytes([SUBMISSIONS, 0, 3]) + b"EHLO c.test\r\nAUTH PLAIN " + plain + b"\r\n" + tx + b"DATA\r\n" + msg + b".\r\nQUIT\r\n")
put("session", "submissions-bdat", bytes([SUBMISSIONS, 0, 5]) + b"EHLO c.test\r\nAUTH LOGIN\r\n" + login_user + b"\r\n" + login_pw + b"\r\n" + tx
    + b"BDAT %d\r\n" % len(msg[:30]) + msg[:30] + b"BDAT %d LAST\r\n" % len(msg[30:]) + msg[30:] + b"RSET\r\nQUIT\r\n")
put("session", "submission-starttls", bytes([SUBMISSION | STARTTLS, 0, 1]) + b"EHLO c.test\r\nSTARTTLS\r\nEHLO c.test\r\nAUTH PLAIN\r\n" + plain + b"\r\n" + tx + b"DATA\r\n" + msg + b".\r\n")
put("session", "relay-hosting", bytes([RELAY | ALLOW | HOSTING | STARTTLS, 0x33, 7]) + b"HELO web1\r\nMAIL FROM:<site@example.org>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<a@example.net>\r\nDATA\r\nSubject: x\r\n\r\n.\r\nVRFY x\r\nHELP\r\nNOOP\r\nEXPN x\r\nQUIT\r\n")
put("session", "relay-denied-small", bytes([RELAY | SMALL, 0x81, 2]) + b"EHLO x\r\nMAIL FROM:<> SIZE=100\r\nRCPT TO:<x@[10.0.0.5]>\r\nRCPT TO:<a@b>\r\nDATA\r\nBDAT 3 LAST\r\nabcRSET\r\n")
put("session", "bad-data", bytes([SUBMISSIONS | SMALL, 0xFF, 0]) + b"EHLO c\r\nAUTH PLAIN " + plain + b"\r\n" + tx + b"DATA\r\nFrom: bob@example.org <alice@example.org>\r\nSender: x@y\r\n\r\nbare\nlf\r\n.\r\n"
    + tx + b"DATA\r\n" + b"x" * 1000 + b"\r\n.\r\nMAIL FROM:<alice@example.org>\r\nDATA\r\n\r\nfoo bar\r\nQUIT\r\n")
put("session", "long-lines", bytes([RELAY | ALLOW, 0, 9]) + b"EHLO x\r\nNOOP " + b"x" * 4091 + b"\r\nNOOP " + b"y" * 4092 + b"\r\nNOOP\r\n")
braked = base64.b64encode(b"\0alice@example.org\0braked-address")
braked_net = base64.b64encode(b"\0alice@example.org\0braked-network")
put("session", "auth-braked", bytes([SUBMISSIONS, 0, 2]) + b"EHLO c\r\nAUTH PLAIN " + braked + b"\r\nNOOP\r\n")
put("session", "auth-braked-network", bytes([SUBMISSIONS, 0, 1]) + b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\nAUTH PLAIN " + braked_net + b"\r\nQUIT\r\n")
put("session", "auth-failures", bytes([SUBMISSIONS, 0, 4]) + b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n=\r\nAUTH CRAM-MD5\r\nAUTH PLAIN !!!\r\nAUTH LOGIN " + login_user + b"\r\nd3Jvbmc=\r\n")

# headers: HELO name, client IP, seconds (4 bytes), then the header section.
put("headers", "plain", b"client.example\0192.0.2.1\0" + struct.pack("<I", 1795638926) + b"From: Alice <alice@example.org>\r\nSender: s@example.org\r\nResent-From: r@example.org\r\nReceived: a\r\n\tb\r\nMessage-ID: <1@x>\r\nDate: now\r\n\r\nbody")
put("headers", "tricky-helo", b"evil\r\nFrom: x@y\0::1\0" + struct.pack("<I", 7) + b"From: bob@example.org <alice@example.org>\r\nSubject: =?utf-8?q?a?=\r\n")
for i, value in enumerate([
    "alice@example.org", "Alice <alice@example.org>", '"Doe, John" <j@x.org>', "<a@x> (comment)",
    "=?utf-8?b?QWxpY2U=?= <a@x.org>", '"a b"@x.org', "a@[192.0.2.1]", "bob@example.org <alice@example.org>",
    "x:bob@example.org;<alice@example.org>", "a@x, b@y", "A (c) <a.b@x.Y>", "<@route:a@x>",
]):
    put("mailbox", "m%02d" % i, value)

# journal_record: mode byte (0 raw, 1 tagged here, 2 round trip), then the mode's fields.
put("journal_record", "raw-psj3", b"\0PSJ3\x03\x10\0\0\0" + b'{"id":"x"}' + b"\0" * 32)
put("journal_record", "raw-psj1", b"\0PSJ1\x03\x0a\0\0\0" + b'{"id":"x"}' + b"\0" * 4)
put("journal_record", "tagged-message", b"\x01\x00\x01" + b'{"id":"0123456789ABCDEF01234","sender":"a@x","recipients":[],"received_at_ms":1,"size":3,"body_8bit":false,"smtputf8":false,"submitter":{"address":null,"device":null,"client_ip":"","listener":""},"prefix":"","data_file":"../../etc/passwd"}' + b"\0hi\r\n")
put("journal_record", "tagged-psj2-done", b"\x01\x01\x03" + b'{"id":"x"}' + b"\0")
put("journal_record", "round-message", b"\x02\x00\x01" + bytes(range(1, 40)) + b"\0a@example.org\0\x02\x05b@example.net\0" + b"\x01" * 30)
put("journal_record", "round-update", b"\x02\x01ID\0\x02\x00a@x\0\x0d\x00\x00\x00")
put("journal_record", "round-done", b"\x02\x02ID\0\x07\x00\x05")

# smtp_reply: what servers send.
put("smtp_reply", "ehlo", b"250-mx.example.org hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-starttls\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n")
put("smtp_reply", "pipelined", b"250 2.1.0 Ok\r\n550 5.1.1 <b@x>: no such user\r\n354 go\n452-4.5.3 too\r\n452 4.5.3 many\r\n")
put("smtp_reply", "odd", b"250\r\n220 \xff\xfe\r\n421-a\r\n450 b\r\n")

# dsn: flags, host, sender, arrival (8), size (8), [RET], [ENVID], count, per entry, now, max size, original.
def dsn(flags, entries, original):
    b = bytes([flags]) + b"postern.example\0alice@example.org\0" + struct.pack("<QQ", 1795638926000, 1234)
    if flags & 16: b += b"FULL\0"
    if flags & 32: b += b"envid-1\0"
    b += bytes([len(entries) - 1])
    for bits, addr, reply in entries:
        b += bytes([bits]) + addr + b"\0"
        if bits & 1: b += b"rfc822;" + addr + b"\0"
        b += struct.pack("<HH", 1, 1)
        if bits & 2: b += b"mx.example.net\0"
        if bits & 4: b += reply + b"\0"
        b += b"the reason\0"
    return b + struct.pack("<II", 1795638926, 50_000_000) + original
orig = b"Received: x\r\nFrom: alice@example.org\r\n\r\nbody\r\n"
put("dsn", "failure", dsn(0 | 16 | 32, [(0xC7, b"bob@example.net", b"550 5.1.1 no such user"), (0x80, b"c@example.net", b"")], orig))
put("dsn", "delay-8bit", dsn(1 | 4, [(0x46, b"d@example.net", "451 4.7.1 Grüße".encode())], orig))
put("dsn", "success-utf8", dsn(2 | 8, [(0x00, "jürgen@example.de".encode(), b"")], orig))
put("dsn", "nothing", dsn(0 | 64, [(0xC7, b"x@example.net", b"554 " + b"w" * 100)], orig))

# tlsa: count, then per record a proof byte and RDATA; then time, the end-entity DER,
# the number of intermediates and their DER.
def cert():
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", d + "/k", "-out", d + "/c", "-outform", "DER", "-days", "3650",
                        "-subj", "/CN=mx.example.net", "-addext", "subjectAltName=DNS:mx.example.net"],
                       check=True, capture_output=True)
        return open(d + "/c", "rb").read()
c = cert()
digest = bytes(range(32))
rec = lambda u, s, m, data: bytes([u, s, m]) + data
put("tlsa", "records", bytes([4]) + b"\x05" + rec(3, 1, 1, digest) + b"\0" + b"\x05" + rec(3, 1, 2, digest * 2) + b"\0"
    + b"\x05" + rec(2, 0, 1, digest) + b"\0" + b"\x01" + rec(0, 0, 0, b"x") + b"\0" + struct.pack("<I", 1795638926))
# The certificate DER holds NUL bytes: as the last field it runs to the end (no intermediates).
put("tlsa", "cert", bytes([1]) + b"\x05" + rec(3, 0, 1, digest) + b"\0" + struct.pack("<I", 1795638926) + c)

# trust_anchor: keymgr and dig forms.
put("trust_anchor", "ds", "lab. DS 55568 15 2 8e98ee9b4c2c47e3817bc76d75071237a8ccba6d1dcca7a6a04bbdbd2f5d7ff6\nlab. 3600 IN DS 55568 15 4 4472dab90b3dc39b7c952378a635db06d34935449c4636737bd5bfd0abeb769d2f827461c6231876d6dd109a3dfdfc00\n")
put("trust_anchor", "dnskey", "; KSK\n$ORIGIN lab.\nlab. DNSKEY 257 3 15 OPFiRjIJSJKSXmW1J7SqChYIOaaFouKePXlFXCAlmnA= ; KSK\nlab 3600 IN DNSKEY 256 3 13 BL4vzcaEuW7hnGlz6YsU0YiRqNRFvOMMxzxkZYwlaUc=\n")
put("trust_anchor", "root", ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n")

# mta_sts: TXT records (LF-separated), NUL, MX host, NUL, policy.
put("mta_sts", "enforce", b"v=STSv1; id=20240101T000000;\nother\0mx1.example.net\0version: STSv1\nmode: enforce\nmx: mx1.example.net\nmx: *.example.net\nmax_age: 86400\n")
put("mta_sts", "testing-crlf", b"v=STSv1;id=abc\0a.b.example.net\0version: STSv1\r\nmode: testing\r\nmx: *.Example.NET\r\nmax_age: 31557601\r\nextra: x\r\n")
put("mta_sts", "none", b"v=STSv1; id=1\nv=STSv1; id=2\0\0version: STSv1\nmode: none\nmax_age: 0\n")

# config: the shipped config and a minimal one.
for name in os.listdir(os.path.join(root, "..", "config")):
    if name.endswith(".toml"):
        put("config", name, open(os.path.join(root, "..", "config", name), "rb").read())
put("config", "minimal", '[listen]\nsubmission = "127.0.0.1:2587"\n[store]\npath = "var/store.db"\n[spool]\npath = "var/spool"\n[quota.plans]\npro = 5\n[delivery]\nrelayhost = "[smtp.example.net]:587"\nmax_age = "5d"\n')

# proxy_header: the first bytes of a balancer's connection, each form the reader knows.
V2 = b"\r\n\r\n\0\r\nQUIT\n"
v4_block = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack(">HH", 40000, 25)
v6_block = bytes(15) + b"\x07" + bytes(15) + b"\x01" + struct.pack(">HH", 40000, 587)
put("proxy_header", "v1-tcp4", b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nEHLO web1\r\n")
put("proxy_header", "v1-tcp6", b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 587\r\n")
put("proxy_header", "v1-unknown", b"PROXY UNKNOWN\r\n")
put("proxy_header", "v1-long", b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n")
put("proxy_header", "v2-tcp4", V2 + b"\x21\x11" + struct.pack(">H", 12) + v4_block + b"\x16\x03\x01")
put("proxy_header", "v2-tcp6", V2 + b"\x21\x21" + struct.pack(">H", 36) + v6_block)
put("proxy_header", "v2-local", V2 + b"\x20\x00\x00\x00")
put("proxy_header", "v2-tlv", V2 + b"\x21\x11" + struct.pack(">H", 25) + v4_block + b"\x02\x00\x0amx.example")
put("proxy_header", "v2-unix", V2 + b"\x21\x31" + struct.pack(">H", 216) + bytes(216))
put("proxy_header", "smtp", b"EHLO client.example\r\n")
