# shellcheck shell=bash
# Shared environment for the project's scripts: where the cargo target dir and the
# project-local tools live. Sourced, not run.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
# Keep build output outside the clone so a fresh clone (CI) reuses earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nitro-kv/target}"
export TOOLS_DIR="$REPO_ROOT/.tools"
export PATH="$TOOLS_DIR/venv/bin:$TOOLS_DIR/bin:$PATH"
