"""Reads the arrays of PyTorch files without PyTorch: TorchScript zips and `torch.save` files.

  arrays = read_arrays("default_1.pt")          # {'net.layers.conv.weight': np.ndarray, ...}

Three layouts are understood:
  * TorchScript (`torch.jit.save`) and `torch.save` zip files (torch >= 1.6): `<dir>/data.pkl` is a
    pickle whose tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
    and whose storages arrive through `persistent_load(('storage', FloatStorage, key, location,
    numel))`, stored raw at `<dir>/data/<key>`;
  * the legacy `torch.save` stream (torch < 1.6): magic, protocol and system-info pickles, the main
    pickle (persistent ids `('storage', type, key, location, numel, view)`), a pickle of the
    storage keys, then per key an int64 element count and the raw bytes.
Module objects (TorchScript's `__torch__.*` classes, pickled `torch.nn` modules) become plain
attribute dicts; nested names are joined with '.', so a state_dict keeps its own key names.
Only a small allow-list of globals is resolved: anything else is an error, never an import.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np

# Storage classes -> little-endian element types (every torch file on x86/ARM is little-endian).
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "<i8", "IntStorage": "<i4",
    "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
    "UntypedStorage": "u1",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Attributes of pickled torch.nn modules that only group their children.
_TRANSPARENT_ATTRIBUTES = ("_parameters", "_buffers", "_modules")


def _dtype(storage_name: str) -> np.dtype:
  if storage_name == "BFloat16Storage":
    import ml_dtypes  # noqa: PLC0415 -- only bfloat16 files need it.
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(_STORAGE_DTYPES[storage_name])


class _StorageType:
  """Stands for `torch.FloatStorage` etc. in a pickle: only its element type matters."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _dtype(name)


class _Storage:
  """A storage named in the pickle; `array` (1-D) is filled when its bytes are read."""

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.array: np.ndarray | None = None


class _Tensor:
  """A strided view of a storage, materialised after all storages are read."""

  def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...],
               stride: tuple[int, ...]):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def to_numpy(self, name: str) -> np.ndarray:
    data = self.storage.array
    if data is None:
      raise ValueError(f"tensor {name!r}: storage {self.storage.key!r} was never read.")
    size, stride = tuple(int(s) for s in self.size), tuple(int(s) for s in self.stride)
    if any(s == 0 for s in size):
      return np.zeros(size, data.dtype)
    last = self.offset + sum((n - 1) * s for n, s in zip(size, stride))
    if self.offset < 0 or any(s < 0 for s in stride) or last >= data.size:
      raise ValueError(
          f"tensor {name!r}: offset {self.offset}, size {size}, stride {stride} run past its "
          f"storage of {data.size} elements.")
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], shape=size, strides=tuple(s * data.itemsize for s in stride))
    return np.array(view)  # A contiguous copy that owns its memory.


class _Module:
  """An instance of a pickled module class: its state (a dict) becomes its attributes."""

  qualified_name = "module"

  def __setstate__(self, state: Any) -> None:
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
      state = {**(state[0] or {}), **state[1]}  # (dict, slots) form.
    if not isinstance(state, dict):
      raise pickle.UnpicklingError(
          f"{self.qualified_name}: unexpected state of type {type(state).__name__}.")
    self.__dict__.update(state)


def _module_class(module: str, name: str) -> type:
  return type(name, (_Module,), {"qualified_name": f"{module}.{name}"})


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args) -> _Tensor:
  return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused_args):
  return data


def _rebuild_from_type(func, unused_new_type, args, unused_state):
  return func(*args)


def _newobj(cls, *args):
  return cls.__new__(cls, *args)


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("copyreg", "_reconstructor"): lambda cls, base, state: _newobj(cls),
    ("copyreg", "__newobj__"): _newobj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch.nn.parameter", "Parameter"): _module_class("torch.nn.parameter", "Parameter"),
    ("torch", "Tensor"): _module_class("torch", "Tensor"),
    ("torch", "Size"): tuple,
    # TorchScript's typed containers and type tags.
    **{("torch.jit._pickle", f"build_{kind}list"): list
       for kind in ("int", "double", "bool", "tensor", "generic")},
    ("torch.jit._pickle", "restore_type_tag"): lambda value, unused_type: value,
}


