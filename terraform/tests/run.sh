#!/usr/bin/env bash
# Tests of terraform/ (a step of scripts/test.sh; runs alone too: terraform/tests/run.sh).
#   1. terraform fmt -check -recursive terraform/
#   2. the instance-init launcher rendered through `terraform console` in a throwaway root module
#      (locals only, no provider) for debug mode on and off; shellcheck of the result; its lines
#      in the boot order of ARCHITECTURE.md
#   3. the rendered launcher run in a temporary root directory with recording stand-ins
#      (tests/standins/standin.sh) for systemctl, curl, aws, nitro-cli, docker and logger: order
#      of steps, allocator file, enclave flags, collector config, no secret in the logs, re-run,
#      fail-fast with ABANDON when envoy or readiness never comes, missing EIF; with
#      KV_AMI_SMOKE_TEST=1 (kv-ami's smoke test) the report tags it writes, passing and failing
#   4. check_tf.py (descriptions/types, no wildcard IAM actions, Resource "*" only where
#      documented), and that it does catch each of those in a bad fixture
#   5. checkov over terraform/ (skips only inline, each with its reason), and that it does fail a
#      launch template without IMDSv2
#   6. with the aws provider installed on the machine (a filesystem mirror; it cannot be
#      downloaded here): terraform validate of the example, terraform test of the module
#   7. the fleet key policy: `kv-packager key-policy lint` fails a known-bad policy (each rule);
#      with the provider, the module's policy rendered offline (tests/fleet-key-policy) passes it
#      and equals the committed tests/fixtures/fleet-key-policy.json (TF_UPDATE_FIXTURES=1
#      rewrites that file instead). KV_PACKAGER names a built kv-packager; else cargo builds it.
# Prints "N passed, N failed" and exits non-zero on any failure.
# shellcheck disable=SC2016 # many patterns below are shell text matched literally, not expanded
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/env.sh
source "$here/../../scripts/env.sh"
cd "$REPO_ROOT"

module="$REPO_ROOT/terraform/modules/kv-service"
template="$module/templates/instance_init.tftpl"
checkov_python="$TOOLS_DIR/checkov-venv/bin/python"
# Where the machine keeps provider binaries (unpacked layout: registry.terraform.io/hashicorp/aws/...).
provider_mirror="${TF_PROVIDER_MIRROR:-/opt/tf-plugins}"

work="$(mktemp -d "${TMPDIR:-/tmp}/terraform-tests.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# No user CLI config: only what this script sets applies (and no warning about a missing file).
: >"$work/empty.tfrc"
export TF_CLI_CONFIG_FILE="$work/empty.tfrc" TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1

passed=0
failed=0
failures=()
current=''

# check NAME: starts a check; ok / fail end it.
check() { current=$1; }
ok() {
  passed=$((passed + 1))
  printf 'ok    %s\n' "$current"
}
fail() {
  failed=$((failed + 1))
  failures+=("$current")
  printf 'FAIL  %s: %s\n' "$current" "$*"
}
# expect DESCRIPTION COMMAND...: one assertion inside the current check; returns its status.
expect() {
  local what=$1
  shift
  if "$@"; then return 0; fi
  fail "$what"
  return 1
}

need() {
  command -v "$1" >/dev/null || {
    echo "terraform/tests/run.sh: $1 is not installed (scripts/setup-test-deps.sh)" >&2
    exit 2
  }
}
need terraform
need shellcheck
need checkov
if [[ -z ${KV_PACKAGER:-} ]]; then
  need cargo
  cargo build --locked -q -p packaging --bin kv-packager
  KV_PACKAGER="$CARGO_TARGET_DIR/debug/kv-packager"
fi
[[ -x $KV_PACKAGER ]] || {
  echo "terraform/tests/run.sh: KV_PACKAGER=$KV_PACKAGER is not an executable" >&2
  exit 2
}
[[ -x $checkov_python ]] || {
  echo "terraform/tests/run.sh: $checkov_python missing (scripts/setup-test-deps.sh installs checkov)" >&2
  exit 2
}

# line_of FILE FIXED-STRING: number of the first line holding the string (0 if none).
line_of() {
  local n
  n="$(grep -n -F -m1 -- "$2" "$1" | cut -d: -f1 || true)"
  echo "${n:-0}"
}

# in_order FILE STRING...: each string occurs, each after the one before.
in_order() {
  local file=$1 prev=0 n s
  shift
  for s in "$@"; do
    n="$(line_of "$file" "$s")"
    if ((n == 0)); then
      echo "  missing: $s" >&2
      return 1
    fi
    if ((n <= prev)); then
      echo "  out of order: '$s' (line $n) comes before the previous step (line $prev)" >&2
      return 1
    fi
    prev=$n
  done
}

has() { grep -q -F -- "$2" "$1"; }
lacks() { ! grep -q -F -- "$2" "$1"; }
eq() { [[ $1 == "$2" ]]; }
not_eq() { [[ $1 != "$2" ]]; }
at_most() { (($1 <= $2)); }
at_least() { (($1 >= $2)); }
absent() { [[ ! -e $1 ]]; }

