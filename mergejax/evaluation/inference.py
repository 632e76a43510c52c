"""Jitted, sharded scoring and greedy decoding over seqio's cached model datasets.

seqio hands a model function the cached, enumerated model dataset of one task (``(index, features)``
pairs from ``seqio.DecoderFeatureConverter(pack=False)``: ``decoder_input_tokens`` = BOS(0) + inputs +
targets, ``decoder_target_tokens``, ``decoder_loss_weights`` (1 on targets) and
``decoder_causal_attention`` (1 on BOS + inputs)). :class:`Inference` turns each dataset once into
padded, device-resident global batches of a fixed shape ``[batch_size, L]`` (L rounded up to a
multiple of ``length_bucket``; trimmed columns are padding only) and then, for any params:

* ``score``: :math:`s = \\sum_t w_t \\log p_\\theta(y_t \\mid y_{<t})`, the log-likelihood of the
  targets (rank classification scores each answer choice this way and picks the highest).
* ``predict``: greedy decoding with a KV cache. Prompts of different lengths share one scalar cache
  position: at step t a row still inside its prompt is fed its prompt token (teacher forcing), a row
  past it is fed its last prediction, so the whole batch runs one ``[B, 1]`` step at a time. Outputs
  have a fixed length per task (zeros after EOS), as seqio's metrics require.

Padding rows (copies of row 0, index -1) fill the last batch and are dropped; with a causal model,
padding columns after a sequence never change its scores. Params are a jit argument, so a new set of
params of the same shapes reuses the compiled program (one compile per model x batch shape).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mergejax.models.adapter import ModelAdapter

Params = Any


def default_mesh(data_axis: str = "data") -> jax.sharding.Mesh:
  """A 1-D mesh over every device (every process's), batches split along ``data_axis``."""
  return jax.make_mesh((jax.device_count(),), (data_axis,), axis_types=(AxisType.Auto,))


def round_up(x: int, m: int) -> int:
  """``x`` (at least 1) rounded up to a multiple of ``m``."""
  return -(-max(int(x), 1) // m) * m


def token_scores(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array) -> jax.Array:
  r"""Per-row log-likelihood :math:`\sum_t w_t (z_{t,y_t} - \mathrm{logsumexp}_v z_{t,v})`, float32."""
  z = logits_BxLxV.astype(jnp.float32)
  tok_BxL = jnp.take_along_axis(z, targets_BxL[..., None].astype(jnp.int32), axis=-1)[..., 0]
  logp_BxL = tok_BxL - jax.nn.logsumexp(z, axis=-1)
  return jnp.sum(jnp.where(weights_BxL > 0, logp_BxL * weights_BxL.astype(jnp.float32), 0.0), axis=-1)


def _greedy_loop(step_fn, carry0, inputs_BxL, prompt_len_B, decode_len: int, eos_id: int):
  """Shared greedy loop; ``step_fn(carry, t, tok_B) -> (logits_BxV, carry)`` runs position t."""
  b, l = inputs_BxL.shape
  t_end = jnp.max(prompt_len_B) - 1 + decode_len
  ar_D = jnp.arange(decode_len)

  def cond(state):
    t, _, _, _, done_B = state
    return jnp.logical_and(t < t_end, jnp.logical_not(jnp.all(done_B)))

  def body(state):
    t, carry, tok_B, out_BxD, done_B = state
    logits_BxV, carry = step_fn(carry, t, tok_B)
    nxt_B = jnp.argmax(logits_BxV.astype(jnp.float32), axis=-1).astype(jnp.int32)
    k_B = t - (prompt_len_B - 1)  # index of the token this step generates, per row
    active_B = (k_B >= 0) & (k_B < decode_len) & jnp.logical_not(done_B)
    write_BxD = (ar_D[None, :] == k_B[:, None]) & active_B[:, None]
    out_BxD = jnp.where(write_BxD, nxt_B[:, None], out_BxD)
    done_B = done_B | (active_B & ((nxt_B == eos_id) | (k_B >= decode_len - 1)))
    in_prompt_B = t + 1 < prompt_len_B
    forced_B = jax.lax.dynamic_index_in_dim(inputs_BxL, jnp.minimum(t + 1, l - 1), axis=1, keepdims=False)
    tok_B = jnp.where(in_prompt_B, forced_B, nxt_B)
    return t + 1, carry, tok_B, out_BxD, done_B

  state0 = (jnp.int32(0), carry0, inputs_BxL[:, 0].astype(jnp.int32),
            jnp.zeros((b, decode_len), jnp.int32), jnp.zeros((b,), jnp.bool_))
  return jax.lax.while_loop(cond, body, state0)[3]


def greedy_decode(adapter: ModelAdapter, params: Params, inputs_BxL: jax.Array, prompt_len_B: jax.Array,
                  decode_len: int, eos_id: int = 1) -> jax.Array:
  """Greedy continuation of each row's prompt ``inputs_BxL[b, :prompt_len_B[b]]`` (jittable).

  Returns int32 ``[B, decode_len]`` tokens, zero after the first EOS. Uses the adapter's KV cache when
  it has one, else re-runs ``apply`` on a fixed ``[B, L + decode_len]`` buffer each step.
  """
  inputs_BxL = inputs_BxL.astype(jnp.int32)
  prompt_len_B = jnp.maximum(prompt_len_B.astype(jnp.int32), 1)
  b, l = inputs_BxL.shape
  cache_len = l + decode_len
  if adapter.has_cache:
    def step(cache, t, tok_B):
      del t
      logits_Bx1xV, cache = adapter.decode_step(params, cache, tok_B[:, None])
      return logits_Bx1xV[:, 0], cache
    carry0 = adapter.init_cache(b, cache_len)
  else:
    def step(buf_BxC, t, tok_B):
      buf_BxC = jax.lax.dynamic_update_slice(buf_BxC, tok_B[:, None], (0, t))
      logits_BxCxV = adapter.apply(params, buf_BxC)
      return jax.lax.dynamic_index_in_dim(logits_BxCxV, t, axis=1, keepdims=False), buf_BxC
    carry0 = jnp.zeros((b, cache_len), jnp.int32)
  return _greedy_loop(step, carry0, inputs_BxL, prompt_len_B, decode_len, eos_id)


def _score_impl(adapter, params, inputs_BxL, targets_BxL, weights_BxL):
  return token_scores(adapter.apply(params, inputs_BxL), targets_BxL, weights_BxL)


def _predict_impl(adapter, params, inputs_BxL, prompt_len_B, decode_len, eos_id):
  return greedy_decode(adapter, params, inputs_BxL, prompt_len_B, decode_len, eos_id)


@functools.lru_cache(maxsize=None)
def _jitted(out_sharding: NamedSharding):
  """Jitted score / predict shared by every Inference on the same mesh: the adapter is a static
  argument, so all evaluators of one model (held-in, held-out, validation, test) share compiles."""
  return (jax.jit(_score_impl, static_argnums=(0,), out_shardings=out_sharding),
          jax.jit(_predict_impl, static_argnums=(0, 4, 5), out_shardings=out_sharding))


@dataclasses.dataclass
class _Prepared:
  """One task's model dataset as fixed-shape device batches."""
  dataset: Any  # keeps the tf.data object alive so its id() stays unique
  indices: np.ndarray  # [N] example indices (no padding)
  batches: list[dict[str, jax.Array]]
  decode_len: int
  length: int


class Inference:
  """Score and predict functions for seqio.Evaluator, for one model adapter on one mesh.

  Args:
    adapter: the model (see :mod:`mergejax.models.adapter`).
    mesh: devices to run on; batches are split along ``data_axes``. Default: all devices, 1-D.
    batch_size: global batch (rows per step); must be a multiple of the data-parallel size.
    data_axes: mesh axes that split the batch.
    length_bucket: sequence lengths are rounded up to a multiple of this (fewer compiled shapes).
    eos_id: the vocabulary's EOS id (stops greedy decoding).
  """

  def __init__(self, adapter: ModelAdapter, mesh: jax.sharding.Mesh | None = None, *, batch_size: int = 32,
               data_axes: str | Sequence[str] = "data", length_bucket: int = 32, eos_id: int = 1):
    self.adapter = adapter
    self.mesh = mesh if mesh is not None else default_mesh(data_axes if isinstance(data_axes, str) else data_axes[0])
    self.data_axes = (data_axes,) if isinstance(data_axes, str) else tuple(data_axes)
    dp = int(np.prod([self.mesh.shape[a] for a in self.data_axes]))
    if batch_size <= 0 or batch_size % dp:
      raise ValueError(f"batch_size={batch_size} must be a positive multiple of the data-parallel size {dp}")
    self.batch_size = batch_size
    self.length_bucket = max(1, int(length_bucket))
    self.eos_id = int(eos_id)
    self.batch_sharding = NamedSharding(self.mesh, P(self.data_axes))
    self.replicated = NamedSharding(self.mesh, P())
    self._prepared: dict[int, _Prepared] = {}
    self._score, self._predict = _jitted(self.replicated)

  @property
  def adapter(self) -> ModelAdapter:
    """The model over seqio's token ids (:meth:`ModelAdapter.for_seqio`)."""
    return self._adapter

  @adapter.setter
  def adapter(self, adapter: ModelAdapter) -> None:
    self._adapter = adapter.for_seqio()

  # -- jitted kernels -------------------------------------------------------------------------------
  def _score_jit(self, params, inputs_BxL, targets_BxL, weights_BxL) -> jax.Array:
    return self._score(self.adapter, params, inputs_BxL, targets_BxL, weights_BxL)

  def _predict_jit(self, params, inputs_BxL, prompt_len_B, *, decode_len: int) -> jax.Array:
    return self._predict(self.adapter, params, inputs_BxL, prompt_len_B, int(decode_len), self.eos_id)

  def compile_count(self) -> int:
    """Programs compiled so far for score + predict (shared by all Inference objects on this mesh)."""
    return self._score._cache_size() + self._predict._cache_size()  # pylint: disable=protected-access

  def score_arrays(self, params: Params, inputs_BxL, targets_BxL, weights_BxL) -> np.ndarray:
    """Scores one already-batched set of rows (B must be a multiple of the data-parallel size)."""
    b = self.to_global({"i": np.asarray(inputs_BxL), "t": np.asarray(targets_BxL),
                         "w": np.asarray(weights_BxL)})
    return to_host(self._score_jit(self.place_params(params), b["i"], b["t"], b["w"]))

  def predict_arrays(self, params: Params, inputs_BxL, prompt_len_B, decode_len: int) -> np.ndarray:
    """Greedy-decodes one already-batched set of prompts."""
    b = self.to_global({"i": np.asarray(inputs_BxL), "n": np.asarray(prompt_len_B)})
    return to_host(self._predict_jit(self.place_params(params), b["i"], b["n"], decode_len=int(decode_len)))

  # -- params and data ------------------------------------------------------------------------------
  def place_params(self, params: Params) -> Params:
    """Leaves already on this mesh's devices keep their sharding; anything else is replicated."""
    devices = set(self.mesh.devices.flat)

    def put(x):
      if isinstance(x, jax.Array):
        if x.sharding.device_set == devices:
          return x
        if jax.process_count() > 1 and x.is_fully_addressable:
          x = np.asarray(x)  # e.g. a merge on a local device: each process holds the same value
      return jax.device_put(x, self.replicated)
    return jax.tree.map(put, params)

  def to_global(self, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Host batches (the same full batch on every process: seqio caches the whole evaluation set on each
    host) as global arrays split along the data axes; each process builds its own shards."""
    return {k: jax.make_array_from_callback(v.shape, self.batch_sharding, lambda idx, v=v: v[idx])
            for k, v in arrays.items()}

  def prepare(self, ds: Iterable[tuple[int, dict[str, np.ndarray]]]) -> _Prepared:
    """Converts (once) an enumerated seqio model dataset into fixed-shape device batches."""
    key = id(ds)
    hit = self._prepared.get(key)
    if hit is not None and hit.dataset is ds:
      return hit
    rows = list(ds.as_numpy_iterator()) if hasattr(ds, "as_numpy_iterator") else list(ds)
    if not rows:
      prep = _Prepared(ds, np.zeros((0,), np.int64), [], 1, 0)
      self._prepared[key] = prep
      return prep
    indices = np.asarray([int(i) for i, _ in rows], np.int64)
    feats = {k: np.stack([np.asarray(f[k]) for _, f in rows]) for k in rows[0][1]}
    for need in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"):
      if need not in feats:
        raise ValueError(f"model dataset has no '{need}' (use seqio.DecoderFeatureConverter(pack=False)); "
                         f"features: {sorted(feats)}")
    inp, tgt, w = feats["decoder_input_tokens"], feats["decoder_target_tokens"], feats["decoder_loss_weights"]
    if "decoder_causal_attention" in feats:
      prompt_len = feats["decoder_causal_attention"].sum(axis=1).astype(np.int32)
    else:  # a plain LM task: the prompt is BOS alone
      prompt_len = np.ones((len(rows),), np.int32)
    used = np.nonzero((inp != 0).any(axis=0) | (tgt != 0).any(axis=0) | (w != 0).any(axis=0))[0]
    full_len = inp.shape[1]
    length = min(full_len, round_up(int(used.max()) + 1 if used.size else 1, self.length_bucket))
    decode_len = max(1, int((w > 0).sum(axis=1).max()))
    decode_len = round_up(decode_len, 8)
    n = len(rows)
    n_pad = round_up(n, self.batch_size) - n
    def pad(a):
      a = a[:, :length] if a.ndim == 2 else a
      return np.concatenate([a, np.repeat(a[:1], n_pad, axis=0)]) if n_pad else a
    host = {"i": pad(inp).astype(np.int32), "t": pad(tgt).astype(np.int32), "w": pad(w).astype(np.float32),
            "n": pad(prompt_len).astype(np.int32)}
    batches = []
    for s in range(0, n + n_pad, self.batch_size):
      batches.append(self.to_global({k: v[s:s + self.batch_size] for k, v in host.items()}))
    prep = _Prepared(ds, indices, batches, decode_len, length)
    self._prepared[key] = prep
    return prep

  def _wait_if_sharded(self, out: jax.Array) -> jax.Array:
    """Batches are dispatched asynchronously on one device; on several devices (or processes) each is
    waited for before the next is dispatched: the collectives of concurrently running executions on
    XLA:CPU can pair up wrongly and deadlock (2 processes) or abort (8 devices)."""
    if self.mesh.size > 1 or jax.process_count() > 1:
      jax.block_until_ready(out)
    return out

  # -- seqio model functions ------------------------------------------------------------------------
  def score(self, params: Params, ds) -> list[tuple[int, float]]:
    """seqio ``score_fn``: [(index, log-likelihood of the targets)]."""
    prep = self.prepare(ds)
    params = self.place_params(params)
    outs = [self._wait_if_sharded(self._score_jit(params, b["i"], b["t"], b["w"])) for b in prep.batches]
    scores = np.concatenate([to_host(o) for o in outs])[:len(prep.indices)] if outs else np.zeros((0,))
    return [(int(i), float(s)) for i, s in zip(prep.indices, scores)]

  def predict(self, params: Params, ds) -> list[tuple[int, list[int]]]:
    """seqio ``predict_fn``: [(index, fixed-length greedy tokens)]."""
    prep = self.prepare(ds)
    params = self.place_params(params)
    outs = [self._wait_if_sharded(self._predict_jit(params, b["i"], b["n"], decode_len=prep.decode_len))
            for b in prep.batches]
    toks = np.concatenate([to_host(o) for o in outs])[:len(prep.indices)] if outs else np.zeros((0, 1), np.int32)
    return [(int(i), t.tolist()) for i, t in zip(prep.indices, toks)]


def to_host(x: jax.Array) -> np.ndarray:
  """A replicated global array as numpy (works in multi-process runs, where it is not addressable)."""
  return np.asarray(x.addressable_data(0))
