"""The default configuration of ``mergejax-study``, the embedded default study: every field, with its
one default (plain values; every field overridable as ``--config.x=y``).

``configs/study_tiny.py`` runs it as is; ``configs/study_paper.py`` changes the sizes and the grids.
Values are plain Python: tuples for lists, dicts for grids (every combination of a method's
hyperparameter values is a candidate, chosen on the validation split of the merged experts'
held-in tasks). From the command line::

    --config.methods='("ties", "task_arithmetic")'   --config.sizes=xs   --config.grids.ties.lam='(0.7, 1.0)'
"""

from __future__ import annotations

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.kinds = ("pretrained", "instruction_tuned")  # base kinds
  c.sizes = ("xs", "s")  # rows of mergejax.models.SIZES, smallest first
  c.categories = ()  # held-in categories whose experts are merged; empty: all 8
  c.num_experts = (2, 4, 6, 8)  # N: experts merged per cell
  c.subset_seeds = 3  # expert subsets per N (balanced design: rounded up to a balanced count, docs/STUDY.md)
  c.design = "balanced"  # "balanced": every category equally often per N; "random": the paper's random draws
  c.methods = ("average", "task_arithmetic", "ties", "dare_ties")
  # Hyperparameter candidates per method (a method without a grid runs with its defaults).
  c.grids = dict(
      average=dict(),
      task_arithmetic=dict(lam=(0.3, 0.5, 1.0)),
      ties=dict(density=(0.2,), lam=(0.7, 1.0, 1.5)),
      dare_ties=dict(drop_rate=(0.5, 0.8), lam=(0.7, 1.0)),
      dare_linear=dict(drop_rate=(0.5, 0.8), lam=(0.3, 0.5)),
  )
  c.world_dir = config_dict.placeholder(str)  # default: <workdir>/world
  c.build_world = True  # train missing world models; False: fail at start-up if any is missing
  c.multitask = True  # train and evaluate the multitask baselines
  # Training steps per world recipe (None: the recipe's default; small values for quick looks and tests).
  c.world_steps = dict(pretrain=config_dict.placeholder(int), instruction_tune=config_dict.placeholder(int),
                       expert=config_dict.placeholder(int), multitask=config_dict.placeholder(int))
  c.eval_batch_size = 64  # rows per step for decoding and for adapters without packed scoring
  c.cpu_devices = 0  # CPU only: evaluation split over this many host devices (0: one per core, at most 8)
  c.progress = True
  # The report's verdicts (mergejax.study.verdicts, docs/STUDY.md): a SUPPORTED / CONTRADICTED verdict needs
  # an interval that excludes 0 and an effect of at least min_effect; EQUIVALENT an interval inside +-margin.
  c.verdicts = dict(min_effect=0.02, margin=0.03, confidence=0.95, n_boot=2000, seed=0, z_expert=3.0)
  return c
