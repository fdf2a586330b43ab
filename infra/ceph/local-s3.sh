#!/usr/bin/env bash
# A local S3 endpoint: a single-node Ceph micro-cluster (one mon, one BlueStore OSD on a
# sparse file, one RADOS Gateway), bound to 127.0.0.1 only, with all of its config, data,
# logs, sockets and pid files under one directory. Never touches /etc/ceph or /var/lib/ceph.
#
#   local-s3.sh start [DIR]        start (or reuse, or restart from persisted data); prints
#                                  `export AWS_ENDPOINT_URL=...` lines on stdout
#   local-s3.sh stop [DIR]         stop our daemons (by the PIDs in DIR/run) and wait for them
#   local-s3.sh status [DIR]       which daemons run; exit 0 only when all three do
#   local-s3.sh env [DIR]          print the export lines of a running store
#   local-s3.sh restart-rgw [DIR]  stop and start the gateway only
#
# DIR defaults to .state/ceph under the repository root. Progress goes to stderr, so
# `eval "$(infra/ceph/local-s3.sh start)"` works.
#
# Environment: COLLAPSE_S3_PORT (gateway port, default 7480, remembered in DIR),
# COLLAPSE_S3_ACCESS_KEY / COLLAPSE_S3_SECRET_KEY (default collapse / collapse-secret),
# COLLAPSE_CEPH_OSD_SIZE_GB (size of the sparse OSD file, at creation; default 10),
# COLLAPSE_CEPH_TIMEOUT (seconds to wait for each daemon, default 60).
#
# Settings follow docs/PLATFORM.md, "Object stores you can run here" (measured with Ceph Pacific 16.2 from Debian 12).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TIMEOUT="${COLLAPSE_CEPH_TIMEOUT:-60}"
T0=$SECONDS
DAEMONS=(mon.a osd.0 client.rgw.a)

log() { echo "local-s3: [$(( SECONDS - T0 ))s] $*" >&2; }
die() { echo "local-s3: ERROR: $*" >&2; exit 1; }

usage() {
  sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

need_binaries() {
  local missing=() b
  for b in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool flock timeout; do
    command -v "$b" >/dev/null 2>&1 || missing+=("$b")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    die "missing binaries: ${missing[*]}. Install the Debian packages with:" \
        "bash infra/install-system.sh  (radosgw ceph-mon ceph-osd ceph-common)"
  fi
}

# ---------------------------------------------------------------- paths and state
set_dir() {
  local d="${1:-$REPO_ROOT/.state/ceph}"
  mkdir -p "$d"
  DIR="$(cd "$d" && pwd)"
  CONF="$DIR/ceph.conf"
  STATE="$DIR/cluster.env"     # fsid, ports and keys of this store (persisted)
  RUN="$DIR/run"
  LOGS="$DIR/log"
}

load_state() {
  FSID="" MON_PORT="" S3_PORT="" ACCESS_KEY="" SECRET_KEY="" OSD_UUID=""
  # shellcheck disable=SC1090
  [ -f "$STATE" ] && . "$STATE"
  return 0
}

save_state() {
  local v
  for v in FSID OSD_UUID MON_PORT S3_PORT ACCESS_KEY SECRET_KEY; do
    printf '%s=%q\n' "$v" "${!v}"
  done >"$STATE.tmp"
  mv "$STATE.tmp" "$STATE"
}

# A TCP port on 127.0.0.1 that nothing listens on.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  # from a random offset, so that two stores created at once rarely pick the same port
  local n=$(( $2 - $1 + 1 )) off=$(( RANDOM % ($2 - $1 + 1) )) i
  for (( i=0; i<n; i++ )); do
    p=$(( $1 + (off + i) % n ))
    port_busy "$p" || { echo "$p"; return 0; }
  done
  die "no free port between $1 and $2 on 127.0.0.1"
}

