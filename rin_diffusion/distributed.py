"""The flags that join a multi-process JAX job, shared by `rin_diffusion.main` and the cascade CLI.

Three ways in, first match wins:
  * --coordinator_address/--num_processes/--process_id: explicit (localhost tests, SLURM with one
    process per node, any cluster);
  * --distributed=auto with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID in the
    environment: explicit through the environment (containers, a simulated pod on one machine);
  * --distributed=auto alone: jax.distributed.initialize() detects the cluster (TPU pod, SLURM).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from absl import flags


class Flags(NamedTuple):
  distributed: flags.FlagHolder
  coordinator_address: flags.FlagHolder
  num_processes: flags.FlagHolder
  process_id: flags.FlagHolder


def define_flags() -> Flags:
  """Defines the flags in absl's global registry (once per program)."""
  return Flags(
      distributed=flags.DEFINE_enum(
          "distributed", "off", ["off", "auto"],
          "'auto': jax.distributed.initialize() detects the cluster (TPU pod, SLURM), or reads "
          "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID from the environment."),
      coordinator_address=flags.DEFINE_string("coordinator_address", "",
                                              "host:port of process 0."),
      num_processes=flags.DEFINE_integer("num_processes", 1, "Processes in the job."),
      process_id=flags.DEFINE_integer("process_id", 0, "This process's index."))


def _from_environment() -> tuple[str, int, int] | None:
  names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  values = [os.environ.get(name, "") for name in names]
  if not all(values):
    return None
  try:
    return values[0], int(values[1]), int(values[2])
  except ValueError:
    raise ValueError(f"JAX_NUM_PROCESSES={values[1]!r}, JAX_PROCESS_ID={values[2]!r}: both must "
                     "be integers") from None


def initialize(given: Flags) -> None:
  """Joins the job the flags describe; a no-op for one process."""
  import jax  # noqa: PLC0415 -- imported only once flags are parsed.

  explicit = None
  if given.coordinator_address.value:
    explicit = (given.coordinator_address.value, given.num_processes.value,
                given.process_id.value)
  elif given.distributed.value == "auto":
    explicit = _from_environment()
  if explicit is not None:
    address, num_processes, process_id = explicit
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process id {process_id} of {num_processes} processes: must be in "
                       f"0..{num_processes - 1}")
    # CPU processes exchange arrays through gloo; other backends ignore the setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Explicit means explicit: without 'deactivate', jax still reads SLURM's variables and gives
    # each process only the device of its SLURM_LOCALID (one GPU of eight per node).
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                               process_id=process_id, cluster_detection_method="deactivate")
  elif given.distributed.value == "auto":
    jax.distributed.initialize()
