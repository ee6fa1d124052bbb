#!/usr/bin/env bash
# Brings up the quickstart: three echo backends, and Gatewright in standalone
# mode with one Envoy for Gateway default/quickstart on 127.0.0.1:8080.
# Prints what to try, then runs until Ctrl-C; every process it started is
# stopped on the way out.
#
#   bash examples/quickstart/run.sh
#
# ENVOY_BIN=/path/to/envoy uses that Envoy instead of installing the pinned one.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

EXAMPLE_DIR=examples/quickstart
WORK_DIR=.tools/quickstart
STATUS_DIR=$WORK_DIR/status
STATE_DIR=$WORK_DIR/state
LOG_DIR=$WORK_DIR/logs
GATEWAY_PORT=8080
XDS_ADDRESS=127.0.0.1:18000
ADMIN_ADDRESS=127.0.0.1:18001
BACKENDS=(echo-a:9001 echo-b:9002 echo-c:9003)
READY_TIMEOUT=60 # seconds, for the admin address and then /readyz

log() { printf '==> %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# --- cleanup -----------------------------------------------------------------

# Process ids of the children we started. Each runs in its own session (when
# setsid exists), so signalling its process group also reaches anything it
# started, such as Gatewright's Envoys.
PIDS=()
NAMES=() # what each of PIDS is, for messages
GROUPS_OK=false
command -v setsid >/dev/null && GROUPS_OK=true

signal_child() { # signal pid
  if $GROUPS_OK; then
    kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null || true
  else
    kill "-$1" "$2" 2>/dev/null || true
  fi
}

child_alive() { # pid
  if $GROUPS_OK; then
    kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null
  else
    kill -0 "$1" 2>/dev/null
  fi
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM HUP
  if ((${#PIDS[@]} > 0)); then
    log "stopping ${#PIDS[@]} process(es)"
    local pid i
    # Gatewright first, so that it stops its Envoys itself; it was started last.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
      signal_child TERM "${PIDS[i]}"
    done
    # Up to 15 s for a clean exit, then SIGKILL.
    for _ in $(seq 150); do
      local alive=false
      for pid in "${PIDS[@]}"; do
        if child_alive "$pid"; then alive=true; fi
      done
      $alive || break
      sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
      if child_alive "$pid"; then
        printf 'warning: process %s did not stop on SIGTERM; killing it\n' "$pid" >&2
        signal_child KILL "$pid"
      fi
    done
    wait 2>/dev/null || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Starts "$@" in the background, in its own session if possible, with
# stdout and stderr in the given files; sets STARTED_PID.
start() { # out-file err-file command...
  local out=$1 err=$2
  shift 2
  local run=()
  if $GROUPS_OK; then run=(setsid); fi
  if [[ $err == "$out" ]]; then
    ${run[@]+"${run[@]}"} "$@" >"$out" 2>&1 </dev/null &
  else
    ${run[@]+"${run[@]}"} "$@" >"$out" 2>"$err" </dev/null &
  fi
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  local name=${out##*/}
  NAMES+=("${name%.*}")
}

show_log() { # file
  if [[ -s $1 ]]; then
    printf -- '--- last lines of %s ---\n' "$1" >&2
    tail -n 20 "$1" >&2
  fi
}

# --- preflight ---------------------------------------------------------------

command -v curl >/dev/null || die "curl is needed (to check readiness and to try the example)"
command -v cargo >/dev/null || die "cargo is needed (install Rust with rustup)"

# A port is busy if something accepts a connection on it.
port_busy() { # port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
busy=()
for port in "$GATEWAY_PORT" "${XDS_ADDRESS##*:}" "${ADMIN_ADDRESS##*:}" "${BACKENDS[@]##*:}"; do
  if port_busy "$port"; then busy+=("$port"); fi
done
if ((${#busy[@]} > 0)); then
  die "port(s) ${busy[*]} on 127.0.0.1 already in use (the quickstart needs $GATEWAY_PORT for the Gateway, \
${XDS_ADDRESS##*:} and ${ADMIN_ADDRESS##*:} for Gatewright, ${BACKENDS[*]##*:} for the echo backends); \
stop whatever listens there (is another quickstart running?) and try again"
fi

# --- build -------------------------------------------------------------------

if [[ -n ${ENVOY_BIN:-} ]]; then
  ENVOY=$ENVOY_BIN
  [[ -x $ENVOY ]] || die "ENVOY_BIN=$ENVOY is not an executable"
else
  ENVOY=.tools/envoy/bin/envoy
  log "making sure Envoy is installed (make envoy)"
  make --no-print-directory envoy
fi

log "building gatewright and gatewright-echo"
cargo build -p gatewright --bins
GATEWRIGHT=target/debug/gatewright
ECHO=target/debug/gatewright-echo

mkdir -p "$STATUS_DIR" "$STATE_DIR" "$LOG_DIR"
rm -f "$STATE_DIR/admin-address"

# --- echo backends -----------------------------------------------------------

for backend in "${BACKENDS[@]}"; do
  name=${backend%%:*}
  port=${backend##*:}
  start "$LOG_DIR/$name.out" "$LOG_DIR/$name.log" \
    "$ECHO" --listen "127.0.0.1:$port" --name "$name"
  pid=$STARTED_PID
  # It prints "listening on IP:PORT" once bound.
  for _ in $(seq 100); do
    grep -q '^listening on ' "$LOG_DIR/$name.out" 2>/dev/null && break
    if ! kill -0 "$pid" 2>/dev/null; then
      show_log "$LOG_DIR/$name.log"
      die "echo backend $name exited before listening on 127.0.0.1:$port"
    fi
    sleep 0.1
  done
  grep -q '^listening on ' "$LOG_DIR/$name.out" ||
    die "echo backend $name did not start listening on 127.0.0.1:$port within 10 s"
  log "$name: $(head -n 1 "$LOG_DIR/$name.out") (pid $pid)"
done

# --- gatewright --------------------------------------------------------------

log "starting gatewright (log: $LOG_DIR/gatewright.log)"
start "$LOG_DIR/gatewright.log" "$LOG_DIR/gatewright.log" \
  "$GATEWRIGHT" run \
  --config-dir "$EXAMPLE_DIR" \
  --status-dir "$STATUS_DIR" \
  --state-dir "$STATE_DIR" \
  --xds-address "$XDS_ADDRESS" \
  --admin-address "$ADMIN_ADDRESS" \
  --envoy "$ENVOY"
GATEWRIGHT_PID=$STARTED_PID

deadline=$((SECONDS + READY_TIMEOUT))
gatewright_check() { # what we are waiting for
  if ! kill -0 "$GATEWRIGHT_PID" 2>/dev/null; then
    show_log "$LOG_DIR/gatewright.log"
    die "gatewright exited while waiting for $1"
  fi
  if ((SECONDS >= deadline)); then
    show_log "$LOG_DIR/gatewright.log"
    die "timed out after ${READY_TIMEOUT}s waiting for $1"
  fi
}

until [[ -s $STATE_DIR/admin-address ]]; do
  gatewright_check "its admin server ($STATE_DIR/admin-address)"
  sleep 0.2
done
admin=$(tr -d '[:space:]' <"$STATE_DIR/admin-address")
log "gatewright admin server on http://$admin"

until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$admin/readyz" || true) == 200 ]]; do
  gatewright_check "Envoy to be ready (http://$admin/readyz)"
  sleep 0.5
done
log "ready: Gateway default/quickstart listens on http://127.0.0.1:$GATEWAY_PORT"

gw=http://127.0.0.1:$GATEWAY_PORT
cat <<EOF

Try (the echo backends answer with JSON describing the request they got;
the x-echo-backend response header names the backend):

  curl -i $gw/                                   # route 'default'  -> echo-a
  curl -i $gw/api/x                              # route 'api'      -> echo-b
  curl -i -H 'x-version: v2' $gw/                # route 'canary'   -> echo-c
  for i in \$(seq 100); do curl -s -o /dev/null -D - $gw/split | grep -i '^x-echo-backend'; done | tr -d '\\r' | sort | uniq -c
                                                 # route 'split'    -> ~80 echo-a, ~20 echo-b
  curl -s -H 'x-client: curl' $gw/headers        # route 'headers'  -> echo-a, which sees
                                                 #   x-gatewright-quickstart added, x-client replaced

  $GATEWRIGHT status                 # Gateway and route status
  curl -s http://$admin/metrics         # Gatewright's metrics

Edit the YAML in $EXAMPLE_DIR/ and Gatewright applies the change.
Statuses are written to $STATUS_DIR/, logs are in $LOG_DIR/.
Press Ctrl-C to stop everything.

EOF

# Run until interrupted; if a child dies on its own, say so and stop the rest.
while true; do
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
      show_log "$LOG_DIR/${NAMES[i]}.log"
      die "${NAMES[i]} (pid ${PIDS[i]}) exited on its own; stopping the rest"
    fi
  done
  sleep 1
done
