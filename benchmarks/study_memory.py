"""Bytes per device and time of a study's (kind, size) cell: the estimates for real model sizes on a TPU slice,
and a measurement of the bytes on 8 simulated CPU devices against the models resident / 8.

  # the estimates (mergejax.study.plan: estimate, and make's time per cell) at 1B / 8B / 24B / 64B on TPU
  # v5p-64 and v4-32, the paper's grid (configs/study_paper.py) over the T0 suites:
  python benchmarks/study_memory.py estimate
  # measured: the default study's pretrained/s cell on 8 simulated devices (a built world, e.g. runs/tiny/world;
  # a missing one is built there first):
  python benchmarks/study_memory.py measure --world=runs/tiny/world --size=s

The measurement loads the models of one (kind, size) with the study's own loader
(``runner.load_models``, FSDP over 8 devices), then merges one candidate of each method at the largest N,
and reads every live array's addressable shards per device (``jax.live_arrays``): the most any device
holds, against (bytes of the resident models and task vectors) / 8, the goal being within 1.2x.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

# Llama-like configs (Hugging Face config.json fields) of the four sizes the paper studies (PaLM-2 1B, 8B,
# 24B, 64B): Llama 3.2 1B and Llama 3.1 8B, Mistral Small 24B, and a 64B Llama-like decoder (Llama 3 70B's
# widths with 70 layers and Llama 3's vocabulary).
CONFIGS = {
    "1B": dict(model_type="llama", vocab_size=128256, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, intermediate_size=8192, tie_word_embeddings=True),
    "8B": dict(model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, intermediate_size=14336, tie_word_embeddings=False),
    "24B": dict(model_type="mistral", vocab_size=131072, hidden_size=5120, num_hidden_layers=40, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, intermediate_size=32768, tie_word_embeddings=False),
    "64B": dict(model_type="llama", vocab_size=128256, hidden_size=8192, num_hidden_layers=70, num_attention_heads=64,
                num_key_value_heads=8, intermediate_size=28672, tie_word_embeddings=False),
}
# Named slices: chips (the study mesh's "data" axis: FSDP over every chip), HBM per chip, plan.CHIPS key.
SLICES = {"v5p-64": (32, 95, "tpu_v5p"), "v4-32": (16, 32, "tpu_v4")}
# T0's evaluation data (mergejax.tasks.t0.DATASETS): examples of the split T0 reports on (T0Dataset.test_split)
# and answer choices per example (rank classification scores each; 1: generated, scored as its reference).
# Split sizes: the TFDS catalog (tensorflow.org/datasets/catalog/<name>, the versions t0.DATASETS names).
EVAL_SPLITS = {
    "cosmos_qa": (2985, 4), "qasc": (926, 8), "squad_v2": (11873, 1), "record": (10000, 1),
    "web_questions": (2032, 1), "arc_easy": (2376, 4), "imdb": (25000, 2), "yelp_polarity": (38000, 2),
    "ag_news": (7600, 4), "trec": (500, 6), "common_gen": (993, 1), "wiki_bio": (72831, 1),
    "cnn_dailymail": (11490, 1), "gigaword": (1951, 1), "qqp": (40430, 2), "paws": (8000, 2),
    "copa": (100, 2), "hellaswag": (10042, 4), "story_cloze": (1871, 2), "rte": (277, 2), "cb": (56, 3),
    "anli_r1": (1000, 3), "anli_r2": (1000, 3), "anli_r3": (1200, 3), "wsc": (104, 2), "winogrande": (1267, 2),
    "wic": (638, 2),
}
SEQUENCE_TOKENS = 256  # assumed mean tokens of one scored sequence (prompt + one answer choice)


def paper_suites() -> tuple[dict, dict, dict]:
  """The paper's T0 suites as the study names them (t0_heldin_<category>, t0): split -> suite -> examples and
  scored tokens (examples x templates x answer choices x SEQUENCE_TOKENS), and the counts per dataset."""
  import inspect  # pylint: disable=g-import-not-at-top
  from mergejax.tasks import t0  # pylint: disable=g-import-not-at-top
  validation = inspect.signature(t0.register).parameters["validation_examples"].default  # study_paper keeps it
  examples, tokens, table = {"validation": {}, "test": {}}, {"validation": {}, "test": {}}, {}
  for d in t0.DATASETS:
    n_test, choices = EVAL_SPLITS[d.name]
    suite = f"t0_heldin_{d.category}" if d.heldin else "t0"
    per_example = len(d.templates) * choices * SEQUENCE_TOKENS
    table[d.name] = (suite, validation if d.heldin else 0, n_test, len(d.templates), choices)
    for split, n in (("validation", validation if d.heldin else 0), ("test", n_test)):
      examples[split][suite] = examples[split].get(suite, 0) + n
      tokens[split][suite] = tokens[split].get(suite, 0) + n * per_example
  return examples, tokens, table


def paper_spec(size: str, task_vector_dtype: str):
  """The StudySpec of configs/study_paper.py for one size label, over the T0 suites (no checkpoints read)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from mergejax.study import grid as grid_lib, runner  # pylint: disable=g-import-not-at-top
  from mergejax.tasks import t0  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "study_paper.py"
  module = importlib.util.module_from_spec(spec := importlib.util.spec_from_file_location("study_paper", path))
  spec.loader.exec_module(module)
  c = module.get_config()
  grids = {m: grid_lib.candidates(m, dict(c.grids.get(m) or {})) for m in c.methods}
  return runner.StudySpec(tuple(c.kinds), (size,), tuple(c.num_experts), int(c.subset_seeds), tuple(c.methods), grids,
                          t0.HELDIN_CATEGORIES, pathlib.Path("unused"), False, int(c.eval_batch_size),
                          design=c.design, heldin_suite=c.heldin_suite, heldout_suite=c.heldout_suite,
                          task_vector_dtype=task_vector_dtype)


