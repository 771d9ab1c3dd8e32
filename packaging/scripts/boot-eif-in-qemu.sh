#!/usr/bin/env bash
# Boots an enclave image built by kv-packager in a plain QEMU VM (TCG, no KVM, no NSM device, no
# vsock device), to see enclave-init work on a real kernel: it loads nsm.ko and the vsock
# modules, switches root, mounts, brings lo up, runs the app (enclave-init --dry-run, static),
# reaps it and powers the VM off. The heartbeat is skipped (--no-heartbeat on the kernel command
# line): there is no parent, and nothing here may connect to any vsock address.
# Needs: .tools/kernel (scripts/setup-test-deps.sh) and qemu-system-x86_64 (Debian
# qemu-system-x86). Manual, not part of scripts/test.sh: a TCG boot takes 15 s to minutes.
# Usage: packaging/scripts/boot-eif-in-qemu.sh
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
cd "$REPO_ROOT"

kernel_dir="$TOOLS_DIR/kernel"
[[ -f "$kernel_dir/.installed" ]] || { echo "no $kernel_dir: run scripts/setup-test-deps.sh" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 not found" >&2; exit 1; }

cargo build -q -p packaging --bin kv-packager
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release -p enclave-init \
  --target x86_64-unknown-linux-gnu
init="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/enclave-init"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin"
cp "$init" "$work/rootfs/bin/app"
modules=()
for m in virtio_mmio vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do
  modules+=(--module "$kernel_dir/modules/$m.ko")
done
cmdline="console=ttyS0 panic=-1 -- --no-heartbeat"
"$CARGO_TARGET_DIR/debug/kv-packager" eif build --kernel "$kernel_dir/bzImage" --cmdline "$cmdline" \
  --init "$init" --nsm-ko "$kernel_dir/modules/nsm.ko" "${modules[@]}" --rootfs "$work/rootfs" \
  --cmd '["/bin/app","--dry-run"]' --out "$work/vm.eif"
# The kernel unpacks concatenated cpio archives: the EIF's ramdisks, in order, are the initrd.
python3 - "$work/vm.eif" "$work/initrd" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
off, out = 548, []
while off < len(d):
    t, _, n = struct.unpack(">HHQ", d[off:off + 12])
    if t == 3:
        out.append(d[off + 12:off + 12 + n])
    off += 12 + n
open(sys.argv[2], "wb").write(b"".join(out))
PY
# The pc machine: microvm under TCG stalls calibrating the TSC without a PIT reference.
timeout 900 qemu-system-x86_64 -M pc -cpu max -m 512 -nographic -no-reboot -nodefaults \
  -serial stdio -kernel "$kernel_dir/bzImage" -initrd "$work/initrd" -append "$cmdline" |
  tee "$work/console.log" | grep --line-buffered -E 'enclave-init|Power down|Kernel panic' || true
for want in 'LoadModule { path: "/nsm.ko" }' 'LoadModule { path: "/modules/03-vmw_vsock_virtio_transport.ko" }' \
  'SwitchRoot' 'LoopbackUp' 'application exited with 0' 'reboot: Power down'; do
  grep -qF "$want" "$work/console.log" || { echo "boot: missing '$want'" >&2; exit 1; }
done
echo "boot: ok (modules loaded, root switched, app ran, powered off)"
