"""Sources and sinks of leaves: in-memory pytrees, orbax, HF safetensors and pytorch_model.bin
checkpoints, PEFT LoRA adapters applied to a base.

The orbax classes are imported on first use (orbax-checkpoint costs ~0.4 s to import), so a
safetensors-only merge never loads it.
"""

from typing import Any

from mergejax.checkpoints.base import (CheckpointError, HostViews, LeafSpec, Sink, Source, SpanSink, StagedSink,
                                       TreeKeys)
from mergejax.checkpoints.detect import FORMATS, detect_format, open_source
from mergejax.checkpoints.memory import PytreeSink, PytreeSource
from mergejax.checkpoints.safetensors import SafetensorsSink, SafetensorsSource
from mergejax.checkpoints.torch_bin import TorchBinSource, UnsafePickleError

_LAZY = {"OrbaxSink": "mergejax.checkpoints.orbax", "OrbaxSource": "mergejax.checkpoints.orbax"}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    import importlib  # pylint: disable=g-import-not-at-top
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CheckpointError", "FORMATS", "HostViews", "LeafSpec", "OrbaxSink", "OrbaxSource", "PytreeSink",
           "PytreeSource", "SafetensorsSink", "SafetensorsSource", "Sink", "Source", "SpanSink", "StagedSink",
           "TorchBinSource", "TreeKeys", "UnsafePickleError", "detect_format", "open_source"]
