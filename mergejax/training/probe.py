r"""A quick rank-classification probe for world-building checks (not the study's evaluator).

T0's protocol: an example's prediction is the choice with the highest total log-likelihood
:math:`\sum_t \log p(c_t \mid x, c_{<t})` of its tokens plus EOS, given the input ``x``; accuracy is
the fraction predicted right. Sequences are fed exactly as seqio's DecoderFeatureConverter does in
training (inputs ++ targets, shifted right with BOS id 0), so train and probe agree.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mergejax import models


@functools.lru_cache(maxsize=16)
def _scorer(config: models.ModelConfig):
  model = models.Decoder(config)

  @jax.jit
  def score(params, inp_BxL, tgt_BxL, w_BxL):
    logits = model.apply({"params": params}, inp_BxL)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, tgt_BxL[..., None], axis=-1)[..., 0]
    return jnp.sum(tok * w_BxL, axis=-1)

  return score


def rank_accuracy(config: models.ModelConfig, params: Any, task: str, split: str = "validation",
                  batch_size: int = 64, max_examples: int | None = None) -> float:
  """Rank-classification accuracy of ``params`` on a synthetic choice task's raw examples.

  ``split`` is a split name, or several joined by "+" ("validation+test": more examples, less noise).
  """
  import mergejax.tasks as tasks  # pylint: disable=g-import-not-at-top
  vocab = tasks.get_vocabulary()
  eos = vocab.eos_id
  exs = [e for s in split.split("+") for e in tasks.examples(task, s) if e.choices]
  if max_examples:
    exs = exs[:max_examples]
  if not exs:
    raise ValueError(f"{task}/{split}: no examples with choices")
  length = config.max_len
  rows, owners = [], []
  for i, e in enumerate(exs):
    x = list(vocab.encode(e.inputs))
    for c in e.choices:
      y = list(vocab.encode(c)) + [eos]
      seq = (x + y)[-length:]
      ny = min(len(y), len(seq))
      rows.append((seq, ny))
      owners.append(i)
  n = len(rows)
  pad = -(-n // batch_size) * batch_size
  inp = np.zeros((pad, length), np.int32)
  tgt = np.zeros((pad, length), np.int32)
  w = np.zeros((pad, length), np.float32)
  for r, (seq, ny) in enumerate(rows):
    tgt[r, :len(seq)] = seq
    inp[r, 1:len(seq)] = seq[:-1]
    w[r, len(seq) - ny:len(seq)] = 1.0
  score = _scorer(config)
  scores = np.concatenate([np.asarray(score(params, inp[s:s + batch_size], tgt[s:s + batch_size],
                                            w[s:s + batch_size])) for s in range(0, pad, batch_size)])[:n]
  best: dict[int, tuple[float, int]] = {}
  k = 0
  for i, e in enumerate(exs):
    for j in range(len(e.choices)):
      if i not in best or scores[k] > best[i][0]:
        best[i] = (float(scores[k]), j)
      k += 1
  return float(np.mean([best[i][1] == e.label for i, e in enumerate(exs)]))


def category_accuracy(config: models.ModelConfig, params: Any, task_names: Sequence[str],
                      split: str = "validation") -> float:
  """Mean rank accuracy over the choice tasks among ``task_names``."""
  import mergejax.tasks as tasks  # pylint: disable=g-import-not-at-top
  accs = [rank_accuracy(config, params, t, split) for t in task_names if tasks.is_choice_task(t)]
  return float(np.mean(accs)) if accs else float("nan")
