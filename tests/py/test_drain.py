"""Issue 11, each replica's spool: `postern queue list/flush/delete` against a running serve,
`postern drain` with and without hand-off, and the hand-off listener's refusals.

Mail goes to a relay host, an aiosmtpd receiver whose answer the test switches: it defers
(451) until told to accept. Retries are an hour apart, so only `queue flush`, a drain (which
makes the queue due) or a restart bring a message back before the test ends."""

import json
import subprocess
import time

import pytest

from support import (SmtpReceiver, b64, client_tls_context, free_port, make_message, queue_id,
                     wait_until)

SECRET = "fleet-secret-for-the-tests-0123456789"


class Switch:
    """The receiver's answer: 451 while deferring, then 250."""

    def __init__(self):
        self.deferring = True

    def __call__(self, address: str, attempt: int):
        return "451 4.3.0 Try again later" if self.deferring else None


@pytest.fixture
def receiver():
    switch = Switch()
    rcv = SmtpReceiver("127.0.0.1", free_port(), policy=switch).start()
    rcv.switch = switch
    yield rcv
    rcv.stop()


def relayed(receiver) -> dict:
    return {"relayhost": f"[127.0.0.1]:{receiver.port}", "retry_initial": "1h",
            "retry_max": "2h", "connection_idle": "0s"}


def submit(srv, rcpts, *, mail_params="", rcpt_params="", subject="test") -> str:
    """One message as alice to ``rcpts`` with DSN parameters; returns its queue id."""
    alice = srv.alice
    client = srv.login(alice.address, alice.password)
    assert client.cmd(f"MAIL FROM:<{alice.address}>{mail_params}").code == 250
    for r in rcpts:
        assert client.cmd(f"RCPT TO:<{r}>{rcpt_params}").code == 250
    assert client.cmd("DATA").code == 354
    qid = queue_id(client.send_data(make_message(sender=alice.address, to=rcpts[0],
                                                 subject=subject)))
    client.quit()
    return qid


def queue(srv) -> list[dict]:
    return json.loads(srv.cli("queue", "list", "--json").stdout)


def wait_deferred(srv, ids):
    """Until every message in ``ids`` had its first attempt deferred."""
    def done():
        q = {m["id"]: m for m in queue(srv)}
        return all(i in q and q[i]["attempts"] == 1 and q[i]["next_attempt_ms"] for i in ids)
    wait_until(done, 30, f"first attempts of {ids}")


def test_queue_list_flush_and_delete_while_serve_runs(make_server, receiver):
    srv = make_server(delivery=relayed(receiver))
    first = submit(srv, ["one@example.net", "two@example.net"],
                   mail_params=" RET=HDRS ENVID=QQ314", rcpt_params=" NOTIFY=FAILURE,DELAY")
    second = submit(srv, ["three@example.net"])
    third = submit(srv, ["four@example.net"])
    wait_deferred(srv, [first, second, third])

    listed = queue(srv)
    assert [m["id"] for m in listed] == [first, second, third]
    m = listed[0]
    assert (m["sender"], m["ret"], m["envid"]) == ("alice@example.org", "HDRS", "QQ314")
    assert [(r["address"], r["state"], r["attempts"], r["notify"]) for r in m["recipients"]] == [
        ("one@example.net", "pending", 1, "FAILURE,DELAY"),
        ("two@example.net", "pending", 1, "FAILURE,DELAY")]
    assert "451 4.3.0 Try again later" in m["recipients"][0]["last_reply"]
    assert m["next_attempt_ms"] > time.time() * 1000 + 30 * 60 * 1000
    assert m["size"] > 0 and m["age_seconds"] >= 0
    text = srv.cli("queue", "list").stdout
    assert first in text and "<alice@example.org>" in text and text.endswith("3 messages\n")

    receiver.switch.deferring = False
    assert srv.cli("queue", "flush", first).stdout == f"{first}: due now\n"
    receiver.wait_for("one@example.net")
    wait_until(lambda: first not in [q["id"] for q in queue(srv)], 15, "first delivered")

    # Delete with a bounce: a 5.0.0 DSN to alice (through the relay host); without: nothing.
    assert srv.cli("queue", "delete", second).stdout == f"{second}: deleted (sender notified)\n"
    dsn = receiver.wait_for("alice@example.org")
    assert dsn.mail_from == "<>" or dsn.mail_from == ""
    assert b"Status: 5.0.0" in dsn.content and b"three@example.net" in dsn.content
    assert srv.cli("queue", "delete", third, "--no-bounce").stdout == \
        f"{third}: deleted (no DSN)\n"
    assert [q["id"] for q in queue(srv)] == []
    assert not receiver.attempts_for("three@example.net")[1:]

    unknown = srv.cli("queue", "delete", third, check=False)
    assert (unknown.returncode, unknown.stderr) == (1, f"postern: no message {third} in the queue\n")
    missing = srv.cli("queue", "flush", "NOPE", check=False)
    assert (missing.returncode, missing.stderr) == (1, "postern: no message NOPE in the queue\n")

    srv.stop()
    socket = srv.dir / "spool" / "control.sock"
    down = srv.cli("queue", "list", check=False)
    assert down.returncode == 69
    assert down.stderr == ("postern: no postern serve is running for this config "
                           f"(no control socket answers at {socket})\n")


