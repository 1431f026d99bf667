"""Health endpoints, Prometheus metrics, the transaction log line, no password in logs."""

import re

from support import AUTH_FAILED, SINK, b64, make_message, run

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)( \d+)?$')


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {series: value}; asserts every line is well-formed."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert not line or re.match(r"^# (HELP|TYPE) \S+ ", line) or line.startswith("# "), line
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


def test_health_and_readiness(server):
    """/healthz and /readyz answer 200 on the http listener."""
    assert server.http_get("/healthz")[0] == 200
    assert server.http_get("/readyz")[0] == 200


def test_metrics_are_prometheus_text_and_move(server):
    """/metrics is Prometheus text format; after a submission some counters have increased and
    there are series about connections, AUTH, messages and the spool."""
    status, headers, before_text = server.http_get("/metrics")
    assert status == 200
    content_type = {k.lower(): v for k, v in headers.items()}["content-type"]
    assert content_type.startswith("text/plain"), content_type
    before = parse_metrics(before_text)
    alice = server.alice
    client = server.login(alice.address, alice.password)
    client.transaction(alice.address, [f"m@{SINK}"], make_message(sender=alice.address,
                                                                   to=f"m@{SINK}"))
    client.quit()
    after = parse_metrics(server.http_get("/metrics")[2])
    increased = [k for k, v in after.items() if v > before.get(k, 0)]
    assert increased, "no metric moved after a submission"
    names = " ".join(after).lower()
    for topic in ("connection", "auth", "message", "spool"):
        assert topic in names, f"no metric about {topic!r} in {sorted(after)}"


def test_one_log_line_per_transaction(make_server):
    """The transaction's log line carries queue ID, address, device name, client IP,
    recipient count and size."""
    srv = make_server(delivery={"workers": 0})                  # no delivery lines in the way
    alice = srv.alice
    client = srv.login(alice.address, alice.devices["phone"], role="submissions")
    rcpts = [f"l{i}@{SINK}" for i in range(3)]
    msg = make_message(sender=alice.address, to=rcpts[0], body="x" * 500 + "\r\n")
    qid = client.transaction(alice.address, rcpts, msg)
    client.quit()
    lines = [l for l in srv.log_text().splitlines() if qid in l]
    assert len(lines) == 1, f"expected one line with {qid}: {lines}"
    line = lines[0]
    for needle in (alice.address, "phone", "127.0.0.1"):
        assert needle in line, f"{needle!r} missing from {line!r}"
    numbers = [int(n) for n in re.findall(r"(?<![\w.])(\d+)(?![\w.])", line)]
    assert 3 in numbers, f"recipient count 3 missing from {line!r}"
    assert any(len(msg) <= n <= len(msg) + 2048 for n in numbers), \
        f"size ({len(msg)} bytes sent) missing from {line!r}"


def test_passwords_never_logged(server, tmp_path):
    """After AUTH PLAIN, AUTH LOGIN, a failed AUTH and a swaks run, neither any password nor
    its base64 forms appear in the server's log."""
    alice = server.alice
    secrets = [*alice.devices.values(), "Wr0ngPassw0rd-guess"]
    client = server.login(alice.address, alice.devices["laptop"], mechanism="PLAIN")
    client.quit()
    client = server.login(alice.address, alice.devices["phone"], mechanism="LOGIN")
    client.quit()
    client = server.connect("submissions")
    client.ehlo()
    assert client.auth_plain(alice.address, secrets[-1]) == AUTH_FAILED
    client.close()
    r = run(["swaks", "--server", "127.0.0.1", "--port", server.port("submission"), "-tls",
             "--auth", "LOGIN", "--auth-user", alice.address, "--auth-password", secrets[0],
             "--from", alice.address, "--to", f"s@{SINK}"])
    assert r.returncode == 0, r.stdout
    server.stop()                                          # flush everything to the log
    log = server.log_text()
    assert log, "empty server log"
    for secret in secrets:
        for form in (secret, b64(secret), b64(f"\0{alice.address}\0{secret}")):
            assert form not in log, f"secret found in the log as {form!r}"
