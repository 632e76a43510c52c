"""mergejax: JAX-native, sharded model merging and seqio evaluation.

Library use::

    import mergejax
    method = mergejax.methods.ties(density=0.2, lam=1.0)
    merged = mergejax.merge(base_params, [expert_a, expert_b], method, seed=0)

The names below are imported on first use (PEP 562), so that importing a submodule (the console
commands in :mod:`mergejax.cli`) runs nothing of JAX or NumPy before that submodule decides how.
"""

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute or None for the module itself)
_EXPORTS = {"methods": ("mergejax.methods", None), "merge": ("mergejax.api", "merge"),
            "NonFiniteError": ("mergejax.engine", "NonFiniteError")}

__all__ = ["NonFiniteError", "merge", "methods", "__version__"]


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'mergejax' has no attribute {name!r}")
  module, attribute = _EXPORTS[name]
  value = importlib.import_module(module)
  value = value if attribute is None else getattr(value, attribute)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
