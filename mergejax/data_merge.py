r"""Statistics from data for the data-aware merge methods (RegMean, Fisher, AdaMerging), computed with
the model's own forward pass, ``jax.grad`` and optax, on whatever devices the parameters live.

A model is anything with the small :class:`DataModel` interface (logits of a batch, which positions
count, their targets); :func:`decoder_model` adapts the built-in PaLM-style decoder, and a model family
plugs in with the same three functions. ``batches[t]`` are expert t's examples (a few unlabeled ones of
its own task: RegMean and AdaMerging use no labels, Fisher uses the targets).

>>> model = data_merge.decoder_model(config)
>>> method = data_merge.with_data(methods.regmean(), model, base, experts, batches)
>>> merged = mergejax.merge(base, experts, method)

RegMean's "inputs of each linear layer" are found without hooks in the model: the forward pass is traced
to a jaxpr and re-evaluated; every ``dot_general`` with a parameter on one side (through dtype casts and
transposes only) records the Gram matrix :math:`X^\top X` of its other operand over the contracted axes.
A parameter used that way exactly once is a linear layer; any other use (an embedding lookup, a norm's
multiply, a weight tied to two layers) makes it a leaf RegMean averages.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any, Callable, Mapping, Protocol, Sequence

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from mergejax import tree as tree_lib
from mergejax.methods import data_aware
from mergejax.methods.base import MergeMethod

PyTree = Any
Batch = Mapping[str, Any]


class DataModel(Protocol):
  """What the data-aware methods need of a model (pure functions of parameters and a batch)."""

  def logits(self, params: PyTree, batch: Batch) -> jax.Array:
    """Float logits [..., V] of the batch's positions."""

  def mask(self, batch: Batch) -> jax.Array:
    """bool [...] (logits' leading shape): the positions that count."""

  def targets(self, batch: Batch) -> jax.Array:
    """int [...]: each counted position's target class (Fisher's log-likelihood)."""


@dataclasses.dataclass(frozen=True)
class DecoderModel:
  """:class:`DataModel` of the built-in decoder (``mergejax.models.Decoder``) on ``{"tokens": int [B, L]}``
  batches (0 is padding): logits of every position, which predicts the next token; the last position
  and padding do not count."""

  config: Any

  def logits(self, params: PyTree, batch: Batch) -> jax.Array:
    from mergejax.models import Decoder  # pylint: disable=g-import-not-at-top  (flax model only when used)
    return Decoder(self.config).apply({"params": params}, batch["tokens"])

  def mask(self, batch: Batch) -> jax.Array:
    tokens = jnp.asarray(batch["tokens"])
    nxt = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    return (tokens != 0) & (nxt != 0)

  def targets(self, batch: Batch) -> jax.Array:
    tokens = jnp.asarray(batch["tokens"])
    return jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)


def decoder_model(config: Any) -> DecoderModel:
  """The built-in decoder of ``config`` (a ``mergejax.models.ModelConfig``) as a :class:`DataModel`."""
  return DecoderModel(config)


@dataclasses.dataclass(frozen=True)
class SeqioModel:
  """:class:`DataModel` of any checkpoint's :class:`~mergejax.ModelAdapter` (the built-in decoder or a
  Hugging Face family: ``mergejax.models.from_pretrained(...).adapter``) on seqio decoder batches, one
  example per row (``mergejax.training.data.batches(..., pack=False)``) with a bool ``mask`` [B, L] of
  the positions that count (:func:`example_mask`). Logits come from the adapter's seqio view, so the
  batches are in seqio's token ids whatever the checkpoint's tokenizer offsets."""

  adapter: Any

  def logits(self, params: PyTree, batch: Batch) -> jax.Array:
    return self.adapter.for_seqio().apply(params, jnp.asarray(batch["decoder_input_tokens"]))

  def mask(self, batch: Batch) -> jax.Array:
    return jnp.asarray(batch["mask"])

  def targets(self, batch: Batch) -> jax.Array:
    return jnp.asarray(batch["decoder_target_tokens"])


def example_mask(batch: Batch, labels: bool) -> np.ndarray:
  """bool [B, L]: the counted positions of a seqio decoder batch (one example per row). With ``labels``
  the answer's positions (``decoder_loss_weights`` > 0: the expert's training loss); without, what a
  causal model computes before it sees the answer: the prompt's positions and the first answer position,
  whose input is the prompt's last token (its prediction is the model's answer)."""
  answer = np.asarray(batch["decoder_loss_weights"]) > 0
  if labels:
    return answer
  first = answer & (np.cumsum(answer, axis=1) == 1)
  return ((np.asarray(batch["decoder_target_tokens"]) != 0) & ~answer) | first


