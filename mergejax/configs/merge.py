r"""The default configuration of ``mergejax-merge`` (plain values; every field overridable as ``--config.x=y``).

    mergejax-merge --base=/ckpt/base --experts=/ckpt/a,/ckpt/b --output=/ckpt/merged \
      --config.method.name=ties --config.method.density=0.2 --config.method.scope=tensor

``method`` is the method's name plus any of its hyperparameters (``mergejax-merge --help`` lists
them with ranges and defaults); hyperparameters left out keep the method's defaults, and one the method
does not take is an error. ``modules`` names Python modules to import first, e.g. one that registers
a method of your own with ``mergejax.methods.register``; its hyperparameters are then flags too.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.method = dict(name="ties")  # + hyperparameters, e.g. dict(name="ties", density=0.2, weights=(1.0, 0.5))
  config.modules = ()  # modules imported before the method is built (user-registered methods)
  config.seed = 0  # DARE's masks; the result is a pure function of (inputs, method, seed)
  config.dtype = config_dict.placeholder(str)  # output dtype of float leaves, e.g. "bfloat16" (default: the input's)
  config.memory_budget_gb = 1.0  # bounds the leaf groups in flight (host memory ~ this + a constant)
  config.shard_size_mb = 4096  # safetensors output shard size
  # ((regex, (mesh axis or None per dimension)), ...): the first match wins, e.g. (("embed", (None, "shard")),);
  # unmatched leaves shard their largest axis divisible by the device count.
  config.partition_rules = ()
  config.allow_nonfinite = False  # merge inputs holding NaN/Inf instead of refusing them
  config.progress = True
  config.prefetch = True  # read the next leaf group while merging the current one
  # Persistent XLA compilation cache: later merges reuse compiled kernels. Default (unset):
  # $XDG_CACHE_HOME/mergejax/jax (~/.cache/mergejax/jax); "none" turns it off.
  config.compilation_cache_dir = config_dict.placeholder(str)
  # Each expert's examples, for a data-aware method (regmean, fisher, adamerging): ``sources`` names one
  # seqio suite, mixture or task per expert, e.g. ("heldin_sentiment", "heldin_topic"); the first
  # ``batches x batch_size`` examples of its training form on ``split``, one per row of inputs_length +
  # targets_length tokens, shuffled with ``seed``, tokenized with the checkpoints' tokenizer. The models are
  # loaded whole onto one device for the statistics (docs/MERGING.md, "Data-aware methods").
  config.merge_data = dict(sources=(), split="train", batches=2, batch_size=16, inputs_length=96,
                           targets_length=32, seed=0)
  return config
