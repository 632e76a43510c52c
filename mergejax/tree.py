"""Pytree utilities shared by the merge library and the checkpoint layer: canonical leaf paths,
stable path hashes (for PRNG keys) and structural validation of base vs experts."""

from __future__ import annotations

import zlib
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _key_name(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_str(keypath: Sequence[Any]) -> str:
  """Canonical, human-readable leaf path: keys joined with '/' (e.g. 'params/layer_0/mlp/kernel')."""
  return "/".join(_key_name(k) for k in keypath)


def flatten(tree: PyTree) -> tuple[list[str], list[Any], Any]:
  """Returns (paths, leaves, treedef) in JAX's canonical leaf order."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return [path_str(p) for p, _ in with_path], [x for _, x in with_path], treedef


def stable_path_hash(path: str) -> int:
  """A 31-bit hash of a leaf path that is identical in every process and run (unlike hash())."""
  return zlib.crc32(path.encode("utf-8")) & 0x7FFFFFFF


def is_float_dtype(dtype: Any) -> bool:
  """True for float dtypes, including bfloat16 and other ml_dtypes floats."""
  return bool(jnp.issubdtype(np.dtype(dtype), jnp.floating))


def is_prng_key(x: Any) -> bool:
  """True for a typed PRNG key array (``jax.random.key``; e.g. an ``nnx.Rngs`` stream's key)."""
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def shape_dtype(x: Any) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of a leaf; a typed PRNG key is described by its key data (e.g. (..., 2) uint32)."""
  if is_prng_key(x):
    data = jax.eval_shape(jax.random.key_data, x)
    return tuple(data.shape), np.dtype(data.dtype)
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    return tuple(x.shape), np.dtype(x.dtype)
  a = np.asarray(x)
  return a.shape, a.dtype


class TreeMismatchError(ValueError):
  """Base and experts differ in structure, shape or dtype."""


def check_same_structure(
    reference: tuple[list[str], list[Any]],
    others: Iterable[tuple[str, tuple[list[str], list[Any]]]],
    reference_name: str = "base",
) -> None:
  """Raises TreeMismatchError naming the first offending leaf path and what differed."""
  ref_paths, ref_leaves = reference
  ref_index = {p: i for i, p in enumerate(ref_paths)}
  for name, (paths, leaves) in others:
    if paths != ref_paths:
      missing = [p for p in ref_paths if p not in set(paths)]
      extra = [p for p in paths if p not in ref_index]
      if missing:
        raise TreeMismatchError(f"{name}: leaf '{missing[0]}' is in {reference_name} but missing from {name}")
      if extra:
        raise TreeMismatchError(f"{name}: leaf '{extra[0]}' is in {name} but not in {reference_name}")
      raise TreeMismatchError(f"{name}: leaves are ordered differently from {reference_name} (tree structure differs)")
    for p, a, b in zip(paths, ref_leaves, leaves):
      (sa, da), (sb, db) = shape_dtype(a), shape_dtype(b)
      if sa != sb:
        raise TreeMismatchError(f"{name}: leaf '{p}' has shape {sb}, {reference_name} has {sa}")
      if da != db:
        raise TreeMismatchError(f"{name}: leaf '{p}' has dtype {db}, {reference_name} has {da}")
