#!/usr/bin/env bash
# race-setup.sh: the two peers of `postern-race` (benches/race_bench.rs), installed, configured,
# started and stopped on this machine. Idempotent: run `install` and `configure` as often as
# you like. Needs root (apt-get, /etc/postfix, cgroups).
#
#   bash benches/race-setup.sh install          # apt-get postfix dovecot-core opendkim redis; npm Haraka
#   bash benches/race-setup.sh tls              # the RSA-2048 pair all three serve ($STATE/tls.pem, tls.key)
#   bash benches/race-setup.sh configure        # write the configs below (env: see "settings")
#   bash benches/race-setup.sh start-postfix    # postfix + dovecot auth + opendkim (background)
#   bash benches/race-setup.sh stop-postfix
#   bash benches/race-setup.sh start-haraka     # redis + haraka in a mount namespace (background)
#   bash benches/race-setup.sh stop-haraka
#
# The harness runs `start-*` inside the cgroup of that server, so every daemon it starts
# (postfix's master and its children, dovecot, opendkim; node and redis) is accounted there.
#
# Work they both do, as Postern does it (loopback only; no name may be resolved off the machine):
#   Postfix: submission listener with smtpd_tls_security_level=encrypt, SASL PLAIN through
#     Dovecot's auth service (passwd-file of the same user and password), relaying only for
#     authenticated clients, opendkim signing (RSA-2048, milter on a unix socket), queue file
#     fsynced before the 250 (Postfix's default), delivery to relayhost = the harness's sink.
#   Haraka: tls, auth/flat_file (PLAIN after STARTTLS), dkim signing (RSA-2048), limit with a
#     per-sender recipient rate in Redis, queue/smtp_forward with enable_outbound=true to the
#     sink. Haraka has no durable queue on this path: smtp_forward relays the message to the
#     sink while the client waits, and answers the client with the sink's reply.
set -euo pipefail