# --- 1. formatting ------------------------------------------------------------------------------
check "terraform fmt -check -recursive terraform/"
if terraform fmt -check -recursive -diff terraform/ >"$work/fmt.out" 2>&1; then ok; else
  fail "not formatted: $(tr '\n' ' ' <"$work/fmt.out")"
fi

# --- 2. render the launcher -----------------------------------------------------------------------
render_dir="$work/render"
mkdir -p "$render_dir"
cat >"$render_dir/main.tf" <<'EOF'
# Throwaway root module: locals only, so no provider is needed to evaluate templatefile().
locals {
  sets = jsondecode(file("${path.module}/sets.json"))
}
EOF
# The module's defaults with short waits: a grace period of 20 s for the runs that succeed (they
# need about 2 s, more on a loaded machine) and of 3 s for the ones that must fail fast.
base='"service": "kv-server", "environment": "demo", "asg_name": "kv-server-demo",
  "lifecycle_hook_name": "kv-server-demo-launch", "amp_workspace_id": "ws-0123abcd-test",
  "bundle_dir": "/opt/privacysandbox", "eif_path": "/opt/privacysandbox/server_enclave_image.eif",
  "envoy_config_dir": "/etc/envoy",
  "collector_config_path": "/opt/aws/aws-otel-collector/etc/otel_collector_config.yaml",
  "enclave_env_file": "/etc/nitro-enclave/enclave.env",
  "envoy_unit": "envoy.service", "collector_unit": "aws-otel-collector.service",
  "allocator_unit": "nitro-enclaves-allocator.service", "vsockproxy_unit": "vsockproxy.service",
  "enclave_unit": "nitro-enclave.service", "envoy_admin_port": 9902, "envoy_port": 51052, "proxy_admin_port": 9901,
  "envoy_ready_timeout_seconds": 2, "unit_start_timeout_seconds": 10,
  "poll_interval_seconds": 1, "enclave_cid": 16'
cat >"$render_dir/sets.json" <<EOF
{
  "debug": { $base, "readiness_grace_seconds": 20, "enclave_cpu_count": 2, "enclave_memory_mib": 4096, "enclave_debug_mode": true },
  "production": { $base, "readiness_grace_seconds": 20, "enclave_cpu_count": 4, "enclave_memory_mib": 10240, "enclave_debug_mode": false },
  "failfast": { $base, "readiness_grace_seconds": 3, "enclave_cpu_count": 4, "enclave_memory_mib": 10240, "enclave_debug_mode": false }
}
EOF

check "render the launcher through terraform console (debug on and off, a short grace period)"
render_ok=true
if ! (cd "$render_dir" && terraform init -backend=false -input=false >"$work/init.out" 2>&1); then
  fail "terraform init -backend=false: $(tail -5 "$work/init.out")"
  render_ok=false
else
  for set in debug production failfast; do
    if printf 'base64encode(templatefile("%s", local.sets["%s"]))\n' "$template" "$set" |
      (cd "$render_dir" && terraform console) >"$work/$set.b64" 2>"$work/$set.err" &&
      tr -d '"\n' <"$work/$set.b64" | base64 -d >"$work/$set.sh" 2>/dev/null && [[ -s $work/$set.sh ]]; then
      chmod +x "$work/$set.sh"
    else
      fail "rendering $set: $(cat "$work/$set.err")"
      render_ok=false
    fi
  done
  [[ $render_ok == true ]] && ok
fi
[[ $render_ok == true ]] || {
  echo "cannot go on without the rendered launcher" >&2
  printf '\nterraform: %d passed, %d failed\n' "$passed" "$failed"
  exit 1
}

check "the rendered launchers pass shellcheck"
if shellcheck -s bash "$work/debug.sh" "$work/production.sh" "$work/failfast.sh" >"$work/shellcheck.out" 2>&1; then ok; else
  fail "$(cat "$work/shellcheck.out")"
fi

