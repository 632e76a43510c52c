r"""Configuration of ``mergejax-eval``: the package's default (:mod:`mergejax.configs.eval`).

    mergejax-eval --checkpoint=runs/world/xs/instruction_tuned/base --config=configs/eval.py \
      --config.mixtures='("heldin", "heldout")' --config.split=test

Copy this file to start a config of your own: change the returned values (plain Python values).
"""

from mergejax.configs.eval import get_config

__all__ = ["get_config"]
