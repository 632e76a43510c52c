"""The embedded default study: both base kinds, two sizes, N in {2, 4, 6, 8}, 3 expert-subset seeds,
Averaging / Task Arithmetic / TIES / DARE-TIES, on the miniature world mergejax builds itself.

  mergejax-study --config=configs/study_tiny.py --workdir=runs/tiny
  mergejax-study --config=configs/study_tiny.py --workdir=runs/tiny --config.methods=ties,task_arithmetic \
      --config.grids.ties='density=0.1|0.2;lam=1.0'

Lists are comma-separated strings; a method's grid is 'name=v1|v2;other=v3' (every combination is a
candidate, chosen on the validation split of the merged experts' held-in tasks).
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.kinds = "pretrained,instruction_tuned"
  c.sizes = "xs,s"
  c.categories = config_dict.placeholder(str)  # default: all 8 held-in categories
  c.num_experts = "2,4,6,8"
  c.subset_seeds = 3
  c.methods = "average,task_arithmetic,ties,dare_ties"
  c.grids = config_dict.ConfigDict()
  c.grids.average = ""
  c.grids.task_arithmetic = "lam=0.3|0.5|1.0"
  c.grids.ties = "density=0.2;lam=0.7|1.0|1.5"
  c.grids.dare_ties = "drop_rate=0.5|0.8;lam=0.7|1.0"
  c.grids.dare_linear = "drop_rate=0.5|0.8;lam=0.3|0.5"
  c.world_dir = config_dict.placeholder(str)  # default: <workdir>/world
  c.build_world = True  # train missing world models; False: fail at start-up if any is missing
  c.world_steps = ""  # optional step overrides, e.g. "pretrain=20;expert=5" (quick looks, tests)
  c.multitask = True
  c.eval_batch_size = 64
  c.cpu_devices = 0  # CPU only: evaluation split over this many host devices (0: one per core, at most 8)
  c.progress = True
  return c
