r"""Configuration of ``mergejax-build-world``: the package's default (:mod:`mergejax.configs.world`).

  mergejax-build-world --config=configs/world.py --workdir=runs/world
  mergejax-build-world --config=configs/world.py --workdir=runs/world --config.sizes='("xs", "s", "m")' \
      --config.recipes.expert.steps=100

Copy this file to start a config of your own: change the returned values (plain Python values).
"""

from mergejax.configs.world import get_config

__all__ = ["get_config"]
