"""Sampling at scale: sharded global batches, pad-and-crop, device-count independence, memory."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import trainer_utils as tu

from rin_diffusion import generate, sharding, train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """The tiny config, its model and randomly initialised parameters on the host."""
  config = tu.tiny_config(str(tmp_path_factory.mktemp("fmnist")))
  config.sampling.steps = 2
  mesh = sharding.make_mesh(config.mesh)
  model, _, init_fn, _, _ = train.build(config, mesh)
  params = jax.device_get(init_fn(0)["params"])
  return config, model, params


def _draw(config, model, params, devices, labels, batch_size, sampler="ddpm", guidance=0.0):
  mesh = sharding.make_mesh(config.mesh, devices)
  sample_fn = generate.make_batched_sample_fn(model, config, mesh, sampler=sampler, steps=2,
                                              guidance=guidance)
  on_mesh = jax.device_put(params, sharding.replicated(mesh))
  return generate.sample_all(sample_fn, on_mesh, jax.random.key(3), labels,
                             batch_size=batch_size, mesh=mesh)


def test_eight_devices_give_the_one_device_samples(tiny):
  config, model, params = tiny
  labels = generate.cycled_labels(10, 20)  # 3 batches of 8, the last padded from 4.
  # DDPM (fresh noise every step) with guidance: every random stream and both CFG halves.
  eight = _draw(config, model, params, jax.devices(), labels, 8, guidance=1.5)
  one = _draw(config, model, params, jax.devices()[:1], labels, 8, guidance=1.5)
  assert eight.shape == (20, 32, 32, 1) and eight.dtype == np.uint8
  assert len(np.unique(eight.reshape(20, -1), axis=0)) == 20  # Distinct noise per sample.
  # The same random streams and labels; XLA may sum in another order for another per-device
  # batch, so a float that lands on a rounding boundary can move one uint8 level, nothing more.
  difference = np.abs(eight.astype(np.int16) - one.astype(np.int16))
  assert difference.max() <= 1 and np.mean(difference > 0) < 1e-3, (difference.max(),
                                                                    np.mean(difference > 0))


def test_batches_are_the_single_batch_sampler_with_folded_keys(tiny):
  """Batch i is the plain (unsharded) sampler on fold_in(key, i) and the padded labels."""
  config, model, params = tiny
  labels = np.asarray([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], np.int32)  # 8 + 4 (padded with 0).
  batched = _draw(config, model, params, jax.devices(), labels, 8)
  plain = generate.make_sample_fn(model, config, sampler="ddpm", steps=2, guidance=0.0)
  expected = []
  for index, start in enumerate((0, 8)):
    padded = np.zeros(8, np.int32)
    chunk = labels[start:start + 8]
    padded[:len(chunk)] = chunk
    images = plain(params, jax.random.fold_in(jax.random.key(3), index), padded)
    expected.append(generate.to_uint8(np.asarray(images))[:len(chunk)])
  expected = np.concatenate(expected)
  # Different programs (sharded vs one device, uint8 on device vs host): equal up to rounding a
  # value that sits on a .5 boundary differently, i.e. at most one grey level, rarely.
  difference = np.abs(batched.astype(int) - expected.astype(int))
  assert difference.max() <= 1 and np.mean(difference > 0) < 1e-3


def test_ten_thousand_samples_stream_in_batches(tiny):
  config, model, params = tiny
  mesh = sharding.make_mesh(config.mesh)
  num_samples, batch_size = 10_000, 1_000
  sample_fn = generate.make_batched_sample_fn(model, config, mesh, sampler="ddim", steps=2,
                                              guidance=0.0)
  on_mesh = jax.device_put(params, sharding.replicated(mesh))
  labels = generate.cycled_labels(10, num_samples)
  baseline = sum(a.nbytes for a in jax.live_arrays())  # The parameters and anything else alive.
  batches = generate.sample_batches(sample_fn, on_mesh, jax.random.key(0), labels,
                                    batch_size=batch_size, mesh=mesh)
  assert iter(batches) is batches  # A generator: nothing is drawn before it is asked for.
  batch_bytes = batch_size * 32 * 32 * 1
  seen, peak = [], 0
  for batch in batches:
    live = sum(a.nbytes for a in jax.live_arrays()) - baseline
    peak = max(peak, live)
    assert batch.images.shape[1:] == (32, 32, 1) and batch.images.dtype == np.uint8
    np.testing.assert_array_equal(batch.labels, batch.indices % 10)
    seen.append(batch.indices)
  indices = np.concatenate(seen)
  np.testing.assert_array_equal(indices, np.arange(num_samples))
  # Two batches in flight at most (plus labels and keys), far below the 10 MB of all samples.
  assert peak <= 2.5 * batch_bytes, peak


def test_batch_size_must_divide_over_devices(tiny):
  config, model, params = tiny
  mesh = sharding.make_mesh(config.mesh)
  with pytest.raises(ValueError, match="eval_batch_size=12"):
    generate.sampling_batch_size(12, 100, mesh)
  assert generate.sampling_batch_size(64, 100, mesh) == 64
  assert generate.sampling_batch_size(64, 6, mesh) == 8  # Few samples: one small batch.


@pytest.mark.parametrize("self_condition", [True, False])
def test_self_condition_switch_controls_the_latents_the_network_sees(self_condition):
  """sampling.self_condition=False must hand the network zero latents at every step."""
  import ml_collections  # noqa: PLC0415

  seen = []

  class RecordingModel:
    def apply(self, variables, x_in, gamma, class_onehot, hidden, extra, train):
      del variables, gamma, class_onehot, extra, train
      seen.append(np.asarray(hidden))
      return x_in, hidden + 1.0

  diffusion_config = ml_collections.ConfigDict(
      {"input_scale": 1.0, "normalize_input": "none"})
  denoise = generate.make_denoise_fn(RecordingModel(), {}, diffusion_config, self_condition)
  hidden = np.full((2, 3, 4), 5.0, np.float32)
  _, out = denoise(np.ones((2, 8, 8, 1), np.float32), np.full((2,), 0.5), {}, hidden)
  expected_in = hidden if self_condition else np.zeros_like(hidden)
  np.testing.assert_array_equal(seen[-1], expected_in)
  np.testing.assert_array_equal(np.asarray(out), expected_in + 1.0)
