"""tools/plan: slice names, the per-device state bytes against arithmetic, FLOPs, and (where libtpu
is installed) TPU memory plans; the CPU fallback is what CI runs."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from rin_diffusion import flops, paper_configs
from rin_diffusion.tools import plan as plan_lib

HAS_LIBTPU = plan_lib.libtpu_available()


@pytest.mark.parametrize("name, generation, grid", [
    ("v5e-256", "v5e", (16, 16)),
    ("v5e-8", "v5e", (2, 4)),
    ("v6e-64", "v6e", (8, 8)),
    ("v4-128", "v4", (4, 4, 4)),  # 128 TensorCores = 64 megacore chips.
    ("v5p-1024", "v5p", (8, 8, 8)),
    ("v5e:4x8", "v5e", (4, 8)),
    ("v4:2x2x1", "v4", (2, 2, 1)),
    ("cpu:8", "", (8,)),
])
def test_parse_topology(name, generation, grid):
  topology = plan_lib.parse_topology(name)
  assert (topology.generation, topology.grid) == (generation, grid)


@pytest.mark.parametrize("name, message", [
    ("v5e-100", "no v5e slice of that size"),
    ("v4-127", "no v4 slice of that size"),
    ("v7x-8", "unknown slice"),
    ("v5litepod-16", "unknown slice"),
    ("v5e:4x4x4", "not a topology name"),
    ("cpu:0", "positive device count"),
])
def test_bad_topology_names_say_what_is_allowed(name, message):
  with pytest.raises(ValueError, match=message) as error:
    plan_lib.parse_topology(name)
  assert f"--topology={name!r}" in str(error.value) and "allowed: v5e-N" in str(error.value)


def _tiny(**mesh):
  config = paper_configs.load_config("configs/fashion_mnist.py:tiny")
  config.batch_size = 16
  config.mesh.update(mesh)
  return config


@pytest.fixture(scope="module")
def replicated_and_fsdp():
  return (plan_lib.plan(_tiny(data=8, fsdp=1), plan_lib.parse_topology("cpu:8")),
          plan_lib.plan(_tiny(data=1, fsdp=8), plan_lib.parse_topology("cpu:8")))


def test_state_bytes_are_the_arithmetic_of_the_shardings(replicated_and_fsdp):
  replicated, fsdp = replicated_and_fsdp
  params = replicated["params"]
  # Data parallel: every device holds all float32 parameters, the same EMA copy, and AdamW's two
  # moments (plus its scalar step count).
  assert replicated["bytes_per_device"]["params"] == 4 * params
  assert replicated["bytes_per_device"]["ema_params"] == 4 * params
  assert 8 * params <= replicated["bytes_per_device"]["opt_state"] <= 8 * params + 64
  assert replicated["bytes_per_device"]["batch"] == 2 * (32 * 32 * 1 * 4 + 4)  # 2 rows / device.
  # FSDP over 8: the 'embed'-axis parameters (all but biases and norms of other widths) split 8 ways.
  assert 4 * params / 8 <= fsdp["bytes_per_device"]["params"] < 0.3 * 4 * params
  assert fsdp["bytes_per_device"]["batch"] == replicated["bytes_per_device"]["batch"]
  for result in (replicated, fsdp):
    per_device = result["bytes_per_device"]
    assert per_device["peak"] >= per_device["params"] + per_device["opt_state"] + per_device["temp"]
    assert result["compiled_for"] == "8 simulated cpu devices" and result["fits"] is None


def test_update_traffic_is_the_arithmetic_of_the_state(replicated_and_fsdp):
  """Read parameters, gradients, optimizer state and EMA, write all but the gradients; FSDP
  divides it. No chip, no bandwidth: cpu:N plans give no time."""
  replicated, fsdp = replicated_and_fsdp
  for result in (replicated, fsdp):
    per_device = result["bytes_per_device"]
    assert result["update_bytes_per_device"] == (
        3 * per_device["params"] + 2 * (per_device["opt_state"] + per_device["ema_params"]))
    assert "update_s_at_hbm_bandwidth" not in result
    assert "update traffic" in plan_lib.format_table(result)
  assert fsdp["update_bytes_per_device"] < 0.3 * replicated["update_bytes_per_device"]


def test_flops_per_step(replicated_and_fsdp):
  replicated, fsdp = replicated_and_fsdp
  analytic = flops.train_flops_per_image(_tiny()) * 16
  assert replicated["flops_per_step_analytic"] == analytic
  # XLA counts one device's program; times 8 it is the step's: the model FLOPs plus norms and
  # activations, plus the optimizer and EMA, which every device runs whole when replicated (some
  # tens of FLOPs per parameter, not small beside this tiny model at batch 16).
  for result in (replicated, fsdp):
    bound = 1.3 * analytic + 8 * 100 * replicated["params"]
    assert analytic <= result["flops_per_step_xla"] <= bound, result["flops_per_step_xla"]


def test_indivisible_batch_is_one_clear_error():
  config = _tiny(data=8, fsdp=1)
  config.batch_size = 12
  with pytest.raises(ValueError, match="config.batch_size=12 is not divisible by the 8 devices"):
    plan_lib.plan(config, plan_lib.parse_topology("cpu:8"))


def test_command_line_error_is_one_line():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "rin_diffusion.tools.plan", "--config=configs/fashion_mnist.py:tiny",
       "--topology=v5e-100"], capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "no v5e slice of that size" in errors[0], result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install 'jax[tpu]')")
def test_tpu_plan():
  config = _tiny()
  result = plan_lib.plan(config, plan_lib.parse_topology("v5e-4"))
  assert result["compiled_for"] == "tpu v5e:2x2 (libtpu)" and result["devices"] == 4
  assert result["hbm_bytes"] == 16 * 2 ** 30 and result["fits"] is True
  assert result["bytes_per_device"]["params"] == 4 * result["params"]
  assert result["step_s_at_bf16_peak"] == result["flops_per_step_analytic"] / (4 * 197e12)
  assert result["update_s_at_hbm_bandwidth"] == result["update_bytes_per_device"] / 819e9


def test_temporaries_from_the_compilers_out_of_memory_message():
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
             "temporaries (19.07G) exceeds available HBM (15.75G).")
  assert plan_lib._temporaries_from_message(message) == int(19.07 * 2 ** 30)
  assert plan_lib._temporaries_from_message("RESOURCE_EXHAUSTED: something else") is None


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install 'jax[tpu]')")
def test_tpu_plan_that_does_not_fit():
  config = _tiny()
  config.model.patch_size = 2
  config.batch_size = 4 * 2 ** 16
  result = plan_lib.plan(config, plan_lib.parse_topology("v5e-4"))
  assert result["fits"] is False and "ran out of HBM" in result["note"]
  assert result["bytes_per_device"]["temp"] > 16 * 2 ** 30
  assert result["bytes_per_device"]["peak"] > result["bytes_per_device"]["temp"]
  assert result["flops_per_step_xla"] is None and result["flops_per_step_analytic"] > 0
  assert "DOES NOT FIT" in plan_lib.format_table(result)


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install 'jax[tpu]')")
def test_remat_saves_tpu_memory():
  """On the TPU compiler full remat keeps a fraction of the temporaries (XLA:CPU shows no saving,
  which is why the CPU fallback says its temporaries are not the TPU's)."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: PLC0415

  from rin_diffusion import config_lib, model  # noqa: PLC0415

  devices, backend = plan_lib.slice_devices(plan_lib.parse_topology("v5e-4"))
  replicated = NamedSharding(Mesh(devices[:1], ("data",)), PartitionSpec())
  fields = dict(config_lib.base_config().model, image_size=32, patch_size=2, tape_dim=64,
                latent_slots=16, latent_dim=64, blocks=(2, 2), latent_heads=4, rw_heads=4,
                num_classes=10)
  x = jax.ShapeDtypeStruct((256, 32, 32, 3), jnp.float32, sharding=replicated)
  gamma = jax.ShapeDtypeStruct((256,), jnp.float32, sharding=replicated)

  def temp_bytes(**overrides):
    net = model.rin_from_config({**fields, **overrides})
    abstract = jax.eval_shape(lambda k, x, g: net.init(k, x, g, train=False),
                              jax.random.key(0), x, gamma)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                          nn.meta.unbox(abstract)["params"])
    grad = jax.grad(lambda p, x, g: jnp.sum(net.apply({"params": p}, x, g, train=True)[0] ** 2))
    return jax.jit(grad).lower(params, x, gamma).compile().memory_analysis().temp_size_in_bytes

  assert backend == "tpu"
  assert temp_bytes(remat=True, remat_policy="full") < 0.5 * temp_bytes()
