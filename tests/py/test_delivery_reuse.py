"""Per-destination concurrency (`[delivery] max_per_destination`) and connection reuse
(`[delivery] connection_idle`), against a receiver of this file's own that counts TCP
connections, concurrent ones and concurrent transactions. Postern delivers to it as its
relay host (`[delivery] relayhost`): one destination, one host, one address."""

import asyncio
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from support import delivery_log, free_port, wait_until
from support import submit_as_alice as submit

REUSED = 'postern_delivery_connections_total{reused="true"}'
NEW = 'postern_delivery_connections_total{reused="false"}'


class CountingSMTP(SMTP):
    """aiosmtpd's session, telling the receiver about connections, RSET and QUIT."""

    def __init__(self, receiver, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.receiver = receiver

    def connection_made(self, transport):
        super().connection_made(transport)
        self.receiver.opened(self, transport)

    def connection_lost(self, error):
        self.receiver.closed(self)
        super().connection_lost(error)

    async def smtp_RSET(self, arg):
        self.receiver.count("RSET")
        await super().smtp_RSET(arg)

    async def smtp_QUIT(self, arg):
        self.receiver.count("QUIT")
        await super().smtp_QUIT(arg)


class Receiver:
    """Accepts everything; holds each DATA ``hold`` seconds; records peers and counts."""

    def __init__(self, hold: float = 0.0):
        self.hold = hold
        self.lock = threading.Lock()
        self.connections: list[tuple] = []      # peer (ip, port) of each TCP connection
        self.open: dict[object, object] = {}    # session -> transport
        self.max_open = 0
        self.in_data = 0
        self.max_in_data = 0
        self.messages: list[tuple] = []         # (peer, rcpt_tos)
        self.commands: dict[str, int] = {}
        self.port = free_port()
        receiver = self

        class Ctl(Controller):
            def factory(self):
                return CountingSMTP(receiver, self.handler, **self.SMTP_kwargs)

        self.controller = Ctl(self, hostname="127.0.0.1", port=self.port, ident="reuse-mx",
                              decode_data=False, data_size_limit=None)

    def opened(self, session, transport):
        with self.lock:
            self.connections.append(transport.get_extra_info("peername")[:2])
            self.open[session] = transport
            self.max_open = max(self.max_open, len(self.open))

    def closed(self, session):
        with self.lock:
            self.open.pop(session, None)

    def count(self, command):
        with self.lock:
            self.commands[command] = self.commands.get(command, 0) + 1

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.in_data += 1
            self.max_in_data = max(self.max_in_data, self.in_data)
        try:
            await asyncio.sleep(self.hold)
        finally:
            with self.lock:
                self.in_data -= 1
                self.messages.append((session.peer[:2], list(envelope.rcpt_tos)))
        return "250 2.0.0 Message accepted"

    def close_all(self):
        """Closes every connection from the server side, without a reply (an idle timeout)."""
        with self.lock:
            transports = list(self.open.values())
        for t in transports:
            self.controller.loop.call_soon_threadsafe(t.close)
        wait_until(lambda: not self.open, 5, "the receiver's connections to close")

    def received(self) -> list[tuple]:
        with self.lock:
            return list(self.messages)

    def wait_messages(self, n: int, timeout: float = 20):
        wait_until(lambda: len(self.received()) >= n, timeout, f"{n} messages at the receiver")
        return self.received()


@pytest.fixture
def receiver():
    made = []

    def make(hold: float = 0.0) -> Receiver:
        r = Receiver(hold)
        r.controller.start()
        made.append(r)
        # Controller.start() connects once itself to check the server is up: not ours.
        wait_until(lambda: not r.open, 5, "the controller's own check connection to close")
        with r.lock:
            r.connections.clear()
            r.max_open = 0
        return r
    yield make
    for r in made:
        r.controller.stop()


def start(make_server, rcv: Receiver, **delivery):
    return make_server(delivery={"relayhost": f"[127.0.0.1]:{rcv.port}", **delivery})


def metric(srv, series) -> float:
    value = srv.metric(series)
    return 0.0 if value is None else value


@pytest.mark.parametrize("cap,messages", [(1, 4), (3, 6)])
def test_concurrency_capped_per_destination(make_server, receiver, cap, messages):
    """Each message is its own group to the one destination; the receiver holds each DATA
    0.5 s. Never more than `max_per_destination` transactions (or connections) at once, and
    the ones waiting for a slot are delivered, not deferred."""
    rcv = receiver(hold=0.5)
    srv = start(make_server, rcv, max_per_destination=cap)
    rcpts = [f"cap{cap}-{i}@dest.test" for i in range(messages)]
    for rcpt in rcpts:
        submit(srv, rcpt)
    got = rcv.wait_messages(messages, timeout=30)
    assert sorted(r for _, rs in got for r in rs) == sorted(rcpts)
    assert rcv.max_in_data <= cap, f"{rcv.max_in_data} transactions at once, cap {cap}"
    assert rcv.max_open <= cap, f"{rcv.max_open} connections at once, cap {cap}"
    if cap > 1:
        assert rcv.max_in_data >= 2, "no concurrency at all below the cap"
    for rcpt in rcpts:
        wait_until(lambda: [r["state"] for r in delivery_log(srv, rcpt)] == ["delivered"], 10,
                   f"{rcpt} delivered in one attempt")


def test_queued_messages_share_one_connection(make_server, receiver):
    """With one slot, messages queued for the same host go over one TCP connection: one
    connection, N transactions, RSET before each reused one, and the reuse counted."""
    rcv = receiver()
    srv = start(make_server, rcv, max_per_destination=1, connection_idle="5s")
    rcpts = [f"reuse-{i}@dest.test" for i in range(4)]
    for rcpt in rcpts:
        submit(srv, rcpt)
    got = rcv.wait_messages(4)
    assert len(rcv.connections) == 1, (rcv.connections, got, rcv.commands)
    assert {peer for peer, _ in got} == {rcv.connections[0]}
    assert rcv.commands.get("RSET") == 3, rcv.commands
    wait_until(lambda: metric(srv, REUSED) == 3, 5, "3 reused connections counted")
    assert metric(srv, NEW) == 1
    for rcpt in rcpts:
        [record] = delivery_log(srv, rcpt)
        assert record["state"] == "delivered", record
        assert record["tls_mode"] == "plaintext" and record["ip"] == "127.0.0.1", record
        assert "250 2.0.0 Message accepted" in record["reply"], record


def test_idle_session_quits_when_it_expires(make_server, receiver):
    """connection_idle = 1s: the idle session gets QUIT about a second after its message."""
    rcv = receiver()
    srv = start(make_server, rcv, connection_idle="1s")
    submit(srv, "expire@dest.test")
    rcv.wait_messages(1)
    t0 = time.monotonic()
    assert rcv.open, "the session was closed at once, not kept"
    wait_until(lambda: not rcv.open, 5, "the idle session to be closed")
    assert rcv.commands.get("QUIT") == 1, rcv.commands
    assert 0.3 <= time.monotonic() - t0 <= 4


def test_reuse_disabled(make_server, receiver):
    """connection_idle = "0s": every message gets its own connection, closed with QUIT."""
    rcv = receiver()
    srv = start(make_server, rcv, max_per_destination=1, connection_idle="0s")
    for i in range(2):
        submit(srv, f"noreuse-{i}@dest.test")
        rcv.wait_messages(i + 1)
    wait_until(lambda: not rcv.open, 5, "the sessions to be closed")
    assert len(rcv.connections) == 2 and rcv.commands.get("QUIT") == 2, rcv.commands
    assert "RSET" not in rcv.commands
    assert metric(srv, REUSED) == 0


def test_dead_idle_connection_falls_back_to_a_new_one(make_server, receiver):
    """The receiver drops the idle connection; the next message still goes through at once,
    on a new connection, in its first attempt, and nothing counts as reused."""
    rcv = receiver()
    srv = start(make_server, rcv, max_per_destination=1, connection_idle="30s")
    submit(srv, "first@dest.test")
    rcv.wait_messages(1)
    wait_until(lambda: metric(srv, NEW) == 1, 5, "the first connection counted")
    rcv.close_all()
    submit(srv, "second@dest.test")
    got = rcv.wait_messages(2, timeout=10)
    assert len(rcv.connections) == 2, rcv.connections
    assert got[1][0] == rcv.connections[1] != rcv.connections[0]
    [record] = wait_until(lambda: delivery_log(srv, "second@dest.test"), 5, "the log record")
    assert (record["state"], record["attempt"]) == ("delivered", 1), record
    assert "250 2.0.0 Message accepted" in record["reply"], record
    assert metric(srv, REUSED) == 0
    wait_until(lambda: metric(srv, NEW) == 2, 5, "the second connection counted")
