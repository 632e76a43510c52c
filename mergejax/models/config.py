"""The decoder's hyperparameters, the size table, and parameter / FLOP counts."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of :class:`mergejax.models.Decoder` (stored as ``model_config.json``).

  Attributes:
    vocab_size: rows of the (tied) embedding; >= the vocabulary's size (training sets it to the task
      vocabulary's size, rounded up to a multiple of 128).
    d_model: residual width D.
    n_layers: number of transformer blocks.
    n_heads: attention heads H; head_dim = D / H unless ``head_dim`` is set.
    d_ff: SwiGLU hidden width F.
    max_len: longest sequence (training length and the KV-cache length).
    head_dim: per-head width (0: d_model // n_heads).
    rope_base: RoPE wavelength base.
    scan_layers: stack the blocks' parameters under ``layers`` and run them with ``nn.scan``
      (fast compiles for deep models; the parameter tree then has a leading layer axis).
    remat: rematerialize each block in the backward pass (saves activation memory).
    dtype: activation/compute dtype ("float32" or "bfloat16"); logits are always float32.
    param_dtype: parameter dtype.
    name: the size-table row this config came from ("" if custom).
  """

  # The embedded suite's SentencePiece vocabulary (mergejax/tasks/data/mj.model, 1,024 pieces), so the
  # size table's parameter counts are those of the world's checkpoints.
  vocab_size: int = 1024
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  d_ff: int = 256
  max_len: int = 128
  head_dim: int = 0
  rope_base: float = 10_000.0
  scan_layers: bool = False
  remat: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  name: str = ""

  def __post_init__(self):
    for f in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len"):
      if int(getattr(self, f)) <= 0:
        raise ValueError(f"ModelConfig.{f} must be positive, got {getattr(self, f)}")
    if self.head_dim <= 0 and self.d_model % self.n_heads:
      raise ValueError(f"ModelConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
    if self.dims_per_head % 2:
      raise ValueError(f"ModelConfig: head_dim must be even for RoPE, got {self.dims_per_head}")
    for f in ("dtype", "param_dtype"):
      if getattr(self, f) not in ("float32", "bfloat16"):
        raise ValueError(f"ModelConfig.{f} must be 'float32' or 'bfloat16', got {getattr(self, f)!r}")

  @property
  def dims_per_head(self) -> int:
    return self.head_dim if self.head_dim > 0 else self.d_model // self.n_heads

  def replace(self, **kw: Any) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"model_config: unknown field(s) {unknown}")
    return cls(**d)


# Sizes span ~12,500x in parameters. xs and s (4.1x apart, so that the larger one is measurably better
# held-out, docs/WORLD.md) are the embedded world's default sizes (CPU, minutes);
# m and l train on one accelerator; xl and xxl are for pods. vocab_size is replaced by the task
# vocabulary's (padded) size when a model is trained.
SIZES: dict[str, ModelConfig] = {
    "xs": ModelConfig(d_model=48, n_layers=2, n_heads=2, d_ff=128, name="xs"),
    "s": ModelConfig(d_model=96, n_layers=3, n_heads=2, d_ff=256, name="s"),
    "m": ModelConfig(d_model=256, n_layers=4, n_heads=4, d_ff=768, name="m"),
    "l": ModelConfig(d_model=512, n_layers=8, n_heads=8, d_ff=1536, name="l"),
    "xl": ModelConfig(d_model=1024, n_layers=16, n_heads=16, d_ff=3072, scan_layers=True, name="xl"),
    "xxl": ModelConfig(d_model=2048, n_layers=24, n_heads=16, d_ff=6144, scan_layers=True,
                       dtype="bfloat16", name="xxl"),
}


def get_config(name: str, **overrides: Any) -> ModelConfig:
  """The size-table row ``name`` (e.g. "xs"), with optional field overrides."""
  if name not in SIZES:
    raise KeyError(f"unknown model size {name!r}; known: {sorted(SIZES)}")
  return SIZES[name].replace(**overrides) if overrides else SIZES[name]


def param_count(config: ModelConfig) -> int:
  r"""Exact number of parameters.

  .. math:: P = VD + L\,(2D + 4DHd_h + 3DF) + D

  (tied embedding; per block two RMSNorm scales, q/k/v/o projections, SwiGLU's three matrices;
  the final norm).
  """
  d, hd = config.d_model, config.n_heads * config.dims_per_head
  per_layer = 2 * d + 4 * d * hd + 3 * d * config.d_ff
  return config.vocab_size * d + config.n_layers * per_layer + d


def flops_per_token(config: ModelConfig, seq_len: int | None = None, training: bool = True) -> float:
  r"""Model FLOPs per token (PaLM appendix B convention, used for MFU).

  .. math:: \mathrm{FLOPs} = 6N + 12\,L\,H d_h\,T \quad (\text{training; } 2N + 4LHd_hT \text{ forward})

  with N the non-embedding-input parameters (the tied embedding counts once, as the output matmul)
  and T the sequence length (attention scores and the weighted sum of values).
  """
  t = config.max_len if seq_len is None else seq_len
  n = param_count(config)
  attn = 4 * config.n_layers * config.n_heads * config.dims_per_head * t
  fwd = 2 * n + attn
  return float(3 * fwd if training else fwd)
