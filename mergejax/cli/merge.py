r"""``mergejax-merge``: merge orbax or Hugging Face safetensors checkpoints of any size.

    mergejax-merge --base=PATH --experts=PATH1,PATH2 --output=PATH \
      --config.method.name=ties --config.method.density=0.2 [--config.method.<hyperparameter>=VALUE ...] \
      [--output_format=safetensors] [--config.dtype=bfloat16] [--overwrite] [--config=MY_CONFIG.py]

Input formats are detected; the output format defaults to the base's. The output appears only when
complete (atomic rename), with ``mergejax_manifest.json`` beside the weights. Any bad input gives one
line naming the file and leaf, exit status 1, and no output. Inputs holding NaN/Inf are refused unless
``--config.allow_nonfinite=True``. The configuration (``--config``, default: the package's
``mergejax/configs/merge.py``) holds plain values; every field is overridable as ``--config.x=y``, a
method's hyperparameters as ``--config.method.<name>=VALUE``; ``--config.modules=my.module`` imports a
module that registers a method of your own first.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import os
import pathlib
import sys
from typing import Sequence

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from mergejax import cli, engine, methods, sharding, tree
from mergejax.checkpoints import SafetensorsSink, TreeKeys, open_source
from mergejax.checkpoints import output as output_lib
from mergejax.cli import common
from mergejax.configs import merge as default_config
from mergejax.engine import xla_cpu

_BASE = flags.DEFINE_string("base", None, "Base checkpoint (orbax dir, safetensors file or HF dir).")
_EXPERTS = flags.DEFINE_list("experts", None, "Comma-separated expert checkpoints.")
_OUTPUT = flags.DEFINE_string("output", None, "Output checkpoint path (must not exist unless --overwrite).")
_FORMAT = flags.DEFINE_enum("output_format", None, ["orbax", "safetensors"], "Output format (default: base's).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output.")
# Unknown fields are accepted while flags are parsed and refused by check_config with one line (and a
# "did you mean"): which hyperparameters exist depends on the method named in the same command line.
_CONFIG = common.define(config_flags.DEFINE_config_file, "config", default_config.__file__,
                        "Merge config (default: the package's mergejax/configs/merge.py).",
                        lock_config=False, accept_new_attributes=True)


def methods_help() -> str:
  """Every registered method: its formula and hyperparameters (type, allowed values, default)."""
  lines = ["Methods (--config.method.name=NAME; hyperparameters as --config.method.<name>=VALUE):"]
  for name in methods.names():
    lines.append(f"  {name}: {methods.formula(name)}")
    lines += [f"      {hp.describe()}" for hp in methods.schema(name)]
  return "\n".join(lines)


def import_modules(cfg: config_dict.ConfigDict) -> None:
  """Imports ``cfg.modules`` (e.g. modules that register methods); ValueError names a missing one."""
  modules = cfg.get("modules") or ()
  for m in (modules,) if isinstance(modules, str) else modules:
    try:
      importlib.import_module(m)
    except ImportError as e:
      raise ValueError(f"config modules: cannot import {m!r} ({e})") from None


def _did_you_mean(key: str, known: Sequence[str]) -> str:
  near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
  return f": did you mean {near[0]!r}?" if near else f" (allowed: {', '.join(known) or 'none'})"


def check_config(cfg: config_dict.ConfigDict) -> None:
  """ValueError (one line, with a did-you-mean) for a field the merge config does not have, or a
  hyperparameter the chosen method does not take. Call after :func:`import_modules`."""
  known = default_config.get_config()
  for key in cfg.keys():
    if key not in known:
      raise ValueError(f"unknown config field {key!r}{_did_you_mean(key, list(known.keys()))}")
  if not isinstance(cfg.method, (dict, config_dict.ConfigDict)) or "name" not in cfg.method:
    raise ValueError("config method must be a dict with a name, e.g. --config.method.name=ties")
  name = cfg.method.name
  if name not in methods.names():
    raise ValueError(f"unknown merge method {name!r}: choose one of {methods.names()}")
  hparams = methods.hparam_names(name)
  for key in cfg.method.keys():
    if key != "name" and key not in hparams:
      raise ValueError(f"unknown hyperparameter {key!r} for merge method {name!r}{_did_you_mean(key, hparams)}")


def build_method(cfg: config_dict.ConfigDict) -> methods.MergeMethod:
  """The method named by ``cfg.method.name`` with the hyperparameters ``cfg.method`` sets."""
  check_config(cfg)
  hp = {k: v for k, v in cfg.method.items() if k != "name" and v is not None}
  return methods.get(cfg.method.name, **hp)


def merge_checkpoints(base: str | None, experts: Sequence[str], output: str, cfg: config_dict.ConfigDict, *,
                      output_format: str | None = None, overwrite: bool = False, mesh=None) -> pathlib.Path:
  """Merges checkpoint files into ``output``; raises (and leaves no output) on any bad input."""
  import_modules(cfg)
  method = build_method(cfg)
  if cfg.dtype is not None:
    try:
      dt = np.dtype(jax.numpy.dtype(cfg.dtype))
    except TypeError:
      raise ValueError(f"config dtype={cfg.dtype!r} is not a dtype") from None
    if not tree.is_float_dtype(dt):
      raise ValueError(f"config dtype={cfg.dtype!r} must be a floating dtype")
  if cfg.memory_budget_gb is not None and not cfg.memory_budget_gb > 0:
    raise ValueError(f"config memory_budget_gb={cfg.memory_budget_gb} must be > 0")
  if not experts:
    raise ValueError("--experts is empty: give at least one expert checkpoint")
  method.check_experts(len(experts))
  inputs = ([base] if base else []) + list(experts)
  for p in inputs:
    if not os.path.exists(p):
      raise FileNotFoundError(f"{p}: no such file or directory")
  base_src = open_source(base, name=base) if base else None
  expert_srcs = [open_source(e, name=e) for e in experts]
  reference = base_src or expert_srcs[0]
  engine.validate_sources(reference, (expert_srcs if base_src else expert_srcs[1:]))
  fmt = output_format or reference.format
  output_lib.check_output_path(output, inputs, overwrite)
  rules = sharding.parse_rules(cfg.partition_rules)
  mesh = mesh if mesh is not None else sharding.make_mesh()
  sidecar_dir = str(reference.dir) if reference.dir is not None else None
  if fmt == "safetensors":
    sink = SafetensorsSink(output, shard_bytes=int(cfg.shard_size_mb * (1 << 20)), sidecar_dir=sidecar_dir,
                           overwrite=overwrite)
  else:
    from mergejax.checkpoints.orbax import OrbaxSink  # pylint: disable=g-import-not-at-top  (orbax: ~0.4 s to import)
    keys = {s.path: reference.keys(s.path) for s in reference.specs()} if isinstance(reference, TreeKeys) else None
    sink = OrbaxSink(output, sidecar_dir=sidecar_dir, overwrite=overwrite, keys=keys)
  fingerprints = [{"role": "base" if base and i == 0 else "expert", **output_lib.fingerprint(p)}
                  for i, p in enumerate(inputs)] if output_lib.is_primary() else []
  return engine.merge_sources(
      base_src, expert_srcs, sink, method, seed=int(cfg.seed), dtype=cfg.dtype, mesh=mesh, rules=rules,
      memory_budget_bytes=cfg.memory_budget_gb * (1 << 30) if cfg.memory_budget_gb else None,
      allow_nonfinite=bool(cfg.allow_nonfinite), progress=bool(cfg.progress), prefetch=bool(cfg.prefetch),
      metadata={"inputs": fingerprints, "input_format": reference.format})


def compilation_cache_dir(cfg: config_dict.ConfigDict) -> str | None:
  """The persistent compilation cache directory ``cfg`` asks for (None: off)."""
  d = cfg.get("compilation_cache_dir")
  if d is None:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "mergejax", "jax")
  return None if d.strip().lower() in ("", "none", "off") else os.path.expanduser(d)


def enable_compilation_cache(directory: str | None) -> None:
  """Turns on JAX's persistent compilation cache in ``directory`` for every kernel, however quick."""
  if directory is None:
    return
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    logging.warning("compilation cache %s unusable (%s); compiling without it", directory, e)
    return
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def error_line(e: BaseException) -> str:
  """One line describing a failure (file and leaf are already in our own messages)."""
  if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
    what = os.strerror(e.errno) if e.errno else str(e)
    where = f" {e.filename}" if e.filename else ""
    if e.errno == errno.ENOSPC:
      return f"disk full while writing the output{where}: {what}"
    return f"{type(e).__name__}{where}: {what}" if e.errno else f"{type(e).__name__}: {e}"
  msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  if isinstance(e, engine.NonFiniteError):
    msg += " (set --config.allow_nonfinite=True to merge anyway)"
  return msg


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every read at INFO
  try:
    if not _EXPERTS.value:
      raise ValueError("--experts is required (comma-separated checkpoint paths)")
    if not _OUTPUT.value:
      raise ValueError("--output is required")
    xla_cpu.prefer_wide_vectors()
    common.maybe_initialize_distributed()
    enable_compilation_cache(compilation_cache_dir(_CONFIG.value))
    out = merge_checkpoints(_BASE.value, _EXPERTS.value, _OUTPUT.value, _CONFIG.value,
                            output_format=_FORMAT.value, overwrite=_OVERWRITE.value)
  except KeyboardInterrupt:
    print("mergejax-merge: interrupted; no output written", file=sys.stderr)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    print(f"mergejax-merge: error: {error_line(e)}", file=sys.stderr)
    sys.exit(1)
  print(f"mergejax-merge: wrote {out}")


def run() -> None:
  # absl's --help prints the main module's docstring: this command's, with every method's schema.
  sys.modules["__main__"].__doc__ = f"{__doc__}\n{methods_help()}\n"
  cli.run_main(main)


if __name__ == "__main__":
  run()
