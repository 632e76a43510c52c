"""The four training recipes of the embedded world (the paper's setup in miniature):

``pretrain`` (random init, plain corpus) -> ``instruction_tune`` (the IT base: the pretrained base
further trained on the Flan-like mixture) -> ``expert`` (one per held-in category, full fine-tuning
of either base with a fixed step count and a small learning rate, as the paper's 2,000 steps at
3e-5) -> ``multitask`` (all 8 held-in categories at once, from either base).

A :class:`RunSpec` is everything one run needs; :func:`resolve` builds it from a recipe, a size, its
output and starting checkpoints and overrides; :func:`run` executes it.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from mergejax import models
from mergejax import tree as tree_lib
from mergejax.training import data as data_lib
from mergejax.training import trainer as trainer_lib

RECIPES = ("pretrain", "instruction_tune", "expert", "multitask")
KINDS = ("pretrained", "instruction_tuned")

# Default hyperparameters per recipe (steps count optimizer steps of `batch_size` packed rows).
# Instruction tuning is the longest run after pretraining: with 290 steps at 1e-3 the xs base did
# not learn its own instruction tasks (e.g. mj_it_why 0.45 on their validation split), so nothing
# could transfer to held-out tasks; 900 steps at 4e-3 learn them, and at xs carry the held-in prompt
# frames to held-in templates better than at 2e-3 (docs/WORLD.md).
DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": dict(steps=360, lr=3e-3, warmup_steps=36, min_lr_ratio=0.1),
    "instruction_tune": dict(steps=900, lr=4e-3, warmup_steps=90, min_lr_ratio=0.1),
    "expert": dict(steps=50, lr=2e-3, warmup_steps=5, min_lr_ratio=0.5),
}
# Per-size changes to a recipe's defaults, chosen on validation splits (docs/WORLD.md, "Expert
# budgets"): every expert of the default world at least 3 standard errors above chance on both of its
# datasets. The xs experts need more steps at twice the learning rate (with 50 steps at 2e-3 or
# 4e-3, extractive QA, topic and mcqa stayed near chance at xs); s experts with fewer steps (30 at
# 4e-3) or a higher rate (50 at 3e-3) fell below it on extractive QA or topic. Sizes not listed take
# DEFAULTS.
SIZE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "expert": {"xs": dict(steps=80, lr=4e-3, warmup_steps=8)},
}
# Held-in categories of the default suite (mergejax.tasks.HELDIN_CATEGORIES): one expert each.
NUM_CATEGORIES = 8


def _size_name(size: str | models.ModelConfig | None) -> str | None:
  return size if size is None or isinstance(size, str) else size.name


def defaults(recipe: str, size: str | models.ModelConfig | None = None,
             num_categories: int = NUM_CATEGORIES) -> dict[str, Any]:
  """A recipe's default hyperparameters at ``size`` (a size label or a model config; None: the
  size-independent defaults). The multitask baseline's follow the experts' at that size
  (:func:`multitask_defaults`)."""
  if recipe not in RECIPES:
    raise ValueError(f"unknown recipe {recipe!r}; known: {RECIPES}")
  if recipe == "multitask":
    return multitask_defaults(num_categories, size=size)
  return {**DEFAULTS[recipe], **SIZE_DEFAULTS.get(recipe, {}).get(_size_name(size) or "", {})}


def multitask_defaults(num_categories: int = NUM_CATEGORIES,
                       expert: Mapping[str, Any] | None = None,
                       size: str | models.ModelConfig | None = None) -> dict[str, Any]:
  """The multitask baseline's budget, matched to the experts' at ``size``: as many steps as all
  ``num_categories`` experts together, on the same schedule (peak lr, warmup share of the steps, final
  lr ratio), so it sees as many rows of each category as that category's expert. ``expert``:
  overrides of the expert recipe (None values ignored)."""
  e = {**defaults("expert", size), **{k: v for k, v in dict(expert or {}).items() if v is not None}}
  return dict(steps=num_categories * int(e["steps"]), lr=e["lr"],
              warmup_steps=num_categories * int(e["warmup_steps"]), min_lr_ratio=e["min_lr_ratio"])


DEFAULTS["multitask"] = multitask_defaults()
BATCH_SIZE = 16
FEATURE_LENGTHS = {"inputs": 96, "targets": 32}


def mixture_name(recipe: str, category: str | None = None, prefix: str = "mj") -> str:
  """The seqio mixture a recipe trains on (see the tasks contract)."""
  if recipe == "pretrain":
    return f"{prefix}_pretrain"
  if recipe == "instruction_tune":
    return instruct_mixture(prefix)
  if recipe == "expert":
    if not category:
      raise ValueError("recipe 'expert' needs a category")
    return f"{prefix}_heldin_{category}"
  if recipe == "multitask":
    return f"{prefix}_heldin"
  raise ValueError(f"unknown recipe {recipe!r}; known: {RECIPES}")


# Share of plain-corpus rows in instruction tuning: replay against forgetting what pretraining taught
# (Flan-style tuning of a tiny model otherwise erases it; PaLM-2-IT keeps PaLM-2's knowledge). The
# other rows are the instruction tasks of ``<prefix>_instruct`` at their own relative rates.
INSTRUCT_REPLAY_SHARE = 0.475


def instruct_mixture(prefix: str = "mj") -> str:
  """``<prefix>_instruct`` with ``INSTRUCT_REPLAY_SHARE`` of ``<prefix>_pretrain`` rows mixed in (registered once)."""
  from mergejax.tasks import registry  # pylint: disable=g-import-not-at-top  # TensorFlow: configs import this module
  name = f"{prefix}_instruct_replay"
  registry.add_mixture(name, [(f"{prefix}_instruct", 1.0 - INSTRUCT_REPLAY_SHARE),
                              (f"{prefix}_pretrain", INSTRUCT_REPLAY_SHARE)], default_rate=None)
  return name


def data_seed(seed: int, recipe: str, category: str | None = None) -> int:
  """Data-order seed of a run: the same for both base kinds and all sizes (so runs share data)."""
  return (seed * 1_000_003 + tree_lib.stable_path_hash(f"{recipe}/{category or ''}")) % (2 ** 31)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run."""

  recipe: str
  model: models.ModelConfig
  out: pathlib.Path
  init: pathlib.Path | None
  mixture: str
  steps: int
  opt: trainer_lib.OptimConfig
  batch_size: int = BATCH_SIZE
  feature_lengths: tuple[tuple[str, int], ...] = tuple(FEATURE_LENGTHS.items())
  seed: int = 0
  category: str | None = None
  kind: str | None = None

  @property
  def data_seed(self) -> int:
    return data_seed(self.seed, self.recipe, self.category)

  @property
  def label(self) -> str:
    parts = [self.model.name or "custom", self.kind or "", self.recipe, self.category or ""]
    return "/".join(p for p in parts if p)


