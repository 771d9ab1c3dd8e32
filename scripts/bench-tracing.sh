#!/usr/bin/env bash
# Benchmark: what envoy's request tracing costs on the query path, in one run.
#
#   wrk -> envoy -> vsockproxy -> unix socket -> kv-server (host process, sample data)
#
# The stack comes up once with scripts/run-local.sh; envoy's trace sampling is then switched
# through its runtime override (`tracing.random_sampling`, a whole percentage, the operator's
# knob in envoy.yaml) between 0 % (the untraced peer), the shipped default of 1 % and 100 %, three rounds in
# alternation, and `wrk` sends GET /v1/getvalues?keys=hello,example-key at concurrency 1 and 32
# for DURATION seconds per row (bounded: wrk stops at the deadline). Spans go to envoy's
# `otel_collector` cluster (127.0.0.1:4317), where the run starts a collector test double that
# accepts and counts OTLP exports (start_collector in bench-common.sh): the figures include
# envoy's export (serialising and sending the spans), not a collector's own work.
# BENCH_COLLECTOR=none leaves the port empty (each export fails fast).
#
# Usage: scripts/bench-tracing.sh [DURATION_SECONDS (default 8)]
# Needs: the test set-up (scripts/setup-test-deps.sh: wrk, envoy); builds what it needs.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh
bench_init bench-tracing 8 "$@"

envoy_port=51052
admin_port=9902
start_collector
start_stack "$work/stack.log" 300 --release
url="http://127.0.0.1:$envoy_port/v1/getvalues?keys=hello,example-key"

sampled() { # the envoy counter of randomly sampled requests
  curl -fsS "http://127.0.0.1:$admin_port/stats?filter=kv_query_api.tracing.random_sampling$" |
    awk -F': ' '{print $2}'
}

printf '| round | sampling | concurrency | req/s | p50 | p99 | traced requests |\n|---|---|---|---|---|---|---|\n'
for round in 1 2 3; do
  for rate in 0 1 100; do
    curl -fsS -X POST "http://127.0.0.1:$admin_port/runtime_modify?tracing.random_sampling=$rate" >/dev/null
    for conns in 1 32; do
      before=$(sampled)
      out=$(wrk -t "$((conns < 2 ? 1 : 2))" -c "$conns" -d "${duration}s" --latency "$url")
      traced=$(($(sampled) - before))
      rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
      p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
      p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
      printf '| %s | %s %% | %s | %s | %s | %s | %s |\n' "$round" "$rate" \
        "$conns" "$rps" "$p50" "$p99" "$traced"
    done
  done
done
log "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
collector_counts
