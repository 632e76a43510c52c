"""Model families: a checkpoint's config -> :class:`~mergejax.models.llamalike.DecoderConfig`.

Each Hugging Face family reads its ``config.json`` with the defaults of its transformers config class
(a field missing from the file means that default), in either spelling of the RoPE settings:
transformers 4's ``rope_theta`` + ``rope_scaling`` (+ Gemma 3's ``rope_local_base_freq``) or transformers
5's ``rope_parameters`` (flat, or nested per layer type). A field that would change the math and that
the family does not implement (an unknown ``rope_scaling`` type, an unknown activation, a quantization
config, bidirectional attention, ...) raises :class:`ConfigError` naming the file and field: nothing is
approximated. Fields that cannot change the logits (token ids, dtype, generation defaults, dropout, ...)
are ignored, and so is an unknown field whose value is off (null or false).

=============== ===========================================================================
model_type      what differs from Llama
=============== ===========================================================================
``llama``       (Llama 2/3.x) ``rope_scaling`` type ``llama3``; optional attention/MLP biases
``mistral``     a sliding window on every layer when ``sliding_window`` is set
``qwen2``       q/k/v biases; windows on layers >= ``max_window_layers`` with ``use_sliding_window``
``qwen3``       RMSNorm of each query/key head; optional attention biases
``gemma2``      (1 + w) norms in float32, sandwich norms, GeGLU, sqrt(D) embedding scale,
                ``query_pre_attn_scalar``, attention and final soft caps, alternating local/global
``gemma3_text`` as Gemma 2 without soft caps, plus q/k norms and local/global RoPE bases
=============== ===========================================================================
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from mergejax.models.llamalike import DecoderConfig, Rope, global_names, layer_names


class ConfigError(ValueError):
  """A checkpoint config the families cannot run exactly (the message names the file and field)."""


_ACT = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
        "gelu": "gelu"}

# Fields that cannot change the logits of a causal forward pass.
_HARMLESS = frozenset("""
architectures model_type torch_dtype dtype transformers_version _name_or_path name_or_path use_cache
initializer_range bos_token_id eos_token_id pad_token_id sep_token_id decoder_start_token_id attention_dropout
hidden_dropout embd_pdrop resid_pdrop output_attentions output_hidden_states return_dict tokenizer_class
cache_implementation pretraining_tp id2label label2id problem_type finetuning_task prefix task_specific_params
is_decoder is_encoder_decoder add_cross_attention cross_attention_hidden_size tie_encoder_decoder torchscript
use_bfloat16 tf_legacy_loss pruned_heads chunk_size_feed_forward max_length min_length do_sample early_stopping
num_beams num_beam_groups diversity_penalty temperature top_k top_p typical_p repetition_penalty length_penalty
no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores
return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
exponential_decay_length_penalty suppress_tokens begin_suppress_tokens _attn_implementation_autoset
_attn_implementation use_return_dict image_token_index boi_token_index eoi_token_index
""".split())

_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def _rope_dict(cfg: Mapping[str, Any], where: str, theta_default: float) -> dict[str, Any] | None:
  """The flat rope settings (transformers 5 ``rope_parameters`` or 4 ``rope_scaling`` + ``rope_theta``)."""
  params = cfg.get("rope_parameters")
  scaling = cfg.get("rope_scaling")
  if params is not None and not isinstance(params, dict):
    raise ConfigError(f"{where}: field 'rope_parameters' must be an object, got {params!r}")
  if scaling is not None and not isinstance(scaling, dict):
    raise ConfigError(f"{where}: field 'rope_scaling' must be an object or null, got {scaling!r}")
  out = dict(params or scaling or {})
  out.setdefault("rope_theta", cfg.get("rope_theta", theta_default))
  return out


def _rope(d: Mapping[str, Any], field: str, where: str, max_len: int) -> Rope:
  kind = d.get("rope_type", d.get("type", "default"))
  allowed = {"rope_type", "type", "rope_theta"}
  if kind == "linear":
    allowed |= {"factor"}
  elif kind == "llama3":
    allowed |= {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
  elif kind != "default":
    raise ConfigError(f"{where}: field '{field}.rope_type' = {kind!r} is not supported (supported: default, "
                      "linear, llama3)")
  for key, value in d.items():
    if key not in allowed and not (key == "partial_rotary_factor" and value == 1.0) and value is not None:
      raise ConfigError(f"{where}: field '{field}.{key}' = {value!r} is not supported for rope type {kind!r}")
  try:
    return Rope(theta=float(d["rope_theta"]), kind=kind, factor=float(d.get("factor", 1.0)),
                low_freq_factor=float(d.get("low_freq_factor", 1.0)),
                high_freq_factor=float(d.get("high_freq_factor", 4.0)),
                original_max_len=int(d.get("original_max_position_embeddings") or max_len))
  except (KeyError, TypeError, ValueError) as e:
    raise ConfigError(f"{where}: field '{field}' has a bad value ({type(e).__name__}: {e})") from None


def _windows(cfg, where: str, n_layers: int, sliding: int | None, default_types: list[str]) -> tuple[int, ...]:
  types = cfg.get("layer_types") or default_types
  if len(types) != n_layers:
    raise ConfigError(f"{where}: field 'layer_types' has {len(types)} entries for {n_layers} layers")
  bad = sorted(set(types) - {"sliding_attention", "full_attention"})
  if bad:
    raise ConfigError(f"{where}: field 'layer_types' has unsupported layer type {bad[0]!r}")
  if not sliding:
    return ()
  return tuple(int(sliding) if t == "sliding_attention" else 0 for t in types)


class _Reader:
  """Reads fields of one config.json, remembering which ones were used."""

  def __init__(self, cfg: Mapping[str, Any], where: str, defaults: Mapping[str, Any]):
    self.cfg, self.where, self.defaults = dict(cfg), where, dict(defaults)
    self.used: set[str] = set()

  def __call__(self, key: str, default: Any = None) -> Any:
    self.used.add(key)
    if key in self.cfg:
      return self.cfg[key]
    return self.defaults.get(key, default)

  def int(self, key: str, default: Any = None) -> int:
    v = self(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
      raise ConfigError(f"{self.where}: field '{key}' must be an integer, got {v!r}")
    return v

  def require_off(self, key: str, reason: str) -> None:
    v = self(key)
    if v not in (None, False, 0):
      raise ConfigError(f"{self.where}: field '{key}' = {v!r} is not supported ({reason})")

  def check_unused(self) -> None:
    for key, value in self.cfg.items():
      if key in self.used or key in _HARMLESS or value is None or value is False:
        continue
      raise ConfigError(f"{self.where}: field '{key}' = {_short(value)} is not understood by the "
                        f"{self.cfg.get('model_type')} family (it may change the model's math)")


def _short(v: Any) -> str:
  s = repr(v)
  return s if len(s) < 60 else s[:57] + "..."


# Per family: transformers' config-class defaults of the fields read.
_DEFAULTS = {
    "llama": dict(hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "mistral": dict(hidden_act="silu", max_position_embeddings=4096 * 32, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, num_key_value_heads=8, sliding_window=4096),
    "qwen2": dict(hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  num_key_value_heads=32, sliding_window=4096, max_window_layers=28),
    "qwen3": dict(hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  num_key_value_heads=32, head_dim=128, sliding_window=4096, max_window_layers=28),
    "gemma2": dict(hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
                   tie_word_embeddings=True, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                   sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    "gemma3_text": dict(hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072, rms_norm_eps=1e-6,
                        tie_word_embeddings=True, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                        sliding_window=4096, final_logit_softcapping=None, sliding_window_pattern=6),
}

# Default token ids of each transformers config class (used when config.json has none).
DEFAULT_TOKEN_IDS = {
    "llama": dict(bos_token_id=1, eos_token_id=2, pad_token_id=None),
    "mistral": dict(bos_token_id=1, eos_token_id=2, pad_token_id=None),
    "qwen2": dict(bos_token_id=None, eos_token_id=None, pad_token_id=None),
    "qwen3": dict(bos_token_id=None, eos_token_id=None, pad_token_id=None),
    "gemma2": dict(bos_token_id=2, eos_token_id=1, pad_token_id=0),
    "gemma3_text": dict(bos_token_id=2, eos_token_id=1, pad_token_id=0),
}


def _parse_hf(model_type: str, cfg: Mapping[str, Any], where: str) -> DecoderConfig:
  r = _Reader(cfg, where, _DEFAULTS[model_type])
  for key in _SIZES:
    r.int(key)
  d, n_heads, n_layers = r("hidden_size"), r("num_attention_heads"), r("num_hidden_layers")
  n_kv = r("num_key_value_heads") or n_heads
  head_dim = r("head_dim") or d // n_heads
  max_len = r.int("max_position_embeddings")
  gemma = model_type.startswith("gemma")
  act_key = "hidden_activation" if gemma else "hidden_act"
  act = r(act_key)
  if gemma:
    r.used.add("hidden_act")  # older Gemma configs carry both; transformers reads hidden_activation
  if act not in _ACT:
    raise ConfigError(f"{where}: field '{act_key}' = {act!r} is not supported (supported: {sorted(_ACT)})")
  r.require_off("quantization_config", "quantized weights")
  r.require_off("auto_map", "custom modeling code")
  r.require_off("use_bidirectional_attention", "a bidirectional encoder, not a causal decoder")
  r.require_off("use_mrope", "multimodal RoPE")
  if r("partial_rotary_factor", 1.0) not in (None, 1.0):
    raise ConfigError(f"{where}: field 'partial_rotary_factor' = {r('partial_rotary_factor')!r} is not supported")
  attn_bias = bool(r("attention_bias", False))
  kw: dict[str, Any] = dict(
      family=model_type, vocab_size=r("vocab_size"), d_model=d, n_layers=n_layers, n_heads=n_heads,
      n_kv_heads=int(n_kv), head_dim=int(head_dim), d_ff=r("intermediate_size"), activation=_ACT[act],
      norm_eps=float(r("rms_norm_eps")), tie_embeddings=bool(r("tie_word_embeddings")), max_len=max_len,
      qkv_bias=attn_bias, o_bias=attn_bias)
  r.used.update({"rope_theta", "rope_scaling", "rope_parameters"})

  if model_type == "llama":
    kw["mlp_bias"] = bool(r("mlp_bias", False))
    r.used.add("head_dim")
  elif model_type == "mistral":
    sw = r("sliding_window")
    kw["windows"] = (int(sw),) * n_layers if sw else ()
  elif model_type in ("qwen2", "qwen3"):
    sliding = r("sliding_window")  # set in released configs even where use_sliding_window is false
    sliding = sliding if r("use_sliding_window", False) else None
    mwl = r.int("max_window_layers")
    types = ["sliding_attention" if sliding and i >= mwl else "full_attention" for i in range(n_layers)]
    kw["windows"] = _windows(cfg, where, n_layers, sliding, types)
    r.used.add("layer_types")
    if model_type == "qwen2":
      kw.update(qkv_bias=True, o_bias=False)
    else:
      kw["qk_norm"] = True

  if gemma:
    r.used.add("layer_types")
    kw.update(norm_plus_one=True, norm_scale_in_float32=True, post_norms=True, embed_scale=math.sqrt(d),
              query_scale=float(r("query_pre_attn_scalar")) ** -0.5,
              final_softcap=float(r("final_logit_softcapping") or 0.0))
    if model_type == "gemma2":
      kw["attn_softcap"] = float(r("attn_logit_softcapping") or 0.0)
      default_types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
    else:
      r.used.add("attn_logit_softcapping")  # transformers' Gemma 3 attention does not apply it
      kw["qk_norm"] = True
      pattern = r.int("sliding_window_pattern")
      default_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
    kw["windows"] = _windows(cfg, where, n_layers, r("sliding_window"), default_types)
    if not kw["windows"]:
      kw["windows"] = (0,) * n_layers

  if model_type == "gemma3_text":
    r.used.add("rope_local_base_freq")
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and ("full_attention" in params or "sliding_attention" in params):
      full = dict(params.get("full_attention") or {})
      local = dict(params.get("sliding_attention") or {})
    else:
      full = {"rope_type": "default", **(cfg.get("rope_scaling") or params or {})}
      local = {"rope_type": "default"}
    full.setdefault("rope_theta", cfg.get("rope_theta", 1_000_000.0))
    local.setdefault("rope_theta", cfg.get("rope_local_base_freq", 10_000.0))
    types = cfg.get("layer_types") or default_types
    kw["ropes"] = (_rope(full, "rope_parameters.full_attention", where, max_len),
                   _rope(local, "rope_parameters.sliding_attention", where, max_len))
    kw["rope_ids"] = tuple(1 if t == "sliding_attention" else 0 for t in types)
  else:
    kw["ropes"] = (_rope(_rope_dict(cfg, where, 10_000.0), "rope_scaling", where, max_len),)

  r.check_unused()
  try:
    return DecoderConfig(**kw)
  except ValueError as e:
    raise ConfigError(f"{where}: {e}") from None


HF_MODEL_TYPES = tuple(_DEFAULTS)


def parse_hf_config(cfg: Mapping[str, Any], where: str = "config.json") -> DecoderConfig:
  """The DecoderConfig of a Hugging Face ``config.json`` (ConfigError naming ``where`` and the field)."""
  if not isinstance(cfg, Mapping):
    raise ConfigError(f"{where}: not a JSON object")
  model_type = cfg.get("model_type")
  if model_type is None:
    raise ConfigError(f"{where}: field 'model_type' is missing")
  if model_type not in _DEFAULTS:
    hint = " (multimodal; only text checkpoints, model_type 'gemma3_text', are)" if model_type == "gemma3" else ""
    raise ConfigError(f"{where}: field 'model_type' = {model_type!r} is not supported{hint}; supported: "
                      f"{', '.join(HF_MODEL_TYPES)} and mergejax's built-in decoder")
  missing = [k for k in _SIZES if k not in cfg]
  if missing:
    raise ConfigError(f"{where}: field '{missing[0]}' is missing")
  return _parse_hf(model_type, cfg, where)


def token_ids(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """``{"bos": id|None, "eos": [ids], "pad": id|None}`` from a config.json (family defaults if absent)."""
  defaults = DEFAULT_TOKEN_IDS.get(cfg.get("model_type"), {})
  get = lambda k: cfg[k] if k in cfg else defaults.get(k)
  eos = get("eos_token_id")
  eos = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
  bos, pad = get("bos_token_id"), get("pad_token_id")
  return {"bos": None if bos is None else int(bos), "eos": eos, "pad": None if pad is None else int(pad)}


def builtin_config(model_config: Any) -> DecoderConfig:
  """The DecoderConfig of the built-in PaLM-style decoder (:class:`mergejax.models.ModelConfig`): MHA,
  SwiGLU, RMSNorm (eps 1e-6, scale in float32), RoPE, tied embedding with logits scaled by D^-1/2."""
  c = model_config
  return DecoderConfig(
      family="builtin", vocab_size=c.vocab_size, d_model=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads,
      n_kv_heads=c.n_heads, head_dim=c.dims_per_head, d_ff=c.d_ff, activation="silu", norm_eps=1e-6,
      norm_scale_in_float32=True, tie_embeddings=True, logits_scale=c.d_model ** -0.5,
      ropes=(Rope(theta=float(c.rope_base), kind="builtin"),), max_len=c.max_len, layout="builtin", dtype=c.dtype)


def builtin_flatten(params: Mapping[str, Any], n_layers: int) -> dict[str, Any]:
  """The built-in decoder's nested params as the flat ``a/b/c`` names of :func:`llamalike.param_shapes`
  (a scanned stack, ``layers/...`` with a leading layer axis, is split into ``layer_<i>/...``)."""
  flat: dict[str, Any] = {}

  def walk(prefix: str, node: Any) -> None:
    if isinstance(node, Mapping):
      for k, v in node.items():
        walk(f"{prefix}/{k}" if prefix else str(k), v)
    else:
      flat[prefix] = node

  walk("", params)
  out = {}
  for name, x in flat.items():
    if name.startswith("layers/"):
      for i in range(n_layers):
        out[f"layer_{i}/" + name[len("layers/"):]] = x[i]
    else:
      out[name] = x
  return out


def partition_spec(cfg: DecoderConfig, name: str, shape: tuple[int, ...], mesh: Any) -> Any:
  """The PartitionSpec of parameter ``name`` on ``mesh``: tensor parallelism over a "tp" or "model" axis
  (attention heads, MLP hidden units and vocabulary split; column-parallel q/k/v/gate/up, row-parallel
  o/down), FSDP over every other axis (the model dimension D split). A dimension the axis does not divide
  stays whole, so any mesh works."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  tp = next((a for a in ("tp", "model") if a in mesh.axis_names), None)
  fsdp = tuple(a for a in mesh.axis_names if a != tp) or None
  role = _role_of(cfg, name)
  if cfg.layout == "builtin":
    axes = {"embed": ("tp", "fsdp"), "q": ("fsdp", "tp", None), "k": ("fsdp", "tp", None), "v": ("fsdp", "tp", None),
            "o": ("tp", None, "fsdp"), "gate": ("fsdp", "tp"), "up": ("fsdp", "tp"), "down": ("tp", "fsdp")}
  else:
    axes = {"embed": ("tp", "fsdp"), "lm_head": ("tp", "fsdp"), "q": ("tp", "fsdp"), "k": ("tp", "fsdp"),
            "v": ("tp", "fsdp"), "o": ("fsdp", "tp"), "gate": ("tp", "fsdp"), "up": ("tp", "fsdp"),
            "down": ("fsdp", "tp"), "q_bias": ("tp",), "k_bias": ("tp",), "v_bias": ("tp",),
            "gate_bias": ("tp",), "up_bias": ("tp",)}
  names = {"tp": tp, "fsdp": fsdp}
  spec = []
  for dim, a in zip(shape, axes.get(role, ())):
    mesh_axes = names.get(a) if a else None
    size = 1
    for m in ((mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes or ()):
      size *= mesh.shape[m]
    spec.append(mesh_axes if mesh_axes and dim % size == 0 else None)
  return P(*spec)


def _role_of(cfg: DecoderConfig, name: str) -> str:
  for role, n in global_names(cfg).items():
    if n == name:
      return role
  i = name.split(".")[2] if cfg.layout == "hf" else name.split("/")[0][len("layer_"):]
  for role, n in layer_names(cfg, int(i)).items():
    if n == name:
      return role
  raise KeyError(name)
