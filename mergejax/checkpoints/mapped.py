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
Fill = Callable[[np.ndarray], None]  # writes a transformed leaf into a given array of its shape and dtype
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
    if attr in ("inner", "_fns", "_fills", "_specs", "_by_path"):
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
  appends new ones (same form as ``transforms``); ``fills[path]``, where given, writes the transformed
  leaf into a caller's array instead (:meth:`read_into`: no leaf-sized temporary). Attributes other than
  the Source protocol's (``dir``, ``format``, ``key_leaves``) are the inner source's."""

  def __init__(self, inner: Any, transforms: Mapping[str, tuple[LeafSpec, Transform]], *, name: str | None = None,
               drop: Sequence[str] = (), add: Mapping[str, tuple[LeafSpec, Transform]] | None = None,
               fills: Mapping[str, Fill] | None = None):
    self.inner = inner
    self.name = name or inner.name
    self._fns = {**dict(transforms), **dict(add or {})}
    self._fills = dict(fills or {})
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

  def read_into(self, path: str, out: np.ndarray) -> None:
    if path in self._fills:
      self._fills[path](out.reshape(self._by_path[path].shape))
    elif path in self._fns or not isinstance(self.inner, HostViews):
      np.copyto(out, self.flat_view(path))
    else:
      self.inner.read_into(path, out)

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

  def read_into(self, path: str, out: np.ndarray) -> None:
    self.inner.read_into(path, out)

  def read(self, paths: Sequence[str], shardings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return self.inner.read(paths, shardings)


class RenamedSource(_Wrapper):
  """Leaves of ``inner`` under other names, ``names[new] = old`` (only those leaves): a slice of a model's
  layers presented as other layers of the output. Tree keys are not renamed, so a renamed source does not
  offer them (an orbax output is then keyed by the new paths)."""

  def __new__(cls, inner: Any, names: Mapping[str, str]):
    del names
    return object.__new__(_with(cls, (HostViews,) if isinstance(inner, HostViews) else ()))

  def __init__(self, inner: Any, names: Mapping[str, str]):
    self.inner = inner
    self._names = dict(names)
    by_old = {s.path: s for s in inner.specs()}
    self._specs = sorted((LeafSpec(new, by_old[old].shape, by_old[old].dtype) for new, old in self._names.items()),
                         key=lambda s: s.path)

  def __getattr__(self, attr: str) -> Any:
    if attr in ("_names", "host", "key_leaves", "template"):  # leaf-keyed attributes: never the inner's names
      raise AttributeError(attr)
    return super().__getattr__(attr)

  def specs(self) -> list[LeafSpec]:
    return list(self._specs)

  def flat_view(self, path: str) -> np.ndarray:
    return host_leaf(self.inner, self._names[path]).reshape(-1)

  def aligned_view(self, path: str, align: int = 64):
    return self.inner.aligned_view(self._names[path], align) if isinstance(self.inner, HostViews) else None

  def read_into(self, path: str, out: np.ndarray) -> None:
    if isinstance(self.inner, HostViews):
      self.inner.read_into(self._names[path], out)
    else:
      np.copyto(out, self.flat_view(path))

  def read(self, paths: Sequence[str], shardings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    got = self.inner.read([self._names[p] for p in paths],
                          {self._names[p]: v for p, v in shardings.items() if p in self._names} if shardings else None)
    return {p: got[self._names[p]] for p in paths}
