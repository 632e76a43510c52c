"""Sources and sinks of leaves: in-memory pytrees, orbax and HF safetensors checkpoints."""

from mergejax.checkpoints.base import CheckpointError, LeafSpec, Sink, Source
from mergejax.checkpoints.detect import FORMATS, detect_format, open_source
from mergejax.checkpoints.memory import PytreeSink, PytreeSource
from mergejax.checkpoints.orbax import OrbaxSink, OrbaxSource
from mergejax.checkpoints.safetensors import SafetensorsSink, SafetensorsSource

__all__ = ["CheckpointError", "FORMATS", "LeafSpec", "OrbaxSink", "OrbaxSource", "PytreeSink", "PytreeSource",
           "SafetensorsSink", "SafetensorsSource", "Sink", "Source", "detect_format", "open_source"]
