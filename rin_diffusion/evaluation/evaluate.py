"""Sample-quality evaluation of a RIN: FID, IS, precision/recall and classifier scores of EMA samples.

  evaluator = make_evaluator(config, model, mesh)          # compiles once, loads Inception etc.
  result = evaluator(ema_params, num_samples=50_000, seed=0)
  result = evaluate(config, model, ema_params, num_samples=..., seed=..., mesh=mesh)  # one-off

Samples come from generate.sample_batches with the FID sampler settings (config.sampling.fid_sampler,
fid_steps, fid_guidance). Conditional models get the labels j mod num_classes for sample j (every
class equally often, and any prefix balanced); unconditional models get no class. Each process
computes the Inception features of the rows its devices sampled; the features, not the images, are
then gathered so that every process holds all of them and computes the same metrics (process 0
writes them). Nothing holds all N images, on a device or on a host, except with config.eval.cas:
the CAS trains a classifier on the samples themselves, so their images are gathered too (only on
the small datasets it is allowed for: Fashion-MNIST, 1 KB an image).

Metrics, all against the real reference (config.eval.reference, default '<dataset.name>:train',
config.eval.num_reference images through the same Inception, cached in config.eval.cache_dir):
* fid: Frechet distance between Gaussian fits of the pool3 features (all N samples), with
  fid_protocol (reference.fid_protocol): 'clean-fid', or 'mixed: ...' against the stored statistics
  of an OpenAI reference batch.
* inception_score (+ _std over 10 splits): the softmax of the logits without the fc bias
  ('logits_unbiased'), as the original TF code, tools.fid and every reference implementation take
  it; only when the Inception weights have the 1008-way logits layer (the default weights do not,
  and the result then says so in `notes`).
* precision / recall (k = 3, Kynkaanniemi et al. 2019): M samples against M stored reference
  features (M = min(N, reference features)), the larger set cut to a seed-0 random subset by
  metrics.precision_recall_equal_sizes, as tools.fid cuts it.
* with config.eval.cas (evaluation/classifier.py): cas (+ cas_per_class), a classifier trained on
  the samples with their conditioning labels, tested on the real test split (Ravuri & Vinyals
  2019); cas_real_ceiling, the same classifier trained on equally many real training images; and
  accuracy_on_samples (+ _per_class), a classifier trained on real data applied to the samples
  (Shmelkov et al.'s GAN-test: blind to mode collapse, a diagnostic, not the CAS).

`inception`, `reference_stats` and `classifier` can be passed in (tests use stand-ins): an
Inception is any object with `.compute(uint8 images, batch_size) -> {'pool3', 'logits_unbiased' or
None}`, `.has_logits` and `.source`; a classifier is a classifier.SampleScorer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from rin_diffusion import checkpointing, generate, sample_shards
from rin_diffusion.evaluation import classifier as classifier_lib
from rin_diffusion.evaluation import inception as inception_lib
from rin_diffusion.evaluation import metrics, reference

INCEPTION_BATCH = 64  # Images per Inception forward at most.
PR_NEIGHBOURS = 3
IS_SPLITS = 10
# The metrics an evaluation record carries (name in metrics.jsonl -> key in the result).
RECORD_METRICS = {"fid": "fid", "is": "inception_score", "precision": "precision",
                  "recall": "recall", "cas": "cas", "cas_real_ceiling": "cas_real_ceiling",
                  "accuracy_on_samples": "accuracy_on_samples"}
# The record fields that must be equal for two FIDs to be compared (the best checkpoint's).
COMPARABLE_SETTINGS = ("num_samples", "seeds", "sampler", "steps", "guidance", "labels",
                       "preprocessing", "inception", "reference", "num_reference")


def cache_dir(config: ml_collections.ConfigDict) -> str:
  return config.eval.cache_dir or inception_lib.default_cache_dir()


def reference_source(config: ml_collections.ConfigDict) -> str:
  return config.eval.reference or f"{config.dataset.name}:train"


def load_reference(config: ml_collections.ConfigDict, inception: Any) -> dict[str, Any]:
  """The reference statistics; process 0 computes and caches them first, the others then read."""
  def compute():
    source = reference_source(config)
    # A TFDS reference gets the training preprocessing at the model's size; an .npz is as stored.
    image_size = None if source.endswith(".npz") else int(config.dataset.image_size)
    return reference.reference_statistics(
        source, image_size=image_size, num_images=int(config.eval.num_reference),
        inception=inception, cache_dir=cache_dir(config), data_dir=config.dataset.data_dir,
        manual_dir=config.dataset.manual_dir, pad_to=int(config.dataset.get("pad_to", 0)))

  return _chief_first(compute, "rin_diffusion_reference_statistics")


def check_inception_weights(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the fix when the FID Inception weights cannot be found.

  The trainer calls this before training when it will evaluate, so that a missing file stops the
  run at once instead of after the training it was meant to measure.
  """
  path = config.eval.inception_weights
  if path and not os.path.isfile(path):
    raise ValueError(f"config.eval.inception_weights={path!r}: no such file; allowed: '' (the "
                     f"default weights, `{inception_lib.INSTALL_COMMAND}`) or an existing "
                     ".pth / TorchScript file.")
  if not path:
    inception_lib.default_weights_path()


