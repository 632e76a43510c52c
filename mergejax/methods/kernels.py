"""Kernel plumbing: one kernel object per (kernel function, static hyperparameters), and inputs
replicated before non-elementwise math.

Engines key compile caches on the kernel object (e.g. the jitted bf16 wrappers take it as a static
argument), so two method values with the same static configuration must share it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec


@functools.lru_cache(maxsize=None)
def _bound(fn: Callable[..., Any], items: tuple[tuple[str, Any], ...]) -> Callable[..., Any]:
  return functools.partial(fn, **dict(items))


def bind(fn: Callable[..., Any], **static: Any) -> Callable[..., Any]:
  """``functools.partial(fn, **static)``, the same object for equal arguments (which must be hashable)."""
  return _bound(fn, tuple(sorted(static.items())))


def whole(x: Any) -> Any:
  """``x`` (traced) replicated on its mesh: reductions then run in one order on every device count, so
  that non-elementwise kernels give bit-identical results on 1 and 8 devices. A no-op for None and
  unsharded arrays."""
  if x is None:
    return None
  sharding = jax.typeof(x).sharding
  mesh = sharding.mesh
  if mesh.empty or mesh.size == 1:
    return x
  target = NamedSharding(mesh, PartitionSpec())
  if any(t == AxisType.Explicit for t in mesh.axis_types):
    return jax.sharding.reshard(x, target)
  return jax.lax.with_sharding_constraint(x, target)


def on_whole_leaves(kernel: Callable[..., Any]) -> Callable[..., Any]:
  """A kernel whose base and experts are first replicated (:func:`whole`); wrap before ``jax.jit``."""

  @functools.wraps(kernel)
  def wrapped(base, experts, ctx, stats, **kwargs):
    return kernel(whole(base), tuple(whole(e) for e in experts), ctx, stats, **kwargs)

  return wrapped
