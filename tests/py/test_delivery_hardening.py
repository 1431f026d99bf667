"""Delivery hardening (issue 10): a slow destination does not stall the others, dead
destinations, MX loops back to the relay itself, DSN parameters relayed to DSN-capable hops,
and UTF-8 addresses never passed to a hop without SMTPUTF8.

This file runs its own knotd (the zones below, over the wire on loopback) and its own
receivers, all on one port P that is Postern's ``[delivery] port``:

* a *tarpit* on 127.0.0.5: accepts TCP and never says a word (this file's own socket server);
* aiosmtpd receivers: healthy.test (127.0.0.6), a DSN-advertising one recording the raw MAIL
  and RCPT lines (127.0.0.9), plain ones with and without SMTPUTF8.

Messages are submitted with smtplib on the relay port (25) from 127.0.0.1, a trusted network
in the test config, so any sender is allowed; senders are at senders.test, whose MX gets the
DSNs."""

from __future__ import annotations

import email
import email.policy
import smtplib
import socket
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from support import (Knot, Postern, SmtpReceiver, delivery_log, free_port_on, make_message,
                     wait_until)

TARPIT = "127.0.0.5"
HEALTHY = "127.0.0.6"
LOOP_WILDCARD = "127.0.0.8"
DSN_MX = "127.0.0.9"
NODSN_MX = "127.0.0.10"
UTF8_MX = "127.0.0.11"
NOUTF8_MX = "127.0.0.12"
SENDERS_MX = "127.0.0.13"

ZONES = {
    "tarpit.test.": ["@ IN MX 10 mx.tarpit.test.", f"mx IN A {TARPIT}"],
    "healthy.test.": ["@ IN MX 10 mx.healthy.test.", f"mx IN A {HEALTHY}"],
    # MX hosts that are the relay itself: its own listener address, and any local address
    # when it listens on 0.0.0.0.
    "loop.test.": ["@ IN MX 10 mx.loop.test.", "mx IN A 127.0.0.1"],
    "loopwild.test.": ["@ IN MX 10 mx.loopwild.test.", f"mx IN A {LOOP_WILDCARD}"],
    "dsn.test.": ["@ IN MX 10 mx.dsn.test.", f"mx IN A {DSN_MX}"],
    "nodsn.test.": ["@ IN MX 10 mx.nodsn.test.", f"mx IN A {NODSN_MX}"],
    "utf8.test.": ["@ IN MX 10 mx.utf8.test.", f"mx IN A {UTF8_MX}"],
    "noutf8.test.": ["@ IN MX 10 mx.noutf8.test.", f"mx IN A {NOUTF8_MX}"],
    "senders.test.": ["@ IN MX 10 mx.senders.test.", f"mx IN A {SENDERS_MX}"],
}

DEAD = "postern_delivery_dead_destinations"
EARLY = "postern_delivery_early_recorded_recipients_total"


