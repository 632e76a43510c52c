"""Checkpoint sources and sinks: safetensors and orbax round trips, lazy metadata, sharded reads,
sidecar copies, detection, corrupt/truncated input, partition rules, fingerprints."""

import errno
import json
import os
import pathlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from safetensors.numpy import load_file

from mergejax import sharding
from mergejax.checkpoints import (CheckpointError, LeafSpec, OrbaxSink, OrbaxSource, SafetensorsSink,
                                  SafetensorsSource, detect_format, open_source)
from mergejax.checkpoints import output as output_lib
from test_checkpoints_fixtures import BF16, bits, random_tree, write_hf, write_orbax


@pytest.fixture(scope="module")
def mesh():
  assert len(jax.devices()) == 8
  return sharding.make_mesh()


@pytest.mark.parametrize("shards", [1, 3])
def test_safetensors_source_lists_without_loading_and_reads_sharded(tmp_path, mesh, shards):
  tree = random_tree(0)
  d = write_hf(tmp_path / "m", tree, shards=shards)
  src = open_source(d)
  assert src.format == "safetensors"
  assert [s.path for s in src.specs()] == sorted(tree)
  assert {s.path: (s.shape, s.dtype) for s in src.specs()} == {k: (v.shape, v.dtype) for k, v in tree.items()}
  shardings = {s.path: sharding.sharding_for(s.path, s.shape, mesh) for s in src.specs()}
  got = src.read(list(tree), shardings)
  for k, v in tree.items():
    assert got[k].sharding == shardings[k]
    np.testing.assert_array_equal(bits(got[k]), bits(v))
  emb = got["model.embed_tokens.weight"]
  assert len({str(s.index) for s in emb.addressable_shards}) == 8  # 64 rows over 8 devices


@pytest.mark.parametrize("shard_bytes", [1 << 30, 1500])
def test_safetensors_sink_writes_in_place_and_reference_reader_loads_it(tmp_path, mesh, shard_bytes):
  tree = random_tree(1)
  specs = [LeafSpec(k, v.shape, v.dtype) for k, v in sorted(tree.items())]
  src_dir = write_hf(tmp_path / "src", tree)
  sink = SafetensorsSink(tmp_path / "out", shard_bytes=shard_bytes, sidecar_dir=str(src_dir))
  sink.begin(specs)
  # Write in reverse order, each leaf sharded differently (rows, columns, replicated).
  for i, s in enumerate(reversed(specs)):
    spec = [P(), P("shard"), P(None, "shard")][i % 3] if len(s.shape) == 2 else P()
    x = jax.device_put(jnp.asarray(tree[s.path]), NamedSharding(mesh, spec))
    sink.write({s.path: x if i % 4 != 3 else tree[s.path]})  # host arrays: one pwrite per leaf
  assert not (tmp_path / "out").exists()  # nothing at the destination before finalize
  out = sink.finalize({"method": "test"})
  files = sorted(p.name for p in out.iterdir())
  assert {"config.json", "tokenizer_config.json", "generation_config.json", "mergejax_manifest.json"} <= set(files)
  if shard_bytes < 10000:
    assert "model.safetensors.index.json" in files and len([f for f in files if f.endswith(".safetensors")]) > 1
    loaded = {}
    for f in out.glob("*.safetensors"):
      loaded.update(load_file(str(f)))
  else:
    loaded = load_file(str(out / "model.safetensors"))
  assert sorted(loaded) == sorted(tree)
  for k in tree:
    np.testing.assert_array_equal(bits(loaded[k]), bits(tree[k]))
  assert json.loads((out / "mergejax_manifest.json").read_text())["method"] == "test"
  assert not list(tmp_path.glob(".*mergejax-partial"))


