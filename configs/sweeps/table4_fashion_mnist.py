r"""Table 4 of Chen 2023 offline: the best input scale b per resolution, on Fashion-MNIST at 2 cores.

  python -m rin_diffusion.tools.sweep configs/sweeps/table4_fashion_mnist.py \
      --workdir_root=/tmp/table4 --launcher=python          # runs (or resumes) the 12 members
  python -m rin_diffusion.tools.paper_tables --sweep=configs/sweeps/table4_fashion_mnist.py \
      --workdir_root=/tmp/table4 --layout=grid               # the table in the paper's layout

The paper (Table 4) fixes gamma(t) (cosine@0.2,1,1 or 1-t) and finds the best b at 1.0 at 64x64,
0.6 at 128x128 and 0.3-0.4 at 256x256: the more pixels carry the same content, the more noise
(smaller b) training needs. Here the content is fixed (Fashion-MNIST, 28x28 padded to a 32x32
canvas) and only its redundancy changes: the canvas is upsampled bicubically to R = 32, 64 or 128
(`dataset.pad_to = 32`, `dataset.image_size = R`: 1x, 4x and 16x pixels per content pixel), and
the model sees it through patches of R/8 (4, 8, 16), i.e. always the same 64 interface tokens, so
every run costs about the same. The patch embedding's overlap scales with the patch (R/16 pixels:
2, 4, 8), so at every R the network reads the same window of content. 'paper_fid' is the paper's
FID of the cell with the same redundancy factor: our 32 -> their 64, 64 -> 128, 128 -> 256
(ImageNet 64x64 is taken as 1x; 128 and 256 carry 4x and 16x the pixels of the same scene).

Every member: configs/fashion_mnist.py (the demo's model and optimiser), batch 4, TOTAL_STEPS
steps, one evaluation at the end with the same sampler (ddpm_small, 25 steps, guidance 3),
1,000 samples, 2,000 real reference images at the member's own resolution (the reference and the
CAS classifier are built at dataset.image_size with the same pad_to, so each resolution is scored
against real images at that resolution) and the true CAS (a classifier trained on the samples,
tested on the real test split).

Arguments (`table4_fashion_mnist.py:ARG`, comma-separated tokens):
  (none)   the 12 cells: R in 32/64/128 x b in 1.0/0.7/0.5/0.3, gamma = 1-t ('linear').
  cosine   12 more: the same cells with gamma = cosine@0.2,1,1.
  seeds    a second seed (seed=1) of the cells that decide the trend (DECIDING_CELLS).
  tiny     the same members with configs/fashion_mnist.py:tiny's model, 2 steps at batch 8, no
           grid and a 16-sample evaluation without the CAS classifier: for tests
           (tests/test_table4_offline.py).

Budget: TOTAL_STEPS = 8,000 steps at batch 4 per member, so that the 12 members fit in about two
hours alone on the project's 2-core machine. Wall-clock timing could not be measured when this file
was written: two training jobs at nice 5 held both cores and a `nice -n 15` process got well under
1 % of a core (a CPU-time probe of the train step at 32/64/128 got less than 1 CPU-second in 80
seconds). The budget therefore scales what the demo measured alone (docs/demo.md: this model at
R = 32 trains at 44.3 steps/s; its 1,000-sample evaluation takes 2.4 minutes, about 75 s of
sampling and 70 s of Inception features; the 2,000 reference images take 5 minutes once and the
real-data classifier 2) by the closed-form cost of each resolution:
  * the network: 51 M multiply-adds per image in the latents, reads and writes (64 tokens at every
    R), plus the stem (64 tokens x (p + 2 o)^2 x 64) and the 3x3-token output head
    (64 x 9 x 64 x p^2): 0.85 / 3.4 / 13.6 M at R = 32 / 64 / 128, so a forward pass costs
    1.00 / 1.05 / 1.24 x the R = 32 one. Assumed training speed (a margin for the large stem
    convolutions, which XLA on CPU runs less efficiently than matmuls): 44 / 40 / 33 steps/s.
  * the CAS classifier (evaluation/classifier.py's Cnn, 4x4/4 and 2x2/2 patch convolutions and a
    dense layer): 1.1 / 4.5 / 18 M multiply-adds per image at R = 32 / 64 / 128.
Per resolution (4 members each), minutes:
                                      R = 32    R = 64    R = 128
  training, 8,000 steps x 4          4 x 3.0   4 x 3.3   4 x 4.0     = 41.5
  evaluation (sampling x 1.00 / 1.05 / 1.24, Inception, CAS 300 steps x 128 images)
                                     4 x 2.5   4 x 2.7   4 x 3.6     = 35.2
  one-time reference (2,000 images)      5         5         5       = 15
  one-time real classifier (8 epochs)    2         3.5      12.5     = 18
  start-up, compilation and the final 10x10 grid, about 40 s per member  = 8
  total                                                                about 118 minutes
The R = 32 members do not reuse the demo's cached reference (pad_to = 32 instead of 0: the same
images, another cache key); the cost is in the table. The estimate is to be checked on the first
member: its metrics.jsonl records steps_per_sec and its eval/step_8000.json the evaluation's
sampling_s, inception_s and classifier_s (docs/table4_offline.md).
"""

