#!/usr/bin/env bash
# Train rin_diffusion on a Cloud TPU VM slice (single host or pod): create the slice, put the code
# on every worker, install it, and run the same trainer command on all workers at once.
#
#   launch/tpu_vm.sh --name=rin-in64 --zone=us-central2-b --accelerator=v4-64 \
#       --config=configs/imagenet64.py --workdir=gs://BUCKET/runs/in64 \
#       --tfds_data_dir=gs://BUCKET/tensorflow_datasets [--dry-run] [-- --config.x=y ...]
#
# Arguments after `--` go to the trainer verbatim (e.g. --config.batch_size=512).
# The trainer resumes from the latest checkpoint in --workdir, so re-running `--steps=train` after a
# crash or a preemption continues the run. See launch/README.md.
set -euo pipefail

PROG=$(basename "$0")
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<EOF
Usage: $PROG --name=NAME --zone=ZONE --accelerator=TYPE --config=PATH[:ARG] --workdir=gs://...
           [--tfds_data_dir=gs://...] [--version=RUNTIME] [--project=P] [--spot]
           [--repo=GIT_URL [--ref=REF]] [--steps=create,code,install,train] [--detach]
           [--python_version=3.11] [--dry-run] [-- TRAINER_FLAGS...]

  --name            TPU VM name (lowercase letters, digits, '-').
  --zone            e.g. us-central2-b (v4), us-west4-a (v5e).
  --accelerator     Slice type, e.g. v4-8, v4-64, v5litepod-256, v5p-128, v6e-64.
  --version         TPU runtime; default by family: v2/v3/v4 tpu-ubuntu2204-base,
                    v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e.
  --project         GCP project (default: gcloud's configured project).
  --spot            Create a Spot slice (preemptible; re-run with --steps=train to resume).
  --config          Config file relative to the repo root, with an optional :ARG.
  --workdir         Run directory on GCS (all workers write checkpoints there).
  --tfds_data_dir   TFDS data dir on GCS holding the prepared dataset (default: \$TFDS_DATA_DIR).
  --repo, --ref     Clone this git repository (at REF) on the workers instead of copying this
                    checkout (the default copies rin_diffusion/, configs/, launch/ and packaging).
  --steps           Comma-separated subset of create,code,install,train,delete (in that order).
                    Default: create,code,install,train. 'delete' deletes the slice.
  --detach          Start the trainer in the background on each worker (log: ~/rin_train.log)
                    instead of streaming its output over ssh.
  --python_version  Python for the workers' virtualenv (made with uv; default 3.11).
  --dry-run         Print the commands, one per line, instead of running them.
EOF
}

declare -A FLAGS=(
  [name]="" [zone]="" [accelerator]="" [version]="" [project]="" [spot]=0 [config]=""
  [workdir]="" [tfds_data_dir]="${TFDS_DATA_DIR:-}" [repo]="" [ref]="" [detach]=0
  [steps]="create,code,install,train" [python_version]="3.11"
)
BOOLEAN_FLAGS=" spot detach "
TRAINER_ARGS=()

# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

parse_flags "$@"
check_tpu_flags

IFS=, read -r -a STEPS <<<"${FLAGS[steps]}"
for step in "${STEPS[@]}"; do
  [[ $step =~ ^(create|code|install|train|delete)$ ]] ||
    die "--steps: unknown step '$step'; allowed: create, code, install, train, delete"
done
has_step() { [[ ",${FLAGS[steps]}," == *",$1,"* ]]; }

PROJECT=()
[[ -z ${FLAGS[project]} ]] || PROJECT=("--project=${FLAGS[project]}")
TPU=(gcloud compute tpus tpu-vm)
WHERE=("--zone=$ZONE" "${PROJECT[@]}")

# The trainer command every worker runs (from ~/rin_diffusion; the venv is ~/rin_venv).
TRAIN=(env "TFDS_DATA_DIR=${FLAGS[tfds_data_dir]}" ../rin_venv/bin/python -m rin_diffusion.main
  "--config=${FLAGS[config]}" "--workdir=${FLAGS[workdir]}" --distributed=auto "${TRAINER_ARGS[@]}")
if ((FLAGS[detach])); then
  TRAIN_REMOTE="cd rin_diffusion && nohup setsid $(quote_all "${TRAIN[@]}")"
  TRAIN_REMOTE+=" > ../rin_train.log 2>&1 < /dev/null &"
else
  TRAIN_REMOTE="cd rin_diffusion && $(quote_all "${TRAIN[@]}")"
fi

# uv provides the Python version the pinned jax needs, whatever the runtime image ships.
INSTALL_REMOTE="set -e; export PATH=\"\$HOME/.local/bin:\$PATH\""
INSTALL_REMOTE+="; command -v uv > /dev/null || pip3 install -q --user uv"
INSTALL_REMOTE+=" || curl -LsSf https://astral.sh/uv/install.sh | sh"
INSTALL_REMOTE+="; test -x rin_venv/bin/python"
INSTALL_REMOTE+=" || uv venv -q --python ${FLAGS[python_version]} rin_venv"
INSTALL_REMOTE+="; uv pip install -q --python rin_venv/bin/python -e \"rin_diffusion[tpu,tf]\""

if has_step create; then
  CREATE=("${TPU[@]}" create "$NAME" "${WHERE[@]}" "--accelerator-type=$ACCELERATOR"
    "--version=$VERSION")
  ((FLAGS[spot] == 0)) || CREATE+=(--spot)
  run "${CREATE[@]}"
fi

if has_step code; then
  if [[ -n ${FLAGS[repo]} ]]; then
    CLONE="rm -rf rin_diffusion && git clone -q $(quote "${FLAGS[repo]}") rin_diffusion"
    [[ -z ${FLAGS[ref]} ]] || CLONE+=" && git -C rin_diffusion checkout -q $(quote "${FLAGS[ref]}")"
    run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all "--command=$CLONE"
  else
    TARBALL="${TMPDIR:-/tmp}/rin_diffusion-$NAME.tar.gz"
    run tar -czf "$TARBALL" -C "$REPO_DIR" --exclude=__pycache__ --exclude='*.egg-info' \
      rin_diffusion configs launch setup.py pyproject.toml
    run "${TPU[@]}" scp "$TARBALL" "$NAME:rin_diffusion.tar.gz" "${WHERE[@]}" --worker=all
    UNPACK="rm -rf rin_diffusion && mkdir rin_diffusion"
    UNPACK+=" && tar -xzf rin_diffusion.tar.gz -C rin_diffusion"
    run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all "--command=$UNPACK"
  fi
fi

if has_step install; then
  run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all "--command=$INSTALL_REMOTE"
fi

if has_step train; then
  run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all "--command=$TRAIN_REMOTE"
fi

if has_step delete; then
  run "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
fi
