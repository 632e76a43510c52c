"""The merge-method value type: traits, hyperparameter schema and validation.

A method is a small immutable value in the spirit of optax: a factory closes over validated
hyperparameters and returns a :class:`MergeMethod` holding pure, jittable per-leaf functions and the
:class:`Traits` that say what kind of method it is. Nothing outside :mod:`mergejax.methods` asks a
method its name: engines, the CLI and the study read its traits and its hyperparameter schema.

* ``kernel(base, experts, ctx, leaf_stats, *, out_dtype) -> merged leaf`` where ``experts`` is a
  *tuple* of arrays (a reduction over a stacked expert axis vectorizes badly on XLA:CPU) and ``ctx``
  is a :class:`LeafContext` of traced scalars (seed, leaf-path hash, hyperparameters), so one compiled
  kernel serves every leaf of the same shape and every hyperparameter value.
* ``compute_stats(leaf_pass, n_experts, shapes) -> {path: leaf_stats}`` (optional) for methods that need
  statistics over many leaves, e.g. TIES' model-wide top-k threshold. It only sees data through
  ``leaf_pass`` (see :class:`LeafPass`), which the engine implements by streaming leaf groups.
* Hyperparameters are declared once, with the factory (:func:`method_factory`): the factory's
  signature gives names and defaults, the declaration gives types, ranges and a one-line doc. The
  declaration validates every call and is the schema ``mergejax.methods.schema(name)`` returns.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, Mapping, Protocol, Sequence, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from mergejax.tree import stable_path_hash

Array = jax.Array


# Engines give position-keyed kernels 1-D flat windows (``row_len``) only for rows shorter than this and
# chunks of at most 2^22 entries; leaves with longer rows are split into row blocks instead.
MAX_WINDOW_ROW = 1 << 22


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Window:
  """Where the arrays a kernel sees lie in their leaf, seen as a (rows, D) matrix (set by engines that
  split a position-keyed leaf; see :meth:`LeafContext.in_window`)."""

  row_offset: Array
  col_offset: Array | None = None
  row_len: Array | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LeafContext:
  """Traced per-leaf inputs of a kernel, built by :meth:`MergeMethod.context` from the leaf path.

  Attributes:
    seed: uint32 scalar, the merge seed.
    path_hash: uint32 scalar, :func:`mergejax.tree.stable_path_hash` of the leaf path.
    lam: float32 scalar, the task-vector scale of this leaf (1 where unused).
    weights: float32[N], per-expert weights of this leaf.
    drop_rate: float32 scalar, DARE drop probability (0 where unused).
    dare_words: None, or uint32[2 + N]: the words (a0, a1) of fold_in(key(seed), path_hash) and the
      first word of fold_in(that key, t) for each expert t, computed on the host
      (:func:`dare_key_words`) so that kernels need no threefry.
  """

  seed: Array
  path_hash: Array
  lam: Array
  weights: Array
  drop_rate: Array
  dare_words: Array | None = None
  _window: Window | None = None

  @property
  def window(self) -> Window | None:
    """Where the piece this context is for lies in its leaf (:meth:`in_window`); None for a whole leaf."""
    return self._window

  def in_window(self, row_offset: int, col_offset: int | None = None, row_len: int | None = None) -> LeafContext:
    """This context for a piece of the leaf: row blocks starting at row ``row_offset``, or (with
    ``row_len`` D) the 1-D flat chunk whose first entry is at (``row_offset``, ``col_offset``) of the
    leaf seen as a (rows, D) matrix. Position-keyed kernels (:attr:`Traits.position_keyed`) then
    draw exactly what they draw at those entries of the whole leaf."""
    window = Window(np.uint32(row_offset), None if col_offset is None else np.uint32(col_offset),
                    None if row_len is None else np.uint32(row_len))
    return dataclasses.replace(self, _window=window)


_M32 = 0xFFFFFFFF


def threefry2x32(k0: int, k1: int, x0: int, x1: int) -> tuple[int, int]:
  """Threefry-2x32 (20 rounds; Salmon et al., SC 2011) of one counter pair, in Python integers.

  Bit-identical to JAX's ``threefry2x32_p`` (tests/test_methods_properties.py checks it against
  ``jax.random.fold_in``); used to derive per-leaf DARE keys on the host without a compile.
  """
  rot = ((13, 15, 26, 6), (17, 29, 16, 24))
  ks = (k0 & _M32, k1 & _M32, (k0 ^ k1 ^ 0x1BD11BDA) & _M32)
  x0, x1 = (x0 + ks[0]) & _M32, (x1 + ks[1]) & _M32
  for i in range(5):
    for r in rot[i % 2]:
      x0 = (x0 + x1) & _M32
      x1 = x0 ^ (((x1 << r) | (x1 >> (32 - r))) & _M32)
    x0, x1 = (x0 + ks[(i + 1) % 3]) & _M32, (x1 + ks[(i + 2) % 3] + i + 1) & _M32
  return x0, x1


def dare_key_words(seed: int, path_hash: int, n_experts: int) -> np.ndarray:
  """uint32[2 + N]: the key words of :func:`leaf_key`'s derivation, computed on the host.

  (a0, a1) = key_data(fold_in(key(seed), path_hash)) and k_t = key_data(fold_in(that key, t))[0]
  (``jax.random.key(seed)`` of a 32-bit seed has words (0, seed); ``fold_in(k, d)`` is
  threefry2x32(k, (0, d))).
  """
  a = threefry2x32(0, int(seed) & _M32, 0, int(path_hash) & _M32)
  return np.asarray([*a, *(threefry2x32(a[0], a[1], 0, t)[0] for t in range(n_experts))], np.uint32)


def leaf_key(ctx: LeafContext, expert_index: int) -> Array:
  """PRNG key for (seed, leaf path, expert): fold_in(fold_in(key(seed), path_hash), t).

  A pure function of those three values: independent of leaf order, device count and sharding
  (``jax_threefry_partitionable`` is on by default in jax >= 0.5).
  """
  key = jax.random.key(ctx.seed)
  return jax.random.fold_in(jax.random.fold_in(key, ctx.path_hash), expert_index)


class LeafPass(Protocol):
  """Runs per-leaf functions over every float leaf and returns host results by path: the engine
  streams leaf groups (sharded, or in flat pieces on one CPU device); methods never see files,
  meshes or how a leaf is split.

  Every function takes ``(base, experts, ctx, *args)`` with ``args = args_for(path)``, the extra array
  arguments of each leaf (e.g. its current threshold bracket); ``args_for`` returning None skips the
  leaf (no result for it). The arrays a function sees may be a piece of the leaf (a flat chunk whose
  ``ctx`` says where it lies), so results must not depend on the leaf's shape.
  """

  def __call__(self, fn: Callable[..., Any], args_for: Callable[[str], tuple | None] | None = None, *,
               host: Callable[..., Any] | None = None) -> dict[str, Any]:
    """``fn`` (jittable) returns a pytree of small arrays whose last axis indexes disjoint parts of the
    leaf (samples to pool): results of a leaf's pieces are concatenated along it.

    ``host``: optionally a NumPy twin of ``fn`` with the extra keyword argument ``f32`` (a function
    converting a host array to float32 as the engine's backend does it; XLA:CPU flushes subnormals to
    zero), which must compute ``fn``'s values bitwise from host arrays, applying ``f32`` to every
    float32 value it forms. An engine holding host arrays may call it instead of ``fn`` (no compile).
    """
    ...

  def count(self, indicators: Callable[..., Sequence[Array]], n: int,
            args_for: Callable[[str], tuple | None] | None = None) -> dict[str, np.ndarray]:
    """Exact counts of per-entry predicates: ``indicators`` (jittable, hashable: the same object
    for every pass) returns ``n`` boolean arrays shaped like the leaf; the result is int64[n] per leaf."""
    ...

  def histogram(self, levels: Callable[..., Sequence[Array]], n_groups: int, n_levels: int,
                args_for: Callable[[str], tuple | None] | None = None) -> dict[str, np.ndarray]:
    """Exact histograms: ``levels`` (jittable, hashable) returns ``n_groups`` arrays of integers in
    [0, ``n_levels``) shaped like the leaf; the result is int64[n_groups, n_levels] per leaf."""
    ...


@dataclasses.dataclass(frozen=True)
class Traits:
  r"""What a merge method is, declared by its factory: engines, the CLI and the study read these
  instead of the method's name, so a method added with ``methods.register`` gets every execution
  path and shortcut its traits allow.

  Attributes:
    uses_base: needs the base model :math:`\theta_0` (task-vector methods).
    base_is_origin: without ``uses_base``, a base given anyway is the origin of the experts' task
      vectors (merged relative to it), never one more model to merge; without either, a front end that
      has a base (mergekit's ``linear``, ``karcher``) merges it as one more input.
    elementwise: the merged entry depends only on the inputs at that entry, per-leaf scalars in
      ``ctx`` and per-leaf statistics, so merging a leaf in flat chunks (or leaves concatenated, see
      ``position_keyed``) gives the whole-leaf result bit for bit.
    position_keyed: results keyed by position in the leaf (DARE's randomness by (leaf path, row, column),
      Breadcrumbs' ties at a band edge by flat position): an engine that splits a leaf must tell the
      kernel where each piece lies in the leaf, and concatenating leaves changes results.
    lam_scales_task_vector: :math:`\theta = \theta_0 + \lambda\, g(\tau_1, \dots, \tau_N)` with
      :math:`g` independent of :math:`\lambda` (``lam``), so candidates differing only in ``lam`` can
      share :math:`g`.
    stochastic: the result depends on the merge seed.
    propagates_nonfinite: a NaN/Inf in any input the method reads always gives a NaN/Inf at that entry
      of the output, so an all-finite output proves all-finite inputs.
    min_experts, max_experts: how many experts the method merges (``max_experts`` None: no limit).
  """

  uses_base: bool = True
  base_is_origin: bool = False
  elementwise: bool = False
  position_keyed: bool = False
  lam_scales_task_vector: bool = False
  stochastic: bool = False
  propagates_nonfinite: bool = False
  min_experts: int = 1
  max_experts: int | None = None


@dataclasses.dataclass(frozen=True)
class MergeMethod:
  """A merge method with its hyperparameters closed over.

  Attributes:
    name: the registered name (for manifests and messages; nothing dispatches on it).
    hparams: the validated hyperparameters, in the factory's signature order.
    traits: see :class:`Traits`.
    kernel: ``kernel(base, experts, ctx, stats, *, out_dtype)``, pure and jittable, one leaf.
    compute_stats: optional statistics passes over all leaves (see the module docstring).
    local_stats: each leaf's statistics depend on that leaf alone (e.g. ties with scope="tensor"):
      an engine may compute them group by group while the group is resident, in one read.
    lam, drop_rate, weights: the per-leaf scalars of :class:`LeafContext` (defaults for every leaf).
    reference: the paper(s) the method follows.
    leaf_hparams: None, or ``leaf_hparams(path) -> {name: value}``: per-leaf values of the
      hyperparameters that reach kernels through ``ctx`` (``lam``, ``weights``), e.g. per-layer
      gradients or tensor-name filters; see :meth:`with_leaf_hparams`.
    stats_like: None, or ``stats_like(n_experts, has_base)``: one leaf's statistics as
      ``jax.ShapeDtypeStruct`` leaves, where every leaf's statistics have that structure (an engine may
      then compile the merge kernel while the statistics are measured).
  """

  name: str
  hparams: Mapping[str, Any]
  traits: Traits
  kernel: Callable[..., Array]
  compute_stats: Callable[[LeafPass, int, dict[str, tuple[int, ...]]], dict[str, Any]] | None = None
  local_stats: bool = False
  lam: float = 1.0
  drop_rate: float = 0.0
  weights: tuple[float, ...] | None = None
  reference: str = ""
  leaf_hparams: Callable[[str], Mapping[str, Any]] | None = None
  stats_like: Callable[[int, bool], Any] | None = None

  def context(self, n_experts: int, seed: int, path: str) -> LeafContext:
    """The kernel's :class:`LeafContext` for leaf ``path``: seed, path hash (DARE's keys) and this
    leaf's hyperparameter values (:attr:`leaf_hparams` where given, else the method's)."""
    path_hash = stable_path_hash(path)
    lam, weights = self.lam, self.weights
    if self.leaf_hparams is not None:
      for k, v in self.leaf_hparams(path).items():
        if k == "lam":
          lam = check_finite("lam", v)
        elif k == "weights":
          weights = check_weights(v)
        else:
          raise ValueError(f"{self.name}: hyperparameter {k!r} cannot vary by leaf (leaf '{path}'): "
                           f"only {list(LEAF_HPARAMS)} reach kernels per leaf")
      if weights is not None and len(weights) != n_experts:
        raise ValueError(f"{self.name}: weights of leaf '{path}' have {len(weights)} entries but there are "
                         f"{n_experts} experts")
    return LeafContext(
        seed=np.uint32(seed),
        path_hash=np.uint32(path_hash),
        lam=np.float32(lam),
        weights=np.asarray(weights if weights is not None else (1.0,) * n_experts, np.float32),
        drop_rate=np.float32(self.drop_rate),
        dare_words=dare_key_words(seed, path_hash, n_experts) if self.drop_rate else None,
    )

  def with_leaf_hparams(self, leaf_hparams: Callable[[str], Mapping[str, Any]]) -> MergeMethod:
    """This method with per-leaf values of ``lam`` / ``weights``: ``leaf_hparams(path)`` returns the
    values for leaf ``path`` (an empty dict: the method's own), e.g. ``lambda p: {"lam": 0.5} if "mlp"
    in p else {}``. Traits are unchanged, except that :attr:`Traits.lam_scales_task_vector` then
    holds leaf by leaf."""
    return dataclasses.replace(self, leaf_hparams=leaf_hparams)

  def check_experts(self, n_experts: int) -> None:
    """Raises ValueError if the method cannot merge ``n_experts`` models."""
    lo, hi = max(1, self.traits.min_experts), self.traits.max_experts
    if n_experts < lo:
      raise ValueError(f"{self.name}: need at least {'one expert' if lo == 1 else f'{lo} experts'}, got {n_experts}")
    if hi is not None and n_experts > hi:
      raise ValueError(f"{self.name}: merges at most {hi} expert{'s' if hi > 1 else ''}, got {n_experts}")
    if self.weights is not None and len(self.weights) != n_experts:
      raise ValueError(f"{self.name}: weights has {len(self.weights)} entries but there are {n_experts} experts")

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
    return f"{self.name}({args})"


# Hyperparameters whose values may differ by leaf (they reach kernels as ctx scalars).
LEAF_HPARAMS = ("lam", "weights")


# --------------------------------------------------------------------------- hyperparameter schema


@dataclasses.dataclass(frozen=True)
class HParam:
  """One hyperparameter of a merge method, as :func:`mergejax.methods.schema` lists it.

  Attributes:
    name: the factory's argument name (one name in every layer: config, CLI, study grids).
    type: float, int, bool, str, or tuple (a sequence of numbers, e.g. per-expert weights).
    default: the factory's default (None: unset, e.g. equal weights).
    doc: one line.
    range: (low, high, low_open, high_open) for numbers; None with type float: any finite number.
    choices: the allowed values of a str hyperparameter.
  """

  name: str
  type: type
  default: Any
  doc: str = ""
  range: tuple[float, float, bool, bool] | None = None
  choices: tuple[Any, ...] | None = None

  def allowed(self) -> str:
    """The allowed values in words, e.g. "(0.0, 1.0]" or "one of ['global', 'tensor']"."""
    if self.choices is not None:
      return f"one of {list(self.choices)}"
    if self.type is bool:
      return "True or False"
    if self.type is tuple:
      return "finite numbers >= 0, not all zero, one per expert"
    if self.range is not None:
      low, high, low_open, high_open = self.range
      return f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return "any finite number"

  def check(self, value: Any) -> Any:
    """``value`` validated and converted to :attr:`type`; ValueError names the hyperparameter and the
    allowed values. None is accepted when the default is None."""
    if value is None and self.default is None:
      return None
    if self.choices is not None:
      return check_choice(self.name, value, self.choices)
    if self.type is bool:
      return check_bool(self.name, value)
    if self.type is tuple:
      return check_weights(value)
    if self.type is int:
      return check_int(self.name, value, self.range)
    if self.type is not float:
      if not isinstance(value, self.type):
        raise ValueError(f"hyperparameter {self.name}={value!r} must be a {self.type.__name__}")
      return value
    if self.range is None:
      return check_finite(self.name, value)
    low, high, low_open, high_open = self.range
    return check_fraction(self.name, value, low=low, high=high, low_open=low_open, high_open=high_open)

  def describe(self) -> str:
    """One line for ``--help``: name, type, allowed values, default, doc."""
    return f"{self.name}: {self.type.__name__}, {self.allowed()}, default {self.default!r}. {self.doc}".rstrip()


def number(doc: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> HParam:
  """A float hyperparameter in [low, high] (open ends as given); no bounds: any finite number."""
  rng = None if low is None and high is None else (
      -math.inf if low is None else low, math.inf if high is None else high, low_open, high_open)
  return HParam("", float, None, doc, range=rng)


def integer(doc: str, low: int | None = None, high: int | None = None) -> HParam:
  """An int hyperparameter in [low, high]."""
  rng = None if low is None and high is None else (
      -math.inf if low is None else low, math.inf if high is None else high, False, False)
  return HParam("", int, None, doc, range=rng)


def choice(doc: str, choices: Sequence[str]) -> HParam:
  """A str hyperparameter, one of ``choices``."""
  return HParam("", str, None, doc, choices=tuple(choices))


def flag(doc: str) -> HParam:
  """A bool hyperparameter."""
  return HParam("", bool, None, doc)


def expert_weights(doc: str = "per-expert weights (>= 0, not all zero); None for all ones") -> HParam:
  """Per-expert weights: None, or one finite number >= 0 per expert, not all zero."""
  return HParam("", tuple, None, doc)


F = TypeVar("F", bound=Callable[..., MergeMethod])


def method_factory(*, formula: str, **specs: HParam) -> Callable[[F], F]:
  """Declares a method factory's hyperparameters; the factory then validates every call.

  ``specs`` maps each argument of the factory to :func:`number`, :func:`integer`, :func:`choice`,
  :func:`flag` or :func:`expert_weights`; names and defaults come from the factory's signature (one place
  for each default). The decorated factory receives validated, converted values, and carries
  ``schema`` (a tuple of :class:`HParam`) and ``formula`` (one line for ``--help``)::

      @method_factory(formula="theta_0 + lam * sum_t tau_t", lam=number("scale of the sum"))
      def my_method(lam: float = 1.0) -> MergeMethod: ...
  """

  def wrap(fn: F) -> F:
    sig = inspect.signature(fn)
    names = list(sig.parameters)
    missing = [n for n in names if n not in specs]
    extra = [n for n in specs if n not in sig.parameters]
    no_default = [n for n, p in sig.parameters.items() if p.default is inspect.Parameter.empty]
    if missing or extra or no_default:
      raise TypeError(f"method_factory({fn.__name__}): every argument needs a spec and a default "
                      f"(no spec: {missing}, no argument: {extra}, no default: {no_default})")
    schema = tuple(dataclasses.replace(specs[n], name=n, default=sig.parameters[n].default) for n in names)

    @functools.wraps(fn)
    def factory(*args: Any, **kwargs: Any) -> MergeMethod:
      bound = sig.bind(*args, **kwargs)
      bound.apply_defaults()
      checked = {}
      for hp in schema:
        try:
          checked[hp.name] = hp.check(bound.arguments[hp.name])
        except ValueError as e:  # one line naming the method and the hyperparameter
          raise ValueError(f"{fn.__name__}: {e}") from None
      return fn(**checked)

    factory.schema = schema
    factory.formula = formula
    return factory  # type: ignore[return-value]

  return wrap


# --------------------------------------------------------------------------- hyperparameter checks


def check_fraction(name: str, value: Any, *, low: float, high: float, low_open: bool, high_open: bool) -> float:
  """Validates ``value`` in the interval and returns it as float; ValueError names the range."""
  lo_b, hi_b = ("(" if low_open else "["), (")" if high_open else "]")
  rng = f"{lo_b}{low}, {high}{hi_b}"
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"hyperparameter {name}={value!r} must be a number in {rng}") from None
  ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
  if not ok or math.isnan(v):
    raise ValueError(f"hyperparameter {name}={value!r} is out of range: allowed {rng}")
  return v


def check_finite(name: str, value: Any) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"hyperparameter {name}={value!r} must be a finite number") from None
  if not math.isfinite(v):
    raise ValueError(f"hyperparameter {name}={value!r} is out of range: allowed any finite number")
  return v


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
  if value not in choices:
    raise ValueError(f"hyperparameter {name}={value!r} is not allowed: choose one of {list(choices)}")
  return value


def check_weights(value: Any) -> tuple[float, ...] | None:
  """None (all ones) or a non-empty sequence of finite, non-negative numbers, not all zero."""
  if value is None:
    return None
  try:
    w = tuple(float(x) for x in value)
  except (TypeError, ValueError):
    raise ValueError(f"hyperparameter weights={value!r} must be a sequence of numbers >= 0") from None
  if not w or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
    raise ValueError(f"hyperparameter weights={value!r} is out of range: allowed finite numbers >= 0, not all zero")
  return w


def check_int(name: str, value: Any, rng: tuple[float, float, bool, bool] | None = None) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"hyperparameter {name}={value!r} must be an integer")
  if rng is not None and not rng[0] <= value <= rng[1]:
    raise ValueError(f"hyperparameter {name}={value!r} is out of range: allowed [{rng[0]}, {rng[1]}]")
  return int(value)


def check_bool(name: str, value: Any) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"hyperparameter {name}={value!r} must be True or False")
  return bool(value)


def f32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.float32)
