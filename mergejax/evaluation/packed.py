"""Prefix-shared, packed scoring: each example's prompt is run once for all its answer choices.

Rank classification scores every (prompt, choice) row of seqio's model dataset,
:math:`s = \\sum_t w_t \\log p_\\theta(y_t \\mid y_{<t})` over the row's target positions. Rows of one
example share the prompt, so instead of one padded row per choice this module lays out, per example,

  ``[BOS, prompt...]`` (branch 0, shared) ``[choice 1 tokens]`` (branch 1) ``[choice 2 tokens]`` ...

with each token's position as in its own row (choices restart right after the prompt), and an attention
mask that lets a token see earlier tokens of its example's prompt and of its own branch only. The logits
of a row's first target come from the prompt's last position (the same context for every choice), the
others from the branch. Several examples are packed into one fixed-length sequence (tokens never attend
across examples), so one compiled program of shape ``[B, L]`` serves a whole split with little padding,
and the vocabulary projection runs only at the gathered target positions (``adapter.apply_packed``).

The scores equal those of scoring each row alone up to float32 rounding (a test compares them with
plain ``seqio.Evaluator`` runs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mergejax.models.adapter import ModelAdapter
from mergejax.evaluation.inference import round_up


@dataclasses.dataclass
class PackedHost:
  """Host arrays of packed sequences, ``[S, L]`` (tokens) and ``[S, G]`` (gathered targets).

  Attributes:
    tokens, positions: token ids and RoPE positions.
    example, branch: per token, the packed example (-1 on padding) and branch (0 = shared prompt).
    gather: per scored target, the sequence position whose logits predict it.
    target, weight: the target token and its loss weight (0 on padding).
    row: the global row id (in the caller's row numbering) each target adds to, -1 on padding.
  """

  tokens: np.ndarray
  positions: np.ndarray
  example: np.ndarray
  branch: np.ndarray
  gather: np.ndarray
  target: np.ndarray
  weight: np.ndarray
  row: np.ndarray

  @property
  def num_sequences(self) -> int:
    return self.tokens.shape[0]


def _example_layout(inp_BxL: np.ndarray, tgt_BxL: np.ndarray, w_BxL: np.ndarray, rows: Sequence[int]):
  """Splits one example's rows (same prompt) into (prompt tokens, [(row, branch tokens, targets)])."""
  pieces = []
  prompt = None
  for r in rows:
    nz = np.nonzero(w_BxL[r] > 0)[0]
    s, e = int(nz[0]), int(nz[-1])
    if prompt is None:
      prompt = inp_BxL[r, :s + 1]
    # Position s (the prompt's last token) predicts target s; branch tokens s+1..e predict s+1..e.
    pieces.append((r, inp_BxL[r, s + 1:e + 1], tgt_BxL[r, s:e + 1], w_BxL[r, s:e + 1]))
  return prompt, pieces


def group_rows(inp_BxL: np.ndarray, w_BxL: np.ndarray) -> list[list[int]]:
  """Rows grouped by identical prompt (the input tokens up to the first target), first-seen order.

  Rows without any target (weight 0 everywhere) are left out: their score is 0.
  """
  groups: dict[bytes, list[int]] = {}
  for r in range(inp_BxL.shape[0]):
    nz = np.nonzero(w_BxL[r] > 0)[0]
    if not nz.size:
      continue
    groups.setdefault(inp_BxL[r, :nz[0] + 1].tobytes(), []).append(r)
  return list(groups.values())


def pack(inp_BxL: np.ndarray, tgt_BxL: np.ndarray, w_BxL: np.ndarray, row_ids: np.ndarray, *,
         seq_len: int, gather_len: int | None = None, rows_multiple: int = 1) -> PackedHost:
  """Packs rows (seqio ``decoder_input_tokens`` / ``decoder_target_tokens`` / ``decoder_loss_weights``)
  into prefix-shared sequences of ``seq_len`` tokens and ``gather_len`` (default ``seq_len``) scored
  targets; ``row_ids`` number the rows for the output.

  An example whose prompt and choices do not fit in one sequence is split into several, each with a
  copy of the prompt; ``seq_len`` and ``gather_len`` must hold the longest single row. Examples are
  placed best-fit decreasing (largest first, each into the fullest sequence it still fits), which
  leaves little padding; a row's score does not depend on where its example lands.
  """
  g = int(gather_len or seq_len)
  items = []  # (prompt, pieces): one packed example each
  for rows in group_rows(inp_BxL, w_BxL):
    prompt, pieces = _example_layout(inp_BxL, tgt_BxL, w_BxL, rows)
    p = len(prompt)
    chunk, size, gathered = [], p, 0
    for piece in pieces:
      n, m = len(piece[1]), len(piece[2])
      if p + n > seq_len or m > g:
        raise ValueError(f"a row of {p + n} tokens ({m} targets) does not fit in seq_len={seq_len}, "
                         f"gather_len={g}")
      if chunk and (size + n > seq_len or gathered + m > g):
        items.append((prompt, chunk))
        chunk, size, gathered = [], p, 0
      chunk.append(piece)
      size += n
      gathered += m
    items.append((prompt, chunk))

  need = [len(pr) + sum(len(c[1]) for c in ch) for pr, ch in items]
  need_g = [sum(len(c[2]) for c in ch) for _, ch in items]
  # Best-fit decreasing on tokens (the gathered-target budget is checked too).
  free_tok: list[int] = []
  free_g: list[int] = []
  contents: list[list[int]] = []
  by_free: list[list[int]] = [[] for _ in range(seq_len + 1)]  # free tokens -> open sequences
  for i in sorted(range(len(items)), key=lambda i: (-need[i], i)):
    placed = -1
    for f in range(need[i], seq_len + 1):
      bucket = by_free[f]
      for j, s in enumerate(bucket):
        if free_g[s] >= need_g[i]:
          placed = s
          del bucket[j]
          break
      if placed >= 0:
        break
    if placed < 0:
      placed = len(contents)
      contents.append([])
      free_tok.append(seq_len)
      free_g.append(g)
    contents[placed].append(i)
    free_tok[placed] -= need[i]
    free_g[placed] -= need_g[i]
    by_free[free_tok[placed]].append(placed)

  n_seq = round_up(len(contents), rows_multiple) if contents else 0
  out = PackedHost(tokens=np.zeros((n_seq, seq_len), np.int32), positions=np.zeros((n_seq, seq_len), np.int32),
                   example=np.full((n_seq, seq_len), -1, np.int32), branch=np.full((n_seq, seq_len), -1, np.int32),
                   gather=np.zeros((n_seq, g), np.int32), target=np.zeros((n_seq, g), np.int32),
                   weight=np.zeros((n_seq, g), np.float32), row=np.full((n_seq, g), -1, np.int64))
  for s, members in enumerate(contents):
    t = k = 0  # next token / gathered slot of sequence s
    for i in sorted(members):
      prompt, chunk = items[i]
      p = len(prompt)
      start = t
      out.tokens[s, t:t + p] = prompt
      out.positions[s, t:t + p] = np.arange(p)
      out.example[s, t:t + p] = i  # each copy of the prompt is its own packed example
      out.branch[s, t:t + p] = 0
      t += p
      for b, (r, btoks, targets, weights) in enumerate(chunk, start=1):
        n, m = len(btoks), len(targets)
        out.tokens[s, t:t + n] = btoks
        out.positions[s, t:t + n] = np.arange(p, p + n)
        out.example[s, t:t + n] = i
        out.branch[s, t:t + n] = b
        out.gather[s, k] = start + p - 1
        out.gather[s, k + 1:k + m] = np.arange(t, t + n)
        out.target[s, k:k + m] = targets
        out.weight[s, k:k + m] = weights
        out.row[s, k:k + m] = int(row_ids[r])
        t += n
        k += m
  return out


def packed_mask(example_BxL: jax.Array, branch_BxL: jax.Array) -> jax.Array:
  """``[B, L, L]`` attention mask: query i sees key j <= i of the same example whose branch is the
  shared prompt (0) or i's own branch. Padding (example -1) sees only earlier padding."""
  l = example_BxL.shape[1]
  causal = jnp.tril(jnp.ones((l, l), jnp.bool_))[None]
  same_ex = example_BxL[:, :, None] == example_BxL[:, None, :]
  br_q, br_k = branch_BxL[:, :, None], branch_BxL[:, None, :]
  return causal & same_ex & ((br_k == 0) | (br_k == br_q))


def packed_target_logprobs(adapter: ModelAdapter, params: Any, tokens_BxL, positions_BxL, example_BxL,
                           branch_BxL, gather_BxG, target_BxG, weight_BxG) -> jax.Array:
  """``w * log p(target)`` at every gathered position, float32 ``[B, G]`` (jittable)."""
  mask = packed_mask(example_BxL, branch_BxL)
  z = adapter.apply_packed(params, tokens_BxL, positions_BxL, mask, gather_BxG).astype(jnp.float32)
  tok = jnp.take_along_axis(z, target_BxG[..., None], axis=-1)[..., 0]
  logp = tok - jax.nn.logsumexp(z, axis=-1)
  return jnp.where(weight_BxG > 0, logp * weight_BxG, 0.0)
