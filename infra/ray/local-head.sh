#!/usr/bin/env bash
# A local Ray head on this machine: every port bound to 127.0.0.1, all of its state (session
# directories, logs, Unix sockets) under one directory, and a stop that ends exactly the
# processes of this head. Never `ray stop`: it ends every Ray process of the machine, other
# people's included.
#
#   local-head.sh start [DIR]     start a head (or reuse the running one of DIR); prints
#                                 `export ...` lines on stdout (RAY_ADDRESS for drivers,
#                                 RAY_DASHBOARD_ADDRESS for `ray job submit --address`)
#   local-head.sh stop [DIR]      stop every process of this head and wait until all are gone
#   local-head.sh status [DIR]    the head's processes, ports and memory; exit 0 when it answers
#   local-head.sh address [DIR]   print the export lines of the running head
#
# DIR defaults to .state/ray under the repository root. Progress goes to stderr, so
# `eval "$(infra/ray/local-head.sh start)"` works.
#
# Environment: COLLAPSE_RAY_CPUS (logical CPUs of the head, default nproc and at least 2),
# COLLAPSE_RAY_PORT / COLLAPSE_RAY_DASHBOARD_PORT (default: free ports, new at each start),
# COLLAPSE_RAY_TIMEOUT (seconds to wait for the head, default 90), COLLAPSE_RAY (the `ray`
# program; default the one on PATH, else .venv/bin/ray).
#
# Settings follow docs/PLATFORM.md, "Ray on one machine" (measured with Ray 2.60).
set -euo pipefail

# Started from a process of a head (a job), we carry its marker: drop it, or we would count
# ourselves among its processes.
[ -z "${COLLAPSE_RAY_HEAD:-}" ] || exec env -u COLLAPSE_RAY_HEAD bash "${BASH_SOURCE[0]}" "$@"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TIMEOUT="${COLLAPSE_RAY_TIMEOUT:-90}"
T0=$SECONDS
MARKER=COLLAPSE_RAY_HEAD   # every process of a head has MARKER=DIR in its environment

log() { echo "local-head: [$(( SECONDS - T0 ))s] $*" >&2; }
die() { echo "local-head: ERROR: $*" >&2; exit 1; }

