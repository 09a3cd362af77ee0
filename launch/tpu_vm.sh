#!/usr/bin/env bash
# Train rin_diffusion on a Cloud TPU VM slice (single host or pod): create the slice, put the code
# on every worker, install it, and run the same trainer command on all workers at once.
#
#   launch/tpu_vm.sh --name=rin-in64 --zone=us-central2-b --accelerator=v4-64 \
#       --config=configs/imagenet64.py --workdir=gs://BUCKET/runs/in64 \
#       --tfds_data_dir=gs://BUCKET/tensorflow_datasets [--dry-run] [-- --config.x=y ...]
#
# Arguments after `--` go to the trainer verbatim (e.g. --config.batch_size=512).
# The program resumes from the latest checkpoint in --workdir, so `--resume` after a crash or a
# preemption continues the run (re-creating a preempted Spot slice). See launch/README.md.
set -euo pipefail

PROG=$(basename "$0")
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<EOF
Usage: $PROG --name=NAME --zone=ZONE --accelerator=TYPE (--config=PATH[:ARG] | --pipeline=PATH[:ARG])
           --workdir=gs://...|/shared/path [--job=train|sample|eval]
           [--tfds_data_dir=...] [--version=RUNTIME] [--project=P] [--spot]
           [--repo=GIT_URL [--ref=REF]] [--steps=create,code,install,train] [--resume]
           [--detach] [--python_version=3.11] [--dry-run] [-- PROGRAM_FLAGS...]

  --name            TPU VM name (lowercase letters, digits, '-').
  --zone            e.g. us-central2-b (v4), us-west4-a (v5e).
  --accelerator     Slice type, e.g. v4-8, v4-64, v5litepod-256, v5p-128, v6e-64.
  --version         TPU runtime; default by family: v2/v3/v4 tpu-ubuntu2204-base,
                    v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e.
  --project         GCP project (default: gcloud's configured project).
  --spot            Create a Spot slice (preemptible; --resume brings it back).
  --config          Config file relative to the repo root, with an optional :ARG: runs
                    python -m rin_diffusion.main (a run, or one cascade stage).
  --pipeline        A cascade's pipeline file instead: runs python -m rin_diffusion.cascade.
  --job             train (default), sample or eval (--config: main's --mode); train or sample
                    (--pipeline: the cascade's --mode).
  --workdir         Run directory on GCS, or an absolute path every worker mounts.
  --tfds_data_dir   TFDS data dir holding the prepared dataset (default: \$TFDS_DATA_DIR).
  --repo, --ref     Clone this git repository (at REF) on the workers instead of copying this
                    checkout (the default copies rin_diffusion/, configs/, launch/ and packaging).
  --steps           Comma-separated subset of create,code,install,train,delete (in that order).
                    Default: create,code,install,train. 'delete' deletes the slice only after
                    the program exited 0 (complete); it is refused with --detach, which would
                    delete the slice under the program it just started.
  --resume          Bring the run back after a preemption or a crash: read the slice's state;
                    READY: train again (the program resumes from --workdir); PREEMPTED,
                    TERMINATED or STOPPED: delete it, then create, code, install and train;
                    gone: create, code, install and train. Replaces --steps.
  --detach          Start the program in the background on each worker (log: ~/rin_train.log,
                    ending in its exit status) instead of streaming its output over ssh.
  --python_version  Python for the workers' virtualenv (made with uv; default 3.11).
  --dry-run         Print the commands, one per line, instead of running them.

Without --detach the script ends in the program's exit status (launch/README.md, "Exit status"):
0 complete, 75 preempted (rerun with --resume), 3 diverged, 2 bad input, 1 crash.
EOF
}

declare -A FLAGS=(
  [name]="" [zone]="" [accelerator]="" [version]="" [project]="" [spot]=0 [config]=""
  [pipeline]="" [job]="train" [workdir]="" [tfds_data_dir]="${TFDS_DATA_DIR:-}" [repo]=""
  [ref]="" [detach]=0 [resume]=0 [steps]="" [python_version]="3.11"
)
BOOLEAN_FLAGS=" spot detach resume "
TRAINER_ARGS=()

# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

parse_flags "$@"
check_tpu_flags

PROJECT=()
[[ -z ${FLAGS[project]} ]] || PROJECT=("--project=${FLAGS[project]}")
TPU=(gcloud compute tpus tpu-vm)
WHERE=("--zone=$ZONE" "${PROJECT[@]}")

if ((FLAGS[resume])); then
  [[ -z ${FLAGS[steps]} ]] || die "--resume and --steps: --resume picks the steps itself"
  if ((DRY_RUN)); then
    echo "# --resume reads the slice's state; READY: train only; PREEMPTED, TERMINATED, STOPPED:"
    echo "# delete, then create,code,install,train (gone: the same without delete):"
    run "${TPU[@]}" describe "$NAME" "${WHERE[@]}" '--format=value(state)'
    FLAGS[steps]=recreate,create,code,install,train
  else
    state=$("${TPU[@]}" describe "$NAME" "${WHERE[@]}" '--format=value(state)' 2> /dev/null ||
      echo MISSING)
    echo "$PROG: $NAME is ${state:-MISSING}"
    case ${state:-MISSING} in
      READY) FLAGS[steps]=train ;;
      MISSING) FLAGS[steps]=create,code,install,train ;;
      PREEMPTED | TERMINATED | STOPPED) FLAGS[steps]=recreate,create,code,install,train ;;
      *) die "--resume: $NAME is $state; wait until it is READY, PREEMPTED or gone" ;;
    esac
  fi
