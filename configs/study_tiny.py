"""The embedded default study: both base kinds, sizes xs and s, N in {2, 4, 6, 8}, 3 expert-subset seeds,
Averaging / Task Arithmetic / TIES / DARE-TIES, on the miniature world mergejax builds itself.

  mergejax-study --config=configs/study_tiny.py --workdir=runs/tiny
  mergejax-study --config=configs/study_tiny.py --workdir=runs/tiny \
      --config.methods='("ties", "task_arithmetic")' --config.grids.ties.lam='(1.0, 1.5)'

Every field, its default and its meaning: mergejax/configs/study.py.
"""

from ml_collections import config_dict

from mergejax.configs import study as study_config


def get_config() -> config_dict.ConfigDict:
  return study_config.get_config()
