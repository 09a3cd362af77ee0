"""The cascade end to end on tiny stages: training pairs, conditioning, pipeline sampling, bad input.

Stages are configs/cdm/fashion_mnist_16.py:tiny (base) and fashion_mnist_16_32.py:tiny (16 -> 32),
trained a few steps on a 64-image synthetic Fashion-MNIST.
"""

from __future__ import annotations

import json
import os
import shutil
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
              num_samples: int = 8, batch_size: int = 8, base_steps: int = 3
              ) -> ml_collections.ConfigDict:
  data = _data_overrides(root)
  p = ml_collections.ConfigDict()
  p.num_samples, p.batch_size, p.grid_samples, p.seed, p.classes = num_samples, batch_size, 8, 3, ""
  p.stages = [
      dict(name="base16", config=BASE, overrides=dict(data), sampler="ddim", steps=base_steps,
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
  """Calls of each stage's jitted sampler (one per batch, and per level above the base)."""
  calls: dict[str, int] = {}

  def counting(make):
    def make_counted(stage, *args):
      fn = make(stage, *args)

      def wrapped(*args, **kwargs):
        calls[stage.name] = calls.get(stage.name, 0) + 1
        return fn(*args, **kwargs)
      return wrapped
    return make_counted

  for name in ("_make_stage_sampler", "_make_chain_sampler"):
    monkeypatch.setattr(pipeline_lib, name, counting(getattr(pipeline_lib, name)))
  return calls


def _count_denoiser_calls(monkeypatch) -> dict[int, int]:
  """Denoiser calls as they run, by image size: a jax.debug.callback in the denoise fn fires every
  time the sampler's scan executes it (a Python counter would count traces)."""
  calls: dict[int, int] = {}
  make = generate.make_denoise_fn

  def counting(*args, **kwargs):
    denoise = make(*args, **kwargs)

    def counted(x_t, gamma, cond, hidden):
      size = x_t.shape[1]
      jax.debug.callback(lambda: calls.__setitem__(size, calls.get(size, 0) + 1))
      return denoise(x_t, gamma, cond, hidden)
    return counted

  monkeypatch.setattr(generate, "make_denoise_fn", counting)
  return calls


def _images(out: str, summary: dict, branch: str, stage: int = -1) -> np.ndarray:
  return pipeline_lib.load_images(out, summary["stages"][stage]["directory"], branch,
                                  summary["num_samples"])


def test_non_truncated_sweep_samples_the_base_once(cascade_dir, tmp_path, monkeypatch):
  root, _ = cascade_dir
  calls = _count_calls(monkeypatch)
  out = str(tmp_path / "out")
  summary = pipeline_lib.run(_pipeline(root, num_samples=12, batch_size=8), root, out)
  # Two batches (12 samples in batches of 8): the base twice, the SR stage twice per level.
  assert calls == {"base16": 2, "sr32": 2 * len(LEVELS)}
  assert summary["stages"][1]["branches"] == [f"s{level:g}" for level in LEVELS]
  for branch in ("s0", "s0.2", "s0.4"):
    images = _images(out, summary, branch)
    assert images.shape == (12, 32, 32, 1) and images.dtype == np.uint8
    assert os.path.exists(os.path.join(out, summary["stages"][1]["directory"], branch, "grid.png"))
  assert _images(out, summary, "all", stage=0).shape == (12, 16, 16, 1)
  # Stored batches are never sampled again; a new level samples only itself.
  calls.clear()
  pipeline_lib.run(_pipeline(root, num_samples=12, batch_size=8, levels=LEVELS + (0.5,)), root,
                   out)
  assert calls == {"sr32": 2}


def test_truncated_sweep_is_one_base_trajectory_stopped_at_every_level(cascade_dir, tmp_path,
                                                                     monkeypatch):
  """A truncated sweep over three levels costs the base `steps` denoiser calls in all (not three
  times that); the state stored at s is a single run's over [s, 1] on the same grid."""
  root, _ = cascade_dir
  denoiser_calls = _count_denoiser_calls(monkeypatch)
  out = str(tmp_path / "out")
  levels, steps = (0.0, 0.25, 0.5), 4  # Levels on the grid of 4 steps over [0, 1].
  pipeline = _pipeline(root, truncated=True, levels=levels, base_steps=steps)
  summary = pipeline_lib.run(pipeline, root, out)
  assert denoiser_calls == {16: steps, 32: len(levels) * 3}  # One batch; the SR stage: 3 steps.
  monkeypatch.undo()
  stages = pipeline_lib.load_stages(pipeline)
  pipeline_lib.restore_stages(stages, root)
  base = stages[0]
  labels = jnp.asarray(generate.cycled_labels(10, 8))  # The pipeline: sample j has class j mod 10.
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 0), 0)  # Stage 0, batch 0.
  base_dir = os.path.join(out, summary["stages"][0]["directory"])
  for level in levels:
    # [0.5, 1] in 2 steps, [0.25, 1] in 3, [0, 1] in 4: the trajectory's grid up to s, with the
    # self-conditioning latents carried across the stops.
    single = generate.sample_output(base.model, base.config, base.params, key, labels,
                                    sampler="ddim", steps=round(steps * (1 - level)),
                                    guidance=1.0, t_end=level)
    with np.load(os.path.join(base_dir, f"s{level:g}", "batch_00000.npz")) as stored:
      state, images = stored["state"], stored["images"].astype(int)
    np.testing.assert_allclose(state, np.asarray(single.x_t), rtol=1e-4, atol=1e-4)
    expected = pipeline_lib._to_uint8(np.asarray(single.x0)).astype(int)
    assert np.abs(images - expected).max() <= 1  # (Rounding.)
    if level > 0:  # Still noisy: the state at s, not an image.
      assert np.std(state) > 0.5 * np.sqrt(1 - float(schedules.gamma_fn("cosine")(level)))
  assert summary["stages"][1]["branches"] == [f"s{level:g}" for level in levels]