check "the rendered launcher: strict mode, rendered values, boot order, bounded waits"
s="$work/production.sh"
if expect "starts with a bash shebang" eq "$(head -1 "$s")" '#!/bin/bash' &&
  expect "set -euo pipefail before the first command" \
    eq "$(grep -v -E '^\s*(#|$)' "$s" | head -1)" 'set -euo pipefail' &&
  expect "no template syntax left" lacks "$s" '%{' &&
  expect "debug off rendered" has "$s" 'readonly ENCLAVE_DEBUG_MODE=false' &&
  expect "debug on rendered" has "$work/debug.sh" 'readonly ENCLAVE_DEBUG_MODE=true' &&
  expect "bash expansions survive rendering" has "$s" 'readonly ROOT="${INSTANCE_INIT_ROOT:-}"' &&
  expect "the readiness URL is the proxy's admin port" has "$s" "readonly PROXY_READYZ_URL='http://127.0.0.1:9901/readyz'" &&
  expect "envoy before the allocator before vsockproxy before the enclave, then readiness, then the hook" \
    in_order "$s" 'unit start "$ENVOY_UNIT"' 'wait_for_url envoy' 'unit restart "$COLLECTOR_UNIT"' \
    'write_if_changed "$ROOT$ALLOCATOR_CONFIG"' 'unit restart "$ALLOCATOR_UNIT"' \
    'unit start "$VSOCKPROXY_UNIT"' 'unit restart "$ENCLAVE_UNIT"' \
    'wait_for_url vsockproxy-readyz "$PROXY_READYZ_URL" "$READINESS_GRACE"' 'wait_for_serving "$KV_HEALTH_URL"' \
    'complete_hook CONTINUE' &&
  expect "the readiness wait is bounded by the grace period" has "$s" 'while ((SECONDS - start < limit)); do' &&
  expect "every systemctl call is bounded" has "$s" 'timeout "$UNIT_START_TIMEOUT" systemctl "$verb" "$name"'; then
  ok
fi

# --- 3. run the launcher against stand-ins -----------------------------------------------------
bin="$work/bin"
mkdir -p "$bin"
for cmd in systemctl curl aws nitro-cli docker logger; do
  ln -s "$here/standins/standin.sh" "$bin/$cmd"
done

# make_root DIR: the files the AMI and the bundle put on an instance.
make_root() {
  local r=$1
  mkdir -p "$r/opt/privacysandbox" "$r/opt/aws/aws-otel-collector/etc" "$r/dev"
  printf 'static_resources: {}\n' >"$r/opt/privacysandbox/envoy.yaml"
  printf 'descriptor-set' >"$r/opt/privacysandbox/query_api_descriptor_set.pb"
  printf 'eif' >"$r/opt/privacysandbox/server_enclave_image.eif"
  cat >"$r/opt/aws/aws-otel-collector/etc/otel_collector_config.yaml" <<'EOF'
exporters:
  awsemf:
    region: $REGION
  prometheusremotewrite:
    endpoint: https://aps-workspaces.$REGION.amazonaws.com/workspaces/$WORKSPACE_ID/api/v1/remote_write
EOF
  : >"$r/dev/console"
}

# launch SCRIPT ROOT STATE [VAR=VALUE...]: runs the launcher; its exit status goes to STATE/rc.
launch() {
  local script=$1 root=$2 state=$3
  shift 3
  mkdir -p "$state"
  local rc=0
  env "$@" PATH="$bin:$PATH" STANDIN_DIR="$state" INSTANCE_INIT_ROOT="$root" \
    INSTANCE_INIT_CONSOLE="$root/dev/console" \
    timeout 60 bash "$script" >"$state/stdout" 2>"$state/stderr" || rc=$?
  echo "$rc" >"$state/rc"
  [[ -f $state/calls ]] || : >"$state/calls"
  [[ -f $state/journal ]] || : >"$state/journal"
}

rc_of() { cat "$1/rc"; }

check "debug launch: the steps in boot order, then CONTINUE"
root="$work/root-debug"
st="$work/state-debug"
make_root "$root"
collector="$root/opt/aws/aws-otel-collector/etc/otel_collector_config.yaml"
cp "$collector" "$work/collector-config.in"
launch "$work/debug.sh" "$root" "$st"
if expect "exit 0 (stderr: $(tail -3 "$st/stderr" | tr '\n' ' '))" eq "$(rc_of "$st")" 0 &&
  expect "order of calls" in_order "$st/calls" \
    'curl http://169.254.169.254/latest/api/token' \
    'curl http://169.254.169.254/latest/meta-data/instance-id' \
    'systemctl start envoy.service' \
    'curl http://127.0.0.1:9902/ready' \
    'systemctl restart aws-otel-collector.service' \
    'systemctl stop nitro-enclave.service' \
    'systemctl restart nitro-enclaves-allocator.service' \
    'systemctl start vsockproxy.service' \
    'systemctl restart nitro-enclave.service' \
    'aws autoscaling record-lifecycle-action-heartbeat --region eu-west-1 --auto-scaling-group-name kv-server-demo --lifecycle-hook-name kv-server-demo-launch --instance-id i-0123456789abcdef0' \
    'curl http://127.0.0.1:9901/readyz' \
    'curl http://127.0.0.1:51052/healthcheck' \
    'aws autoscaling complete-lifecycle-action --region eu-west-1 --auto-scaling-group-name kv-server-demo --lifecycle-hook-name kv-server-demo-launch --instance-id i-0123456789abcdef0 --lifecycle-action-result CONTINUE' &&
  expect "no ABANDON" lacks "$st/calls" 'ABANDON' &&
  expect "allocator.yaml" eq "$(grep -v '^#' "$root/etc/nitro_enclaves/allocator.yaml")" $'---\nmemory_mib: 4096\ncpu_count: 2' &&
  expect "enclave.env with debug mode" eq "$(grep -v '^#' "$root/etc/nitro-enclave/enclave.env")" \
    $'ENCLAVE_EIF_PATH=/opt/privacysandbox/server_enclave_image.eif\nENCLAVE_CID=16\nENCLAVE_CPU_COUNT=2\nENCLAVE_MEMORY_MIB=4096\nENCLAVE_NAME=kv-server\nENCLAVE_DEBUG_MODE=true' &&
  expect "envoy config installed" cmp -s "$root/opt/privacysandbox/envoy.yaml" "$root/etc/envoy/envoy.yaml" &&
  expect "descriptor set installed" cmp -s "$root/opt/privacysandbox/query_api_descriptor_set.pb" "$root/etc/envoy/query_api_descriptor_set.pb" &&
  expect "collector region filled" has "$collector" '    region: eu-west-1' &&
  expect "collector workspace filled" has "$collector" 'aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-0123abcd-test/api' &&
  expect "no placeholder left" lacks "$collector" '$' &&
  expect "unfilled copy kept" cmp -s "$work/collector-config.in" "$collector.in" &&
  expect "steps in the journal" in_order "$st/journal" 'instance-init: step 1: install configs' 'instance-init: step 2: start envoy' \
    'instance-init: step 8: complete the launch lifecycle hook' 'instance-init: done' &&
  expect "steps on the console" has "$root/dev/console" 'instance-init: step 7: wait up to 20 s for readiness' &&
  expect "the IMDSv2 token is in no log" \
    bash -c '! grep -q -r "standin-imds-token" "$@"' _ "$st/journal" "$st/stderr" "$st/stdout" "$root/dev/console"; then
  ok
