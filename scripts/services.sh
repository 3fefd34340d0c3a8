#!/usr/bin/env bash
# Install (when missing) and start the real services the test suite talks to, on loopback:
#   Tansu (Kafka protocol)  127.0.0.1:9092   memory:// storage
#   ClickHouse              127.0.0.1:8123 (HTTP), 127.0.0.1:9000 (native)
#   Redis                   127.0.0.1:6379
# and Debian's Chromium for the live-feed page test (headless, driven over DevTools) and
# rsyslog (with its TLS module) for the syslog connector tests (each test starts its own
# daemon on free ports).
# Idempotent: a service that already answers is left alone. Binaries and state live under
# $THREATPIPE_CACHE (default ~/.cache/threatpipe), outside the clone, so a second run and
# later clones reuse them. Building Tansu takes 12-20 minutes on two cores, once.
set -euo pipefail

CACHE="${THREATPIPE_CACHE:-$HOME/.cache/threatpipe}"
STATE="$CACHE/services"
mkdir -p "$STATE"

log() { echo "[services] $*" >&2; }
die() { echo "[services] ERROR: $*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds name logfile
  for _ in $(seq 1 "$2"); do port_open "$1" && return 0; sleep 1; done
  [ -f "${4:-}" ] && tail -n 30 "$4" >&2
  die "$3 did not open port $1 within $2 s"
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  log "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q "$@" >/dev/null 2>&1 || {
    as_root apt-get update -q >/dev/null 2>&1
    as_root apt-get install -y -q "$@" >/dev/null || die "apt-get install $* failed"
  }
}

# --- Tansu -------------------------------------------------------------------------------
find_tansu() {
  if [ -n "${TANSU_BIN:-}" ] && [ -x "$TANSU_BIN" ]; then echo "$TANSU_BIN"; return 0; fi
  if [ -x "$CACHE/tansu/bin/tansu" ]; then echo "$CACHE/tansu/bin/tansu"; return 0; fi
  command -v tansu 2>/dev/null && return 0
  return 1
}

start_tansu() {
  if port_open 9092; then log "Kafka protocol already on 127.0.0.1:9092"; return; fi
  local tansu
  if ! tansu="$(find_tansu)"; then
    log "building Tansu 0.6 (cargo install, 12-20 min on two cores; cached in $CACHE/tansu)"
    cargo install tansu --version 0.6.0 --locked --features dynostore,postgres --root "$CACHE/tansu" \
      >"$STATE/tansu-install.log" 2>&1 || { tail -n 40 "$STATE/tansu-install.log" >&2; die "building Tansu failed"; }
    tansu="$CACHE/tansu/bin/tansu"
  fi
  log "starting Tansu ($tansu) on 127.0.0.1:9092, memory storage"
  nohup "$tansu" broker \
    --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$STATE/tansu.log" 2>&1 &
  wait_port 9092 60 Tansu "$STATE/tansu.log"
}

# --- ClickHouse --------------------------------------------------------------------------
clickhouse_up() { curl -fsS 'http://127.0.0.1:8123/?query=SELECT%20version()' >/dev/null 2>&1; }

start_clickhouse() {
  if clickhouse_up; then log "ClickHouse already on 127.0.0.1:8123"; return; fi
  command -v clickhouse-server >/dev/null 2>&1 || apt_install clickhouse-server clickhouse-client
  local dir="$STATE/clickhouse"
  mkdir -p "$dir/data/" "$dir/tmp/" "$dir/log"
  cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$dir/log/clickhouse-server.log</log>
        <errorlog>$dir/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <http_port>8123</http_port>
    <tcp_port>9000</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <users_config>/etc/clickhouse-server/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
XML
  log "starting ClickHouse on 127.0.0.1:8123"
  nohup clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
  for _ in $(seq 1 60); do clickhouse_up && return 0; sleep 1; done
  tail -n 30 "$dir/log/clickhouse-server.err.log" "$dir/log/stdout.log" >&2 || true
  die "ClickHouse did not answer on :8123 within 60 s"
}

# --- Redis -------------------------------------------------------------------------------
start_redis() {
  if port_open 6379; then log "Redis already on 127.0.0.1:6379"; return; fi
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  log "starting Redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$STATE" --logfile "$STATE/redis.log"
  wait_port 6379 20 Redis "$STATE/redis.log"
}

# --- Chromium (the browser test of the live-feed page) ------------------------------------
install_chromium() {
  if command -v chromium >/dev/null 2>&1; then return; fi
  apt_install chromium
}

install_rsyslog() {
  # rsyslog-gnutls: the TLS input for the syslog-over-TLS test.
  # openssl: the TLS tests make their own CA and certificates with it.
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  if [ -f /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so ] || dpkg -s rsyslog-gnutls >/dev/null 2>&1; then return; fi
  apt_install rsyslog rsyslog-gnutls
}

start_tansu
start_clickhouse
start_redis
install_chromium
install_rsyslog
log "ready: KAFKA_BROKERS=127.0.0.1:9092 CLICKHOUSE_URL=http://127.0.0.1:8123 REDIS_URL=redis://127.0.0.1:6379"
