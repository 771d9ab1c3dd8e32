# shellcheck shell=bash
# Shared by the stack benchmarks (bench-e2e.sh, bench-tracing.sh, bench-enclave.sh), sourced after
# env.sh: the DURATION argument, wrk, a work directory removed on exit, and the stack started
# with scripts/run-local.sh and stopped on exit.
#
#   bench_init NAME DEFAULT_SECONDS [DURATION]  sets $duration and $work, defines log()
#   start_stack LOG TIMEOUT_SECONDS ARGS...     runs run-local.sh ARGS in the background until it
#                                               says "The stack is up" (its PID in $stack_pid)
#   stop_stack                                  stops it (also done on exit)
#   start_collector                             per BENCH_COLLECTOR (default `sink`): runs
#                                               tests/examples/otlp_sink.rs, a test double of the
#                                               collector that accepts and counts OTLP exports, on
#                                               the collector's port 127.0.0.1:4317, so traced
#                                               requests pay for a real export; `none` leaves the
#                                               port empty (export fails fast: understates tracing)
#   collector_counts                            stops the sink and prints what it received

bench_init() { # NAME DEFAULT_SECONDS [DURATION]
  bench_name=$1
  duration=${3:-$2}
  if ! [[ $duration =~ ^[0-9]+$ ]] || ((duration < 1 || duration > 120)); then
    echo "DURATION: 1..120 seconds" >&2
    exit 2
  fi
  command -v wrk >/dev/null || { echo "wrk is missing: run scripts/setup-test-deps.sh" >&2; exit 1; }
  work=$(mktemp -d "${TMPDIR:-/tmp}/$bench_name.XXXXXX")
  stack_pid=""
  sink_pid=""
  trap bench_cleanup EXIT
}

log() { printf '[%s] %s\n' "$bench_name" "$*" >&2; }

stop_stack() {
  if [[ -n $stack_pid ]]; then
    kill -TERM "$stack_pid" 2>/dev/null || true
    wait "$stack_pid" 2>/dev/null || true
    stack_pid=""
  fi
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
bench_cleanup() {
  stop_stack
  if [[ -n $sink_pid ]]; then
    kill -TERM "$sink_pid" 2>/dev/null || true
    wait "$sink_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}

start_collector() {
  case ${BENCH_COLLECTOR:-sink} in
    sink) ;;
    none) log "BENCH_COLLECTOR=none: nothing listens on the collector's port"; return ;;
    *) log "BENCH_COLLECTOR: sink or none"; exit 2 ;;
  esac
  cargo build --release -q -p e2e-tests --example otlp_sink
  "$CARGO_TARGET_DIR/release/examples/otlp_sink" 127.0.0.1:4317 >"$work/sink.log" 2>&1 &
  sink_pid=$!
  for _ in $(seq 1 50); do
    grep -q '^listening' "$work/sink.log" && return
    kill -0 "$sink_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$work/sink.log" >&2
  log "the OTLP sink did not start (is 127.0.0.1:4317 taken?)"
  exit 1
}

collector_counts() {
  [[ -n $sink_pid ]] || return 0
  kill -TERM "$sink_pid"
  wait "$sink_pid" || true
  sink_pid=""
  log "collector stand-in: $(grep '^received' "$work/sink.log" || echo 'no counts (it did not stop cleanly)')"
}

start_stack() { # LOG TIMEOUT_SECONDS RUN_LOCAL_ARGS...
  local out=$1 timeout=$2
  shift 2
  scripts/run-local.sh "$@" >"$out" 2>&1 &
  stack_pid=$!
  local deadline=$((SECONDS + timeout))
  until grep -q 'The stack is up' "$out"; do
    kill -0 "$stack_pid" 2>/dev/null || { cat "$out" >&2; log "the stack failed to start"; exit 1; }
    ((SECONDS < deadline)) || { cat "$out" >&2; log "the stack did not come up in ${timeout}s"; exit 1; }
    sleep 0.5
  done
}
