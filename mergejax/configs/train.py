"""The default configuration of ``mergejax-train``: one training run of the embedded world (plain
values; every field overridable as ``--config.x=y``).

  mergejax-train --config=configs/train.py --workdir=runs/world --config.size=xs \
      --config.recipe=expert --config.category=sentiment --config.kind=instruction_tuned

Paths follow the world layout under --workdir unless --config.output / --config.init are given. An --config.init
that is a Hugging Face checkpoint (Llama, Mistral, Qwen, Gemma) is fine-tuned on the recipe's mixture tokenized
with its own tokenizer and written as a Hugging Face directory to --config.output (docs/STUDY.md).
Unset (None) hyperparameters take the recipe's defaults (mergejax/training/recipes.py) and the
optimizer's (mergejax.training.OptimConfig).
"""

from ml_collections import config_dict

from mergejax.training import recipes


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.recipe = "pretrain"  # one of mergejax.training.recipes.RECIPES
  c.size = "xs"  # a row of mergejax.models.SIZES
  c.category = config_dict.placeholder(str)  # held-in category (recipe=expert)
  c.kind = "pretrained"  # base kind an expert / multitask run starts from: pretrained | instruction_tuned
  c.output = config_dict.placeholder(str)  # default: the world layout under --workdir
  c.init = config_dict.placeholder(str)  # default: the base this recipe starts from
  c.mixture = config_dict.placeholder(str)  # default: the recipe's mj_* mixture
  c.mixture_prefix = "mj"
  c.task_module = config_dict.placeholder(str)  # a module to import that registers custom seqio tasks
  c.seed = 0
  c.batch_size = recipes.BATCH_SIZE  # packed rows per step (global)
  c.inputs_length = recipes.FEATURE_LENGTHS["inputs"]
  c.targets_length = recipes.FEATURE_LENGTHS["targets"]
  # Optimizer.
  c.steps = config_dict.placeholder(int)
  c.lr = config_dict.placeholder(float)
  c.warmup_steps = config_dict.placeholder(int)
  c.min_lr_ratio = config_dict.placeholder(float)
  c.weight_decay = config_dict.placeholder(float)
  c.b1 = config_dict.placeholder(float)
  c.b2 = config_dict.placeholder(float)
  c.clip_norm = config_dict.placeholder(float)
  # Model overrides.
  c.scan_layers = config_dict.placeholder(bool)
  c.remat = config_dict.placeholder(bool)
  c.dtype = config_dict.placeholder(str)
  # Loop.
  c.checkpoint_every = 50  # resumable train-state checkpoints (0: off)
  c.log_every = 10
  c.progress = True
  return c
