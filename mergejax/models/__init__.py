"""The built-in PaLM-style decoder, its size table, and its checkpoints."""

from mergejax.models.io import (ORBAX_LOCK, is_complete, load_checkpoint, load_config, load_info,
                                       save_checkpoint)
from mergejax.models.config import SIZES, ModelConfig, flops_per_token, get_config, param_count
from mergejax.models.decoder import LOGICAL_RULES, Decoder

__all__ = [
    "SIZES", "ModelConfig", "get_config", "param_count", "flops_per_token", "Decoder", "LOGICAL_RULES",
    "save_checkpoint", "load_checkpoint", "load_config", "load_info", "is_complete", "ORBAX_LOCK",
]
