"""CDM's U-Net stages: the Appendix-B configs as written, their counts, and a tiny U-Net cascade
with learned variances that trains, resumes and samples through the cascade's own entry points.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import test_unet
import trainer_utils

from rin_diffusion import config_lib, paper_configs, schedules, train
from rin_diffusion.cascade import pipeline as pipeline_lib
from rin_diffusion.cascade import stage as stage_lib
from rin_diffusion.cascade import stage_configs
from rin_diffusion.tools import param_table

REPO = trainer_utils.REPO

# Appendix B of the CDM paper (Ho et al. 2021, "Cascaded Diffusion Models for High Fidelity Image
# Generation"), typed from its hyperparameter tables:
# file -> (base channels, multipliers, res blocks, attention resolutions, heads, head dim, batch,
# learning rate, steps, dropout, T of the training process or 0 (continuous), schedule family,
# learned variances, sampling steps).
APPENDIX_B = {
    "unet_imagenet_32": (256, (1, 2, 3, 4), 6, (8, 16), 4, 0, 2048, 1e-4, 700_000, 0.1, 4000,
                         "cosine", True, 4000),
    "unet_imagenet_32_64": (256, (1, 2, 3, 4), 5, (8, 16), 4, 0, 2048, 1e-4, 400_000, 0.1, 4000,
                            "cosine", True, 4000),
    "unet_imagenet_64_128": (128, (1, 2, 4, 8, 8), 3, (16,), 1, 0, 1024, 1e-4, 500_000, 0.0, 0,
                             "linear", False, 100),
    "unet_imagenet_64_256": (128, (1, 2, 4, 4, 8, 8), 3, (16,), 1, 0, 1024, 1e-4, 500_000, 0.0,
                             0, "linear", False, 100),
    "unet_lsun_64": (128, (1, 2, 3, 4), 3, (8, 16, 32), 0, 64, 2048, 3e-4, 100_000, 0.1, 0,
                     "cosine", False, 256),
    "unet_lsun_64_128": (64, (1, 2, 4, 6, 8), 3, (8, 16, 32), 0, 64, 1024, 2e-4, 220_000, 0.1, 0,
                         "cosine", False, 256),
}


def _load(name: str, arg: str = ""):
  path = os.path.join(REPO, "configs", "cdm", f"{name}.py")
  return paper_configs.load_config(f"{path}:{arg}" if arg else path)


@pytest.mark.parametrize("name", sorted(APPENDIX_B))
def test_stage_configs_are_appendix_b_as_written(name):
  (channels, mult, blocks, attention, heads, head_dim, batch, lr, steps, dropout, timesteps,
   family, learned, sampling_steps) = APPENDIX_B[name]
  c = _load(name)
  config_lib.validate(c)
  u = c.unet
  assert c.model.architecture == "unet"
  assert (u.base_channels, tuple(u.channel_mult), u.num_res_blocks) == (channels, mult, blocks)
  assert sorted(u.attention_resolutions) == sorted(attention)
  assert (u.num_heads, u.head_dim, u.dropout) == (heads, head_dim, dropout)
  assert u.style == ("sr3" if c.model.image_size >= 128 else "ddpm")
  assert (c.batch_size, c.optimizer.learning_rate, c.total_steps) == (batch, lr, steps)
  assert (c.optimizer.name, c.optimizer.weight_decay, c.optimizer.ema_decay) == ("adam", 0, 0.9999)
  d = c.diffusion
  assert (d.timesteps, d.learned_variance, d.pred_type, d.loss_target) == (
      timesteps, learned, "eps", "eps")
  assert d.loss_weighting == "constant" and d.self_cond_rate == 0.0
  assert c.sampling.fid_steps == sampling_steps and c.sampling.fid_guidance == 0.0
  assert c.sampling.fid_sampler == ("ddpm_learned" if learned else "ddpm")
  # The schedule family, checked by its values rather than its name.
  gamma = np.asarray(schedules.gamma_fn(d.train_schedule)(np.array([0.25, 0.5, 0.75], np.float32)))
  if family == "cosine":  # Improved DDPM: cos^2((t + s) / (1 + s) pi / 2) / f(0), s = 0.008.
    f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    expected = f(np.array([0.25, 0.5, 0.75])) / f(0.0)
    np.testing.assert_allclose(gamma, expected, rtol=2e-3)  # T = 4000: beta clipping is at t ~ 1.
  else:  # DDPM-linear betas over 2000 steps: alpha-bar = prod(1 - beta_i), scaled to 1000 / T.
    betas = np.linspace(0.5e-4, 0.01, 2000)
    expected = [np.prod(1 - betas[:k]) for k in (500, 1000, 1500)]
    np.testing.assert_allclose(gamma, expected, rtol=1e-4)
  if c.cascade.aug_level_max > 0:  # The augmentation process is the stage below's inference one.
    below = {"unet_imagenet_32_64": "unet_imagenet_32", "unet_lsun_64_128": "unet_lsun_64"}[name]
    assert c.cascade.aug_schedule == _load(below).diffusion.infer_schedule


def _closed_form(c) -> int:
  return test_unet.closed_form_count(
      image_size=c.model.image_size, channels=c.model.channels,
      extra_in_channels=c.model.extra_in_channels, num_extra_tokens=c.model.num_extra_tokens,
      num_classes=c.model.num_classes, learned_variance=c.diffusion.learned_variance,
      **{k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in c.unet.items()
         if k in ("base_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
                  "num_heads", "head_dim", "style", "norm_groups")})


def test_param_table_cascade_counts_and_pipeline_totals():
  counts = param_table.cascade_counts()
  by_file = {}
  for (dataset, name), path in stage_configs.UNET_STAGE_FILES.items():
    stem = os.path.basename(path)[:-3]
    c = _load(stem)
    assert counts[f"{dataset} {name}"] == _closed_form(c), stem
    by_file[stem] = counts[f"{dataset} {name}"]
    runlocal = _load(stem, "runlocal")
    assert param_table.count_config_params(runlocal) == _closed_form(runlocal), stem
  table = param_table.render_cascade()
  base, sr64 = by_file["unet_imagenet_32"], by_file["unet_imagenet_32_64"]
  for last, paper in (("unet_imagenet_64_128", 1058), ("unet_imagenet_64_256", 1953)):
    total = (base + sr64 + by_file[last]) / 1e6
    assert f"| {total:.1f} | {paper} | {(total - paper) / paper * 100:+.1f} % |" in table
  for count in by_file.values():
    assert f"{count:,}" in table


@pytest.mark.parametrize("change, fragment", [
    (dict(architecture="rin"), "config.model.architecture='rin': learned variances need 'unet'"),
    (dict(timesteps=1000), "needs a discrete process"),
    (dict(pred_type="v"), "config.diffusion.pred_type='v': learned variances need 'eps'"),
    (dict(self_cond_rate=0.9), "config.diffusion.self_cond_rate=0.9: must be 0 with"),
    (dict(learned_variance=False), "config.sampling.sampler='ddpm_learned' needs "
     "config.diffusion.learned_variance=True"),
])
def test_bad_learned_variance_configs_name_the_field(change, fragment):
  c = _load("fashion_mnist_16", "tiny,unet")
  config_lib.validate(c)
  for field, value in change.items():
    section = c.model if field == "architecture" else c.diffusion
    section[field] = value
  with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
    config_lib.validate(c)


# ------------------------------------------------------------------------------------------------
# A tiny U-Net cascade (configs/cdm/pipeline_fashion_mnist.py:tiny,unet) on fake data.


def _pipeline(root: str, *, truncated: bool = False):
  manual_dir, data_dir = trainer_utils.fake_fashion_mnist(root)
  p = _load("pipeline_fashion_mnist", "tiny,unet" + (",truncated" if truncated else ""))
  for stage in p.stages:
    stage["config"] = os.path.join(REPO, stage["config"])
    stage["overrides"] = {"dataset.manual_dir": manual_dir, "dataset.data_dir": data_dir}
    if "levels" in stage:
      stage["levels"] = (0.0, 0.3)
  return p


@pytest.fixture(scope="module")
def unet_cascade(tmp_path_factory):
  """Both tiny U-Net stages trained by the cascade's --mode=train path; sr32 interrupted at 3."""
  root = str(tmp_path_factory.mktemp("unet_cascade"))
  p = _pipeline(root)
  p.stages[1]["overrides"]["total_steps"] = 3
  pipeline_lib.train_stages(p, root)  # base16 to 6 steps, sr32 to 3.
  p = _pipeline(root)
  pipeline_lib.train_stages(p, root)  # base16 is done; sr32 resumes to 6.
  return root


