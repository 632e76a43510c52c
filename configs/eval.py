r"""Configuration of ``mergejax-eval``.

Example::

    mergejax-eval --checkpoint=runs/world/xs/instruction_tuned/base --config=configs/eval.py \
      --config.mixtures=heldin,heldout --config.split=test

``mixtures`` is a comma list of suites (``heldin``, ``heldout``, ``heldin_<category>``,
``heldout_<category>``, ``t0``) or seqio mixture/task names (see mergejax/evaluation/suites.py).
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.mixtures = "heldin,heldout"
  c.split = "validation"  # "validation" for model selection, "test" for the reported numbers
  c.batch_size = 32  # global rows per step; a multiple of the device count
  c.length_bucket = 32  # sequence lengths round up to a multiple of this (fewer compiles)
  c.inputs_length = config_dict.placeholder(int)  # caps; default: the longest example
  c.targets_length = config_dict.placeholder(int)
  c.output = config_dict.placeholder(str)  # JSON path; default: <checkpoint>.eval_<split>.json
  c.tfds_data_dir = config_dict.placeholder(str)  # for the t0 suite; default: $TFDS_DATA_DIR
  c.seed = 42
  return c
