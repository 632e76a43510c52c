"""The streaming engine: identical results to the in-memory path on 8 devices, any grouping and
memory budget; group planning; stats passes; NaN/Inf checks; failures leave no output."""

import dataclasses
import errno
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mergejax
from mergejax import engine, sharding, tree
from mergejax.engine import executors as executors_module, nonfinite, xla_cpu
from mergejax.checkpoints import SafetensorsSink, SafetensorsSource
from mergejax.checkpoints.base import LeafSpec
from test_checkpoints_fixtures import SHAPES, bits, random_tree, write_hf, write_world

METHODS = [
    ("average", {}),
    ("task_arithmetic", {"lam": 0.7}),
    ("ties", {"density": 0.3, "scope": "tensor"}),
    ("ties", {"density": 0.2, "scope": "global"}),
    ("dare_ties", {"drop_rate": 0.5, "density": 0.5, "scope": "tensor"}),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return write_world(tmp_path_factory.mktemp("world"), n_experts=3, shards=2)


class CountingSource:
  """Wraps a Source; records the leaves of every read call."""

  def __init__(self, src):
    self.src, self.name, self.calls = src, src.name, []

  def specs(self):
    return self.src.specs()

  def read(self, paths, shardings=None):
    self.calls.append(list(paths))
    return self.src.read(paths, shardings)


def _read_all(path):
  src = SafetensorsSource(path)
  return {k: np.asarray(v) for k, v in src.read([s.path for s in src.specs()]).items()}


@pytest.mark.parametrize("name,hp", METHODS, ids=[f"{n}-{h.get('scope', '')}" for n, h in METHODS])
def test_streamed_sharded_merge_equals_in_memory_merge(world, tmp_path, name, hp):
  base_p, expert_ps, trees = world
  method = mergejax.methods.get(name, **hp)
  uses_base = method.traits.uses_base
  ref = mergejax.merge(trees[0] if uses_base else None, trees[1:], method, seed=7)
  out = engine.merge_sources(
      SafetensorsSource(base_p) if uses_base else None, [SafetensorsSource(p) for p in expert_ps],
      SafetensorsSink(tmp_path / "out", shard_bytes=3000), method, seed=7, mesh=sharding.make_mesh(),
      memory_budget_bytes=40_000, allow_nonfinite=False)
  got = _read_all(out)
  assert sorted(got) == sorted(SHAPES)
  for k in SHAPES:
    assert got[k].dtype == np.asarray(ref[k]).dtype
    np.testing.assert_array_equal(bits(got[k]), bits(ref[k]), err_msg=k)


def test_result_independent_of_devices_budget_and_rules(tmp_path):
  """DARE masks and global TIES statistics depend only on (inputs, seed): not on devices, grouping
  or partition rules."""
  keep = ("model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight", "model.norm.weight")
  trees = [random_tree(0)]
  trees += [random_tree(i, base=trees[0]) for i in (1, 2)]
  trees = [{k: v for k, v in t.items() if k in keep} for t in trees]
  base_p, *expert_ps = [write_hf(tmp_path / f"m{i}", t) for i, t in enumerate(trees)]
  method = mergejax.methods.get("dare_ties", drop_rate=0.5, density=0.4, scope="global")
  outs = []
  configs = [(sharding.make_mesh(jax.devices()[:1]), None, ()),
             (sharding.make_mesh(), 2_000, sharding.parse_rules("embed=None,shard"))]
  for i, (mesh, budget, rules) in enumerate(configs):
    outs.append(engine.merge_sources(
        SafetensorsSource(base_p), [SafetensorsSource(p) for p in expert_ps],
        SafetensorsSink(tmp_path / f"o{i}"), method, seed=3, mesh=mesh, memory_budget_bytes=budget, rules=rules))
  data = [(o / "model.safetensors").read_bytes() for o in outs]
  assert data[0] == data[1]


_DARE = ("dare_ties", {"drop_rate": 0.5, "density": 0.5, "scope": "tensor"})
# (method, hyperparameters, max_flat_row): 16 sends DARE (rows of 16 and 40 entries) to row blocks.
FLAT_METHODS = [(n, h, None) for n, h in METHODS[:4]] + [
    ("dare_ties", {"drop_rate": 0.0, "density": 0.5, "scope": "tensor"}, None),
    ("dare_linear", {"drop_rate": 0.5}, None),
    (*_DARE, None), (*_DARE, 16),
    ("breadcrumbs", {"density": 0.6, "gamma": 0.1}, None), ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.05}, 16)]


