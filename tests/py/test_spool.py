"""Durability of the spool: what got `250 ... queued as` survives `kill -9`; what did not, never
goes out."""

import errno
import hashlib
import hmac
import json
import os
import stat
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import (DATA_GO, MAIL_OK, OK, RCPT_OK, SmtpReceiver, free_port_on, make_message,
                     queue_id, run, wait_until)

SPOOL_FULL = "452 4.3.1 Insufficient system storage"


def test_kill9_right_after_250_then_delivered_after_restart(make_server, mx):
    """With delivery held ([delivery] workers = 0), messages accepted by DATA, BDAT and the
    relay port are followed at once by `kill -9`; after a restart with workers they are all
    delivered, each exactly once."""
    srv = make_server(delivery_port=mx.port, delivery={"workers": 0})
    alice = srv.alice
    client = srv.login(alice.address, alice.password)
    client.transaction(alice.address, ["k1@plain.test"],
                       make_message(sender=alice.address, to="k1@plain.test"))
    assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
    assert client.cmd("RCPT TO:<k2@tls.test>") == RCPT_OK
    msg = make_message(sender=alice.address, to="k2@tls.test")
    client.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
    queue_id(client.reply())
    relay = srv.connect("relay")
    relay.ehlo()
    relay.transaction("www@hosting.example", ["k3@plain.test"],
                      make_message(sender="www@hosting.example", to="k3@plain.test"))
    srv.kill9()
    assert mx.plain.received() == [] and mx.tls.received() == []

    srv.restart(delivery={"workers": None})                  # back to the default worker count
    for receiver, rcpt in ((mx.plain, "k1@plain.test"), (mx.tls, "k2@tls.test"),
                           (mx.plain, "k3@plain.test")):
        receiver.wait_for(rcpt)
    everything = [r for m in mx.plain.received() + mx.tls.received() for r in m.rcpt_tos]
    assert sorted(everything) == ["k1@plain.test", "k2@tls.test", "k3@plain.test"]


def test_kill9_while_mx_down_then_delivered_after_restart(make_server, tmp_path):
    """With the MX not yet listening, delivery attempts fail temporarily; after `kill -9`, the
    MX starting and a restart, the message is delivered (the retry schedule was persisted)."""
    port = free_port_on("127.0.0.3")
    srv = make_server(delivery_port=port)
    alice = srv.alice
    client = srv.login(alice.address, alice.password)
    client.transaction(alice.address, ["down@plain.test"],
                       make_message(sender=alice.address, to="down@plain.test"))
    srv.kill9()
    receiver = SmtpReceiver("127.0.0.3", port).start()
    try:
        srv.start()
        receiver.wait_for("down@plain.test", timeout=20)
    finally:
        receiver.stop()


def test_kill9_during_data_is_never_delivered(make_server, mx):
    """A message cut by `kill -9` before its terminating dot was never accepted: after the
    restart only the later, complete message is delivered."""
    srv = make_server(delivery_port=mx.port)
    alice = srv.alice
    client = srv.login(alice.address, alice.password)
    assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
    assert client.cmd("RCPT TO:<partial@plain.test>") == RCPT_OK
    assert client.cmd("DATA") == DATA_GO
    client.send(make_message(sender=alice.address, to="partial@plain.test"))   # no final dot
    srv.kill9()
    client.close()
    srv.start()
    again = srv.login(alice.address, alice.password)
    again.transaction(alice.address, ["sentinel@plain.test"],
                      make_message(sender=alice.address, to="sentinel@plain.test"))
    mx.plain.wait_for("sentinel@plain.test")
    assert mx.plain.attempts_for("partial@plain.test") == []


def test_concurrent_messages_survive_kill9(make_server, mx):
    """Ten concurrent sessions submit three messages each (durable writes batched across
    sessions); `kill -9` after the last 250: all thirty are delivered after restart."""
    srv = make_server(delivery_port=mx.port, delivery={"workers": 0})
    alice = srv.alice
    batches = [[f"c{s:02}m{i}@plain.test" for i in range(3)] for s in range(10)]

    def session(rcpts):
        client = srv.login(alice.address, alice.password)
        for rcpt in rcpts:
            client.transaction(alice.address, [rcpt], make_message(sender=alice.address, to=rcpt))
        client.close()

    with ThreadPoolExecutor(len(batches)) as pool:
        for future in [pool.submit(session, b) for b in batches]:
            future.result()                                   # re-raises a failed assertion
    srv.kill9()
    srv.restart(delivery={"workers": None})
    expected = {r for b in batches for r in b}

    def all_there():
        return {r for m in mx.plain.received() for r in m.rcpt_tos} >= expected
    wait_until(all_there, 30, "the 30 messages after restart")