write_conf() {
  local asok="$RUN/\$cluster-\$name.asok"
  # A Unix socket path must fit in 107 bytes; with a long DIR the admin sockets are off.
  [ $(( ${#RUN} + 30 )) -lt 107 ] || asok=""
  cat >"$CONF.tmp" <<EOF
# Written by infra/ceph/local-s3.sh on every start; edit the script, not this file.
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MON_PORT
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
ms bind port min = 6800
ms bind port max = 7300
auth cluster required = none
auth service required = none
auth client required = none
# no keys, so no encryption: radosgw would otherwise insist on "secure" to the mon
ms cluster mode = crc
ms service mode = crc
ms client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms mon client mode = crc
client mount timeout = 30
keyring = $DIR/keyring
run dir = $RUN
admin socket = $asok
pid file = $RUN/\$name.pid
crash dir = $DIR/crash
log file = $LOGS/\$name.log
log to stderr = false
err to stderr = true
log to syslog = false
mon cluster log file = $LOGS/cluster.log
mon cluster log to syslog = false
ms async op threads = 1
# one OSD on one host: replicate nothing, place by OSD
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
mon max pg per osd = 1000
# the mon stops itself below 5% free disk by default
mon data avail crit = 0
mon data avail warn = 0

[mon]
mon data = $DIR/mon/\$cluster-\$id
# one mon has nobody to batch with: propose map changes at once (pool creation: 9 s -> 2 s)
paxos propose interval = 0.05
mon memory target = 268435456

[osd]
osd data = $DIR/osd/\$cluster-\$id
osd journal = $DIR/osd/\$cluster-\$id/journal
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $(( ${COLLAPSE_CEPH_OSD_SIZE_GB:-10} * 1024 * 1024 * 1024 ))
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 67108864
osd memory target = 536870912
osd op num shards = 1
osd op num threads per shard = 2
osd max object name len = 460
osd max object namespace len = 64

[client.rgw.a]
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$S3_PORT
rgw thread pool size = 32
rgw enable usage log = false
rgw cache lru size = 1000
# No bucket lifecycle (expiry) processing: its worker sleeps 5 s on a lock that the previous
# gateway held, and a stop waits for that sleep. Garbage collection stays on.
rgw enable lc threads = false
EOF
  mv "$CONF.tmp" "$CONF"
}

# ---------------------------------------------------------------- daemons
pidfile() { echo "$RUN/$1.pid"; }

# The PID of daemon $1 when it runs with our ceph.conf, else nothing.
daemon_pid() {
  local f pid
  f="$(pidfile "$1")"
  [ -f "$f" ] || return 0
  pid="$(tr -dc 0-9 <"$f")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
  # a recycled PID belongs to someone else: check the program and that it runs with our config
  local cmd
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 0
  case "${cmd%% *}" in */"$(program_of "$1")"|"$(program_of "$1")") ;; *) return 0 ;; esac
  grep -qF -- "-c $CONF" <<<"$cmd" && echo "$pid"
  return 0
}

program_of() {
  case "$1" in mon.*) echo ceph-mon ;; osd.*) echo ceph-osd ;; client.rgw.*) echo radosgw ;; esac
}

running() { [ -n "$(daemon_pid "$1")" ]; }

show_log() {
  local name="$1" f
  for f in "$LOGS/$name.log" "$LOGS/$name.out" "$LOGS/$name.err"; do
    [ -s "$f" ] || continue
    echo "----- last lines of $f" >&2
    grep -v '^[[:space:]]*$' "$f" | tail -n 15 >&2
  done
}

fail_daemon() {
  show_log "$1"
  die "$1 did not come up: $2 (state in $DIR)"
}

LAUNCHED=()   # daemons this invocation started: a failed start stops them again

