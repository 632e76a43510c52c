"""Inputs with different vocabularies: embedding and LM-head rows mapped to one output vocabulary by token
string before the merge, as mergekit's ``tokenizer_source`` / ``tokenizer:`` define it (mergekit 0.1.5,
``mergekit/tokenizer/build.py`` and ``embed.py``).

Output vocabulary (``source``):

* ``"base"``: the base model's tokenizer, with tokens whose id is >= its model's ``vocab_size`` dropped;
* ``"union"``: the base's tokenizer plus, in input order, every other input's tokens it lacks (ordinary
  tokens first, then added tokens with their settings), each input's tokens >= its ``vocab_size`` ignored;
* an input's index: that input's tokenizer as it is.

Then, per vocabulary leaf (axis 0 of a leaf named like an embedding or LM head whose length is the
input's ``vocab_size``), each input's row for output token ``tok`` is its own row where it has ``tok``
(and the token is not ``force``d); otherwise a default row shared by all inputs:

1. ``tokens: {tok: {source: ...}}`` when given: an input's row (``source: MODEL``), another token's row
   in an input (``{kind: model_token, model, token|token_id}``), or zeros (``{kind: zero}``);
2. else the one input that has the token, if only one has it;
3. else the base's row, if the base has it;
4. else the mean of the rows of the inputs that have it (zeros, with a warning, if none has it).

With ``pad_to_multiple_of`` the vocabulary is padded and each input's padding rows are the mean of its
mapped rows. Mapped leaves are float32 (the merge computes in float32; means are not rounded). The
output tokenizer is written with the merge, and ``config.json``'s ``vocab_size`` is set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging

from mergejax import tree as tree_lib
from mergejax.checkpoints.base import CheckpointError, LeafSpec
from mergejax.checkpoints.mapped import MappedSource, host_leaf

F32 = np.dtype(np.float32)
# Leaf names whose axis 0 indexes the vocabulary (when its length is the model's vocab_size).
_VOCAB_NAME = re.compile(r"(^|[./])(embed_tokens|lm_head|wte|word_embeddings|embed_out|embed_in|tok_embeddings|"
                         r"shared|embedding|embeddings|output)([./]weight|[./]embedding)?$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja",
                   "chat_template.json")


def _transformers():
  try:
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise CheckpointError("mapping vocabularies (tokenizer_source) needs the transformers package: "
                          "pip install transformers") from None
  return transformers


def config_vocab_size(model_dir: str | os.PathLike | None) -> int | None:
  """``vocab_size`` from a model directory's config.json (or its ``text_config``), else None."""
  if model_dir is None:
    return None
  f = pathlib.Path(model_dir) / "config.json"
  try:
    cfg = json.loads(f.read_text())
  except (OSError, ValueError):
    return None
  for c in (cfg, cfg.get("text_config") or {}):
    if isinstance(c.get("vocab_size"), int):
      return int(c["vocab_size"])
  return None


def is_vocab_leaf_name(path: str) -> bool:
  """True for a leaf named like an embedding or an LM head (axis 0: the vocabulary)."""
  return bool(_VOCAB_NAME.search(path))


def vocab_leaves(specs: Sequence[LeafSpec], n_vocab: int | None) -> list[str]:
  """Float leaves that index the vocabulary on axis 0: named like an embedding or LM head, of length
  ``n_vocab`` there (when known)."""
  out = []
  for s in specs:
    if (s.shape and tree_lib.is_float_dtype(s.dtype) and _VOCAB_NAME.search(s.path)
        and (n_vocab is None or s.shape[0] == n_vocab)):
      out.append(s.path)
  return out


@dataclasses.dataclass(frozen=True)
class TokenSource:
  """Where a token's default row comes from (mergekit's ``tokenizer.tokens.<tok>``)."""

  kind: str  # "model" (that input's row of the token), "model_token" (a given token's row), "zero"
  model: int | None = None  # input index
  token: str | None = None
  token_id: int | None = None
  force: bool = False  # use the default row in every input, even those that have the token


@dataclasses.dataclass(frozen=True)
class AddedToken:
  """An added token's settings, as ``tokenizer.json`` stores them."""

  content: str
  single_word: bool = False
  lstrip: bool = False
  rstrip: bool = False
  normalized: bool = True
  special: bool = False