fi
FLAGS[steps]=${FLAGS[steps]:-create,code,install,train}
IFS=, read -r -a STEPS <<<"${FLAGS[steps]}"
for step in "${STEPS[@]}"; do
  [[ $step =~ ^(recreate|create|code|install|train|delete)$ ]] ||
    die "--steps: unknown step '$step'; allowed: create, code, install, train, delete"
done
has_step() { [[ ",${FLAGS[steps]}," == *",$1,"* ]]; }
if ((FLAGS[detach])) && has_step delete; then
  die "--steps=${FLAGS[steps]} with --detach: 'delete' would delete the slice under the" \
    "program it just started; run --steps=delete once it has finished"
fi

# The program every worker runs (from ~/rin_diffusion; the venv is ~/rin_venv).
PROGRAM=(env "TFDS_DATA_DIR=${FLAGS[tfds_data_dir]}" ../rin_venv/bin/python "${ENTRY[@]}"
  "--workdir=$WORKDIR" --distributed=auto "${TRAINER_ARGS[@]}")
if ((FLAGS[detach])); then
  DETACHED="$(quote_all "${PROGRAM[@]}"); echo \"rin_diffusion: exit status \$?\""
  TRAIN_REMOTE="cd rin_diffusion && nohup setsid bash -c $(quote "$DETACHED")"
  TRAIN_REMOTE+=" > ../rin_train.log 2>&1 < /dev/null &"
else
  TRAIN_REMOTE="cd rin_diffusion && $(quote_all "${PROGRAM[@]}")"
fi

INSTALL_REMOTE=$(install_lines "${FLAGS[python_version]}" | tr "\n" " ")

if has_step recreate; then  # A preempted Spot slice cannot restart: it must be made anew.
  run "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
fi

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
  status=0
  run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all "--command=$TRAIN_REMOTE" || status=$?
  case $status in
    0) ;;
    75) echo "$PROG: preempted (75): the checkpoint is durable; rerun with --resume." >&2 ;;
    2) echo "$PROG: bad input (2): see the error line above; nothing was changed." >&2 ;;
    3) echo "$PROG: diverged (3): a non-finite loss stopped the run." >&2 ;;
    *) echo "$PROG: the program exited with status $status; rerun with --resume." >&2 ;;
  esac
  ((status == 0)) || exit "$status"
fi

if has_step delete; then
  run "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
fi
