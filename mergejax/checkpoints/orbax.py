"""Orbax checkpoints (StandardCheckpointer / PyTreeCheckpointHandler, OCDBT) as a Source and a Sink.

Leaf paths are the tree keys joined with '/' (list and tuple positions are keys too: 'layers/0').
Shapes and dtypes come from the checkpoint metadata (no array is loaded); a group of leaves is
restored with an abstract target of the checkpoint's own structure (dicts, lists) whose wanted leaves
carry the requested shardings and whose other leaves are ``ocp.PLACEHOLDER``, so each process reads
only its own shards of the wanted leaves. PRNG key leaves (typed ``jax.random.key`` arrays, recorded
by orbax in ``array_metadatas/``) are listed with their key data's shape and dtype and come back as
keys. Non-orbax files beside the orbax files (e.g. ``model_config.json``) are copied to an orbax output.
"""

from __future__ import annotations

import json
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


def _key(k: Any) -> str | int:
  """A tree key: the int position for list/tuple entries, else the key's string."""
  return int(k.idx) if hasattr(k, "idx") else _key_str(k)


def _nest(flat: Mapping[tuple[str | int, ...], Any]) -> Any:
  """The nested tree of {key path: leaf}; int keys make lists (positions 0..n-1), other keys dicts."""
  out: dict[Any, Any] = {}
  for keys, v in flat.items():
    d = out
    for k in keys[:-1]:
      d = d.setdefault(k, {})
    d[keys[-1]] = v

  def listify(node):
    if not isinstance(node, dict):
      return node
    node = {k: listify(v) for k, v in node.items()}
    if node and all(isinstance(k, int) for k in node):
      if sorted(node) != list(range(len(node))):
        raise ValueError(f"list positions {sorted(node)} are not 0..{len(node) - 1}")
      return [node[i] for i in range(len(node))]
    return node

  return listify(out)


