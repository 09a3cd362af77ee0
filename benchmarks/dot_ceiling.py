"""The matmul ceiling of a compiled program: its own dot products, timed alone.

`peak_fraction` in train_step.py compares a step with a large square matmul. Part of the gap is the
step's non-matmul work (norms, softmax, GELU, layout copies, the optimizer); part is that the
step's matmuls are smaller, thinner or transposed and so run below the peak even on their own.
This module separates the two. It reads every `dot` of the optimised HLO that XLA will run (inside
fusions too, times the trip count of any loop around it), times each distinct product standalone
(same shapes, dimension numbers and element types, jitted alone: the fastest of 2 medians of 10
calls, minus the cost of dispatching an empty jitted call), and sums them. That sum is what the
step would take if everything but its matmuls were free, so `step_fraction_ceiling` bounds the
step's `peak_fraction` from above for this backend's matmul kernels.

Convolutions are not timed (the RIN's only one is its patch embedding); `convolutions` counts them.
A loop whose trip count XLA does not know counts once and sets `unknown_trip_counts`.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matmul_peak import measure_matmul_peak, median_call_seconds

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .*\{$")
# `%name = f32[2,3]{1,0} opcode(` (array-shaped instructions; tuples do not match).
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\](?:\{[^}]*\})? "
                          r"([\w\-]+)\((.*)$")
_PARAMETER_IN_HEADER = re.compile(r"([\w.\-]+): (\w+)\[([\d,]*)\]")
_CALLEES = re.compile(r"\b(calls|to_apply|body)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r"\"known_trip_count\":\{\"n\":\"(\d+)\"")


class Dot(NamedTuple):
  """One distinct product: operand shapes, dimension numbers and element types."""
  lhs_shape: tuple[int, ...]
  rhs_shape: tuple[int, ...]
  lhs_contracting: tuple[int, ...]
  rhs_contracting: tuple[int, ...]
  lhs_batch: tuple[int, ...]
  rhs_batch: tuple[int, ...]
  lhs_dtype: str
  rhs_dtype: str
  out_dtype: str

  @property
  def flops(self) -> float:
    """2 x batch x lhs-free x rhs-free x contracting (each operand holds batch x contracting)."""
    batch = math.prod(self.lhs_shape[d] for d in self.lhs_batch)
    contracting = math.prod(self.lhs_shape[d] for d in self.lhs_contracting)
    return 2.0 * math.prod(self.lhs_shape) * math.prod(self.rhs_shape) / (batch * contracting)

  def describe(self) -> str:
    return (f"{self.lhs_dtype}{list(self.lhs_shape)} x {self.rhs_dtype}{list(self.rhs_shape)} "
            f"contract {list(self.lhs_contracting)}/{list(self.rhs_contracting)} "
            f"batch {list(self.lhs_batch)}/{list(self.rhs_batch)}")


def _dims(attributes: str, name: str) -> tuple[int, ...]:
  match = re.search(rf"\b{name}=\{{([\d,]*)\}}", attributes)
  return tuple(int(d) for d in match.group(1).split(",") if d) if match else ()


def _shape(dims: str) -> tuple[int, ...]:
  return tuple(int(d) for d in dims.split(",") if d)


def hlo_dots(hlo_text: str) -> dict[str, Any]:
  """{'dots': Counter[Dot, executions], 'convolutions': n, 'unknown_trip_counts': bool}."""
  computations: dict[str, list[str]] = {}
  headers: dict[str, str] = {}
  entry = None
  current = None
  for line in hlo_text.splitlines():
    match = _COMPUTATION.match(line)
    if match:
      current = match.group(1)
      computations[current] = []
      headers[current] = line
      if line.startswith("ENTRY"):
        entry = current
    elif line.startswith("}"):
      current = None
    elif current is not None:
      computations[current].append(line)
  if entry is None:
    raise ValueError("hlo_dots: no ENTRY computation in the HLO text")

  # Calls between computations, with how many times the callee runs per run of the caller.
  calls: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  unknown_trips = False
  for name, lines in computations.items():
    for line in lines:
      callees = list(_CALLEES.findall(line))
      branches = _BRANCHES.search(line)
      if branches:  # A conditional runs one branch: count each as if it ran (an upper bound).
        callees += [("branch", b.strip().lstrip("%")) for b in branches.group(1).split(",")]
      for kind, callee in callees:
        factor = 1
        if kind == "body":
          trips = _TRIP_COUNT.search(line)
          if trips:
            factor = int(trips.group(1))
          else:
            unknown_trips = True
        calls[name].append((callee, factor))
  # How many times each computation runs per call of the program: the call graph is acyclic, so
  # a computation's count is final once all its callers are (Kahn's order from the entry).
  reachable, stack = {entry}, [entry]
  while stack:
    for callee, _ in calls.get(stack.pop(), []):
      if callee not in reachable:
        reachable.add(callee)
        stack.append(callee)
  callers = collections.Counter(callee for name in reachable for callee, _ in calls.get(name, []))
  runs: collections.Counter[str] = collections.Counter({entry: 1})
  ready = [entry]
  while ready:
    name = ready.pop()
    for callee, factor in calls.get(name, []):
      runs[callee] += runs[name] * factor
      callers[callee] -= 1
      if callers[callee] == 0:
        ready.append(callee)

  dots: collections.Counter[Dot] = collections.Counter()
  convolutions = 0
  for name, lines in computations.items():
    if not runs[name]:
      continue
    shapes = {p: (dtype, _shape(dims))
              for p, dtype, dims in _PARAMETER_IN_HEADER.findall(headers[name])}
    for line in lines:
      match = _INSTRUCTION.match(line)
      if not match:
        continue
      result, dtype, dims, opcode, rest = match.groups()
      shapes[result] = (dtype, _shape(dims))
      if opcode == "convolution":
        convolutions += runs[name]
      if opcode != "dot":
        continue
      operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
      (lhs_dtype, lhs_shape), (rhs_dtype, rhs_shape) = shapes[operands[0]], shapes[operands[1]]
      dots[Dot(lhs_shape, rhs_shape, _dims(rest, "lhs_contracting_dims"),
               _dims(rest, "rhs_contracting_dims"), _dims(rest, "lhs_batch_dims"),
               _dims(rest, "rhs_batch_dims"), lhs_dtype, rhs_dtype, dtype)] += runs[name]
  return {"dots": dots, "convolutions": convolutions, "unknown_trip_counts": unknown_trips}


_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16, "f64": jnp.float64}


def time_dot(dot: Dot, repeats: int = 10, warmup: int = 2) -> float:
  """Median seconds of one standalone `dot` on the default device (dispatch included)."""
  rng = np.random.default_rng(0)
  lhs = jnp.asarray(rng.standard_normal(dot.lhs_shape, np.float32), _DTYPES[dot.lhs_dtype])
  rhs = jnp.asarray(rng.standard_normal(dot.rhs_shape, np.float32), _DTYPES[dot.rhs_dtype])
  numbers = ((dot.lhs_contracting, dot.rhs_contracting), (dot.lhs_batch, dot.rhs_batch))
  product = jax.jit(lambda a, b: jax.lax.dot_general(
      a, b, numbers, preferred_element_type=_DTYPES[dot.out_dtype]))
  return median_call_seconds(product, (lhs, rhs), repeats, warmup)


def dispatch_s(repeats: int = 50) -> float:
  """Median seconds of an empty jitted call: what time_dot includes that a fused step does not."""
  empty = jax.jit(lambda a: a + 1.0)
  return median_call_seconds(empty, (jnp.zeros((1,), jnp.float32),), repeats, 5)


def measure(compiled: Any, model_flops_per_step: float | None = None, repeats: int = 10,
            rounds: int = 2, top: int = 6) -> dict[str, Any]:
  """The ceiling fields of a compiled program (`jax.stages.Compiled`) on the default device.

  model_flops_per_step: the FLOPs that `peak_fraction` counts (e.g. the analytic count), for
  `step_fraction_ceiling`. Each product's time is the fastest of `rounds` medians, and the
  fractions are of the matmul peak measured just before and after (their mean), so that a
  shared machine's drift during the measurement does not bias them.
  """
  found = hlo_dots(compiled.as_text())
  peak_before = measure_matmul_peak()["flops_per_s"]
  overhead = dispatch_s()
  seconds = {dot: math.inf for dot in found["dots"]}
  for _ in range(rounds):
    for dot in seconds:
      seconds[dot] = min(seconds[dot], max(time_dot(dot, repeats) - overhead, 1e-9))
  peak_after = measure_matmul_peak()["flops_per_s"]
  peak = (peak_before + peak_after) / 2
  rows = [(dot, executions, seconds[dot]) for dot, executions in found["dots"].items()]
  dot_s = sum(executions * time_s for _, executions, time_s in rows)
  dot_flops = sum(executions * dot.flops for dot, executions, _ in rows)
  slowest = sorted(rows, key=lambda row: row[1] * row[2], reverse=True)[:top]
  return {
      "dot_executions": sum(found["dots"].values()),
      "distinct_dots": len(found["dots"]),
      "convolutions": found["convolutions"],
      "unknown_trip_counts": found["unknown_trip_counts"],
      "dispatch_us": round(overhead * 1e6, 1),
      "matmul_peak_flops_per_s_before_after": [float(f"{peak_before:.4g}"),
                                                float(f"{peak_after:.4g}")],
      "dot_flops_per_step": float(f"{dot_flops:.4g}"),
      "dot_ms_per_step": round(dot_s * 1e3, 2),
      "dot_kernel_fraction": round(dot_flops / dot_s / peak, 4) if dot_s else None,
      "step_fraction_ceiling": (round(model_flops_per_step / dot_s / peak, 4)
                                if model_flops_per_step and dot_s else None),
      "slowest_dots": [
          {"dot": dot.describe(), "executions": executions,
           "ms_per_step": round(executions * time_s * 1e3, 2),
           "kernel_fraction": round(dot.flops / time_s / peak, 3)}
          for dot, executions, time_s in slowest],
  }
