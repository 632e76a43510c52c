"""Atomic output directories, the merge manifest and the files written beside the weights.

An output is assembled under ``<parent>/.<name>.mergejax-partial`` and renamed onto ``<name>`` only
when complete, so a crash or SIGKILL at any point leaves nothing at the destination (at worst a
hidden ``*.mergejax-partial`` folder, removed by the next run to the same destination). An existing
output is replaced (``overwrite``) only when mergejax wrote it: a directory whose
``mergejax_manifest.json`` is mergejax's (it names the mergejax version) and lists every file the
directory holds (``contents``, recorded as the output is committed). Anything else is refused, never
deleted: a directory without that manifest, or one where a file was added since (a user's notes, a
``.git``).

Beside the weights: the base's non-weight files (config, tokenizer, generation config...), with
``config.json``'s dtype set to the dtype the weights were written in, a generated model card
(``README.md``: method, hyperparameters, inputs, versions and the command; the base's card is not
copied, since the merge is not the base) and the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shlex
import shutil
import sys
import time
from typing import Any, Mapping, Sequence

import jax

from mergejax import files as files_lib

MANIFEST = "mergejax_manifest.json"
PARTIAL_SUFFIX = ".mergejax-partial"


def is_primary() -> bool:
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (no-op in one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _contents(directory: pathlib.Path) -> list[str]:
  """Every file (and symlink) under ``directory``, as sorted relative POSIX paths."""
  out = []
  for root, dirs, names in os.walk(directory):
    rel = pathlib.Path(root).relative_to(directory)
    out += [(rel / n).as_posix() for n in names]
    out += [(rel / d).as_posix() for d in dirs if (pathlib.Path(root) / d).is_symlink()]
  return sorted(out)


def _not_ours(path: pathlib.Path) -> str | None:
  """Why the directory ``path`` may not be replaced, or None when mergejax wrote all of it."""
  if not path.is_dir() or path.is_symlink():
    return f"is not a mergejax output (not a directory holding {MANIFEST})"
  try:
    manifest = json.loads((path / MANIFEST).read_text())
  except (OSError, ValueError):
    return f"is not a mergejax output (no readable {MANIFEST})"
  if not (isinstance(manifest, dict) and isinstance(manifest.get("versions"), dict)
          and "mergejax" in manifest["versions"] and isinstance(manifest.get("contents"), list)):
    return (f"is not a mergejax output ({MANIFEST} does not list the mergejax version and the files it wrote; "
            "an output of an older mergejax must be removed by hand)")
  listed = set(manifest["contents"])
  foreign = [f for f in _contents(path) if f not in listed]
  if foreign:
    return f"holds {foreign[0]!r}, which mergejax did not write"
  return None


def written_by_mergejax(path: str | os.PathLike) -> bool:
  """True for a directory mergejax wrote, every file of it (see the module docstring)."""
  return _not_ours(pathlib.Path(path)) is None


def check_replaceable(output: str | os.PathLike, overwrite: bool) -> None:
  """ValueError unless ``output`` is absent, or ``overwrite`` is set and mergejax wrote all of it."""
  out = pathlib.Path(output)
  if not (out.exists() or out.is_symlink()):
    return
  if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
    return  # an empty directory holds nothing to lose: it becomes the output (as mergekit's)
  if not overwrite:
    raise ValueError(f"output path {output} exists (pass --overwrite to replace it)")
  why = _not_ours(out)
  if why is not None:
    raise ValueError(f"output path {output} exists and {why}: refusing to replace it; remove it yourself or "
                     "choose another output path")


def _record_contents(directory: pathlib.Path) -> None:
  """Adds the list of every file in ``directory`` to its manifest (if it has one): what mergejax wrote."""
  path = directory / MANIFEST
  if not path.is_file():
    return
  data = json.loads(path.read_text())
  data["contents"] = sorted(set(_contents(directory)) | {MANIFEST})
  files_lib.atomic_write_json(path, data)


def check_output_path(output: str | os.PathLike, inputs: Sequence[str | os.PathLike], overwrite: bool) -> None:
  """ValueError when ``output`` is (inside) an input, contains one, or exists and may not be replaced
  (without ``overwrite``, or not written by mergejax)."""
  out = pathlib.Path(output).resolve()
  for i in inputs:
    p = pathlib.Path(i).resolve()
    if out == p or p in out.parents:
      raise ValueError(f"output path {output} is inside input {i}")
    if out in p.parents:
      raise ValueError(f"input {i} is inside output path {output}")
  check_replaceable(output, overwrite)
  if out.parent.exists() and not out.parent.is_dir():
    raise ValueError(f"output parent {out.parent} is not a directory")


class AtomicDir:
  """A temporary directory beside ``dest`` that becomes ``dest`` on :meth:`commit`."""

  def __init__(self, dest: str | os.PathLike, overwrite: bool = False, create: bool = True):
    self.dest = pathlib.Path(dest).resolve()
    self.overwrite = overwrite
    self.tmp = self.dest.parent / f".{self.dest.name}{PARTIAL_SUFFIX}"
    # Missing parent directories are made, and removed again (if still empty) when the output is aborted.
    self._made = [d for d in [self.dest.parent, *self.dest.parent.parents] if not d.exists()]
    if is_primary():
      self.dest.parent.mkdir(parents=True, exist_ok=True)
      if self.tmp.exists():
        shutil.rmtree(self.tmp)  # left by a killed run
      if create:
        self.tmp.mkdir()
    sync("mergejax-atomic-begin")

  def commit(self) -> pathlib.Path:
    sync("mergejax-atomic-commit")
    if is_primary():
      _record_contents(self.tmp)
      _fsync_tree(self.tmp)
      if self.dest.exists() or self.dest.is_symlink():
        check_replaceable(self.dest, self.overwrite)
        trash = self.dest.parent / f".{self.dest.name}.mergejax-old"
        if trash.exists():
          shutil.rmtree(trash)
        os.rename(self.dest, trash)
        os.rename(self.tmp, self.dest)
        shutil.rmtree(trash)
      else:
        os.rename(self.tmp, self.dest)
      _fsync_dir(self.dest.parent)
    sync("mergejax-atomic-done")
    return self.dest

  def abort(self) -> None:
    if is_primary() and self.tmp.exists():
      shutil.rmtree(self.tmp, ignore_errors=True)
    if is_primary():
      for d in self._made:  # deepest first
        try:
          d.rmdir()
        except OSError:
          break


def _fsync_path(path: str | os.PathLike) -> None:
  """fsync a file or directory; best effort (some filesystems refuse directory fsync)."""
  try:
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
  except OSError:
    pass


def _fsync_dir(path: pathlib.Path) -> None:
  _fsync_path(path)


def _fsync_tree(root: pathlib.Path) -> None:
  for dirpath, _, files in os.walk(root):
    for f in files:
      _fsync_path(os.path.join(dirpath, f))
    _fsync_path(dirpath)


def fingerprint(path: str | os.PathLike, samples: int = 16, block: int = 1 << 16) -> dict[str, Any]:
  """Size and a sampled content fingerprint of a file or directory (sha256 over every file's size,
  first/last 64 KiB and ``samples`` evenly spaced 64 KiB blocks: cheap on 100 GB inputs, and any
  header change, truncation or rewrite of a sampled region changes it)."""
  root = pathlib.Path(path)
  files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
  h = hashlib.sha256()
  total = 0
  for f in files:
    size = f.stat().st_size
    total += size
    h.update(str(f.relative_to(root) if f != root else f.name).encode())
    h.update(size.to_bytes(8, "little"))
    with open(f, "rb") as fh:
      offsets = sorted({0, max(0, size - block)} | {size * i // (samples + 1) for i in range(1, samples + 1)})
      for off in offsets:
        fh.seek(off)
        h.update(fh.read(block))
  return {"path": str(root.resolve()), "bytes": total, "files": len(files), "sha256_sampled": h.hexdigest()}


def versions() -> dict[str, str]:
  import mergejax  # pylint: disable=g-import-not-at-top
  out = {"mergejax": mergejax.__version__, "jax": jax.__version__}
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:  # the installed distribution's version: importing orbax here would cost ~0.5 s
    out["orbax-checkpoint"] = metadata.version("orbax-checkpoint")
  except metadata.PackageNotFoundError:
    pass
  import numpy  # pylint: disable=g-import-not-at-top
  out["numpy"] = numpy.__version__
  return out


def write_manifest(directory: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
  """Writes ``mergejax_manifest.json`` (process 0 only) with versions and a timestamp added."""
  if not is_primary():
    return
  data = dict(metadata)
  data.setdefault("versions", versions())
  data.setdefault("created_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
  files_lib.atomic_write_json(pathlib.Path(directory) / MANIFEST, data)


# Files in a model directory that are weights (never copied as sidecars), and the model card (generated).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_WEIGHT_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json", MANIFEST, "README.md",
                 "adapter_config.json")


def copy_sidecars(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, skip: Sequence[str] = ()) -> list[str]:
  """Copies top-level non-weight files (config.json, generation_config.json, tokenizer files,
  model_config.json, ...) from ``src_dir``; returns their names. Process 0 only."""
  src = pathlib.Path(src_dir)
  if not src.is_dir() or not is_primary():
    return []
  copied = []
  for f in sorted(src.iterdir()):
    if not f.is_file() or f.name in _WEIGHT_NAMES or f.name in skip or f.name.endswith(_WEIGHT_SUFFIXES):
      continue
    if f.name.startswith(".") or f.name.endswith(".tmp"):
      continue
    shutil.copy2(f, pathlib.Path(dst_dir) / f.name)
    copied.append(f.name)
  return copied


def dtype_name(dtype: Any) -> str:
  """'bfloat16', 'float16', 'float32', ... (the name transformers uses in config.json)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.dtype(dtype).name


