"""Shared builders for checkpoint tests (no tests here): HF-style safetensors dirs and orbax dirs."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Mapping

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

BF16 = np.dtype(ml_dtypes.bfloat16)

SHAPES = {
    "model.embed_tokens.weight": (64, 16),
    "model.layers.0.mlp.down_proj.weight": (16, 40),
    "model.layers.0.self_attn.q_proj.weight": (16, 16),
    "model.layers.0.input_layernorm.weight": (16,),
    "model.norm.weight": (16,),
    "lm_head.weight": (64, 16),
    "model.rotary.inv_freq_count": (3,),  # a non-float leaf (int32)
}


def random_tree(seed: int, base: Mapping[str, np.ndarray] | None = None, scale: float = 0.05,
                dtype=BF16) -> dict[str, np.ndarray]:
  """A random model; with ``base``, base + scale * noise (an 'expert' of that base)."""
  r = np.random.default_rng(seed)
  out = {}
  for k, s in SHAPES.items():
    if k.endswith("_count"):
      out[k] = np.arange(3, dtype=np.int32) + 7
      continue
    x = r.standard_normal(s).astype(np.float32)
    if base is not None:
      x = np.asarray(base[k], np.float32) + scale * x
    out[k] = x.astype(dtype)
  return out


def write_hf(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], shards: int = 1,
             sidecars: bool = True) -> pathlib.Path:
  """An HF model directory written with the reference safetensors writer (index when shards > 1)."""
  path = pathlib.Path(path)
  path.mkdir(parents=True)
  names = sorted(tensors)
  if shards == 1:
    save_file({k: np.ascontiguousarray(tensors[k]) for k in names}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
  else:
    weight_map = {}
    for i in range(shards):
      part = names[i::shards]
      fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
      save_file({k: np.ascontiguousarray(tensors[k]) for k in part}, str(path / fname), metadata={"format": "pt"})
      weight_map.update({k: fname for k in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  if sidecars:
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    (path / "tokenizer_config.json").write_text("{}")
    (path / "generation_config.json").write_text("{}")
  return path


def write_world(root: str | os.PathLike, n_experts: int = 3, shards: int = 1, dtype=BF16):
  """base + experts as HF dirs under ``root``; returns (base_path, [expert paths], trees)."""
  root = pathlib.Path(root)
  base = random_tree(0, dtype=dtype)
  trees = [base] + [random_tree(i + 1, base=base, dtype=dtype) for i in range(n_experts)]
  paths = [write_hf(root / f"m{i}", t, shards=shards) for i, t in enumerate(trees)]
  return paths[0], paths[1:], trees


def write_orbax(path: str | os.PathLike, tree, sidecar: bool = True) -> pathlib.Path:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, tree)
    ckptr.wait_until_finished()
  if sidecar:
    (path / "model_config.json").write_text(json.dumps({"d_model": 16}))
  return path


def bits(x) -> np.ndarray:
  """The raw bytes of an array (bit-exact comparisons of bf16 and ints)."""
  a = np.ascontiguousarray(np.asarray(x))
  return a.view(np.uint8)
