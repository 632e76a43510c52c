"""Building the embedded world: wall time, training tokens/s per size, and whether the world
behaves like the paper's (rank-classification probe, mergejax.training.probe).

  python benchmarks/world_bench.py --workdir=runs/world_bench --fresh --sizes=xs,s
  python benchmarks/world_bench.py --speed_only --speed_sizes=xs,s,m

Phases: (1) train-step throughput on random batches per size (tokens/s and, on GPU, MFU);
(2) mergejax.world.build_world for --sizes, timed end to end; (3) the paper checks: expert vs base
accuracy on its own held-in category (target ratio >= 1.5), instruction-tuned vs pretrained base
zero-shot on held-out tasks, and larger sizes vs smaller. Writes a JSON report to --out.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import time

from absl import app, flags
import numpy as np

_WORKDIR = flags.DEFINE_string("workdir", "runs/world_bench", "World directory.")
_SIZES = flags.DEFINE_list("sizes", ["xs", "s"], "Sizes to build.")
_SPEED_SIZES = flags.DEFINE_list("speed_sizes", ["xs", "s", "m"], "Sizes for the throughput phase.")
_FRESH = flags.DEFINE_bool("fresh", False, "Delete --workdir first (time a full build).")
_SPEED_ONLY = flags.DEFINE_bool("speed_only", False, "Only the throughput phase.")
_SKIP_SPEED = flags.DEFINE_bool("skip_speed", False, "Skip the throughput phase.")
_OUT = flags.DEFINE_string("out", "runs/world_bench.json", "JSON report.")
_SPLIT = flags.DEFINE_string("split", "validation", "Split for the probe.")
_HELDOUT_SPLITS = flags.DEFINE_list("heldout_splits", ["test"],
                                    "More splits on which to report the bases' held-out means "
                                    "(the study evaluates held-out tasks on test).")

# Peak dense bf16 FLOP/s for MFU on GPUs we may be lent.
_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _machine() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return (f"{platform.node()} {os.cpu_count()} CPU cores, {d.platform}:{d.device_kind}, "
          f"load avg {load:.1f}, jax {jax.__version__}")


def speed(sizes, batch_size=16, length=128, steps=5) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from mergejax import models, training  # pylint: disable=g-import-not-at-top
  out = {}
  kind = jax.devices()[0].device_kind
  peak = next((v for k, v in _PEAK.items() if k in kind), None)
  for name in sizes:
    cfg = models.get_config(name, vocab_size=1024, max_len=length)
    if jax.devices()[0].platform == "gpu":
      cfg = cfg.replace(dtype="bfloat16")
    tr = training.get_trainer(cfg, training.OptimConfig())
    st = tr.init_state(0)
    rng = np.random.default_rng(0)
    b = {"decoder_input_tokens": rng.integers(2, 1024, (batch_size, length)).astype(np.int32),
         "decoder_target_tokens": rng.integers(2, 1024, (batch_size, length)).astype(np.int32),
         "decoder_loss_weights": np.ones((batch_size, length), np.int32),
         "decoder_segment_ids": np.ones((batch_size, length), np.int32),
         "decoder_positions": np.tile(np.arange(length, dtype=np.int32), (batch_size, 1))}
    st, m = tr.step(st, b, 1e-3)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
      st, m = tr.step(st, b, 1e-3)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t) / steps
    tps = batch_size * length / dt
    flops = tps * models.flops_per_token(cfg, length)
    out[name] = {"params": models.param_count(cfg), "tokens_per_s": tps, "model_tflops": flops / 1e12,
                 "mfu": flops / peak if peak else None, "step_ms": dt * 1e3}
    print(f"speed {name}: {models.param_count(cfg):,} params, {tps:,.0f} tokens/s, "
          f"{flops / 1e9:.1f} GFLOP/s" + (f", MFU {flops / peak:.1%}" if peak else ""), flush=True)
    del st
  return out


def measure(workdir, sizes, split) -> dict:
  import mergejax.tasks as T  # pylint: disable=g-import-not-at-top
  from mergejax import models, world  # pylint: disable=g-import-not-at-top
  from mergejax.training import probe  # pylint: disable=g-import-not-at-top
  res = {}
  for size in sizes:
    res[size] = {}
    for kind in world.KINDS:
      cfg, base = models.load_checkpoint(world.checkpoint_path(workdir, size, kind, "base"))
      r = {"heldout_base": {c: probe.category_accuracy(cfg, base, T.heldout_tasks(c), split)
                            for c in T.HELDOUT_CATEGORIES},
           "heldin_base": {}, "heldin_expert": {}, "heldin_multitask": {}}
      mt_path = world.checkpoint_path(workdir, size, kind, "multitask")
      mt = models.load_checkpoint(mt_path)[1] if models.is_complete(mt_path) else None
      for c in T.HELDIN_CATEGORIES:
        tasks = T.heldin_tasks(c)
        r["heldin_base"][c] = probe.category_accuracy(cfg, base, tasks, split)
        _, ex = models.load_checkpoint(world.checkpoint_path(workdir, size, kind, "expert", c))
        r["heldin_expert"][c] = probe.category_accuracy(cfg, ex, tasks, split)
        if mt is not None:
          r["heldin_multitask"][c] = probe.category_accuracy(cfg, mt, tasks, split)
      r["expert_over_base"] = float(np.mean([r["heldin_expert"][c] / max(r["heldin_base"][c], 1e-9)
                                             for c in T.HELDIN_CATEGORIES]))
      for k in ("heldout_base", "heldin_base", "heldin_expert", "heldin_multitask"):
        if r[k]:
          r[k + "_mean"] = float(np.mean(list(r[k].values())))
      res[size][kind] = r
      print(f"{size}/{kind}: held-out base {r['heldout_base_mean']:.3f}, held-in base "
            f"{r['heldin_base_mean']:.3f}, expert {r['heldin_expert_mean']:.3f} "
            f"(ratio {r['expert_over_base']:.2f}), multitask {r.get('heldin_multitask_mean', float('nan')):.3f}",
            flush=True)
  return res


def heldout_bases(workdir, sizes, split) -> dict:
  """Held-out mean (over categories) of both bases per size on `split`."""
  import mergejax.tasks as T  # pylint: disable=g-import-not-at-top
  from mergejax import models, world  # pylint: disable=g-import-not-at-top
  from mergejax.training import probe  # pylint: disable=g-import-not-at-top
  res = {}
  for size in sizes:
    for kind in world.KINDS:
      cfg, base = models.load_checkpoint(world.checkpoint_path(workdir, size, kind, "base"))
      cats = {c: probe.category_accuracy(cfg, base, T.heldout_tasks(c), split) for c in T.HELDOUT_CATEGORIES}
      res.setdefault(size, {})[kind] = {"heldout_base": cats, "heldout_base_mean": float(np.mean(list(cats.values())))}
      print(f"{split}: {size}/{kind}: held-out base {res[size][kind]['heldout_base_mean']:.3f} ("
            + ", ".join(f"{c} {v:.3f}" for c, v in cats.items()) + ")", flush=True)
  return res


def targets(checks, sizes) -> dict:
  """The issue's three targets, each printed as one line with its numbers and met / NOT met."""
  out = {}
  for size in sizes:
    for kind, r in checks[size].items():
      ok = r["expert_over_base"] >= 1.5
      out[f"expert_over_base/{size}/{kind}"] = ok
      print(f"target expert/base >= 1.5 at {size}/{kind}: {r['expert_over_base']:.2f} "
            f"{'met' if ok else 'NOT met'}")
    pt, it = (checks[size][k]["heldout_base_mean"] for k in ("pretrained", "instruction_tuned"))
    ok = it - pt >= 0.03
    out[f"it_beats_pt/{size}"] = ok
    print(f"target IT > PT held-out at {size}: {it:.3f} vs {pt:.3f} (+{100 * (it - pt):.1f} points) "
          f"{'met' if ok else 'NOT met'}")
  for small, big in zip(sizes, sizes[1:]):
    for kind in checks[small]:
      a, b = checks[small][kind], checks[big][kind]
      for what in ("heldin_expert_mean", "heldout_base_mean"):
        ok = b[what] > a[what]
        out[f"larger_better/{big}>{small}/{kind}/{what}"] = ok
        print(f"target {big} > {small} ({kind}, {what}): {b[what]:.3f} vs {a[what]:.3f} "
              f"{'met' if ok else 'NOT met'}")
  return out


