"""The CDM cascade configs (configs/cdm/, rin_diffusion/cascade/stage_configs.py) with RIN networks.

Every stage config loads and validates (full size and runlocal), every pipeline passes
cascade.pipeline.load_stages, and each full-size stage's parameter count (built abstractly with
jax.eval_shape) equals a closed form written here: the Table-1 network's count plus p^2 C d for the
concatenated low-resolution image plus, with Gaussian augmentation, one ScalarEmbedding. The
expected stage fields are typed in again from the CDM paper (Appendix B, sections 3-5).
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from rin_diffusion import config_lib, paper_configs, schedules
from rin_diffusion.cascade import pipeline as pipeline_lib
from rin_diffusion.tools.param_table import count_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# file -> (image size, low resolution, Table-1 network, patch, classes, augmentation, the file of
# the stage below). CDM: ImageNet 32 base, 32->64 (Gaussian), 64->128 / 64->256 (blur); LSUN 64
# base and 64->128 (Gaussian, non-truncated); class-conditional on ImageNet, not on LSUN.
STAGES = {
    "imagenet_32": (32, 0, 64, 2, 1000, None, None),
    "imagenet_32_64": (64, 32, 64, 4, 1000, "gaussian", "imagenet_32"),
    "imagenet_64_128": (128, 64, 128, 4, 1000, "blur", "imagenet_32_64"),
    "imagenet_64_256": (256, 64, 256, 8, 1000, "blur", "imagenet_32_64"),
    "lsun_64": (64, 0, 64, 4, 0, None, None),
    "lsun_64_128": (128, 64, 128, 4, 0, "gaussian", "lsun_64"),
}
# Pipeline file -> stage (name, file) in order.
PIPELINES = {
    "pipeline_imagenet_64": (("base32", "imagenet_32"), ("sr64", "imagenet_32_64")),
    "pipeline_imagenet_128": (("base32", "imagenet_32"), ("sr64", "imagenet_32_64"),
                              ("sr128", "imagenet_64_128")),
    "pipeline_imagenet_256": (("base32", "imagenet_32"), ("sr64", "imagenet_32_64"),
                              ("sr256", "imagenet_64_256")),
    "pipeline_lsun_128": (("base64", "lsun_64"), ("sr128", "lsun_64_128")),
}
# Table-1 networks (class-conditional, 3 channels, no cascade inputs), exact: the spec's worked
# example (spec-rin 3.2) at 64; 214.83 M and 319.03 M (spec-rin 3.3) at 128 and 256.
TABLE1_COUNTS = {64: 214_433_840, 128: 214_827_056, 256: 319_033_536}
S_MAX = 0.5


def _path(name: str, arg: str = "") -> str:
  path = f"configs/cdm/{name}.py"
  return f"{path}:{arg}" if arg else path


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)  # Pipeline configs name their stage files relative to the repo root.


def _scalar_embedding(big_d: int) -> int:
  """model.ScalarEmbedding(dim = D/4, expansion 4): Dense(D/4 -> D) + Dense(D -> D), biases."""
  return (big_d // 4) * big_d + big_d + big_d * big_d + big_d


def closed_form(m) -> int:
  """RIN parameters (spec-rin 3.1) for r = r_t = 4, learned interface positions, no kv LN."""
  d, big_d, p = m.tape_dim, m.latent_dim, m.patch_size
  a = min(d, big_d)
  n = (m.image_size // p) ** 2
  latent_layer = 12 * big_d**2 + 13 * big_d
  read = 8 * big_d**2 + 2 * big_d * a + 2 * d * a + 3 * a + 10 * big_d
  write = 8 * d**2 + 2 * d * a + 2 * big_d * a + 3 * a + 10 * d
  total = sum(k * latent_layer + read + write for k in m.blocks)
  total += p * p * (m.channels + m.extra_in_channels) * d + 3 * d  # Stem conv + LN.
  total += n * d  # Interface positions.
  total += (m.latent_slots - 1 - (m.num_classes > 0)) * big_d  # Learned latents.
  total += _scalar_embedding(big_d) * (1 + m.num_extra_tokens)  # Time + augmentation level.
  total += m.num_classes * big_d + big_d if m.num_classes else 0
  total += 8 * big_d**2 + 9 * big_d  # Latent self-conditioning MLPres + LN.
  total += 2 * d + d * p * p * m.channels + p * p * m.channels  # Output LN + head.
  return total


@pytest.fixture(scope="module")
def full_configs():
  return {name: paper_configs.load_config(os.path.join(REPO, _path(name))) for name in STAGES}


@pytest.mark.parametrize("arg", ["", "runlocal"])
@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_config_validates_and_has_cdm_fields(name, arg):
  c = paper_configs.load_config(_path(name, arg))
  config_lib.validate(c)
  size, low, network, patch, classes, augmentation, below = STAGES[name]
  paper = paper_configs.imagenet_config(network, arg)
  assert (c.model.image_size, c.dataset.image_size, c.model.patch_size) == (size, size, patch)
  assert (c.model.image_size // c.model.patch_size) ** 2 == (network // paper.model.patch_size) ** 2
  assert c.model.num_classes == c.dataset.num_classes == classes
  assert c.dataset.name == ("imagenet2012" if classes else "lsun/bedroom")
  # The noise-scheduling paper's recipe of the output resolution's network, unchanged.
  for field in ("total_steps", "batch_size"):
    assert c[field] == paper[field], field
  for section in ("optimizer", "diffusion"):
    for key, value in paper[section].items():
      assert c[section][key] == value, (section, key)
  for key in ("tape_dim", "latent_dim", "latent_slots", "blocks", "latent_heads", "rw_heads"):
    assert c.model[key] == paper.model[key], key
  cascade = c.cascade
  assert cascade.low_resolution == low
  if not low:
    assert (c.model.extra_in_channels, c.model.num_extra_tokens) == (0, 0)
    return
  assert c.eval_every_steps == 0
  assert c.model.extra_in_channels == c.model.channels == 3
  assert cascade.upsample == "bicubic"
  if augmentation == "gaussian":
    assert (cascade.aug_level_max, cascade.blur_prob, c.model.num_extra_tokens) == (S_MAX, 0.0, 1)
  else:
    assert (cascade.aug_level_max, c.model.num_extra_tokens) == (0.0, 0)
    assert cascade.blur_prob == 0.5 and tuple(cascade.blur_sigma) == (0.4, 0.6)
  assert 0.0 <= cascade.sample_level <= cascade.aug_level_max
  # The augmentation process is the stage below's inference process.
  under = paper_configs.load_config(_path(below, arg))
  assert under.model.image_size == low
  assert (cascade.aug_schedule, cascade.aug_input_scale) == (
      under.diffusion.infer_schedule, under.diffusion.input_scale)


def test_lsun_church_and_refused_args():
  for name in ("lsun_64", "lsun_64_128"):
    church = paper_configs.load_config(_path(name, "runlocal,church"))
    config_lib.validate(church)
    assert church.dataset.name == "lsun/church_outdoor"
    assert church.model.num_classes == 0
  # Key=value tokens reach the stage; the network variants are refused.
  c = paper_configs.load_config(_path("imagenet_32_64", "runlocal,steps=7,b=0.8"))
  assert (c.total_steps, c.diffusion.input_scale, c.cascade.aug_input_scale) == (7, 0.8, 1.0)
  for name, arg in (("imagenet_32", "patch8"), ("imagenet_32_64", "release"),
                    ("imagenet_32", "church"), ("lsun_64", "bogus")):
    with pytest.raises(ValueError, match=arg):
      paper_configs.load_config(_path(name, arg))


def test_configs_load_without_jax():
  files = [_path(name, arg) for name in STAGES for arg in ("", "runlocal")]
  files += [_path(name, arg) for name in PIPELINES for arg in ("", "runlocal")]
  code = ("import sys\nfrom rin_diffusion import paper_configs\n"
          f"for spec in {files!r}:\n  paper_configs.load_config(spec)\n"
          "assert 'jax' not in sys.modules and 'flax' not in sys.modules, 'jax imported'\n")
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_closed_form_reproduces_table1():
  for resolution, count in TABLE1_COUNTS.items():
    network = paper_configs.imagenet_config(resolution).model
    assert closed_form(network) == count, resolution
  assert abs(TABLE1_COUNTS[128] / 1e6 - 214.83) < 0.005
  assert abs(TABLE1_COUNTS[256] / 1e6 - 319.03) < 0.005


def test_parameter_counts(full_configs):
  """Measured (eval_shape of model.init) = closed form = Table-1 network + the cascade inputs."""
  counts = {}
  for name, c in full_configs.items():
    m = c.model
    measured = count_params(m.to_dict())
    counts[name] = measured
    assert measured == closed_form(m), name
    size, low, network, patch, classes, augmentation, _ = STAGES[name]
    p, d, big_d = m.patch_size, m.tape_dim, m.latent_dim
    expected = TABLE1_COUNTS[network]
    if size != network:  # base32: patch 2 instead of 4 shrinks the stem and the head.
      network_patch = paper_configs.imagenet_config(network).model.patch_size
      expected -= (network_patch**2 - p**2) * 3 * (2 * d + 1)
    if not classes:  # No class projection; the class token's slot becomes a learned latent.
      expected -= 1000 * big_d
    if low:
      expected += p * p * 3 * d
    if augmentation == "gaussian":
      expected += _scalar_embedding(big_d)
    assert measured == expected, (name, measured, expected)
  print("CDM stage parameter counts:", counts)
  # Also in the stage docstrings (stage_configs and configs/cdm/*).
  assert counts == {
      "imagenet_32": 214_396_940, "imagenet_32_64": 215_197_232,
      "imagenet_64_128": 214_851_632, "imagenet_64_256": 319_131_840,
      "lsun_64": 213_665_840, "lsun_64_128": 214_822_448}


def test_runlocal_stages_differ_from_their_base_by_the_cascade_inputs():
  for name, (_, low, _, _, _, augmentation, _) in STAGES.items():
    c = paper_configs.load_config(_path(name, "runlocal"))
    m = c.model
    plain = m.to_dict() | {"extra_in_channels": 0, "num_extra_tokens": 0}
    extra = (m.patch_size**2 * 3 * m.tape_dim if low else 0) + (
        _scalar_embedding(m.latent_dim) if augmentation == "gaussian" else 0)
    assert count_params(m.to_dict()) - count_params(plain) == extra, name


@pytest.mark.parametrize("arg", ["", "truncated", "runlocal", "runlocal,truncated", "level=0.25"])
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipelines_load(name, arg):
  pipeline = paper_configs.load_config(_path(name, arg))
  stages = pipeline_lib.load_stages(pipeline)  # Resolutions, channels, levels, truncation.
  assert [(s.name, s.config.model.image_size) for s in stages] == [
      (stage, STAGES[file][0]) for stage, file in PIPELINES[name]]
  for field in ("num_samples", "batch_size", "grid_samples", "seed"):
    assert isinstance(pipeline[field], int) and not isinstance(pipeline[field], bool), field
  assert pipeline.num_samples == (8 if "runlocal" in arg else 10_000)
  assert pipeline.batch_size % 8 == 0
  for stage, (_, file) in zip(stages, PIPELINES[name]):
    augmentation = STAGES[file][5]
    assert stage.guidance == 0.0  # FID recipe of both papers: no guidance.
    assert stage.steps == (4 if "runlocal" in arg else 1000)
    if augmentation == "gaussian":
      assert stage.truncated == ("truncated" in arg)
      assert all(0.0 <= s <= S_MAX for s in stage.levels)
      if arg == "level=0.25":
        assert stage.levels == (0.25,)
    else:
      assert stage.levels == (0.0,) and not stage.truncated


def test_lsun_church_pipeline():
  pipeline = paper_configs.load_config(_path("pipeline_lsun_128", "church,runlocal"))
  stages = pipeline_lib.load_stages(pipeline)
  assert {s.config.dataset.name for s in stages} == {"lsun/church_outdoor"}


def test_bad_pipeline_args():
  for arg in ("bogus", "truncated,truncated", "level=x", "level", "level=0.1,level=0.2", "church",
              "runlocal=1"):
    with pytest.raises(ValueError):
      paper_configs.load_config(_path("pipeline_imagenet_64", arg))
  with pytest.raises(ValueError, match="exceeds the trained range"):
    pipeline_lib.load_stages(paper_configs.load_config(_path("pipeline_imagenet_64", "level=0.7")))


@pytest.mark.parametrize("override", [
    (1, {"cascade.aug_schedule": "linear"}),
    (1, {"cascade.aug_input_scale": 0.5}),
    (0, {"diffusion.input_scale": 0.8}),  # The base changed instead: the same mismatch.
    (0, {"diffusion.infer_schedule": "cosine@0.2,1,1"}),
])
def test_truncated_needs_the_base_inference_process(override):
  index, overrides = override
  for arg, raises in (("runlocal,truncated", True), ("runlocal", False)):
    pipeline = paper_configs.load_config(_path("pipeline_imagenet_128", arg))
    stages = [dict(s) for s in pipeline.stages]
    stages[index]["overrides"] = overrides
    pipeline.stages = stages
    if raises:
      with pytest.raises(ValueError, match="inference process"):
        pipeline_lib.load_stages(pipeline)
    else:
      pipeline_lib.load_stages(pipeline)  # Non-truncated: any fixed process is allowed.


def _cdm_alpha_bar(s: np.ndarray) -> np.ndarray:
  """Improved DDPM's cosine alpha-bar at step fraction s (offset 0.008), as CDM used it."""
  f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
  return f(s) / f(0.0)


