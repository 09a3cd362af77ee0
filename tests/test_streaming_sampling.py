"""--mode=sample writes shards as it goes: bounded memory, resume after a kill, one shard set per
process, PNGs, a grid of every class; readers (tools.fid, --mode=eval --samples)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import trainer_utils as tu
from PIL import Image

from rin_diffusion import generate, sample_shards
from rin_diffusion.tools import fid


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(data flags, workdir) of a tiny run with checkpoints at steps 1 and 2."""
  return tu.trained_run(tmp_path_factory)


def _sample_flags(output, num_samples, *extra):
  return ["--mode=sample", f"--num_samples={num_samples}", "--sampler=ddim", "--steps=2",
          "--config.eval_batch_size=8", f"--output={output}", *extra]


def _shards(directory):
  """The complete shards: a run killed mid-write leaves a temporary `shard_*.npz.tmp-*` too."""
  return sorted(name for name in os.listdir(directory)
                if name.startswith("shard_") and name.endswith(".npz"))


def test_sample_writes_shards_manifest_pngs_and_a_grid_of_every_class(trained, tmp_path):
  flags, workdir = trained
  output = str(tmp_path / "samples")
  result = tu.run_main(workdir, flags + _sample_flags(output, 30, "--png"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert _shards(output) == [f"shard_000_{b:06d}.npz" for b in range(4)]  # 8 + 8 + 8 + 6.
  manifest = json.loads((tmp_path / "samples" / "index.json").read_text())
  assert manifest["num_samples"] == 30 and manifest["checkpoint_step"] == 2
  assert manifest["checkpoint"] == "checkpoints/2" and manifest["sampler"] == "ddim"
  assert manifest["steps"] == 2 and manifest["seed"] == 0 and "classes" in manifest["labels"]
  images, labels = sample_shards.load(output)
  assert images.shape == (30, 32, 32, 1) and images.dtype == np.uint8
  config = tu.tiny_config(str(tmp_path / "data"))  # Not written to: class_labels reads sizes.
  np.testing.assert_array_equal(labels, generate.class_labels(config, 30))
  pngs = sorted(os.listdir(os.path.join(output, "png")))
  assert len(pngs) == 30 and pngs[4] == f"000004_class{labels[4]}.png"
  np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(output, "png", pngs[4]))),
                                images[4, ..., 0])
  # 30 samples of 10 classes, 3 each: one row per class (the old grid showed the first 100).
  assert Image.open(os.path.join(output, "grid.png")).size == (3 * 33 + 1, 10 * 33 + 1)
  assert "Sampling into" in result.stderr and "ETA" in result.stderr
  # The shard directory is what tools.fid reads, labels included.
  np.testing.assert_array_equal(fid.load_samples(output), images)
  np.testing.assert_array_equal(fid.load_labels(output, 30), labels)


def test_grid_picker_keeps_ten_per_class_across_batches():
  labels = np.repeat(np.arange(10, dtype=np.int32), 30)  # Sorted, as class_labels gives them.
  picker = sample_shards.GridPicker(labels)
  images = np.arange(300).reshape(300, 1, 1, 1)  # Each image is its index.
  for start in range(0, 300, 64):
    picker.offer(images[start:start + 64], labels[start:start + 64],
                 np.arange(start, min(start + 64, 300)))
  shown, columns = picker.gathered()
  assert columns == 10 and shown.shape == (100, 1, 1, 1)
  expected = np.concatenate([np.arange(c * 30, c * 30 + 10) for c in range(10)])
  np.testing.assert_array_equal(shown.ravel(), expected)
  assert not picker.wants(labels)


