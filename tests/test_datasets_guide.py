"""docs/datasets.md, "Your own images", run as written on a 40-image data set.

The guide's marked blocks are what runs: the script block is saved as write_my_dataset.py, its
two commands write a folder of PNGs and an .npz as TFDS datasets (HOME is the test's directory,
so `$HOME/tensorflow_datasets` lands there), both read back through the pipeline unchanged, and
the training command runs 2 steps of `configs/fashion_mnist.py:tiny` on the folder's dataset.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import subprocess
import sys

import ml_collections
import numpy as np
import PIL.Image
import pytest

from rin_diffusion.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(REPO, "docs", "datasets.md")
CLASS_NAMES = ("cats", "dogs")  # Labels 0 and 1: the sorted folder names.
IMAGES_PER_CLASS = 20


def guide_block(name: str) -> str:
  """The fenced block right after `<!-- datasets-guide: name -->`."""
  with open(GUIDE, encoding="utf-8") as f:
    text = f.read()
  match = re.search(rf"<!-- datasets-guide: {name} -->\n```\w*\n(.*?)\n```", text, re.S)
  assert match, f"docs/datasets.md has no block marked 'datasets-guide: {name}'"
  return match.group(1)


def run_shell(commands: str, cwd: str, home: str) -> subprocess.CompletedProcess:
  """Runs the guide's shell lines with this interpreter as `python` and HOME=home."""
  commands = re.sub(r"(?m)^python ", shlex.quote(sys.executable) + " ", commands)
  env = {**os.environ, "HOME": home}
  return subprocess.run(["bash", "-euc", commands], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=900, check=False)


def make_images(tmp_path) -> dict[str, collections.Counter]:
  """my_images/<class>/*.png (RGB and grey, several sizes) and my_arrays.npz (32x32 RGB).

  Returns dataset name -> Counter of (label, RGB pixels as bytes) the dataset must hold.
  """
  rng = np.random.default_rng(0)
  expected = {"my_images": collections.Counter(), "my_arrays": collections.Counter()}
  for label, class_name in enumerate(CLASS_NAMES):
    folder = tmp_path / "my_images" / class_name
    folder.mkdir(parents=True)
    for i in range(IMAGES_PER_CLASS):
      height, width = (36, 48) if i % 2 else (40, 40)
      rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
      if i % 5 == 0:  # Grey files: the script converts them to RGB.
        rgb = np.repeat(rgb[..., :1], 3, axis=-1)
        PIL.Image.fromarray(rgb[..., 0]).save(folder / f"{i:03d}.png")
      else:
        PIL.Image.fromarray(rgb).save(folder / f"{i:03d}.png")
      expected["my_images"][(label, rgb.tobytes())] += 1
  images = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(40) % 2
  np.savez(tmp_path / "my_arrays.npz", images=images, labels=labels)
  expected["my_arrays"].update(
      (int(label), image.tobytes()) for image, label in zip(images, labels))
  return expected


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  """The guide's script and write commands run on the tiny data: (tmp dir, expected contents)."""
  tmp_path = tmp_path_factory.mktemp("guide")
  expected = make_images(tmp_path)
  (tmp_path / "write_my_dataset.py").write_text(guide_block("script") + "\n")
  result = run_shell(guide_block("write"), cwd=str(tmp_path), home=str(tmp_path))
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return tmp_path, expected


@pytest.mark.parametrize("name", ["my_images", "my_arrays"])
def test_written_dataset_reads_back_unchanged(written, name):
  tmp_path, expected = written
  dataset = ml_collections.ConfigDict({
      "name": name, "split": "train", "data_dir": str(tmp_path / "tensorflow_datasets"),
      "manual_dir": "", "image_size": 32, "channels": 3, "num_classes": 2, "random_flip": False,
      "loader": "threads", "num_workers": 0, "pad_to": 0})
  source = pipeline.make_source(dataset)
  found = collections.Counter((int(source[i]["label"]), source[i]["image"].tobytes())
                              for i in range(len(source)))
  assert len(source) == 40
  assert found == expected[name]


def test_training_command_runs_on_the_written_dataset(written):
  tmp_path, _ = written
  command = guide_block("train")
  for old, new in (("--config=configs/fashion_mnist.py ", "--config=configs/fashion_mnist.py:tiny "),
                   ("--workdir=workdir/my_images ", f"--workdir={tmp_path / 'run'} ")):
    assert old in command, f"the guide's training command no longer has {old!r}"
    command = command.replace(old, new)
  command += (" --config.total_steps=2 --config.checkpoint_every_steps=2"
              " --config.sample_every_steps=0")
  result = run_shell(command, cwd=REPO, home=str(tmp_path))
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  losses = [r["loss"] for r in records if "loss" in r]
  assert [r["step"] for r in records if "loss" in r] == [1, 2]
  assert all(np.isfinite(losses))
