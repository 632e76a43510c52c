r"""lm-evaluation-harness bridge: a mergejax checkpoint as the lm-eval model ``mergejax``.

    mergejax-lm-eval --model mergejax --model_args pretrained=DIR[,dtype=bfloat16,batch_size=8] --tasks TASKS

``mergejax-lm-eval`` is lm-eval's own command line with this model registered (lm-eval has no plugin
hook for models, so ``lm_eval`` itself does not see it). From Python, import this module and call
``lm_eval.simple_evaluate(model="mergejax", model_args="pretrained=DIR", tasks=[...])``, or pass a
:class:`MergejaxLM` instance. ``DIR`` is anything :func:`mergejax.models.from_pretrained` reads: a Hugging
Face directory, a ``mergejax-merge`` output, a built-in decoder checkpoint.

Requests are scored as lm-eval's Hugging Face backend scores them (same ``_encode_pair`` tokenization,
``loglikelihood`` = sum of the continuation's token log-probabilities, ``is_greedy`` = every continuation
token is the argmax, rolling windows from ``lm_eval.utils.get_rolling_token_windows``), but the requests
of one context (a multiple-choice question's choices) are packed into one sequence that runs the shared
context once (:mod:`mergejax.evaluation.packed`), with fixed shapes so every batch reuses one compiled
program. ``generate_until`` is greedy decoding with the KV cache; sampling is refused.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from mergejax.evaluation import packed
from mergejax.evaluation.inference import greedy_decode


def _round_up(x: int, m: int) -> int:
  return -(-max(int(x), 1) // m) * m


@functools.partial(jax.jit, static_argnums=(0,))
def _score(adapter, params, tokens, positions, example, branch, gather, target, weight):
  z = adapter.apply_packed(params, tokens, positions, packed.packed_mask(example, branch), gather).astype(jnp.float32)
  tok = jnp.take_along_axis(z, target[..., None], axis=-1)[..., 0]
  logp = tok - jax.nn.logsumexp(z, axis=-1)
  greedy = jnp.argmax(z, axis=-1) == target
  return jnp.where(weight > 0, logp, 0.0), greedy | (weight <= 0)


_greedy = jax.jit(greedy_decode, static_argnums=(0, 4, 5))


@register_model("mergejax")
class MergejaxLM(TemplateLM):
  """A mergejax checkpoint (any family) as an lm-eval ``LM``.

  Args:
    pretrained: checkpoint directory (or a loaded :class:`mergejax.models.PretrainedLM`).
    dtype: parameter/compute dtype ("float32", "bfloat16"; default the checkpoint's).
    batch_size: packed sequences (scoring) or prompts (generation) per step.
    pack_len: tokens per packed scoring sequence (raised to the longest request).
    max_length: longest sequence (default the config's ``max_position_embeddings``); longer requests are
      left-truncated as lm-eval's Hugging Face backend does.
    max_gen_toks: default generation budget.
    add_bos_token: force the tokenizer's special tokens on (True) or off (False) when encoding; default:
      the tokenizer's own behaviour.
  """

  def __init__(self, pretrained: Any, dtype: str | None = None, batch_size: int | str = 8, pack_len: int = 256,
               max_length: int | None = None, max_gen_toks: int = 256, add_bos_token: bool | None = None,
               **kwargs: Any):
    super().__init__()
    del kwargs  # lm-eval passes device / max_batch_size, which do not apply
    from mergejax import models  # pylint: disable=g-import-not-at-top
    from mergejax.tasks import vocab as suite_vocab  # pylint: disable=g-import-not-at-top
    # A built-in decoder checkpoint without its own tokenizer.model is taken to use the synthetic suite's.
    self.lm = pretrained if isinstance(pretrained, models.PretrainedLM) else models.from_pretrained(
        pretrained, dtype=dtype or None, vocabulary=suite_vocab.get_vocabulary())
    self.tokenizer_ = self.lm.text_tokenizer()
    self.batch_size_ = 8 if str(batch_size).startswith("auto") else int(batch_size)
    self.pack_len = int(pack_len)
    self._max_length = int(max_length) if max_length else int(self.lm.config.max_len)
    self._max_gen_toks = int(max_gen_toks)
    self.add_bos_token = add_bos_token if add_bos_token is None else str(add_bos_token).lower() in ("1", "true")

  # -- tokenization -----------------------------------------------------------------------------------
  @property
  def eot_token_id(self) -> int:
    return self.lm.eos_ids[0] if self.lm.eos_ids else self.lm.start_id

  @property
  def prefix_token_id(self) -> int:
    return self.lm.start_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def max_gen_toks(self) -> int:
    return self._max_gen_toks

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
    if add_special_tokens is None:
      add_special_tokens = True if self.add_bos_token is None else self.add_bos_token
      bos_text = self.tokenizer_.token_text(self.prefix_token_id)
      if bos_text and string.startswith(bos_text):
        add_special_tokens = False
    return self.tokenizer_.encode(string, add_special_tokens=add_special_tokens)

  def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
    return self.tokenizer_.decode(tokens, skip_special_tokens=skip_special_tokens)

  # -- scoring ------------------------------------------------------------------------------------------
  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
    """Sum of log p(continuation) and whether it is the greedy continuation, per (context, continuation)."""
    if not requests:
      return []
    rows = []
    for _, ctx, cont in requests:
      if not cont:
        raise ValueError("lm-eval request with an empty continuation")
      full = (list(ctx) + list(cont))[-(self.max_length + 1):]
      rows.append((full, min(len(cont), len(full) - 1)))
    width = max(len(f) for f, _ in rows) - 1
    inp = np.zeros((len(rows), width), np.int32)
    tgt = np.zeros_like(inp)
    w = np.zeros((len(rows), width), np.float32)
    for r, (full, n) in enumerate(rows):
      inp[r, :len(full) - 1] = full[:-1]
      tgt[r, :len(full) - 1] = full[1:]
      w[r, len(full) - 1 - n:len(full) - 1] = 1.0
    seq_len = max(self.pack_len, _round_up(width, 64))
    host = packed.pack(inp, tgt, w, np.arange(len(rows)), seq_len=seq_len, gather_len=seq_len,
                       rows_multiple=self.batch_size_)
    logp_sum = np.zeros(len(rows), np.float64)
    misses = np.zeros(len(rows), np.int64)
    for s in tqdm(range(0, host.num_sequences, self.batch_size_), disable=disable_tqdm, desc="mergejax scoring"):
      sl = slice(s, s + self.batch_size_)
      logp, greedy = _score(self.lm.adapter, self.lm.params, host.tokens[sl], host.positions[sl], host.example[sl],
                            host.branch[sl], host.gather[sl], host.target[sl], host.weight[sl])
      rid = host.row[sl]
      keep = rid >= 0
      logp_sum += np.bincount(rid[keep], weights=np.asarray(logp)[keep], minlength=len(rows))
      misses += np.bincount(rid[keep], weights=(~np.asarray(greedy))[keep].astype(np.float64),
                            minlength=len(rows)).astype(np.int64)
    out = []
    for key, score, miss in zip((r[0] for r in requests), logp_sum, misses):
      res = (float(score), bool(miss == 0))
      if key is not None:  # rolling windows have no (context, continuation) key
        self.cache_hook.add_partial("loglikelihood", key, res)
      out.append(res)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    from lm_eval import utils as lm_utils  # pylint: disable=g-import-not-at-top
    windows, owners = [], []
    for i, (string,) in enumerate(req.args for req in requests):
      for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
          token_list=self.tok_encode(string), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
          context_len=1)):
        windows.append((None, ctx, cont))
        owners.append(i)
    scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
    totals = np.zeros(len(requests), np.float64)
    for i, (s, _) in zip(owners, scores):
      totals[i] += s
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, float(total))
    return [float(t) for t in totals]

  # -- generation ---------------------------------------------------------------------------------------
  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs  # pylint: disable=g-import-not-at-top
    eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
    out: list[str | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    parsed = []
    for i, req in enumerate(requests):
      context, gen_kwargs = req.args
      kw = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
      if kw.get("do_sample") or kw.get("temperature", 0.0):
        raise ValueError("the mergejax lm-eval model decodes greedily; sampling (do_sample/temperature) is not "
                         "supported")
      until = handle_stop_sequences(kw.get("until"), eos=eos_text)
      n_gen = int(kw["max_gen_toks"])
      ctx = self.tok_encode(context)[-max(1, self.max_length - n_gen):]
      parsed.append((context, gen_kwargs, until, ctx))
      groups.setdefault((n_gen,), []).append(i)
    bar = tqdm(total=len(requests), disable=disable_tqdm, desc="mergejax generation")
    for (n_gen,), idx in groups.items():
      decode_len = _round_up(n_gen, 16)
      for s in range(0, len(idx), self.batch_size_):
        chunk = idx[s:s + self.batch_size_]
        width = _round_up(max(len(parsed[i][3]) for i in chunk), 64)
        inp = np.zeros((self.batch_size_, width), np.int32)
        lens = np.ones((self.batch_size_,), np.int32)
        for r, i in enumerate(chunk):
          ctx = parsed[i][3]
          inp[r, :len(ctx)] = ctx
          lens[r] = len(ctx)
        toks = np.asarray(_greedy(self.lm.adapter, self.lm.params, inp, lens, decode_len, int(self.eot_token_id)))
        for r, i in enumerate(chunk):
          ids = [int(t) for t in toks[r, :n_gen]]
          if self.eot_token_id in ids:
            ids = ids[:ids.index(self.eot_token_id)]
          text = self.tok_decode(ids)
          for stop in parsed[i][2]:
            if stop:
              text = text.split(stop)[0]
          out[i] = text
          self.cache_hook.add_partial("generate_until", (parsed[i][0], parsed[i][1]), text)
        bar.update(len(chunk))
    bar.close()
    return out  # type: ignore[return-value]


def main() -> None:
  """``mergejax-lm-eval``: lm-eval's command line with the ``mergejax`` model registered."""
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=g-import-not-at-top
  cli_evaluate()


if __name__ == "__main__":
  main()