def _wait_for_shards(output, count, proc, timeout=240.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.isdir(output) and len(_shards(output)) >= count:
      return
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    time.sleep(0.02)
  raise AssertionError(f"no {count} shards in {output}")


def test_killed_run_resumes_to_the_uninterrupted_images(trained, tmp_path):
  flags, workdir = trained
  killed, straight = str(tmp_path / "killed"), str(tmp_path / "straight")
  sample = _sample_flags(killed, 400)  # 50 batches of 8.
  proc = subprocess.Popen(tu.main_command(workdir, flags + sample), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=tu.REPO)
  _wait_for_shards(killed, 3, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  written = _shards(killed)
  assert 3 <= len(written) < 50, len(written)
  # A shard cut short (a disk that failed mid-write) is redone, not trusted.
  with open(os.path.join(killed, written[1]), "r+b") as f:
    f.truncate(100)
  resumed = tu.run_main(workdir, flags + sample)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"{len(written) - 1} of 50 batches are on disk already" in resumed.stderr
  result = tu.run_main(workdir, flags + _sample_flags(straight, 400))
  assert result.returncode == 0, result.stderr[-3000:]
  resumed_images, resumed_labels = sample_shards.load(killed)
  straight_images, straight_labels = sample_shards.load(straight)
  np.testing.assert_array_equal(resumed_images, straight_images)
  np.testing.assert_array_equal(resumed_labels, straight_labels)
  assert not [name for name in os.listdir(killed) if ".tmp-" in name]


def test_rerun_with_other_settings_refuses_naming_the_field(trained, tmp_path):
  flags, workdir = trained
  output = str(tmp_path / "samples")
  assert tu.run_main(workdir, flags + _sample_flags(output, 8)).returncode == 0
  before = tu.snapshot(output)
  line = tu.error_line(tu.run_main(workdir, flags + _sample_flags(output, 8, "--guidance=1.5")))
  assert "guidance=" in line and "index.json" in line and "--output" in line
  assert tu.snapshot(output) == before


_MEMORY_SCRIPT = r"""
import json, resource, sys
import jax, jax.numpy as jnp, numpy as np
from rin_diffusion import generate, sample_shards, sharding
import ml_collections

num_samples, size, output = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))

def sample(params, key_data, batch_index, labels):  # Noise images: the writing, not the model.
  key = jax.random.fold_in(jax.random.wrap_key_data(key_data), batch_index)
  shape = (labels.shape[0], size, size, 3)
  return jax.random.randint(key, shape, 0, 256, jnp.int32).astype(jnp.uint8)

sample_fn = jax.jit(sample, out_shardings=sharding.batch_sharding(mesh))
labels = generate.cycled_labels(10, num_samples)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sample_shards.write(sample_fn, None, jax.random.key(0), labels, batch_size=64, mesh=mesh,
                    directory=output, manifest={}, image_shape=(size, size, 3))
print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "before_kb": before}))
"""


def _peak_memory_kb(num_samples, size, output):
  result = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(num_samples), str(size),
                           output], capture_output=True, text=True, cwd=tu.REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])["peak_kb"]


def test_peak_memory_does_not_grow_with_the_number_of_samples(tmp_path):
  size = 128  # 48 KiB an image: 5,120 images are 240 MiB.
  small = _peak_memory_kb(512, size, str(tmp_path / "small"))
  large = _peak_memory_kb(5120, size, str(tmp_path / "large"))
  large_images_kb = 5120 * size * size * 3 / 1024
  assert len(_shards(str(tmp_path / "large"))) == 80
  # Holding the 10x run's images would add 216 MiB over the small run's; the allocator's noise is
  # about 20 MiB (measured: 427 MB for 512 images, 446 MB for 5,120, 425 MB for 10,240).
  assert large - small < 0.2 * large_images_kb, (small, large, large_images_kb)


def _free_port():
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def test_two_processes_write_disjoint_shards_that_make_the_one_process_result(trained, tmp_path):
  flags, workdir = trained
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  # 8 devices either way (8 in one process, 4 in each of two): the same per-device programs.
  result = tu.run_main(workdir, flags + _sample_flags(one, 20),
                       env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert result.returncode == 0, result.stderr[-3000:]
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  procs = [subprocess.Popen(
      tu.main_command(workdir, flags + _sample_flags(two, 20) + [
          f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"]),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tu.REPO, env=env)
      for i in range(2)]
  outputs = [proc.communicate(timeout=600)[0] for proc in procs]
  for proc, output in zip(procs, outputs):
    assert proc.returncode == 0, output[-3000:]
  names = _shards(two)
  assert names == [f"shard_{p:03d}_{b:06d}.npz" for p in range(2) for b in range(3)]
  rows = {p: np.concatenate([np.load(os.path.join(two, f"shard_{p:03d}_{b:06d}.npz"))["indices"]
                             for b in range(3)]) for p in range(2)}
  assert not set(rows[0]) & set(rows[1]) and len(rows[0]) and len(rows[1])
  assert sorted(set(rows[0]) | set(rows[1])) == list(range(20))
  one_images, one_labels = sample_shards.load(one)
  two_images, two_labels = sample_shards.load(two)
  np.testing.assert_array_equal(one_labels, two_labels)
  np.testing.assert_array_equal(one_images, two_images)
  assert os.path.exists(os.path.join(two, "grid.png"))