def test_truncated_sweep_needs_a_step_per_level(tmp_path):
  root = str(tmp_path)
  with pytest.raises(ValueError, match=r"pipeline.stages\[1\].levels: 3 levels of a truncated "
                                       r"sweep need stage 'base16' to take at least 3 steps"):
    pipeline_lib.load_stages(_pipeline(root, truncated=True, base_steps=2))


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
  assert _images(out, summary, "s0.1-s0.3").shape == (8, 64, 64, 1)


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


# ------------------------------------------------------------------------------------------------
# Stored samples: served only to a run with the same settings; any other run is stored apart.

STORED_LEVELS = (0.0, 0.2)


@pytest.fixture(scope="module")
def stored_run(cascade_dir, tmp_path_factory):
  """A non-truncated sweep's output, to be copied and sampled into again with other settings."""
  root, _ = cascade_dir
  out = str(tmp_path_factory.mktemp("stored") / "out")
  summary = pipeline_lib.run(_pipeline(root, levels=STORED_LEVELS), root, out)
  return out, summary


def _pretend_base_at_step_3(pipeline: ml_collections.ConfigDict, monkeypatch) -> None:
  restore = pipeline_lib.restore_stages

  def restore_then_move(stages, workdir):
    restore(stages, workdir)
    stages[0].step = 3  # As if base16 had been trained on (same parameters, another step).

  monkeypatch.setattr(pipeline_lib, "restore_stages", restore_then_move)


@pytest.mark.parametrize("change, expected_calls, new_images", [
    (lambda p, _: p.stages[1].update(truncated=True), {"base16": 1, "sr32": 2}, True),
    (lambda p, _: setattr(p, "seed", 4), {"base16": 1, "sr32": 2}, True),
    (lambda p, _: p.stages[0].update(sampler="ddpm"), {"base16": 1, "sr32": 2}, True),
    (lambda p, _: p.stages[1].update(steps=2), {"sr32": 2}, True),  # The base's samples serve.
    (lambda p, _: p.stages[1].update(guidance=0.0), {"sr32": 2}, True),
    (lambda p, _: setattr(p, "classes", "1,2"), {"base16": 1, "sr32": 2}, True),
    # Two batches of 8: the first is made as before (same key and labels), stored apart anyway.
    (lambda p, _: setattr(p, "num_samples", 16), {"base16": 2, "sr32": 4}, False),
    (_pretend_base_at_step_3, {"base16": 1, "sr32": 2}, False),  # The same parameters.
], ids=["truncated", "seed", "sampler", "steps", "guidance", "classes", "num_samples",
        "checkpoint_step"])
