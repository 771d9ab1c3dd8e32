#!/usr/bin/env bash
# Test stand-in for the commands the instance-init launcher calls that cannot run here (systemd of
# an EC2 parent, nitro-cli, the aws CLI, IMDS behind curl, docker, logger). run.sh links it under
# each command's name; it records every call in $STANDIN_DIR/calls and acts just enough for the
# launcher to go on. Knobs (environment):
#   STANDIN_DIR              state directory (required)
#   STANDIN_ENVOY_READY      1 (default): envoy admin /ready answers; 0: never
#   STANDIN_READYZ_AFTER     the proxy's /readyz answers from this call on (default 2); 0: never
#   STANDIN_SERVING_AFTER    envoy's /healthcheck says SERVING from this call on (default 2; before
#                            it: NOT_SERVING, as while the server loads its data); 0: never
#   STANDIN_AWS_FAIL         1: every aws call fails
#   STANDIN_PCRS             "PCR0 PCR1 PCR2": describe-enclaves lists the enclave as RUNNING with
#                            these Measurements (as nitro-cli 1.2+ prints them), started or not
set -euo pipefail

: "${STANDIN_DIR:?STANDIN_DIR must be set}"
name="$(basename "$0")"
calls="$STANDIN_DIR/calls"
mkdir -p "$STANDIN_DIR/active"

record() { printf '%s\n' "$*" >>"$calls"; }

case "$name" in
  systemctl)
    record "systemctl $*"
    verb=${1:-}
    shift || true
    case "$verb" in
      start | restart)
        for u in "$@"; do : >"$STANDIN_DIR/active/$u"; done
        ;;
      stop)
        for u in "$@"; do rm -f "$STANDIN_DIR/active/$u"; done
        ;;
      is-active)
        [[ ${1:-} == --quiet ]] && shift
        [[ -e $STANDIN_DIR/active/${1:-none} ]]
        ;;
      status)
        for u in "$@"; do
          [[ $u == --* ]] && continue
          if [[ -e $STANDIN_DIR/active/$u ]]; then echo "$u: active (stand-in)"; else echo "$u: inactive (stand-in)"; fi
        done
        ;;
      *) ;;
    esac
    ;;
  curl)
    url=''
    for a in "$@"; do [[ $a == http://* || $a == https://* ]] && url=$a; done
    # Headers are not recorded: they carry the IMDSv2 token.
    record "curl $url"
    case "$url" in
      http://169.254.169.254/latest/api/token) printf 'standin-imds-token-SECRET-5f2c' ;;
      http://169.254.169.254/latest/meta-data/instance-id) printf 'i-0123456789abcdef0' ;;
      http://169.254.169.254/latest/meta-data/placement/region) printf 'eu-west-1' ;;
      http://127.0.0.1:*/ready)
        [[ ${STANDIN_ENVOY_READY:-1} == 1 ]] || exit 7
        ;;
      http://127.0.0.1:*/readyz)
        after=${STANDIN_READYZ_AFTER:-2}
        n=$(($(cat "$STANDIN_DIR/readyz_count" 2>/dev/null || echo 0) + 1))
        echo "$n" >"$STANDIN_DIR/readyz_count"
        ((after > 0 && n >= after)) || exit 22
        ;;
      http://127.0.0.1:*/healthcheck)
        after=${STANDIN_SERVING_AFTER:-2}
        n=$(($(cat "$STANDIN_DIR/healthcheck_count" 2>/dev/null || echo 0) + 1))
        echo "$n" >"$STANDIN_DIR/healthcheck_count"
        if ((after > 0 && n >= after)); then
          printf '{"status":"SERVING"}'
        else
          printf '{"status":"NOT_SERVING"}'
        fi
        ;;
      *) exit 7 ;;
    esac
    ;;
  aws)
    record "aws $*"
    [[ ${STANDIN_AWS_FAIL:-0} != 1 ]] || exit 255
    ;;
  nitro-cli)
    # One enclave at most, kept in $STANDIN_DIR/enclave (its name) between calls.
    record "nitro-cli $*"
    case "${1:-}" in
      run-enclave)
        name=enclave
        while (($#)); do
          [[ $1 == --enclave-name ]] && name=$2
          shift
        done
        echo "$name" >"$STANDIN_DIR/enclave"
        echo '{"EnclaveName": "'"$name"'", "State": "RUNNING"}'
        ;;
      describe-enclaves)
        if [[ -n ${STANDIN_PCRS:-} ]]; then
          read -r p0 p1 p2 <<<"$STANDIN_PCRS"
          printf '[\n  {\n    "EnclaveName": "kv-server",\n    "EnclaveCID": 16,\n    "State": "RUNNING",\n    "Flags": "NONE",\n    "Measurements": {\n      "HashAlgorithm": "Sha384 { ... }",\n      "PCR0": "%s",\n      "PCR1": "%s",\n      "PCR2": "%s"\n    }\n  }\n]\n' \
            "$p0" "$p1" "$p2"
        elif [[ -f $STANDIN_DIR/enclave ]]; then
          printf '[\n  {\n    "EnclaveName": "%s",\n    "EnclaveCID": 16,\n    "State": "RUNNING"\n  }\n]\n' \
            "$(cat "$STANDIN_DIR/enclave")"
        else
          echo '[]'
        fi
        ;;
      terminate-enclave)
        rm -f "$STANDIN_DIR/enclave"
        ;;
      *) ;;
    esac
    ;;
  logger)
    # logger -t TAG -- MESSAGE
    tag=''
    while (($#)); do
      case "$1" in
        -t) tag=$2; shift 2 ;;
        --) shift; break ;;
        *) break ;;
      esac
    done
    printf '%s: %s\n' "$tag" "$*" >>"$STANDIN_DIR/journal"
    ;;
  docker)
    record "docker $*"
    ;;
  *)
    echo "standin: unknown command name $name" >&2
    exit 127
    ;;
esac
