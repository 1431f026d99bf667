"""Harness of Postern's black-box suite: real peer processes, a raw SMTP client, the server.

Everything here talks to real processes over real sockets:

* ``Knot``: an authoritative ``knotd`` on 127.0.0.1:<free port> with zones written at start.
* ``SmtpReceiver``: an aiosmtpd server (the MX hosts Postern delivers to), with or without
  STARTTLS, recording every RCPT attempt and every message it accepts.
* ``Postern``: one server under test with its own config, store, spool and log in a temp dir;
  runs the admin CLI, starts ``serve``, can ``kill -9`` and restart on the same dirs.
* ``SmtpClient``: a line-exact SMTP client over a plain or TLS socket for the cases where
  smtplib hides too much (pipelining, STARTTLS injection, bare LF, limits).
* ``RedisServer`` / ``RedisCluster``: ``redis-server`` on free loopback ports (a single server,
  or three masters joined with ``redis-cli --cluster create``) for the Redis quota backend.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from email.utils import formatdate
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOSTNAME = "postern.test"

# ---------------------------------------------------------------------------------------------
# The reply lines the spec fixes, verbatim.
# ---------------------------------------------------------------------------------------------
GREETING = f"220 {HOSTNAME} ESMTP Postern"
EHLO_FIRST = f"250-{HOSTNAME}"
MAIL_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"
DATA_GO = "354 End data with <CR><LF>.<CR><LF>"
OK = "250 2.0.0 Ok"
BYE = "221 2.0.0 Bye"
TLS_GO = "220 2.0.0 Ready to start TLS"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.0 authentication failed"
AUTH_TEMPORARY = "454 4.7.0 Temporary authentication failure, try again later"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_ON_RELAY = (
    "573 Antispam: Authenticated connection not possible. Please use port 587 instead of port 25."
)
RELAY_DENIED = "550 5.7.1 Relaying denied"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
TOO_MANY_AUTH_FAILURES = "421 4.7.0 Too many authentication failures, closing connection"
REVOKED = "421 4.7.0 Credentials revoked, closing connection"
UNRECOGNIZED = "500 5.5.1 Command unrecognized"
SYNTAX_ERROR = "501 5.5.4 Syntax error in parameters"
BAD_SEQUENCE = "503 5.5.1 Bad sequence of commands"
NO_RCPTS = "554 5.5.1 No valid recipients"
LINE_TOO_LONG = "500 5.5.2 Line too long"
BARE_LF_COMMAND = "500 5.5.2 Bare LF not allowed, use CRLF"
BARE_LF_DATA = "554 5.6.0 Bare LF or CR in message data"
LONG_LINE_DATA = "554 5.6.0 Line longer than 998 octets"
NUL_DATA = "554 5.6.0 NUL byte in message data"
QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as (\S+)$")

# Quotas, hosting accounts and brakes (issue 3).
QUOTA_UNAVAILABLE = "451 4.3.0 Quota service unavailable, try again later"
MESSAGE_BRAKE = "450 4.7.1 Too many messages in a short time, retry in a minute"
CONNECTION_BRAKE = (
    "421 4.7.0 Too many connections from your address in a short time, retry in a minute")
DAILY_LIMIT_RE = re.compile(r"^450 4\.7\.1 Daily sending limit reached \((\d+) recipients per "
                            r"24 hours\); retry after (\d\d):(\d\d) UTC$")

DEFAULT_MAX_SIZE = 210_763_776

# Zones served by the session's knotd. MX hosts: 127.0.0.2 offers STARTTLS, 127.0.0.3 does
# not, 127.0.0.4 offers STARTTLS but fails every handshake (opportunistic TLS falls back).
ZONES = {
    "tls.test.": ["@ IN MX 10 mx.tls.test.", "mx IN A 127.0.0.2"],
    "plain.test.": ["@ IN MX 10 mx.plain.test.", "mx IN A 127.0.0.3"],
    "implicit.test.": ["@ IN A 127.0.0.3"],                   # no MX: the A record is the MX
    "badtls.test.": ["@ IN MX 10 mx.badtls.test.", "mx IN A 127.0.0.4"],
    "nullmx.test.": ["@ IN MX 0 ."],                          # RFC 7505: accepts no mail
}
# Recipients of tests that do not look at delivery: a null-MX domain, so nothing retries.
SINK = "nullmx.test"


def not_owned(address: str) -> str:
    """The sender-rule refusal for a session authenticated as ``address``."""
    return f"550 5.7.1 Sender address rejected: not owned by user {address}"


def domain_not_allowed(account: str) -> str:
    """The refusal of a ``MAIL FROM`` outside hosting account ``account``'s domains."""
    return f"550 5.7.1 Sender address rejected: domain not allowed for hosting account {account}"


