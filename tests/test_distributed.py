"""rin_diffusion.distributed: which way a process joins a multi-process JAX job."""

from __future__ import annotations

import jax
import pytest

from rin_diffusion import distributed


class _Flag:
  def __init__(self, value):
    self.value = value


def _flags(distributed_mode="off", address="", num_processes=1, process_id=0):
  return distributed.Flags(_Flag(distributed_mode), _Flag(address), _Flag(num_processes),
                           _Flag(process_id))


@pytest.fixture
def calls(monkeypatch):
  seen = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: seen.append(kwargs))
  monkeypatch.setattr(jax.config, "update", lambda *args: None)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  return seen


def test_explicit_flags_switch_off_cluster_detection(calls, monkeypatch):
  # Under SLURM, jax's detection would otherwise give the process only GPU $SLURM_LOCALID.
  monkeypatch.setenv("SLURM_LOCALID", "0")
  distributed.initialize(_flags(address="node0:1234", num_processes=4, process_id=2))
  assert calls == [dict(coordinator_address="node0:1234", num_processes=4, process_id=2,
                        cluster_detection_method="deactivate")]


def test_auto_reads_the_environment_or_detects(calls, monkeypatch):
  distributed.initialize(_flags("auto"))  # A TPU pod or SLURM: jax detects everything.
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:99")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  distributed.initialize(_flags("auto"))
  assert calls == [{}, dict(coordinator_address="localhost:99", num_processes=2, process_id=1,
                            cluster_detection_method="deactivate")]
  distributed.initialize(_flags("off"))  # Off: one process, nothing joined.
  assert len(calls) == 2


def test_bad_values_name_the_variable(calls, monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:99")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
    distributed.initialize(_flags("auto"))
  with pytest.raises(ValueError, match="process id 3 of 2 processes"):
    distributed.initialize(_flags(address="h:1", num_processes=2, process_id=3))
  assert not calls
