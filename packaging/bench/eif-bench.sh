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

# Prints "seconds max_rss_kib cpu_seconds" for the command. CPU seconds (user + sys) are shown
# too because on a shared, loaded machine wall time is mostly waiting for a core.
measure() {
  /usr/bin/time -f '%e %M %U %S' -o "$work/time" "$@" >/dev/null
  awk '{ printf "%s %s %.2f\n", $1, $2, $3 + $4 }' "$work/time"
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
row() { # name "wall rss cpu" [peer "wall rss cpu"]
  read -r w m c <<<"$2"
  local rw=1.00 rc=1.00
  if [[ -n "${3:-}" ]]; then
    read -r pw _ pc <<<"$3"
    rw=$(ratio "$w" "$pw") rc=$(ratio "$c" "$pc")
  fi
  printf '%-28s %8s %8s %12s %8s %8s\n' "$1" "$w" "$c" "$m" "$rw" "$rc"
}
printf 'rootfs %s MiB, EIF %s MiB, best of %s runs, load average %s\n' "$rootfs_mib" "$eif_mib" "$runs" \
  "$(cut -d' ' -f1 /proc/loadavg)"
printf '%-28s %8s %8s %12s %8s %8s\n' step wall_s cpu_s max_rss_KiB wall/peer cpu/peer
row "eif build" "$bt" "$pt"
row "peer: tar + sha384sum" "$pt"
row "eif describe" "$dt" "$st"
row "peer: sha384sum of the EIF" "$st"
