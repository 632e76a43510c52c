"""PyTorch ``pytorch_model.bin`` checkpoints (one file, or shards with ``pytorch_model.bin.index.json``),
read lazily without torch and without executing the pickle.

A ``torch.save`` file (PyTorch >= 1.6) is a zip archive (entries stored uncompressed): ``*/data.pkl``
holds the pickled state dict, in which every tensor is ``torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, ...)`` and every storage a persistent id ``('storage', torch.<T>Storage, key,
location, numel)`` naming the entry ``*/data/<key>`` that holds its bytes. The pickle is read with
an unpickler that resolves only those few globals (the allow-list of torch's ``weights_only`` loader
for state dicts: ``collections.OrderedDict``, the tensor/parameter rebuild functions and the typed
storage classes) to inert stand-ins; any other global (``os.system``, ``builtins.eval``, a class's
``__reduce__``...) raises :class:`UnsafePickleError` naming the file and the global before anything
runs. Tensor data is never copied at open: each tensor is a memory map of its storage entry.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import pickle
import struct
import zipfile
from typing import Any, Mapping, Sequence

import jax
import ml_dtypes
import numpy as np

from mergejax.checkpoints.base import CheckpointError, HostViews, LeafSpec, array_from_host
from mergejax.checkpoints import shards
from mergejax.checkpoints.shards import shard_file

INDEX_NAME = "pytorch_model.bin.index.json"
SINGLE_NAME = "pytorch_model.bin"
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth")

# Typed storage classes a state dict refers to (torch.<name>), and their element dtypes.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32), "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32), "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8), "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}


class UnsafePickleError(CheckpointError):
  """A pickle refers to a global outside the state-dict allow-list (nothing was executed)."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str

  @property
  def dtype(self) -> np.dtype:
    return STORAGE_DTYPES[self.name]


@dataclasses.dataclass(frozen=True)
class _Storage:
  key: str
  dtype: np.dtype
  numel: int


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """A tensor as the pickle describes it: a strided view of a storage (nothing read yet)."""

  storage: _Storage
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]

  def contiguous(self) -> bool:
    expect = 1
    for d, s in zip(reversed(self.shape), reversed(self.stride)):
      if d != 1 and s != expect:
        return False
      expect *= d
    return True


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f"tensor storage is {type(storage).__name__}, not a storage reference")
  return _Tensor(storage, int(storage_offset), tuple(int(d) for d in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  del requires_grad, backward_hooks, unused
  return data


class _OrderedDict(dict):
  """``collections.OrderedDict`` for the unpickler: a plain dict that ignores instance state
  (torch attaches ``_metadata`` with module versions; pickle's BUILD would set it as an attribute)."""

  def __setstate__(self, state):
    del state


# The allow-list: (module, name) -> stand-in. Nothing else is ever resolved.
_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
  def __init__(self, data: bytes, file: str):
    import io  # pylint: disable=g-import-not-at-top
    super().__init__(io.BytesIO(data))
    self._file = file

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _GLOBALS[(module, name)]
    except KeyError:
      raise UnsafePickleError(f"{self._file}: refusing to load: the pickle calls '{module}.{name}', which is not "
                              "part of a tensor state dict (nothing was executed)") from None

  def persistent_load(self, pid: Any) -> Any:
    if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
        or not isinstance(pid[1], _StorageType)):
      raise UnsafePickleError(f"{self._file}: refusing to load: unexpected persistent id {str(pid)[:80]!r}")
    _, stype, key, _location, numel = pid
    return _Storage(str(key), stype.dtype, int(numel))


def _entry_data_offset(f, info: zipfile.ZipInfo) -> int:
  """Byte offset of a stored zip entry's data (after its local header)."""
  f.seek(info.header_offset)
  head = f.read(30)
  if len(head) < 30 or head[:4] != b"PK\x03\x04":
    raise ValueError(f"bad local header for {info.filename}")
  name_len, extra_len = struct.unpack("<HH", head[26:30])
  return info.header_offset + 30 + name_len + extra_len


def read_state_dict_index(file: pathlib.Path) -> dict[str, dict[str, Any]]:
  """{tensor name: {dtype, shape, offset (bytes into the file), contiguous, tensor}} of a torch zip file,
  from its pickle alone (the unpickler above) and the zip directory."""
  if not zipfile.is_zipfile(file):
    with open(file, "rb") as f:
      magic = f.read(8)
    if magic[:1] == b"\x80":
      raise CheckpointError(f"{file}: legacy (pre-1.6, non-zip) torch checkpoint: not supported; re-save it with "
                            "torch.save or convert it to safetensors")
    raise CheckpointError(f"{file}: not a torch checkpoint (not a zip archive)")
  try:
    with zipfile.ZipFile(file) as z, open(file, "rb") as f:
      infos = {i.filename: i for i in z.infolist()}
      pkl = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
      if len(pkl) != 1:
        raise CheckpointError(f"{file}: torch archive has {len(pkl)} data.pkl entries (expected 1)")
      prefix = pkl[0][:-len("data.pkl")]
      byteorder = infos.get(prefix + "byteorder")
      if byteorder is not None and z.read(byteorder).strip() not in (b"little", b""):
        raise CheckpointError(f"{file}: big-endian torch checkpoint: not supported")
      obj = _Unpickler(z.read(pkl[0]), str(file)).load()
      if not isinstance(obj, dict):
        raise CheckpointError(f"{file}: the pickle holds a {type(obj).__name__}, not a state dict")
      out: dict[str, dict[str, Any]] = {}
      for name, t in obj.items():
        if not isinstance(t, _Tensor):
          raise CheckpointError(f"{file}: entry {name!r} is a {type(t).__name__}, not a tensor")
        info = infos.get(f"{prefix}data/{t.storage.key}")
        if info is None:
          raise CheckpointError(f"{file}: tensor '{name}' refers to missing storage data/{t.storage.key}")
        if info.compress_type != zipfile.ZIP_STORED:
          raise CheckpointError(f"{file}: storage of tensor '{name}' is compressed (torch never does this)")
        itemsize = t.storage.dtype.itemsize
        if info.file_size < t.storage.numel * itemsize:
          raise CheckpointError(f"{file}: truncated: storage of tensor '{name}' has {info.file_size} bytes, "
                                f"needs {t.storage.numel * itemsize}")
        extent = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride)) + 1 if math.prod(t.shape) else 0
        if t.offset < 0 or extent > t.storage.numel or any(s < 0 for s in t.stride):
          raise CheckpointError(f"{file}: tensor '{name}' lies outside its storage")
        out[str(name)] = {"dtype": t.storage.dtype, "shape": t.shape, "tensor": t,
                          "storage_offset": _entry_data_offset(f, info), "storage_numel": t.storage.numel}
      return out
  except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
          KeyError, struct.error) as e:
    if isinstance(e, CheckpointError):
      raise
    raise CheckpointError(f"{file}: corrupt torch checkpoint ({type(e).__name__}: {e})") from None