fi

# supervise ROOT STATE: runs the enclave unit's supervisor (systemd/nitro-enclave-run, what
# nitro-enclave.service runs) with the environment file the launcher wrote, against the nitro-cli
# stand-in, for a few seconds, then stops it as systemd would (SIGTERM). Only the EIF path gets
# the root prefix, because the supervisor checks that the file is readable.
supervise() {
  local root=$1 state=$2
  mkdir -p "$state"
  (
    set -a
    # shellcheck source=/dev/null
    source "$root/etc/nitro-enclave/enclave.env"
    set +a
    ENCLAVE_EIF_PATH="$root$ENCLAVE_EIF_PATH" ENCLAVE_POLL_SECONDS=1 NITRO_CLI="$bin/nitro-cli" \
      STANDIN_DIR="$state" PATH="$bin:$PATH" \
      timeout -s TERM 3 bash "$REPO_ROOT/systemd/nitro-enclave-run" >"$state/stdout" 2>"$state/stderr"
  ) || true
  [[ -f $state/calls ]] || : >"$state/calls"
}

check "the enclave supervisor (systemd/nitro-enclave-run) runs nitro-cli with the launcher's settings"
sup="$work/supervisor-debug"
supervise "$root" "$sup"
if expect "run-enclave with every flag and --debug-mode ($(tail -2 "$sup/stderr" | tr '\n' ' '))" has "$sup/calls" \
  "nitro-cli run-enclave --eif-path $root/opt/privacysandbox/server_enclave_image.eif --enclave-cid 16 --cpu-count 2 --memory 4096 --enclave-name kv-server --debug-mode" &&
  expect "kept watching it" at_least "$(grep -c -F 'nitro-cli describe-enclaves' "$sup/calls")" 2 &&
  expect "terminated it on stop" has "$sup/calls" 'nitro-cli terminate-enclave --enclave-name kv-server'; then
  ok
fi

check "re-run on the same instance is harmless"
st2="$work/state-debug-rerun"
# The units stay as the first run left them (the stand-in keeps their states in STATE/active).
mkdir -p "$st2"
cp -r "$st/active" "$st2/"
launch "$work/debug.sh" "$root" "$st2" STANDIN_READYZ_AFTER=1
if expect "exit 0 ($(tail -3 "$st2/stderr" | tr '\n' ' '))" eq "$(rc_of "$st2")" 0 &&
  expect "allocator not restarted" lacks "$st2/calls" 'systemctl restart nitro-enclaves-allocator.service' &&
  expect "enclave not stopped" lacks "$st2/calls" 'systemctl stop nitro-enclave.service' &&
  expect "enclave not restarted" lacks "$st2/calls" 'systemctl restart nitro-enclave.service' &&
  expect "enclave unit started (a no-op when running)" has "$st2/calls" 'systemctl start nitro-enclave.service' &&
  expect "said so" has "$st2/journal" 'allocator settings unchanged' &&
  expect "collector config filled again, same result" has "$collector" '    region: eu-west-1' &&
  expect "unfilled copy still unfilled" cmp -s "$work/collector-config.in" "$collector.in" &&
  expect "files unchanged" eq "$(grep -c . "$root/etc/nitro_enclaves/allocator.yaml")" 4; then
  ok
fi

