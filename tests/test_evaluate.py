"""Evaluation: FID/IS/P-R/CAS through evaluate(), the records, the in-loop best checkpoint, --mode=eval.

Most tests use a stand-in Inception (a fixed random projection of the pixels) so that the expected
metrics can be computed here from closed forms; one end-to-end test runs the real Inception.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pytest
import trainer_utils as tu

from rin_diffusion import config_lib, generate, sharding, train
from rin_diffusion.evaluation import classifier as classifier_lib
from rin_diffusion.evaluation import evaluate, metrics, reference
from rin_diffusion.evaluation import inception as inception_lib
from rin_diffusion.tools import fid as fid_tool

FEATURES = 16


class StandInInception:
  """pool3 = pixels / 255 @ a fixed random matrix; unbiased logits (optional) = 100 one-hot of the
  argmax of the first 5 features, so that p(y|x) is one-hot and the IS has a closed form. The
  biased logits add 150 to class 7: an IS taken from them would be exactly 1."""

  source = "stand-in projection"
  preprocessing = "stand-in: pixels / 255, projected"

  def __init__(self, has_logits: bool = False):
    self.has_logits = has_logits
    self.projection = np.random.default_rng(0).normal(size=(32 * 32, FEATURES))

  def pool3(self, images: np.ndarray) -> np.ndarray:
    return (images.reshape(len(images), -1) / 255.0 @ self.projection).astype(np.float32)

  def compute(self, images, batch_size=32):
    del batch_size
    pool3 = self.pool3(np.asarray(images))
    logits = unbiased = None
    if self.has_logits:
      unbiased = 100.0 * np.eye(1008)[np.argmax(pool3[:, :5], axis=1)]
      logits = unbiased + 150.0 * np.eye(1008)[7]
    return {"pool3": pool3, "logits": logits, "logits_unbiased": unbiased}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config = tu.tiny_config(str(tmp_path_factory.mktemp("fmnist")))
  config.sampling.fid_sampler = "ddpm"
  config.sampling.fid_steps = 2
  config.sampling.fid_guidance = 0.5
  config.eval.cas = False
  mesh = sharding.make_mesh(config.mesh)
  model, _, init_fn, _, _ = train.build(config, mesh)
  params = init_fn(0)["ema_params"]
  return config, model, params, mesh


def _expected_samples(config, model, params, mesh, num_samples, seed, batch_size):
  """The samples evaluate() must draw, drawn here through the batched sampler directly."""
  sample_fn = generate.make_batched_sample_fn(model, config, mesh, sampler="ddpm", steps=2,
                                              guidance=0.5)
  labels = np.arange(num_samples) % 10
  return generate.sample_all(sample_fn, params, jax.random.key(seed), labels,
                             batch_size=batch_size, mesh=mesh)


def _stats(features):
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def test_metrics_against_the_samples_own_statistics(setup):
  config, model, params, mesh = setup
  num_samples, seed = 40, 5
  inception = StandInInception(has_logits=True)
  features = inception.pool3(
      _expected_samples(config, model, params, mesh, num_samples, seed, batch_size=16))
  mu, sigma = _stats(features)
  shift = np.linspace(-1.0, 1.0, FEATURES)
  # Real features: 12 samples' own features, so precision and recall are exactly 1 iff evaluate()
  # compares the same 12 samples (the shared seed-0 subset), in order.
  chosen = metrics.subset_indices(num_samples, 12)
  assert not np.array_equal(chosen, np.arange(12))  # Else the first 12 would pass too.
  reference_stats = {"mu": mu + shift, "sigma": sigma, "features": features[chosen],
                     "num_images": 40, "description": "the samples themselves"}
  result = evaluate.evaluate(config, model, params, num_samples=num_samples, seed=seed, mesh=mesh,
                             inception=inception, reference_stats=reference_stats, batch_size=16)
  # Same covariance: FID = ||shift||^2 exactly (up to the matrix square root's rounding).
  assert result["fid"] == pytest.approx(float(shift @ shift), rel=1e-6, abs=1e-6)
  assert result["precision"] == 1.0 and result["recall"] == 1.0
  assert result["precision_recall_samples"] == 12
  # One-hot p(y|x): IS of each split = exp(entropy of the split's class histogram).
  classes = np.argmax(features[:, :5], axis=1)
  scores = []
  for part in np.split(classes, 10):
    p = np.bincount(part, minlength=5) / len(part)
    scores.append(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))))
  assert result["inception_score"] == pytest.approx(np.mean(scores), rel=1e-6)
  assert result["inception_score_std"] == pytest.approx(np.std(scores), rel=1e-6, abs=1e-9)
  assert (result["sampler"], result["steps"], result["guidance"]) == ("ddpm", 2, 0.5)
  assert result["num_samples"] == 40 and result["sampling_batch_size"] == 16
  assert result["preprocessing"] == inception.preprocessing
  assert result["notes"] == []
  assert all(result[key] is None for key in evaluate.NO_CLASSIFIER_SCORES)
  timings = result["timings"]
  assert timings["sampling_s"] > 0 and timings["inception_s"] > 0
  assert timings["images_per_s"] == pytest.approx(40 / timings["sampling_s"])


def test_no_logits_means_no_inception_score_and_a_note(setup):
  config, model, params, mesh = setup
  inception = StandInInception(has_logits=False)
  features = inception.pool3(_expected_samples(config, model, params, mesh, 16, 0, 16))
  mu, sigma = _stats(features)
  result = evaluate.evaluate(
      config, model, params, num_samples=16, seed=0, mesh=mesh, inception=inception,
      reference_stats={"mu": mu, "sigma": sigma, "features": features, "num_images": 16,
                       "description": "same"}, batch_size=16)
  # Equal statistics: FID 0 up to float64 eigendecomposition error, which scales with tr(sigma).
  assert result["fid"] == pytest.approx(0.0, abs=1e-8 * max(1.0, np.trace(sigma)))
  assert result["inception_score"] is None and result["inception_score_std"] is None
  assert any("logits" in note for note in result["notes"])


class RecordingScorer:
  """A classifier.SampleScorer stand-in: records what it is given, returns fixed scores."""

  real_classifier = classifier_lib.Classifier(None, 10, 0.9, 0.0, "real.npz", trained=False)

  def __init__(self):
    self.calls = []

  def __call__(self, images, labels):
    self.calls.append((np.array(images), np.array(labels)))
    return {**evaluate.NO_CLASSIFIER_SCORES, "cas": 0.25, "cas_real_ceiling": 0.75,
            "accuracy_on_samples": 0.5}


def test_classifier_scores_train_on_the_samples_with_the_cycled_labels(setup):
  """The scorer gets every sample, in order, with the label it was conditioned on."""
  config, model, params, mesh = setup
  inception = StandInInception()
  samples = _expected_samples(config, model, params, mesh, 30, 1, 16)
  features = inception.pool3(samples)
  mu, sigma = _stats(features)
  cas_config = config.copy_and_resolve_references()
  cas_config.eval.cas = True
  scorer = RecordingScorer()
  result = evaluate.evaluate(
      cas_config, model, params, num_samples=30, seed=1, mesh=mesh, inception=inception,
      reference_stats={"mu": mu, "sigma": sigma, "features": features, "num_images": 30,
                       "description": "same"}, classifier=scorer, batch_size=16)
  [(images, labels)] = scorer.calls
  np.testing.assert_array_equal(images, samples)
  np.testing.assert_array_equal(labels, np.arange(30) % 10)
  assert (result["cas"], result["cas_real_ceiling"], result["accuracy_on_samples"]) == (
      0.25, 0.75, 0.5)
  assert result["classifier"] == {"path": "real.npz", "test_accuracy": 0.9}
  line = evaluate.record(3, [result])
  assert (line["cas"], line["cas_real_ceiling"], line["accuracy_on_samples"]) == (0.25, 0.75, 0.5)
  text = evaluate.summary(line, cas_config)
  assert "CAS 25.0%, real-data CAS ceiling 75.0%, accuracy on samples 50.0%" in text


def test_inception_score_and_precision_recall_agree_between_evaluate_and_tools_fid(
    setup, tmp_path, monkeypatch, capsys):
  """One IS (unbiased logits) and one P/R subset in both paths, on the same images."""
  config, _, _, _ = setup
  images = np.random.default_rng(4).integers(0, 256, (50, 32, 32, 1), dtype=np.uint8)
  inception = StandInInception(has_logits=True)
  features = inception.pool3(images)
  real = np.random.default_rng(5).normal(size=(80, FEATURES)).astype(np.float32) + features.mean(0)
  mu, sigma = _stats(real)
  reference_stats = {"mu": mu, "sigma": sigma, "features": real, "num_images": 80,
                     "description": "stand-in"}
  scores = evaluate.score_images(config, images, np.arange(50) % 10, inception=inception,
                                 reference_stats=reference_stats)
  monkeypatch.setattr(inception_lib, "load_inception", lambda *a, **k: inception)
  monkeypatch.setattr(reference, "reference_statistics", lambda *a, **k: reference_stats)
  path = str(tmp_path / "samples.npz")
  np.savez(path, images=images)
  assert fid_tool.main([path, "fashion_mnist:test"]) == 0
  tool = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  # The unbiased logits' closed form: the biased ones put every image in class 7 (IS exactly 1).
  classes = np.argmax(features[:, :5], axis=1)
  expected = [np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))) for p in
              (np.bincount(part, minlength=5) / len(part) for part in np.split(classes, 10))]
  assert scores["inception_score"] == pytest.approx(np.mean(expected), rel=1e-9)
  assert tool["inception_score"] == pytest.approx(scores["inception_score"], rel=1e-9)
  assert tool["inception_score_std"] == pytest.approx(scores["inception_score_std"], rel=1e-9)
  assert tool["fid"] == pytest.approx(scores["fid"], rel=1e-9)
  assert (tool["precision"], tool["recall"]) == (scores["precision"], scores["recall"])
  assert tool["pr_num_features"] == scores["precision_recall_samples"] == 50


def test_record_is_the_mean_and_std_over_seeds():
  results = [
      {"fid": 1.0, "inception_score": None, "precision": 0.5, "recall": 0.25, "cas": 0.8,
       "num_samples": 8, "seed": 0, "sampler": "ddim", "steps": 5, "guidance": 0.0,
       "preprocessing": "p", "timings": {"sampling_s": 2.0, "images_per_s": 4.0}},
      {"fid": 3.0, "inception_score": None, "precision": 0.7, "recall": 0.75, "cas": 0.6,
       "num_samples": 8, "seed": 1, "sampler": "ddim", "steps": 5, "guidance": 0.0,
       "preprocessing": "p", "timings": {"sampling_s": 4.0, "images_per_s": 2.0}},
  ]
  for result, ceiling, on_samples in zip(results, (0.9, 0.8), (0.95, 0.85)):
    result.update(cas_real_ceiling=ceiling, accuracy_on_samples=on_samples,
                  fid_protocol="clean-fid")
  line = evaluate.record(7, results)
  assert line["fid_protocol"] == "clean-fid"
  assert line["step"] == 7 and line["mode"] == "eval" and line["seeds"] == [0, 1]
  assert (line["fid"], line["fid_std"]) == (2.0, 1.0)
  assert line["precision"] == pytest.approx(0.6) and line["precision_std"] == pytest.approx(0.1)
  assert (line["recall"], line["recall_std"]) == (0.5, 0.25)
  assert line["cas"] == pytest.approx(0.7) and line["cas_std"] == pytest.approx(0.1)
  assert line["cas_real_ceiling"] == pytest.approx(0.85)
  assert line["accuracy_on_samples"] == pytest.approx(0.9)
  assert line["accuracy_on_samples_std"] == pytest.approx(0.05)
  assert line["is"] is None and line["is_std"] is None
  assert (line["sampler"], line["steps"], line["num_samples"]) == ("ddim", 5, 8)


class ShiftedInception:
  """Features independent of the images: fixed N(0, 1) rows plus a per-evaluation shift, so the
  FID of evaluation k against the unshifted statistics is FEATURES * shifts[k]^2 exactly."""

  source = "stand-in shifts"
  has_logits = False

  def __init__(self, shifts, num_samples):
    self.shifts, self.num_samples, self.seen = list(shifts), num_samples, 0
    self.base = np.random.default_rng(1).normal(size=(num_samples, FEATURES)).astype(np.float32)

  def compute(self, images, batch_size=32):
    del batch_size
    count = len(images)
    evaluation, offset = divmod(self.seen, self.num_samples)
    rows = self.base[offset:offset + count] + self.shifts[evaluation]
    self.seen += min(count, self.num_samples - offset)  # Padding rows do not count.
    return {"pool3": rows, "logits": None, "logits_unbiased": None}


def test_in_loop_evaluation_keeps_the_best_checkpoint_across_restarts(tmp_path, monkeypatch,
                                                                    capsys):
  data_root, workdir = str(tmp_path / "data"), str(tmp_path / "run")
  num_samples = 16
  # Evaluations at steps 2 and 4 (first run), then 6 (restarted run): FID 4D, 1D, 2.25D.
  inception = ShiftedInception([2.0, 1.0, 1.5], num_samples)
  mu, sigma = _stats(inception.base)
  reference_stats = {"mu": mu, "sigma": sigma, "features": inception.base,
                     "num_images": num_samples, "description": "unshifted"}
  monkeypatch.setattr(evaluate.inception_lib, "load_inception", lambda *a, **k: inception)
  monkeypatch.setattr(evaluate, "load_reference", lambda *a, **k: reference_stats)

  def config(total_steps):
    return tu.tiny_config(data_root, total_steps=total_steps, checkpoint_every_steps=2,
                          eval_every_steps=2, eval_num_samples=num_samples, eval__cas=False)

  first = config(4)
  train.train_and_evaluate(first, workdir)
  # The run ends with the last evaluation summarised on stdout (what `make demo` shows last).
  printed = capsys.readouterr().out.strip().splitlines()
  sampler = f"{first.sampling.fid_sampler}, {first.sampling.fid_steps} steps"
  assert printed[-1].startswith(f"Evaluation at step 4: {num_samples} samples ({sampler}, ")
  assert f"FID {FEATURES * 1.0:.1f}" in printed[-1] and "CAS" not in printed[-1]
  train.train_and_evaluate(config(6), workdir)

  evals = [r for r in tu.read_metrics(workdir) if r.get("mode") == "eval"]
  assert [r["step"] for r in evals] == [2, 4, 6]
  for record, shift in zip(evals, [2.0, 1.0, 1.5]):
    assert record["fid"] == pytest.approx(FEATURES * shift**2, rel=1e-5)
    assert record["num_samples"] == num_samples and record["sampler"] == first.sampling.fid_sampler
  # Step 6 (FID 36) is worse than step 4 (FID 16): the restarted run must remember 16.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints_best"))) == ["4"]
  with open(os.path.join(workdir, "checkpoints_best", "4", "eval", "metadata")) as f:
    assert json.load(f)["fid"] == pytest.approx(FEATURES * 1.0, rel=1e-5)
  # A new evaluator on this workdir (a third restart) starts from that best FID.
  model = train.build(config(6), sharding.make_mesh(config(6).mesh))[0]
  loop_eval = evaluate.LoopEvaluation(config(6), model, sharding.make_mesh(config(6).mesh),
                                      workdir, writer=None)
  assert loop_eval.best_fid == pytest.approx(FEATURES * 1.0, rel=1e-5)
  loop_eval.close()
  with open(os.path.join(workdir, "eval", "step_6.json")) as f:
    assert json.load(f)["record"]["step"] == 6
  # The training records are untouched by the evaluation records.
  assert [r["step"] for r in tu.read_metrics(workdir) if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_eval_mode_end_to_end_with_the_real_inception(tmp_path):
  """--mode=eval --seeds=2 on a trained tiny run: metrics.jsonl and eval/step_2.json.

  16 samples and 16 reference images: one Inception batch shape, so one compilation.
  """
  try:
    inception_lib.default_weights_path()
  except ValueError as error:
    pytest.skip(f"the FID Inception weights are not installed: {error}")
  data_root, workdir = str(tmp_path / "data"), str(tmp_path / "run")
  train.train_and_evaluate(tu.tiny_config(data_root, total_steps=2, checkpoint_every_steps=2),
                           workdir)
  result = tu.run_main(workdir, tu.data_flags(data_root) + tu.TINY_FLAGS + [
      "--mode=eval", "--num_samples=16", "--seeds=2", "--steps=2", "--sampler=ddpm",
      f"--config.eval.cache_dir={tmp_path / 'cache'}", "--config.eval.cas=False"], timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  line = tu.read_metrics(workdir)[-1]
  assert line["mode"] == "eval" and line["step"] == 2 and line["seeds"] == [0, 1]
  assert (line["sampler"], line["steps"], line["num_samples"]) == ("ddpm", 2, 16)
  assert math.isfinite(line["fid"]) and line["fid"] > 0 and line["fid_std"] >= 0
  assert 0 <= line["precision"] <= 1 and 0 <= line["recall"] <= 1
  assert line["is"] is None  # The default weights have no logits layer.
  assert "clean-fid" in line["preprocessing"] and line["fid_protocol"] == "clean-fid"
  with open(os.path.join(workdir, "eval", "step_2.json")) as f:
    details = json.load(f)
  assert [r["seed"] for r in details["results"]] == [0, 1]
  assert details["results"][0]["fid"] != details["results"][1]["fid"]
  assert np.mean([r["fid"] for r in details["results"]]) == pytest.approx(line["fid"])


BAD_EVAL_VALUES = [
    ({"sampling__fid_sampler": "euler"}, "config.sampling.fid_sampler='euler'"),
    ({"sampling__fid_steps": 0}, "config.sampling.fid_steps=0"),
    ({"sampling__fid_guidance": -1.0}, "config.sampling.fid_guidance=-1.0"),
    ({"eval_every_steps": -5}, "config.eval_every_steps=-5"),
    ({"eval_num_samples": 0}, "config.eval_num_samples=0"),
    ({"eval_batch_size": -8}, "config.eval_batch_size=-8"),
    ({"eval__num_reference": 0}, "config.eval.num_reference=0"),
    ({"eval__reference": "just_a_name"}, "config.eval.reference='just_a_name'"),
    ({"eval__cas": True, "model__num_classes": 0, "dataset__num_classes": 0}, "config.eval.cas"),
]


@pytest.mark.parametrize("overrides,message", BAD_EVAL_VALUES)
def test_bad_eval_config_values_name_field_and_value(tmp_path, overrides, message):
  config = tu.tiny_config(str(tmp_path), **overrides)
  with pytest.raises(ValueError) as error:
    config_lib.validate(config)
  assert str(error.value).startswith(message), str(error.value)


def test_cas_is_refused_for_datasets_without_a_classifier(tmp_path):
  config = tu.tiny_config(str(tmp_path))
  config.dataset.name = "imagenet2012"
  config.eval.cas = True
  with pytest.raises(ValueError, match="config.eval.cas=True .*fashion_mnist"):
    config_lib.validate(config)


def test_defaults_are_the_papers_fid_protocol():
  config = config_lib.base_config()
  assert (config.sampling.fid_sampler, config.sampling.fid_steps) == ("ddpm", 1000)
  assert config.sampling.fid_guidance == 0.0 and config.eval_num_samples == 50_000
  assert config.eval_every_steps == 0
  assert evaluate.reference_source(config) == "imagenet2012:train"


def test_missing_inception_weights_stop_training_before_it_starts(tmp_path):
  """A run that will evaluate checks the Inception file first: nothing is trained or written."""
  workdir = str(tmp_path / "run")
  config = tu.tiny_config(str(tmp_path / "data"), eval_every_steps=2,
                          eval__inception_weights=str(tmp_path / "missing.pth"))
  with pytest.raises(ValueError, match=r"config.eval.inception_weights='.*missing.pth': no such"):
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)


def test_score_images_of_given_images(setup):
  """score_images (a cascade's final images) against the images' own statistics, shifted."""
  config, _, _, _ = setup
  images = np.random.default_rng(3).integers(0, 256, (70, 32, 32, 1), dtype=np.uint8)
  inception = StandInInception()
  features = inception.pool3(images)
  mu, sigma = _stats(features)
  shift = np.linspace(0.0, 2.0, FEATURES)
  reference_stats = {"mu": mu + shift, "sigma": sigma,
                     "features": features[metrics.subset_indices(70, 20)],
                     "num_images": 70, "description": "the images themselves"}
  scores = evaluate.score_images(config, images, np.arange(70) % 10, inception=inception,
                                 reference_stats=reference_stats)
  assert scores["fid"] == pytest.approx(float(shift @ shift), rel=1e-6, abs=1e-6)
  assert scores["precision"] == 1.0 and scores["recall"] == 1.0
  assert scores["cas"] is None and scores["accuracy_on_samples"] is None
  assert scores["num_samples"] == 70
