"""The cascade end to end on tiny stages: training pairs, conditioning, pipeline sampling, bad input.

Stages are configs/cdm/fashion_mnist_16.py:tiny (base) and fashion_mnist_16_32.py:tiny (16 -> 32),
trained a few steps on a 64-image synthetic Fashion-MNIST.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import PIL.Image
import pytest
import trainer_utils

from rin_diffusion import generate, paper_configs, schedules, train
from rin_diffusion.cascade import pipeline as pipeline_lib
from rin_diffusion.cascade import stage as stage_lib
from rin_diffusion.data import pipeline as data_pipeline

REPO = trainer_utils.REPO
BASE = os.path.join(REPO, "configs", "cdm", "fashion_mnist_16.py") + ":tiny"
SR = os.path.join(REPO, "configs", "cdm", "fashion_mnist_16_32.py") + ":tiny"
LEVELS = (0.0, 0.2, 0.4)


def _data_overrides(root: str) -> dict[str, str]:
  manual_dir, data_dir = trainer_utils.fake_fashion_mnist(root)
  return {"dataset.manual_dir": manual_dir, "dataset.data_dir": data_dir,
          "optimizer.decay": "constant"}


def _stage_config(spec: str, overrides: dict) -> ml_collections.ConfigDict:
  config = paper_configs.load_config(spec)
  for dotted, value in overrides.items():
    section, field = dotted.split(".")
    config[section][field] = value
  return config


def _train(spec: str, workdir: str, overrides: dict, total_steps: int | None = None):
  config = _stage_config(spec, overrides)
  if total_steps is not None:
    config.total_steps = total_steps
  conditioning = stage_lib.conditioning_or_none(config)
  return train.train_and_evaluate(config, workdir, conditioning=conditioning)


def _pipeline(root: str, *, truncated: bool = False, levels=LEVELS, extra_stage: dict | None = None,
              num_samples: int = 8, batch_size: int = 8) -> ml_collections.ConfigDict:
  data = _data_overrides(root)
  p = ml_collections.ConfigDict()
  p.num_samples, p.batch_size, p.grid_samples, p.seed, p.classes = num_samples, batch_size, 8, 3, ""
  p.stages = [
      dict(name="base16", config=BASE, overrides=dict(data), sampler="ddim", steps=3,
           guidance=1.0),
      dict(name="sr32", config=SR, overrides=dict(data), sampler="ddim", steps=3, guidance=1.0,
           truncated=truncated, levels=levels),
  ]
  if extra_stage is not None:
    p.stages = p.stages + [extra_stage]
  return p


@pytest.fixture(scope="module")
def cascade_dir(tmp_path_factory):
  """Trained tiny stages; sr32 is trained 3 steps, then resumed to 6."""
  root = str(tmp_path_factory.mktemp("cascade"))
  data = _data_overrides(root)
  _train(BASE, os.path.join(root, "base16"), data)
  _train(SR, os.path.join(root, "sr32"), data, total_steps=3)
  state = _train(SR, os.path.join(root, "sr32"), data)  # Resumes at step 3.
  return root, state


# ------------------------------------------------------------------------------------------------
# Training pairs and conditioning.


def _unit(image: np.ndarray) -> np.ndarray:
  return image.astype(np.float32) / 127.5 - 1.0


def test_pairs_share_crop_canvas_and_flip(tmp_path):
  config = _stage_config(SR, {**_data_overrides(str(tmp_path)), "dataset.random_flip": True})
  source = data_pipeline.make_source(config.dataset)
  batches = data_pipeline.make_iterator(config, source=source)
  batch = batches.get_batch(0)
  indices, flips = batches.indices_and_flips(0)
  batches.close()
  assert batch["low_res"].shape == (8, 16, 16, 1) and batch["image"].shape == (8, 32, 32, 1)
  assert flips.any() and not flips.all()
  for row, (index, flip) in enumerate(zip(indices, flips)):
    raw = np.asarray(source[int(index)]["image"])[..., 0]  # 28x28 uint8.
    canvas = np.pad(raw, 2)  # Centred on the 32 canvas, as the target is.
    expected = np.asarray(PIL.Image.fromarray(canvas).resize(
        (16, 16), PIL.Image.Resampling.BICUBIC, reducing_gap=None))
    if flip:
      expected = expected[:, ::-1]
      canvas = canvas[:, ::-1]
    np.testing.assert_array_equal(batch["image"][row, :, :, 0], _unit(canvas))
    np.testing.assert_array_equal(batch["low_res"][row, :, :, 0], _unit(expected))


def test_base_data_is_the_sr_stage_condition(tmp_path):
  """The 16 base with pad_to 32 trains on exactly the SR stage's unflipped low-resolution images."""
  data = _data_overrides(str(tmp_path))
  base, sr = _stage_config(BASE, data), _stage_config(SR, data)
  source = data_pipeline.make_source(base.dataset)
  base_images = data_pipeline.first_examples(source, base.dataset, 8)["image"]
  sr_low = data_pipeline.first_examples(source, sr.dataset, 8, low_resolution=16)["low_res"]
  np.testing.assert_array_equal(base_images, sr_low)


