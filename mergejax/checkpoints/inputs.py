"""Opening a merge's inputs as the engine needs them: a LoRA adapter applied to its base, vocabularies
mapped to one output vocabulary, mixed float dtypes upcast, and the non-weight files of the output
(config, tokenizer, chat template) staged from the donor model with what changed."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import tempfile
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from mergejax import tree as tree_lib
from mergejax.checkpoints import align, detect, output as output_lib
from mergejax.checkpoints.base import CheckpointError
from mergejax.checkpoints.vocab import TokenSource, VocabAlignment, is_vocab_leaf_name


@dataclasses.dataclass(frozen=True)
class ModelRef:
  """A model as a recipe names it: a checkpoint path, optionally with a LoRA adapter applied (``PATH+LORA``)."""

  path: str
  lora: str | None = None

  def __str__(self) -> str:
    return f"{self.path}+{self.lora}" if self.lora else self.path

  @classmethod
  def parse(cls, text: str) -> "ModelRef":
    """``PATH`` or ``PATH+LORA`` (mergekit's syntax); a path that exists as written is never split."""
    if os.path.exists(text) or "+" not in text:
      return cls(text)
    parts = text.split("+")
    if len(parts) != 2 or not all(parts):
      raise ValueError(f"model {text!r}: expected PATH or PATH+LORA_ADAPTER")
    return cls(parts[0], parts[1])


@dataclasses.dataclass
class Inputs:
  """Opened inputs: ``base`` (or None) and ``experts`` Sources, ready for :func:`mergejax.engine.merge_sources`."""

  base: Any
  experts: list[Any]
  dtype: Any  # output dtype of float leaves (None: the inputs')
  vocab: VocabAlignment | None
  donor_dir: pathlib.Path | None  # where the output's non-weight files come from

  @property
  def reference(self) -> Any:
    return self.base if self.base is not None else self.experts[0]


def model_dir(src: Any) -> pathlib.Path | None:
  d = getattr(src, "dir", None)
  return pathlib.Path(d) if d is not None else None


def open_model(ref: ModelRef, base: Any = None, name: str | None = None) -> Any:
  """The Source of ``ref``: its checkpoint, with its LoRA applied; a bare LoRA directory is applied to ``base``."""
  src = detect.open_source(ref.path, name=name or str(ref), base=base)
  if ref.lora:
    from mergejax.checkpoints.lora import LoraAdapter, is_lora_adapter  # pylint: disable=g-import-not-at-top
    if not is_lora_adapter(ref.lora):
      raise CheckpointError(f"{ref.lora}: not a PEFT LoRA adapter directory (adapter_config.json and "
                            "adapter_model.safetensors/.bin)")
    src = LoraAdapter(ref.lora).apply(src, name=name or str(ref))
  return src


def _reference_float_dtype(src: Any) -> np.dtype | None:
  floats = {np.dtype(s.dtype) for s in src.specs() if tree_lib.is_float_dtype(s.dtype)}
  return floats.pop() if len(floats) == 1 else None


def open_inputs(base: ModelRef | None, experts: Sequence[ModelRef], *, dtype: Any = None,
                tokenizer_source: str | int | None = None, tokens: Mapping[str, TokenSource] | None = None,
                pad_to_multiple_of: int | None = None) -> Inputs:
  """Opens base and experts (experts that are bare LoRA adapters apply to the base) and aligns them.

  ``tokenizer_source`` ("base", "union" or an input index, 0 being the base when there is one) maps
  vocabulary leaves to one vocabulary (:mod:`mergejax.checkpoints.vocab`). Float leaves whose dtype
  differs between inputs are upcast to float32 (:mod:`mergejax.checkpoints.align`); the output dtype
  is then ``dtype`` or the base's (first input's) float dtype.
  """
  base_src = open_model(base, name=str(base)) if base is not None else None
  expert_srcs = [open_model(e, base=base_src, name=str(e)) for e in experts]
  srcs = ([base_src] if base_src is not None else []) + expert_srcs
  ref_dtype = _reference_float_dtype(srcs[0])
  vocab = None
  if tokenizer_source is not None:
    dirs = [model_dir(s) for s in srcs]
    for s, d in zip(srcs, dirs):
      if d is None:
        raise CheckpointError(f"{s.name}: a vocabulary mapping needs model directories with a tokenizer")
    vocab = VocabAlignment(dirs, base=0 if base_src is not None else None, source=tokenizer_source, tokens=tokens,
                           pad_to_multiple_of=pad_to_multiple_of)
    srcs = vocab.wrap(srcs)
    if dtype is None:
      if ref_dtype is None:
        raise ValueError(f"{srcs[0].name} stores floats in several dtypes: choose the output dtype explicitly")
      dtype = ref_dtype
  srcs, dtype = align.align_dtypes(srcs, dtype)
  base_src, expert_srcs = (srcs[0], srcs[1:]) if base_src is not None else (None, srcs)
  donor = model_dir(srcs[0])
  return Inputs(base_src, list(expert_srcs), dtype, vocab, donor)


def vocab_mismatch_hint(message: str) -> str:
  """``message`` plus, for a shape mismatch of an embedding or LM-head leaf, how to map vocabularies."""
  m = re.search(r"leaf '([^']+)' has shape", message)
  if m and is_vocab_leaf_name(m.group(1)):
    return (f"{message} (the vocabularies differ: map rows by token with a tokenizer source, "
            "e.g. --tokenizer_source=union or base)")
  return message


@contextlib.contextmanager
def staged_sidecars(donor_dir: pathlib.Path | None, *, vocab: VocabAlignment | None = None,
                    chat_template: str | None = None,
                    config_updates: Mapping[str, Any] | None = None) -> Iterator[str | None]:
  """A temporary directory holding the donor's non-weight files with the output's changes (tokenizer of
  the merged vocabulary, chat template, ``vocab_size`` and ``config_updates`` in config.json), to copy
  into the output; the donor directory itself when nothing changes; removed afterwards."""
  if vocab is None and chat_template is None and not config_updates:
    yield str(donor_dir) if donor_dir is not None else None
    return
  with tempfile.TemporaryDirectory(prefix="mergejax-sidecars-") as tmp:
    if donor_dir is not None:
      output_lib.copy_sidecars(donor_dir, tmp)
    if vocab is not None:
      vocab.save(tmp, chat_template)
    elif chat_template is not None:
      _set_chat_template(pathlib.Path(tmp), chat_template)
    cfg_file = pathlib.Path(tmp) / "config.json"
    updates = dict(config_updates or {})
    if vocab is not None:
      updates["vocab_size"] = vocab.size
    if updates and cfg_file.is_file():
      cfg = json.loads(cfg_file.read_text())
      for k, v in updates.items():
        node = cfg.get("text_config") if k == "vocab_size" and "vocab_size" not in cfg and "text_config" in cfg else cfg
        node[k] = v
      cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    yield tmp


def _set_chat_template(directory: pathlib.Path, template: str) -> None:
  """Writes ``template`` as the tokenizer's chat template (``chat_template.jinja``, the transformers 5
  layout), removing a template stored in tokenizer_config.json or chat_template.json."""
  cfg = directory / "tokenizer_config.json"
  if cfg.is_file():
    data = json.loads(cfg.read_text())
    if data.pop("chat_template", None) is not None:
      cfg.write_text(json.dumps(data, indent=2) + "\n")
  if (directory / "chat_template.json").exists():
    (directory / "chat_template.json").unlink()
  (directory / "chat_template.jinja").write_text(template)
