#!/usr/bin/env bash
# Benchmark of `kv-packager eif build` (a ~50 MiB rootfs) and `eif describe` (the result):
# wall time and peak RSS of each, against a peer doing the same I/O and hashing in the same run
# (build: `tar -cf` of the rootfs + `sha384sum` of the tar; describe: `sha384sum` of the EIF).
# Targets (issue 5): build < 5 s, describe < 1 s on 2 cores; memory bounded (streaming).
# Usage: packaging/bench/eif-bench.sh [runs]   (release build; prints a table)
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
cd "$REPO_ROOT"

runs=${1:-3}
cargo build --release -q -p packaging --bin kv-packager
bin="${CARGO_TARGET_DIR:-target}/release/kv-packager"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/data" "$work/rootfs/etc"
# A 20 MiB "server binary", 1500 small files of 20 KiB (~29 MiB), a kernel of 12 MiB.
head -c $((20 << 20)) /dev/urandom >"$work/rootfs/bin/kv-server"
chmod 755 "$work/rootfs/bin/kv-server"
for i in $(seq 1 1500); do head -c 20480 /dev/urandom >"$work/rootfs/data/part-$i.bin"; done
echo 'port = 50051' >"$work/rootfs/etc/config.toml"
head -c $((12 << 20)) /dev/urandom >"$work/bzImage"
head -c 900000 /dev/urandom >"$work/init"
rootfs_mib=$(du -sm --apparent-size "$work/rootfs" | cut -f1)

# Prints "seconds max_rss_kib" for the command.
measure() {
  /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null
  cat "$work/time"
}

best() { sort -n | head -1; }

build_eif() {
  "$bin" eif build --kernel "$work/bzImage" --cmdline "console=ttyS0" --init "$work/init" \
    --rootfs "$work/rootfs" --cmd /bin/kv-server --out "$work/out.eif"
}
peer_build() { tar -cf "$work/peer.tar" -C "$work" rootfs && sha384sum "$work/peer.tar"; }
export -f build_eif peer_build
export bin work

sync
b=() p=() d=() s=()
for _ in $(seq 1 "$runs"); do
  b+=("$(measure bash -c build_eif)")
  p+=("$(measure bash -c peer_build)")
  d+=("$(measure "$bin" eif describe "$work/out.eif")")
  s+=("$(measure sha384sum "$work/out.eif")")
done
eif_mib=$(($(stat -c %s "$work/out.eif") >> 20))
bt=$(printf '%s\n' "${b[@]}" | best) pt=$(printf '%s\n' "${p[@]}" | best)
dt=$(printf '%s\n' "${d[@]}" | best) st=$(printf '%s\n' "${s[@]}" | best)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
printf 'rootfs %s MiB, EIF %s MiB, best of %s runs\n' "$rootfs_mib" "$eif_mib" "$runs"
printf '%-28s %8s %12s %8s\n' step seconds max_rss_KiB vs_peer
printf '%-28s %8s %12s %8s\n' "eif build" "${bt% *}" "${bt#* }" "$(ratio "${bt% *}" "${pt% *}")"
printf '%-28s %8s %12s %8s\n' "peer: tar + sha384sum" "${pt% *}" "${pt#* }" "1.00"
printf '%-28s %8s %12s %8s\n' "eif describe" "${dt% *}" "${dt#* }" "$(ratio "${dt% *}" "${st% *}")"
printf '%-28s %8s %12s %8s\n' "peer: sha384sum of the EIF" "${st% *}" "${st#* }" "1.00"
