"""Durability of the spool: what got `250 ... queued as` survives `kill -9`; what did not, never
goes out."""

from concurrent.futures import ThreadPoolExecutor

from support import (DATA_GO, MAIL_OK, RCPT_OK, SmtpReceiver, free_port_on, make_message,
                     queue_id, wait_until)


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
