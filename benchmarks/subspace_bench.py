r"""Time per leaf of the SVD-based methods (tsv_m, iso_c, iso_cts, cart) on one device.

One float32 leaf of ``--size`` x ``--size`` (default 4096 x 4096, a 7B model's attention matrix), base +
``--experts`` experts (base + 0.01 N(0, 1)); each method's kernel is compiled ahead (compile time
reported apart) and run ``--repeats`` times; also one bare ``jnp.linalg.svd`` of the leaf, the unit
these methods are made of (TSV-M: N + 2 SVDs, Iso-C: 1, Iso-CTS: N + 3, CART: N). On a shared CPU the
numbers are *measured under load*: give the load average with them.

    .venv/bin/python benchmarks/subspace_bench.py                       # CPU (JAX_PLATFORMS=cpu)
    .venv/bin/python benchmarks/subspace_bench.py --size=1024 --methods=iso_c
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mergejax import methods

_SIZE = flags.DEFINE_integer("size", 4096, "Leaf is size x size.")
_EXPERTS = flags.DEFINE_integer("experts", 3, "Experts.")
_METHODS = flags.DEFINE_list("methods", ["iso_c", "cart", "tsv_m", "iso_cts"], "Methods to time.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Timed runs per method (minimum reported).")
_OUT = flags.DEFINE_string("out_json", None, "Write the results as JSON here.")


def main(argv):
  del argv
  n, k = _SIZE.value, _EXPERTS.value
  rng = np.random.default_rng(0)
  base = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32) * 0.02)
  experts = tuple(base + jnp.asarray(rng.standard_normal((n, n), dtype=np.float32) * 0.01) for _ in range(k))
  dev = jax.devices()[0]
  res = {"device": f"{dev.platform} {dev.device_kind}", "cpus": os.cpu_count(), "machine": platform.node(),
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "leaf": [n, n], "experts": k, "methods": {}}

  svd = jax.jit(lambda x: jnp.linalg.svd(x, full_matrices=False))
  t = time.perf_counter()
  jax.block_until_ready(svd(base))
  res["one_svd_s_incl_compile"] = time.perf_counter() - t
  t = time.perf_counter()
  jax.block_until_ready(svd(base))
  res["one_svd_s"] = time.perf_counter() - t
  print(f"one SVD of {n}x{n}: {res['one_svd_s']:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)

  for name in _METHODS.value:
    m = methods.get(name)
    kernel = m.kernel
    ctx = m.context(k, 0, "w")
    t = time.perf_counter()
    compiled = kernel.func.lower(base, experts, ctx, {}, out_dtype=jnp.float32, **kernel.keywords).compile()
    compile_s = time.perf_counter() - t
    runs = []
    for _ in range(max(1, _REPEATS.value)):
      t = time.perf_counter()
      jax.block_until_ready(compiled(base, experts, ctx, {}))
      runs.append(time.perf_counter() - t)
    res["methods"][name] = {"compile_s": compile_s, "run_s": runs, "best_s": min(runs),
                            "loadavg_1m": os.getloadavg()[0]}
    print(f"{name}: {min(runs):.1f} s per {n}x{n} leaf ({k} experts), compile {compile_s:.1f} s, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(res, f, indent=2)
  print(json.dumps(res, indent=2))


if __name__ == "__main__":
  app.run(main)