def daily_limit_minute(reply: Reply | str, limit: int) -> int:
    """Asserts ``reply`` is the quota refusal for ``limit``; returns its HH:MM as the minute
    of the day (0-1439)."""
    text = reply.text if isinstance(reply, Reply) else reply
    m = DAILY_LIMIT_RE.match(text)
    assert m and int(m.group(1)) == limit, (
        f"expected the daily-limit 450 for {limit} recipients, got {text!r}")
    hours, minutes = int(m.group(2)), int(m.group(3))
    assert hours < 24 and minutes < 60, text
    return hours * 60 + minutes


def minutes_of_day(start: float, end: float, slack: int = 1) -> set[int]:
    """The UTC minutes of the day (0-1439) from Unix time ``start`` to ``end``, widened by
    ``slack`` minutes each side."""
    first, last = int(start // 60) - slack, int(end // 60) + slack
    return {m % 1440 for m in range(first, last + 1)}


# ---------------------------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_on(*hosts: str) -> int:
    """One TCP port number free on every one of ``hosts`` (for MX hosts sharing a port)."""
    for _ in range(100):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no common free port on {hosts}")


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    """Polls ``predicate`` until it returns something truthy; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def run(args: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Runs a command, capturing text output (never raises on exit status)."""
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw
    )


# ---------------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def make_cert(directory: Path, name: str, *, key_type: str = "ec") -> CertPair:
    """A self-signed certificate for ``name`` (and 127.0.0.1) made with ``openssl req -x509``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    newkey = ["-newkey", "rsa:2048"] if key_type == "rsa" else [
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    result = run(["openssl", "req", "-x509", *newkey, "-nodes", "-days", "2",
                  "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1",
                  "-keyout", key, "-out", cert])
    assert result.returncode == 0, f"openssl req failed: {result.stderr}"
    return CertPair(cert, key)


def make_ca(directory: Path, name: str) -> CertPair:
    """A test certificate authority (``openssl req -x509`` with CA basic constraints)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.crt", directory / "ca.key"
    result = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                  "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                  "-keyout", key, "-out", cert])
    assert result.returncode == 0, f"openssl req failed: {result.stderr}"
    return CertPair(cert, key)