check "production launch: other sizes, debug mode off"
root="$work/root-prod"
st="$work/state-prod"
make_root "$root"
launch "$work/production.sh" "$root" "$st"
if expect "exit 0 ($(tail -3 "$st/stderr" | tr '\n' ' '))" eq "$(rc_of "$st")" 0 &&
  expect "allocator.yaml" eq "$(grep -v '^#' "$root/etc/nitro_enclaves/allocator.yaml")" $'---\nmemory_mib: 10240\ncpu_count: 4' &&
  expect "enclave.env without debug mode" eq "$(grep -v '^#' "$root/etc/nitro-enclave/enclave.env")" \
    $'ENCLAVE_EIF_PATH=/opt/privacysandbox/server_enclave_image.eif\nENCLAVE_CID=16\nENCLAVE_CPU_COUNT=4\nENCLAVE_MEMORY_MIB=10240\nENCLAVE_NAME=kv-server\nENCLAVE_DEBUG_MODE=false' &&
  supervise "$root" "$work/supervisor-prod" &&
  expect "the supervisor runs it without --debug-mode" eq "$(grep -F 'nitro-cli run-enclave' "$work/supervisor-prod/calls")" \
    "nitro-cli run-enclave --eif-path $root/opt/privacysandbox/server_enclave_image.eif --enclave-cid 16 --cpu-count 4 --memory 10240 --enclave-name kv-server"; then
  ok
fi

check "readiness never comes: fails within the grace period, ABANDON, no CONTINUE"
root="$work/root-notready"
st="$work/state-notready"
make_root "$root"
start=$SECONDS
launch "$work/failfast.sh" "$root" "$st" STANDIN_READYZ_AFTER=0
took=$((SECONDS - start))
if expect "non-zero exit" not_eq "$(rc_of "$st")" 0 &&
  expect "bounded: took ${took}s for a 3 s grace" at_most "$took" 20 &&
  expect "clear message" has "$st/stderr" 'FAILED: not ready within the grace period of 3 s' &&
  expect "names what did not answer" has "$st/stderr" 'vsockproxy-readyz not ready within 3 s (http://127.0.0.1:9901/readyz)' &&
  expect "readiness polled more than once" at_least "$(grep -c -F 'curl http://127.0.0.1:9901/readyz' "$st/calls")" 2 &&
  expect "diagnostics gathered" has "$st/calls" 'nitro-cli describe-enclaves' &&
  expect "ABANDON sent" has "$st/calls" '--lifecycle-hook-name kv-server-demo-launch --instance-id i-0123456789abcdef0 --lifecycle-action-result ABANDON' &&
  expect "no CONTINUE" lacks "$st/calls" 'CONTINUE' &&
  expect "failure in the journal" has "$st/journal" 'instance-init failed (exit 1) at step 7'; then
  ok
fi

check "the KV server never gets SERVING (data never loads): fails within the grace period, ABANDON"
root="$work/root-notserving"
st="$work/state-notserving"
make_root "$root"
launch "$work/failfast.sh" "$root" "$st" STANDIN_SERVING_AFTER=0
if expect "non-zero exit" not_eq "$(rc_of "$st")" 0 &&
  expect "proxy was ready" has "$st/journal" 'vsockproxy-readyz ready after' &&
  expect "health polled more than once" at_least "$(grep -c -F 'curl http://127.0.0.1:51052/healthcheck' "$st/calls")" 2 &&
  expect "names what did not answer" has "$st/stderr" 'KV server not SERVING within' &&
  expect "clear message" has "$st/stderr" 'FAILED: not ready within the grace period of 3 s' &&
  expect "ABANDON sent" has "$st/calls" '--lifecycle-action-result ABANDON' &&
  expect "no CONTINUE" lacks "$st/calls" 'CONTINUE'; then
  ok
fi

check "envoy never ready: stops before the allocator, ABANDON"
root="$work/root-noenvoy"
st="$work/state-noenvoy"
make_root "$root"
launch "$work/production.sh" "$root" "$st" STANDIN_ENVOY_READY=0
if expect "non-zero exit" not_eq "$(rc_of "$st")" 0 &&
  expect "clear message" has "$st/stderr" 'FAILED: envoy admin http://127.0.0.1:9902/ready did not answer within 2 s' &&
  expect "allocator untouched" lacks "$st/calls" 'nitro-enclaves-allocator' &&
  expect "no allocator file" absent "$root/etc/nitro_enclaves/allocator.yaml" &&
  expect "enclave not started" lacks "$st/calls" 'nitro-enclave.service' &&
  expect "ABANDON sent" has "$st/calls" '--lifecycle-action-result ABANDON'; then
  ok
fi

check "missing enclave image: a clear error naming the path, before anything starts"
root="$work/root-noeif"
st="$work/state-noeif"
make_root "$root"
rm "$root/opt/privacysandbox/server_enclave_image.eif"
launch "$work/production.sh" "$root" "$st"
if expect "non-zero exit" not_eq "$(rc_of "$st")" 0 &&
  expect "names the file" has "$st/stderr" 'FAILED: missing enclave image /opt/privacysandbox/server_enclave_image.eif' &&
  expect "nothing started or reconfigured" lacks "$st/calls" 'systemctl' &&
  expect "no allocator file" absent "$root/etc/nitro_enclaves/allocator.yaml" &&
  expect "ABANDON sent" has "$st/calls" '--lifecycle-action-result ABANDON'; then
  ok