# ------------------------------------------------------------------- linear layers' input Gram matrices

_VIEWS = ("convert_element_type", "copy", "copy_p", "reduce_precision", "transpose")


@dataclasses.dataclass
class _Use:
  grams: list = dataclasses.field(default_factory=list)  # (gram, param axes contracted, in order)
  other: bool = False  # used other than as one side of a dot_general (or with batch axes)


def _sub_jaxpr(eqn) -> tuple[Any, list] | None:
  """(jaxpr, consts) of a call-like equation whose body maps inputs to outputs one to one."""
  name = eqn.primitive.name
  p = eqn.params
  if name in ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
              "custom_vjp_call_jaxpr", "remat", "checkpoint"):
    j = p.get("jaxpr", p.get("call_jaxpr", p.get("fun_jaxpr")))
    if isinstance(j, jcore.ClosedJaxpr):
      return j.jaxpr, list(j.consts)
    if isinstance(j, jcore.Jaxpr):
      return j, []
  return None


def _interpret(jaxpr, consts, args, tags, uses, row_weight):
  """Evaluates ``jaxpr`` on ``args`` (traced), following parameter views: ``tags`` maps an input position
  to (leaf index, axes of the leaf per axis of the value)."""
  env: dict[Any, Any] = {}
  vtags: dict[Any, tuple[int, tuple]] = {}

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for i, (v, a) in enumerate(zip(jaxpr.invars, args)):
    env[v] = a
    if i in tags:
      vtags[v] = tags[i]

  def tag_of(v):
    return None if isinstance(v, jcore.Literal) else vtags.get(v)

  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    in_tags = [tag_of(v) for v in eqn.invars]
    name = eqn.primitive.name
    sub = _sub_jaxpr(eqn)
    if sub is not None and name not in ("custom_vjp_call", "custom_vjp_call_jaxpr"):
      sub_jaxpr, sub_consts = sub
      sub_tags = {i: t for i, t in enumerate(in_tags) if t is not None}
      outs, out_tags = _interpret(sub_jaxpr, sub_consts, ins, sub_tags, uses, row_weight)
      for v, o, t in zip(eqn.outvars, outs, out_tags):
        env[v] = o
        if t is not None:
          vtags[v] = t
      continue
    with eqn.ctx.manager:
      outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
    outs = list(outs) if eqn.primitive.multiple_results else [outs]
    tagged = [(i, t) for i, t in enumerate(in_tags) if t is not None]
    if tagged and name in _VIEWS and len(eqn.invars) == 1:
      leaf, axes = tagged[0][1]
      if name == "transpose":
        axes = tuple(axes[j] for j in eqn.params["permutation"])
      vtags[eqn.outvars[0]] = (leaf, axes)
    elif tagged and name == "dot_general" and len(tagged) == 1:
      (side, (leaf, axes)), = tagged
      (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
      p_contract, x_contract = (lc, rc) if side == 0 else (rc, lc)
      p_batch = lb if side == 0 else rb
      if p_batch:
        uses.setdefault(leaf, _Use()).other = True
      else:
        x = ins[1 - side]
        pairs = sorted(zip((axes[d] for d in p_contract), x_contract))
        rest = [d for d in range(x.ndim) if d not in x_contract]
        xt = jnp.transpose(x, rest + [d for _, d in pairs]).astype(jnp.float32)
        d_in = int(np.prod([x.shape[d] for _, d in pairs]))
        rows = xt.reshape(-1, d_in)
        w = row_weight(tuple(x.shape[d] for d in rest))
        if w is not None:
          rows = rows * w.reshape(-1, 1)
        uses.setdefault(leaf, _Use()).grams.append((rows.T @ rows, tuple(a for a, _ in pairs)))
    else:
      for _, (leaf, _) in tagged:
        uses.setdefault(leaf, _Use()).other = True
    for v, o in zip(eqn.outvars, outs):
      env[v] = o
  outs = [read(v) for v in jaxpr.outvars]
  out_tags = [tag_of(v) for v in jaxpr.outvars]
  return outs, out_tags


@functools.lru_cache(maxsize=32)
def _grams_fn(model: DataModel, treedef: Any, paths: tuple[str, ...]):
  """A jitted ``run(leaves, batch, mask) -> {path: Gram}`` and the dict of input axes it fills when traced
  (one compile per model, tree and shapes)."""
  in_axes: dict[str, tuple[int, ...]] = {}

  def fn(flat_leaves, b):
    return model.logits(jax.tree.unflatten(treedef, flat_leaves), b)

  @jax.jit
  def run(flat_leaves, b, m):
    closed = jax.make_jaxpr(fn)(flat_leaves, b)
    tags = {i: (i, tuple(range(np.ndim(x)))) for i, x in enumerate(flat_leaves)}
    uses: dict[int, _Use] = {}
    args = list(flat_leaves) + jax.tree.leaves(b)
    _interpret(closed.jaxpr, closed.consts, args, tags, uses,
               lambda lead_shape: m if tuple(lead_shape) == m.shape else None)
    linear = {paths[i]: u.grams[0] for i, u in uses.items() if not u.other and len(u.grams) == 1}
    in_axes.update({p: tuple(int(a) for a in axes) for p, (_, axes) in linear.items()})
    return {p: g for p, (g, _) in linear.items()}

  return run, in_axes


def linear_input_grams(model: DataModel, params: PyTree, batch: Batch) -> dict[str, tuple[jax.Array, tuple[int, ...]]]:
  """{leaf path: (Gram f32[D, D] of the layer's inputs over the batch's counted positions, the leaf's input
  axes)} for every parameter that is a linear layer (used exactly once, as one side of a contraction).

  Inputs whose leading axes are the mask's (a token's activations) count only at counted positions."""
  paths, leaves, treedef = tree_lib.flatten(params)
  run, in_axes = _grams_fn(model, treedef, tuple(paths))
  grams = run(leaves, batch, jnp.asarray(model.mask(batch)).astype(jnp.float32))
  return {p: (g, in_axes[p]) for p, g in grams.items()}


def regmean_statistics(model: DataModel, base: PyTree, experts: Sequence[PyTree],
                       batches: Sequence[Sequence[Batch]], n_experts: int) -> dict[str, Any]:
  """Per linear-layer leaf: {"grams": f32[N, D, D]} ([N, 1, D, D] where the input axes trail the leaf),
  each expert's Gram summed over its own batches."""
  del base, n_experts
  per_expert: list[dict[str, tuple[jax.Array, tuple[int, ...]]]] = []
  for params, bs in zip(experts, batches):
    acc: dict[str, Any] = {}
    for b in bs:
      for p, (g, axes) in linear_input_grams(model, params, b).items():
        acc[p] = (acc[p][0] + g, axes) if p in acc else (g, axes)
    per_expert.append(acc)
  shapes = dict(zip(*tree_lib.flatten(experts[0])[:2]))
  out = {}
  for p in per_expert[0]:
    if not all(p in e and e[p][1] == per_expert[0][p][1] for e in per_expert):
      continue
    axes, ndim = per_expert[0][p][1], np.ndim(shapes[p])
    grams = np.stack([np.asarray(e[p][0]) for e in per_expert])
    if axes == tuple(range(len(axes))):
      out[p] = {"grams": grams}
    elif axes == tuple(range(ndim - len(axes), ndim)):
      out[p] = {"grams": grams[:, None]}
  return out


# ------------------------------------------------------------------------------------- diagonal Fisher


@functools.lru_cache(maxsize=32)
def _fisher_fn(model: DataModel):
  """A jitted ``batch_sum(params, batch)``: the sum over the batch's rows of each example's squared
  gradient of its log-likelihood (one compile per model and shapes)."""

  def example_loglik(p, b):
    logits = model.logits(p, b).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tgt = jnp.take_along_axis(logp, model.targets(b)[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(jnp.where(model.mask(b), tgt, 0.0))

  @jax.jit
  def batch_sum(p, b):
    rows = jax.tree.leaves(b)[0].shape[0]

    def one(carry, i):
      ex = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, i, 1, 0), b)
      g = jax.grad(example_loglik)(p, ex)
      return jax.tree.map(lambda c, x: c + jnp.square(x.astype(jnp.float32)), carry, g), None

    zero = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), p)
    return jax.lax.scan(one, zero, jnp.arange(rows))[0]

  return batch_sum


