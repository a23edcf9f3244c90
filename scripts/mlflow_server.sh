#!/usr/bin/env bash
# Start / stop an MLflow tracking server for segbench (e.g. on a cluster's head node).
#
#   scripts/mlflow_server.sh start [options]    start in the background, wait until it answers
#   scripts/mlflow_server.sh stop  [--results DIR | --state-dir DIR]
#   scripts/mlflow_server.sh status [--results DIR | --state-dir DIR]
#
# start options (defaults in brackets):
#   --host ADDR          interface to bind [127.0.0.1: this machine only]. For jobs on compute
#                        nodes use the head node's cluster-internal address, or 0.0.0.0.
#   --port N             [5000]
#   --results DIR        the config's `results:` folder, where the defaults below go [results;
#                        workflow/configs/paper.yaml: results/paper]
#   --backend URI|PATH   the store: a sqlite file or URI [sqlite:///$PWD/RESULTS/mlflow.db, the
#                        same store local runs use], or postgresql://USER:PASS@HOST:5432/DB
#                        (needs `pip install psycopg2-binary` in the venv)
#   --artifacts DIR|URI  where the server keeps artifacts it receives [$PWD/RESULTS/mlartifacts]
#   --allowed-hosts LIST Host headers accepted (MLflow's DNS-rebinding guard) [loopback, private
#                        IPs, and the --host address and this machine's names with any port]
#   --workers N          [1: enough for a benchmark, and sqlite likes one writer]
#   --state-dir DIR      where the PID file, log and URL go [RESULTS/mlflow-server]
#   --wait SECONDS       how long to wait for it to answer [180]
#
# The PID written is that of the server's process group (it is started with setsid);
# `stop` signals that group (TERM, then KILL after 20 s), so the workers go with it.
# Point the jobs at the printed URL with the config's `mlflow: {tracking_uri: URL}`.
# See docs/cluster.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
die() { echo "mlflow_server.sh: error: $*" >&2; exit 2; }

cmd="${1:-}"; [[ -n "$cmd" ]] || { usage; exit 2; }; shift
HOST=127.0.0.1 PORT=5000 BACKEND="" ARTIFACTS="" ALLOWED="" WORKERS=1 RESULTS=results STATE_DIR="" WAIT=180
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) HOST="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --results) RESULTS="$2"; shift 2 ;;
    --backend) BACKEND="$2"; shift 2 ;;
    --artifacts) ARTIFACTS="$2"; shift 2 ;;
    --allowed-hosts) ALLOWED="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --state-dir) STATE_DIR="$2"; shift 2 ;;
    --wait) WAIT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
STATE_DIR="${STATE_DIR:-$RESULTS/mlflow-server}"
PIDFILE="$STATE_DIR/server.pid"
LOG="$STATE_DIR/server.log"

# The venv's mlflow (the pinned one), else whatever is on PATH.
MLFLOW="${MLFLOW:-$ROOT/.venv/bin/mlflow}"
[[ -x "$MLFLOW" ]] || MLFLOW="$(command -v mlflow || true)"
PYTHON="$(dirname "${MLFLOW:-/nonexistent}")/python"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3 || true)"

running_pid() {  # the PID in the PID file if that process is alive
  [[ -f "$PIDFILE" ]] || return 1
  local pid; pid="$(cat "$PIDFILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && { echo "$pid"; return 0; }
  return 1
}

url_of() {  # the URL clients use: the bind address, or this machine's name for 0.0.0.0 / ::
  local h="$HOST"
  [[ "$h" == "0.0.0.0" || "$h" == "::" ]] && h="$(hostname -f 2>/dev/null || hostname)"
  [[ "$h" == *:* ]] && h="[$h]"
  echo "http://$h:$PORT"
}

