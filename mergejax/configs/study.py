"""The default configuration of ``mergejax-study``, the embedded default study: every field, with its
one default (plain values; every field overridable as ``--config.x=y``).

``configs/study_tiny.py`` runs it as is; ``configs/study_paper.py`` changes the sizes and the grids.
Values are plain Python: tuples for lists, dicts for grids (every combination of a method's
hyperparameter values is a candidate, chosen on the validation split of the merged experts'
held-in tasks). From the command line::

    --config.methods='("ties", "task_arithmetic")'   --config.sizes=xs   --config.grids.ties.lam='(0.7, 1.0)'
"""

from __future__ import annotations

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  # The checkpoints: a manifest (docs/STUDY.md, "The manifest"): per base kind and size label the base, the
  # experts by category and the multitask model, each a directory mergejax.models.from_pretrained reads.
  # None: the embedded world in world_dir, which its builder describes in <world_dir>/models.yaml.
  c.models = config_dict.placeholder(str)
  c.kinds = ("pretrained", "instruction_tuned")  # base kinds
  c.sizes = ()  # size labels (empty: the manifest's, or the world's xs and s); ordered by parameter count
  c.categories = ()  # held-in categories whose experts are merged; empty: all of the manifest's (world: 8)
  c.num_experts = (2, 4, 6, 8)  # N: experts merged per cell
  c.subset_seeds = 3  # expert subsets per N (balanced design: rounded up to a balanced count, docs/STUDY.md)
  c.design = "balanced"  # "balanced": every category equally often per N; "random": the paper's random draws
  c.methods = ("average", "task_arithmetic", "ties", "dare_ties")
  # Hyperparameter candidates per method (a method without a grid runs with its defaults). Chosen so the
  # validation optimum lies inside on the embedded world, per size (docs/STUDY.md, "Grids"): Task
  # Arithmetic reaches 1/N at N = 8 and twice the sum at N = 2; TIES' lam spans 0.25 to 6 (s mostly picks
  # 2; xs's optimum is flat and its picks spread over the grid); DARE-TIES' drop rates reach down to 0,
  # dropping nothing (0.05, the lowest of an earlier grid, was picked in 27 of 60 merges), its lam fixed
  # at its most frequent pick (flat in lam).
  c.grids = dict(
      average=dict(),
      task_arithmetic=dict(lam=(0.125, 0.25, 0.5, 1.0, 2.0)),
      ties=dict(density=(0.2,), lam=(0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)),
      dare_ties=dict(drop_rate=(0.0, 0.1, 0.3, 0.6), lam=(1.5,)),
      dare_linear=dict(drop_rate=(0.0, 0.1, 0.3, 0.6), lam=(0.25, 0.5, 1.0)),
      # Data-aware methods (each learns from the merged experts' own examples: merge_data below).
      regmean=dict(alpha=(0.95,)),
      fisher=dict(min_fisher=(1e-6,)),
      adamerging=dict(granularity=("layer",), lr=(1e-3,), steps=(100,)),
  )
  c.world_dir = config_dict.placeholder(str)  # default: <workdir>/world
  # Training seeds of the embedded world, the first 0: one world per seed (seed 0 in world_dir, seed k in
  # <world_dir>_seed<k>), the same study on each; several add training-seed variance as the verdicts' top
  # bootstrap level.
  c.world_seeds = (0,)
  c.build_world = True  # train missing world models; False: fail at start-up if any is missing
  c.multitask = True  # train and evaluate the multitask baselines
  # Training steps per world recipe (None: the recipe's default; small values for quick looks and tests).
  c.world_steps = dict(pretrain=config_dict.placeholder(int), instruction_tune=config_dict.placeholder(int),
                       expert=config_dict.placeholder(int), multitask=config_dict.placeholder(int))
  # The suites: a category's held-in suite ("{category}" replaced), the held-out suite (names of
  # mergejax.evaluation.suites, or seqio mixtures / tasks), tokenized with the checkpoints' own vocabulary.
  # The synthetic suite: "heldin_{category}", "heldout"; the real T0 tasks over TFDS:
  # heldin_suite="t0_heldin_{category}", heldout_suite="t0".
  c.heldin_suite = "heldin_{category}"
  c.heldout_suite = "heldout"
  c.validation_split = "validation"  # hyperparameters are selected here
  c.test_split = "test"  # the chosen merges are scored here, once
  c.dry_run = False  # print the plan (cells, candidates, examples, bytes per device, time) and stop
  # The chip the dry run's time estimate assumes for the mesh's devices (mergejax.study.plan.CHIPS: "tpu_v4",
  # "tpu_v5e", "tpu_v5p", "tpu_v6e", "h100_sxm"); "" guesses it from the devices (a CPU: no estimate).
  c.dry_run_chip = ""
  c.eval_batch_size = 64  # rows per step for decoding and for adapters without packed scoring
  c.cpu_devices = 0  # CPU only: evaluation split over this many host devices (0: one per core, at most 8)
  # The devices every model is loaded onto, merged and evaluated on: axis name -> size, one size -1 (the
  # devices left over). Parameters are split FSDP over "data" and tensor parallel over "model" (a dimension
  # an axis does not divide stays whole); evaluation batches split over "data". docs/STUDY.md, "Memory per cell".
  c.mesh = dict(data=-1, model=1)
  # Task vectors theta_t - theta_0, kept on the mesh: "float32" (exact: candidates equal direct merges) or
  # "bfloat16" (half the memory; each task vector rounded once before merging).
  c.task_vector_dtype = "float32"
  # Each expert's examples for data-aware methods (regmean, fisher, adamerging), docs/STUDY.md: batches x
  # batch_size examples of its category's held-in tasks in their training form, on split (never the test
  # split), one per row of inputs_length + targets_length tokens, shuffled with seed.
  c.merge_data = dict(split="train", batches=2, batch_size=16, inputs_length=96, targets_length=32, seed=0)
  c.progress = True
  # The report's verdicts (mergejax.study.verdicts, docs/STUDY.md): a SUPPORTED / CONTRADICTED verdict needs
  # an interval that excludes 0 and an effect of at least min_effect; EQUIVALENT an interval inside +-margin.
  c.verdicts = dict(min_effect=0.02, margin=0.03, confidence=0.95, n_boot=2000, seed=0, z_expert=3.0)
  return c
