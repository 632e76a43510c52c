"""The paper's study on your own checkpoints and the real T0 tasks (TPU pods, GPUs, or one CPU).

The grid of Yadav et al. (2024): both base kinds x every size the manifest lists x N in {2, 4, 6, 8} x 3
expert subsets x Averaging, Task Arithmetic, TIES and DARE-TIES, hyperparameters chosen on the validation
split of the merged experts' held-in T0 tasks, the chosen merges scored once on test. The checkpoints are
described by a manifest (docs/STUDY.md, "The manifest"); nothing is trained. Look at the plan first:

  mergejax-study --config=configs/study_paper.py --config.models=models.yaml --workdir=runs/paper \
      --config.dry_run=True
  launch/tpu_pod.sh configs/study_paper.py --config.models=/mnt/bucket/models.yaml   # every worker

T0's datasets are read from TFDS: build them once into a bucket and set TFDS_DATA_DIR (docs/TASKS.md).
"""

from ml_collections import config_dict

from mergejax.configs import study as study_config


def get_config() -> config_dict.ConfigDict:
  c = study_config.get_config()
  c.build_world = False  # the manifest's checkpoints only: a missing one fails at start-up
  c.sizes = ()  # every size label in the manifest, ordered by parameter count
  c.heldin_suite = "t0_heldin_{category}"  # a category's two T0 training-mixture datasets (evaluation variant)
  c.heldout_suite = "t0"  # T0's held-out datasets (StoryCloze needs its manual download)
  # Wider sweeps than the embedded default: Task Arithmetic reaches 1/N for every N, TIES lam up to 3,
  # DARE's drop rate on both sides of its usual optimum.
  c.grids.task_arithmetic = dict(lam=(0.1, 0.125, 0.167, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0))
  c.grids.ties = dict(density=(0.1, 0.2, 0.3), lam=(0.8, 1.0, 1.5, 2.0, 3.0))
  c.grids.dare_ties = dict(drop_rate=(0.3, 0.5, 0.7, 0.9), density=(0.2, 1.0), lam=(0.5, 1.0, 1.5))
  c.eval_batch_size = 256
  return c
