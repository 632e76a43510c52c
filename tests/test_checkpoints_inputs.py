"""The inputs people have and the outputs that tell the truth: orbax trees with lists and PRNG keys,
CheckpointManager directories, pytorch_model.bin read without torch (and never executed), index files
that stay inside their directory, mixed input dtypes, --overwrite only of mergejax outputs, config.json
dtype and the generated model card."""

import json
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import save_file

import mergejax
from mergejax.checkpoints import CheckpointError, UnsafePickleError, open_source
from mergejax.checkpoints import output as output_lib
from mergejax.cli import merge as merge_cli
from test_checkpoints_fixtures import BF16, bits, random_tree, write_hf, write_orbax, write_world
from test_cli_merge import _cfg

REPO = pathlib.Path(__file__).resolve().parents[1]


def _restore(path, abstract=None):
  with ocp.StandardCheckpointer() as c:
    return c.restore(path, abstract) if abstract is not None else c.restore(path)


# ------------------------------------------------------------------ orbax: lists, tuples, PRNG keys


def _list_tree(seed, base=None):
  r = np.random.default_rng(seed)
  t = {"layers": [r.standard_normal((4, 3)).astype(np.float32), r.standard_normal((3,)).astype(np.float32)],
       "pair": (r.standard_normal((2,)).astype(np.float32),), "w": r.standard_normal((5,)).astype(np.float32),
       "step": np.int32(seed)}
  if base is not None:
    t = jax.tree.map(lambda b, x: b + 0.1 * x if b.dtype == np.float32 else b, base, t)
  return t


def test_orbax_tree_with_lists_and_tuples_merges_and_restores_with_its_structure(tmp_path):
  trees = [_list_tree(0)] + [_list_tree(i, base=_list_tree(0)) for i in (1, 2)]
  paths = [write_orbax(tmp_path / f"m{i}", t) for i, t in enumerate(trees)]
  out = merge_cli.merge_checkpoints(str(paths[0]), [str(p) for p in paths[1:]], str(tmp_path / "out"),
                                    _cfg(method__name="task_arithmetic", method__lam=0.5))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), trees[0])
  got = _restore(out, abstract)
  want = mergejax.merge(trees[0], trees[1:], mergejax.methods.task_arithmetic(lam=0.5))
  assert jax.tree.structure(got) == jax.tree.structure(abstract)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_linen_train_state_with_optax_state_merges(tmp_path):
  import optax  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from flax.training import train_state  # pylint: disable=g-import-not-at-top
  model = nn.Dense(3)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  states = []
  for i in range(3):
    params = model.init(jax.random.key(i), jnp.ones((1, 4)))
    st = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    states.append(st.apply_gradients(grads=jax.tree.map(jnp.ones_like, params)))
  pure = [{"params": s.params, "opt_state": s.opt_state, "step": np.int32(s.step)} for s in states]
  paths = [write_orbax(tmp_path / f"s{i}", p) for i, p in enumerate(pure)]
  out = merge_cli.merge_checkpoints(str(paths[0]), [str(p) for p in paths[1:]], str(tmp_path / "out"),
                                    _cfg(method__name="ties", method__density=0.5))
  got = _restore(out, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pure[0]))
  want = mergejax.merge(pure[0], pure[1:], mergejax.methods.ties(density=0.5))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _with_key(seed, base=None):
  t = {"w": np.random.default_rng(seed).standard_normal((6,)).astype(np.float32),
       "rngs": {"key": jax.random.key(seed), "count": jnp.uint32(seed)}}
  if base is not None:
    t["w"] = base["w"] + 0.1 * t["w"]
  return t


def test_prng_key_leaves_pass_through_from_the_base_in_memory():
  base = _with_key(0)
  experts = [_with_key(i, base) for i in (1, 2)]
  got = mergejax.merge(base, experts, mergejax.methods.task_arithmetic())
  assert jax.dtypes.issubdtype(got["rngs"]["key"].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(got["rngs"]["key"]), jax.random.key_data(base["rngs"]["key"]))
  np.testing.assert_allclose(got["w"], base["w"] + (experts[0]["w"] - base["w"]) + (experts[1]["w"] - base["w"]),
                             rtol=1e-6)


