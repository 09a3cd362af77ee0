#!/usr/bin/env bash
# Side by side with lucidrains' rin-pytorch (the peer) at one matched config, in one run:
# our train step (benchmarks/train_step.py), our sampler step (benchmarks/sample_step.py), then the
# peer (benchmarks/peer_rin_pytorch.py, run by the peer's own venv), each pinned to the same THREADS
# cores. Prints each benchmark's JSON line as it comes, and as its LAST line one JSON object with
# the ratios ours / peer (training images/s, seconds per sampling step) and the raw numbers.
# Everything it runs is in this repository; the peer's venv comes from the package registry.
#
# Matched config: 32x32x3, patch 4 (64 interface tokens x 256), 64 latents x 512 (+ the time token:
# the peer's --latent-token-time-cond appends one, our latent_slots counts it), 2 blocks x 2 latent
# layers, 8 heads, batch 16, unconditional, self-conditioning 0.9, v objective, sigmoid schedule,
# DDIM; float32 on CPU. See benchmarks/README.md for what still differs.
#
#   bash benchmarks/compare_peer.sh
#   THREADS=4 PEER_VENV=/tmp/peer bash benchmarks/compare_peer.sh
#
# Environment: PEER_VENV (default /tmp/peer; built with benchmarks/setup_peer.sh when missing),
# PEER_BENCH (the folder holding setup_peer.sh and peer_rin_pytorch.py, default benchmarks/ of
# this repository), PYTHON (ours, default .venv/bin/python),
# THREADS (default 2), STEPS (timed train steps, default 10; ours times at least 10, the fewest
# benchmarks/train_step.py takes a median of), SAMPLE_STEPS (peer's K, default 10),
# TIMEOUT_S (per benchmark, default 1800).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PEER_VENV="${PEER_VENV:-/tmp/peer}"
PEER_BENCH="${PEER_BENCH:-$REPO/benchmarks}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
THREADS="${THREADS:-2}"
STEPS="${STEPS:-10}"
SAMPLE_STEPS="${SAMPLE_STEPS:-10}"
OURS_STEPS=$(( STEPS > 10 ? STEPS : 10 ))
TIMEOUT_S="${TIMEOUT_S:-1800}"

if [[ ! -x "$PEER_VENV/bin/python" ]]; then
  echo "compare_peer: building the peer's venv in $PEER_VENV" >&2
  bash "$PEER_BENCH/setup_peer.sh" "$PEER_VENV" >&2
fi

# The first THREADS cores this process may use: both sides get the same ones.
CORES="$("$PYTHON" -c "import os, sys; n = int(sys.argv[1]); cores = sorted(os.sched_getaffinity(0))
if len(cores) < n: sys.exit(f'compare_peer: THREADS={n} but only {len(cores)} cores are available')
print(','.join(map(str, cores[:n])))" "$THREADS")"
pinned() { timeout "$TIMEOUT_S" taskset -c "$CORES" "$@"; }

OURS=(
  --config=configs/fashion_mnist.py
  --config.batch_size=16
  --config.dataset.channels=3 --config.model.channels=3
  --config.dataset.num_classes=0 --config.model.num_classes=0 --config.eval.cas=False
  --config.dataset.image_size=32 --config.model.image_size=32 --config.model.patch_size=4
  --config.model.tape_dim=256 --config.model.latent_slots=65 --config.model.latent_dim=512
  "--config.model.blocks=2,2" --config.model.latent_heads=8 --config.model.rw_heads=8
  --config.model.dtype=float32
  --config.diffusion.self_cond_rate=0.9 --config.diffusion.pred_type=v
  --config.diffusion.loss_target=v "--config.diffusion.train_schedule=sigmoid@-3,3,1"
  --config.sampling.sampler=ddim --config.sampling.guidance=0.0
  # The peer's optimizer as far as ours goes: Adam, betas (0.9, 0.99), clipping at 1 (EMA stays).
  --config.optimizer.name=adam --config.optimizer.weight_decay=0.0 --config.optimizer.b2=0.99
  --config.optimizer.clip_norm=1.0 --config.optimizer.learning_rate=1e-4
)
PEER=(
  --image-size 32 --channels 3 --patch-size 4 --dim 256 --dim-latent 512 --num-latents 64
  --depth 2 --latent-depth 2 --heads 8 --batch 16 --self-cond-prob 0.9 --objective v
  --noise-schedule sigmoid --sampler ddim --no-patches-self-attn --latent-token-time-cond --flash
  --threads "$THREADS" --steps "$STEPS" --sample-steps "$SAMPLE_STEPS"
)

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Each benchmark prints one JSON line on stdout (logs go to stderr); keep it and show it.
run_one() {
  local name="$1"
  shift
  echo "compare_peer: running $name on cores $CORES" >&2
  pinned "$@" >"$TMP/$name.out"
  grep '^{' "$TMP/$name.out" | tail -n 1 | tee "$TMP/$name.json"
}

run_one ours_train "$PYTHON" benchmarks/train_step.py "${OURS[@]}" --steps="$OURS_STEPS"
run_one ours_sample "$PYTHON" benchmarks/sample_step.py "${OURS[@]}"
run_one peer "$PEER_VENV/bin/python" "$PEER_BENCH/peer_rin_pytorch.py" "${PEER[@]}"

"$PYTHON" - "$TMP" "$THREADS" <<'EOF'
import json
import sys

folder, threads = sys.argv[1], int(sys.argv[2])
train, sample, peer = (json.load(open(f"{folder}/{name}.json"))
                       for name in ("ours_train", "ours_sample", "peer"))
ours_train, peer_train = train["images_per_s"], peer["train_images_per_s"]
ours_step = sample["step_ms"] / 1000
peer_step = peer["sample_step_s"]
print(json.dumps({
    "benchmark": "compare_peer",
    "threads": threads,
    "batch_size": train["batch_size"],
    "train_images_per_s_ratio_ours_over_peer": round(ours_train / peer_train, 3),
    "sample_step_time_ratio_ours_over_peer": round(ours_step / peer_step, 3),
    "ours_train_images_per_s": ours_train,
    "peer_train_images_per_s": peer_train,
    "peer_train_images_per_s_uncontended": peer.get("train_images_per_s_uncontended"),
    "ours_no_self_cond_images_per_s": train["no_self_cond_images_per_s"],
    "peer_no_self_cond_step_s": peer.get("train_step_s_median_no_selfcond"),
    "ours_sample_step_s": round(ours_step, 5),
    "peer_sample_step_s": peer_step,
    "peer_sample_call_s_median": peer.get("sample_call_s_median"),
    "ours_params": train["params"],
    "peer_params": peer["params"],
    "ours_forward_gflops_per_image_analytic": round(
        sample["analytic_flops_per_image_per_step"] / 1e9, 4),
    "peer_forward_gflops_per_image": peer.get("fwd_gflops_per_image"),
    "ours_train_gflops_per_image_analytic": round(train["analytic_flops_per_image"] / 1e9, 4),
    "ours_train_peak_fraction": train["peak_fraction"],
    "ours_matmul_peak_flops_per_s": train["matmul_peak_flops_per_s"],
    "ours_compile_s": train["compile_s"],
    "ours_peak_rss_bytes": max(train["peak_rss_bytes"], sample["peak_rss_bytes"]),
    "peer_peak_rss_bytes": round(peer["peak_rss_mib"] * 2**20),
    "peer_train_cpu_util": peer.get("train_cpu_util"),
    "peer_loadavg_1m_before_timed": peer.get("loadavg_1m_before_timed"),
}))
EOF
