"""Fixtures of the black-box suite: the binary, certificates, knot, MX receivers, servers."""

from __future__ import annotations

import dataclasses
import os
import shutil
import ssl
import tempfile
import warnings
from pathlib import Path

import pytest

from support import (REPO, ZONES, Account, CertPair, Knot, Postern, PostgresServer, RedisCluster,
                     RedisServer, SmtpReceiver, free_port_on, make_cert)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the 201 MB messages")


@pytest.fixture(scope="session")
def postern_bin() -> Path:
    """The server binary: $POSTERN_BIN, else <target dir>/release/postern."""
    if os.environ.get("POSTERN_BIN"):
        path = Path(os.environ["POSTERN_BIN"])
    else:
        path = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "postern"
    if not path.is_file():
        pytest.fail(f"postern binary not found at {path}: run `cargo build --release` "
                    "or set POSTERN_BIN")
    return path


@dataclasses.dataclass(frozen=True)
class Certs:
    server: CertPair      # Postern's certificate (RSA)
    mx: CertPair          # the receivers' certificate (EC P-256)


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    return Certs(server=make_cert(d, "postern.test", key_type="rsa"),
                 mx=make_cert(d, "mx.test", key_type="ec"))


@pytest.fixture(scope="session")
def knot(tmp_path_factory) -> Knot:
    server = Knot(tmp_path_factory.mktemp("knot"), ZONES)
    server.start()
    yield server
    server.stop()


@dataclasses.dataclass
class MxHosts:
    port: int
    tls: SmtpReceiver         # 127.0.0.2, STARTTLS offered
    plain: SmtpReceiver       # 127.0.0.3, no STARTTLS
    badtls: SmtpReceiver      # 127.0.0.4, STARTTLS offered, handshake always fails


def broken_tls_context(mx: CertPair):
    """A server context that can only speak TLS 1.0/1.1, which Postern's rustls refuses."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(mx.cert, mx.key)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


@pytest.fixture
def mx(certs) -> MxHosts:
    """Three receiving SMTP servers on one port P (Postern's [delivery] port)."""
    port = free_port_on("127.0.0.2", "127.0.0.3", "127.0.0.4")
    hosts = MxHosts(port,
                    SmtpReceiver("127.0.0.2", port, tls=certs.mx).start(),
                    SmtpReceiver("127.0.0.3", port).start(),
                    SmtpReceiver("127.0.0.4", port,
                                 tls_context=broken_tls_context(certs.mx)).start())
    yield hosts
    for r in (hosts.tls, hosts.plain, hosts.badtls):
        r.stop()


@pytest.fixture
def make_postern(postern_bin, tmp_path, certs, knot, request):
    """Factory: ``make_postern(delivery_port=None, cert=certs.server, **overrides)`` gives a
    configured (not started) server in its own directory; all are stopped at teardown."""
    made: list[Postern] = []

    def factory(*, delivery_port: int | None = None, cert="default", **overrides) -> Postern:
        pt = Postern(postern_bin, tmp_path / f"postern{len(made)}",
                     cert=certs.server if cert == "default" else cert,
                     dns_port=knot.port, delivery_port=delivery_port, overrides=overrides)
        made.append(pt)
        return pt

    request.node.posterns = made
    yield factory
    for pt in made:
        pt.stop()


@pytest.fixture
def make_fleet(make_postern):
    """Factory: ``make_fleet(n, **overrides)`` gives ``n`` configured (not started) servers with
    their own ports and spools sharing the first one's store file (so also its embedded quota
    file): a fleet of relays in front of one directory."""
    def factory(n: int, **overrides) -> list[Postern]:
        first = make_postern(**overrides)
        shared = {"store": {"path": first.config["store"]["path"]}}
        return [first] + [make_postern(**overrides, **shared) for _ in range(n - 1)]
    return factory


@pytest.fixture
def make_redis(tmp_path):
    """Factory: a started ``redis-server`` on a free port; all are stopped at teardown."""
    made: list[RedisServer] = []

    def factory() -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(made)}")
        made.append(server)
        return server.start()

    yield factory
    for server in made:
        server.stop()


@pytest.fixture
def make_postgres():
    """Factory: ``make_postgres(tls_names=None)`` gives a started PostgreSQL on a free port (its
    own cluster, stopped and removed at teardown), with TLS for ``tls_names`` when given. Its
    directory is outside pytest's tmp_path, whose parents only root may enter: the server
    runs as the postgres user."""
    made: list[tuple[PostgresServer, Path]] = []

    def factory(*, tls_names: list[str] | None = None) -> PostgresServer:
        workdir = Path(tempfile.mkdtemp(prefix="postern-pg-"))
        server = PostgresServer(workdir, tls_names=tls_names)
        made.append((server, workdir))
        return server.start()

    yield factory
    for server, workdir in made:
        server.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres(make_postgres) -> PostgresServer:
    """A started PostgreSQL without TLS (see ``make_postgres``)."""
    return make_postgres()


@pytest.fixture
def redis_cluster(tmp_path) -> RedisCluster:
    """A started three-master Redis Cluster (no replicas) on free ports."""
    cluster = RedisCluster(tmp_path / "redis-cluster")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@dataclasses.dataclass
class QuotaBackend:
    """One quota backend for a test: its name, the ``[quota]`` keys that select it, and the
    Redis server or Cluster the test started for it."""
    name: str
    keys: dict
    redis: RedisServer | None = None
    cluster: RedisCluster | None = None

    def quota(self, **keys) -> dict:
        """The ``[quota]`` section: this backend plus ``keys`` (window, hold_ttl, ...)."""
        return {**self.keys, **keys}


@pytest.fixture(params=["embedded", "redis"])
def quota_backend(request) -> QuotaBackend:
    """The quota backend, parametrized (``embedded``, ``redis``); tests may ask for
    ``cluster`` too with ``@pytest.mark.parametrize("quota_backend", [...], indirect=True)``."""
    name = request.param
    if name == "embedded":
        return QuotaBackend(name, {"backend": "embedded"})
    if name == "redis":
        redis = request.getfixturevalue("make_redis")()
        return QuotaBackend(name, {"backend": "redis", "redis_url": redis.url}, redis=redis)
    if name == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return QuotaBackend(name, {"backend": "redis", "redis_cluster": cluster.urls},
                            cluster=cluster)
    raise ValueError(f"unknown quota backend {name!r}")


@dataclasses.dataclass
class Server:
    """A started Postern with two accounts:
    alice@example.org (devices laptop, phone; alias info@example.org), bob@example.net (desktop).
    """
    pt: Postern
    alice: Account
    bob: Account

    def __getattr__(self, name):
        return getattr(self.pt, name)


def start_with_accounts(pt: Postern) -> Server:
    alice = pt.add_account("alice@example.org", "laptop", "phone")
    pt.add_alias("info@example.org", alice.address)
    bob = pt.add_account("bob@example.net", "desktop")
    pt.start()
    return Server(pt, alice, bob)


@pytest.fixture
def make_server(make_postern):
    """Factory: a started server with the two standard accounts; takes make_postern's args."""
    return lambda **kw: start_with_accounts(make_postern(**kw))


@pytest.fixture
def server(make_server) -> Server:
    """The default server (default limits except a 10 ms AUTH failure delay)."""
    return make_server()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of every server log of the test to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, pt in enumerate(getattr(item, "posterns", [])):
            report.sections.append((f"postern{i} log (tail)", pt.log_tail(40)))
