#!/usr/bin/env bash
# The whole stack on this machine, no enclave needed, on the built-in sample data:
#
#   curl -> envoy 127.0.0.1:51052 (JSON/gRPC transcoding) -> h2c 127.0.0.1:50051
#        -> vsockproxy ingress -> unix socket (standing in for vsock 16:50051) -> kv-server
#
# With --enclave, kv-server runs in the real enclave image instead: the EIF booted under QEMU's
# nitro-enclave machine by enclave-runner (the local stand-in for nitro-cli), and vsockproxy's
# ingress dials it through the vsock backend's Unix socket (vsock-hybrid://):
#
#   ... -> vsockproxy ingress -> vsock-hybrid://WORK/vm.vsock:50051 -> kv-server in the VM
#
# Builds kv-server and vsockproxy, installs envoy project-local if it is missing (through
# scripts/setup-test-deps.sh), starts the three processes, waits until a query is answered,
# prints example requests, answers one, then runs until Ctrl-C (or SIGTERM), which stops
# everything. See docs/runtime.md and docs/local-enclave.md.
#
# Usage: scripts/run-local.sh [--enclave [--eif FILE]] [--no-envoy] [--once] [--no-build] [--release]
#                             [--envoy-port N] [--envoy-admin-port N]
#                             [--ingress-port N] [--proxy-admin-port N]
#   --enclave    boot the enclave image (dist/local/server_enclave_image.eif: the shipped
#                binaries with enclave/examples/enclave-local.toml, sample data) under QEMU;
#                builds it with scripts/build-dist.sh, and QEMU with scripts/setup-qemu.sh
#                when missing (a cold build takes minutes)
#   --eif FILE   with --enclave: boot this image instead (it must serve the example keys)
#   --no-envoy   no envoy: query gRPC through the proxy's ingress directly
#   --once       start, answer the example query, stop (exit status says whether it worked)
#   --no-build   use the binaries (and with --enclave the image) already built
#   --release    build and run the release binaries (benchmarks; the default is the debug build)
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"

envoy_port=51052
envoy_admin_port=9902
ingress_port=50051
proxy_admin_port=9901
with_envoy=1
once=0
build=1
profile=debug
enclave=0
eif_arg=""

usage() { sed -n '/^# Usage:/,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p;}' "$0"; }
port_arg() { # FLAG VALUE
  if ! [[ ${2:-} =~ ^[0-9]+$ ]] || ((10#$2 < 1 || 10#$2 > 65535)); then
    echo "run-local: $1 needs a port number (1-65535), got '${2:-}'" >&2
    exit 2
  fi
}
while (($#)); do
  case $1 in
    --enclave) enclave=1 ;;
    --eif)
      [[ -n ${2:-} ]] || { echo "run-local: --eif needs a file" >&2; exit 2; }
      eif_arg=$2
      shift
      ;;
    --no-envoy) with_envoy=0 ;;
    --once) once=1 ;;
    --no-build) build=0 ;;
    --release) profile=release ;;
    --envoy-port) port_arg "$1" "${2:-}"; envoy_port=$2; shift ;;
    --envoy-admin-port) port_arg "$1" "${2:-}"; envoy_admin_port=$2; shift ;;
    --ingress-port) port_arg "$1" "${2:-}"; ingress_port=$2; shift ;;
    --proxy-admin-port) port_arg "$1" "${2:-}"; proxy_admin_port=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run-local: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[run-local] %s\n' "$*" >&2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/nitro-kv-local.XXXXXX")
pids=()
names=()
runner=()

