"""Input pipeline: the local Fashion-MNIST builder, generic TFDS sources, preprocessing, batches."""

import gzip
import io
import os

import numpy as np
import PIL.Image
import pytest

from rin_diffusion import config_lib
from rin_diffusion.data import fashion_mnist, pipeline, testing


def _fmnist_config(data_dir, manual_dir="", image_size=32, channels=1):
  c = config_lib.base_config()
  c.batch_size = 8
  c.dataset.name = "fashion_mnist"
  c.dataset.data_dir = str(data_dir)
  c.dataset.manual_dir = str(manual_dir)
  c.dataset.image_size = image_size
  c.dataset.channels = channels
  c.dataset.num_classes = 10
  c.dataset.random_flip = False
  c.dataset.num_workers = 0
  return c


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory):
  """64 train + 16 test synthetic images in idx .gz files, prepared into a tmp data_dir."""
  raw_dir = tmp_path_factory.mktemp("fmnist_raw")
  data_dir = tmp_path_factory.mktemp("fmnist_tfds")
  arrays = testing.write_fake_fashion_mnist(str(raw_dir), num_train=64, num_test=16)
  config = _fmnist_config(data_dir, raw_dir)
  pipeline.make_source(config.dataset)  # Prepares.
  return config, arrays


@pytest.fixture(scope="module")
def test_images_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("rin_test_images")
  testing.RinTestImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return str(data_dir)


def _test_images_config(data_dir, image_size=16, num_classes=testing.TEST_IMAGES_CLASSES):
  c = config_lib.base_config()
  c.dataset.name = testing.TEST_IMAGES_NAME
  c.dataset.data_dir = data_dir
  c.dataset.image_size = image_size
  c.dataset.num_classes = num_classes
  return c.dataset


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST builder.


def test_read_idx_round_trip_and_bad_magic(tmp_path):
  arrays = testing.write_fake_fashion_mnist(str(tmp_path), num_train=5, num_test=3)
  images = fashion_mnist.read_idx(str(tmp_path / "train-images-idx3-ubyte.gz"))
  labels = fashion_mnist.read_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"))
  np.testing.assert_array_equal(images, arrays["train"][0])
  np.testing.assert_array_equal(labels, arrays["test"][1])
  bad = tmp_path / "bad.gz"
  with gzip.open(bad, "wb") as f:
    f.write(b"\x12\x34\x08\x01" + b"\x00" * 8)
  with pytest.raises(ValueError, match="not an idx file"):
    fashion_mnist.read_idx(str(bad))


def test_fashion_mnist_source_matches_raw_files(fake_fmnist):
  config, arrays = fake_fmnist
  for split, count in (("train", 64), ("test", 16)):
    config.dataset.split = split
    src = pipeline.make_source(config.dataset)
    assert len(src) == count
    images, labels = arrays[split]
    label_of = {images[i].tobytes(): int(labels[i]) for i in range(count)}  # TFDS shuffles.
    seen = set()
    for i in range(count):
      example = src[i]
      assert example["image"].shape == (28, 28, 1) and example["image"].dtype == np.uint8
      assert isinstance(example["label"], int)
      key = example["image"][..., 0].tobytes()
      assert label_of[key] == example["label"]
      seen.add(key)
    assert len(seen) == count
  config.dataset.split = "train"


def test_fashion_mnist_padding_and_range(fake_fmnist):
  config, _ = fake_fmnist
  example = pipeline.make_source(config.dataset)[0]
  x = pipeline.preprocess_image(example["image"], config.dataset, flip=False)
  assert x.shape == (32, 32, 1) and x.dtype == np.float32
  assert -1.0 <= x.min() and x.max() <= 1.0
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  np.testing.assert_array_equal(x[border], -1.0)  # Black padding, 2 pixels each side.
  np.testing.assert_allclose(x[2:30, 2:30], example["image"] / 127.5 - 1.0, atol=1e-6)
  flipped = pipeline.preprocess_image(example["image"], config.dataset, flip=True)
  np.testing.assert_array_equal(flipped, x[:, ::-1])
  rgb = config.dataset.copy_and_resolve_references()
  rgb.channels = 3
  x3 = pipeline.preprocess_image(example["image"], rgb, flip=False)
  assert x3.shape == (32, 32, 3)
  np.testing.assert_array_equal(x3, np.repeat(x, 3, axis=-1))