from __future__ import annotations

from typing import Any

from rin_diffusion import paper_configs

RESOLUTIONS = (32, 64, 128)
CONTENT_SIZE = 32  # Fashion-MNIST's 28x28 on the demo's 32x32 canvas, then resized to R.
TOKENS_PER_SIDE = 8  # patch = R / 8: 64 interface tokens at every resolution.
# Our resolution -> the paper's with the same number of pixels per content pixel (1x, 4x, 16x).
PAPER_RESOLUTION = {32: 64, 64: 128, 128: 256}
INPUT_SCALES = (1.0, 0.7, 0.5, 0.3)
# The paper's gamma(t) names -> our schedule specs; index = column of paper_configs.TABLE4 cells.
SCHEDULES = {"1-t": "linear", "cosine@0.2,1,1": "cosine@0.2,1,1"}
TOTAL_STEPS = 8000  # Two hours for the 12 members (the arithmetic above).
BATCH_SIZE = 4
# The comparisons that decide the trend: at 1x redundancy b = 1.0 should beat b = 0.3, at 16x
# the reverse. The 'seeds' argument repeats these four cells with seed 1.
DECIDING_CELLS = ((32, 1.0), (32, 0.3), (128, 1.0), (128, 0.3))
ARGS = ("cosine", "seeds", "tiny")


def member_name(resolution: int, schedule: str, input_scale: float, seed: int = 0) -> str:
  """'t4fm-r32-lin-b1p0' (seed 0) or 't4fm-r32-lin-b1p0-s1': the workdir under --workdir_root."""
  slug = "lin" if schedule == "linear" else "cos0p2"
  name = f"t4fm-r{resolution}-{slug}-b{input_scale:.1f}".replace(".", "p")
  return name + (f"-s{seed}" if seed else "")


def paper_fid(resolution: int, schedule: str, input_scale: float) -> float:
  """The paper's Table 4 FID of the cell with the same redundancy factor and schedule."""
  column = paper_configs.TABLE4_SCHEDULES.index(
      "linear" if schedule == "linear" else "cosine@0.2,1,1")
  return paper_configs.TABLE4[input_scale][PAPER_RESOLUTION[resolution]][column]


def member(resolution: int, schedule: str, input_scale: float, seed: int = 0,
           tiny: bool = False) -> dict[str, Any]:
  """One cell: configs/fashion_mnist.py at resolution R with input scale b and gamma `schedule`."""
  patch = resolution // TOKENS_PER_SIDE
  total_steps = 2 if tiny else TOTAL_STEPS
  m = {
      "name": member_name(resolution, schedule, input_scale, seed),
      "config": "configs/fashion_mnist.py" + (":tiny" if tiny else ""),
      "paper_fid": paper_fid(resolution, schedule, input_scale),
      "paper_resolution": PAPER_RESOLUTION[resolution],
      "seed": seed,
      "dataset.image_size": resolution,
      "dataset.pad_to": CONTENT_SIZE,
      "model.image_size": resolution,
      "model.patch_size": patch,
      "model.stem_overlap": patch // 2,  # 2 content pixels of each neighbour, as the demo's.
      "diffusion.train_schedule": schedule,
      "diffusion.input_scale": input_scale,
      "total_steps": total_steps,
      "batch_size": 8 if tiny else BATCH_SIZE,  # Tests split a batch over 8 host devices.
      "optimizer.warmup_steps": 1 if tiny else 200,
      # Checkpoints at each quarter, so a stopped sweep loses at most a quarter of one run
      # (SIGTERM saves one at once: rin_diffusion/exit_status.py).
      "checkpoint_every_steps": max(total_steps // 4, 1),
      "sample_every_steps": 0 if tiny else total_steps,  # One 10x10 grid at the end.
      "eval_every_steps": total_steps,  # One evaluation, at the end.
      # The same evaluation at every cell (the demo's protocol).
      "sampling.fid_sampler": "ddpm_small",
      "sampling.fid_steps": 2 if tiny else 25,
      "sampling.fid_guidance": 3.0,
      "eval_num_samples": 16 if tiny else 1000,
      "eval.num_reference": 16 if tiny else 2000,
      "eval.cas": not tiny,
  }
  return m


def _parse(arg: str) -> set[str]:
  tokens = {t.strip() for t in arg.split(",") if t.strip()}
  unknown = tokens - set(ARGS)
  if unknown:
    raise ValueError(f"table4_fashion_mnist.py:{arg}: unknown {sorted(unknown)}; allowed: "
                     f"comma-separated {', '.join(ARGS)}.")
  return tokens


def get_sweep(arg: str = "") -> list[dict[str, Any]]:
  tokens = _parse(arg)
  tiny = "tiny" in tokens
  schedules = ["linear"] + (["cosine@0.2,1,1"] if "cosine" in tokens else [])
  sweep = [member(r, s, b, tiny=tiny)
           for s in schedules for r in RESOLUTIONS for b in INPUT_SCALES]
  if "seeds" in tokens:
    sweep += [member(r, s, b, seed=1, tiny=tiny) for s in schedules for r, b in DECIDING_CELLS]
  return sweep