# ---- issue 10: message content never becomes spool structure ---------------------------------

def _legacy_record(kind: int, payload: bytes) -> bytes:
    """A record of the format before keyed records: ``PSJ1``, kind, length, payload, CRC-32."""
    head = b"PSJ1" + bytes([kind]) + struct.pack("<I", len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(head[4:] + payload))


def _keyed_record_without_the_key(payload: bytes) -> bytes:
    """A message record of the current format (``PSJ3``: the tag over position, header,
    envelope and the CRC-32 of the inline data), its tag made with a key of the attacker's
    choosing."""
    head = b"PSJ3" + bytes([1]) + struct.pack("<I", len(payload))
    structure_len = min(len(payload), 4 + struct.unpack("<I", payload[:4])[0])
    mac_input = (struct.pack("<QQ", 1, 0) + head + payload[:structure_len]
                 + struct.pack("<I", zlib.crc32(payload[structure_len:])))
    tag = hmac.new(os.urandom(32), mac_input, hashlib.sha256).digest()
    return head + payload + tag


def _message_payload(envelope: dict, data: bytes = b"") -> bytes:
    js = json.dumps(envelope, separators=(",", ":")).encode()
    return struct.pack("<I", len(js)) + js + data


def _forged_envelope(qid: str, rcpt: str, data_file: str | None, pad: int = 0) -> dict:
    """What an attacker plants: another sender, a recipient of their choice, no AUTH (``pad``
    varies the record's length and checksum)."""
    return {"id": qid, "sender": "ceo" + "o" * pad + "@example.org",
            "recipients": [{"address": rcpt, "status": "Pending", "attempts": 0,
                            "last_reply": None}],
            "received_at_ms": 1, "size": 16, "body_8bit": False, "smtputf8": False,
            "submitter": {"address": None, "device": None, "client_ip": "127.0.0.1",
                          "listener": "relay"},
            "prefix": "", "data_file": data_file}


def _plantable(make) -> bytes:
    """``make(nonce)`` for the first nonce whose bytes pass as message data (no bare CR or
    LF)."""
    for nonce in range(200):
        planted = make(nonce)
        lines = planted.replace(b"\r\n", b"")
        if b"\r" not in lines and b"\n" not in lines and not planted.startswith(b"\n"):
            return planted
    raise AssertionError("no plantable record found")


def _spool_log(srv) -> list[str]:
    return [line for line in srv.log_text().splitlines() if "spool:" in line]