def _manifest(out):
  return json.loads((pathlib.Path(out) / "mergejax_manifest.json").read_text())


@pytest.mark.parametrize("name,hp,max_flat_row", FLAT_METHODS,
                         ids=[f"{n}-{h.get('scope', '')}-{h.get('drop_rate', '')}-{r}" for n, h, r in FLAT_METHODS])
def test_flat_chunked_merge_on_one_device_is_bitwise_identical(world, tmp_path, name, hp, max_flat_row):
  """On one CPU device elementwise kernels (and their statistics passes) run on flat chunks (one compile
  for all shapes; DARE chunks told where they start in the leaf), DARE kernels on row blocks that know
  their first row when a row is too long for that: bit-identical to whole-leaf kernels, written to the
  sink chunk by chunk. Chunks of 256 entries: full chunks, chunks across row ends, padded tails; the merge
  pass in pieces of 512 entries while a whole one remains, then of 256."""
  base_p, expert_ps, trees = world
  method = mergejax.methods.get(name, **hp)
  ref = mergejax.merge(trees[0] if method.traits.uses_base else None, trees[1:], method, seed=7)
  executor = engine.FlatChunk(chunk=256, merge_chunk=512,
                              **({"max_flat_row": max_flat_row} if max_flat_row else {}))
  out = engine.merge_sources(
      SafetensorsSource(base_p) if method.traits.uses_base else None, [SafetensorsSource(p) for p in expert_ps],
      SafetensorsSink(tmp_path / "out"), method, seed=7, mesh=sharding.make_mesh(jax.devices()[:1]),
      memory_budget_bytes=40_000, executor=executor)
  got = _read_all(out)
  for k in SHAPES:
    np.testing.assert_array_equal(bits(got[k]), bits(ref[k]), err_msg=k)
  ran = _manifest(out)["executor"]
  assert ran["name"] == "flat_chunk" and ran["chunk"] == 256 and ran["output"] == "spans"
  assert ran["merge_chunk"] == 512
  assert ran["pieces"] == ("row_blocks" if max_flat_row == 16 else "chunks")
  assert ran["inputs"] == ("staged" if method.compute_stats is not None
                           else "aligned_windows" if ran["pieces"] == "chunks" else "host_views")


@pytest.fixture(scope="module")
def world_f32(tmp_path_factory):
  return write_world(tmp_path_factory.mktemp("world_f32"), n_experts=3, shards=2, dtype=np.float32)


# Whole-leaf methods made elementwise by per-leaf Gram statistics (mergejax/methods/gram.py).
GRAM_METHODS = [("slerp", {"t": 0.3}, 1), ("nuslerp", {"weights": (0.3, 0.7)}, 2), ("multislerp", {}, 3),
                ("karcher", {"weights": (1.0, 2.0, 0.5)}, 3), ("model_stock", {}, 3)]


