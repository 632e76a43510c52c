"""Building the embedded world: wall time, training tokens/s per size, and whether the world
behaves like the paper's (rank-classification accuracy through mergejax.evaluation.Evaluator).

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

from absl import app, flags, logging
import numpy as np

_WORKDIR = flags.DEFINE_string("workdir", "runs/world_bench", "World directory.")
_SIZES = flags.DEFINE_list("sizes", ["xs", "s"], "Sizes to build.")
_SPEED_SIZES = flags.DEFINE_list("speed_sizes", ["xs", "s", "m"], "Sizes for the throughput phase.")
_FRESH = flags.DEFINE_bool("fresh", False, "Delete --workdir first (time a full build).")
_SPEED_ONLY = flags.DEFINE_bool("speed_only", False, "Only the throughput phase.")
_SKIP_SPEED = flags.DEFINE_bool("skip_speed", False, "Skip the throughput phase.")
_OUT = flags.DEFINE_string("out", "runs/world_bench.json", "JSON report.")
_SPLIT = flags.DEFINE_string("split", "validation", "Split for the paper checks.")
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


# How the world's runs can share a 2-core CPU host. Each mode is timed in a fresh subprocess (the CPU
# device count and XLA flags are fixed when the backend starts) on the same work: `--mode_steps` train
# steps of every listed run (16 x 128-token rows, random tokens).
_MODES = {
    # (CPU devices, XLA_FLAGS, runs, concurrent?)
    "a_mesh2_sequential": (2, "", ("xs", "s"), False),     # one run after another on a 2-device data mesh
    "one_device_sequential": (1, "", ("xs", "s"), False),  # 1 device, XLA's thread pool over both cores
    "b_sizes_concurrent": (2, "", ("xs", "s"), True),      # xs on device 0 beside s on device 1
    "b_sizes_concurrent_1thread": (2, "--xla_cpu_multi_thread_eigen=false", ("xs", "s"), True),
    "a_mesh2_sequential_ss": (2, "", ("s", "s"), False),   # two runs of one size, one after the other
    "c_same_size_concurrent": (2, "", ("s", "s"), True),   # two runs of one size side by side
}
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "CPU devices for the build (0: one per core, "
                                    "as mergejax-build-world; 1: one run at a time over one device).")
_MODE = flags.DEFINE_string("_mode", "", "Internal: time one training mode (see _MODES) and print JSON.")
_TRAIN_MODES = flags.DEFINE_list("train_modes", [], "Time these training modes side by side "
                                 f"(any of {sorted(_MODES)}; 'all' for every one).")
_MODE_STEPS = flags.DEFINE_integer("mode_steps", 40, "Train steps per run for --train_modes.")
_MODE_REPEATS = flags.DEFINE_integer("mode_repeats", 2, "Rounds over the modes (interleaved).")


def _time_mode(name: str, steps: int) -> dict:
  import threading  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from mergejax import models, training  # pylint: disable=g-import-not-at-top
  n_dev, _, sizes, concurrent = _MODES[name]
  devs = jax.devices()
  assert len(devs) == n_dev, (len(devs), n_dev)
  rng = np.random.default_rng(0)
  b, length = 16, 128
  batch = {"decoder_input_tokens": rng.integers(2, 1024, (b, length)).astype(np.int32),
           "decoder_target_tokens": rng.integers(2, 1024, (b, length)).astype(np.int32),
           "decoder_loss_weights": np.ones((b, length), np.int32),
           "decoder_segment_ids": np.ones((b, length), np.int32),
           "decoder_positions": np.tile(np.arange(length, dtype=np.int32), (b, 1))}
  jobs = []
  for k, size in enumerate(sizes):
    cfg = models.get_config(size, vocab_size=1024, max_len=length)
    mesh = training.data_mesh([devs[k % n_dev]] if concurrent else devs)
    tr = training.get_trainer(cfg, training.OptimConfig(), mesh)
    st, m = tr.step(tr.init_state(k), batch, 1e-3)  # compile outside the timing
    jax.block_until_ready(m)
    jobs.append([tr, st, models.flops_per_token(cfg, length)])

  def go(job):
    for _ in range(steps):
      job[1], m = job[0].step(job[1], batch, 1e-3)
    jax.block_until_ready(m)

  t = time.perf_counter()
  if concurrent:
    ts = [threading.Thread(target=go, args=(j,)) for j in jobs]
    for th in ts:
      th.start()
    for th in ts:
      th.join()
  else:
    for j in jobs:
      go(j)
  dt = time.perf_counter() - t
  tokens = steps * b * length * len(jobs)
  flops = sum(steps * b * length * j[2] for j in jobs)
  return {"mode": name, "seconds": dt, "tokens_per_s": tokens / dt, "model_gflops": flops / dt / 1e9,
          "load": os.getloadavg()[0]}


def train_modes(names, steps, repeats) -> dict:
  """Times each mode in its own subprocess, interleaved over `repeats` rounds; prints a table."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  names = sorted(_MODES) if names == ["all"] else names
  res = {n: [] for n in names}
  for _ in range(repeats):
    for n in names:
      n_dev, xla, _, _ = _MODES[n]
      env = dict(os.environ, XLA_FLAGS=xla, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                 JAX_NUM_CPU_DEVICES=str(n_dev))
      cmd = [sys.executable, __file__, f"--_mode={n}", f"--mode_steps={steps}"]
      out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
      r = json.loads(out.strip().splitlines()[-1])
      res[n].append(r)
      print(f"mode {n}: {r['seconds']:.2f} s, {r['tokens_per_s']:,.0f} tokens/s, "
            f"{r['model_gflops']:.1f} model GFLOP/s (load {r['load']:.1f})", flush=True)
  summary = {n: float(np.median([r["model_gflops"] for r in rs])) for n, rs in res.items()}
  for n, g in summary.items():
    print(f"train mode {n}: median {g:.1f} model GFLOP/s", flush=True)
  return {"runs": res, "median_model_gflops": summary}


