"""End-to-end trainer tests: train, checkpoint, resume, outputs, and bad input."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import trainer_utils as tu
from PIL import Image

from rin_diffusion import config_lib, sample_shards, train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("fmnist"))


def test_train_checkpoint_restart_continues(data_root, tmp_path):
  workdir = str(tmp_path / "run")
  config = tu.tiny_config(data_root, total_steps=4, checkpoint_every_steps=2,
                          sample_every_steps=4)
  state = train.train_and_evaluate(config, workdir)
  assert int(state["step"]) == 4
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-2:] == ["2", "4"]
  records = tu.read_metrics(workdir)
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  for record in records:
    assert {"step", "loss", "learning_rate", "steps_per_sec"} <= set(record)
    assert np.isfinite(record["loss"])
  grid = Image.open(os.path.join(workdir, "samples", "step_4.png"))
  assert grid.size[0] > 32 and grid.size[1] > 32
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))

  # Restart with a longer run: continues from step 4, logs only the new steps.
  config = tu.tiny_config(data_root, total_steps=6, checkpoint_every_steps=2)
  state = train.train_and_evaluate(config, workdir)
  assert int(state["step"]) == 6
  assert [r["step"] for r in tu.read_metrics(workdir)] == [1, 2, 3, 4, 5, 6]

  # Restarting a finished run does nothing and loses nothing.
  state = train.train_and_evaluate(config, workdir)
  assert int(state["step"]) == 6
  assert len(tu.read_metrics(workdir)) == 6


def test_learning_rate_and_ema_reach_the_state(data_root, tmp_path):
  config = tu.tiny_config(data_root, total_steps=2, checkpoint_every_steps=2)
  config.optimizer.ema_decay = 0.5
  config.optimizer.ema_warmup = False
  state = train.train_and_evaluate(config, str(tmp_path / "run"))
  records = tu.read_metrics(str(tmp_path / "run"))
  # Linear warm-up over 2 steps from 0: step 0 uses lr 0, step 1 uses lr/2.
  assert records[0]["learning_rate"] == 0.0
  assert records[1]["learning_rate"] == pytest.approx(config.optimizer.learning_rate / 2)
  # After real updates the EMA (decay 0.5) differs from the params but moved off the init.
  params = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state["params"])])
  ema = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state["ema_params"])])
  assert not np.allclose(params, ema)


# --- Bad input: one clear error naming the field, nothing in the workdir lost. ---------------

BAD_CONFIGS = [
    ({"diffusion__train_schedule": "cosinus@0,1,1"}, "train_schedule"),
    ({"diffusion__infer_schedule": "bogus"}, "infer_schedule"),
    ({"model__patch_size": 5, "model__image_size": 32}, "patch_size"),
    ({"total_steps": 0}, "total_steps"),
    ({"total_steps": -3}, "total_steps"),
    ({"checkpoint_every_steps": -1}, "checkpoint_every_steps"),
    ({"diffusion__loss_weighting": "max_snr"}, "loss_weighting"),
    ({"sampling__sampler": "euler"}, "sampler"),
    ({"dataset__image_size": 28}, "image_size"),
]


@pytest.mark.parametrize("overrides,field", BAD_CONFIGS)
def test_bad_config_values_name_the_field(data_root, overrides, field):
  config = tu.tiny_config(data_root, **overrides)
  with pytest.raises(ValueError, match=field):
    config_lib.validate(config)


def test_batch_not_divisible_by_devices(data_root, tmp_path):
  config = tu.tiny_config(data_root, batch_size=12)  # 8 simulated devices.
  with pytest.raises(ValueError, match=r"config.batch_size=12 is not divisible by the 8 devices"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_missing_dataset_names_package_and_alternatives(data_root, tmp_path):
  config = tu.tiny_config(data_root)
  config.dataset.manual_dir = str(tmp_path / "nowhere")
  config.dataset.data_dir = str(tmp_path / "empty_tfds")
  with pytest.raises(FileNotFoundError) as error:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(error.value)
  assert "dataset-fashion-mnist" in message
  assert "--config.dataset.data_dir" in message and "--config.dataset.manual_dir" in message


def test_bad_input_leaves_the_workdir_alone(data_root, tmp_path):
  """A good run, then a bad restart: checkpoints and metrics are exactly as they were."""
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tu.tiny_config(data_root, total_steps=2, checkpoint_every_steps=2),
                           workdir)
  before = _snapshot(workdir)
  result = tu.run_main(workdir, tu.data_flags(data_root) + tu.TINY_FLAGS + [
      "--config.diffusion.train_schedule=nope"])
  assert result.returncode == 2, result.stderr[-2000:]
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("rin_diffusion:")]
  assert len(error_lines) == 1 and "config.diffusion.train_schedule" in error_lines[0]
  assert _snapshot(workdir) == before


def test_missing_config_file_is_a_clear_error(tmp_path):
  result = tu.subprocess.run(
      [tu.sys.executable, "-m", "rin_diffusion.main", "--config=configs/does_not_exist.py",
       f"--workdir={tmp_path}"], capture_output=True, text=True, cwd=tu.REPO, timeout=120)
  assert result.returncode != 0
  assert "does_not_exist.py" in result.stderr
  assert "Traceback" not in result.stderr


def _snapshot(workdir: str) -> dict[str, bytes]:
  files = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, workdir)] = f.read()
  return files


def test_sample_mode_writes_grid_and_shards_from_latest_ema(data_root, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tu.tiny_config(data_root, total_steps=2, checkpoint_every_steps=2),
                           workdir)
  output = str(tmp_path / "out" / "samples")
  result = tu.run_main(workdir, tu.data_flags(data_root) + tu.TINY_FLAGS + [
      "--mode=sample", "--num_samples=6", "--sampler=ddpm", "--steps=3", "--guidance=2",
      "--classes=1,7", f"--output={output}"])
  assert result.returncode == 0, result.stderr[-3000:]
  images, labels = sample_shards.load(output)
  assert images.shape == (6, 32, 32, 1) and images.dtype == np.uint8
  assert labels.tolist() == [1, 1, 1, 7, 7, 7]
  assert Image.open(os.path.join(output, "grid.png")).size == (3 * 33 + 1, 2 * 33 + 1)


def test_core_install_without_tensorflow_trains(tmp_path):
  """`pip install -e .` has no TensorFlow: training (including preparing Fashion-MNIST from the raw
  files) must still run, writing metrics.jsonl and checkpoints, and say once that TensorBoard is
  off."""
  workdir = str(tmp_path / "run")
  result = tu.run_main_without_tensorflow(workdir, tu.data_flags(str(tmp_path / "fmnist")) + [
      "--config.total_steps=2", "--config.checkpoint_every_steps=2", "--config.sample_every_steps=2"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert [r["step"] for r in tu.read_metrics(workdir)] == [1, 2]
  assert "2" in os.listdir(os.path.join(workdir, "checkpoints"))
  assert os.path.exists(os.path.join(workdir, "samples", "step_2.png"))
  assert not any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  assert result.stderr.count("No TensorBoard events") == 1
  assert "No module named 'tensorflow'" in result.stderr
