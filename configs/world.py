"""mergejax-build-world: both bases, 8 experts per base and the multitask baselines per size.

  mergejax-build-world --config=configs/world.py --workdir=runs/world
  mergejax-build-world --config=configs/world.py --workdir=runs/world --config.sizes=xs,s,m \
      --config.expert.steps=50

Per-recipe fields left as placeholders take the defaults in mergejax/training/recipes.py.
"""

from ml_collections import config_dict


def _recipe() -> config_dict.ConfigDict:
  r = config_dict.ConfigDict()
  r.steps = config_dict.placeholder(int)
  r.lr = config_dict.placeholder(float)
  r.warmup_steps = config_dict.placeholder(int)
  r.min_lr_ratio = config_dict.placeholder(float)
  return r


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.sizes = "xs,s"  # comma-separated rows of mergejax.models.SIZES
  c.kinds = "pretrained,instruction_tuned"
  c.categories = config_dict.placeholder(str)  # comma-separated; default: all 8 held-in categories
  c.build_multitask = True  # also train the multitask baselines
  c.seed = 0
  c.batch_size = 16
  c.inputs_length = 96
  c.targets_length = 32
  c.mixture_prefix = "mj"
  c.task_module = config_dict.placeholder(str)  # a module to import that registers custom seqio tasks
  c.checkpoint_every = 0  # >0: resumable train-state checkpoints inside each run
  c.progress = True
  # CPU only: split the host into this many devices (0: one per core, at most 8); independent runs
  # then train side by side, one per device (mergejax.world.build_world).
  c.cpu_devices = 0
  for name in ("pretrain", "instruction_tune", "expert", "multitask"):
    c[name] = _recipe()
  return c