def diagonal_fisher(model: DataModel, params: PyTree, batches: Sequence[Batch]) -> PyTree:
  r"""The empirical diagonal Fisher :math:`\frac1n\sum_i (\nabla_\theta \log p_\theta(y_i \mid x_i))^2` over
  the examples (rows) of ``batches``, each example's log-likelihood summed over its counted positions."""
  batch_sum = _fisher_fn(model)
  total, count = None, 0
  for b in batches:
    s = batch_sum(params, b)
    total = s if total is None else jax.tree.map(jnp.add, total, s)
    count += jax.tree.leaves(b)[0].shape[0]
  return jax.tree.map(lambda x: x / count, total)


def fisher_statistics(model: DataModel, base: PyTree, experts: Sequence[PyTree], batches: Sequence[Sequence[Batch]],
                      n_experts: int, *, normalize: bool) -> dict[str, Any]:
  """Per float leaf: {"fisher": f32[N, *leaf shape]}, each expert's diagonal Fisher on its own batches
  (divided by its L2 norm over the whole model with ``normalize``)."""
  del base, n_experts
  fishers = []
  for params, bs in zip(experts, batches):
    f = diagonal_fisher(model, params, bs)
    if normalize:
      norm = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(f)))
      f = jax.tree.map(lambda x, n=norm: x / jnp.where(n > 0, n, 1.0), f)
    fishers.append(dict(zip(*tree_lib.flatten(f)[:2])))
  return {p: {"fisher": np.stack([np.asarray(f[p]) for f in fishers])} for p in fishers[0]}


