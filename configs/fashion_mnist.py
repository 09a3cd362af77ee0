"""Built-in offline default: a small class-conditional RIN on Fashion-MNIST (padded to 32x32).

Runs on a laptop CPU with no network: the data comes from Debian's `dataset-fashion-mnist`
package through the TFDS builder in `rin_diffusion/data/fashion_mnist.py`.

  python -m rin_diffusion.main --config=configs/fashion_mnist.py --workdir=/tmp/fmnist

`get_config('tiny')` shrinks everything further for tests (same structure, seconds per run).
"""

from rin_diffusion import config_lib


def get_config(arg: str = ""):
  c = config_lib.base_config()
  # About 28 minutes of training on 2 CPU cores (40-44 steps/s). At a fixed time, more steps at a
  # smaller batch win down to batch 4: 6,000 steps at batch 32, 10,800 at 16, 16,000 at 8 and
  # 21,000 at 4 score FID 127.3, 115.2, 108.1 and 103.5 (the last two in less time); batch 2 lets
  # CAS fall to 76 % (docs/demo_diagnosis.md, rows 34-46). 34,000 steps at batch 4 (14 minutes)
  # score 84.2, 68,000 score 68.5 (rows 47-48).
  c.total_steps = 68000
  c.batch_size = 4
  c.log_every_steps = 100
  c.checkpoint_every_steps = 17000
  c.sample_every_steps = 34000

  c.dataset.name = "fashion_mnist"
  c.dataset.image_size = 32
  c.dataset.channels = 1
  c.dataset.num_classes = 10
  c.dataset.random_flip = False  # Clothes are left-right symmetric enough; flips add nothing here.
  c.dataset.num_workers = 0

  c.model.image_size = 32
  c.model.channels = 1
  c.model.num_classes = 10
  c.model.patch_size = 4  # 64 interface tokens.
  # Narrow (1.4 M parameters): at a fixed 20 minutes, 3,000 steps of this model beat 1,000 of one
  # twice as wide (tape 128, latents 256): FID 216 vs 243, CAS 67 % vs 48 % (docs/demo_diagnosis.md,
  # rows 8-9). The budget, not the width, limits the demo.
  c.model.tape_dim = 64
  c.model.latent_slots = 34  # 32 learned latents + time + class.
  c.model.latent_dim = 128
  c.model.blocks = (2, 2)
  c.model.latent_heads = 4
  c.model.rw_heads = 4
  # At this budget (a few thousand steps at batch 64) the reference's std-0.02 latent table cannot keep
  # the learned latents apart: after training they are one vector (pairwise cosine 0.99) and
  # the read -> latents -> write route carries no layout. Started at std 1 they stay distinct.
  # A fixed sin-cos interface position replaces a learned table that would stay at 4 % of the
  # token content. docs/demo_diagnosis.md has the measurements.
  c.model.latent_pos_init_std = 1.0
  c.model.tape_pos = "sincos"
  # Local routes at the two ends (not RIN's): a fresh RIN denoises each patch from its own pixels,
  # and in a few thousand steps it learns little else, so the samples' detail is made patch by
  # patch. Letting the patch embedding see 2 pixels of each neighbouring patch and the output
  # projection read the 3x3 token neighbourhood lowers FID from 186.5 to 160.2 (rows 17 and 23).
  c.model.stem_overlap = 2
  c.model.out_kernel = 3

  c.diffusion.train_schedule = "sigmoid@-3,3,0.9"  # The reference CIFAR-10 schedule (small images).
  c.diffusion.infer_schedule = "cosine"
  c.diffusion.label_dropout = 0.1  # Enables classifier-free guidance for the sample grids.
  # The reference RIN predicts eps with an unweighted eps loss. At this 30-minute budget a v head
  # gave visibly cleaner samples (same model, same 2,000 steps: the eps run left speckle noise in
  # every grid); the ImageNet configs keep the reference eps recipe. The plain v loss beats
  # Min-SNR-5 on every number (FID 206.8 / 203.3 vs 216.3, CAS 70.0 / 72.6 % vs 66.8 %, two seeds;
  # docs/demo_diagnosis.md row 11): Min-SNR-5 barely trains the high-noise steps that lay out
  # the garment.
  c.diffusion.pred_type = "v"
  c.diffusion.loss_target = "v"
  c.diffusion.loss_weighting = "constant"

  # AdamW rather than the reference LAMB: LAMB moves each kernel and table by at most lr times
  # its own norm per step, which 1,000 steps cannot afford (docs/demo_diagnosis.md, row 8).
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 200
  c.optimizer.decay = "cosine@1.0"
  c.optimizer.ema_decay = 0.999
  c.optimizer.ema_warmup = True  # A short run: an un-warmed 0.999 EMA would lag the model badly.

  # DPM-Solver++(2M) SDE on the uniform-t grid, 12 calls: the cheapest setting that matches the
  # former default (ddpm_small, 25 calls) on the demo checkpoint, FID-1000 68.3 against 68.5 at
  # half the network evaluations (ddpm_small at 12: 71.8; docs/samplers.md). Stochastic, because
  # this model's errors are largest at low noise and fresh noise washes them out (deterministic
  # solvers trail at equal calls); uniform_t, not the solver's default logsnr, because logsnr
  # spends its steps at that low noise (91.7 against 79.5 FID-500 at 12 calls).
  c.sampling.sampler = "dpmpp_2m_sde"
  c.sampling.steps = 12
  c.sampling.time_grid = "uniform_t"
  # Classifier-free guidance w = 3 for the grids and the evaluation alike: it lowers FID (160.2 ->
  # 139.5) and raises CAS (69.3 -> 91.8 %) against w = 0 (docs/demo_diagnosis.md, rows 23-26).
  c.sampling.guidance = 3.0
  c.sampling.num_samples = 100  # A 10x10 grid, one row per class.
  c.sampling.fid_sampler = "dpmpp_2m_sde"
  c.sampling.fid_steps = 12
  c.sampling.fid_guidance = 3.0

  # Evaluation at the end of the run (and with --mode=eval): FID, precision/recall and CAS of
  # 1,000 samples against 2,000 training images, the scale on which 1,000 real test images score
  # FID 21.7. On 2 CPU cores about 2.5 minutes (sampling, then Inception features), and once
  # per machine (then cached) about 5 minutes for the reference images and 2 for the CAS
  # classifier. For FID-10k: --config.eval_num_samples=10000 --config.eval.num_reference=10000.
  c.eval_every_steps = c.total_steps
  c.eval_num_samples = 1000
  c.eval_batch_size = 64
  c.eval.num_reference = 2000
  c.eval.cas = True

  if arg == "tiny":
    # Same structure, minimal size: for tests and smoke runs.
    c.total_steps = 6
    c.batch_size = 8
    c.log_every_steps = 1
    c.checkpoint_every_steps = 3
    c.sample_every_steps = 6
    c.model.patch_size = 8
    c.model.tape_dim = 32
    c.model.latent_slots = 10
    c.model.latent_dim = 32
    c.model.blocks = (1, 1)
    c.model.latent_heads = 2
    c.model.rw_heads = 2
    c.optimizer.warmup_steps = 2
    c.sampling.steps = 4
    c.sampling.num_samples = 10
    c.sampling.fid_steps = 4
    c.eval_every_steps = 0
    c.eval_num_samples = 16
    c.eval_batch_size = 16
    c.eval.num_reference = 16
  elif arg:
    raise ValueError(f"configs/fashion_mnist.py: unknown variant {arg!r}; allowed: '' or 'tiny'.")
  return c