class Tarpit:
    """Accepts TCP connections on ``host:port`` and never sends a byte: a greeting that never
    comes. Counts connections, and the most open at once since :meth:`reset_peak`."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.total = 0
        self.peak = 0
        self.listener: socket.socket | None = None

    def start(self) -> Tarpit:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((self.host, self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _accept(self, listener: socket.socket):
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            # A connection the client closed before opening this one is not counted as open
            # at the same time (its FIN came first; the watcher may not have seen it yet).
            self._sweep()
            with self.lock:
                self.open.append(conn)
                self.total += 1
                self.peak = max(self.peak, len(self.open))

    def _watch(self):
        """Notices connections the client closed (it gave up waiting for the greeting)."""
        while self.listener is not None:
            self._sweep()
            time.sleep(0.02)

    def _sweep(self):
        with self.lock:
            conns = list(self.open)
        for conn in conns:
            try:
                conn.setblocking(False)
                closed = conn.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                with self.lock:
                    if conn in self.open:
                        self.open.remove(conn)
                conn.close()

    def still_open(self) -> int:
        with self.lock:
            return len(self.open)

    def reset_peak(self):
        with self.lock:
            self.peak = len(self.open)

    def stop(self):
        """Stops listening (new connections are refused) and closes every connection."""
        listener, self.listener = self.listener, None
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the
            # socket listening until it returns.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self.lock:
            conns, self.open = self.open, []
        for conn in conns:
            conn.close()


class RawLineSMTP(SMTP):
    """aiosmtpd's session that records the raw MAIL and RCPT argument text and, for a
    DSN-capable receiver, takes the RFC 3461 parameters off before aiosmtpd (which knows none
    of them) sees the command."""

    def __init__(self, receiver: DsnReceiver, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.receiver = receiver

    def _strip(self, arg: str) -> str:
        words = arg.split(" ")
        if self.receiver.dsn:
            words = [w for w in words
                     if w.split("=", 1)[0].upper() not in ("RET", "ENVID", "NOTIFY", "ORCPT")]
        return " ".join(words)

    async def smtp_MAIL(self, arg):
        self.receiver.record("MAIL " + (arg or ""))
        await super().smtp_MAIL(self._strip(arg) if arg else arg)

    async def smtp_RCPT(self, arg):
        self.receiver.record("RCPT " + (arg or ""))
        await super().smtp_RCPT(self._strip(arg) if arg else arg)


class DsnReceiver:
    """An aiosmtpd receiver that advertises DSN (RFC 3461) when ``dsn``, SMTPUTF8 when
    ``smtputf8``, and records the raw MAIL/RCPT lines and the messages."""

    def __init__(self, host: str, port: int, *, dsn: bool, smtputf8: bool = False):
        self.host, self.port, self.dsn = host, port, dsn
        self.lock = threading.Lock()
        self.lines: list[str] = []
        self.messages: list[tuple[str, list[str], bytes]] = []
        receiver = self

        class Ctl(Controller):
            def factory(self):
                return RawLineSMTP(receiver, self.handler, **self.SMTP_kwargs)

        self.controller = Ctl(self, hostname=host, port=port, ident="dsn-mx",
                              decode_data=False, data_size_limit=None,
                              enable_SMTPUTF8=smtputf8)

    def record(self, line: str):
        with self.lock:
            self.lines.append(line)

    def raw(self) -> list[str]:
        with self.lock:
            return list(self.lines)

    def received(self) -> list[tuple[str, list[str], bytes]]:
        with self.lock:
            return list(self.messages)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.dsn:
            responses.insert(len(responses) - 1, "250-DSN")
        return responses

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  bytes(envelope.original_content)))
        return "250 2.0.0 Message accepted"

    def start(self) -> DsnReceiver:
        self.controller.start()
        return self

    def stop(self):
        self.controller.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("hardening")
    knot = Knot(d / "knot", ZONES)
    knot.start()
    port = free_port_on(TARPIT, HEALTHY, LOOP_WILDCARD, DSN_MX, NODSN_MX, UTF8_MX, NOUTF8_MX,
                        SENDERS_MX)
    receivers = {
        "healthy": SmtpReceiver(HEALTHY, port).start(),
        "senders": SmtpReceiver(SENDERS_MX, port).start(),
        "dsn": DsnReceiver(DSN_MX, port, dsn=True).start(),
        "nodsn": DsnReceiver(NODSN_MX, port, dsn=False).start(),
        "utf8": DsnReceiver(UTF8_MX, port, dsn=False, smtputf8=True).start(),
        # aiosmtpd without SMTPUTF8 in its EHLO.
        "noutf8": DsnReceiver(NOUTF8_MX, port, dsn=False, smtputf8=False).start(),
    }
    yield {"knot": knot, "port": port, "rx": receivers}
    for r in receivers.values():
        r.stop()
    knot.stop()


@pytest.fixture
def tarpit(lab):
    pit = Tarpit(TARPIT, lab["port"]).start()
    yield pit
    pit.stop()


@pytest.fixture
def make_relay(postern_bin, tmp_path, certs, lab, request):
    """Factory: a started Postern resolving through this file's knotd and delivering to port
    P; ``delivery`` and other sections are overrides."""
    made: list[Postern] = []

    def factory(**overrides) -> Postern:
        dns = {"servers": [f"127.0.0.1:{lab['knot'].port}"], "dnssec": False}
        pt = Postern(postern_bin, tmp_path / f"postern{len(made)}", cert=certs.server,
                     dns_port=None, delivery_port=lab["port"],
                     overrides={"dns": dns, "mta_sts": {"enabled": False}, **overrides})
        made.append(pt)
        return pt.start()

    request.node.posterns = made
    yield factory
    for pt in made:
        pt.stop()


def send(srv, sender: str, rcpts: list[str], *, mail_options=(), rcpt_options=None,
         msg: bytes | None = None) -> str:
    """One transaction on the relay port with smtplib, every reply code asserted; returns
    the queue id."""
    msg = msg or make_message(sender=sender, to=rcpts[0], subject="hardening",
                              body="Body line.\r\n")
    with smtplib.SMTP("127.0.0.1", srv.port("relay"), timeout=10) as s:
        assert s.ehlo("client.test")[0] == 250
        assert s.mail(sender, list(mail_options))[0] == 250
        for r in rcpts:
            assert s.rcpt(r, list((rcpt_options or {}).get(r, ())))[0] == 250
        code, text = s.data(msg)
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[-1]


def dsns_to(receiver, sender: str) -> list:
    """Messages from <> to ``sender`` that ``receiver`` got, parsed."""
    return [email.message_from_bytes(m.content, policy=email.policy.default)
            for m in receiver.received() if m.mail_from == "<>" and sender in m.rcpt_tos]


def status_groups(dsn) -> list:
    """The per-recipient field groups of a DSN's message/delivery-status part."""
    assert dsn.get_content_type() == "multipart/report"
    return dsn.get_payload()[1].get_payload()[1:]


