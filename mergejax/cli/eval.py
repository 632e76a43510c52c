r"""``mergejax-eval``: evaluate a checkpoint on seqio mixtures; write JSON and print a table.

    mergejax-eval --checkpoint=PATH --config=configs/eval.py --config.mixtures='("heldin", "heldout")' \
      [--config.split=test] [--config.output=results.json]

The checkpoint is anything ``mergejax.models.from_pretrained`` reads: a Hugging Face directory (Llama,
Mistral, Qwen2/3, Gemma 2/3 text), a ``mergejax-merge`` output (safetensors or orbax) or a built-in decoder
checkpoint of the embedded world. The suites are tokenized with the checkpoint's own tokenizer
(``mergejax.tasks.per_vocabulary``), its BOS in seqio's BOS slot. The JSON holds,
per mixture, every task's metrics, its primary score, per-category means and the mixture mean
(:class:`mergejax.evaluation.EvalResults`). It is written atomically by process 0. Any bad input
gives one line naming the file or mixture, exit status 1, and no output.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any, Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from mergejax import cli
from mergejax import configs
from mergejax import files
from mergejax.cli import common

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Model checkpoint directory: Hugging Face (config.json + safetensors), a mergejax-merge "
    "output, or a built-in decoder checkpoint (orbax + model_config.json).")
_CONFIG = common.define(config_flags.DEFINE_config_file, "config",
                        str(pathlib.Path(configs.__file__).with_name("eval.py")),
                        "Eval config (default: the package's, mergejax/configs/eval.py).")


def evaluate_checkpoint(checkpoint: str, cfg: config_dict.ConfigDict) -> tuple[dict[str, Any], str]:
  """Evaluates ``checkpoint`` on every mixture of ``cfg``; returns (JSON-able results, table text)."""
  # TensorFlow and seqio load only once the command runs (a fast --help, quick flag errors).
  import dataclasses  # pylint: disable=g-import-not-at-top
  from mergejax import evaluation, models  # pylint: disable=g-import-not-at-top
  from mergejax.evaluation import suites  # pylint: disable=g-import-not-at-top
  from mergejax.tasks import per_vocabulary, vocab as suite_vocab  # pylint: disable=g-import-not-at-top

  mixtures = [cfg.mixtures] if isinstance(cfg.mixtures, str) else list(cfg.mixtures)
  if not mixtures or not all(isinstance(m, str) and m for m in mixtures):
    raise ValueError(f"config.mixtures={cfg.mixtures!r}: expected a tuple of suite or mixture names")
  seq_len = None
  if cfg.inputs_length is not None or cfg.targets_length is not None:
    if cfg.inputs_length is None or cfg.targets_length is None:
      raise ValueError("set both config.inputs_length and config.targets_length, or neither")
    seq_len = {"inputs": int(cfg.inputs_length), "targets": int(cfg.targets_length)}
  mesh = evaluation.default_mesh()
  # A built-in decoder checkpoint without its own tokenizer.model is taken to use the synthetic suite's.
  lm = models.from_pretrained(checkpoint, mesh=mesh, vocabulary=suite_vocab.get_vocabulary())
  if lm.vocabulary is None:
    raise ValueError(f"{checkpoint}: no tokenizer (tokenizer.json or tokenizer.model) to tokenize the suites with")
  resolved = [per_vocabulary.with_vocabulary(suites.resolve(m, tfds_data_dir=cfg.tfds_data_dir), lm.vocabulary)
              for m in mixtures]
  adapter = lm.adapter
  model_cfg = models.load_config(checkpoint).to_dict() if lm.family == "builtin" else dataclasses.asdict(lm.config)
  out = {"checkpoint": str(pathlib.Path(checkpoint).absolute()), "split": cfg.split, "family": lm.family,
         "model_config": model_cfg, "mixtures": {}}
  tables = []
  for name, mixture in zip(mixtures, resolved):
    logging.info("evaluating %s (%s) on %s", name, mixture, cfg.split)
    ev = evaluation.Evaluator(adapter, mixture, cfg.split, batch_size=cfg.batch_size, mesh=mesh,
                              sequence_length=seq_len, length_bucket=cfg.length_bucket, seed=cfg.seed)
    res = ev.evaluate(lm.params)
    out["mixtures"][name] = res.to_dict()
    tables.append(evaluation.format_table(res))
  return out, "\n\n".join(tables)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    cfg = _CONFIG.value
    if cfg is None:
      raise ValueError("no config: pass --config=configs/eval.py")
    if not _CHECKPOINT.value:
      raise ValueError("--checkpoint is required")
    common.maybe_initialize_distributed()
    ckpt = pathlib.Path(_CHECKPOINT.value)
    if not ckpt.is_dir():
      raise FileNotFoundError(f"{ckpt}: checkpoint directory not found")
    output = cfg.output or f"{str(ckpt.absolute()).rstrip('/')}.eval_{cfg.split}.json"
    results, table = evaluate_checkpoint(str(ckpt), cfg)
    if jax.process_index() == 0:
      path = files.atomic_write_json(pathlib.Path(output).absolute(), results)
      print(table)
      print(f"mergejax-eval: wrote {path}")
  except KeyboardInterrupt:
    print("mergejax-eval: interrupted; no output written", file=sys.stderr)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    print(f"mergejax-eval: error: {type(e).__name__}: {cli.message(e)}", file=sys.stderr)
    sys.exit(1)


def run() -> None:
  cli.run_main(main)


if __name__ == "__main__":
  run()
