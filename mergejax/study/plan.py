"""What a study will do, before it does it (``--config.dry_run=True``): cells, candidates, evaluation
examples and the bytes each device will hold on the study's mesh.

Memory model (the runner's placement, :func:`mergejax.study.runner.load_models`): per (kind, size), every
model -- base, the experts of the study's categories, the multitask model -- is resident on the mesh,
each tensor split by the partition rules (:func:`mergejax.models.pretrained.param_spec`: FSDP over the
data axes, tensor parallel over "model"; a dimension no axis divides stays whole), so a device holds
its shards only; the experts' task vectors are resident alike, in the task-vector dtype. Per
(cell, method), the merge working set (:class:`~mergejax.study.candidates.CandidateMerger`) is a zero base
and the merged task vector g in float32, the candidate, and the kernel's float32 temporaries for the
largest leaf (the N task vectors and the output); on one device the N task vectors and the zero base
are also concatenated into one flat leaf. Evaluation (packed rank classification) needs one layer's
activations for the rows a device scores, the logits of their scored targets, and the weights XLA
gathers for one layer and the embedding. Data-aware methods compute their statistics on one device with
the models they read gathered whole (:func:`statistics_memory`). Compiled programs and the host's input
pipeline are not counted. :func:`cell_memory` computes it for any checkpoint shapes and mesh (the dry
run's figures); :func:`estimate` for a decoder config on a named slice (docs/STUDY.md, "Memory per cell").

Time model (:func:`cell_seconds`; docs/STUDY.md, "Time per cell"): merging a candidate is bound by HBM
bandwidth (the bytes a device reads and writes, :func:`merge_bytes`); scoring is bound by matmul FLOPs,
forward only (:func:`flops_per_token`), at an assumed fraction of the chips' peak. A (cell, method) merges
and scores every candidate on validation, then merges the chosen one again (when its grid has several) and
scores it on test. Tokens come from the suites (:func:`suite_counts`). Chips are named in :data:`CHIPS`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from mergejax import sharding as sharding_lib
from mergejax.study import grid as grid_lib

F32 = 4
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
Tensor = tuple[str, tuple[int, ...], int]  # name, shape, bytes per entry


@dataclasses.dataclass(frozen=True)
class Activations:
  """What one evaluation step holds per device: ``rows`` packed sequences of ``seq_len`` tokens with
  ``targets`` scored positions each (the evaluator's ``pack_rows`` per data-parallel shard, ``pack_len``,
  ``pack_targets``). ``replica``: each device scores whole batches with a full copy of the candidate (one CPU
  process with several devices: :class:`~mergejax.evaluation.Evaluator`'s round robin)."""

  rows: int
  seq_len: int
  targets: int
  replica: bool = False


@dataclasses.dataclass(frozen=True)
class ModelBytes:
  """Sizes of one (kind, size): parameters of a model, bytes of each resident model as stored, and what
  a device holds of them on the mesh.

  Attributes:
    params: parameters of the base.
    model_bytes: bytes of each resident model as stored (base, experts..., multitask).
    source: "checkpoint" (read from the headers) or "recipe" (a world not yet built).
    per_device: bytes one device holds of each resident model, in the same order.
    tv_per_device: bytes one device holds of one task vector, per bytes-per-entry (``{4: ..., 2: ...}``).
    largest_leaf: entries of the largest tensor one device holds (the kernel's float32 temporaries).
    gathered: bytes of the weights evaluation gathers whole on a device (the largest tensor and one layer).
    arch: d_model, d_ff, heads x head_dim, kv heads x head_dim, vocabulary (activations), or None.
  """

  params: int
  model_bytes: tuple[int, ...]
  source: str
  per_device: tuple[int, ...] = ()
  tv_per_device: Mapping[int, int] = dataclasses.field(default_factory=dict)
  largest_leaf: int = 0
  gathered: int = 0
  arch: Mapping[str, int] | None = None


def placed(models: Sequence[Sequence[Tensor]], spec_of: Callable[[str, tuple[int, ...]], Any],
           axis_sizes: Mapping[str, int], *, source: str, arch: Mapping[str, int] | None = None,
           n_layers: int = 1) -> ModelBytes:
  """:class:`ModelBytes` of models given as tensors, placed by ``spec_of(name, shape)`` (a PartitionSpec) on
  a mesh of ``axis_sizes``; the first model is the base."""
  base = models[0]
  shard = lambda t, itemsize: sharding_lib.shard_bytes(t[1], itemsize, spec_of(t[0], t[1]), axis_sizes)
  largest = max((shard(t, 1) for t in base), default=0)
  total = sum(math.prod(t[1]) * t[2] for t in base)
  biggest = max((math.prod(t[1]) * t[2] for t in base), default=0)
  return ModelBytes(params=sum(math.prod(t[1]) for t in base),
                    model_bytes=tuple(sum(math.prod(t[1]) * t[2] for t in m) for m in models), source=source,
                    per_device=tuple(sum(shard(t, t[2]) for t in m) for m in models),
                    tv_per_device={k: sum(shard(t, k) for t in base) for k in (2, 4)}, largest_leaf=largest,
                    gathered=biggest + (total - biggest) // max(1, n_layers), arch=arch)


def activation_bytes(arch: Mapping[str, int] | None, act: Activations) -> int:
  """One evaluation step's float32 working set on a device: one layer's activations (residual, norm,
  q/k/v, attention output, MLP hidden), the attention scores and mask, and the scored targets' logits
  and their log-sum-exp temporaries. 0 without an architecture."""
  if arch is None:
    return 0
  b, l, g = act.rows, act.seq_len, act.targets
  per_token = 3 * arch["d_model"] + 2 * arch["q_dim"] + 2 * arch["kv_dim"] + 3 * arch["d_ff"]
  return F32 * b * (l * per_token + arch["heads"] * l * l + 2 * g * arch["vocab"]) + b * l * l


def cell_memory(mb: ModelBytes, *, n_merged: int, n_experts: int, task_vector_itemsize: int, devices: int,
                act: Activations) -> dict[str, int]:
  """Estimated bytes one device holds while a (kind, size)'s cells run (see the module docstring).

  Args:
    mb: the (kind, size)'s models (:func:`placed`).
    n_merged: the largest N merged in a cell.
    n_experts: experts resident (the study's categories).
    task_vector_itemsize: 4 (float32) or 2 (bfloat16).
    devices: devices of the mesh (one device: the flat copies of the merge inputs).
    act: the evaluation step's shape per device.

  Returns:
    ``models`` (resident), ``task_vectors``, ``merge`` (working set), ``activations`` and ``total``.
  """
  tv = mb.tv_per_device[task_vector_itemsize] if mb.tv_per_device else mb.params * task_vector_itemsize
  models = sum(mb.per_device) if mb.per_device else sum(mb.model_bytes)
  base = mb.per_device[0] if mb.per_device else mb.model_bytes[0]
  g = mb.tv_per_device[4] if mb.tv_per_device else mb.params * F32
  merge = tv + g + base + F32 * (n_merged + 2) * (mb.largest_leaf or mb.params)
  if devices == 1:
    merge += (n_merged + 1) * tv  # the flat copies of the zero base and the N task vectors
  activations = activation_bytes(mb.arch, act) + (mb.model_bytes[0] if act.replica else mb.gathered)
  out = {"models": models, "task_vectors": n_experts * tv, "merge": merge, "activations": activations}
  out["total"] = sum(out.values())
  return out


def statistics_memory(mb: ModelBytes, resident: int, *, per_expert: Mapping[str, str] | None = None,
                      per_subset: Sequence[str] = (), n_merged: int, n_experts: int) -> dict[str, Any] | None:
  """Bytes of the data-aware methods' statistics (:mod:`mergejax.data_merge`), which run on one device with the
  models they read gathered whole onto it (``on_one_device``), beside what the device holds anyway
  (``resident``: its shards of the models and task vectors). ``per_expert``: method name -> the kind of its
  statistics (``NeedsData.kind``: "regmean", "fisher", ...); ``per_subset``: the other methods' names.

  Per-expert methods (RegMean, Fisher) gather one expert at a time; RegMean adds its Gram matrices and
  their running sum (:func:`regmean_gram_bytes`), Fisher its float32 gradient and running sum (two float32
  models). Per-subset methods (AdaMerging) gather the base and ``n_merged`` experts and hold their task
  vectors, the merged model and its gradient in float32. ``host``: the statistics cached on the host while
  a (kind, size) runs, every expert's (RegMean's Gram matrices, Fisher's float32 model). The forward pass'
  activations are not counted, nor RegMean's Gram matrices without an architecture (``host_complete``
  False). None without data-aware methods.
  """
  per_expert = dict(per_expert or {})
  if not per_expert and not per_subset:
    return None
  experts = mb.model_bytes[1:1 + n_experts] or mb.model_bytes[:1]
  grams = regmean_gram_bytes(mb.arch)
  extra = {"regmean": 2 * (grams or 0), "fisher": 2 * F32 * mb.params}
  gathered = {name: max(experts) + extra.get(kind, 0) for name, kind in per_expert.items()}
  for name in per_subset:
    gathered[name] = mb.model_bytes[0] + n_merged * max(experts) + (n_merged + 2) * F32 * mb.params
  host = {"regmean": grams or 0, "fisher": F32 * mb.params}
  return {"gathered": gathered, "device_total": resident + max(gathered.values()),
          "host": n_experts * sum(host.get(kind, 0) for kind in per_expert.values()),
          "host_complete": grams is not None or "regmean" not in per_expert.values()}


def estimate(cfg: Any, axis_sizes: Mapping[str, int], *, n_experts: int = 8, n_merged: int = 8, multitask: bool = True,
             param_dtype: str = "bfloat16", task_vector_dtype: str = "float32",
             act: Activations = Activations(rows=1, seq_len=1024, targets=512)) -> dict[str, int]:
  """Bytes per device of one (kind, size) of a study over models of decoder config ``cfg``
  (:class:`~mergejax.models.llamalike.DecoderConfig`) on a mesh of ``axis_sizes`` (e.g. ``{"data": 32}`` for
  the 32 chips of a TPU v5p-64): :func:`cell_memory` of the base, ``n_experts`` experts and the multitask
  model in ``param_dtype``, placed as :func:`mergejax.models.from_pretrained` places them. No devices needed."""
  mb = config_bytes(cfg, axis_sizes, n_models=1 + n_experts + (1 if multitask else 0), param_dtype=param_dtype)
  return {"params": mb.params, **cell_memory(mb, n_merged=n_merged, n_experts=n_experts,
                                             task_vector_itemsize=ITEMSIZE[task_vector_dtype],
                                             devices=math.prod(axis_sizes.values()), act=act)}


def config_bytes(cfg: Any, axis_sizes: Mapping[str, int], *, n_models: int,
                 param_dtype: str = "bfloat16") -> ModelBytes:
  """:class:`ModelBytes` of ``n_models`` models of decoder config ``cfg`` in ``param_dtype`` on a mesh of
  ``axis_sizes``, placed as :func:`mergejax.models.from_pretrained` places them. No devices needed."""
  import jax  # pylint: disable=g-import-not-at-top  (an abstract mesh only)
  from mergejax.models import llamalike, pretrained  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.AbstractMesh(tuple(axis_sizes.values()), tuple(axis_sizes))
  tensors = [(n, shape, ITEMSIZE[param_dtype]) for n, shape in llamalike.param_shapes(cfg).items()]
  return placed([tensors] * n_models, lambda n, shape: pretrained.param_spec(cfg, n, shape, mesh), axis_sizes,
                source="config", arch=arch_of(cfg), n_layers=cfg.n_layers)


def arch_of(cfg: Any) -> dict[str, int]:
  """The sizes :func:`activation_bytes` and :func:`flops_per_token` read, from a DecoderConfig."""
  return {"d_model": cfg.d_model, "d_ff": cfg.d_ff, "heads": cfg.n_heads, "q_dim": cfg.n_heads * cfg.head_dim,
          "kv_dim": cfg.n_kv_heads * cfg.head_dim, "vocab": cfg.vocab_size, "layers": cfg.n_layers,
          "tied": int(cfg.tie_embeddings)}


def regmean_gram_bytes(arch: Mapping[str, int] | None) -> int | None:
  """float32 bytes of one expert's RegMean Gram matrices (:func:`mergejax.data_merge.linear_input_grams`): per
  layer the query, key, value, gate and up projections' inputs (d_model each), the output projection's
  (heads x head_dim) and the down projection's (d_ff), each D x D, plus an untied output layer's (d_model).
  None without an architecture."""
  if arch is None or "layers" not in arch:
    return None
  d, q, f = arch["d_model"], arch["q_dim"], arch["d_ff"]
  return F32 * (arch["layers"] * (5 * d * d + q * q + f * f) + (0 if arch.get("tied", 1) else d * d))


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip's peaks: dense bfloat16 matmul FLOP/s and HBM bandwidth in bytes/s."""

  name: str
  flops: float
  hbm_bytes_per_s: float


# The vendors' spec pages (dense bfloat16, no sparsity): cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e
# ("Peak compute per chip (bf16)", "HBM bandwidth"); nvidia.com/en-us/data-center/h100 (H100 SXM: BF16 Tensor
# Core 1,979 TFLOP/s with sparsity, i.e. 989 dense; GPU memory bandwidth 3.35 TB/s).
CHIPS = {
    "tpu_v4": Chip("TPU v4", 275e12, 1200e9),
    "tpu_v5e": Chip("TPU v5e", 197e12, 819e9),
    "tpu_v5p": Chip("TPU v5p", 459e12, 2765e9),
    "tpu_v6e": Chip("TPU v6e", 918e12, 1640e9),
    "h100_sxm": Chip("NVIDIA H100 SXM", 989e12, 3350e9),
}
UTILIZATION = 0.4  # assumed fraction of the peak FLOP/s that packed scoring reaches
# jax's Device.device_kind -> CHIPS key (the first substring that matches; "TPU v5" is v5p's).
_DEVICE_KINDS = (("TPU v4", "tpu_v4"), ("TPU v5 lite", "tpu_v5e"), ("TPU v5e", "tpu_v5e"), ("TPU v5", "tpu_v5p"),
                 ("TPU v6", "tpu_v6e"), ("H100 80GB HBM3", "h100_sxm"), ("H100 SXM", "h100_sxm"))


def chip_of(device_kind: str) -> str | None:
  """The :data:`CHIPS` key of a jax device kind (e.g. "TPU v5 lite" -> "tpu_v5e"), or None if unknown."""
  return next((key for kind, key in _DEVICE_KINDS if kind.lower() in device_kind.lower()), None)


def flops_per_token(params: int, arch: Mapping[str, int] | None, seq_len: int) -> float:
  """Forward FLOPs of one scored token: 2 x parameters (a multiply-add per weight, the embedding counted as
  the output projection) plus attention over a sequence of ``seq_len`` tokens, 4 x layers x seq_len x
  query width (scores and weighted values; the causal half not subtracted). No architecture: 2 x parameters."""
  attention = 4 * arch["layers"] * seq_len * arch["q_dim"] if arch and "layers" in arch else 0
  return 2.0 * params + attention


def merge_bytes(mb: ModelBytes, *, n_merged: int, task_vector_itemsize: int) -> int:
  """Bytes one device reads and writes to merge one candidate (:class:`~mergejax.study.candidates.CandidateMerger`):
  its N task vectors and the base read, the merged task vector g (float32) written and read back, the
  candidate written in the base's dtype. One pass; a method's statistics pass (TIES' global top-k) reads the
  task vectors once more."""
  tv = mb.tv_per_device[task_vector_itemsize] if mb.tv_per_device else mb.params * task_vector_itemsize
  base = mb.per_device[0] if mb.per_device else mb.model_bytes[0]
  g = mb.tv_per_device[4] if mb.tv_per_device else mb.params * F32
  return n_merged * tv + 2 * base + 2 * g


def cell_seconds(candidates: Sequence[int], *, merge_bytes_per_chip: float, validation_tokens: float,
                 test_tokens: float, flops_per_token: float, chips: int, chip: Chip,
                 utilization: float = UTILIZATION) -> dict[str, float]:
  """Estimated seconds of one cell on ``chips`` chips of ``chip``.

  Per method with k = ``candidates[i]`` candidates: k x merge, k x validation evaluation when k > 1 (a single
  candidate is not selected), the chosen merge merged again when k > 1, and one test evaluation. Merge =
  ``merge_bytes_per_chip`` / HBM bandwidth (every chip merges its shards at once); evaluation = tokens x
  ``flops_per_token`` / (chips x peak FLOP/s x ``utilization``).

  Returns:
    ``merge`` and ``validation`` (per candidate), ``test`` (per method) and ``total`` (the cell), seconds.
  """
  merge = merge_bytes_per_chip / chip.hbm_bytes_per_s
  score = lambda tokens: tokens * flops_per_token / (chips * chip.flops * utilization)
  validation, test = score(validation_tokens), score(test_tokens)
  total = sum(k * merge + (merge + k * validation if k > 1 else 0) + test for k in candidates)
  return {"merge": merge, "validation": validation, "test": test, "total": total}


def count_examples(task_name: str, split: str) -> int:
  """Examples of a seqio task's split: the source's own count where it knows it, else counted."""
  task = seqio.get_mixture_or_task(task_name)
  n = task.source.num_input_examples(split)
  if n is not None:
    return int(n)
  ds = task.source.get_dataset(split=split, shuffle=False)
  return int(ds.reduce(tf.constant(0, tf.int64), lambda x, _: x + 1).numpy())


def tokens_per_example(task_name: str, split: str, sample: int = 32) -> float:
  """Mean tokens scored per example of a seqio task's split, over its first ``sample`` examples as the task
  preprocesses them: each rendered prompt once (the evaluator shares it across the answer choices) and every
  target (each answer choice under rank classification; the reference where the task generates). 0 if empty."""
  task = seqio.get_mixture_or_task(task_name)
  source = task.source.get_dataset(split=split, shuffle=False).take(sample)
  n = sum(1 for _ in source)
  tokens, prompts = 0, set()
  for ex in task.preprocess_postcache(task.preprocess_precache(source), sequence_length=None).as_numpy_iterator():
    tokens += len(ex.get("targets", ()))
    prompt = int(ex["idx"][0]) if "idx" in ex else None  # rank classification: one row per (prompt, choice)
    if prompt is None or prompt not in prompts:
      tokens += len(ex.get("inputs", ()))
      prompts.add(prompt)
  return tokens / n if n else 0.0


def suite_counts(suites: Sequence[str], split: str, task_names: Callable[[str], list[str]],
                 sample: int = 32) -> tuple[dict[str, int], dict[str, float]]:
  """Examples and tokens scored per suite on ``split`` (summed over its tasks; tokens: examples x
  :func:`tokens_per_example` of the first ``sample``)."""
  examples, tokens = {}, {}
  for s in suites:
    counts = {t: count_examples(t, split) for t in task_names(s)}
    examples[s] = sum(counts.values())
    tokens[s] = sum(n * tokens_per_example(t, split, sample) for t, n in counts.items() if n)
  return examples, tokens


def make(spec: Any, model_bytes: Mapping[tuple[str, str], ModelBytes], examples: Mapping[str, Mapping[str, int]],
         mesh: Mapping[str, int], act: Activations, *, tokens: Mapping[str, Mapping[str, float]] | None = None,
         chip: Chip | None = None, utilization: float = UTILIZATION,
         data_methods: Mapping[str, tuple[str, bool]] | None = None) -> dict[str, Any]:
  """The plan of a study (``spec``: a :class:`~mergejax.study.runner.StudySpec`).

  Args:
    model_bytes: per (kind, size) the models' sizes, placed on ``mesh`` (:func:`placed`).
    examples: split -> suite -> examples.
    mesh: the study mesh's axis sizes.
    act: an evaluation step's shape per device.
    tokens: split -> suite -> tokens scored (:func:`suite_counts`); with ``chip``, the plan has times.
    chip: the mesh's chips (:data:`CHIPS`), for the time estimate (:func:`cell_seconds`).
    utilization: assumed fraction of the chips' peak FLOP/s while scoring.
    data_methods: the study's data-aware methods, each mapped to (its statistics' kind, whether they are per
      expert (RegMean, Fisher) rather than per expert subset (AdaMerging)): :func:`statistics_memory`.
  """
  devices = math.prod(mesh.values())
  data_methods = dict(data_methods or {})
  cells = grid_lib.cells(spec.kinds, spec.sizes, spec.ns, spec.seeds, spec.categories, spec.design)
  units = [(c, m) for c in cells for m in grid_lib.runs_in_cell(c, spec.methods, len(spec.categories), spec.grids)]
  val, test = examples[spec.validation_split], examples[spec.test_split]
  heldin_val = lambda cats: sum(val[spec.heldin(c)] for c in cats)
  heldin_test = lambda cats: sum(test[spec.heldin(c)] for c in cats)
  merges = selection_examples = test_examples = 0
  for cell, m in units:
    k = len(spec.grids[m])
    merges += k + (1 if k > 1 else 0)
    selection_examples += heldin_val(cell.categories) * (k if k > 1 else 0)
    test_examples += heldin_test(cell.categories) + test[spec.heldout_suite]
  reference_examples = 0
  per_model: dict[str, Any] = {}
  nmax = max(spec.ns)
  for kind in spec.kinds:
    for size in spec.sizes:
      if (kind, size) not in model_bytes:
        continue
      mb = model_bytes[(kind, size)]
      reference_examples += int(reference_amount(spec, examples, len(mb.model_bytes) > 1 + len(spec.categories)))
      mem = cell_memory(mb, n_merged=nmax, n_experts=len(spec.categories), devices=devices, act=act,
                        task_vector_itemsize=ITEMSIZE[spec.task_vector_dtype])
      per_model[f"{kind}/{size}"] = {"params": mb.params, "models": len(mb.model_bytes), "source": mb.source,
                                     "model_bytes": sum(mb.model_bytes), "bytes_per_device": mem}
      stats = statistics_memory(mb, mem["models"] + mem["task_vectors"], n_merged=nmax,
                                n_experts=len(spec.categories),
                                per_expert={m: kind for m, (kind, per) in data_methods.items() if per},
                                per_subset=[m for m, (_, per) in data_methods.items() if not per])
      if stats is not None:
        per_model[f"{kind}/{size}"]["statistics"] = stats
      if tokens is not None and chip is not None:
        here = [c for c in cells if (c.kind, c.size) == (kind, size)]
        per_model[f"{kind}/{size}"]["seconds"] = model_seconds(
            spec, mb, here, {c.key: [len(spec.grids[m]) for cc, m in units if cc.key == c.key] for c in here}, tokens,
            multitask=len(mb.model_bytes) > 1 + len(spec.categories), chips=devices, chip=chip,
            utilization=utilization, seq_len=act.seq_len)
  per_method = {m: len(spec.grids[m]) for m in spec.methods}
  return {"kinds": list(spec.kinds), "sizes": list(spec.sizes), "categories": list(spec.categories),
          "ns": list(spec.ns), "cells": len(cells), "cell_methods": len(units), "candidates_per_method": per_method,
          "merges": merges, "devices": devices, "mesh": dict(mesh),
          "task_vector_dtype": spec.task_vector_dtype,
          "examples": {"per_split_and_suite": {sp: dict(v) for sp, v in examples.items()},
                       "selection": selection_examples, "test": test_examples, "references": reference_examples},
          "models": per_model,
          "peak_bytes_per_device": max((max(v["bytes_per_device"]["total"],
                                            v.get("statistics", {}).get("device_total", 0))
                                        for v in per_model.values()), default=0),
          "time": None if chip is None or tokens is None else {
              "chip": chip.name, "flops": chip.flops, "hbm_bytes_per_s": chip.hbm_bytes_per_s,
              "utilization": utilization, "tokens": {sp: dict(v) for sp, v in tokens.items()},
              "seconds": sum(v["seconds"]["total"] for v in per_model.values() if "seconds" in v)}}


def reference_amount(spec: Any, per: Mapping[str, Mapping[str, float]], multitask: bool) -> float:
  """Examples (or tokens) the reference models of one (kind, size) score, from split -> suite -> amount: the
  base on every held-in split and the held-out test, each expert on its category, the multitask model on test."""
  val, test = per[spec.validation_split], per[spec.test_split]
  every = sum(test[spec.heldin(c)] for c in spec.categories) + test[spec.heldout_suite]
  out = every + sum(val[spec.heldin(c)] for c in spec.categories)  # base
  out += sum(test[spec.heldin(c)] + val[spec.heldin(c)] for c in spec.categories)  # experts
  return out + (every if multitask else 0)


def model_seconds(spec: Any, mb: ModelBytes, cells: Sequence[grid_lib.Cell], candidates: Mapping[str, Sequence[int]],
                  tokens: Mapping[str, Mapping[str, float]], *, multitask: bool, chips: int, chip: Chip,
                  utilization: float, seq_len: int) -> dict[str, float]:
  """Estimated seconds of one (kind, size): its ``cells`` (``candidates``: per cell key, candidates per method
  run) by :func:`cell_seconds`, and its reference models' evaluations.

  Returns:
    ``merge`` and ``validation`` per candidate at the largest N, ``cell`` (mean over the cells), ``cells``
    (their sum), ``references`` and ``total``.
  """
  val, test = tokens[spec.validation_split], tokens[spec.test_split]
  fpt = flops_per_token(mb.params, mb.arch, seq_len)
  kw = dict(flops_per_token=fpt, chips=chips, chip=chip, utilization=utilization)
  tv_itemsize = ITEMSIZE[spec.task_vector_dtype]
  per_cell = [cell_seconds(candidates[c.key], **kw,
                           merge_bytes_per_chip=merge_bytes(mb, n_merged=c.n, task_vector_itemsize=tv_itemsize),
                           validation_tokens=sum(val[spec.heldin(k)] for k in c.categories),
                           test_tokens=sum(test[spec.heldin(k)] for k in c.categories) + test[spec.heldout_suite])
              for c in cells]
  largest = max(range(len(cells)), key=lambda i: (cells[i].n, per_cell[i]["validation"]), default=None)
  references = reference_amount(spec, tokens, multitask) * fpt / (chips * chip.flops * utilization)
  total_cells = sum(t["total"] for t in per_cell)
  return {"merge": per_cell[largest]["merge"] if per_cell else 0.0,
          "validation": per_cell[largest]["validation"] if per_cell else 0.0,
          "n": cells[largest].n if per_cell else 0, "cell": total_cells / max(1, len(per_cell)), "cells": total_cells,
          "references": references, "total": total_cells + references}


def _gib(n: int) -> str:
  return f"{n / 2**30:.3f} GiB" if n >= 2**27 else f"{n / 2**20:.2f} MiB"


def format_plan(plan: Mapping[str, Any]) -> str:
  """The plan as text for a terminal."""
  lines = [f"Study plan (dry run): kinds {plan['kinds']}, sizes {plan['sizes']} (smallest first), "
           f"{len(plan['categories'])} categories, N in {plan['ns']}",
           f"  cells (kind x size x N x subset): {plan['cells']}; (cell, method) rows: {plan['cell_methods']}",
           "  candidates per method: " + ", ".join(f"{m} {k}" for m, k in plan["candidates_per_method"].items()),
           f"  merges (every candidate, plus the chosen one again for test when a grid has several): {plan['merges']}",
           f"  evaluation examples: selection {plan['examples']['selection']:,} (validation), "
           f"test {plan['examples']['test']:,}, reference models {plan['examples']['references']:,}"]
  for split, suites in plan["examples"]["per_split_and_suite"].items():
    lines.append(f"    {split}: " + ", ".join(f"{s} {n}" for s, n in suites.items()))
  mesh = " x ".join(f"{a} {n}" for a, n in plan["mesh"].items())
  lines.append(f"  bytes per device on this mesh ({mesh} = {plan['devices']} devices; parameters split FSDP over data, "
               f"tensor parallel over model; task vectors {plan['task_vector_dtype']}):")
  for key, m in plan["models"].items():
    b = m["bytes_per_device"]
    lines.append(f"    {key}: {m['params']:,} parameters ({m['source']}), {m['models']} models of "
                 f"{_gib(m['model_bytes'])} in all: models {_gib(b['models'])} + task vectors {_gib(b['task_vectors'])} "
                 f"+ merge {_gib(b['merge'])} + evaluation {_gib(b['activations'])} = {_gib(b['total'])}")
    st = m.get("statistics")
    if st is not None:
      lines.append(f"      data-aware statistics on one device (models gathered whole): "
                   + ", ".join(f"{name} {_gib(v)}" for name, v in st["gathered"].items())
                   + f" beside the resident shards = {_gib(st['device_total'])} on that device; on the host "
                   f"{_gib(st['host'])} (every expert's statistics"
                   + ("" if st["host_complete"] else "; RegMean's Gram matrices not counted: no architecture")
                   + "; activations not counted)")
  lines.append(f"  estimated peak bytes per device: {plan['peak_bytes_per_device']:,} "
               f"({_gib(plan['peak_bytes_per_device'])})")
  t = plan.get("time")
  if t is None:
    lines.append(f"  time: needs the chip named: --config.dry_run_chip=NAME, one of {', '.join(CHIPS)}")
    return "\n".join(lines)
  lines.append(f"  estimated time on this mesh ({plan['devices']} x {t['chip']}: bf16 {t['flops'] / 1e12:.0f} TFLOP/s "
               f"and HBM {t['hbm_bytes_per_s'] / 1e9:.0f} GB/s per chip; scoring at {t['utilization']:.0%} of peak "
               "FLOP/s, merges at HBM bandwidth):")
  for split, suites in t["tokens"].items():
    n = plan["examples"]["per_split_and_suite"][split]
    lines.append(f"    tokens per example ({split}; prompt once, every answer choice): "
                 + ", ".join(f"{s} {v / n[s]:.1f}" for s, v in suites.items() if n[s]))
  for key, m in plan["models"].items():
    if "seconds" in m:
      x = m["seconds"]
      lines.append(f"    {key}: per candidate at N={x['n']} merge {_duration(x['merge'])} + validation "
                   f"{_duration(x['validation'])}; per cell {_duration(x['cell'])} (mean); reference models "
                   f"{_duration(x['references'])}; in all {_duration(x['total'])}")
  lines.append(f"  estimated time of the whole study: {_duration(t['seconds'])} (estimates from this plan, not "
               "measurements)")
  return "\n".join(lines)


def _duration(seconds: float) -> str:
  for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
    if seconds >= 2 * size:
      return f"{seconds / size:.1f} {unit}"
  return f"{seconds:.3g} s"


def model_bytes_from_manifest(manifest: Any, categories: Sequence[str], mesh: Any) -> dict[tuple[str, str], ModelBytes]:
  """Sizes read from the checkpoints' headers (:class:`~mergejax.study.manifest.Manifest`), placed on
  ``mesh`` (a Mesh or AbstractMesh) as :func:`mergejax.models.from_pretrained` places them."""
  from mergejax.models import llamalike, pretrained  # pylint: disable=g-import-not-at-top  (models import TF lazily)
  out = {}
  axis_sizes = dict(mesh.shape)
  for key, e in manifest.entries.items():
    models = [e.base, *(e.experts[c] for c in categories), *([e.multitask] if e.multitask else [])]
    cfg = llamalike.DecoderConfig(**dict(e.base.architecture))
    tensors = [[(n, tuple(shape), m.itemsize[n]) for n, shape in m.shapes.items()] for m in models]
    out[key] = placed(tensors, lambda n, shape, cfg=cfg: pretrained.param_spec(cfg, n, shape, mesh), axis_sizes,
                      source="checkpoint", arch=arch_of(cfg), n_layers=cfg.n_layers)
  return out


def model_bytes_from_sizes(kinds: Sequence[str], sizes: Sequence[str], categories: Sequence[str], multitask: bool,
                           params_of: Callable[[str], int], devices: int) -> dict[tuple[str, str], ModelBytes]:
  """Sizes of a world not built yet: parameter counts of its recipes' model configs, float32, each model
  taken as split evenly over the ``devices``."""
  n_models = 1 + len(categories) + (1 if multitask else 0)
  out = {}
  for k in kinds:
    for s in sizes:
      p = params_of(s)
      even = -(-p // devices)
      out[(k, s)] = ModelBytes(p, (p * F32,) * n_models, "recipe", per_device=(even * F32,) * n_models,
                               tv_per_device={2: even * 2, 4: even * F32}, largest_leaf=even)
  return out