def test_safetensors_sink_refuses_incomplete_output(tmp_path):
  tree = random_tree(2)
  sink = SafetensorsSink(tmp_path / "out")
  sink.begin([LeafSpec(k, v.shape, v.dtype) for k, v in tree.items()])
  sink.write({"model.norm.weight": tree["model.norm.weight"]})
  with pytest.raises(RuntimeError, match="no value for leaf"):
    sink.finalize({})
  sink.abort()
  assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_safetensors_sink_disk_full_names_the_file(tmp_path, monkeypatch):
  tree = random_tree(3)
  sink = SafetensorsSink(tmp_path / "out")
  sink.begin([LeafSpec(k, v.shape, v.dtype) for k, v in tree.items()])

  def full(*args):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "pwrite", full)
  with pytest.raises(OSError, match="model.safetensors") as e:
    sink.write({"model.norm.weight": tree["model.norm.weight"]})
  assert e.value.errno == errno.ENOSPC
  sink.abort()
  assert not list(tmp_path.iterdir())


def test_truncated_safetensors_names_file_and_tensor(tmp_path):
  d = write_hf(tmp_path / "m", random_tree(0))
  f = d / "model.safetensors"
  data = f.read_bytes()
  f.write_bytes(data[:-100])
  with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated: tensor '[^']+' ends at byte"):
    SafetensorsSource(d)
  f.write_bytes(data[:5])
  with pytest.raises(CheckpointError, match="truncated safetensors file"):
    SafetensorsSource(d)


def test_corrupt_safetensors_header(tmp_path):
  d = write_hf(tmp_path / "m", random_tree(0))
  f = d / "model.safetensors"
  data = bytearray(f.read_bytes())
  data[8:12] = b"\x00\xff{x"
  f.write_bytes(bytes(data))
  with pytest.raises(CheckpointError, match="corrupt safetensors header"):
    SafetensorsSource(d)
  bad = {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}
  raw = json.dumps(bad).encode()
  f.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)
  with pytest.raises(CheckpointError, match="tensor 'x' has 8 bytes"):
    SafetensorsSource(d)


def test_corrupt_index(tmp_path):
  d = write_hf(tmp_path / "m", random_tree(0), shards=2)
  idx = d / "model.safetensors.index.json"
  good = json.loads(idx.read_text())
  idx.write_text("{not json")
  with pytest.raises(CheckpointError, match="index.json: corrupt safetensors index"):
    SafetensorsSource(d)
  wm = dict(good["weight_map"])
  wm["model.extra.weight"] = "model-00001-of-00002.safetensors"
  idx.write_text(json.dumps({"weight_map": wm}))
  with pytest.raises(CheckpointError, match="tensor 'model.extra.weight' is listed in"):
    SafetensorsSource(d)
  wm = dict(good["weight_map"])
  wm["model.norm.weight"] = "model-00009-of-00009.safetensors"
  idx.write_text(json.dumps({"weight_map": wm}))
  with pytest.raises(CheckpointError, match="shard 'model-00009-of-00009.safetensors' .* is missing"):
    SafetensorsSource(d)


def test_detect_format(tmp_path):
  with pytest.raises(CheckpointError, match="no such file"):
    detect_format(tmp_path / "nope")
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "weights.bin").write_bytes(b"x")
  with pytest.raises(CheckpointError, match="junk: unknown checkpoint format"):
    detect_format(tmp_path / "junk")
  assert detect_format(write_hf(tmp_path / "hf", random_tree(0))) == "safetensors"
  assert detect_format(write_orbax(tmp_path / "ob", {"w": jnp.ones((4,))})) == "orbax"