# ---------------------------------------------------------------------------------------------
# 1. One slow destination must not stall the others
# ---------------------------------------------------------------------------------------------
def test_tarpit_destination_does_not_hold_the_workers(make_relay, lab, tarpit):
    """workers = 3, max_per_destination = 1: three messages for a tarpit (accepts TCP, never
    greets) and then one for a healthy domain. The tarpit holds its one slot; the two other
    tarpit messages wait in its queue without a worker; the healthy message is delivered
    while the tarpit's only connection is still waiting for its greeting (no timeout has
    fired: the command timeout is 10 minutes, and no second tarpit connection was made)."""
    srv = make_relay(delivery={"workers": 3, "max_per_destination": 1,
                               "command_timeout": "10m", "connection_idle": "0s"})
    for i in range(3):
        send(srv, "s1@senders.test", [f"slow{i}@tarpit.test"])
    wait_until(lambda: tarpit.total == 1, 10, "the tarpit's first connection")
    send(srv, "s1@senders.test", ["fast@healthy.test"])
    got = lab["rx"]["healthy"].wait_for("fast@healthy.test", timeout=30)
    assert got.rcpt_tos == ["fast@healthy.test"]
    # Still stuck: the one tarpit connection is open, nothing timed out or was retried.
    assert tarpit.total == 1 and tarpit.still_open() == 1, (tarpit.total, tarpit.still_open())
    assert "timeout" not in srv.log_text()
    for i in range(3):
        assert delivery_log(srv, f"slow{i}@tarpit.test") == []
    # Let the tarpit go: connections end, new ones are refused; shutdown is quick.
    tarpit.stop()


def test_max_active_messages_keeps_the_rest_in_the_spool(make_relay, lab, tarpit):
    """max_active_messages = 1: with one message in memory (stuck at the tarpit) the next one
    stays in the spool; it is taken, and delivered, only after the first one's attempt has
    ended (its greeting timeout closed the tarpit connection). With the limit at 2 the same
    healthy message goes at once (the previous test's case)."""
    srv = make_relay(delivery={"workers": 3, "max_active_messages": 1,
                               "command_timeout": "3s", "connection_idle": "0s"})
    send(srv, "s1m@senders.test", ["stuck@tarpit.test"])
    wait_until(lambda: tarpit.total == 1, 10, "the tarpit's connection")
    send(srv, "s1m@senders.test", ["after@healthy.test"])
    got = lab["rx"]["healthy"].wait_for("after@healthy.test", timeout=30)
    first = wait_until(lambda: delivery_log(srv, "stuck@tarpit.test"), 10,
                       "the tarpit attempt logged")[0]
    assert first["reply"].endswith("timeout after 3s at greeting"), first
    after = wait_until(lambda: delivery_log(srv, "after@healthy.test"), 10,
                       "the healthy delivery logged")[0]
    assert after["state"] == "delivered" and after["time_ms"] >= first["time_ms"]
    srv.stop()
    wait_until(lambda: tarpit.still_open() == 0, 10, "the first relay's connections gone")
    before = tarpit.total

    srv2 = make_relay(delivery={"workers": 3, "max_active_messages": 2,
                                "command_timeout": "10m", "connection_idle": "0s"})
    send(srv2, "s1n@senders.test", ["stuck2@tarpit.test"])
    wait_until(lambda: tarpit.still_open() == 1 and tarpit.total == before + 1, 10,
               "the second relay's tarpit connection")
    send(srv2, "s1n@senders.test", ["beside@healthy.test"])
    lab["rx"]["healthy"].wait_for("beside@healthy.test", timeout=30)
    assert tarpit.still_open() == 1 and delivery_log(srv2, "stuck2@tarpit.test") == []
    tarpit.stop()