# Stops every child (SIGTERM, then SIGKILL after 10 s) and removes the temp dir. Runs once,
# on any exit: normal end, error, Ctrl-C, SIGTERM.
cleaned=0
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local status=$?
  ((cleaned)) && return
  cleaned=1
  trap - INT TERM
  # The enclave first: its QEMU and vsock backend belong to enclave-runner's monitor.
  if ((${#runner[@]})); then
    # (Not `| grep -q`: under pipefail its early exit would fail the pipeline.)
    if [[ $("${runner[@]}" describe-enclaves 2>/dev/null) == *EnclaveName* ]]; then
      log "terminating the enclave"
      "${runner[@]}" terminate-enclave --all >/dev/null 2>&1 || log "terminate-enclave failed"
    fi
    cp "$work/enclaves/kv-server/console.log" "$work/enclave-console.log" 2>/dev/null || true
  fi
  if ((${#pids[@]})); then
    log "stopping ${names[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    local p
    for p in "${pids[@]}"; do
      while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
      kill -KILL "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    done
  fi
  # Show what went wrong, unless this is a normal stop (Ctrl-C: 130, SIGTERM: 143).
  if ((status != 0 && status != 130 && status != 143)) && [[ -d $work ]]; then
    local f
    for f in "$work"/*.log; do
      [[ -s $f ]] || continue
      log "last lines of $(basename "$f"):"
      tail -n 15 "$f" >&2
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # NAME CMD...
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=("$!")
  names+=("$name")
}

# Fails with the process's log if it is gone.
alive() { # NAME PID
  kill -0 "$2" 2>/dev/null || {
    log "$1 exited during start-up"
    return 1
  }
}

wait_for() { # WHAT SECONDS CMD...
  local what=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    local i
    for i in "${!pids[@]}"; do alive "${names[$i]}" "${pids[$i]}"; done
    if ((SECONDS >= deadline)); then
      log "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

port_free() { ! (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
for p in "$ingress_port" "$proxy_admin_port"; do
  port_free "$p" || { log "127.0.0.1:$p is in use (another run-local?); pick other ports, see --help"; exit 1; }
done
if ((with_envoy)); then
  for p in "$envoy_port" "$envoy_admin_port"; do
    port_free "$p" || { log "127.0.0.1:$p is in use (another run-local?); pick other ports, see --help"; exit 1; }
  done
fi

# --- build and tools ---------------------------------------------------------------------
command -v curl >/dev/null 2>&1 || { log "curl is needed (readiness checks, the example query): install it"; exit 1; }
bin="$CARGO_TARGET_DIR/$profile"
cargo_profile=()
[[ $profile == release ]] && cargo_profile=(--release)
eif=${eif_arg:-dist/local/server_enclave_image.eif}
if [[ -n $eif_arg ]] && ((!enclave)); then
  echo "run-local: --eif needs --enclave" >&2
  exit 2
fi
if ((build)); then
  log "building kv-server and vsockproxy (cargo build, target dir $CARGO_TARGET_DIR)"
  if ((enclave)); then
    cargo build --quiet "${cargo_profile[@]}" -p kv-server -p vsockproxy -p enclave-runner
    if [[ -z $eif_arg ]]; then
      log "building the enclave image $eif (scripts/build-dist.sh)"
      scripts/build-dist.sh --out dist/local --enclave-config enclave/examples/enclave-local.toml --eif-only
    fi
  else
    cargo build --quiet "${cargo_profile[@]}" -p kv-server -p vsockproxy
  fi
fi
wanted=(kv-server vsockproxy)
((enclave)) && wanted+=(enclave-runner)
for b in "${wanted[@]}"; do
  [[ -x $bin/$b ]] || { log "$bin/$b missing: run without --no-build"; exit 1; }
done
if ((enclave)); then
  [[ -f $eif ]] || { log "$eif missing: run without --no-build"; exit 1; }
  if ! qemu-system-x86_64 -M help 2>/dev/null | awk '{ print $1 }' | grep -qx nitro-enclave; then
    log "no QEMU with the nitro-enclave machine: building it (scripts/setup-qemu.sh; minutes, once)"
    scripts/setup-qemu.sh >/dev/null
  fi
fi
envoy_cmd=""
if ((with_envoy)); then
  if ! command -v envoy >/dev/null 2>&1; then
    log "envoy is not installed: installing it project-local (scripts/setup-test-deps.sh --envoy-only)"
    scripts/setup-test-deps.sh --envoy-only
  fi
  envoy_cmd=$(command -v envoy)
fi

if ((enclave)); then
  # --- vsockproxy first: the guest's egress (SOCKS5, default deny) arrives at vm.vsock_8888 --
  uds="$work/vm.vsock"
  upstream="vsock-hybrid://$uds:50051"
  cat >"$work/vsockproxy.toml" <<EOF
# run-local --enclave: the guest's vsock port 50051 behind the vsock backend's Unix socket; the
# guest's connections to the parent's port P arrive on ${uds}_P.
[[ingress]]
name = "kv"
listen = "tcp://127.0.0.1:$ingress_port"
upstream = "$upstream"

[socks5]
name = "egress"
listen = "unix://${uds}_8888"

[admin]
listen = "tcp://127.0.0.1:$proxy_admin_port"
EOF
  "$bin/vsockproxy" check "$work/vsockproxy.toml" >/dev/null
  start vsockproxy "$bin/vsockproxy" run --config "$work/vsockproxy.toml"
  wait_for "vsockproxy /healthz" 30 curl -fsS "http://127.0.0.1:$proxy_admin_port/healthz"

  # --- the enclave: the EIF under QEMU's nitro-enclave machine -------------------------------
  runner=(env ENCLAVE_RUNNER_STATE_DIR="$work/enclaves" "$bin/enclave-runner")
  log "booting $eif under QEMU (nitro-enclave machine, TCG; 10-60 s)"
  boot_started=$(date +%s%N)
  "${runner[@]}" run-enclave --eif-path "$eif" --cpu-count 2 --memory 1024 --enclave-cid 16 \
    --enclave-name kv-server --vsock-uds "$uds" --boot-timeout 180 >"$work/run-enclave.json" ||
    { log "the enclave did not boot"; exit 1; }
  log "enclave kv-server running (CID 16); its console: ENCLAVE_RUNNER_STATE_DIR=$work/enclaves $bin/enclave-runner console --enclave-name kv-server"
  heartbeat_ms=$((($(date +%s%N) - boot_started) / 1000000))
  wait_for "vsockproxy /readyz (kv-server in the enclave answering)" 120 \
    curl -fsS "http://127.0.0.1:$proxy_admin_port/readyz"
  log "enclave boot: heartbeat after ${heartbeat_ms} ms, kv-server reachable after $((($(date +%s%N) - boot_started) / 1000000)) ms (from run-enclave)"
  log "vsockproxy: ingress tcp://127.0.0.1:$ingress_port -> $upstream, admin 127.0.0.1:$proxy_admin_port"
else
  # --- kv-server: sample data on a Unix socket (vsock stands-in) ---------------------------
  kv_sock="$work/kv.sock"
  start kv-server "$bin/kv-server" --listen "unix://$kv_sock" --sample-data
  wait_for "kv-server on $kv_sock" 30 test -S "$kv_sock"
  log "kv-server: unix://$kv_sock (sample data)"

  # --- vsockproxy: ingress 127.0.0.1:INGRESS -> the Unix socket ------------------------------
  cat >"$work/vsockproxy.toml" <<EOF
# run-local: the enclave's vsock 16:50051 is a Unix socket here.
[[ingress]]
listen = "tcp://127.0.0.1:$ingress_port"
upstream = "unix://$kv_sock"

[admin]
listen = "tcp://127.0.0.1:$proxy_admin_port"
EOF
  "$bin/vsockproxy" check "$work/vsockproxy.toml" >/dev/null
  start vsockproxy "$bin/vsockproxy" run --config "$work/vsockproxy.toml"
  wait_for "vsockproxy /readyz" 30 curl -fsS "http://127.0.0.1:$proxy_admin_port/readyz"
  log "vsockproxy: ingress tcp://127.0.0.1:$ingress_port -> unix://$kv_sock, admin 127.0.0.1:$proxy_admin_port"
fi

# --- envoy: the repo's envoy.yaml with local ports and the generated descriptor set ------
if ((with_envoy)); then
  "$bin/kv-server" descriptor-set --out "$work/query_api_descriptor_set.pb"
  # Same substitutions as tests/src/lib.rs (render_envoy_config): the listener on loopback,
  # the ports, the descriptor path; comment lines are left alone.
  sed -e "/^[[:space:]]*#/!{
s|address: 0\.0\.0\.0|address: 127.0.0.1|
s|port_value: 51052|port_value: $envoy_port|
s|port_value: 9902|port_value: $envoy_admin_port|
s|port_value: 50051|port_value: $ingress_port|
s|/etc/envoy/query_api_descriptor_set\.pb|$work/query_api_descriptor_set.pb|
}" envoy/envoy.yaml >"$work/envoy.yaml"
  start envoy "$envoy_cmd" --config-path "$work/envoy.yaml" --log-level warn \
    --disable-hot-restart --base-id "$((RANDOM + 1))"
  wait_for "envoy admin /ready" 30 curl -fsS "http://127.0.0.1:$envoy_admin_port/ready"
  log "envoy: 127.0.0.1:$envoy_port (admin 127.0.0.1:$envoy_admin_port)"
fi

# --- readiness and the example query -----------------------------------------------------
# GetValues{keys: ["hello", "missing"]} as one gRPC message (protobuf: field 1, two strings).
grpc_request() { printf '\x00\x00\x00\x00\x10\x0a\x05hello\x0a\x07missing'; }
grpc_get_values() { # PORT
  grpc_request | curl -fsS --http2-prior-knowledge --max-time 5 \
    -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- \
    "http://127.0.0.1:$1/kv_server.v1.KeyValueService/GetValues"
}

if ((with_envoy)); then
  wait_for "SERVING from /healthcheck through envoy" 30 \
    sh -c "curl -fsS 'http://127.0.0.1:$envoy_port/healthcheck' | grep -q '\"SERVING\"'"
  if ((enclave)); then
    log "enclave boot: SERVING through envoy after $((($(date +%s%N) - boot_started) / 1000000)) ms (from run-enclave)"
  fi
  url="http://127.0.0.1:$envoy_port/v1/getvalues?keys=hello,missing"
  cat >&2 <<EOF

The stack is up. Try:
  curl '$url'
  curl 'http://127.0.0.1:$envoy_port/healthcheck'
  curl -i 'http://127.0.0.1:$envoy_port/healthz'   # envoy's own check for the load balancer
  grpcurl -plaintext -d '{"keys":["hello"]}' 127.0.0.1:$envoy_port kv_server.v1.KeyValueService/GetValues
  curl -s http://127.0.0.1:$proxy_admin_port/metrics        # vsockproxy
  curl -s http://127.0.0.1:$envoy_admin_port/stats | grep kv_ # envoy

$ curl '$url'
EOF
  answer=$(curl -fsS --max-time 10 "$url") || { log "the example query failed"; exit 1; }
  printf '%s\n' "$answer"
  [[ $answer == *'"hello":{"value":"world"}'* && $answer == *'"missing":{"status":{"code":5'* ]] || {
    log "unexpected answer to the example query"
    exit 1
  }
else
  wait_for "an answer through the proxy" 30 grpc_get_values "$ingress_port"
  cat >&2 <<EOF

The stack is up (no envoy). Try, gRPC through the proxy's ingress:
  grpcurl -plaintext -d '{"keys":["hello"]}' 127.0.0.1:$ingress_port kv_server.v1.KeyValueService/GetValues
or with curl alone (one hand-encoded GetValues message for keys hello and missing):
  printf '\\x00\\x00\\x00\\x00\\x10\\x0a\\x05hello\\x0a\\x07missing' | curl -s --http2-prior-knowledge \\
    -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- \\
    http://127.0.0.1:$ingress_port/kv_server.v1.KeyValueService/GetValues | od -c

$ (GetValues keys=hello,missing through 127.0.0.1:$ingress_port)
EOF
  answer=$(grpc_get_values "$ingress_port" | tr -c '[:print:]' '.') || { log "the example query failed"; exit 1; }
  printf '%s\n' "$answer"
  [[ $answer == *hello*world* ]] || { log "unexpected answer to the example query"; exit 1; }
fi

if ((once)); then
  log "--once: the example query was answered; stopping"
  exit 0
fi
log "running; Ctrl-C stops everything (logs in $work)"
# Returns when any child exits (that is an error) or a signal arrives (the traps exit).
set +e
wait -n "${pids[@]}"
status=$?
set -e
log "a process exited (status $status)"
exit 1
