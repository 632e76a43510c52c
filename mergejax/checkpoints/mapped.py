"""Sources whose leaves are computed from another source's, one leaf at a time, when the engine reads
them: a LoRA adapter applied to its base, a float leaf upcast for a mixed-dtype merge, embedding rows
mapped to another vocabulary, a subset of leaves. Nothing is computed at open; a transformed leaf is
computed from its inputs when read and freed with the group, so memory follows one leaf, not a model.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from mergejax.checkpoints.base import HostViews, LeafSpec, TreeKeys, array_from_host

Transform = Callable[[], np.ndarray]
_CAPABILITIES = (HostViews, TreeKeys)


@functools.lru_cache(maxsize=None)
def _with(cls: type, caps: tuple[type, ...]) -> type:
  """``cls`` extended with the capability classes ``caps`` (one class per combination)."""
  missing = tuple(c for c in caps if not issubclass(cls, c))
  return type(cls.__name__, (cls, *missing), {"__module__": cls.__module__}) if missing else cls


class _Wrapper:
  """A source over another one: it has the capabilities (:class:`HostViews`, :class:`TreeKeys`) its
  inner source has, so the engine takes the same paths with it as with the inner source."""

  def __new__(cls, inner: Any, *args: Any, **kwargs: Any):
    del args, kwargs
    return super().__new__(_with(cls, tuple(c for c in _CAPABILITIES if isinstance(inner, c))))

  def __getattr__(self, attr: str) -> Any:
    if attr in ("inner", "_fns", "_specs", "_by_path"):
      raise AttributeError(attr)
    return getattr(self.inner, attr)

  def keys(self, path: str) -> tuple[Any, ...]:
    return self.inner.keys(path)


def host_leaf(src: Any, path: str) -> np.ndarray:
  """Leaf ``path`` of a Source as a host array (a memory map where the source has one)."""
  host = getattr(src, "host", None)  # memory-mapped sources: the leaf in its shape, no copy
  if host is not None:
    return host(path)
  if isinstance(src, HostViews):
    shape = next(s.shape for s in src.specs() if s.path == path)
    return np.asarray(src.flat_view(path)).reshape(shape)
  return np.asarray(src.read([path])[path])


class MappedSource(_Wrapper):
  """``inner``'s leaves, with some replaced: ``transforms[path] = (spec, fn)`` gives the new leaf's spec and
  a function computing it (a host array of that shape and dtype); ``drop`` hides leaves and ``add``
  appends new ones (same form as ``transforms``). Attributes other than the Source protocol's (``dir``,
  ``format``, ``key_leaves``) are the inner source's."""

  def __init__(self, inner: Any, transforms: Mapping[str, tuple[LeafSpec, Transform]], *, name: str | None = None,
               drop: Sequence[str] = (), add: Mapping[str, tuple[LeafSpec, Transform]] | None = None):
    self.inner = inner
    self.name = name or inner.name
    self._fns = {**dict(transforms), **dict(add or {})}
    inner_specs = [s for s in inner.specs() if s.path not in set(drop)]
    self._specs = [self._fns[s.path][0] if s.path in self._fns else s for s in inner_specs]
    have = {s.path for s in self._specs}
    self._specs += [spec for p, (spec, _) in sorted((add or {}).items()) if p not in have]
    self._specs.sort(key=lambda s: s.path)
    self._by_path = {s.path: s for s in self._specs}

  def specs(self) -> list[LeafSpec]:
    return list(self._specs)

  def spec(self, path: str) -> LeafSpec:
    return self._by_path[path]

  def host(self, path: str) -> np.ndarray:
    if path in self._fns:
      spec, fn = self._fns[path]
      x = np.asarray(fn())
      if x.shape != spec.shape or x.dtype != spec.dtype:
        raise RuntimeError(f"{self.name}: leaf '{path}' computed as {x.shape} {x.dtype}, expected {spec.shape} "
                           f"{spec.dtype}")
      return x
    return host_leaf(self.inner, path)

  def flat_view(self, path: str) -> np.ndarray:
    return self.host(path).reshape(-1)

  def aligned_view(self, path: str, align: int = 64):
    if path in self._fns or not isinstance(self.inner, HostViews):
      return None
    return self.inner.aligned_view(path, align)

  def read(self, paths: Sequence[str], shardings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    plain = [p for p in paths if p not in self._fns]
    out = self.inner.read(plain, {p: shardings[p] for p in plain if p in shardings} if shardings else None) \
        if plain else {}
    for p in paths:
      if p in self._fns:
        spec = self._by_path[p]
        sh = (shardings or {}).get(p) or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        x = self.host(p)
        out[p] = array_from_host(spec.shape, spec.dtype, sh, lambda idx, x=x: x[tuple(idx)])
    return out


class SubsetSource(_Wrapper):
  """The leaves ``paths`` of ``inner`` (everything else delegated)."""

  def __init__(self, inner: Any, paths: Sequence[str]):
    self.inner = inner
    keep = set(paths)
    self._specs = [s for s in inner.specs() if s.path in keep]

  def specs(self) -> list[LeafSpec]:
    return list(self._specs)

  def flat_view(self, path: str) -> np.ndarray:
    return self.inner.flat_view(path)

  def aligned_view(self, path: str, align: int = 64):
    return self.inner.aligned_view(path, align)

  def read(self, paths: Sequence[str], shardings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return self.inner.read(paths, shardings)
