r"""The default configuration of ``mergejax-eval`` (plain values; every field overridable as ``--config.x=y``).

    mergejax-eval --checkpoint=runs/world/xs/instruction_tuned/base --config=configs/eval.py \
      --config.mixtures='("heldin", "heldout")' --config.split=test

``mixtures`` names suites (``heldin``, ``heldout``, ``heldin_<category>``, ``heldout_<category>``, ``t0``)
or seqio mixture/task names (see mergejax/evaluation/suites.py).
"""

from ml_collections import config_dict

from mergejax.evaluation import evaluator


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.mixtures = ("heldin", "heldout")
  c.split = "validation"  # "validation" for model selection, "test" for the reported numbers
  c.batch_size = evaluator.BATCH_SIZE  # global rows per step (decoding, unpacked scoring); a multiple of the devices
  c.length_bucket = evaluator.LENGTH_BUCKET  # unpacked sequence lengths round up to a multiple of this
  c.inputs_length = config_dict.placeholder(int)  # caps; default: the longest example
  c.targets_length = config_dict.placeholder(int)
  c.output = config_dict.placeholder(str)  # JSON path; default: <checkpoint>.eval_<split>.json
  c.tfds_data_dir = config_dict.placeholder(str)  # for the t0 suite; default: $TFDS_DATA_DIR
  c.seed = evaluator.SEED
  return c