def load_classifier(config: ml_collections.ConfigDict) -> classifier_lib.SampleScorer:
  """The classifier scores of config.dataset (CAS, its ceiling, accuracy on samples); process 0
  trains and caches the real classifier first."""
  return _chief_first(lambda: classifier_lib.load_scorer(config.dataset, cache_dir(config)),
                      "rin_diffusion_sample_classifier")


def _chief_first(fn: Callable[[], Any], name: str) -> Any:
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils  # noqa: PLC0415

  result = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(name)
  return result if result is not None else fn()


def fid_settings(config: ml_collections.ConfigDict, sampler: str | None = None,
                 steps: int | None = None, guidance: float | None = None,
                 ) -> tuple[str, int, float]:
  """(sampler, steps, guidance): the arguments, else config.sampling.fid_*."""
  return (sampler or config.sampling.fid_sampler, int(steps or config.sampling.fid_steps),
          float(config.sampling.fid_guidance if guidance is None else guidance))


def _gather_rows(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every process's rows (dict of arrays sharing axis 0, with 'index') on every process, by index."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    count = local["index"].shape[0]
    most = int(np.max(multihost_utils.process_allgather(np.asarray(count))))
    padded = {k: np.concatenate([v, np.zeros((most - count, *v.shape[1:]), v.dtype)])
              for k, v in local.items()}
    padded["index"][count:] = -1
    gathered = multihost_utils.process_allgather(padded)
    local = {k: np.asarray(v).reshape(-1, *np.asarray(v).shape[2:]) for k, v in gathered.items()}
    valid = local["index"] >= 0
    local = {k: v[valid] for k, v in local.items()}
  order = np.argsort(local["index"], kind="stable")
  return {k: v[order] for k, v in local.items()}


def _features(inception: Any, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray | None]:
  """Inception outputs for a batch; fewer than `batch_size` images are padded up to it, so that
  the last (cropped) sampling batch does not compile another Inception program. 'logits' are the
  unbiased logits, the only ones an Inception Score is computed from."""
  count = images.shape[0]
  if count < batch_size:
    images = np.concatenate(
        [images, np.zeros((batch_size - count, *images.shape[1:]), images.dtype)])
  out = inception.compute(images, batch_size=batch_size)
  return {"pool3": np.asarray(out["pool3"], np.float32)[:count],
          "logits": (None if out.get("logits_unbiased") is None
                     else np.asarray(out["logits_unbiased"])[:count])}


def make_evaluator(config: ml_collections.ConfigDict, model: nn.Module, mesh: jax.sharding.Mesh,
                   *, inception: Any = None, reference_stats: dict[str, Any] | None = None,
                   classifier: classifier_lib.SampleScorer | None = None,
                   sampler: str | None = None, steps: int | None = None,
                   guidance: float | None = None, batch_size: int | None = None,
                   ) -> Callable[..., dict[str, Any]]:
  """evaluator(params, *, num_samples, seed) -> result dict (see the module docstring).

  Loads (or takes) the Inception, the reference statistics and, with config.eval.cas, the
  classifier scorer once; the sampler compiles on the first call and is reused.
  """
  sampler, steps, guidance = fid_settings(config, sampler, steps, guidance)
  inception = inception or inception_lib.load_inception(
      config.eval.inception_weights or None, cache_dir=config.eval.cache_dir or None)
  reference_stats = reference_stats or load_reference(config, inception)
  if config.eval.cas and classifier is None:
    classifier = load_classifier(config)
  sample_fn = generate.make_batched_sample_fn(model, config, mesh, sampler=sampler, steps=steps,
                                              guidance=guidance)
  num_classes = int(config.model.num_classes)
  requested_batch = int(batch_size or config.eval_batch_size)

  def settings(num_samples: int, seeds: list[int]) -> dict[str, Any]:
    """What an evaluation of `num_samples` samples with these seeds compares (its record's
    COMPARABLE_SETTINGS), known before it runs."""
    return {
        "num_samples": int(num_samples), "seeds": [int(s) for s in seeds], "sampler": sampler,
        "steps": int(steps), "guidance": float(guidance),
        "labels": f"sample j has class j mod {num_classes}" if num_classes else "unconditional",
        "preprocessing": getattr(inception, "preprocessing", inception_lib.PREPROCESSING),
        "inception": str(inception.source), "reference": reference_stats["description"],
        "num_reference": int(reference_stats["num_images"]),
    }

  def evaluator(params: Any, *, num_samples: int, seed: int) -> dict[str, Any]:
    if num_samples < 2:
      raise ValueError(f"num_samples={num_samples}: FID needs at least 2 samples.")
    start = time.time()
    labels = generate.cycled_labels(num_classes, num_samples)
    batch = generate.sampling_batch_size(requested_batch, num_samples, mesh)
    inception_batch = min(INCEPTION_BATCH, batch // jax.process_count())
    batches = generate.sample_batches(sample_fn, params, jax.random.key(seed), labels,
                                      batch_size=batch, mesh=mesh)
    local: dict[str, list[np.ndarray]] = {"index": [], "label": [], "pool3": [], "logits": [],
                                          "image": []}
    sampling_s = inception_s = 0.0
    progress = generate.Progress(f"Evaluation (seed {seed}): sampling and Inception features",
                                 num_samples)
    while True:
      tick = time.time()
      chunk = next(batches, None)  # Waits for the devices: the sampling time.
      sampling_s += time.time() - tick
      if chunk is None:
        break
      tick = time.time()
      features = _features(inception, chunk.images, inception_batch)
      inception_s += time.time() - tick
      local["index"].append(chunk.indices)
      local["label"].append(chunk.labels)
      local["pool3"].append(features["pool3"])
      if features["logits"] is not None:
        local["logits"].append(features["logits"])
      if classifier is not None:  # The CAS trains on the samples themselves.
        local["image"].append(np.asarray(chunk.images))
      progress.update(min(batch, num_samples - chunk.batch_index * batch))
    rows = _gather_rows({k: np.concatenate(v) for k, v in local.items() if v})
    if rows["index"].shape[0] != num_samples:
      raise RuntimeError(f"Evaluation gathered {rows['index'].shape[0]} of {num_samples} samples.")

    tick = time.time()
    scores = _scores(rows, reference_stats, inception)
    metrics_s = time.time() - tick
    tick = time.time()
    scores.update(_classifier_scores(classifier, rows))
    classifier_s = time.time() - tick
    total_s = time.time() - start
    described = settings(num_samples, [seed])
    del described["seeds"]
    return {
        **{k: v for k, v in scores.items() if k not in ("precision_recall_samples", "notes")},
        **described,
        "fid_protocol": reference.fid_protocol(reference_stats),
        "seed": int(seed),
        "sampling_batch_size": int(batch),
        "precision_recall_samples": scores["precision_recall_samples"],
        "classifier": None if classifier is None else {
            "path": classifier.real_classifier.path,
            "test_accuracy": classifier.real_classifier.test_accuracy},
        "notes": scores["notes"],
        "timings": {
            "sampling_s": sampling_s, "inception_s": inception_s, "classifier_s": classifier_s,
            "metrics_s": metrics_s, "total_s": total_s,
            "images_per_s": num_samples / max(sampling_s, 1e-9),
        },
    }

  evaluator.settings = settings
  return evaluator


NO_CLASSIFIER_SCORES = {"cas": None, "cas_per_class": None, "cas_train_steps": None,
                        "cas_real_ceiling": None, "accuracy_on_samples": None,
                        "accuracy_on_samples_per_class": None}


def _classifier_scores(classifier: classifier_lib.SampleScorer | None,
                       rows: dict[str, np.ndarray]) -> dict[str, Any]:
  """CAS, its real-data ceiling and accuracy on samples of rows ('image', 'label'); all None
  without a classifier."""
  if classifier is None:
    return dict(NO_CLASSIFIER_SCORES)
  count = rows["image"].shape[0]
  start = time.time()
  if jax.process_index() == 0:  # The classifiers log when done, not as they train: say why.
    logging.info("Classifier scores of %d samples: training the CAS classifier on them and its "
                 "real-data ceiling on %d real images (a few seconds per 1,000 images on a CPU).",
                 count, count)
  scores = classifier(rows["image"], rows["label"])
  if jax.process_index() == 0:
    logging.info("Classifier scores done in %s: CAS %s, real-data ceiling %s.",
                 generate.format_eta(time.time() - start), scores.get("cas"),
                 scores.get("cas_real_ceiling"))
  return scores


def _scores(rows: dict[str, np.ndarray], reference_stats: dict[str, Any],
            inception: Any) -> dict[str, Any]:
  """FID, IS and precision/recall of gathered rows ('pool3', 'logits'?)."""
  notes = list(reference_stats.get("notes", []))  # E.g. why P/R are skipped.
  num_samples = rows["pool3"].shape[0]
  # For N <= 2048 samples one N x N eigendecomposition instead of two 2048 x 2048 ones.
  fid = metrics.frechet_distance_to_features(rows["pool3"], reference_stats["mu"],
                                             reference_stats["sigma"])
  inception_score = inception_score_std = None
  if "logits" in rows:
    splits = min(IS_SPLITS, num_samples)
    inception_score, inception_score_std = metrics.inception_score(rows["logits"], splits)
  else:
    notes.append(f"inception_score: None: the Inception weights ({inception.source}) have no "
                 "1008-way logits layer; pass a pytorch-fid .pth with config.eval."
                 "inception_weights for IS.")
  real = np.asarray(reference_stats["features"], np.float32)
  precision_recall = metrics.precision_recall_equal_sizes(real, rows["pool3"], k=PR_NEIGHBOURS)
  precision, recall, pr_count = precision_recall or (None, None, 0)
  if precision_recall is None and len(real):  # No reference features: the reference's notes say.
    notes.append(f"precision/recall: None: need more than k={PR_NEIGHBOURS} samples and "
                 "reference features.")
  return {"fid": float(fid), "inception_score": inception_score,
          "inception_score_std": inception_score_std, "precision": precision, "recall": recall,
          "precision_recall_samples": int(pr_count), "notes": notes}


def score_images(config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray, *,
                 inception: Any = None, reference_stats: dict[str, Any] | None = None,
                 classifier: classifier_lib.SampleScorer | None = None) -> dict[str, Any]:
  """FID, IS, precision/recall (and the classifier scores with config.eval.cas) of given uint8
  images (N, H, W, C) on one host, against config's reference: for images made elsewhere (a
  cascade's final stage)."""
  images, labels = np.asarray(images), np.asarray(labels)
  chunks = ((images[start:start + INCEPTION_BATCH], labels[start:start + INCEPTION_BATCH])
            for start in range(0, images.shape[0], INCEPTION_BATCH))
  return score_batches(config, chunks, int(images.shape[0]), inception=inception,
                       reference_stats=reference_stats, classifier=classifier)


def score_batches(config: ml_collections.ConfigDict,
                  batches: Iterable[tuple[np.ndarray, np.ndarray]], num_samples: int, *,
                  inception: Any = None, reference_stats: dict[str, Any] | None = None,
                  classifier: classifier_lib.SampleScorer | None = None) -> dict[str, Any]:
  """score_images of images that arrive in (uint8 images, labels) batches (a shard directory):
  only their Inception features are kept, and their images only for the classifier scores."""
  inception = inception or inception_lib.load_inception(
      config.eval.inception_weights or None, cache_dir=config.eval.cache_dir or None)
  reference_stats = reference_stats or load_reference(config, inception)
  if config.eval.cas and classifier is None:
    classifier = load_classifier(config)
  rows: dict[str, list[np.ndarray]] = {"pool3": [], "logits": [], "image": [], "label": []}
  progress = generate.Progress("Inception features", num_samples)
  for images, labels in batches:
    for start in range(0, images.shape[0], INCEPTION_BATCH):
      features = _features(inception, images[start:start + INCEPTION_BATCH], INCEPTION_BATCH)
      rows["pool3"].append(features["pool3"])
      if features["logits"] is not None:
        rows["logits"].append(features["logits"])
    rows["label"].append(np.asarray(labels))
    if classifier is not None:  # The CAS trains on the samples themselves.
      rows["image"].append(np.asarray(images))
    progress.update(images.shape[0])
  gathered = {k: np.concatenate(v) for k, v in rows.items() if v}
  if gathered["pool3"].shape[0] != num_samples:
    raise ValueError(f"expected {num_samples} samples, got {gathered['pool3'].shape[0]}.")
  scores = _scores(gathered, reference_stats, inception)
  scores.update(_classifier_scores(classifier, gathered))
  scores.update(num_samples=int(num_samples), reference=reference_stats["description"],
                num_reference=int(reference_stats["num_images"]),
                preprocessing=getattr(inception, "preprocessing", inception_lib.PREPROCESSING),
                inception=str(inception.source),
                fid_protocol=reference.fid_protocol(reference_stats))
  return scores


def score_sample_dir(config: ml_collections.ConfigDict, directory: str,
                     **kwargs) -> dict[str, Any]:
  """An evaluation result (as the evaluator's, for `record`) of the samples in a shard directory
  that `main --mode=sample` wrote; the settings come from its manifest. kwargs: score_batches'."""
  start = time.time()
  manifest = sample_shards.manifest_of(directory)
  batches = ((images, labels) for images, labels, _ in sample_shards.iter_batches(directory))
  scores = score_batches(config, batches, int(manifest["num_samples"]), **kwargs)
  return {
      **{k: v for k, v in scores.items() if k != "notes"},
      "sampler": manifest["sampler"], "steps": int(manifest["steps"]),
      "guidance": float(manifest["guidance"]), "labels": manifest["labels"],
      "seed": int(manifest["seed"]), "samples": str(directory),
      "checkpoint": manifest.get("checkpoint"), "notes": scores["notes"],
      # Sampling happened elsewhere: no sampling time, and no images per second to report.
      "timings": {"sampling_s": 0.0, "images_per_s": None, "total_s": time.time() - start},
  }


def evaluate(config: ml_collections.ConfigDict, model: nn.Module, params: Any, *,
             num_samples: int, seed: int, mesh: jax.sharding.Mesh, **kwargs) -> dict[str, Any]:
  """One evaluation; kwargs go to make_evaluator (inception, reference_stats, classifier, ...)."""
  return make_evaluator(config, model, mesh, **kwargs)(params, num_samples=num_samples, seed=seed)


# ----------------------------------------------------------------------------------------------
# Records: metrics.jsonl lines, eval/step_<N>.json, several seeds.


def record(step: int, results: list[dict[str, Any]]) -> dict[str, Any]:
  """The metrics.jsonl line for one or more evaluations (seeds) of a checkpoint.

  Each metric is the mean over seeds, with <metric>_std (population std; 0 for one seed) beside it;
  None stays None.
  """
  first = results[0]
  line: dict[str, Any] = {"step": int(step), "mode": "eval"}
  for name, key in RECORD_METRICS.items():
    values = [r.get(key) for r in results]
    if any(v is None for v in values):
      line[name], line[f"{name}_std"] = None, None
    else:
      line[name], line[f"{name}_std"] = float(np.mean(values)), float(np.std(values))
  line.update({
      "num_samples": first["num_samples"], "seeds": [r["seed"] for r in results],
      "sampler": first["sampler"], "steps": first["steps"], "guidance": first["guidance"],
      "preprocessing": first["preprocessing"], "fid_protocol": first["fid_protocol"],
      "labels": first.get("labels"),
      "inception": first.get("inception"), "reference": first.get("reference"),
      "num_reference": first.get("num_reference"),
      "sampling_s": float(np.sum([r["timings"]["sampling_s"] for r in results])),
      "images_per_s": _mean_or_none([r["timings"]["images_per_s"] for r in results]),
  })
  # What was scored, when it was not this run's own sampling: a checkpoint chosen by --checkpoint
  # or --checkpoint_step, a directory of samples.
  line.update({k: first[k] for k in ("checkpoint", "samples") if first.get(k) is not None})
  return line


def _mean_or_none(values: list[float | None]) -> float | None:
  return None if any(v is None for v in values) else float(np.mean(values))


def comparable_settings(line: dict[str, Any]) -> dict[str, Any]:
  """The settings of a record that must be equal for its FID to be compared with another's."""
  return {name: line.get(name) for name in COMPARABLE_SETTINGS}


def summary(line: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  """One human-readable line for a record: what was compared, then each metric that was computed.

  The samples' count and sampler come from the record itself; the reference from the config.
  """
  shown = (("FID", "fid", "{:.1f}"), ("IS", "is", "{:.2f}"), ("precision", "precision", "{:.3f}"),
           ("recall", "recall", "{:.3f}"), ("CAS", "cas", "{:.1%}"),
           ("real-data CAS ceiling", "cas_real_ceiling", "{:.1%}"),
           ("accuracy on samples", "accuracy_on_samples", "{:.1%}"))
  metrics_text = ", ".join(f"{label} {form.format(line[key])}" for label, key, form in shown
                           if line.get(key) is not None)
  return (f"Evaluation at step {line['step']}: {line['num_samples']} samples ({line['sampler']}, "
          f"{line['steps']} steps, guidance {line['guidance']:g}) against "
          f"{int(config.eval.num_reference)} {reference_source(config)} images: {metrics_text} "
          f"(FID protocol: {line['fid_protocol']})")


def append_jsonl(path: str, line: dict[str, Any]) -> None:
  """Appends one JSON line to metrics.jsonl (the trainer's log records and eval records alike)."""
  text = json.dumps(line) + "\n"
  if "://" not in path:
    with open(path, "a") as f:
      f.write(text)
    return
  remote = epath.Path(path)  # Object stores have no append: rewrite.
  remote.write_text((remote.read_text() if remote.exists() else "") + text)


def write_results(workdir: str, step: int, line: dict[str, Any],
                  results: list[dict[str, Any]]) -> str:
  """Appends `line` to workdir/metrics.jsonl and writes everything to workdir/eval/step_<N>.json."""
  path = epath.Path(workdir) / "eval" / f"step_{step}.json"
  if jax.process_index() == 0:
    append_jsonl(os.path.join(workdir, "metrics.jsonl"), line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"record": line, "results": results}, indent=2))
  return str(path)


def latest_checkpoint_step(workdir: str) -> int | None:
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir),
                             item_names=("state", "data", "config")) as manager:
    return manager.latest_step()


