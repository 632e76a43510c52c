r"""NaN/Inf in the inputs: found, named, refused (the default of every entry point), with at most one
extra read of the data.

Where the merge kernel is the first to read a leaf, the check is fused into it (:func:`kernel_checked`):
its loop also writes one byte per entry ("some input is NaN/Inf here", or for methods that propagate
NaN/Inf, :attr:`~mergejax.methods.Traits.propagates_nonfinite`, "the output is"), and one small
reduction of those bytes gives one flag. Where statistics passes read a leaf first, it is checked
exactly before them. A False fused flag is traced back to the input that holds a NaN/Inf by the exact
check, which names it; an output that overflows from finite inputs merges as before.
"""

from __future__ import annotations

import enum
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mergejax import tree as tree_lib
from mergejax.engine.host import to_host
from mergejax.engine.output import kernel_output


class NonFiniteError(ValueError):
  """An input leaf holds NaN or Inf."""


class Check(enum.Enum):
  """How the merge pass checks a leaf for NaN/Inf."""

  NONE = "none"  # allowed, or checked already (before a statistics pass read it)
  INPUTS = "inputs"  # a flag "every input is finite" fused into the kernel
  OUTPUT = "output"  # a flag "the output is finite": enough for methods that propagate NaN/Inf


@jax.jit
def finite_flags(base, experts):
  """bool[n_inputs]: each input (base first) is all finite."""
  xs = ([base] if base is not None else []) + list(experts)
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])


def _nonfinite_bytes(xs: Sequence[Any]) -> Any:
  """uint8 per entry: 1 where any of the same-shape arrays ``xs`` holds a NaN or Inf there."""
  return functools.reduce(jnp.bitwise_or, [(~jnp.isfinite(x)).astype(jnp.uint8) for x in xs])


def _none_set(bad: Any) -> Any:
  """bool[1]: no byte of ``bad`` is set. 1-D arrays of a multiple of 1024 entries are reduced as
  columns of a (-1, 1024) matrix first (vector adds on XLA:CPU, where a reduction to a scalar is a
  scalar loop)."""
  if bad.ndim == 1 and bad.size > 1024 and bad.size % 1024 == 0:
    bad = jnp.max(bad.reshape(-1, 1024), axis=0)
  return (jnp.max(bad, initial=0) == 0)[None]


@jax.jit
def all_finite(base, experts):
  """bool[1]: every entry of every input is finite."""
  xs = ([base] if base is not None else []) + list(experts)
  return _none_set(jax.lax.optimization_barrier(_nonfinite_bytes(xs)))


@functools.partial(jax.jit, static_argnames=("kernel", "out_dtype", "by_output"))
def kernel_checked(base, experts, ctx, stats, *, kernel, out_dtype, by_output=False):
  r"""The merged leaf and one bool[1] flag "every input is finite" (with ``by_output``: "the output
  is finite") in one executable, so one read of the data.

  The byte flags are computed in the kernel's own loop and materialized (the optimization barrier
  keeps XLA from recomputing the kernel inside the reduction's loop, which XLA:CPU would run as a
  scalar loop), then reduced: ~0.3x a kernel's cost instead of ~1x.
  """
  out = kernel_output(kernel, base, experts, ctx, stats, out_dtype)
  xs = [out] if by_output else ([base] if base is not None else []) + list(experts)
  out, bad = jax.lax.optimization_barrier((out, _nonfinite_bytes(xs)))
  return out, _none_set(bad)


@functools.lru_cache(maxsize=None)
def _exponent_mask(dtype: np.dtype) -> tuple[np.dtype, int] | None:
  """(unsigned view dtype, mask of the exponent bits) of a float dtype, None for other dtypes."""
  dtype = np.dtype(dtype)
  if not tree_lib.is_float_dtype(dtype) or dtype.itemsize not in (2, 4, 8):
    return None
  fi = jnp.finfo(dtype)
  return np.dtype(f"uint{8 * dtype.itemsize}"), ((1 << int(fi.nexp)) - 1) << int(fi.nmant)


def finite_host(x: np.ndarray) -> bool:
  """True when no entry of the host array ``x`` is NaN or Inf: no entry's exponent bits are all ones
  (one masked integer max over the bit pattern, numpy's vectorized integer max: several times cheaper
  than a reduction compiled by XLA:CPU)."""
  em = _exponent_mask(x.dtype)
  if em is None or x.size == 0:
    return True
  view, mask = em
  return int(np.bitwise_and(x.reshape(-1).view(view), mask).max()) < mask


class Guard:
  """The NaN/Inf policy of one merge: refuse (naming the input and leaf) or let through; each leaf
  is checked once."""

  def __init__(self, refuse: bool, source_names: Sequence[str], output_check: bool):
    """``output_check``: a finite output proves finite inputs (the method propagates NaN/Inf and
    reads every input given)."""
    self.refuse = refuse
    self.names = list(source_names)
    self.output_check = output_check
    self.checked: set[str] = set()

  def merge_check(self, float_paths: Sequence[str]) -> Check:
    """How the merge pass checks a group whose float leaves are ``float_paths``."""
    if not self.refuse or all(p in self.checked for p in float_paths):
      return Check.NONE
    return Check.OUTPUT if self.output_check else Check.INPUTS

  def check(self, paths: Sequence[str], exact_flags) -> None:
    """Checks the leaves not checked yet with ``exact_flags(path) -> bool[n_inputs]``."""
    if self.refuse:
      self.raise_if_nonfinite({p: exact_flags(p) for p in paths if p not in self.checked})

  def resolve(self, fused: Mapping[str, Any], exact_flags) -> None:
    """Raises NonFiniteError if a fused flag is False because an input holds NaN/Inf (traced back
    with ``exact_flags``); a False flag of finite inputs (an overflowing output) passes."""
    self.raise_if_nonfinite({p: exact_flags(p) for p, f in fused.items() if not to_host(f).all()})

  def raise_if_nonfinite(self, flags: Mapping[str, Any]) -> None:
    """Raises NonFiniteError naming the first input and leaf whose per-input flags are not all set."""
    for p, f in flags.items():
      f = to_host(f)
      if not f.all():
        raise NonFiniteError(f"{self.names[int(np.argmin(f))]}: leaf '{p}' contains NaN or Inf")
      self.checked.add(p)
