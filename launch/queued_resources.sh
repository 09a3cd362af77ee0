#!/usr/bin/env bash
# Train rin_diffusion on a TPU slice obtained through a queued resource, so that a preempted (Spot)
# or repaired slice resumes by itself: the slice's startup script installs the code and starts the
# trainer at every boot, and the trainer resumes from the latest checkpoint in --workdir.
#
#   launch/queued_resources.sh --name=rin-in256 --zone=us-west4-a --accelerator=v5litepod-256 \
#       --config=configs/imagenet256.py --workdir=gs://BUCKET/runs/in256 \
#       --tfds_data_dir=gs://BUCKET/tensorflow_datasets --provisioning=spot [--dry-run]
#   launch/queued_resources.sh --action=watch ...same flags...   # re-create after preemption
#
# Arguments after `--` go to the trainer verbatim. See launch/README.md.
set -euo pipefail

PROG=$(basename "$0")
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<EOT
Usage: $PROG --name=NAME --zone=ZONE --accelerator=TYPE --config=PATH[:ARG] --workdir=gs://...
           [--tfds_data_dir=gs://...] [--version=RUNTIME] [--project=P]
           [--provisioning=on-demand|spot|reserved] [--repo=GIT_URL [--ref=REF]]
           [--action=create|watch|status|delete] [--poll_seconds=300] [--python_version=3.11]
           [--dry-run] [-- TRAINER_FLAGS...]

  --name            Queued-resource id; the TPU node gets the same name.
  --zone, --accelerator, --version, --project
                    As for launch/tpu_vm.sh (e.g. --accelerator=v4-64 or v5litepod-256).
  --provisioning    on-demand (default), spot (preemptible, cheapest) or reserved.
  --config          Config file relative to the repo root, with an optional :ARG.
  --workdir         Run directory on GCS. The launcher keeps its files under WORKDIR/launch/:
                    the code tarball, and DONE once the trainer has finished.
  --tfds_data_dir   TFDS data dir on GCS holding the prepared dataset (default: \$TFDS_DATA_DIR).
  --repo, --ref     The workers clone this git repository (at REF) instead of downloading a
                    tarball of this checkout from WORKDIR/launch/.
  --action          create: upload the code, write the startup script, request the slice.
                    watch: poll every --poll_seconds; re-create the queued resource when it is
                    FAILED or SUSPENDED (preempted); delete it once WORKDIR/launch/DONE exists.
                    status: describe the queued resource. delete: delete it (and its node).
  --python_version  Python for the workers' virtualenv (made with uv; default 3.11).
  --dry-run         Print the commands, one per line, instead of running them (the startup
                    script is still written, and its path printed as a '#' comment).
EOT
}

declare -A FLAGS=(
  [name]="" [zone]="" [accelerator]="" [version]="" [project]="" [provisioning]="on-demand"
  [config]="" [workdir]="" [tfds_data_dir]="${TFDS_DATA_DIR:-}" [repo]="" [ref]=""
  [action]="create" [poll_seconds]=300 [python_version]="3.11"
)
BOOLEAN_FLAGS=" "
TRAINER_ARGS=()

# --- Shared helpers: the same in every launch/*.sh. ---

DRY_RUN=0

die() {
  echo "$PROG: error: $*" >&2
  echo "Run '$PROG --help' for usage." >&2
  exit 2
}