def test_fashion_mnist_batches(fake_fmnist):
  config, _ = fake_fmnist
  with pipeline.make_iterator(config) as it:
    batch = next(it)
  assert batch["image"].shape == (8, 32, 32, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
  assert batch["label"].min() >= 0 and batch["label"].max() < 10
  assert it.position == 1
  threaded = config.copy_and_resolve_references()
  threaded.dataset.num_workers = 2
  threaded.dataset.random_flip = True
  flipping = threaded.copy_and_resolve_references()
  flipping.dataset.num_workers = 0
  with pipeline.make_iterator(threaded) as a, pipeline.make_iterator(flipping) as b:
    _assert_batches_equal(_take(a, 12), _take(b, 12))  # 12 x 8 > 64: crosses an epoch.
  source = pipeline.make_source(config.dataset)
  with pipeline.make_iterator(config, start_step=3, source=source) as a:
    _assert_batches_equal(_take(a, 2), [a.get_batch(3), a.get_batch(4)])


def test_prepared_data_dir_needs_no_raw_files(fake_fmnist, tmp_path):
  config, _ = fake_fmnist
  dataset = config.dataset.copy_and_resolve_references()
  dataset.manual_dir = str(tmp_path / "nothing_here")
  assert len(pipeline.make_source(dataset)) == 64


def test_missing_raw_files_error(tmp_path):
  raw_dir = tmp_path / "empty"
  raw_dir.mkdir()
  config = _fmnist_config(tmp_path / "tfds", raw_dir)
  with pytest.raises(FileNotFoundError) as info:
    pipeline.make_source(config.dataset)
  message = str(info.value)
  for needle in ("apt-get install dataset-fashion-mnist", str(raw_dir),
                 "--config.dataset.manual_dir=", "--config.dataset.data_dir=",
                 "train-images-idx3-ubyte.gz"):
    assert needle in message
  assert not (tmp_path / "tfds" / fashion_mnist.NAME / "1.0.0" / "dataset_info.json").exists()


@pytest.mark.skipif(
    not os.path.isdir(fashion_mnist.DEBIAN_DIR),
    reason=f"{fashion_mnist.DEBIAN_DIR} is absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(tmp_path):
  config = _fmnist_config(tmp_path)
  for split, count in (("train", 60_000), ("test", 10_000)):
    config.dataset.split = split
    src = pipeline.make_source(config.dataset)
    assert len(src) == count
    labels = np.array([src[i]["label"] for i in range(count)])
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [count // 10] * 10)
    assert src[0]["image"].shape == (28, 28, 1)


# ---------------------------------------------------------------------------------------------
# Generic TFDS sources and preprocessing.


def _by_index(data_dir):
  """TFDS stores examples shuffled: test-image index -> position in the train split."""
  import tensorflow_datasets as tfds

  raw = tfds.builder(testing.TEST_IMAGES_NAME, data_dir=data_dir).as_data_source("train")
  return {int(raw[i]["index"]): i for i in range(len(raw))}


def test_generic_source_crop_resize(test_images_dir):
  dataset = _test_images_config(test_images_dir)
  src = pipeline.make_source(dataset)
  assert len(src) == 12
  where = _by_index(test_images_dir)
  for index, position in where.items():
    example = src[position]
    assert example["image"].dtype == np.uint8
    assert example["image"].shape == testing.test_image(index).shape
    assert example["label"] == index % testing.TEST_IMAGES_CLASSES
    for size in (8, 16, 64):
      dataset.image_size = size
      x = pipeline.preprocess_image(example["image"], dataset, flip=False)
      assert x.shape == (size, size, 3) and x.dtype == np.float32
      assert -1.0 <= x.min() and x.max() <= 1.0
  for size in (8, 16, 64, 100):
    dataset.image_size = size
    constant = pipeline.preprocess_image(src[where[testing.CONSTANT_INDEX]]["image"], dataset, False)
    np.testing.assert_allclose(constant, testing.CONSTANT_VALUE / 127.5 - 1.0, atol=1e-6)
    for index in (testing.WIDE_CENTRE_INDEX, testing.TALL_CENTRE_INDEX):
      white = pipeline.preprocess_image(src[where[index]]["image"], dataset, flip=True)
      np.testing.assert_array_equal(white, 1.0)  # Only the centred square survives the crop.


def test_generic_source_unconditional_and_grey(test_images_dir):
  dataset = _test_images_config(test_images_dir, num_classes=0)
  src = pipeline.make_source(dataset)
  assert {src[i]["label"] for i in range(len(src))} == {0}
  dataset.channels = 1
  with pytest.raises(ValueError, match="config.dataset.channels=1"):
    pipeline.preprocess_image(src[0]["image"], dataset, flip=False)


def test_encoded_bytes_are_decoded():
  image = testing.test_image(5)
  png = io.BytesIO()
  PIL.Image.fromarray(image).save(png, format="PNG")
  np.testing.assert_array_equal(pipeline.to_uint8_hwc(png.getvalue()), image)
  grey = io.BytesIO()
  PIL.Image.fromarray(image[..., 0]).save(grey, format="PNG")
  assert pipeline.to_uint8_hwc(grey.getvalue()).shape == image.shape[:2] + (1,)


def test_generic_source_errors(test_images_dir, tmp_path):
  dataset = _test_images_config(test_images_dir)
  dataset.split = "validation"
  with pytest.raises(ValueError, match="config.dataset.split='validation'"):
    pipeline.make_source(dataset)
  dataset.split = "train[:5]"
  assert len(pipeline.make_source(dataset)) == 5
  dataset.split = "train"
  dataset.name = "no_such_dataset_xyz"
  with pytest.raises(ValueError, match="config.dataset.name='no_such_dataset_xyz'"):
    pipeline.make_source(dataset)
  dataset.name = "mnist"  # Registered in TFDS, but not prepared in this data_dir.
  with pytest.raises(pipeline.DatasetNotReadyError, match="tfds build mnist"):
    pipeline.make_source(dataset)
  tfrecord_dir = str(tmp_path / "tfrecord")
  testing.RinTestImages(data_dir=tfrecord_dir, file_format="tfrecord").download_and_prepare()
  dataset.name, dataset.data_dir = testing.TEST_IMAGES_NAME, tfrecord_dir
  with pytest.raises(pipeline.DatasetNotReadyError, match="array_record"):
    pipeline.make_source(dataset)


@pytest.mark.parametrize("field,value", [
    ("image_size", 0), ("image_size", -3), ("channels", 2), ("channels", 4), ("num_classes", -1),
    ("num_workers", -1), ("name", ""), ("split", ""),
])
def test_bad_dataset_config(field, value):
  dataset = config_lib.base_config().dataset
  dataset[field] = value
  with pytest.raises(ValueError, match=f"config.dataset.{field}={value!r}"):
    pipeline.validate_dataset_config(dataset)


# ---------------------------------------------------------------------------------------------
# Deterministic batches, on an in-memory source: label = index, image dark in column 0 only.


class _ListSource:
  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, index):
    image = np.full((8, 8, 1), 255, np.uint8)
    image[:, 0] = 0
    return {"image": image, "label": int(index)}


def _memory_config(random_flip=True, num_workers=0):
  c = config_lib.base_config().dataset
  c.name, c.image_size, c.channels = "memory", 8, 1
  c.random_flip, c.num_workers = random_flip, num_workers
  return c


def _iterator(n=10, batch=6, seed=3, start_step=0, **kwargs):
  flip_and_workers = {k: kwargs.pop(k) for k in ("random_flip", "num_workers") if k in kwargs}
  maker = pipeline.BatchMaker(
      _ListSource(n), _memory_config(**flip_and_workers), batch, seed, **kwargs)
  return pipeline.BatchIterator(maker, start_step)


def _flipped(batch):
  return batch["image"][:, 0, -1, 0] == -1.0


def _take(it, steps):
  return [next(it) for _ in range(steps)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["label"], y["label"])
    np.testing.assert_array_equal(x["image"], y["image"])


def test_same_seed_same_batches():
  _assert_batches_equal(_take(_iterator(), 7), _take(_iterator(), 7))
  _assert_batches_equal(_take(_iterator(), 7), _take(_iterator(num_workers=3), 7))
  other = _take(_iterator(seed=4), 7)
  assert any((x["label"] != y["label"]).any() for x, y in zip(_take(_iterator(), 7), other))


def test_processes_concatenate_to_global_batch():
  whole = _take(_iterator(), 6)
  halves = [_take(_iterator(process_index=k, process_count=2), 6) for k in (0, 1)]
  for step, batch in enumerate(whole):
    assert halves[0][step]["label"].shape == (3,)
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), batch[key])


def test_resume_equals_continuing():
  it = _iterator()
  _take(it, 4)
  assert it.position == 4
  rest = _take(it, 5)
  resumed = _iterator(start_step=it.position - 5)
  assert resumed.position == 4
  _assert_batches_equal(rest, _take(resumed, 5))
  assert resumed.position == 9


def test_epochs_are_permutations():
  n, batch = 10, 3  # Batches straddle epoch boundaries.
  labels = np.concatenate([b["label"] for b in _take(_iterator(n=n, batch=batch), 10)])
  epochs = labels.reshape(3, n)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  assert (epochs[0] != epochs[1]).any()


def test_flip_rate():
  flips = np.concatenate([_flipped(b) for b in _take(_iterator(batch=100), 10)])
  assert abs(flips.mean() - 0.5) < 0.06
  never = np.concatenate([_flipped(b) for b in _take(_iterator(batch=100, random_flip=False), 3)])
  assert not never.any()


def test_bad_batch_layout():
  with pytest.raises(ValueError, match="config.batch_size=6 must be divisible by the process count"):
    _iterator(batch=6, process_count=4)
  with pytest.raises(ValueError, match="config.batch_size=0"):
    _iterator(batch=0)
