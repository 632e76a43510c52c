"""One evaluator for many tasks and many candidates: any subset of a mixture's tasks in one pass.

A study scores hundreds of merged candidates, each on a different subset of categories (the merged
experts' held-in tasks). :class:`SuiteEvaluator` reads and tokenizes a whole mixture once (one
``seqio.Evaluator``), packs each category's rank-classification rows with the shared prompt scored
once for all answer choices (:mod:`mergejax.evaluation.packed`), and then, per call, runs only the
requested categories' fixed-shape batches (full ones, and smaller ones for each category's last
sequences: two compiled programs per model) and computes each task's metrics as seqio's own metric
objects would (the task's ``metric_fns`` and postprocessor), as ``seqio.Evaluator.evaluate`` does::

    ev = SuiteEvaluator(builtin_adapter(config), "mj_heldin_eval", "validation")
    res = ev.evaluate(params, tasks=ev.tasks_of(["mcqa", "topic"]))   # EvalResults of those tasks

Tasks with prediction metrics (generation) are decoded by :class:`Inference` (greedy, KV cache).
Adapters without ``apply_packed`` score one row per (prompt, choice), as :class:`Evaluator` does.
Results match :class:`~mergejax.evaluation.evaluator.Evaluator` (tested) up to float32 rounding of
the scores.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
import seqio
from jax.sharding import NamedSharding

from mergejax.evaluation import packed as packed_lib
from mergejax.evaluation.adapter import ModelAdapter
from mergejax.evaluation.evaluator import broadcast_json, eos_id_of, make_seqio_evaluator
from mergejax.evaluation.inference import Inference, _host
from mergejax.evaluation.aggregate import EvalResults, aggregate, task_category

Params = Any
_SCORE = seqio.metrics.ModelOutputType.SCORE
_PREDICTION = seqio.metrics.ModelOutputType.PREDICTION


@functools.lru_cache(maxsize=None)
def _packed_jit(out_sharding: NamedSharding | None):
  if out_sharding is None:  # one device per call, wherever the inputs are
    return jax.jit(packed_lib.packed_target_logprobs, static_argnums=(0,))
  return jax.jit(packed_lib.packed_target_logprobs, static_argnums=(0,), out_shardings=out_sharding)


def _by_device(params: Params) -> dict[Any, Params]:
  """Replicated params as one single-device pytree per device (views of the replicas, no copies)."""
  leaves, treedef = jax.tree.flatten(params)
  shards = [{sh.device: sh.data for sh in x.addressable_shards} for x in leaves]
  return {d: jax.tree.unflatten(treedef, [s[d] for s in shards]) for d in shards[0]} if leaves else {}


@dataclasses.dataclass
class _Group:
  """The packed score rows of one category's tasks."""

  tasks: list[str]
  offsets: dict[str, tuple[int, np.ndarray]]  # task -> (first row id, its seqio example indices)
  n_rows: int
  batches: list[dict[str, jax.Array]]
  rows: list[np.ndarray]  # per batch, [B, G] row ids (-1: padding)


_TAIL_ROWS = 8  # packed sequences per batch at the end of a category (see _build_groups)
_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


def _model_features(ds) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
  """(example indices, {feature: [N, L]}) of an enumerated seqio model dataset, read in large batches."""
  idx, parts = [], {k: [] for k in _FEATURES}
  for i, f in ds.map(lambda i, f: (i, {k: f[k] for k in _FEATURES})).padded_batch(4096).as_numpy_iterator():
    idx.append(np.asarray(i, np.int64))
    for k in _FEATURES:
      parts[k].append(np.asarray(f[k]))
  if not idx:
    return np.zeros((0,), np.int64), None
  width = max(a.shape[1] for a in parts[_FEATURES[0]])
  return np.concatenate(idx), {k: np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in v])
                               for k, v in parts.items()}