# Prints one word for the shell: as is when safe, else single-quoted (after a --flag= or VAR=).
quote() {
  local safe='^[A-Za-z0-9_./:=@,+%-]+$' assignment='^(-{0,2}[A-Za-z0-9_.-]+=)(.*)$'
  if [[ $1 =~ $safe ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ $assignment ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local word out=""
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

run() {
  if ((DRY_RUN)); then
    quote_all "$@"
    echo
  else
    "$@"
  fi
}

parse_flags() {
  local key
  while (($#)); do
    case $1 in
      --) shift; TRAINER_ARGS=("$@"); return ;;
      -h | --help) usage; exit 0 ;;
      --dry-run | --dry_run) DRY_RUN=1 ;;
      --*=*)
        key=${1%%=*}; key=${key#--}; key=${key//-/_}
        [[ -v "FLAGS[$key]" ]] || die "unknown flag '${1%%=*}'"
        FLAGS[$key]=${1#*=}
        if [[ $BOOLEAN_FLAGS == *" $key "* ]]; then
          case ${FLAGS[$key]} in
            1 | true | True) FLAGS[$key]=1 ;;
            0 | false | False) FLAGS[$key]=0 ;;
            *) die "--$key='${FLAGS[$key]}': expected true or false" ;;
          esac
        fi ;;
      --*)
        key=${1#--}; key=${key//-/_}
        [[ -v "FLAGS[$key]" ]] || die "unknown flag '$1'"
        if [[ $BOOLEAN_FLAGS == *" $key "* ]]; then
          FLAGS[$key]=1
        else
          if (($# < 2)) || [[ $2 == --* ]]; then
            die "flag '$1' needs a value (--$key=VALUE)"
          fi
          FLAGS[$key]=$2; shift
        fi ;;
      *) die "unexpected argument '$1' (trainer flags go after '--')" ;;
    esac
    shift
  done
}

require() {
  local key
  for key in "$@"; do
    [[ -n ${FLAGS[$key]} ]] || die "--$key is required"
  done
}

# --- End of the shared helpers. ---

default_runtime() {
  case $1 in
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) return 1 ;;
  esac
}

parse_flags "$@"
require name zone accelerator config workdir tfds_data_dir
NAME=${FLAGS[name]}
ZONE=${FLAGS[zone]}
ACCELERATOR=${FLAGS[accelerator]}
WORKDIR=${FLAGS[workdir]%/}
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "--name='$NAME': use lowercase letters, digits and '-', starting with a letter"
[[ $ACCELERATOR =~ ^(v2|v3|v4|v5litepod|v5p|v6e)-[0-9]+$ ]] ||
  die "--accelerator='$ACCELERATOR': expected TYPE-CORES, TYPE one of v2, v3, v4, v5litepod," \
    "v5p, v6e (e.g. v4-64, v5litepod-256)"
VERSION=${FLAGS[version]:-$(default_runtime "$ACCELERATOR")}
[[ $WORKDIR == gs://* ]] ||
  die "--workdir='$WORKDIR': must be a gs:// path (every worker writes checkpoints there)"
[[ ${FLAGS[tfds_data_dir]} == gs://* ]] ||
  die "--tfds_data_dir='${FLAGS[tfds_data_dir]}': must be a gs:// path readable by all workers"
[[ -f $REPO_DIR/${FLAGS[config]%%:*} ]] ||
  die "--config='${FLAGS[config]}': no file ${FLAGS[config]%%:*} under $REPO_DIR"
[[ -z ${FLAGS[ref]} || -n ${FLAGS[repo]} ]] || die "--ref needs --repo"
[[ ${FLAGS[action]} =~ ^(create|watch|status|delete)$ ]] ||
  die "--action='${FLAGS[action]}': allowed: create, watch, status, delete"
[[ ${FLAGS[poll_seconds]} =~ ^[1-9][0-9]*$ ]] ||
  die "--poll_seconds='${FLAGS[poll_seconds]}': must be a positive integer"
case ${FLAGS[provisioning]} in
  on-demand) PROVISIONING=() ;;
  spot) PROVISIONING=(--spot) ;;
  reserved) PROVISIONING=(--reserved) ;;
  *) die "--provisioning='${FLAGS[provisioning]}': allowed: on-demand, spot, reserved" ;;
esac

PROJECT=()
[[ -z ${FLAGS[project]} ]] || PROJECT=("--project=${FLAGS[project]}")
QR=(gcloud compute tpus queued-resources)
WHERE=("--zone=$ZONE" "${PROJECT[@]}")
CODE_URL="$WORKDIR/launch/rin_diffusion.tar.gz"
DONE_URL="$WORKDIR/launch/DONE"
STARTUP_SCRIPT="${TMPDIR:-/tmp}/rin_startup_$NAME.sh"