answers() {  # does the server answer /health at URL?
  "$PYTHON" - "$1" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/health", timeout=3) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

start() {
  [[ -n "$MLFLOW" && -x "$MLFLOW" ]] || die "mlflow not found: run \`make install\` (or set MLFLOW=/path/to/mlflow)"
  if pid="$(running_pid)"; then
    echo "MLflow server already running (PID $pid, $(cat "$STATE_DIR/server.url" 2>/dev/null))"; return 0
  fi
  mkdir -p "$STATE_DIR"
  # the store
  case "$BACKEND" in
    "") mkdir -p "$RESULTS"; BACKEND="sqlite:///$(cd "$RESULTS" && pwd)/mlflow.db" ;;
    sqlite:*|postgresql*|mysql*|mssql*) ;;
    *) mkdir -p "$(dirname "$BACKEND")"; BACKEND="sqlite:///$(cd "$(dirname "$BACKEND")" && pwd)/$(basename "$BACKEND")" ;;
  esac
  if [[ "$BACKEND" == postgresql* ]] && ! "$PYTHON" -c "import psycopg2" 2>/dev/null; then
    die "a PostgreSQL store needs psycopg2 in the venv: $PYTHON -m pip install psycopg2-binary"
  fi
  if [[ -z "$ARTIFACTS" ]]; then mkdir -p "$RESULTS/mlartifacts"; ARTIFACTS="$(cd "$RESULTS/mlartifacts" && pwd)"; fi
  [[ "$ARTIFACTS" == *://* || "$ARTIFACTS" == /* ]] || { mkdir -p "$ARTIFACTS"; ARTIFACTS="$(cd "$ARTIFACTS" && pwd)"; }

  local args=(server --backend-store-uri "$BACKEND" --artifacts-destination "$ARTIFACTS"
              --host "$HOST" --port "$PORT" --workers "$WORKERS")
  if [[ -z "$ALLOWED" && "$HOST" != "127.0.0.1" && "$HOST" != "localhost" && "$HOST" != "::1" ]]; then
    # MLflow accepts loopback and private IPs by default; add the names clients will use
    local names=(localhost 127.0.0.1 "$HOST" "$(hostname -s 2>/dev/null || true)" "$(hostname -f 2>/dev/null || true)")
    ALLOWED="10.*,192.168.*,172.*"
    for n in "${names[@]}"; do [[ -n "$n" ]] && ALLOWED+=",$n,$n:*"; done
  fi
  [[ -z "$ALLOWED" ]] || args+=(--allowed-hosts "$ALLOWED")

  # setsid: the server leads its own process group, whose id is the PID we write.
  # MLflow's job runner (GenAI scorers, trace roll-ups: a dozen huey processes) is not used
  # by segbench: off unless asked for.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
    setsid "$MLFLOW" "${args[@]}" >"$LOG" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDFILE"
  local url; url="$(url_of)"
  local probe="http://127.0.0.1:$PORT"
  [[ "$HOST" == "0.0.0.0" || "$HOST" == "127.0.0.1" || "$HOST" == "localhost" ]] || probe="$url"
  echo "starting MLflow server (PID $pid) on $HOST:$PORT, store $BACKEND, artifacts $ARTIFACTS; log $LOG"
  local t0=$SECONDS
  until answers "$probe"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"; tail -20 "$LOG" >&2; die "the server exited during start-up (log above: $LOG)"
    fi
    if (( SECONDS - t0 > WAIT )); then
      stop_pid "$pid"; tail -20 "$LOG" >&2; die "no answer from $probe after ${WAIT} s (log above: $LOG)"
    fi
    sleep 1
  done
  echo "$url" >"$STATE_DIR/server.url"
  echo "MLflow server up after $(( SECONDS - t0 )) s: $url"
  echo "point the jobs at it:   mlflow: {tracking_uri: $url}   (in the config, or --config 'mlflow={tracking_uri: $url}')"
  echo "stop it:                scripts/mlflow_server.sh stop${STATE_DIR:+ --state-dir $STATE_DIR}"
}

stop_pid() {  # TERM the process group, KILL it after 20 s
  local pid="$1"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
  # the group's other members (uvicorn workers) may outlive the leader by a moment
  for _ in $(seq 1 20); do pgrep -g "$pid" >/dev/null 2>&1 || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    echo "no MLflow server running (no live PID in $PIDFILE)"; rm -f "$PIDFILE"; return 0
  fi
  stop_pid "$pid"
  rm -f "$PIDFILE" "$STATE_DIR/server.url"
  echo "stopped MLflow server (PID $pid)"
}

status() {
  local pid
  if pid="$(running_pid)"; then echo "running: PID $pid, $(cat "$STATE_DIR/server.url" 2>/dev/null)"; return 0; fi
  echo "not running"; return 3
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  -h|--help|help) usage ;;
  *) die "unknown command $cmd (start, stop, status)" ;;
esac
