"""The study's checkpoints, described by a manifest (``--config.models=models.yaml``).

A manifest lists, per base kind and size label, the base model, one expert per held-in category and an
optional multitask model; each entry is a directory :func:`mergejax.models.from_pretrained` reads (a
Hugging Face directory, an orbax checkpoint with a ``config.json``, a built-in decoder checkpoint such as
the embedded world's)::

    pretrained:
      1b: {base: /ckpt/pt-1b, multitask: /ckpt/pt-1b-mt, experts: {sentiment: /ckpt/pt-1b-sent, ...}}
    instruction_tuned:
      1b: {base: /ckpt/it-1b, experts: {sentiment: /ckpt/it-1b-sent, ...}}

Relative paths are relative to the manifest's directory. Size labels are free text; the study orders them by
the parameter counts read from the bases. :func:`load` checks everything it can from the checkpoints'
configs, tokenizer files and tensor headers, without reading a tensor, and raises :class:`ManifestError`
with one line naming the manifest, the entry and the path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import yaml

from mergejax import models
from mergejax.checkpoints.base import CheckpointError
from mergejax.checkpoints.detect import is_orbax
from mergejax.models import families
from mergejax.models import io as models_io

KINDS = ("pretrained", "instruction_tuned")  # the paper's base kinds
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # size labels and categories: they name result rows
ROLES = ("base", "experts", "multitask")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


class ManifestError(ValueError):
  """A manifest that cannot run: one line naming the manifest, the entry and the problem."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """What the study knows of a checkpoint before loading it: read from its config, tokenizer files and
  tensor headers.

  Attributes:
    path: the directory.
    architecture: the decoder's math (:class:`~mergejax.models.DecoderConfig` fields but the dtype).
    vocabulary: a hash of the tokenizer files' bytes ("" when the directory has none).
    shapes: tensor name -> shape.
    itemsize: tensor name -> bytes per entry as stored.
  """

  path: pathlib.Path
  architecture: tuple[tuple[str, Any], ...]
  vocabulary: str
  shapes: Mapping[str, tuple[int, ...]]
  itemsize: Mapping[str, int]

  @property
  def params(self) -> int:
    """Number of parameters (entries of every tensor)."""
    return sum(math.prod(s) for s in self.shapes.values())

  @property
  def nbytes(self) -> int:
    return sum(math.prod(s) * self.itemsize[n] for n, s in self.shapes.items())


@dataclasses.dataclass(frozen=True)
class Entry:
  """The models of one (kind, size): paths, and what :func:`describe` read from each."""

  kind: str
  size: str
  base: Checkpoint
  experts: Mapping[str, Checkpoint]
  multitask: Checkpoint | None

  def path(self, role: str, category: str | None = None) -> pathlib.Path:
    """The directory of ``role`` ("base", "expert" with a category, "multitask")."""
    if role == "base":
      return self.base.path
    if role == "expert":
      return self.experts[category].path
    if role == "multitask" and self.multitask is not None:
      return self.multitask.path
    raise KeyError(f"{self.kind}/{self.size} has no {role} model")


@dataclasses.dataclass(frozen=True)
class Manifest:
  """Every (kind, size) of a manifest; ``sizes`` ordered by the bases' parameter counts, smallest first."""

  source: str
  entries: Mapping[tuple[str, str], Entry]
  kinds: tuple[str, ...]
  sizes: tuple[str, ...]

  def entry(self, kind: str, size: str) -> Entry:
    return self.entries[(kind, size)]


_IDENTITY_FILES = ("model_config.json", "train_info.json", "config.json", "model.safetensors.index.json",
                   "mergejax_manifest.json", "manifest.ocdbt", "_METADATA", "_CHECKPOINT_METADATA") + TOKENIZER_FILES


def checkpoint_id(path: str | os.PathLike) -> str:
  """Identity of a checkpoint as written: a hash of its config, tokenizer, metadata and index files and of
  every file's name and size. A checkpoint written again (even with equal contents) gets a new one."""
  path = pathlib.Path(path)
  h = hashlib.sha256()
  for f in sorted(p for p in path.rglob("*") if p.is_file()):
    h.update(f"{f.relative_to(path)}:{f.stat().st_size};".encode())
    if f.name in _IDENTITY_FILES:
      h.update(f.read_bytes())
  return h.hexdigest()[:16]


def tokenizer_hash(files: Mapping[str, str | os.PathLike]) -> str:
  """A hash of tokenizer files' names and bytes (``{"tokenizer.model": path}``); "" for none."""
  h = hashlib.sha256()
  for name in sorted(files):
    h.update(name.encode() + b":" + pathlib.Path(files[name]).read_bytes())
  return h.hexdigest()[:16] if files else ""


