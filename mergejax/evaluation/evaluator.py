"""The evaluator: a model's params on any subset of one seqio mixture's tasks, for one split, many times.

One :class:`Evaluator` reads and tokenizes its mixture once (a ``seqio.Evaluator``'s cached datasets)
and then scores any params of the model, as often as needed (the study scores hundreds of merged
candidates, each on the held-in tasks of the experts it merged)::

    ev = Evaluator(builtin_adapter(config), "mj_heldin_eval", "validation")
    res = ev.evaluate(params)                                    # EvalResults: per task, category, mean
    res = ev.evaluate(params, tasks=ev.tasks_of(["mcqa", "topic"]))   # those categories' tasks only

How a task is scored depends on its metrics and on what the adapter offers:

* **Rank classification** (score metrics): with ``adapter.apply_packed``, each category's rows are
  packed with every example's prompt scored once for all its answer choices
  (:mod:`mergejax.evaluation.packed`), in fixed-shape batches (full ones, and smaller ones for each
  category's last sequences: two compiled programs per model); otherwise every (prompt, choice) row is
  scored on its own (:class:`~mergejax.evaluation.inference.Inference`). Both give the same
  log-likelihoods up to float32 rounding (tested).
* **Generation** (prediction metrics): greedy decoding with the adapter's KV cache (``Inference``).

Metrics are computed as ``seqio.Evaluator.evaluate`` computes them, through seqio's public metric
objects (each task's ``metric_fns`` and postprocessor), over examples read once; on process 0, then
broadcast, so every process of a multi-host run gets the same :class:`EvalResults` (and picks the same
best candidate). With ``per_example=True`` rank-classification tasks also report each example's
correctness and their chance level (what a bootstrap over test examples resamples).

An evaluator bound to a :class:`~mergejax.evaluation.leak_guard.SplitGuard` asks it before every
read of its split's data (reading and tokenizing it, packing it, scoring it), so none of its public
methods reads a test split while a hyperparameter selection is open.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding

from mergejax import sharding
from mergejax.evaluation import normalize
from mergejax.evaluation import packed as packed_lib
from mergejax.models.adapter import ModelAdapter
from mergejax.evaluation.aggregate import EvalResults, aggregate
from mergejax.evaluation.inference import Inference, to_host
from mergejax.evaluation.leak_guard import SplitGuard
from mergejax.tasks import metrics as task_metrics
from mergejax.tasks import preprocessors
from mergejax.tasks import task_category

Params = Any
_SCORE = seqio.metrics.ModelOutputType.SCORE
_PREDICTION = seqio.metrics.ModelOutputType.PREDICTION

BATCH_SIZE = 32  # rows per step of the unpacked paths (decoding; scoring without apply_packed)
LENGTH_BUCKET = 32  # unpacked sequence lengths round up to a multiple of this (fewer compiles)
SEED = 42  # seqio's evaluation seed
TARGET_FIELD = "targets"  # the task feature seqio's metrics compare predictions with


class _UnpackedFeatureConverter(seqio.DecoderFeatureConverter):
  """seqio's unpacked decoder features, its mapped functions traced as written (no AutoGraph rewrite).

  Without packing the converter trims, pads and shifts with plain TensorFlow ops, so AutoGraph's
  rewrite leaves the graph as it is; skipping it saves about a tenth of a fresh process's first
  evaluator set-up, beside the preprocessors' share (:func:`mergejax.tasks.preprocessors.as_written`).
  """

  def __init__(self, apply_length_check: bool):
    super().__init__(pack=False, apply_length_check=apply_length_check)

  def __call__(self, ds, task_feature_lengths):
    return preprocessors.as_written(super().__call__)(ds, task_feature_lengths)


def make_seqio_evaluator(mixture: str, split: str, *, seed: int = SEED,
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
      feature_converter=_UnpackedFeatureConverter(apply_length_check=bool(sequence_length)),
      eval_split=split,
      sequence_length=dict(sequence_length) if sequence_length else None,
      use_memory_cache=True,
      async_compute_metrics=False,
      seed=seed,
      target_field_name=TARGET_FIELD)
  if not ev.eval_tasks:
    raise ValueError(f"{mixture!r} has no task with split {split!r} and metrics to evaluate")
  return ev


def eos_id_of(ev: seqio.Evaluator) -> int:
  """The EOS id of the evaluator's target vocabulary (1 if it has none)."""
  feat = ev.eval_tasks[0].output_features.get("targets")
  return int(getattr(feat.vocabulary, "eos_id", 1) or 1) if feat is not None else 1


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
class _PackedCategory:
  """The packed score rows of one category's tasks."""

  tasks: list[str]
  offsets: dict[str, tuple[int, np.ndarray]]  # task -> (first row id, its seqio example indices)
  n_rows: int
  batches: list[dict[str, jax.Array]]
  rows: list[np.ndarray]  # per batch, [B, G] row ids (-1: padding)