fi

check "hook completion failing: reported, bounded, not retried forever"
root="$work/root-awsfail"
st="$work/state-awsfail"
make_root "$root"
launch "$work/production.sh" "$root" "$st" STANDIN_AWS_FAIL=1
if expect "exit 0: the instance is ready, the hook times out to its default" eq "$(rc_of "$st")" 0 &&
  expect "five attempts" eq "$(grep -c -F 'complete-lifecycle-action' "$st/calls")" 5 &&
  expect "a failed heartbeat is not fatal" has "$st/journal" 'heartbeat failed (not fatal)' &&
  expect "said so" has "$st/journal" 'no answer delivered'; then
  ok
fi

pcr0="$(printf '0a%.0s' {1..48})"
check "smoke test (KV_AMI_SMOKE_TEST=1): the report tags on its own instance, no lifecycle hook"
root="$work/root-smoke"
st="$work/state-smoke"
make_root "$root"
launch "$work/production.sh" "$root" "$st" KV_AMI_SMOKE_TEST=1 STANDIN_PCRS="$pcr0 01 02"
tags_call="aws ec2 create-tags --region eu-west-1 --resources i-0123456789abcdef0 --tags [{\"Key\":\"kv-ami:smoke-result\",\"Value\":\"exit=0 step=8 enclave=RUNNING readyz=true health=SERVING\"},{\"Key\":\"kv-ami:smoke-pcr0\",\"Value\":\"$pcr0\"},{\"Key\":\"kv-ami:smoke-pcr1\",\"Value\":\"01\"},{\"Key\":\"kv-ami:smoke-pcr2\",\"Value\":\"02\"},{\"Key\":\"kv-ami:smoke-status\",\"Value\":\"done\"}]"
if expect "exit 0 ($(tail -3 "$st/stderr" | tr '\n' ' '))" eq "$(rc_of "$st")" 0 &&
  expect "one create-tags call with every report tag (calls: $(grep -F 'create-tags' "$st/calls"))" has "$st/calls" "$tags_call" &&
  expect "the report is the last call" eq "$(tail -1 "$st/calls")" "$tags_call" &&
  expect "the --tags value is valid JSON" "$checkov_python" -c 'import json,sys; json.loads(sys.argv[1])' "${tags_call#*--tags }" &&
  expect "no lifecycle hook call" lacks "$st/calls" 'autoscaling' &&
  expect "said so" has "$st/journal" 'lifecycle hook: smoke test (no autoscaling group)'; then
  ok
fi

check "smoke test, readiness never comes: the report says exit 1 at step 7, readyz false, NOT_SERVING"
root="$work/root-smoke-notready"
st="$work/state-smoke-notready"
make_root "$root"
launch "$work/failfast.sh" "$root" "$st" KV_AMI_SMOKE_TEST=1 STANDIN_PCRS="$pcr0 01 02" STANDIN_READYZ_AFTER=0 STANDIN_SERVING_AFTER=0
if expect "non-zero exit" not_eq "$(rc_of "$st")" 0 &&
  expect "the failure in the report" has "$st/calls" '"Value":"exit=1 step=7 enclave=RUNNING readyz=false health=NOT_SERVING"' &&
  expect "status done" has "$st/calls" '{"Key":"kv-ami:smoke-status","Value":"done"}]' &&
  expect "no ABANDON (no autoscaling group)" lacks "$st/calls" 'ABANDON'; then
  ok
fi

check "smoke test, missing enclave image: reported with its exit status, no enclave state, no PCRs"
root="$work/root-smoke-noeif"
st="$work/state-smoke-noeif"
make_root "$root"
rm "$root/opt/privacysandbox/server_enclave_image.eif"
launch "$work/production.sh" "$root" "$st" KV_AMI_SMOKE_TEST=1
if expect "non-zero exit" not_eq "$(rc_of "$st")" 0 &&
  expect "empty enclave state and PCRs reported" has "$st/calls" '"Value":"exit=1 step=1 enclave= readyz=false health=NOT_SERVING"},{"Key":"kv-ami:smoke-pcr0","Value":""}'; then
  ok
fi

# --- 4. static checks of the .tf files ----------------------------------------------------------
check "check_tf.py: descriptions, types, no wildcard actions, documented Resource \"*\""
if "$checkov_python" "$here/check_tf.py" --readme "$module/README.md" terraform/ >"$work/check_tf.out" 2>&1; then ok; else
  fail "$(cat "$work/check_tf.out")"
fi

