"""The paper's grid at larger sizes, for accelerators (TPU pods, GPUs).

Same grid as the paper (2 base kinds x 4 sizes x N in {2,4,6,8} x 3 seeds x 4 methods = 384 merges,
plus reference rows), with wider hyperparameter sweeps. With real checkpoints, point world_dir at a
directory in the mergejax world layout (see docs/STUDY.md) and set build_world=False.

  mergejax-study --config=configs/study_paper.py --workdir=gs://bucket/study
"""

from ml_collections import config_dict

from mergejax.configs import study as study_config


def get_config() -> config_dict.ConfigDict:
  c = study_config.get_config()
  c.sizes = ("s", "m", "l", "xl")
  c.grids.task_arithmetic = dict(lam=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
  c.grids.ties = dict(density=(0.1, 0.2, 0.3), lam=(0.8, 1.0, 1.2, 1.5, 2.0))
  c.grids.dare_ties = dict(drop_rate=(0.5, 0.7, 0.9), density=(0.2, 1.0), lam=(0.5, 1.0, 1.5))
  c.eval_batch_size = 256
  return c
