"""The Helm chart (helm/postern), tested short of a Kubernetes cluster, which these machines do
not have: ``helm lint`` and ``helm template`` with the default values and production-like ones
(``helm/postern/ci/production-values.yaml``); every rendered object checked against the
Kubernetes API schemas (kubernetes-validate, strict: unknown fields fail); the PrometheusRule
and the dashboards ConfigMap carrying dashboards/ unchanged; the ``postern.toml``
the chart renders accepted by ``postern config check``; typos refused; and the rendered config,
secrets layout, user and commands run for real: ``postern serve`` as the pod's non-root user on
a spool volume owned as ``fsGroup`` leaves it, a real PostgreSQL and Redis, the ``helm test``
pod's curl command against it, and the ``preStop`` drain.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from support import REPO, free_port, make_cert, run, wait_until

CHART = REPO / "helm" / "postern"
PRODUCTION = CHART / "ci" / "production-values.yaml"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
KUBERNETES_VERSIONS = ["1.27.0", "1.35.0"]
# The user and group of the pod (values.yaml podSecurityContext).
POD_UID = 65532


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    binary = shutil.which("helm")
    assert binary, "helm is missing: run tests/install-deps.sh"
    result = run([binary, *args], timeout=60)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def render(*values: Path, sets: tuple[str, ...] = ()) -> list[dict]:
    args = ["template", "mail", str(CHART), "--namespace", "mail"]
    for path in values:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def rendered_config(docs: list[dict]) -> str:
    return one(docs, "ConfigMap", "mail-postern")["data"]["postern.toml"]


def container(docs: list[dict]) -> dict:
    return one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]


VALUE_SETS = {"default": (), "production": (PRODUCTION,)}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_is_clean(values):
    args = ["lint", str(CHART), "--strict"]
    for path in values:
        args += ["-f", str(path)]
    result = helm(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_object_is_valid_against_the_kubernetes_schemas(values):
    docs = render(*values)
    kinds = sorted(d["kind"] for d in docs)
    expected = {"ConfigMap", "Job", "NetworkPolicy", "PodDisruptionBudget", "Pod", "Service",
                "ServiceAccount", "StatefulSet"}
    assert expected <= set(kinds), kinds
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked against its Service below
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_production_values_add_autoscaling_and_a_service_monitor_that_finds_the_metrics():
    docs = render(PRODUCTION)
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "mail-postern"}
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]
    assert hpa["spec"]["metrics"][1]["pods"]["metric"]["name"] == "postern_smtp_sessions_active"
    # The replica count is the autoscaler's: a StatefulSet that sets it too would fight it.
    assert "replicas" not in one(docs, "StatefulSet")["spec"]
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", "mail-postern-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert [p["name"] for p in service["spec"]["ports"]] == [monitor["spec"]["endpoints"][0]["port"]]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


DASHBOARD_NAMES = ["abuse-and-quotas.json", "fleet-overview.json", "spool-and-dependencies.json",
                   "transport-security.json"]


def test_the_prometheus_rule_carries_the_alerts_of_the_dashboards_directory():
    assert not [d for d in render() if d["kind"] == "PrometheusRule"]  # off by default
    rule = one(render(PRODUCTION), "PrometheusRule")
    # A CRD: kubernetes-validate has no schema for it, so its shape is checked here.
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["name"] == "mail-postern"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "mail"
    assert list(rule["spec"]) == ["groups"]
    alerts = yaml.safe_load((REPO / "dashboards" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"], group
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r), r
            assert isinstance(r["expr"], str) and r["expr"], r
            allowed = {"alert", "expr", "for", "labels", "annotations"} if "alert" in r else {
                "record", "expr", "labels"}
            assert set(r) <= allowed, r
            # Helm read the file as data: the alert templates reach Prometheus unrendered.
            if "alert" in r:
                assert "{{ $labels." in r["annotations"]["summary"], r["alert"]
    assert len({g["name"] for g in rule["spec"]["groups"]}) == len(rule["spec"]["groups"])


def test_the_dashboards_config_map_holds_every_dashboard_unchanged_for_the_sidecar():
    assert not [d for d in render() if d["metadata"]["name"] == "mail-postern-dashboards"]
    docs = render(PRODUCTION)
    config_map = one(docs, "ConfigMap", "mail-postern-dashboards")
    metadata = config_map["metadata"]
    assert metadata["labels"]["grafana_dashboard"] == "1"
    assert metadata["namespace"] == "monitoring"
    assert metadata["annotations"] == {"grafana_folder": "Postern"}
    assert sorted(config_map["data"]) == DASHBOARD_NAMES
    for name in DASHBOARD_NAMES:
        assert config_map["data"][name] == (REPO / "dashboards" / name).read_text(), name
    # Under the 256 KiB of the last-applied annotation, so `kubectl apply` and GitOps tools
    # that apply client-side can install it too (a ConfigMap's own limit is 1 MiB).
    assert sum(len(v.encode()) for v in config_map["data"].values()) < 262144
    # Without a namespace value it lands in the release's namespace.
    default_ns = one(render(sets=("grafanaDashboards.enabled=true",)), "ConfigMap",
                     "mail-postern-dashboards")
    assert "namespace" not in default_ns["metadata"]
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(default_ns, version, strict=True)


def test_a_typo_in_the_monitoring_values_fails_the_render():
    for typo in ("prometheusRule.enable=true", "grafanaDashboards.label.x=1"):
        result = helm("template", "mail", str(CHART), "--set", typo, check=False)
        assert result.returncode == 1, typo
        assert typo.split(".")[1].split("=")[0] in result.stderr, result.stderr


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_rendered_config_passes_config_check(postern_bin, tmp_path, values):
    path = tmp_path / "postern.toml"
    path.write_text(rendered_config(render(*values)))
    result = run([str(postern_bin), "config", "check", "--config", str(path)])
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"{path}: keys and values are valid\n", "")


def test_a_typo_in_the_values_fails_the_render():
    result = helm("template", "mail", str(CHART), "--set", "replicaCont=3", check=False)
    assert result.returncode == 1
    assert "replicaCont" in result.stderr and "additional properties" in result.stderr.lower()
    result = helm("template", "mail", str(CHART), "--set", "config.delivry.workers=3", check=False)
    assert result.returncode == 1
    assert "delivry" in result.stderr


def test_a_typo_inside_a_config_section_fails_config_check_naming_the_key(postern_bin, tmp_path):
    path = tmp_path / "postern.toml"
    path.write_text(rendered_config(render(sets=("config.delivery.wokers=3",))))
    result = run([str(postern_bin), "config", "check", "--config", str(path)])
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("postern: ") and "wokers" in result.stderr
    assert result.stderr.count("\n") == 1


def test_config_check_with_files_opens_what_the_config_names(postern_bin, tmp_path, certs):
    path = tmp_path / "postern.toml"
    missing = tmp_path / "absent.pem"
    listen = ('[listen]\nsubmission = "127.0.0.1:2587"\n[store]\npath = "var/store.db"\n'
              '[spool]\npath = "var/spool"\n')
    path.write_text(f'{listen}[tls]\ncert = "{missing}"\nkey = "{certs.server.key}"\n')
    # Without --files the names are only checked for form: the render machine has no secrets.
    assert run([str(postern_bin), "config", "check", "--config", str(path)]).returncode == 0
    result = run([str(postern_bin), "config", "check", "--files", "--config", str(path)])
    assert result.returncode == 2
    assert result.stderr.startswith(f"postern: tls.cert: {missing}: ")
    path.write_text(f'{listen}[tls]\ncert = "{certs.server.cert}"\nkey = "{certs.server.key}"\n')
    result = run([str(postern_bin), "config", "check", "--files", "--config", str(path)])
    assert (result.returncode, result.stdout) == (
        0, f"{path}: keys, values and the files it names are valid\n")


def test_migrate_runs_as_a_hook_before_install_and_upgrade_with_the_same_config():
    docs = render()
    job = one(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    hook_config = one(docs, "ConfigMap", "mail-postern-migrate")
    assert hook_config["metadata"]["annotations"]["helm.sh/hook-weight"] == "-10"
    assert hook_config["data"]["postern.toml"] == rendered_config(docs)
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "migrate", "--config", "/etc/postern/postern.toml"]


def test_a_config_change_rolls_the_pods_and_a_replica_count_does_not():
    def annotations(*sets):
        return one(render(sets=sets), "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    base = annotations()
    assert annotations("config.delivery.workers=10")["checksum/config"] != base["checksum/config"]
    assert annotations("replicaCount=5") == base


def test_pods_are_locked_down_and_outlive_their_drain():
    docs = render()
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    security = container(docs)["securityContext"]
    assert security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == POD_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # High container ports by default: no capability and no sysctl needed.
    assert "sysctls" not in pod["securityContext"]
    assert pod["terminationGracePeriodSeconds"] > 60 + 120
    assert pod["automountServiceAccountToken"] is False
    statefulset = one(docs, "StatefulSet")["spec"]
    assert statefulset["podManagementPolicy"] == "Parallel"
    assert statefulset["volumeClaimTemplates"][0]["metadata"]["name"] == "spool"
    # Binding 25/465/587 in the pod: the unprivileged-port sysctl, still no capability.
    prod = one(render(PRODUCTION), "StatefulSet")["spec"]["template"]["spec"]
    assert prod["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    assert prod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert prod["terminationGracePeriodSeconds"] > 120 + 300


def test_hand_off_goes_to_ready_peers_and_the_network_policy_allows_it():
    docs = render()
    handoff = one(docs, "Service", "mail-postern-handoff")
    # A plain Service lists ready pods only: a draining pod is unready, so never its own peer.
    assert "publishNotReadyAddresses" not in handoff["spec"]
    assert handoff["spec"]["ports"][0]["port"] == 2526
    pre_stop = container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop == ["/usr/local/bin/postern", "drain", "--config", "/etc/postern/postern.toml",
                        "--handoff", "mail-postern-handoff.mail.svc:2526", "--timeout", "60s"]
    assert 'peer = "mail-postern-handoff.mail.svc:2526"' in rendered_config(docs)
    policy = one(docs, "NetworkPolicy")["spec"]
    peers = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "postern",
                                             "app.kubernetes.io/instance": "mail"}}}
    assert {"from": [peers], "ports": [{"port": 2526, "protocol": "TCP"}]} in policy["ingress"]
    assert {"to": [peers], "ports": [{"port": 2526, "protocol": "TCP"}]} in policy["egress"]
    smtp = [{"port": p, "protocol": "TCP"} for p in (2525, 2587, 2465)]
    assert {"ports": smtp} in policy["ingress"]
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule.get("ports", [])}
    assert {25, 53, 443, 5432, 6379} <= egress_ports


# ---------------------------------------------------------------------------------------------
# The rendered pod, run for real (short of Kubernetes).
# ---------------------------------------------------------------------------------------------

class PodFiles:
    """The pod's file layout on this machine: every absolute path the chart mounts is moved
    under one directory that the pod's user may enter, with the owners and modes Kubernetes
    gives them (Secrets 0440 root:fsGroup, the spool volume root:fsGroup with setgid)."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="postern-pod-"))
        os.chmod(self.root, 0o755)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def secret(self, absolute: str, content: bytes):
        path = self.path(absolute)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o755)
        path.write_bytes(content)
        os.chown(path, 0, POD_UID)
        os.chmod(path, 0o440)

    def volume(self, absolute: str):
        path = self.path(absolute)
        path.mkdir(parents=True)
        os.chown(path, 0, POD_UID)
        os.chmod(path, 0o2775)

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def pod_files():
    files = PodFiles()
    yield files
    files.remove()


