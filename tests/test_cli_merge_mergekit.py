"""Compatibility with mergekit 0.1.5: HF Llama checkpoints merged by ``mergejax-merge`` with average,
task_arithmetic and ties (scope="tensor", aggregate="mean") equal NumPy transcriptions of mergekit's
``linear``, ``task_arithmetic`` and ``ties`` (weights 1, normalize on for linear/ties, lambda 1,
float32 math, bf16 out), apart from entries exactly at a trim threshold (mergekit keeps exactly k
entries, breaking ties by argsort order; mergejax keeps every entry >= the k-th magnitude).

mergekit's formulas (mergekit/merge_methods/generalized_task_arithmetic.py, sparsify.py, linear.py):

* linear: sum_i w_i x_i / sum_i w_i.
* task_arithmetic: base + sum_i w_i d_i (normalize off by default), d_i = x_i - base.
* ties: d_i <- d_i * topk_mask(|d_i|, k = max(1, int(density n))); sign = (sum_i w_i d_i >= 0) * 2 - 1;
  mask_i = sign(w_i d_i) == sign; base + sum_i w_i d_i mask_i / max(sum_i w_i mask_i, else 1).
"""

import pathlib

import numpy as np
import pytest

from safetensors.numpy import load_file

from mergejax.cli import merge as merge_cli
from test_cli_merge import _cfg

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _tiny_llamas(root: pathlib.Path, n_experts: int = 3):
  cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=96, max_position_embeddings=64)
  torch.manual_seed(0)
  base = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
  paths = [root / "base"]
  base.save_pretrained(paths[0], safe_serialization=True)
  for i in range(n_experts):
    torch.manual_seed(i + 1)
    m = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():
      for p, q in zip(m.parameters(), base.parameters()):
        p.copy_(q + 0.02 * torch.randn_like(q, dtype=torch.float32).to(torch.bfloat16))
    paths.append(root / f"expert{i}")
    m.save_pretrained(paths[-1], safe_serialization=True)
  return paths[0], paths[1:]


def _load(d):
  out = {}
  for f in sorted(pathlib.Path(d).glob("*.safetensors")):
    out.update(load_file(str(f)))
  return out


def mergekit_linear(xs):
  return sum(x for x in xs) / np.float32(len(xs))


def mergekit_task_arithmetic(base, xs):
  return base + sum(x - base for x in xs)


def mergekit_ties(base, xs, density):
  deltas = []
  for x in xs:
    d = (x - base).reshape(-1)
    k = max(1, int(density * d.size))
    top = np.argsort(-np.abs(d), kind="stable")[:k]
    m = np.zeros_like(d)
    m[top] = 1
    deltas.append((d * m).reshape(base.shape))
  sign = (sum(deltas) >= 0).astype(np.float32) * 2 - 1
  masks = [np.sign(d) == sign for d in deltas]
  mixed = sum(d * m for d, m in zip(deltas, masks))
  div = sum(m.astype(np.float32) for m in masks)
  div[div == 0] = 1
  return base + mixed / div


def _at_threshold(base, xs, density):
  """Entries where some expert's |delta| equals that expert's k-th largest |delta| (trim ties)."""
  out = np.zeros(base.shape, bool)
  for x in xs:
    a = np.abs(x - base)
    k = max(1, int(density * a.size))
    kth = np.sort(a.reshape(-1))[::-1][k - 1]
    out |= a == kth
  return out


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
  return _tiny_llamas(tmp_path_factory.mktemp("llama"))


@pytest.mark.parametrize("method", ["average", "task_arithmetic", "ties"])
def test_matches_mergekit_formulas(llamas, tmp_path, method):
  base_p, expert_ps = llamas
  cfg = _cfg(method__name=method)
  density = 0.2
  if method == "ties":
    cfg.method.density, cfg.method.scope, cfg.method.aggregate = density, "tensor", "mean"
  out = merge_cli.merge_checkpoints(None if method == "average" else str(base_p), [str(p) for p in expert_ps],
                                    str(tmp_path / "out"), cfg)
  assert (out / "config.json").exists() and (out / "generation_config.json").exists()
  got = _load(out)
  b32 = {k: np.asarray(v, np.float32) for k, v in _load(base_p).items()}
  xs = [{k: np.asarray(v, np.float32) for k, v in _load(p).items()} for p in expert_ps]
  assert sorted(got) == sorted(b32) and len(got) > 10
  n_thr = n_total = 0
  for k in b32:
    e = [x[k] for x in xs]
    if method == "average":
      want = mergekit_linear(e)
    elif method == "task_arithmetic":
      want = mergekit_task_arithmetic(b32[k], e)
    else:
      want = mergekit_ties(b32[k], e, density)
    want = want.astype(got[k].dtype)
    diff = want.view(np.uint16) != got[k].view(np.uint16)
    if method == "ties":
      thr = _at_threshold(b32[k], e, density)
      n_thr += int((diff & thr).sum())
      diff &= ~thr
    n_total += diff.size
    assert not diff.any(), f"{k}: {int(diff.sum())} entries differ from mergekit's {method}"
  if method == "ties":
    assert n_thr <= 0.01 * n_total  # threshold ties are rare
