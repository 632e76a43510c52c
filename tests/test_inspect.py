"""mergejax-inspect: architecture, vocabulary and tied embeddings of a checkpoint; task-vector statistics
(norm, non-zeros, cosine, sign agreement) streamed leaf by leaf and equal to NumPy's; repeated
differences counted; a one-line summary last."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from mergejax.checkpoints import open_source
from mergejax.cli import inspect as inspect_cli
from test_checkpoints_fixtures import BF16, random_tree, write_hf

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "mergejax.cli.inspect", *args], capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=120)


def _world(tmp_path):
  base = random_tree(0)
  e1 = random_tree(1, base=base)
  e2 = dict(random_tree(2, base=base))
  e2["model.norm.weight"] = base["model.norm.weight"]  # a zero task vector on one leaf
  paths = [write_hf(tmp_path / n, t) for n, t in (("base", base), ("e1", e1), ("e2", e2))]
  cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 64, "num_hidden_layers": 1,
         "tie_word_embeddings": False}
  for p in paths:
    (p / "config.json").write_text(json.dumps(cfg))
  return paths, [base, e1, e2]


def test_task_vector_statistics_equal_numpy(tmp_path):
  paths, trees = _world(tmp_path)
  st = inspect_cli.task_vector_stats([open_source(p) for p in paths])
  floats = [k for k, v in trees[0].items() if v.dtype == BF16]
  flat = lambda t: np.concatenate([np.asarray(t[k], np.float64).reshape(-1) for k in sorted(floats)])
  b, taus = flat(trees[0]), [flat(t) - flat(trees[0]) for t in trees[1:]]
  assert st["leaves"] == len(floats) and st["entries"] == b.size
  np.testing.assert_allclose(st["norm"], [np.linalg.norm(t) for t in taus], rtol=1e-12)
  np.testing.assert_allclose(st["base_norm"], np.linalg.norm(b), rtol=1e-12)
  np.testing.assert_allclose(st["nonzero"], [np.count_nonzero(t) / t.size for t in taus], rtol=1e-12)
  cos = taus[0] @ taus[1] / (np.linalg.norm(taus[0]) * np.linalg.norm(taus[1]))
  np.testing.assert_allclose(st["cosine"][0, 1], cos, rtol=1e-10)
  both = (taus[0] != 0) & (taus[1] != 0)
  np.testing.assert_allclose(st["sign_agreement"][0, 1], (np.sign(taus[0]) == np.sign(taus[1]))[both].mean())
  assert st["nonzero"][1] < 1.0  # the zeroed leaf counts


def test_cli_shows_architecture_statistics_and_ends_with_a_summary(tmp_path):
  paths, _ = _world(tmp_path)
  r = _cli(str(paths[0]))
  assert r.returncode == 0, r.stderr
  out = r.stdout.splitlines()
  assert "  architecture: LlamaForCausalLM (model_type llama, 1 layers)" in out
  assert "  vocabulary: 64 rows" in out and "  tied embeddings: no" in out
  assert out[-1].startswith("summary: LlamaForCausalLM,") and "vocab 64" in out[-1]
  r = _cli(*map(str, paths))
  assert r.returncode == 0, r.stderr
  out = r.stdout.splitlines()
  assert any(l.startswith("task vectors (expert - ") for l in out)
  assert any("cosine between task vectors / sign agreement" in l for l in out)
  assert out[-1].startswith("summary: 3 checkpoints with the same structure; |tau|/|base| ")
  assert "mean sign agreement" in out[-1]


def test_repeated_differences_are_counted_not_listed(tmp_path):
  base = random_tree(0)
  e = {k: (v.astype(np.float32) if v.dtype == BF16 else v) for k, v in random_tree(1, base=base).items()}
  b, x = write_hf(tmp_path / "b", base), write_hf(tmp_path / "x", e)
  r = _cli("--nostats", str(b), str(x))
  assert r.returncode == 1
  lines = [l for l in r.stdout.splitlines() if l.startswith(f"{x}: ")]
  n_float = sum(v.dtype == BF16 for v in base.values())
  assert len(lines) == 4 and lines[-1] == f"{x}: ... and {n_float - 3} more leaves with dtype float32 ({b}: bfloat16)"
  assert r.stdout.splitlines()[-1] == f"summary: {n_float} differences from {b} in 1 checkpoint"
  # Leaves missing from (or extra in) another checkpoint are counted the same way.
  few = write_hf(tmp_path / "few", {k: v for i, (k, v) in enumerate(sorted(base.items())) if i < 2})
  r = _cli("--nostats", str(b), str(few))
  assert r.returncode == 1, r.stderr
  lines = [l for l in r.stdout.splitlines() if l.startswith(f"{few}: ")]
  assert len(lines) == 4 and lines[-1] == f"{few}: ... and {len(base) - 2 - 3} more missing leaves"
