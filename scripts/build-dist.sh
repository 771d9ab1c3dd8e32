#!/usr/bin/env bash
# Builds the shipped artifacts from this checkout in one command:
#   1. kv-server, enclave-init and vsockproxy, release, static (+crt-static), with the build paths
#      remapped so that another clone of the same commit builds the same bytes;
#   2. the enclave's root file system: bin/kv-server and etc/kv/config.toml (the image's config,
#      --enclave-config; kv-server carries its CA roots compiled in, so no certificate store);
#   3. the EIF with kv-packager: the kernel and nsm.ko from AWS's blobs (--blobs, or
#      /usr/share/nitro_enclaves/blobs when it exists), otherwise the Debian kernel the test set-up
#      fetches (.tools/kernel) with its vsock and virtio-mmio modules in the bootstrap ramdisk.
#      The application ramdisk (PCR2) holds only /cmd, /env and the root file system, so PCR2 does
#      not depend on the kernel;
#   4. the descriptor set, then DIR/aws with `kv-packager bundle` and `kv-packager verify`.
# Reproducible: every timestamp is the commit's time (SOURCE_DATE_EPOCH), so two runs from the
# same commit write the same manifest.json.
#
# Usage: scripts/build-dist.sh [--out DIR] [--blobs DIR] [--enclave-config FILE] [--eif-only]
#          [--collector-package FILE | --collector-url URL --collector-sha256 HEX]
#   --out DIR             where to write (default dist): DIR/aws is the bundle, DIR/build the
#                         intermediate files (rootfs, descriptor set)
#   --enclave-config FILE kv-server's config inside the image (default
#                         enclave/examples/enclave.toml, the reference deployment's); a different
#                         file is a different image (PCR2, PCR0)
#   --eif-only            stop after the EIF (DIR/server_enclave_image.eif) and its measurements
#   the collector flags go to `kv-packager bundle`; without one the bundle expects the collector
#   preinstalled on the base AMI (--collector-preinstalled)
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO_ROOT"

log() { printf '[build-dist] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

out=dist
blobs=""
enclave_config=enclave/examples/enclave.toml
eif_only=0
collector=()
while (($#)); do
  case $1 in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --blobs) blobs=${2:?--blobs needs a directory}; shift 2 ;;
    --enclave-config) enclave_config=${2:?--enclave-config needs a file}; shift 2 ;;
    --eif-only) eif_only=1; shift ;;
    --collector-package) collector+=("$1" "${2:?$1 needs a file}"); shift 2 ;;
    --collector-url | --collector-sha256) collector+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ -f $enclave_config ]] || die "--enclave-config $enclave_config: no such file"
if [[ -z $blobs && -d /usr/share/nitro_enclaves/blobs ]]; then
  blobs=/usr/share/nitro_enclaves/blobs
fi

# Every timestamp (files in the ramdisks, the EIF's build time, the manifest) is the commit's.
# (Passed to kv-packager only, not exported: some build scripts rerun when it changes.)
unset SOURCE_DATE_EPOCH
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
  log "note: the working tree has uncommitted changes; the manifest names $commit all the same"
fi

target=x86_64-unknown-linux-gnu
# Static binaries (the enclave has no libc of its own; the parent's may be older than this
# machine's), paths inside them independent of where the clone and cargo's registry are.
export RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$REPO_ROOT=/nitro-kv --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
log "building kv-server, enclave-init, vsockproxy (release, static)"
# One cargo invocation per binary, so each is built with its own package's features only (in one
# invocation cargo unifies them: vsockproxy's would reach kv-server), as the tests build them.
for package in kv-server enclave-init vsockproxy; do
  cargo build --release --locked --target "$target" -p "$package" --bin "$package"
done
unset RUSTFLAGS
cargo build --release --locked -p packaging --bin kv-packager
bin="$CARGO_TARGET_DIR/$target/release"
packager="$CARGO_TARGET_DIR/release/kv-packager"

build="$out/build"
rm -rf "$build"
mkdir -p "$build/rootfs/bin" "$build/rootfs/etc/kv"
install -m 0755 "$bin/kv-server" "$build/rootfs/bin/kv-server"
install -m 0644 "$enclave_config" "$build/rootfs/etc/kv/config.toml"

# The kernel side (PCR0/PCR1 only).
kernel_args=()
if [[ -n $blobs ]]; then
  [[ -d $blobs ]] || die "--blobs $blobs: no such directory"
  log "kernel: AWS's blobs in $blobs"
  kernel_args=(--blobs "$blobs" --init "$bin/enclave-init")
else
  "$REPO_ROOT/packaging/scripts/fetch-test-kernel.sh"
  kdir="$TOOLS_DIR/kernel"
  log "kernel: $(cat "$kdir/.installed") (no AWS blobs; the image boots under QEMU's nitro-enclave machine)"
  kernel_args=(--kernel "$kdir/bzImage" --init "$bin/enclave-init" --nsm-ko "$kdir/modules/nsm.ko"
    # AWS's enclave command line, but modules allowed (Debian builds vsock and virtio-mmio as
    # modules).
    --cmdline "reboot=k panic=30 pci=off console=ttyS0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd random.trust_cpu=on")
  for m in virtio_mmio vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do
    kernel_args+=(--module "$kdir/modules/$m.ko")
  done
fi

eif="$out/server_enclave_image.eif"
log "building $eif"
"$packager" --json eif build "${kernel_args[@]}" --rootfs "$build/rootfs" \
  --cmd '["/bin/kv-server","--config","/etc/kv/config.toml"]' --env RUST_LOG=info \
  --source-date-epoch "$epoch" --out "$eif" >"$build/eif-build.json"
"$packager" eif describe "$eif" >"$out/server_enclave_image.json"
((eif_only)) && { log "done: $eif"; exit 0; }

"$bin/kv-server" descriptor-set --out "$build/query_api_descriptor_set.pb"
((${#collector[@]})) || collector=(--collector-preinstalled)
log "laying out $out/aws"
"$packager" bundle --out "$out/aws" --force --eif "$eif" --proxy "$bin/vsockproxy" \
  --proxy-config proxy/examples/vsockproxy.toml \
  --descriptor-set "$build/query_api_descriptor_set.pb" \
  --instance-init terraform/modules/kv-service/templates/instance_init.tftpl \
  "${collector[@]}" --git-commit "$commit" --source-date-epoch "$epoch" >/dev/null
"$packager" verify "$out/aws" >/dev/null
log "done: $out/aws (PCRs in $out/aws/manifest.json)"
