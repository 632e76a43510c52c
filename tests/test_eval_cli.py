"""mergejax-eval: a checkpoint in, a JSON of per-task / per-category results and a table out."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mergejax import files, models, tasks
from mergejax.cli import eval as eval_cli

_spec = importlib.util.spec_from_file_location(
    "eval_config", pathlib.Path(__file__).resolve().parents[1] / "configs" / "eval.py")
eval_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_config)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  cfg = models.ModelConfig(vocab_size=tasks.get_vocabulary().vocab_size, d_model=16, n_layers=1, n_heads=2,
                           d_ff=32, max_len=128)
  params = jax.jit(models.Decoder(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  params = nn.meta.unbox(params)
  return str(models.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", cfg, params))


def test_evaluate_checkpoint_writes_per_task_and_per_category_results(checkpoint, tmp_path):
  cfg = eval_config.get_config()
  cfg.mixtures = ("heldout_nli", "heldout_word_sense")
  cfg.batch_size = 8
  results, table = eval_cli.evaluate_checkpoint(checkpoint, cfg)
  path = files.atomic_write_json(tmp_path / "out.json", results)
  saved = json.loads(path.read_text())
  assert set(saved["mixtures"]) == {"heldout_nli", "heldout_word_sense"}
  nli = saved["mixtures"]["heldout_nli"]
  assert set(nli["tasks"]) == {t + "_rank" if tasks.is_choice_task(t) else t for t in tasks.heldout_tasks("nli")}
  assert set(nli["categories"]) == {"nli"}
  assert saved["mixtures"]["heldout_word_sense"]["categories"].keys() == {"word_sense"}
  assert "mj_heldout_nli_eval" in table and "word_sense" in table
  assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp files left


def test_bad_checkpoint_fails_with_one_line_and_no_output(tmp_path):
  out = tmp_path / "r.json"
  proc = subprocess.run(
      [sys.executable, "-m", "mergejax.cli.eval", f"--checkpoint={tmp_path / 'missing'}",
       f"--config.output={out}"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  err = [l for l in proc.stderr.splitlines() if l.startswith("mergejax-eval:")]
  assert len(err) == 1 and "missing" in err[0]
  assert not out.exists()