def test_a_group_delivered_before_a_crash_is_not_delivered_again(make_relay, lab, tarpit):
    """A message for two destinations: healthy.test accepts at once, the tarpit never greets.
    The healthy group's delivery is recorded in the spool (and logged) as soon as its
    transaction ends, before the attempt's other group: after a kill -9 and a restart only the
    tarpit's recipient is tried again, and healthy.test has the message exactly once."""
    srv = make_relay()
    healthy = lab["rx"]["healthy"]
    send(srv, "s1e@senders.test", ["early@healthy.test", "late@tarpit.test"])
    healthy.wait_for("early@healthy.test", timeout=30)
    wait_until(lambda: srv.metric(EARLY) == 1, 10, "the healthy group recorded early")
    logged = wait_until(lambda: delivery_log(srv, "early@healthy.test"), 10,
                        "the healthy group logged")
    assert [r["state"] for r in logged] == ["delivered"], logged
    # The tarpit's group is still waiting for its greeting: the attempt has not ended.
    assert tarpit.still_open() == 1 and delivery_log(srv, "late@tarpit.test") == []
    srv.kill9()
    tarpit.stop()  # the retry after the restart finds nothing listening: deferred
    srv.start()
    late = wait_until(lambda: delivery_log(srv, "late@tarpit.test"), 30,
                      "the tarpit recipient tried again")
    assert [r["state"] for r in late] == ["deferred"], late
    assert srv.metric(EARLY) == 0  # the retry had one group only
    copies = [m for m in healthy.received() if "early@healthy.test" in m.rcpt_tos]
    assert len(copies) == 1, copies
    assert [r["state"] for r in delivery_log(srv, "early@healthy.test")] == ["delivered"]


# ---------------------------------------------------------------------------------------------
# 2. Dead destinations
# ---------------------------------------------------------------------------------------------
def test_destination_that_keeps_timing_out_is_dead_with_concurrency_one(make_relay, lab,
                                                                        tarpit):
    """max_per_destination = 3, command timeout 1 s. The gauge starts at an explicit 0. One
    message to the tarpit times out at the greeting twice (first attempt and first retry):
    the destination is dead (gauge 1). Three more messages then reach the tarpit one
    connection at a time, never more at once. When the host answers again (an SMTP server in
    the tarpit's place) everything is delivered and the gauge is back to 0."""
    srv = make_relay(delivery={"workers": 3, "max_per_destination": 3,
                               "command_timeout": "1s", "connection_idle": "0s"})
    assert srv.metric(DEAD) == 0
    send(srv, "s2@senders.test", ["dead0@tarpit.test"])
    wait_until(lambda: srv.metric(DEAD) == 1, 30, "the tarpit taken for dead")
    assert tarpit.total == 2, tarpit.total
    [first, second] = delivery_log(srv, "dead0@tarpit.test")
    for record in (first, second):
        assert record["state"] == "deferred" and record["dsn"] == "4.4.2", record
        assert record["reply"] == "mx.tarpit.test[127.0.0.5]: timeout after 1s at greeting"
    tarpit.reset_peak()
    before = tarpit.total
    for i in range(1, 4):
        send(srv, "s2@senders.test", [f"dead{i}@tarpit.test"])
    wait_until(lambda: tarpit.total >= before + 4, 30, "four more tarpit connections")
    assert tarpit.peak == 1, f"{tarpit.peak} connections at once to a dead destination"
    assert srv.metric(DEAD) == 1
    # The host comes back: the next attempt delivers, and the destination is alive again.
    tarpit.stop()
    back = SmtpReceiver(TARPIT, lab["port"]).start()
    try:
        wait_until(lambda: len(back.received()) == 4, 30, "the four messages delivered")
        assert sorted(r for m in back.received() for r in m.rcpt_tos) == [
            f"dead{i}@tarpit.test" for i in range(4)]
        wait_until(lambda: srv.metric(DEAD) == 0, 10, "the destination alive again")
    finally:
        back.stop()


