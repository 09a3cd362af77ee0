"""Bad input, as a user would type it: one `rin_diffusion: error: ...` line, exit status 2, no
traceback, and an existing workdir left byte for byte as it was.

Config values are checked in-process against `config_lib.validate` (cheap); the command line and
file cases run `python -m rin_diffusion.main` (a few seconds each: flag errors stop before jax is
imported, the rest before anything is compiled).
"""

from __future__ import annotations

import math
import os

import pytest
import trainer_utils as tu

from rin_diffusion import config_lib, train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def trained_workdir(data_root, tmp_path_factory):
  """A finished 2-step run with checkpoints, metrics and TensorBoard events."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  train.train_and_evaluate(tu.tiny_config(data_root, total_steps=2, checkpoint_every_steps=1),
                           workdir)
  return workdir


# (field, bad value, what the message says after 'config.<field>': the value and what is allowed).
BAD_VALUES = [
    ("optimizer.learning_rate", -1e-3, "=-0.001: must be a number >= 0"),
    ("optimizer.learning_rate", math.nan, "=nan: must be a number >= 0"),
    ("optimizer.b1", 1.0, "=1.0: must be a number in [0, 1)"),
    ("optimizer.b2", -0.5, "=-0.5: must be a number in [0, 1)"),
    ("optimizer.eps", 0.0, "=0.0: must be a number > 0"),
    ("optimizer.weight_decay", -0.01, "=-0.01: must be a number >= 0"),
    ("optimizer.clip_norm", -1.0, "=-1.0: must be a number >= 0"),
    ("optimizer.ema_decay", 1.0, "=1.0: must be a number in [0, 1)"),
    ("optimizer.warmup_steps", -5, "=-5: must be an integer >= 0"),
    ("optimizer.name", "sgd", "='sgd' is not allowed; allowed: lamb, adamw"),
    ("diffusion.min_snr_gamma", 0.0, "=0.0: must be a number > 0"),
    ("diffusion.input_scale", -1.0, "=-1.0: must be a number > 0"),
    ("diffusion.label_dropout", 1.5, "=1.5: must be a number in [0, 1]"),
    ("diffusion.self_cond_rate", -0.1, "=-0.1: must be a number in [0, 1]"),
    ("diffusion.pred_type", "score", "='score' is not allowed; allowed: eps, x0, v"),
    ("diffusion.normalize_input", "batch",
     "='batch' is not allowed; allowed: empirical, analytic, none"),
    ("model.time_scaling", 0.0, "=0.0 must be positive"),
    ("model.drop_path", 1.0, "=1.0 must be in [0, 1)"),
    ("model.drop_units", -0.1, "=-0.1 must be in [0, 1)"),
    ("model.dtype", "float16", "='float16' is not allowed; allowed: float32, bfloat16"),
    ("sampling.td", -1.0, "=-1.0; allowed: td > -1"),
    ("sampling.steps", 0, "=0; allowed: an integer >= 1"),
    ("sampling.num_samples", 0, "=0: must be a positive integer"),
    ("sampling.guidance", -1.0, "=-1.0: must be a number >= 0"),
    ("sampling.classes", "shoes",
     "='shoes': allowed: '' (every class in turn) or comma-separated class ids in [0, 10)"),
    ("sampling.classes", "3,12", "='3,12': ids [12] out of range"),
    ("nonfinite_loss", "ignore", "='ignore' is not allowed; allowed: stop, skip"),
    ("init_from.params", "best", "='best' is not allowed; allowed: ema, params"),
    ("keep_checkpoints", 0, "=0: must be an integer >= 1"),
    ("batch_size", -8, "=-8: must be a positive integer"),
    ("dataset.image_size", 28, "=28 differs from config.model.image_size=32"),
]


@pytest.mark.parametrize("field,value,message", BAD_VALUES, ids=[f for f, _, _ in BAD_VALUES])
def test_bad_config_value_is_named_with_what_is_allowed(data_root, field, value, message):
  config = tu.tiny_config(data_root, **{field.replace(".", "__"): value})
  with pytest.raises(ValueError) as error:
    config_lib.validate(config)
  assert f"config.{field}{message}" in str(error.value)
  assert "\n" not in str(error.value)


def test_the_good_tiny_config_passes(data_root):
  config_lib.validate(tu.tiny_config(data_root))  # The cases above fail for their field alone.


def _main(*args: str) -> tu.subprocess.CompletedProcess:
  return tu.subprocess.run([tu.sys.executable, "-m", "rin_diffusion.main", *args],
                           capture_output=True, text=True, cwd=tu.REPO, timeout=300)


# Command-line mistakes: flag parsing stops these before jax is imported (about 2 s each).
TINY = f"--config={tu.TINY_CONFIG}:tiny"
BAD_COMMAND_LINES = [
    (["--config=configs/no_such_config.py", "--workdir=W"],
     ["--config=configs/no_such_config.py: no such file"]),
    ([TINY, "--workdir=W", "--config.model.tape_dm=64"],
     ["--config.model.tape_dm: the config has no field 'tape_dm'", "did you mean 'tape_dim'?"]),
    ([TINY, "--workdir=W", "--config.batch_size=abc"],
     ["--config.batch_size=abc", "config.batch_size takes an integer"]),
    ([TINY], ["--workdir is required"]),
    ([TINY, "--workdir=W", "--mode=bogus"], ["--mode=bogus", "train", "sample"]),
    ([TINY, "--workdir=W", "resume"], ["unexpected arguments ['resume']"]),
    (["--config.batch_size=8", TINY, "--workdir=W"],
     ["--config.batch_size=8 in argv before a value for --config"]),
    ([f"--config={tu.TINY_CONFIG}:huge", "--workdir=W"], ["unknown variant 'huge'", "'tiny'"]),
]


def test_command_line_mistakes_are_one_line_each(tmp_path):
  workdir = str(tmp_path / "run")
  for args, needles in BAD_COMMAND_LINES:
    line = tu.error_line(_main(*[a.replace("=W", f"={workdir}") for a in args]))
    for needle in needles:
      assert needle in line, (args, line)
  assert not os.path.exists(workdir)


def test_bad_values_and_files_leave_the_workdir_alone(data_root, trained_workdir, tmp_path):
  before = tu.snapshot(trained_workdir)
  data = tu.data_flags(data_root)
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  empty_raw = tmp_path / "empty_raw"
  empty_raw.mkdir()
  cases = [
      # A negative learning rate used to train; now the config check stops it.
      (data + ["--config.optimizer.learning_rate=-0.002"],
       ["config.optimizer.learning_rate=-0.002: must be a number >= 0"]),
      # manual_dir without the raw files (and no prepared data_dir): the message, no traceback.
      ([f"--config.dataset.manual_dir={empty_raw}",
        f"--config.dataset.data_dir={tmp_path / 'fresh_tfds'}"],
       ["Fashion-MNIST raw files not found", str(empty_raw),
        "apt-get install dataset-fashion-mnist"]),
      # data_dir inside a file.
      (data[:1] + [f"--config.dataset.data_dir={a_file}/tfds"],
       [f"config.dataset.data_dir='{a_file}/tfds'", "is a file, not a directory"]),
      # A mesh that does not fit the 8 devices.
      (data + ["--config.mesh.data=3"], ["config.mesh=", "needs 3 devices; 8 exist"]),
  ]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  for flags, needles in cases:
    line = tu.error_line(tu.run_main(trained_workdir, flags + tu.TINY_FLAGS, env=env))
    for needle in needles:
      assert needle in line, (flags, line)
  assert tu.snapshot(trained_workdir) == before
  assert not os.path.exists(tmp_path / "fresh_tfds")


def test_unusable_workdirs(data_root, tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  flags = tu.data_flags(data_root) + tu.TINY_FLAGS
  line = tu.error_line(tu.run_main(str(a_file), flags))
  assert f"--workdir={a_file}: is a file, not a directory" in line
  line = tu.error_line(tu.run_main(str(a_file / "run"), flags))
  assert f"--workdir={a_file}/run: cannot be created (Not a directory)" in line
  assert a_file.read_text() == "not a directory"


def test_sampling_without_a_checkpoint(data_root, tmp_path):
  empty = tmp_path / "never_trained"
  line = tu.error_line(tu.run_main(str(empty), tu.data_flags(data_root) + [
      "--mode=sample", "--num_samples=4"]))
  assert f"--workdir={empty}: holds no checkpoint" in line
  assert not empty.exists()  # Sampling only reads.


def test_sample_flags_are_checked_as_the_config_fields_they_set(data_root, trained_workdir):
  before = tu.snapshot(trained_workdir)
  line = tu.error_line(tu.run_main(trained_workdir, tu.data_flags(data_root) + [
      "--mode=sample", "--classes=1,99"]))
  assert line.startswith("rin_diffusion: error: --classes: config.sampling.classes='1,99'")
  assert "[0, 10)" in line
  assert tu.snapshot(trained_workdir) == before



def test_init_from_a_run_without_checkpoints_creates_nothing(data_root, tmp_path):
  config = tu.tiny_config(data_root)
  config.init_from.workdir = str(tmp_path / "never_trained")
  with pytest.raises(ValueError, match=r"config.init_from.workdir=.*never_trained: holds no chec"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists() and not (tmp_path / "never_trained").exists()
