"""A PaLM-style decoder-only transformer in flax.linen (Chowdhery et al., 2022, arXiv 2204.02311).

Pre-norm RMSNorm blocks with rotary position embeddings (RoPE), SwiGLU feed-forward layers, no biases
and a tied input/output embedding. Every parameter carries logical axis names ("vocab", "embed",
"heads", "kv", "mlp", "layers") and activations are constrained with ("batch", "length", ...), so
``nn.logical_to_mesh_sharding(..., LOGICAL_RULES)`` places them on any mesh. Incremental decoding
keeps a KV cache in the "cache" collection (flax lm1b / nanodo style).

Shapes use suffixes: B batch, L length, D d_model, H heads, K head_dim, F d_ff, V vocab.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mergejax.models.config import ModelConfig

# Logical axis -> mesh axis for data parallelism over a ("data",) mesh: parameters are replicated,
# activations split over the batch. Add e.g. ("embed", "fsdp") for fully-sharded training.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", "data"),
    ("length", None),
    ("act_embed", None),
    ("act_heads", None),
    ("vocab", None),
    ("embed", None),
    ("heads", None),
    ("kv", None),
    ("mlp", None),
    ("layers", None),
)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dense_init(fan_in: int):
  return nn.initializers.normal(stddev=fan_in ** -0.5)


ROPE_TABLE_MAX = 512  # longest sequence whose RoPE angles come from a one-hot table (rotation)


def rotation(pos_BxL: jax.Array, inv_freq_K2: jax.Array, table: int = 0) -> tuple[jax.Array, jax.Array]:
  r"""``(sin, cos)`` of the rotary angles pos * inv_freq, each float32 ``[B, L, 1, K/2]``: computed once per
  forward pass for every layer's queries and keys.

  With ``table`` > 0 (every position in [0, table)) the angles of positions 0..table-1 are computed and
  each token's row is picked by a one-hot product, which XLA keeps as one buffer. Computed per token,
  XLA:CPU fuses sin and cos into each of their uses and evaluates them again for every layer, query and
  key (an optimization barrier does not stop it: XLA:CPU removes barriers before fusing); that was ~13%
  of the study's evaluation time. The values are the same bit for bit: the same angles, and a one-hot
  product adds exact zeros to the one selected value. Tables longer than ``ROPE_TABLE_MAX`` are not
  built: the one-hot buffer grows as L^2 while recomputing sin and cos costs O(L) next to attention's
  O(L^2).
  """
  if 0 < table <= ROPE_TABLE_MAX:
    ang_PxK2 = jnp.arange(table, dtype=jnp.float32)[:, None] * inv_freq_K2
    onehot_BxLxP = (pos_BxL[..., None] == jnp.arange(table, dtype=pos_BxL.dtype)).astype(jnp.float32)
    pick = lambda t_PxK2: jnp.einsum("blp,pk->blk", onehot_BxLxP, t_PxK2,
                                     precision=jax.lax.Precision.HIGHEST)[:, :, None, :]
    return pick(jnp.sin(ang_PxK2)), pick(jnp.cos(ang_PxK2))
  ang_BxLx1xK2 = (pos_BxL.astype(jnp.float32)[..., None] * inv_freq_K2)[:, :, None, :]
  return jnp.sin(ang_BxLx1xK2), jnp.cos(ang_BxLx1xK2)


def builtin_inv_frequencies(k: int, base: float) -> jax.Array:
  r"""The built-in decoder's K/2 RoPE inverse frequencies base^(-2i/K), float32."""
  return base ** (-jnp.arange(0, k, 2, dtype=jnp.float32) / k)


def rope_rotation(pos_BxL: jax.Array, k: int, base: float, table: int = 0) -> tuple[jax.Array, jax.Array]:
  r""":func:`rotation` at the built-in decoder's frequencies."""
  return rotation(pos_BxL, builtin_inv_frequencies(k, base), table)


def rope(x_BxLxHxK: jax.Array, rotation_sin_cos: tuple[jax.Array, jax.Array]) -> jax.Array:
  r"""Rotary embedding (Su et al., 2021): rotates channel pairs (i, i + K/2) by the angles whose
  ``(sin, cos)`` are given (:func:`rotation`), in float32."""
  sin, cos = rotation_sin_cos
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxHxK.dtype)


