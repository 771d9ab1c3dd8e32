#!/bin/bash
# User data of the kv-ami builder instance (`kv-ami bake`), rendered by
# packaging/ami/src/userdata.rs: every placeholder below is filled in (each value checked to hold only
# A-Za-z0-9./:@_- so the single quotes below stay closed), and the script between the
# KV_AMI_INSTALL_BUNDLE_EOF markers is packaging/packer/install-bundle.sh verbatim, the one
# Packer runs too. cloud-init runs this once, as root, at first boot; its output is in
# /var/log/cloud-init-output.log and the console output.
#
# 1. fetch the bundle from S3;  2. install-bundle.sh checks manifest.json against the content
# key and every file's size and SHA-256 against manifest.json, then installs docker, the Nitro
# Enclaves CLI, the collector and the files, pre-pulls the envoy image and enables the units;
# 3. signal the result on this instance: tag kv-ami:bake-status = ok | failed, with a one-line
# kv-ami:bake-detail. kv-ami polls the tag (DescribeInstances), then stops the instance and
# creates the image.
set -euo pipefail

bucket='@@BUCKET@@'
prefix='@@PREFIX@@'
region='@@REGION@@'
content_key='@@CONTENT_KEY@@'
envoy_image='@@ENVOY_IMAGE@@'
status_tag='@@STATUS_TAG@@'
detail_tag='@@DETAIL_TAG@@'
bundle=/var/tmp/kv-ami-bundle
installer=/usr/local/sbin/kv-install-bundle
errors=/var/tmp/kv-ami-bake.err
step=start

log() { printf '[kv-ami builder] %s\n' "$*" >&2; }

# IMDSv2 only (the instance is launched with HttpTokens=required).
imds() {
  local token
  token=$(curl -sSf -X PUT http://169.254.169.254/latest/api/token \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
  curl -sSf -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

# signal ok|failed DETAIL: the tags kv-ami waits for. The detail is cut to one line of
# characters the CLI's shorthand syntax takes as they are (no commas).
signal() {
  local id detail
  id=$(imds instance-id)
  detail=$(printf '%s' "$2" | tr -c 'A-Za-z0-9 ._:/=+@-' ' ' | cut -c1-250)
  aws ec2 create-tags --region "$region" --resources "$id" \
    --tags "Key=$status_tag,Value=$1" "Key=$detail_tag,Value=$detail"
}

on_exit() {
  local rc=$?
  trap - EXIT
  if ((rc != 0)); then
    local last=""
    [[ -s $errors ]] && last=$(tail -n 1 "$errors")
    log "failed in step $step (exit $rc): $last"
    signal failed "step $step exit $rc: $last" || log "could not write the failure signal"
  fi
  exit "$rc"
}
trap on_exit EXIT

step=fetch
rm -rf "$bundle"
install -d -m 0700 "$bundle"
aws s3 cp --recursive --only-show-errors --region "$region" "s3://$bucket/$prefix/" "$bundle/" 2> >(tee "$errors" >&2)

step=install
cat >"$installer" <<'KV_AMI_INSTALL_BUNDLE_EOF'
@@INSTALL_BUNDLE_SH@@
KV_AMI_INSTALL_BUNDLE_EOF
chmod 0755 "$installer"
KV_CONTENT_KEY="$content_key" KV_ENVOY_IMAGE="$envoy_image" "$installer" "$bundle" 2> >(tee "$errors" >&2)

step=tidy
# The installed copies stay in the image; the downloaded bundle and this run's traces do not.
rm -rf "$bundle" "$installer" "$errors"

step=signal
signal ok "installed bundle $content_key"
log "done"