# ---------------------------------------------------------------- settings (env overrides)
STATE=${RACE_STATE:-/var/tmp/postern-race}        # pid files, logs, Haraka instance
HARAKA_PREFIX=${RACE_HARAKA_PREFIX:-/opt/postern-race-haraka}  # npm prefix of Haraka
HARAKA_VERSION=${RACE_HARAKA_VERSION:-3.3.4}
SINK=${RACE_SINK:-127.0.0.1:2625}                  # the harness's counting sink
POSTFIX_PORT=${RACE_POSTFIX_PORT:-10687}
HARAKA_PORT=${RACE_HARAKA_PORT:-10787}
HARAKA_NODES=${RACE_HARAKA_NODES:-2}               # worker processes (the machine has 2 cores)
REDIS_PORT=${RACE_REDIS_PORT:-6479}                # Haraka's limit plugin
USER_NAME=${RACE_USER:-bench@example.org}
PASSWORD=${RACE_PASSWORD:-}
DOMAIN=${USER_NAME#*@}
SELECTOR=race
PF=/etc/postfix
DKIM_SOCK=/var/spool/postfix/opendkim-race/sock    # inside Postfix's queue dir: no chroot needed

log() { printf '[race-setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
[ "$(id -u)" = 0 ] || { echo "race-setup.sh: run as root" >&2; exit 1; }
mkdir -p "$STATE"

wait_port() { # HOST PORT: up to 20 s
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on $1:$2" >&2; return 1
}
kill_pidfile() {
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

install() {
  local need=()
  for b in /usr/sbin/postfix /usr/sbin/dovecot /usr/sbin/opendkim /usr/sbin/opendkim-genkey \
    /usr/bin/redis-server /usr/bin/unshare; do
    [ -x "$b" ] || need+=("$b")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install (missing: ${need[*]})"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix dovecot-core opendkim \
      opendkim-tools redis-server util-linux openssl >/dev/null
  fi
  # Haraka 3.3 declares "node": ">=20"; Debian 12's own nodejs is 18, so it is not installed here.
  local major
  major=$(node --version 2>/dev/null | sed 's/^v\([0-9]*\).*/\1/')
  if [ -z "$major" ] || [ "$major" -lt 20 ] || ! command -v npm >/dev/null; then
    echo "Haraka $HARAKA_VERSION needs Node.js >= 20 with npm (found: ${major:-none});" \
      "Debian 12 ships 18: install Node.js 20 (e.g. the NodeSource package) first" >&2
    exit 1
  fi
  if [ ! -x "$HARAKA_PREFIX/node_modules/.bin/haraka" ]; then
    log "npm install Haraka@$HARAKA_VERSION into $HARAKA_PREFIX"
    mkdir -p "$HARAKA_PREFIX"
    (cd "$HARAKA_PREFIX" && { [ -f package.json ] || npm init -y >/dev/null; } &&
      npm install --no-audit --no-fund "Haraka@$HARAKA_VERSION" >/dev/null)
  fi
  log "installed: postfix $(postconf -d -h mail_version), $(dovecot --version | cut -d' ' -f1) dovecot," \
    "opendkim $(opendkim -V | head -1 | awk '{print $NF}'), Haraka $HARAKA_VERSION, node $(node --version)"
}

# one self-signed RSA-2048 certificate for all three servers ($STATE/tls.pem, tls.key)
tls_pair() {
  if [ ! -s "$STATE/tls.pem" ] || [ ! -s "$STATE/tls.key" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=localhost" \
      -keyout "$STATE/tls.key" -out "$STATE/tls.pem" 2>/dev/null
  fi
  chmod 644 "$STATE/tls.pem"; chmod 600 "$STATE/tls.key"
}

configure() {
  [ -n "$PASSWORD" ] || { echo "configure: set RACE_PASSWORD (the device password)" >&2; exit 1; }
  local sink_host=${SINK%:*} sink_port=${SINK##*:}
  tls_pair
  # one DKIM key (RSA-2048) for both peers
  if [ ! -s "$STATE/dkim.private" ]; then
    opendkim-genkey --bits=2048 --domain="$DOMAIN" --selector=$SELECTOR --directory="$STATE"
    mv "$STATE/$SELECTOR.private" "$STATE/dkim.private"; mv "$STATE/$SELECTOR.txt" "$STATE/dkim.txt"
  fi

  # -------------------------------------------- Postfix (backs up Debian's files once)
  log "postfix: submission on 127.0.0.1:$POSTFIX_PORT, relayhost [$sink_host]:$sink_port"
  [ -f $PF/master.cf.race-orig ] || cp $PF/master.cf $PF/master.cf.race-orig
  [ -f $PF/main.cf ] && [ ! -f $PF/main.cf.race-orig ] && cp $PF/main.cf $PF/main.cf.race-orig
  cat > $PF/main.cf <<EOF
# written by benches/race-setup.sh (Postern's three-way benchmark)
compatibility_level = 3.6
myhostname = relay.bench.test
mydomain = bench.test
myorigin = \$myhostname
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
biff = no
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
relayhost = [$sink_host]:$sink_port
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_cert_file = $STATE/tls.pem
smtpd_tls_key_file = $STATE/tls.key
smtpd_tls_loglevel = 0
maillog_file = $STATE/postfix.log
EOF
  cp $PF/master.cf.race-orig $PF/master.cf
  postconf -MX smtp/inet
  postconf -F '*/*/chroot = n'
  cat >> $PF/master.cf <<EOF
# --- race-setup.sh: authenticated submission, as Postern's submission listener
127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd
  -o syslog_name=postfix/race
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_sasl_path=private/race-auth
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_recipient_restrictions=
  -o smtpd_milters=unix:$DKIM_SOCK
  -o milter_default_action=tempfail
EOF
  postfix check

  # -------------------------------------------- Dovecot: the auth service only
  mkdir -p "$STATE/dovecot-run"
  printf '%s:{SHA256}%s\n' "$USER_NAME" \
    "$(printf '%s' "$PASSWORD" | openssl dgst -sha256 -binary | base64)" > "$STATE/dovecot.passwd"
  chown root:dovecot "$STATE/dovecot.passwd"; chmod 640 "$STATE/dovecot.passwd"
  cat > "$STATE/dovecot.conf" <<EOF
# written by benches/race-setup.sh: Dovecot as Postfix's SASL server, nothing else
protocols =
listen = 127.0.0.1
base_dir = $STATE/dovecot-run
log_path = $STATE/dovecot.log
auth_mechanisms = plain
# the device password is a random secret: a plain SHA-256, as Postern stores it
passdb {
  driver = passwd-file
  args = scheme=SHA256 username_format=%u $STATE/dovecot.passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}
service auth {
  unix_listener /var/spool/postfix/private/race-auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}
ssl = no
EOF

  # -------------------------------------------- opendkim: signing only, unix socket
  mkdir -p "$(dirname $DKIM_SOCK)" /etc/opendkim/race
  cp "$STATE/dkim.private" /etc/opendkim/race/key.private
  chown -R opendkim:opendkim /etc/opendkim/race "$(dirname $DKIM_SOCK)"
  chmod 700 /etc/opendkim/race; chmod 600 /etc/opendkim/race/key.private
  chmod 750 "$(dirname $DKIM_SOCK)"
  usermod -a -G opendkim postfix
  cat > /etc/opendkim/race.conf <<EOF
# written by benches/race-setup.sh
Mode s
Domain $DOMAIN
Selector $SELECTOR
KeyFile /etc/opendkim/race/key.private
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
Socket local:$DKIM_SOCK
UMask 007
UserID opendkim
PidFile $STATE/opendkim.pid
Syslog no
EOF

  # -------------------------------------------- Haraka instance
  local inst="$STATE/haraka"
  [ -d "$inst/config" ] || "$HARAKA_PREFIX/node_modules/.bin/haraka" -i "$inst" >/dev/null
  local c="$inst/config"
  log "haraka: 127.0.0.1:$HARAKA_PORT, nodes=$HARAKA_NODES, redis 127.0.0.1:$REDIS_PORT"
  cat > "$c/plugins" <<EOF
# written by benches/race-setup.sh
tls
auth/flat_file
redis
limit
dkim
queue/smtp_forward
EOF
  cat > "$c/smtp.ini" <<EOF
[main]
listen=127.0.0.1:$HARAKA_PORT
nodes=$HARAKA_NODES
[headers]
EOF
  echo 'relay.bench.test' > "$c/me"
  cp "$STATE/tls.pem" "$c/tls_cert.pem"; cp "$STATE/tls.key" "$c/tls_key.pem"
  printf '[main]\nkey=tls_key.pem\ncert=tls_cert.pem\n' > "$c/tls.ini"
  printf '[core]\nmethods=PLAIN\n\n[users]\n%s=%s\n' "$USER_NAME" "$PASSWORD" > "$c/auth_flat_file.ini"
  chmod 600 "$c/auth_flat_file.ini"
  printf '[server]\nhost=127.0.0.1\nport=%s\ndb=4\n' "$REDIS_PORT" > "$c/redis.ini"
  # the quota: a per-sender recipient rate counted in Redis, high enough never to refuse
  cat > "$c/limit.ini" <<EOF
[redis]
host=127.0.0.1
port=$REDIS_PORT
db=4
[rate_rcpt_sender]
enabled=true
default=4000000000/1d
EOF
  cat > "$c/dkim.ini" <<EOF
[sign]
enabled=true
headers=From, Sender, Reply-To, Subject, Date, Message-ID, To, Cc, MIME-Version, Content-Type, Content-Transfer-Encoding
[canon]
body=relaxed
[verify]
enabled=false
EOF
  mkdir -p "$c/dkim/$DOMAIN"
  cp "$STATE/dkim.private" "$c/dkim/$DOMAIN/private"; echo $SELECTOR > "$c/dkim/$DOMAIN/selector"
  cat > "$c/smtp_forward.ini" <<EOF
host=$sink_host
port=$sink_port
enable_outbound=true
[main]
EOF
  printf '[main]\nlevel=warn\n' > "$c/log.ini"
  # the namespace's resolver: loopback, where nothing answers, so no lookup leaves the machine
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > "$STATE/resolv.conf"
  log "configured"
}

start_postfix() {
  stop_postfix
  rm -f $DKIM_SOCK
  /usr/sbin/opendkim -x /etc/opendkim/race.conf          # daemonizes, writes its pid file
  /usr/sbin/dovecot -c "$STATE/dovecot.conf"              # daemonizes
  : > "$STATE/postfix.log"
  postfix start >/dev/null 2>&1
  for _ in $(seq 100); do [ -S $DKIM_SOCK ] && break; sleep 0.1; done
  [ -S $DKIM_SOCK ] || { echo "opendkim did not create $DKIM_SOCK" >&2; exit 1; }
  wait_port 127.0.0.1 "$POSTFIX_PORT"
}

stop_postfix() {
  postfix status >/dev/null 2>&1 && postfix stop >/dev/null 2>&1 || true
  if [ -s "$STATE/dovecot-run/master.pid" ]; then
    kill_pidfile "$STATE/dovecot-run/master.pid"
  fi
  kill_pidfile "$STATE/opendkim.pid"
}

start_haraka() {
  stop_haraka
  /usr/bin/redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize yes --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log"
  wait_port 127.0.0.1 "$REDIS_PORT"
  # a private mount namespace whose /etc/resolv.conf names 127.0.0.1
  unshare -m sh -c "mount --bind '$STATE/resolv.conf' /etc/resolv.conf && \
    exec '$HARAKA_PREFIX/node_modules/.bin/haraka' -c '$STATE/haraka'" \
    > "$STATE/haraka.log" 2>&1 &
  echo $! > "$STATE/haraka.pid"
  wait_port 127.0.0.1 "$HARAKA_PORT"
}

stop_haraka() {
  kill_pidfile "$STATE/haraka.pid"
  kill_pidfile "$STATE/redis.pid"
}

case "${1:-}" in
  install) install ;;
  tls) tls_pair ;;
  configure) configure ;;
  start-postfix) start_postfix ;;
  stop-postfix) stop_postfix ;;
  start-haraka) start_haraka ;;
  stop-haraka) stop_haraka ;;
  *) echo "usage: $0 install|tls|configure|start-postfix|stop-postfix|start-haraka|stop-haraka" >&2; exit 2 ;;
esac
