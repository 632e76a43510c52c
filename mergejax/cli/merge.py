r"""``mergejax-merge``: merge checkpoints of any size: orbax (a CheckpointManager directory too), Hugging
Face safetensors or ``pytorch_model.bin`` (read without running its pickle), PEFT LoRA adapters as experts.

    mergejax-merge --base=PATH --experts=PATH1,PATH2 --output=PATH \
      --config.method.name=ties --config.method.density=0.2 [--config.method.<hyperparameter>=VALUE ...] \
      [--output_format=safetensors] [--config.dtype=bfloat16] [--overwrite] [--config=MY_CONFIG.py]

Input formats are detected; the output format defaults to the base's. The output appears only when
complete (atomic rename), with ``mergejax_manifest.json`` beside the weights. Any bad input gives one
line naming the file and leaf, exit status 1, and no output. Inputs holding NaN/Inf are refused unless
``--config.allow_nonfinite=True``. The configuration (``--config``, default: the package's
``mergejax/configs/merge.py``) holds plain values; every field is overridable as ``--config.x=y``, a
method's hyperparameters as ``--config.method.<name>=VALUE``; ``--config.modules=my.module`` imports a
module that registers a method of your own first. A data-aware method (``regmean``, ``fisher``,
``adamerging``) learns from each expert's examples: ``--config.merge_data.sources='("heldin_sentiment",
"heldin_topic")'`` names one seqio suite, mixture or task per expert.
"""

from __future__ import annotations

import difflib
import dataclasses
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

from mergejax import cli, engine, expert_data, methods, sharding, tree
from mergejax.checkpoints import output as output_lib
from mergejax.cli import common
from mergejax.configs import merge as default_config
from mergejax.engine import host, xla_cpu

_BASE = flags.DEFINE_string("base", None, "Base checkpoint (orbax dir, safetensors file or HF dir).")
_EXPERTS = flags.DEFINE_list("experts", None, "Comma-separated expert checkpoints (for paths with commas use "
                             "--expert or --experts_file).")
_EXPERT = flags.DEFINE_multi_string("expert", None, "An expert checkpoint, taken whole (repeat the flag for several; "
                                    "after those of --experts).")
_EXPERTS_FILE = flags.DEFINE_string("experts_file", None, "A text file of expert checkpoints, one path per line (blank "
                                    "lines and lines starting with # are skipped; after --experts and --expert).")
_OUTPUT = flags.DEFINE_string("output", None, "Output checkpoint path (must not exist unless --overwrite).")
_FORMAT = common.define(flags.DEFINE_enum, "output_format", None, ["orbax", "safetensors"],
                        "Output format (default: the base's when orbax or safetensors, else safetensors).")
_OVERWRITE = common.define(flags.DEFINE_bool, "overwrite", False, "Replace an existing output that mergejax wrote (a "
                           "directory whose mergejax_manifest.json lists every file in it; anything else is "
                           "refused).")
_TOKENIZER_SOURCE = flags.DEFINE_string(
    "tokenizer_source", None, "Inputs with different vocabularies: map embedding/LM-head rows by token to the "
    "vocabulary of 'base', 'union' (base + every input's extra tokens), or an input path (its tokenizer); "
    "the merged tokenizer is written. As mergekit's tokenizer_source.")
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
  fields = list(known.merge_data.keys())
  for key in (cfg.merge_data.keys() if isinstance(cfg.get("merge_data"), (dict, config_dict.ConfigDict)) else ()):
    if key not in fields:
      raise ValueError(f"unknown config field 'merge_data.{key}'{_did_you_mean(key, fields)}")


def build_method(cfg: config_dict.ConfigDict) -> methods.MergeMethod:
  """The method named by ``cfg.method.name`` with the hyperparameters ``cfg.method`` sets."""
  check_config(cfg)
  hp = {k: v for k, v in cfg.method.items() if k != "name" and v is not None}
  return methods.get(cfg.method.name, **hp)


def example_settings(method: methods.MergeMethod, base: str | None, experts: Sequence[str],
                     cfg: config_dict.ConfigDict, tokenizer_source: str | None
                     ) -> tuple[tuple[str, ...], expert_data.Settings]:
  """(one source per expert, the examples' settings) of a data-aware merge, checked before any work."""
  fields = dict(cfg.merge_data)
  sources = fields.pop("sources", ()) or ()
  sources = (sources,) if isinstance(sources, str) else tuple(sources)
  if len(sources) != len(experts):
    raise ValueError(f"{method.name}: learns from each expert's examples: give one seqio suite, mixture or task per "
                     f"expert, e.g. --config.merge_data.sources='(\"heldin_sentiment\", \"heldin_topic\")' (got "
                     f"{len(sources)} for {len(experts)} experts)")
  try:
    settings = expert_data.Settings(**fields)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{method.name}: config merge_data: {e}") from None
  if method.traits.uses_base and not base:
    raise ValueError(f"{method.name} needs a base model (--base)")
  if tokenizer_source is not None:
    raise ValueError(f"{method.name}: learns from examples tokenized with one vocabulary; --tokenizer_source (inputs "
                     "with different vocabularies) cannot be combined with it")
  return sources, settings


