"""Model families (one llama-like decoder: Llama, Mistral, Qwen2/3, Gemma 2/3 and the built-in PaLM-style
decoder), ``from_pretrained`` onto a mesh, checkpoints of the built-in decoder, and its size table.

``from_pretrained``, ``save_pretrained``, ``PretrainedLM`` and ``family_adapter`` load on first use (they import
seqio and TensorFlow for tokenizers).
"""

from mergejax.models.io import (ORBAX_LOCK, is_complete, load_checkpoint, load_config, load_info,
                                       save_checkpoint)
from mergejax.models.config import SIZES, ModelConfig, flops_per_token, get_config, param_count
from mergejax.models.decoder import LOGICAL_RULES, Decoder
from mergejax.models.families import ConfigError, parse_hf_config
from mergejax.models.llamalike import DecoderConfig, LlamaLike, Rope, param_shapes

_LAZY = ("from_pretrained", "save_pretrained", "PretrainedLM", "family_adapter", "param_spec")


def __getattr__(name: str):
  if name in _LAZY:
    from mergejax.models import pretrained  # pylint: disable=g-import-not-at-top
    return getattr(pretrained, name)
  raise AttributeError(f"module 'mergejax.models' has no attribute {name!r}")


__all__ = [
    "SIZES", "ModelConfig", "get_config", "param_count", "flops_per_token", "Decoder", "LOGICAL_RULES",
    "save_checkpoint", "load_checkpoint", "load_config", "load_info", "is_complete", "ORBAX_LOCK",
    "DecoderConfig", "LlamaLike", "Rope", "param_shapes", "ConfigError", "parse_hf_config", *_LAZY,
]