def main(argv):
  del argv
  report = {"machine": _machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
  if not _SKIP_SPEED.value:
    report["speed"] = speed(_SPEED_SIZES.value)
  if not _SPEED_ONLY.value:
    from mergejax import world  # pylint: disable=g-import-not-at-top
    wd = pathlib.Path(_WORKDIR.value)
    if _FRESH.value and wd.exists():
      shutil.rmtree(wd)
    t = time.perf_counter()
    summary = world.build_world(wd, tuple(_SIZES.value), progress=False)
    report["build_seconds"] = time.perf_counter() - t
    report["build_machine"] = _machine()
    per_size = {}
    for s in _SIZES.value:
      rows = [r for r in summary["runs"] if r["size"] == s and not r.get("skipped")]
      if rows:
        per_size[s] = {"train_seconds": sum(r["seconds"] for r in rows),
                       "tokens_per_s": float(np.median([r["tokens_per_s"] for r in rows])),
                       "runs": len(rows)}
    report["build_per_size"] = per_size
    report["data_seconds"] = sum(r.get("data_seconds", 0.0) for r in summary["runs"])
    report["train_flops"] = summary["train_flops"]
    print(f"build: {report['build_seconds']:.0f} s for {len(summary['runs'])} runs "
          f"(data {report['data_seconds']:.0f} s); {per_size}", flush=True)
    print(f"train compute: {summary['train_flops']:.3e} FLOPs "
          "(sum over runs of steps x tokens/step x FLOPs/token)", flush=True)
    t = time.perf_counter()
    report["paper_checks"] = measure(wd, _SIZES.value, _SPLIT.value)
    report["targets"] = targets(report["paper_checks"], _SIZES.value)
    for split in _HELDOUT_SPLITS.value:
      if split != _SPLIT.value:
        report[f"heldout_bases_{split}"] = heldout_bases(wd, _SIZES.value, split)
    report["measure_seconds"] = time.perf_counter() - t
  pathlib.Path(_OUT.value).write_text(json.dumps(report, indent=2) + "\n")
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  flags.FLAGS.set_default("verbosity", -1)
  app.run(main)
