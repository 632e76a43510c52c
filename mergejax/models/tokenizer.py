"""A checkpoint's own tokenizer as a ``seqio.Vocabulary``.

* ``tokenizer.model`` (SentencePiece: Llama 2, Mistral, Gemma): ``seqio.SentencePieceVocabulary``.
* ``tokenizer.json`` (Llama 3, Qwen, Gemma 3, ...): :class:`TokenizerJsonVocabulary`, over the ``tokenizers``
  library.

seqio reserves id 0: its feature converters pad with 0, give target 0 no loss weight and put 0 in the
decoder's BOS slot. Where id 0 is a real token of the tokenizer (Llama 3's and Qwen's ``!``), the vocabulary
shifts every id up by one (``offset=1``) so no text token is mistaken for padding; the model adapter for
seqio (:meth:`mergejax.evaluation.ModelAdapter.for_seqio`) shifts them back and puts the checkpoint's BOS in
the BOS slot. BOS, EOS and pad ids come from the checkpoint's ``config.json``.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Sequence

import seqio
import tensorflow as tf


class TokenizerJsonVocabulary(seqio.Vocabulary):
  """A ``tokenizer.json`` as a seqio vocabulary (ids shifted by ``offset``; no special tokens added).

  Args:
    path: the ``tokenizer.json`` file.
    eos_id: the checkpoint's EOS id (unshifted), or None.
    offset: 1 where the tokenizer's id 0 is a real token (see the module docstring), else 0.
  """

  def __init__(self, path: str | os.PathLike, eos_id: int | None, offset: int = 0):
    super().__init__(extra_ids=0)
    self.path = str(path)
    self.offset = int(offset)
    self._eos = eos_id
    _ = self.tokenizer  # fail early on an unreadable file

  @functools.cached_property
  def tokenizer(self):
    import tokenizers  # pylint: disable=g-import-not-at-top  (optional until a tokenizer.json is used)
    try:
      return tokenizers.Tokenizer.from_file(self.path)
    except Exception as e:  # the Rust library raises its own exception type
      raise ValueError(f"{self.path}: cannot read tokenizer ({type(e).__name__}: {str(e).splitlines()[0]})") from None

  @property
  def eos_id(self) -> int | None:
    return None if self._eos is None else self._eos + self.offset

  @property
  def unk_id(self) -> int | None:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True) + self.offset

  def _encode(self, s: str) -> Sequence[int]:
    return [i + self.offset for i in self.tokenizer.encode(s, add_special_tokens=False).ids]

  def _decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) - self.offset for i in ids if int(i) >= self.offset]
    return self.tokenizer.decode(ids, skip_special_tokens=True)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    def enc(x):
      return tf.constant(self._encode(x.numpy().decode("utf-8")), tf.int32)
    if s.shape.rank == 0:
      out = tf.py_function(enc, [s], tf.int32)
      out.set_shape([None])
      return out
    return tf.map_fn(lambda x: tf.ensure_shape(tf.py_function(enc, [x], tf.int32), [None]), s,
                     fn_output_signature=tf.RaggedTensorSpec([None], tf.int32))

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    def dec(x):
      a = x.numpy()
      rows = a.reshape(-1, a.shape[-1])
      out = [self._decode([i for i in row if i != self.pad_id]).encode("utf-8") for row in rows]
      return tf.reshape(tf.constant(out, tf.string), a.shape[:-1])
    out = tf.py_function(dec, [ids], tf.string)
    out.set_shape(ids.shape[:-1])
    return out

  def __eq__(self, other) -> bool:
    return (isinstance(other, TokenizerJsonVocabulary) and other.path == self.path
            and other.offset == self.offset and other._eos == self._eos)

  def __hash__(self) -> int:
    return hash((self.path, self.offset, self._eos))


def _zero_is_text(tokenizer) -> bool:
  """Whether id 0 of a ``tokenizers.Tokenizer`` is an ordinary token (not a special one)."""
  added = tokenizer.get_added_tokens_decoder()
  return not (0 in added and added[0].special)


def load_vocabulary(directory: str | os.PathLike, token_ids: dict, vocab_rows: int
                    ) -> tuple[seqio.Vocabulary | None, int]:
  """``(vocabulary, offset)`` of a checkpoint directory (None, 0 when it has no tokenizer files).

  Raises ValueError naming the file when the tokenizer has more tokens than the embedding has rows.
  """
  d = pathlib.Path(directory)
  sp, tj = d / "tokenizer.model", d / "tokenizer.json"
  eos = token_ids["eos"][0] if token_ids["eos"] else None
  if sp.is_file():
    vocab = seqio.SentencePieceVocabulary(str(sp))
    try:
      size = vocab.vocab_size
      zero_text = not (vocab.tokenizer.IsControl(0) or vocab.tokenizer.IsUnknown(0))
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with long messages
      raise ValueError(f"{sp}: cannot read SentencePiece model ({type(e).__name__})") from None
    if zero_text:
      raise ValueError(f"{sp}: id 0 is an ordinary piece; seqio reserves it for padding (provide tokenizer.json)")
    where, offset = sp, 0
  elif tj.is_file():
    probe = TokenizerJsonVocabulary(tj, eos)
    offset = 1 if _zero_is_text(probe.tokenizer) else 0
    vocab = TokenizerJsonVocabulary(tj, eos, offset) if offset else probe
    size, where = vocab.vocab_size - offset, tj
  else:
    return None, 0
  if size > vocab_rows:
    raise ValueError(f"{where}: the tokenizer has {size} tokens but the embedding table has {vocab_rows} rows")
  return vocab, offset


def special_tokens(directory: str | os.PathLike) -> dict:
  """``tokenizer_config.json`` settings the lm-eval bridge follows (``add_bos_token``), or {}."""
  p = pathlib.Path(directory) / "tokenizer_config.json"
  if not p.is_file():
    return {}
  try:
    cfg = json.loads(p.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{p}: not valid JSON ({e})") from None
  return {k: cfg[k] for k in ("add_bos_token", "add_eos_token") if k in cfg}


class TextTokenizer:
  """Text <-> the model's own token ids (no seqio shift), as transformers' tokenizer does by default: with
  ``add_special_tokens`` a ``tokenizer.json``'s post-processor adds what it is configured to (Llama's and
  Gemma's BOS, nothing for Qwen); a SentencePiece model gets the config's BOS in front. Used by the
  lm-evaluation-harness bridge.
  """

  def __init__(self, directory: str | os.PathLike, bos_id: int | None, sentencepiece_model: str | None = None):
    d = pathlib.Path(directory)
    self.bos_id = bos_id
    self._tok = self._sp = None
    if sentencepiece_model is None and (d / "tokenizer.json").is_file():
      import tokenizers  # pylint: disable=g-import-not-at-top
      self._tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    else:
      import sentencepiece as spm  # pylint: disable=g-import-not-at-top
      model = sentencepiece_model or str(d / "tokenizer.model")
      if not pathlib.Path(model).is_file():
        raise ValueError(f"{d}: no tokenizer.json or tokenizer.model")
      self._sp = spm.SentencePieceProcessor(model_file=model)

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    if self._tok is not None:
      return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)
    ids = list(self._sp.encode(text))
    return [self.bos_id] + ids if add_special_tokens and self.bos_id is not None else ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    ids = [int(i) for i in ids]
    if self._tok is not None:
      return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
    return self._sp.decode(ids)

  def token_text(self, token_id: int) -> str:
    """The text of one (special) token, e.g. the BOS string."""
    if self._tok is not None:
      return self._tok.id_to_token(int(token_id)) or ""
    return self._sp.id_to_piece(int(token_id))
