"""Merge methods by name: register, get, and what each one takes (its hyperparameter schema).

>>> mergejax.methods.get("ties", density=0.2)
ties(density=0.2, lam=1.0, scope='global', sign='sum', aggregate='mean', weights=None)
>>> [hp.name for hp in mergejax.methods.schema("dare_linear")]
['drop_rate', 'lam', 'rescale', 'weights']

A factory declared with :func:`mergejax.methods.method_factory` carries its schema (types, ranges, a
line of doc); for any other factory the schema is read off its signature (names, defaults, and types
from annotations or defaults).
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, Callable

from mergejax.methods.base import HParam, MergeMethod

_LOCK = threading.Lock()
_REGISTRY: dict[str, Callable[..., MergeMethod]] = {}


def register(name: str, factory: Callable[..., MergeMethod]) -> None:
  """Adds a method factory under ``name``; re-registering the same factory is a no-op."""
  with _LOCK:
    if name in _REGISTRY and _REGISTRY[name] is not factory:
      raise ValueError(f"merge method {name!r} is already registered")
    _REGISTRY[name] = factory


def names() -> list[str]:
  """Registered method names, sorted."""
  return sorted(_REGISTRY)


def _factory(name: str) -> Callable[..., MergeMethod]:
  if name not in _REGISTRY:
    raise ValueError(f"unknown merge method {name!r}: choose one of {names()}")
  return _REGISTRY[name]


_TYPES = (bool, int, float, str, tuple)


def _signature_schema(factory: Callable[..., Any]) -> tuple[HParam, ...]:
  out = []
  for p in inspect.signature(factory).parameters.values():
    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
      continue
    default = None if p.default is inspect.Parameter.empty else p.default
    typ = p.annotation if p.annotation in _TYPES else type(default) if isinstance(default, _TYPES) else object
    out.append(HParam(p.name, typ, default))
  return tuple(out)


def schema(name: str) -> tuple[HParam, ...]:
  """The hyperparameters method ``name`` takes: name, type, default, allowed values, one-line doc."""
  factory = _factory(name)
  declared = getattr(factory, "schema", None)
  return tuple(declared) if declared is not None else _signature_schema(factory)


def formula(name: str) -> str:
  """One line saying what method ``name`` computes (its declared formula, else its doc's first line)."""
  factory = _factory(name)
  declared = getattr(factory, "formula", None)
  if declared:
    return declared
  doc = inspect.getdoc(factory) or ""
  return doc.splitlines()[0] if doc else ""


def hparam_names(name: str) -> list[str]:
  """The names of the hyperparameters method ``name`` takes, in its factory's order."""
  return [hp.name for hp in schema(name)]


def get(name: str, **hparams: Any) -> MergeMethod:
  """The method ``name`` with the given hyperparameters; ValueError names an unknown one."""
  factory = _factory(name)
  allowed = hparam_names(name)
  for k in hparams:
    if k not in allowed:
      raise ValueError(f"unknown hyperparameter {k!r} for merge method {name!r}: allowed {allowed}")
  return factory(**hparams)