def test_drain_without_handoff_leaves_the_spool_for_the_next_start(make_server, receiver):
    srv = make_server(delivery=relayed(receiver))
    ids = [submit(srv, [f"d{i}@example.net"]) for i in range(3)]
    wait_deferred(srv, ids)
    assert srv.metric("postern_draining") == 0

    drain = subprocess.Popen([str(srv.binary), "--config", str(srv.config_path), "drain",
                              "--timeout", "3s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    wait_until(lambda: srv.http_get("/readyz")[0] == 503, 5, "unready while draining")
    assert srv.metric("postern_draining") == 1
    out, err = drain.communicate(timeout=60)
    assert drain.returncode == 75, (out, err)
    lines = out.splitlines()
    assert lines[0].startswith("draining (delivering): 3 queued"), out
    assert lines[-1] == ("drained: 3 messages left in the spool, 0 handed off "
                         "(timeout before the queue was empty (no hand-off peer))")
    srv.proc.wait(30)
    assert srv.proc.returncode == 0

    receiver.switch.deferring = False
    srv.start()
    # The restart keeps each message's schedule (an hour away): flush to see it delivered.
    assert [m["id"] for m in queue(srv)] == ids
    srv.cli("queue", "flush")
    for i in range(3):
        receiver.wait_for(f"d{i}@example.net")


def handoff_pair(make_server, receiver, tmp_path, networks=("127.0.0.0/8",)):
    secret = tmp_path / "fleet.secret"
    secret.write_text(SECRET + "\n")
    a = make_server(delivery=relayed(receiver), handoff={"secret_file": secret})
    b = make_server(delivery=relayed(receiver),
                    listen={"handoff": f"127.0.0.1:{free_port()}"},
                    handoff={"secret_file": secret, "networks": list(networks)})
    return a, b


def test_drain_hands_the_queue_to_a_peer_that_delivers_it(make_server, receiver, tmp_path):
    a, b = handoff_pair(make_server, receiver, tmp_path)
    ids = [submit(a, [f"h{i}@example.net", f"k{i}@example.net"],
                  mail_params=" RET=FULL ENVID=E" + str(i),
                  rcpt_params=f" NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;H{i}@example.net")
           for i in range(5)]
    wait_deferred(a, ids)
    before = {m["id"]: m for m in queue(a)}

    drained = a.cli("drain", "--handoff", b.config["listen"]["handoff"],
                    "--timeout", "1s", check=False)
    assert drained.returncode == 0, drained
    assert drained.stdout.splitlines()[-1] == "drained: spool empty, 5 handed off"
    a.proc.wait(30)

    got = queue(b)
    assert len(got) == 5
    arrivals = sorted(m["received_at_ms"] for m in before.values())
    assert sorted(m["received_at_ms"] for m in got) == arrivals, "arrival kept"
    for m in got:
        n = m["envid"][1:]
        assert (m["ret"], m["envid"]) == ("FULL", f"E{n}")
        assert [(r["address"], r["notify"], r["orcpt"], r["state"]) for r in m["recipients"]] == [
            (f"h{n}@example.net", "SUCCESS,FAILURE", f"H{n}@example.net", "pending"),
            (f"k{n}@example.net", "SUCCESS,FAILURE", f"H{n}@example.net", "pending")]

    # B tries each at once (deferred, next try in an hour); a flush leaves a message whose
    # attempt is running alone, so flush once every first attempt is over.
    wait_deferred(b, [m["id"] for m in got])
    receiver.switch.deferring = False
    b.cli("queue", "flush")
    for i in range(5):
        msg = receiver.wait_for(f"h{i}@example.net")
        assert msg.content.count(b"\r\nReceived: ") + msg.content.startswith(b"Received: ") == 1
    wait_until(lambda: queue(b) == [], 15, "B's queue empty")
    delivered = [m for m in receiver.received() if m.mail_from == "alice@example.org"]
    assert len(delivered) == 5


def handoff_client(b):
    from support import SmtpClient
    client = SmtpClient("127.0.0.1", int(b.config["listen"]["handoff"].rsplit(":", 1)[1]))
    return client


def test_handoff_listener_refuses_without_tls_secret_or_network(make_server, receiver,
                                                                  tmp_path):
    _, b = handoff_pair(make_server, receiver, tmp_path)
    c = handoff_client(b)
    assert c.reply().code == 220
    assert c.ehlo().code == 250
    assert c.cmd("MAIL FROM:<a@x> X-POSTERN-ARRIVAL=1") == \
        "530 5.7.0 Must issue a STARTTLS command first"
    assert c.auth_plain("postern-handoff", SECRET) == \
        "530 5.7.0 Must issue a STARTTLS command first"
    assert c.starttls(client_tls_context()).code == 220
    assert c.ehlo().code == 250
    assert c.cmd("MAIL FROM:<a@x> X-POSTERN-ARRIVAL=1") == "530 5.7.0 Authentication required"
    assert c.auth_plain("postern-handoff", SECRET + "x") == \
        "535 5.7.8 Authentication credentials invalid"
    assert c.auth_plain("postern-handoff", SECRET) == "235 2.7.0 Authentication successful"
    assert c.cmd("MAIL FROM:<a@x>") == "501 5.5.4 Hand-off: X-POSTERN-ARRIVAL is required"
    c.close()

    # The submission port knows nothing of the arrival parameter.
    srv = b
    client = srv.login(srv.alice.address, srv.alice.password)
    assert client.cmd(f"MAIL FROM:<{srv.alice.address}> X-POSTERN-ARRIVAL=1") == \
        "555 5.5.4 MAIL FROM parameter X-POSTERN-ARRIVAL not supported"
    client.close()

    outside = make_server(listen={"handoff": f"127.0.0.1:{free_port()}"},
                          handoff={"secret_file": tmp_path / "fleet.secret",
                                   "networks": ["10.0.0.0/8"]})
    c = handoff_client(outside)
    assert c.reply() == "554 5.7.1 Hand-off not accepted from your address"
    c.expect_closed()