def issue_cert(ca: CertPair, directory: Path, common_name: str, names: list[str]) -> CertPair:
    """A server certificate from ``ca`` for ``names`` (DNS names, or IP addresses)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, csr = directory / "cert.crt", directory / "cert.key", directory / "cert.csr"
    result = run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                  "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={common_name}",
                  "-keyout", key, "-out", csr])
    assert result.returncode == 0, f"openssl req failed: {result.stderr}"
    sans = ",".join(("IP:" if n.replace(".", "").isdigit() else "DNS:") + n for n in names)
    extensions = directory / "ext.cnf"
    extensions.write_text(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n"
                          "extendedKeyUsage=serverAuth\n")
    result = run(["openssl", "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
                  "-CAcreateserial", "-days", "2", "-extfile", extensions, "-out", cert])
    assert result.returncode == 0, f"openssl x509 failed: {result.stderr}"
    return CertPair(cert, key)


def client_tls_context(*, min_version=None, max_version=None) -> ssl.SSLContext:
    """A client context that does not verify the peer (test certificates are self-signed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():          # TLS 1.0/1.1 are deprecated: tests use them on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        if min_version is not None:
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
    return ctx


# ---------------------------------------------------------------------------------------------
# Delivery helpers shared by the delivery test modules
# ---------------------------------------------------------------------------------------------
def submit_as_alice(srv, rcpts, *, body: str = "Body line.\r\n", device: str = "laptop") -> str:
    """Submits a small message as the standard account alice on 587 to ``rcpts`` (one address
    or a list); returns the queue id."""
    rcpts = [rcpts] if isinstance(rcpts, str) else list(rcpts)
    alice = srv.alice
    msg = make_message(sender=alice.address, to=rcpts[0], body=body)
    client = srv.login(alice.address, alice.devices[device])
    qid = client.transaction(alice.address, rcpts, msg)
    client.quit()
    return qid


def delivery_log(srv, *args: str) -> list[dict]:
    """`postern log ARGS... --json`: the delivery log records, oldest first."""
    out = srv.cli("log", *args, "--json").stdout
    return json.loads(out) if out else []


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------
def make_message(*, sender: str, to: str, subject: str = "test", body: str = "Hello.\r\n",
                 message_id: bool = True, date: bool = True,
                 headers: Iterable[str] = ()) -> bytes:
    """An RFC 5322 message with CRLF line ends; Message-ID/Date can be left out on purpose."""
    lines = [f"From: <{sender}>", f"To: <{to}>", f"Subject: {subject}"]
    if message_id:
        lines.append(f"Message-ID: <{uuid.uuid4().hex}@client.test>")
    if date:
        lines.append(f"Date: {formatdate(localtime=False)}")
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def sized_message(size: int, *, sender: str, to: str, line_len: int = 78,
                  block_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Yields a message of exactly ``size`` bytes (final CRLF included) in chunks.

    Lines are ``line_len`` characters plus CRLF, none starts with a dot, so the bytes on the
    wire between DATA's 354 and the terminating ``.CRLF`` are exactly ``size``. The repeated
    block is built once: a 201 MB message never exists in memory in the test either.
    """
    header = make_message(sender=sender, to=to, subject=f"size {size}", body="")
    line = b"x" * line_len + b"\r\n"
    body = size - len(header)
    full, rest = divmod(body, len(line))
    if rest == 1:                       # a line needs at least CRLF: widen the last full one
        full, rest = full - 1, len(line) + 1
    assert full >= 0 and rest + len(header) <= size, f"size {size} too small"
    yield header
    per_block = max(1, block_bytes // len(line))
    block = line * per_block
    while full >= per_block:
        yield block
        full -= per_block
    if full:
        yield line * full
    if rest:
        yield b"y" * (rest - 2) + b"\r\n"


def dot_stuff(message: bytes) -> bytes:
    """RFC 5321 transparency: a leading dot on any line is doubled."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def header_values(message: bytes, name: str) -> list[str]:
    """Values of every ``name:`` header of a raw message (unfolded, case-insensitive)."""
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    unfolded = re.sub(r"\r\n[ \t]", " ", head)
    prefix = name.lower() + ":"
    return [line.split(":", 1)[1].strip() for line in unfolded.split("\r\n")
            if line.lower().startswith(prefix)]


# ---------------------------------------------------------------------------------------------
# Raw SMTP client
# ---------------------------------------------------------------------------------------------
class ConnectionClosed(Exception):
    """The server closed the connection."""


class Reply:
    """One SMTP reply (one or more lines). Compares equal to its text joined with newlines."""

    def __init__(self, lines: list[str]):
        self.lines = lines

    @property
    def code(self) -> int:
        return int(self.lines[-1][:3])

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __eq__(self, other):
        if isinstance(other, str):
            return self.text == other
        if isinstance(other, Reply):
            return self.lines == other.lines
        return NotImplemented

    def __hash__(self):
        return hash(self.text)

    def __repr__(self):
        return f"Reply({self.text!r})"

    def keywords(self) -> list[str]:
        """EHLO extensions: every line after the first, without the ``250-``/``250 `` prefix."""
        return [line[4:] for line in self.lines[1:]]


def queue_id(reply: Reply) -> str:
    """The ID of a ``250 2.0.0 Ok: queued as ID`` reply (asserting the exact form)."""
    m = QUEUED_RE.match(reply.text)
    assert m, f"expected '250 2.0.0 Ok: queued as ID', got {reply.text!r}"
    return m.group(1)


class SmtpClient:
    """A line-exact SMTP client. Each reply line must end in CRLF."""

    def __init__(self, host: str, port: int, *, implicit_tls: bool = False,
                 timeout: float = 15.0, tls_context: ssl.SSLContext | None = None,
                 source: str | None = None):
        """``source``: the local address to connect from (e.g. ``127.0.0.9``: any of
        127.0.0.0/8 reaches a listener on 127.0.0.1 on Linux)."""
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None)
        self.timeout = timeout
        self.buf = b""
        self.tls = False
        if implicit_tls:
            self.wrap_tls(tls_context)

    # -- transport ----------------------------------------------------------------------------
    def wrap_tls(self, ctx: ssl.SSLContext | None = None):
        assert not self.buf, f"server sent bytes before the TLS handshake: {self.buf!r}"
        self.sock = (ctx or client_tls_context()).wrap_socket(self.sock,
                                                              server_hostname=HOSTNAME)
        self.tls = True

    def send(self, data: bytes | str):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError) as e:
            raise ConnectionClosed(str(e)) from e
        if not chunk:
            raise ConnectionClosed("EOF")
        self.buf += chunk

    def read_line(self) -> str:
        while b"\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\n", 1)
        assert raw.endswith(b"\r"), f"reply line not ending in CRLF: {raw!r}"
        return raw[:-1].decode("utf-8", "replace")

    def reply(self, timeout: float | None = None) -> Reply:
        """Reads one complete (possibly multi-line) reply."""
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            lines = []
            while True:
                line = self.read_line()
                assert re.match(r"^\d{3}([ -]|$)", line), f"malformed reply line {line!r}"
                lines.append(line)
                if len(line) == 3 or line[3] == " ":
                    return Reply(lines)
        finally:
            self.sock.settimeout(self.timeout)

    def replies(self, n: int) -> list[Reply]:
        return [self.reply() for _ in range(n)]

    def cmd(self, line: str) -> Reply:
        self.send(line + "\r\n")
        return self.reply()

    def expect_closed(self, timeout: float = 5.0):
        """Asserts the server closes the connection (EOF or reset) within ``timeout``."""
        assert not self.buf, f"unexpected bytes before close: {self.buf!r}"
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError, ssl.SSLError):
            return
        except TimeoutError:
            raise AssertionError(f"connection still open {timeout}s later") from None
        assert data == b"", f"expected the connection closed, got {data!r}"

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- protocol steps -----------------------------------------------------------------------
    def ehlo(self, name: str = "client.test") -> Reply:
        return self.cmd(f"EHLO {name}")

    def starttls(self, ctx: ssl.SSLContext | None = None) -> Reply:
        """STARTTLS; on 220 the handshake follows. Returns the server's reply."""
        r = self.cmd("STARTTLS")
        if r.code == 220:
            self.wrap_tls(ctx)
        return r

    def auth_plain(self, user: str, password: str) -> Reply:
        return self.cmd("AUTH PLAIN " + b64(f"\0{user}\0{password}"))

    def auth_login(self, user: str, password: str) -> Reply:
        r = self.cmd("AUTH LOGIN")
        if r.code != 334:
            return r
        r = self.cmd(b64(user))
        if r.code != 334:
            return r
        return self.cmd(b64(password))

    def send_data(self, message: bytes | Iterable[bytes]) -> Reply:
        """The message after a 354 (dot-stuffed), then ``.CRLF``; returns the final reply."""
        if isinstance(message, bytes):
            self.send(dot_stuff(message))
        else:
            for chunk in message:      # generated chunks never carry a leading dot
                self.send(chunk)
        self.send(b".\r\n")
        return self.reply(timeout=120)

    def transaction(self, sender: str, recipients: list[str], message: bytes) -> str:
        """MAIL, RCPT..., DATA with every reply asserted exactly; returns the queue ID."""
        assert self.cmd(f"MAIL FROM:<{sender}>") == MAIL_OK
        for rcpt in recipients:
            assert self.cmd(f"RCPT TO:<{rcpt}>") == RCPT_OK
        assert self.cmd("DATA") == DATA_GO
        return queue_id(self.send_data(message))

    def rcpts(self, recipients: Iterable[str]) -> list[Reply]:
        """Pipelined ``RCPT TO`` for each recipient; their replies, in order."""
        recipients = list(recipients)
        self.send("".join(f"RCPT TO:<{r}>\r\n" for r in recipients))
        return self.replies(len(recipients))

    def try_transaction(self, sender: str, recipients: list[str],
                        message: bytes | None = None) -> Attempt:
        """MAIL (asserted), the RCPTs (pipelined; any may be refused), then DATA when at least
        one was accepted, else RSET. The final reply is None when no DATA was sent."""
        assert self.cmd(f"MAIL FROM:<{sender}>") == MAIL_OK
        replies = self.rcpts(recipients)
        accepted = [r for r, reply in zip(recipients, replies) if reply == RCPT_OK]
        if not accepted:
            assert self.cmd("RSET") == OK
            return Attempt(replies, accepted, None)
        assert self.cmd("DATA") == DATA_GO
        body = message or make_message(sender=sender, to=accepted[0])
        return Attempt(replies, accepted, self.send_data(body))

    def quit(self):
        assert self.cmd("QUIT") == BYE
        self.close()


