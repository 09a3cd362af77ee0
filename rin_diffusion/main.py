r"""Command line: train (default) or sample.

  python -m rin_diffusion.main --config=configs/fashion_mnist.py --workdir=/tmp/fmnist
  python -m rin_diffusion.main --config=configs/imagenet64.py:runlocal --workdir=... \
      --config.batch_size=16
  python -m rin_diffusion.main --mode=sample --config=configs/fashion_mnist.py \
      --workdir=/tmp/fmnist --num_samples=100 --sampler=ddpm --steps=250 --guidance=2

Restarting with the same workdir resumes from the latest checkpoint. Multi-process: TPU pods and
SLURM are detected by `jax.distributed.initialize()` (--distributed=auto); elsewhere pass
--coordinator_address, --num_processes and --process_id.
"""

from __future__ import annotations

import io
import logging
import os
import sys

from absl import app, flags
from etils import epath
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample"], "What to do.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "off", ["off", "auto"],
    "'auto': jax.distributed.initialize() detects the cluster (TPU pod, SLURM).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Sample mode: images (default config).")
_SAMPLER = flags.DEFINE_enum("sampler", None, ["ddpm", "ddpm_small", "ddim"], "Sample mode.")
_STEPS = flags.DEFINE_integer("steps", None, "Sample mode: sampling steps (default config).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "Sample mode: guidance weight w.")
_CLASSES = flags.DEFINE_string("classes", None, "Sample mode: comma-separated class ids.")
_SEED = flags.DEFINE_integer("sample_seed", 0, "Sample mode: random seed.")
_OUTPUT = flags.DEFINE_string("output", "", "Sample mode: output prefix (default workdir/samples).")


def _initialize_distributed() -> None:
  import jax  # noqa: PLC0415

  if _COORDINATOR.value:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value == "auto":
    jax.distributed.initialize()


def sample_mode(config, workdir: str) -> str:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from rin_diffusion import checkpointing, generate, sharding, train  # noqa: PLC0415

  mesh = sharding.make_mesh(config.mesh)
  model, _, _, abstract_state, _ = train.build(config, mesh)
  ema_params = checkpointing.restore_params_from(workdir, "ema", abstract_state["params"])
  sampler = _SAMPLER.value or config.sampling.sampler
  steps = _STEPS.value or int(config.sampling.steps)
  guidance = config.sampling.guidance if _GUIDANCE.value is None else _GUIDANCE.value
  num_samples = _NUM_SAMPLES.value or int(config.sampling.num_samples)
  classes = config.sampling.classes if _CLASSES.value is None else _CLASSES.value
  labels = generate.class_labels(config, num_samples, classes)
  sample_fn = generate.make_sample_fn(model, config, sampler=sampler, steps=steps,
                                      guidance=float(guidance))
  images = np.asarray(jax.device_get(
      sample_fn(ema_params, jax.random.key(_SEED.value), jnp.asarray(labels))))
  prefix = _OUTPUT.value or os.path.join(
      workdir, "samples", f"sample_{sampler}_{steps}steps_w{guidance:g}")
  if jax.process_index() == 0:
    generate.save_grid(images, prefix + ".png", columns=int(np.sum(labels == labels[0])))
    buffer = io.BytesIO()
    np.savez(buffer, images=generate.to_uint8(images), labels=labels)
    epath.Path(prefix + ".npz").write_bytes(buffer.getvalue())
  logging.info("Wrote %s.png and %s.npz", prefix, prefix)
  return prefix


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/fashion_mnist.py")
  try:
    _ = config.to_dict  # config_flags defers a load failure to the first access.
  except OSError as error:  # config_flags loads lazily and reports a missing file as OSError.
    raise ValueError(f"--config could not be loaded: {' '.join(str(error).split())}") from None
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required.")
  _initialize_distributed()
  logging.getLogger().setLevel(logging.INFO)

  from rin_diffusion import config_lib, train  # noqa: PLC0415

  config_lib.validate(config)
  if _MODE.value == "sample":
    sample_mode(config, _WORKDIR.value)
  else:
    train.train_and_evaluate(config, _WORKDIR.value)


def run() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  try:
    app.run(main)
  except ValueError as error:  # Bad input: one clear line, no traceback wall.
    print(f"rin_diffusion: error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
