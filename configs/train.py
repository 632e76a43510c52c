r"""Configuration of ``mergejax-train``: the package's default (:mod:`mergejax.configs.train`).

  mergejax-train --config=configs/train.py --workdir=runs/world --config.size=xs \
      --config.recipe=expert --config.category=sentiment --config.kind=instruction_tuned

Copy this file to start a config of your own: change the returned values (plain Python values).
"""

from mergejax.configs.train import get_config

__all__ = ["get_config"]