def test_orbax_source_and_sink_round_trip_with_sidecar(tmp_path, mesh):
  tree = {"params": {"dense": {"kernel": jnp.asarray(np.random.default_rng(0).standard_normal((16, 8)), jnp.bfloat16),
                               "bias": jnp.arange(8, dtype=jnp.float32)},
                     "embed": jnp.ones((64, 4), jnp.float32)},
          "step": jnp.int32(5)}
  d = write_orbax(tmp_path / "ck", tree)
  src = OrbaxSource(d)
  assert [s.path for s in src.specs()] == ["params/dense/bias", "params/dense/kernel", "params/embed", "step"]
  assert src.specs()[1] == LeafSpec("params/dense/kernel", (16, 8), BF16)
  sh = {s.path: sharding.sharding_for(s.path, s.shape, mesh) for s in src.specs()}
  got = src.read(["params/embed", "params/dense/kernel"], sh)  # a partial restore of two leaves
  assert set(got) == {"params/embed", "params/dense/kernel"}
  assert got["params/embed"].sharding.spec == P("shard")
  np.testing.assert_array_equal(bits(got["params/dense/kernel"]), bits(tree["params"]["dense"]["kernel"]))
  sink = OrbaxSink(tmp_path / "out", sidecar_dir=str(d), keys={s.path: src.keys(s.path) for s in src.specs()})
  sink.begin(src.specs())
  for s in src.specs():
    sink.write(src.read([s.path], {s.path: sh[s.path]}))
    assert not sink._leaves  # progressive: each group goes to disk, nothing is kept  # pylint: disable=protected-access
  assert any(p.name.startswith(".out.") for p in tmp_path.iterdir())  # the staged session, hidden
  out = sink.finalize({"method": "copy"})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "out"]  # session merged and moved, nothing left
  restored = ocp.StandardCheckpointer().restore(out)  # a plain StandardCheckpointer layout
  np.testing.assert_array_equal(bits(restored["params"]["dense"]["kernel"]), bits(tree["params"]["dense"]["kernel"]))
  assert (out / "model_config.json").read_text() == (d / "model_config.json").read_text()
  assert json.loads((out / "mergejax_manifest.json").read_text())["output_format"] == "orbax"
  back = OrbaxSource(out)
  vals = back.read([s.path for s in back.specs()])
  assert int(vals["step"]) == 5
  np.testing.assert_array_equal(np.asarray(vals["params/dense/bias"]), np.arange(8))


def test_orbax_sink_abort_removes_staged_groups(tmp_path):
  sink = OrbaxSink(tmp_path / "out")
  sink.begin([LeafSpec("a", (4,), np.dtype(np.float32)), LeafSpec("b", (4,), np.dtype(np.float32))])
  sink.write({"a": jnp.ones((4,))})
  assert list(tmp_path.iterdir())
  sink.abort()
  assert not list(tmp_path.iterdir())


def test_partition_rules_and_default_spec(mesh):
  assert sharding.default_spec((16, 40), 8) == P(None, "shard")  # the largest divisible axis
  assert sharding.default_spec((12, 40), 8) == P(None, "shard")
  assert sharding.default_spec((7, 5), 8) == P()
  assert sharding.default_spec((), 8) == P()
  rules = sharding.parse_rules("embed=None,shard;norm=")
  assert sharding.spec_for("model.embed_tokens.weight", (64, 16), mesh, rules) == P(None, "shard")
  assert sharding.spec_for("model.norm.weight", (16,), mesh, rules) == P()
  assert sharding.spec_for("lm_head.weight", (64, 16), mesh, rules) == P("shard")
  with pytest.raises(ValueError, match="leaf 'x': rule 'x' shards an axis of size 12 over 8 devices"):
    sharding.spec_for("x", (12,), mesh, sharding.parse_rules("x=shard"))


def test_fingerprint_tracks_content(tmp_path):
  d = write_hf(tmp_path / "m", random_tree(0))
  a = output_lib.fingerprint(d)
  assert a["files"] == 4 and a["bytes"] == sum(p.stat().st_size for p in d.iterdir())
  f = d / "model.safetensors"
  data = bytearray(f.read_bytes())
  data[-1] ^= 1
  f.write_bytes(bytes(data))
  assert output_lib.fingerprint(d)["sha256_sampled"] != a["sha256_sampled"]


def test_check_output_path(tmp_path):
  d = write_hf(tmp_path / "m", random_tree(0))
  with pytest.raises(ValueError, match="is inside input"):
    output_lib.check_output_path(d / "sub", [d], overwrite=True)
  with pytest.raises(ValueError, match="is inside output path"):
    output_lib.check_output_path(tmp_path, [d], overwrite=True)
  with pytest.raises(ValueError, match="exists"):
    output_lib.check_output_path(tmp_path / "m", [tmp_path / "other"], overwrite=False)
  output_lib.check_output_path(tmp_path / "new", [d], overwrite=False)
