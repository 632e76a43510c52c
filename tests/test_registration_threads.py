"""seqio registration under threads: many threads resolving suites and building evaluators at once (as a
study's evaluator-building threads do at start-up) register every mixture exactly once and never fail,
even when seqio's own ``add`` is slow enough for every thread to pass a plain check-then-add at the same
time."""

import concurrent.futures
import threading
import time

import seqio

import mergejax.tasks  # noqa: F401  pylint: disable=unused-import  (registers the synthetic tasks)
from mergejax import evaluation, models
from mergejax.evaluation import suites

THREADS = 8


def _slowed(monkeypatch, registry):
  """Makes ``registry.add`` sleep before registering, widening any check-then-add window."""
  original = registry.add.__func__

  def slow_add(cls, name, *args, **kwargs):
    time.sleep(0.01)
    return original(cls, name, *args, **kwargs)

  monkeypatch.setattr(registry, "add", classmethod(slow_add))


def test_eight_threads_building_evaluators_at_once_register_each_mixture_once(monkeypatch):
  suites.register_synthetic_suites()
  ours = [n for n in list(seqio.MixtureRegistry.names())
          if (n.startswith("mj_") and n.endswith("_eval")) or n.startswith("mj_union_")]
  assert "mj_all_eval" in ours
  for n in ours:  # registered again below, by the code under test, from eight threads at once
    seqio.MixtureRegistry.remove(n)
  _slowed(monkeypatch, seqio.MixtureRegistry)
  barrier = threading.Barrier(THREADS)
  cats = list(mergejax.tasks.HELDIN_CATEGORIES)
  adapter = evaluation.builtin_adapter(models.get_config("xs", vocab_size=mergejax.tasks.get_vocabulary().vocab_size))

  def work(i: int) -> tuple[str, str, str]:
    barrier.wait()  # every thread starts registering at the same moment
    everything = suites.resolve("all")
    # What a study's two evaluator threads build: a union over some categories (the same for pairs of threads).
    union = suites.union([f"heldin_{c}" for c in cats[i % 4: i % 4 + 2]] + ["heldout"])
    heldin = suites.resolve(f"heldin_{cats[i % len(cats)]}")
    ev = evaluation.Evaluator(adapter, heldin, "validation", batch_size=8)  # reads and caches the data
    assert set(ev.task_names) == set(suites.task_names(f"heldin_{cats[i % len(cats)]}"))
    return everything, union, heldin

  with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
    results = list(pool.map(work, range(THREADS)))  # re-raises a thread's exception (e.g. a duplicate)
  assert {r[0] for r in results} == {"mj_all_eval"}
  assert len({r[1] for r in results}) == 4  # four distinct unions, each registered once
  for everything, union, heldin in results:
    for name in (everything, union, heldin):
      assert name in seqio.MixtureRegistry.names()
  assert sorted(suites.task_names("all")) == sorted(suites.task_names("heldin") + suites.task_names("heldout"))
