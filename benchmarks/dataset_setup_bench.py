r"""Building seqio datasets: the tasks' functions traced as written against AutoGraph's rewrite of them.

    .venv/bin/python benchmarks/dataset_setup_bench.py --rounds=3

tf.data rewrites every function mapped over a dataset with AutoGraph before tracing it, unless the
function is marked otherwise. mergejax's tasks mark their preprocessors
(:func:`mergejax.tasks.preprocessors.as_written`) and the evaluator its unpacked feature converter.
Each measurement runs in a fresh process (AutoGraph caches its rewrites per process, so the first
dataset of a process pays the most), the two variants interleaved over ``--rounds``:

* ``evaluator``: ``make_seqio_evaluator(--mixture, "validation")`` and reading its examples once;
* ``stream``: the first batch of a packed training stream of ``--stream_mixture`` (seqio's packing
  needs AutoGraph and keeps it in both variants; only the preprocessors differ).

Prints process CPU seconds per measurement and a markdown row per case (copy it into
docs/BENCHMARKS.md). Both variants build the same examples (``tests/test_tasks.py`` checks it).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

from absl import app, flags

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds of both variants.")
_MIXTURE = flags.DEFINE_string("mixture", "mj_heldout", "Mixture whose evaluator is built.")
_STREAM = flags.DEFINE_string("stream_mixture", "mj_heldin", "Mixture whose training stream is built.")

_CHILD = r"""
import json, sys, time
import seqio
import tensorflow_datasets as tfds
from mergejax.evaluation import evaluator
from mergejax.tasks import registry
from mergejax.training import data
variant, case, mixture = sys.argv[1:4]
registry.register_all()  # (importing mergejax.tasks has registered them already)
if variant == "rewritten":  # undo the marks: every mapped function goes through AutoGraph again
  for name in seqio.TaskRegistry.names():
    task = seqio.TaskRegistry.get(name)  # seqio keeps a Task's preprocessors here (0.0.20)
    task._preprocessor_constructor_args = tuple(getattr(p, "__wrapped__", p)
                                                for p in task._preprocessor_constructor_args)
    task.__dict__.pop("preprocessors", None)
  evaluator._UnpackedFeatureConverter.__call__ = seqio.DecoderFeatureConverter.__call__
t0 = time.process_time()
if case == "evaluator":
  ev = evaluator.make_seqio_evaluator(mixture, "validation")
  rows = sum(1 for ds in ev.cached_model_datasets.values() for _ in tfds.as_numpy(ds))
else:
  rows = len(next(data.batches(mixture, batch_size=16, feature_lengths={"inputs": 96, "targets": 32}, seed=0))
             ["decoder_input_tokens"])
print(json.dumps({"cpu_s": time.process_time() - t0, "rows": rows}))
"""


def _run(variant: str, case: str, mixture: str) -> dict:
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  out = subprocess.run([sys.executable, "-c", _CHILD, variant, case, mixture], env=env, check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(argv):
  del argv
  cases = {"evaluator": _MIXTURE.value, "stream": _STREAM.value}
  times = {(c, v): [] for c in cases for v in ("as_written", "rewritten")}
  rows = {}
  for r in range(_ROUNDS.value):
    for case, mixture in cases.items():
      for variant in (("as_written", "rewritten") if r % 2 == 0 else ("rewritten", "as_written")):
        got = _run(variant, case, mixture)
        times[(case, variant)].append(got["cpu_s"])
        rows.setdefault((case, variant), got["rows"])
        print(f"round {r + 1} {case} {variant}: {got['cpu_s']:.2f} CPU s ({got['rows']} rows)", flush=True)
  for case in cases:
    if rows[(case, "as_written")] != rows[(case, "rewritten")]:
      raise SystemExit(f"{case}: the variants read different row counts")
  print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} cores; process CPU seconds, medians of {_ROUNDS.value} fresh processes\n")
  print("| case | mixture | rows | AutoGraph rewrite | traced as written | saved |")
  print("| --- | --- | --- | --- | --- | --- |")
  for case, mixture in cases.items():
    a, b = statistics.median(times[(case, "rewritten")]), statistics.median(times[(case, "as_written")])
    print(f"| {case} | {mixture} | {rows[(case, 'as_written')]} | {a:.2f} | {b:.2f} | {1 - b / a:.0%} |")


if __name__ == "__main__":
  app.run(main)
