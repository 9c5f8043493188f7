#!/usr/bin/env bash
# The TPU worker's side of scripts/tpu/launch.py: scripts/tpu/pod.py runs it over ssh on every worker of the
# slice, and the by-hand steps of docs/tpu.md do the same. Run from the home folder, where the checkout is
# ~/rsam. Training runs detached from the ssh session that starts it: in a session of its own (setsid), its
# input /dev/null, its output appended to ~/rsam-train.log, so a dropped ssh connection neither hangs it up
# (SIGHUP) nor closes its output. Its state is in files beside the log: ~/rsam-train.owner (the run's lease
# owner), ~/rsam-train.wrapper (the pid of the shell that waits for it), ~/rsam-train.pid (train.py's pid)
# and, once it ended, ~/rsam-train.exit ("<exit status> <owner>", and "stopped" when `stop` asked for it).
#
#   bash ~/rsam/scripts/tpu/worker.sh install ARCHIVE PYTHON JAX_REQUIREMENT  # from ~/rsam.new (see pod.py)
#   bash ~/rsam/scripts/tpu/worker.sh start OWNER [KEY=VALUE ...] -- TRAIN_ARGS ...
#   bash ~/rsam/scripts/tpu/worker.sh status   # one line: rsam-worker HOST running PID OWNER
#                                              #        or rsam-worker HOST exited CODE OWNER [stopped]
#                                              #        or rsam-worker HOST none
#   bash ~/rsam/scripts/tpu/worker.sh stop     # SIGTERM to train.py: it saves its step and exits 143,
#                                              # recorded as stopped (a launcher does not rerun it)
#   bash ~/rsam/scripts/tpu/worker.sh terminate   # the same, not recorded as stopped (stragglers)
set -euo pipefail

SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
RSAM_DIR="${RSAM_DIR:-$HOME/rsam}"
STATE="${RSAM_STATE:-$HOME/rsam-train}"
LOG="$STATE.log"

# Whether the shell waiting for train.py is alive: a pid file alone could name a reused pid after a reboot.
running() {
  local pid
  pid=$(cat "$STATE.wrapper" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q worker.sh "/proc/$pid/cmdline" 2>/dev/null
}

status() {
  local host
  host=$(hostname)
  if running; then
    echo "rsam-worker $host running $(cat "$STATE.pid" 2>/dev/null || echo starting) $(cat "$STATE.owner")"
  elif [ -f "$STATE.exit" ]; then
    echo "rsam-worker $host exited $(cat "$STATE.exit")"
  else
    echo "rsam-worker $host none"
  fi
}

# Splits "KEY=VALUE ... -- ARGS": the assignments into ENVS, the rest into ARGS.
split_env() {
  ENVS=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do ENVS+=("$1"); shift; done
  if [ $# -gt 0 ]; then shift; fi
  ARGS=("$@")
}

command=${1:?usage: worker.sh install|start|status|stop|terminate ...}
shift
case "$command" in
  install)
    # Called from the freshly unpacked ~/rsam.new: an archive already installed (the same sha256) is left
    # alone, another replaces ~/rsam (never while training runs: the launcher installs only then).
    archive=$1 python=$2 jax=$3
    new=$(cd "$(dirname "$SELF")/../.." && pwd)
    sum=$(sha256sum "$archive" | cut -d' ' -f1)
    if [ "$(cat "$RSAM_DIR/.installed" 2>/dev/null)" = "$sum" ]; then
      rm -rf "$new"
      echo "rsam-worker $(hostname) installed already"
      exit 0
    fi
    if running; then
      echo "rsam-worker $(hostname): training runs from $RSAM_DIR; stop it before installing" >&2
      exit 1
    fi
    command -v "$python" >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq "$python" "$python-venv"; }
    rm -rf "$RSAM_DIR"
    mv "$new" "$RSAM_DIR"
    cd "$RSAM_DIR"
    "$python" -m venv .venv
    # The runtime only: the checkout's own dependencies (pyproject.toml's train extra) at the versions
    # requirements.txt pins (-c: a constraint installs nothing by itself), never the test tools.
    .venv/bin/pip install -q -c requirements.txt -e ".[train]"
    .venv/bin/pip install -q "$jax"
    echo "$sum" > .installed
    echo "rsam-worker $(hostname) installed"
    ;;
  start)
    owner=$1
    shift
    if running; then status; exit 0; fi
    rm -f "$STATE.exit" "$STATE.pid" "$STATE.wrapper" "$STATE.stopping"
    printf '%s\n' "$owner" > "$STATE.owner"
    cd "$RSAM_DIR"
    setsid nohup bash "$SELF" _run "$owner" "$@" > /dev/null 2>&1 < /dev/null &
    for _ in $(seq 100); do [ -s "$STATE.pid" ] && break; sleep 0.1; done
    status
    ;;
  _run)  # the detached shell: starts train.py, waits for it, records how it ended
    owner=$1
    shift
    split_env "$@"
    echo $$ > "$STATE.wrapper"
    code=0
    {
      echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): train.py ${ARGS[*]}"
      env RSAM_LEASE_OWNER="$owner" ${ENVS[@]+"${ENVS[@]}"} .venv/bin/python train.py "${ARGS[@]}" &
      echo $! > "$STATE.pid"
      wait $! || code=$?
      echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): exit $code"
    } >> "$LOG" 2>&1 < /dev/null
    stopped=""
    [ -f "$STATE.stopping" ] && stopped=" stopped"
    printf '%s %s%s\n' "$code" "$owner" "$stopped" > "$STATE.exit.tmp"
    mv "$STATE.exit.tmp" "$STATE.exit"
    ;;
  status)
    status
    ;;
  stop|terminate)  # both: SIGTERM to train.py; stop also records it as stopped (not to be rerun)
    if running; then
      if [ "$command" = stop ]; then touch "$STATE.stopping"; fi
      kill -TERM "$(cat "$STATE.pid")" 2>/dev/null || true
    fi
    status
    ;;
  *)
    echo "worker.sh: unknown command '$command'; use install, start, status, stop or terminate" >&2
    exit 2
    ;;
esac
