"""Device mesh, parameter shardings from logical-axis rules, and global batches.

The classic GSPMD flow (the modern pjit): a `Mesh` with Auto axes, `NamedSharding`s for the state and
the batch, and `jax.jit` with in/out shardings. The batch is split over every mesh axis ('data' and
'fsdp'); parameters are split over 'fsdp' where the rules say so and replicated over 'data'.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Axis sizes from config.mesh; one axis may be -1 ("all remaining devices")."""
  sizes = []
  for axis in MESH_AXES:
    size = int(mesh_config.get(axis, 1))
    if size == 0 or size < -1:
      raise ValueError(f"config.mesh.{axis}={size}: allowed are positive sizes or -1 (the rest).")
    sizes.append(size)
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh={dict(mesh_config)}: at most one axis may be -1.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
          f"config.mesh={dict(mesh_config)}: {num_devices} devices are not divisible by {known}.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"config.mesh={dict(mesh_config)} needs {math.prod(sizes)} devices; {num_devices} exist.")
  return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  if len(devices) == jax.device_count():
    # make_mesh knows the physical topology (TPU torus, hosts); Auto axes keep the GSPMD flow.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (batch) dimension over every mesh axis."""
  return NamedSharding(mesh, PartitionSpec(MESH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _drop_indivisible(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, name: str):
  """Replicate any dimension whose size the assigned mesh axes do not divide."""
  entries = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      entries.append(None)
      continue
    axes_tuple = axes if isinstance(axes, tuple) else (axes,)
    size = math.prod(mesh.shape[a] for a in axes_tuple)
    if dim % size:
      logging.info("Replicating %s dim of size %d (not divisible by %s=%d).", name, dim, axes,
                   size)
      entries.append(None)
    else:
      entries.append(axes)
  return PartitionSpec(*entries)


def logical_shardings(boxed_abstract: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for a tree of (abstract) values boxed with flax logical partitioning."""
  logical_specs = nn.get_partition_spec(boxed_abstract)
  unboxed = nn.meta.unbox(boxed_abstract)
  rules = tuple((name, tuple(axis) if isinstance(axis, list) else axis) for name, axis in rules)

  def to_sharding(path, logical_spec, leaf):
    mesh_spec = nn.logical_to_mesh_axes(logical_spec, rules)
    spec = _drop_indivisible(mesh_spec, leaf.shape, mesh, jax.tree_util.keystr(path))
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(
      to_sharding, logical_specs, unboxed, is_leaf=lambda x: isinstance(x, PartitionSpec))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's slice (rows in process order)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def check_batch_divisible(batch_size: int, mesh: Mesh, grad_accum_steps: int = 1) -> None:
  """Every device gets the same rows of the batch (and of each microbatch when accumulating)."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(
        f"config.batch_size={batch_size} is not divisible by the {devices} devices of the mesh "
        f"{dict(mesh.shape)}; use a multiple of {devices}.")
  if grad_accum_steps > 1 and batch_size % (devices * grad_accum_steps):
    raise ValueError(
        f"config.grad_accum_steps={grad_accum_steps}: config.batch_size={batch_size} is not "
        f"divisible by {grad_accum_steps} microbatches x {devices} devices; use a batch size "
        f"that is a multiple of {devices * grad_accum_steps}, or fewer steps.")
