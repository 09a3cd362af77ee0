"""config.dataset.loader='grain': worker processes build exactly the threaded loader's batches."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import trainer_utils

from rin_diffusion import config_lib
from rin_diffusion.data import grain_loader, pipeline, testing


@pytest.fixture(scope="module")
def test_images_config(tmp_path_factory):
  """rin_test_images (PNG RGB images of varied sizes, 5 classes), cropped and resized to 16."""
  data_dir = tmp_path_factory.mktemp("rin_test_images")
  testing.RinTestImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  config = config_lib.base_config()
  config.dataset.name = testing.TEST_IMAGES_NAME
  config.dataset.data_dir = str(data_dir)
  config.dataset.image_size = 16
  config.dataset.num_classes = testing.TEST_IMAGES_CLASSES
  config.batch_size = 6
  config.seed = 5
  return config


def _batches(config, loader, workers, steps, **kwargs):
  """`steps` batches, copied out of grain's shared memory and with the loader closed."""
  config = config.copy_and_resolve_references()
  config.dataset.loader, config.dataset.num_workers = loader, workers
  with pipeline.make_iterator(config, **kwargs) as iterator:
    batches = [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(steps)]
    position = iterator.position
  return batches, position


def _assert_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      assert x[key].dtype == y[key].dtype
      np.testing.assert_array_equal(x[key], y[key])


def test_grain_processes_build_the_threaded_batches(test_images_config):
  # 5 steps of 6 over 20 images: the batches straddle epochs, every image is flipped or not.
  threads, _ = _batches(test_images_config, "threads", 2, 5)
  grain, position = _batches(test_images_config, "grain", 2, 5)
  _assert_equal(threads, grain)
  assert position == 5
  assert threads[0]["image"].shape == (6, 16, 16, 3)
  # Resuming at a saved position, and one process's slice of a 2-process layout.
  resumed, position = _batches(test_images_config, "grain", 3, 2, start_step=3)
  _assert_equal(threads[3:], resumed)
  assert position == 5
  half, _ = _batches(test_images_config, "grain", 2, 2, process_index=1, process_count=2)
  _assert_equal([{k: v[3:] for k, v in b.items()} for b in threads[:2]], half)


def test_grain_in_this_process(test_images_config):
  threads, _ = _batches(test_images_config, "threads", 0, 3)
  grain, _ = _batches(test_images_config, "grain", 0, 3)
  _assert_equal(threads, grain)


def test_batch_maker_pickles_without_its_lock(test_images_config):
  import pickle  # noqa: PLC0415

  maker = pipeline.BatchMaker(pipeline.make_source(test_images_config.dataset),
                              test_images_config.dataset, 6, 5)
  copy = pickle.loads(pickle.dumps(maker))
  _assert_equal([maker(7)], [copy(7)])


def test_unknown_loader_is_named(test_images_config):
  config = test_images_config.copy_and_resolve_references()
  config.dataset.loader = "tf.data"
  with pytest.raises(ValueError, match=r"config.dataset.loader='tf.data'.*'threads', 'grain'"):
    pipeline.validate_dataset_config(config.dataset)
  with pytest.raises(ValueError, match=r"config.dataset.loader='tf.data' is not allowed"):
    config_lib.validate(config)


def test_missing_grain_is_one_clear_error(monkeypatch, test_images_config):
  monkeypatch.setitem(sys.modules, "grain", None)  # `import grain` raises ImportError.
  monkeypatch.setattr(grain_loader.importlib.util, "find_spec",
                      lambda name, *a: None if name == "grain" else object())
  config = test_images_config.copy_and_resolve_references()
  config.dataset.loader = "grain"
  with pytest.raises(ValueError, match=r"loader='grain' needs the grain package.*pip install"):
    config_lib.validate(config)
  with pytest.raises(ValueError, match=r"loader='grain' needs the grain package"):
    pipeline.make_iterator(config)


def test_trainer_with_grain_matches_threads(tmp_path):
  """`python -m rin_diffusion.main` with 2 grain processes trains exactly as with threads."""
  data_root = str(tmp_path / "fmnist")
  losses = {}
  for loader in ("threads", "grain"):
    workdir = str(tmp_path / loader)
    flags = [*trainer_utils.TINY_FLAGS, *trainer_utils.data_flags(data_root),
             "--config.total_steps=3", f"--config.dataset.loader={loader}",
             "--config.dataset.num_workers=2"]
    result = trainer_utils.run_main(workdir, flags)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = "2 grain worker processes" if loader == "grain" else "2 decoding threads"
    assert expected in result.stderr, result.stderr[-3000:]
    losses[loader] = trainer_utils.step_losses(workdir)
  assert sorted(losses["grain"]) == [1, 2, 3]
  assert losses["grain"] == losses["threads"]