check "check_tf.py catches each kind of problem"
bad="$work/bad-tf"
mkdir -p "$bad"
cat >"$bad/main.tf" <<'EOF'
variable "undocumented" {
  type = string
}
variable "untyped" {
  description = "no type"
}
output "bare" {
  value = 1
}
data "aws_iam_policy_document" "p" {
  statement {
    sid       = "Everything"
    actions   = ["*"]
    resources = ["arn:aws:s3:::b"]
  }
  statement {
    sid       = "S3Star"
    actions   = ["s3:Get*"]
    resources = ["arn:aws:s3:::b/*"]
  }
  statement {
    sid       = "Undocumented"
    actions   = ["ec2:DescribeInstances"]
    resources = ["*"]
  }
}
resource "aws_iam_role_policy" "inline" {
  policy = jsonencode({ Statement = [{ Effect = "Allow", Action = "*", Resource = "*" }] })
}
EOF
printf '# README\n## IAM: the exceptions\n| sid | why |\n|---|---|\n| `Other` | x |\n' >"$bad/README.md"
"$checkov_python" "$here/check_tf.py" --readme "$bad/README.md" "$bad" >"$work/check_bad.out" 2>&1 && bad_rc=0 || bad_rc=$?
c="$work/check_bad.out"
if expect "exit 1, got $bad_rc" eq "$bad_rc" 1 &&
  expect "missing description" has "$c" 'variable undocumented has no description' &&
  expect "missing type" has "$c" 'variable untyped has no type' &&
  expect "output description" has "$c" 'output bare has no description' &&
  expect "Action *" has "$c" "statement Everything: wildcard action '*'" &&
  expect "Action s3:Get*" has "$c" "statement S3Star: wildcard action 's3:Get*'" &&
  expect "undocumented Resource *" has "$c" 'statement Undocumented: Resource "*" is not a documented exception' &&
  expect "inline jsonencode policy" has "$c" 'wildcard action in an inline policy'; then
  ok
fi

check "every input and output of the module is in its README"
missing=()
while IFS= read -r name; do
  grep -q -F "| \`$name\` |" "$module/README.md" || missing+=("$name")
