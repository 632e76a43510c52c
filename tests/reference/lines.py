"""LiNeS (Wang et al., ICLR 2025, arXiv 2410.17146) applied to the task-arithmetic sum, in float64."""

from __future__ import annotations

import numpy as np


def lines(base, experts, *, layer, n_layers, beta, alpha=None, weights=None):
  """theta_0 + s * sum_t w_t tau_t, s = alpha + beta * layer / (L - 1) (alpha for layer None);
  alpha None -> 1/N. layer may be an int, None, or "stacked" (axis 0 indexes the layers)."""
  b = np.asarray(base, np.float64)
  taus = [np.asarray(e, np.float64) - b for e in experts]
  w = np.ones(len(taus)) if weights is None else np.asarray(weights, np.float64)
  a = 1.0 / len(taus) if alpha is None else alpha
  step = beta / (n_layers - 1) if n_layers > 1 else 0.0
  if layer is None:
    s = a
  elif layer == "stacked":
    s = (a + step * np.arange(b.shape[0])).reshape((-1,) + (1,) * (b.ndim - 1))
  else:
    s = a + step * layer
  return b + s * sum(wi * t for wi, t in zip(w, taus))
