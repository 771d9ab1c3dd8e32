#!/usr/bin/env bash
# Benchmark: the request path into the enclave image booted under QEMU (TCG) next to the same
# stack with kv-server as a host process, in one run.
#
#   host:    wrk -> envoy -> vsockproxy -> unix socket -> kv-server (host process)
#   enclave: wrk -> envoy -> vsockproxy -> vsock-hybrid (vhost-device-vsock) -> kv-server in QEMU
#
# For each: the stack comes up with scripts/run-local.sh (the README's run command; --enclave for
# the second), then `wrk` sends GET /v1/getvalues?keys=hello,example-key through envoy at
# concurrency 1 and 32 for DURATION seconds each (bounded: wrk stops at the deadline) and the
# script prints req/s, p50 and p99. The enclave row also gives the boot time (run-enclave to the
# heartbeat and to SERVING through envoy), as run-local.sh measures it.
#
# Usage: scripts/bench-enclave.sh [DURATION_SECONDS (default 10)]
# Needs: the test set-up (scripts/setup-test-deps.sh: wrk, envoy, QEMU); builds what it needs.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
bench_init bench-enclave 10 "$@"

log "building (cargo --release, and the local enclave image)"
# The host processes run their release builds, as in bench-e2e.sh (the image is always release).
cargo build --quiet --release -p kv-server -p vsockproxy -p enclave-runner
scripts/build-dist.sh --out dist/local --enclave-config enclave/examples/enclave-local.toml --eif-only 2>/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wrk's summary -> "req/s p50 p99" (latencies in ms).
wrk_row() { # CONNECTIONS PORT
  local threads=1
  (($1 > 1)) && threads=2
  wrk -t"$threads" -c"$1" -d"${duration}s" --latency --timeout 5s \
    "http://127.0.0.1:$2/v1/getvalues?keys=hello,example-key" >"$work/wrk.txt"
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
    /Non-2xx/ { bad = $NF }
    END { printf "%.0f %.2f %.2f %s\n", rps, p50, p99, (bad == "" ? 0 : bad) }' "$work/wrk.txt"
}

results=()
for mode in host enclave; do
  ports=()
  for _ in 1 2 3 4; do ports+=("$(free_port)"); done
  args=(--no-build --release --envoy-port "${ports[0]}" --envoy-admin-port "${ports[1]}"
    --ingress-port "${ports[2]}" --proxy-admin-port "${ports[3]}")
  [[ $mode == enclave ]] && args+=(--enclave)
  log "starting the $mode stack"
  start_stack "$work/$mode.log" 300 "${args[@]}"
  boot="-"
  if [[ $mode == enclave ]]; then
    hb=$(sed -n 's/.*heartbeat after \([0-9]*\) ms.*/\1/p' "$work/$mode.log" | head -1)
    sv=$(sed -n 's/.*SERVING through envoy after \([0-9]*\) ms.*/\1/p' "$work/$mode.log" | head -1)
    boot="heartbeat ${hb} ms, SERVING ${sv} ms"
  fi
  for c in 1 32; do
    log "$mode: wrk c=$c for ${duration}s"
    read -r rps p50 p99 bad < <(wrk_row "$c" "${ports[0]}")
    ((bad == 0)) || log "$mode c=$c: $bad non-2xx answers"
    results+=("$(printf '| %-7s | %3d | %8s | %7s | %7s | %s |' "$mode" "$c" "$rps" "$p50" "$p99" "$boot")")
  done
  stop_stack
done

printf '\nGET /v1/getvalues?keys=hello,example-key through envoy + vsockproxy, %ss per row, load %s\n\n' \
  "$duration" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '| kv-server | c | req/s | p50 ms | p99 ms | boot (run-enclave to ...) |\n|---|---|---|---|---|---|\n'
printf '%s\n' "${results[@]}"