class RMSNorm(nn.Module):
  r""":math:`y = x / \sqrt{\mathrm{mean}(x^2) + \epsilon} \cdot g` (Zhang & Sennrich, 2019)."""

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


class Attention(nn.Module):
  """Multi-head causal self-attention with RoPE and an optional KV cache."""

  config: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxLxD, mask_Bx1xLxS, rotation):
    cfg = self.config
    h, k = cfg.n_heads, cfg.dims_per_head
    dtype, pdtype = _DTYPES[cfg.dtype], _DTYPES[cfg.param_dtype]

    def proj(name):
      w_DxHxK = self.param(name, nn.with_logical_partitioning(_dense_init(cfg.d_model), ("embed", "heads", "kv")),
                           (cfg.d_model, h, k), pdtype)
      return lambda x: jnp.einsum("bld,dhk->blhk", x.astype(dtype), w_DxHxK.astype(dtype))

    q_BxLxHxK = proj("query")(x_BxLxD)
    k_BxLxHxK = proj("key")(x_BxLxD)
    v_BxLxHxK = proj("value")(x_BxLxD)

    if self.decode:
      is_initialized = self.has_variable("cache", "cached_key")
      ck = self.variable("cache", "cached_key", jnp.zeros, k_BxLxHxK.shape, k_BxLxHxK.dtype)
      cv = self.variable("cache", "cached_value", jnp.zeros, v_BxLxHxK.shape, v_BxLxHxK.dtype)
      ci = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
      if is_initialized:
        b, l = x_BxLxD.shape[:2]
        if l != 1:
          raise ValueError(f"decode=True expects one token per call, got length {l}")
        max_len = ck.value.shape[1]
        idx = ci.value
        rotation = rope_rotation(jnp.full((b, 1), idx, jnp.int32), k, cfg.rope_base)
        q_BxLxHxK = rope(q_BxLxHxK, rotation)
        k_BxLxHxK = rope(k_BxLxHxK, rotation)
        ck.value = jax.lax.dynamic_update_slice(ck.value, k_BxLxHxK, (0, idx, 0, 0))
        cv.value = jax.lax.dynamic_update_slice(cv.value, v_BxLxHxK, (0, idx, 0, 0))
        ci.value = idx + 1
        k_BxLxHxK, v_BxLxHxK = ck.value, cv.value
        mask_Bx1xLxS = (jnp.arange(max_len) <= idx)[None, None, None, :]
        rotation = None  # already rotated
    if rotation is not None:
      q_BxLxHxK = rope(q_BxLxHxK, rotation)
      k_BxLxHxK = rope(k_BxLxHxK, rotation)

    q_BxLxHxK = q_BxLxHxK * (k ** -0.5)
    s_BxHxLxS = jnp.einsum("blhk,bshk->bhls", q_BxLxHxK, k_BxLxHxK).astype(jnp.float32)
    s_BxHxLxS = jnp.where(mask_Bx1xLxS, s_BxHxLxS, jnp.finfo(jnp.float32).min)
    p_BxHxLxS = jax.nn.softmax(s_BxHxLxS, axis=-1).astype(dtype)
    o_BxLxHxK = jnp.einsum("bhls,bshk->blhk", p_BxHxLxS, v_BxLxHxK)
    o_BxLxHxK = nn.with_logical_constraint(o_BxLxHxK, ("batch", "length", "act_heads", None))
    w_HxKxD = self.param("out", nn.with_logical_partitioning(_dense_init(h * k), ("heads", "kv", "embed")),
                         (h, k, cfg.d_model), pdtype)
    return jnp.einsum("blhk,hkd->bld", o_BxLxHxK, w_HxKxD.astype(dtype))


