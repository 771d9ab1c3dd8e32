#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what the tests need, then runs every check:
# formatting, shellcheck, the dependency audit (cargo deny), clippy with warnings as errors, and the
# whole test suite (unit tests, integration tests that start the real binaries, end-to-end tests
# with real sidecars).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"

step() { printf '\n=== %s\n' "$*" >&2; }

step "set-up"
scripts/setup-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "shellcheck"
mapfile -t shells < <(git ls-files '*.sh' '.ci/run' 'scripts/*')
shellcheck -x "${shells[@]}"

step "terraform: fmt, the instance-init launcher, checkov, plan tests"
terraform/tests/run.sh

# Advisories are left out: `cargo deny check advisories` downloads the RustSec database on every
# run (see deny.toml).
step "cargo deny: licences, banned crates, sources"
cargo deny --locked check --hide-inclusion-graph licenses bans sources

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build binaries, each alone"
# As `cargo build -p <package>` builds it: one build of the whole workspace unifies the features of
# every member (kv-ami's SDK HTTPS client, test-only features) into every binary, and the
# end-to-end tests must run the binaries with the features they ship with. The tests take them from
# $NITRO_KV_BIN_DIR (`cargo test` later rebuilds target/debug/<bin> with the workspace's features).
export NITRO_KV_BIN_DIR="$CARGO_TARGET_DIR/solo-bin"
rm -rf "$NITRO_KV_BIN_DIR"
mkdir -p "$NITRO_KV_BIN_DIR"
# The packages whose binaries the end-to-end tests start (workspace_bin names the list when one
# is missing).
for package in kv-server vsockproxy enclave-runner packaging kv-client kms-double; do
  cargo build --locked -p "$package" --bins --message-format json-render-diagnostics |
    jq -r 'select(.reason == "compiler-artifact" and .executable != null) | .executable' |
    xargs -r cp -t "$NITRO_KV_BIN_DIR"
done

step "build dist (static binaries, the enclave image, the bundle)"
scripts/build-dist.sh

# CI builds QEMU with the nitro-enclave machine (set-up above): the tests that boot the enclave
# image must run, not skip.
export NITRO_KV_REQUIRE_QEMU=1

step "tests"
cargo nextest run --workspace --locked --no-fail-fast
cargo test --workspace --doc --locked

step "fuzz smoke: every fuzz target a few seconds from its seeds (docs/fuzzing.md)"
scripts/fuzz-smoke.sh
