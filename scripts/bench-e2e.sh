#!/usr/bin/env bash
# Benchmark: the whole query path with and without the parent's proxy hop, in one run.
#
#   proxy:  wrk -> envoy -> vsockproxy ingress (TCP) -> unix socket -> kv-server
#   direct: wrk -> envoy' -> unix socket -> kv-server (the same kv-server process)
#
# The stack comes up once with scripts/run-local.sh (the shipped envoy.yaml: trace sampling at
# its default of 1 %); a second envoy starts from the same rendered config with its kv_server
# cluster pointed straight at kv-server's socket (other ports). `wrk` sends
# GET /v1/getvalues?keys=hello,example-key at concurrency 1 and 32 for DURATION seconds per row,
# three rounds in alternation: direct and proxy with the shipped defaults (1 % of requests traced,
# every failure and 1 % of successes in the access log), proxy with every request in the access
# log, and proxy with every request traced and logged (the configuration before issue 15, for its
# "at least 1.3x" comparison); the shares are switched through envoy's runtime keys
# (`tracing.random_sampling`, `access_log.success_sampling`). Each row also gives the CPU
# time per request of each process on the path (utime + stime from /proc, 10 ms ticks), so the
# proxy hop's own cost is read directly. Spans go to 127.0.0.1:4317, the collector's port, where
# the run starts a collector test double that accepts and counts OTLP exports (start_collector in
# bench-common.sh; BENCH_COLLECTOR=none leaves the port empty); its span count is printed at the
# end.
#
# Usage: scripts/bench-e2e.sh [DURATION_SECONDS (default 8)]
# Needs: the test set-up (scripts/setup-test-deps.sh: wrk, envoy); builds what it needs.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
bench_init bench-e2e 8 "$@"
direct_pid=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  if [[ -n $direct_pid ]]; then
    kill -TERM "$direct_pid" 2>/dev/null || true
    wait "$direct_pid" 2>/dev/null || true
  fi
  bench_cleanup
}
trap cleanup EXIT
start_collector

# Ports below the ephemeral range (32768-60999 here), so a client connection's TIME_WAIT on one
# of them cannot keep a listener from binding.
envoy_port=21052
admin_port=21902
direct_port=21062
direct_admin_port=21912
start_stack "$work/stack.log" 300 --release --envoy-port "$envoy_port" --envoy-admin-port "$admin_port" \
  --ingress-port 21051 --proxy-admin-port 21901

# run-local's working directory, from its log line "kv-server: unix://WORK/kv.sock (sample data)".
kv_sock=$(sed -n 's|.*kv-server: unix://\(.*\) (sample data).*|\1|p' "$work/stack.log" | head -n1)
[[ -S $kv_sock ]] || { log "kv-server's socket not found in the stack's log"; exit 1; }
stack_work=$(dirname "$kv_sock")
pid_of() { pgrep -f -n -- "$1"; }
kv_pid=$(pid_of "unix://$kv_sock")
proxy_pid=$(pid_of "$stack_work/vsockproxy.toml")
envoy_pid=$(pid_of "$stack_work/envoy.yaml")

# envoy': the same config, other ports, the kv_server cluster's endpoint a pipe to kv-server.
python3 - "$stack_work/envoy.yaml" "$work/envoy-direct.yaml" "$kv_sock" \
  "$envoy_port:$direct_port" "$admin_port:$direct_admin_port" <<'EOF'
import sys
src, dst, sock, *ports = sys.argv[1:]
lines = open(src).read().split("\n")
out, in_kv, done = [], False, False
i = 0
while i < len(lines):
    line = lines[i]
    if "cluster_name: kv_server" in line:
        in_kv = True
    if in_kv and not done and line.strip() == "socket_address:":
        indent = line[: len(line) - len(line.lstrip())]
        out += [indent + "pipe:", indent + "  path: " + sock]
        i += 3  # socket_address, address, port_value
        done = True
        continue
    out.append(line)
    i += 1
if not done:
    sys.exit("no kv_server endpoint found in " + src)
text = "\n".join(out)
for pair in ports:
    old, new = pair.split(":")
    text = text.replace("port_value: " + old + "\n", "port_value: " + new + "\n")
open(dst, "w").write(text)
EOF
envoy --config-path "$work/envoy-direct.yaml" --log-level warn --disable-hot-restart \
  --base-id "$((RANDOM + 1))" >"$work/envoy-direct.log" 2>&1 &
direct_pid=$!
for _ in $(seq 1 60); do
  curl -fsS "http://127.0.0.1:$direct_port/healthcheck" 2>/dev/null | grep -q '"SERVING"' && break
  kill -0 "$direct_pid" 2>/dev/null || { cat "$work/envoy-direct.log" >&2; exit 1; }
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$direct_port/healthcheck" | grep -q '"SERVING"' ||
  { log "envoy' (direct) is not serving"; exit 1; }

ticks() { # PID: utime + stime in clock ticks
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
hz=$(getconf CLK_TCK)
us_per_request() { # TICKS REQUESTS
  awk -v t="$1" -v n="$2" -v hz="$hz" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "-" }'
}

printf '| round | path | traced | logged | concurrency | req/s | p50 | p99 | envoy CPU/req | vsockproxy CPU/req | kv-server CPU/req |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|\n'
for round in 1 2 3; do
  for mode in direct proxy proxy-logged proxy-before; do
    case $mode in
      direct) port=$direct_port envoy=$direct_pid rate=1 logged=1 ;;
      proxy) port=$envoy_port envoy=$envoy_pid rate=1 logged=1 ;;
      proxy-logged) port=$envoy_port envoy=$envoy_pid rate=1 logged=100 ;;
      proxy-before) port=$envoy_port envoy=$envoy_pid rate=100 logged=100 ;;
    esac
    admin=$([[ $mode == direct ]] && echo "$direct_admin_port" || echo "$admin_port")
    curl -fsS -X POST \
      "http://127.0.0.1:$admin/runtime_modify?tracing.random_sampling=$rate&access_log.success_sampling=$logged" \
      >/dev/null
    url="http://127.0.0.1:$port/v1/getvalues?keys=hello,example-key"
    for conns in 1 32; do
      e0=$(ticks "$envoy") p0=$(ticks "$proxy_pid") k0=$(ticks "$kv_pid")
      out=$(wrk -t "$((conns < 2 ? 1 : 2))" -c "$conns" -d "${duration}s" --latency "$url")
      e1=$(ticks "$envoy") p1=$(ticks "$proxy_pid") k1=$(ticks "$kv_pid")
      requests=$(awk '/requests in/ {print $1}' <<<"$out")
      if grep -q "Non-2xx" <<<"$out"; then
        log "round $round $mode c=$conns: non-2xx answers: $(grep Non-2xx <<<"$out")"
        exit 1
      fi
      rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
      p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
      p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
      proxy_cpu=-
      [[ $mode == direct ]] || proxy_cpu=$(us_per_request "$((p1 - p0))" "$requests")
      printf '| %s | %s | %s %% | %s %% | %s | %s | %s | %s | %s us | %s | %s us |\n' "$round" \
        "${mode%-*}" "$rate" "$logged" "$conns" "$rps" "$p50" "$p99" \
        "$(us_per_request "$((e1 - e0))" "$requests")" \
        "$([[ $proxy_cpu == - ]] && echo - || echo "$proxy_cpu us")" \
        "$(us_per_request "$((k1 - k0))" "$requests")"
    done
  done
done
log "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
collector_counts