# The startup script runs as root on every worker at every boot of the slice.
write_startup_script() {
  local fetch train
  if [[ -n ${FLAGS[repo]} ]]; then
    fetch="rm -rf rin_diffusion && git clone -q $(quote "${FLAGS[repo]}") rin_diffusion"
    [[ -z ${FLAGS[ref]} ]] || fetch+=" && git -C rin_diffusion checkout -q $(quote "${FLAGS[ref]}")"
  else
    fetch="rm -rf rin_diffusion && mkdir rin_diffusion"
    fetch+=" && gcloud storage cat $(quote "$CODE_URL") | tar -xz -C rin_diffusion"
  fi
  train=$(quote_all env "TFDS_DATA_DIR=${FLAGS[tfds_data_dir]}" ../rin_venv/bin/python \
    -m rin_diffusion.main "--config=${FLAGS[config]}" "--workdir=$WORKDIR" --distributed=auto \
    "${TRAINER_ARGS[@]}")
  cat >"$STARTUP_SCRIPT" <<EOT
#!/bin/bash
# Generated by launch/queued_resources.sh for queued resource $NAME: installs rin_diffusion and
# starts the trainer, which resumes from the latest checkpoint in $WORKDIR.
set -euo pipefail
exec >> /var/log/rin_diffusion.log 2>&1
export HOME=/root PATH="/root/.local/bin:\$PATH"
if gcloud storage ls $(quote "$DONE_URL") > /dev/null 2>&1; then
  echo "rin_diffusion: $DONE_URL exists; nothing to do."
  exit 0
fi
mkdir -p /opt/rin && cd /opt/rin
$fetch
command -v uv > /dev/null || pip3 install -q --user uv ||
  curl -LsSf https://astral.sh/uv/install.sh | sh
test -x rin_venv/bin/python || uv venv -q --python ${FLAGS[python_version]} rin_venv
uv pip install -q --python rin_venv/bin/python -e "rin_diffusion[tpu,tf]"
cd rin_diffusion
$train
echo "finished \$(date -u +%FT%TZ) on \$(hostname)" | gcloud storage cp - $(quote "$DONE_URL")
EOT
  chmod +x "$STARTUP_SCRIPT"
}

create() {
  local request
  request=("${QR[@]}" create "$NAME" "${WHERE[@]}" "--accelerator-type=$ACCELERATOR"
    "--runtime-version=$VERSION" "--node-id=$NAME" "${PROVISIONING[@]}"
    "--metadata-from-file=startup-script=$STARTUP_SCRIPT")
  run "${request[@]}"
}

upload_code() {
  [[ -z ${FLAGS[repo]} ]] || return 0
  local tarball="${TMPDIR:-/tmp}/rin_diffusion-$NAME.tar.gz"
  run tar -czf "$tarball" -C "$REPO_DIR" --exclude=__pycache__ --exclude='*.egg-info' \
    rin_diffusion configs launch setup.py pyproject.toml
  run gcloud storage cp "$tarball" "$CODE_URL"
}

case ${FLAGS[action]} in
  create)
    write_startup_script
    ((DRY_RUN == 0)) || echo "# startup script: $STARTUP_SCRIPT"
    upload_code
    create
    ;;
  status)
    run "${QR[@]}" describe "$NAME" "${WHERE[@]}"
    ;;
  delete)
    run "${QR[@]}" delete "$NAME" "${WHERE[@]}" --force --quiet
    ;;
  watch)
    write_startup_script
    if ((DRY_RUN)); then
      echo "# every ${FLAGS[poll_seconds]} s: once this succeeds, delete the queued resource, stop:"
      run gcloud storage ls "$DONE_URL"
      echo "# read the state:"
      run "${QR[@]}" describe "$NAME" "${WHERE[@]}" '--format=value(state.state)'
      echo "# when the state is FAILED or SUSPENDED (preempted), or the resource is gone:"
      run "${QR[@]}" delete "$NAME" "${WHERE[@]}" --force --quiet
      create
      exit 0
    fi
    while true; do
      if gcloud storage ls "$DONE_URL" > /dev/null 2>&1; then
        echo "$PROG: $DONE_URL exists: training finished; deleting $NAME."
        "${QR[@]}" delete "$NAME" "${WHERE[@]}" --force --quiet || true
        exit 0
      fi
      state=$("${QR[@]}" describe "$NAME" "${WHERE[@]}" '--format=value(state.state)' \
        2> /dev/null || echo MISSING)
      echo "$PROG: $(date -u +%FT%TZ) $NAME: $state"
      case $state in
        FAILED | SUSPENDED | MISSING)
          [[ $state == MISSING ]] || "${QR[@]}" delete "$NAME" "${WHERE[@]}" --force --quiet || true
          create ||
            echo "$PROG: re-creating $NAME failed; retrying in ${FLAGS[poll_seconds]} s." >&2
          ;;
      esac
      sleep "${FLAGS[poll_seconds]}"
    done
    ;;
esac
