"""Times every merge method on an in-memory ~100M-parameter bf16 pytree with 4 experts.

Runs on JAX's default backend: CPU here, a GPU when one is lent.

Prints, per method: wall time after compile (best of --repeats), effective GB/s (bytes of base and
experts read plus output written, over time), the ratio to task_arithmetic, and that rate as a share of
the host's numpy copy bandwidth and of the default JAX device's copy bandwidth (on a GPU: issue 3's
"achieved HBM bandwidth" of the whole merge, which bounds the kernels' from below). Usage:

  python benchmarks/methods_bench.py [--layers=6 --d_model=1024 --vocab=16384 --experts=4]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import mergejax
from mergejax import methods


def transformer_like(d: int, layers: int, vocab: int, ff_mult: float = 2.75) -> dict[str, tuple[int, ...]]:
  ff = int(d * ff_mult) // 128 * 128
  shapes = {"embed": (vocab, d), "final_norm": (d,)}
  for i in range(layers):
    for name in ("q", "k", "v", "o"):
      shapes[f"layer_{i}/attn/{name}"] = (d, d)
    shapes[f"layer_{i}/mlp/gate"] = (d, ff)
    shapes[f"layer_{i}/mlp/up"] = (d, ff)
    shapes[f"layer_{i}/mlp/down"] = (ff, d)
    shapes[f"layer_{i}/attn_norm"] = (d,)
    shapes[f"layer_{i}/mlp_norm"] = (d,)
  return shapes


def make_models(shapes, n_experts: int, seed: int = 0):
  key = jax.random.key(seed)
  base, experts = {}, [{} for _ in range(n_experts)]
  for i, (path, shape) in enumerate(shapes.items()):
    k = jax.random.fold_in(key, i)
    b = (jax.random.normal(k, shape, jnp.float32) * 0.02)
    base[path] = b.astype(jnp.bfloat16)
    for t in range(n_experts):
      d = jax.random.normal(jax.random.fold_in(k, t + 1), shape, jnp.float32) * 0.002
      experts[t][path] = (b + d).astype(jnp.bfloat16)
  jax.block_until_ready((base, experts))
  return base, experts


def copy_bandwidth_gbs(nbytes: int = 256 << 20, repeats: int = 5) -> float:
  src = np.ones(nbytes // 4, np.float32)
  dst = np.empty_like(src)
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - t0)
  return 2 * nbytes / best / 1e9


def device_copy_bandwidth_gbs(nbytes: int = 256 << 20, repeats: int = 10) -> float:
  """Read + write bandwidth of a jitted elementwise pass over ``nbytes`` on JAX's default device (on a
  GPU: the HBM copy bandwidth the merge kernels are measured against; XOR so XLA cannot elide it)."""
  x = jnp.zeros((nbytes // 4,), jnp.uint32)
  f = jax.jit(lambda v: v ^ jnp.uint32(1))
  jax.block_until_ready(f(x))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(x))
    best = min(best, time.perf_counter() - t0)
  return 2 * nbytes / best / 1e9


def time_method(base, experts, method, repeats: int) -> float:
  # Kernel throughput: inputs are known finite, so no NaN/Inf check (mergejax.merge's default adds one).
  merge = lambda seed: mergejax.merge(base, experts, method, seed=seed, allow_nonfinite=True)  # noqa: E731
  jax.block_until_ready(merge(0))  # compile
  best = float("inf")
  for r in range(repeats):
    t0 = time.perf_counter()
    out = merge(r)
    jax.block_until_ready(out)
    best = min(best, time.perf_counter() - t0)
    del out
  return best


METHODS = [
    ("average", {}),
    ("task_arithmetic", {"lam": 0.4}),
    ("ties", {"density": 0.2, "scope": "global"}),
    ("ties", {"density": 0.2, "scope": "tensor"}),
    ("dare_linear", {"drop_rate": 0.9}),
    ("dare_ties", {"drop_rate": 0.9}),
    ("dare_ties", {"drop_rate": 0.8, "density": 0.2}),
]


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--layers", type=int, default=6)
  ap.add_argument("--d_model", type=int, default=1024)
  ap.add_argument("--vocab", type=int, default=16384)
  ap.add_argument("--experts", type=int, default=4)
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()

  shapes = transformer_like(args.d_model, args.layers, args.vocab)
  n_params = sum(int(np.prod(s)) for s in shapes.values())
  base, experts = make_models(shapes, args.experts)
  nbytes = n_params * 2 * (args.experts + 2)  # bf16: base + experts read, output written
  bw, dev_bw = copy_bandwidth_gbs(), device_copy_bandwidth_gbs()
  print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} ({jax.default_backend()}: {jax.devices()[0].device_kind}), "
        f"load avg {os.getloadavg()[0]:.1f}")
  print(f"# model: {n_params / 1e6:.1f}M bf16 params in {len(shapes)} leaves, {args.experts} experts; "
        f"numpy copy bandwidth {bw:.2f} GB/s, {jax.default_backend()} device copy bandwidth {dev_bw:.2f} GB/s")
  print("| method | hyperparameters | time (s) | GB/s | % of numpy copy bw | % of device copy bw | x task_arithmetic |")
  print("|---|---|---|---|---|---|---|")
  times = {}
  for name, hp in METHODS:
    t = time_method(base, experts, methods.get(name, **hp), args.repeats)
    times[(name, tuple(hp.items()))] = t
    ta = times.get(("task_arithmetic", (("lam", 0.4),)))
    gbs = nbytes / t / 1e9
    rel = f"{t / ta:.2f}" if ta else "-"
    hps = ", ".join(f"{k}={v}" for k, v in hp.items()) or "-"
    print(f"| {name} | {hps} | {t:.3f} | {gbs:.2f} | {100 * gbs / bw:.0f}% | {100 * gbs / dev_bw:.0f}% | {rel} |",
          flush=True)


if __name__ == "__main__":
  main()
