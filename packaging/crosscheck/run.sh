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
# The same image signed with a fresh self-signed P-384 certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -nodes -subj /CN=kv-crosscheck \
  -days 30 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
"$CARGO_TARGET_DIR/debug/kv-packager" eif build --kernel "$kernel" --cmdline console=ttyS0 \
  --init "$work/init" --rootfs "$work/rootfs" --cmd /bin/kv-server --env A=1 \
  --signing-certificate "$work/cert.pem" --private-key "$work/key.pem" --out "$work/signed.eif" >/dev/null
cd packaging/crosscheck
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/crosscheck" cargo run -q -- "$work/ours.eif" "$work/crate" "$work/signed.eif" |
  tee "$work/result"
grep -q '^signed_crc_ok=true$' "$work/result"
grep -q '^signature_check=true$' "$work/result"
grep -q '^certificate_verify=Ok(())$' "$work/result"
grep -q '^crate_reader_crc_ok=true$' "$work/result"
grep -q '^identical_bytes=true$' "$work/result"
"$CARGO_TARGET_DIR/debug/kv-packager" eif describe "$work/ours.eif" >"$work/ours.json"
"$CARGO_TARGET_DIR/debug/kv-packager" eif describe "$work/signed.eif" >"$work/signed.json"
python3 - "$work/ours.json" "$work/signed.json" "$work/result" <<'PY'
import json, sys
def crate(prefix):
    line = [l for l in open(sys.argv[3]) if l.startswith(prefix + "=")][0]
    return json.loads(line.split("=", 1)[1])
for ours_file, prefix, keys in ((sys.argv[1], "crate_reader", ("PCR0", "PCR1", "PCR2")),
                                (sys.argv[2], "signed_measurements", ("PCR0", "PCR1", "PCR2", "PCR8"))):
    ours, theirs = json.load(open(ours_file))["Measurements"], crate(prefix)
    for k in keys:
        assert ours[k] == theirs[k], (prefix, k, ours[k], theirs[k])
    print(prefix, "equal:", ", ".join(keys))
PY
echo "crosscheck: ok"
