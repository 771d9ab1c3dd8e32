#!/usr/bin/env bash
# Builds vsockproxy and the side-by-side benchmark in release mode and runs it once.
# BENCH_SECS (default 2) sets the length of each measurement.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --release -p vsockproxy --bins --examples
target_dir=${CARGO_TARGET_DIR:-target}
"$target_dir/release/examples/bench"
