#!/usr/bin/env bash
# Train rin_diffusion on a TPU slice obtained through a queued resource, so that a preempted (Spot)
# or repaired slice resumes by itself: the slice's startup script installs the code and starts the
# trainer at every boot, and the trainer resumes from the latest checkpoint in --workdir.
#
#   launch/queued_resources.sh --name=rin-in256 --zone=us-west4-a --accelerator=v5litepod-256 \
#       --config=configs/imagenet256.py --workdir=gs://BUCKET/runs/in256 \
#       --tfds_data_dir=gs://BUCKET/tensorflow_datasets --provisioning=spot [--dry-run]
#   launch/queued_resources.sh --action=watch ...same flags...   # keep it alive until DONE
#
# Arguments after `--` go to the trainer verbatim. See launch/README.md.
set -euo pipefail

PROG=$(basename "$0")
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<EOT
Usage: $PROG --name=NAME --zone=ZONE --accelerator=TYPE (--config=PATH[:ARG] | --pipeline=PATH[:ARG])
           --workdir=gs://...|/shared/path [--job=train|sample|eval]
           [--tfds_data_dir=...] [--version=RUNTIME] [--project=P]
           [--provisioning=on-demand|spot|reserved] [--repo=GIT_URL [--ref=REF]]
           [--action=create|watch|status|delete] [--poll_seconds=300] [--max_restarts=3]
           [--python_version=3.11] [--dry-run] [-- PROGRAM_FLAGS...]

  --name            Queued-resource id; the TPU node gets the same name.
  --zone, --accelerator, --version, --project
                    As for launch/tpu_vm.sh (e.g. --accelerator=v4-64 or v5litepod-256).
  --provisioning    on-demand (default), spot (preemptible, cheapest) or reserved.
  --config          Config file relative to the repo root, with an optional :ARG: runs
                    python -m rin_diffusion.main (a run, or one cascade stage).
  --pipeline        A cascade's pipeline file instead: runs python -m rin_diffusion.cascade.
  --job             train (default), sample or eval (--config: main's --mode); train or sample
                    (--pipeline: the cascade's --mode).
  --workdir         Run directory on GCS, or an absolute path every worker mounts (Filestore,
                    NFS). The launcher keeps its files under WORKDIR/launch/: the code tarball,
                    and per job (train, eval, ..., cascade-train) JOB/DONE once the program
                    finished and JOB/exit/WORKER (its exit status and log tail) when it stopped.
  --tfds_data_dir   TFDS data dir holding the prepared dataset (default: \$TFDS_DATA_DIR).
  --repo, --ref     The workers clone this git repository (at REF) instead of downloading a
                    tarball of this checkout from WORKDIR/launch/.
  --action          create: upload the code, write the startup script, request the slice.
                    watch: keep the job alive until it finishes (see below).
                    status: describe the queued resource. delete: delete it (and its node).
  --poll_seconds    watch: seconds between polls.
  --max_restarts    watch: restarts of a program that crashed (exit status 1, or killed) on a
                    live slice before it gives up; preemptions never count.
  --python_version  Python for the workers' virtualenv (made with uv; default 3.11).
  --dry-run         Print the commands, one per line, instead of running them (the startup
                    script is still written, and its path printed as a '#' comment).

watch, every --poll_seconds: JOB/DONE exists: delete the queued resource, exit 0. The resource is
FAILED or SUSPENDED (preempted) or gone: delete and re-create it. It is ACTIVE and a worker's
program has stopped: exit status 75 (preempted, checkpoint saved) or a crash: run the startup
script again on every worker (which resumes); 2 (bad input) or 3 (diverged), or more than
--max_restarts crashes: print the log's tail, delete the queued resource, exit with that status.
EOT
}

declare -A FLAGS=(
  [name]="" [zone]="" [accelerator]="" [version]="" [project]="" [provisioning]="on-demand"
  [config]="" [pipeline]="" [job]="train" [workdir]="" [tfds_data_dir]="${TFDS_DATA_DIR:-}"
  [repo]="" [ref]="" [action]="create" [poll_seconds]=300 [max_restarts]=3 [python_version]="3.11"
)
BOOLEAN_FLAGS=" "
TRAINER_ARGS=()

# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"

parse_flags "$@"
check_tpu_flags
[[ ${FLAGS[action]} =~ ^(create|watch|status|delete)$ ]] ||
  die "--action='${FLAGS[action]}': allowed: create, watch, status, delete"
[[ ${FLAGS[poll_seconds]} =~ ^[1-9][0-9]*$ ]] ||
  die "--poll_seconds='${FLAGS[poll_seconds]}': must be a positive integer"
[[ ${FLAGS[max_restarts]} =~ ^[0-9]+$ ]] ||
  die "--max_restarts='${FLAGS[max_restarts]}': must be an integer >= 0"
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
MARKERS="$WORKDIR/launch/$JOB"
STARTUP_SCRIPT="${TMPDIR:-/tmp}/rin_startup_$NAME.sh"

# Reading and writing the workdir: gs:// through gcloud storage, else a mounted path. The same
# functions go into the startup script, so the watcher and the workers agree on every marker.
STORE_FUNCTIONS=$(cat <<'EOT'
store_exists() { case $1 in gs://*) gcloud storage ls "$1" > /dev/null 2>&1 ;; *) test -e "$1" ;; esac; }
store_cat() { case $1 in gs://*) gcloud storage cat "$1" ;; *) cat "$1" ;; esac; }
store_put() {  # Standard input to $1, whole or not at all.
  case $1 in
    gs://*) gcloud storage cp -q - "$1" ;;
    *) mkdir -p "$(dirname "$1")" && cat > "$1.part.$$" && mv -f "$1.part.$$" "$1" ;;
  esac
}
store_rm() { case $1 in gs://*) gcloud storage rm -q "$1" > /dev/null 2>&1 || true ;; *) rm -f "$1" ;; esac; }
store_ls() {  # The names in folder $1, one a line.
  case $1 in
    gs://*) gcloud storage ls "$1/" 2> /dev/null | sed 's|.*/||' | grep -v '^$' || true ;;
    *) ls -1 "$1" 2> /dev/null || true ;;
  esac
}
EOT
)
eval "$STORE_FUNCTIONS"

# The startup script runs as root on every worker at every boot of the slice, and again when the
# watcher restarts a stopped program. It ends in the program's own exit status.
write_startup_script() {
  local fetch program
  if [[ -n ${FLAGS[repo]} ]]; then
    fetch="rm -rf rin_diffusion && git clone -q $(quote "${FLAGS[repo]}") rin_diffusion"
    [[ -z ${FLAGS[ref]} ]] || fetch+=" && git -C rin_diffusion checkout -q $(quote "${FLAGS[ref]}")"
  else
    fetch="rm -rf rin_diffusion && mkdir rin_diffusion"
    fetch+=" && store_cat $(quote "$CODE_URL") | tar -xz -C rin_diffusion"
  fi
  program=$(quote_all env "TFDS_DATA_DIR=${FLAGS[tfds_data_dir]}" ../rin_venv/bin/python \
    "${ENTRY[@]}" "--workdir=$WORKDIR" --distributed=auto "${TRAINER_ARGS[@]}")
  cat >"$STARTUP_SCRIPT" <<EOT
#!/bin/bash
# Generated by launch/queued_resources.sh for queued resource $NAME, job $JOB: installs
# rin_diffusion and runs $(quote_all "${ENTRY[@]}"), which resumes from $WORKDIR.
# RIN_ROOT, RIN_LOG and RIN_WORKER_ID override where it installs, logs and what it calls itself.
set -uo pipefail
RIN_ROOT=\${RIN_ROOT:-/opt/rin}
RIN_LOG=\${RIN_LOG:-/var/log/rin_diffusion.log}
WORKER=\${RIN_WORKER_ID:-\$(hostname)}
MARKERS=$(quote "$MARKERS")
mkdir -p "\$RIN_ROOT" "\$(dirname "\$RIN_LOG")"
exec >> "\$RIN_LOG" 2>&1
export HOME=\${HOME:-/root}
$STORE_FUNCTIONS
echo "rin_diffusion: \$(date -u +%FT%TZ) startup on \$WORKER"
if store_exists "\$MARKERS/DONE"; then
  echo "rin_diffusion: \$MARKERS/DONE exists: the job is complete; nothing to do."
  exit 0
fi
# Only the newest run of this script reports: a restart first stops the program it left behind.
echo \$\$ > "\$RIN_ROOT/owner"
if [[ -s \$RIN_ROOT/program.pid ]] && kill -0 "\$(cat "\$RIN_ROOT/program.pid")" 2> /dev/null; then
  old=\$(cat "\$RIN_ROOT/program.pid")
  echo "rin_diffusion: stopping the previous program (pid \$old)"
  kill -TERM "\$old" 2> /dev/null
  for _ in \$(seq 60); do kill -0 "\$old" 2> /dev/null || break; sleep 1; done
  kill -KILL "\$old" 2> /dev/null || true
fi
store_rm "\$MARKERS/exit/\$WORKER"
cd "\$RIN_ROOT" || exit 1
report() {  # The exit status and the log's tail, for the watcher; DONE only on completion.
  [[ \$(cat "\$RIN_ROOT/owner" 2> /dev/null) == "\$\$" ]] || exit "\$1"
  { echo "status=\$1 worker=\$WORKER time=\$(date -u +%FT%TZ)"; tail -n 40 "\$RIN_LOG"; } |
    store_put "\$MARKERS/exit/\$WORKER"
  if [[ \$1 == 0 ]]; then
    echo "finished \$(date -u +%FT%TZ) on \$WORKER" | store_put "\$MARKERS/DONE"
  fi
  exit "\$1"
}
$fetch || report 1
$(install_lines "${FLAGS[python_version]}") || report 1
cd rin_diffusion || report 1
$program &
pid=\$!
echo "\$pid" > "\$RIN_ROOT/program.pid"
# A preemption's shutdown signals this script too: pass it on, then wait for the checkpoint.
trap 'kill -TERM "\$pid" 2> /dev/null' TERM
status=0
wait "\$pid" || status=\$?
while kill -0 "\$pid" 2> /dev/null; do status=0; wait "\$pid" || status=\$?; done
echo "rin_diffusion: \$(date -u +%FT%TZ) the program exited with status \$status"
report "\$status"
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

delete() {
  run "${QR[@]}" delete "$NAME" "${WHERE[@]}" --force --quiet
}

# Runs the startup script again on every worker of the live slice, detached from ssh.
RESTART_REMOTE="sudo nohup google_metadata_script_runner startup > /dev/null 2>&1 < /dev/null &"
restart() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${WHERE[@]}" --worker=all "--command=$RESTART_REMOTE"
}

upload_code() {
  [[ -z ${FLAGS[repo]} ]] || return 0
  local tarball="${TMPDIR:-/tmp}/rin_diffusion-$NAME.tar.gz"
  run tar -czf "$tarball" -C "$REPO_DIR" --exclude=__pycache__ --exclude='*.egg-info' \
    rin_diffusion configs launch setup.py pyproject.toml
  if [[ $CODE_URL == gs://* ]]; then
    run gcloud storage cp "$tarball" "$CODE_URL"
  else
    run mkdir -p "$(dirname "$CODE_URL")"
    run cp "$tarball" "$CODE_URL"
  fi
}

clear_exits() {
  local worker
  for worker in $(store_ls "$MARKERS/exit"); do
    store_rm "$MARKERS/exit/$worker"
  done
}

say() { echo "$PROG: $(date -u +%FT%TZ) $NAME: $*"; }

# The stopped workers' reports: one line 'STATUS WORKER' each.
exits() {
  local worker
  for worker in $(store_ls "$MARKERS/exit"); do
    store_cat "$MARKERS/exit/$worker" 2> /dev/null | head -n 1 |
      sed -n 's/^status=\([0-9]*\) worker=\([^ ]*\).*/\1 \2/p'
  done
}

give_up() {  # Status, reason, the worker whose log tail to show.
  say "$2; the log's tail on $3:" >&2
  store_cat "$MARKERS/exit/$3" | tail -n +2 >&2
  say "deleting the queued resource; the checkpoints in $WORKDIR are kept." >&2
  delete || true
  exit "$1"
}

watch() {
  local state restarts=0 status worker line crashed preempted
  while true; do
    if store_exists "$MARKERS/DONE"; then
      say "$MARKERS/DONE exists: the job is complete; deleting the queued resource."
      delete || true
      exit 0
    fi
    state=$("${QR[@]}" describe "$NAME" "${WHERE[@]}" '--format=value(state.state)' \
      2> /dev/null || echo MISSING)
    state=${state:-MISSING}
    say "$state"
    case $state in
      FAILED | SUSPENDED | MISSING)
        [[ $state == MISSING ]] || delete || true
        clear_exits
        create || say "re-creating failed; retrying in ${FLAGS[poll_seconds]} s." >&2
        ;;
      ACTIVE)
        crashed="" preempted=""
        while read -r line; do
          [[ -n $line ]] || continue
          status=${line%% *} worker=${line#* }
          case $status in
            0) ;;  # This worker finished; DONE follows from the first that did.
            2 | 3) give_up "$status" "the program on $worker exited with status $status" \
              "$worker" ;;
            75) preempted=$worker ;;
            *) crashed=$worker ;;
          esac
        done < <(exits)
        if [[ -n $crashed ]]; then
          restarts=$((restarts + 1))
          ((restarts <= FLAGS[max_restarts])) ||
            give_up 1 "the program crashed $restarts times (--max_restarts=${FLAGS[max_restarts]})" \
              "$crashed"
          say "the program crashed on $crashed: restart $restarts of ${FLAGS[max_restarts]}."
        elif [[ -n $preempted ]]; then
          say "the program on $preempted was preempted on a live slice: restarting it."
        fi
        if [[ -n $crashed || -n $preempted ]]; then
          clear_exits
          restart || say "restarting failed; retrying in ${FLAGS[poll_seconds]} s." >&2
        fi
        ;;
    esac
    sleep "${FLAGS[poll_seconds]}"
  done
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
    delete
    ;;
  watch)
    write_startup_script
    if ((DRY_RUN)); then
      echo "# every ${FLAGS[poll_seconds]} s: once $MARKERS/DONE exists, delete (below) and stop;"
      echo "# else read the state:"
      run "${QR[@]}" describe "$NAME" "${WHERE[@]}" '--format=value(state.state)'
      echo "# FAILED, SUSPENDED (preempted) or gone: delete and re-create"
      delete
      create
      echo "# ACTIVE, and a worker reported status 75 or a crash in $MARKERS/exit/: restart"
      restart
      exit 0
    fi
    watch
    ;;
esac
