#!/usr/bin/env bash
# Installs a kv-packager bundle on the image being built (Amazon Linux 2023, run as root): the
# install step of both builder-instance bakes, Packer's (kv-ami.pkr.hcl) and `kv-ami bake`'s
# (its user data embeds this file verbatim). Checks manifest.json against the content key and
# every file's size and SHA-256 against manifest.json before anything is installed, installs
# docker, the Nitro Enclaves CLI and the collector package, installs each file to its
# `install_to` with its mode, pre-pulls the pinned envoy image and enables the units. Any
# mismatch stops the build (non-zero exit).
#
# Usage: install-bundle.sh BUNDLE_DIR
# Environment:
#   KV_CONTENT_KEY    required: the SHA-256 of the expected manifest.json (kv-ami's content key,
#                     `sha256sum dist/aws/manifest.json`); anything else is refused
#   KV_ENVOY_IMAGE    optional: image to pre-pull, pinned by digest (NAME@sha256:...)
#   KV_INSTALL_ROOT   optional: install under this directory instead of / and skip the host steps
#                     (dnf, systemctl, docker): for checking a bundle on a machine that is not
#                     the builder
#
# The files are first copied into a fresh private directory (mktemp -d: mode 0700, this user's);
# what is checked there is what is installed, whoever else can write to BUNDLE_DIR. Only regular
# files are copied (a symlink is refused, not followed).
set -euo pipefail

bundle=${1:?usage: install-bundle.sh BUNDLE_DIR}
root=${KV_INSTALL_ROOT:-}
log() { printf '[install-bundle] %s\n' "$*" >&2; }
host() { # run a host step, or say it is skipped under KV_INSTALL_ROOT
  if [[ -n $root ]]; then log "skipped (KV_INSTALL_ROOT): $*"; else "$@"; fi
}

# 0. The content key names the one manifest.json to accept.
key=${KV_CONTENT_KEY:-}
if [[ -z $key ]]; then
  log "KV_CONTENT_KEY is not set (the SHA-256 of the expected manifest.json); nothing installed"
  exit 1
fi
key=${key,,}
if [[ ! $key =~ ^[0-9a-f]{64}$ ]]; then
  log "KV_CONTENT_KEY \"$KV_CONTENT_KEY\" is not a SHA-256 (64 hex digits); nothing installed"
  exit 1
fi
[[ -f $bundle/manifest.json ]] || { log "$bundle/manifest.json: missing"; exit 1; }

stage=$(mktemp -d "${TMPDIR:-/tmp}/kv-install-bundle.XXXXXXXX")
trap 'rm -rf -- "$stage"' EXIT
log "staged in $stage (mode $(stat -c %a "$stage"))"
# stage_in PATH: BUNDLE_DIR/PATH into the private copy as it is (a symlink stays a symlink).
stage_in() {
  if [[ $1 == */* ]]; then mkdir -p -- "$stage/${1%/*}"; fi
  cp -P -- "$bundle/$1" "$stage/$1"
  [[ -f $stage/$1 && ! -L $stage/$1 ]] || { log "$1: not a regular file"; return 1; }
}

manifest="$stage/manifest.json"
stage_in manifest.json || { log "nothing installed"; exit 1; }
actual=$(sha256sum "$manifest" | cut -d' ' -f1)
if [[ $actual != "$key" ]]; then
  log "manifest.json: sha256 $actual, expected content key $key; nothing installed"
  exit 1
fi
command -v jq >/dev/null || host dnf install -y -q jq

# 1. Copy and check everything first: nothing is installed from a bundle with one bad file.
bad=0
while IFS=$'\t' read -r path size sha mode dest; do
  if [[ $path == /* || /$path/ == */../* || /$path/ == */./* ]]; then
    log "$path: not a relative path inside the bundle"; bad=1; continue
  fi
  if [[ ! -e $bundle/$path && ! -L $bundle/$path ]]; then
    log "$path: listed in manifest.json but missing"; bad=1; continue
  fi
  stage_in "$path" || { bad=1; continue; }
  file="$stage/$path"
  actual_size=$(stat -c %s "$file")
  if [[ $actual_size != "$size" ]]; then
    log "$path: size $actual_size, manifest says $size"; bad=1; continue
  fi
  actual_sha=$(sha256sum "$file" | cut -d' ' -f1)
  if [[ $actual_sha != "$sha" ]]; then
    log "$path: sha256 $actual_sha, manifest says $sha"; bad=1
  fi
  [[ $mode =~ ^0[0-7]{3}$ ]] || { log "$path: bad mode $mode"; bad=1; }
  [[ $dest == /* && /$dest/ != */../* ]] || { log "$path: install_to $dest is not an absolute path"; bad=1; }
done < <(jq -r '.files[] | [.path, .size, .sha256, .mode, .install_to] | @tsv' "$manifest")
((bad == 0)) || { log "bundle check failed; nothing installed"; exit 1; }

# 2. Host software the units need.
host dnf install -y -q aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel docker

# 3. Install.
owner=(-o root -g root)
[[ -n $root ]] && owner=()
units=()
while IFS=$'\t' read -r path mode dest role; do
  install -D -m "$mode" "${owner[@]}" "$stage/$path" "$root$dest"
  if [[ $role == systemd-unit && $dest == *.service ]]; then
    units+=("$(basename "$dest")")
  fi
  if [[ $role == collector-package ]]; then
    host dnf install -y -q "$dest"
  fi
done < <(jq -r '.files[] | [.path, .mode, .install_to, .role] | @tsv' "$manifest")

# 4. The envoy image, so the first boot does not depend on a registry.
if [[ -n ${KV_ENVOY_IMAGE:-} ]]; then
  [[ $KV_ENVOY_IMAGE =~ @sha256:[0-9a-f]{64}$ ]] || { log "KV_ENVOY_IMAGE $KV_ENVOY_IMAGE is not pinned by digest"; exit 1; }
  host systemctl start docker.service
  host docker pull --quiet "$KV_ENVOY_IMAGE"
  # envoy.service runs ${ENVOY_IMAGE} with --pull=never: name the pulled digest there (its
  # built-in default is a tag, which a pull by digest does not create).
  install -d -m 0755 "${owner[@]}" "$root/etc/envoy"
  printf 'ENVOY_IMAGE=%s\n' "$KV_ENVOY_IMAGE" >"$root/etc/envoy/envoy.env"
  chmod 0644 "$root/etc/envoy/envoy.env"
fi

host systemctl daemon-reload
host systemctl enable nitro-enclaves-allocator.service docker.service
if ((${#units[@]})); then
  host systemctl enable "${units[@]}"
fi
log "installed $(jq '.files | length' "$manifest") files under ${root:-/}, enabled: ${units[*]:-none}"