def test_planted_records_never_deliver_after_a_torn_append(make_server, mx, tmp_path):
    """A client plants records in a BDAT body (an old-format one with a forged envelope whose
    data file is outside the spool, and a new-format one tagged without the key); the relay
    dies and the message's journal record is torn inside its data, after the planted bytes.
    After the restart nothing planted is delivered, the outside file is neither mailed nor
    deleted, the torn tail is a warning (not damage), and a later restart reports nothing.

    Records hold NUL bytes (their length fields), which the session now refuses in message
    data (554 5.6.0), so the client's bytes are put in place in the segment after the kill,
    where the same message's data held placeholders of the same length: the journal then
    holds exactly what it would have held had the client been able to send them."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret\n")
    srv = make_server(delivery_port=mx.port, delivery={"workers": 0})
    alice = srv.alice
    legacy = _plantable(lambda n: _legacy_record(1, _message_payload(
        _forged_envelope("0190A1B2C3D0000000001", "forged1@plain.test", str(secret), n))))
    keyed = _plantable(lambda n: _keyed_record_without_the_key(_message_payload(
        _forged_envelope("0190A1B2C3D0000000002", "forged2@plain.test", None, n),
        b"Subject: forged\r\n\r\nforged\r\n")))
    def message(first: bytes, second: bytes) -> bytes:
        body = b"Harmless text.\r\n" + first + b"\r\n" + second + b"\r\nTORN-HERE and more.\r\n"
        return make_message(sender=alice.address, to="friend@plain.test").replace(
            b"Hello.\r\n", body)

    client = srv.login(alice.address, alice.password)
    assert client.cmd(f"MAIL FROM:<{alice.address}> BODY=8BITMIME") == MAIL_OK
    assert client.cmd("RCPT TO:<friend@plain.test>") == RCPT_OK
    msg = message(legacy, keyed)
    client.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
    assert client.reply() == "554 5.6.0 NUL byte in message data"
    holders = (b"P" * len(legacy), b"Q" * len(keyed))
    assert client.cmd(f"MAIL FROM:<{alice.address}> BODY=8BITMIME") == MAIL_OK
    assert client.cmd("RCPT TO:<friend@plain.test>") == RCPT_OK
    msg = message(*holders)
    client.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
    queue_id(client.reply())
    srv.kill9()

    segments = sorted((srv.dir / "spool" / "journal").glob("*.log"))
    [segment] = [s for s in segments if b"TORN-HERE" in s.read_bytes()]
    data = segment.read_bytes()
    data = data.replace(holders[0], legacy, 1).replace(holders[1], keyed, 1)
    assert legacy in data and keyed in data
    segment.write_bytes(data[:data.index(b"TORN-HERE")])      # a crash mid-append

    srv.restart(delivery={"workers": None})
    sentinel = srv.login(alice.address, alice.password)
    sentinel.transaction(alice.address, ["sentinel@plain.test"],
                         make_message(sender=alice.address, to="sentinel@plain.test"))
    mx.plain.wait_for("sentinel@plain.test")
    srv.restart()                                   # the torn tail was settled the first time
    again = srv.login(alice.address, alice.password)
    again.transaction(alice.address, ["sentinel2@plain.test"],
                      make_message(sender=alice.address, to="sentinel2@plain.test"))
    mx.plain.wait_for("sentinel2@plain.test")

    for rcpt in ("forged1@plain.test", "forged2@plain.test", "friend@plain.test"):
        assert mx.plain.attempts_for(rcpt) == [], rcpt
    assert all(b"top secret" not in m.content for m in mx.plain.received())
    assert secret.read_bytes() == b"top secret\n"
    log = _spool_log(srv)
    assert sum("torn record at the end of the newest segment cut off" in line
               for line in log) == 1, log
    assert not [line for line in log if "ERROR" in line or "corrupt record" in line], log
    assert list((srv.dir / "spool" / "corrupt").iterdir()) == []


def test_forged_data_file_in_an_old_spool_is_never_read_or_deleted(make_server, mx, tmp_path):
    """An old-format segment (as a spool from before the upgrade may hold) with a forged
    envelope naming a file outside the spool, then a `Done` for it: the file is not mailed
    and not deleted; the segment is set aside and reported; the spool goes on working."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret\n")
    srv = make_server(delivery_port=mx.port)
    srv.stop()
    forged = _forged_envelope("0190A1B2C3D0000020001", "forged@plain.test", str(secret))
    segment = (_legacy_record(1, _message_payload(forged))
               + _legacy_record(3, json.dumps({"id": forged["id"]}).encode()))
    (srv.dir / "spool" / "journal" / "0000000000000000.log").write_bytes(segment)
    srv.start()
    alice = srv.alice
    client = srv.login(alice.address, alice.password)
    client.transaction(alice.address, ["sentinel@plain.test"],
                       make_message(sender=alice.address, to="sentinel@plain.test"))
    mx.plain.wait_for("sentinel@plain.test")
    assert mx.plain.attempts_for("forged@plain.test") == []
    assert all(b"top secret" not in m.content for m in mx.plain.received())
    assert secret.read_bytes() == b"top secret\n"
    assert [p.name for p in (srv.dir / "spool" / "corrupt").iterdir()] == [
        "0000000000000000.log"]
    assert any("corrupt record" in line and "ERROR" in line for line in _spool_log(srv))


def test_spool_is_private_to_its_owner(make_server):
    """Directories 0700, files 0600 (queued mail is not for other local users)."""
    srv = make_server(delivery={"workers": 0})
    alice = srv.alice
    client = srv.login(alice.address, alice.password)
    client.transaction(alice.address, ["p@plain.test"],
                       make_message(sender=alice.address, to="p@plain.test",
                                    body="x" * 70 + "\r\n" * 1))
    big = make_message(sender=alice.address, to="p2@plain.test",
                       body=("y" * 76 + "\r\n") * 20_000)     # over inline_max: a data file
    client.transaction(alice.address, ["p2@plain.test"], big)
    spool = srv.dir / "spool"
    dirs = [spool] + [p for p in spool.rglob("*") if p.is_dir()]
    files = [p for p in spool.rglob("*") if p.is_file()]
    assert {p.name for p in dirs} >= {"spool", "journal", "data", "tmp", "corrupt"}
    assert {"lock", "journal.key"} <= {p.name for p in files}
    assert any(p.parent.name == "data" for p in files)
    for p in dirs:
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_databases_are_private_to_their_owner(make_server, mx, tmp_path):
    """The quota database and the delivery log database (and their WAL files) are 0600, like
    the store and the spool; directories Postern creates for them are 0700."""
    quota_db = tmp_path / "made" / "quota" / "quota.db"
    log_db = tmp_path / "made" / "log" / "delivery-log.db"
    srv = make_server(delivery_port=mx.port, quota={"backend": "embedded", "path": quota_db},
                      delivery_log={"path": log_db})
    alice = srv.alice
    client = srv.login(alice.address, alice.password)
    client.transaction(alice.address, ["p@plain.test"],
                       make_message(sender=alice.address, to="p@plain.test"))
    mx.plain.wait_for("p@plain.test")
    assert srv.quota(alice.address)["used"] == 1         # the quota file was written
    wait_until(lambda: "p@plain.test" in srv.cli("log").stdout, 10, "the delivery logged")
    for db in (quota_db, log_db, srv.dir / "store.db"):
        files = [db] + [db.with_name(db.name + s) for s in ("-wal", "-shm")
                        if db.with_name(db.name + s).exists()]
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert quota_db.with_name("quota.db-wal").exists()
    for d in (quota_db.parent, log_db.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs mounted on a fresh directory (needs root); unmounted at teardown."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    mounted = run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", mount])
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")
    yield mount
    run(["umount", "-l", mount])