usage() {
  sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

find_ray() {
  RAY="${COLLAPSE_RAY:-}"
  [ -n "$RAY" ] || RAY="$(command -v ray || true)"
  [ -n "$RAY" ] || { [ -x "$REPO_ROOT/.venv/bin/ray" ] && RAY="$REPO_ROOT/.venv/bin/ray"; } || true
  [ -n "$RAY" ] && [ -x "$RAY" ] || die "no 'ray' program: activate the venv (make setup) or set COLLAPSE_RAY"
}

# ---------------------------------------------------------------- paths and state
set_dir() {
  local d="${1:-$REPO_ROOT/.state/ray}"
  mkdir -p "$d"
  DIR="$(cd "$d" && pwd)"
  STATE="$DIR/head.env"   # ports of the running head
  TEMP="$DIR/tmp"
  # Ray's Unix sockets live at TEMP/session_<date>_<pid>/sockets/dash_MetricsHead: ~67 bytes
  # after TEMP, and a socket path must fit in 107. A longer TEMP goes through a short link.
  LINK=""
  if [ ${#TEMP} -gt 38 ]; then
    LINK="/tmp/collapse-ray-$(printf %s "$DIR" | md5sum | cut -c1-10)"
  fi
}

load_state() {
  GCS_PORT="" DASH_PORT="" CLIENT_PORT="" AGENT_PORT="" NUM_CPUS="" RAY_TEMP=""
  # shellcheck disable=SC1090
  [ -f "$STATE" ] && . "$STATE"
  return 0
}

save_state() {
  local v
  for v in GCS_PORT DASH_PORT CLIENT_PORT AGENT_PORT NUM_CPUS RAY_TEMP; do
    printf '%s=%q\n' "$v" "${!v}"
  done >"$STATE.tmp"
  mv "$STATE.tmp" "$STATE"
}

# A TCP port on 127.0.0.1 that nothing listens on, below the ephemeral range (32768+) where
# the head's own connections could take it before it binds. Not one of TAKEN either.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TAKEN=" "
free_port() {
  local lo=20000 hi=32000 p i
  local n=$(( hi - lo + 1 )) off=$(( (RANDOM * 32768 + RANDOM) % (hi - lo + 1) ))
  for (( i=0; i<n; i++ )); do
    p=$(( lo + (off + i) % n ))
    case "$TAKEN" in *" $p "*) continue ;; esac
    port_busy "$p" && continue
    TAKEN+="$p "; echo "$p"; return 0
  done
  die "no free port between $lo and $hi on 127.0.0.1"
}

# ---------------------------------------------------------------- processes of this head
# PIDs of every process that carries MARKER=DIR: the head's daemons, its workers and actors,
# job drivers and whatever they start (Ray gives job drivers a session of their own, so a
# process group or session would miss them; the environment is inherited by all of them).
head_pids() {
  local f pid
  for f in $(grep -lzxF "$MARKER=$DIR" /proc/[0-9]*/environ 2>/dev/null); do
    pid="${f#/proc/}"; pid="${pid%/environ}"
    alive "$pid" && echo "$pid"
  done
  return 0
}

comm_of() { cat "/proc/$1/comm" 2>/dev/null || true; }

pids_named() {  # pids_named NAME PID...: the PIDs whose command name is NAME
  local name="$1" p; shift
  for p in "$@"; do [ "$(comm_of "$p")" = "$name" ] && echo "$p"; done
  return 0
}

# Alive and not a zombie (daemons are children of init, which may be slow to reap them).
alive() {
  [ -d "/proc/$1" ] || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

running() {  # the GCS and the raylet of this head run
  local pids=()
  pids=($(head_pids))
  [ ${#pids[@]} -gt 0 ] && [ -n "$(pids_named gcs_server "${pids[@]}")" ] &&
    [ -n "$(pids_named raylet "${pids[@]}")" ]
}

answers() {  # the job API of the dashboard answers
  timeout 30 "$RAY" job list --address "http://127.0.0.1:$DASH_PORT" >/dev/null 2>&1
}

# SIGTERM to the given PIDs, then wait up to $1 seconds for them to exit.
term_and_wait() {
  local grace="$1" p i any; shift
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for (( i=0; i<grace*10; i++ )); do
    any=0
    for p in "$@"; do alive "$p" && { any=1; break; }; done
    [ $any = 1 ] || return 0
    sleep 0.1
  done
}

# In the order of `ray stop` (raylet, then everything else, the GCS last), each with a grace
# period; then SIGKILL whatever is left, until a scan finds nothing.
stop_head() {
  local pids others p round
  pids=($(head_pids))
  [ ${#pids[@]} -gt 0 ] || return 0
  log "stopping ${#pids[@]} processes of the head in $DIR"
  term_and_wait 5 $(pids_named raylet "${pids[@]}")
  pids=($(head_pids)); others=()
  for p in "${pids[@]}"; do [ "$(comm_of "$p")" = gcs_server ] || others+=("$p"); done
  term_and_wait 5 "${others[@]}"
  term_and_wait 5 $(pids_named gcs_server $(head_pids))
  for round in 1 2 3 4 5 6 7 8 9 10; do
    pids=($(head_pids))
    [ ${#pids[@]} -gt 0 ] || break
    log "SIGKILL to ${#pids[@]} processes that outlived SIGTERM: $(for p in "${pids[@]}"; do printf '%s(%s) ' "$p" "$(comm_of "$p")"; done)"
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 0.3
  done
  pids=($(head_pids))
  [ ${#pids[@]} -eq 0 ] || die "processes of the head in $DIR survived SIGKILL: ${pids[*]}"
}

# ---------------------------------------------------------------- start
show_logs() {
  local f
  for f in "$DIR/start.log" "$RAY_TEMP"/session_latest/logs/{gcs_server.out,raylet.out,dashboard.log}; do
    [ -s "$f" ] || continue
    echo "----- last lines of $f" >&2
    grep -v '^[[:space:]]*$' "$f" | tail -n 15 >&2
  done
}

LAUNCHED=0   # this invocation started processes: a failed start stops them again
on_exit() {
  local rc=$?
  if [ $rc -ne 0 ] && [ $LAUNCHED = 1 ]; then
    show_logs
    log "start failed; stopping what this attempt started"
    stop_head || true
  fi
  exit $rc
}

print_env() {
  echo "export RAY_ADDRESS=127.0.0.1:$GCS_PORT"
  echo "export RAY_DASHBOARD_ADDRESS=http://127.0.0.1:$DASH_PORT"
  # a driver that connects to a head on 127.0.0.1 needs it too: without it Ray swaps
  # 127.0.0.1 for the machine's address and waits for a GCS that is not there
  echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
}

cmd_start() {
  find_ray
  exec 9>"$DIR/.lock"; flock 9   # one start/stop at a time per DIR
  load_state
  if running && answers; then
    log "already running in $DIR"
    print_env
    return 0
  fi
  trap on_exit EXIT
  stop_head   # what a failed or killed head of DIR left behind
  local nproc_; nproc_="$(nproc)"
  NUM_CPUS="${COLLAPSE_RAY_CPUS:-$(( nproc_ > 2 ? nproc_ : 2 ))}"
  [[ "$NUM_CPUS" =~ ^[1-9][0-9]*$ ]] || die "COLLAPSE_RAY_CPUS must be a positive integer, got '$NUM_CPUS'"
  GCS_PORT="${COLLAPSE_RAY_PORT:-$(free_port)}"; TAKEN+="$GCS_PORT "
  DASH_PORT="${COLLAPSE_RAY_DASHBOARD_PORT:-$(free_port)}"; TAKEN+="$DASH_PORT "
  # these two have fixed defaults (10001, 52365) that a second Ray on the machine would share
  CLIENT_PORT="$(free_port)"; TAKEN+="$CLIENT_PORT "
  AGENT_PORT="$(free_port)"
  local p
  for p in "$GCS_PORT" "$DASH_PORT"; do
    port_busy "$p" && die "port 127.0.0.1:$p is taken by another program"
  done
  mkdir -p "$TEMP"
  RAY_TEMP="$TEMP"
  if [ -n "$LINK" ]; then
    ln -sfn "$TEMP" "$LINK"
    RAY_TEMP="$LINK"
    log "DIR is long: Ray's temp dir is $LINK -> $TEMP (Unix socket paths must fit in 107 bytes)"
  fi
  save_state
  log "starting a head with $NUM_CPUS CPUs in $DIR"
  local t0=$SECONDS setsid_=()
  command -v setsid >/dev/null 2>&1 && setsid_=(setsid)   # out of our session: Ctrl-C stays ours
  LAUNCHED=1
  # fd 9 holds our lock: the head must not inherit it
  if ! env -u RAY_ADDRESS -u RAY_API_SERVER_ADDRESS -u RAY_DASHBOARD_ADDRESS \
      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 \
      "$MARKER=$DIR" \
      "${setsid_[@]}" "$RAY" start --head \
        --port="$GCS_PORT" --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
        --ray-client-server-port="$CLIENT_PORT" --dashboard-agent-listen-port="$AGENT_PORT" \
        --num-cpus="$NUM_CPUS" --temp-dir="$RAY_TEMP" --disable-usage-stats \
        </dev/null >"$DIR/start.log" 2>&1 9>&-; then
    die "'ray start' failed (log: $DIR/start.log)"
  fi
  local deadline=$(( SECONDS + TIMEOUT ))
  until answers; do
    running || die "the head exited while waiting for its job API"
    [ $SECONDS -lt $deadline ] || die "timed out after ${TIMEOUT}s waiting for http://127.0.0.1:$DASH_PORT"
    sleep 0.5
  done
  LAUNCHED=0
  log "ready in $(( SECONDS - t0 )) s: GCS 127.0.0.1:$GCS_PORT, dashboard http://127.0.0.1:$DASH_PORT"
  print_env
}

cmd_stop() {
  exec 9>"$DIR/.lock"; flock 9
  load_state
  local t0=$SECONDS
  stop_head
  [ -n "$LINK" ] && [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$TEMP" ] && rm -f "$LINK"
  log "stopped in $(( SECONDS - t0 )) s (logs kept in $TEMP)"
}

cmd_status() {
  find_ray
  load_state
  local pids p kb=0 rss
  pids=($(head_pids))
  for p in "${pids[@]}"; do
    rss="$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || true)"
    kb=$(( kb + ${rss:-0} ))
    echo "$p $(comm_of "$p")"
  done
  echo "processes: ${#pids[@]}, resident memory (sum of RSS): $(( kb / 1024 )) MB"
  echo "state: $DIR"
  if [ ${#pids[@]} -gt 0 ] && running && answers; then
    echo "running: GCS 127.0.0.1:$GCS_PORT, dashboard http://127.0.0.1:$DASH_PORT, $NUM_CPUS CPUs"
    return 0
  fi
  echo "not running"
  return 3
}

cmd_address() {
  find_ray
  load_state
  running && answers || die "no running head in $DIR; run: $0 start $DIR"
  print_env
}

main() {
  [ $# -ge 1 ] || usage
  local cmd="$1"; shift
  [ $# -le 1 ] || usage
  case "$cmd" in
    start|stop|status|address) ;;
    -h|--help|help) usage ;;
    *) echo "local-head: unknown command '$cmd'" >&2; usage ;;
  esac
  if [ "$cmd" != start ]; then
    # never create DIR just to look at it
    [ -d "${1:-$REPO_ROOT/.state/ray}" ] || {
      [ "$cmd" = stop ] && { log "nothing to stop"; return 0; }
      [ "$cmd" = status ] && { echo "no head in ${1:-$REPO_ROOT/.state/ray}"; return 3; }
      die "no head in ${1:-$REPO_ROOT/.state/ray}"
    }
  fi
  set_dir "${1:-}"
  case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    address) cmd_address ;;
  esac
}

main "$@"
