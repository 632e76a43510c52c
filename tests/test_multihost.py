"""The same merge in 2 processes (jax.distributed.initialize on localhost, 4 CPU devices each, leaves
sharded across both processes, each reading and writing only its own blocks) is bit for bit the
1-process result."""

import os
import pathlib
import socket
import subprocess
import sys

import pytest

from test_checkpoints_fixtures import bits, write_world

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "merge.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _merge_cmd(base, experts, out, *extra):
  return [sys.executable, "-m", "mergejax.cli.merge", f"--base={base}", f"--experts={','.join(map(str, experts))}",
          f"--output={out}", f"--config={CONFIG}", "--config.method.name=ties",
          "--config.method.density=0.3", "--config.method.scope=global", "--config.progress=False",
          "--config.memory_budget_gb=0.00003", *extra]


def _run_two_processes(cmd):
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(cmd + [f"--coordinator_address=localhost:{port}", "--num_processes=2",
                                   f"--process_id={i}"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=240)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-3000:]


def _files(d):
  return {p.name: p.read_bytes() for p in sorted(pathlib.Path(d).rglob("*")) if p.is_file()
          and p.name not in ("mergejax_manifest.json", "README.md")}  # both record the command that ran


@pytest.mark.parametrize("fmt", ["safetensors", "orbax"])
def test_two_process_merge_is_bit_identical(tmp_path, fmt):
  base, experts, _ = write_world(tmp_path / "w", n_experts=2, shards=2)
  single = tmp_path / "single"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  r = subprocess.run(_merge_cmd(base, experts, single, f"--output_format={fmt}"), env=env, cwd=REPO,
                     capture_output=True, text=True, timeout=240)
  assert r.returncode == 0, r.stderr[-3000:]
  multi = tmp_path / "multi"
  _run_two_processes(_merge_cmd(base, experts, multi, f"--output_format={fmt}"))
  if fmt == "safetensors":
    a, b = _files(single), _files(multi)
    assert sorted(a) == sorted(b) and any(n.endswith(".safetensors") for n in a)
    for name in a:
      assert a[name] == b[name], f"{name} differs between 1 and 2 processes"
  else:  # orbax files hold timestamps: compare the restored leaves
    from mergejax.checkpoints import OrbaxSource  # pylint: disable=g-import-not-at-top
    sa, sb = OrbaxSource(single), OrbaxSource(multi)
    assert sa.specs() == sb.specs()
    paths = [s.path for s in sa.specs()]
    va, vb = sa.read(paths), sb.read(paths)
    for k in paths:
      assert bits(va[k]).tobytes() == bits(vb[k]).tobytes(), f"{k} differs between 1 and 2 processes"
    assert (multi / "config.json").exists() and (multi / "mergejax_manifest.json").exists()
  assert not list(tmp_path.glob(".*mergejax-partial"))
