r"""``mergejax-yaml``: run a mergekit YAML recipe with mergejax.

    mergejax-yaml CONFIG.yml OUTPUT_DIR [--overwrite] [--seed=0] [--output_format=orbax] [--dry_run]
        [--modules=my_methods,my_tasks]

Reads mergekit's ``merge_method``, ``base_model``, ``models`` (``PATH`` or ``PATH+LORA``) with
``parameters``, global ``parameters`` (scalars, per-layer gradients, ``{filter, value}``), ``dtype``,
``out_dtype``, ``tokenizer_source`` / ``tokenizer``, ``chat_template`` and ``slices`` (passthrough),
with mergekit's semantics; mergejax's own choices go in a ``mergejax:`` block (``scope: global`` for
the paper's TIES, ``dare: paper`` to accept mergejax's DARE, ``seed``, and for a data-aware method,
``regmean``, ``fisher`` or ``adamerging``, each merged model's seqio examples: ``merge_data: {sources:
{MODEL: SOURCE}}``). ``--modules`` imports modules that register methods or tasks of your own first.
docs/MERGING.md lists every key and each difference from mergekit. A key mergejax does not support is
one line naming it, exit status 1, and no output; the output appears only when complete.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Sequence

from absl import app, flags, logging

from mergejax import cli
from mergejax.cli import common

_OVERWRITE = common.define(flags.DEFINE_bool, "overwrite", False,
                           "Replace an existing output that mergejax wrote (anything else is refused).")
_FORMAT = common.define(flags.DEFINE_enum, "output_format", None, ["orbax", "safetensors"],
                        "Output format (default: the inputs' when orbax or safetensors, else safetensors).")
_SEED = flags.DEFINE_integer("seed", None, "Seed of DARE's masks (default: the recipe's mergejax.seed, else 0).")
_SHARD_MB = flags.DEFINE_float("shard_size_mb", 4096, "Safetensors output shard size in MiB.")
_BUDGET = flags.DEFINE_float("memory_budget_gb", 1.0, "Bound on the leaf groups in flight (host memory).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Check the recipe and print the plan; merge nothing.")
_MODULES = flags.DEFINE_list("modules", [], "Python modules to import before the recipe is read: ones that register "
                             "merge methods or seqio tasks of your own (mergejax-merge's --config.modules).")
_CACHE = flags.DEFINE_string("compilation_cache_dir", None, "JAX persistent compilation cache (default: "
                             "$XDG_CACHE_HOME/mergejax/jax, as mergejax-merge; 'none' turns it off).")


def describe(pl) -> list[str]:
  """The plan in a few lines (for --dry_run)."""
  lines = [f"method: {pl.method} (mergekit {pl.recipe.merge_method})"]
  if pl.base is not None:
    lines.append(f"base: {pl.base}")
  lines += [f"input: {x}" for x in pl.inputs]
  if pl.parts:
    from mergejax.recipes import mergekit  # pylint: disable=g-import-not-at-top  (after the recipe parsed)
    for part, off in zip(pl.parts, mergekit.slice_offsets(pl)):
      srcs = pl.recipe.slices[part.slice_index].sources
      a, b = srcs[0].layer_range
      lines.append(f"slice {part.slice_index}: output layers {off}-{off + b - a - 1} <- "
                   + ", ".join(f"{e.ref} layers {e.layer_range[0]}-{e.layer_range[1] - 1}" for e in srcs))
  for k in ("dtype", "out_dtype", "tokenizer_source", "chat_template"):
    v = getattr(pl.recipe, k)
    if v is not None:
      lines.append(f"{k}: {v if len(str(v)) < 60 else str(v)[:57] + '...'}")
  if pl.recipe.options:
    lines.append(f"mergejax: {dict(pl.recipe.options)}")
  return lines


def main(argv: Sequence[str]) -> None:
  if len(argv) != 3:
    raise app.UsageError("usage: mergejax-yaml CONFIG.yml OUTPUT_DIR")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  config, output = argv[1], argv[2]
  try:
    from mergejax.cli import merge as merge_cli  # pylint: disable=g-import-not-at-top
    from mergejax.recipes import mergekit, run as run_lib  # pylint: disable=g-import-not-at-top
    merge_cli.import_modules({"modules": _MODULES.value})
    try:
      text = pathlib.Path(config).read_text()
    except OSError as e:
      raise ValueError(f"{config}: {e.strerror or e}") from None
    try:
      pl = mergekit.plan(mergekit.parse(text))
    except mergekit.RecipeError as e:
      raise ValueError(f"{config}: {e}") from None
    if _DRY_RUN.value:
      print("\n".join(describe(pl)))
      return
    merge_cli.prepare_process()
    merge_cli.enable_compilation_cache(merge_cli.compilation_cache_dir({"compilation_cache_dir": _CACHE.value}))
    seed = _SEED.value if _SEED.value is not None else int(pl.recipe.options.get("seed", 0))
    try:
      out = run_lib.run(pl, output, output_format=_FORMAT.value, overwrite=_OVERWRITE.value, seed=seed,
                    shard_bytes=int(_SHARD_MB.value * (1 << 20)), memory_budget_bytes=_BUDGET.value * (1 << 30),
                    progress=_PROGRESS.value)
    except mergekit.RecipeError as e:
      raise ValueError(f"{config}: {e}") from None
  except KeyboardInterrupt:
    print("mergejax-yaml: interrupted; no output written", file=sys.stderr)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    from mergejax.cli.merge import error_line  # pylint: disable=g-import-not-at-top
    print(f"mergejax-yaml: error: {error_line(e)}", file=sys.stderr)
    sys.exit(1)
  print(f"mergejax-yaml: wrote {out}")


def run() -> None:
  cli.run_main(main)


if __name__ == "__main__":
  run()