@dataclasses.dataclass
class Attempt:
    """What :meth:`SmtpClient.try_transaction` saw."""
    rcpt_replies: list[Reply]
    accepted: list[str]             # recipients answered 250 2.1.5
    final: Reply | None             # the reply to the end of data; None without DATA

    @property
    def queued(self) -> bool:
        return self.final is not None and QUEUED_RE.match(self.final.text) is not None

    def refusals(self) -> list[Reply]:
        return [r for r in self.rcpt_replies if r != RCPT_OK]


# ---------------------------------------------------------------------------------------------
# Knot: authoritative DNS on loopback
# ---------------------------------------------------------------------------------------------
class Knot:
    """``knotd`` in the foreground with its own config, rundir, storage and zones."""

    def __init__(self, workdir: Path, zones: dict[str, list[str]]):
        self.dir = workdir
        self.zones = zones           # "tls.test." -> records relative to the origin
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "knotd.log"
        self.serial = 1              # SOA serial of every zone; reload() increments it

    def _write(self):
        for sub in ("run", "db", "zones"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for zone, records in self.zones.items():
            soa = [f"$ORIGIN {zone}", "$TTL 60",
                   f"@ IN SOA ns.{zone} hostmaster.{zone} {self.serial} 3600 600 86400 60",
                   f"@ IN NS ns.{zone}", "ns IN A 127.0.0.1"]
            (self.dir / "zones" / f"{zone.rstrip('.')}.zone").write_text(
                "\n".join(soa + records) + "\n")
        conf = [
            "server:", f"    listen: 127.0.0.1@{self.port}", f"    rundir: {self.dir / 'run'}",
            "database:", f"    storage: {self.dir / 'db'}",
            "log:", "  - target: stderr", "    any: info",
            "template:", "  - id: default", f"    storage: {self.dir / 'zones'}",
            '    file: "%s.zone"',
            "zone:", *[f"  - domain: {zone}" for zone in self.zones],
        ]
        (self.dir / "knot.conf").write_text("\n".join(conf) + "\n")

    def start(self):
        self._write()
        self.proc = subprocess.Popen(["knotd", "-c", str(self.dir / "knot.conf")],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

        def all_zones_served():
            if self.proc.poll() is not None:
                raise AssertionError(f"knotd exited: {self.log.read_text()[-2000:]}")
            return all(self.query(zone, "SOA") for zone in self.zones)

        wait_until(all_zones_served, 20, "knotd to serve its zones", interval=0.05)

    def reload(self):
        """Publishes the current ``zones`` (records added since start, say) in the running
        knotd: rewrites the zone files with the next SOA serial, ``knotc zone-reload``, and
        waits until every zone answers with that serial over the wire."""
        self.serial += 1
        self._write()
        r = run(["knotc", "-c", str(self.dir / "knot.conf"), "zone-reload"], timeout=10)
        assert r.returncode == 0, f"knotc zone-reload failed: {r.stdout}{r.stderr}"

        def all_reloaded():
            return all([f"ns.{zone} hostmaster.{zone} {self.serial} 3600 600 86400 60"]
                       == self.query(zone, "SOA") for zone in self.zones)

        wait_until(all_reloaded, 10, f"knotd to serve serial {self.serial}", interval=0.02)

    def query(self, name: str, rtype: str) -> list[str]:
        """Answers over the wire with ``kdig +short`` (empty list when none)."""
        r = run(["kdig", f"@127.0.0.1", "-p", str(self.port), rtype, name,
                 "+short", "+time=1", "+retry=0"], timeout=10)
        return [line for line in r.stdout.splitlines() if line and not line.startswith(";")]

    def stop(self):
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen | None, grace: float = 10.0):
    """SIGTERM, then SIGKILL after ``grace`` seconds: only the process we started."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# ---------------------------------------------------------------------------------------------
# Receiving SMTP servers (the MX hosts)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    peer: str
    at: float
    mail_options: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RcptAttempt:
    address: str
    reply: str
    tls: bool
    at: float


def default_policy(address: str, attempt: int) -> str | None:
    """Receiver behaviour by local part: ``reject*`` gets 550 always, ``tempfail*`` gets 451
    on its first attempt; anything else is accepted (None)."""
    local = address.split("@", 1)[0].lower()
    if local.startswith("reject"):
        return "550 5.1.1 Mailbox unavailable"
    if local.startswith("tempfail") and attempt == 1:
        return "451 4.3.0 Try again later"
    return None


class _RecordingHandler:
    def __init__(self, receiver: SmtpReceiver):
        self.r = receiver

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.r.lock:
            n = sum(1 for a in self.r.attempts if a.address == address) + 1
            verdict = self.r.policy(address, n)
            reply = verdict or "250 2.1.5 Ok"
            self.r.attempts.append(RcptAttempt(address, reply, session.ssl is not None,
                                               time.monotonic()))
        if verdict:
            return verdict
        envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        msg = ReceivedMessage(envelope.mail_from, list(envelope.rcpt_tos),
                              bytes(envelope.original_content), session.ssl is not None,
                              session.peer[0], time.monotonic(),
                              list(envelope.mail_options))
        with self.r.lock:
            self.r.messages.append(msg)
        return "250 2.0.0 Message accepted"


class _RequireTlsHandler(_RecordingHandler):
    """Also offers REQUIRETLS (RFC 8689), after STARTTLS only, as a real server must."""

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if session.ssl is not None:
            responses.insert(len(responses) - 1, "250-REQUIRETLS")
        return responses


def _require_tls_controller():
    """An aiosmtpd Controller whose server takes the REQUIRETLS parameter of MAIL (stock
    aiosmtpd refuses parameters it does not know with 555)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP

    class RequireTlsSmtp(SMTP):
        def _getparams(self, params):
            found = super()._getparams(params)
            if found is not None and self._tls_protocol is not None:
                found.pop("REQUIRETLS", None)
            return found

    class RequireTlsController(Controller):
        def factory(self):
            return RequireTlsSmtp(self.handler, **self.SMTP_kwargs)

    return RequireTlsController


class SmtpReceiver:
    """An aiosmtpd server on ``host:port`` (in a thread), optionally offering STARTTLS, and
    with ``requiretls`` the REQUIRETLS extension under it (MAIL options are recorded)."""

    def __init__(self, host: str, port: int, *, tls: CertPair | None = None,
                 tls_context: ssl.SSLContext | None = None,
                 policy: Callable[[str, int], str | None] = default_policy,
                 requiretls: bool = False):
        from aiosmtpd.controller import Controller

        self.host, self.port, self.policy = host, port, policy
        self.lock = threading.Lock()
        self.messages: list[ReceivedMessage] = []
        self.attempts: list[RcptAttempt] = []
        if tls_context is None and tls is not None:
            tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls_context.load_cert_chain(tls.cert, tls.key)
        self.offers_tls = tls_context is not None
        kwargs = dict(tls_context=tls_context, require_starttls=False) if tls_context else {}
        controller = _require_tls_controller() if requiretls else Controller
        handler = _RequireTlsHandler(self) if requiretls else _RecordingHandler(self)
        self.controller = controller(handler, hostname=host, port=port,
                                     ident="test-mx", enable_SMTPUTF8=True,
                                     data_size_limit=None, decode_data=False, **kwargs)

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        with contextlib.suppress(Exception):
            self.controller.stop()

    def received(self) -> list[ReceivedMessage]:
        with self.lock:
            return list(self.messages)

    def attempts_for(self, address: str) -> list[RcptAttempt]:
        with self.lock:
            return [a for a in self.attempts if a.address == address]

    def wait_for(self, recipient: str, timeout: float = 15.0) -> ReceivedMessage:
        """Polls until a message for ``recipient`` arrived; returns it."""
        def find():
            return next((m for m in self.received() if recipient in m.rcpt_tos), None)
        return wait_until(find, timeout, f"delivery to {recipient} at {self.host}:{self.port}")


# ---------------------------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------------------------
def to_toml(config: dict) -> str:
    """Tables of scalars/lists to TOML (enough for Postern's config)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, (str, Path)):
            return json.dumps(str(v))
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"no TOML for {v!r}")

    out = []
    for section, table in config.items():
        out.append(f"[{section}]")
        out.extend(f"{k} = {value(v)}" for k, v in table.items() if v is not None)
        out.append("")
    return "\n".join(out)


def merge(base: dict, overrides: dict) -> dict:
    """Two-level merge; a None section or key in ``overrides`` removes it."""
    result = {k: dict(v) for k, v in base.items()}
    for section, table in overrides.items():
        if table is None:
            result.pop(section, None)
            continue
        target = result.setdefault(section, {})
        for key, v in table.items():
            if v is None:
                target.pop(key, None)
            else:
                target[key] = v
    return result


@dataclasses.dataclass
class Account:
    address: str
    devices: dict[str, str]          # device name -> password

    @property
    def password(self) -> str:
        return next(iter(self.devices.values()))


class Postern:
    """One Postern server: config, store, spool and log under ``workdir``."""

    ROLES = ("submission", "submissions", "relay", "http")

    def __init__(self, binary: Path, workdir: Path, *, cert: CertPair | None,
                 dns_port: int | None, delivery_port: int | None = None,
                 overrides: dict | None = None):
        self.binary, self.dir = binary, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "postern.toml"
        self.log_path = workdir / "postern.log"
        self.ports = {role: free_port() for role in self.ROLES}
        base = {
            "server": {"hostname": HOSTNAME},
            "listen": {role: f"127.0.0.1:{port}" for role, port in self.ports.items()},
            "tls": {"cert": cert.cert, "key": cert.key} if cert else None,
            "store": {"path": workdir / "store.db"},
            "spool": {"path": workdir / "spool"},
            # The harness's knot zones are unsigned and not linked to the root: validating them
            # from the IANA anchor would make every answer bogus. The DANE tests validate
            # from their own lab anchor.
            "dns": ({"servers": [f"127.0.0.1:{dns_port}"], "dnssec": False}
                    if dns_port else None),
            "delivery": {"port": delivery_port or free_port(), "retry_initial": "1s",
                         "retry_max": "2s"},
            "relay": {"networks": ["127.0.0.0/8"]},
            "limits": {"auth_failure_delay": "10ms"},
            "log": {"level": "info"},
        }
        base = {k: v for k, v in base.items() if v is not None}
        self.config = merge(base, overrides or {})
        self.proc: subprocess.Popen | None = None
        self.write_config()

    # -- config and CLI -----------------------------------------------------------------------
    def write_config(self, **overrides):
        """Rewrites the config file, applying ``section={key: value}`` overrides first."""
        self.config = merge(self.config, overrides)
        self.config_path.write_text(to_toml(self.config))

    def port(self, role: str) -> int:
        return int(self.config["listen"][role].rsplit(":", 1)[1])

    def cli(self, *args: str, check: bool = True, env: dict | None = None,
            with_config: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """``postern --config F ARGS...`` (``input`` on stdin); with ``check`` a non-zero exit
        fails the test."""
        cmd = [self.binary] + (["--config", self.config_path] if with_config else []) + list(args)
        full_env = {**os.environ, **(env or {})}
        result = run(cmd, timeout=30, env=full_env, input=input)
        if check:
            assert result.returncode == 0, (
                f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def add_address(self, address: str, plan: str | None = None):
        self.cli("address", "add", address, *(["--plan", plan] if plan else []))

    def add_alias(self, alias: str, address: str):
        self.cli("alias", "add", alias, address)

    def add_device(self, address: str, name: str) -> str:
        """Adds a device; returns its password, the last line of stdout."""
        return last_line(self.cli("device", "add", address, "--name", name).stdout)

    def add_account(self, address: str, *devices: str, plan: str | None = None) -> Account:
        self.add_address(address, plan)
        return Account(address, {name: self.add_device(address, name) for name in devices})

    def add_hosting(self, account: str, networks: Iterable[str], domains: Iterable[str]):
        """``hosting add ACCOUNT --network N... --domain D...``"""
        self.cli("hosting", "add", account, *[a for n in networks for a in ("--network", n)],
                 *[a for d in domains for a in ("--domain", d)])

    def quota(self, *target: str) -> dict:
        """``quota show TARGET --json`` parsed (TARGET: an address, or ``--hosting`` NAME)."""
        return json.loads(self.cli("quota", "show", *target, "--json").stdout)

    def metric(self, series: str) -> float | None:
        """The value of one ``/metrics`` series, e.g. ``postern_quota_backend_up`` or
        ``name{label="x"}`` exactly as exposed; None when absent."""
        status, _, text = self.http_get("/metrics")
        assert status == 200, status
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
        return None

    # -- process ------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0, *, ready: bool = True):
        """Starts ``postern serve`` and waits for `/readyz` 200 (with ``ready=False`` only for
        every listener to accept connections: a server that starts unready)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        for attempt in range(3):
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            self.proc = subprocess.Popen(
                [str(self.binary), "--config", str(self.config_path), "serve"],
                stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                self.wait_ready(timeout, ready=ready)
                break
            except AssertionError:
                # free_port() only found the port free a moment ago: another process on the
                # machine may have bound it since. Only before the first successful start may
                # the harness pick new ports (a restart keeps the ones the test knows).
                fresh = self.log_path.read_bytes()[logged:]
                if (self.started or attempt == 2 or self.proc.poll() is None
                        or b"Address already in use" not in fresh):
                    raise
                self._pick_new_ports()
        self.started = True
        return self

    started = False

    def _pick_new_ports(self):
        for role, port in list(self.ports.items()):
            if self.config["listen"].get(role) == f"127.0.0.1:{port}":
                self.ports[role] = free_port()
                self.config["listen"][role] = f"127.0.0.1:{self.ports[role]}"
        self.write_config()

    def wait_ready(self, timeout: float, *, ready: bool = True):
        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"postern serve exited with {self.proc.returncode}:\n"
                                     f"{self.log_tail()}")
            if "http" in self.config["listen"] and ready:
                try:
                    return self.http_get("/readyz", timeout=0.5)[0] == 200
                except OSError:
                    return False
            return all(port_open(self.port(r)) for r in self.ROLES if r in self.config["listen"])
        wait_until(up, timeout, "postern to be ready" if ready else "postern to listen",
                   interval=0.05)

    def kill9(self):
        """``kill -9`` of the server (no chance to flush or clean up)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        stop_process(self.proc)

    def restart(self, **overrides):
        self.stop()
        if overrides:
            self.write_config(**overrides)
        return self.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss_kb(self) -> int:
        """VmHWM (peak resident set) of the running server, in kB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    # -- endpoints ----------------------------------------------------------------------------
    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, dict, str]:
        url = f"http://127.0.0.1:{self.port('http')}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def connect(self, role: str = "submission", **kw) -> SmtpClient:
        """A raw client on ``role``, greeting read and asserted (465: after the handshake)."""
        client = SmtpClient("127.0.0.1", self.port(role),
                            implicit_tls=(role == "submissions"), **kw)
        greeting = client.reply()
        assert greeting == GREETING
        return client

    def login(self, user: str, password: str, role: str = "submission",
              mechanism: str = "PLAIN") -> SmtpClient:
        """EHLO, STARTTLS (587), EHLO, AUTH: every reply asserted; returns the client."""
        client = self.connect(role)
        assert client.ehlo().lines[0] == EHLO_FIRST
        if role == "submission":
            assert client.starttls() == TLS_GO
            assert client.ehlo().lines[0] == EHLO_FIRST
        auth = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        assert auth(user, password) == AUTH_OK
        return client


