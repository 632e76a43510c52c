"""``from_pretrained``: a checkpoint directory -> params on the mesh, the model adapter and its tokenizer.

Accepted directories:

* Hugging Face: ``config.json`` + ``model.safetensors`` (or shards with ``model.safetensors.index.json``),
  e.g. a downloaded Llama / Mistral / Qwen / Gemma or a safetensors output of ``mergejax-merge``;
* an orbax checkpoint with a ``config.json`` beside it (``mergejax-merge --output_format=orbax`` of Hugging
  Face inputs, or :func:`save_pretrained`);
* a built-in decoder checkpoint (orbax + ``model_config.json``: the embedded world's models).

Each tensor is read straight onto its devices with its partition spec
(:func:`mergejax.models.families.partition_spec`): a safetensors tensor block by block through memory maps
(:class:`~mergejax.checkpoints.SafetensorsSource`), an orbax leaf by orbax's sharded restore, so the host
never holds a copy of the whole model. Every name and shape is checked against the config before any
tensor is read.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import seqio
from jax.sharding import NamedSharding, SingleDeviceSharding

from mergejax.checkpoints.base import CheckpointError
from mergejax.checkpoints.detect import is_orbax
from mergejax.models.adapter import ModelAdapter
from mergejax.models import families, llamalike, tokenizer as tok_lib
from mergejax.models.llamalike import DecoderConfig

Params = Any
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some older checkpoints store; recomputed here
BUILTIN_CONFIG = "model_config.json"  # the built-in decoder's checkpoints (mergejax.models.save_checkpoint)
BUILTIN_TOKENIZER = "tokenizer.model"  # its SentencePiece model (mergejax.models.io.TOKENIZER_FILE)


@dataclasses.dataclass
class PretrainedLM:
  """A loaded model.

  Attributes:
    config: the decoder's :class:`~mergejax.models.llamalike.DecoderConfig`.
    params: the parameters (flat checkpoint names for Hugging Face families; the built-in decoder's
      nested tree), on the mesh.
    adapter: the :class:`~mergejax.evaluation.ModelAdapter` over the checkpoint's token ids:
      ``adapter.apply(params, tokens_BxL)`` -> float32 logits; ``adapter.for_seqio()`` over seqio's.
    vocabulary: the checkpoint's tokenizer as a seqio vocabulary (None if the directory has none).
    token_offset: seqio ids = token ids + this (1 where the tokenizer's id 0 is a text token).
    bos_id, eos_ids, pad_id: from the checkpoint's config.
    path: where it was read from.
  """

  config: DecoderConfig
  params: Params
  adapter: ModelAdapter
  vocabulary: Any
  token_offset: int
  bos_id: int | None
  eos_ids: list[int]
  pad_id: int | None
  path: pathlib.Path

  @property
  def family(self) -> str:
    return self.config.family

  @property
  def start_id(self) -> int:
    """The token that starts a sequence: BOS, else the first EOS (lm-evaluation-harness's convention)."""
    if self.bos_id is not None:
      return self.bos_id
    return self.eos_ids[0] if self.eos_ids else 0

  def text_tokenizer(self) -> tok_lib.TextTokenizer:
    """The tokenizer over the model's own ids (the suite's SentencePiece model for the built-in decoder)."""
    if self.config.layout == "builtin":
      return tok_lib.TextTokenizer(self.path, self.bos_id,
                                   sentencepiece_model=str(self.vocabulary.sentencepiece_model_file))
    return tok_lib.TextTokenizer(self.path, self.bos_id)

  @property
  def seqio_adapter(self) -> ModelAdapter:
    """The adapter over seqio's ids (:meth:`ModelAdapter.for_seqio`); the evaluator applies it itself."""
    return self.adapter.for_seqio()


@functools.lru_cache(maxsize=64)
def family_adapter(cfg: DecoderConfig) -> ModelAdapter:
  """The :class:`ModelAdapter` of a decoder config (forward pass, KV-cache decoding, packed scoring); one
  object per config, so models of the same shapes (a base and its merges) share compiled programs."""
  module = llamalike.LlamaLike(cfg)
  if cfg.layout == "builtin":
    prep = lambda p: families.builtin_flatten(p, cfg.n_layers)
  else:
    prep = lambda p: p

  def apply(params, tokens_BxL):
    return module.apply({"params": prep(params)}, tokens_BxL)

  def apply_packed(params, tokens_BxL, positions_BxL, mask_BxLxL, gather_BxG):
    return module.apply({"params": prep(params)}, tokens_BxL, positions_BxL, mask_BxLxL, gather_BxG)

  def init_cache(batch: int, max_len: int):
    return llamalike.init_cache(cfg, batch, max_len)

  def decode_step(params, cache, tok_BxL):
    logits, mutated = module.apply({"params": prep(params), "cache": cache}, tok_BxL, decode=True,
                                   mutable=["cache"])
    return logits, mutated["cache"]

  return ModelAdapter(apply=apply, init_cache=init_cache, decode_step=decode_step, name=cfg.family,
                      apply_packed=apply_packed)


@functools.lru_cache(maxsize=64)
def _tokens_adapter(cfg: DecoderConfig, offset: int, bos: int) -> ModelAdapter:
  return dataclasses.replace(family_adapter(cfg), seqio_offset=offset, seqio_bos=bos)


# -- loading ---------------------------------------------------------------------------------------

def _read_json(p: pathlib.Path) -> Any:
  try:
    return json.loads(p.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{p}: not valid JSON ({e})") from None


def param_spec(cfg: DecoderConfig, name: str, shape, mesh: Any) -> jax.sharding.PartitionSpec:
  """The PartitionSpec ``from_pretrained`` places checkpoint tensor ``name`` with on ``mesh`` (a Mesh or an
  AbstractMesh: only its axis names and sizes are read): :func:`mergejax.models.families.partition_spec`,
  FSDP over every axis but "model"/"tp", tensor parallel over that one; a built-in decoder's stacked
  ``layers/...`` tensors keep their leading layer axis whole."""
  if cfg.layout == "builtin" and name.startswith("layers/"):
    spec = families.partition_spec(cfg, "layer_0/" + name[len("layers/"):], tuple(shape[1:]), mesh)
    return jax.sharding.PartitionSpec(None, *spec)
  return families.partition_spec(cfg, name, tuple(shape), mesh)


def _sharding(cfg: DecoderConfig, name: str, shape, mesh) -> Any:
  if mesh is None:
    return SingleDeviceSharding(jax.local_devices()[0])
  return NamedSharding(mesh, param_spec(cfg, name, shape, mesh))


def _check_names(path: pathlib.Path, family: str, have: Mapping[str, tuple], want: Mapping[str, tuple]) -> None:
  for name, shape in want.items():
    if name not in have:
      raise CheckpointError(f"{path}: tensor '{name}' is missing (the {family} config needs it)")
    if tuple(have[name]) != tuple(shape):
      raise CheckpointError(f"{path}: tensor '{name}' has shape {tuple(have[name])}, the {family} config implies "
                            f"{tuple(shape)}")
  for name in have:
    if name not in want:
      raise CheckpointError(f"{path}: unexpected tensor '{name}' (not part of a {family} model with this config)")


def _cast(x: jax.Array, dtype: Any) -> jax.Array:
  if x.dtype == dtype:
    return x
  y = jax.jit(lambda a: a.astype(dtype), out_shardings=x.sharding)(x)
  x.delete()
  return y


def _dtype_name(dtype: Any, fallback: Any) -> str:
  d = np.dtype(dtype if dtype is not None else fallback)
  name = {np.dtype(jnp.bfloat16): "bfloat16", np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(d)
  if name is None:
    raise ValueError(f"dtype {d} is not supported (float32, bfloat16, float16)")
  return name


def _open_weights(path: pathlib.Path):
  from mergejax.checkpoints.safetensors import SafetensorsSource, is_safetensors  # pylint: disable=g-import-not-at-top
  if is_orbax(path):
    from mergejax.checkpoints.orbax import OrbaxSource  # pylint: disable=g-import-not-at-top  (orbax import is slow)
    return OrbaxSource(path)
  if is_safetensors(path):
    return SafetensorsSource(path)
  raise CheckpointError(f"{path}: no weights (expected model.safetensors, model.safetensors.index.json with its "
                        "shards, or an orbax checkpoint)")


def _load_hf(path: pathlib.Path, dtype: Any, mesh: Any) -> PretrainedLM:
  raw = _read_json(path / "config.json")
  try:
    cfg = families.parse_hf_config(raw, where=str(path / "config.json"))
  except families.ConfigError as e:
    raise CheckpointError(str(e)) from None
  ids = families.token_ids(raw)
  source = _open_weights(path)
  have = {s.path: s.shape for s in source.specs() if not s.path.endswith(_DERIVED_SUFFIXES)}
  dtypes = {s.path: s.dtype for s in source.specs()}
  if cfg.tie_embeddings:
    have.pop("lm_head.weight", None)  # a tied checkpoint may store the (identical) output projection
  cfg = cfg.replace(dtype=_dtype_name(dtype, dtypes.get("model.embed_tokens.weight", np.float32)))
  want = llamalike.param_shapes(cfg)
  _check_names(path, cfg.family, have, want)
  try:
    vocab, offset = tok_lib.load_vocabulary(path, ids, cfg.vocab_size)
  except ValueError as e:
    raise CheckpointError(str(e)) from None
  target = llamalike.DTYPES[cfg.dtype]
  params = {}
  names = list(want)
  prefetch = getattr(source, "prefetch", lambda paths: None)
  prefetch(names[:2])
  for i, (name, shape) in enumerate(want.items()):
    prefetch(names[i + 2:i + 3])  # the disk reads ahead while this tensor is copied
    x = source.read([name], {name: _sharding(cfg, name, shape, mesh)})[name]
    params[name] = _cast(x, target) if jnp.issubdtype(x.dtype, jnp.floating) else x
  start = ids["bos"] if ids["bos"] is not None else (ids["eos"][0] if ids["eos"] else 0)
  return PretrainedLM(config=cfg, params=params, adapter=_tokens_adapter(cfg, offset, start), vocabulary=vocab,
                      token_offset=offset, bos_id=ids["bos"], eos_ids=ids["eos"], pad_id=ids["pad"], path=path)


def _load_builtin(path: pathlib.Path, dtype: Any, mesh: Any, vocabulary: Any) -> PretrainedLM:
  from mergejax import models  # pylint: disable=g-import-not-at-top  (the package imports this module lazily)
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  try:
    mc = models.load_config(path)
  except (FileNotFoundError, ValueError) as e:
    raise CheckpointError(str(e)) from None
  if dtype is not None:
    mc = mc.replace(dtype=_dtype_name(dtype, None), param_dtype=_dtype_name(dtype, None))
  cfg = families.builtin_config(mc)
  abstract = nn.unbox(jax.eval_shape(lambda: models.Decoder(mc).init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]))
  want = {"/".join(str(getattr(k, "key", k)) for k in kp): tuple(x.shape)
          for kp, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  source = _open_weights(path)
  _check_names(path, "builtin", {s.path: s.shape for s in source.specs()}, want)

  flat = source.read(list(want), {n: _sharding(cfg, n, s, mesh) for n, s in want.items()})
  target = llamalike.DTYPES[mc.param_dtype]
  params: dict[str, Any] = {}
  for name, x in flat.items():
    node = params
    *parents, leaf = name.split("/")
    for k in parents:
      node = node.setdefault(k, {})
    node[leaf] = _cast(x, target)
  vocab = vocabulary
  if (path / BUILTIN_TOKENIZER).is_file():
    vocab = seqio.SentencePieceVocabulary(str(path / BUILTIN_TOKENIZER))
  if vocab is None:
    raise CheckpointError(f"{path}: no {BUILTIN_TOKENIZER} (a built-in decoder checkpoint saved without its "
                          "tokenizer): pass the vocabulary it was trained with")
  if vocab.vocab_size > mc.vocab_size:
    raise CheckpointError(f"{path / BUILTIN_CONFIG}: the tokenizer has {vocab.vocab_size} tokens but "
                          f"the embedding table has {mc.vocab_size} rows")
  return PretrainedLM(config=cfg, params=params, adapter=family_adapter(cfg), vocabulary=vocab, token_offset=0,
                      bos_id=0, eos_ids=[int(vocab.eos_id)], pad_id=0, path=path)


def from_pretrained(path: str | os.PathLike, *, dtype: Any = None, mesh: jax.sharding.Mesh | None = None,
                    vocabulary: Any = None) -> PretrainedLM:
  """Loads a model checkpoint directory (see the module docstring) onto ``mesh``.

  Args:
    path: a Hugging Face directory, an orbax checkpoint with a config.json, or a built-in decoder checkpoint.
    dtype: parameter and compute dtype (default: the checkpoint's).
    mesh: devices; each parameter is sharded by :func:`mergejax.models.families.partition_spec`. Default:
      the first local device.
    vocabulary: a seqio vocabulary for a built-in decoder checkpoint that carries no ``tokenizer.model``
      of its own (checkpoints of the embedded world carry one); ignored where the checkpoint has a tokenizer.

  Raises:
    CheckpointError (a ValueError) with one line naming the file and field or tensor, for a directory
    without a config or weights, an unsupported architecture or config field, missing, extra or
    misshapen tensors, or a tokenizer larger than the embedding table.
  """
  p = pathlib.Path(path)
  if not p.is_dir():
    raise CheckpointError(f"{p}: not a checkpoint directory")
  if (p / "config.json").is_file():
    return _load_hf(p, dtype, mesh)
  if (p / BUILTIN_CONFIG).is_file():
    return _load_builtin(p, dtype, mesh, vocabulary)
  raise CheckpointError(f"{p}: no config.json (Hugging Face checkpoint) or {BUILTIN_CONFIG} (mergejax built-in "
                        "decoder checkpoint)")


def save_pretrained(lm: PretrainedLM, output: str | os.PathLike, *, output_format: str = "safetensors",
                    params: Params = None, overwrite: bool = False, shard_bytes: int = 4 << 30,
                    info: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Writes ``params`` (default ``lm.params``) as a checkpoint :func:`from_pretrained` reads back: safetensors
  or orbax beside the source's config.json and tokenizer files (Hugging Face families), or a built-in
  decoder checkpoint. ``info`` goes into ``mergejax_manifest.json`` (Hugging Face families) or
  ``train_info.json`` (built-in). Atomic: the output appears only when complete."""
  params = lm.params if params is None else params
  if lm.config.layout == "builtin":
    from mergejax import models  # pylint: disable=g-import-not-at-top
    return models.save_checkpoint(output, models.load_config(lm.path), params, overwrite=overwrite,
                                  info=dict(info) if info else None,
                                  tokenizer_model=lm.vocabulary.sentencepiece_model_file)
  return save_family(params, lm.path, output, family=lm.family, output_format=output_format, overwrite=overwrite,
                     shard_bytes=shard_bytes, info=info)


def save_family(params: Params, source: str | os.PathLike, output: str | os.PathLike, *, family: str,
                output_format: str = "safetensors", overwrite: bool = False, shard_bytes: int = 4 << 30,
                info: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Writes a Hugging Face family's flat ``params`` (checkpoint names) to ``output`` with ``source``'s config.json
  and tokenizer files (see :func:`save_pretrained`)."""
  from mergejax.checkpoints.base import LeafSpec  # pylint: disable=g-import-not-at-top
  if output_format == "safetensors":
    from mergejax.checkpoints.safetensors import SafetensorsSink  # pylint: disable=g-import-not-at-top
    sink = SafetensorsSink(output, sidecar_dir=str(source), overwrite=overwrite, shard_bytes=shard_bytes)
  elif output_format == "orbax":
    from mergejax.checkpoints.orbax import OrbaxSink  # pylint: disable=g-import-not-at-top
    sink = OrbaxSink(output, sidecar_dir=str(source), overwrite=overwrite, keys={n: (n,) for n in params})
  else:
    raise ValueError(f"output_format must be 'safetensors' or 'orbax', got {output_format!r}")
  try:
    sink.begin([LeafSpec(n, tuple(x.shape), np.dtype(x.dtype)) for n, x in params.items()])
    sink.write(params)
    return sink.finalize({"source": str(source), "family": family, **dict(info or {})})
  except BaseException:
    sink.abort()
    raise