def _our_t(gamma: np.ndarray) -> np.ndarray:
  """Inverse of the offset 'cosine' gamma(t) = cos^2((t + 2e-4) / (1 + 2.5e-4) pi / 2)."""
  return np.arccos(np.sqrt(gamma)) * 2 / np.pi * (1 + 2.5e-4) - 2e-4


def test_level_range_covers_cdm_best_levels():
  """s_max and the sweeps, in CDM's 4000-step units mapped through the two cosine processes."""
  c = paper_configs.load_config(_path("imagenet_32_64"))
  assert c.cascade.aug_schedule == "cosine"
  gamma_fn = schedules.gamma_fn(c.cascade.aug_schedule)
  steps = np.array([0, 250, 500, 750, 1000, 1250, 1500, 2000]) / 4000
  ours = _our_t(_cdm_alpha_bar(steps))
  np.testing.assert_allclose(np.asarray(gamma_fn(ours.astype(np.float32))),
                             _cdm_alpha_bar(steps), atol=2e-6)
  assert np.all(np.abs(ours - steps) < 0.01)  # The same process up to the offsets.
  truncated = _our_t(_cdm_alpha_bar(np.array([500, 750]) / 4000))
  non_truncated = _our_t(_cdm_alpha_bar(np.array([750, 1250]) / 4000))
  assert non_truncated[1] < c.cascade.aug_level_max <= 0.5  # Past the best ranges, not past half.
  assert math.isclose(float(gamma_fn(np.float32(S_MAX))), 0.5, abs_tol=1e-3)
  for name in ("pipeline_imagenet_64", "pipeline_imagenet_128", "pipeline_imagenet_256",
               "pipeline_lsun_128"):
    levels = np.array(paper_configs.load_config(_path(name)).stages[1]["levels"])
    for lo, hi in (truncated, non_truncated):  # At least one s* inside each best range.
      assert np.any((levels >= lo - 0.01) & (levels <= hi + 0.01)), (name, lo, hi)
  assert 0.0 in paper_configs.load_config(_path("pipeline_imagenet_64")).stages[1]["levels"]