def run_kind(recipe: str, kind: str = "pretrained") -> str:
  """The base kind a run is filed under: pretraining makes the pretrained base, instruction tuning the
  instruction-tuned one; an expert or multitask run takes the kind of the base it starts from."""
  if recipe not in RECIPES:
    raise ValueError(f"unknown recipe {recipe!r}; known: {RECIPES}")
  if kind not in KINDS:
    raise ValueError(f"unknown base kind {kind!r}; known: {KINDS}")
  return {"pretrain": "pretrained", "instruction_tune": "instruction_tuned"}.get(recipe, kind)


def resolve(recipe: str, size: str | models.ModelConfig, *, out: str | pathlib.Path,
            init: str | pathlib.Path | None = None, category: str | None = None, kind: str = "pretrained",
            mixture: str | None = None, mixture_prefix: str = "mj", steps: int | None = None,
            opt_overrides: Mapping[str, Any] | None = None, batch_size: int = BATCH_SIZE,
            feature_lengths: Mapping[str, int] | None = None, seed: int = 0,
            model_overrides: Mapping[str, Any] | None = None) -> RunSpec:
  """Builds a :class:`RunSpec` writing ``out`` and starting from ``init`` (every recipe but pretraining
  starts from a checkpoint; :func:`mergejax.world.run_spec` fills both from the world layout).

  ``kind`` is the base kind an expert / multitask model starts from (and is filed under).
  """
  kind = run_kind(recipe, kind)
  mixture = mixture or mixture_name(recipe, category, mixture_prefix)
  if recipe != "pretrain" and init is None:
    raise ValueError(f"recipe {recipe!r} starts from a checkpoint: give its init path")
  cfg = models.get_config(size) if isinstance(size, str) else size
  vocab = data_lib.padded_vocab_size(data_lib.vocab_size(mixture))
  lengths = dict(feature_lengths or FEATURE_LENGTHS)
  cfg = cfg.replace(vocab_size=vocab, max_len=max(cfg.max_len, sum(lengths.values())),
                    **dict(model_overrides or {}))
  d = defaults(recipe, size)
  n_steps = int(steps if steps is not None else d.pop("steps"))
  d.pop("steps", None)
  d.update({k: v for k, v in dict(opt_overrides or {}).items() if v is not None})
  init_p = pathlib.Path(init).absolute() if init is not None else None
  return RunSpec(recipe=recipe, model=cfg, out=pathlib.Path(out).absolute(), init=init_p, mixture=mixture,
                 steps=n_steps, opt=trainer_lib.OptimConfig(**d), batch_size=batch_size,
                 feature_lengths=tuple(lengths.items()), seed=seed, category=category, kind=kind)


def run(spec: RunSpec, *, batches: Sequence[Mapping[str, np.ndarray]] | None = None,
        checkpoint_every: int = 0, progress: bool = True, log_every: int = 10,
        mesh=None, on_step=None, position: int | None = None) -> trainer_lib.TrainResult:
  """Executes a run (skipped when its output is already complete)."""
  if models.is_complete(spec.out):
    return trainer_lib.TrainResult(spec.out, skipped=True)
  init_params = None
  if spec.init is not None:
    if not models.is_complete(spec.init):
      raise FileNotFoundError(f"{spec.init}: the {spec.recipe} run needs this base checkpoint; "
                              "train it first (or run mergejax-build-world)")
    init_cfg, init_params = models.load_checkpoint(spec.init)
    if init_cfg.replace(name="") != spec.model.replace(name=""):
      raise ValueError(f"{spec.init}: its model config differs from the run's ({init_cfg} vs {spec.model})")
  info = {"recipe": spec.recipe, "category": spec.category, "kind": spec.kind,
          "init": str(spec.init) if spec.init else None, "data_seed": spec.data_seed}
  return trainer_lib.train(
      spec.model, spec.out, steps=spec.steps, opt=spec.opt, batch_size=spec.batch_size,
      feature_lengths=dict(spec.feature_lengths), mixture=None if batches is not None else spec.mixture,
      batches=batches, seed=spec.data_seed, init_params=init_params,
      checkpoint_every=checkpoint_every, log_every=log_every, progress=progress, desc=spec.label,
      info=info, on_step=on_step, mesh=mesh, position=position)
