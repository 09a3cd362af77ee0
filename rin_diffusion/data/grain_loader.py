"""Batches built in worker processes by grain (`config.dataset.loader = 'grain'`).

Decoding threads share the trainer's GIL: every image's Python work (record parsing, TFDS feature
decoding, PIL calls) holds it, so at small resolutions a host's threads top out below what a pod
step needs and starve the training loop, whose dispatch needs the same lock
(benchmarks/input_pipeline.py measures both). Here `config.dataset.num_workers` processes each
build whole batches, `BatchMaker(step)` for steps worker, worker + N, ..., and grain returns them
in step order through shared memory. The batches are the threaded loader's, bit for bit: a step's
batch is a pure function of (seed, step, batch size, process layout), so resuming needs no
iterator state, only `start_step`.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Protocol

from absl import flags

# More steps than any run takes; grain's range dataset needs an end.
_LAST_STEP = 1 << 60
# Batches each worker keeps ready (benchmarks/input_pipeline.py drains them before timing).
BUFFER_PER_PROCESS = 2


GRAIN_MISSING = (
    "config.dataset.loader='grain' needs the grain package, which this environment lacks: "
    "pip install 'grain>=0.2.18' (rin_diffusion's setup.py requires it), or set "
    "config.dataset.loader='threads'.")


class StepBatches(Protocol):
  """What this loader needs of pipeline.BatchMaker (the pipeline imports this module, not back)."""

  source: Any
  local_batch_size: int
  low_resolution: int

  def __call__(self, step: int) -> dict[str, Any]: ...


def check_installed() -> None:
  """Raises ValueError(GRAIN_MISSING) when grain cannot be imported; config_lib.validate calls it."""
  if importlib.util.find_spec("grain") is None:
    raise ValueError(GRAIN_MISSING)


def _import_grain():
  try:
    import grain  # noqa: PLC0415 -- only this loader needs it.
  except ImportError as e:
    raise ValueError(GRAIN_MISSING) from e
  return grain


class GrainBatchIterator:
  """Same interface as pipeline.BatchIterator: next(), position, close(), a context manager."""

  def __init__(self, maker: StepBatches, start_step: int, num_processes: int,
               buffer_per_process: int = BUFFER_PER_PROCESS):
    if start_step < 0:
      raise ValueError(f"start_step={start_step}: must be >= 0.")
    grain = _import_grain()
    if not flags.FLAGS.is_parsed():
      # grain reads its options from absl flags; outside an absl app (tests, notebooks) nobody
      # parsed them, and reading one would raise. Their defaults are what we want.
      flags.FLAGS.mark_as_parsed()
    self.maker = maker
    self.source = maker.source
    self.local_batch_size = maker.local_batch_size
    self.low_resolution = maker.low_resolution
    self._position = int(start_step)
    self.num_processes = int(num_processes)
    steps = grain.MapDataset.range(self._position, _LAST_STEP).map(maker)
    # Inside each worker one thread builds one batch at a time: the parallelism is the processes.
    dataset = steps.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    if num_processes > 0:
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=num_processes, per_worker_buffer_size=buffer_per_process))
    self._iterator = iter(dataset)

  def __repr__(self) -> str:
    return (f"GrainBatchIterator({self.num_processes} grain worker processes, {self.source!r}, "
            f"{self.local_batch_size} examples per step)")

  @property
  def position(self) -> int:
    return self._position

  def __iter__(self) -> GrainBatchIterator:
    return self

  def __next__(self) -> dict[str, Any]:
    if self._iterator is None:
      raise StopIteration
    batch = next(self._iterator)
    self._position += 1
    return batch

  def close(self) -> None:
    """Stops the worker processes."""
    if self._iterator is not None:
      close = getattr(self._iterator, "close", None)
      if close is not None:
        close()
      self._iterator = None

  def __enter__(self) -> GrainBatchIterator:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