class Mlp(nn.Module):
  r"""SwiGLU (Shazeer, 2020): :math:`W_o(\mathrm{silu}(xW_g) \odot xW_u)`."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.config
    dtype, pdtype = _DTYPES[cfg.dtype], _DTYPES[cfg.param_dtype]
    dense = lambda f, name, axes, fan_in: nn.Dense(
        f, use_bias=False, dtype=dtype, param_dtype=pdtype, name=name,
        kernel_init=nn.with_logical_partitioning(_dense_init(fan_in), axes))
    gate_BxLxF = dense(cfg.d_ff, "gate", ("embed", "mlp"), cfg.d_model)(x_BxLxD)
    up_BxLxF = dense(cfg.d_ff, "up", ("embed", "mlp"), cfg.d_model)(x_BxLxD)
    h_BxLxF = nn.with_logical_constraint(nn.silu(gate_BxLxF) * up_BxLxF, ("batch", "length", "mlp"))
    return dense(cfg.d_model, "down", ("mlp", "embed"), cfg.d_ff)(h_BxLxF)


class Block(nn.Module):
  """x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

  config: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxLxD, mask_Bx1xLxS, rotation):
    cfg = self.config
    dtype, pdtype = _DTYPES[cfg.dtype], _DTYPES[cfg.param_dtype]
    h = RMSNorm(dtype, pdtype, name="attn_norm")(x_BxLxD)
    x_BxLxD = x_BxLxD + Attention(cfg, self.decode, name="attn")(h, mask_Bx1xLxS, rotation)
    h = RMSNorm(dtype, pdtype, name="mlp_norm")(x_BxLxD)
    x_BxLxD = x_BxLxD + Mlp(cfg, name="mlp")(h)
    return nn.with_logical_constraint(x_BxLxD, ("batch", "length", "act_embed"))


class _ScanBlock(Block):
  """Block with the (carry, out) signature nn.scan needs."""

  @nn.compact
  def __call__(self, x_BxLxD, mask_Bx1xLxS, rotation):
    return super().__call__(x_BxLxD, mask_Bx1xLxS, rotation), None


class Decoder(nn.Module):
  """Causal decoder: int32 tokens [B, L] -> float32 logits [B, L, V].

  Attributes:
    config: the :class:`ModelConfig`.

  Call arguments:
    tokens_BxL: token ids.
    segment_ids_BxL: optional packing segments (seqio's ``decoder_segment_ids``); tokens attend only
      within their segment. 0 marks padding.
    positions_BxL: optional positions (seqio's ``decoder_positions``), each in [0, L) (positions count tokens
      within a row); default 0..L-1.
    decode: incremental decoding with the "cache" collection. Create the cache with
      ``model.init(rng, tokens_BxMaxLen, decode=True)["cache"]``, then call with one token per step
      and ``mutable=["cache"]``; the cache tracks the position.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxL, segment_ids_BxL=None, positions_BxL=None, *, decode: bool = False):
    cfg = self.config
    dtype, pdtype = _DTYPES[cfg.dtype], _DTYPES[cfg.param_dtype]
    b, l = tokens_BxL.shape
    embed = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=pdtype, name="embed",
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")))
    x_BxLxD = embed(tokens_BxL.astype(jnp.int32))
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "act_embed"))

    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32)[None], (b, l))
    causal_LxL = jnp.tril(jnp.ones((l, l), dtype=jnp.bool_))
    mask_Bx1xLxL = causal_LxL[None, None]
    if segment_ids_BxL is not None:
      same_BxLxL = segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]
      mask_Bx1xLxL = jnp.logical_and(mask_Bx1xLxL, same_BxLxL[:, None])
    rotation = rope_rotation(positions_BxL, cfg.dims_per_head, cfg.rope_base, table=l)

    block_cls = nn.remat(Block) if cfg.remat else Block
    if cfg.scan_layers:
      scan_cls = nn.remat(_ScanBlock) if cfg.remat else _ScanBlock
      stack = nn.scan(scan_cls, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast), length=cfg.n_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x_BxLxD, _ = stack(cfg, decode, name="layers")(x_BxLxD, mask_Bx1xLxL, rotation)
    else:
      for i in range(cfg.n_layers):
        x_BxLxD = block_cls(cfg, decode, name=f"layer_{i}")(x_BxLxD, mask_Bx1xLxL, rotation)

    x_BxLxD = RMSNorm(dtype, pdtype, name="final_norm")(x_BxLxD)
    logits_BxLxV = embed.attend(x_BxLxD.astype(pdtype)).astype(jnp.float32) * (cfg.d_model ** -0.5)
    return nn.with_logical_constraint(logits_BxLxV, ("batch", "length", "vocab"))
