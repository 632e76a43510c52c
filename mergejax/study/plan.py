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
gathers for one layer and the embedding. Compiled programs and the host's input pipeline are not
counted. :func:`cell_memory` computes it for any checkpoint shapes and mesh (the dry run's figures);
:func:`estimate` for a decoder config on a named slice (docs/STUDY.md, "Memory per cell").
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


def estimate(cfg: Any, axis_sizes: Mapping[str, int], *, n_experts: int = 8, n_merged: int = 8, multitask: bool = True,
             param_dtype: str = "bfloat16", task_vector_dtype: str = "float32",
             act: Activations = Activations(rows=1, seq_len=1024, targets=512)) -> dict[str, int]:
  """Bytes per device of one (kind, size) of a study over models of decoder config ``cfg``
  (:class:`~mergejax.models.llamalike.DecoderConfig`) on a mesh of ``axis_sizes`` (e.g. ``{"data": 32}`` for
  the 32 chips of a TPU v5p-64): :func:`cell_memory` of the base, ``n_experts`` experts and the multitask
  model in ``param_dtype``, placed as :func:`mergejax.models.from_pretrained` places them. No devices needed."""
  import jax  # pylint: disable=g-import-not-at-top  (an abstract mesh only)
  from mergejax.models import llamalike, pretrained  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.AbstractMesh(tuple(axis_sizes.values()), tuple(axis_sizes))
  tensors = [(n, shape, ITEMSIZE[param_dtype]) for n, shape in llamalike.param_shapes(cfg).items()]
  n_models = 1 + n_experts + (1 if multitask else 0)
  mb = placed([tensors] * n_models, lambda n, shape: pretrained.param_spec(cfg, n, shape, mesh), axis_sizes,
              source="config", arch=arch_of(cfg), n_layers=cfg.n_layers)
  return {"params": mb.params, **cell_memory(mb, n_merged=n_merged, n_experts=n_experts,
                                             task_vector_itemsize=ITEMSIZE[task_vector_dtype],
                                             devices=math.prod(axis_sizes.values()), act=act)}


def arch_of(cfg: Any) -> dict[str, int]:
  """The sizes :func:`activation_bytes` reads, from a DecoderConfig."""
  return {"d_model": cfg.d_model, "d_ff": cfg.d_ff, "heads": cfg.n_heads, "q_dim": cfg.n_heads * cfg.head_dim,
          "kv_dim": cfg.n_kv_heads * cfg.head_dim, "vocab": cfg.vocab_size}


def count_examples(task_name: str, split: str) -> int:
  """Examples of a seqio task's split: the source's own count where it knows it, else counted."""
  task = seqio.get_mixture_or_task(task_name)
  n = task.source.num_input_examples(split)
  if n is not None:
    return int(n)
  ds = task.source.get_dataset(split=split, shuffle=False)
  return int(ds.reduce(tf.constant(0, tf.int64), lambda x, _: x + 1).numpy())


def suite_examples(suites: Sequence[str], split: str, task_names: Callable[[str], list[str]]) -> dict[str, int]:
  """Examples per suite on ``split`` (summed over its tasks)."""
  return {s: sum(count_examples(t, split) for t in task_names(s)) for s in suites}


def make(spec: Any, model_bytes: Mapping[tuple[str, str], ModelBytes], examples: Mapping[str, Mapping[str, int]],
         mesh: Mapping[str, int], act: Activations) -> dict[str, Any]:
  """The plan of a study (``spec``: a :class:`~mergejax.study.runner.StudySpec`).

  Args:
    model_bytes: per (kind, size) the models' sizes, placed on ``mesh`` (:func:`placed`).
    examples: split -> suite -> examples.
    mesh: the study mesh's axis sizes.
    act: an evaluation step's shape per device.
  """
  devices = math.prod(mesh.values())
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
      every = heldin_test(spec.categories) + test[spec.heldout_suite]
      reference_examples += every + heldin_val(spec.categories)  # base
      reference_examples += sum(test[spec.heldin(c)] + val[spec.heldin(c)] for c in spec.categories)  # experts
      if len(mb.model_bytes) > 1 + len(spec.categories):
        reference_examples += every  # multitask
      mem = cell_memory(mb, n_merged=nmax, n_experts=len(spec.categories), devices=devices, act=act,
                        task_vector_itemsize=ITEMSIZE[spec.task_vector_dtype])
      per_model[f"{kind}/{size}"] = {"params": mb.params, "models": len(mb.model_bytes), "source": mb.source,
                                     "model_bytes": sum(mb.model_bytes), "bytes_per_device": mem}
  per_method = {m: len(spec.grids[m]) for m in spec.methods}
  return {"kinds": list(spec.kinds), "sizes": list(spec.sizes), "categories": list(spec.categories),
          "ns": list(spec.ns), "cells": len(cells), "cell_methods": len(units), "candidates_per_method": per_method,
          "merges": merges, "devices": devices, "mesh": dict(mesh),
          "task_vector_dtype": spec.task_vector_dtype,
          "examples": {"per_split_and_suite": {sp: dict(v) for sp, v in examples.items()},
                       "selection": selection_examples, "test": test_examples, "references": reference_examples},
          "models": per_model,
          "peak_bytes_per_device": max((v["bytes_per_device"]["total"] for v in per_model.values()), default=0)}


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
  lines.append(f"  estimated peak bytes per device: {plan['peak_bytes_per_device']:,} "
               f"({_gib(plan['peak_bytes_per_device'])})")
  return "\n".join(lines)


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