def test_other_settings_into_the_same_output_are_stored_apart(
    cascade_dir, stored_run, tmp_path, monkeypatch, change, expected_calls, new_images):
  root, _ = cascade_dir
  first_out, first = stored_run
  out = str(tmp_path / "out")
  shutil.copytree(first_out, out)
  calls = _count_calls(monkeypatch)
  pipeline = _pipeline(root, levels=STORED_LEVELS)
  with monkeypatch.context() as patch:
    change(pipeline, patch)
    second = pipeline_lib.run(pipeline, root, out)
  assert calls == expected_calls  # Sampled anew, not served the first run's images.
  first_dir, second_dir = first["stages"][1]["directory"], second["stages"][1]["directory"]
  assert first_dir != second_dir
  settings = [json.loads((tmp_path / "out" / d / "settings.json").read_text())
              for d in (first_dir, second_dir)]
  assert settings[0] != settings[1]
  for branch in (f"s{level:g}" for level in STORED_LEVELS):
    same = np.array_equal(_images(out, first, branch), _images(out, second, branch)[:8])
    assert same != new_images
  # The first run's samples are intact and still served to its settings, sampling nothing.
  calls.clear()
  again = pipeline_lib.run(_pipeline(root, levels=STORED_LEVELS), root, out)
  assert calls == {} and again["stages"][1]["directory"] == first_dir
  for branch in (f"s{level:g}" for level in STORED_LEVELS):
    np.testing.assert_array_equal(_images(out, again, branch), _images(first_out, first, branch))


# ------------------------------------------------------------------------------------------------
# Given first-stage images (real ones, or a shard directory), a chosen checkpoint, the upsampled
# base.


def test_real_images_stand_in_for_the_base(cascade_dir, tmp_path, monkeypatch):
  """input_samples='real:test': the base is neither restored nor sampled; the SR stage sees the
  real test images of class j mod 10 at its 16x16 input, and they are stored apart."""
  from rin_diffusion.evaluation import classifier  # noqa: PLC0415

  root, _ = cascade_dir
  calls = _count_calls(monkeypatch)
  pipeline = _pipeline(root, levels=(0.0,))
  pipeline.input_samples = "real:test"
  out = str(tmp_path / "out")
  summary = pipeline_lib.run(pipeline, root, out)
  assert calls == {"sr32": 1}
  base = pipeline_lib.load_stages(pipeline)[0].config
  test_images, test_labels = classifier.load_split(base.dataset, "test")
  given = _images(out, summary, "all", stage=0)
  for j, image in enumerate(given):
    first_of_class = np.flatnonzero(test_labels == j % 10)[0]
    np.testing.assert_array_equal(image, test_images[first_of_class])
  assert summary["stages"][0]["input_samples"] == "real:test"
  sampled = pipeline_lib.run(_pipeline(root, levels=(0.0,)), root, out)
  assert sampled["stages"][0]["directory"] != summary["stages"][0]["directory"]
  assert not np.array_equal(_images(out, sampled, "all", stage=0), given)
  upsampled = os.path.join(out, summary["stages"][0]["directory"], "all", "grid_upsampled.png")
  assert PIL.Image.open(upsampled).size == PIL.Image.open(
      os.path.join(out, summary["stages"][1]["directory"], "s0", "grid.png")).size


def test_a_shard_directory_stands_in_for_the_base(cascade_dir, tmp_path):
  from rin_diffusion import sample_shards  # noqa: PLC0415

  root, _ = cascade_dir
  shards = tmp_path / "shards"
  shards.mkdir()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 16, 16, 1), dtype=np.uint8)
  labels = np.asarray([3, 1, 4, 1, 5, 9, 2, 6], np.int32)
  (shards / sample_shards.MANIFEST).write_text(json.dumps({
      "format": sample_shards.FORMAT, "num_samples": 8, "batch_size": 8, "num_processes": 1,
      "image_shape": [16, 16, 1], "png": False}))
  with open(sample_shards.shard_path(shards, 0, 0), "wb") as f:
    np.savez(f, images=images, labels=labels, indices=np.arange(8))
  pipeline = _pipeline(root, levels=(0.0,))
  pipeline.input_samples = str(shards)
  out = str(tmp_path / "out")
  summary = pipeline_lib.run(pipeline, root, out)
  np.testing.assert_array_equal(_images(out, summary, "all", stage=0), images)
  _, sr_labels = pipeline_lib.load_images(out, summary["stages"][1]["directory"], "s0", 8,
                                          with_labels=True)
  np.testing.assert_array_equal(sr_labels, labels)  # The shards' labels condition the SR stage.
  # Images of another size, or fewer than asked for: one error naming the field, nothing written.
  pipeline.num_samples = 9
  with pytest.raises(ValueError, match=r"pipeline.input_samples=.*holds 8 images"):
    pipeline_lib.run(pipeline, root, str(tmp_path / "other"))
  pipeline.input_samples = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match=r"pipeline.input_samples=.*allowed: ''"):
    pipeline_lib.run(pipeline, root, str(tmp_path / "other"))
  pipeline.input_samples, pipeline.num_samples = str(shards), 8
  pipeline.stages[1]["truncated"] = True
  with pytest.raises(ValueError, match="non-truncated stage"):
    pipeline_lib.run(pipeline, root, str(tmp_path / "other"))
  assert not (tmp_path / "other").exists()


