"""Bytes per device of a study's (kind, size) cell: the estimate for real model sizes on a TPU slice, and a
measurement on 8 simulated CPU devices against the models resident / 8.

  # the estimate (mergejax.study.plan.estimate) at 1B / 8B / 24B / 64B on TPU v5p-64 and v4-32:
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
# Named slices: chips (the study mesh's "data" axis: FSDP over every chip) and HBM per chip.
SLICES = {"v5p-64": (32, 95), "v4-32": (16, 32)}


def estimate() -> None:
  from mergejax.models import families  # pylint: disable=g-import-not-at-top
  from mergejax.study import plan  # pylint: disable=g-import-not-at-top
  gib = lambda n: f"{n / 2**30:.1f}"
  for slice_name, (chips, hbm) in SLICES.items():
    print(f"\n{slice_name}: {chips} chips x {hbm} GiB HBM; mesh data={chips}; base + 8 experts + multitask in bfloat16, "
          "N = 8, packed evaluation 1 row x 1024 tokens (512 scored) per chip")
    print("| size | parameters | task vectors | models | task vectors | merge | evaluation | total per chip | fits |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, raw in CONFIGS.items():
      cfg = families.parse_hf_config(raw, where=size)
      for tv in ("float32", "bfloat16"):
        e = plan.estimate(cfg, {"data": chips}, task_vector_dtype=tv)
        print(f"| {size} | {e['params'] / 1e9:.2f}B | {tv} | {gib(e['models'])} | {gib(e['task_vectors'])} | "
              f"{gib(e['merge'])} | {gib(e['activations'])} | {gib(e['total'])} GiB | "
              f"{'yes' if e['total'] <= hbm * 2**30 else 'no'} |")


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