@pytest.mark.parametrize("name,hp,n", GRAM_METHODS, ids=[m[0] for m in GRAM_METHODS])
def test_gram_statistics_methods_merge_in_flat_chunks_bitwise_identical(world_f32, tmp_path, name, hp, n):
  """SLERP, NuSLERP, Multi-SLERP, the Karcher mean and Model Stock over whole leaves: their Gram statistics
  and merges on chunks of 256 entries (padded tails included) give the whole-leaf result bit for bit
  (float32 inputs: inner products that round)."""
  base_p, expert_ps, trees = world_f32
  method = mergejax.methods.get(name, **hp)
  assert method.traits.elementwise
  ref = mergejax.merge(trees[0], trees[1:1 + n], method, seed=7)
  out = engine.merge_sources(SafetensorsSource(base_p), [SafetensorsSource(p) for p in expert_ps[:n]],
                             SafetensorsSink(tmp_path / "out"), method, seed=7,
                             mesh=sharding.make_mesh(jax.devices()[:1]), memory_budget_bytes=40_000,
                             executor=engine.FlatChunk(chunk=256))
  got = _read_all(out)
  for k in SHAPES:
    np.testing.assert_array_equal(bits(got[k]), bits(ref[k]), err_msg=k)
  assert _manifest(out)["executor"]["name"] == "flat_chunk"


@pytest.mark.parametrize("devices,uses_files,expect", [(1, True, "flat_chunk"), (8, True, "whole_leaf"),
                                                      (1, False, "flat_chunk"), (None, False, "whole_leaf")])
def test_executor_is_chosen_from_traits_and_mesh(world, tmp_path, devices, uses_files, expect):
  """Elementwise methods on one CPU device: flat chunks; any other mesh (or none): whole leaves. The
  manifest says which ran; mergejax.merge takes the same rule."""
  base_p, expert_ps, trees = world
  mesh = sharding.make_mesh(jax.devices()[:devices]) if devices else None
  method = mergejax.methods.task_arithmetic(lam=0.5)
  if uses_files:
    out = engine.merge_sources(SafetensorsSource(base_p), [SafetensorsSource(p) for p in expert_ps],
                               SafetensorsSink(tmp_path / "out"), method, mesh=mesh)
    assert _manifest(out)["executor"]["name"] == expect
  else:
    from mergejax.checkpoints import PytreeSink, PytreeSource  # pylint: disable=g-import-not-at-top
    src = PytreeSource(trees[0], name="base")

    class ManifestSink(PytreeSink):
      def finalize(self, metadata):
        self.manifest = dict(metadata)
        return super().finalize(metadata)

    sink = ManifestSink(src.paths, src.treedef)
    engine.merge_sources(src, [PytreeSource(t, name=f"e{i}") for i, t in enumerate(trees[1:])], sink, method,
                         mesh=mesh)
    assert sink.manifest["executor"]["name"] == expect
    if expect == "flat_chunk":
      assert sink.manifest["executor"]["inputs"] == "arrays"  # no host views: read() arrays, chunked


def test_a_method_that_is_not_elementwise_runs_whole_leaves_on_one_device(world, tmp_path):
  base_p, expert_ps, trees = world
  ta = mergejax.methods.task_arithmetic(lam=0.5)
  opaque = dataclasses.replace(ta, traits=dataclasses.replace(ta.traits, elementwise=False))
  out = engine.merge_sources(SafetensorsSource(base_p), [SafetensorsSource(p) for p in expert_ps],
                             SafetensorsSink(tmp_path / "out"), opaque, mesh=sharding.make_mesh(jax.devices()[:1]))
  assert _manifest(out)["executor"] == {"name": "whole_leaf", "inputs": "staged"}
  ref = mergejax.merge(trees[0], trees[1:], ta)
  got = _read_all(out)
  for k in SHAPES:
    np.testing.assert_array_equal(bits(got[k]), bits(ref[k]), err_msg=k)


def _covers(spans, n):
  """Consecutive, disjoint spans whose union is [0, n)."""
  if not spans:
    return n == 0
  return [a for a, _ in spans] == [0] + [b for _, b in spans[:-1]] and spans[-1][1] == n


def test_chunks_spans_and_row_blocks_cover_every_entry_with_few_sizes():
  ex = engine.FlatChunk(chunk=1024)
  for n in (0, 1, 1023, 1024, 1025, 3 * 1024 + 500):
    cs = ex.chunks(n)
    assert _covers([(a, b) for a, b, _ in cs], n) and all(0 < b - a <= size for a, b, size in cs)
    assert {size for *_, size in cs} <= {1024}  # one compiled size
    spans = ex.stat_spans(n)
    assert spans == [(0, 0)] if n == 0 else (_covers(spans, n) and all(0 < b - a <= 1024 for a, b in spans))
  for shape in ((), (7,), (3, 1025), (1000, 24, 4), (5, 0)):
    rows, d, r = ex.block_rows(shape)
    assert rows * d == int(np.prod(shape)) and r * max(d, 1) <= max(1024, d)
  assert ex.block_rows((32000, 64))[2] == ex.block_rows((4096, 64))[2]  # one compile per row length