done < <(sed -n -E 's/^(variable|output) "([^"]+)".*/\2/p' "$module/variables.tf" "$module/outputs.tf")
if ((${#missing[@]} == 0)); then ok; else fail "not in README.md: ${missing[*]}"; fi

# --- 5. checkov ----------------------------------------------------------------------------------
check "checkov -d terraform/: no failed checks, skips only inline with a reason"
if checkov -d terraform/ --quiet --compact --framework terraform --skip-download >"$work/checkov.out" 2>&1; then
  # Each inline skip must carry a reason after the check id.
  if grep -r -h -E '#\s*checkov:skip=' terraform/ | grep -v -q -E 'checkov:skip=[A-Z0-9_]+:\S'; then
    fail "a checkov skip without a reason: $(grep -r -n -E '#\s*checkov:skip=' terraform/ | grep -v -E 'checkov:skip=[A-Z0-9_]+:\S')"
  else
    ok
  fi
else
  fail "$(grep -E '^(Check|\s+FAILED|Passed)' "$work/checkov.out" | head -40)"
fi

check "checkov fails a launch template without IMDSv2"
mkdir -p "$work/bad-checkov"
cat >"$work/bad-checkov/main.tf" <<'EOF'
resource "aws_launch_template" "bad" {
  name     = "bad"
  image_id = "ami-0123456789abcdef0"
  metadata_options {
    http_tokens = "optional"
  }
}
EOF
if checkov -d "$work/bad-checkov" --quiet --compact --framework terraform --skip-download >"$work/checkov-bad.out" 2>&1; then
  fail "checkov passed a launch template with IMDSv1"
elif has "$work/checkov-bad.out" 'CKV_AWS_79'; then
  ok
else
  fail "checkov failed without naming CKV_AWS_79: $(head -20 "$work/checkov-bad.out")"
fi

# --- 6. with the aws provider from the machine's mirror ------------------------------------------
if [[ -d $provider_mirror/registry.terraform.io/hashicorp/aws ]]; then
  cat >"$work/mirror.tfrc" <<EOF
provider_installation {
  filesystem_mirror {
    path    = "$provider_mirror"
    include = ["registry.terraform.io/hashicorp/aws"]
  }
}
EOF
  cp -r terraform "$work/tf"

  check "terraform validate of examples/basic (aws provider from $provider_mirror)"
  if (cd "$work/tf/examples/basic" && TF_CLI_CONFIG_FILE="$work/mirror.tfrc" terraform init -backend=false -input=false -no-color >"$work/init-example.out" 2>&1 &&
    TF_CLI_CONFIG_FILE="$work/mirror.tfrc" terraform validate -no-color >"$work/validate.out" 2>&1); then
    ok
  else
    fail "$(tail -30 "$work/init-example.out" "$work/validate.out" 2>/dev/null)"
  fi

  check "terraform test of modules/kv-service (plans with the real provider, fake credentials)"
  if (cd "$work/tf/modules/kv-service" && TF_CLI_CONFIG_FILE="$work/mirror.tfrc" terraform init -backend=false -input=false -no-color >"$work/init-module.out" 2>&1 &&
    TF_CLI_CONFIG_FILE="$work/mirror.tfrc" terraform test -no-color >"$work/tftest.out" 2>&1); then
    ok
    grep -E '^(Success|Failure)' "$work/tftest.out" | sed 's/^/      terraform test: /'
  else
    fail "$(grep -v -E '^\s*$' "$work/tftest.out" 2>/dev/null | tail -40 || tail -20 "$work/init-module.out")"
  fi

  check "the module's fleet key policy, rendered offline, passes key-policy lint and equals the committed fixture"
  policy_fixture="$REPO_ROOT/tests/fixtures/fleet-key-policy.json"
  rendered="$work/fleet-key-policy.json"
  # Only data sources: apply computes the document locally and writes state into the copy.
  if (cd "$work/tf/tests/fleet-key-policy" && export TF_CLI_CONFIG_FILE="$work/mirror.tfrc" \
    AWS_ACCESS_KEY_ID=test-not-a-key AWS_SECRET_ACCESS_KEY=test-not-a-secret &&
    terraform init -backend=false -input=false -no-color >"$work/init-policy.out" 2>&1 &&
    terraform apply -auto-approve -input=false -no-color -var "inputs_file=$REPO_ROOT/tests/fixtures/fleet-key-pcrs.json" \
      >"$work/apply-policy.out" 2>&1 &&
    terraform output -raw policy >"$rendered" 2>"$work/output-policy.err" && echo >>"$rendered"); then
    if [[ ${TF_UPDATE_FIXTURES:-} == 1 ]]; then
      cp "$rendered" "$policy_fixture"
      echo "      wrote $policy_fixture"
    fi
    "$KV_PACKAGER" key-policy lint "$rendered" >"$work/lint-good.out" 2>&1 && lint_rc=0 || lint_rc=$?
    if expect "lint exit 0, got $lint_rc: $(cat "$work/lint-good.out")" eq "$lint_rc" 0 &&
      expect "two attested Allow statements (the fixture's two PCR sets)" \
        eq "$(grep -c -F '"kms:RecipientAttestation:PCR0"' "$rendered")" 2 &&
      expect "tests/fixtures/fleet-key-policy.json equals the rendered policy (TF_UPDATE_FIXTURES=1 rewrites it): $(diff "$policy_fixture" "$rendered" | head -20 | tr '\n' ' ')" \
        cmp -s "$policy_fixture" "$rendered"; then
      ok
    fi
  else
    fail "rendering: $(tail -20 "$work/init-policy.out" "$work/apply-policy.out" "$work/output-policy.err" 2>/dev/null)"
  fi
else
  echo "skip  terraform validate / terraform test / the rendered fleet key policy: no aws provider under $provider_mirror (it cannot be downloaded here)"
fi

# --- 7. key-policy lint -------------------------------------------------------------------------
check "kv-packager key-policy lint fails a known-bad key policy, one line per statement and rule"
bad_policy="$here/fixtures/bad-key-policy.json"
"$KV_PACKAGER" key-policy lint "$bad_policy" >"$work/lint-bad.out" 2>"$work/lint-bad.err" && lint_rc=0 || lint_rc=$?
l="$work/lint-bad.out"
if expect "exit 1, got $lint_rc ($(cat "$work/lint-bad.err"))" eq "$lint_rc" 1 &&
  expect "four findings: $(cat "$l")" eq "$(grep -c -F "$bad_policy: statement " "$l")" 4 &&
  expect "the account root's kms:*" has "$l" 'statement 0 (Sid "EnableIAMUserPermissions"): unattested-allow: allows kms:Decrypt' &&
  expect "an ...IfExists attestation condition" has "$l" 'statement 1 (Sid "DecryptIfAttestedOrNot"): unattested-allow:' &&
  expect "NotAction" has "$l" 'statement 2 (Sid "EverythingButAdministration"): unattested-notaction-allow:' &&
  expect "NotPrincipal" has "$l" 'statement 3 (Sid "EveryoneButTheAdmin"): unattested-notprincipal-allow: allows kms:ReEncryptFrom, kms:ReEncryptTo'; then
  ok
fi

check "kv-packager key-policy lint names the file and line of unparseable JSON (exit 2)"
printf '{\n  "Statement": [\n    { "Effect": "Allow", }\n' >"$work/broken-policy.json"
"$KV_PACKAGER" key-policy lint "$work/broken-policy.json" >"$work/lint-broken.out" 2>&1 && lint_rc=0 || lint_rc=$?
if expect "exit 2, got $lint_rc" eq "$lint_rc" 2 &&
  expect "file and line: $(cat "$work/lint-broken.out")" has "$work/lint-broken.out" "$work/broken-policy.json:3:"; then
  ok
fi

echo
if ((failed > 0)); then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "terraform tests took $SECONDS s"
printf 'terraform: %d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