class _Unpickler(pickle.Unpickler):
  """Resolves only torch's tensor machinery and module classes; storages become `_Storage`s."""

  def __init__(self, file, legacy: bool):
    super().__init__(file)
    self.legacy = legacy
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    # torch.cuda.FloatStorage etc. come from files saved on a GPU; the bytes are the same.
    if module in ("torch", "torch.storage", "torch.cuda") and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if module.startswith("__torch__") or module.startswith("torch.nn.modules"):
      return _module_class(module, name)
    raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file.")

  def persistent_load(self, pid: Any) -> Any:
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}.")
    storage_type, key, _, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"storage {key!r}: unknown storage type {storage_type!r}.")
    if self.legacy and len(pid) > 5 and pid[5] is not None:
      raise pickle.UnpicklingError(f"storage {key!r}: legacy storage views are not supported.")
    key = str(key)
    if key not in self.storages:
      self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
    return self.storages[key]


def _fill(storage: _Storage, raw: bytes, where: str) -> None:
  expected = storage.numel * storage.dtype.itemsize
  if len(raw) < expected:
    raise ValueError(f"{where}: storage {storage.key!r} has {len(raw)} bytes, expected "
                     f"{expected}.")
  storage.array = np.frombuffer(raw, storage.dtype, count=storage.numel)


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise ValueError(f"{path!r}: a torch zip holds exactly one <dir>/data.pkl; found {pickles}.")
    prefix = pickles[0][: -len("data.pkl")]
    if prefix + "byteorder" in names and archive.read(prefix + "byteorder").strip() != b"little":
      raise ValueError(f"{path!r}: big-endian torch files are not supported.")
    unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])), legacy=False)
    root = unpickler.load()
    for key, storage in unpickler.storages.items():
      member = f"{prefix}data/{key}"
      if member not in names:
        raise ValueError(f"{path!r}: storage file {member!r} is missing.")
      _fill(storage, archive.read(member), path)
  return root


def _read_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    try:
      magic = pickle.load(f)
    except Exception as e:  # Any unpickling failure means "not this format".
      raise ValueError(f"{path!r}: neither a torch zip file nor a legacy torch.save file.") from e
    if magic != _LEGACY_MAGIC:
      raise ValueError(f"{path!r}: neither a torch zip file nor a legacy torch.save file.")
    pickle.load(f)  # Protocol version.
    pickle.load(f)  # System info (endianness, type sizes).
    unpickler = _Unpickler(f, legacy=True)
    root = unpickler.load()
    keys = pickle.load(f)
    for key in keys:
      storage = unpickler.storages.get(str(key))
      if storage is None:
        raise ValueError(f"{path!r}: storage {key!r} is not used by any tensor.")
      numel = int(np.frombuffer(f.read(8), "<i8")[0])
      if numel != storage.numel:
        raise ValueError(f"{path!r}: storage {key!r} has {numel} elements, the pickle says "
                         f"{storage.numel}.")
      _fill(storage, f.read(numel * storage.dtype.itemsize), path)
  return root


def _flatten(value: Any, prefix: str, out: dict[str, Any], include_attributes: bool,
             seen: set[int]) -> None:
  if isinstance(value, _Tensor):
    out[prefix] = value.to_numpy(prefix)
    return
  if isinstance(value, (_Module, dict)):
    if id(value) in seen:  # Shared submodules appear once, under their first name.
      return
    seen.add(id(value))
    items = value.items() if isinstance(value, dict) else vars(value).items()
    for key, child in items:
      if not isinstance(key, str):
        continue
      name = prefix if key in _TRANSPARENT_ATTRIBUTES else (f"{prefix}.{key}" if prefix else key)
      _flatten(child, name, out, include_attributes, seen)
    return
  if isinstance(value, (list, tuple)) and value and all(
      isinstance(v, (_Tensor, _Module, dict)) for v in value):
    for i, child in enumerate(value):
      _flatten(child, f"{prefix}.{i}" if prefix else str(i), out, include_attributes, seen)
    return
  if include_attributes and prefix:
    numeric = (bool, int, float)
    if isinstance(value, numeric) or (
        isinstance(value, (list, tuple)) and value and all(isinstance(v, numeric) for v in value)):
      out[prefix] = np.asarray(value)


def read_arrays(path: str, include_attributes: bool = False) -> dict[str, np.ndarray]:
  """Every tensor of a TorchScript or `torch.save` file as {dotted name: np.ndarray}.

  With `include_attributes`, numeric module attributes (a TorchScript conv's `stride`, `padding`,
  ...) are returned too, as small arrays. Raises ValueError naming the file for anything else.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"{path!r} does not exist or is not a file.")
  try:
    root = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  except (pickle.UnpicklingError, EOFError, KeyError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path!r}: not a readable torch file ({type(e).__name__}: {e}).") from e
  out: dict[str, Any] = {}
  _flatten(root, "", out, include_attributes, set())
  if not out:
    raise ValueError(f"{path!r}: holds no tensors.")
  return out
