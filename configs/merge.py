r"""Configuration of ``mergejax-merge``: the package's default (:mod:`mergejax.configs.merge`).

    mergejax-merge --base=/ckpt/base --experts=/ckpt/a,/ckpt/b --output=/ckpt/merged \
      --config=configs/merge.py --config.method.name=ties --config.method.density=0.2

Copy this file to start a config of your own: change the returned values (plain Python values).
"""

from mergejax.configs.merge import get_config

__all__ = ["get_config"]