def test_prng_key_leaves_through_orbax(tmp_path):
  base = _with_key(0)
  paths = [write_orbax(tmp_path / "b", base)] + [write_orbax(tmp_path / f"e{i}", _with_key(i, base)) for i in (1, 2)]
  out = merge_cli.merge_checkpoints(str(paths[0]), [str(p) for p in paths[1:]], str(tmp_path / "o"),
                                    _cfg(method__name="task_arithmetic"))
  got = _restore(out)
  np.testing.assert_array_equal(jax.random.key_data(got["rngs"]["key"]), jax.random.key_data(base["rngs"]["key"]))
  with pytest.raises(ValueError) as err:
    merge_cli.merge_checkpoints(str(paths[0]), [str(p) for p in paths[1:]], str(tmp_path / "st"),
                                _cfg(method__name="task_arithmetic"), output_format="safetensors")
  line = merge_cli.error_line(err.value)
  assert "leaf 'rngs/key' is a PRNG key, which safetensors cannot store" in line and "\n" not in line
  assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "e1", "e2", "o"]


# ------------------------------------------------------------------ CheckpointManager directories


def test_checkpoint_manager_step_root_and_step_selector(tmp_path):
  trees = {s: {"w": np.full((3,), s, np.float32)} for s in (100, 150)}
  with ocp.CheckpointManager(tmp_path / "mngr") as m:
    for s, t in trees.items():
      m.save(s, args=ocp.args.StandardSave(t))
    m.wait_until_finished()
  for path, step in [(tmp_path / "mngr" / "100", 100), (tmp_path / "mngr", 150), (f"{tmp_path / 'mngr'}@step=100", 100)]:
    src = open_source(path)
    np.testing.assert_array_equal(np.asarray(src.read(["w"])["w"]), trees[step]["w"])
  with pytest.raises(CheckpointError, match="no step 7"):
    open_source(f"{tmp_path / 'mngr'}@step=7")
  with ocp.CheckpointManager(tmp_path / "multi", item_names=("state", "params")) as m:
    m.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(trees[100]),
                                      params=ocp.args.StandardSave(trees[150])))
    m.wait_until_finished()
  with pytest.raises(CheckpointError, match=r"several items \['params', 'state'\]: pass one of"):
    open_source(tmp_path / "multi" / "1")


# ------------------------------------------------------------------ pytorch_model.bin


def test_torch_bin_read_lazily_without_torch_matches_torch(tmp_path):
  torch = pytest.importorskip("torch")
  sd = {"a": torch.randn(5, 3), "b_t": torch.randn(4, 6).t(), "c": torch.arange(7), "d": torch.randn(3, 2).bfloat16(),
        "e": torch.randn(10)[2:7], "f": torch.randn(2, 3).half(), "tied": None}
  sd["tied"] = sd["a"]  # shared storage, as tied embeddings
  torch.save(sd, tmp_path / "pytorch_model.bin")
  code = ("import sys, numpy as np; from mergejax.checkpoints import open_source; "
          f"s = open_source({str(tmp_path)!r}); "
          "d = {k: np.asarray(s.read([k])[k]) for k in [x.path for x in s.specs()]}; "
          "np.savez(sys.argv[1], **{k: v.view(np.uint16) if v.dtype.itemsize == 2 and v.dtype.kind == 'V' or str(v.dtype)"
          " == 'bfloat16' else v for k, v in d.items()}); print('torch' in sys.modules)")
  r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.npz")], capture_output=True, text=True,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=REPO, timeout=120)
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == "False"  # torch never imported
  got = np.load(tmp_path / "out.npz")
  for k, v in sd.items():
    want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
    g = got[k].view(BF16).astype(np.float32) if v.dtype == torch.bfloat16 else got[k]
    np.testing.assert_array_equal(g, want)


def test_sharded_torch_bin_merge_equals_safetensors_merge(tmp_path):
  torch = pytest.importorskip("torch")
  base, experts, trees = write_world(tmp_path / "st", n_experts=2)
  bins = []
  for i, t in enumerate(trees):
    d = tmp_path / f"bin{i}"
    d.mkdir()
    names = sorted(t)
    halves = [names[::2], names[1::2]]
    weight_map = {}
    for j, part in enumerate(halves):
      fname = f"pytorch_model-{j + 1:05d}-of-00002.bin"
      torch.save({k: torch.from_numpy(np.asarray(t[k]).view(np.int16)).view(torch.bfloat16) if t[k].dtype == BF16
                  else torch.from_numpy(np.asarray(t[k])) for k in part}, d / fname)
      weight_map.update({k: fname for k in part})
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    bins.append(d)
  cfg = _cfg(method__name="ties", method__density=0.3, method__scope="tensor")
  a = merge_cli.merge_checkpoints(str(bins[0]), [str(b) for b in bins[1:]], str(tmp_path / "from_bin"), cfg)
  b = merge_cli.merge_checkpoints(str(base), [str(e) for e in experts], str(tmp_path / "from_st"), cfg)
  sa, sb = open_source(a), open_source(b)
  assert [s.path for s in sa.specs()] == [s.path for s in sb.specs()]
  for s in sa.specs():
    np.testing.assert_array_equal(bits(sa.read([s.path])[s.path]), bits(sb.read([s.path])[s.path]))