@pytest.mark.parametrize("name,hp,devices", [
    ("task_arithmetic", {}, 1),
    ("ties", {"density": 0.3, "scope": "tensor"}, 1),  # per-leaf stats read the data: checked before them
    ("dare_ties", {"drop_rate": 0.5, "density": 1.0, "scope": "tensor"}, 8),  # stats read nothing: fused check
])
def test_nonfinite_refused_with_one_read(tmp_path, name, hp, devices):
  base = random_tree(0)
  bad = random_tree(1, base=base)
  bad["model.layers.0.mlp.down_proj.weight"][5, 39] = np.inf
  bp, ep = write_hf(tmp_path / "b", base), write_hf(tmp_path / "e", bad)
  with pytest.raises(engine.NonFiniteError, match=r"e: leaf 'model.layers.0.mlp.down_proj.weight' contains NaN or Inf"):
    engine.merge_sources(SafetensorsSource(bp), [SafetensorsSource(ep), SafetensorsSource(bp)],
                         SafetensorsSink(tmp_path / "out"), mergejax.methods.get(name, **hp),
                         mesh=sharding.make_mesh(jax.devices()[:devices]), allow_nonfinite=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "e"]


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("bad", ["base_nan", "expert_inf", "overflow"])
def test_nonfinite_found_from_the_output(tmp_path, devices, bad):
  """task_arithmetic checks only its output (any NaN/Inf input reaches it: 0 x inf = NaN, inf - inf =
  NaN); a non-finite output is traced to the input that holds one, and an output that overflows from
  finite inputs is merged as before."""
  base = random_tree(0)
  experts = [random_tree(i, base=base) for i in (1, 2)]
  leaf = "model.layers.0.mlp.down_proj.weight"
  if bad == "base_nan":
    base[leaf][3, 9] = np.nan
  elif bad == "expert_inf":
    experts[1][leaf][5, 39] = -np.inf
  else:  # 2 x (3e38 - (-3e38)) overflows float32; every input is finite
    base[leaf][0, 0], experts[0][leaf][0, 0], experts[1][leaf][0, 0] = -3e38, 3e38, 3e38
  bp = write_hf(tmp_path / "basedir", base)
  eps = [write_hf(tmp_path / f"expert{i}", e) for i, e in enumerate(experts)]
  method = mergejax.methods.get("task_arithmetic", lam=0.5)
  assert method.traits.propagates_nonfinite
  run = lambda: engine.merge_sources(  # noqa: E731
      SafetensorsSource(bp), [SafetensorsSource(p) for p in eps], SafetensorsSink(tmp_path / "out"), method,
      mesh=sharding.make_mesh(jax.devices()[:devices]), allow_nonfinite=False)
  if bad == "overflow":
    got = _read_all(run())
    ref = mergejax.merge(base, experts, method)
    assert np.isinf(np.asarray(got[leaf], np.float32)[0, 0])
    for k in SHAPES:
      np.testing.assert_array_equal(bits(got[k]), bits(ref[k]), err_msg=k)
    return
  who = "basedir" if bad == "base_nan" else "expert1"
  with pytest.raises(engine.NonFiniteError, match=rf"{who}: leaf '{leaf}' contains NaN or Inf"):
    run()
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("budget", [None, 20_000])
def test_nonfinite_in_two_leaves_names_the_first_merged(tmp_path, budget):
  """Chunks of consecutive leaves are written while later leaves merge; the verdict still names the
  first leaf, in merge order, whose output chunks hold a NaN/Inf (one group, or a group per leaf)."""
  experts = [random_tree(i) for i in (1, 2)]
  eps = [write_hf(tmp_path / f"expert{i}", e) for i, e in enumerate(experts)]
  srcs = [SafetensorsSource(p) for p in eps]
  floats = [s.path for s in srcs[0].specs() if tree.is_float_dtype(s.dtype)]
  first, last = floats[1], floats[-1]
  experts[0][last][-1] = np.nan
  experts[1][first].reshape(-1)[-1] = np.inf
  eps = [write_hf(tmp_path / f"bad{i}", e) for i, e in enumerate(experts)]
  method = mergejax.methods.get("average")
  with pytest.raises(engine.NonFiniteError, match=rf"bad1: leaf '{first}' contains NaN or Inf"):
    engine.merge_sources(None, [SafetensorsSource(p) for p in eps], SafetensorsSink(tmp_path / "out"), method,
                         mesh=sharding.make_mesh(jax.devices()[:1]), executor=engine.FlatChunk(chunk=256),
                         memory_budget_bytes=budget)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_finite_host_matches_isfinite(dtype):
  """The host check on exponent bits agrees with np.isfinite on every float class."""
  dt = jnp.dtype(dtype)
  fi = jnp.finfo(dt)
  specials = np.asarray([0.0, -0.0, 1.0, -2.5, float(fi.max), -float(fi.max), float(fi.tiny),
                         float(fi.smallest_subnormal)], np.float64).astype(dt)
  assert engine.finite_host(specials)
  assert engine.finite_host(np.zeros((0,), dt))
  for bad in (np.nan, np.inf, -np.inf):
    for at in (0, 3, 7):
      x = specials.copy()
      x[at] = bad
      assert not engine.finite_host(x), (dtype, bad, at)
  assert engine.finite_host(np.arange(10, dtype=np.int32))  # not a float: nothing to check
  long = np.zeros((3 * nonfinite.HOST_PIECE + 7,), dt)  # checked piece by piece: every piece counts
  assert engine.finite_host(long)
  for at in (0, nonfinite.HOST_PIECE + 5, long.size - 1):
    x = long.copy()
    x[at] = np.nan
    assert not engine.finite_host(x), (dtype, at)


