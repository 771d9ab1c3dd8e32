#!/usr/bin/env bash
# Installs what booting the enclave image locally needs (called by scripts/setup-test-deps.sh and
# scripts/run-local.sh --enclave):
#   - qemu-system-x86_64 with QEMU's `nitro-enclave` machine (EIF loader, emulated NSM). No Debian
#     suite ships one (Debian builds QEMU without libcbor), so it is built from trixie's source
#     package with only that machine's devices, and cached under
#     ~/.cache/nitro-kv/qemu/<version>-<recipe hash>/ so later runs skip the build (10-13 minutes
#     on 2 cores). A change of the version or of this recipe builds it again.
#   - the firmware it boots with (qemu-system-data, seabios) and its runtime libraries;
#   - vhost-device-vsock, the vhost-user vsock backend (cargo install, cached the same way).
# Links both into .tools/bin. Idempotent; a warm run takes well under a second.
# Prints the two binaries' paths on success. Exit 1 with the reason on failure.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

QEMU_DEB_VERSION="1:10.0.13+ds-0+deb13u1"
VHOST_DEVICE_VSOCK_VERSION=0.3.0

log() { printf '[setup-qemu] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

cache="${NITRO_KV_CACHE:-$HOME/.cache/nitro-kv}"
self_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
upstream=${QEMU_DEB_VERSION#*:}
upstream=${upstream%%+*}
qemu_dir="$cache/qemu/$upstream-$self_hash"
qemu_bin="$qemu_dir/bin/qemu-system-x86_64"
vsock_dir="$cache/vhost-device-vsock/$VHOST_DEVICE_VSOCK_VERSION"
vsock_bin="$vsock_dir/bin/vhost-device-vsock"

sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
apt_install() {
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
mirror() {
  awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true
}
# Adds a suite of the machine's own Debian mirror to apt's sources (only the suite differs).
add_suite() { # name types suites
  local file="/etc/apt/sources.list.d/$1.sources" uri
  [[ -f "$file" ]] && return 1
  uri=$(mirror)
  [[ -n "$uri" ]] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources"
  log "adding $3 ($2) to apt's sources"
  printf 'Types: %s\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$2" "$uri" "$3" | "${sudo[@]}" tee "$file" >/dev/null
}

# The runtime side: libraries the binary links and the firmware it loads (-L).
runtime_pkgs=(libcbor0.8 libgnutls30 libfdt1 libglib2.0-0 libpixman-1-0 qemu-system-data seabios)
missing=()
for p in "${runtime_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing runtime packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  apt_install "${missing[@]}"
fi

lists_nitro_enclave() {
  "$1" -M help 2>/dev/null | awk '{ print $1 }' | grep -qx 'nitro-enclave'
}

if [[ ! -x "$qemu_bin" ]] || ! lists_nitro_enclave "$qemu_bin"; then
  log "building QEMU $QEMU_DEB_VERSION with the nitro-enclave machine (cold cache: 10-13 minutes)"
  changed=0
  grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ ||
    { add_suite bookworm-backports deb bookworm-backports && changed=1; }
  # Source packages only: adds nothing installable.
  add_suite trixie-src deb-src "trixie trixie-updates" && changed=1
  if ((changed)) || ! apt-cache showsrc qemu 2>/dev/null | grep -qx "Version: $QEMU_DEB_VERSION"; then
    "${sudo[@]}" apt-get update -qq
  fi
  # bookworm's meson is too old for QEMU 10.
  apt_install -t bookworm-backports meson python3-pycotap
  apt_install ninja-build pkgconf libglib2.0-dev libpixman-1-dev libfdt-dev libcbor-dev \
    libgnutls28-dev flex bison python3-venv xz-utils dpkg-dev

  work=$(mktemp -d "${TMPDIR:-/tmp}/qemu-build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  chmod 755 "$work"
  (cd "$work" && apt-get source --download-only -qq "qemu=$QEMU_DEB_VERSION" 2>/dev/null) ||
    die "could not download the source package qemu=$QEMU_DEB_VERSION"
  # apt-get checked the files against the signed Sources index; unpack the upstream tarball.
  tar -C "$work" -xf "$work"/qemu_*.orig.tar.xz
  src=$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'qemu-[0-9]*' | head -1)
  [[ -n "$src" ]] || die "the source tarball held no qemu-* directory"
  # The +ds tarball has no edk2 firmware blobs: do not try to unpack them.
  sed -i 's/unpack_edk2_blobs = bzip2.found()/unpack_edk2_blobs = false/' "$src/meson.build"
  # Only the devices of the nitro-enclave machine (it is a microvm with an EIF loader, the NSM
  # and vhost-user vsock on virtio-mmio, and a virtio-serial console).
  printf '%s\n' CONFIG_NITRO_ENCLAVE=y CONFIG_MICROVM=y CONFIG_VHOST_USER_VSOCK=y \
    CONFIG_VIRTIO_NSM=y CONFIG_VIRTIO_MMIO=y CONFIG_VIRTIO_SERIAL=y \
    >"$src/configs/devices/x86_64-softmmu/nitro.mak"
  mkdir -p "$src/build"
  (
    cd "$src/build"
    ../configure --prefix="$qemu_dir" --python=/usr/bin/python3 \
      --target-list=x86_64-softmmu --without-default-features --without-default-devices \
      --with-devices-x86_64=nitro --enable-tcg --enable-libcbor --enable-gnutls \
      --enable-fdt=system --enable-vhost-user --disable-docs --disable-tools \
      --disable-install-blobs --disable-werror >"$work/configure.log" 2>&1
  ) || { tail -30 "$work/configure.log" >&2; die "QEMU configure failed"; }
  log "compiling (ninja -j$(nproc))"
  ninja -C "$src/build" -j"$(nproc)" qemu-system-x86_64 >"$work/build.log" 2>&1 ||
    { tail -30 "$work/build.log" >&2; die "QEMU build failed"; }
  rm -rf "$qemu_dir"
  mkdir -p "$qemu_dir/bin"
  cp "$src/build/qemu-system-x86_64" "$qemu_bin"
  strip "$qemu_bin" 2>/dev/null || true
  lists_nitro_enclave "$qemu_bin" || die "the built QEMU does not list the nitro-enclave machine"
  for dev in virtio-nsm-device vhost-user-vsock-device; do
    "$qemu_bin" -device help 2>/dev/null | grep -q "\"$dev\"" || die "the built QEMU has no $dev"
  done
  rm -rf "$work"
  trap - EXIT
  # Older builds of other recipes are no longer used.
  find "$cache/qemu" -mindepth 1 -maxdepth 1 -type d ! -path "$qemu_dir" -exec rm -rf {} +
fi

if [[ ! -x "$vsock_bin" ]]; then
  log "installing vhost-device-vsock $VHOST_DEVICE_VSOCK_VERSION (about 1.5 minutes)"
  # Its own target dir: the project's must not be cleaned or locked by this.
  CARGO_TARGET_DIR="$cache/vhost-device-vsock/target" \
    cargo install --quiet --locked --root "$vsock_dir" --version "$VHOST_DEVICE_VSOCK_VERSION" \
    vhost-device-vsock || die "cargo install vhost-device-vsock failed"
  rm -rf "$cache/vhost-device-vsock/target"
fi

mkdir -p "$TOOLS_DIR/bin"
ln -sfn "$qemu_bin" "$TOOLS_DIR/bin/qemu-system-x86_64"
ln -sfn "$vsock_bin" "$TOOLS_DIR/bin/vhost-device-vsock"
printf '%s\n%s\n' "$qemu_bin" "$vsock_bin"
