"""The delivery client's pipelining (RFC 2920) against an aiosmtpd receiver that advertises
PIPELINING: MAIL, every RCPT and DATA in one write (with RSET in front on a reused session),
replies read in order, a refused RCPT inside the group failing only its recipient. Postern
delivers to it as its relay host: one destination, one host, one address."""

import threading

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from support import delivery_log, free_port, wait_until
from support import submit_as_alice as submit

REFUSAL = "550 5.1.1 No such user here"


class RecordingSMTP(SMTP):
    """aiosmtpd's session, telling the receiver about every chunk of bytes as it arrives."""

    def __init__(self, receiver, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.receiver = receiver

    def connection_made(self, transport):
        super().connection_made(transport)
        with self.receiver.lock:
            self.receiver.connections += 1

    def data_received(self, data):
        with self.receiver.lock:
            self.receiver.chunks.append(bytes(data))
        super().data_received(data)


class PipeliningReceiver:
    """Advertises PIPELINING; refuses RCPT of local parts starting with ``refused``; records
    each chunk read from the connection and each message."""

    def __init__(self):
        self.lock = threading.Lock()
        self.chunks: list[bytes] = []
        self.connections = 0
        self.messages: list[tuple[str, list[str], bytes]] = []  # (MAIL FROM, RCPT TOs, data)
        self.port = free_port()
        receiver = self

        class Ctl(Controller):
            def factory(self):
                return RecordingSMTP(receiver, self.handler, **self.SMTP_kwargs)

        self.controller = Ctl(self, hostname="127.0.0.1", port=self.port, ident="pipe-mx",
                              decode_data=False, data_size_limit=None)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("refused"):
            return REFUSAL
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient ok"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            # The null reverse-path as "".
            sender = "" if envelope.mail_from == "<>" else envelope.mail_from
            self.messages.append((sender, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 Message accepted"

    def received(self, sender: str) -> list[list[str]]:
        with self.lock:
            return [rcpts for mail_from, rcpts, _ in self.messages if mail_from == sender]

    def contents(self) -> list[tuple[list[str], bytes]]:
        """(RCPT TOs, data) of every message."""
        with self.lock:
            return [(rcpts, content) for _, rcpts, content in self.messages]

    def chunk_with(self, needle: bytes) -> bytes:
        with self.lock:
            found = [c for c in self.chunks if needle in c]
        assert len(found) == 1, (needle, self.chunks)
        return found[0]


@pytest.fixture
def receiver():
    yield from started_receiver()


def started_receiver():
    """A started receiver (for a fixture: stopped after the yield)."""
    r = PipeliningReceiver()
    r.controller.start()
    # Controller.start() connects once itself to check the server is up: not ours.
    with r.lock:
        r.connections = 0
        r.chunks.clear()
    yield r
    r.controller.stop()


def start(make_server, rcv, **delivery):
    return make_server(delivery={"relayhost": f"[127.0.0.1]:{rcv.port}", "max_per_destination": 1,
                                 "connection_idle": "30s", **delivery})


def logged(srv, sender: str, rcpts: list[str]) -> dict[str, dict] | None:
    """The log records of the message from ``sender`` to ``rcpts`` by recipient, once there
    is one for each (the sender's bounce, also in the sender's log, is not one of them)."""
    records = {r["recipient"]: r for r in delivery_log(srv, sender) if r["recipient"] in rcpts}
    return records if len(records) == len(rcpts) else None


def commands(chunk: bytes) -> list[str]:
    return [line.split(b":")[0].split(b" ")[0].decode() for line in chunk.split(b"\r\n") if line]


def test_envelope_and_data_go_in_one_write_and_a_refused_rcpt_fails_only_itself(
        make_server, receiver):
    srv = start(make_server, receiver)
    alice = srv.alice.address
    rcpts = ["one@dest.test", "refused-two@dest.test", "three@dest.test"]
    submit(srv, rcpts)
    [got] = wait_until(lambda: receiver.received(alice), 20, "the message at the receiver")
    assert got == ["one@dest.test", "three@dest.test"]
    group = receiver.chunk_with(b"MAIL FROM:<" + alice.encode())
    assert commands(group) == ["MAIL", "RCPT", "RCPT", "RCPT", "DATA"], group
    records = wait_until(lambda: logged(srv, alice, rcpts), 10, "three log records")
    for rcpt in ("one@dest.test", "three@dest.test"):
        assert records[rcpt]["state"] == "delivered", records[rcpt]
        assert "250 2.0.0 Message accepted" in records[rcpt]["reply"], records[rcpt]
    refused = records["refused-two@dest.test"]
    assert refused["state"] == "bounced", refused
    assert REFUSAL in refused["reply"], refused
    # The bounce to alice (from <>) follows on the same connection.
    [bounce] = wait_until(lambda: receiver.received(""), 20, "the bounce at the receiver")
    assert bounce == [alice]
    assert receiver.connections == 1


def test_reused_session_sends_rset_in_the_same_write(make_server, receiver):
    srv = start(make_server, receiver)
    alice = srv.alice.address
    submit(srv, "first@dest.test")
    wait_until(lambda: receiver.received(alice), 20, "the first message")
    submit(srv, "second@dest.test")
    got = wait_until(lambda: (lambda r: r if len(r) == 2 else None)(receiver.received(alice)),
                     20, "the second message")
    assert got == [["first@dest.test"], ["second@dest.test"]]
    assert receiver.connections == 1
    first = receiver.chunk_with(b"RCPT TO:<first@dest.test>")
    assert commands(first) == ["MAIL", "RCPT", "DATA"], first
    second = receiver.chunk_with(b"RCPT TO:<second@dest.test>")
    assert commands(second) == ["RSET", "MAIL", "RCPT", "DATA"], second
    [record] = wait_until(lambda: delivery_log(srv, "second@dest.test"), 10, "the log record")
    assert (record["state"], record["attempt"]) == ("delivered", 1), record


def test_every_rcpt_refused_sends_no_message_and_keeps_the_session(make_server, receiver):
    """All RCPTs refused: aiosmtpd answers the pipelined DATA with 503, no message is sent,
    and the session, still in step, carries the next transaction."""
    srv = start(make_server, receiver)
    alice = srv.alice.address
    rcpts = ["refused-a@dest.test", "refused-b@dest.test"]
    submit(srv, rcpts)
    records = wait_until(lambda: logged(srv, alice, rcpts), 10, "two log records")
    for record in records.values():
        assert record["state"] == "bounced", record
        assert REFUSAL in record["reply"], record
    [bounce] = wait_until(lambda: receiver.received(""), 20, "the bounce at the receiver")
    assert bounce == [alice]
    assert receiver.received(alice) == []
    submit(srv, "after@dest.test")
    got = wait_until(lambda: receiver.received(alice), 20, "the next message")
    assert got == [["after@dest.test"]]
    assert receiver.connections == 1