def set_config_dtype(directory: str | os.PathLike, dtypes: Sequence[Any]) -> str | None:
  """Sets ``config.json``'s dtype (``dtype`` and/or ``torch_dtype``, whichever it has; ``dtype``
  if neither) to the dtype of the float weights written, when they share one; returns it (else None)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mergejax import tree as tree_lib  # pylint: disable=g-import-not-at-top
  cfg_file = pathlib.Path(directory) / "config.json"
  floats = {np.dtype(d) for d in dtypes if tree_lib.is_float_dtype(d)}
  if not is_primary() or not cfg_file.is_file() or len(floats) != 1:
    return None
  name = dtype_name(floats.pop())
  try:
    cfg = json.loads(cfg_file.read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(cfg, dict):
    return None
  keys = [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]
  if all(cfg.get(k) == name for k in keys):
    return name
  for k in keys:
    cfg[k] = name
  files_lib.atomic_write_json(cfg_file, cfg)
  return name


def command_line() -> str:
  """The command that is running, as a shell line (program name without its directory)."""
  argv = list(sys.argv) or ["python"]
  argv[0] = os.path.basename(argv[0])
  return shlex.join(argv)


def model_card(metadata: Mapping[str, Any], name: str) -> str:
  """A model card (README.md) for a merged model: what was merged, how, with which versions and command."""
  versions_ = metadata.get("versions") or versions()
  inputs = metadata.get("inputs") or []
  hparams = {k: v for k, v in dict(metadata.get("hparams") or {}).items() if v is not None}
  lines = ["---", "tags:", "- merge", "- mergejax", "---", "", f"# {name}", "",
           f"This model is a merge of {len(inputs)} checkpoints made with mergejax {versions_.get('mergejax', '?')}.",
           "", "## Method", "", f"- method: `{metadata.get('method', '?')}`"]
  lines += [f"- {k}: `{v}`" for k, v in sorted(hparams.items())]
  per_tensor = metadata.get("per_tensor_hparams") or []
  if per_tensor:  # a recipe whose hyperparameters vary by tensor (gradients, filters)
    sets = [e for e in per_tensor if any(v is not None for v in dict(e.get("hparams") or {}).values())]
    if sets:
      lines.append(f"- hyperparameters per group of tensors ({len(sets)} groups):")
      lines += [f"  - {e.get('leaves', '?')} tensors: " + ", ".join(
          f"{k} `{v}`" for k, v in sorted(dict(e.get("hparams") or {}).items()) if v is not None) for e in sets]
  if metadata.get("varying_by_tensor"):
    lines.append("- varying tensor by tensor (the recipe's per-layer gradients or filters, below): "
                 + ", ".join(f"`{n}`" for n in metadata["varying_by_tensor"]))
  if metadata.get("seed") is not None:
    lines.append(f"- seed: `{metadata['seed']}`")
  if metadata.get("dtype"):
    lines.append(f"- output dtype: `{metadata['dtype']}`")
  if metadata.get("merge_data"):  # a data-aware method: what each expert's statistics were computed from
    data = dict(metadata["merge_data"])
    lines.append("- learned from each expert's examples: " + ", ".join(f"`{s}`" for s in data.pop("sources", ()))
                 + " (" + ", ".join(f"{k} `{v}`" for k, v in sorted(data.items())) + ")")
  lines += ["", "## Models merged", ""]
  for i in inputs:
    lines.append(f"- {i.get('role', 'input')}: `{i.get('name') or i.get('path')}`"
                 + (f" (sha256 of sampled blocks `{i['sha256_sampled'][:16]}`)" if i.get("sha256_sampled") else "")
                 + (f", LoRA adapter `{i['lora']['path']}` (`{i['lora']['sha256_sampled'][:16]}`)"
                    if isinstance(i.get("lora"), dict) and i["lora"].get("sha256_sampled") else ""))
  if metadata.get("recipe"):
    lines += ["", "## Recipe", "", "```yaml", str(metadata["recipe"]).rstrip(), "```"]
  lines += ["", "## Command", "", "```bash", str(metadata.get("command") or command_line()), "```", "",
            "## Versions", ""]
  lines += [f"- {k} {v}" for k, v in sorted(versions_.items())]
  return "\n".join(lines) + "\n"


def write_card(directory: str | os.PathLike, metadata: Mapping[str, Any], name: str) -> None:
  """Writes the model card ``README.md`` (process 0 only)."""
  if is_primary():
    files_lib.atomic_write(pathlib.Path(directory) / "README.md", model_card(metadata, name))


def open_sink(output: str | os.PathLike, reference: Any, *, output_format: str | None = None,
              sidecar_dir: str | None = None, shard_bytes: int = 4 << 30, overwrite: bool = False) -> Any:
  """The Sink writing ``output`` in ``output_format`` ('safetensors' or 'orbax'; default: the reference
  input's format when it is one of those, else safetensors), shaped after ``reference`` (an orbax tree's
  structure; PRNG key leaves are refused for safetensors, naming the leaf, before anything is written)."""
  fmt = output_format or (reference.format if reference.format in ("orbax", "safetensors") else "safetensors")
  if fmt not in ("orbax", "safetensors"):
    raise ValueError(f"output format {fmt!r}: choose 'safetensors' or 'orbax'")
  key_leaves = getattr(reference, "key_leaves", None)
  if fmt == "safetensors" and key_leaves:
    raise ValueError(f"{reference.name}: leaf '{sorted(key_leaves)[0]}' is a PRNG key, which safetensors cannot "
                     "store: write an orbax checkpoint (--output_format=orbax)")
  # The sinks import this module: imported here, not at the top, to keep the import graph acyclic.
  if fmt == "safetensors":
    from mergejax.checkpoints.safetensors import SafetensorsSink  # pylint: disable=g-import-not-at-top
    return SafetensorsSink(output, shard_bytes=shard_bytes, sidecar_dir=sidecar_dir, overwrite=overwrite)
  from mergejax.checkpoints.base import TreeKeys  # pylint: disable=g-import-not-at-top
  from mergejax.checkpoints.orbax import OrbaxSink  # pylint: disable=g-import-not-at-top
  tree = isinstance(reference, TreeKeys)
  keys = {s.path: reference.keys(s.path) for s in reference.specs()} if tree else None
  return OrbaxSink(output, sidecar_dir=sidecar_dir, overwrite=overwrite, keys=keys,
                   template=reference.template() if tree and hasattr(reference, "template") else None)
