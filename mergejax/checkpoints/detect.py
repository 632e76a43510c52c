"""Input format detection: orbax tree or CheckpointManager directory, safetensors file or directory,
``pytorch_model.bin`` file or directory, PEFT LoRA adapter directory (applied to a base)."""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

from mergejax.checkpoints.base import CheckpointError
from mergejax.checkpoints.lora import is_lora_adapter
from mergejax.checkpoints.safetensors import SafetensorsSource, is_safetensors
from mergejax.checkpoints.torch_bin import TorchBinSource, is_torch_bin

FORMATS = ("orbax", "safetensors", "torch", "lora")
_STEP = re.compile(r"^(?:.*?_)?(\d+)$")  # CheckpointManager step directories: '150', 'ckpt_150'


def is_orbax(path: str | os.PathLike) -> bool:
  """An orbax checkpoint directory (checked without importing orbax)."""
  p = pathlib.Path(path)
  return p.is_dir() and ((p / "_METADATA").is_file() or (p / "_CHECKPOINT_METADATA").is_file())


def _steps(root: pathlib.Path) -> dict[int, pathlib.Path]:
  out = {}
  for d in root.iterdir() if root.is_dir() else []:
    m = _STEP.match(d.name)
    if m and d.is_dir() and (d / "_CHECKPOINT_METADATA").is_file():
      out[int(m.group(1))] = d
  return out


def resolve_orbax(path: str | os.PathLike) -> pathlib.Path | None:
  """The orbax tree directory (one holding ``_METADATA``) that ``path`` names, or None if it names none.

  * a tree directory: itself;
  * a CheckpointManager step directory (``150/``, ``ckpt_150/``): its item ``default`` (the
    single-item manager's), else its only item holding a tree; several items: CheckpointError naming them;
  * a CheckpointManager root: its latest step, resolved as above;
  * ``ROOT@step=N`` (when no such path exists): step N of the manager at ROOT.
  """
  p = pathlib.Path(path)
  if not p.exists():
    m = re.fullmatch(r"(.*)@step=(\d+)", str(path))
    if not m or not pathlib.Path(m.group(1)).is_dir():
      return None
    steps = _steps(pathlib.Path(m.group(1)))
    if int(m.group(2)) not in steps:
      raise CheckpointError(f"{m.group(1)}: no step {m.group(2)} (steps: {sorted(steps) or 'none'})")
    p = steps[int(m.group(2))]
  if not p.is_dir():
    return None
  if (p / "_METADATA").is_file():
    return p
  if (p / "_CHECKPOINT_METADATA").is_file():
    items = sorted(d.name for d in p.iterdir() if d.is_dir() and (d / "_METADATA").is_file())
    if "default" in items or len(items) == 1:
      return p / ("default" if "default" in items else items[0])
    if not items:
      raise CheckpointError(f"{path}: orbax checkpoint has no array tree (no item directory with _METADATA)")
    raise CheckpointError(f"{path}: CheckpointManager step with several items {items}: pass one of "
                          f"{', '.join(str(p / i) for i in items)}")
  steps = _steps(p)
  if steps:
    return resolve_orbax(steps[max(steps)])
  return None


def input_path(path: str | os.PathLike) -> pathlib.Path:
  """The directory or file ``path`` reads from (a CheckpointManager root or step resolved to its tree)."""
  p = pathlib.Path(path)
  try:
    return resolve_orbax(p) or p
  except CheckpointError:
    return p


def detect_format(path: str | os.PathLike) -> str:
  """'orbax', 'safetensors', 'torch' or 'lora'; CheckpointError naming the path otherwise."""
  p = pathlib.Path(path)
  if resolve_orbax(p) is not None:
    return "orbax"
  if not p.exists():
    raise CheckpointError(f"{path}: no such file or directory")
  if is_lora_adapter(p):
    return "lora"
  if is_safetensors(p):
    return "safetensors"
  if is_torch_bin(p):
    return "torch"
  raise CheckpointError(f"{path}: unknown checkpoint format (expected an orbax checkpoint or CheckpointManager "
                        "directory, a .safetensors or pytorch_model.bin file or a directory of them, or a PEFT "
                        "LoRA adapter directory)")


def open_source(path: str | os.PathLike, name: str | None = None, base: Any = None):
  """The Source for a checkpoint path, by detected format. A LoRA adapter directory is applied to
  ``base`` (a Source), giving the full fine-tuned model; without a base it is refused."""
  fmt = detect_format(path)
  if fmt == "orbax":
    from mergejax.checkpoints.orbax import OrbaxSource  # pylint: disable=g-import-not-at-top
    return OrbaxSource(resolve_orbax(path), name=name or str(path))
  if fmt == "lora":
    from mergejax.checkpoints.lora import LoraAdapter  # pylint: disable=g-import-not-at-top
    adapter = LoraAdapter(path)
    if base is None:
      raise CheckpointError(f"{path}: a PEFT LoRA adapter (adapter_config.json) is not a full model: give its base "
                            f"model first (mergejax-merge --base=BASE, mergejax-inspect BASE {path}, or BASE+{path} "
                            "in a recipe)")
    return adapter.apply(base, name=name or str(path))
  if fmt == "torch":
    return TorchBinSource(path, name=name)
  return SafetensorsSource(path, name=name)