class SuiteEvaluator:
  """Evaluates params on any subset of one seqio mixture's tasks, for one split.

  Args:
    adapter: the model's :class:`ModelAdapter`.
    mixture: a registered seqio mixture or task name.
    split: the split to read.
    batch_size: rows per step of the unpacked paths (decoding; scoring without ``apply_packed``).
    mesh: devices (default: all, 1-D "data" axis).
    categories: optional task -> category overrides (aggregation and packing groups).
    seed: seqio's evaluation seed.
    pack_len: tokens per packed sequence (raised to the longest row if needed).
    pack_rows: packed sequences per step (rounded up to a multiple of the data-parallel size).
    pack_targets: scored targets per packed sequence, i.e. vocabulary projections (default: half of
      ``pack_len``; raised to the most targets of one row if needed).

  On several CPU devices of one process, packed batches are not split across devices: each whole
  batch runs on one device, in turn, with its own replica of the params, so the devices (cores) work
  on different batches at once without collectives, and every score is bitwise the one-device score.
  """

  def __init__(self, adapter: ModelAdapter, mixture: str, split: str = "validation", *, batch_size: int = 32,
               mesh: jax.sharding.Mesh | None = None, categories: Mapping[str, str] | None = None,
               seed: int = 42, pack_len: int = 64, pack_rows: int = 32, pack_targets: int | None = None):
    self.mixture, self.split = mixture, split
    self.category_overrides = dict(categories or {})
    self.seqio_evaluator = make_seqio_evaluator(mixture, split, seed=seed)
    self._tasks = {t.name: t for t in self.seqio_evaluator.eval_tasks}
    self.inference = Inference(adapter, mesh, batch_size=batch_size, eos_id=eos_id_of(self.seqio_evaluator))
    self._devices = list(self.inference.mesh.devices.flat)
    self._round_robin = (jax.process_count() == 1 and len(self._devices) > 1
                         and self._devices[0].platform == "cpu")
    # Split batches need a multiple of the data-parallel size; round-robin batches stay whole.
    dp = 1 if self._round_robin else int(np.prod([self.inference.mesh.shape[a] for a in self.inference.data_axes]))
    self._dp = dp
    self.pack_rows = -(-max(1, pack_rows) // dp) * dp
    self.pack_len = pack_len
    self.pack_targets = pack_targets
    self._groups: dict[str, _Group] | None = None
    self._examples: dict[str, list] = {}
    self._types: dict[str, set] = {}
    self._score_targets: dict[str, list] = {}  # task -> postprocessed targets, for _legacy_score_metrics
    self._packed = _packed_jit(None if self._round_robin else self.inference.replicated)

  # -- tasks ----------------------------------------------------------------------------------------
  @property
  def task_names(self) -> list[str]:
    return list(self._tasks)

  def category(self, task: str) -> str:
    return self.category_overrides.get(task) or task_category(task)

  def tasks_of(self, categories: Iterable[str]) -> list[str]:
    """The mixture's tasks in ``categories``."""
    cats = set(categories)
    return [t for t in self._tasks if self.category(t) in cats]

  def with_adapter(self, adapter: ModelAdapter) -> "SuiteEvaluator":
    """The same data (examples, packed batches) for another model, e.g. another size in a study."""
    if self._groups is None:
      self._groups = self._build_groups()  # built once, shared by the copies
    other = copy.copy(self)
    other.inference = copy.copy(self.inference)
    other.inference.adapter = adapter
    return other

  def _output_types(self, task: str) -> set:
    if task not in self._types:  # Task.metric_objs builds new metric classes on every access
      self._types[task] = {m.model_output_type for m in self._tasks[task].metric_objs}
    return self._types[task]

  # -- packing --------------------------------------------------------------------------------------
  def _build_groups(self) -> dict[str, _Group]:
    by_cat: dict[str, list[str]] = {}
    for t in self._tasks:
      if _SCORE in self._output_types(t):
        by_cat.setdefault(self.category(t), []).append(t)
    feats = {}
    for tasks in by_cat.values():
      for t in tasks:
        feats[t] = _model_features(self.seqio_evaluator.cached_model_datasets[t])
    longest = max((int(np.max(np.nonzero(f["decoder_input_tokens"].any(0) | f["decoder_loss_weights"].any(0))[0]))
                   + 1 for _, f in feats.values() if f is not None), default=1)
    seq_len = max(self.pack_len, -(-longest // 16) * 16)
    most_targets = max((int(np.max((f["decoder_loss_weights"] > 0).sum(1))) for _, f in feats.values()
                        if f is not None), default=1)
    gather_len = max(self.pack_targets or seq_len // 2, -(-most_targets // 8) * 8)
    # Batches of pack_rows sequences, and a category's last sequences in batches of `tail`: two shapes
    # (two compiles) per model, and at most tail - 1 padding sequences per category instead of pack_rows - 1.
    tail = _TAIL_ROWS if self.pack_rows % _TAIL_ROWS == 0 and (self._round_robin or _TAIL_ROWS % self._dp == 0) \
        else self.pack_rows
    groups = {}
    for cat, tasks in by_cat.items():
      offsets, parts, n = {}, [], 0
      for t in tasks:
        idx, f = feats[t]
        offsets[t] = (n, idx)
        if f is not None:
          parts.append((f, np.arange(n, n + len(idx))))
        n += len(idx)
      if parts:
        width = max(p[0]["decoder_input_tokens"].shape[1] for p in parts)
        cat_arr = lambda k: np.concatenate([np.pad(p[0][k], ((0, 0), (0, width - p[0][k].shape[1]))) for p in parts])
        host = packed_lib.pack(cat_arr("decoder_input_tokens"), cat_arr("decoder_target_tokens"),
                               cat_arr("decoder_loss_weights"), np.concatenate([p[1] for p in parts]),
                               seq_len=seq_len, gather_len=gather_len, rows_multiple=tail)
      else:
        host = None
      batches, rows = [], []
      if host is not None:
        n_full = host.num_sequences // self.pack_rows * self.pack_rows
        starts = [(s, self.pack_rows) for s in range(0, n_full, self.pack_rows)]
        starts += [(s, tail) for s in range(n_full, host.num_sequences, tail)]
        for s, size in starts:
          sl = slice(s, s + size)
          arrays = {k: getattr(host, k)[sl] for k in ("tokens", "positions", "example", "branch", "gather", "target",
                                                      "weight")}
          if self._round_robin:  # whole batches, alternating devices (balanced within each category)
            batches.append(jax.device_put(arrays, self._devices[(len(groups) + len(batches)) % len(self._devices)]))
          else:
            batches.append(self.inference._to_global(arrays))  # pylint: disable=protected-access
          rows.append(host.row[sl])
      groups[cat] = _Group(tasks, offsets, n, batches, rows)
    return groups

  def _task_examples(self, task_name: str) -> list:
    """The task's examples as numpy (read once: seqio's metrics take the examples)."""
    if task_name not in self._examples:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      self._examples[task_name] = list(tfds.as_numpy(self.seqio_evaluator.cached_task_datasets[task_name]))
    return self._examples[task_name]

  def prepare(self) -> "SuiteEvaluator":
    """Reads, tokenizes and packs every task now rather than on first use (e.g. on a background thread)."""
    if self._groups is None:
      self._groups = self._build_groups()
    for t in self._tasks:
      self._task_examples(t)
    return self

  # -- evaluation -----------------------------------------------------------------------------------
  def _batch_runner(self, params: Params):
    """A function of a packed batch that dispatches the scoring program on the batch's device(s)."""
    adapter = self.inference.adapter
    replicas = _by_device(params) if self._round_robin else None

    def run(b):
      p = replicas[next(iter(b["tokens"].devices()))] if replicas is not None else params
      return self._packed(adapter, p, b["tokens"], b["positions"], b["example"], b["branch"], b["gather"],
                          b["target"], b["weight"])
    return run

  def warm_up(self, params: Params) -> None:
    """Compiles the packed scoring programs ahead of the first evaluation (e.g. on a background
    thread) by running one batch of each shape on each device. Single process only."""
    if self.inference.adapter.apply_packed is None or jax.process_count() > 1:
      return
    if self._groups is None:
      self._groups = self._build_groups()
    run = self._batch_runner(self.inference.place_params(params))
    seen = set()
    for g in self._groups.values():
      for b in g.batches:
        key = (b["tokens"].shape, tuple(sorted(d.id for d in b["tokens"].devices())))
        if key not in seen:
          seen.add(key)
          jax.block_until_ready(run(b))

  def _packed_scores(self, params: Params, tasks: Sequence[str]) -> dict[str, list[float]]:
    if self._groups is None:
      self._groups = self._build_groups()
    cats = []
    for t in tasks:
      c = self.category(t)
      if c not in cats:
        cats.append(c)
    # One device: every batch is dispatched before the first wait. Several devices (or processes): each
    # batch is waited for before the next is dispatched, since the collectives of concurrently running
    # executions on XLA:CPU can pair up wrongly and deadlock (2 processes) or abort (8 devices).
    # Round robin over one process's CPU devices runs no collectives: all batches are dispatched at once.
    serial = not self._round_robin and (self.inference.mesh.size > 1 or jax.process_count() > 1)
    run = self._batch_runner(params)
    pending = [(g, [jax.block_until_ready(run(b)) if serial else run(b) for b in g.batches])
               for g in (self._groups[c] for c in cats)]
    out = {}
    for g, outs in pending:
      total = np.zeros((g.n_rows,), np.float64)
      for rows, o in zip(g.rows, outs):
        keep = rows >= 0
        total += np.bincount(rows[keep], weights=_host(o)[keep], minlength=g.n_rows)
      for t in g.tasks:
        start, idx = g.offsets[t]
        order = np.argsort(idx, kind="stable")
        out[t] = [float(v) for v in total[start:start + len(idx)][order]]
    return {t: out[t] for t in tasks}

  def _legacy_score_metrics(self, task_name: str, task_output: Mapping[Any, Any]) -> dict[str, Any] | None:
    """The task's metrics without seqio's metric objects, or None where that is not the same computation.

    For a task whose metrics are all legacy score functions ``fn(targets, scores)``, seqio's
    ``PassthroughLegacyMetric`` removes padding (there is none here), sorts the outputs into example order
    (they already are) and calls ``fn(targets=postprocessed targets, scores=outputs)``; this calls the
    functions directly with the targets seqio postprocessed on this task's first evaluation (a test
    checks that both give the same values). It skips per-call jax array bookkeeping (~5 ms a task).
    """
    task = self._tasks[task_name]
    targets = self._score_targets.get(task_name)
    fns = task.score_metric_fns
    if targets is None or not fns or len(fns) != len(task.metric_objs):
      return None
    scores = np.array(task_output[_SCORE])
    result: dict[str, Any] = {}
    for fn in fns:
      for k, v in fn(targets=targets, scores=scores).items():
        if k in result:
          raise ValueError(f"duplicate metric key {k!r} in task {task_name!r}")
        result[k] = v
    return result

  def _task_metrics(self, task_name: str, task_output: Mapping[Any, Any]) -> dict[str, Any]:
    """seqio's metric computation for one task (``seqio.Evaluator._compute_clu_metrics``, minus the
    loggers), over examples read once instead of re-iterating the tf.data pipeline every call."""
    fast = self._legacy_score_metrics(task_name, task_output)
    if fast is not None:
      return fast
    task = self._tasks[task_name]
    examples = self._task_examples(task_name)
    target_field = self.seqio_evaluator._target_field_name  # pylint: disable=protected-access
    cached_targets = self.seqio_evaluator._cached_targets  # pylint: disable=protected-access
    result: dict[str, Any] = {}
    for metric_obj in task.metric_objs:
      model_output = np.array(task_output[metric_obj.model_output_type])
      metric = metric_obj.from_model_output(examples, model_output, task.output_features, target_field)
      if isinstance(metric, seqio.metrics.CollectingMetric):
        value, targets_and_inferences = metric.actual_compute(examples, task.output_features, target_field,
                                                              cached_targets[task_name])
        cached_targets[task_name] = targets_and_inferences["targets"]
        if metric_obj.model_output_type == _SCORE:
          self._score_targets[task_name] = targets_and_inferences["targets"]
      else:
        value = metric.compute()
      for k, v in value.items():
        if k in result:
          raise ValueError(f"duplicate metric key {k!r} in task {task_name!r}")
        result[k] = v
    return result

  def evaluate(self, params: Params, tasks: Sequence[str] | None = None) -> EvalResults:
    """Scores and/or decodes ``tasks`` (default: every task) with ``params``; aggregated results."""
    tasks = list(self._tasks) if tasks is None else list(tasks)
    for t in tasks:
      if t not in self._tasks:
        raise ValueError(f"task {t!r} is not in {self.mixture!r} ({self.split})")
    params = self.inference.place_params(params)
    outputs: dict[str, dict] = {t: {} for t in tasks}
    score_tasks = [t for t in tasks if _SCORE in self._output_types(t)]
    if score_tasks and self.inference.adapter.apply_packed is not None:
      for t, s in self._packed_scores(params, score_tasks).items():
        outputs[t][_SCORE] = s
    ds = self.seqio_evaluator.cached_model_datasets
    for t in tasks:
      types = self._output_types(t)
      if _SCORE in types and _SCORE not in outputs[t]:
        outputs[t][_SCORE] = [s for _, s in sorted(self.inference.score(params, ds[t]))]
      if _PREDICTION in types:
        outputs[t][_PREDICTION] = [p for _, p in sorted(self.inference.predict(params, ds[t]))]
      unsupported = types - {_SCORE, _PREDICTION}
      if unsupported:
        raise ValueError(f"task {t!r} needs model outputs {sorted(u.name for u in unsupported)}, "
                         "which the evaluator does not produce")
    is_main = jax.process_index() == 0
    results = None
    if is_main:
      per_task = {t: self._task_metrics(t, outputs[t]) for t in tasks}
      cats = {t: self.category(t) for t in tasks}
      results = aggregate(self.mixture, self.split, per_task, cats).to_dict()
    if jax.process_count() > 1:
      results = broadcast_json(results)
    return EvalResults.from_dict(results)