def test_nonfinite_in_an_unused_base_is_refused_too(tmp_path):
  """average ignores a given base, so its output cannot vouch for it: the base is checked as an input."""
  base = random_tree(0)
  experts = [random_tree(i, base=base) for i in (1, 2)]
  base["model.norm.weight"][2] = np.nan
  bp = write_hf(tmp_path / "b", base)
  eps = [write_hf(tmp_path / f"e{i}", e) for i, e in enumerate(experts)]
  for devices in (1, 8):
    with pytest.raises(engine.NonFiniteError, match=r"b: leaf 'model.norm.weight' contains NaN or Inf"):
      engine.merge_sources(SafetensorsSource(bp), [SafetensorsSource(p) for p in eps], SafetensorsSink(tmp_path / "o"),
                           mergejax.methods.average(), mesh=sharding.make_mesh(jax.devices()[:devices]))
  out = engine.merge_sources(None, [SafetensorsSource(p) for p in eps], SafetensorsSink(tmp_path / "o"),
                             mergejax.methods.average(), mesh=sharding.make_mesh(jax.devices()[:1]))
  assert _read_all(out)["model.norm.weight"].shape == base["model.norm.weight"].shape


def test_plan_groups_respects_budget():
  specs = [LeafSpec(f"l{i}", (1000,), np.dtype(np.float32)) for i in range(50)] + [
      LeafSpec("big", (100_000,), np.dtype(np.float32))]
  n_inputs, budget = 5, 2_000_000
  groups = engine.plan_groups(specs, n_inputs, budget)
  assert [s for g in groups for s in g] == specs  # order kept, nothing lost
  assert len(groups) > 1
  workspace = 4 * (n_inputs + 1) * 100_000
  for g in groups:
    b = sum(s.nbytes for s in g)
    assert len(g) == 1 or 2 * n_inputs * b + 2 * b + workspace <= budget * 1.01
  assert engine.plan_groups(specs, n_inputs, None) == [specs]