def last_line(stdout: str) -> str:
    lines = stdout.splitlines()
    assert lines, "empty stdout"
    return lines[-1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Redis: a single server or a three-master Cluster, on free loopback ports
# ---------------------------------------------------------------------------------------------
CLUSTER_BUS_OFFSET = 10_000          # Redis Cluster's bus listens on the data port + 10000


def free_port_with_bus(offset: int = CLUSTER_BUS_OFFSET) -> int:
    """A free port P whose Cluster bus port P + ``offset`` is free as well."""
    for _ in range(200):
        port = free_port()
        if port + offset > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisServer:
    """``redis-server`` on 127.0.0.1:<port> without persistence, its files in ``workdir``.

    Never the machine's 6379: the port is free when chosen, and stays the same across
    :meth:`stop` / :meth:`start` (a restart is the same server address, empty)."""

    def __init__(self, workdir: Path, *, cluster: bool = False):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.port = free_port_with_bus() if cluster else free_port()
        self.log = workdir / "redis.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "5000"]
        self.proc = subprocess.Popen(args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.log.read_text()[-2000:]}")
            return self.cli("PING").stdout.strip() == "PONG"
        wait_until(answers, 15, f"redis-server on port {self.port}", interval=0.02)
        return self

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """``redis-cli -p PORT ARGS...``"""
        return run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args], timeout=10)

    def stop(self):
        stop_process(self.proc)


