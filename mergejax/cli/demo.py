"""mergejax-demo: merges small built-in pytrees with every method and prints what each one did.

Three "experts" are fine-tuned copies of a base: each moves its own block of parameters, and all of
them move a shared block in conflicting directions. The table shows, per method, how far the merge
moved from the base, how much of each expert's task vector it kept (cosine), and how the conflict
block was resolved.
"""

from __future__ import annotations

import time

import numpy as np
from absl import flags, logging

import mergejax
from mergejax import cli
from mergejax import methods

_SEED = flags.DEFINE_integer("seed", 0, "Seed for the demo models and DARE's masks.")

DEMO_METHODS = [
    ("average", {}),
    ("task_arithmetic", {"lam": 0.5}),
    ("ties", {"density": 0.2, "lam": 1.0}),
    ("ties", {"density": 0.2, "lam": 1.0, "scope": "tensor"}),
    ("dare_linear", {"drop_rate": 0.9, "lam": 0.5}),
    ("dare_ties", {"drop_rate": 0.9, "lam": 1.0}),
]


def demo_models(seed: int, n_experts: int = 3, width: int = 96):
  """A base and experts: expert t moves block t strongly and the shared block with sign (-1)^t."""
  rng = np.random.default_rng(seed)
  base = {"layer": {"kernel": rng.normal(size=(width, width)).astype(np.float32),
                    "bias": np.zeros((width,), np.float32)},
          "step": np.int32(1000)}
  block = width // (n_experts + 1)
  experts = []
  for t in range(n_experts):
    tau = rng.normal(size=(width, width)).astype(np.float32) * 0.01
    tau[:, t * block:(t + 1) * block] += rng.normal(size=(width, block)).astype(np.float32) * 0.5
    tau[:, n_experts * block:] += (-1) ** t * 0.3
    experts.append({"layer": {"kernel": base["layer"]["kernel"] + tau,
                              "bias": rng.normal(size=(width,)).astype(np.float32) * 0.1},
                    "step": np.int32(3000)})
  return base, experts, block


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  base, experts, block = demo_models(_SEED.value)
  taus = [e["layer"]["kernel"] - base["layer"]["kernel"] for e in experts]
  n = len(experts)
  print(f"mergejax {mergejax.__version__}: merging {n} experts of a {base['layer']['kernel'].shape} layer.")
  print(f"Expert t fine-tuned columns [{block}t, {block}(t+1)); all of them pushed columns {n * block}+ "
        "in conflicting directions (+0.3, -0.3, +0.3).\n")
  header = (f"{'method':<16}{'hyperparameters':<34}{'|merged-base|':>14}{'nonzero Δ':>11}"
            + "".join(f"{'cos(τ' + str(t) + ')':>9}" for t in range(n)) + f"{'conflict Δ':>12}{'ms':>8}")
  print(header)
  print("-" * len(header))
  for name, hp in DEMO_METHODS:
    method = methods.get(name, **hp)
    t0 = time.perf_counter()
    merged = mergejax.merge(base, experts, method, seed=_SEED.value)
    ms = (time.perf_counter() - t0) * 1e3
    delta = np.asarray(merged["layer"]["kernel"], np.float64) - base["layer"]["kernel"]
    cos = [float((delta * tau).sum() / (np.linalg.norm(delta) * np.linalg.norm(tau) + 1e-12)) for tau in taus]
    conflict = float(delta[:, n * block:].mean())
    hps = ", ".join(f"{k}={v}" for k, v in hp.items()) or "-"
    print(f"{name:<16}{hps:<34}{np.abs(delta).mean():>14.4f}{(delta != 0).mean():>10.0%} "
          + "".join(f"{c:>9.2f}" for c in cos) + f"{conflict:>12.3f}{ms:>8.0f}")
    assert int(merged["step"]) == int(base["step"]), "non-float leaves come from the base"
  print("\nReading the table: average and task arithmetic move every entry and let the conflicting pushes"
        " cancel (+0.3 -0.3 +0.3); TIES keeps only the top 20% of each task vector (|merged-base| counts"
        " the rest as 0), elects one sign per entry and averages the agreeing experts; DARE drops 90% of"
        " each task vector at random and rescales the survivors by 10x. The integer 'step' leaf is the"
        " base's, unchanged.")


def run():
  cli.run_main(main)


if __name__ == "__main__":
  run()
