#!/usr/bin/env bash
# Train rin_diffusion on a multi-node GPU cluster with SLURM. This file is both the submitter and
# the batch script:
#   * outside a job it submits itself: sbatch --nodes=N ... launch/slurm.sh <same flags>;
#   * inside a job (sbatch, or an salloc allocation) it starts the trainer on every task with srun.
#
#   launch/slurm.sh --nodes=4 --gpus_per_node=8 --config=configs/imagenet128.py \
#       --workdir=/shared/runs/in128 --tfds_data_dir=/shared/tensorflow_datasets [--dry-run]
#   sbatch --nodes=4 launch/slurm.sh --config=... --workdir=...    # also works
#
# Multi-process JAX: by default one task per node drives all the node's GPUs and gets the
# coordinator, process count and index explicitly (--coordinator_address/--num_processes/
# --process_id). With --tasks_per_node=gpu, one task per GPU uses --distributed=auto: jax's SLURM
# auto-detection then gives each process the GPU of its SLURM_LOCALID (it would give a single task
# per node only GPU 0, which is why the default does not use auto-detection).
# Arguments after `--` go to the trainer verbatim. See launch/README.md.
#SBATCH --job-name=rin_diffusion
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

PROG=$(basename "$0")
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)

usage() {
  cat <<EOT
Usage: $PROG (--config=PATH[:ARG] | --pipeline=PATH[:ARG]) --workdir=DIR [--job=train]
           [--nodes=1] [--gpus_per_node=8] [--signal_seconds=120]
           [--tasks_per_node=1|gpu] [--partition=P] [--account=A] [--time=HH:MM:SS]
           [--job_name=rin_diffusion] [--tfds_data_dir=DIR] [--python=python3] [--repo_dir=DIR]
           [--mode=auto|submit|run] [--dry-run] [-- TRAINER_FLAGS...]

  --config          Config file relative to the repo root, with an optional :ARG: runs
                    python -m rin_diffusion.main (a run, or one cascade stage).
  --pipeline        A cascade's pipeline file instead: runs python -m rin_diffusion.cascade.
  --job             train (default), sample or eval (--config: main's --mode); train or sample
                    (--pipeline: the cascade's --mode).
  --signal_seconds  SLURM sends SIGTERM this long before the time limit (sbatch --signal): the
                    program saves a checkpoint and exits 75, and the job requeues itself, as it
                    does when the program is preempted. 0: no early signal.
  --workdir         Run directory on storage every node sees (or gs://...). Re-submitting with the
                    same workdir resumes from its latest checkpoint.
  --nodes           Number of nodes (default 1; inside a job: the job's node count).
  --gpus_per_node   GPUs per node (default 8; inside a job: \$SLURM_GPUS_ON_NODE when set).
  --tasks_per_node  1 (default): one process per node, explicit coordinator flags; 'gpu': one
                    process per GPU with --distributed=auto (jax's SLURM auto-detection).
  --partition, --account, --time, --job_name
                    Passed to sbatch.
  --tfds_data_dir   TFDS data dir with the prepared dataset (default: \$TFDS_DATA_DIR; if unset,
                    TFDS's default).
  --python          Python of the environment with rin_diffusion installed (default: python3).
  --repo_dir        The rin_diffusion checkout on the nodes (default: this script's repo, or the
                    job's working directory when sbatch runs a copy of this file).
  --mode            auto (default): submit outside a job, run inside one (\$SLURM_JOB_ID set).
  --dry-run         Print the commands, one per line, instead of running them (submit mode also
                    prints the srun command the job will run).
EOT
}

declare -A FLAGS=(
  [config]="" [pipeline]="" [job]="train" [signal_seconds]=120 [workdir]="" [nodes]="" [gpus_per_node]="" [tasks_per_node]=1 [partition]=""
  [account]="" [time]="" [job_name]="rin_diffusion" [tfds_data_dir]="${TFDS_DATA_DIR:-}"
  [python]="python3" [repo_dir]="" [mode]="auto"
)
BOOLEAN_FLAGS=" "
TRAINER_ARGS=()

# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

parse_flags "$@"
require workdir
[[ ${FLAGS[signal_seconds]} =~ ^[0-9]+$ ]] ||
  die "--signal_seconds='${FLAGS[signal_seconds]}': must be an integer >= 0"
[[ ${FLAGS[mode]} =~ ^(auto|submit|run)$ ]] ||
  die "--mode='${FLAGS[mode]}': allowed: auto, submit, run"
MODE=${FLAGS[mode]}
if [[ $MODE == auto ]]; then
  MODE=submit
  [[ -z ${SLURM_JOB_ID:-} ]] || MODE=run
fi
if [[ $MODE == run ]]; then
  FLAGS[nodes]=${FLAGS[nodes]:-${SLURM_JOB_NUM_NODES:-1}}
  FLAGS[gpus_per_node]=${FLAGS[gpus_per_node]:-${SLURM_GPUS_ON_NODE:-8}}
else
  FLAGS[nodes]=${FLAGS[nodes]:-1}
  FLAGS[gpus_per_node]=${FLAGS[gpus_per_node]:-8}
fi
for key in nodes gpus_per_node; do
  [[ ${FLAGS[$key]} =~ ^[1-9][0-9]*$ ]] || die "--$key='${FLAGS[$key]}': must be a positive integer"
done
case ${FLAGS[tasks_per_node]} in
  1) TASKS_PER_NODE=1 ;;
  gpu) TASKS_PER_NODE=${FLAGS[gpus_per_node]} ;;
  *) die "--tasks_per_node='${FLAGS[tasks_per_node]}': allowed: 1, gpu" ;;
esac
if [[ -n ${FLAGS[repo_dir]} ]]; then
  REPO_DIR=$(cd "${FLAGS[repo_dir]}" && pwd) || die "--repo_dir='${FLAGS[repo_dir]}' does not exist"
elif [[ -f $SCRIPT_DIR/../rin_diffusion/main.py ]]; then
  REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
else
  REPO_DIR=$PWD  # sbatch ran a spooled copy of this file; --chdir (set by submit) is the repo.
fi
entry_command

# What every task runs.
TRAIN=(env)
[[ -z ${FLAGS[tfds_data_dir]} ]] || TRAIN+=("TFDS_DATA_DIR=${FLAGS[tfds_data_dir]}")
TRAIN+=("${FLAGS[python]}" "${ENTRY[@]}"
  "--workdir=${FLAGS[workdir]}" "${TRAINER_ARGS[@]}")
# --kill-on-bad-exit=0: after a preemption every task exits 75, one a moment after the other;
# killing the rest at the first 75 would turn the step's status into 137 and lose the requeue. A
# task that crashes takes the others down through jax's coordination service instead.
SRUN=(srun "--nodes=${FLAGS[nodes]}" "--ntasks-per-node=$TASKS_PER_NODE" --gpu-bind=none
  --kill-on-bad-exit=0)
# shellcheck disable=SC2016  # The single-quoted $... are expanded by each task's shell.
if ((TASKS_PER_NODE == 1)); then
  # Process 0 runs on the job's first node; the port is derived from the job id, as jax does.
  PER_TASK='exec "$@"'
  PER_TASK+=' --coordinator_address="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
  PER_TASK+=':$((SLURM_JOB_ID % 4096 + 61440))"'
  PER_TASK+=' --num_processes="$SLURM_NTASKS" --process_id="$SLURM_PROCID"'
  SRUN+=(bash -c "$PER_TASK" rin_diffusion "${TRAIN[@]}")
else
  SRUN+=("${TRAIN[@]}" --distributed=auto)
fi

if [[ $MODE == submit ]]; then
  SBATCH=(sbatch "--nodes=${FLAGS[nodes]}" "--ntasks-per-node=$TASKS_PER_NODE"
    "--gpus-per-node=${FLAGS[gpus_per_node]}" "--job-name=${FLAGS[job_name]}" "--chdir=$REPO_DIR"
    "--output=$REPO_DIR/slurm-%x-%j.out")
  [[ -z ${FLAGS[partition]} ]] || SBATCH+=("--partition=${FLAGS[partition]}")
  [[ -z ${FLAGS[account]} ]] || SBATCH+=("--account=${FLAGS[account]}")
  [[ -z ${FLAGS[time]} ]] || SBATCH+=("--time=${FLAGS[time]}")
  # Requeueable, and warned before the time limit, so a long run goes on in the next allocation.
  SBATCH+=(--requeue)
  ((FLAGS[signal_seconds] == 0)) || SBATCH+=("--signal=TERM@${FLAGS[signal_seconds]}")
  SBATCH+=("$REPO_DIR/launch/slurm.sh" --mode=run "--repo_dir=$REPO_DIR")
  for key in config pipeline job workdir nodes gpus_per_node tasks_per_node tfds_data_dir python; do
    [[ -z ${FLAGS[$key]} ]] || SBATCH+=("--$key=${FLAGS[$key]}")
  done
  ((${#TRAINER_ARGS[@]} == 0)) || SBATCH+=(-- "${TRAINER_ARGS[@]}")
  run "${SBATCH[@]}"
  if ((DRY_RUN)); then
    echo "# the job then runs, from $REPO_DIR:"
    run "${SRUN[@]}"
  fi
else
  cd "$REPO_DIR"
  if ((DRY_RUN)); then
    run "${SRUN[@]}"
    echo "# exit status 75 (preempted, or SIGTERM before the time limit): requeue the job:"
    run scontrol requeue "${SLURM_JOB_ID:-JOB_ID}"
    exit 0
  fi
  status=0
  "${SRUN[@]}" || status=$?
  if ((status == 75)); then
    echo "$PROG: the program saved a checkpoint and exited 75 (preempted): requeueing job" \
      "$SLURM_JOB_ID, which resumes it." >&2
    scontrol requeue "$SLURM_JOB_ID"
  fi
  exit "$status"
fi
