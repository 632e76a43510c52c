"""Metrics for generation and rank-classification tasks (seqio `metric_fns`, T5 conventions).

Generation metrics take `(targets, predictions)` lists of strings; scores are in percent.
Rank classification takes `(targets, scores)`: targets are `(idx, is_correct)` tuples produced by
`rank_classification_postprocessor` (idx = (example index, choice index)), scores the model's
log-likelihood of each choice.

  exact_match = 100 * mean[normalize(p) == normalize(t)]
  token_f1    = 100 * mean[2 P R / (P + R)], P, R over the multiset of normalized tokens (SQuAD)
  rouge_l     = 100 * mean[F_LCS], F_LCS = 2 P R / (P + R), P = LCS/|p|, R = LCS/|t| (Lin, 2004)
  rank_accuracy = 100 * mean over examples of is_correct[argmax_choice score]
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Mapping, Sequence

import numpy as np

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: Any) -> str:
  """SQuAD normalization: lowercase, drop punctuation and articles, squeeze whitespace."""
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  text = _ARTICLES.sub(" ", _PUNCT.sub(" ", str(text).lower()))
  return " ".join(text.split())


def _check(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"metrics: {len(targets)} targets but {len(predictions)} predictions")


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> Mapping[str, float]:
  _check(targets, predictions)
  if not targets:
    return {"exact_match": 0.0}
  return {"exact_match": 100.0 * float(np.mean([normalize(t) == normalize(p)
                                                for t, p in zip(targets, predictions)]))}


def _f_measure(t: str, p: str, matches) -> float:
  """F1 of target/prediction tokens given ``matches(target_tokens, prediction_tokens) -> int``."""
  tt, pt = normalize(t).split(), normalize(p).split()
  if not tt or not pt:
    return float(tt == pt)
  m = matches(tt, pt)
  if m == 0:
    return 0.0
  prec, rec = m / len(pt), m / len(tt)
  return 2 * prec * rec / (prec + rec)


def _f1(t: str, p: str) -> float:
  return _f_measure(t, p, lambda a, b: sum((collections.Counter(a) & collections.Counter(b)).values()))


def token_f1(targets: Sequence[str], predictions: Sequence[str]) -> Mapping[str, float]:
  _check(targets, predictions)
  if not targets:
    return {"f1": 0.0}
  return {"f1": 100.0 * float(np.mean([_f1(t, p) for t, p in zip(targets, predictions)]))}


def _lcs(a: list[str], b: list[str]) -> int:
  prev = [0] * (len(b) + 1)
  for x in a:
    cur = [0]
    for j, y in enumerate(b):
      cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
    prev = cur
  return prev[-1]


def _rouge_l(t: str, p: str) -> float:
  return _f_measure(t, p, _lcs)


def rouge_l(targets: Sequence[str], predictions: Sequence[str]) -> Mapping[str, float]:
  _check(targets, predictions)
  if not targets:
    return {"rouge_l": 0.0}
  return {"rouge_l": 100.0 * float(np.mean([_rouge_l(t, p) for t, p in zip(targets, predictions)]))}


GENERATION_METRICS = (exact_match, token_f1, rouge_l)


def rank_classification_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                                      is_target: bool = False) -> Any:
  """For targets, returns `((example_idx, choice_idx), is_correct)`; model outputs pass through."""
  if is_target:
    idx = np.asarray(example["idx"]).tolist()
    return (tuple(int(i) for i in idx), bool(example["is_correct"]))
  return output


def is_rank_targets(targets: Sequence[Any]) -> bool:
  """Whether postprocessed targets are :func:`rank_classification_postprocessor`'s
  ``((example_idx, choice_idx), is_correct)`` pairs."""
  return bool(targets) and all(isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], tuple) and len(t[0]) == 2
                               and isinstance(t[1], (bool, np.bool_)) for t in targets[:1])


def rank_outcomes(targets: Sequence[tuple[tuple[int, int], bool]], scores: Sequence[float]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per example, in example-index order: (picked a correct choice, number of choices, number of
  correct choices). The highest-scoring choice is picked; ties go to the lowest choice index.

  Raises:
    ValueError: an example has no correct choice.
  """
  _check(targets, scores)
  best: dict[int, tuple[float, int, bool]] = {}
  choices: dict[int, int] = collections.defaultdict(int)
  right: dict[int, int] = collections.defaultdict(int)
  for ((ex_idx, choice_idx), correct), score in zip(targets, scores):
    score = float(np.asarray(score).reshape(()))
    choices[ex_idx] += 1
    right[ex_idx] += bool(correct)
    cur = best.get(ex_idx)
    if cur is None or score > cur[0] or (score == cur[0] and choice_idx < cur[1]):
      best[ex_idx] = (score, choice_idx, bool(correct))
  missing = [i for i in sorted(right) if not right[i]]
  if missing:
    raise ValueError(f"rank_accuracy: example {missing[0]} has no correct choice")
  order = sorted(best)
  return (np.array([best[i][2] for i in order], bool), np.array([choices[i] for i in order], np.int64),
          np.array([right[i] for i in order], np.int64))


def rank_accuracy(targets: Sequence[tuple[tuple[int, int], bool]], scores: Sequence[float]
                  ) -> Mapping[str, float]:
  """Accuracy of picking the highest-scoring choice of each example (T0's rank classification).

  Ties go to the lowest choice index. Raises if an example has no correct choice.
  """
  correct, _, _ = rank_outcomes(targets, scores)
  if not correct.size:
    return {"accuracy": 0.0}
  return {"accuracy": 100.0 * float(np.mean(correct))}