def _random_key_params(path: pathlib.Path) -> dict[str, str]:
  """{orbax param name ('a.b.c'): PRNG implementation} of the typed-key leaves orbax recorded."""
  out: dict[str, str] = {}
  for f in sorted((path / "array_metadatas").glob("*")) if (path / "array_metadatas").is_dir() else []:
    try:
      entries = json.loads(f.read_text()).get("array_metadatas", [])
    except (OSError, ValueError, AttributeError):
      continue
    for e in entries:
      meta = e.get("array_metadata", {}) if isinstance(e, dict) else {}
      impl = (meta.get("ext_metadata") or {}).get("random_key_impl")
      if impl and meta.get("param_name"):
        out[meta["param_name"]] = str(impl)
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
    self._tree = item  # the checkpoint's own structure (dicts and lists), for restore templates
    self._keys: dict[str, tuple[str, ...]] = {}
    self._specs: list[LeafSpec] = []
    random_keys = _random_key_params(self.path)
    self.key_leaves: dict[str, str] = {}  # PRNG key leaves: path -> implementation
    for kp, m in flat:
      if not (hasattr(m, "shape") and hasattr(m, "dtype")):
        raise CheckpointError(f"{self.path}: leaf '{'/'.join(_key_str(k) for k in kp)}' has no array metadata")
      p = "/".join(_key_str(k) for k in kp)
      keys = tuple(_key(k) for k in kp)
      self._keys[p] = keys
      self._specs.append(LeafSpec(p, tuple(int(d) for d in m.shape), np.dtype(m.dtype)))
      if ".".join(map(str, keys)) in random_keys:
        self.key_leaves[p] = random_keys[".".join(map(str, keys))]
    if not self._specs:
      raise CheckpointError(f"{self.path}: orbax checkpoint has no array leaves")
    self._specs.sort(key=lambda s: s.path)
    self._by_path = {s.path: s for s in self._specs}

  def specs(self) -> list[LeafSpec]:
    return list(self._specs)

  def template(self) -> Any:
    """The checkpoint's tree structure (metadata leaves; None for empty nodes such as optax's EmptyState)."""
    return self._tree

  def keys(self, path: str) -> tuple[str | int, ...]:
    """The leaf's key path in the tree (ints for list/tuple positions)."""
    return self._keys[path]

  def read(self, paths: Sequence[str], shardings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    wanted = {}
    for p in paths:
      s = self._by_path[p]
      sh = (shardings or {}).get(p)
      if sh is None:
        sh = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      wanted[self._keys[p]] = jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh)
    item = jax.tree_util.tree_map_with_path(
        lambda kp, _: wanted.get(tuple(_key(k) for k in kp), ocp.PLACEHOLDER), self._tree,
        is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    try:
      restored = self._ckptr.restore(self.path, args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item)))
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

  In one process, for trees of dicts only, the output is written progressively, group by group, with orbax's partial-save
  session (``orbax.checkpoint.experimental.v1.partial``: each :meth:`write` adds that group's leaves,
  :meth:`finalize` merges the session), so no merged leaf is held after its group: memory stays bounded
  as for safetensors. The session's tree is then moved to the top of the output directory, so
  ``ocp.StandardCheckpointer().restore(output)`` and :class:`OrbaxSource` read it (its OCDBT folder
  keeps the session's hashed name, and it has no ``_CHECKPOINT_METADATA``). With several processes, or when the tree has lists or tuples (int keys
  in ``keys``: orbax's partial save cannot extend a list), the merged leaves are kept (sharded, on the
  devices) and saved once at :meth:`finalize`, so the output restores with the inputs' own structure.
  """

  format = "orbax"

  def __init__(self, output: str | os.PathLike, *, sidecar_dir: str | None = None, overwrite: bool = False,
               keys: Mapping[str, tuple[str | int, ...]] | None = None, progressive: bool | None = None,
               template: Any = None):
    self.atomic = output_lib.AtomicDir(output, overwrite=overwrite, create=False)
    self.sidecar_dir = sidecar_dir
    self._keys = dict(keys or {})
    self._template = template
    self._leaves: dict[tuple[str | int, ...], Any] = {}
    self._expected: list[str] = []
    self._written: set[str] = set()
    self.progressive = (jax.process_count() == 1 and self._dicts_only()) if progressive is None else progressive
    # The partial-save session, in a hidden folder beside the output: orbax stages it in
    # 'tree.partial_save' (and 'tree.partial_save.pending_*'); finalize merges them into 'tree'.
    self._session_root = self.atomic.tmp.parent / f".{self.atomic.dest.name}.mergejax-orbax"
    self._session = self._session_root / "tree"
    self._remove_session()  # left by a killed run
    if self.progressive and output_lib.is_primary():
      self._session_root.mkdir()

  def _dicts_only(self) -> bool:
    """True when the tree is nested dicts of leaves only (what a progressive partial save can write)."""
    if any(isinstance(k, int) for ks in self._keys.values() for k in ks):
      return False
    if self._template is None:
      return True
    is_leaf = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
    flat = jax.tree_util.tree_flatten_with_path(self._template, is_leaf=is_leaf)[0]
    nested = _nest({tuple(_key(k) for k in kp): 0 for kp, _ in flat})
    return jax.tree.structure(nested) == jax.tree.structure(jax.tree.map(lambda _: 0, self._template, is_leaf=is_leaf))

  def _tree(self) -> Any:
    if self._template is None:
      return _nest(self._leaves)
    return jax.tree_util.tree_map_with_path(lambda kp, _: self._leaves[tuple(_key(k) for k in kp)], self._template,
                                            is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))

  def _remove_session(self) -> None:
    if output_lib.is_primary() and self._session_root.exists():
      shutil.rmtree(self._session_root, ignore_errors=True)

  def begin(self, specs: Sequence[LeafSpec]) -> None:
    self._expected = [s.path for s in specs]

  def _key(self, p: str) -> tuple[str | int, ...]:
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
    self._written.update("/".join(map(str, k)) for k in group)

  def finalize(self, metadata: Mapping[str, Any]) -> pathlib.Path:
    have = {"/".join(map(str, k)) for k in self._leaves} | self._written
    missing = [p for p in self._expected if "/".join(map(str, self._key(p))) not in have]
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
      tree = self._tree()
      with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(self.atomic.tmp, tree)
        ckptr.wait_until_finished()
      self._leaves.clear()
    skip = ORBAX_FILES
    copied = output_lib.copy_sidecars(self.sidecar_dir, self.atomic.tmp, skip=skip) if self.sidecar_dir else []
    meta = {**metadata, "output_format": "orbax", "sidecars": copied}
    output_lib.write_manifest(self.atomic.tmp, meta)
    output_lib.write_card(self.atomic.tmp, meta, self.atomic.dest.name)
    return self.atomic.commit()

  def abort(self) -> None:
    self._remove_session()
    self.atomic.abort()
