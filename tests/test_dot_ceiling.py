"""benchmarks/dot_ceiling.py: the products it reads out of optimised HLO against the programs'
arithmetic, and a RIN train step's products against the analytic FLOP count."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import dot_ceiling  # noqa: E402

from rin_diffusion import config_lib, flops, train  # noqa: E402


def _dots(fn, *args):
  return dot_ceiling.hlo_dots(jax.jit(fn).lower(*args).compile().as_text())


def test_loops_transposes_and_batched_products():
  """A product in a 3-trip scan counts 3 times; a transposed and a batched one keep their
  dimension numbers; FLOPs are 2 x batch x M x N x K."""
  def fn(x, w, q):
    def body(carry, _):
      return jnp.tanh(carry @ w), None
    carry, _ = jax.lax.scan(body, x, None, length=3)
    return carry, x.T @ carry, jnp.einsum("bnd,bmd->bnm", q, q)

  found = _dots(fn, jnp.ones((64, 32)), jnp.ones((32, 32)), jnp.ones((4, 8, 16)))
  by_shapes = {(d.lhs_shape, d.rhs_shape): (d, n) for d, n in found["dots"].items()}
  assert len(by_shapes) == 3, found
  loop, loop_runs = by_shapes[((64, 32), (32, 32))]
  assert loop_runs == 3 and loop.flops == 2 * 64 * 32 * 32
  transposed, runs = by_shapes[((64, 32), (64, 32))]
  assert runs == 1 and (transposed.lhs_contracting, transposed.rhs_contracting) == ((0,), (0,))
  assert transposed.flops == 2 * 32 * 32 * 64
  batched, runs = by_shapes[((4, 8, 16), (4, 8, 16))]
  assert runs == 1 and (batched.lhs_batch, batched.rhs_batch) == ((0,), (0,))
  assert batched.flops == 2 * 4 * 8 * 8 * 16
  assert not found["unknown_trip_counts"] and found["convolutions"] == 0


def test_nested_loops_multiply_their_trip_counts():
  def fn(x, w):
    def inner(carry, _):
      return jnp.tanh(carry @ w), None

    def outer(carry, _):
      return jax.lax.scan(inner, carry, None, length=3)[0], None

    return jax.lax.scan(outer, x, None, length=2)[0]

  found = _dots(fn, jnp.ones((16, 16)), jnp.ones((16, 16)))
  assert list(found["dots"].values()) == [6], found


def test_unknown_trip_count_and_conditional_branches():
  """A data-dependent while loop is flagged; both branches of a cond are counted (upper bound)."""
  def fn(x, w, n):
    looped = jax.lax.while_loop(lambda c: c[1] < n, lambda c: (c[0] @ w, c[1] + 1), (x, 0))[0]
    branched = jax.lax.cond(n > 2, lambda a: a @ w, lambda a: (a @ w) @ w, x)
    return looped, branched

  found = _dots(fn, jnp.ones((16, 16)), jnp.ones((16, 16)), 3)
  assert found["unknown_trip_counts"]
  assert sum(found["dots"].values()) == 1 + 1 + 2, found


@pytest.mark.parametrize("self_cond_rate", [0.0, 0.9])
def test_rin_train_step_products_match_the_analytic_count(self_cond_rate):
  """Every product of a compiled train step (forward, backward, self-conditioning's first pass)
  is found: their FLOPs plus the patch-embedding convolution's equal rin_diffusion.flops."""
  config = config_lib.base_config()
  config.model.update(dict(image_size=16, channels=3, patch_size=4, tape_dim=64, latent_slots=8,
                           latent_dim=96, blocks=(1, 1), latent_heads=4, rw_heads=4,
                           num_classes=10))
  config.diffusion.self_cond_rate = self_cond_rate
  config.batch_size = batch = 4
  mesh = jax.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1])
  model, tx, _, abstract_state, _ = train.build(config, mesh)
  strip = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)  # noqa: E731
  batch_spec = {"image": jax.ShapeDtypeStruct((batch, 16, 16, 3), jnp.float32),
                "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
  found = _dots(train.make_train_step(model, tx, config), strip(abstract_state), batch_spec)
  dot_flops = sum(n * d.flops for d, n in found["dots"].items())
  # The stem convolution: one forward (self-conditioning's two passes share it) and its weight
  # gradient.
  stem = 2 * (16 // 4) ** 2 * (4 * 4 * 3) * 64
  assert found["convolutions"] == 2
  assert dot_flops + 2 * stem * batch == flops.train_flops_per_image(config) * batch

def test_measure_fields_are_consistent():
  """Standalone times add up to the reported ceiling, and it divides the FLOPs it says it does."""
  compiled = jax.jit(lambda a, b: (a @ b) @ b).lower(
      jnp.ones((256, 256)), jnp.ones((256, 256))).compile()
  result = dot_ceiling.measure(compiled, model_flops_per_step=4 * 256 ** 3)
  peak = sum(result["matmul_peak_flops_per_s_before_after"]) / 2
  assert result["dot_executions"] == 2 and result["distinct_dots"] == 1
  assert result["dot_flops_per_step"] == pytest.approx(4 * 256 ** 3, rel=1e-3)
  seconds = result["dot_ms_per_step"] / 1e3
  assert result["step_fraction_ceiling"] == pytest.approx(4 * 256 ** 3 / seconds / peak, rel=0.02)
  assert result["slowest_dots"][0]["executions"] == 2