# ---------------------------------------------------------------------------------------------
# 3. MX loops: an MX host that is the relay itself
# ---------------------------------------------------------------------------------------------
LOOP_TEXT = "mail for {} loops back to myself"


def test_mx_pointing_back_to_own_listener_bounces_5_4_6(make_relay, lab):
    """loop.test's MX is 127.0.0.1 and Postern's relay listener is 127.0.0.1:P, P being the
    delivery port: the recipient fails for good with 5.4.6 and Postfix's text, the sender
    gets a DSN saying so, and Postern never connected to itself (one session on its relay
    port: the submission). A receiver at 127.0.0.1 on another port is not a loop (the rest of
    the suite delivers to such receivers as relay hosts)."""
    port = lab["port"]
    srv = make_relay(listen={"relay": f"127.0.0.1:{port}"})
    sender = "s3@senders.test"
    send(srv, sender, ["someone@loop.test", "ok3@healthy.test"])
    lab["rx"]["healthy"].wait_for("ok3@healthy.test")
    dsn = wait_until(lambda: dsns_to(lab["rx"]["senders"], sender), 20, "the loop DSN")[0]
    [group] = status_groups(dsn)
    assert group["Final-Recipient"] == "rfc822; someone@loop.test"
    assert group["Action"] == "failed" and group["Status"] == "5.4.6"
    assert group["Remote-MTA"] is None and group["Diagnostic-Code"] is None
    text = dsn.get_payload()[0].get_content()
    assert f"<someone@loop.test>: {LOOP_TEXT.format('loop.test')}" in text, text
    [record] = delivery_log(srv, "someone@loop.test")
    assert record["state"] == "bounced" and record["dsn"] == "5.4.6", record
    assert record["reply"] == LOOP_TEXT.format("loop.test"), record
    assert record["ip"] is None, record
    # The only SMTP session on the relay port was the submission above.
    assert srv.log_text().count("MX host is this relay itself") == 1


def test_mx_on_a_wildcard_listener_is_a_loop_for_any_local_address(make_relay, lab):
    """Relay listener on 0.0.0.0:Q with Q the delivery port: loopwild.test's MX 127.0.0.8 is
    a local address, so it is this relay too (5.4.6)."""
    port = free_port_on("0.0.0.0")
    srv = make_relay(listen={"relay": f"0.0.0.0:{port}"}, delivery={"port": port})
    send(srv, "s3w@senders.test", ["someone@loopwild.test"])

    def bounced():
        return [r for r in delivery_log(srv, "someone@loopwild.test") if r["state"] == "bounced"]
    [record] = wait_until(bounced, 20, "the loop bounce")
    assert record["dsn"] == "5.4.6" and record["reply"] == LOOP_TEXT.format("loopwild.test")


