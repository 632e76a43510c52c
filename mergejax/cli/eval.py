r"""``mergejax-eval``: evaluate a checkpoint on seqio mixtures; write JSON and print a table.

    mergejax-eval --checkpoint=PATH --config=configs/eval.py --config.mixtures=heldin,heldout \
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

import json
import os
import pathlib
import sys
import tempfile
from typing import Any, Sequence

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from mergejax import cli
from mergejax.cli import common

_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "eval.py"

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Model checkpoint directory: Hugging Face (config.json + safetensors), a mergejax-merge "
    "output, or a built-in decoder checkpoint (orbax + model_config.json).")
_CONFIG = common.define(config_flags.DEFINE_config_file,
    "config", str(_DEFAULT_CONFIG) if _DEFAULT_CONFIG.exists() else None, "Eval config (configs/eval.py).")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> pathlib.Path:
  """Writes JSON under a temporary name in the destination's folder, then renames it into place."""
  path = pathlib.Path(path).absolute()
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def evaluate_checkpoint(checkpoint: str, cfg: config_dict.ConfigDict) -> tuple[dict[str, Any], str]:
  """Evaluates ``checkpoint`` on every mixture of ``cfg``; returns (JSON-able results, table text)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from mergejax import evaluation, models  # pylint: disable=g-import-not-at-top
  from mergejax.evaluation import suites  # pylint: disable=g-import-not-at-top
  from mergejax.tasks import per_vocabulary  # pylint: disable=g-import-not-at-top

  mixtures = [m for m in (x.strip() for x in str(cfg.mixtures).split(",")) if m]
  if not mixtures:
    raise ValueError("config.mixtures is empty")
  seq_len = None
  if cfg.inputs_length is not None or cfg.targets_length is not None:
    if cfg.inputs_length is None or cfg.targets_length is None:
      raise ValueError("set both config.inputs_length and config.targets_length, or neither")
    seq_len = {"inputs": int(cfg.inputs_length), "targets": int(cfg.targets_length)}
  mesh = evaluation.default_mesh()
  lm = models.from_pretrained(checkpoint, mesh=mesh)
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
                              sequence_length=seq_len,
                              length_bucket=cfg.length_bucket, seed=cfg.seed)
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
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      path = write_json_atomic(output, results)
      print(table)
      print(f"mergejax-eval: wrote {path}")
  except KeyboardInterrupt:
    print("mergejax-eval: interrupted; no output written", file=sys.stderr)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"mergejax-eval: error: {type(e).__name__}: {msg}", file=sys.stderr)
    sys.exit(1)


def run() -> None:
  cli.run_main(main)


if __name__ == "__main__":
  run()