def test_extra_inputs_shape_token_and_normalisation():
  config = paper_configs.load_config(SR)
  z = jax.random.uniform(jax.random.key(0), (4, 16, 16, 1), minval=-1, maxval=1)
  levels = jnp.asarray([0.0, 0.1, 0.3, 0.5])
  extras = stage_lib.extra_inputs(z, levels, config)
  assert extras["extra_channels"].shape == (4, 32, 32, 1)
  gamma = schedules.gamma_fn("cosine")(levels)
  np.testing.assert_allclose(extras["extra_gammas"][:, 0], [1.0, *np.asarray(gamma)[1:]],
                             rtol=1e-6)
  # b = 1: z_s enters unscaled; bicubic upsampling keeps the mean of a constant image.
  flat = jnp.full((1, 16, 16, 1), 0.3)
  np.testing.assert_allclose(stage_lib.extra_inputs(flat, jnp.zeros(1), config)["extra_channels"],
                             0.3, atol=1e-6)
  # b = 0.5: divided by the analytic std sqrt((b^2 - 1) gamma + 1), so z_0 = b z becomes z again.
  config.cascade.aug_input_scale = 0.5
  np.testing.assert_allclose(
      stage_lib.extra_inputs(0.5 * flat, jnp.zeros(1), config)["extra_channels"], 0.3, atol=1e-6)
  # A blur-only stage has no level token.
  config.cascade.aug_level_max = 0.0
  assert "extra_gammas" not in stage_lib.extra_inputs(z, jnp.zeros(4), config)


def test_training_conditioning_levels_in_range_and_grid_unblurred():
  config = paper_configs.load_config(SR)
  config.cascade.blur_prob = 1.0
  cond = stage_lib.conditioning(config)
  z = jax.random.uniform(jax.random.key(1), (256, 16, 16, 1), minval=-1, maxval=1)
  extras = cond.train({"low_res": z}, jax.random.key(2))
  gammas = np.asarray(extras["extra_gammas"][:, 0])
  gamma_at_max = float(schedules.gamma_fn("cosine")(jnp.float32(0.5)))
  assert gammas.min() >= gamma_at_max - 1e-6 and gammas.max() <= 1.0
  assert gammas.std() > 0.05  # Amortised: one level per example.
  grid = cond.grid({"low_res": z}, jax.random.key(2))  # sample_level 0: z itself, no blur.
  np.testing.assert_allclose(grid["extra_channels"],
                             jax.image.resize(z, (256, 32, 32, 1), "bicubic"), atol=1e-6)
  np.testing.assert_array_equal(grid["extra_gammas"], 1.0)


def test_conditioning_or_none_only_for_super_resolution_stages():
  assert isinstance(stage_lib.conditioning_or_none(paper_configs.load_config(SR)),
                    train.Conditioning)
  base = paper_configs.load_config(os.path.join(REPO, "configs", "fashion_mnist.py") + ":tiny")
  assert stage_lib.conditioning_or_none(base) is None
  with pytest.raises(ValueError, match="not a super-resolution stage"):
    stage_lib.conditioning(base)


