"""Hugging Face safetensors checkpoints: one file, or shards with ``model.safetensors.index.json``.

Format (https://huggingface.co/docs/safetensors): 8-byte little-endian header length n, an n-byte
JSON header ``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``, then the
data; offsets are relative to byte 8 + n. Headers are parsed and checked against the file sizes up
front (truncation and corruption are reported naming the file and tensor before any output exists).
Data is read and written through short-lived memory maps of exactly the blocks each device holds, so
host memory stays bounded by the group being merged.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import math
import os
import pathlib
import struct
import sys
from typing import Any, Mapping, Sequence

import jax
import ml_dtypes
import numpy as np

from mergejax import files as files_lib
from mergejax import tree as tree_lib
from mergejax.checkpoints import output as output_lib
from mergejax.checkpoints.base import (CheckpointError, HostViews, LeafSpec, SpanSink, StagedSink, array_from_host,
                                       normalize_index, private_memory)
from mergejax.checkpoints import shards
from mergejax.checkpoints.shards import shard_file

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_MAX_HEADER = 100 << 20

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "U16": np.dtype(np.uint16), "U32": np.dtype(np.uint32), "U64": np.dtype(np.uint64),
    "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in DTYPES.items()}


def dtype_code(dtype: Any) -> str:
  d = np.dtype(dtype)
  if d not in _CODES:
    raise ValueError(f"dtype {d} cannot be stored in safetensors")
  return _CODES[d]


def is_safetensors(path: str | os.PathLike) -> bool:
  p = pathlib.Path(path)
  if p.is_file():
    return p.suffix == ".safetensors"
  return p.is_dir() and ((p / INDEX_NAME).is_file() or any(p.glob("*.safetensors")))


def read_header(file: pathlib.Path) -> tuple[int, dict[str, dict[str, Any]]]:
  """(data start, {tensor: entry}) after checking every entry against the file size."""
  size = file.stat().st_size
  with open(file, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise CheckpointError(f"{file}: truncated safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", head)
    if n > _MAX_HEADER or 8 + n > size:
      raise CheckpointError(f"{file}: corrupt or truncated safetensors header (header length {n}, file {size} bytes)")
    raw = f.read(n)
  try:
    header = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{file}: corrupt safetensors header: {e}") from None
  if not isinstance(header, dict):
    raise CheckpointError(f"{file}: corrupt safetensors header: not a JSON object")
  start = 8 + n
  out = {}
  for name, e in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype = DTYPES[e["dtype"]]
      shape = tuple(int(d) for d in e["shape"])
      b, end = (int(x) for x in e["data_offsets"])
    except (KeyError, TypeError, ValueError):
      raise CheckpointError(f"{file}: corrupt safetensors header entry for tensor '{name}': {e!r}") from None
    nbytes = math.prod(shape) * dtype.itemsize
    if end - b != nbytes or b < 0:
      raise CheckpointError(f"{file}: corrupt safetensors header: tensor '{name}' has {end - b} bytes, "
                            f"shape {shape} {dtype} needs {nbytes}")
    if start + end > size:
      raise CheckpointError(f"{file}: truncated: tensor '{name}' ends at byte {start + end} but the file has {size}")
    out[name] = {"dtype": dtype, "shape": shape, "offset": start + b}
  return start, out


class SafetensorsSource(HostViews):
  """A safetensors file or HF model directory. Leaf paths are tensor names, sorted."""

  format = "safetensors"

  def __init__(self, path: str | os.PathLike, name: str | None = None):
    self.path = pathlib.Path(path)
    self.name = name or str(path)
    if not self.path.exists():
      raise CheckpointError(f"{self.path}: no such file or directory")
    files: dict[str, pathlib.Path] = {}
    if self.path.is_file():
      shard_files = [self.path]
      self.dir = None  # a lone file has no sidecar files (its folder may hold anything)
    else:
      self.dir = self.path
      index = self.path / INDEX_NAME
      if index.is_file():
        weight_map = shards.weight_map(index, "safetensors index")
        shard_files = []
        for fname in sorted(set(weight_map.values()), key=str):
          try:
            shard_files.append(shard_file(self.path, fname, index))
          except CheckpointError as e:
            if "missing" not in str(e):
              raise
            missing = next(k for k, v in weight_map.items() if v == fname)
            raise CheckpointError(f"{index}: shard '{fname}' (holding '{missing}') is missing") from None
      else:
        shard_files = sorted(self.path.glob("*.safetensors"))
        weight_map = None
      if not shard_files:
        raise CheckpointError(f"{self.path}: no safetensors files")
    self._entries: dict[str, dict[str, Any]] = {}
    for f in shard_files:
      _, header = read_header(f)
      for t, e in header.items():
        if t in self._entries:
          raise CheckpointError(f"{f}: tensor '{t}' also appears in {files[t]}")
        files[t] = f
        self._entries[t] = {**e, "file": f}
    if not self.path.is_file() and weight_map is not None:
      for t, fname in weight_map.items():
        if t not in self._entries or files[t].name != fname:
          raise CheckpointError(f"{self.path / INDEX_NAME}: tensor '{t}' is listed in '{fname}' but not stored there")
      extra = [t for t in self._entries if t not in weight_map]
      if extra:
        raise CheckpointError(f"{self.path / INDEX_NAME}: tensor '{extra[0]}' in {files[extra[0]].name} is not in the index")
    self.files = shard_files

  def specs(self) -> list[LeafSpec]:
    return [LeafSpec(t, e["shape"], e["dtype"]) for t, e in sorted(self._entries.items())]

  def _block(self, t: str, index: tuple[slice, ...] | None) -> np.ndarray:
    """The block ``index`` of tensor ``t``: its rows (axis 0) read with ``preadv`` straight into the result
    (several times faster than copying out of a memory map, which faults in one page at a time), then the
    other axes sliced."""
    e = self._entries[t]
    shape, dtype = e["shape"], e["dtype"]
    if math.prod(shape) == 0 or not shape:
      if not shape:
        return self._read_rows(e, 0, 1).reshape(())
      return np.zeros(shape, dtype)[index] if index else np.zeros(shape, dtype)
    index = normalize_index(index, shape) if index else tuple(slice(0, d) for d in shape)
    rows = self._read_rows(e, index[0].start, index[0].stop)
    rest = index[1:]
    if all(sl.start == 0 and sl.stop == d for sl, d in zip(rest, shape[1:])):
      return rows
    return np.ascontiguousarray(rows[(slice(None),) + rest])

  def _read_rows(self, e: Mapping[str, Any], r0: int, r1: int) -> np.ndarray:
    shape, dtype = e["shape"], e["dtype"]
    out = _aligned_empty((max(r1 - r0, 0),) + tuple(shape[1:]), dtype)
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    offset = e["offset"] + r0 * row_bytes
    view = memoryview(out.reshape(-1).view(np.uint8))
    fd = os.open(e["file"], os.O_RDONLY)
    try:
      _pread_all(fd, view, offset, e["file"])
    finally:
      os.close(fd)
    return out

  def prefetch(self, paths: Sequence[str]) -> None:
    """Starts reading tensors ``paths`` into the page cache in the background (``posix_fadvise``
    WILLNEED; a no-op where unavailable), so a later :meth:`read` overlaps its copies with the disk."""
    if not hasattr(os, "posix_fadvise"):
      return
    for t in paths:
      e = self._entries[t]
      n = math.prod(e["shape"]) * e["dtype"].itemsize
      fd = os.open(e["file"], os.O_RDONLY)
      try:
        os.posix_fadvise(fd, e["offset"], n, os.POSIX_FADV_WILLNEED)
      finally:
        os.close(fd)

  def flat_view(self, t: str) -> np.ndarray:
    """Tensor ``t`` as a read-only 1-D memory map (no copy; the data is read on first touch).

    The mapping is released when the last reference goes; on CPU, ``jax.device_put`` of a slice
    aliases the page cache instead of copying.
    """
    e = self._entries[t]
    n = math.prod(e["shape"])
    if n == 0:
      return np.zeros((0,), e["dtype"])
    return np.memmap(e["file"], dtype=e["dtype"], mode="r", offset=e["offset"], shape=(n,))

  def host(self, t: str) -> np.ndarray:
    """Tensor ``t`` as a read-only memory map of its shape (no copy)."""
    return self.flat_view(t).reshape(self._entries[t]["shape"])

  def aligned_view(self, t: str, align: int = 64) -> tuple[np.ndarray, int] | None:
    """(map, lead): a read-only 1-D memory map of tensor ``t``'s dtype whose first byte is
    ``align``-byte aligned in memory, with the tensor's entries at ``map[lead:lead + n]``, followed by
    up to ``align`` bytes of whatever the file holds after it; None if the tensor's offset is not a
    multiple of its itemsize, or it is empty.

    Safetensors data is only 8-byte aligned in its file; XLA:CPU copies a host buffer that is not
    64-byte aligned before a kernel reads it. Kernels given aligned windows of this map and the offset
    (the engine's flat-chunk executor) read the page cache directly.
    """
    e = self._entries[t]
    dt = np.dtype(e["dtype"])
    n = math.prod(e["shape"])
    lead_bytes = e["offset"] % align
    if n == 0 or lead_bytes % dt.itemsize:
      return None
    start = e["offset"] - lead_bytes
    tail = min(align, os.path.getsize(e["file"]) - (e["offset"] + n * dt.itemsize)) // dt.itemsize
    lead = lead_bytes // dt.itemsize
    return np.memmap(e["file"], dtype=dt, mode="r", offset=start, shape=(lead + n + tail,)), lead

  def read_into(self, t: str, out: np.ndarray) -> None:
    """Reads tensor ``t`` into the 1-D array ``out`` with ``preadv`` from the file: one copy from the
    page cache, no memory map and so no page faults (see :meth:`HostViews.read_into`)."""
    e = self._entries[t]
    view = memoryview(out.reshape(-1).view(np.uint8))
    if len(view) != math.prod(e["shape"]) * np.dtype(e["dtype"]).itemsize:
      raise ValueError(f"read_into: {len(view)} bytes for tensor '{t}' of shape {e['shape']} {e['dtype']}")
    offset = e["offset"]
    fd = os.open(e["file"], os.O_RDONLY)
    try:
      while view:
        n = os.preadv(fd, [view], offset)
        if n <= 0:
          raise CheckpointError(f"{e['file']}: truncated while reading tensor '{t}'")
        view, offset = view[n:], offset + n
    finally:
      os.close(fd)

  def read(self, paths: Sequence[str], shardings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out = {}
    for t in paths:
      e = self._entries[t]
      sh = (shardings or {}).get(t)
      if sh is None:
        sh = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      out[t] = array_from_host(e["shape"], e["dtype"], sh, lambda idx, t=t: self._block(t, tuple(idx)))
    return out


class SafetensorsSink(StagedSink, SpanSink):
  """Writes an HF-style directory: ``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` shards of
  about ``shard_bytes`` plus the index, sidecar files copied from ``sidecar_dir``, and the manifest.

  The layout (every tensor's shard and offset) is planned in :meth:`begin` from the output specs, so
  each leaf is written in place as soon as it is merged, block by block from each device (each
  process writes its own blocks), and is never buffered.
  """

  format = "safetensors"

  def __init__(self, output: str | os.PathLike, *, shard_bytes: int = 4 << 30, sidecar_dir: str | None = None,
               overwrite: bool = False, metadata: Mapping[str, str] | None = None):
    self.output = pathlib.Path(output)
    self.shard_bytes = shard_bytes
    self.sidecar_dir = sidecar_dir
    self.header_metadata = {"format": "pt", **(metadata or {})}
    self.atomic = output_lib.AtomicDir(output, overwrite=overwrite)
    self._layout: dict[str, dict[str, Any]] = {}
    self._written: set[str] = set()
    self.bytes_written = 0
    self._fds: dict[pathlib.Path, int] = {}
    # Early write-back is asked for on a thread of its own: submitting a leaf's dirty pages costs the
    # kernel ~1 ms of CPU per few MB, which the merging threads need.
    self._writeback: concurrent.futures.ThreadPoolExecutor | None = None

  def begin(self, specs: Sequence[LeafSpec]) -> None:
    shards: list[list[LeafSpec]] = [[]]
    size = 0
    for s in specs:
      if shards[-1] and size + s.nbytes > self.shard_bytes:
        shards.append([])
        size = 0
      shards[-1].append(s)
      size += s.nbytes
    n = len(shards)
    names = [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for fname, group in zip(names, shards):
      header: dict[str, Any] = {"__metadata__": self.header_metadata}
      off = 0
      for s in group:
        header[s.path] = {"dtype": dtype_code(s.dtype), "shape": list(s.shape), "data_offsets": [off, off + s.nbytes]}
        off += s.nbytes
      raw = json.dumps(header, separators=(",", ":")).encode()
      raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as the reference writer does
      start = 8 + len(raw)
      path = self.atomic.tmp / fname
      if output_lib.is_primary():
        with open(path, "wb") as f:
          f.write(struct.pack("<Q", len(raw)))
          f.write(raw)
          f.truncate(start + off)
      for s in group:
        self._layout[s.path] = {"file": path, "offset": start + header[s.path]["data_offsets"][0],
                                "shape": s.shape, "dtype": np.dtype(s.dtype)}
        weight_map[s.path] = fname
    if n > 1 and output_lib.is_primary():
      total = sum(s.nbytes for s in specs)
      index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
      files_lib.atomic_write_json(self.atomic.tmp / INDEX_NAME, index, sort_keys=False)
    output_lib.sync("mergejax-safetensors-begin")

  def write(self, leaves: Mapping[str, Any]) -> None:
    for t, x in leaves.items():
      lay = self._layout[t]
      shape, dtype = lay["shape"], lay["dtype"]
      if math.prod(shape) == 0:
        self._written.add(t)
        continue
      if tree_lib.is_prng_key(x):
        raise CheckpointError(f"leaf '{t}' is a PRNG key: safetensors cannot store PRNG keys "
                              "(write an orbax checkpoint instead)")
      whole = _whole_host_leaf(x)
      if whole is not None:  # one large write (2-3x faster than filling a fresh memory map)
        self._pwrite(lay["file"], np.ascontiguousarray(whole, dtype=dtype), lay["offset"])
        self.mark_written(t)
        self.bytes_written += math.prod(shape) * dtype.itemsize
        continue
      mm = np.memmap(lay["file"], dtype=dtype, mode="r+", offset=lay["offset"], shape=shape)
      try:
        if isinstance(x, jax.Array):
          for shard in x.addressable_shards:
            if shard.replica_id == 0:
              mm[normalize_index(shard.index, shape) if shape else ()] = np.asarray(shard.data, dtype=dtype)
        else:
          mm[...] = np.asarray(x, dtype=dtype)
        # No msync per leaf (it made writes ~2x slower): dirty pages leave this process's RSS on unmap
        # and every file is fsynced once before the atomic rename.
      finally:
        del mm
      self._written.add(t)
      self.bytes_written += math.prod(shape) * dtype.itemsize

  def write_span(self, path: str, start: int, data: np.ndarray) -> None:
    """Writes entries [start, start + data.size) of leaf ``path`` (row-major flat order) in place.

    For one process writing a leaf piece by piece as it is merged (no whole-leaf buffer); call
    :meth:`mark_written` when the leaf is complete.
    """
    lay = self._layout[path]
    data = np.ascontiguousarray(data, dtype=lay["dtype"]).reshape(-1)
    self._pwrite(lay["file"], data, lay["offset"] + start * lay["dtype"].itemsize)
    self.bytes_written += data.nbytes

  def mark_written(self, path: str) -> None:
    """Records leaf ``path`` as complete and starts its write-back to disk on a thread of its own (the
    final fsync then waits for less; Linux ``sync_file_range``, elsewhere a no-op)."""
    self._written.add(path)
    lay = self._layout[path]
    fd = self._fds.get(lay["file"])
    if fd is not None and _sync_file_range() is not None:
      if self._writeback is None:
        self._writeback = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mergejax-writeback")
      self._writeback.submit(_start_writeback, fd, lay["offset"], math.prod(lay["shape"]) * lay["dtype"].itemsize)

  def _pwrite(self, file: pathlib.Path, data: np.ndarray, offset: int) -> None:
    try:
      fd = self._fds.get(file)
      if fd is None:
        fd = self._fds[file] = os.open(file, os.O_WRONLY)
      view = memoryview(data.reshape(-1).view(np.uint8))
      while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    except OSError as e:  # name the file (e.g. ENOSPC: disk full)
      raise OSError(e.errno, e.strerror, str(file)) from None

  def _close(self) -> None:
    if self._writeback is not None:  # before the files it reads are closed
      self._writeback.shutdown(wait=True)
      self._writeback = None
    for fd in self._fds.values():
      os.close(fd)
    self._fds.clear()

  def finalize(self, metadata: Mapping[str, Any]) -> pathlib.Path:
    self._close()
    missing = [t for t in self._layout if t not in self._written]
    if missing:
      raise RuntimeError(f"merge produced no value for leaf '{missing[0]}'")
    copied = output_lib.copy_sidecars(self.sidecar_dir, self.atomic.tmp) if self.sidecar_dir else []
    output_lib.set_config_dtype(self.atomic.tmp, [lay["dtype"] for lay in self._layout.values()])
    meta = {**metadata, "output_format": "safetensors", "sidecars": copied}
    output_lib.write_manifest(self.atomic.tmp, meta)
    output_lib.write_card(self.atomic.tmp, meta, self.atomic.dest.name)
    return self.atomic.commit()

  def abort(self) -> None:
    self._close()
    self.atomic.abort()


def _aligned_empty(shape: Sequence[int], dtype: Any, align: int = 64) -> np.ndarray:
  """An uninitialized array whose data is ``align``-byte aligned: XLA:CPU then uses it in place
  (``jax.device_put`` aliases it) instead of copying it into a buffer of its own.

  Large arrays are anonymous memory maps (page aligned), not numpy allocations: numpy asks for
  transparent huge pages on large allocations, and where the kernel compacts memory to provide them
  (``defrag=madvise``) first-touching a fresh buffer was 2-5x slower than with ordinary pages.
  """
  n = math.prod(shape) * np.dtype(dtype).itemsize
  if n >= 1 << 20:
    return np.frombuffer(private_memory(n), np.uint8).view(dtype).reshape(shape)
  raw = np.empty(n + align, np.uint8)
  start = (-raw.ctypes.data) % align
  return raw[start:start + n].view(dtype).reshape(shape)


def _pread_all(fd: int, view: memoryview, offset: int, file: Any) -> None:
  """Fills ``view`` from ``fd`` at ``offset`` (positional reads: safe from several threads)."""
  while view:
    n = os.preadv(fd, [view], offset) if hasattr(os, "preadv") else _pread_into(fd, view, offset)
    if n <= 0:
      raise CheckpointError(f"{file}: truncated while reading a tensor at byte {offset}")
    view, offset = view[n:], offset + n


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
  data = os.pread(fd, len(view), offset)
  view[:len(data)] = data
  return len(data)


@functools.lru_cache(maxsize=1)
def _sync_file_range() -> Any:
  """libc's ``sync_file_range`` (Linux), else None."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    fn = ctypes.CDLL(None, use_errno=True).sync_file_range
  except (OSError, AttributeError):
    return None
  fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
  return fn


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
  """Asks the kernel to start writing [offset, offset + nbytes) of ``fd`` to disk, without waiting
  (``sync_file_range(SYNC_FILE_RANGE_WRITE)``); best effort, a no-op where unavailable."""
  fn = _sync_file_range()
  if fn is not None and nbytes > 0:
    fn(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; a failure only means no early write-back


def _whole_host_leaf(x: Any) -> np.ndarray | None:
  """The leaf as one host array when this process holds all of it in one piece (else None)."""
  if not isinstance(x, jax.Array):
    return np.asarray(x)
  if x.is_fully_addressable and len(x.addressable_shards) == 1:
    return np.asarray(x.addressable_shards[0].data)
  return None
