#!/usr/bin/env bash
# Installs a kv-packager bundle on the image being built (Packer's builder instance, Amazon Linux
# 2023, run as root): checks every file's size and SHA-256 against manifest.json before anything
# is installed, installs each file to its `install_to` with its mode, installs the Nitro Enclaves
# CLI and docker, and enables the units. Any mismatch stops the build (non-zero exit).
# Usage: install-bundle.sh BUNDLE_DIR
set -euo pipefail

bundle=${1:?usage: install-bundle.sh BUNDLE_DIR}
manifest="$bundle/manifest.json"
log() { printf '[install-bundle] %s\n' "$*" >&2; }

[[ -f $manifest ]] || { log "$manifest: missing"; exit 1; }
command -v jq >/dev/null || dnf install -y -q jq

# 1. Check everything first: nothing is installed from a bundle with one bad file.
bad=0
while IFS=$'\t' read -r path size sha mode dest; do
  file="$bundle/$path"
  if [[ ! -f $file ]]; then
    log "$path: listed in manifest.json but missing"; bad=1; continue
  fi
  actual_size=$(stat -c %s "$file")
  if [[ $actual_size != "$size" ]]; then
    log "$path: size $actual_size, manifest says $size"; bad=1; continue
  fi
  actual_sha=$(sha256sum "$file" | cut -d' ' -f1)
  if [[ $actual_sha != "$sha" ]]; then
    log "$path: sha256 $actual_sha, manifest says $sha"; bad=1
  fi
  [[ $mode =~ ^0[0-7]{3}$ ]] || { log "$path: bad mode $mode"; bad=1; }
  [[ $dest == /* ]] || { log "$path: install_to $dest is not absolute"; bad=1; }
done < <(jq -r '.files[] | [.path, .size, .sha256, .mode, .install_to] | @tsv' "$manifest")
((bad == 0)) || { log "bundle check failed; nothing installed"; exit 1; }

# 2. Host software the units need.
dnf install -y -q aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel docker

# 3. Install.
units=()
while IFS=$'\t' read -r path mode dest role; do
  install -D -m "$mode" -o root -g root "$bundle/$path" "$dest"
  if [[ $role == systemd-unit && $dest == *.service ]]; then
    units+=("$(basename "$dest")")
  fi
  if [[ $role == collector-package ]]; then
    dnf install -y -q "$dest"
  fi
done < <(jq -r '.files[] | [.path, .mode, .install_to, .role] | @tsv' "$manifest")

systemctl daemon-reload
systemctl enable nitro-enclaves-allocator.service docker.service
if ((${#units[@]})); then
  systemctl enable "${units[@]}"
fi
log "installed $(jq '.files | length' "$manifest") files, enabled: ${units[*]:-none}"
