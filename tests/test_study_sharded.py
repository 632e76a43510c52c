"""The study's placement on 8 simulated devices (tests/conftest.py): every loaded model, task vector and
merged candidate is split over the mesh, each device holding about an eighth. The rows equal a 1-device
run's (tests/test_study.py, test_eight_devices_and_two_processes_give_the_same_rows_as_one_device)."""

from __future__ import annotations

import jax

from mergejax.study import runner
from mergejax.study.candidates import CandidateMerger

import test_study


def test_every_model_task_vector_and_candidate_holds_an_eighth_per_device(study_world, tmp_path):
  """The rule (mergejax.models.pretrained.param_spec): every matrix is split over all 8 devices (FSDP over
  "data" along the model dimension, tensor parallel over "model" along heads, MLP units or vocabulary);
  only the 1-D norm scales, a few hundred bytes, are replicated. Per tree, the most any device holds is
  within 1.2x of an eighth."""
  spec = runner.validate(test_study.study_config(study_world, mesh=dict(data=4, model=2)), tmp_path)
  assert spec.device_mesh.devices.size == 8
  ms = runner.load_models(spec, "instruction_tuned", "xs")
  cats = list(spec.categories)
  trees = {"base": ms.base, "multitask": ms.multitask, **{f"expert {c}": ms.experts[c] for c in cats},
           **{f"task vector {c}": ms.taus[c] for c in cats}}
  # TIES merges one flat leaf split over the mesh, DARE-TIES leaf by leaf (candidates.flat_sharding)
  for name, hp in [("ties", dict(density=0.5, lam=1.0)), ("dare_ties", dict(drop_rate=0.5, lam=1.0))]:
    merger = CandidateMerger(name, ms.base, [ms.experts[c] for c in cats], [ms.taus[c] for c in cats], seed=0)
    trees[f"{name} candidate"] = merger(hp)
  base_specs = [x.sharding.spec for x in jax.tree.leaves(ms.base)]
  for what, tree in trees.items():
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    held = {d: 0 for d in jax.devices()}
    for (path, x), spec_ in zip(leaves, base_specs):
      assert x.sharding.spec == spec_, (what, jax.tree_util.keystr(path))  # placed like the base
      shards = x.addressable_shards
      assert len(shards) == 8
      for sh in shards:
        held[sh.device] += sh.data.nbytes
        assert sh.data.nbytes == (x.nbytes if x.ndim == 1 else x.nbytes // 8), (what, jax.tree_util.keystr(path))
    total = sum(x.nbytes for _, x in leaves)
    assert max(held.values()) <= 1.2 * total / 8, what