def estimate() -> None:
  from mergejax.models import families  # pylint: disable=g-import-not-at-top
  from mergejax.study import plan  # pylint: disable=g-import-not-at-top
  gib = lambda n: f"{n / 2**30:.1f}"
  fits = {}
  for slice_name, (chips, hbm, _) in SLICES.items():
    print(f"\n{slice_name}: {chips} chips x {hbm} GiB HBM; mesh data={chips}; base + 8 experts + multitask in bfloat16, "
          "N = 8, packed evaluation 1 row x 1024 tokens (512 scored) per chip")
    print("| size | parameters | task vectors | models | task vectors | merge | evaluation | total per chip | fits |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, raw in CONFIGS.items():
      cfg = families.parse_hf_config(raw, where=size)
      for tv in ("float32", "bfloat16"):
        e = plan.estimate(cfg, {"data": chips}, task_vector_dtype=tv)
        fits[(slice_name, size, tv)] = e["total"] <= hbm * 2**30
        print(f"| {size} | {e['params'] / 1e9:.2f}B | {tv} | {gib(e['models'])} | {gib(e['task_vectors'])} | "
              f"{gib(e['merge'])} | {gib(e['activations'])} | {gib(e['total'])} GiB | "
              f"{'yes' if fits[(slice_name, size, tv)] else 'no'} |")
  estimate_time(fits)


def estimate_time(fits: dict) -> None:
  """Time per cell of the paper's study (configs/study_paper.py: both kinds, N in {2, 4, 6, 8}, 3 subsets, its four
  methods and grids) on the T0 suites, from the plan (mergejax.study.plan.make) of one size at a time."""
  from mergejax.models import families  # pylint: disable=g-import-not-at-top
  from mergejax.study import plan  # pylint: disable=g-import-not-at-top
  examples, tokens, table = paper_suites()
  print(f"\nTime: the paper's grid (configs/study_paper.py) over the T0 suites; scored sequences = examples x "
        f"templates x answer choices, {SEQUENCE_TOKENS} tokens each (assumed; the evaluator scores a prompt once "
        f"for all its choices, so this is an upper bound); generation scored as one sequence (decoding is slower); "
        f"scoring at {plan.UTILIZATION:.0%} of peak bf16 FLOP/s, merges at HBM bandwidth")
  print("| dataset | suite | validation | test | templates | choices |\n| --- | --- | --- | --- | --- | --- |")
  for name, (suite, val, test, templates, choices) in table.items():
    print(f"| {name} | {suite} | {val} | {test} | {templates} | {choices} |")
  dur = lambda x: f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.1f} h"
  for slice_name, (chips, _, chip) in SLICES.items():
    p = None
    print(f"\n{slice_name}: {chips} x {plan.CHIPS[chip].name}, mesh data={chips}")
    print("| size | task vectors | per candidate at N=8: merge + validation | per cell (mean) | reference models "
          "| one (kind, size) | study (both kinds) | fits |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, raw in CONFIGS.items():
      cfg = families.parse_hf_config(raw, where=size)
      tv = "float32" if fits[(slice_name, size, "float32")] else "bfloat16"
      spec = paper_spec(size, tv)
      mb = plan.config_bytes(cfg, {"data": chips}, n_models=2 + len(spec.categories))
      p = plan.make(spec, {(k, size): mb for k in spec.kinds}, examples, {"data": chips},
                    plan.Activations(rows=1, seq_len=SEQUENCE_TOKENS, targets=SEQUENCE_TOKENS // 2), tokens=tokens,
                    chip=plan.CHIPS[chip])
      x = p["models"][f"{spec.kinds[0]}/{size}"]["seconds"]
      print(f"| {size} | {tv} | {x['merge'] * 1e3:.1f} ms + {x['validation']:.0f} s | {dur(x['cell'])} | "
            f"{dur(x['references'])} | {dur(x['total'])} | {dur(p['time']['seconds'])} | "
            f"{'yes' if fits[(slice_name, size, tv)] else 'no'} |")
    print(f"(per size: {p['cells']} cells ({p['cells'] // len(p['kinds'])} per kind), {p['cell_methods']} "
          f"(cell, method) rows, {p['merges']} merges; candidates per method: {p['candidates_per_method']}; a cell "
          "scores every candidate on the validation split of its N categories and each method's chosen merge on "
          "test, held-in and held-out)")


def measure(world_dir: pathlib.Path, size: str) -> None:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  import collections  # pylint: disable=g-import-not-at-top
  import gc  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from mergejax import world  # pylint: disable=g-import-not-at-top
  from mergejax.configs import study as study_config  # pylint: disable=g-import-not-at-top
  from mergejax.study import runner  # pylint: disable=g-import-not-at-top
  from mergejax.study.candidates import CandidateMerger  # pylint: disable=g-import-not-at-top
  if not (world_dir / "models.yaml").is_file():  # the default study's world (xs and s, 8 experts, multitask)
    world.build_world(world_dir, world.DEFAULT_SIZES, kinds=("pretrained",), progress=True)
  cfg = study_config.get_config()
  cfg.kinds, cfg.sizes, cfg.world_dir, cfg.build_world = ("pretrained",), (size,), str(world_dir), False
  cfg.num_experts = (len(world.heldin_categories()),)
  with tempfile.TemporaryDirectory() as workdir:  # the study's work directory: nothing is written there
    spec = runner.validate(cfg, workdir)

  def per_device() -> dict:
    """Bytes per device of every live mesh array (NamedSharding: the shards' single-device views, which
    reading a shard creates, are not counted twice)."""
    gc.collect()
    held = collections.Counter()
    for x in jax.live_arrays():
      if isinstance(x.sharding, jax.sharding.NamedSharding):
        for sh in x.addressable_shards:
          held[sh.device.id] += sh.data.nbytes
    return held

  before = per_device()
  ms = runner.load_models(spec, "pretrained", size)
  resident = [ms.base, *ms.experts.values(), ms.multitask, *ms.taus.values()]
  total = sum(x.nbytes for t in resident for x in jax.tree.leaves(t))
  loaded = per_device()
  loaded = {d: loaded[d] - before.get(d, 0) for d in loaded}
  cats = list(ms.experts)
  print(f"{spec.device_mesh.devices.size} devices, {ms.params_count:,} parameters per model, {len(resident)} resident "
        f"trees (base, {len(ms.experts)} experts, multitask, {len(ms.taus)} task vectors) = {total:,} bytes")
  print(f"resident: max per device {max(loaded.values()):,} bytes = {max(loaded.values()) / (total / 8):.3f} x total/8")
  for name, hp in [("ties", dict(density=0.2, lam=1.0)), ("dare_ties", dict(drop_rate=0.2, lam=1.0)),
                   ("task_arithmetic", dict(lam=0.5)), ("average", {})]:
    merger = CandidateMerger(name, ms.base, list(ms.experts.values()), list(ms.taus.values()), seed=0)
    out = jax.block_until_ready(merger(hp))
    now = per_device()
    peak = max(now[d] - before.get(d, 0) for d in now)
    print(f"with one {name} candidate merged (N={len(cats)}; its g and zero base held): max per device {peak:,} bytes "
          f"= {peak / (total / 8):.3f} x total/8")
    del merger, out


if __name__ == "__main__":
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("mode", choices=("estimate", "measure"))
  ap.add_argument("--world", default="runs/tiny/world", help="measure: the world's directory (built if missing)")
  ap.add_argument("--size", default="s", help="measure: the world's size label")
  args = ap.parse_args()
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  estimate() if args.mode == "estimate" else measure(pathlib.Path(args.world), args.size)
