"""Chaos: `kill -9` at random moments while sessions submit and workers deliver, over and over.

What must hold however the kills fall: every message that got `250 ... queued as` is delivered
at least once, byte for byte as submitted (whether delivery read it from the spool's memory or,
after a kill, from the journal); no message whose end of data the client never sent is delivered; nothing is
delivered that nobody submitted; and replay never reports damage that a crash (a torn tail) can
explain. What may happen, and is counted and printed: a message whose end of data was sent but
whose reply was lost to the kill is delivered (the relay had accepted it), and a message is
delivered twice when the kill fell between the receiver's 250 and the durable record of it
(at-least-once delivery, as every MTA's)."""

import collections
import itertools
import random
import threading
import time

import pytest

from support import (DATA_GO, MAIL_OK, RCPT_OK, make_message, wait_until)
from test_delivery_pipelining import started_receiver

SESSIONS = 4
TIME_BUDGET = 50.0            # seconds of kill loop
MAX_ROUNDS = 300
MIN_ROUNDS = 20


class Ledger:
    """What each submitted recipient (one per message) reached on the client's side."""

    def __init__(self):
        self.lock = threading.Lock()
        self.state: dict[str, str] = {}
        self.messages: dict[str, bytes] = {}
        self.numbers = itertools.count()

    def new(self) -> str:
        rcpt = f"chaos{next(self.numbers):06}@plain.test"
        self.mark(rcpt, "begun")
        return rcpt

    def mark(self, rcpt: str, state: str):
        with self.lock:
            self.state[rcpt] = state

    def message(self, rcpt: str, msg: bytes):
        with self.lock:
            self.messages[rcpt] = msg

    def having(self, state: str) -> set[str]:
        with self.lock:
            return {r for r, s in self.state.items() if s == state}


def submit_until_cut(srv, ledger: Ledger, rng: random.Random):
    """One session on 465 sending messages (DATA or BDAT, the end sent as a separate write)
    until the connection dies; a refused message is recorded as such."""
    alice = srv.alice
    try:
        client = srv.login(alice.address, alice.password, role="submissions")
    except Exception:                     # the server died before or during the login
        return
    try:
        while True:
            rcpt = ledger.new()
            body = "chaos line\r\n" * rng.randint(1, 400)
            msg = make_message(sender=alice.address, to=rcpt, body=body)
            ledger.message(rcpt, msg)
            assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
            assert client.cmd(f"RCPT TO:<{rcpt}>") == RCPT_OK
            if rng.random() < 0.5:
                assert client.cmd("DATA") == DATA_GO
                head, end = msg, b".\r\n"
                client.send(head)
            else:
                cut = rng.randint(1, len(msg) - 1)
                client.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg[:cut])
                end = msg[cut:]
            # From here on the server may have the whole message: it may deliver it.
            ledger.mark(rcpt, "ended")
            client.send(end)
            reply = client.reply()
            ledger.mark(rcpt, "acked" if reply.code == 250 else f"refused {reply}")
    except Exception:                     # kill -9: reset, EOF or a reply cut short
        return
    finally:
        client.close()


def test_kill9_loop_loses_nothing_and_invents_nothing(make_server, mx):
    """Delivery to the MX hosts (aiosmtpd without PIPELINING: one command at a time)."""
    srv = make_server(delivery_port=mx.port)
    kill9_loop(srv, lambda: [(m.rcpt_tos, m.content) for m in mx.plain.received()],
               TIME_BUDGET)


@pytest.fixture
def pipelining_receiver():
    yield from started_receiver()


def test_kill9_loop_with_a_pipelining_receiver(make_server, pipelining_receiver):
    """The same through a relay host that advertises PIPELINING: each transaction goes as
    [RSET,] MAIL, RCPT, DATA in one write over reused sessions."""
    srv = make_server(delivery={"relayhost": f"[127.0.0.1]:{pipelining_receiver.port}"})
    kill9_loop(srv, pipelining_receiver.contents, TIME_BUDGET / 2)


def kill9_loop(srv, received, budget: float):
    """Kills the server at random moments while sessions submit, ``budget`` seconds of it,
    then checks the promises of the module docs against ``received()``: (RCPT TOs, data) of
    every message the receiver got."""
    srv.cli("limit", "set", srv.alice.address, "--daily", "1000000")
    ledger = Ledger()
    rng = random.Random(0xC4A05)
    deadline = time.monotonic() + budget
    rounds = 0
    while rounds < MAX_ROUNDS and time.monotonic() < deadline:
        if rounds:
            srv.start()
        sessions = [threading.Thread(target=submit_until_cut,
                                     args=(srv, ledger, random.Random(rng.random())))
                    for _ in range(SESSIONS)]
        for s in sessions:
            s.start()
        time.sleep(rng.uniform(0.02, 0.6))
        srv.kill9()
        for s in sessions:
            s.join(20)
            assert not s.is_alive(), "a session outlived the server"
        rounds += 1
    assert rounds >= MIN_ROUNDS, f"only {rounds} rounds in {budget}s"

    srv.start()
    acked = ledger.having("acked")
    assert len(acked) > 100, f"only {len(acked)} messages acknowledged in {rounds} rounds"

    def delivered() -> collections.Counter:
        return collections.Counter(r for rcpts, _ in received() for r in rcpts)

    wait_until(lambda: acked <= set(delivered()), 120,
               "every acknowledged message delivered", interval=0.2)
    # Deliveries still in flight (lost-250 messages, retries) settle; nothing must follow.
    wait_until(lambda: srv.metric("postern_spool_messages") == 0, 60, "an empty spool",
               interval=0.2)
    counts = delivered()
    # Whether the delivery read the data from the spool's memory or, after a kill, from the
    # journal, the receiver got exactly what was submitted.
    for rcpts, content in received():
        for r in rcpts:
            assert content.endswith(ledger.messages[r]), f"{r}: delivered content differs"
    never_ended = ledger.having("begun")
    assert not never_ended & set(counts), sorted(never_ended & set(counts))[:10]
    refused = {r for r, s in ledger.state.items() if s.startswith("refused")}
    assert not refused & set(counts), sorted(refused & set(counts))[:10]
    assert set(counts) <= set(ledger.state), sorted(set(counts) - set(ledger.state))[:10]
    # Replay met many torn tails; each is settled once and none is called damage.
    log = srv.log_text()
    assert "corrupt record" not in log, [l for l in log.splitlines() if "corrupt" in l][:5]

    lost_250 = ledger.having("ended") & set(counts)
    twice = sum(1 for n in counts.values() if n > 1)
    print(f"\nchaos: {rounds} kill -9 rounds, {len(ledger.state)} messages begun, "
          f"{len(acked)} acknowledged (all delivered), {len(refused)} refused, "
          f"{len(ledger.having('ended'))} ended without a reply ({len(lost_250)} of them "
          f"delivered), {len(never_ended)} cut before their end (none delivered); "
          f"{twice} delivered more than once ({twice / max(1, len(counts)):.2%} of "
          f"{len(counts)} delivered)")
