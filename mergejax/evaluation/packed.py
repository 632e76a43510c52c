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

from mergejax.evaluation.adapter import ModelAdapter


def _round_up(x: int, m: int) -> int:
  return -(-max(int(x), 1) // m) * m


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
  copy of the prompt; ``seq_len`` and ``gather_len`` must hold the longest single row.
  """
  g = int(gather_len or seq_len)
  seqs: list[dict[str, list]] = []
  cur = None

  def new_seq():
    d = {k: [] for k in ("tokens", "positions", "example", "branch", "gather", "target", "weight", "row")}
    seqs.append(d)
    return d

  ex_id = -1
  for rows in group_rows(inp_BxL, w_BxL):
    prompt, pieces = _example_layout(inp_BxL, tgt_BxL, w_BxL, rows)
    p = len(prompt)
    chunks, chunk, size, gathered = [], [], p, 0
    for piece in pieces:
      n, m = len(piece[1]), len(piece[2])
      if p + n > seq_len or m > g:
        raise ValueError(f"a row of {p + n} tokens ({m} targets) does not fit in seq_len={seq_len}, "
                         f"gather_len={g}")
      if chunk and (size + n > seq_len or gathered + m > g):
        chunks.append(chunk)
        chunk, size, gathered = [], p, 0
      chunk.append(piece)
      size += n
      gathered += m
    chunks.append(chunk)
    for chunk in chunks:
      ex_id += 1  # each copy of the prompt is its own packed example
      need = p + sum(len(c[1]) for c in chunk)
      need_g = sum(len(c[2]) for c in chunk)
      if cur is None or len(cur["tokens"]) + need > seq_len or len(cur["gather"]) + need_g > g:
        cur = new_seq()
      start = len(cur["tokens"])
      cur["tokens"] += prompt.tolist()
      cur["positions"] += list(range(p))
      cur["example"] += [ex_id] * p
      cur["branch"] += [0] * p
      for b, (r, btoks, targets, weights) in enumerate(chunk, start=1):
        bstart = len(cur["tokens"])
        cur["tokens"] += btoks.tolist()
        cur["positions"] += list(range(p, p + len(btoks)))
        cur["example"] += [ex_id] * len(btoks)
        cur["branch"] += [b] * len(btoks)
        cur["gather"] += [start + p - 1] + list(range(bstart, bstart + len(btoks)))
        cur["target"] += targets.tolist()
        cur["weight"] += weights.tolist()
        cur["row"] += [int(row_ids[r])] * len(targets)

  n_seq = _round_up(len(seqs), rows_multiple) if seqs else 0

  def fill(key, width, pad, dtype):
    out = np.full((n_seq, width), pad, dtype)
    for i, s in enumerate(seqs):
      out[i, :len(s[key])] = s[key]
    return out

  return PackedHost(tokens=fill("tokens", seq_len, 0, np.int32), positions=fill("positions", seq_len, 0, np.int32),
                    example=fill("example", seq_len, -1, np.int32), branch=fill("branch", seq_len, -1, np.int32),
                    gather=fill("gather", g, 0, np.int32), target=fill("target", g, 0, np.int32),
                    weight=fill("weight", g, 0.0, np.float32), row=fill("row", g, -1, np.int64))


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
