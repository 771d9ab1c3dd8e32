#!/usr/bin/env bash
# Fetches a real Linux kernel for packaging's test that builds an EIF from one (called by
# scripts/setup-test-deps.sh): Debian's linux-image-6.12.*-amd64-unsigned from the
# bookworm-backports suite, downloaded with `apt-get download` (not installed) and unpacked with
# `dpkg-deb -x`. Kept under .tools/kernel: vmlinuz (a bzImage), its config, and the modules the
# enclave init loads (nsm, virtio-mmio, vsock), decompressed (the init's finit_module call passes
# no decompression flag).
# Idempotent: does nothing once .tools/kernel/.installed names the package it holds.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"

log() { printf '[setup] %s\n' "$*" >&2; }
dest="$TOOLS_DIR/kernel"
[[ -f "$dest/.installed" ]] && exit 0

sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  # Same mirror as the machine's main suite; only the suite name differs.
  uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [[ -n "$uri" ]] || { log "no Debian mirror found in /etc/apt/sources.list.d/debian.sources"; exit 1; }
  log "adding the bookworm-backports suite to apt's sources"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" | "${sudo[@]}" tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
  "${sudo[@]}" apt-get update -qq
fi
# The generic flavour only (not -rt-amd64 or -cloud-amd64).
newest() {
  apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+[a-z0-9]+-amd64-unsigned$' | awk '{ print $1 }' | sort -V | tail -1
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp" # apt's download user writes there
pkg=$(newest)
if [[ -z "$pkg" ]] || ! (cd "$tmp" && apt-get download -qq "$pkg"); then
  # Stale package lists (the suite moved to a newer kernel): refresh once and retry.
  "${sudo[@]}" apt-get update -qq
  pkg=$(newest)
  [[ -n "$pkg" ]] || { log "no linux-image-6.12.*-amd64-unsigned package in apt's lists"; exit 1; }
  (cd "$tmp" && apt-get download -qq "$pkg")
fi
log "downloaded $pkg, unpacking the kernel and five modules into $dest"
dpkg-deb -x "$tmp"/*.deb "$tmp/root"
rm -rf "$dest"
mkdir -p "$dest/modules"
cp "$tmp"/root/boot/vmlinuz-* "$dest/bzImage"
cp "$tmp"/root/boot/config-* "$dest/bzImage.config"
# In load order: the transport bus, the vsock core and its virtio transport, then the NSM driver.
for m in virtio_mmio vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport nsm; do
  f=$(find "$tmp/root/lib/modules" -name "$m.ko*" | head -1)
  [[ -n "$f" ]] || { log "$pkg has no module $m"; exit 1; }
  case "$f" in
    *.xz) xz -dc "$f" >"$dest/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" >"$dest/modules/$m.ko" ;;
    *) cp "$f" "$dest/modules/$m.ko" ;;
  esac
done
printf '%s\n' "$pkg" >"$dest/.installed"
log "kernel ready: $(cat "$dest/.installed")"
