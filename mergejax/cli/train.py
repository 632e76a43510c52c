"""mergejax-train: one run of a training recipe (pretrain, instruction_tune, expert, multitask).

With ``--config.init`` a Hugging Face checkpoint (a directory with ``config.json``: Llama, Mistral, Qwen, Gemma),
the run fine-tunes it on the recipe's mixture tokenized with the checkpoint's own tokenizer and writes a Hugging
Face directory to ``--config.output`` (mergejax.training.finetune)::

  mergejax-train --config=configs/train.py --config.recipe=expert --config.category=sentiment \
      --config.mixture_prefix=t0 --config.init=/ckpt/llama-1b --config.output=/ckpt/llama-1b-sentiment
"""

from __future__ import annotations

import importlib
import pathlib
import sys
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from mergejax import cli
from mergejax.cli import common

_CONFIG = common.define(config_flags.DEFINE_config_file, "config", None, "Training config (configs/train.py).",
                        lock_config=True)
_WORKDIR = common.define(flags.DEFINE_string, "workdir", None,
                         "World directory (models laid out as in mergejax.world).")


def main(argv) -> int:
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; --verbosity=0 shows them
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  if cfg is None:
    raise app.UsageError("--config is required (e.g. --config=configs/train.py)")
  # TensorFlow and seqio load only once the command runs (a fast --help, quick flag errors).
  from mergejax import world  # pylint: disable=g-import-not-at-top
  from mergejax.training import recipes  # pylint: disable=g-import-not-at-top
  try:
    if cfg.task_module:
      importlib.import_module(cfg.task_module)
    if cfg.init and (pathlib.Path(cfg.init) / "config.json").is_file():
      return finetune_checkpoint(cfg)
    spec = world.run_spec(
        cfg.recipe, cfg.size, _WORKDIR.value, category=cfg.category, kind=cfg.kind, out=cfg.output,
        init=cfg.init, mixture=cfg.mixture, mixture_prefix=cfg.mixture_prefix, steps=cfg.steps,
        opt_overrides=dict(lr=cfg.lr, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio,
                           weight_decay=cfg.weight_decay, b1=cfg.b1, b2=cfg.b2, clip_norm=cfg.clip_norm),
        batch_size=cfg.batch_size,
        feature_lengths={"inputs": cfg.inputs_length, "targets": cfg.targets_length}, seed=cfg.seed,
        model_overrides={k: cfg[k] for k in ("scan_layers", "remat", "dtype") if cfg[k] is not None})
    res = recipes.run(spec, checkpoint_every=cfg.checkpoint_every, progress=cfg.progress,
                      log_every=cfg.log_every)
  except (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError) as e:
    print(f"mergejax-train: error: {cli.message(e)}", file=sys.stderr)
    return 1
  if res.skipped:
    print(f"{spec.out}: already complete, skipped")
  else:
    print(f"{spec.out}: {spec.label} trained {res.steps} steps (resumed from {res.resumed_from}), "
          f"final loss {res.final_loss:.4f}, {res.tokens_per_s:,.0f} tokens/s")
  return 0


def finetune_checkpoint(cfg: Any) -> int:
  """The run of a ``configs/train.py`` config whose ``init`` is a Hugging Face checkpoint: the recipe's mixture
  (or ``cfg.mixture``), its defaults overridden by the config's set fields, written to ``cfg.output``.
  ValueError (one line) for a recipe that does not start from a checkpoint or a missing output."""
  from mergejax.training import finetune, recipes, trainer  # pylint: disable=g-import-not-at-top  (as above)
  if cfg.recipe not in ("instruction_tune", "expert", "multitask"):
    raise ValueError(f"recipe {cfg.recipe!r} does not start from a checkpoint: choose instruction_tune, expert "
                     "or multitask to fine-tune a Hugging Face checkpoint")
  if not cfg.output:
    raise ValueError("--config.output is required to fine-tune a Hugging Face checkpoint (--config.init)")
  defaults = dict(recipes.DEFAULTS[cfg.recipe])
  steps = cfg.steps if cfg.steps is not None else defaults.pop("steps")
  defaults.pop("steps", None)
  overrides = dict(lr=cfg.lr, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio,
                   weight_decay=cfg.weight_decay, b1=cfg.b1, b2=cfg.b2, clip_norm=cfg.clip_norm)
  opt = trainer.OptimConfig(**{**defaults, **{k: v for k, v in overrides.items() if v is not None}})
  mixture = cfg.mixture or recipes.mixture_name(cfg.recipe, cfg.category, cfg.mixture_prefix)
  res = finetune.finetune(cfg.init, cfg.output, mixture=mixture, steps=int(steps), opt=opt, batch_size=cfg.batch_size,
                          feature_lengths={"inputs": cfg.inputs_length, "targets": cfg.targets_length},
                          seed=cfg.seed, dtype=cfg.dtype or "float32", checkpoint_every=cfg.checkpoint_every,
                          log_every=cfg.log_every, progress=cfg.progress,
                          info={"recipe": cfg.recipe, "category": cfg.category})
  if res.skipped:
    print(f"{res.path}: already complete, skipped")
  else:
    print(f"{res.path}: {cfg.recipe} of {cfg.init} on {mixture} trained {res.steps} steps (resumed from "
          f"{res.resumed_from}), final loss {res.final_loss:.4f}, {res.tokens_per_s:,.0f} tokens/s")
  return 0


def run():
  cli.run_main(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()