def _vocabulary_hash(path: pathlib.Path) -> str:
  return tokenizer_hash({n: path / n for n in TOKENIZER_FILES if (path / n).is_file()})


def describe(path: str | os.PathLike) -> Checkpoint:
  """Reads a checkpoint's config, tokenizer files and tensor headers (no tensor data).

  Raises:
    CheckpointError: one line naming the directory or file (no directory, no config, an unsupported
      architecture, no weights).
  """
  from mergejax.checkpoints.safetensors import SafetensorsSource, is_safetensors  # pylint: disable=g-import-not-at-top
  from mergejax.checkpoints.orbax import OrbaxSource  # pylint: disable=g-import-not-at-top  (orbax import is slow)
  p = pathlib.Path(path)
  if not p.is_dir():
    raise CheckpointError(f"missing checkpoint {p}")
  if (p / "config.json").is_file():
    try:
      raw = json.loads((p / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{p / 'config.json'}: not valid JSON ({e})") from None
    try:
      cfg = families.parse_hf_config(raw, where=str(p / "config.json"))
    except families.ConfigError as e:
      raise CheckpointError(str(e)) from None
  elif (p / models_io.CONFIG_FILE).is_file():
    if not models.is_complete(p):
      raise CheckpointError(f"missing checkpoint {p} (incomplete: no orbax metadata)")
    try:
      cfg = families.builtin_config(models.load_config(p))
    except ValueError as e:
      raise CheckpointError(str(e)) from None
  else:
    raise CheckpointError(f"{p}: not a checkpoint (no config.json or {models_io.CONFIG_FILE})")
  if is_orbax(p):
    source = OrbaxSource(p)
  elif is_safetensors(p):
    source = SafetensorsSource(p)
  else:
    raise CheckpointError(f"{p}: no weights (model.safetensors, its index, or an orbax checkpoint)")
  specs = source.specs()
  arch = tuple((k, v) for k, v in sorted(dataclasses.asdict(cfg).items()) if k != "dtype")
  return Checkpoint(path=p, architecture=arch, vocabulary=_vocabulary_hash(p),
                    shapes={s.path: tuple(s.shape) for s in specs},
                    itemsize={s.path: np.dtype(s.dtype).itemsize for s in specs})


def _check_against_base(where: str, base: Checkpoint, other: Checkpoint) -> None:
  for name, shape in base.shapes.items():
    if name not in other.shapes:
      raise ManifestError(f"{where}: {other.path} has no parameter '{name}' (the base has it)")
    if tuple(other.shapes[name]) != tuple(shape):
      raise ManifestError(f"{where}: {other.path}: parameter '{name}' has shape {tuple(other.shapes[name])}, "
                          f"the base's is {tuple(shape)}")
  extra = sorted(set(other.shapes) - set(base.shapes))
  if extra:
    raise ManifestError(f"{where}: {other.path}: parameter '{extra[0]}' is not in the base")
  if other.architecture != base.architecture:
    a, b = dict(other.architecture), dict(base.architecture)
    k = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
    raise ManifestError(f"{where}: {other.path}: architecture differs from the base ({k}={a.get(k)!r}, "
                        f"base {b.get(k)!r})")
  if other.vocabulary != base.vocabulary:
    raise ManifestError(f"{where}: {other.path}: vocabulary differs from the base's {base.path} "
                        f"(tokenizer files {', '.join(TOKENIZER_FILES)} must be identical)")


def parse(raw: Any, source: str, root: pathlib.Path) -> dict[tuple[str, str], dict[str, Any]]:
  """The manifest's structure checked: ``{(kind, size): {"base": path, "experts": {cat: path},
  "multitask": path | None}}`` with paths resolved against ``root``."""
  if not isinstance(raw, Mapping) or not raw:
    raise ManifestError(f"{source}: expected a mapping of base kinds, e.g. 'pretrained: {{1b: {{base: PATH, "
                        "experts: {...}}}}'")
  out = {}
  for kind, sizes in raw.items():
    if not isinstance(sizes, Mapping) or not sizes:
      raise ManifestError(f"{source}: {kind}: expected a mapping of size labels to models")
    for size, models_ in sizes.items():
      where = f"{source}: {kind}/{size}"
      if not isinstance(size, str) or not LABEL.match(size):
        raise ManifestError(f"{source}: {kind}: size label {size!r} must be letters, digits, '.', '_' or '-'")
      if not isinstance(models_, Mapping):
        raise ManifestError(f"{where}: expected {{base: PATH, experts: {{CATEGORY: PATH, ...}}, multitask: PATH}}")
      unknown = sorted(set(models_) - set(ROLES))
      if unknown:
        raise ManifestError(f"{where}: unknown field {unknown[0]!r}: choose from {list(ROLES)}")
      if not isinstance(models_.get("base"), str):
        raise ManifestError(f"{where}: base: expected a checkpoint path")
      experts = models_.get("experts")
      if not isinstance(experts, Mapping) or not experts:
        raise ManifestError(f"{where}: experts: expected a mapping of categories to checkpoint paths")
      resolve = lambda v: (root / os.path.expanduser(v)).absolute()
      entry = {"base": resolve(models_["base"]), "experts": {}, "multitask": None}
      for c, p in experts.items():
        if not isinstance(c, str) or not LABEL.match(c) or not isinstance(p, str):
          raise ManifestError(f"{where}/experts: expected CATEGORY: PATH, got {c!r}: {p!r}")
        entry["experts"][c] = resolve(p)
      if models_.get("multitask") is not None:
        if not isinstance(models_["multitask"], str):
          raise ManifestError(f"{where}: multitask: expected a checkpoint path")
        entry["multitask"] = resolve(models_["multitask"])
      out[(str(kind), size)] = entry
  return out


def validate(parsed: Mapping[tuple[str, str], Mapping[str, Any]], source: str, *,
             kinds: Sequence[str], known_category: Callable[[str], str | None],
             categories: Sequence[str] = (), sizes: Sequence[str] = (), multitask: bool = True) -> Manifest:
  """Checks a parsed manifest (see :func:`parse`) and reads every checkpoint's headers.

  Args:
    parsed: from :func:`parse`.
    source: how to name the manifest in messages.
    kinds: the base kinds the study runs (a manifest kind of :data:`KINDS` outside them is left out).
    known_category: a category -> None if the study can evaluate it, else the reason it cannot.
    categories: the study's categories (every (kind, size) needs an expert for each); empty: the
      categories of the manifest's first entry.
    sizes: the size labels to run (each must be in the manifest); empty: all of them.
    multitask: load the multitask models (when listed).

  Returns the :class:`Manifest` of the entries the study runs.
  """
  for kind, _ in parsed:
    if kind not in KINDS:
      raise ManifestError(f"{source}: unknown base kind {kind!r}: choose from {list(KINDS)}")
  chosen = {k: v for k, v in parsed.items() if k[0] in kinds}
  if not chosen:
    raise ManifestError(f"{source}: no models of the study's base kinds {list(kinds)} (it lists "
                        f"{sorted({k for k, _ in parsed})})")
  labels = list(dict.fromkeys(s for _, s in chosen))
  for s in sizes:
    if s not in labels:
      raise ManifestError(f"{source}: unknown size label {s!r}: the manifest has {labels}")
  if sizes:
    chosen = {k: v for k, v in chosen.items() if k[1] in sizes}
  categories = tuple(categories) or tuple(next(iter(chosen.values()))["experts"])
  for (kind, size), e in chosen.items():
    for c in e["experts"]:
      why = known_category(c)
      if why is not None:
        raise ManifestError(f"{source}: {kind}/{size}/experts/{c}: unknown category {c!r} ({why})")
    for c in categories:
      if c not in e["experts"]:
        raise ManifestError(f"{source}: {kind}/{size}/experts: no expert for category {c!r}")
  entries = {}
  for (kind, size), e in chosen.items():
    where = f"{source}: {kind}/{size}"

    def read(role: str, p: pathlib.Path) -> Checkpoint:
      try:
        return describe(p)
      except CheckpointError as err:
        raise ManifestError(f"{where}/{role}: {err}") from None

    base = read("base", e["base"])
    experts = {c: read(f"experts/{c}", e["experts"][c]) for c in categories}
    mt = read("multitask", e["multitask"]) if multitask and e["multitask"] is not None else None
    for role, ck in [*((f"experts/{c}", x) for c, x in experts.items()), ("multitask", mt)]:
      if ck is not None:
        _check_against_base(f"{where}/{role}", base, ck)
    entries[(kind, size)] = Entry(kind, size, base, experts, mt)
  params = {}
  for (_, size), e in entries.items():
    params.setdefault(size, e.base.params)
  order = tuple(sorted(params, key=lambda s: (params[s], labels.index(s))))
  kinds_out = tuple(k for k in kinds if any(kk == k for kk, _ in entries))
  return Manifest(source, entries, kinds_out, order)


def load(path: str | os.PathLike, **validate_kw: Any) -> Manifest:
  """Reads and validates a manifest file (see :func:`validate` for the arguments)."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise ManifestError(f"{p}: no such manifest file")
  try:
    raw = yaml.safe_load(p.read_text())
  except yaml.YAMLError as e:
    raise ManifestError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
  return validate(parse(raw, str(p), p.parent.absolute()), str(p), **validate_kw)
