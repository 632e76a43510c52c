"""Test setup: 8 simulated CPU devices (must precede any jax import), quiet TensorFlow, and the tiny
world the study tests share."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# The longest test files, longest first (about 110-230 s each on 2 cores, then 60-80 s). `--dist loadfile
# --no-loadscope-reorder` hands whole files to the workers in collection order, so starting with these keeps
# both workers busy until the end instead of leaving one to finish a long file alone.
LONGEST_FILES = ("test_study.py", "test_study_hf.py", "test_study_manifest.py", "test_methods_weight_space.py",
                 "test_t0.py", "test_world.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))  # stable: the rest keep their order


STUDY_CATEGORIES = ("sentiment", "topic")
TINY_MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64}


@pytest.fixture(scope="session")
def study_world(tmp_path_factory):
  """A tiny world of the synthetic suite (xs, both kinds, two categories, 2 training steps per model),
  built once per test process for the study tests. Tests must not change it."""
  from mergejax import world  # pylint: disable=g-import-not-at-top  (after the XLA flags above)
  root = tmp_path_factory.mktemp("world")
  world.build_world(root, ("xs",), kinds=("pretrained", "instruction_tuned"), categories=STUDY_CATEGORIES,
                    recipe_overrides={r: {"steps": 2} for r in ("pretrain", "instruction_tune", "expert", "multitask")},
                    batch_size=8, feature_lengths={"inputs": 96, "targets": 32}, progress=False,
                    model_overrides=TINY_MODEL)
  return root