@pytest.mark.parametrize("scope,passes", [("tensor", 1), ("global", None)])
def test_reads_per_leaf(world, tmp_path, scope, passes):
  """Per-tensor stats are computed while a group is resident (one read of each leaf); global stats
  stream the model once per statistics pass, then once more to merge."""
  base_p, expert_ps, _ = world
  base = CountingSource(SafetensorsSource(base_p))
  exps = [CountingSource(SafetensorsSource(p)) for p in expert_ps]
  engine.merge_sources(base, exps, SafetensorsSink(tmp_path / "o"), mergejax.methods.ties(density=0.3, scope=scope),
                       mesh=sharding.make_mesh(), memory_budget_bytes=30_000)
  float_leaves = [k for k in SHAPES if not k.endswith("_count")]
  for src in [base] + exps:
    reads = [p for call in src.calls for p in call]
    counts = {k: reads.count(k) for k in float_leaves}
    assert len(set(counts.values())) == 1  # every leaf read equally often
    if passes is not None:
      assert set(counts.values()) == {passes}
    else:
      assert counts[float_leaves[0]] >= 3  # sample pass + >= 1 count pass + merge
    assert max(len(c) for c in src.calls) < len(float_leaves)  # never the whole model at once


def test_nonfinite_input_is_refused_naming_source_and_leaf(tmp_path):
  base = random_tree(0)
  bad = random_tree(1, base=base)
  bad["model.layers.0.self_attn.q_proj.weight"][3, 4] = np.nan
  bp = write_hf(tmp_path / "b", base)
  ep = write_hf(tmp_path / "e", bad)
  args = (SafetensorsSource(bp), [SafetensorsSource(ep)])
  with pytest.raises(engine.NonFiniteError, match=r"e: leaf 'model.layers.0.self_attn.q_proj.weight' contains NaN"):
    engine.merge_sources(*args, SafetensorsSink(tmp_path / "out"), mergejax.methods.task_arithmetic(),
                         mesh=sharding.make_mesh(), allow_nonfinite=False, memory_budget_bytes=20_000)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "e"]  # no output, no partial dir
  out = engine.merge_sources(*args, SafetensorsSink(tmp_path / "out"), mergejax.methods.task_arithmetic(),
                             mesh=sharding.make_mesh(), allow_nonfinite=True)
  assert np.isnan(np.asarray(_read_all(out)["model.layers.0.self_attn.q_proj.weight"], np.float32)).sum() == 1


class _DiskFullSink(SafetensorsSink):
  def __init__(self, *a, fail_after: int, **kw):
    super().__init__(*a, **kw)
    self.fail_after, self.writes = fail_after, 0

  def write(self, leaves):
    self.writes += 1
    if self.writes > self.fail_after:
      raise OSError(errno.ENOSPC, "No space left on device", str(self.atomic.tmp / "model.safetensors"))
    super().write(leaves)


def test_disk_full_midway_leaves_nothing(world, tmp_path):
  base_p, expert_ps, _ = world
  sink = _DiskFullSink(tmp_path / "out", fail_after=2, sidecar_dir=str(base_p))
  with pytest.raises(OSError) as e:
    engine.merge_sources(SafetensorsSource(base_p), [SafetensorsSource(p) for p in expert_ps], sink,
                         mergejax.methods.task_arithmetic(), mesh=sharding.make_mesh(), memory_budget_bytes=20_000)
  assert e.value.errno == errno.ENOSPC and sink.writes == 3
  assert list(tmp_path.iterdir()) == []


class _DiskFullSpanSink(SafetensorsSink):
  def __init__(self, *a, fail_after: int, **kw):
    super().__init__(*a, **kw)
    self.fail_after, self.spans = fail_after, 0

  def write_span(self, path, start, data):
    self.spans += 1
    if self.spans > self.fail_after:
      raise OSError(errno.ENOSPC, "No space left on device", str(self.atomic.tmp / "model.safetensors"))
    super().write_span(path, start, data)