def is_torch_bin(path: str | os.PathLike) -> bool:
  p = pathlib.Path(path)
  if p.is_file():
    return p.suffix in WEIGHT_SUFFIXES
  return p.is_dir() and ((p / INDEX_NAME).is_file() or (p / SINGLE_NAME).is_file())


class TorchBinSource(HostViews):
  """A ``pytorch_model.bin`` file or HF directory (one file, or shards with the index). Leaf paths are
  tensor names, sorted. Contiguous tensors are memory-mapped in place; strided ones are gathered on read."""

  format = "torch"

  def __init__(self, path: str | os.PathLike, name: str | None = None):
    self.path = pathlib.Path(path)
    self.name = name or str(path)
    if not self.path.exists():
      raise CheckpointError(f"{self.path}: no such file or directory")
    if self.path.is_file():
      files, self.dir = [self.path], None
      weight_map = None
    else:
      self.dir = self.path
      index = self.path / INDEX_NAME
      if index.is_file():
        weight_map = shards.weight_map(index, "index")
        files = [shard_file(self.path, f, index) for f in sorted(set(weight_map.values()))]
      else:
        weight_map = None
        files = [self.path / SINGLE_NAME]
      if not files:
        raise CheckpointError(f"{self.path}: no pytorch_model.bin files")
    self._entries: dict[str, dict[str, Any]] = {}
    for f in files:
      for t, e in read_state_dict_index(f).items():
        if t in self._entries:
          raise CheckpointError(f"{f}: tensor '{t}' also appears in {self._entries[t]['file']}")
        self._entries[t] = {**e, "file": f}
    if weight_map is not None:
      for t, fname in weight_map.items():
        if t not in self._entries or self._entries[t]["file"].name != pathlib.PurePath(fname).name:
          raise CheckpointError(f"{self.path / INDEX_NAME}: tensor '{t}' is listed in '{fname}' but not stored there")
    self.files = files

  def specs(self) -> list[LeafSpec]:
    return [LeafSpec(t, e["shape"], e["dtype"]) for t, e in sorted(self._entries.items())]

  def _storage_map(self, t: str) -> np.ndarray:
    e = self._entries[t]
    return np.memmap(e["file"], dtype=e["dtype"], mode="r", offset=e["storage_offset"], shape=(e["storage_numel"],))

  def host(self, t: str) -> np.ndarray:
    """Tensor ``t`` as a read-only host array (a memory map when contiguous, else a gathered copy)."""
    e = self._entries[t]
    x: _Tensor = e["tensor"]
    n = math.prod(x.shape)
    if n == 0:
      return np.zeros(x.shape, e["dtype"])
    st = self._storage_map(t)
    if x.contiguous():
      return st[x.offset:x.offset + n].reshape(x.shape)
    view = np.lib.stride_tricks.as_strided(st[x.offset:], shape=x.shape,
                                           strides=tuple(s * e["dtype"].itemsize for s in x.stride), writeable=False)
    return np.array(view, copy=True)

  def flat_view(self, t: str) -> np.ndarray:
    return self.host(t).reshape(-1)

  def aligned_view(self, t: str, align: int = 64) -> tuple[np.ndarray, int] | None:
    """(map, lead): an ``align``-byte aligned memory map of tensor ``t``'s storage with the tensor at
    ``map[lead:lead + n]`` (see :class:`~mergejax.checkpoints.base.HostViews`); None for strided tensors."""
    e = self._entries[t]
    x: _Tensor = e["tensor"]
    dt = np.dtype(e["dtype"])
    n = math.prod(x.shape)
    offset = e["storage_offset"] + x.offset * dt.itemsize
    lead_bytes = offset % align
    if n == 0 or not x.contiguous() or lead_bytes % dt.itemsize:
      return None
    tail = min(align, os.path.getsize(e["file"]) - (offset + n * dt.itemsize)) // dt.itemsize
    lead = lead_bytes // dt.itemsize
    return np.memmap(e["file"], dtype=dt, mode="r", offset=offset - lead_bytes, shape=(lead + n + tail,)), lead

  def read(self, paths: Sequence[str], shardings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out = {}
    for t in paths:
      e = self._entries[t]
      sh = (shardings or {}).get(t)
      if sh is None:
        sh = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      out[t] = array_from_host(e["shape"], e["dtype"], sh, lambda idx, t=t: self.host(t)[tuple(idx)])
    return out
