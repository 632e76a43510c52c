"""seqio.Evaluator wiring: evaluate a model's params on a mixture's split, many times, cheaply.

One :class:`Evaluator` owns one ``seqio.Evaluator`` (one mixture, one split: its tokenized examples
are cached in memory on construction) and one :class:`~mergejax.evaluation.inference.Inference`
(compiled once per model config and batch shape, data kept on device). ``evaluate(params)`` can then
be called for hundreds of candidate params (e.g. merges done on device) without re-reading data or
recompiling::

    ev = Evaluator(builtin_adapter(config), "mj_heldout_rank", split="validation")
    for params in candidates:
      res = ev.evaluate(params)           # EvalResults: per task, per category, mixture mean
      print(res.score, res.categories)

Metrics are computed on process 0 and broadcast to the others, so every process of a multi-host run
gets the same :class:`EvalResults` (needed to pick the same best candidate everywhere).
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import seqio

from mergejax.evaluation.adapter import ModelAdapter
from mergejax.evaluation.inference import Inference
from mergejax.evaluation.metrics import EvalResults, aggregate

Params = Any


def make_seqio_evaluator(mixture: str, split: str, *, seed: int = 42,
                         sequence_length: Mapping[str, int] | None = None) -> seqio.Evaluator:
  """A ``seqio.Evaluator`` over ``mixture``'s ``split`` (unpacked decoder features, cached in memory,
  metrics computed synchronously); one clear ValueError for an unknown mixture or one with nothing to
  evaluate on that split."""
  try:
    seqio.get_mixture_or_task(mixture)
  except ValueError as e:
    raise ValueError(f"unknown seqio mixture or task {mixture!r} (did you import the module that "
                     f"registers it?)") from e
  # With lengths measured from the data (no caps), seqio's per-example length assertions can never fire;
  # tracing them for every task is ~20% of the evaluator's set-up time, so they are skipped.
  ev = seqio.Evaluator(
      mixture_or_task_name=mixture,
      feature_converter=seqio.DecoderFeatureConverter(pack=False, apply_length_check=bool(sequence_length)),
      eval_split=split,
      sequence_length=dict(sequence_length) if sequence_length else None,
      use_memory_cache=True,
      async_compute_metrics=False,
      seed=seed)
  if not ev.eval_tasks:
    raise ValueError(f"{mixture!r} has no task with split {split!r} and metrics to evaluate")
  return ev


def eos_id_of(ev: seqio.Evaluator) -> int:
  """The EOS id of the evaluator's target vocabulary (1 if it has none)."""
  feat = ev.eval_tasks[0].output_features.get("targets")
  return int(getattr(feat.vocabulary, "eos_id", 1) or 1) if feat is not None else 1


class Evaluator:
  """Evaluates params of one model on one seqio mixture (or task) and split.

  Args:
    adapter: the model's :class:`ModelAdapter`.
    mixture: a registered seqio mixture or task name.
    split: the split to read ("validation" for model selection, "test" for the final report).
    batch_size: global rows per step (a multiple of the data-parallel device count).
    mesh: devices to use (default: all of them, 1-D "data" axis); params on other devices are
      replicated onto it.
    sequence_length: optional {"inputs": n, "targets": m} caps (default: measured from the data).
    length_bucket: sequence lengths round up to a multiple of this.
    categories: optional task -> category overrides for aggregation.
    seed: seqio's evaluation seed.
  """

  def __init__(self, adapter: ModelAdapter, mixture: str, split: str = "validation", *, batch_size: int = 32,
               mesh: jax.sharding.Mesh | None = None, sequence_length: Mapping[str, int] | None = None,
               length_bucket: int = 32,
               categories: Mapping[str, str] | None = None, seed: int = 42):
    self.mixture, self.split = mixture, split
    self.categories = dict(categories or {})
    self.seqio_evaluator = make_seqio_evaluator(mixture, split, seed=seed, sequence_length=sequence_length)
    eos_id = eos_id_of(self.seqio_evaluator)
    self.inference = Inference(adapter, mesh, batch_size=batch_size, length_bucket=length_bucket,
                               eos_id=eos_id)

  def with_adapter(self, adapter: ModelAdapter) -> "Evaluator":
    """The same mixture and split (sharing the cached examples and device batches) for another model,
    e.g. another size in a study: saves re-reading and re-tokenizing the data."""
    other = copy.copy(self)
    other.inference = copy.copy(self.inference)
    other.inference.adapter = adapter
    return other

  @property
  def task_names(self) -> list[str]:
    return [t.name for t in self.seqio_evaluator.eval_tasks]

  def evaluate(self, params: Params) -> EvalResults:
    """Scores and/or decodes every task of the mixture with ``params``; returns aggregated results."""
    params = self.inference.place_params(params)
    is_main = jax.process_index() == 0
    future, _ = self.seqio_evaluator.evaluate(
        compute_metrics=is_main,
        score_fn=functools.partial(self.inference.score, params),
        predict_fn=functools.partial(self.inference.predict, params))
    per_task = future.result()
    results = aggregate(self.mixture, self.split, per_task, self.categories).to_dict() if is_main else None
    if jax.process_count() > 1:
      results = broadcast_json(results)
    return EvalResults.from_dict(results)


def broadcast_json(obj: Any) -> Any:
  """Sends a JSON-able object from process 0 to every process."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  payload = np.frombuffer(json.dumps(obj).encode(), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
  n = int(multihost_utils.broadcast_one_to_all(np.int32(payload.size)))
  buf = np.zeros(n, np.uint8)
  buf[:payload.size] = payload
  buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  return json.loads(buf.tobytes().decode())


_EVALUATORS: dict[tuple, Evaluator] = {}


def evaluate(params: Params, mixture: str, split: str, *, adapter: ModelAdapter, batch_size: int = 32,
             mesh: jax.sharding.Mesh | None = None, **kwargs: Any) -> EvalResults:
  """Evaluates ``params`` on ``mixture``/``split``, reusing one cached :class:`Evaluator` per
  (adapter, mixture, split, batch size, mesh): the call a study runner makes repeatedly."""
  key = (id(adapter), mixture, split, batch_size, id(mesh), repr(sorted(kwargs.items())))
  ev = _EVALUATORS.get(key)
  if ev is None or ev.inference.adapter is not adapter.for_seqio():
    ev = Evaluator(adapter, mixture, split, batch_size=batch_size, mesh=mesh, **kwargs)
    _EVALUATORS[key] = ev
  return ev.evaluate(params)


def evaluate_many(params: Params, mixtures: Sequence[str], split: str, **kwargs: Any) -> dict[str, EvalResults]:
  """:func:`evaluate` over several mixtures: {mixture: results}."""
  return {m: evaluate(params, m, split, **kwargs) for m in mixtures}

