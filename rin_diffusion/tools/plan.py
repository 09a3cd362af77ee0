"""Memory and FLOP plan of a config's train step on a TPU slice, compiled ahead of time on this CPU.

  python -m rin_diffusion.tools.plan --config=configs/imagenet1024.py --topology=v5e-256
  python -m rin_diffusion.tools.plan --config=configs/imagenet256.py --topology=v4-128 \\
      --config.mesh.fsdp=8 --config.model.remat=True --config.model.dtype=bfloat16
  python -m rin_diffusion.tools.plan --config=configs/fashion_mnist.py --topology=cpu:8

Builds the mesh of config.mesh over the slice's devices, lowers the trainer's step on abstract
inputs (nothing is allocated) and compiles it for the slice, then prints a table and one JSON line:
per-device bytes of the parameters, EMA, optimizer state and batch (exact, from the shardings),
XLA's temporaries (activations kept for the backward pass, gradients, workspace), the peak and
whether it fits the chip's HBM; FLOPs per step (analytic, and XLA's cost analysis, which counts a
`lax.map` body once and is therefore scaled by grad_accum_steps) and the step time the FLOPs
allow at the chip's bf16 peak; and the least memory traffic of the parameter update (read
parameters, gradients, optimizer state and EMA, write all but the gradients) with the time it
takes at the chip's HBM bandwidth. Under data parallelism every chip runs the whole update, so at
small per-chip batches this floor can exceed the step at peak; FSDP (config.mesh.fsdp) divides it.

Slices: 'v5e-N' and 'v6e-N' (N chips), 'v4-N' and 'v5p-N' (N TensorCores, N/2 chips: their
names count cores; one megacore chip is one jax device), or a topology name such as 'v5e:16x16';
'cpu:N' plans for N simulated CPU devices. TPU plans need libtpu (`pip install
"jax[tpu]==<jax version>"`, which also installs on machines without a TPU): it brings the TPU
compiler, so the memory figures are the TPU's. Without it the plan falls back to as many simulated
CPU devices and says so; XLA:CPU's buffer assignment is not the TPU's (it overstates temporaries
and shows no saving from remat), so only the state bytes and FLOPs carry over.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import time
from typing import Any

# The plan compiles for a topology; it never runs on the machine's own accelerator, so it neither
# needs nor takes libtpu's one-process-per-host lock (a training job may hold it).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rin_diffusion import config_lib, flops, sharding, train  # noqa: E402
from rin_diffusion.cascade import stage  # noqa: E402

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Generation:
  """A TPU generation: how its slice names count, its chip, its bf16 matmul peak and HBM."""
  name_counts_cores: bool
  chip_config: str
  hbm_gib: float
  peak_bf16_tflops: float
  three_d: bool
  hbm_gb_per_s: float


# Public chip figures (cloud.google.com/tpu/docs/system-architecture-tpu-vm).
GENERATIONS = {
    "v4": Generation(True, "megacore", 32, 275, True, 1200),
    "v5p": Generation(True, "megacore", 95, 459, True, 2765),
    "v5e": Generation(False, "default", 16, 197, False, 819),
    "v6e": Generation(False, "default", 32, 918, False, 1638),
}
_SHAPES_2D = {4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
              256: (16, 16)}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 4096: (16, 16, 16)}


@dataclasses.dataclass(frozen=True)
class Slice:
  """What --topology names: a TPU topology (generation + chip grid) or N simulated CPU devices."""
  label: str
  generation: str  # '' for cpu:N.
  grid: tuple[int, ...]

  @property
  def num_devices(self) -> int:
    return math.prod(self.grid)

  @property
  def topology_name(self) -> str:
    return f"{self.generation}:{'x'.join(str(n) for n in self.grid)}"


def parse_topology(text: str) -> Slice:
  """'v5e-256' | 'v4-128' | 'v5e:16x16' | 'cpu:8' -> Slice; ValueError naming what is allowed."""
  allowed = ("allowed: v5e-N or v6e-N (N chips in " + ", ".join(map(str, _SHAPES_2D)) + "), v4-N "
             "or v5p-N (N TensorCores, twice the chips: " + ", ".join(
                 str(2 * n) for n in _SHAPES_3D) + "), GEN:AxB[xC] (e.g. v5e:16x16, v4:4x4x4), "
             "or cpu:N")
  if text.startswith("cpu:"):
    count = text[4:]
    if not count.isdigit() or int(count) < 1:
      raise ValueError(f"--topology={text!r}: cpu:N needs a positive device count; {allowed}.")
    return Slice(text, "", (int(count),))
  generation, sep, rest = text.partition(":")
  if sep:
    try:
      grid = tuple(int(n) for n in rest.split("x"))
    except ValueError:
      grid = ()
    if generation in GENERATIONS and grid and all(n > 0 for n in grid) and (
        len(grid) == (3 if GENERATIONS[generation].three_d else 2)):
      return Slice(text, generation, grid)
    raise ValueError(f"--topology={text!r}: not a topology name; {allowed}.")
  generation, sep, count = text.rpartition("-")
  if generation not in GENERATIONS or not count.isdigit():
    raise ValueError(f"--topology={text!r}: unknown slice; {allowed}.")
  spec = GENERATIONS[generation]
  chips, odd = divmod(int(count), 2) if spec.name_counts_cores else (int(count), 0)
  shapes = _SHAPES_3D if spec.three_d else _SHAPES_2D
  if odd or chips not in shapes:
    raise ValueError(f"--topology={text!r}: no {generation} slice of that size; {allowed}.")
  return Slice(text, generation, shapes[chips])


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def slice_devices(topology: Slice) -> tuple[list[Any], str]:
  """The slice's devices and what they are: 'tpu' (libtpu's compiler) or 'cpu' (cpu:N, or a TPU
  slice simulated by as many CPU devices when libtpu is absent)."""
  if not topology.generation or not libtpu_available():
    devices = jax.devices("cpu")
    if len(devices) < topology.num_devices:
      raise ValueError(
          f"--topology={topology.label}: {len(devices)} CPU devices exist, "
          f"{topology.num_devices} are needed; set jax.config 'jax_num_cpu_devices' (the plan's "
          "command line does) before jax starts, or XLA_FLAGS=--xla_force_host_platform_device_"
          f"count={topology.num_devices}.")
    return devices[:topology.num_devices], "cpu"
  from jax.experimental import topologies  # noqa: PLC0415 -- needs libtpu's plugin.

  spec = GENERATIONS[topology.generation]
  bounds = (2, 2, 1)
  try:
    description = topologies.get_topology_desc(
        platform="tpu", topology_name=topology.topology_name, chip_config_name=spec.chip_config,
        chips_per_host_bounds=bounds, num_slices=1, wrap=(False,) * 3)
  except Exception as error:  # noqa: BLE001 -- libtpu raises plain RuntimeErrors.
    message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    hint = (" Another process holds libtpu's lock file (/tmp/libtpu_lockfile): run the plan "
            "when it ends." if "lockfile" in message else "")
    raise ValueError(f"--topology={topology.label}: libtpu could not describe "
                     f"{topology.topology_name}: {message}.{hint}") from None
  return list(description.devices), "tpu"


def _shard_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
             for leaf in jax.tree.leaves(tree))


def _mesh(config: ml_collections.ConfigDict, devices: list[Any]) -> Mesh:
  shape = sharding.mesh_shape(config.mesh, len(devices))
  try:
    # Knows the torus: puts the data axis across chips that share links.
    from jax.experimental import mesh_utils  # noqa: PLC0415

    grid = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, sharding.MESH_AXES)


def plan(config: ml_collections.ConfigDict, topology: Slice) -> dict[str, Any]:
  """Compiles the train step of `config` for `topology` and returns its plan (see module doc)."""
  config_lib.validate(config)
  devices, backend = slice_devices(topology)
  mesh = _mesh(config, devices)
  batch_size, accum = int(config.batch_size), int(config.grad_accum_steps)
  sharding.check_batch_divisible(batch_size, mesh, accum)
  model, tx, _, abstract_state, state_shardings = train.build(config, mesh)

  batch = train.batch_spec(config, mesh)
  conditioning = stage.conditioning_or_none(config)
  step = train.jit_train_step(model, tx, config, mesh, state_shardings, conditioning)
  start = time.perf_counter()
  lowered = step.lower(abstract_state, batch)
  out_of_memory = ""
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as error:
    # The TPU compiler refuses a program that cannot fit: that is the plan's answer, not a failure.
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    compiled, out_of_memory = None, str(error).strip().splitlines()[0]
  compile_s = time.perf_counter() - start
  try:
    analytic_flops = flops.train_flops_per_image(config) * batch_size
  except NotImplementedError:
    analytic_flops = None
  state_bytes = {
      "params": _shard_bytes(abstract_state["params"]),
      "ema_params": _shard_bytes(abstract_state["ema_params"]),
      "opt_state": _shard_bytes(abstract_state["opt_state"]),
      "batch": _shard_bytes(batch),
  }
  # The parameter update reads the parameters, gradients (shaped and sharded like them), optimizer
  # state and EMA once and writes all but the gradients once: a floor on its memory traffic.
  update_bytes = (3 * state_bytes["params"]
                  + 2 * (state_bytes["opt_state"] + state_bytes["ema_params"]))
  generation = GENERATIONS.get(topology.generation)
  hbm = generation.hbm_gib * GIB if generation and backend == "tpu" else None
  if compiled is not None:
    memory = compiled.memory_analysis()
    temp = int(memory.temp_size_in_bytes)
    # Donated state is both argument and output; counting it once is the live set at the peak.
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes + temp)
    fits = None if hbm is None else bool(peak <= hbm)
    # The partitioned program is one device's; a lax.map body (gradient accumulation) counts once.
    xla_flops = flops.xla_flops(compiled) * len(devices) * accum
  else:
    temp = _temporaries_from_message(out_of_memory)
    peak = None if temp is None else sum(state_bytes.values()) + temp
    fits, xla_flops = False, None
  result = {
      "tool": "plan",
      "topology": topology.label,
      "compiled_for": (f"tpu {topology.topology_name} (libtpu)" if backend == "tpu" else
                       f"{len(devices)} simulated cpu devices"),
      "devices": len(devices),
      "mesh": dict(mesh.shape),
      "batch_size": batch_size,
      "grad_accum_steps": accum,
      "per_device_batch": batch_size // len(devices),
      "dtype": str(config.model.dtype),
      "remat": (str(config.model.remat_policy) if config.model.remat else "off"),
      "params": sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract_state["params"])),
      "bytes_per_device": {**state_bytes, "temp": temp,
                           "peak": None if peak is None else int(peak)},
      "hbm_bytes": hbm,
      "fits": fits,
      "flops_per_step_analytic": analytic_flops,
      "flops_per_step_xla": xla_flops,
      "update_bytes_per_device": update_bytes,
      "compile_s": round(compile_s, 1),
  }
  if generation is not None:
    peak_flops = generation.peak_bf16_tflops * 1e12 * len(devices)
    model_flops = analytic_flops if analytic_flops is not None else xla_flops
    if model_flops is not None:
      result["step_s_at_bf16_peak"] = model_flops / peak_flops
    # Data parallelism replicates the update on every chip; FSDP splits it. When this floor is
    # near the step at peak, shard the state (config.mesh.fsdp) before tuning anything else.
    result["update_s_at_hbm_bandwidth"] = update_bytes / (generation.hbm_gb_per_s * 1e9)
  if out_of_memory:
    result["note"] = f"the TPU compiler ran out of HBM: {out_of_memory}"
  if backend != "tpu" and topology.generation:
    result["note"] = ("libtpu is not installed: compiled for simulated CPU devices; temp and "
                      "peak are XLA:CPU's, not the TPU's (pip install 'jax[tpu]')")
  return result


def _temporaries_from_message(message: str) -> int | None:
  """Bytes of the 'HLO temporaries (19.07G)' that the TPU compiler reports when it runs out."""
  found = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", message)
  if not found:
    return None
  return int(float(found.group(1)) * 1024 ** " KMGT".index(found.group(2)))


def format_table(result: dict[str, Any]) -> str:
  per_device = result["bytes_per_device"]
  rows = [("compiled for", result["compiled_for"]),
          ("mesh", " x ".join(f"{k} {v}" for k, v in result["mesh"].items())),
          ("batch (per device)", f"{result['batch_size']} ({result['per_device_batch']})"
           + (f", {result['grad_accum_steps']} microbatches" if result["grad_accum_steps"] > 1
              else "")),
          ("activations dtype, remat", f"{result['dtype']}, {result['remat']}"),
          ("parameters", f"{result['params'] / 1e6:.1f} M")]
  rows += [(f"{name} / device", "unknown" if per_device[name] is None
            else f"{per_device[name] / GIB:.3f} GiB")
           for name in ("params", "ema_params", "opt_state", "batch", "temp", "peak")]
  if result["hbm_bytes"] is not None:
    rows.append(("HBM / device", f"{result['hbm_bytes'] / GIB:.0f} GiB: "
                 + ("fits" if result["fits"] else "DOES NOT FIT")))
  if result["flops_per_step_analytic"] is not None:
    rows.append(("FLOPs / step (analytic)", f"{result['flops_per_step_analytic']:.4g}"))
  if result["flops_per_step_xla"] is not None:
    rows.append(("FLOPs / step (XLA)", f"{result['flops_per_step_xla']:.4g}"))
  if "step_s_at_bf16_peak" in result:
    rows.append(("step at bf16 peak", f"{result['step_s_at_bf16_peak']:.4g} s"))
  update = f"{result['update_bytes_per_device'] / GIB:.3f} GiB / device"
  if "update_s_at_hbm_bandwidth" in result:
    update += f", at least {result['update_s_at_hbm_bandwidth']:.4g} s at HBM bandwidth"
  rows.append(("update traffic", update))
  rows.append(("compile", f"{result['compile_s']} s"))
  width = max(len(name) for name, _ in rows)
  lines = [f"plan for {result['topology']}"] + [f"  {name:<{width}}  {value}"
                                               for name, value in rows]
  if "note" in result:
    lines.append(f"  note: {result['note']}")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config, topology_name = flags.FLAGS.config, flags.FLAGS.topology
  try:
    if config is None or not topology_name:
      raise ValueError("--config and --topology are required, e.g. "
                       "--config=configs/imagenet256.py --topology=v5e-256")
    topology = parse_topology(topology_name)
    if topology.generation and not libtpu_available():
      print(f"libtpu is not installed: planning {topology.label} on {topology.num_devices} "
            "simulated CPU devices (state bytes and FLOPs hold; temporaries are XLA:CPU's).",
            file=sys.stderr)
    if not topology.generation or not libtpu_available():
      jax.config.update("jax_num_cpu_devices", topology.num_devices)
    result = plan(config, topology)
  except (ValueError, OSError) as error:  # OSError: config_flags could not load the file.
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  print(format_table(result))
  print(json.dumps(result))


if __name__ == "__main__":
  # Defined here, not at import: tests import this module beside others that define --config.
  config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
  flags.DEFINE_string("topology", None, "v5e-256, v4-128, v5p-N, v6e-N, GEN:AxB[xC] or cpu:N.")
  app.run(main)