class _Evil:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.system, (f"touch {self.target}",))


class _EvilOpen:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (open, (self.target, "w"))


@pytest.mark.parametrize("evil", [_Evil, _EvilOpen])
def test_malicious_pickle_runs_nothing(tmp_path, evil):
  target = tmp_path / "pwned"
  d = tmp_path / "m"
  d.mkdir()
  with zipfile.ZipFile(d / "pytorch_model.bin", "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", pickle.dumps({"w": evil(str(target))}, protocol=2))
    z.writestr("archive/byteorder", "little")
  with pytest.raises(UnsafePickleError) as err:
    open_source(d)
  glob = "posix.system" if evil is _Evil else "io.open"
  assert f"the pickle calls '{glob}'" in str(err.value) and str(d / "pytorch_model.bin") in str(err.value)
  assert "\n" not in str(err.value)
  assert not target.exists()


# ------------------------------------------------------------------ index files stay inside their directory


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
@pytest.mark.parametrize("shard", ["../outside.safetensors", "/abs/model.safetensors", "sub/../../x.safetensors"])
def test_index_shard_outside_the_directory_is_refused(tmp_path, kind, shard):
  d = write_hf(tmp_path / "m", random_tree(0))
  save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "outside.safetensors"))
  index = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
  if kind == "bin":
    (d / "model.safetensors").unlink()
  (d / index).write_text(json.dumps({"weight_map": {"x": shard}}))
  with pytest.raises(CheckpointError) as err:
    open_source(d)
  assert repr(shard) in str(err.value) and str(d / index) in str(err.value) and "refused" in str(err.value)


# ------------------------------------------------------------------ mixed dtypes


def test_float32_expert_with_bfloat16_base_merges_in_float32(tmp_path):
  base = random_tree(0)
  e32 = {k: (np.asarray(base[k], np.float32) + 0.01 * np.random.default_rng(3).standard_normal(v.shape)).astype(
      np.float32) if v.dtype == BF16 else v for k, v in base.items()}
  e16 = random_tree(2, base=base)
  paths = [write_hf(tmp_path / n, t) for n, t in (("b", base), ("e32", e32), ("e16", e16))]
  out = merge_cli.merge_checkpoints(str(paths[0]), [str(p) for p in paths[1:]], str(tmp_path / "o"),
                                    _cfg(method__name="task_arithmetic", method__lam=0.5))
  src = open_source(out)
  for k, b in base.items():
    got = np.asarray(src.read([k])[k])
    if b.dtype != BF16:
      np.testing.assert_array_equal(got, b)
      continue
    b64 = np.asarray(b, np.float64)
    want = b64 + 0.5 * ((np.asarray(e32[k], np.float64) - b64) + (np.asarray(e16[k], np.float64) - b64))
    assert got.dtype == BF16
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=2 ** -8, atol=1e-6)
  assert json.loads((out / "mergejax_manifest.json").read_text())["dtype"] == "bfloat16"


# ------------------------------------------------------------------ outputs that tell the truth


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return write_world(tmp_path_factory.mktemp("world"), n_experts=2)


def test_config_dtype_states_the_output_dtype(world, tmp_path):
  base, experts, _ = world
  cfg = json.loads((base / "config.json").read_text())
  cfg["torch_dtype"] = "bfloat16"
  (base / "config.json").write_text(json.dumps(cfg))
  out = merge_cli.merge_checkpoints(str(base), [str(e) for e in experts], str(tmp_path / "o"),
                                    _cfg(method__name="task_arithmetic", dtype="float16"))
  got = json.loads((out / "config.json").read_text())
  assert got["torch_dtype"] == "float16" and got["model_type"] == "llama"
  assert {s.dtype for s in open_source(out).specs() if s.dtype.kind == "f"} == {np.dtype(np.float16)}


def test_model_card_is_generated_not_copied(world, tmp_path):
  base, experts, _ = world
  (base / "README.md").write_text("# llama base\nA tiny random llama base model.\n")
  out = merge_cli.merge_checkpoints(str(base), [str(e) for e in experts], str(tmp_path / "o"),
                                    _cfg(method__name="ties", method__density=0.3))
  card = (out / "README.md").read_text()
  assert "llama base" not in card and "tiny random" not in card
  for s in ["method: `ties`", "density: `0.3`", f"base: `{base}`", f"expert: `{experts[0]}`",
            f"mergejax {mergejax.__version__}", "## Command"]:
    assert s in card, s


