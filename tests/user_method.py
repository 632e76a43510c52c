"""A merge method of a user's own, registered on import (``--config.modules=tests.user_method``):
the engine, the CLI (flags from its schema) and the study know it by its traits only."""

import jax
import jax.numpy as jnp

from mergejax import methods


@methods.method_factory(formula="theta_0 + alpha * (tau_t of largest |tau_t|, per entry)",
                        alpha=methods.number("scale of the chosen task vector", 0.0, 2.0),
                        absolute=methods.flag("pick by |tau| (else by tau)"))
def largest_delta(alpha: float = 1.0, absolute: bool = True) -> methods.MergeMethod:
  """Per entry, the expert whose task vector is largest (by magnitude, or signed), scaled."""

  def pick(base, experts, ctx, stats, *, out_dtype):
    del ctx, stats
    b = base.astype(jnp.float32)
    best = experts[0].astype(jnp.float32) - b
    for e in experts[1:]:
      tau = e.astype(jnp.float32) - b
      best = jnp.where((jnp.abs(tau) if absolute else tau) > (jnp.abs(best) if absolute else best), tau, best)
    return (b + alpha * best).astype(out_dtype)

  kernel = jax.jit(pick, static_argnames="out_dtype")
  return methods.MergeMethod(name="largest_delta", hparams={"alpha": alpha, "absolute": absolute},
                             traits=methods.Traits(uses_base=True, elementwise=True), kernel=kernel)


methods.register("largest_delta", largest_delta)
