"""The dry run's time model (mergejax.study.plan): cell_seconds, flops_per_token, merge_bytes, chip_of and the
tokens a suite scores, on hand-computed cases and scaling laws."""

import seqio
import tensorflow as tf

from mergejax.models import llamalike
from mergejax.study import plan
from mergejax.tasks import preprocessors

CHIP = plan.Chip("test chip", flops=1e12, hbm_bytes_per_s=1e9)
TINY = llamalike.DecoderConfig(family="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                               head_dim=8, d_ff=64)


def seconds(candidates, chips=2, **over):
  kw = dict(merge_bytes_per_chip=2e9, validation_tokens=1e6, test_tokens=2e6, flops_per_token=1e6, chips=chips,
            chip=CHIP, utilization=0.5)
  return plan.cell_seconds(candidates, **{**kw, **over})


def test_a_cell_by_hand():
  # merge 2e9 B / 1e9 B/s = 2 s; validation 1e6 x 1e6 FLOPs / (2 chips x 1e12 x 0.5) = 1 s; test 2 s.
  # One candidate: merged, never validated, scored on test: 2 + 2. Three: 3 x (2 + 1), the chosen merged
  # again (2) and scored on test (2).
  t = seconds([1, 3])
  assert (t["merge"], t["validation"], t["test"]) == (2.0, 1.0, 2.0)
  assert t["total"] == (2 + 2) + (3 * 3 + 2 + 2)


def test_time_scales_with_chips_candidates_and_utilization():
  one, two = seconds([4], chips=1, merge_bytes_per_chip=0.0), seconds([4], chips=2, merge_bytes_per_chip=0.0)
  assert one["validation"] == 2 * two["validation"] and one["total"] == 2 * two["total"]
  assert seconds([5])["total"] > seconds([4])["total"] > seconds([2])["total"]
  assert seconds([4, 1])["total"] > seconds([4])["total"]  # another method
  assert seconds([4], utilization=0.25)["validation"] == 2 * seconds([4])["validation"]


def test_flops_per_token_and_merge_bytes():
  assert plan.flops_per_token(10, None, 4) == 20
  arch = plan.arch_of(TINY)
  assert plan.flops_per_token(1000, arch, 16) == 2000 + 4 * 2 * 16 * 32
  one = plan.config_bytes(TINY, {"data": 1}, n_models=4, param_dtype="float32")
  two = plan.config_bytes(TINY, {"data": 2}, n_models=4, param_dtype="float32")
  b1, b2 = (plan.merge_bytes(m, n_merged=3, task_vector_itemsize=4) for m in (one, two))
  # Read 3 task vectors and the base, write and read g, write the candidate: 7 float32 copies on one device.
  assert b1 == 7 * 4 * one.params
  assert b1 / 2 <= b2 < 0.55 * b1  # split over 2 devices (1-D norm scales stay whole)
  assert plan.merge_bytes(one, n_merged=4, task_vector_itemsize=2) - plan.merge_bytes(
      one, n_merged=3, task_vector_itemsize=2) == 2 * one.params


def test_chips_are_named_from_jax_device_kinds():
  kinds = {"TPU v4": "tpu_v4", "TPU v5 lite": "tpu_v5e", "TPU v5": "tpu_v5p", "TPU v5p": "tpu_v5p",
           "TPU v6 lite": "tpu_v6e", "NVIDIA H100 80GB HBM3": "h100_sxm", "cpu": None, "NVIDIA H100 PCIe": None}
  assert {k: plan.chip_of(k) for k in kinds} == kinds
  assert all(c.flops > 1e14 and c.hbm_bytes_per_s > 5e11 for c in plan.CHIPS.values())


def test_tokens_per_example_scores_a_prompt_once_and_every_choice():
  name = "mj_test_plan_rank"
  if name not in seqio.TaskRegistry.names():
    source = seqio.FunctionDataSource(
        lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices(
            {"inputs": ["abcd", "ab"], "choices": [["x", "yz"], ["q", "r"]], "label": [0, 1]}),
        splits=("validation",))
    vocab = seqio.ByteVocabulary()
    seqio.TaskRegistry.add(name, source=source, preprocessors=[preprocessors.rank_classification,
                                                                 seqio.preprocessors.tokenize],
                           output_features={"inputs": seqio.Feature(vocab, add_eos=False),
                                            "targets": seqio.Feature(vocab, add_eos=False)})
  # (4 + 1 + 2) and (2 + 1 + 1) tokens; the first example only: 7.
  assert plan.tokens_per_example(name, "validation") == 5.5
  assert plan.tokens_per_example(name, "validation", sample=1) == 7.0
  examples, tokens = plan.suite_counts(["s"], "validation", lambda s: [name])
  assert examples == {"s": 2} and tokens == {"s": 11.0}
