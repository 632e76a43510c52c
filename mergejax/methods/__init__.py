"""Merge methods: factories that validate hyperparameters and return a :class:`MergeMethod`.

>>> m = mergejax.methods.get("ties", density=0.2)
>>> mergejax.methods.names()
['average', 'dare_linear', 'dare_ties', 'task_arithmetic', 'ties']
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from mergejax.methods.average import average
from mergejax.methods.base import LeafContext, LeafPass, MergeMethod, leaf_key
from mergejax.methods.dare import dare_keep_masks, dare_linear
from mergejax.methods.task_arithmetic import task_arithmetic
from mergejax.methods.ties import dare_ties, ties

_REGISTRY: dict[str, Callable[..., MergeMethod]] = {}


def register(name: str, factory: Callable[..., MergeMethod]) -> None:
  """Adds a method factory under ``name`` (for user-defined methods)."""
  if name in _REGISTRY and _REGISTRY[name] is not factory:
    raise ValueError(f"merge method {name!r} is already registered")
  _REGISTRY[name] = factory


for _f in (average, task_arithmetic, ties, dare_linear, dare_ties):
  register(_f.__name__, _f)


def names() -> list[str]:
  """Registered method names, sorted."""
  return sorted(_REGISTRY)


def hparam_names(name: str) -> list[str]:
  """The hyperparameters a method accepts."""
  return list(inspect.signature(_factory(name)).parameters)


def _factory(name: str) -> Callable[..., MergeMethod]:
  if name not in _REGISTRY:
    raise ValueError(f"unknown merge method {name!r}: choose one of {names()}")
  return _REGISTRY[name]


def get(name: str, **hparams: Any) -> MergeMethod:
  """The method ``name`` with the given hyperparameters; ValueError names an unknown one."""
  factory = _factory(name)
  allowed = hparam_names(name)
  for k in hparams:
    if k not in allowed:
      raise ValueError(f"unknown hyperparameter {k!r} for merge method {name!r}: allowed {allowed}")
  return factory(**hparams)


__all__ = ["LeafContext", "LeafPass", "MergeMethod", "average", "dare_keep_masks", "dare_linear", "dare_ties", "get", "hparam_names",
           "leaf_key", "names", "register", "task_arithmetic", "ties"]
