"""Deterministic, disjoint train / validation / test splits of every synthetic task.

Each task draws candidates from its generator with a `random.Random` seeded by (suite seed, task
name). A candidate's split is decided by a hash of its input and target text (crc32 mod 16: 0 ->
test, 1 -> validation, else train), so the same text can never land in two splits, and each split is
deduplicated. Generation stops when every split has its requested count or after
`max_draws_per_example` draws per requested example (tasks with a small example space then return
fewer, never overlapping, examples), or after `patience` draws in a row that add nothing.
Held-in and held-out tasks are label-balanced: no label takes more than its share of a split while generating,
and a split whose examples all have k choices keeps the same number of each label, so a model that
always gives the same answer scores exactly chance.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import random
import zlib

from mergejax.tasks import generators
from mergejax.tasks import facts

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
  """Sizes and seed of the synthetic suite (counts are per task)."""
  seed: int = 0
  num_train: int = 2000
  num_validation: int = 64
  num_test: int = 128
  # Held-out tasks get this many times num_validation validation examples: the IT-vs-pretrained
  # comparison of world building is read on them (64 per task left about +-3 points of noise on a
  # category mean). Their test split (what the study evaluates after every merge) keeps num_test.
  heldout_validation_factor: int = 2
  num_pretrain: int = 20000           # train documents of mj_corpus
  max_draws_per_example: int = 40
  patience: int = 5000                # stop after this many draws without a new example


_CONFIG = SuiteConfig()


def configure(**kwargs) -> SuiteConfig:
  """Replaces fields of the global suite config (e.g. `configure(seed=1, num_train=500)`).

  Call before building datasets; later `dataset_fn` calls use the new values.
  """
  global _CONFIG
  _CONFIG = dataclasses.replace(_CONFIG, **kwargs)
  return _CONFIG


def get_config() -> SuiteConfig:
  return _CONFIG


def split_of(ex: generators.Example) -> str:
  h = zlib.crc32(f"{ex.inputs}\x00{ex.targets}".encode()) % 16
  return "test" if h == 0 else "validation" if h == 1 else "train"


def _wanted(name: str, cfg: SuiteConfig) -> dict[str, int]:
  group = generators.SPECS[name].group
  n_train = cfg.num_pretrain if group == "pretrain" else cfg.num_train
  n_val = cfg.num_validation * (cfg.heldout_validation_factor if group == "heldout" else 1)
  return {"train": n_train, "validation": n_val, "test": cfg.num_test}


@functools.lru_cache(maxsize=256)
def _build(name: str, cfg: SuiteConfig) -> dict[str, tuple[generators.Example, ...]]:
  spec = generators.SPECS[name]
  world = facts.make_world(cfg.seed)
  rng = random.Random(facts.sub_seed(cfg.seed, "task", name))
  want = _wanted(name, cfg)
  out: dict[str, dict[str, generators.Example]] = {s: {} for s in SPLITS}
  budget = cfg.max_draws_per_example * sum(want.values())
  # Evaluation tasks, and instruction tasks too: an unbalanced yes / no task (true statements are
  # rarer than false ones) would teach the IT base a constant answer instead of the skill.
  balance = spec.group in ("heldin", "heldout", "instruct")
  since_new = 0
  per_label = {s: collections.Counter() for s in SPLITS}
  full = {s: want[s] == 0 for s in SPLITS}
  for _ in range(budget):
    ex = spec.generator(world, rng)
    s = split_of(ex)
    key = f"{ex.inputs}\x00{ex.targets}"
    since_new += 1
    n = len(ex.choices)
    cap = max(want[s] // n, 1) if n and balance else want[s]
    if len(out[s]) < want[s] and key not in out[s] and per_label[s][ex.label] < cap:
      out[s][key] = ex
      per_label[s][ex.label] += 1
      since_new = 0
      full[s] = len(out[s]) >= want[s] or (cap < want[s] and all(per_label[s][i] >= cap for i in range(n)))
      if all(full.values()):
        break
    if since_new >= cfg.patience:
      break
  return {s: _balance(tuple(out[s].values())) if balance else tuple(out[s].values()) for s in SPLITS}


def _balance(exs: tuple[generators.Example, ...]) -> tuple[generators.Example, ...]:
  """Keeps the same number of examples of every label when all examples have the same number of
  choices (so a constant answer scores chance), preserving generation order."""
  n = {len(e.choices) for e in exs}
  if len(n) != 1 or 0 in n:
    return exs
  counts = collections.Counter(e.label for e in exs)
  if len(counts) < n.pop():
    return exs
  keep, seen = min(counts.values()), collections.Counter()
  out = []
  for e in exs:
    if seen[e.label] < keep:
      seen[e.label] += 1
      out.append(e)
  return tuple(out)


def examples(name: str, split: str, cfg: SuiteConfig | None = None) -> tuple[generators.Example, ...]:
  """The examples of task `name` in `split` (deterministic given the config; cached)."""
  if name not in generators.SPECS:
    raise KeyError(f"unknown synthetic task {name!r}")
  if split not in SPLITS:
    raise ValueError(f"task {name}: unknown split {split!r}; expected one of {SPLITS}")
  return _build(name, cfg or _CONFIG)[split]


def clear_cache() -> None:
  """Drops every generated split (they are cached per task and suite config): frees memory; the next
  :func:`examples` call generates them again, identically."""
  _build.cache_clear()