on_exit() {
  local rc=$? i
  if [ $rc -ne 0 ] && [ ${#LAUNCHED[@]} -gt 0 ]; then
    log "start failed; stopping what this attempt started: ${LAUNCHED[*]}"
    for (( i=${#LAUNCHED[@]}-1; i>=0; i-- )); do stop_daemon "${LAUNCHED[$i]}" || true; done
  fi
  exit $rc
}

# Run a daemon; it daemonizes itself and writes its pid file.
launch() {
  local name="$1"; shift
  log "starting $name"
  LAUNCHED+=("$name")
  rm -f "$(pidfile "$name")"
  # fd 9 holds our lock: a daemon must not inherit it
  if ! "$@" -c "$CONF" </dev/null >>"$LOGS/$name.out" 2>&1 9>&-; then
    fail_daemon "$name" "'$*' exited with an error"
  fi
  local i
  for i in $(seq 1 50); do
    running "$name" && return 0
    sleep 0.1
  done
  fail_daemon "$name" "no live process after start"
}

ceph_cli() { timeout 30 ceph -c "$CONF" --connect-timeout 10 "$@" 2>>"$LOGS/cli.err"; }

wait_until() {  # wait_until NAME DESCRIPTION COMMAND...
  local name="$1" what="$2"; shift 2
  local deadline=$(( SECONDS + TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    running "$name" || fail_daemon "$name" "the process exited while waiting for $what"
    [ $SECONDS -lt $deadline ] || fail_daemon "$name" "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.3
  done
}

mon_up() { ceph_cli mon stat; }
osd_up() { ceph_cli osd stat -f json | grep -q '"num_up_osds":1'; }
rgw_up() {
  if command -v curl >/dev/null 2>&1; then
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$S3_PORT/"
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT" && printf 'GET / HTTP/1.0\r\n\r\n' >&3 &&
      timeout 2 head -c 12 <&3 | grep -q HTTP) 2>/dev/null
  fi
}

start_mon() {
  running mon.a && return 0
  port_busy "$MON_PORT" && die "the mon port 127.0.0.1:$MON_PORT of $DIR is taken by another program"
  launch mon.a ceph-mon -i a
  wait_until mon.a "the monitor to answer" mon_up
}

start_osd() {
  running osd.0 || launch osd.0 ceph-osd -i 0
  wait_until osd.0 "the OSD to be up" osd_up
}

start_rgw() {
  if ! running client.rgw.a; then
    port_busy "$S3_PORT" &&
      die "port 127.0.0.1:$S3_PORT is taken by another program; set COLLAPSE_S3_PORT to a free port"
    launch client.rgw.a radosgw -n client.rgw.a
  fi
  wait_until client.rgw.a "http://127.0.0.1:$S3_PORT to answer" rgw_up
}

# Alive and not a zombie (a daemon's parent is init, which may be slow to reap, or not reap).
# (A zombie leader whose other threads still run has entries in task/ besides itself.)
alive() {
  [ -d "/proc/$1" ] || return 1
  grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null || return 0
  [ "$(ls "/proc/$1/task" 2>/dev/null | wc -l)" -gt 1 ]
}

# Stop daemons: SIGTERM, wait up to 15 s, then SIGKILL; each by the PID in its pid
# file, and only when that process runs with our ceph.conf.
stop_daemon() {
  local name pid pids=() names=() i k
  for name in "$@"; do
    pid="$(daemon_pid "$name")"
    if [ -z "$pid" ]; then rm -f "$(pidfile "$name")"; continue; fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid"); names+=("$name")
  done
  for (( k=0; k<${#pids[@]}; k++ )); do
    pid="${pids[$k]}"
    for i in $(seq 1 150); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      log "${names[$k]} (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for i in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
    fi
    rm -f "$(pidfile "${names[$k]}")"
  done
}

# ---------------------------------------------------------------- first start
create_cluster() {
  log "creating a new store in $DIR"
  rm -rf "$DIR/mon" "$DIR/osd" "$DIR/rgw" "$RUN" "$DIR/crash" "$DIR/monmap" "$DIR/.initialized"
  mkdir -p "$DIR/mon/ceph-a" "$DIR/osd/ceph-0" "$DIR/rgw" "$RUN" "$LOGS" "$DIR/crash"
  FSID="$(cat /proc/sys/kernel/random/uuid)"
  OSD_UUID="$(cat /proc/sys/kernel/random/uuid)"
  MON_PORT="$(free_port 16789 16999)"
  save_state
  write_conf
  monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$DIR/monmap" \
    >>"$LOGS/mkfs.out" 2>&1 || { show_log mkfs; die "monmaptool failed"; }
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" >>"$LOGS/mkfs.out" 2>&1 ||
    { show_log mkfs; die "ceph-mon --mkfs failed"; }
  start_mon
  local id
  id="$(ceph_cli osd new "$OSD_UUID")" || { show_log cli; die "'ceph osd new' failed"; }
  [ "$id" = 0 ] || die "expected OSD id 0, the monitor gave '$id'"
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$OSD_UUID" >>"$LOGS/mkfs.out" 2>&1 ||
    { show_log mkfs; die "ceph-osd --mkfs failed"; }
}

# The S3 user with our keys (created once; a changed key is added on the next start).
ensure_user() {
  local info
  if info="$(timeout 60 radosgw-admin -c "$CONF" user info --uid=collapse 2>/dev/null)"; then
    tr -d ' \n' <<<"$info" |
      grep -qF "\"access_key\":\"$ACCESS_KEY\",\"secret_key\":\"$SECRET_KEY\"" && return 0
    log "setting the S3 keys of user 'collapse'"
    timeout 60 radosgw-admin -c "$CONF" key create --uid=collapse --key-type=s3 \
      --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >/dev/null 2>>"$LOGS/admin.err" ||
      { show_log admin; die "radosgw-admin key create failed"; }
  else
    log "creating the S3 user 'collapse'"
    timeout 60 radosgw-admin -c "$CONF" user create --uid=collapse --display-name=collapse \
      --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >/dev/null 2>>"$LOGS/admin.err" ||
      { show_log admin; die "radosgw-admin user create failed"; }
  fi
}

print_env() {
  echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT"
  echo "export AWS_ACCESS_KEY_ID=$ACCESS_KEY"
  echo "export AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
}

all_running() { local d; for d in "${DAEMONS[@]}"; do running "$d" || return 1; done; }

# ---------------------------------------------------------------- commands
cmd_start() {
  need_binaries
  exec 9>"$DIR/.lock"; flock 9   # one start/stop at a time per DIR
  load_state
  trap on_exit EXIT
  local t0=$SECONDS
  if [ -n "${COLLAPSE_S3_PORT:-}" ] && [ -n "$S3_PORT" ] && [ "$COLLAPSE_S3_PORT" != "$S3_PORT" ] &&
     running client.rgw.a; then
    log "WARNING: the gateway of $DIR already listens on port $S3_PORT;" \
        "COLLAPSE_S3_PORT=$COLLAPSE_S3_PORT is ignored (stop the store first to change the port)"
    COLLAPSE_S3_PORT="$S3_PORT"
  fi
  if [ -f "$DIR/.initialized" ] && all_running; then
    log "already running in $DIR"
    print_env
    return 0
  fi
  ACCESS_KEY="${COLLAPSE_S3_ACCESS_KEY:-${ACCESS_KEY:-collapse}}"
  SECRET_KEY="${COLLAPSE_S3_SECRET_KEY:-${SECRET_KEY:-collapse-secret}}"
  S3_PORT="${COLLAPSE_S3_PORT:-${S3_PORT:-7480}}"
  mkdir -p "$RUN" "$LOGS"
  if [ ! -f "$DIR/.initialized" ]; then
    # nothing, or what a failed first start left: begin again (daemons of it first)
    stop_daemon client.rgw.a; stop_daemon osd.0; stop_daemon mon.a
    # refuse early, before creating anything, when the gateway port is taken
    port_busy "$S3_PORT" &&
      die "port 127.0.0.1:$S3_PORT is taken by another program; set COLLAPSE_S3_PORT to a free port"
    create_cluster
  else
    log "starting the store in $DIR"
    save_state
    write_conf
  fi
  start_mon
  start_osd
  start_rgw
  ensure_user
  save_state
  touch "$DIR/.initialized"
  LAUNCHED=()
  log "ready in $(( SECONDS - t0 )) s: http://127.0.0.1:$S3_PORT (state in $DIR)"
  print_env
}

cmd_stop() {
  exec 9>"$DIR/.lock"; flock 9
  # one after the other: the gateway's shutdown needs the OSD, the OSD's tells the mon
  stop_daemon client.rgw.a
  stop_daemon osd.0
  stop_daemon mon.a
  log "stopped (state kept in $DIR)"
}

cmd_restart_rgw() {
  need_binaries
  exec 9>"$DIR/.lock"; flock 9
  load_state
  [ -f "$DIR/.initialized" ] || die "no store in $DIR; run: $0 start $DIR"
  running mon.a && running osd.0 || die "the store in $DIR is not running; run: $0 start $DIR"
  stop_daemon client.rgw.a
  trap on_exit EXIT
  start_rgw
  LAUNCHED=()
}

cmd_status() {
  load_state
  local d pid rc=0
  for d in "${DAEMONS[@]}"; do
    pid="$(daemon_pid "$d")"
    if [ -n "$pid" ]; then echo "$d: running (pid $pid)"; else echo "$d: stopped"; rc=3; fi
  done
  [ -n "$S3_PORT" ] && echo "endpoint: http://127.0.0.1:$S3_PORT"
  echo "state: $DIR"
  return $rc
}

cmd_env() {
  load_state
  [ -f "$DIR/.initialized" ] && all_running || die "no running store in $DIR; run: $0 start $DIR"
  print_env
}

main() {
  [ $# -ge 1 ] || usage
  local cmd="$1"; shift
  [ $# -le 1 ] || usage
  case "$cmd" in
    start|stop|status|env|restart-rgw) ;;
    -h|--help|help) usage ;;
    *) echo "local-s3: unknown command '$cmd'" >&2; usage ;;
  esac
  if [ "$cmd" = status ] || [ "$cmd" = env ] || [ "$cmd" = stop ]; then
    # never create DIR just to look at it
    [ -d "${1:-$REPO_ROOT/.state/ceph}" ] || {
      [ "$cmd" = stop ] && { log "nothing to stop"; return 0; }
      [ "$cmd" = status ] && { echo "no store in ${1:-$REPO_ROOT/.state/ceph}"; return 3; }
      die "no store in ${1:-$REPO_ROOT/.state/ceph}"
    }
  fi
  set_dir "${1:-}"
  case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    restart-rgw) cmd_restart_rgw ;;
  esac
}

main "$@"