def test_guidance_keeps_the_low_resolution_image_in_the_null_condition(cascade_dir):
  """With a model that ignores its class, guidance must change nothing: (1 + w) c - w u = c
  holds only if the null condition still carries the same low-resolution image."""
  root, _ = cascade_dir
  stages = pipeline_lib.load_stages(_pipeline(root))
  pipeline_lib.restore_stages(stages, root)
  sr = stages[1]
  params = jax.tree.map(jnp.asarray, sr.params)
  params["class_proj"] = jax.tree.map(jnp.zeros_like, params["class_proj"])  # Class-blind.
  z = jax.random.uniform(jax.random.key(4), (8, 16, 16, 1), minval=-1, maxval=1)
  extra = stage_lib.extra_inputs(z, jnp.zeros(8), sr.config)
  labels = jnp.arange(8) % 10
  outs = [generate.sample_output(sr.model, sr.config, params, jax.random.key(5), labels,
                                 sampler="ddim", steps=3, guidance=w, extra_cond=extra).x0
          for w in (0.0, 3.0)]
  np.testing.assert_allclose(outs[0], outs[1], atol=2e-5)


# ------------------------------------------------------------------------------------------------
# Training, resuming, sampling.


def test_sr_stage_resume_matches_uninterrupted(cascade_dir, tmp_path):
  root, resumed = cascade_dir
  straight = _train(SR, str(tmp_path / "sr32"), _data_overrides(root))
  assert int(resumed["step"]) == int(straight["step"]) == 6
  for a, b in zip(jax.tree.leaves(resumed["params"]), jax.tree.leaves(straight["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _count_calls(monkeypatch) -> dict[str, int]:
  calls: dict[str, int] = {}
  make = pipeline_lib._make_stage_sampler

  def counting(stage):
    fn = make(stage)

    def wrapped(*args, **kwargs):
      calls[stage.name] = calls.get(stage.name, 0) + 1
      return fn(*args, **kwargs)
    return wrapped

  monkeypatch.setattr(pipeline_lib, "_make_stage_sampler", counting)
  return calls


def test_non_truncated_sweep_samples_the_base_once(cascade_dir, tmp_path, monkeypatch):
  root, _ = cascade_dir
  calls = _count_calls(monkeypatch)
  out = str(tmp_path / "out")
  summary = pipeline_lib.run(_pipeline(root, num_samples=12, batch_size=8), root, out)
  # Two batches (12 samples in batches of 8): the base twice, the SR stage twice per level.
  assert calls == {"base16": 2, "sr32": 2 * len(LEVELS)}
  assert summary["stages"][1]["branches"] == [f"s{level:g}" for level in LEVELS]
  for branch in ("s0", "s0.2", "s0.4"):
    images = pipeline_lib.load_images(out, "sr32", branch, 12)
    assert images.shape == (12, 32, 32, 1) and images.dtype == np.uint8
    assert os.path.exists(os.path.join(out, "sr32", branch, "grid.png"))
  assert pipeline_lib.load_images(out, "base16", "all", 12).shape == (12, 16, 16, 1)
  # Stored batches are never sampled again; a new level samples only itself.
  calls.clear()
  pipeline_lib.run(_pipeline(root, num_samples=12, batch_size=8, levels=LEVELS + (0.5,)), root,
                   out)
  assert calls == {"sr32": 2}


def test_truncated_handover_is_the_base_sampler_stopped_at_s(cascade_dir, tmp_path, monkeypatch):
  root, _ = cascade_dir
  calls = _count_calls(monkeypatch)
  out = str(tmp_path / "out")
  pipeline = _pipeline(root, truncated=True)
  pipeline_lib.run(pipeline, root, out)
  assert calls == {"base16": len(LEVELS), "sr32": len(LEVELS)}  # One base run per s*.
  stages = pipeline_lib.load_stages(pipeline)
  pipeline_lib.restore_stages(stages, root)
  base = stages[0]
  labels = generate.cycled_labels(10, 8)  # The pipeline: sample j has class j mod 10.
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 0), 0)  # Stage 0, batch 0.
  for level in LEVELS[1:]:
    expected = generate.sample_output(base.model, base.config, base.params, key,
                                      jnp.asarray(labels), sampler="ddim", steps=3, guidance=1.0,
                                      t_end=level).x_t
    stored = np.load(os.path.join(out, "base16", f"s{level:g}", "batch_00000.npz"))["state"]
    np.testing.assert_allclose(stored, np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert np.std(stored) > 0.5 * np.sqrt(1 - float(schedules.gamma_fn("cosine")(level)))


def test_three_stage_pipeline_samples(cascade_dir, tmp_path):
  root, _ = cascade_dir
  data = _data_overrides(root)
  sr64 = {**data, "dataset.image_size": 64, "model.image_size": 64, "cascade.low_resolution": 32,
          "dataset.pad_to": 32, "total_steps": 2}
  config = _stage_config(SR, {k: v for k, v in sr64.items() if "." in k})
  config.total_steps = 2
  train.train_and_evaluate(config, os.path.join(root, "sr64"),
                           conditioning=stage_lib.conditioning(config))
  third = dict(name="sr64", config=SR, overrides={k: v for k, v in sr64.items() if "." in k},
               sampler="ddim", steps=2, guidance=0.0, levels=(0.0, 0.3))
  out = str(tmp_path / "out")
  summary = pipeline_lib.run(_pipeline(root, levels=(0.1,), extra_stage=third), root, out)
  assert summary["stages"][2]["branches"] == ["s0.1-s0", "s0.1-s0.3"]
  assert pipeline_lib.load_images(out, "sr64", "s0.1-s0.3", 8).shape == (8, 64, 64, 1)


# ------------------------------------------------------------------------------------------------
# Bad input: one clear error, nothing written.


@pytest.mark.parametrize("change, fragment", [
    (lambda p: p.stages[1]["overrides"].update({"cascade.low_resolution": 8}),
     "low_resolution=8 does not match the output of stage 'base16'"),
    (lambda p: p.stages[1].update(levels=(0.2, 1.5)), "s*=1.5; allowed: numbers in [0, 1]"),
    (lambda p: p.stages[1]["overrides"].update({"cascade.upsample": "lanczos"}),
     "config.cascade.upsample='lanczos' is not allowed; allowed: nearest, bilinear, bicubic"),
    (lambda p: p.stages[1].update(name="missing"), "stage 'missing': no workdir"),
])
def test_bad_pipelines_write_nothing(cascade_dir, tmp_path, change, fragment):
  root, _ = cascade_dir
  pipeline = _pipeline(root)
  change(pipeline)
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=None) as error:
    pipeline_lib.run(pipeline, root, str(out))
  assert fragment in str(error.value)
  assert not out.exists()


def test_empty_stage_workdir_and_cli_error(cascade_dir, tmp_path):
  root, _ = cascade_dir
  os.makedirs(tmp_path / "work" / "base16")
  out = tmp_path / "out"
  with pytest.raises(ValueError, match="holds no checkpoint"):
    pipeline_lib.run(_pipeline(root), str(tmp_path / "work"), str(out))
  assert not out.exists()
  # The command line: one line on stderr, exit status 2.
  spec = os.path.join(REPO, "configs", "cdm", "pipeline_fashion_mnist.py") + ":tiny"
  result = subprocess.run(
      [sys.executable, "-m", "rin_diffusion.cascade", f"--pipeline={spec}",
       f"--workdir={tmp_path / 'work'}", f"--output={out}"],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if "error" in line]
  assert len(errors) == 1 and "holds no checkpoint" in errors[0], result.stderr[-2000:]
  assert not out.exists()


def test_samples_from_other_checkpoints_are_not_reused(cascade_dir, tmp_path):
  root, _ = cascade_dir
  out = tmp_path / "out"
  pipeline_lib.run(_pipeline(root, levels=(0.0,)), root, str(out))
  summary = json.loads((out / "summary.json").read_text())
  assert [stage["checkpoint_step"] for stage in summary["stages"]] == [6, 6]
  summary["stages"][0]["checkpoint_step"] = 3  # As if base16 had been trained on since.
  (out / "summary.json").write_text(json.dumps(summary))
  with pytest.raises(ValueError, match="made with stage 'base16' at checkpoint step 3, which is "
                                       "now at step 6"):
    pipeline_lib.run(_pipeline(root, levels=(0.0,)), root, str(out))
