"""What a study will do, before it does it (``--config.dry_run=True``): cells, candidates, evaluation
examples and the bytes each device and the host will hold, for the devices at hand.

Memory model (the runner's placement, :func:`mergejax.study.runner.load_models`): every model of a
(kind, size) -- base, the experts of the study's categories, the multitask model -- is resident on
**every** device (evaluation is data-parallel over the mesh); the device that merges (the first) also
holds one cell's merge inputs and outputs: the base, N experts and their float32 task vectors, the merged
float32 task vector and the merged candidate. The host keeps the base, the experts and their float32 task
vectors. Activations and compiled programs are not counted. Per-device bytes of a resident model are
those of its shards under its sharding on the mesh (replicated: the whole model).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from mergejax.study import grid as grid_lib

F32 = 4


@dataclasses.dataclass(frozen=True)
class ModelBytes:
  """Sizes of one (kind, size): parameters of a model and bytes of each resident model as stored."""

  params: int
  model_bytes: tuple[int, ...]  # base, experts..., multitask
  source: str  # "checkpoint" (read from the headers) or "recipe" (a world not yet built)


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
         devices: int) -> dict[str, Any]:
  """The plan of a study (``spec``: a :class:`~mergejax.study.runner.StudySpec`).

  Args:
    model_bytes: per (kind, size) the models' sizes.
    examples: split -> suite -> examples.
    devices: devices of the mesh the models are replicated over.
  """
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
      resident = sum(mb.model_bytes)
      base_b, expert_b = mb.model_bytes[0], max(mb.model_bytes[1:1 + len(spec.categories)])
      working = base_b + nmax * expert_b + (nmax + 1) * mb.params * F32 + base_b
      host = base_b + len(spec.categories) * (expert_b + mb.params * F32)
      per_model[f"{kind}/{size}"] = {"params": mb.params, "models": len(mb.model_bytes), "source": mb.source,
                                     "resident_bytes_per_device": resident,
                                     "merge_bytes_first_device": working,
                                     "peak_bytes_per_device": resident + working, "host_bytes": host}
  per_method = {m: len(spec.grids[m]) for m in spec.methods}
  return {"kinds": list(spec.kinds), "sizes": list(spec.sizes), "categories": list(spec.categories),
          "ns": list(spec.ns), "cells": len(cells), "cell_methods": len(units), "candidates_per_method": per_method,
          "merges": merges, "devices": devices,
          "examples": {"per_split_and_suite": {sp: dict(v) for sp, v in examples.items()},
                       "selection": selection_examples, "test": test_examples, "references": reference_examples},
          "models": per_model,
          "peak_bytes_per_device": max((v["peak_bytes_per_device"] for v in per_model.values()), default=0)}


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
  lines.append(f"  memory on this mesh ({plan['devices']} devices; models replicated on every device, merges on "
               "the first):")
  for key, m in plan["models"].items():
    lines.append(f"    {key}: {m['params']:,} parameters ({m['source']}), {m['models']} models: "
                 f"{_gib(m['resident_bytes_per_device'])} resident per device + {_gib(m['merge_bytes_first_device'])} "
                 f"merge working set on the first = {_gib(m['peak_bytes_per_device'])}; host {_gib(m['host_bytes'])}")
  lines.append(f"  estimated peak bytes per device: {plan['peak_bytes_per_device']:,} "
               f"({_gib(plan['peak_bytes_per_device'])})")
  return "\n".join(lines)


def model_bytes_from_manifest(manifest: Any, categories: Sequence[str]) -> dict[tuple[str, str], ModelBytes]:
  """Sizes read from the checkpoints' headers (:class:`~mergejax.study.manifest.Manifest`)."""
  out = {}
  for key, e in manifest.entries.items():
    models = [e.base, *(e.experts[c] for c in categories), *([e.multitask] if e.multitask else [])]
    out[key] = ModelBytes(e.base.params, tuple(m.nbytes for m in models), "checkpoint")
  return out


def model_bytes_from_sizes(kinds: Sequence[str], sizes: Sequence[str], categories: Sequence[str], multitask: bool,
                           params_of: Callable[[str], int]) -> dict[tuple[str, str], ModelBytes]:
  """Sizes of a world not built yet: parameter counts of its recipes' model configs, float32."""
  n_models = 1 + len(categories) + (1 if multitask else 0)
  return {(k, s): ModelBytes(params_of(s), (params_of(s) * F32,) * n_models, "recipe")
          for k in kinds for s in sizes}