class JsonTokenizer:
  """A fast tokenizer read from its ``tokenizer.json`` alone: what a vocabulary mapping needs (the vocabulary,
  its added tokens, adding tokens, writing it), without importing transformers (~2-10 s)."""

  is_fast = True

  def __init__(self, model_dir: pathlib.Path, data: dict | None = None):
    self.dir = model_dir
    if data is None:
      try:
        data = json.loads((model_dir / "tokenizer.json").read_text())
        data["model"]["vocab"]  # pylint: disable=pointless-statement
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{model_dir / 'tokenizer.json'}: unreadable tokenizer ({type(e).__name__}: {e})") \
            from None
    self.data = data
    self.chat_template = None

  def copy(self) -> "JsonTokenizer":
    return JsonTokenizer(self.dir, json.loads(json.dumps(self.data)))

  def _model_vocab(self) -> dict[str, int]:
    v = self.data["model"]["vocab"]
    return dict(v) if isinstance(v, dict) else {piece[0]: i for i, piece in enumerate(v)}  # Unigram: [piece, score]

  @property
  def vocab_size(self) -> int:
    return len(self._model_vocab())

  def get_vocab(self) -> dict[str, int]:
    v = self._model_vocab()
    v.update({t["content"]: int(t["id"]) for t in self.data.get("added_tokens", [])})
    return v

  @property
  def added_tokens_decoder(self) -> dict[int, AddedToken]:
    return {int(t["id"]): AddedToken(t["content"], bool(t.get("single_word")), bool(t.get("lstrip")),
                                     bool(t.get("rstrip")), bool(t.get("normalized", True)), bool(t.get("special")))
            for t in self.data.get("added_tokens", [])}

  def add_tokens(self, token: str | AddedToken) -> int:
    """Adds ``token`` (a plain token: normalized, not special, as transformers' add_tokens) at the next id."""
    info = token if isinstance(token, AddedToken) else AddedToken(token)
    vocab = self.get_vocab()
    if info.content in vocab:
      return 0
    self.data.setdefault("added_tokens", []).append({"id": len(vocab), **dataclasses.asdict(info)})
    return 1

  def save_pretrained(self, directory: str) -> None:
    """``tokenizer.json``, and the source's tokenizer_config.json (its added-token table extended),
    special_tokens_map.json and chat template."""
    d = pathlib.Path(directory)
    (d / "tokenizer.json").write_text(json.dumps(self.data, ensure_ascii=False, indent=2))
    for name in ("special_tokens_map.json", "chat_template.jinja", "chat_template.json"):
      if (self.dir / name).is_file() and not (name.startswith("chat_template") and self.chat_template is not None):
        shutil.copy2(self.dir / name, d / name)
    cfg_file = self.dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    if isinstance(cfg.get("added_tokens_decoder"), dict):
      table = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
                              if k in t} for t in self.data.get("added_tokens", [])}
      cfg["added_tokens_decoder"] = table
    if self.chat_template is not None:
      cfg.pop("chat_template", None)
      (d / "chat_template.jinja").write_text(self.chat_template)
    if cfg or cfg_file.is_file():
      (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _load_tokenizer(model_dir: pathlib.Path):
  """The model's tokenizer: from tokenizer.json when it has one, else through transformers."""
  if (model_dir / "tokenizer.json").is_file():
    return JsonTokenizer(model_dir)
  transformers = _transformers()
  try:
    return transformers.AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
  except Exception as e:  # pylint: disable=broad-except  (transformers raises many types)
    raise CheckpointError(f"{model_dir}: cannot load its tokenizer ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None


def _stripped(tok, n_vocab: int | None, model_dir: pathlib.Path):
  """The tokenizer without tokens whose id is >= ``n_vocab`` (mergekit's get_stripped_tokenizer)."""
  vocab = tok.get_vocab()
  if n_vocab is None or all(i < n_vocab for i in vocab.values()):
    return tok
  if not tok.is_fast:
    raise CheckpointError(f"{model_dir}: its tokenizer has tokens beyond vocab_size {n_vocab} and is not a fast "
                          "tokenizer: cannot strip them")
  data = tok.copy().data if isinstance(tok, JsonTokenizer) else json.loads(tok._tokenizer.to_str())  # pylint: disable=protected-access
  if data["model"]["type"] != "BPE":
    raise CheckpointError(f"{model_dir}: its tokenizer has tokens beyond vocab_size {n_vocab} and is of type "
                          f"{data['model']['type']}: only BPE tokenizers can be stripped")
  unused = {t for t, i in vocab.items() if i >= n_vocab}
  data["added_tokens"] = [e for e in data["added_tokens"] if e["id"] < n_vocab]
  for t in unused:
    data["model"]["vocab"].pop(t, None)
  data["model"]["merges"] = [m for m in data["model"]["merges"]
                             if not set(m.split(" ") if isinstance(m, str) else m) & unused]
  if isinstance(tok, JsonTokenizer):
    return JsonTokenizer(tok.dir, data)
  import tokenizers  # pylint: disable=g-import-not-at-top
  tok._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(data))  # pylint: disable=protected-access
  return tok


def _union(base_tok, toks: Sequence[Any], sizes: Sequence[int | None]):
  """The base tokenizer plus the other tokenizers' tokens (mergekit's build_union_tokenizer)."""
  out_vocab: dict[str, int] = {}
  added: dict[str, Any] = {}
  for tok, n in zip(toks, sizes):
    n = n if n is not None else tok.vocab_size
    added_here = tok.added_tokens_decoder
    added_names = {info.content for info in added_here.values()}
    for t, i in tok.get_vocab().items():
      if i >= n or t in added_names:
        continue
      out_vocab.setdefault(t, len(out_vocab))
    for i, info in sorted(added_here.items()):
      if i < n:
        added.setdefault(info.content, info)
  if isinstance(base_tok, JsonTokenizer) and all(isinstance(t, JsonTokenizer) for t in toks):
    res = base_tok.copy()
  else:
    with tempfile.TemporaryDirectory() as d:
      base_tok.save_pretrained(d)
      res = _transformers().AutoTokenizer.from_pretrained(d, use_fast=True)
  base_vocab = base_tok.get_vocab()
  for t in out_vocab:
    if t not in added and t not in base_vocab:
      res.add_tokens(t)
  for info in added.values():
    res.add_tokens(info)
  return res


class VocabAlignment:
  """One output vocabulary for a merge's inputs and the row mapping of each input (see the module doc).

  Args:
    model_dirs: each input's model directory (tokenizer and config.json), in merge order.
    base: index of the base input, or None (then input 0 gives the tokenizer for "base" and "union").
    source: "base", "union", the index of the input whose tokenizer is the output's, or a model directory.
    tokens: per-token default sources (``TokenSource``), by token string.
    pad_to_multiple_of: pad the vocabulary size to a multiple of this.
  """

  def __init__(self, model_dirs: Sequence[str | os.PathLike], *, base: int | None, source: str | int,
               tokens: Mapping[str, TokenSource] | None = None, pad_to_multiple_of: int | None = None):
    self.dirs = [pathlib.Path(d) for d in model_dirs]
    self.base = base
    self.sizes = [config_vocab_size(d) for d in self.dirs]
    donor = base if base is not None else 0
    toks = [_load_tokenizer(d) for d in self.dirs]
    toks[donor] = _stripped(toks[donor], self.sizes[donor], self.dirs[donor])
    if source == "base":
      self.tokenizer = toks[donor]
    elif source == "union":
      order = [donor] + [i for i in range(len(toks)) if i != donor]
      self.tokenizer = _union(toks[donor], [toks[i] for i in order], [self.sizes[i] for i in order])
    elif isinstance(source, int):
      self.tokenizer = _load_tokenizer(self.dirs[source])
    elif isinstance(source, (str, os.PathLike)) and pathlib.Path(source).is_dir():
      self.tokenizer = _load_tokenizer(pathlib.Path(source))
    else:
      raise CheckpointError(f"tokenizer source {source!r} is not 'base', 'union', an input or a model directory")
    self.tokens = dict(tokens or {})
    for t in self.tokens:
      if t not in self.tokenizer.get_vocab():
        self.tokenizer.add_tokens(t)
    self.vocab = self.tokenizer.get_vocab()
    n = len(self.vocab)
    self.size = n if not pad_to_multiple_of or n % pad_to_multiple_of == 0 else (
        n // pad_to_multiple_of + 1) * pad_to_multiple_of
    self.orig_vocabs = [t.get_vocab() for t in toks]
    # perm[m][j]: input m's row for output token id j, or -1 where input m lacks the token.
    self.perm = []
    for m, v in enumerate(self.orig_vocabs):
      p = np.full((n,), -1, np.int64)
      lim = self.sizes[m] if self.sizes[m] is not None else len(v)
      for t, j in self.vocab.items():
        i = v.get(t)
        if i is not None and i < lim:
          p[j] = i
      self.perm.append(p)
    self._plan_defaults()
    self._cache: dict[str, dict[int, np.ndarray]] = {}

  def _plan_defaults(self) -> None:
    """Which rows get a default, and from where (mergekit's assign_embedding_sources)."""
    present = np.stack([p >= 0 for p in self.perm])  # [inputs, n]
    self.sources: dict[int, TokenSource] = {}
    self.average: set[int] = set()
    for t, j in self.vocab.items():
      if t in self.tokens:
        if self.tokens[t].force or not present[:, j].all():
          self.sources[j] = self.tokens[t]
        continue
      if present[:, j].all():
        continue
      count = int(present[:, j].sum())
      if count == 1:
        self.sources[j] = TokenSource("model", model=int(np.argmax(present[:, j])))
      elif count == 0:
        logging.warning("token %r is in no input: its rows are zeros", t)
        self.sources[j] = TokenSource("zero")
      elif self.base is not None and present[self.base, j]:
        self.sources[j] = TokenSource("model", model=self.base)
      else:
        self.average.add(j)

  def _defaults(self, srcs: Sequence[Any], path: str) -> dict[int, np.ndarray]:
    """{output token id: default row} of leaf ``path`` (float32), read row by row from the inputs."""
    if path in self._cache:
      return self._cache[path]
    leaves = [None] * len(srcs)

    def leaf(m):
      if leaves[m] is None:
        leaves[m] = host_leaf(srcs[m], path)
      return leaves[m]

    out = {}
    inv = {j: t for t, j in self.vocab.items()}
    for j in sorted(self.average):
      rows = [np.asarray(leaf(m)[self.perm[m][j]], F32) for m in range(len(srcs)) if self.perm[m][j] >= 0]
      acc = np.zeros_like(rows[0])
      for r in rows:
        acc = acc + r
      out[j] = acc / np.float32(len(rows))
    for j, s in self.sources.items():
      if s.kind == "zero":
        out[j] = None  # zeros of the row shape, filled in by the caller
      elif s.kind == "model":
        if self.perm[s.model][j] < 0:
          raise CheckpointError(f"token {inv[j]!r}: its source {self.dirs[s.model]} does not have it")
        out[j] = np.asarray(leaf(s.model)[self.perm[s.model][j]], F32)
      else:
        i = s.token_id if s.token_id is not None else self.orig_vocabs[s.model].get(s.token)
        if i is None or not 0 <= i < leaf(s.model).shape[0]:
          raise CheckpointError(f"token {inv[j]!r}: source token {s.token if s.token_id is None else s.token_id!r} "
                                f"is not in {self.dirs[s.model]}")
        out[j] = np.asarray(leaf(s.model)[i], F32)
    self._cache = {path: out}  # one leaf at a time
    return out

  def mapped(self, srcs: Sequence[Any], m: int, path: str) -> np.ndarray:
    """Input ``m``'s leaf ``path`` with rows for the output vocabulary (float32, padded)."""
    x = host_leaf(srcs[m], path)
    row_shape = x.shape[1:]
    defaults = self._defaults(srcs, path)
    n = len(self.vocab)
    out = np.empty((self.size, *row_shape), F32)
    p = self.perm[m]
    own = p >= 0
    for j in self.sources:
      if self.sources[j].force:
        own[j] = False
    # The input's own rows, copied (and converted) run by run: output rows j..k from source rows p[j]..p[k]
    # (usually a few long runs: the shared vocabulary keeps its order), one pass without a gather copy.
    idx = np.nonzero(own)[0]
    if idx.size:
      src = p[idx]
      cuts = np.nonzero((np.diff(idx) != 1) | (np.diff(src) != 1))[0] + 1
      for a, b in zip(np.r_[0, cuts], np.r_[cuts, idx.size]):
        out[idx[a]:idx[b - 1] + 1] = x[src[a]:src[b - 1] + 1]
    filled = own.copy()
    for j, row in defaults.items():
      if not own[j] and row is not None:
        out[j] = row
        filled[j] = True
    out[:n][~filled] = 0
    if self.size > n:
      out[n:] = out[:n].mean(axis=0, dtype=np.float64).astype(F32) if n else 0
    return out

  def wrap(self, srcs: Sequence[Any]) -> list[Any]:
    """The inputs with their vocabulary leaves mapped (float32, ``size`` rows); CheckpointError when an
    input's vocabulary leaves do not match its vocab_size."""
    names = None
    for m, src in enumerate(srcs):
      specs = {s.path: s for s in src.specs()}
      found = vocab_leaves(list(specs.values()), self.sizes[m])
      if not found:
        raise CheckpointError(f"{src.name}: no embedding or LM-head leaf of vocab_size {self.sizes[m]} rows "
                              "(config.json) to map to the merged vocabulary")
      if names is not None and found != names:
        raise CheckpointError(f"{src.name}: vocabulary leaves {found} differ from {srcs[0].name}'s {names}")
      names = found
    out = []
    for m, src in enumerate(srcs):
      specs = {s.path: s for s in src.specs()}
      out.append(MappedSource(src, {p: (LeafSpec(p, (self.size, *specs[p].shape[1:]), F32),
                                        lambda p=p, m=m: self.mapped(srcs, m, p)) for p in names}))
    self.leaves = names
    return out

  def save(self, directory: str | os.PathLike, chat_template: str | None = None) -> None:
    """Writes the output tokenizer (and chat template) into ``directory``, replacing tokenizer files."""
    d = pathlib.Path(directory)
    for f in TOKENIZER_FILES:
      if (d / f).exists():
        (d / f).unlink()
    if chat_template is not None:
      self.tokenizer.chat_template = chat_template
    self.tokenizer.save_pretrained(str(d))
