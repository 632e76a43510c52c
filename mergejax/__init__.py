"""mergejax: JAX-native, sharded model merging and seqio evaluation.

Library use::

    import mergejax
    method = mergejax.methods.ties(density=0.2, lam=1.0)
    merged = mergejax.merge(base_params, [expert_a, expert_b], method, seed=0)
"""

__version__ = "0.1.0"

from mergejax import methods  # noqa: E402
from mergejax.api import merge  # noqa: E402
from mergejax.engine import NonFiniteError  # noqa: E402

__all__ = ["NonFiniteError", "merge", "methods", "__version__"]
