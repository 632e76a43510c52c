r"""Evaluator throughput vs a plain jitted forward pass over the same tokens.

    .venv/bin/python benchmarks/eval_bench.py --size=s --mixture=mj_heldout_rank --repeats=5

Measures, for the built-in decoder with random params on one seqio mixture and split:

* setup: building the ``seqio.Evaluator`` (reading, tokenizing and caching the examples);
* first ``evaluate`` (compiles, and moves the batches to the device once);
* steady ``evaluate(params)`` with *new* params each time (what the study runner does per merge):
  rows/s and tokens/s (rows x padded length), including the metrics; rank classification runs packed
  (each prompt scored once for all its answer choices);
* ``model_outputs(params)``: the same without the metrics;
* every (prompt, choice) row padded to its task's length through a plain ``jax.jit(model.apply)``
  (logits only, nothing else): the floor of scoring rows one by one;
* on an accelerator, model FLOP utilization of scoring,
  :math:`\mathrm{MFU} = \mathrm{tokens/s} \cdot \mathrm{FLOPs/token} / \mathrm{peak}`, with the
  forward FLOPs of :func:`mergejax.models.flops_per_token` and ``--peak_tflops``.

Prints a markdown table row set (copy it into docs/BENCHMARKS.md).
"""

from __future__ import annotations

import datetime
import platform
import time

from absl import app, flags

_SIZE = flags.DEFINE_string("size", "s", "Model size (mergejax.models.SIZES).")
_MIXTURE = flags.DEFINE_string("mixture", "mj_heldout_rank", "seqio mixture (or suite name: heldin, heldout, t0).")
_SPLIT = flags.DEFINE_string("split", "validation", "Split to evaluate.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Steady-state repetitions.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Accelerator peak TFLOP/s for MFU (0: from the device kind).")
_DTYPE = flags.DEFINE_string("dtype", None, "Override the model's compute dtype (e.g. bfloat16).")

_PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 TFLOP/s


def main(argv):
  del argv
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import psutil  # pylint: disable=g-import-not-at-top

  from mergejax import evaluation, models, tasks  # pylint: disable=g-import-not-at-top
  from mergejax.evaluation import suites  # pylint: disable=g-import-not-at-top

  mixture = suites.resolve(_MIXTURE.value)
  over = {"vocab_size": tasks.get_vocabulary().vocab_size}
  if _DTYPE.value:
    over["dtype"] = _DTYPE.value
  cfg = models.get_config(_SIZE.value, **over)
  model = models.Decoder(cfg)
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  init = jax.jit(lambda k: nn.meta.unbox(model.init(k, jnp.zeros((1, 8), jnp.int32))["params"]))
  params = [init(jax.random.key(i)) for i in range(2)]
  adapter = evaluation.builtin_adapter(cfg)

  t = time.perf_counter()
  ev = evaluation.Evaluator(adapter, mixture, _SPLIT.value, batch_size=_BATCH.value)
  setup_s = time.perf_counter() - t
  t = time.perf_counter()
  ev.evaluate(params[0])
  first_s = time.perf_counter() - t

  inf = ev.inference
  preps = [inf.prepare(ev.seqio_evaluator.cached_model_datasets[n]) for n in ev.task_names]
  rows = sum(len(p.indices) for p in preps)
  padded_rows = sum(len(p.batches) * inf.batch_size for p in preps)
  tokens = sum(len(p.batches) * inf.batch_size * p.length for p in preps)
  real_tokens = 0
  for p in preps:
    for b in p.batches:
      real_tokens += int(np.sum(np.asarray(b["i"].addressable_data(0)) != 0))  # approx on 1 process

  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
  for p in preps:  # compile every shape first
    jax.block_until_ready(fwd(params[0], p.batches[0]["i"]))

  def run_score():  # the model outputs alone (no metrics)
    ev.model_outputs(params[0])

  def run_plain():  # a plain forward pass (logits) over the same padded batches
    jax.block_until_ready([fwd(params[0], b["i"]) for p in preps for b in p.batches])

  # Interleaved, so that load from other processes hits all three alike; medians.
  times, score_only, plain = [], [], []
  for r in range(_REPEATS.value):
    for fn, acc in ((lambda: ev.evaluate(params[(r + 1) % 2]), times), (run_score, score_only),
                    (run_plain, plain)):
      t = time.perf_counter()
      out = fn()
      acc.append(time.perf_counter() - t)
      if acc is times:
        res = out
  eval_s = float(np.median(times))
  score_s, plain_s = float(np.median(score_only)), float(np.median(plain))

  dev = jax.devices()[0]
  mfu = ""
  if dev.platform != "cpu":
    peak = _PEAK.value or next((v for k, v in _PEAKS.items() if k in dev.device_kind), 0.0)
    if peak:
      flops = sum(len(p.batches) * inf.batch_size * p.length * models.flops_per_token(cfg, p.length, training=False)
                  for p in preps)
      mfu = f"{100.0 * flops / eval_s / (peak * 1e12):.1f}% (evaluate), " \
            f"{100.0 * flops / plain_s / (peak * 1e12):.1f}% (plain fwd)"

  print(f"# eval_bench {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.node()}, {dev.platform}:{dev.device_kind} x{jax.device_count()}, "
        f"{psutil.cpu_count()} CPUs, load avg {psutil.getloadavg()[0]:.1f}")
  print(f"model {_SIZE.value} ({models.param_count(cfg) / 1e6:.2f}M params, {cfg.dtype}), mixture {mixture} "
        f"[{_SPLIT.value}], {len(preps)} tasks, {rows} rows ({padded_rows} padded), batch {_BATCH.value}, "
        f"{tokens} padded tokens ({real_tokens} non-pad), score {res.score:.2f}")
  print("| measurement | seconds | rows/s | tokens/s | vs plain forward |")
  print("| --- | --- | --- | --- | --- |")
  print(f"| setup (seqio.Evaluator: read, tokenize, cache) | {setup_s:.2f} | | | |")
  print(f"| first evaluate (compile + device transfer) | {first_s:.2f} | | | |")
  for name, s in (("evaluate(params), steady, new params each call", eval_s),
                  ("model_outputs(params): no metrics", score_s),
                  ("plain jitted forward, same batches", plain_s)):
    print(f"| {name} | {s:.3f} | {rows / s:,.0f} | {tokens / s:,.0f} | {s / plain_s:.2f}x |")
  if mfu:
    print(f"MFU: {mfu}")


if __name__ == "__main__":
  app.run(main)
