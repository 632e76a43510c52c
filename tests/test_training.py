"""The training loop: loss goes down, data-parallel sharding is exact, killed runs resume."""

import jax
import numpy as np
import pytest

from mergejax import models, training, world
from mergejax.training import data as data_lib
from mergejax.training import recipes

import toy_tasks

TINY = models.ModelConfig(vocab_size=384, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=48,
                          name="tiny")
LENGTHS = {"inputs": 24, "targets": 24}
OPT = training.OptimConfig(lr=1e-2, warmup_steps=3)


@pytest.fixture(scope="module")
def toy_batches():
  toy_tasks.register("mjtoy")
  return data_lib.materialize("mjtoy_heldin", 24, batch_size=8, feature_lengths=LENGTHS, seed=0)


def _params(path):
  return models.load_checkpoint(path)[1]


def test_batches_are_deterministic_and_packed(toy_batches):
  again = data_lib.materialize("mjtoy_heldin", 2, batch_size=8, feature_lengths=LENGTHS, seed=0)
  for a, b in zip(toy_batches[:2], again):
    for k in data_lib.FEATURES:
      np.testing.assert_array_equal(a[k], b[k])
  b = toy_batches[0]
  assert b["decoder_input_tokens"].shape == (8, 48)
  assert ((b["decoder_segment_ids"] > 0) == (b["decoder_target_tokens"] > 0)).all()
  w = b["decoder_loss_weights"]
  assert 0 < w.sum() < (b["decoder_target_tokens"] > 0).sum()  # loss on targets only


def test_lr_schedule_warmup_and_cosine():
  opt = training.OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
  s = training.lr_schedule(opt, 100)
  assert float(s(0)) == 0.0 and float(s(10)) == pytest.approx(1.0)
  assert float(s(100)) == pytest.approx(0.1)
  vals = [float(s(i)) for i in range(10, 101)]
  assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_training_reduces_loss_and_sharded_step_matches_one_device(tmp_path, toy_batches):
  mesh8 = training.data_mesh()
  assert mesh8.size == 8
  r8 = training.train(TINY, tmp_path / "m8", steps=16, opt=OPT, batch_size=8, batches=toy_batches,
                      log_every=1, progress=False, mesh=mesh8)
  losses = [l for _, l in r8.losses]
  assert losses[-1] < 0.7 * losses[0], losses
  tr = training.get_trainer(TINY, OPT, mesh8)
  assert tr.put_batch(toy_batches[0]["decoder_input_tokens"]).sharding.spec == jax.sharding.PartitionSpec("data")
  r1 = training.train(TINY, tmp_path / "m1", steps=16, opt=OPT, batch_size=8, batches=toy_batches,
                      log_every=1, progress=False, mesh=training.data_mesh(jax.devices()[:1]))
  np.testing.assert_allclose([l for _, l in r1.losses], losses, rtol=2e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5),
               _params(tmp_path / "m8"), _params(tmp_path / "m1"))
  # A complete output is skipped, not retrained.
  again = training.train(TINY, tmp_path / "m8", steps=16, opt=OPT, batch_size=8, batches=toy_batches)
  assert again.skipped


def test_killed_run_resumes_from_last_checkpoint(tmp_path, toy_batches):
  out = tmp_path / "run"

  def crash(step, metrics):
    if step == 14:
      raise KeyboardInterrupt("simulated kill")

  with pytest.raises(KeyboardInterrupt):
    training.train(TINY, out, steps=20, opt=OPT, batch_size=8, batches=toy_batches,
                   checkpoint_every=5, log_every=1, progress=False, on_step=crash)
  assert not models.is_complete(out) and not out.exists()
  resumed = training.train(TINY, out, steps=20, opt=OPT, batch_size=8, batches=toy_batches,
                           checkpoint_every=5, log_every=1, progress=False)
  assert resumed.resumed_from == 10
  assert not (tmp_path / ".run.train").exists()  # training state cleaned up once complete
  straight = training.train(TINY, tmp_path / "straight", steps=20, opt=OPT, batch_size=8,
                            batches=toy_batches, log_every=1, progress=False)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               _params(out), _params(tmp_path / "straight"))
  assert resumed.final_loss == pytest.approx(straight.final_loss, rel=1e-5)


def test_recipe_paths_and_errors(tmp_path):
  toy_tasks.register("mjtoy")
  spec = world.run_spec("expert", "xs", tmp_path, category="copy", kind="instruction_tuned",
                        mixture_prefix="mjtoy", steps=3)
  assert spec.mixture == "mjtoy_heldin_copy" and spec.steps == 3
  assert spec.out == tmp_path / "xs" / "instruction_tuned" / "experts" / "copy"
  assert spec.init == tmp_path / "xs" / "instruction_tuned" / "base"
  assert spec.model.vocab_size == 384  # ByteVocabulary's 259 ids, padded to a multiple of 128
  it = world.run_spec("instruction_tune", "xs", tmp_path, mixture_prefix="mjtoy")
  assert it.init == tmp_path / "xs" / "pretrained" / "base"
  with pytest.raises(FileNotFoundError, match="train it first"):
    recipes.run(spec, progress=False)
  with pytest.raises(ValueError, match="needs a category"):
    world.run_spec("expert", "xs", tmp_path, mixture_prefix="mjtoy")
  with pytest.raises(ValueError, match="unknown recipe"):
    world.run_spec("finetune", "xs", tmp_path)
  with pytest.raises(ValueError, match="starts from a checkpoint"):
    recipes.resolve("expert", "xs", out=tmp_path / "e", category="copy", mixture_prefix="mjtoy")


def test_one_device_run_is_bit_identical_on_any_device_and_beside_another_run(tmp_path, toy_batches):
  """The world builder trains independent runs concurrently, one per device: a run's parameters
  must not depend on which device it ran on, nor on what trained beside it at the same time."""
  import threading  # pylint: disable=g-import-not-at-top
  devs = jax.devices()
  kw = dict(steps=8, opt=OPT, batch_size=8, batches=toy_batches, progress=False)
  training.train(TINY, tmp_path / "alone_d0", mesh=training.data_mesh(devs[:1]), **kw)
  # The same run on device 5 while another run (other data seed order) trains on device 2.
  other = list(reversed(toy_batches))
  ts = [threading.Thread(target=training.train, args=(TINY, tmp_path / "beside_d5"),
                         kwargs=dict(mesh=training.data_mesh(devs[5:6]), **kw)),
        threading.Thread(target=training.train, args=(TINY, tmp_path / "other_d2"),
                         kwargs=dict(mesh=training.data_mesh(devs[2:3]), **dict(kw, batches=other)))]
  for t in ts:
    t.start()
  for t in ts:
    t.join()
  a, b, c = (_params(tmp_path / n) for n in ("alone_d0", "beside_d5", "other_d2"))
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
  assert any(not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))
