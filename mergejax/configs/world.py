"""The default configuration of ``mergejax-build-world``: both bases, 8 experts per base and the
multitask baselines per size (plain values; every field overridable as ``--config.x=y``).

  mergejax-build-world --config=configs/world.py --workdir=runs/world
  mergejax-build-world --config=configs/world.py --workdir=runs/world --config.sizes='("xs", "s", "m")' \
      --config.recipes.expert.steps=100

Recipe fields left unset (None) take the defaults in mergejax/training/recipes.py.
"""

from ml_collections import config_dict

from mergejax.training import recipes


def _recipe() -> config_dict.ConfigDict:
  return config_dict.ConfigDict(dict(steps=config_dict.placeholder(int), lr=config_dict.placeholder(float),
                                     warmup_steps=config_dict.placeholder(int),
                                     min_lr_ratio=config_dict.placeholder(float)))


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.sizes = ("xs", "s")  # rows of mergejax.models.SIZES
  c.kinds = recipes.KINDS
  c.categories = ()  # held-in categories with an expert; empty: all 8
  c.multitask = True  # also train the multitask baselines
  c.seed = 0
  c.batch_size = recipes.BATCH_SIZE  # packed rows per step
  c.inputs_length = recipes.FEATURE_LENGTHS["inputs"]
  c.targets_length = recipes.FEATURE_LENGTHS["targets"]
  c.mixture_prefix = "mj"
  c.task_module = config_dict.placeholder(str)  # a module to import that registers custom seqio tasks
  c.checkpoint_every = 0  # >0: resumable train-state checkpoints inside each run
  c.progress = True
  # CPU only: split the host into this many devices (0: one per core, at most 8); independent runs
  # then train side by side, one per device (mergejax.world.build_world).
  c.cpu_devices = 0
  c.recipes = {name: _recipe() for name in recipes.RECIPES}  # per-recipe overrides
  return c
