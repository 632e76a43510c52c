r"""Compile time and time per piece of the engine's exact counters (``mergejax/engine/counting.py``).

The statistics passes of the ties family and of Breadcrumbs' band edges count predicates over every
entry: a histogram of small integers (:func:`~mergejax.engine.counting.histograms`, the bucket levels of
``--experts`` experts, ``--buckets`` buckets) and packed indicator counts
(:func:`~mergejax.engine.counting.count_fields`, ``--fields`` indicators), each on one flat piece of
``--piece`` entries, the flat-chunk executor's size. Each program is compiled ahead (compile time
reported apart), checked against NumPy's counts, then timed (best of 5 batches of 50 calls). On a shared
CPU the numbers are *measured under load*: give the load average with them.

    .venv/bin/python benchmarks/counting_bench.py
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mergejax.engine import counting

_PIECE = flags.DEFINE_integer("piece", 1 << 18, "Entries per piece.")
_EXPERTS = flags.DEFINE_integer("experts", 4, "Histogram groups (experts).")
_BUCKETS = flags.DEFINE_integer("buckets", 8, "Histogram buckets per group.")
_FIELDS = flags.DEFINE_list("fields", ["10", "20"], "Indicator counts to time (count_fields).")
_OUT = flags.DEFINE_string("out_json", None, "Write the results as JSON here.")


def _best_ms(fn) -> float:
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(5):
    t = time.perf_counter()
    for _ in range(50):
      r = fn()
    jax.block_until_ready(r)
    best = min(best, (time.perf_counter() - t) / 50)
  return best * 1e3


def _compile_s(fn, *args, **kwargs) -> float:
  t = time.perf_counter()
  fn.lower(*args, **kwargs).compile()
  return time.perf_counter() - t


def main(argv):
  del argv
  n, g, nb = _PIECE.value, _EXPERTS.value, _BUCKETS.value
  rng = np.random.default_rng(0)
  res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(), "piece": n,
         "loadavg_1m_start": os.getloadavg()[0]}

  bits = max(1, (nb - 1).bit_length())
  values = [rng.integers(0, nb, n).astype(np.uint8) for _ in range(g)]
  codes = counting.pack_codes([jnp.asarray(v) for v in values], bits)
  words_kw = dict(n_groups=g, bits=bits, n_buckets=nb, axis=counting.fold_axis((n,)))
  code_words = counting._code_words  # pylint: disable=protected-access  (the stage to time on its own)
  words = jax.eval_shape(lambda c: code_words(c, **words_kw), codes)
  unpack_kw = dict(n_groups=g, n_fields=nb, total_size=n, local=(n // counting.FOLD,))
  res["histogram"] = {"groups": g, "buckets": nb,  # compiled first: nothing cached yet
                      "compile_code_words_s": _compile_s(code_words, codes, **words_kw),
                      "compile_unpack_counts_s": _compile_s(counting.unpack_counts, words, **unpack_kw)}
  got = np.asarray(counting.histograms(codes, g, bits, nb)).sum(-1)
  want = np.stack([np.bincount(v, minlength=nb) for v in values])
  assert (got == want).all(), "histogram counts differ from NumPy's"
  res["histogram"]["ms_per_piece"] = _best_ms(lambda: counting.histograms(codes, g, bits, nb))
  print(f"histogram ({g} groups, {nb} buckets): {res['histogram']['ms_per_piece']:.3f} ms per piece; compiles "
        f"code words {res['histogram']['compile_code_words_s']:.3f} s, unpack "
        f"{res['histogram']['compile_unpack_counts_s']:.3f} s", flush=True)

  res["count_fields"] = {}
  for nf in (int(f) for f in _FIELDS.value):
    inds = [rng.random(n) < 0.3 for _ in range(nf)]
    fold = counting.field_fold_axis((n,))
    packed = counting.pack_fields([jnp.asarray(i) for i in inds], fold)
    kw = dict(n_fields=nf, total_size=n, local=counting.packed_local_shape((n,), fold))
    r = {"compile_s": _compile_s(counting.count_fields, packed, **kw)}
    got = np.asarray(counting.count_fields(packed, **kw)).sum(-1)
    assert (got == [int(i.sum()) for i in inds]).all(), "indicator counts differ from NumPy's"
    r["ms_per_piece"] = _best_ms(lambda packed=packed, kw=kw: counting.count_fields(packed, **kw))
    res["count_fields"][nf] = r
    print(f"count_fields ({nf} indicators): {r['ms_per_piece']:.3f} ms per piece; compile {r['compile_s']:.3f} s",
          flush=True)
  res["loadavg_1m_end"] = os.getloadavg()[0]
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(res, f, indent=2)


if __name__ == "__main__":
  app.run(main)