def test_unet_stage_resumes_bit_exactly(unet_cascade, tmp_path):
  p = _pipeline(unet_cascade)
  resumed, straight = pipeline_lib.load_stages(p), pipeline_lib.load_stages(p)
  sr = straight[1].config  # The stage that was interrupted, now trained without a break.
  train.train_and_evaluate(sr, str(tmp_path / "sr32"), conditioning=stage_lib.conditioning(sr))
  os.symlink(os.path.join(unet_cascade, "base16"), tmp_path / "base16")
  pipeline_lib.restore_stages(resumed, unet_cascade)  # EMA parameters.
  pipeline_lib.restore_stages(straight, str(tmp_path))
  leaves_a, leaves_b = jax.tree.leaves(resumed[1].params), jax.tree.leaves(straight[1].params)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("truncated", [False, True])
def test_unet_cascade_samples_with_learned_variances(unet_cascade, tmp_path, truncated):
  p = _pipeline(unet_cascade, truncated=truncated)
  assert [s["sampler"] for s in p.stages] == ["ddpm_learned", "ddpm_learned"]
  out = str(tmp_path / "out")
  summary = pipeline_lib.run(p, unet_cascade, out)
  assert summary["stages"][1]["branches"] == ["s0", "s0.3"]
  directory = summary["stages"][1]["directory"]  # sr32/<key of its settings>
  for branch in ("s0", "s0.3"):
    images = pipeline_lib.load_images(out, directory, branch, 8)
    assert images.shape == (8, 32, 32, 1) and images.dtype == np.uint8
    assert images.std() > 0  # Not a constant image: the sampler ran with noise.
    assert os.path.exists(os.path.join(out, directory, branch, "grid.png"))