def test_a_stage_samples_its_chosen_checkpoint(cascade_dir, tmp_path):
  """checkpoint_step picks the SR stage's checkpoint (the ablations compare equal steps); a step
  that is not there is refused, naming the steps that are."""
  root, _ = cascade_dir
  pipeline = _pipeline(root, levels=(0.0,))
  out = str(tmp_path / "out")
  latest = pipeline_lib.run(pipeline, root, out)
  pipeline.stages[1]["checkpoint_step"] = 3
  chosen = pipeline_lib.run(pipeline, root, out)
  assert (latest["stages"][1]["checkpoint_step"], chosen["stages"][1]["checkpoint_step"]) == (6, 3)
  assert latest["stages"][1]["directory"] != chosen["stages"][1]["directory"]
  assert not np.array_equal(_images(out, latest, "s0"), _images(out, chosen, "s0"))
  pipeline.stages[1]["checkpoint_step"] = 4
  with pytest.raises(ValueError, match=r"checkpoint_step=4.*holds steps 3, 6"):
    pipeline_lib.run(pipeline, root, out)


def test_upsample_to_last_is_the_last_stages_upsampling(cascade_dir):
  root, _ = cascade_dir
  stages = pipeline_lib.load_stages(_pipeline(root))
  images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)
  up = pipeline_lib.upsample_to_last(stages, images)
  assert up.shape == (2, 32, 32, 1) and up.dtype == np.uint8
  expected = jax.image.resize(images.astype(np.float32) / 127.5 - 1, (2, 32, 32, 1), "bicubic")
  np.testing.assert_allclose(up, np.clip(np.round((np.asarray(expected) + 1) * 127.5), 0, 255),
                             atol=1)


def test_train_stages_trains_only_the_named_stages(tmp_path):
  """--stages: one process per stage (an SR stage does not read the base), and a wrong name is
  refused before anything trains."""
  pipeline = _pipeline(str(tmp_path / "data"))
  for entry in pipeline.stages:
    entry["overrides"]["total_steps"] = 2
  work = tmp_path / "work"
  with pytest.raises(ValueError, match=r"unknown stage\(s\) \['sr64'\]; allowed: .*base16, sr32"):
    pipeline_lib.train_stages(pipeline, str(work), only=["sr32", "sr64"])
  assert not work.exists()
  pipeline_lib.train_stages(pipeline, str(work), only=["sr32"])
  assert sorted(p.name for p in (work / "sr32" / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
  assert not (work / "base16").exists()


def test_demo_pipeline_args_reach_the_stage_configs():
  """The demo pipeline's base knobs (docs/cascade.md) land in the loaded stage configs."""
  spec = os.path.join(REPO, "configs", "cdm", "pipeline_fashion_mnist.py")
  base, sr = pipeline_lib.load_stages(paper_configs.load_config(
      f"{spec}:basew=1.5,basegi=0.2:0.9,basesteps=51000,at=17000,srw=0"))
  assert (base.name, base.guidance, base.config.total_steps) == ("base16_51000", 1.5, 51000)
  assert base.config.checkpoint_every_steps == 12750
  assert tuple(base.config.sampling.guidance_interval) == (0.2, 0.9)
  assert (sr.name, sr.guidance, sr.checkpoint_step) == ("sr32", 0.0, 17000)
  default_base, _ = pipeline_lib.load_stages(paper_configs.load_config(spec))
  assert (default_base.name, default_base.guidance, default_base.config.total_steps) == (
      "base16", 3.0, 34000)
  assert tuple(default_base.config.sampling.guidance_interval) == (0.0, 1.0)
  for bad in ("basegi=0.9:0.2", "basew=x", "basesteps=0.5", "basew=1,basew=2"):
    with pytest.raises(ValueError, match="allowed: .*'basegi=LO:HI'"):
      paper_configs.load_config(f"{spec}:{bad}")
