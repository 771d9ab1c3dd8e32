#!/usr/bin/env bash
# Instructions and system calls per proxied connection, counted (not timed): vsockproxy runs
# under `valgrind --tool=callgrind` and under `strace -c -f` while `examples/setup_count` drives
# 200 and then 2,200 short connections through it; the difference divided by 2,000 is the cost
# of one connection, start-up and shutdown cancelled out. Independent of the machine's load.
# Usage: proxy/bench/setup-count.sh [KIND...] (default: mapping socks5); LEVELS="warn info"
# sets the [log] levels measured.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
cd "$REPO_ROOT"
for tool in valgrind strace; do
  command -v "$tool" >/dev/null 2>&1 || { echo "setup-count: $tool is needed" >&2; exit 1; }
done
cargo build --release -p vsockproxy --bins --examples
drive="$CARGO_TARGET_DIR/release/examples/setup_count"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
small=200
large=2200

instructions() { # KIND LEVEL COUNT -> total instructions (Ir) of the proxy
  "$drive" "$1" "$3" "$2" valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1.$2.$3" 2>/dev/null
  awk '/^(summary|totals):/ { print $2; exit }' "$out/cg.$1.$2.$3"
}

syscalls() { # KIND LEVEL COUNT -> "name calls" lines of the proxy
  "$drive" "$1" "$3" "$2" strace -c -f -o "$out/st.$1.$2.$3" 2>/dev/null
  awk '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { print $NF, $4 }' "$out/st.$1.$2.$3"
}

per_conn() { awk -v a="$1" -v b="$2" -v n=$((large - small)) 'BEGIN { printf "%.1f", (b - a) / n }'; }

kinds=("$@")
((${#kinds[@]})) || kinds=(mapping socks5)
for level in ${LEVELS:-warn info}; do
  for kind in "${kinds[@]}"; do
    i_small=$(instructions "$kind" "$level" $small)
    i_large=$(instructions "$kind" "$level" $large)
    syscalls "$kind" "$level" $small >"$out/sys.small"
    syscalls "$kind" "$level" $large >"$out/sys.large"
    total_small=$(awk '{ s += $2 } END { print s }' "$out/sys.small")
    total_large=$(awk '{ s += $2 } END { print s }' "$out/sys.large")
    echo "$kind, log level $level: $(per_conn "$i_small" "$i_large") instructions and" \
      "$(per_conn "$total_small" "$total_large") system calls per connection"
    # Per system call, those that change with the connection count.
    join -a1 -a2 -e 0 -o 0,1.2,2.2 <(sort "$out/sys.small") <(sort "$out/sys.large") |
      awk -v n=$((large - small)) '{ d = ($3 - $2) / n; if (d >= 0.05 || d <= -0.05) printf "  %-16s %6.2f\n", $1, d }'
  done
done