def test_unet_trains_the_same_on_an_fsdp_mesh_with_sharded_parameters(tmp_path):
  """Learned-variance U-Net, 4 steps: one device against data 4 x fsdp 2 (losses and params)."""
  manual_dir, data_dir = trainer_utils.fake_fashion_mnist(str(tmp_path))
  runs = {}
  for name, (data, fsdp) in {"one": (1, 1), "fsdp": (4, 2)}.items():
    c = _load("fashion_mnist_16", "tiny,unet")
    c.dataset.manual_dir, c.dataset.data_dir = manual_dir, data_dir
    c.total_steps, c.checkpoint_every_steps, c.sample_every_steps = 4, 4, 0
    c.optimizer.decay = "constant"
    c.mesh.data, c.mesh.fsdp = data, fsdp
    workdir = str(tmp_path / name)
    state = train.train_and_evaluate(c, workdir, devices=jax.devices()[:data * fsdp])
    runs[name] = (trainer_utils.step_losses(workdir), state["params"])
  (losses_one, params_one), (losses_fsdp, params_fsdp) = runs["one"], runs["fsdp"]
  assert sorted(losses_one) == sorted(losses_fsdp) == [1, 2, 3, 4]
  for step, loss in losses_one.items():
    assert abs(losses_fsdp[step] - loss) <= 1e-5 * abs(loss), (step, losses_fsdp[step], loss)
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves(params_fsdp)]
  assert sum("fsdp" in jax.tree.leaves(tuple(spec)) for spec in specs) >= len(specs) // 3
  # Adam's m / (sqrt(v) + eps) turns reduction-order round-off of near-zero gradients into
  # visible steps: allow 1 % of one lr-sized (1e-3) step.
  for a, b in zip(jax.tree.leaves(jax.device_get(params_one)),
                  jax.tree.leaves(jax.device_get(params_fsdp))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