class _Accuracy:
  """Rank-classification accuracy (a fraction) per task and per category, through the study's evaluator
  (mj_heldin_rank / mj_heldout_rank: the choice tasks), its data read once per (mixture, split)."""

  def __init__(self):
    self._evaluators = {}

  def __call__(self, cfg, params, mixture: str, split: str):
    from mergejax import evaluation  # pylint: disable=g-import-not-at-top
    adapter = evaluation.builtin_adapter(cfg)
    ev = self._evaluators.get((mixture, split))
    if ev is None:
      ev = self._evaluators[(mixture, split)] = evaluation.Evaluator(adapter, mixture, split)
    res = ev.with_adapter(adapter).evaluate(params)
    return ({t.removesuffix("_rank"): v / 100 for t, v in res.task_scores.items()},
            {c: v / 100 for c, v in res.categories.items()})


def measure(workdir, sizes, split, accuracy) -> dict:
  from mergejax import tasks  # pylint: disable=g-import-not-at-top
  from mergejax import models, world  # pylint: disable=g-import-not-at-top
  res = {}
  for size in sizes:
    res[size] = {}
    for kind in world.KINDS:
      cfg, base = models.load_checkpoint(world.checkpoint_path(workdir, size, kind, "base"))
      r = {"heldout_base": accuracy(cfg, base, "mj_heldout_rank", split)[1],
           "heldin_base": accuracy(cfg, base, "mj_heldin_rank", split)[1], "heldin_expert": {},
           "heldin_multitask": {}}
      mt_path = world.checkpoint_path(workdir, size, kind, "multitask")
      if models.is_complete(mt_path):
        r["heldin_multitask"] = accuracy(cfg, models.load_checkpoint(mt_path)[1], "mj_heldin_rank", split)[1]
      for c in tasks.HELDIN_CATEGORIES:
        _, ex = models.load_checkpoint(world.checkpoint_path(workdir, size, kind, "expert", c))
        r["heldin_expert"][c] = accuracy(cfg, ex, "mj_heldin_rank", split)[1][c]
      r["expert_over_base"] = float(np.mean([r["heldin_expert"][c] / max(r["heldin_base"][c], 1e-9)
                                             for c in tasks.HELDIN_CATEGORIES]))
      for k in ("heldout_base", "heldin_base", "heldin_expert", "heldin_multitask"):
        if r[k]:
          r[k + "_mean"] = float(np.mean(list(r[k].values())))
      res[size][kind] = r
      print(f"{size}/{kind}: held-out base {r['heldout_base_mean']:.3f}, held-in base "
            f"{r['heldin_base_mean']:.3f}, expert {r['heldin_expert_mean']:.3f} "
            f"(ratio {r['expert_over_base']:.2f}), multitask {r.get('heldin_multitask_mean', float('nan')):.3f}",
            flush=True)
  return res


