#!/usr/bin/env bash
# Builds an EIF with kv-packager (from .tools/kernel when present, else a random "kernel"), then
# checks it with aws-nitro-enclaves-image-format 0.8.1: its reader must accept the CRC and report
# the same PCRs, and its builder, given the same sections, must write the same bytes.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
cd "$REPO_ROOT"
cargo build -q -p packaging --bin kv-packager
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin"
head -c 3000000 /dev/urandom >"$work/rootfs/bin/kv-server"
kernel=.tools/kernel/bzImage
[[ -f "$kernel" ]] || { head -c 8000000 /dev/urandom >"$work/bzImage"; kernel="$work/bzImage"; }
head -c 100000 /dev/urandom >"$work/init"
"$CARGO_TARGET_DIR/debug/kv-packager" eif build --kernel "$kernel" --cmdline console=ttyS0 \
  --init "$work/init" --rootfs "$work/rootfs" --cmd /bin/kv-server --env A=1 --out "$work/ours.eif"
cd packaging/crosscheck
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/crosscheck" cargo run -q -- "$work/ours.eif" "$work/crate" | tee "$work/result"
grep -q '^crate_reader_crc_ok=true$' "$work/result"
grep -q '^identical_bytes=true$' "$work/result"
"$CARGO_TARGET_DIR/debug/kv-packager" eif describe "$work/ours.eif" >"$work/ours.json"
python3 - "$work/ours.json" "$work/result" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))["Measurements"]
line = [l for l in open(sys.argv[2]) if l.startswith("crate_reader=")][0]
theirs = json.loads(line.split("=", 1)[1])
for k in ("PCR0", "PCR1", "PCR2"):
    assert ours[k] == theirs[k], (k, ours[k], theirs[k])
print("PCR0/1/2 equal:", ours["PCR0"][:16], "...")
PY
echo "crosscheck: ok"
