"""Sources and sinks of leaves: in-memory pytrees (here), orbax and safetensors checkpoints."""

from mergejax.checkpoints.base import LeafSpec, Sink, Source
from mergejax.checkpoints.memory import PytreeSink, PytreeSource

__all__ = ["LeafSpec", "PytreeSink", "PytreeSource", "Sink", "Source"]
