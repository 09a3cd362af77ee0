"""The ImageNet smoke path: configs/imagenet<R>.py:runlocal,synthetic on a generated stand-in."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
import trainer_utils

from rin_diffusion import config_lib, paper_configs
from rin_diffusion.data import pipeline, synthetic_imagenet

SMOKE_CONFIG = os.path.join(trainer_utils.REPO, "configs", "imagenet64.py") + ":runlocal,synthetic"


@pytest.fixture(scope="module")
def smoke_config(tmp_path_factory):
  config = paper_configs.load_config(SMOKE_CONFIG)
  config.dataset.data_dir = str(tmp_path_factory.mktemp("tfds"))
  return config


def test_config_names_the_generated_dataset():
  assert paper_configs.SYNTHETIC_DATASET == synthetic_imagenet.NAME
  real, smoke = paper_configs.imagenet_config(64), paper_configs.imagenet_config(64, "synthetic")
  assert smoke.dataset.name == synthetic_imagenet.NAME and real.dataset.name == "imagenet2012"
  smoke.dataset.name = real.dataset.name
  assert smoke.to_dict() == real.to_dict()  # `synthetic` changes the data set and nothing else.
  for resolution in paper_configs.RESOLUTIONS:
    assert "synthetic" in paper_configs.allowed_tokens(resolution)
    config = paper_configs.imagenet_config(resolution, "synthetic,runlocal")
    assert config.dataset.name == synthetic_imagenet.NAME and config.model.tape_dim == 32


def test_features_are_imagenet2012s(smoke_config):
  builder = synthetic_imagenet.prepare(smoke_config.dataset.data_dir)
  assert repr(builder.info.features) == repr(tfds.builder("imagenet2012").info.features)
  assert builder.info.file_format.value == "array_record"
  assert {s: builder.info.splits[s].num_examples for s in ("train", "validation")} == (
      synthetic_imagenet.SPLIT_SIZES)


def test_real_pipeline_decodes_crops_and_resizes(smoke_config):
  config_lib.validate(smoke_config)
  source = pipeline.make_source(smoke_config.dataset)
  assert len(source) == synthetic_imagenet.SPLIT_SIZES["train"]
  examples = [source[i] for i in range(len(source))]
  shapes = {e["image"].shape for e in examples}
  assert all(s[2] == 3 for s in shapes)
  assert any(s[0] != s[1] for s in shapes)  # Non-square: the centre crop matters.
  assert min(min(s[:2]) for s in shapes) < 64 < max(max(s[:2]) for s in shapes)  # Up and down.
  labels = np.array([e["label"] for e in examples])
  assert labels.min() >= 0 and labels.max() < 1000 and len(set(labels)) > 10
  image = pipeline.preprocess_image(examples[0]["image"], smoke_config.dataset, flip=True)
  assert image.shape == (64, 64, 3) and image.dtype == np.float32
  assert -1 <= image.min() < image.max() <= 1
  again = synthetic_imagenet.prepare(smoke_config.dataset.data_dir)  # Generated once, then read.
  assert again.info.splits["train"].num_examples == len(source)


def test_smoke_command_trains_two_steps(tmp_path):
  """The smoke command (plus a fresh data_dir and no sample grid), on the config's grain loader."""
  workdir = str(tmp_path / "in64")
  command = [sys.executable, "-m", "rin_diffusion.main", f"--config={SMOKE_CONFIG}",
             f"--workdir={workdir}", "--config.total_steps=2", "--config.sample_every_steps=0",
             f"--config.dataset.data_dir={tmp_path / 'tfds'}"]
  result = subprocess.run(command, capture_output=True, text=True, cwd=trainer_utils.REPO,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  losses = trainer_utils.step_losses(workdir)
  assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
  assert os.path.isdir(tmp_path / "tfds" / synthetic_imagenet.NAME)
