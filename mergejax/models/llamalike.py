r"""One configurable llama-like decoder (flax.linen): Llama 3.x, Mistral, Qwen2/2.5, Qwen3, Gemma 2, Gemma 3
(text) and the built-in PaLM-style decoder are settings of :class:`DecoderConfig`.

One block, with ``x_BxLxD`` the residual stream (the ``post_norms`` are Gemma's sandwich norms)::

    a = Attn(norm_attn(x));  x = x + (norm_post_attn(a) if post_norms else a)
    m = W_down(act(W_gate h) * W_up h) with h = norm_mlp(x);  x = x + (norm_post_mlp(m) if post_norms else m)

Attention: grouped-query (``n_kv_heads`` key/value heads, query head h reads key/value head h // (H/H_kv)),
optional q/k/v/o biases (Qwen2), RMSNorm of each query and key head (Qwen3, Gemma 3), RoPE (rotate-half
convention) with per-layer inverse frequencies (Gemma 3's local and global bases), scores
:math:`s = \mathrm{cap}\tanh((q \cdot k)\,c / \mathrm{cap})` with ``c = query_scale`` (Gemma's
``query_pre_attn_scalar``) and the optional soft cap (Gemma 2), a sliding window per layer (key j is
visible to query i when ``0 <= pos_i - pos_j < window``). RMSNorm is :math:`x / \sqrt{\overline{x^2} + \epsilon}`
times ``w`` or ``(1 + w)`` (Gemma). Logits are float32; Gemma 2 soft-caps them.

Why linen, not nnx: the evaluator's :class:`~mergejax.evaluation.ModelAdapter` needs pure functions of
``(params, ...)`` so that one compiled program serves every set of params of the same shapes (a study
scores hundreds of merged candidates); linen's ``apply({"params": p}, ...)`` is exactly that, while an nnx
module holds its state and would be split and merged on every call. The built-in decoder and the
trainer are linen too.

Parameters are declared flat, under their checkpoint names (:func:`param_shapes`): for the Hugging Face
families the tensor names of ``model.safetensors`` in their file layout (``[out, in]`` projections), so a
checkpoint *is* the params dict and loading it is reading each tensor onto the mesh (no renaming, no
transposes); for the built-in decoder its own orbax paths and layout (``[in, heads, head_dim]``), so its
numbers stay those of :class:`mergejax.models.Decoder`.

Shapes use suffixes: B batch, L (query) length, S key length, D d_model, H heads, G key/value heads,
R = H/G, K head_dim, F d_ff, V vocab.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mergejax.models import decoder as decoder_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class Rope:
  """One set of RoPE inverse frequencies (Hugging Face ``rope_parameters``).

  kind: "default" (theta^(-2i/K)), "linear" (divided by ``factor``), "llama3" (Llama 3.1 smoothing
  between ``low_freq_factor`` and ``high_freq_factor`` wavelengths of ``original_max_len``), or
  "builtin" (the built-in decoder's own float32 expression, kept for identical numbers).
  """

  theta: float = 10_000.0
  kind: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_len: int = 8192


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Everything that fixes the decoder's math (families fill it from their checkpoint configs).

  Attributes:
    family: the family name (``mergejax.models.families``).
    vocab_size, d_model, n_layers, n_heads, n_kv_heads, head_dim, d_ff: sizes.
    activation: "silu" (SwiGLU), "gelu_tanh" (GeGLU, tanh approximation) or "gelu" (exact erf).
    norm_eps: RMSNorm epsilon.
    norm_plus_one: scale by ``1 + w`` (Gemma) instead of ``w``.
    norm_scale_in_float32: multiply by the scale in float32, then cast (Gemma, built-in); otherwise cast
      the normalized input to the compute dtype first, then multiply (Llama, Mistral, Qwen).
    qkv_bias, o_bias, mlp_bias: biases on the attention input / output and MLP projections.
    qk_norm: RMSNorm over head_dim of every query and key head (Qwen3, Gemma 3).
    post_norms: Gemma's norms after attention and after the MLP.
    tie_embeddings: the output projection is the embedding table.
    embed_scale: multiply embeddings by this, rounded to the embedding table's dtype (Gemma: sqrt(D));
      0 for none.
    query_scale: attention score scale (0: head_dim ** -0.5).
    attn_softcap, final_softcap: tanh soft caps of attention scores and logits (0: none).
    logits_scale: float32 factor on the logits (built-in decoder: D ** -0.5).
    windows: per layer sliding window (0: global attention); empty: all global.
    rope_ids: per layer index into ``ropes``; empty: all use ``ropes[0]``.
    ropes: the RoPE frequency sets.
    max_len: the checkpoint's position range (``max_position_embeddings``).
    layout: "hf" (Hugging Face names and ``[out, in]`` weights) or "builtin".
    dtype: compute dtype (the params' dtype after loading); logits are always float32.
  """

  family: str
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  activation: str = "silu"
  norm_eps: float = 1e-6
  norm_plus_one: bool = False
  norm_scale_in_float32: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  post_norms: bool = False
  tie_embeddings: bool = False
  embed_scale: float = 0.0
  query_scale: float = 0.0
  attn_softcap: float = 0.0
  final_softcap: float = 0.0
  logits_scale: float = 1.0
  windows: tuple[int, ...] = ()
  rope_ids: tuple[int, ...] = ()
  ropes: tuple[Rope, ...] = (Rope(),)
  max_len: int = 8192
  layout: str = "hf"
  dtype: str = "float32"

  def __post_init__(self):
    for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff"):
      if int(getattr(self, f)) <= 0:
        raise ValueError(f"DecoderConfig.{f} must be positive, got {getattr(self, f)}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
    for f in ("windows", "rope_ids"):
      if getattr(self, f) and len(getattr(self, f)) != self.n_layers:
        raise ValueError(f"DecoderConfig.{f} has {len(getattr(self, f))} entries for {self.n_layers} layers")
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"unknown activation {self.activation!r}; known: {sorted(_ACTIVATIONS)}")
    if self.layout not in ("hf", "builtin") or self.dtype not in DTYPES:
      raise ValueError(f"bad layout {self.layout!r} or dtype {self.dtype!r}")

  def window(self, i: int) -> int:
    return self.windows[i] if self.windows else 0

  def rope(self, i: int) -> int:
    return self.rope_ids[i] if self.rope_ids else 0

  def replace(self, **kw: Any) -> "DecoderConfig":
    return dataclasses.replace(self, **kw)


_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


# -- parameter names and shapes (the name map) --------------------------------------------------------

def layer_names(cfg: DecoderConfig, i: int) -> dict[str, str]:
  """Role -> parameter name of layer ``i`` (only the roles this config has)."""
  if cfg.layout == "builtin":
    p = f"layer_{i}/"
    return {"attn_norm": p + "attn_norm/scale", "q": p + "attn/query", "k": p + "attn/key", "v": p + "attn/value",
            "o": p + "attn/out", "mlp_norm": p + "mlp_norm/scale", "gate": p + "mlp/gate/kernel",
            "up": p + "mlp/up/kernel", "down": p + "mlp/down/kernel"}
  p = f"model.layers.{i}."
  out = {"attn_norm": p + "input_layernorm.weight", "q": p + "self_attn.q_proj.weight",
         "k": p + "self_attn.k_proj.weight", "v": p + "self_attn.v_proj.weight", "o": p + "self_attn.o_proj.weight",
         "gate": p + "mlp.gate_proj.weight", "up": p + "mlp.up_proj.weight", "down": p + "mlp.down_proj.weight"}
  if cfg.post_norms:  # Gemma: "post_attention_layernorm" is after attention, the MLP has its own pre-norm
    out.update(post_attn_norm=p + "post_attention_layernorm.weight", mlp_norm=p + "pre_feedforward_layernorm.weight",
               post_mlp_norm=p + "post_feedforward_layernorm.weight")
  else:  # Llama: "post_attention_layernorm" is the MLP's pre-norm
    out["mlp_norm"] = p + "post_attention_layernorm.weight"
  if cfg.qkv_bias:
    out.update(q_bias=p + "self_attn.q_proj.bias", k_bias=p + "self_attn.k_proj.bias",
               v_bias=p + "self_attn.v_proj.bias")
  if cfg.o_bias:
    out["o_bias"] = p + "self_attn.o_proj.bias"
  if cfg.mlp_bias:
    out.update(gate_bias=p + "mlp.gate_proj.bias", up_bias=p + "mlp.up_proj.bias", down_bias=p + "mlp.down_proj.bias")
  if cfg.qk_norm:
    out.update(q_norm=p + "self_attn.q_norm.weight", k_norm=p + "self_attn.k_norm.weight")
  return out


def global_names(cfg: DecoderConfig) -> dict[str, str]:
  """Role -> name of the embedding, final norm and (untied) output projection."""
  if cfg.layout == "builtin":
    return {"embed": "embed/embedding", "final_norm": "final_norm/scale"}
  out = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight"}
  if not cfg.tie_embeddings:
    out["lm_head"] = "lm_head.weight"
  return out


def _role_shape(cfg: DecoderConfig, role: str) -> tuple[int, ...]:
  d, f, k, h, g = cfg.d_model, cfg.d_ff, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
  heads = {"q": h, "k": g, "v": g}
  if role in ("embed", "lm_head"):
    return (cfg.vocab_size, d)
  if role in ("q_norm", "k_norm"):
    return (k,)
  if role.endswith("norm"):
    return (d,)
  if cfg.layout == "builtin":
    return {"q": (d, h, k), "k": (d, g, k), "v": (d, g, k), "o": (h, k, d), "gate": (d, f), "up": (d, f),
            "down": (f, d)}[role]
  if role in heads:
    return (heads[role] * k, d)
  if role.endswith("_bias"):
    r = role[:-5]
    return (heads[r] * k,) if r in heads else (d,) if r in ("o", "down") else (f,)
  return {"o": (d, h * k), "gate": (f, d), "up": (f, d), "down": (d, f)}[role]


def param_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
  """Every parameter name -> shape, in checkpoint order (embedding, layers, final norm, output)."""
  out = {}
  g = global_names(cfg)
  out[g["embed"]] = _role_shape(cfg, "embed")
  for i in range(cfg.n_layers):
    for role, name in layer_names(cfg, i).items():
      out[name] = _role_shape(cfg, role)
  out[g["final_norm"]] = _role_shape(cfg, "final_norm")
  if "lm_head" in g:
    out[g["lm_head"]] = _role_shape(cfg, "lm_head")
  return out


# -- math ------------------------------------------------------------------------------------------

def inv_frequencies(rope: Rope, head_dim: int) -> np.ndarray:
  """The K/2 RoPE inverse frequencies (float32) as Hugging Face's ``ROPE_INIT_FUNCTIONS`` compute them."""
  inv_K2 = 1.0 / (rope.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  inv_K2 = inv_K2.astype(np.float32).astype(np.float64)  # the reference computes these in float32
  if rope.kind == "linear":
    inv_K2 = inv_K2 / rope.factor
  elif rope.kind == "llama3":
    low_wavelen = rope.original_max_len / rope.low_freq_factor
    high_wavelen = rope.original_max_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_K2
    scaled = np.where(wavelen > low_wavelen, inv_K2 / rope.factor, inv_K2)
    smooth = (rope.original_max_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_K2 = np.where(medium, smoothed, scaled)
  elif rope.kind != "default":
    raise ValueError(f"unknown RoPE kind {rope.kind!r}")
  return inv_K2.astype(np.float32)


def rope_rotation(rope: Rope, head_dim: int, pos_BxL: jax.Array, table: int = 0) -> tuple[jax.Array, jax.Array]:
  """``(sin, cos)`` of the angles ``pos * inv_freq``, float32 ``[B, L, 1, K/2]`` (``table``:
  :func:`mergejax.models.decoder.rotation`)."""
  if rope.kind == "builtin":
    inv_K2 = decoder_lib.builtin_inv_frequencies(head_dim, rope.theta)
  else:
    inv_K2 = jnp.asarray(inv_frequencies(rope, head_dim))
  return decoder_lib.rotation(pos_BxL, inv_K2, table)


def rms_norm(cfg: DecoderConfig, x: jax.Array, w: jax.Array) -> jax.Array:
  xf = x.astype(jnp.float32)
  y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + cfg.norm_eps)
  if cfg.norm_scale_in_float32:
    scale = w.astype(jnp.float32) + 1.0 if cfg.norm_plus_one else w.astype(jnp.float32)
    return (y * scale).astype(x.dtype)
  scale = w + jnp.ones((), w.dtype) if cfg.norm_plus_one else w
  return scale.astype(x.dtype) * y.astype(x.dtype)


def _softcap(x: jax.Array, cap: float) -> jax.Array:
  return jnp.tanh(x / cap) * cap if cap else x


def window_mask(mask_BxLxS: jax.Array, qpos_BxL: jax.Array, kpos_BxS: jax.Array, window: int) -> jax.Array:
  """Restricts a mask to keys less than ``window`` positions behind the query."""
  if not window:
    return mask_BxLxS
  return mask_BxLxS & (qpos_BxL[:, :, None] - kpos_BxS[:, None, :] < window)


class LlamaLike(nn.Module):
  """Causal decoder: int32 tokens ``[B, L]`` -> float32 logits ``[B, L, V]`` (or ``[B, G, V]`` gathered).

  Call arguments:
    tokens_BxL: token ids.
    positions_BxL: RoPE positions, each in [0, L) (default 0..L-1); while decoding, the cache's.
    mask_BxLxL: boolean attention mask (default causal); sliding windows are applied on top of it,
      measured in positions (so a packed sequence of several rows keeps each row's windows).
    gather_BxG: if given, logits only at these sequence positions (the packed scorer's targets).
    decode: incremental decoding with the "cache" collection (from :func:`init_cache`): the L new tokens
      go at the cache's position and attend to everything before them; call with ``mutable=["cache"]``.
  """

  config: DecoderConfig

  def _w(self, name: str, shape: tuple[int, ...], init=None) -> jax.Array:
    if init is None:
      init = nn.initializers.normal(stddev=shape[-1] ** -0.5 if self.config.layout == "hf" else shape[0] ** -0.5)
    return self.param(name, init, shape, DTYPES[self.config.dtype])

  def _norm(self, name: str, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.config.norm_plus_one else nn.initializers.ones
    return rms_norm(self.config, x, self._w(name, (x.shape[-1],), init))

  def _in_proj(self, names: dict[str, str], role: str, x_BxLxD: jax.Array, heads: int) -> jax.Array:
    cfg = self.config
    dtype = DTYPES[cfg.dtype]
    w = self._w(names[role], _role_shape(cfg, role)).astype(dtype)
    if cfg.layout == "builtin":
      return jnp.einsum("bld,dhk->blhk", x_BxLxD.astype(dtype), w)
    y_BxLxF = jnp.einsum("bld,fd->blf", x_BxLxD.astype(dtype), w)
    if role + "_bias" in names:
      y_BxLxF = y_BxLxF + self._w(names[role + "_bias"], _role_shape(cfg, role + "_bias"),
                                  nn.initializers.zeros).astype(dtype)
    return y_BxLxF.reshape(*y_BxLxF.shape[:2], heads, cfg.head_dim)

  def _attention(self, i: int, names, x_BxLxD, pos_BxL, mask_BxLxL, rotation_sin_cos, start):
    cfg = self.config
    dtype = DTYPES[cfg.dtype]
    b, l = x_BxLxD.shape[:2]
    h, g, k = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    q_BxLxHxK = self._in_proj(names, "q", x_BxLxD, h)
    k_BxLxGxK = self._in_proj(names, "k", x_BxLxD, g)
    v_BxLxGxK = self._in_proj(names, "v", x_BxLxD, g)
    if cfg.qk_norm:
      q_BxLxHxK = self._norm(names["q_norm"], q_BxLxHxK)
      k_BxLxGxK = self._norm(names["k_norm"], k_BxLxGxK)
    q_BxLxHxK = decoder_lib.rope(q_BxLxHxK, rotation_sin_cos)
    k_BxLxGxK = decoder_lib.rope(k_BxLxGxK, rotation_sin_cos)
    kpos_BxS = pos_BxL
    if start is not None:  # decoding: append to the cache, attend to everything up to each query
      ck = self.variable("cache", f"key_{i}", jnp.zeros, (b, cfg.max_len, g, k), dtype)
      cv = self.variable("cache", f"value_{i}", jnp.zeros, (b, cfg.max_len, g, k), dtype)
      ck.value = jax.lax.dynamic_update_slice(ck.value, k_BxLxGxK.astype(ck.value.dtype), (0, start, 0, 0))
      cv.value = jax.lax.dynamic_update_slice(cv.value, v_BxLxGxK.astype(cv.value.dtype), (0, start, 0, 0))
      k_BxLxGxK, v_BxLxGxK = ck.value, cv.value
      s = k_BxLxGxK.shape[1]
      kpos_BxS = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32)[None], (b, s))
      mask_BxLxL = kpos_BxS[:, None, :] <= pos_BxL[:, :, None]
    mask_BxLxS = window_mask(mask_BxLxL, pos_BxL, kpos_BxS, cfg.window(i))

    scale = cfg.query_scale or k ** -0.5
    q_BxLxHxK = q_BxLxHxK * jnp.asarray(scale, dtype)
    if g == h:
      s_BxHxLxS = jnp.einsum("blhk,bshk->bhls", q_BxLxHxK, k_BxLxGxK).astype(jnp.float32)
    else:
      q_BxLxGxRxK = q_BxLxHxK.reshape(b, l, g, h // g, k)
      s_BxHxLxS = jnp.einsum("blgrk,bsgk->bgrls", q_BxLxGxRxK, k_BxLxGxK).astype(jnp.float32)
      s_BxHxLxS = s_BxHxLxS.reshape(b, h, l, -1)
    s_BxHxLxS = _softcap(s_BxHxLxS, cfg.attn_softcap)
    s_BxHxLxS = jnp.where(mask_BxLxS[:, None], s_BxHxLxS, jnp.finfo(jnp.float32).min)
    p_BxHxLxS = jax.nn.softmax(s_BxHxLxS, axis=-1).astype(dtype)
    if g == h:
      o_BxLxHxK = jnp.einsum("bhls,bshk->blhk", p_BxHxLxS, v_BxLxGxK)
    else:
      p_BxGxRxLxS = p_BxHxLxS.reshape(b, g, h // g, l, -1)
      o_BxLxHxK = jnp.einsum("bgrls,bsgk->blgrk", p_BxGxRxLxS, v_BxLxGxK).reshape(b, l, h, k)
    w_o = self._w(names["o"], _role_shape(cfg, "o")).astype(dtype)
    if cfg.layout == "builtin":
      return jnp.einsum("blhk,hkd->bld", o_BxLxHxK, w_o)
    y_BxLxD = jnp.einsum("blf,df->bld", o_BxLxHxK.reshape(b, l, h * k), w_o)
    if cfg.o_bias:
      y_BxLxD = y_BxLxD + self._w(names["o_bias"], (cfg.d_model,), nn.initializers.zeros).astype(dtype)
    return y_BxLxD

  def _mlp(self, names, x_BxLxD):
    cfg = self.config
    dtype = DTYPES[cfg.dtype]
    x_BxLxD = x_BxLxD.astype(dtype)

    def proj(role, x):
      w = self._w(names[role], _role_shape(cfg, role)).astype(dtype)
      y = jnp.einsum("bld,df->blf", x, w) if cfg.layout == "builtin" else jnp.einsum("bld,fd->blf", x, w)
      if role + "_bias" in names:
        y = y + self._w(names[role + "_bias"], _role_shape(cfg, role + "_bias"), nn.initializers.zeros).astype(dtype)
      return y

    h_BxLxF = _ACTIVATIONS[cfg.activation](proj("gate", x_BxLxD)) * proj("up", x_BxLxD)
    return proj("down", h_BxLxF)

  @nn.compact
  def __call__(self, tokens_BxL, positions_BxL=None, mask_BxLxL=None, gather_BxG=None, *, decode: bool = False):
    cfg = self.config
    dtype = DTYPES[cfg.dtype]
    b, l = tokens_BxL.shape
    gn = global_names(cfg)
    table_VxD = self._w(gn["embed"], _role_shape(cfg, "embed"), nn.initializers.normal(1.0))
    x_BxLxD = jnp.take(table_VxD, tokens_BxL.astype(jnp.int32), axis=0)
    if cfg.embed_scale:
      x_BxLxD = x_BxLxD * jnp.asarray(cfg.embed_scale, jnp.float32).astype(table_VxD.dtype)
    x_BxLxD = x_BxLxD.astype(dtype)

    if decode:
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      positions_BxL = jnp.broadcast_to(index.value + jnp.arange(l, dtype=jnp.int32)[None], (b, l))
    elif positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32)[None], (b, l))
    if mask_BxLxL is None:
      mask_BxLxL = jnp.broadcast_to(jnp.tril(jnp.ones((l, l), jnp.bool_))[None], (b, l, l))
    # Positions lie in [0, L) except while decoding (one token at the cache's position): a table of L.
    angles = {r: rope_rotation(cfg.ropes[r], cfg.head_dim, positions_BxL, table=0 if decode else l)
              for r in sorted({cfg.rope(i) for i in range(cfg.n_layers)})}

    for i in range(cfg.n_layers):
      names = layer_names(cfg, i)
      a_BxLxD = self._attention(i, names, self._norm(names["attn_norm"], x_BxLxD), positions_BxL, mask_BxLxL,
                                angles[cfg.rope(i)], index.value if decode else None)
      if cfg.post_norms:
        a_BxLxD = self._norm(names["post_attn_norm"], a_BxLxD)
      x_BxLxD = x_BxLxD + a_BxLxD
      m_BxLxD = self._mlp(names, self._norm(names["mlp_norm"], x_BxLxD))
      if cfg.post_norms:
        m_BxLxD = self._norm(names["post_mlp_norm"], m_BxLxD)
      x_BxLxD = x_BxLxD + m_BxLxD
    if decode:
      index.value = index.value + l

    if gather_BxG is not None:
      x_BxLxD = jnp.take_along_axis(x_BxLxD, gather_BxG[..., None].astype(jnp.int32), axis=1)
    x_BxLxD = self._norm(gn["final_norm"], x_BxLxD)
    out_VxD = table_VxD if cfg.tie_embeddings or cfg.layout == "builtin" else self._w(gn["lm_head"], (cfg.vocab_size,
                                                                                                      cfg.d_model))
    logits_BxLxV = jnp.dot(x_BxLxD.astype(out_VxD.dtype), out_VxD.T).astype(jnp.float32)
    if cfg.logits_scale != 1.0:
      logits_BxLxV = logits_BxLxV * cfg.logits_scale
    return _softcap(logits_BxLxV, cfg.final_softcap)


def init_cache(cfg: DecoderConfig, batch: int, max_len: int) -> dict[str, jax.Array]:
  """An empty KV cache for :class:`LlamaLike` with ``decode=True`` (``max_len`` key slots per layer)."""
  dtype = DTYPES[cfg.dtype]
  shape = (batch, max_len, cfg.n_kv_heads, cfg.head_dim)
  cache = {"index": jnp.zeros((), jnp.int32)}
  for i in range(cfg.n_layers):
    cache[f"key_{i}"] = jnp.zeros(shape, dtype)
    cache[f"value_{i}"] = jnp.zeros(shape, dtype)
  return cache
