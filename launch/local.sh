#!/usr/bin/env bash
# Train rin_diffusion on this machine (CPU, one GPU host, or one TPU VM host): one trainer process,
# or --processes=N processes that form one multi-process JAX job over localhost (for testing the
# multi-host code paths on a single machine).
#
#   launch/local.sh --config=configs/imagenet64.py:runlocal --workdir=/tmp/in64 [--dry-run]
#   launch/local.sh --config=configs/fashion_mnist.py --workdir=/tmp/fmnist \
#       -- --config.total_steps=100
#
# Arguments after `--` go to the trainer verbatim. Re-running with the same --workdir resumes from
# its latest checkpoint. See launch/README.md.
set -euo pipefail

PROG=$(basename "$0")
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<EOT
Usage: $PROG (--config=PATH[:ARG] | --pipeline=PATH[:ARG]) --workdir=DIR [--job=train]
           [--python=PY] [--tfds_data_dir=DIR]
           [--processes=1] [--port=12355] [--dry-run] [-- TRAINER_FLAGS...]

  --config          Config file relative to the repo root, with an optional :ARG: runs
                    python -m rin_diffusion.main (a run, or one cascade stage).
  --pipeline        A cascade's pipeline file instead: runs python -m rin_diffusion.cascade.
  --job             train (default), sample or eval (--config: main's --mode); train or sample
                    (--pipeline: the cascade's --mode).
  --workdir         Run directory (a relative path is made absolute from the current directory).
  --python          Interpreter with rin_diffusion installed (default: the repo's .venv if it
                    exists, else python3).
  --tfds_data_dir   TFDS data dir (default: \$TFDS_DATA_DIR; unset: TFDS's default).
  --processes       Number of trainer processes forming one JAX job over localhost:PORT.
  --port            Coordinator port for --processes > 1.
  --dry-run         Print the commands, one per line, instead of running them (with
                    --processes > 1 they run concurrently).
EOT
}

declare -A FLAGS=(
  [config]="" [pipeline]="" [job]="train" [workdir]="" [python]="" [tfds_data_dir]="${TFDS_DATA_DIR:-}" [processes]=1
  [port]=12355
)
BOOLEAN_FLAGS=" "
TRAINER_ARGS=()

# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

parse_flags "$@"
require workdir
entry_command
[[ ${FLAGS[processes]} =~ ^[1-9][0-9]*$ ]] ||
  die "--processes='${FLAGS[processes]}': must be a positive integer"
[[ ${FLAGS[port]} =~ ^[1-9][0-9]*$ ]] || die "--port='${FLAGS[port]}': must be a port number"
PYTHON=${FLAGS[python]}
if [[ -z $PYTHON ]]; then
  PYTHON=python3
  [[ ! -x $REPO_DIR/.venv/bin/python ]] || PYTHON=.venv/bin/python
fi

WORKDIR=${FLAGS[workdir]}
[[ $WORKDIR == /* || $WORKDIR == *://* ]] || WORKDIR=$PWD/$WORKDIR

cd "$REPO_DIR"
TRAIN=(env)
[[ -z ${FLAGS[tfds_data_dir]} ]] || TRAIN+=("TFDS_DATA_DIR=${FLAGS[tfds_data_dir]}")
TRAIN+=("$PYTHON" "${ENTRY[@]}" "--workdir=$WORKDIR"
  "${TRAINER_ARGS[@]}")

PROCESSES=${FLAGS[processes]}
if ((PROCESSES == 1)); then
  run "${TRAIN[@]}"
  exit 0
fi
PIDS=()
for ((i = 0; i < PROCESSES; i++)); do
  COMMAND=("${TRAIN[@]}" "--coordinator_address=localhost:${FLAGS[port]}"
    "--num_processes=$PROCESSES" "--process_id=$i")
  if ((DRY_RUN)); then
    run "${COMMAND[@]}"
  else
    "${COMMAND[@]}" &
    PIDS+=($!)
  fi
done
STATUS=0
for pid in "${PIDS[@]}"; do
  wait "$pid" || STATUS=$?
done
exit "$STATUS"
