"""Issue 11, hand-off under fire: `kill -9` of the sending or the receiving replica in the
middle of a hand-off loses no message; a handed-off message keeps its DKIM signature (and is
not signed again), its delay-notice state and its original arrival time, and is not counted
again against any quota; a bounce waiting in A's spool (null sender) is handed off too.

The setting is test_drain.py's: mail goes to a relay host, an aiosmtpd receiver that defers
(451) until the test lets it accept. Replica A has the mail; B listens on `[listen] handoff`.

Duplicates: A removes a message from its spool only after B's 250, and B sends that 250 only
after its own spool's fsync; A hands off one message at a time and its removal is itself a
fsynced journal record before the next message goes. So a `kill -9` of either side leaves at
most one message on both spools (the one in flight: B committed it, A had not yet removed it
or had not read the 250), and it is then delivered twice. The tests allow one duplicate per
kill and count them; a message delivered zero times fails them."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from email.utils import parsedate_to_datetime

import dkim
import pytest

from support import (SmtpReceiver, free_port, header_values, make_message,
                     wait_until)
from test_drain import SECRET, queue, relayed

# Enough messages that a hand-off takes a noticeable time: the kill lands in the middle.
MANY = 300


class Switch:
    """The receiver's answer: 451 while deferring, then 250; the sender's own domain (where
    DSNs go) is always accepted when ``dsns_pass``."""

    def __init__(self, dsns_pass: bool = False):
        self.deferring = True
        self.dsns_pass = dsns_pass

    def __call__(self, address: str, attempt: int):
        if self.dsns_pass and address.endswith("@example.org"):
            return None
        return "451 4.3.0 Try again later" if self.deferring else None


def start_receiver(switch: Switch) -> SmtpReceiver:
    rcv = SmtpReceiver("127.0.0.1", free_port(), policy=switch).start()
    rcv.switch = switch
    return rcv


@pytest.fixture
def receiver():
    rcv = start_receiver(Switch())
    yield rcv
    rcv.stop()


@pytest.fixture
def dsn_receiver():
    """Defers everything but mail to example.org (alice's domain: the DSNs)."""
    rcv = start_receiver(Switch(dsns_pass=True))
    yield rcv
    rcv.stop()


# Messages above this go to a data file of their own in both spools (the others into the
# journal): the chaos tests' every tenth message does.
INLINE_MAX = 4096


def pair(make_server, receiver, tmp_path, a_delivery=None, b_delivery=None):
    """Replica A (the mail's, with the fleet secret) and B (with the hand-off listener)."""
    secret = tmp_path / "fleet.secret"
    secret.write_text(SECRET + "\n")
    spool = {"inline_max_bytes": INLINE_MAX}
    a = make_server(delivery={**relayed(receiver), **(a_delivery or {})},
                    handoff={"secret_file": secret}, spool=spool)
    b = make_server(delivery={**relayed(receiver), **(b_delivery or {})},
                    listen={"handoff": f"127.0.0.1:{free_port()}"},
                    handoff={"secret_file": secret, "networks": ["127.0.0.0/8"]}, spool=spool)
    return a, b


def submit_many(srv, n: int, tag: str) -> list[str]:
    """``n`` messages from alice in one session, each to its own recipient at example.net,
    every tenth one larger than ``INLINE_MAX``; returns their Message-IDs."""
    alice = srv.alice
    client = srv.login(alice.address, alice.password)
    ids = []
    large = ("x" * 78 + "\r\n") * (2 * INLINE_MAX // 80)
    for i in range(n):
        mid = f"<{tag}-{i}-{uuid.uuid4().hex[:8]}@client.test>"
        msg = make_message(sender=alice.address, to=f"{tag}{i}@example.net", message_id=False,
                           headers=[f"Message-ID: {mid}"],
                           body=large if i % 10 == 0 else "Hello.\r\n")
        client.transaction(alice.address, [f"{tag}{i}@example.net"], msg)
        ids.append(mid)
    client.quit()
    return ids


def spool_count(srv) -> int:
    return int(srv.metric("postern_spool_messages") or 0)


def start_drain(srv, peer: str) -> subprocess.Popen:
    return subprocess.Popen([str(srv.binary), "--config", str(srv.config_path), "drain",
                             "--handoff", peer, "--timeout", "1s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def handoff_addr(b) -> str:
    return b.config["listen"]["handoff"]


def wait_midway(b, total: int) -> int:
    """Polls B's spool until some but not all of ``total`` messages have arrived; returns the
    count seen."""
    def midway():
        n = spool_count(b)
        return n if total // 5 <= n else None
    seen = wait_until(midway, 60, "the hand-off to be under way", interval=0.005)
    assert seen < total, f"hand-off finished ({seen}) before the kill: use more messages"
    return seen


def deliver_all(b, receiver, message_ids: list[str], timeout: float = 90):
    """Lets the receiver accept, flushes B and waits until every Message-ID arrived and B's
    queue is empty; returns {Message-ID: times delivered}."""
    receiver.switch.deferring = False
    wanted = set(message_ids)

    def all_in():
        got = {header_values(m.content, "Message-ID")[0] for m in receiver.received()}
        if wanted <= got and not queue(b):
            return True
        # A flush leaves a message whose (deferred) attempt is running alone: flush again
        # until each one has come back.
        b.cli("queue", "flush")
        return False
    wait_until(all_in, timeout, "every message delivered and B's queue empty", interval=1)
    counts: dict[str, int] = {}
    for m in receiver.received():
        mid = header_values(m.content, "Message-ID")[0]
        counts[mid] = counts.get(mid, 0) + 1
    assert set(counts) == wanted, set(counts) ^ wanted
    for m in receiver.received():
        assert m.content.endswith(b"\r\n\r\nHello.\r\n") or \
            m.content.endswith(b"x" * 78 + b"\r\n") and len(m.content) > 2 * INLINE_MAX - 200
    return counts


def test_kill9_of_the_sender_midway_loses_nothing(make_server, receiver, tmp_path):
    a, b = pair(make_server, receiver, tmp_path)
    ids = submit_many(a, MANY, "s")
    assert spool_count(a) == MANY

    drain = start_drain(a, handoff_addr(b))
    seen = wait_midway(b, MANY)
    a.kill9()
    drain.communicate(timeout=30)
    assert drain.returncode != 0

    # A restarted on its spool still has every message B did not take (the one in flight
    # perhaps on both); B has every one it answered 250.
    a.start()
    on_a, on_b = len(queue(a)), len(queue(b))
    assert on_b >= seen
    assert MANY <= on_a + on_b <= MANY + 1, (on_a, on_b)

    again = a.cli("drain", "--handoff", handoff_addr(b), "--timeout", "1s", check=False)
    assert again.returncode == 0, again
    assert again.stdout.splitlines()[-1] == f"drained: spool empty, {on_a} handed off"
    a.proc.wait(30)
    assert len(queue(b)) == on_a + on_b

    counts = deliver_all(b, receiver, ids)
    duplicates = sum(counts.values()) - MANY
    print(f"sender killed at {seen}/{MANY} on B; A kept {on_a}; duplicates {duplicates}")
    assert duplicates == on_a + on_b - MANY <= 1


def test_kill9_of_the_receiver_midway_loses_nothing(make_server, receiver, tmp_path):
    a, b = pair(make_server, receiver, tmp_path)
    ids = submit_many(a, MANY, "r")

    drain = start_drain(a, handoff_addr(b))
    seen = wait_midway(b, MANY)
    b.kill9()
    out, err = drain.communicate(timeout=60)
    # A lost its peer: it keeps what B did not 250 and exits; the drain says how much is left.
    assert drain.returncode == 75, (out, err)
    last = out.splitlines()[-1]
    m = re.fullmatch(r"drained: (\d+) messages left in the spool, (\d+) handed off \((.+)\)", last)
    assert m, last
    left, handed = int(m.group(1)), int(m.group(2))
    assert left + handed == MANY and handed >= seen - 1
    a.proc.wait(30)
    assert a.proc.returncode == 0

    # B restarted delivers what it acknowledged: every message it answered 250 is there
    # (and perhaps the one it had committed when killed, whose 250 A never read).
    b.start()
    on_b = len(queue(b))
    assert handed <= on_b <= handed + 1, (handed, on_b)
    a.start()
    assert len(queue(a)) == left
    again = a.cli("drain", "--handoff", handoff_addr(b), "--timeout", "1s", check=False)
    assert again.returncode == 0, again
    assert again.stdout.splitlines()[-1] == f"drained: spool empty, {left} handed off"

    counts = deliver_all(b, receiver, ids)
    duplicates = sum(counts.values()) - MANY
    print(f"receiver killed at {seen}/{MANY}; A had {handed} acknowledged; "
          f"duplicates {duplicates}")
    assert duplicates == on_b - handed <= 1


# ---------------------------------------------------------------------------------------------
# What a handed-off message keeps
# ---------------------------------------------------------------------------------------------
def record_dnsfunc(*record_lines: str):
    """A dkimpy ``dnsfunc`` answering from the record lines `postern dkim generate` printed
    (``NAME. IN TXT "..." "..."``), the character-strings joined as a resolver would."""
    records = {}
    for line in record_lines:
        name, rest = line.split(" IN TXT ", 1)
        records[name.rstrip(".").lower()] = "".join(re.findall(r'"([^"]*)"', rest)).encode()

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode().rstrip(".").lower())

    return dnsfunc


def test_dkim_signature_survives_and_quota_is_not_counted_again(make_postern, receiver,
                                                                 tmp_path):
    """A fleet: A and B share the store (accounts, DKIM keys, the embedded quota), so B has an
    active key for example.org too. A signs at acceptance; B delivers the message with A's one
    signature, which dkimpy verifies; B does not sign again, and alice's quota counts each
    recipient once, at A."""
    from conftest import start_with_accounts
    secret = tmp_path / "fleet.secret"
    secret.write_text(SECRET + "\n")
    a_pt = make_postern(delivery=relayed(receiver), handoff={"secret_file": secret})
    b_pt = make_postern(delivery=relayed(receiver),
                        store={"path": a_pt.config["store"]["path"]},
                        listen={"handoff": f"127.0.0.1:{free_port()}"},
                        handoff={"secret_file": secret, "networks": ["127.0.0.0/8"]})
    record = a_pt.cli("dkim", "generate", "example.org", "--selector", "fleet1",
                      "--algorithm", "rsa", "--activate").stdout.splitlines()[-1]
    a = start_with_accounts(a_pt)
    b_pt.start()
    rcpts = [f"q{i}@example.net" for i in range(3)]
    client = a.login(a.alice.address, a.alice.password)
    mids = []
    for rcpt in rcpts:
        mid = f"<dkim-{uuid.uuid4().hex}@client.test>"
        client.transaction(a.alice.address, [rcpt],
                           make_message(sender=a.alice.address, to=rcpt, message_id=False,
                                        headers=[f"Message-ID: {mid}"]))
        mids.append(mid)
    client.quit()
    used = a_pt.quota(a.alice.address)["used"]
    assert used == 3

    drained = a_pt.cli("drain", "--handoff", handoff_addr(b_pt), "--timeout", "1s",
                       check=False)
    assert drained.returncode == 0, drained
    assert drained.stdout.splitlines()[-1] == "drained: spool empty, 3 handed off"
    assert len(queue(b_pt)) == 3
    assert b_pt.quota(a.alice.address)["used"] == 3, "the hand-off counted again"

    counts = deliver_all(b_pt, receiver, mids)
    assert sorted(counts.values()) == [1, 1, 1]
    dnsfunc = record_dnsfunc(record)
    for m in receiver.received():
        assert m.peer == "127.0.0.1" and m.rcpt_tos[0] in rcpts
        sigs = header_values(m.content, "DKIM-Signature")
        assert len(sigs) == 1, sigs
        tags = dict(t.split("=", 1) for t in re.sub(r"\s+", "", sigs[0]).split(";") if t)
        assert (tags["d"], tags["s"], tags["a"]) == ("example.org", "fleet1", "rsa-sha256")
        assert dkim.verify(m.content, dnsfunc=dnsfunc), m.content[:600]
        assert len(header_values(m.content, "Received")) == 1
    # Delivered by B: A had exited after the drain.
    assert a_pt.proc.poll() == 0
    assert b_pt.quota(a.alice.address)["used"] == 3


def dsns(receiver, action: str) -> list:
    return [m for m in receiver.received()
            if m.rcpt_tos == ["alice@example.org"] and f"Action: {action}".encode() in m.content]


def field(message: bytes, name: str) -> str:
    m = re.search(rb"^" + name.encode() + rb": (.*)\r$", message, re.M)
    assert m, f"no {name} in {message[:2000]!r}"
    return m.group(1).decode()


def test_delay_notice_not_repeated_and_max_age_counts_from_the_first_arrival(
        make_server, dsn_receiver, tmp_path):
    """A sends the delay notice (delay_warning 2s) and hands the message to B, whose
    delay_warning is also 2s: B sends no second one. B's max_age is 15s: B bounces the
    message 15 s after A accepted it (the failure DSN's Arrival-Date is A's), not 15 s after
    the hand-off."""
    receiver = dsn_receiver
    a, b = pair(make_server, receiver, tmp_path,
                a_delivery={"delay_warning": "2s", "max_age": "1h", "retry_initial": "1h"},
                b_delivery={"delay_warning": "2s", "max_age": "15s", "retry_initial": "1h"})
    accepted = time.monotonic()
    client = a.login(a.alice.address, a.alice.password)
    qid = client.transaction(a.alice.address, ["late@example.net"],
                             make_message(sender=a.alice.address, to="late@example.net"))
    client.quit()
    arrival_ms = queue(a)[0]["received_at_ms"]
    delayed = wait_until(lambda: dsns(receiver, "delayed"), 20, "A's delay notice")
    assert len(delayed) == 1 and b"late@example.net" in delayed[0].content
    assert delayed[0].at - accepted >= 1.9

    # Room between the two deadlines the test tells apart (A's arrival + 15 s and B's).
    time.sleep(max(0.0, accepted + 5 - time.monotonic()))
    drain_started = time.monotonic()
    drained = a.cli("drain", "--handoff", handoff_addr(b), "--timeout", "1s", check=False)
    assert drained.returncode == 0, drained
    assert drained.stdout.splitlines()[-1] == "drained: spool empty, 1 handed off"
    [moved] = [m for m in queue(b) if m["sender"] == a.alice.address]
    assert moved["received_at_ms"] == arrival_ms and moved["id"] != qid

    failed = wait_until(lambda: dsns(receiver, "failed"), 40, "B's expiry bounce")
    bounce = failed[0]
    assert b"Status: 5.4.7" in bounce.content
    assert b"expired: undelivered after 15s" in bounce.content
    arrival = parsedate_to_datetime(field(bounce.content, "Arrival-Date")).timestamp()
    assert abs(arrival - arrival_ms / 1000) < 1
    # 15 s after A's acceptance; 15 s after B's own acceptance would be at least 15 s after
    # the drain started (B spools the message after it).
    assert 15 <= bounce.at - accepted < drain_started + 15 - accepted, \
        (bounce.at - accepted, drain_started - accepted)
    assert drain_started - accepted >= 5
    # B attempted it more than once (at the hand-off and at expiry) and never told alice of
    # the delay again.
    time.sleep(1)
    assert len(dsns(receiver, "delayed")) == 1
    assert len(dsns(receiver, "failed")) == 1
    assert len(receiver.attempts_for("late@example.net")) >= 3
    assert queue(b) == []


def test_a_bounce_waiting_on_a_is_handed_off_and_sent_by_b(make_server, tmp_path):
    """A DSN is mail from the null sender in A's spool like any other: when alice's own
    server defers it, the drain hands it to B (`MAIL FROM:<>`), which delivers it and makes
    no DSN about it."""
    switch = Switch()
    rcv = SmtpReceiver("127.0.0.1", free_port(),
                       policy=lambda addr, n: "550 5.1.1 Mailbox unavailable"
                       if addr.startswith("reject") else switch(addr, n)).start()
    rcv.switch = switch
    try:
        a, b = pair(make_server, rcv, tmp_path)
        client = a.login(a.alice.address, a.alice.password)
        client.transaction(a.alice.address, ["reject-me@example.net"],
                           make_message(sender=a.alice.address, to="reject-me@example.net"))
        client.quit()
        # The original is gone (refused for good); its bounce waits, deferred by alice's server.
        wait_until(lambda: [m["sender"] for m in queue(a)] == [""]
                   and rcv.attempts_for("alice@example.org"), 20, "the bounce deferred on A")
        drained = a.cli("drain", "--handoff", handoff_addr(b), "--timeout", "1s", check=False)
        assert drained.returncode == 0, drained
        assert drained.stdout.splitlines()[-1] == "drained: spool empty, 1 handed off"
        [moved] = queue(b)
        assert (moved["sender"], [r["address"] for r in moved["recipients"]]) == \
            ("", ["alice@example.org"])

        switch.deferring = False
        def delivered():
            b.cli("queue", "flush")
            return rcv.received() and not queue(b)
        wait_until(delivered, 20, "B to deliver the bounce", interval=0.5)
        [bounce] = [m for m in rcv.received() if m.rcpt_tos == ["alice@example.org"]]
        assert bounce.mail_from in ("", "<>")
        assert b"Action: failed" in bounce.content and b"reject-me@example.net" in bounce.content
        time.sleep(1)
        assert len(rcv.received()) == 1 and queue(b) == []
    finally:
        rcv.stop()
