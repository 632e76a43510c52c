"""The kernel's output as the engine writes it: float32 math, cast to the output dtype at the end.

To bfloat16 the cast is round-to-nearest-even on the bit pattern in integer ops, bit-identical to
``x.astype(bfloat16)`` (NaN -> quiet NaN with its sign kept; tests/test_engine.py): XLA:CPU keeps integer
ops vectorized inside large fused kernels (TIES, DARE), where it sometimes emits its own convert one
lane at a time. Methods' kernels stay plain (``.astype(out_dtype)``); the engine asks them for float32
and casts here, inside the same jitted program.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp


def cast_output(x: jax.Array, dtype: Any) -> jax.Array:
  """float32 -> ``dtype``; to bfloat16 by integer round-to-nearest-even (see the module docstring)."""
  if jnp.dtype(dtype) != jnp.bfloat16 or x.dtype != jnp.float32:
    return x.astype(dtype)
  # Everything from the bits, so ``x`` has one use: XLA then fuses an expensive producer (a division)
  # into this pass instead of writing ``x`` out in float32 first.
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  rne = (bits + jnp.uint32(0x7FFF) + ((bits >> 16) & jnp.uint32(1))) >> 16
  nan = ((bits & jnp.uint32(0xFF800000)) | jnp.uint32(0x400000)) >> 16
  is_nan = (bits & jnp.uint32(0x7FFFFFFF)) > jnp.uint32(0x7F800000)
  return jax.lax.bitcast_convert_type(jnp.where(is_nan, nan, rne).astype(jnp.uint16), jnp.bfloat16)


def kernel_output(kernel, base, experts, ctx, stats, out_dtype: Any) -> jax.Array:
  """``kernel``'s merged leaf in ``out_dtype`` (traced inside the caller's jitted program)."""
  math_dtype = jnp.float32 if jnp.dtype(out_dtype) == jnp.bfloat16 else out_dtype
  return cast_output(kernel(base, experts, ctx, stats, out_dtype=math_dtype), out_dtype)


@functools.partial(jax.jit, static_argnames=("kernel", "out_dtype"))
def run_kernel(base, experts, ctx, stats, *, kernel, out_dtype):
  """The merged leaf (:func:`kernel_output` in one jitted program)."""
  return kernel_output(kernel, base, experts, ctx, stats, out_dtype)
