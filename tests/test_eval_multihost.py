"""mergejax-eval in 2 processes (jax.distributed.initialize on localhost, 4 CPU devices each, batches
split across both, metrics on process 0 and broadcast) gives the 1-process results."""

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mergejax import models, tasks
from mergejax.cli import eval as eval_cli

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("eval_config", REPO / "configs" / "eval.py")
eval_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_config)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  cfg = models.ModelConfig(vocab_size=tasks.get_vocabulary().vocab_size, d_model=16, n_layers=1, n_heads=2,
                           d_ff=32, max_len=128)
  params = nn.meta.unbox(jax.jit(models.Decoder(cfg).init)(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"])
  ckpt = str(models.save_checkpoint(tmp_path / "model", cfg, params))
  mixtures = "heldout_nli"
  out = tmp_path / "two.json"
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "mergejax.cli.eval", f"--checkpoint={ckpt}", f"--config={REPO / 'configs' / 'eval.py'}",
         f"--config.mixtures={mixtures}", "--config.batch_size=8", f"--config.output={out}",
         f"--coordinator_address=localhost:{port}", "--num_processes=2"]
  procs = [subprocess.Popen(cmd + [f"--process_id={i}"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  assert "mergejax-eval: wrote" in logs[0] and "mergejax-eval: wrote" not in logs[1]
  two = json.loads(out.read_text())

  c = eval_config.get_config()
  c.mixtures, c.batch_size = (mixtures,), 8
  one, _ = eval_cli.evaluate_checkpoint(ckpt, c)
  assert jax.device_count() == 8
  m = "heldout_nli"
  assert two["mixtures"][m]["tasks"].keys() == one["mixtures"][m]["tasks"].keys()
  assert two["mixtures"][m]["task_scores"] == pytest.approx(one["mixtures"][m]["task_scores"])
  assert two["mixtures"][m]["categories"] == pytest.approx(one["mixtures"][m]["categories"])
