r"""Configuration of ``mergejax-merge``.

Example::

    mergejax-merge --base=/ckpt/base --experts=/ckpt/a,/ckpt/b --output=/ckpt/merged \
      --config=configs/merge.py --config.method.name=ties --config.method.density=0.2

Method hyperparameters left unset keep the method's defaults (see ``mergejax.methods``); setting one
the method does not take is an error.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.method = config_dict.ConfigDict()
  config.method.name = "ties"
  config.method.density = config_dict.placeholder(float)
  config.method.lam = config_dict.placeholder(float)
  config.method.drop_rate = config_dict.placeholder(float)
  config.method.scope = config_dict.placeholder(str)  # ties: "global" (paper) or "tensor" (mergekit)
  config.method.sign = config_dict.placeholder(str)  # "sum" or "count"
  config.method.aggregate = config_dict.placeholder(str)  # "mean" or "sum"
  config.method.weights = config_dict.placeholder(str)  # comma list, one per expert, e.g. "1,0.5"
  config.seed = 0
  config.dtype = config_dict.placeholder(str)  # output dtype of float leaves (default: the base's)
  config.memory_budget_gb = 4.0  # bounds the leaf groups in flight (host memory ~ this + a constant)
  config.shard_size_mb = 4096  # safetensors output shard size
  config.partition_rules = ""  # "regex=axis,None;regex=" ; unmatched leaves: largest divisible axis
  config.allow_nonfinite = False  # merge inputs holding NaN/Inf instead of refusing them
  config.progress = True
  config.prefetch = True  # read the next leaf group while merging the current one
  # Persistent XLA compilation cache: later merges reuse compiled kernels (saves ~0.1-0.5 s per
  # kernel). Default: $XDG_CACHE_HOME/mergejax/jax (~/.cache/mergejax/jax); "none" turns it off.
  config.compilation_cache_dir = config_dict.placeholder(str)
  return config