# ---------------------------------------------------------------------------------------------
# 5. SMTPUTF8: UTF-8 addresses never go to a hop that did not advertise it
# ---------------------------------------------------------------------------------------------
def test_utf8_addresses_bounce_5_6_7_at_a_hop_without_smtputf8(make_relay, lab):
    """A message submitted with SMTPUTF8 to a UTF-8 recipient at an SMTPUTF8 hop, and to a
    UTF-8 and an ASCII recipient at a hop without SMTPUTF8 (aiosmtpd, enable_SMTPUTF8 off):
    the first hop gets MAIL with SMTPUTF8 and the UTF-8 RCPT; the second hop gets no command
    at all, and the sender one DSN listing both its recipients with 5.6.7. (A UTF-8 address
    without SMTPUTF8 on MAIL is refused at submission, 553 5.6.7; the client's own screening of
    such an address per recipient, for mail spooled before that, is unit-tested in
    `src/delivery/client.rs`.)"""
    srv = make_relay()
    sender = "s5@senders.test"
    rcpts = ["jörg@utf8.test", "jörg@noutf8.test", "ascii5@noutf8.test"]
    msg = make_message(sender=sender, to="jörg@utf8.test", subject="utf8", body="Body.\r\n")
    send(srv, sender, rcpts, mail_options=["SMTPUTF8"], msg=msg)
    utf8, noutf8 = lab["rx"]["utf8"], lab["rx"]["noutf8"]
    wait_until(lambda: utf8.received(), 20, "the SMTPUTF8 hop's delivery")
    mail = [line for line in utf8.raw() if line.startswith("MAIL ")]
    assert mail and mail[-1].startswith(f"MAIL FROM:<{sender}>"), mail
    assert "SMTPUTF8" in mail[-1].split(), mail
    assert "RCPT TO:<jörg@utf8.test>" in utf8.raw()
    dsn = wait_until(lambda: dsns_to(lab["rx"]["senders"], sender), 20, "the 5.6.7 DSN")[0]
    groups = status_groups(dsn)
    assert [g["Final-Recipient"] for g in groups] == ["rfc822; jörg@noutf8.test",
                                                      "rfc822; ascii5@noutf8.test"]
    assert {g["Status"] for g in groups} == {"5.6.7"}
    assert {g["Action"] for g in groups} == {"failed"}
    text = dsn.get_payload()[0].get_content()
    assert ("mx.noutf8.test[127.0.0.12] does not support SMTPUTF8, which the message "
            "requires") in text, text
    assert noutf8.raw() == [], noutf8.raw()


# ---------------------------------------------------------------------------------------------
# 4. DSN parameters relayed to a hop that advertises DSN (RFC 3461 5.2.2, 6.2.1)
# ---------------------------------------------------------------------------------------------
def test_dsn_parameters_relayed_and_relayed_notice_only_for_a_non_dsn_hop(make_relay, lab):
    """One message with RET=FULL and ENVID, two recipients with NOTIFY=SUCCESS,FAILURE and
    ORCPT: one at a hop advertising DSN, one at a hop without. The DSN hop gets RET and ENVID
    on MAIL and NOTIFY and ORCPT (xtext) on RCPT; the other hop gets none of them; the sender
    gets one `Action: relayed` DSN, for the non-DSN hop's recipient only."""
    srv = make_relay()
    sender = "s4@senders.test"
    rcpts = ["r4@dsn.test", "r4@nodsn.test"]
    send(srv, sender, rcpts, mail_options=["RET=FULL", "ENVID=QQ314159"],
         rcpt_options={"r4@dsn.test": ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Orig+2B4@dsn.test"],
                       "r4@nodsn.test": ["NOTIFY=SUCCESS,FAILURE",
                                         "ORCPT=rfc822;orig4@nodsn.test"]})
    dsn_rx, nodsn_rx = lab["rx"]["dsn"], lab["rx"]["nodsn"]
    wait_until(lambda: dsn_rx.received() and nodsn_rx.received(), 20, "both deliveries")
    assert [line for line in dsn_rx.raw() if "s4@" in line or "r4@" in line] == [
        f"MAIL FROM:<{sender}> RET=FULL ENVID=QQ314159",
        "RCPT TO:<r4@dsn.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Orig+2B4@dsn.test",
    ]
    assert [line for line in nodsn_rx.raw() if "s4@" in line or "r4@" in line] == [
        f"MAIL FROM:<{sender}>", "RCPT TO:<r4@nodsn.test>"]
    senders = lab["rx"]["senders"]
    [relayed] = wait_until(lambda: dsns_to(senders, sender), 20, "the relayed DSN")
    assert relayed["Subject"] == "Delivery Status Notification (Relayed)"
    head = relayed.get_payload()[1].get_payload()[0]
    assert head["Original-Envelope-Id"] == "QQ314159"
    [group] = status_groups(relayed)
    assert group["Final-Recipient"] == "rfc822; r4@nodsn.test"
    assert group["Original-Recipient"] == "rfc822; orig4@nodsn.test"
    assert group["Action"] == "relayed"
    # Everything delivered (the relayed DSN too): no further notice is coming.
    wait_until(lambda: srv.metric("postern_spool_messages") == 0, 20, "an empty spool")
    assert len(dsns_to(senders, sender)) == 1
    assert srv.metric('postern_delivery_bounces_total{kind="success"}') == 1
