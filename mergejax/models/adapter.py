"""Model adapters: the small interface the evaluator needs from a model.

An adapter is three pure functions of ``(params, ...)``; params are always an argument (never closed
over), so one compiled scorer serves every set of params of the same shapes (the study runner merges
hundreds of candidates and scores each without recompiling).

* ``apply(params, tokens_BxL) -> logits_BxLxV``: a causal forward pass (float32 logits).
* ``init_cache(batch, max_len) -> cache`` and ``decode_step(params, cache, tok_Bx1) -> (logits_Bx1xV,
  cache)``: incremental decoding with a KV cache whose position is tracked inside the cache (flax
  lm1b / nanodo style). Optional: without them greedy decoding re-runs ``apply`` on a fixed buffer.
* ``apply_packed(params, tokens_BxL, positions_BxL, mask_BxLxL, gather_BxG) -> logits_BxGxV``: a
  forward pass with explicit positions and attention mask that returns logits only at the positions
  ``gather_BxG``. Optional: it lets the evaluator score an example's shared prompt once for all its
  answer choices (:mod:`mergejax.evaluation.packed`); without it every (prompt, choice) row is scored
  on its own.

Use :func:`from_flax_lm` for any ``flax.linen`` causal LM written in the lm1b style,
:func:`builtin_adapter` for :class:`mergejax.models.Decoder`, or build a :class:`ModelAdapter` by
hand for anything else.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

Params = Any
PyTree = Any


@dataclasses.dataclass(frozen=True)
class ModelAdapter:
  """How the evaluator runs a model.

  Attributes:
    apply: ``(params, tokens_BxL int32) -> logits_BxLxV``; position t's logits predict token t+1.
    init_cache: ``(batch, max_len) -> cache`` (an empty KV cache), or None.
    decode_step: ``(params, cache, tok_Bx1) -> (logits_Bx1xV, cache)``, or None.
    name: shown in logs and benchmark tables.
    seqio_offset, seqio_bos: how seqio's token ids map to the model's (:meth:`for_seqio`): model id = seqio
      id - ``seqio_offset``, and seqio's BOS slot (id 0 at position 0) is the model's ``seqio_bos``.
  """

  apply: Callable[[Params, jax.Array], jax.Array]
  init_cache: Callable[[int, int], PyTree] | None = None
  decode_step: Callable[[Params, PyTree, jax.Array], tuple[jax.Array, PyTree]] | None = None
  name: str = "model"
  apply_packed: Callable[[Params, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array] | None = None
  seqio_offset: int = 0
  seqio_bos: int = 0

  @property
  def has_cache(self) -> bool:
    return self.init_cache is not None and self.decode_step is not None

  def for_seqio(self) -> "ModelAdapter":
    """This model over seqio's ids (what the evaluator feeds): itself when ``seqio_offset`` and ``seqio_bos``
    are 0 (the built-in decoder, trained on seqio's own layout); else token t > 0 becomes t - offset,
    seqio's BOS slot becomes ``seqio_bos``, and logits get ``offset`` leading columns of -inf so that
    column i scores seqio id i (a checkpoint whose tokenizer uses id 0 for text, e.g. Llama 3's "!", gets
    offset 1 from its vocabulary, :mod:`mergejax.models.tokenizer`). The same object on every call."""
    return _seqio_view(self)


@functools.lru_cache(maxsize=64)
def _seqio_view(adapter: ModelAdapter) -> ModelAdapter:
  offset, start = adapter.seqio_offset, adapter.seqio_bos
  if offset == 0 and start == 0:
    return adapter

  def to_model(tokens, first):
    t = jnp.where(tokens > 0, tokens - offset, 0)
    return jnp.where(first & (tokens == 0), start, t).astype(jnp.int32)

  def to_seqio(logits):
    if not offset:
      return logits
    return jnp.concatenate([jnp.full(logits.shape[:-1] + (offset,), -jnp.inf, logits.dtype), logits], axis=-1)

  def apply(params, tokens_BxL):
    return to_seqio(adapter.apply(params, to_model(tokens_BxL, jnp.arange(tokens_BxL.shape[1])[None, :] == 0)))

  def apply_packed(params, tokens_BxL, positions_BxL, mask_BxLxL, gather_BxG):
    return to_seqio(adapter.apply_packed(params, to_model(tokens_BxL, positions_BxL == 0), positions_BxL,
                                         mask_BxLxL, gather_BxG))

  def decode_step(params, cache, tok_Bx1):
    # The cache tracks its position ("index"): the first step feeds the BOS slot.
    logits, cache = adapter.decode_step(params, cache, to_model(tok_Bx1, cache["index"] == 0))
    return to_seqio(logits), cache

  return ModelAdapter(apply=apply, init_cache=adapter.init_cache,
                      decode_step=decode_step if adapter.decode_step is not None else None,
                      name=adapter.name + "[seqio]",
                      apply_packed=apply_packed if adapter.apply_packed is not None else None)


def from_flax_lm(module: Any, name: str | None = None) -> ModelAdapter:
  """Adapter for a flax causal LM: linen (with an optional lm1b-style KV cache) or nnx (:func:`from_nnx_lm`).

  A linen module must support ``module.apply({"params": p}, tokens_BxL)`` and, for the cache,
  ``module.init(rng, tokens_BxMaxLen, decode=True)["cache"]`` followed by
  ``module.apply({"params": p, "cache": c}, tok_Bx1, decode=True, mutable=["cache"])``. A module
  without a ``decode`` argument still works (greedy decoding then recomputes the prefix).
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  if isinstance(module, nnx.Module):
    return from_nnx_lm(module, name=name)
  if not hasattr(module, "apply"):
    raise TypeError(f"{type(module).__name__} is neither a flax.linen nor a flax.nnx module")

  def apply(params, tokens_BxL):
    return module.apply({"params": params}, tokens_BxL)

  def init_cache(batch: int, max_len: int):
    # Run the module's own init (so the cache starts exactly as the module defines it); under jit the
    # unused parameter initializers are dead code and cost nothing.
    tokens = jnp.zeros((batch, max_len), jnp.int32)
    return module.init(jax.random.key(0), tokens, decode=True)["cache"]

  def decode_step(params, cache, tok_Bx1):
    logits, mutated = module.apply({"params": params, "cache": cache}, tok_Bx1, decode=True,
                                   mutable=["cache"])
    return logits, mutated["cache"]

  try:
    has_decode = "decode" in inspect.signature(type(module).__call__).parameters
  except (TypeError, ValueError):
    has_decode = False
  return ModelAdapter(apply=apply, init_cache=init_cache if has_decode else None,
                      decode_step=decode_step if has_decode else None,
                      name=name or type(module).__name__)


def from_nnx_lm(model: Any, name: str | None = None) -> ModelAdapter:
  """Adapter for a ``flax.nnx`` causal LM, ``model(tokens_BxL) -> logits_BxLxV``.

  The adapter's params are the model's ``nnx.Param`` state, ``nnx.state(model, nnx.Param)``: pass that
  (or a merge of several such states) to the evaluator. Everything else in the model (e.g. RNG state)
  is frozen as it is now. Greedy decoding recomputes the prefix (no KV cache)::

      adapter = evaluation.from_flax_lm(my_nnx_model)
      results = evaluation.Evaluator(adapter, mixture, "validation").evaluate(nnx.state(my_nnx_model, nnx.Param))
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)

  def apply(params, tokens_BxL):
    return nnx.merge(graphdef, params, rest)(tokens_BxL)

  return ModelAdapter(apply=apply, name=name or type(model).__name__)


def builtin_adapter(config: Any) -> ModelAdapter:
  """Adapter for the built-in :class:`mergejax.models.Decoder` with ``config`` (a ModelConfig)."""
  # The built-in decoder (and orbax, which mergejax.models loads for its checkpoints) load only when
  # its adapter is asked for: a user's own model never pays for them.
  from mergejax import models  # pylint: disable=g-import-not-at-top
  module = models.Decoder(config)
  base = from_flax_lm(module, name=f"Decoder[{getattr(config, 'name', '') or 'custom'}]")
  if getattr(config, "scan_layers", False):
    return base  # the mask interceptor below does not reach blocks inside nn.scan
  return dataclasses.replace(base, apply_packed=_decoder_apply_packed(module))


def _decoder_apply_packed(module: Any):
  """``apply_packed`` for :class:`mergejax.models.Decoder` through flax method interception.

  The decoder builds its causal mask itself and returns logits at every position; here each
  ``Attention`` call gets the given ``mask_BxLxL`` instead, and the tied output projection
  (``Embed.attend``) sees only the hidden states at ``gather_BxG``, so the vocabulary projection and
  softmax run on the scored positions alone.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top  # as above: the built-in decoder only
  from mergejax.models import decoder as decoder_lib  # pylint: disable=g-import-not-at-top

  def apply_packed(params, tokens_BxL, positions_BxL, mask_BxLxL, gather_BxG):
    mask_Bx1xLxL = mask_BxLxL[:, None]

    def interceptor(next_fun, args, kwargs, context):
      if isinstance(context.module, decoder_lib.Attention) and context.method_name == "__call__":
        x, _, rotation = args
        return next_fun(x, mask_Bx1xLxL, rotation, **kwargs)
      if isinstance(context.module, nn.Embed) and context.method_name == "attend":
        x_BxLxD = args[0]
        x_BxGxD = jnp.take_along_axis(x_BxLxD, gather_BxG[..., None].astype(jnp.int32), axis=1)
        return next_fun(x_BxGxD, *args[1:], **kwargs)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      return module.apply({"params": params}, tokens_BxL, positions_BxL=positions_BxL)

  return apply_packed