def merge_checkpoints(base: str | None, experts: Sequence[str], output: str, cfg: config_dict.ConfigDict, *,
                      output_format: str | None = None, overwrite: bool = False, mesh=None,
                      tokenizer_source: str | None = None) -> pathlib.Path:
  """Merges checkpoint files into ``output``; raises (and leaves no output) on any bad input.

  ``tokenizer_source`` ("base", "union", or an input path) maps embedding and LM-head rows of inputs
  with different vocabularies to one vocabulary by token string (:mod:`mergejax.checkpoints.vocab`).
  """
  from mergejax.checkpoints import detect, inputs as inputs_lib  # pylint: disable=g-import-not-at-top
  import_modules(cfg)
  method = build_method(cfg)
  if tokenizer_source not in (None, "base", "union"):  # an input's path: its index among the inputs
    names = ([base] if base else []) + list(experts)
    if tokenizer_source not in names:
      raise ValueError(f"tokenizer source {tokenizer_source!r} is not 'base', 'union' or one of the inputs")
    tokenizer_source = names.index(tokenizer_source)
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
  learns_from_data = expert_data.needs_data(method)
  if learns_from_data:
    sources, settings = example_settings(method, base, experts, cfg, tokenizer_source)
  inputs = ([base] if base else []) + list(experts)
  opened = inputs_lib.open_inputs(inputs_lib.ModelRef(base) if base else None,
                                  [inputs_lib.ModelRef(e) for e in experts], dtype=cfg.dtype,
                                  tokenizer_source=tokenizer_source)
  reference = opened.reference
  try:
    engine.validate_sources(reference, opened.experts if opened.base is not None else opened.experts[1:])
  except ValueError as e:
    raise ValueError(inputs_lib.vocab_mismatch_hint(str(e))) from None
  output_lib.check_output_path(output, [detect.input_path(p) for p in inputs], overwrite)
  if learns_from_data:  # the models loaded and their statistics computed once the inputs and output check out
    method = expert_data.bind_checkpoints(method, base, experts, sources, settings)
  rules = sharding.parse_rules(cfg.partition_rules)
  mesh = mesh if mesh is not None else sharding.make_mesh()
  fingerprints = [{"role": "base" if base and i == 0 else "expert", "name": p,
                   **output_lib.fingerprint(detect.input_path(p))}
                  for i, p in enumerate(inputs)] if output_lib.is_primary() else []
  with inputs_lib.staged_sidecars(opened.donor_dir, vocab=opened.vocab) as sidecar_dir:
    sink = output_lib.open_sink(output, reference, output_format=output_format, sidecar_dir=sidecar_dir,
                                shard_bytes=int(cfg.shard_size_mb * (1 << 20)), overwrite=overwrite)
    return engine.merge_sources(
        opened.base, opened.experts, sink, method, seed=int(cfg.seed), dtype=opened.dtype, mesh=mesh, rules=rules,
        memory_budget_bytes=cfg.memory_budget_gb * (1 << 30) if cfg.memory_budget_gb else None,
        allow_nonfinite=bool(cfg.allow_nonfinite), progress=bool(cfg.progress), prefetch=bool(cfg.prefetch),
        metadata={"inputs": fingerprints, "input_format": reference.format, "command": output_lib.command_line(),
                  "tokenizer_source": tokenizer_source,
                  **({"merge_data": {"sources": list(sources), **dataclasses.asdict(settings)}}
                     if learns_from_data else {})})


def expert_paths(comma_list: Sequence[str] | None, repeated: Sequence[str] | None, listing: str | None) -> list[str]:
  """Expert paths from ``--experts`` (comma list), ``--expert`` (one path per flag) and ``--experts_file``."""
  parts = [p for p in (comma_list or []) if p]
  for a, b in zip(parts, parts[1:]):  # two pieces of a comma list that are one path with a comma in it
    if not (os.path.exists(a) and os.path.exists(b)) and os.path.exists(f"{a},{b}"):
      raise ValueError(f"--experts: {a},{b} is one path with a comma in it, which --experts splits: pass it with "
                       "--expert=PATH or --experts_file")
  out = parts + list(repeated or [])
  if listing:
    try:
      text = pathlib.Path(listing).read_text()
    except OSError as e:
      raise ValueError(f"--experts_file {listing}: {e.strerror or e}") from None
    out += [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
  return out


def compilation_cache_dir(cfg: config_dict.ConfigDict) -> str | None:
  """The persistent compilation cache directory ``cfg`` asks for (None: off)."""
  d = cfg.get("compilation_cache_dir")
  if d is None:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "mergejax", "jax")
  return None if d.strip().lower() in ("", "none", "off") else os.path.expanduser(d)


def prepare_process() -> None:
  """What a merge command (``mergejax-merge``, ``mergejax-yaml``) sets before JAX's backend starts: XLA:CPU's
  vector width (:func:`~mergejax.engine.xla_cpu.prefer_wide_vectors`) and glibc's reuse of freed memory
  (:func:`~mergejax.engine.host.reuse_freed_memory`), both for this process alone."""
  xla_cpu.prefer_wide_vectors()
  host.reuse_freed_memory()


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
    experts = expert_paths(_EXPERTS.value, _EXPERT.value, _EXPERTS_FILE.value)
    if not experts:
      raise ValueError("no experts: give --experts (comma-separated), --expert (repeatable) or --experts_file")
    if not _OUTPUT.value:
      raise ValueError("--output is required")
    prepare_process()
    common.maybe_initialize_distributed()
    enable_compilation_cache(compilation_cache_dir(_CONFIG.value))
    out = merge_checkpoints(_BASE.value, experts, _OUTPUT.value, _CONFIG.value,
                            output_format=_FORMAT.value, overwrite=_OVERWRITE.value,
                            tokenizer_source=_TOKENIZER_SOURCE.value)
  except KeyboardInterrupt:
    print("mergejax-merge: interrupted; no output written", file=sys.stderr)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    print(f"mergejax-merge: error: {error_line(e)}", file=sys.stderr)
    sys.exit(1)
  print(f"mergejax-merge: wrote {out}")


def run() -> None:
  cli.run_main(main, doc=f"{__doc__}\n{methods_help()}\n")  # --help: every method's schema and the flags


if __name__ == "__main__":
  run()
