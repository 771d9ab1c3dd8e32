#!/usr/bin/env bash
# Builds vsockproxy and the side-by-side benchmark in release mode and runs it once, next to
# socat, HAProxy (Debian's package, installed here when missing) and envoy's tcp_proxy (the
# project-local envoy). BENCH_SECS (default 2) sets the length of each measurement.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
cd "$REPO_ROOT"
if ! command -v haproxy >/dev/null 2>&1; then
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  echo "installing haproxy (Debian package) for the benchmark" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends haproxy >/dev/null
fi
command -v envoy >/dev/null 2>&1 || scripts/setup-test-deps.sh --envoy-only
cargo build --release -p vsockproxy --bins --examples
"$CARGO_TARGET_DIR/release/examples/bench"
