#!/usr/bin/env bash
# Fuzz smoke (docs/fuzzing.md): builds every libFuzzer target of fuzz/ and packaging/fuzz/ and runs
# each for a few seconds from its committed seeds (fuzz/seeds/TARGET/, with fuzz/dicts/TARGET.dict;
# the same under packaging/fuzz/), failing on any crash (a panic: a failed check) or timeout.
#
# The build needs neither nightly nor cargo-fuzz: the pinned stable toolchain instruments the code
# for libFuzzer with the sancov pass (stable -C flags), and libfuzzer-sys compiles libFuzzer itself.
# If that build fails anyway, every seed is replayed through the targets' checks as an ordinary
# test instead (tests/replay.rs), and the script says so.
#
# Environment: FUZZ_SECONDS (per target, default 5); FUZZ_TARGET_DIR (the build cache, default
# $HOME/.cache/nitro-kv/fuzz-target, kept between runs so that a rerun only runs).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"

seconds="${FUZZ_SECONDS:-5}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/nitro-kv/fuzz-target}"
crates=(fuzz packaging/fuzz)
host="$(rustc -vV | sed -n 's/^host: //p')"
# What cargo-fuzz passes, minus AddressSanitizer (nightly-only, and safe Rust does not need it).
sancov="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"

work="$(mktemp -d)"
keep_work=0
cleanup() { if [[ $keep_work == 0 ]]; then rm -rf "$work"; fi; }
trap cleanup EXIT

step() { printf '\n=== %s\n' "$*" >&2; }

# The fuzz crates are not workspace members; start their lock files from the workspace's, so they
# build the dependency versions the workspace tests (cargo adds libfuzzer-sys and prunes the rest).
for crate in "${crates[@]}"; do
    [[ -f $crate/Cargo.lock ]] || cp Cargo.lock "$crate/Cargo.lock"
done

instrumented=1
for crate in "${crates[@]}"; do
    step "build $crate (libFuzzer, $host)"
    # --target keeps the flags off build scripts and proc macros.
    if ! RUSTFLAGS="$sancov" cargo build --manifest-path "$crate/Cargo.toml" --release --target "$host" \
        --bins; then
        instrumented=0
    fi
done

if [[ $instrumented == 0 ]]; then
    step "the instrumented build failed: replaying the seeds through the targets' checks instead"
    for crate in "${crates[@]}"; do
        cargo test --manifest-path "$crate/Cargo.toml" --release --test replay
    done
    echo "fuzz smoke: seeds replayed without libFuzzer (no fuzzing ran)" >&2
    exit 0
fi

failed=()
summary=()
for crate in "${crates[@]}"; do
    for source in "$crate"/fuzz_targets/*.rs; do
        target="$(basename "$source" .rs)"
        seeds="$crate/seeds/$target"
        dict="$crate/dicts/$target.dict"
        if [[ ! -d $seeds || ! -f $dict ]]; then
            echo "$target: missing $seeds/ or $dict" >&2
            failed+=("$target")
            continue
        fi
        step "fuzz $target for ${seconds}s from $seeds"
        corpus="$work/corpus/$target"
        mkdir -p "$corpus"
        cp "$seeds"/* "$corpus"/
        log="$work/$target.log"
        if "$CARGO_TARGET_DIR/$host/release/$target" -seed=1 -max_total_time="$seconds" -timeout=10 \
            -rss_limit_mb=2048 -dict="$dict" -artifact_prefix="$work/$target-" -print_final_stats=1 \
            "$corpus" >"$log" 2>&1; then
            # "#12345 DONE cov: 800 ft: 2000 corp: 40/3Kb ..." -> runs, coverage, features, corpus
            done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)"
            summary+=("$(printf '%-16s %s' "$target" "${done_line:-"(no DONE line)"}")")
        else
            tail -n 40 "$log" >&2
            failed+=("$target")
        fi
    done
done

step "summary"
printf '%s\n' "${summary[@]}" >&2
if ((${#failed[@]} > 0)); then
    keep_work=1
    echo "fuzz smoke FAILED: ${failed[*]} (logs and crash inputs in $work)" >&2
    exit 1
fi
echo "fuzz smoke: every target ran ${seconds}s from its seeds without a crash" >&2