PACK_LEN, PACK_ROWS = 64, 32  # the packed scoring step's defaults: tokens per sequence, sequences per step
_TAIL_ROWS = 8  # packed sequences per batch at the end of a category (see _pack)
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


def _merge_metrics(task_name: str, into: dict[str, Any], values: Mapping[str, Any]) -> None:
  for k, v in values.items():
    if k in into:
      raise ValueError(f"duplicate metric key {k!r} in task {task_name!r}")
    into[k] = v


class Evaluator:
  """Evaluates params of one model on any subset of one seqio mixture's (or task's) tasks, for one split.

  Args:
    adapter: the model's :class:`ModelAdapter`.
    mixture: a registered seqio mixture or task name.
    split: the split to read ("validation" for model selection, "test" for the final report).
    batch_size: global rows per step of the unpacked paths (a multiple of the data-parallel size).
    mesh: devices to use (default: all of them, 1-D "data" axis); params on other devices are
      replicated onto it.
    sequence_length: optional {"inputs": n, "targets": m} caps (default: measured from the data).
    length_bucket: unpacked sequence lengths round up to a multiple of this.
    categories: optional task -> category overrides (aggregation and packing groups).
    seed: seqio's evaluation seed.
    pack_len: tokens per packed sequence (raised to the longest row if needed).
    pack_rows: packed sequences per step (rounded up to a multiple of the data-parallel size).
    pack_targets: scored targets per packed sequence, i.e. vocabulary projections (default: half of
      ``pack_len``; raised to the most targets of one row if needed).
    guard: optional :class:`~mergejax.evaluation.leak_guard.SplitGuard` asked before every read of
      this split's data (copies for other models share it).

  On several CPU devices of one process, packed batches are not split across devices: each whole
  batch runs on one device, in turn, with its own replica of the params, so the devices (cores) work
  on different batches at once without collectives, and every score is bitwise the one-device score.
  The turns go to at most one device per core (a host split into more devices than it has cores, as
  the tests' 8 simulated devices on 2 cores, would only compile each scoring program more often).
  """

  def __init__(self, adapter: ModelAdapter, mixture: str, split: str = "validation", *,
               batch_size: int = BATCH_SIZE, mesh: jax.sharding.Mesh | None = None,
               sequence_length: Mapping[str, int] | None = None, length_bucket: int = LENGTH_BUCKET,
               categories: Mapping[str, str] | None = None, seed: int = SEED, pack_len: int = PACK_LEN,
               pack_rows: int = PACK_ROWS, pack_targets: int | None = None, guard: SplitGuard | None = None):
    self.mixture, self.split = mixture, split
    self._guard = guard
    self.category_overrides = dict(categories or {})
    with self._reading():
      self._seqio_evaluator = make_seqio_evaluator(mixture, split, seed=seed, sequence_length=sequence_length)
    self._tasks = {t.name: t for t in self._seqio_evaluator.eval_tasks}
    self.inference = Inference(adapter, mesh, batch_size=batch_size, length_bucket=length_bucket,
                               eos_id=eos_id_of(self._seqio_evaluator))
    self._devices = list(self.inference.mesh.devices.flat)
    self._round_robin = (jax.process_count() == 1 and len(self._devices) > 1
                         and self._devices[0].platform == "cpu")
    if self._round_robin:
      self._devices = self._devices[:sharding.host_cores()]
    # Split batches need a multiple of the data-parallel size; round-robin batches stay whole.
    dp = 1 if self._round_robin else int(np.prod([self.inference.mesh.shape[a] for a in self.inference.data_axes]))
    self._dp = dp
    self.pack_rows = -(-max(1, pack_rows) // dp) * dp
    self.pack_len = pack_len
    self.pack_targets = pack_targets
    self._packed_categories: dict[str, _PackedCategory] | None = None
    self._examples: dict[str, list] = {}
    self._types: dict[str, set] = {}
    self._targets: dict[str, list] = {}  # task -> postprocessed targets (seqio's CollectingMetric cache)
    self._score_targets: dict[str, list] = {}  # the same, for tasks scored by legacy score functions
    self._chance: dict[str, float] = {}
    self._packed = _packed_jit(None if self._round_robin else self.inference.replicated)

  def _reading(self):
    """The guard's permission to read this split's data (a no-op without a guard)."""
    return self._guard.reading(self.mixture, self.split) if self._guard is not None else contextlib.nullcontext()

  @property
  def guard(self) -> SplitGuard | None:
    """The split guard this evaluator consults before every read (fixed at construction)."""
    return self._guard

  @property
  def seqio_evaluator(self):
    """The underlying ``seqio.Evaluator``. Its cached datasets hold this split's data, so handing it out
    is a read: refused (:class:`SplitLeakError`) for a test split while a selection is open."""
    with self._reading():
      return self._seqio_evaluator

  # -- tasks ----------------------------------------------------------------------------------------
  @property
  def task_names(self) -> list[str]:
    return list(self._tasks)

  @property
  def adapter(self) -> ModelAdapter:
    return self.inference.adapter

  @property
  def packed(self) -> bool:
    """Whether rank classification runs packed (prefix-shared; the adapter has ``apply_packed``)."""
    return self.inference.adapter.apply_packed is not None

  def category(self, task: str) -> str:
    return self.category_overrides.get(task) or task_category(task)

  def tasks_of(self, categories: Iterable[str]) -> list[str]:
    """The mixture's tasks in ``categories``."""
    cats = set(categories)
    return [t for t in self._tasks if self.category(t) in cats]

  def with_adapter(self, adapter: ModelAdapter) -> "Evaluator":
    """The same data (examples, device batches) for another model, e.g. another size in a study: saves
    re-reading, re-tokenizing and re-packing the data. The copy shares the guard."""
    if self._packed_categories is None:
      with self._reading():
        self._packed_categories = self._pack()  # built once, shared by the copies
    other = copy.copy(self)
    other.inference = copy.copy(self.inference)
    other.inference.adapter = adapter
    return other

  def _output_types(self, task: str) -> set:
    if task not in self._types:  # Task.metric_objs builds new metric classes on every access
      self._types[task] = {m.model_output_type for m in self._tasks[task].metric_objs}
    return self._types[task]

  # -- packing --------------------------------------------------------------------------------------
  def _pack(self) -> dict[str, _PackedCategory]:
    by_cat: dict[str, list[str]] = {}
    for t in self._tasks:
      if _SCORE in self._output_types(t):
        by_cat.setdefault(self.category(t), []).append(t)
    feats = {}
    for tasks in by_cat.values():
      for t in tasks:
        feats[t] = _model_features(self._seqio_evaluator.cached_model_datasets[t])
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
    out = {}
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
            batches.append(jax.device_put(arrays, self._devices[(len(out) + len(batches)) % len(self._devices)]))
          else:
            batches.append(self.inference.to_global(arrays))
          rows.append(host.row[sl])
      out[cat] = _PackedCategory(tasks, offsets, n, batches, rows)
    return out

  def _task_examples(self, task_name: str) -> list:
    """The task's examples as numpy (read once: seqio's metrics take the examples)."""
    if task_name not in self._examples:
      self._examples[task_name] = list(tfds.as_numpy(self._seqio_evaluator.cached_task_datasets[task_name]))
    return self._examples[task_name]

  def prepare(self) -> "Evaluator":
    """Reads, tokenizes and packs every task now rather than on first use (e.g. on a background thread)."""
    with self._reading():
      if self.packed and self._packed_categories is None:
        self._packed_categories = self._pack()
      for t in self._tasks:
        self._task_examples(t)
    return self

  # -- scoring --------------------------------------------------------------------------------------
  def _batch_runner(self, params: Params):
    """A function of a packed batch that dispatches the scoring program on the batch's device(s)."""
    adapter = self.inference.adapter
    replicas = None
    if self._round_robin:  # each device scores whole batches with its own full copy of the params
      if not all(x.sharding.is_fully_replicated for x in jax.tree.leaves(params)):
        params = jax.device_put(params, self.inference.replicated)
      replicas = _by_device(params)

    def run(b):
      p = replicas[next(iter(b["tokens"].devices()))] if replicas is not None else params
      return self._packed(adapter, p, b["tokens"], b["positions"], b["example"], b["branch"], b["gather"],
                          b["target"], b["weight"])
    return run

  def warm_up(self, params: Params) -> None:
    """Compiles the packed scoring programs ahead of the first evaluation (e.g. on a background
    thread) by running zeros of each batch shape on each device: the split's data is not read, so a
    selection open meanwhile is no obstacle. Single process only."""
    if not self.packed or jax.process_count() > 1:
      return
    if self._packed_categories is None:
      with self._reading():
        self._packed_categories = self._pack()
    run = self._batch_runner(self.inference.place_params(params))
    seen = set()
    for g in self._packed_categories.values():
      for b in g.batches:
        key = (b["tokens"].shape, tuple(sorted(d.id for d in b["tokens"].devices())))
        if key not in seen:
          seen.add(key)
          jax.block_until_ready(run({k: jnp.zeros_like(v) for k, v in b.items()}))

  def _packed_scores(self, params: Params, tasks: Sequence[str]) -> dict[str, list[float]]:
    """Each task's per-row log-likelihoods (seqio example order), from the packed batches."""
    if self._packed_categories is None:
      self._packed_categories = self._pack()
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
               for g in (self._packed_categories[c] for c in cats)]
    out = {}
    for g, outs in pending:
      total = np.zeros((g.n_rows,), np.float64)
      for rows, o in zip(g.rows, outs):
        keep = rows >= 0
        total += np.bincount(rows[keep], weights=to_host(o)[keep], minlength=g.n_rows)
      for t in g.tasks:
        start, idx = g.offsets[t]
        order = np.argsort(idx, kind="stable")
        out[t] = [float(v) for v in total[start:start + len(idx)][order]]
    return {t: out[t] for t in tasks}

  def model_outputs(self, params: Params, tasks: Sequence[str] | None = None) -> dict[str, dict[Any, list]]:
    """What the tasks' metrics need from the model: ``{task: {ModelOutputType: outputs}}`` in seqio
    example order (rank-classification scores and/or greedy predictions)."""
    tasks = self._checked(tasks)
    with self._reading():
      return self._model_outputs(params, tasks)

  def _checked(self, tasks: Sequence[str] | None) -> list[str]:
    tasks = list(self._tasks) if tasks is None else list(tasks)
    for t in tasks:
      if t not in self._tasks:
        raise ValueError(f"task {t!r} is not in {self.mixture!r} ({self.split})")
    return tasks

  def _model_outputs(self, params: Params, tasks: list[str]) -> dict[str, dict[Any, list]]:
    params = self.inference.place_params(params)
    outputs: dict[str, dict] = {t: {} for t in tasks}
    score_tasks = [t for t in tasks if _SCORE in self._output_types(t)]
    if score_tasks and self.packed:
      for t, s in self._packed_scores(params, score_tasks).items():
        outputs[t][_SCORE] = s
    ds = self._seqio_evaluator.cached_model_datasets
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
    return outputs

  # -- metrics --------------------------------------------------------------------------------------
  def _score_function_metrics(self, task_name: str, task_output: Mapping[Any, Any]) -> dict[str, Any] | None:
    """The task's metrics straight from its legacy score functions, or None where that is not the same
    computation as seqio's metric objects.

    For a task whose metrics are all legacy score functions ``fn(targets, scores)``, seqio's
    ``PassthroughLegacyMetric`` removes padding (there is none here), sorts the outputs into example
    order (they already are) and calls ``fn(targets=postprocessed targets, scores=outputs)``; this calls
    the functions directly with the targets seqio postprocessed on this task's first evaluation (a test
    checks that both give the same values), skipping per-call bookkeeping (~5 ms a task).
    """
    task = self._tasks[task_name]
    targets = self._score_targets.get(task_name)
    fns = task.score_metric_fns
    if targets is None or not fns or len(fns) != len(task.metric_objs):
      return None
    scores = np.array(task_output[_SCORE])
    result: dict[str, Any] = {}
    for fn in fns:
      _merge_metrics(task_name, result, fn(targets=targets, scores=scores))
    return result

  def task_metrics(self, task_name: str, task_output: Mapping[Any, Any]) -> dict[str, Any]:
    """One task's metrics from its model outputs (:meth:`model_outputs`), as ``seqio.Evaluator``
    computes them: each of the task's metric objects, over the task's examples (read once)."""
    with self._reading():
      return self._task_metrics(task_name, task_output)

  def _task_metrics(self, task_name: str, task_output: Mapping[Any, Any]) -> dict[str, Any]:
    fast = self._score_function_metrics(task_name, task_output)
    if fast is not None:
      return fast
    task = self._tasks[task_name]
    examples = self._task_examples(task_name)
    result: dict[str, Any] = {}
    for metric_obj in task.metric_objs:
      model_output = np.array(task_output[metric_obj.model_output_type])
      metric = metric_obj.from_model_output(examples, model_output, task.output_features, TARGET_FIELD)
      if isinstance(metric, seqio.metrics.CollectingMetric):
        value, targets_and_inferences = metric.actual_compute(examples, task.output_features, TARGET_FIELD,
                                                              self._targets.get(task_name, []))
        self._targets[task_name] = targets_and_inferences["targets"]
        if metric_obj.model_output_type == _SCORE:
          self._score_targets[task_name] = targets_and_inferences["targets"]
      else:
        value = metric.compute()
      _merge_metrics(task_name, result, value)
    return result

  def _correct(self, tasks: Sequence[str], outputs: Mapping[str, Mapping[Any, Any]]) -> dict[str, str]:
    """task -> per-example correctness ("0110...", example-index order) of the rank-classification tasks
    (their postprocessed targets are known after their first metrics); fills their chance levels."""
    out = {}
    for t in tasks:
      targets = self._score_targets.get(t) or self._targets.get(t)
      if _SCORE in outputs[t] and targets is not None and task_metrics.is_rank_targets(targets):
        ok, n_choices, n_right = task_metrics.rank_outcomes(targets, outputs[t][_SCORE])
        out[t] = (ok.astype(np.uint8) + ord("0")).tobytes().decode()
        if t not in self._chance:
          self._chance[t] = normalize.rank_chance(n_choices, n_right)
    return out

  def evaluate(self, params: Params, tasks: Sequence[str] | None = None, *, per_example: bool = False) -> EvalResults:
    """Scores and/or decodes ``tasks`` (default: every task) with ``params``; aggregated results.

    With ``per_example``, rank-classification tasks also report each example's correctness and their
    chance level (``EvalResults.correct``, ``EvalResults.chance``).
    """
    tasks = self._checked(tasks)
    with self._reading():
      outputs = self._model_outputs(params, tasks)
      results = None
      if jax.process_index() == 0:
        per_task = {t: self._task_metrics(t, outputs[t]) for t in tasks}
        correct = self._correct(tasks, outputs) if per_example else {}
        results = aggregate(self.mixture, self.split, per_task, {t: self.category(t) for t in tasks},
                            correct=correct, chance={t: self._chance[t] for t in correct}).to_dict()
    if jax.process_count() > 1:
      results = sharding.broadcast_json(results)
    return EvalResults.from_dict(results)


_EVALUATORS: dict[tuple, Evaluator] = {}


def evaluate(params: Params, mixture: str, split: str, *, adapter: ModelAdapter, batch_size: int = BATCH_SIZE,
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