def fill_up(path):
    """Writes ``path`` until the file system is full; returns the bytes written."""
    written = 0
    with open(path, "wb") as f:
        try:
            while True:
                written += f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return written


def test_full_spool_file_system_answers_452_and_loses_nothing(make_postern, small_tmpfs):
    """The spool on a 4 MiB tmpfs that the test fills up with a file:
    - a small message (journal append) and a large one (over `spool.inline_max_bytes`: its data
      file) get `452 4.3.1 Insufficient system storage` at end of data, and the session goes on
      (NOOP, MAIL, RCPT answered as usual);
    - a message accepted before, whose delivery attempts keep failing temporarily while the
      disk is full, keeps being tried (an attempt that cannot be recorded is not lost in
      flight) and is delivered once the MX accepts it;
    - after the filler is removed the same session's next message gets 250 and is delivered,
      as is the one delivered before the disk filled."""
    port = free_port_on("127.0.0.3")
    hold = threading.Event()
    hold.set()

    def policy(address: str, attempt: int):
        return "451 4.3.0 Try again later" if address.startswith("held") and hold.is_set() else None
    receiver = SmtpReceiver("127.0.0.3", port, policy=policy).start()
    try:
        pt = make_postern(delivery_port=port,
                          spool={"path": small_tmpfs / "spool", "inline_max_bytes": 65536})
        alice = pt.add_account("alice@example.org", "laptop")
        pt.start()
        client = pt.login(alice.address, alice.password)
        client.transaction(alice.address, ["early@plain.test"],
                           make_message(sender=alice.address, to="early@plain.test"))
        client.transaction(alice.address, ["held@plain.test"],
                           make_message(sender=alice.address, to="held@plain.test"))
        receiver.wait_for("early@plain.test")
        wait_until(lambda: receiver.attempts_for("held@plain.test"), 10, "first attempt")

        fill_up(small_tmpfs / "filler")
        tried_before = len(receiver.attempts_for("held@plain.test"))
        # Inline, but more than a page: tmpfs fills the last page of a file without new space.
        small = make_message(sender=alice.address, to="full@plain.test",
                             body=("s" * 76 + "\r\n") * 100)
        large = make_message(sender=alice.address, to="full@plain.test",
                             body=("z" * 76 + "\r\n") * 2_000)        # 156 kB > 64 KiB inline
        for message in (small, large):
            assert client.cmd(f"MAIL FROM:<{alice.address}>") == MAIL_OK
            assert client.cmd("RCPT TO:<full@plain.test>") == RCPT_OK
            assert client.cmd("DATA") == DATA_GO
            assert client.send_data(message) == SPOOL_FULL
            assert client.cmd("NOOP") == OK
        # Attempts go on while the disk is full (each fails to be recorded).
        wait_until(lambda: len(receiver.attempts_for("held@plain.test")) >= tried_before + 2,
                   15, "attempts for held@ while the disk is full")

        (small_tmpfs / "filler").unlink()
        client.transaction(alice.address, ["after@plain.test"],
                           make_message(sender=alice.address, to="after@plain.test"))
        hold.clear()
        receiver.wait_for("after@plain.test")
        receiver.wait_for("held@plain.test", timeout=20)
        assert not receiver.attempts_for("full@plain.test"), "a refused message was delivered"
        assert [m.rcpt_tos for m in receiver.received()].count(["early@plain.test"]) == 1
        client.quit()
    finally:
        receiver.stop()
