r"""PEFT LoRA adapters as full models: a base Source with each adapted weight replaced, leaf by leaf when
read, by what PEFT's ``merge_and_unload()`` writes.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``.bin``) with
tensors ``base_model.model.<module>.lora_A.weight`` (r, in) and ``.lora_B.weight`` (out, r) for linear
layers, ``.lora_embedding_A`` (r, vocab) and ``.lora_embedding_B`` (dim, r) for embeddings, optional
``.lora_B.bias`` (``lora_bias``), and full replacement tensors ``base_model.model.<name>`` for
``modules_to_save``. For each adapted module (PEFT ``lora.Linear.get_delta_weight`` / ``merge``):

.. math::
   s = \alpha / r \ (\texttt{use\_rslora}: \alpha / \sqrt r),\qquad
   \Delta = \mathrm{f32}(B A)\cdot s \ (\text{transposed for fan\_in\_fan\_out and embeddings}),\qquad
   W' = \mathrm{cast}_{W}(\mathrm{f32}(W) + \Delta)\ \ (\text{embeddings: } + \mathrm{f32}(\mathrm{cast}_W(\Delta)))

with r and alpha from ``rank_pattern`` / ``alpha_pattern`` where a pattern matches the module name
(PEFT's ``(.*\.)?pattern$``). PEFT loads adapter weights in float32 (``autocast_adapter_dtype``), so
the product is a float32 matrix product whatever the adapter's stored dtype; here it is numpy's float32
``matmul`` (BLAS), which on the development machine sums in the same order as torch's (bit-identical on
the tested shapes; another BLAS may differ by an ulp of the float32 product). Weights keep the base's
dtype, as ``merge_and_unload`` leaves them.
DoRA (``use_dora``), convolution LoRA and other PEFT types are refused with one line.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
from typing import Any

import numpy as np

from mergejax.checkpoints.base import CheckpointError
from mergejax.checkpoints.mapped import MappedSource, host_leaf

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."


def is_lora_adapter(path: str | os.PathLike) -> bool:
  p = pathlib.Path(path)
  return p.is_dir() and (p / CONFIG_NAME).is_file() and any((p / w).is_file() for w in WEIGHT_NAMES)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
  for key in patterns:
    if re.match(rf"(.*\.)?({key})$", module):
      return patterns[key]
  return default


def _adapter_tensors(path: pathlib.Path):
  from mergejax.checkpoints.safetensors import SafetensorsSource  # pylint: disable=g-import-not-at-top
  from mergejax.checkpoints.torch_bin import TorchBinSource  # pylint: disable=g-import-not-at-top
  for w in WEIGHT_NAMES:
    f = path / w
    if f.is_file():
      return f, (SafetensorsSource(f) if w.endswith(".safetensors") else TorchBinSource(f))
  raise CheckpointError(f"{path}: LoRA adapter has no {' or '.join(WEIGHT_NAMES)}")


class LoraAdapter:
  """A PEFT LoRA adapter directory: its config and, per adapted module, the factors and the scale."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    cfg_file = self.path / CONFIG_NAME
    try:
      cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
      raise CheckpointError(f"{cfg_file}: unreadable adapter config ({type(e).__name__}: {e})") from None
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
      raise CheckpointError(f"{cfg_file}: PEFT type {peft_type} is not supported (only LoRA adapters)")
    if cfg.get("use_dora"):
      raise CheckpointError(f"{cfg_file}: DoRA adapters (use_dora) are not supported")
    for key in ("layer_replication", "target_parameters"):
      if cfg.get(key):
        raise CheckpointError(f"{cfg_file}: LoRA option {key} is not supported")
    self.config = cfg
    self.base_model = cfg.get("base_model_name_or_path")
    self.file, self._src = _adapter_tensors(self.path)
    self._specs = {s.path: s for s in self._src.specs()}
    r, alpha = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    self.modules: dict[str, dict[str, Any]] = {}  # module -> {kind, A, B, bias, scale}
    self.replacements: dict[str, str] = {}  # base tensor name -> adapter tensor name
    for name in sorted(self._specs):
      stem = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
      m = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.(weight|bias)", stem) or re.fullmatch(
          r"(.+)\.(lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?", stem)
      if m:
        module, part = m.group(1), m.group(2)
        entry = self.modules.setdefault(module, {"kind": "embedding" if "embedding" in part else "linear"})
        key = "bias" if m.lastindex == 3 and m.group(3) == "bias" else part[-1]
        if key == "bias" and part != "lora_B":
          raise CheckpointError(f"{self.file}: unexpected LoRA tensor '{name}'")
        entry[key] = name
        continue
      if "lora_" in stem or "magnitude" in stem:
        raise CheckpointError(f"{self.file}: tensor '{name}' is not a LoRA factor mergejax understands "
                              "(DoRA, convolution or another PEFT variant)")
      # Full tensors: modules_to_save, and embedding weights saved with the adapter (save_embedding_layers,
      # '<module>.base_layer.weight'), which replace the base's before the LoRA product is added.
      self.replacements[stem.replace(".base_layer.", ".")] = name
    for module, e in self.modules.items():
      if "A" not in e or "B" not in e:
        raise CheckpointError(f"{self.file}: module '{module}' has only one LoRA factor")
      a, b = self._specs[e["A"]], self._specs[e["B"]]
      if len(a.shape) != 2 or len(b.shape) != 2:
        raise CheckpointError(f"{self.file}: LoRA factors of '{module}' are {a.shape} and {b.shape}: only linear and "
                              "embedding LoRA are supported (not convolutions)")
      rank = a.shape[0] if e["kind"] == "linear" else a.shape[0]
      if b.shape[1] != rank:
        raise CheckpointError(f"{self.file}: LoRA factors of '{module}' disagree on the rank ({a.shape}, {b.shape})")
      r_m = _pattern_value(rank_pattern, module, r)
      a_m = _pattern_value(alpha_pattern, module, alpha)
      if int(r_m) != rank:
        raise CheckpointError(f"{self.file}: module '{module}' has rank {rank} but {CONFIG_NAME} says r={r_m}")
      e["scale"] = float(a_m) / (math.sqrt(r_m) if cfg.get("use_rslora") else float(r_m))
      e["transpose"] = e["kind"] == "embedding" or bool(cfg.get("fan_in_fan_out"))

  def _f32(self, name: str) -> np.ndarray:
    return np.asarray(host_leaf(self._src, name), np.float32)

  def delta(self, module: str) -> np.ndarray:
    """float32 Delta of ``module`` (shaped like its weight), as PEFT's get_delta_weight in float32."""
    e = self.modules[module]
    prod = self._f32(e["B"]) @ self._f32(e["A"])
    if e["transpose"]:
      prod = prod.T
    return prod * np.float32(e["scale"])

  def apply(self, base: Any, name: str | None = None) -> MappedSource:
    """``base`` (a Source) with this adapter merged into it, leaf by leaf when read."""
    specs = {s.path: s for s in base.specs()}
    transforms = {}

    def before_lora(path: str) -> np.ndarray:  # the base's tensor, or the adapter's full copy of it
      src = self.replacements.get(path)
      return host_leaf(base, path) if src is None else np.asarray(host_leaf(self._src, src)).astype(specs[path].dtype)

    for module, e in self.modules.items():
      w = f"{module}.weight"
      if w not in specs:
        raise CheckpointError(f"{self.file}: LoRA targets '{w}', which {base.name} does not have")
      shape = self._specs[e["B"]].shape[0], self._specs[e["A"]].shape[1]
      if e["transpose"]:
        shape = shape[::-1]
      if specs[w].shape != shape:
        raise CheckpointError(f"{self.file}: LoRA for '{w}' makes shape {shape}, {base.name} has {specs[w].shape}")
      # PEFT adds a linear layer's float32 Delta to the weight (one rounding) and an embedding's Delta cast
      # to the weight's dtype first (lora.Embedding.merge: ``delta.to(orig_dtype)``).
      transforms[w] = (specs[w], lambda w=w, module=module, s=specs[w], e=e: _add(
          before_lora(w), self.delta(module), s.dtype, round_delta=e["kind"] == "embedding"))
      if "bias" in e:
        bname = f"{module}.bias"
        if bname not in specs:
          raise CheckpointError(f"{self.file}: LoRA has a bias for '{module}', which has no bias in {base.name}")
        transforms[bname] = (specs[bname], lambda bname=bname, e=e, s=specs[bname]: _add(
            before_lora(bname), self._f32(e["bias"]) * np.float32(e["scale"]), s.dtype))
    for target, src_name in self.replacements.items():
      if target not in specs:
        raise CheckpointError(f"{self.file}: adapter tensor '{src_name}' replaces '{target}', which {base.name} "
                              "does not have")
      ts = self._specs[src_name]
      if ts.shape != specs[target].shape:
        raise CheckpointError(f"{self.file}: adapter tensor '{src_name}' has shape {ts.shape}, {base.name}'s "
                              f"'{target}' has {specs[target].shape}")
      if target not in transforms:
        transforms[target] = (specs[target], lambda target=target: before_lora(target))
    return MappedSource(base, transforms, name=name or str(self.path))


def _add(w: np.ndarray, delta: np.ndarray, dtype: np.dtype, round_delta: bool = False) -> np.ndarray:
  if round_delta:
    delta = delta.astype(dtype).astype(np.float32)
  return (np.asarray(w, np.float32) + delta).astype(dtype)
