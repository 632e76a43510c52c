"""DELLA-Merging (Deep, Bhardwaj, Majumder & Poria, 2024, arXiv 2406.11617): MAGPRUNE drop-and-rescale,
then TIES' sign election and fusion (``della``) or plain task arithmetic (``della_linear``)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax

from mergejax.methods import kernels, sparsify, steps
from mergejax.methods.base import (LeafContext, MergeMethod, Traits, choice, dare_key_words, expert_weights, f32,
                                   method_factory, number)


@dataclasses.dataclass(frozen=True)
class _KeyedMethod(MergeMethod):
  """A method whose kernels draw DARE's counter-based uniforms: every leaf's context carries the host-
  derived key words (a MergeMethod context has them only where ``drop_rate`` is set)."""

  def context(self, n_experts: int, seed: int, path: str) -> LeafContext:
    ctx = super().context(n_experts, seed, path)
    return dataclasses.replace(ctx, dare_words=dare_key_words(seed, int(ctx.path_hash), n_experts))

_DENSITY = number("mean fraction of each task vector's entries KEPT (1: no pruning)", 0.0, 1.0, low_open=True)
_EPSILON = number("keep probabilities span density - epsilon (smallest) to density + epsilon (largest)", 0.0, 0.5,
                  high_open=True)
_LAM = number("scale of the merged task vector")
_RESCALE = choice("rescale of the kept entries: 'l1' matches each task vector's L1 norm per leaf (mergekit), "
                  "'inverse_prob' divides each by its keep probability (the paper), 'none'; mergekit's "
                  "True / False mean 'l1' / 'none'", ("l1", "inverse_prob", "none", True, False))


def _kernel(base, experts, ctx, stats, *, out_dtype, density, epsilon, rescale, sign, aggregate):
  del stats
  if density < 1.0:
    taus = _pruned_one_at_a_time(base, experts, ctx, density, epsilon, rescale)
  else:
    taus = steps.task_vectors(base, experts)
  merged = sparsify.aggregate(taus, ctx.weights, consensus=sign, aggregate_=aggregate)
  return (f32(base) + steps.rounded(ctx.lam * merged, merged)).astype(out_dtype)


def _pruned_one_at_a_time(base, experts, ctx, density, epsilon, rescale):
  """Each expert's MAGPRUNEd task vector. The experts' keep masks are found one after the other, each
  made a value of its own (``optimization_barrier``) before the next expert's ranks begin: the leaf-sized
  rank buffers (the host callback's patterns and ranks) of one expert are then free before the next's
  are written, so one whole-leaf program holds a smaller workspace (fewer fresh pages to fault in);
  the values are those of the experts pruned side by side."""
  hashes = steps.dare_hashes(ctx, tuple(base.shape), len(experts))
  found, done = [], None
  for expert, h in zip(experts, hashes):
    if done is not None:
      done, expert = jax.lax.optimization_barrier((done, expert))
    keep, p = sparsify.magprune_keep(steps.task_vectors(base, [expert])[0], h, density, epsilon)
    keep, p = jax.lax.optimization_barrier((keep, p if rescale == "inverse_prob" else None))
    found.append((keep, p))
    done = keep
  return [sparsify.magprune_rescale(tau, keep, p, rescale)
          for tau, (keep, p) in zip(steps.task_vectors(base, experts), found)]


_jit_kernel = jax.jit(kernels.on_whole_leaves(_kernel),
                      static_argnames=("out_dtype", "density", "epsilon", "rescale", "sign", "aggregate"))


def _rescale_name(value: Any) -> str:
  return {True: "l1", False: "none"}.get(value, value) if isinstance(value, bool) else value


def _make(name, *, density, epsilon, lam, weights, rescale, sign, aggregate) -> MergeMethod:
  if density < 1.0 and not (0.0 < density - epsilon and density + epsilon < 1.0):
    raise ValueError(f"{name}: density={density} and epsilon={epsilon} give keep probabilities outside (0, 1): "
                     "need epsilon < density < 1 - epsilon")
  rescale = _rescale_name(rescale)
  hparams = {"density": density, "epsilon": epsilon, "lam": lam, "weights": weights, "rescale": rescale}
  if sign is not None:
    hparams["sign"] = sign
  hparams["aggregate"] = aggregate
  random = density < 1.0
  return _KeyedMethod(
      name=name, hparams=hparams,
      traits=Traits(uses_base=True, lam_scales_task_vector=True, position_keyed=random, stochastic=random),
      kernel=kernels.bind(_jit_kernel, density=density, epsilon=epsilon, rescale=rescale, sign=sign,
                          aggregate=aggregate),
      lam=lam, weights=weights, reference="Deep et al., 2024, arXiv 2406.11617")


@method_factory(formula="theta_0 + lam * disjoint_mean{t: sgn = elected}(w_t magprune(tau_t)), keep probability "
                        "linear in each entry's magnitude rank in its row",
                density=_DENSITY, epsilon=_EPSILON, lam=_LAM, weights=expert_weights(), rescale=_RESCALE,
                sign=choice("the sign election: magnitude-weighted vote or one vote per expert", ("sum", "count")),
                aggregate=choice("divide by the agreeing weights' sum (mergekit's normalize, default) or sum",
                                 ("mean", "sum")))
def della(density: float = 0.5, epsilon: float = 0.15, lam: float = 1.0, weights: Sequence[float] | None = None,
          rescale: Any = "l1", sign: str = "sum", aggregate: str = "mean") -> MergeMethod:
  r"""MAGPRUNE each task vector, then TIES' sign election and disjoint mean.

  .. math::
     p_{ij} = (d - \epsilon) + 2\epsilon \frac{r_{ij}}{n - 1},\quad
     \hat\tau_{ij} = \tau_{ij}\, m_{ij},\ m_{ij} \sim \mathrm{Bernoulli}(p_{ij}),\quad
     \theta_m = \theta_0 + \lambda \frac{\sum_{t\in A} w_t\hat\tau_t}{\sum_{t\in A} w_t}

  :math:`r_{ij}` is the stable rank of :math:`|\tau_{ij}|` within row i (axis 1 of the leaf as stored;
  a 1-D leaf is one row) of length n. The draws are mergejax's counter-based ones (a pure function of
  seed, leaf path, expert and position, as DARE's). Kept entries are rescaled per ``rescale``: by the
  paper's :math:`1/p_{ij}`, or (mergekit's default) so that each task vector keeps its L1 norm per leaf.
  mergekit ``della``.
  """
  return _make("della", density=density, epsilon=epsilon, lam=lam, weights=weights, rescale=rescale, sign=sign,
               aggregate=aggregate)


@method_factory(formula="theta_0 + lam * sum_t w_t magprune(tau_t)",
                density=_DENSITY, epsilon=_EPSILON, lam=_LAM, weights=expert_weights(), rescale=_RESCALE,
                aggregate=choice("sum (mergekit's default) or divide by the weights' sum (normalize)",
                                 ("sum", "mean")))
def della_linear(density: float = 0.5, epsilon: float = 0.15, lam: float = 1.0,
                 weights: Sequence[float] | None = None, rescale: Any = "l1", aggregate: str = "sum") -> MergeMethod:
  r""":func:`della`'s MAGPRUNE followed by task arithmetic, :math:`\theta_m = \theta_0 + \lambda\sum_t
  w_t\hat\tau_t`. mergekit ``della_linear``."""
  return _make("della_linear", density=density, epsilon=epsilon, lam=lam, weights=weights, rescale=rescale,
               sign=None, aggregate=aggregate)