# ------------------------------------------------------------------------------------------ AdaMerging


def entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean Shannon entropy (nats) of softmax(logits) over the counted positions. Classes of logit -inf (a
  checkpoint's seqio view pads ids its tokenizer lacks that way) have probability 0 and add 0, to the
  value and to its gradient."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  finite = jnp.isfinite(logp)
  safe = jnp.where(finite, logp, 0.0)  # 0 * -inf would be NaN in the product and in its gradient
  h = -jnp.sum(jnp.where(finite, jnp.exp(safe) * safe, 0.0), axis=-1)
  m = mask.astype(jnp.float32)
  return jnp.sum(h * m) / jnp.maximum(jnp.sum(m), 1.0)


def adamerging_statistics(model: DataModel, base: PyTree, experts: Sequence[PyTree],
                          batches: Sequence[Sequence[Batch]], n_experts: int, *, granularity: str, init: float,
                          lr: float, steps: int, clamp: bool) -> dict[str, Any]:
  """Per float leaf: {"coefficients": f32[N]}, learned by Adam on the entropy of the merged model's
  predictions, one step per batch of every expert's inputs in turn (cycled)."""
  import optax  # pylint: disable=g-import-not-at-top  (training library: only when learning)
  paths, base_leaves, treedef = tree_lib.flatten(base)
  floats = [i for i, x in enumerate(base_leaves) if tree_lib.is_float_dtype(tree_lib.shape_dtype(x)[1])]
  taus = [[jnp.asarray(tree_lib.flatten(e)[1][i], jnp.float32) - jnp.asarray(base_leaves[i], jnp.float32)
           for i in floats] for e in experts]
  n = len(experts)
  shape = (len(floats), n) if granularity == "layer" else (1, n)
  raw = jnp.full(shape, init, jnp.float32)

  def merged(lam):
    c = jnp.clip(lam, 0.0, 1.0) if clamp else lam
    leaves = list(base_leaves)
    for j, i in enumerate(floats):
      row = c[j] if granularity == "layer" else c[0]
      b = jnp.asarray(base_leaves[i], jnp.float32)
      leaves[i] = (b + sum(row[t] * taus[t][j] for t in range(n))).astype(jnp.asarray(base_leaves[i]).dtype)
    return jax.tree.unflatten(treedef, leaves)

  def loss(lam, b):
    return entropy(model.logits(merged(lam), b), model.mask(b))

  opt = optax.adam(lr)

  @jax.jit
  def step(lam, state, b):
    value, grad = jax.value_and_grad(loss)(lam, b)
    updates, state = opt.update(grad, state, lam)
    return optax.apply_updates(lam, updates), state, value

  stream = [b for group in zip(*batches) for b in group] or [b for bs in batches for b in bs]
  state = opt.init(raw)
  for k in range(steps):
    raw, state, _ = step(raw, state, stream[k % len(stream)])
  coef = np.asarray(jnp.clip(raw, 0.0, 1.0) if clamp else raw)
  return {paths[i]: {"coefficients": coef[j] if granularity == "layer" else coef[0]} for j, i in enumerate(floats)}


# ---------------------------------------------------------------------------------------------- binding


class StatisticsCache:
  """Per-expert statistics (``NeedsData.per_expert``: RegMean's Grams, Fisher) by (expert key, model,
  method kind and hyperparameters), shared by the merges of several expert subsets; thread-safe (two
  threads asking for one key may both compute it; the first stored value is kept). An expert key must
  name the expert and its examples uniquely (e.g. its checkpoint's path and identity, and its data)."""

  def __init__(self):
    self._lock = threading.Lock()
    self._stats: dict[tuple, dict[str, Any]] = {}

  def get(self, key: tuple, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The statistics stored under ``key`` (its first element the expert key), computed on first use."""
    with self._lock:
      if key in self._stats:
        return self._stats[key]
    value = compute()
    with self._lock:
      return self._stats.setdefault(key, value)

  def discard(self, expert: Callable[[Any], bool]) -> None:
    """Frees the statistics of every expert whose key ``expert(key)`` is true (e.g. once a model set is done)."""
    with self._lock:
      for key in [k for k in self._stats if expert(k[0])]:
        del self._stats[key]


def _stacked(parts: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
  """Single-expert statistics stacked along their leading (expert) axis; leaves all experts have."""
  common = set.intersection(*(set(p) for p in parts))
  return {leaf: {k: np.concatenate([np.asarray(p[leaf][k]) for p in parts]) for k in parts[0][leaf]}
          for leaf in parts[0] if leaf in common}


def with_data(method: MergeMethod, model: DataModel, base: PyTree | None, experts: Sequence[PyTree],
              batches: Sequence[Sequence[Batch]], *, cache: StatisticsCache | None = None,
              expert_keys: Sequence[Any] | None = None) -> MergeMethod:
  """``method`` (regmean, fisher or adamerging) with its statistics computed from ``batches[t]``, expert
  t's examples; merge with it as any method. ValueError, before any forward pass, on bad input.

  With ``cache`` and ``expert_keys`` (``expert_keys[t]`` names expert t and its batches), a method whose
  statistics are per expert computes each expert's once, alone, and stacks them: the same values as
  computed together, reused by every later merge that includes the expert."""
  needs = method.compute_stats
  if not isinstance(needs, data_aware.NeedsData):
    raise ValueError(f"{method.name}: is not a data-aware method (or its data is already bound)")
  experts = list(experts)
  if len(batches) != len(experts):
    raise ValueError(f"{method.name}: batches has {len(batches)} entries but there are {len(experts)} experts "
                     "(one list of batches per expert)")
  empty = [t for t, bs in enumerate(batches) if not len(bs)]
  if empty:
    raise ValueError(f"{method.name}: expert {empty[0]} has no batches")
  method.check_experts(len(experts))
  if method.traits.uses_base and base is None:
    raise ValueError(f"{method.name} needs a base model")
  statistics = needs.statistics or globals().get(f"{needs.kind}_statistics")
  if statistics is None:
    raise ValueError(f"{method.name}: no statistics function for kind {needs.kind!r} (give NeedsData.statistics)")
  if cache is not None and needs.per_expert:
    if expert_keys is None or len(expert_keys) != len(experts):
      raise ValueError(f"{method.name}: a statistics cache needs one key per expert")
    hparams = tuple(sorted((k, repr(v)) for k, v in needs.hparams.items()))
    stats = _stacked([cache.get((key, model, needs.kind, hparams),
                                lambda e=e, bs=bs: statistics(model, None, [on_one_device(e)], [bs], 1, **needs.hparams))
                      for key, e, bs in zip(expert_keys, experts, batches)])
  else:
    stats = statistics(model, on_one_device(base), [on_one_device(e) for e in experts], batches, len(experts),
                       **needs.hparams)
  return data_aware.bound(method, stats)


def on_one_device(tree: PyTree) -> PyTree:
  """``tree`` with every ``jax.Array`` spread over several devices gathered onto the first of them. The
  statistics are computed on one device, as a one-device run computes them: the same statistics, bit
  for bit, whatever the device count and the inputs' sharding (partitioned sums would add in another
  order). The model must fit one device's memory for this step; the merge itself keeps the inputs'
  sharding."""
  if tree is None:
    return None

  def one(x):
    if not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1:
      return x
    if not x.is_fully_addressable:  # several processes: each gathers the whole array onto its own device
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return jax.device_put(multihost_utils.process_allgather(x, tiled=True), jax.local_devices()[0])
    first = min(x.sharding.device_set, key=lambda d: d.id)
    return jax.device_put(x, jax.sharding.SingleDeviceSharding(first))
  return jax.tree.map(one, tree)