def test_overwrite_replaces_only_mergejax_outputs(world, tmp_path):
  base, experts, _ = world
  args = (str(base), [str(e) for e in experts])
  cfg = _cfg(method__name="task_arithmetic")
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "thesis.txt").write_text("years of work")
  afile = tmp_path / "afile"
  afile.write_text("data")
  for target in (notes, afile):
    with pytest.raises(ValueError) as err:
      merge_cli.merge_checkpoints(*args, str(target), cfg, overwrite=True)
    assert "is not a mergejax output" in merge_cli.error_line(err.value)
  assert (notes / "thesis.txt").read_text() == "years of work" and afile.read_text() == "data"
  out = merge_cli.merge_checkpoints(*args, str(tmp_path / "m"), cfg)
  merge_cli.merge_checkpoints(*args, str(out), _cfg(method__name="ties"), overwrite=True)
  assert json.loads((out / output_lib.MANIFEST).read_text())["method"] == "ties"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "m", "notes"]  # no stray hidden files
  # A file added to a mergejax output since (the user's notes) makes it the user's: refused, kept.
  (out / "eval").mkdir()
  (out / "eval" / "notes.txt").write_text("my results")
  with pytest.raises(ValueError) as err:
    merge_cli.merge_checkpoints(*args, str(out), cfg, overwrite=True)
  assert "holds 'eval/notes.txt', which mergejax did not write" in merge_cli.error_line(err.value)
  assert (out / "eval" / "notes.txt").read_text() == "my results"
  # A manifest that is not mergejax's (any file of that name) proves nothing.
  fake = tmp_path / "fake"
  fake.mkdir()
  (fake / output_lib.MANIFEST).write_text("{}")
  (fake / "important.bin").write_text("data")
  with pytest.raises(ValueError) as err:
    merge_cli.merge_checkpoints(*args, str(fake), cfg, overwrite=True)
  assert "is not a mergejax output" in merge_cli.error_line(err.value)
  assert (fake / "important.bin").read_text() == "data"


def test_missing_parent_directories_are_made_and_an_empty_directory_is_used(world, tmp_path):
  base, experts, _ = world
  args = (str(base), [str(e) for e in experts])
  cfg = _cfg(method__name="task_arithmetic")
  for fmt in ("safetensors", "orbax"):
    out = merge_cli.merge_checkpoints(*args, str(tmp_path / fmt / "a" / "b" / "m"), cfg, output_format=fmt)
    assert (out / output_lib.MANIFEST).is_file()
  empty = tmp_path / "empty"
  empty.mkdir()
  assert (merge_cli.merge_checkpoints(*args, str(empty), cfg) / output_lib.MANIFEST).is_file()
  # A failing merge leaves none of the directories it made.
  with pytest.raises(ValueError):
    merge_cli.merge_checkpoints(str(base), [str(tmp_path / "nope")], str(tmp_path / "x" / "y" / "m"), cfg)
  assert not (tmp_path / "x").exists()


def test_experts_with_commas_via_repeated_flag_and_file(world, tmp_path):
  base, experts, _ = world
  comma = tmp_path / "my models" / "expert,1"
  comma.parent.mkdir()
  os.symlink(experts[1], comma)
  listing = tmp_path / "experts.txt"
  listing.write_text(f"# experts\n{comma}\n")
  assert merge_cli.expert_paths(None, [str(experts[0]), str(comma)], None) == [str(experts[0]), str(comma)]
  with pytest.raises(ValueError, match=r"--experts: .*expert,1 is one path with a comma in it, which --experts "
                                       r"splits: pass it with --expert=PATH or --experts_file"):
    merge_cli.expert_paths(str(comma).split(","), None, None)
  cmd = [sys.executable, "-m", "mergejax.cli.merge", f"--base={base}", f"--expert={experts[0]}",
         f"--experts_file={listing}", f"--output={tmp_path / 'o'}", "--config.method.name=task_arithmetic",
         "--config.progress=False"]
  r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=REPO,
                     timeout=120)
  assert r.returncode == 0, r.stderr
  man = json.loads((tmp_path / "o" / output_lib.MANIFEST).read_text())
  assert [i["name"] for i in man["inputs"]] == [str(base), str(experts[0]), str(comma)]


@pytest.mark.parametrize("text", ["{", '{"metadata": {}}', '{"weight_map": [1]}'])
def test_a_corrupt_torch_index_is_one_line_naming_it(tmp_path, text):
  index = tmp_path / "pytorch_model.bin.index.json"
  index.write_text(text)
  with pytest.raises(CheckpointError, match=f"^{index}: corrupt index "):
    open_source(tmp_path)