def as_pod_user(args: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={POD_UID}", f"--regid={POD_UID}", "--clear-groups", *args]


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the server as the pod's user (needs root)")
def test_the_rendered_pod_serves_and_drains(postern_bin, postgres, make_redis, certs, pod_files):
    redis = make_redis()
    redis_password = "chart-test-redis-password"
    assert redis.cli("CONFIG", "SET", "requirepass", redis_password).stdout.strip() == "OK"
    database = postgres.create_database("chart")
    ports = {role: free_port() for role in ("submission", "submissions", "relay", "http", "handoff")}
    sets = [f"postgres.url={postgres.url(database)}", f"redis.url={redis.url}",
            "hostname=postern.test", f"http.containerPort={ports['http']}",
            "redis.existingSecret=postern-redis", "postgres.tls=disable",
            f"handoff.containerPort={ports['handoff']}"]
    sets += [f"listeners.{role}.containerPort={ports[role]}"
             for role in ("submission", "submissions", "relay")]
    docs = render(sets=tuple(sets))

    # The files as the pod sees them: config, three Secrets, the spool volume.
    config = rendered_config(docs)
    for mounted in ("/etc/postern", "/var/lib/postern"):
        config = config.replace(f'"{mounted}/', f'"{pod_files.path(mounted)}/')
    config = config.replace("0.0.0.0:", "127.0.0.1:")
    config_path = pod_files.path("/etc/postern/postern.toml")
    config_path.parent.mkdir(parents=True)
    os.chmod(config_path.parent, 0o755)
    config_path.write_text(config)
    os.chmod(config_path, 0o644)
    pod_files.secret("/etc/postern/tls/tls.crt", Path(certs.server.cert).read_bytes())
    pod_files.secret("/etc/postern/tls/tls.key", Path(certs.server.key).read_bytes())
    pod_files.secret("/etc/postern/postgres/password", postgres.password.encode() + b"\n")
    pod_files.secret("/etc/postern/postgres/secret-key", run(["openssl", "rand", "-base64", "32"]).stdout.encode())
    pod_files.secret("/etc/postern/handoff/secret", b"fleet-secret-of-the-chart-test\n")
    pod_files.secret("/etc/postern/redis/password", redis_password.encode() + b"\n")
    # Every Secret file placed here is one the StatefulSet mounts.
    mounts = {m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert {"/etc/postern/tls", "/etc/postern/postgres", "/etc/postern/handoff",
            "/etc/postern/redis", "/var/lib/postern"} <= mounts
    pod_files.volume("/var/lib/postern")
    binary = pod_files.path("/usr/local/bin/postern")
    binary.parent.mkdir(parents=True)
    os.chmod(binary.parent, 0o755)
    shutil.copy(postern_bin, binary)
    os.chmod(binary, 0o755)

    check = run(as_pod_user([str(binary), "config", "check", "--files", "--config", str(config_path)]))
    assert (check.returncode, check.stderr) == (0, ""), check.stdout
    # The pre-install hook Job's command.
    job_args = one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    migrate = run(as_pod_user([str(binary), *job_args[:2], str(config_path)]))
    assert migrate.returncode == 0, migrate.stderr

    log = open(pod_files.root / "serve.log", "wb")
    serve = subprocess.Popen(as_pod_user([str(binary), *container(docs)["args"][:2], str(config_path)]),
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/readyz", timeout=2).status == 200
            except OSError:
                return False
        wait_until(ready, 30, "the rendered pod to turn ready")
        # The spool is the pod user's, private, inside the volume.
        spool = pod_files.path("/var/lib/postern/spool")
        assert spool.stat().st_uid == POD_UID and spool.stat().st_mode & 0o777 == 0o700

        # The helm test pod's command, as rendered, against the submission port.
        test_pod = one(docs, "Pod")["spec"]["containers"][0]["command"]
        url = test_pod[-1]
        assert url == "smtp://mail-postern-submission.mail.svc:587"
        curl = run([*test_pod[:-1], f"smtp://127.0.0.1:{ports['submission']}"], timeout=30)
        assert curl.returncode == 0, curl.stderr
        assert curl.stdout.startswith("250 2.0.0 Ok"), curl.stdout

        # preStop: the rendered drain command (the hand-off Service stands for a ready peer;
        # with an empty spool there is nothing to hand over), then serve exits by itself.
        pre_stop = container(docs)["lifecycle"]["preStop"]["exec"]["command"]
        moved = {"/usr/local/bin/postern": str(binary), "/etc/postern/postern.toml": str(config_path)}
        pre_stop = [moved.get(arg, arg) for arg in pre_stop]
        drain = run(as_pod_user(pre_stop), timeout=60)
        assert drain.returncode == 0, drain.stdout + drain.stderr
        assert serve.wait(timeout=30) == 0
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGKILL)
            serve.wait()
        log.close()


def test_the_bundled_redis_keeps_an_append_only_file_that_postern_accepts(make_postern, tmp_path):
    """The chart's own Redis (bundledRedis.enabled): its objects are valid, the relay's config
    points at its Service, and its rendered redis.conf, run by a real redis-server (only the
    address and directory moved to this machine), is one Postern reports as durable
    (`postern_quota_backend_persistence{mode="aof"}`) with no warning."""
    docs = render(sets=("bundledRedis.enabled=true",))
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    assert 'redis_url = "redis://mail-postern-redis.mail.svc:6379/"' in rendered_config(docs)
    redis_pods = one(docs, "StatefulSet", "mail-postern-redis")["spec"]["selector"]["matchLabels"]
    relay_pods = one(docs, "StatefulSet", "mail-postern")["spec"]["selector"]["matchLabels"]
    assert not redis_pods.items() <= relay_pods.items() and not relay_pods.items() <= redis_pods.items()

    conf = tmp_path / "redis.conf"
    rendered = one(docs, "ConfigMap", "mail-postern-redis")["data"]["redis.conf"]
    assert "\ndir /data\n" in rendered  # the volume's mount path
    conf.write_text(rendered.replace("\ndir /data\n", f"\ndir {tmp_path}\n"))
    port = free_port()
    log = tmp_path / "redis.log"
    redis = subprocess.Popen(["redis-server", str(conf), "--port", str(port), "--bind", "127.0.0.1"],
                             stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        def cli(*args):
            return run(["redis-cli", "-p", str(port), *args], timeout=10).stdout.split()
        wait_until(lambda: cli("PING") == ["PONG"], 15, "the bundled redis.conf to serve")
        assert cli("CONFIG", "GET", "appendonly") == ["appendonly", "yes"]
        assert cli("CONFIG", "GET", "maxmemory-policy") == ["maxmemory-policy", "noeviction"]
        pt = make_postern(quota={"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/"})
        pt.start()
        wait_until(lambda: pt.metric('postern_quota_backend_persistence{mode="aof"}') == 1, 10,
                   "the persistence metric")
        assert pt.metric('postern_quota_backend_persistence{mode="none"}') == 0
        assert "QUOTA COUNTS AT RISK" not in pt.log_text()
    finally:
        redis.terminate()
        redis.wait(timeout=10)
