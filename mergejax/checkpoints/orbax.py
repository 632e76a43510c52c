"""Orbax checkpoints (StandardCheckpointer / PyTreeCheckpointHandler, OCDBT) as a Source and a Sink.

Leaf paths are the tree keys joined with '/'. Shapes and dtypes come from the checkpoint metadata
(no array is loaded); a group of leaves is restored with ``partial_restore=True`` and an abstract
target whose leaves carry the requested shardings, so each process reads only its own shards.
Non-orbax files beside the orbax files (e.g. ``model_config.json``) are copied to an orbax output.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from mergejax.checkpoints import output as output_lib
from mergejax.checkpoints.base import CheckpointError, LeafSpec, StagedSink, TreeKeys
from mergejax.checkpoints.detect import is_orbax  # noqa: F401  (re-exported)

# Files orbax itself writes at the top of a checkpoint directory.
ORBAX_FILES = ("_METADATA", "_CHECKPOINT_METADATA", "_sharding", "manifest.ocdbt", "descriptor", "commit_success.txt")


def _key_str(k: Any) -> str:
  return str(k.key if hasattr(k, "key") else k.idx if hasattr(k, "idx") else k)


def _nest(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for keys, v in flat.items():
    d = out
    for k in keys[:-1]:
      d = d.setdefault(k, {})
    d[keys[-1]] = v
  return out


class OrbaxSource(TreeKeys):
  """A StandardCheckpointer / PyTreeCheckpointer directory."""

  format = "orbax"

  def __init__(self, path: str | os.PathLike, name: str | None = None, restore_concurrent_gb: float | None = None):
    self.path = pathlib.Path(path).resolve()
    self.name = name or str(path)
    self.dir = self.path
    if not self.path.exists():
      raise CheckpointError(f"{self.path}: no such file or directory")
    self._ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(
        restore_concurrent_gb=restore_concurrent_gb if restore_concurrent_gb else None))
    try:
      meta = self._ckptr.metadata(self.path)
      item = meta.item_metadata if hasattr(meta, "item_metadata") else meta
      if hasattr(item, "tree"):
        item = item.tree
      flat = jax.tree_util.tree_flatten_with_path(item, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[0]
    except Exception as e:  # orbax raises many types for unreadable metadata
      raise CheckpointError(f"{self.path}: cannot read orbax metadata ({type(e).__name__}: {e})") from None
    self._keys: dict[str, tuple[str, ...]] = {}
    self._specs: list[LeafSpec] = []
    for kp, m in flat:
      if not (hasattr(m, "shape") and hasattr(m, "dtype")):
        raise CheckpointError(f"{self.path}: leaf '{'/'.join(_key_str(k) for k in kp)}' has no array metadata")
      keys = tuple(_key_str(k) for k in kp)
      p = "/".join(keys)
      self._keys[p] = keys
      self._specs.append(LeafSpec(p, tuple(int(d) for d in m.shape), np.dtype(m.dtype)))
    if not self._specs:
      raise CheckpointError(f"{self.path}: orbax checkpoint has no array leaves")
    self._specs.sort(key=lambda s: s.path)
    self._by_path = {s.path: s for s in self._specs}

  def specs(self) -> list[LeafSpec]:
    return list(self._specs)

  def keys(self, path: str) -> tuple[str, ...]:
    return self._keys[path]

  def read(self, paths: Sequence[str], shardings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    flat = {}
    for p in paths:
      s = self._by_path[p]
      sh = (shardings or {}).get(p)
      if sh is None:
        sh = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      flat[self._keys[p]] = jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh)
    item = _nest(flat)
    try:
      restored = self._ckptr.restore(self.path, args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
    except Exception as e:
      raise CheckpointError(f"{self.path}: cannot restore leaves {list(paths)[:3]} ({type(e).__name__}: {e})") from None
    out = {}
    for p in paths:
      x = restored
      for k in self._keys[p]:
        x = x[k]
      out[p] = x
    return out


class OrbaxSink(StagedSink):
  """Writes the merged tree as an orbax checkpoint (OCDBT) into an atomic output directory.

  In one process the output is written progressively, group by group, with orbax's partial-save
  session (``orbax.checkpoint.experimental.v1.partial``: each :meth:`write` adds that group's leaves,
  :meth:`finalize` merges the session), so no merged leaf is held after its group: memory stays bounded
  as for safetensors. The session's tree is then moved to the top of the output directory, the layout
  of a ``StandardCheckpointer`` save, so ``ocp.StandardCheckpointer().restore(output)`` and
  :class:`OrbaxSource` read it. With several processes the merged leaves are kept (sharded, on the
  devices) and saved once at :meth:`finalize`.
  """

  format = "orbax"

  def __init__(self, output: str | os.PathLike, *, sidecar_dir: str | None = None, overwrite: bool = False,
               keys: Mapping[str, tuple[str, ...]] | None = None, progressive: bool | None = None):
    self.atomic = output_lib.AtomicDir(output, overwrite=overwrite, create=False)
    self.sidecar_dir = sidecar_dir
    self._keys = dict(keys or {})
    self._leaves: dict[tuple[str, ...], Any] = {}
    self._expected: list[str] = []
    self._written: set[str] = set()
    self.progressive = jax.process_count() == 1 if progressive is None else progressive
    # The partial-save session, in a hidden folder beside the output: orbax stages it in
    # 'tree.partial_save' (and 'tree.partial_save.pending_*'); finalize merges them into 'tree'.
    self._session_root = self.atomic.tmp.parent / f".{self.atomic.dest.name}.mergejax-orbax"
    self._session = self._session_root / "tree"
    self._remove_session()  # left by a killed run
    if self.progressive and output_lib.is_primary():
      self._session_root.mkdir()

  def _remove_session(self) -> None:
    if output_lib.is_primary() and self._session_root.exists():
      shutil.rmtree(self._session_root, ignore_errors=True)

  def begin(self, specs: Sequence[LeafSpec]) -> None:
    self._expected = [s.path for s in specs]

  def _key(self, p: str) -> tuple[str, ...]:
    return self._keys.get(p, tuple(p.split("/")))

  def write(self, leaves: Mapping[str, Any]) -> None:
    if not self.progressive:
      for p, x in leaves.items():
        self._leaves[self._key(p)] = x
      return
    if not leaves:
      return
    from orbax.checkpoint.experimental.v1 import partial as ocp_partial  # pylint: disable=g-import-not-at-top
    group = {self._key(p): (x if isinstance(x, jax.Array) else jax.numpy.asarray(x)) for p, x in leaves.items()}
    ocp_partial.save(self._session, _nest(group))
    self._written.update("/".join(k) for k in group)

  def finalize(self, metadata: Mapping[str, Any]) -> pathlib.Path:
    have = {"/".join(k) for k in self._leaves} | self._written
    missing = [p for p in self._expected if "/".join(self._key(p)) not in have]
    if missing:
      raise RuntimeError(f"merge produced no value for leaf '{missing[0]}'")
    if self.progressive:
      from orbax.checkpoint.experimental.v1 import partial as ocp_partial  # pylint: disable=g-import-not-at-top
      ocp_partial.finalize(self._session)
      if output_lib.is_primary():
        tree_dir = self._session / "state"
        if not (tree_dir / "_METADATA").is_file():
          raise RuntimeError(f"orbax partial save left no tree in {tree_dir}")
        os.rename(tree_dir, self.atomic.tmp)
        self._remove_session()
    else:
      tree = _nest(self._leaves)
      with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(self.atomic.tmp, tree)
        ckptr.wait_until_finished()
      self._leaves.clear()
    skip = ORBAX_FILES
    copied = output_lib.copy_sidecars(self.sidecar_dir, self.atomic.tmp, skip=skip) if self.sidecar_dir else []
    output_lib.write_manifest(self.atomic.tmp, {**metadata, "output_format": "orbax", "sidecars": copied})
    return self.atomic.commit()

  def abort(self) -> None:
    self._remove_session()
    self.atomic.abort()