@pytest.mark.parametrize("name", ["task_arithmetic", "ties"])
def test_disk_full_while_chunks_are_written_leaves_nothing(world, tmp_path, name):
  """On one device chunks are written on a draining thread (from aligned windows or staged leaves): a
  failed write there fails the merge with its error, and nothing is left behind."""
  base_p, expert_ps, _ = world
  sink = _DiskFullSpanSink(tmp_path / "out", fail_after=5, sidecar_dir=str(base_p))
  with pytest.raises(OSError) as e:
    engine.merge_sources(SafetensorsSource(base_p), [SafetensorsSource(p) for p in expert_ps], sink,
                         mergejax.methods.get(name), mesh=sharding.make_mesh(jax.devices()[:1]),
                         executor=engine.FlatChunk(chunk=256), memory_budget_bytes=20_000)
  assert e.value.errno == errno.ENOSPC and sink.spans == 6
  assert list(tmp_path.iterdir()) == []


def test_nonfinite_in_a_staged_whole_leaf_merge_names_source_and_leaf(tmp_path):
  """A method that is not elementwise, on one device: leaves of files are staged and checked as read."""
  base = random_tree(0)
  bad = random_tree(1, base=base)
  bad["model.layers.0.mlp.down_proj.weight"][5, 39] = np.nan
  bp, ep = write_hf(tmp_path / "b", base), write_hf(tmp_path / "e", bad)
  ta = mergejax.methods.task_arithmetic(lam=0.5)
  opaque = dataclasses.replace(ta, traits=dataclasses.replace(ta.traits, elementwise=False))
  with pytest.raises(engine.NonFiniteError, match=r"e: leaf 'model.layers.0.mlp.down_proj.weight' contains NaN"):
    engine.merge_sources(SafetensorsSource(bp), [SafetensorsSource(ep), SafetensorsSource(bp)],
                         SafetensorsSink(tmp_path / "out"), opaque, mesh=sharding.make_mesh(jax.devices()[:1]))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "e"]


def test_staged_whole_leaf_merge_checks_inputs_once_as_read(tmp_path, monkeypatch):
  """Staged leaves are checked for NaN/Inf as they are read, so the kernels run without a fused check
  (a second look at every input): the merge equals the in-memory one."""
  base = random_tree(0)
  experts = [random_tree(i, base=base) for i in (1, 2)]
  bp = write_hf(tmp_path / "b", base)
  eps = [write_hf(tmp_path / f"e{i}", e) for i, e in enumerate(experts)]
  ta = mergejax.methods.task_arithmetic(lam=0.5)
  opaque = dataclasses.replace(ta, traits=dataclasses.replace(ta.traits, elementwise=False))

  ref = mergejax.merge(base, experts, ta)

  def fused_check(*args, **kwargs):
    raise AssertionError("a kernel with a fused NaN/Inf check ran")

  monkeypatch.setattr(executors_module, "kernel_checked", fused_check)
  got = _read_all(engine.merge_sources(SafetensorsSource(bp), [SafetensorsSource(p) for p in eps],
                                       SafetensorsSink(tmp_path / "out"), opaque,
                                       mesh=sharding.make_mesh(jax.devices()[:1])))
  for k in SHAPES:
    np.testing.assert_array_equal(bits(got[k]), bits(ref[k]), err_msg=k)


def test_non_float_leaves_pass_through_and_dtype_override(world, tmp_path):
  base_p, expert_ps, trees = world
  out = engine.merge_sources(SafetensorsSource(base_p), [SafetensorsSource(p) for p in expert_ps],
                             SafetensorsSink(tmp_path / "o"), mergejax.methods.task_arithmetic(),
                             dtype=np.float32, mesh=sharding.make_mesh())
  got = _read_all(out)
  np.testing.assert_array_equal(got["model.rotary.inv_freq_count"], trees[0]["model.rotary.inv_freq_count"])
  assert got["model.norm.weight"].dtype == np.float32
  ref = mergejax.merge(trees[0], trees[1:], "task_arithmetic", dtype=np.float32)
  np.testing.assert_array_equal(got["lm_head.weight"], np.asarray(ref["lm_head.weight"]))


