"""RegMean, Fisher merging and AdaMerging in float64 NumPy, for the test models of
tests/test_methods_data_aware.py (a ReLU MLP and a linear softmax classifier), from the papers' formulas:
layer inputs, Fisher and entropy gradients written out by hand."""

from __future__ import annotations

import numpy as np


def _f(x):
  return np.asarray(x, np.float64)


def mlp_layer_inputs(params, x, mask):
  """The inputs of the two linear layers of h = relu(x W1 + b1), logits = h W2^T + b2, counted rows only."""
  x = _f(x)
  h = np.maximum(x @ _f(params["l1"]["w"]) + _f(params["l1"]["b"]), 0.0)
  keep = np.asarray(mask, bool)
  return {"l1/w": x[keep], "l2/w": h[keep]}


def regmean(experts, inputs, alpha):
  """experts[t]: flat {path: array}; inputs[t][path]: X_t (rows) for the linear leaves (l2/w is (out, in))."""
  out = {}
  for p in experts[0]:
    if p not in inputs[0]:
      out[p] = sum(_f(e[p]) for e in experts) / len(experts)
      continue
    grams = []
    for xs in inputs:
      g = xs[p].T @ xs[p]
      grams.append(alpha * g + (1 - alpha) * np.diag(np.diag(g)))
    ws = [_f(e[p]) if p == "l1/w" else _f(e[p]).T for e in experts]
    w = np.linalg.solve(sum(grams), sum(g @ w for g, w in zip(grams, ws)))
    out[p] = w if p == "l1/w" else w.T
  return out


def softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def linear_fisher(params, x, y):
  """Empirical diagonal Fisher of logits = x W + b: the mean over examples of the squared gradient of
  log p(y | x), d/dz = onehot(y) - softmax(z), d/dW = x (d/dz)^T."""
  x = _f(x)
  p = softmax(x @ _f(params["w"]) + _f(params["b"]))
  g = np.eye(p.shape[1])[y] - p
  fw = np.mean([np.outer(xi, gi) ** 2 for xi, gi in zip(x, g)], axis=0)
  fb = np.mean(g ** 2, axis=0)
  return {"w": fw, "b": fb}


def fisher_merge(experts, fishers, *, min_fisher, normalize, weights=None):
  n = len(experts)
  w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  if normalize:
    fishers = [{k: v / np.sqrt(sum(np.sum(u ** 2) for u in f.values())) for k, v in f.items()} for f in fishers]
  return {k: sum(w[t] * (fishers[t][k] + min_fisher) * _f(experts[t][k]) for t in range(n))
          / sum(w[t] * (fishers[t][k] + min_fisher) for t in range(n)) for k in experts[0]}


def adamerging(base, experts, stream, *, init, lr, steps, layer_wise=True):
  """Adam (optax defaults b1 .9, b2 .999, eps 1e-8) on the mean entropy of softmax(x W + b) with
  W = W0 + sum_t c_t tau_t (c clipped to [0, 1]; one c per leaf or per expert), dH/dz = -p (log p + H)."""
  keys = ("b", "w")
  b0 = {k: _f(base[k]) for k in keys}
  taus = [{k: _f(e[k]) - b0[k] for k in keys} for e in experts]
  n = len(experts)
  lam = np.full((2 if layer_wise else 1, n), init)
  m, v = np.zeros_like(lam), np.zeros_like(lam)
  for step in range(steps):
    x = _f(stream[step % len(stream)]["x"])
    c = np.clip(lam, 0, 1)
    row = lambda j: c[j] if layer_wise else c[0]
    params = {k: b0[k] + sum(row(j)[t] * taus[t][k] for t in range(n)) for j, k in enumerate(keys)}
    p = softmax(x @ params["w"] + params["b"])
    h = -np.sum(p * np.log(p), axis=1)
    dz = -p * (np.log(p) + h[:, None]) / x.shape[0]
    dparams = {"w": x.T @ dz, "b": dz.sum(0)}
    grad = np.zeros_like(lam)
    for j, k in enumerate(keys):
      for t in range(n):
        grad[j if layer_wise else 0, t] += np.sum(dparams[k] * taus[t][k])
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * grad ** 2
    mh, vh = m / (1 - 0.9 ** (step + 1)), v / (1 - 0.999 ** (step + 1))
    lam = lam - lr * mh / (np.sqrt(vh) + 1e-8)
  c = np.clip(lam, 0, 1)
  return {k: b0[k] + sum((c[j] if layer_wise else c[0])[t] * taus[t][k] for t in range(n)) for j, k in enumerate(keys)}