def heldout_bases(tasks_report, sizes, split) -> dict:
  """Held-out mean (over categories) of both bases per size on `split`, from the per-task accuracies
  of :func:`heldout_tasks` (no second evaluation)."""
  from mergejax import tasks  # pylint: disable=g-import-not-at-top
  from mergejax import world  # pylint: disable=g-import-not-at-top
  res = {}
  for size in sizes:
    for kind in world.KINDS:
      row = tasks_report[split][size][kind]
      cats = {c: float(np.mean([row[t]["accuracy"] for t in tasks.heldout_tasks(c)])) for c in tasks.HELDOUT_CATEGORIES}
      res.setdefault(size, {})[kind] = {"heldout_base": cats, "heldout_base_mean": float(np.mean(list(cats.values())))}
      print(f"{split}: {size}/{kind}: held-out base {res[size][kind]['heldout_base_mean']:.3f} ("
            + ", ".join(f"{c} {v:.3f}" for c, v in cats.items()) + ")", flush=True)
  return res


# Held-out tasks that must be answerable: the instruction-tuned base of every size more than 2 standard
# errors above chance on every reported split.
_ANSWERABLE = ("mj_nli_cb", "mj_wsd_gloss")


def heldout_tasks(workdir, sizes, splits, accuracy) -> dict:
  """Per-task held-out accuracy of both bases with its standard error sqrt(p (1 - p) / n) and chance
  (1 / number of choices), per split; prints one line per (split, size, kind)."""
  from mergejax import tasks  # pylint: disable=g-import-not-at-top
  from mergejax import models, world  # pylint: disable=g-import-not-at-top
  res = {}
  for size in sizes:
    for kind in world.KINDS:
      cfg, base = models.load_checkpoint(world.checkpoint_path(workdir, size, kind, "base"))
      for split in splits:
        row = {}
        per_task = accuracy(cfg, base, "mj_heldout_rank", split)[0]
        for t in tasks.heldout_tasks():
          exs = tasks.examples(t, split)
          p = per_task[t]
          row[t] = {"accuracy": p, "se": float(np.sqrt(p * (1 - p) / len(exs))), "n": len(exs),
                    "chance": 1.0 / len(exs[0].choices)}
        res.setdefault(split, {}).setdefault(size, {})[kind] = row
        print(f"{split}: {size}/{kind}: " + ", ".join(
            f"{t.removeprefix('mj_')} {r['accuracy']:.3f}+-{r['se']:.3f}" for t, r in row.items()), flush=True)
  return res


def answerable_targets(tasks_report, sizes) -> dict:
  """mj_nli_cb and mj_wsd_gloss: the IT base (every size) more than 2 SE above chance, per split."""
  out = {}
  for split, by_size in tasks_report.items():
    for size in sizes:
      for t in _ANSWERABLE:
        r = by_size[size]["instruction_tuned"][t]
        z = (r["accuracy"] - r["chance"]) / max(r["se"], 1e-9)
        ok = z > 2
        out[f"answerable/{t}/{size}/{split}"] = ok
        print(f"target {t} IT base above chance at {size} ({split}): {r['accuracy']:.3f} vs chance "
              f"{r['chance']:.3f}, {z:.1f} SE {'met' if ok else 'NOT met'}")
  return out


def targets(checks, sizes) -> dict:
  """The world's targets (docs/WORLD.md), each printed as one line with its numbers and met / NOT met."""
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
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO (absl ignores set_default)
  if _MODE.value:
    print(json.dumps(_time_mode(_MODE.value, _MODE_STEPS.value)))
    return
  if not _TRAIN_MODES.value:  # build like mergejax-build-world: one CPU device per core
    from mergejax import sharding  # pylint: disable=g-import-not-at-top
    sharding.split_host_cpu(_CPU_DEVICES.value)
  report = {"machine": _machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
  if _TRAIN_MODES.value:
    report["train_modes"] = train_modes(_TRAIN_MODES.value, _MODE_STEPS.value, _MODE_REPEATS.value)
    pathlib.Path(_OUT.value).write_text(json.dumps(report, indent=2) + "\n")
    return
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
    accuracy = _Accuracy()
    report["paper_checks"] = measure(wd, _SIZES.value, _SPLIT.value, accuracy)
    report["targets"] = targets(report["paper_checks"], _SIZES.value)
    splits = list(dict.fromkeys([_SPLIT.value] + list(_HELDOUT_SPLITS.value)))
    report["heldout_tasks"] = heldout_tasks(wd, _SIZES.value, splits, accuracy)
    for split in _HELDOUT_SPLITS.value:
      if split != _SPLIT.value:
        report[f"heldout_bases_{split}"] = heldout_bases(report["heldout_tasks"], _SIZES.value, split)
    report["targets"].update(answerable_targets(report["heldout_tasks"], _SIZES.value))
    report["measure_seconds"] = time.perf_counter() - t
  pathlib.Path(_OUT.value).write_text(json.dumps(report, indent=2) + "\n")
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
