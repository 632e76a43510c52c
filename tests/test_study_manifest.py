"""The study over a manifest of checkpoints (--config.models=models.yaml): start-up validation (one line
each), sizes ordered by parameter counts, the same rows as the embedded world's own path, fingerprints
that follow the checkpoints, and the dry run's plan."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
import yaml

from mergejax import data_merge, expert_data, models, world
from mergejax.study import manifest as manifest_lib
from mergejax.study import plan as plan_lib
from mergejax.study import runner
from mergejax.tasks import vocab as suite_vocab

import test_study

REPO = pathlib.Path(__file__).resolve().parents[1]
CATS = test_study.CATS
KIND = "instruction_tuned"


def entry(world_dir, kind=KIND, size="xs", **experts):
  ck = lambda *a: str(world.checkpoint_path(world_dir, size, kind, *a))
  return {"base": ck("base"), "multitask": ck("multitask"),
          "experts": {c: experts.get(c, ck("expert", c)) for c in CATS}}


def write(path, manifest) -> str:
  path.write_text(yaml.safe_dump(manifest))
  return str(path)


def config(manifest_path, **over):
  over = {"sizes": (), **over}  # every size label of the manifest
  cfg = test_study.study_config("unused", models=manifest_path, kinds=(KIND,), num_experts=(1, 2), subset_seeds=1,
                                methods=("task_arithmetic",), **over)
  cfg.grids.task_arithmetic = dict(lam=(0.5, 1.0))
  return cfg


def random_checkpoint(path, like, **changes):
  """A built-in checkpoint with ``like``'s config but ``changes``, random weights, ``like``'s tokenizer (if any)."""
  cfg = models.load_config(like).replace(**changes)
  params = nn.unbox(models.Decoder(cfg).init(jax.random.key(1), jnp.zeros((1, 1), jnp.int32))["params"])
  own = pathlib.Path(like) / "tokenizer.model"
  return models.save_checkpoint(path, cfg, params, tokenizer_model=own if own.is_file() else None)


def copy_with(src, dst, edit):
  shutil.copytree(src, dst)
  edit(pathlib.Path(dst))
  return str(dst)


def test_bad_manifests_fail_at_start_up_with_one_line(study_world, tmp_path):
  expert = world.checkpoint_path(study_world, "xs", KIND, "expert", "topic")
  base = world.checkpoint_path(study_world, "xs", KIND, "base")

  def rope(d):
    cfg = json.loads((d / "model_config.json").read_text())
    (d / "model_config.json").write_text(json.dumps({**cfg, "rope_base": 500.0}))

  other_rope = copy_with(expert, tmp_path / "rope", rope)
  other_vocab = copy_with(expert, tmp_path / "vocab", lambda d: shutil.copy(suite_vocab.DEFAULT_MODEL,
                                                                            d / "tokenizer.model"))
  narrow = str(random_checkpoint(tmp_path / "narrow", base, d_ff=32))
  cases = [
      ({KIND: {"xs": entry(study_world, topic=str(tmp_path / "nowhere"))}},
       rf"{KIND}/xs/experts/topic: missing checkpoint {tmp_path / 'nowhere'}$"),
      ({KIND: {"xs": entry(study_world, topic=other_rope)}},
       rf"{KIND}/xs/experts/topic: {other_rope}: architecture differs from the base \(ropes="),
      ({KIND: {"xs": entry(study_world, topic=other_vocab)}},
       rf"{KIND}/xs/experts/topic: {other_vocab}: vocabulary differs from the base's"),
      ({KIND: {"xs": {**entry(study_world), "experts": {"sentiment": str(expert), "cooking": str(expert)}}}},
       rf"{KIND}/xs/experts/cooking: unknown category 'cooking' \(no held-in suite 'heldin_cooking'\)"),
      ({KIND: {"xs": entry(study_world, topic=narrow)}},
       rf"{KIND}/xs/experts/topic: {narrow}: parameter '.*' has shape \(.*\), the base's is \(.*\)"),
      ({KIND: {"xs": {**entry(study_world), "tokenizer": "x"}}}, r"unknown field 'tokenizer'"),
      ({KIND: {"x s": entry(study_world)}}, r"size label 'x s' must be letters"),
      ({"pretraind": {"xs": entry(study_world)}}, r"unknown base kind 'pretraind'"),
  ]
  for i, (manifest, message) in enumerate(cases):
    path = write(tmp_path / f"m{i}.yaml", manifest)
    with pytest.raises(runner.StudyConfigError) as e:
      runner.validate(config(path), tmp_path)
    assert "\n" not in str(e.value)
    assert re.search(message, str(e.value)), str(e.value)
    assert str(e.value).startswith(path)  # the manifest is named
  with pytest.raises(runner.StudyConfigError, match=r"unknown size label 'xl': the manifest has \['xs'\]"):
    runner.validate(config(write(tmp_path / "ok.yaml", {KIND: {"xs": entry(study_world)}}), sizes=("xl",)), tmp_path)
  with pytest.raises(runner.StudyConfigError, match=r"no such manifest file"):
    runner.validate(config(str(tmp_path / "absent.yaml")), tmp_path)


def test_command_line_reports_a_bad_manifest_in_one_line_and_exits_2(study_world, tmp_path):
  path = write(tmp_path / "models.yaml", {KIND: {"xs": entry(study_world, topic=str(tmp_path / "nowhere"))}})
  proc = subprocess.run([sys.executable, "-m", "mergejax.cli.study", f"--config={REPO / 'configs/study_tiny.py'}",
                         f"--workdir={tmp_path / 'run'}", f"--config.models={path}"],
                        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.startswith("mergejax-study")]
  assert lines == [f"mergejax-study: bad configuration: {path}: {KIND}/xs/experts/topic: missing checkpoint "
                   f"{tmp_path / 'nowhere'}"]
  assert not (tmp_path / "run" / "results").exists()


def test_size_labels_are_free_text_ordered_by_parameter_count(study_world, tmp_path):
  base = world.checkpoint_path(study_world, "xs", KIND, "base")
  wide = str(random_checkpoint(tmp_path / "wide", base, d_model=64, d_ff=128))
  manifest = {KIND: {"zz-small": entry(study_world),
                     "aa-large": {"base": wide, "experts": {c: wide for c in CATS}}}}
  spec = runner.validate(config(write(tmp_path / "m.yaml", manifest)), tmp_path)
  assert spec.sizes == ("zz-small", "aa-large")
  assert spec.manifest.entry(KIND, "zz-small").base.params == models.param_count(models.load_config(base))
  assert spec.manifest.entry(KIND, "aa-large").multitask is None  # optional


def rows(workdir):
  out = {}
  for p in (pathlib.Path(workdir) / "results" / "rows").glob("*.json"):
    row = json.loads(p.read_text())
    out[row["key"]] = {k: v for k, v in row.items() if k not in test_study.TIMING_KEYS}
  return out


def test_manifest_study_equals_the_world_path_follows_checkpoints_and_plans_a_dry_run(study_world, tmp_path, capsys):
  # The embedded world's path: the builder (which finds every model complete) writes models.yaml, the study reads it.
  world_copy = tmp_path / "world"
  shutil.copytree(study_world, world_copy)
  (world_copy / "models.yaml").unlink()
  cfg = config(None, build_world=True, sizes=("xs",))
  cfg.world_dir = str(world_copy)
  runner.run_study(cfg, tmp_path / "default", progress=False)
  assert yaml.safe_load((world_copy / "models.yaml").read_text())[KIND]["xs"]["experts"]["topic"] == \
      f"xs/{KIND}/experts/topic"
  default = rows(tmp_path / "default")

  # The same checkpoints through a user's manifest, under a free-text size label: the same rows.
  manifest = {KIND: {"tiny-1": entry(world_copy)}}
  path = write(tmp_path / "models.yaml", manifest)
  runner.run_study(config(path), tmp_path / "mine", progress=False)
  mine = rows(tmp_path / "mine")
  relabel = lambda r: {k: v for k, v in r.items() if k not in ("key", "size")}
  assert {k.replace("/xs/", "/tiny-1/"): relabel(v) for k, v in default.items() if k != "meta/world"} == {
      k: relabel(v) for k, v in mine.items()}
  merges = [v for v in mine.values() if v["type"] == "merge"]
  assert len(merges) == 3 and all(v["size"] == "tiny-1" for v in merges)

  # Another checkpoint for one expert: exactly the rows that read it are recomputed.
  manifest[KIND]["tiny-1"]["experts"]["topic"] = str(world.checkpoint_path(world_copy, "xs", "pretrained", "expert",
                                                                           "topic"))
  write(tmp_path / "models.yaml", manifest)
  runner.run_study(config(path), tmp_path / "mine", progress=False)
  again = rows(tmp_path / "mine")
  changed = sorted(k for k in mine if again[k] != mine[k])
  uses_topic = sorted(k for k, v in mine.items() if "topic" in v.get("categories", [v.get("category")]))
  assert changed == uses_topic and len(changed) == 3  # merges N=1 topic and N=2, the topic expert's reference row

  # The dry run: the plan, from the manifest's headers and the suites' data, and nothing else.
  capsys.readouterr()
  assert runner.run_study(config(path, dry_run=True, dry_run_chip="tpu_v5p"), tmp_path / "dry", progress=False) is None
  out = capsys.readouterr().out
  assert not (tmp_path / "dry").exists()
  # Time on the chip named (these CPU devices taken as TPU v5p chips), per (kind, size) and for the study.
  assert f"estimated time on this mesh ({len(jax.devices())} x TPU v5p: bf16 459 TFLOP/s" in out
  assert re.search(rf"{KIND}/tiny-1: per candidate at N=2 merge \S+ s \+ validation \S+ s; per cell \S+ s", out)
  assert re.search(r"estimated time of the whole study: [0-9.e-]+ s", out)
  with pytest.raises(runner.StudyConfigError, match="dry_run_chip='tpu_v9'"):
    runner.validate(config(path, dry_run=True, dry_run_chip="tpu_v9"), tmp_path / "dry")
  assert "(cell, method) rows: 3" in out and "candidates per method: task_arithmetic 2" in out
  assert "merges (every candidate, plus the chosen one again for test when a grid has several): 9" in out
  # Evaluation examples agree with what the study scored (per-example correctness in its rows).
  val = {c: sum(map(len, again[f"ref/{KIND}/tiny-1/expert/{c}"]["validation_correct"].values())) for c in CATS}
  heldin_test = {c: sum(map(len, again[f"ref/{KIND}/tiny-1/expert/{c}"]["test_correct"].values())) for c in CATS}
  base = again[f"ref/{KIND}/tiny-1/base"]
  heldout = sum(len(base["test_correct"][t]) for t in base["heldout_test"])
  cells = [v["categories"] for v in again.values() if v["type"] == "merge"]
  assert f"selection {sum(2 * sum(val[c] for c in cats) for cats in cells):,} (validation)" in out
  assert f"test {sum(sum(heldin_test[c] for c in cats) + heldout for cats in cells):,}," in out
  # Bytes per device: the resident models' shards as the study places them on its mesh (8 devices), to the byte.
  mesh = runner.study_mesh((("data", -1), ("model", 1)))
  loaded = [models.from_pretrained(p, mesh=mesh, vocabulary=suite_vocab.get_vocabulary())
            for p in [manifest[KIND]["tiny-1"]["base"], *manifest[KIND]["tiny-1"]["experts"].values(),
                      manifest[KIND]["tiny-1"]["multitask"]]]
  held = {d: 0 for d in mesh.devices.flat}
  for lm in loaded:
    for x in jax.tree.leaves(lm.params):
      for sh in x.addressable_shards:
        held[sh.device] += sh.data.nbytes
  assert f"data {len(jax.devices())} x model 1 = {len(jax.devices())} devices" in out and loaded[0].family == "builtin"
  assert f"models {max(held.values()) / 2**20:.2f} MiB" in out
  total = sum(x.nbytes for lm in loaded for x in jax.tree.leaves(lm.params))
  assert max(held.values()) <= 1.2 * total / len(held)  # split, not replicated
  # Data-aware methods: their statistics gather models whole onto one device (the expert's arrays as loaded).
  assert "data-aware statistics" not in out  # none in this study
  data_cfg = config(path, dry_run=True)
  data_cfg.methods = ("regmean", "fisher", "adamerging")
  assert runner.run_study(data_cfg, tmp_path / "dry", progress=False) is None
  out = capsys.readouterr().out
  params = sum(x.size for x in jax.tree.leaves(loaded[0].params))
  nbytes = [sum(x.nbytes for x in jax.tree.leaves(lm.params)) for lm in loaded]
  expert = max(nbytes[1:3])
  # RegMean's Gram matrices as the plan counts them: those an expert's forward pass gives, to the byte.
  examples = expert_data.ExpertExamples(expert_data.Settings(batches=1, batch_size=2))
  src = [f"heldin_{CATS[0]}"]
  examples.read(loaded[1].vocabulary, src)
  own = examples.for_experts(loaded[1].adapter, loaded[1].vocabulary, src, src)
  found = data_merge.linear_input_grams(own.model, data_merge.on_one_device(loaded[1].params), own.batches[False][0][0])
  grams = plan_lib.regmean_gram_bytes(plan_lib.arch_of(loaded[1].config))
  assert grams == sum(4 * g.size for g, _ in found.values()) > 0
  mib = lambda n: f"{n / 2**20:.2f} MiB"  # noqa: E731
  assert (f"data-aware statistics on one device (models gathered whole): regmean {mib(expert + 2 * grams)}, fisher "
          f"{mib(expert + 2 * 4 * params)}, adamerging {mib(nbytes[0] + 2 * expert + 4 * 4 * params)} beside") in out
  assert f"on the host {mib(len(CATS) * (grams + 4 * params))} (every expert's statistics; activations" in out
