#!/usr/bin/env bash
# Benchmark: what each feature of envoy/envoy.yaml costs envoy per request, in one run.
#
# The stack comes up once with scripts/run-local.sh --release (envoy -> vsockproxy -> Unix socket
# -> kv-server on its sample data); beside its envoy, one more envoy per variant starts from the
# same rendered config with one feature removed: the access log, tracing (at its default 1 %), the
# grpc_stats, buffer, health_check and header_to_metadata filters (the last with the header it
# feeds), the routes' retry policies, path normalisation and the remote-address handling. Each
# listens on its own loopback port and reaches kv-server through the same vsockproxy ingress.
# `wrk` GET /v1/getvalues?keys=hello,example-key at concurrency 32 for DURATION seconds per
# variant, three rounds in alternation; each row gives the variant's req/s and its envoy's CPU
# per request (utime + stime from /proc, 10 ms ticks). Spans go to the collector test double
# (start_collector in bench-common.sh).
#
# Usage: scripts/bench-envoy-features.sh [DURATION_SECONDS (default 6)]
# Needs: the test set-up (scripts/setup-test-deps.sh: wrk, envoy, PyYAML in its venv).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
bench_init bench-envoy-features 6 "$@"
variant_pids=()
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  for pid in "${variant_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  bench_cleanup
}
trap cleanup EXIT

start_collector
# Ports below the ephemeral range (as in bench-e2e.sh); the variants take 22000 + i and their
# admin listeners 22100 + i.
start_stack "$work/stack.log" 300 --release --envoy-port 21052 --envoy-admin-port 21902 \
  --ingress-port 21051 --proxy-admin-port 21901
kv_sock=$(sed -n 's|.*kv-server: unix://\(.*\) (sample data).*|\1|p' "$work/stack.log" | head -n1)
[[ -S $kv_sock ]] || { log "kv-server's socket not found in the stack's log"; exit 1; }

python3 - "$(dirname "$kv_sock")/envoy.yaml" "$work" <<'EOF'
import copy, sys, yaml
src, work = sys.argv[1:]
base = yaml.safe_load(open(src))

def hcm(c):
    return c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]

def drop_filter(name):
    def f(c):
        h = hcm(c)
        before = len(h["http_filters"])
        h["http_filters"] = [x for x in h["http_filters"] if x["name"] != name]
        assert len(h["http_filters"]) == before - 1, name
    return f

def drop_keys(*keys):
    def f(c):
        for k in keys:
            hcm(c).pop(k)
    return f

def no_header_to_metadata(c):
    drop_filter("envoy.filters.http.header_to_metadata")(c)
    hcm(c)["route_config"].pop("request_headers_to_add")

def no_retries(c):
    for vh in hcm(c)["route_config"]["virtual_hosts"]:
        for r in vh["routes"]:
            r["route"].pop("retry_policy", None)

variants = {
    "all (the shipped config)": lambda c: None,
    "no access log": drop_keys("access_log"),
    "no tracing": drop_keys("tracing"),
    "no grpc_stats": drop_filter("envoy.filters.http.grpc_stats"),
    "no buffer": drop_filter("envoy.filters.http.buffer"),
    "no health_check": drop_filter("envoy.filters.http.health_check"),
    "no header_to_metadata": no_header_to_metadata,
    "no retries": no_retries,
    "no path normalisation, remote address": drop_keys(
        "normalize_path", "merge_slashes", "path_with_escaped_slashes_action",
        "use_remote_address", "xff_num_trusted_hops"),
}
for i, (name, change) in enumerate(variants.items()):
    c = copy.deepcopy(base)
    change(c)
    c["admin"]["address"]["socket_address"]["port_value"] = 22100 + i
    listener = c["static_resources"]["listeners"][0]["address"]["socket_address"]
    listener["address"], listener["port_value"] = "127.0.0.1", 22000 + i
    yaml.safe_dump(c, open(f"{work}/variant-{i}.yaml", "w"))
    open(f"{work}/variant-{i}.name", "w").write(name)
EOF

ticks() { # PID: utime + stime in clock ticks
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
hz=$(getconf CLK_TCK)
variants=()
for config in "$work"/variant-*.yaml; do
  i=${config##*-}
  i=${i%.yaml}
  variants+=("$i")
  envoy --config-path "$config" --log-level warn --disable-hot-restart --base-id "$((RANDOM + 100 + i))" \
    >"$work/variant-$i.log" 2>&1 &
  variant_pids[i]=$!
done
for i in "${variants[@]}"; do
  url="http://127.0.0.1:$((22000 + i))/v1/getvalues?keys=hello"
  for _ in $(seq 1 60); do
    curl -fsS "$url" >/dev/null 2>&1 && break
    kill -0 "${variant_pids[i]}" 2>/dev/null || { cat "$work/variant-$i.log" >&2; exit 1; }
    sleep 0.5
  done
  curl -fsS "$url" >/dev/null || { log "variant $i ($(cat "$work/variant-$i.name")) does not answer"; exit 1; }
done

printf '| round | envoy.yaml | req/s | envoy CPU/req |\n|---|---|---|---|\n'
for round in 1 2 3; do
  for i in "${variants[@]}"; do
    pid=${variant_pids[i]}
    t0=$(ticks "$pid")
    out=$(wrk -t 2 -c 32 -d "${duration}s" "http://127.0.0.1:$((22000 + i))/v1/getvalues?keys=hello,example-key")
    t1=$(ticks "$pid")
    if grep -q "Non-2xx" <<<"$out"; then
      log "variant $i: non-2xx answers: $(grep Non-2xx <<<"$out")"
      exit 1
    fi
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    printf '| %s | %s | %s | %s us |\n' "$round" "$(cat "$work/variant-$i.name")" \
      "$(awk '/Requests\/sec/{print $2}' <<<"$out")" \
      "$(awk -v t="$((t1 - t0))" -v n="$requests" -v hz="$hz" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')"
  done
done
log "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
collector_counts
