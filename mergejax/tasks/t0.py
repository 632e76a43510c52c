"""The real T0 tasks over TFDS (Sanh et al., 2022, "Multitask Prompted Training Enables Zero-Shot Task
Generalization", arXiv 2110.08207), for training experts and evaluating merges as "What Matters for Model
Merging at Scale?" does.

Held-in: the paper's 8 categories, two datasets each, from T0's training mixtures (``datasets.csv`` of
bigscience-workshop/t-zero; ``BASE`` = T0, ``GPT_EVAL`` = T0+, ``SGLUE`` = T0++), where TFDS has them.
Held-out: T0's held-out evaluation datasets (StoryCloze only with ``story_cloze=True``: it needs a manual
download). :data:`DATASETS` lists them with their TFDS names, versions and splits (docs/TASKS.md has
the table). Every dataset is rendered with each of its templates (:mod:`mergejax.tasks.t0_templates`:
three or four per dataset, each following one of promptsource's original-task templates); a task holds
all of them, and its metric is computed per template and summarized as T0 reports it: the median over
templates (the task's score) and the mean.

Tasks (``<d>`` a dataset name):

* ``t0_<d>`` (held-in): inputs -> target, every template; splits ``train`` (what an expert trains on),
  ``validation``, ``test``. Metrics: ROUGE (summarization, structure-to-text), SQuAD F1 / exact match
  (generative QA), exact match of the generated answer (choice datasets).
* ``t0_<d>_rank`` (choice datasets, held-in and held-out): rank classification, as T0 evaluates: every
  answer choice of every (example, template) is scored by its log-likelihood, the highest wins.

Mixtures: ``t0_heldin_<category>`` / ``t0_heldin`` (training: the ``t0_<d>`` tasks), ``t0_heldin_<category>
_eval`` / ``t0_heldin_eval`` (evaluation: ``_rank`` for choice datasets, generation otherwise),
``t0_heldout_<category>_rank`` / ``t0_heldout_rank`` and ``t0_all_eval`` (held-in and held-out).

Splits. ``test`` is the labelled split T0 reports on (optionally its first ``test_examples``).
Held-in ``validation`` is carved from TFDS ``train``: an example is *reserved* when
``FarmHash64("<dataset>" + key) mod 10000 < reserve_bp`` (``key``: the example's grouping fields, so that
e.g. all questions about one paragraph fall on the same side; ``reserve_bp`` reserves about 2,000
examples, at most 10%); ``validation`` is the first ``validation_examples`` reserved examples and
``train`` is every example that is not reserved, so experts never see a validation example. Held-out
``validation`` is the first ``validation_examples`` of a labelled split T0 does not report (held-out
datasets are never trained on).

Usage::

    from mergejax.tasks import t0
    t0.register()                # the synthetic suite's SentencePiece vocabulary by default
    # TFDS_DATA_DIR=gs://bucket/tensorflow_datasets, prepared with `tfds build imdb_reviews/plain_text` etc.

Registration is lazy (nothing is read until a dataset is iterated) and thread-safe; nothing is ever
downloaded (the data must be prepared with ``tfds build`` first).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import seqio
import tensorflow as tf

from mergejax.tasks import categories
from mergejax.tasks import metrics
from mergejax.tasks import per_vocabulary
from mergejax.tasks import preprocessors
from mergejax.tasks import registry
from mergejax.tasks import t0_prompts
from mergejax.tasks import t0_templates
from mergejax.tasks import vocab
from mergejax.tasks.categories import RANK_SUFFIX

PREFIX = "t0_"
# The same names as the synthetic suite's categories (mergejax.tasks.HELDIN_CATEGORIES), so a study
# treats both suites alike.
HELDIN_CATEGORIES = ("mcqa", "extractive_qa", "closed_book_qa", "sentiment", "topic", "struct_to_text",
                     "summarization", "paraphrase")
HELDOUT_CATEGORIES = ("sentence_completion", "nli", "coreference", "word_sense")
RANK, ROUGE, SQUAD = "rank", "rouge", "squad"

RESERVE_EXAMPLES = 2000  # held-in: about this many train examples are reserved for validation
RESERVE_MAX_BP = 1000  # ... but at most 10% (in basis points)
HASH_BUCKETS = 10000


# -- fields: the TFDS copy of a dataset -> promptsource's (Hugging Face) field names -------------------
Fields = Callable[[Mapping[str, Any]], dict[str, Any]]


def _same(ex):
  return dict(ex)


def _ag_news(ex):  # Hugging Face's ag_news text is "<title> <description>"
  return {**ex, "text": tf.strings.join([ex["title"], ex["description"]], separator=" ")}


# trec's coarse classes: TFDS's ClassLabel order -> Hugging Face's (promptsource's answer choices).
TREC_COARSE_TFDS = ("DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC")
TREC_COARSE_HF = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")


def _trec(ex):
  perm = tf.constant([TREC_COARSE_HF.index(c) for c in TREC_COARSE_TFDS], tf.int64)
  return {"text": ex["text"], "coarse_label": tf.gather(perm, tf.cast(ex["label-coarse"], tf.int64))}


ARC_LETTERS = ("A", "B", "C", "D", "E")  # TFDS ai2_arc's ClassLabel names (it maps "1".."5" to them)


def _arc(ex):
  letters = tf.constant(ARC_LETTERS)
  return {"question": ex["question"], "answerKey": tf.gather(letters, ex["answerKey"]),
          "choices": {"text": ex["choices"]["text"], "label": tf.gather(letters, ex["choices"]["label"])}}


def _hellaswag(ex):
  return {**ex, "ctx": ex["context"]}


def _anli(ex):
  return {**ex, "premise": ex["context"]}


def _winogrande(ex):  # Hugging Face's `answer` is "1" or "2"
  return {**ex, "answer": tf.strings.as_string(tf.cast(ex["label"], tf.int64) + 1)}


def _story_cloze(ex):
  return {"context": ex["context"], "sentence_quiz1": ex["endings"][0], "sentence_quiz2": ex["endings"][1],
          "answer_right_ending": ex["label"]}


@dataclasses.dataclass(frozen=True)
class T0Dataset:
  """One dataset of the suite.

  Attributes:
    name: short name (tasks ``t0_<name>`` / ``t0_<name>_rank``).
    tfds_name: TFDS name, config and version.
    category: the paper's category (held-in: an expert's; held-out: T0's).
    heldin: held-in (trained on by experts) or held-out.
    scoring: "rank" (rank classification), "rouge" or "squad" (generation).
    test_split: the TFDS split our ``test`` reads (T0's reported split; labelled).
    t0: the dataset's name and training mixture in T0's datasets.csv, e.g. "imdb (BASE)".
    fields: TFDS example -> promptsource's field names.
    templates_key: its templates in :data:`mergejax.tasks.t0_templates.TEMPLATES` (default: ``name``).
    train_size: examples in TFDS ``train`` (held-in; sets how many are reserved for validation).
    key_fields: held-in: the fields that group examples for the validation carve (all: every field).
    validation_split: held-out: the TFDS split our ``validation`` slices.
    manual: TFDS needs a manual download.
  """

  name: str
  tfds_name: str
  category: str
  heldin: bool
  scoring: str
  test_split: str
  t0: str
  fields: Fields = _same
  templates_key: str = ""
  train_size: int = 0
  key_fields: tuple[str, ...] = ()
  validation_split: str = "train"
  manual: bool = False

  @property
  def templates(self) -> tuple[t0_prompts.Template, ...]:
    return t0_templates.TEMPLATES[self.templates_key or self.name]

  @property
  def source(self) -> str:
    """promptsource's template file for this dataset."""
    return f"promptsource/templates/{t0_templates.SOURCES[self.templates_key or self.name]}/templates.yaml"

  @property
  def task_name(self) -> str:
    """The inputs -> target task (held-in; training and generation metrics)."""
    return f"{PREFIX}{self.name}"

  @property
  def rank_task_name(self) -> str:
    return f"{PREFIX}{self.name}{RANK_SUFFIX}"

  @property
  def eval_task_name(self) -> str:
    """The task the suites evaluate: rank classification for choice datasets, generation otherwise."""
    return self.rank_task_name if self.scoring == RANK else self.task_name

  @property
  def reserve_bp(self) -> int:
    """Held-in: basis points of TFDS train reserved for validation (about RESERVE_EXAMPLES, at most 10%)."""
    return min(RESERVE_MAX_BP, math.ceil(RESERVE_EXAMPLES * HASH_BUCKETS / self.train_size))


def _heldin(name, tfds_name, category, scoring, test_split, t0, train_size, key_fields, fields=_same):
  return T0Dataset(name, tfds_name, category, True, scoring, test_split, t0, fields, train_size=train_size,
                   key_fields=key_fields)


def _heldout(name, tfds_name, category, test_split, validation_split, t0, fields=_same, templates_key="",
             manual=False):
  return T0Dataset(name, tfds_name, category, False, RANK, test_split, t0, fields, templates_key,
                   validation_split=validation_split, manual=manual)


DATASETS: tuple[T0Dataset, ...] = (
    # Held-in (2 per category). T0's BASE mixture has no TFDS copy of its closed-book QA (kilt_tasks/hotpotqa,
    # wiki_qa) or extractive QA (adversarial_qa, duorc, ropes, quoref) datasets; those categories take T0+'s
    # and T0++'s. train_size: TFDS train examples (T0's datasets.csv).
    _heldin("cosmos_qa", "cosmos_qa:1.0.0", "mcqa", RANK, "validation", "cosmos_qa (BASE)", 25262, ("context",)),
    _heldin("qasc", "qasc:0.1.0", "mcqa", RANK, "validation", "qasc (BASE)", 8134, ("question",)),
    _heldin("squad_v2", "squad/v2.0:3.0.0", "extractive_qa", SQUAD, "validation", "squad_v2 (GPT_EVAL)", 130319,
            ("context",)),
    _heldin("record", "super_glue/record:1.0.2", "extractive_qa", SQUAD, "validation", "super_glue/record (SGLUE)",
            100730, ("passage",)),
    _heldin("web_questions", "web_questions:1.0.0", "closed_book_qa", SQUAD, "test", "web_questions (GPT_EVAL)",
            3778, ("question",)),
    _heldin("arc_easy", "ai2_arc/ARC-Easy:1.0.0", "closed_book_qa", RANK, "test", "ai2_arc/ARC-Easy (GPT_EVAL)",
            2251, ("question",), _arc),
    _heldin("imdb", "imdb_reviews/plain_text:1.0.0", "sentiment", RANK, "test", "imdb (BASE)", 25000, ("text",)),
    _heldin("yelp_polarity", "yelp_polarity_reviews:0.2.0", "sentiment", RANK, "test",
            "yelp_review_full (BASE), binary", 560000, ("text",)),
    _heldin("ag_news", "ag_news_subset:1.0.0", "topic", RANK, "test", "ag_news (BASE)", 120000,
            ("title", "description"), _ag_news),
    _heldin("trec", "trec:1.0.0", "topic", RANK, "test", "trec (BASE)", 5452, ("text",), _trec),
    _heldin("common_gen", "gem/common_gen:1.1.0", "struct_to_text", ROUGE, "validation", "common_gen (BASE)", 67389,
            ("concepts",)),
    _heldin("wiki_bio", "wiki_bio:0.1.0", "struct_to_text", ROUGE, "test", "wiki_bio (BASE)", 582659,
            ("input_text",)),
    _heldin("cnn_dailymail", "cnn_dailymail:3.4.0", "summarization", ROUGE, "test", "cnn_dailymail/3.0.0 (BASE)",
            287113, ("article",)),
    _heldin("gigaword", "gigaword:1.2.0", "summarization", ROUGE, "test", "gigaword (BASE)", 3803957,
            ("document",)),
    _heldin("qqp", "glue/qqp:2.0.0", "paraphrase", RANK, "validation", "glue/qqp (BASE)", 363846,
            ("question1", "question2")),
    _heldin("paws", "paws_wiki/labeled_final_tokenized:1.1.0", "paraphrase", RANK, "test",
            "paws/labeled_final (BASE)", 49401, ("sentence1", "sentence2")),
    # Held-out (T0's do_eval=BASE).
    _heldout("copa", "super_glue/copa:1.0.2", "sentence_completion", "validation", "train", "super_glue/copa"),
    _heldout("hellaswag", "hellaswag:1.1.0", "sentence_completion", "validation", "train", "hellaswag",
             _hellaswag),
    _heldout("story_cloze", "story_cloze/2016:1.0.0", "sentence_completion", "validation", "test",
             "story_cloze/2016", _story_cloze, manual=True),
    _heldout("rte", "super_glue/rte:1.0.2", "nli", "validation", "train", "super_glue/rte"),
    _heldout("cb", "super_glue/cb:1.0.2", "nli", "validation", "train", "super_glue/cb"),
    _heldout("anli_r1", "anli/r1:0.1.0", "nli", "test", "validation", "anli (r1)", _anli, "anli"),
    _heldout("anli_r2", "anli/r2:0.1.0", "nli", "test", "validation", "anli (r2)", _anli, "anli"),
    _heldout("anli_r3", "anli/r3:0.1.0", "nli", "test", "validation", "anli (r3)", _anli, "anli"),
    _heldout("wsc", "super_glue/wsc.fixed:1.0.2", "coreference", "validation", "train", "super_glue/wsc.fixed"),
    _heldout("winogrande", "winogrande:1.2.0", "coreference", "validation", "train_xl",
             "winogrande/winogrande_xl", _winogrande),
    _heldout("wic", "super_glue/wic:1.0.2", "word_sense", "validation", "train", "super_glue/wic"),
)

_BY_NAME = {d.name: d for d in DATASETS}


def dataset(name: str) -> T0Dataset:
  if name not in _BY_NAME:
    raise KeyError(f"unknown T0 dataset {name!r}; known: {sorted(_BY_NAME)}")
  return _BY_NAME[name]


def heldin_datasets(category: str | None = None) -> list[T0Dataset]:
  """The 16 held-in datasets (or a category's two)."""
  if category is not None and category not in HELDIN_CATEGORIES:
    raise ValueError(f"unknown held-in category {category!r}; expected one of {HELDIN_CATEGORIES}")
  return [d for d in DATASETS if d.heldin and category in (None, d.category)]


def heldout_datasets(category: str | None = None, *, story_cloze: bool = False) -> list[T0Dataset]:
  """The held-out datasets (StoryCloze only when asked for)."""
  if category is not None and category not in HELDOUT_CATEGORIES:
    raise ValueError(f"unknown held-out category {category!r}; expected one of {HELDOUT_CATEGORIES}")
  return [d for d in DATASETS if not d.heldin and category in (None, d.category)
          and (story_cloze or not d.manual)]


# -- examples: the validation carve, seeds, templates -----------------------------------------------------
def _leaves(x: Any, path: str = "") -> list[tuple[str, tf.Tensor]]:
  if isinstance(x, Mapping):
    return [kv for k in sorted(x) for kv in _leaves(x[k], f"{path}.{k}" if path else k)]
  return [(path, x)]


def example_key(example: Mapping[str, Any], fields: tuple[str, ...] = ()) -> tf.Tensor:
  """A canonical string of an example's ``fields`` (all when empty): each leaf as "path=value", lists
  joined with "\\x1e", leaves joined with "\\x1f"."""
  chosen = {k: example[k] for k in fields} if fields else example
  parts = []
  for path, t in _leaves(chosen):
    t = tf.convert_to_tensor(t)
    if t.dtype == tf.bool:
      t = tf.cast(t, tf.int32)
    if t.dtype != tf.string:
      t = tf.strings.as_string(t)
    if t.shape.rank:
      t = tf.strings.reduce_join(tf.reshape(t, [-1]), separator="\x1e")
    parts.append(tf.strings.join([path, t], separator="="))
  return tf.strings.reduce_join(tf.stack(parts), separator="\x1f")


def is_reserved(d: T0Dataset, example: Mapping[str, Any]) -> tf.Tensor:
  """Whether a TFDS train example of a held-in dataset is reserved for validation (never trained on)."""
  key = tf.strings.join([d.name, example_key(example, d.key_fields)], separator="\x1f")
  return tf.strings.to_hash_bucket_fast(key, HASH_BUCKETS) < d.reserve_bp


def render(d: T0Dataset, dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Raw TFDS examples -> one example per (example, template) the template applies to, with ``inputs``,
  ``targets``, ``choices`` (answer choices; empty for generation), ``references`` (acceptable answers)
  and ``template`` (its index in ``d.templates``)."""
  compiled = [t0_prompts.compile_template(t, f"{d.name}/{t.name}") for t in d.templates]

  @tf.autograph.experimental.do_not_convert
  def all_templates(ex):
    seed = tf.strings.to_hash_bucket_fast(example_key(ex), 2**31 - 1)
    fields = d.fields(ex)
    out = [fn(fields, seed) for fn in compiled]
    return {
        "inputs": tf.stack([o.inputs for o in out]),
        "targets": tf.stack([o.targets for o in out]),
        "choices": tf.ragged.stack([o.choices for o in out]),
        "references": tf.ragged.stack([o.references for o in out]),
        "template": tf.range(len(out), dtype=tf.int64),
        "valid": tf.stack([o.valid for o in out]),
    }

  @tf.autograph.experimental.do_not_convert
  def rows(r):
    keep = tf.where(r.pop("valid"))[:, 0]
    return tf.data.Dataset.from_tensor_slices({k: tf.gather(v, keep) for k, v in r.items()})

  return dataset.map(all_templates, num_parallel_calls=tf.data.AUTOTUNE).flat_map(rows)


def _with_label(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Rendered choice examples -> ``label``: the first choice equal to the target (T0: ``is_correct`` is
  ``choice == target``; a target equal to several choices marks the first)."""
  @tf.autograph.experimental.do_not_convert
  def add(ex):
    hit = tf.where(tf.equal(ex["choices"], ex["targets"]))[:, 0]
    return {**ex, "label": hit[0]}
  return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def render_preprocessor(dataset: tf.data.Dataset, *, name: str) -> tf.data.Dataset:
  """seqio preprocessor: :func:`render` for the dataset ``name``."""
  return render(_BY_NAME[name], dataset)


class TfdsSource(seqio.TfdsDataSource):
  """A T0 dataset's TFDS source, read-only (nothing is downloaded or prepared here).

  For a held-in dataset our ``train`` and ``validation`` both read TFDS ``train``: ``train`` keeps the
  examples that are not reserved, ``validation`` the first ``validation_examples`` reserved ones. Sizes are
  unknown (None) where TFDS has no split metadata (as under ``tfds.testing.mock_data``) or a split is
  filtered; seqio then skips its in-memory cache.
  """

  def __init__(self, d: T0Dataset, *, validation_examples: int, test_examples: int | None,
               tfds_data_dir: str | None):
    test = d.test_split + (f"[:{int(test_examples)}]" if test_examples else "")
    if d.heldin:
      splits = {"train": "train", "validation": "train", "test": test}
    else:
      splits = {"validation": f"{d.validation_split}[:{int(validation_examples)}]", "test": test}
    super().__init__(d.tfds_name, tfds_data_dir=tfds_data_dir, splits=splits, read_only=True)
    self.t0_dataset = d
    self.validation_examples = int(validation_examples)

  def get_dataset(self, split: str | None = None, shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, **kwargs) -> tf.data.Dataset:
    d = self.t0_dataset
    try:
      ds = super().get_dataset(split, shuffle, seed, shard_info, **kwargs)
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
      raise ValueError(f"T0 dataset {d.name}: TFDS {d.tfds_name} is not prepared in the TFDS data dir "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); run `tfds build "
                       f"{d.tfds_name.split(':')[0]}` and set TFDS_DATA_DIR (docs/TASKS.md)") from None
    if d.heldin and split == "train":
      return ds.filter(lambda ex: tf.logical_not(is_reserved(d, ex)))
    if d.heldin and split == "validation":
      return ds.filter(lambda ex: is_reserved(d, ex)).take(self.validation_examples)
    return ds

  def num_input_examples(self, split: str) -> int | None:
    if self.t0_dataset.heldin and split in ("train", "validation"):
      return None
    try:
      return super().num_input_examples(split)
    except (KeyError, AssertionError, FileNotFoundError):
      return None


# -- registration -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Settings:
  """What the registered tasks read: vocabulary, split sizes, data directory, StoryCloze or not."""

  vocabulary: str
  validation_examples: int = 256
  test_examples: int | None = None
  tfds_data_dir: str | None = None
  story_cloze: bool = False


_SETTINGS: Settings | None = None


def default_vocabulary() -> seqio.Vocabulary:
  return vocab.get_vocabulary()


def _template_names(d: T0Dataset) -> tuple[str, ...]:
  return tuple(t.name for t in d.templates)


def _metric(d: T0Dataset, fn) -> Callable:
  return functools.partial(fn, template_names=_template_names(d))


def task_names(*, story_cloze: bool = False) -> list[str]:
  """Every task :func:`register` adds."""
  names = []
  for d in DATASETS:
    if d.manual and not story_cloze:
      continue
    if d.heldin:
      names.append(d.task_name)
    if d.scoring == RANK:
      names.append(d.rank_task_name)
  return names


def mixture_names() -> list[str]:
  """Every mixture :func:`register` adds."""
  names = [f"{PREFIX}heldin", f"{PREFIX}heldin_eval", f"{PREFIX}heldout_rank", f"{PREFIX}all_eval"]
  names += [f"{PREFIX}heldin_{c}" for c in HELDIN_CATEGORIES] + [f"{PREFIX}heldin_{c}_eval" for c in HELDIN_CATEGORIES]
  return names + [f"{PREFIX}heldout_{c}_rank" for c in HELDOUT_CATEGORIES]


def _unregister() -> None:
  """Removes every task and mixture named ``t0_*`` (ours, including per-vocabulary copies)."""
  for m in [m for m in seqio.MixtureRegistry.names() if m.startswith(PREFIX)]:
    seqio.MixtureRegistry.remove(m)
  for t in [t for t in seqio.TaskRegistry.names() if t.startswith(PREFIX)]:
    seqio.TaskRegistry.remove(t)


def register(vocabulary: seqio.Vocabulary | None = None, *, validation_examples: int = 256,
             test_examples: int | None = None, tfds_data_dir: str | None = None, story_cloze: bool = False,
             overwrite: bool = False) -> list[str]:
  """Registers the T0 tasks and mixtures (module docstring); returns the task names.

  Calling it again with the same settings does nothing; with other settings it raises unless
  ``overwrite`` (which also drops the per-vocabulary copies of the old tasks). Thread-safe.

  Args:
    vocabulary: tokenizer for inputs and targets (default: the synthetic suite's SentencePiece; any
      checkpoint's own: :func:`mergejax.tasks.per_vocabulary.with_vocabulary`).
    validation_examples: size of our ``validation`` split per dataset.
    test_examples: read only the first this many examples of the reported split (None: all).
    tfds_data_dir: where prepared TFDS data lives (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    story_cloze: include StoryCloze 2016 (needs a manual download) in the held-out tasks.
    overwrite: re-register with these settings.
  """
  global _SETTINGS
  vocabulary = vocabulary if vocabulary is not None else default_vocabulary()
  if validation_examples < 1 or (test_examples is not None and test_examples < 1):
    raise ValueError(f"t0.register: validation_examples ({validation_examples}) and test_examples "
                     f"({test_examples}) must be positive")
  settings = Settings(per_vocabulary.vocabulary_tag(vocabulary), int(validation_examples),
                      None if test_examples is None else int(test_examples), tfds_data_dir, bool(story_cloze))
  with registry.LOCK:  # every remove-then-add on seqio's registries at once (see registry.LOCK)
    if _SETTINGS is not None and not overwrite:
      if settings != _SETTINGS:
        raise ValueError(f"the T0 tasks are registered with {_SETTINGS}; registering them with {settings} "
                         "needs overwrite=True")
      return task_names(story_cloze=_SETTINGS.story_cloze)
    _unregister()
    _register(vocabulary, settings)
    _SETTINGS = settings
    return task_names(story_cloze=story_cloze)


def ensure_registered(tfds_data_dir: str | None = None) -> Settings:
  """Registers the tasks with the default settings unless they are registered; a ``tfds_data_dir`` other
  than the registered one raises. Returns the settings in force."""
  with registry.LOCK:  # every remove-then-add on seqio's registries at once (see registry.LOCK)
    if _SETTINGS is None:
      register(tfds_data_dir=tfds_data_dir)
    elif tfds_data_dir is not None and tfds_data_dir != _SETTINGS.tfds_data_dir:
      raise ValueError(f"the T0 tasks read TFDS data from {_SETTINGS.tfds_data_dir or '$TFDS_DATA_DIR'}, not "
                       f"{tfds_data_dir}: call mergejax.tasks.t0.register(tfds_data_dir=..., overwrite=True)")
    return _SETTINGS


def registered_settings() -> Settings | None:
  return _SETTINGS


def _register(vocabulary: seqio.Vocabulary, s: Settings) -> None:
  feats = {"inputs": seqio.Feature(vocabulary, add_eos=False), "targets": seqio.Feature(vocabulary, add_eos=True)}
  tokenize = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
  generation_metric = {ROUGE: metrics.template_rouge, SQUAD: metrics.template_squad,
                       RANK: metrics.template_exact_match}
  for d in DATASETS:
    if d.manual and not s.story_cloze:
      continue
    source = TfdsSource(d, validation_examples=s.validation_examples, test_examples=s.test_examples,
                        tfds_data_dir=s.tfds_data_dir)
    render_d = functools.partial(render_preprocessor, name=d.name)
    if d.heldin:
      registry.add_task(d.task_name, source=source, output_features=feats, preprocessors=[render_d] + tokenize,
                        postprocess_fn=metrics.template_references_postprocessor,
                        metric_fns=[_metric(d, generation_metric[d.scoring])])
      categories.register_category(d.task_name, d.category)
    if d.scoring == RANK:
      registry.add_task(d.rank_task_name, source=source, output_features=feats,
                        preprocessors=[render_d, _with_label,
                                       functools.partial(preprocessors.rank_classification, keep=("template",))]
                        + tokenize,
                        postprocess_fn=metrics.template_rank_postprocessor,
                        metric_fns=[_metric(d, metrics.template_rank_accuracy)])
      categories.register_category(d.rank_task_name, d.category)

  heldin = heldin_datasets()
  heldout = heldout_datasets(story_cloze=s.story_cloze)
  for c in HELDIN_CATEGORIES:
    registry.add_mixture(f"{PREFIX}heldin_{c}", [d.task_name for d in heldin if d.category == c])
    registry.add_mixture(f"{PREFIX}heldin_{c}_eval", [d.eval_task_name for d in heldin if d.category == c])
  registry.add_mixture(f"{PREFIX}heldin", [d.task_name for d in heldin])
  registry.add_mixture(f"{PREFIX}heldin_eval", [d.eval_task_name for d in heldin])
  for c in HELDOUT_CATEGORIES:
    registry.add_mixture(f"{PREFIX}heldout_{c}_rank", [d.rank_task_name for d in heldout if d.category == c])
  registry.add_mixture(f"{PREFIX}heldout_rank", [d.rank_task_name for d in heldout])
  registry.add_mixture(f"{PREFIX}all_eval", [d.eval_task_name for d in heldin] + [d.rank_task_name for d in heldout])


def task_categories(*, story_cloze: bool = False) -> dict[str, str]:
  """Task name -> category for every T0 task."""
  out = {}
  for d in DATASETS:
    if d.manual and not story_cloze:
      continue
    if d.heldin:
      out[d.task_name] = d.category
    if d.scoring == RANK:
      out[d.rank_task_name] = d.category
  return out


def tfds_names(*, story_cloze: bool = False) -> dict[str, str]:
  """Dataset name -> TFDS name (what ``tfds build`` must prepare)."""
  return {d.name: d.tfds_name for d in DATASETS if story_cloze or not d.manual}