def test_tree_mismatch_names_leaf(tmp_path):
  base = random_tree(0)
  other = dict(random_tree(1, base=base))
  other["model.norm.weight"] = other["model.norm.weight"][:8]
  bp, ep = write_hf(tmp_path / "b", base), write_hf(tmp_path / "e", other)
  with pytest.raises(mergejax.tree.TreeMismatchError, match=r"leaf 'model.norm.weight' has shape \(8,\)"):
    engine.merge_sources(SafetensorsSource(bp), [SafetensorsSource(ep)], SafetensorsSink(tmp_path / "o"),
                         mergejax.methods.task_arithmetic())
  assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o*"))


def test_aligned_views_hold_the_tensor_at_an_aligned_address(world):
  """SafetensorsSource.aligned_view: a 64-byte-aligned map with the tensor at [offset, offset + n), so
  kernels read the page cache in place (safetensors data is only 8-byte aligned)."""
  base_p, _, _ = world
  src = SafetensorsSource(base_p)
  offsets = set()
  for spec in src.specs():
    got = src.aligned_view(spec.path)
    assert got is not None
    amap, offset = got
    n = int(np.prod(spec.shape))
    assert amap.ctypes.data % 64 == 0 and 0 <= offset < 64 // amap.dtype.itemsize
    np.testing.assert_array_equal(amap[offset:offset + n].view(np.uint8), src.flat_view(spec.path).view(np.uint8))
    offsets.add(offset)
  assert offsets != {0}  # the fixture's tensors are not all aligned in their files: the offset matters


def test_read_into_copies_the_leaf_of_every_source_kind(world):
  """HostViews.read_into: the leaf's bytes, read from the file (safetensors), through a subset, and
  computed by a transform (mapped sources)."""
  from mergejax.checkpoints.mapped import MappedSource, SubsetSource  # pylint: disable=g-import-not-at-top
  base_p, _, _ = world
  src = SafetensorsSource(base_p)
  specs = src.specs()
  t = specs[0]
  doubled = MappedSource(src, {t.path: (t, lambda: (np.asarray(src.host(t.path), np.float32) * 2).astype(t.dtype))})
  for spec in specs:
    for s, want in ((src, src.flat_view(spec.path)), (SubsetSource(src, [spec.path]), src.flat_view(spec.path)),
                    (doubled, doubled.flat_view(spec.path))):
      out = np.full((spec.size,), 7, spec.dtype)
      s.read_into(spec.path, out)
      np.testing.assert_array_equal(out.view(np.uint8), np.asarray(want).view(np.uint8), err_msg=spec.path)
  with pytest.raises(ValueError, match="read_into"):
    src.read_into(t.path, np.empty((t.size + 1,), t.dtype))


def test_staging_buffers_reuse_only_memory_nothing_refers_to():
  """A slab comes back only when no array carved from it, and no jax.Array aliasing one, is left."""
  pool = xla_cpu.StagingBuffers(1 << 16)
  a = pool.take(4096)
  assert a.ctypes.data % xla_cpu.ALIGN == 0
  leaf = a[64:64 + 1024].view(np.float32)
  del a
  b = pool.take(4096)  # the first slab is still referred to by `leaf`
  assert not np.shares_memory(b, leaf)
  on_device = jax.device_put(leaf)  # aligned: aliases the slab
  del leaf
  c = pool.take(4096)
  assert not np.shares_memory(c, np.asarray(on_device)) and not np.shares_memory(c, b)
  del on_device, b
  d = pool.take(100)
  assert len(pool.slabs) == 3  # a released slab was reused, no fourth one
  assert not np.shares_memory(d, c)
  big = pool.take(1 << 17)  # beyond the capacity: a one-off buffer
  assert big.size == 1 << 17 and len(pool.slabs) == 3