class RedisCluster:
    """Three (by default) master-only Redis Cluster nodes made with ``redis-cli --cluster
    create``; ready once every node reports ``cluster_state:ok``."""

    def __init__(self, workdir: Path, masters: int = 3):
        self.nodes = [RedisServer(workdir / f"node{i}", cluster=True) for i in range(masters)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        create = run(["redis-cli", "--cluster", "create",
                      *[node.address for node in self.nodes],
                      "--cluster-replicas", "0", "--cluster-yes"], timeout=60)
        assert create.returncode == 0, f"redis-cli --cluster create: {create.stdout}{create.stderr}"

        def all_ok():
            return all("cluster_state:ok" in node.cli("CLUSTER", "INFO").stdout
                       for node in self.nodes)
        wait_until(all_ok, 20, "the Redis Cluster to be ok", interval=0.05)
        return self

    def stop(self):
        for node in self.nodes:
            node.stop()


PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postern"


class PostgresServer:
    """A throwaway PostgreSQL on 127.0.0.1:<port>: ``initdb`` into ``workdir`` (as the
    ``postgres`` user through ``runuser`` when the tests run as root, since initdb refuses
    root), password authentication (SCRAM) for the superuser ``postern``, ``fsync=off``.

    Never the machine's 5432: the port is free when chosen, and stays the same across
    :meth:`stop` / :meth:`start` (a restart keeps the data).

    With ``tls_names``: ``ssl = on`` with a certificate for those names (DNS names or IP
    addresses) issued by a test CA (``self.ca.cert``); plaintext is still accepted."""

    def __init__(self, workdir: Path, *, tls_names: list[str] | None = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls_names is not None
        self.password = "fleet-test-pg-password-3a7e"
        self.data = workdir / "data"
        self.log = workdir / "server.log"
        assert (PG_BIN / "initdb").exists(), (
            f"{PG_BIN}/initdb is missing: run tests/install-deps.sh (Debian package postgresql)")
        pwfile = workdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if tls_names is not None:
            # Made before initdb: the data directory must still be absent, and the files end
            # up owned by postgres with the chown below.
            self.ca = make_ca(workdir / "ca", "Postern test PostgreSQL CA")
            self.server_cert = issue_cert(self.ca, workdir / "server-tls", "db", tls_names)
            self.server_cert.key.chmod(0o600)
        if os.geteuid() == 0:
            run(["chown", "-R", "postgres:postgres", str(workdir)], timeout=30)
        self._server(["initdb", "-D", str(self.data), "-U", PG_USER, "--auth=scram-sha-256",
                      "--no-sync", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"])

    def _server(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = run(cmd, timeout=60)
        if check:
            assert result.returncode == 0, f"{args[0]}: {result.stdout}{result.stderr}"
        return result

    def start(self) -> PostgresServer:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.dir} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        if self.tls:
            options += (f" -c ssl=on -c ssl_cert_file={self.server_cert.cert} "
                        f"-c ssl_key_file={self.server_cert.key}")
        self._server(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                      "-w", "-t", "30", "start"])
        return self

    def stop(self, mode: str = "fast"):
        self._server(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"], check=False)

    def url(self, database: str) -> str:
        """The URL without the password (Postern reads it from ``password_file``)."""
        return f"postgres://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def psql(self, database: str, sql: str) -> str:
        result = run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                      "-U", PG_USER, "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
                     timeout=30, env={**os.environ, "PGPASSWORD": self.password})
        assert result.returncode == 0, f"psql: {result.stderr}"
        return result.stdout.strip()

    def create_database(self, name: str) -> str:
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return name