# ----------------------------------------------------------------------------------------------
# In the training loop: evaluate the EMA parameters, log, keep the best checkpoint by FID.


def best_checkpoint_dir(workdir: str) -> epath.Path:
  return checkpointing.best_checkpoint_dir(workdir)


class LoopEvaluation:
  """Called by the trainer every config.eval_every_steps with the train state.

  Evaluates the EMA parameters on config.eval_num_samples samples (the same seed every time, so
  successive evaluations differ only by the parameters), appends the record to metrics.jsonl,
  writes it to the metric writer and to eval/step_<N>.json, and saves the state to
  workdir/checkpoints_best/ (one checkpoint, Orbax, the same items as checkpoints/ plus 'eval')
  when the FID is the lowest so far.

  The best FID and the evaluation settings it was measured under (`comparable_settings`: sample
  count, seeds, sampler, steps, guidance, reference, Inception) are read back from that manager's
  metrics, so they survive restarts. An FID is only compared with one of the same settings: after
  a change (another eval_num_samples, reference or sampler) the old best no longer counts, and the
  first evaluation under the new settings replaces it. A restart from a regular checkpoint older
  than the best one re-evaluates steps that may already be in checkpoints_best/; a lower FID there
  replaces that step's checkpoint (Orbax refuses to save a step twice).
  """

  def __init__(self, config: ml_collections.ConfigDict, model: nn.Module,
               mesh: jax.sharding.Mesh, workdir: str, writer: Any, **evaluator_kwargs):
    self.config = config
    self.workdir = workdir
    self.writer = writer
    self.seed = int(config.seed) + 2  # The sample grids use seed + 1.
    self.evaluator = make_evaluator(config, model, mesh, **evaluator_kwargs)
    # JSON of comparable_settings: stored with every best checkpoint, compared on restart.
    self.settings = json.dumps(self.evaluator.settings(int(config.eval_num_samples), [self.seed]),
                               sort_keys=True)
    self.manager = ocp.CheckpointManager(
        best_checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=self._rank, best_mode="min",
            enable_async_checkpointing=True, cleanup_tmp_directories=True),
        item_names=("state", "data", "config", "eval"))
    self.best_fid = self._best_fid_under(self.settings)

  def _rank(self, checkpoint_metrics: dict[str, Any]) -> float:
    """Orbax's best_fn: the FID, or +inf for a checkpoint evaluated under other settings (so that
    the first save under the current settings removes it)."""
    if checkpoint_metrics.get("settings") != self.settings:
      return math.inf
    return float(checkpoint_metrics["fid"])

  def _best_fid_under(self, settings: str) -> float:
    """The lowest FID in checkpoints_best/ measured under `settings` (inf if none)."""
    fids = [math.inf]
    for step in self.manager.all_steps():
      saved = self.manager.metrics(step) or {}
      if saved.get("settings") == settings:
        fids.append(float(saved["fid"]))
      else:
        logging.warning("checkpoints_best/%d was evaluated under other settings than this run's "
                        "(%s); it is not compared, and the next better checkpoint replaces it.",
                        step, settings)
    return min(fids)

  def __call__(self, state: dict[str, Any], step: int, data_position: int) -> dict[str, Any]:
    result = self.evaluator(state["ema_params"], num_samples=int(self.config.eval_num_samples),
                            seed=self.seed)
    line = record(step, [result])
    write_results(self.workdir, step, line, [result])
    if self.writer is not None:
      self.writer.write_scalars(step, {f"eval/{k}": v for k, v in line.items()
                                       if k in RECORD_METRICS and v is not None})
    settings = json.dumps(comparable_settings(line), sort_keys=True)
    if settings != self.settings:
      self.settings = settings
      self.best_fid = self._best_fid_under(settings)
    fid = result["fid"]
    if jax.process_count() > 1:  # One decision for all processes (the save is collective).
      from jax.experimental import multihost_utils  # noqa: PLC0415

      fid = float(multihost_utils.broadcast_one_to_all(np.float64(fid)))
    improved = fid < self.best_fid
    if improved:
      self.best_fid = fid
      self._save(state, step, data_position, line, fid)
    logging.info("eval step %d: FID %.3f (best %.3f%s), IS %s, P %s, R %s, CAS %s (real-data "
                 "ceiling %s), accuracy on samples %s; %.1f images/s", step, fid, self.best_fid,
                 ", saved" if improved else "", line["is"], line["precision"], line["recall"],
                 line["cas"], line["cas_real_ceiling"], line["accuracy_on_samples"],
                 line["images_per_s"])
    return line

  def _save(self, state: dict[str, Any], step: int, data_position: int, line: dict[str, Any],
            fid: float) -> None:
    self.manager.wait_until_finished()  # all_steps() then includes a save still in flight.
    if step in self.manager.all_steps():
      self.manager.delete(step)  # Re-evaluated after a restart, with a lower FID: replace it.
    self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"position": int(data_position), "step": int(step)}),
            config=ocp.args.JsonSave(self.config.to_dict()),
            eval=ocp.args.JsonSave(line)),
        metrics={"fid": fid, "settings": self.settings}, force=True)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
