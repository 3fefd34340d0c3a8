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
# Tansu 0.6.0 from crates.io with our patches (scripts/tansu/<crate>/*.patch, applied to
# that crate of Tansu's):
#   tansu-storage/0001: its fetch slept out the rest of fetch.wait.max.ms after every read,
#         records or not, so each consumer hop cost up to twice that wait; patched, a fetch
#         answers as soon as records are there, as Kafka does.
#   tansu-storage/0002: its fetch listed every stored batch of the partition (O(batches)),
#         and a fetch from inside a batch skipped the rest of that batch (a consumer resuming
#         mid-batch lost records); patched, batches are read one after another from the one
#         that holds the offset. And 0.6.0 skipped a batch still being written (a produce
#         advances the watermark before it stores the batch, so with two producers on one
#         partition a later batch can be stored first): the consumer lost that batch. The
#         patched fetch stops in front of it. The tests rely on both.
#   tansu-broker/0003: its group coordinator, when a member stopped heartbeating (killed),
#         dropped it but kept the old assignment, and let a follower form the group with an
#         empty assignment when the leader was the one lost; the lost member's partitions
#         then stayed with nobody for good. Patched, the survivors rejoin and are assigned
#         everything, as Kafka does after session.timeout.ms.
#   tansu-service/0004: every request was decoded, and its response encoded, on tokio's
#         blocking pool (spawn_blocking): two hand-offs to another thread and back per
#         request, each a wake-up and a context switch, for a few microseconds of work
#         (`perf` at 5,000 events/s: a fifth of Tansu's samples in context switches).
#         Patched, both are done on the connection's task: 1.44x less CPU for Tansu at
#         5,000 events/s (load/README.md, session 20).
#   tansu-storage/0005: a fetch short of records polled storage after 1, 2, 4, then every
#         8 ms, so a record stored just after a look waited up to 8 ms at each consumer hop.
#         Patched, a produce wakes the fetches waiting on its topic (a look every 10-80 ms
#         remains, for records readable without a produce): at 5,000 events/s the
#         pipeline's p50 fell from 33.6 to 27.3 ms, the pass-through's from 28.5 to 23.9
#         ms (medians of four runs each), for 11% more broker CPU (load/README.md, session 21).
# The binary is cached under a name that includes the patches' hash, so a changed patch
# builds a new one and an unchanged one is reused.
TANSU_VERSION=0.6.0
TANSU_SHA256=4fdd85473ec265140488cf8d55e82b844f5c051c8916fabdd4a71156ac053f6d
TANSU_STORAGE_SHA256=720d2ed8e6010c70f7f06e5af5a7274ebbf6e42fdcd9e46de542b10dc4d2f35d
TANSU_BROKER_SHA256=93c1e91b40c2a706dfdbe9a795c08c70918c874ad23f6e0e87564cc0a180e720
TANSU_SERVICE_SHA256=7cbbca7aeaeee1d4133e2dda04e66f0bd8bedb3f0f1632d64c3040d8d3d85d09
TANSU_PATCHES="$(cd "$(dirname "$0")" && pwd)/tansu"
TANSU_HOME="$CACHE/tansu-$TANSU_VERSION-$(cat "$TANSU_PATCHES"/*/*.patch | sha256sum | cut -c1-12)"

find_tansu() {
  if [ -n "${TANSU_BIN:-}" ] && [ -x "$TANSU_BIN" ]; then echo "$TANSU_BIN"; return 0; fi
  if [ -x "$TANSU_HOME/bin/tansu" ]; then echo "$TANSU_HOME/bin/tansu"; return 0; fi
  return 1
}

fetch_crate() { # name version sha256 destdir
  local file="$4/$1-$2.crate"
  curl -fsSL --retry 3 -o "$file" "https://static.crates.io/crates/$1/$2/download" \
    || die "downloading the $1 $2 crate from crates.io failed"
  echo "$3  $file" | sha256sum -c --quiet - || die "$1 $2: checksum mismatch"
  tar -xzf "$file" -C "$4"
}

build_tansu() {
  local work="$TANSU_HOME/build"
  log "building patched Tansu $TANSU_VERSION (10-20 min on two cores, once; cached in $TANSU_HOME)"
  rm -rf "$work" && mkdir -p "$work"
  fetch_crate tansu "$TANSU_VERSION" "$TANSU_SHA256" "$work"
  fetch_crate tansu-storage "$TANSU_VERSION" "$TANSU_STORAGE_SHA256" "$work"
  fetch_crate tansu-broker "$TANSU_VERSION" "$TANSU_BROKER_SHA256" "$work"
  fetch_crate tansu-service "$TANSU_VERSION" "$TANSU_SERVICE_SHA256" "$work"
  command -v patch >/dev/null 2>&1 || apt_install patch
  local crate p
  printf '\n[patch.crates-io]\n' >>"$work/tansu-$TANSU_VERSION/Cargo.toml"
  for crate in tansu-storage tansu-broker tansu-service; do
    for p in "$TANSU_PATCHES/$crate"/*.patch; do
      patch -s -p1 -d "$work/$crate-$TANSU_VERSION" <"$p" || die "applying $p failed"
    done
    printf '%s = { path = "../%s-%s" }\n' "$crate" "$crate" "$TANSU_VERSION" >>"$work/tansu-$TANSU_VERSION/Cargo.toml"
  done
  # The crate's own Cargo.lock pins every other dependency; only the patched ones change.
  # A target directory of its own, kept: the project's would hold cargo's lock for the
  # whole build, and keeping it makes a changed patch a rebuild of minutes, not of all.
  (cd "$work/tansu-$TANSU_VERSION" && CARGO_TARGET_DIR="$CACHE/tansu-target" cargo build --release \
    --features dynostore,postgres --bin tansu) >"$STATE/tansu-build.log" 2>&1 \
    || { tail -n 40 "$STATE/tansu-build.log" >&2; die "building Tansu failed (log: $STATE/tansu-build.log)"; }
  mkdir -p "$TANSU_HOME/bin"
  cp "$CACHE/tansu-target/release/tansu" "$TANSU_HOME/bin/tansu"
}

start_tansu() {
  if port_open 9092; then
    log "Kafka protocol already on 127.0.0.1:9092"
    local running
    running="$(pgrep -f 'tansu broker' | head -n 1 || true)"
    if [ -n "$running" ] && [ "$(readlink -f "/proc/$running/exe" 2>/dev/null)" != "$(readlink -f "$TANSU_HOME/bin/tansu" 2>/dev/null)" ]; then
      log "WARNING: the Tansu on 9092 ($(readlink -f "/proc/$running/exe" 2>/dev/null || echo unknown)) is not $TANSU_HOME/bin/tansu;"
      log "         it lacks some of scripts/tansu's patches (unpatched, it loses records when a stage"
      log "         resumes inside a batch; an older build is only slower). Stop it and rerun to build this one."
    fi
    return
  fi
  local tansu
  if ! tansu="$(find_tansu)"; then
    build_tansu
    tansu="$TANSU_HOME/bin/tansu"
  fi
  log "starting Tansu ($tansu) on 127.0.0.1:9092, memory storage (log: $STATE/tansu.log)"
  # Its group coordinator logs at info: a line per member joining and, for a member dropped
  # for a missed heartbeat, how long it had been silent (~70 lines for a whole test run);
  # what diagnoses a rebalance (README, known issues). TANSU_LOG overrides the filter.
  RUST_LOG="${TANSU_LOG:-warn,tansu_broker::coordinator::group=info}" nohup "$tansu" broker \
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
