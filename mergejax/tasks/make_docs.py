"""Writes docs/TASKS.md: the suite's design and every task with one example (validation split).

  python -m mergejax.tasks.make_docs --out=docs/TASKS.md
"""

from __future__ import annotations

import os
import pathlib

from absl import app, flags

from mergejax import files
from mergejax.tasks import generators
from mergejax.tasks import splits
from mergejax.tasks import t0
from mergejax.tasks import t0_templates

_HEADER = """# The synthetic T0-like task suite (`mergejax.tasks`)

mergejax ships a miniature replica of the T0 world of "What Matters for Model Merging at Scale?"
(Yadav et al. 2024) so the whole study runs offline: a generated world of people, cities, animals and
objects; a pretraining corpus about it; 8 held-in categories x 2 datasets, 4 held-out categories
(7 datasets), and an instruction-tuning mixture (the Flan analog). Everything is a seqio Task or
Mixture over `seqio.FunctionDataSource`, generated in memory, deterministic given a seed. The real
T0 tasks over TFDS (`mergejax.tasks.t0`) are the last section of this page.

```python
import seqio
from mergejax import tasks                  # registers every Task and Mixture (idempotent)

tasks.configure(seed=0, num_train=2000, num_validation=64, num_test=128)   # optional; these are the defaults
                                           # (held-out tasks: 2 x num_validation)
tasks.heldin_tasks("sentiment")            # ['mj_sent_review', 'mj_sent_stars']
tasks.heldout_tasks()                      # the 7 held-out tasks
ds = seqio.get_mixture_or_task("mj_heldin_sentiment").get_dataset(
    {"inputs": 96, "targets": 24}, split="train", shuffle=True, seed=0)
```

## Names

| Name | What |
|---|---|
| `mj_pretrain` | the pretraining corpus (task `mj_corpus`): `inputs` = "", `targets` = a document |
| `mj_instruct` | the instruction tasks (the Flan analog), disjoint from held-in and held-out; instruction tuning mixes in the corpus |
| `mj_heldin_<category>`, `mj_heldin` | held-in tasks of one category (2) / all 16: expert and multitask training, generation metrics |
| `mj_heldout_<category>`, `mj_heldout` | held-out tasks of one category / all 7 |
| `<task>_rank`, `mj_heldin[_<category>]_rank`, `mj_heldout[_<category>]_rank` | T0 rank classification: one example per answer choice, scored with `score_fn`, metric `accuracy` |

Every task has splits `train`, `validation`, `test`; raw examples carry `inputs`, `targets`,
`choices` (list of strings; empty for generation-only tasks) and `label` (index of the right
choice, -1 if none). Output features: `inputs` (no EOS) and `targets` (EOS appended), both with
the suite's SentencePiece vocabulary. Plain tasks report `exact_match`, `f1` (token F1) and
`rouge_l` (`mergejax/tasks/metrics.py`); `_rank` tasks report `accuracy` (in percent).
Every held-in and held-out task is a choice task, so held-in and held-out scores can all be
rank-classification accuracies, as in T0's evaluation; the plain variants allow generation metrics.

## Design

* **World** (`facts.py`): 20 people (`facts.NUM_PEOPLE`; 10 female and 10 male names drawn by the
  seed from 40) each with a city, job, pet, favorite color, favorite food and best friend, few
  enough that the tiny default models can memorize their facts; 16 cities in 4 countries, each with a landmark and
  weather; 16 animals (sound, size, habitat, diet); 16 objects (material, size, use); 12
  situation -> need -> action scripts (had skipped lunch -> hungry -> ate a big meal); 8 ambiguous words with two senses each,
  each sense with a gloss and 6 cue words (bat: "an animal" with cave, wings, insects, ...; "a stick
  for games" with ball, coach, glove, ...; `facts.SENSES`).
  The seed decides the relations; the lexicon is fixed, so one vocabulary serves every seed.
* **Corpus** (`mj_corpus`): short documents of plain sentences stating the facts above, pronouns
  by gender (stories and opinions about all 40 names), scripts as short stories (situation -> need,
  need -> action, and situation -> action; never action -> cause, which only instruction tuning
  teaches), ambiguous words beside cue words of one sense in the corpus's own sentence frames (two
  sentences of one sense, or one of each sense, with the sense named; "a bat that goes with the cave
  or the wings is an animal."), opinions and antonyms. It teaches everything the held-out tasks need; `tests/test_tasks.py` checks it.
* **Held-in** (T0's 8 training categories, 2 datasets each with different generators and
  templates): answers come from the input (extractive QA, sentiment, topic, summarization,
  struct-to-text, paraphrase) or from the world's facts (multiple-choice and closed-book QA).
  2 to 16 answer choices (chance 6-50%); the format of each is new to a base model. Each dataset
  mixes easy items (one cue decides) with hard ones (a span to copy from the input, a pronoun to
  resolve, a contrast to read), so experts of both sizes land between chance and the ceiling.
  Six of them train a skill that a held-out task needs (`generators.FEEDS`, the world's causal
  design, docs/WORLD.md): `mj_mcqa_social` the scripts (story endings, cause and effect,
  entailment), `mj_exqa_quoref` pronoun resolution by gender (`mj_coref_pronoun`),
  `mj_cbqa_sounds` animal sounds (`mj_coref_blank`), `mj_cbqa_facts` the people's facts
  (`mj_nli_cb`), `mj_topic_news` and `mj_topic_ask` the topic of word-sense cue words
  (`mj_wsd_gloss`: the two senses of every ambiguous word belong to different topics).
* **Held-out** (sentence completion, NLI, coreference, word sense; 7 datasets): they share no
  template or generator with held-in or instruction tasks (tested: no template 4-gram in common)
  but need the corpus's knowledge (scripts, gender of names, animal sounds, word senses) and, for
  the cause half of `mj_sc_copa` and for `mj_nli_entail` (which of two hypotheses an action
  entails), the action -> need direction of the scripts, which the corpus never states and
  instruction tuning teaches (`mj_it_why`). `mj_nli_cb` is CommitmentBank-like: the answer
  (yes / no / maybe) is the speaker's commitment to an embedded fact about a person, set by the
  phrase that embeds it (`facts.COMMIT_CUES`: "found that" -> yes, "said it is wrong that" -> no,
  "wonders whether" -> maybe), which instruction tuning teaches over animals and objects in other
  templates (`mj_it_commit`). `mj_wsd_gloss` is word sense disambiguation in its classic
  gloss-selection form ("the cave reminded ella of the bat. which meaning of bat fits this sentence,
  a stick for games or an animal?") instead of T0's WiC (two sentences, same meaning? yes / no):
  the two-span "same or different" judgement is not learned by models of these sizes, not even in
  distribution (docs/WORLD.md); the sense is set by a cue word that the corpus and
  `mj_it_sense` associate with it, in sentence frames and a question that neither uses (tested: no
  held-out sentence occurs in training data). Real T0 data keeps WiC (`mergejax/tasks/t0.py`,
  `super_glue/wic`). Held-out validation splits are twice as large as the
  others (`SuiteConfig.heldout_validation_factor`; 128 examples per task at the defaults, test 128).
* **Instruction tuning** (`mj_instruct` and corpus documents): like Flan-v2 without the T0 tasks,
  it holds *other* datasets of the held-out categories (`mj_it_nli` about animals with
  yes/no/maybe, `mj_it_commit` (does a reported statement about animals or objects commit to its
  fact? yes/no/maybe by the commitment phrase, sampled at 4x the rate of the others:
  `registry.INSTRUCT_RATES`), `mj_it_coref` in a "X thanked Y because she ..." format and
  `mj_it_who` in two-person scenes, `mj_it_complete` finishing sentences about objects and
  animals, `mj_it_sense` glossing an ambiguous word by two cue words of its sense, in its own sentence frames,
  sampled at 2x), explicit questions over the corpus's knowledge in new formats (gender of a name,
  animal sounds, how a situation makes someone feel, why someone acted, right/wrong statements,
  reversing a word list), and, as Flan holds T0-like task types from datasets other than T0's, one
  task in the format of each held-in category over other data (`generators.IT_FORMATS`: listed
  options, an answer copied from a passage, trivia, sentiment and topic labels, data to text, titles,
  same-meaning judgements; never a held-in dataset; sampled at 2x), three quarters of their examples
  in the prompt frames of the held-in datasets filled with other data (as Flan applies T0's templates
  to other datasets), so the instruction-tuned base starts ahead of the pretrained one on held-in formats. Instruction tuning mixes corpus documents into its rows
  (rehearsal, so that it adds skills without erasing the pretrained knowledge; the share is
  `mergejax.training.recipes.INSTRUCT_REPLAY_SHARE`). This is what should make the instruction-tuned base
  better than the pretrained one zero-shot on held-out tasks. Its choice tasks are label-balanced
  in every split, like the evaluation tasks (true facts are rarer than false ones, so an unbalanced
  yes/no task would teach a constant "no").
* **Splits** (`splits.py`): each candidate example goes to a split by crc32 of its text (0/16
  test, 1/16 validation, rest train) and is deduplicated, so splits never share an example (and
  for non-corpus tasks never share an input). Tasks over a finite space of facts (closed-book QA,
  some instruction tasks) have fewer examples than requested; every held-in and held-out task has
  at least 40 test examples at the defaults.
* **Lengths**: inputs <= 61 tokens (`mj_mcqa_social`; `mj_it_sense` 60) and targets / choices
  <= 18 tokens (with EOS; `mj_sum_dialog`); corpus documents <= 60 (tests enforce 96 / 24 / 64), so
  `{"inputs": 64, "targets": 64}` covers every task. The world's recipes train with targets of 32
  tokens, which cuts the longer corpus documents (docs/WORLD.md, "Open issues").
* **Vocabulary** (`data/mj.model`): a 1,024-piece BPE SentencePiece model (pad 0, EOS 1, UNK 2,
  no BOS) trained on the corpus and the task texts of the suite's first release, and kept fixed since
  (tasks changed later reuse its pieces; tests check that no task text maps to UNK), so worlds built
  at different versions share one tokenization. `python -m mergejax.tasks.build_vocab
  --out=PATH --vocab_size=1024` trains one from the current suite (deterministic; about 5 s): a
  different model, and a different world if shipped. `mergejax.tasks.get_vocabulary()` returns it as a
  `seqio.SentencePieceVocabulary`.

Regenerate this page with `python -m mergejax.tasks.make_docs --out=docs/TASKS.md`.

How learnable each task is, measured: docs/BENCHMARKS.md ("Is every task learnable?").
"""

_GROUPS = (("heldin", "Held-in tasks"), ("heldout", "Held-out tasks"),
           ("instruct", "Instruction-tuning tasks (`mj_instruct`)"), ("pretrain", "Pretraining corpus (`mj_pretrain`)"))


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def render(cfg: splits.SuiteConfig | None = None) -> str:
  cfg = cfg or splits.SuiteConfig()
  out = [_HEADER]
  for group, title in _GROUPS:
    out.append(f"\n## {title}\n")
    for spec in generators.SPECS.values():
      if spec.group != group:
        continue
      n = {s: len(splits.examples(spec.name, s, cfg)) for s in splits.SPLITS}
      ex = splits.examples(spec.name, "validation", cfg)[0]
      kind = f"{len(ex.choices)} choices" if spec.is_choice else "generation"
      rank = f", `{spec.name}_rank`" if spec.is_choice else ""
      cat = "" if spec.category in ("instruct", "pretrain") else f" ({spec.category})"
      out.append(f"### `{spec.name}`{rank}{cat}\n")
      out.append(f"{spec.description} {kind}; train/validation/test = {n['train']}/{n['validation']}/{n['test']}.\n")
      if ex.inputs:
        out.append(f"- inputs: `{_cell(ex.inputs)}`")
      out.append(f"- targets: `{_cell(ex.targets)}`")
      if ex.choices:
        out.append(f"- choices: {', '.join(f'`{_cell(c)}`' for c in ex.choices)} (label {ex.label})")
      out.append("")
  out.append(render_t0())
  return "\n".join(out) + "\n"


_T0_HEADER = """
## The real T0 suite (`mergejax.tasks.t0`)

The datasets of T0 (Sanh et al., 2022) over TFDS, for training experts and evaluating merges as the
paper does. Held-in: the paper's 8 categories, two datasets each from T0's training mixtures
(`datasets.csv` of bigscience-workshop/t-zero: `BASE` is T0's, `GPT_EVAL` T0+'s, `SGLUE` T0++'s; T0's
`BASE` extractive and closed-book QA datasets have no TFDS copy, so those categories take T0+ and T0++
datasets). Held-out: T0's held-out evaluation datasets; StoryCloze only with `story_cloze=True`, since
TFDS needs a manual download for it.

```python
from mergejax.tasks import t0
t0.register()                       # tasks and mixtures below, tokenized with the synthetic suite's vocabulary
t0.register(my_vocab, validation_examples=512, story_cloze=True, overwrite=True)   # other settings
```

Registration is lazy (nothing is read until a dataset is iterated), takes `registry.LOCK` like every
registration in mergejax, and refuses to change settings silently (`overwrite=True` re-registers).
Nothing is downloaded. A checkpoint with its own tokenizer evaluates them through
`mergejax.tasks.per_vocabulary.with_vocabulary("t0_all_eval", vocab)`.

Tasks (`<d>` a dataset of the table):

* `t0_<d>` (held-in): inputs -> target under every template; splits `train` (what an expert trains on),
  `validation`, `test`. Metrics: ROUGE-1/2/L (summarization, structure-to-text; Google's `rouge_score` with
  Porter stemming, best over references), SQuAD F1 and exact match (extractive and closed-book QA, best over
  every acceptable answer), exact match of the generated answer (choice datasets).
* `t0_<d>_rank` (choice datasets): rank classification as T0 evaluates: every answer choice of every
  (example, template) is scored by its summed log-likelihood; the highest wins.

Every metric is computed per template and summarized as T0 reports it: the median over templates under
the metric's own name (`accuracy`, `rougeL`, `f1`: the task's score), the mean as `<metric>_mean`, each
template's value as `<metric>/<template name>`, and `templates` (how many had examples). Per-example
correctness (`EvalResults.correct`) counts each (example, template) row as one example.

Mixtures: `t0_heldin_<category>` and `t0_heldin` (expert and multitask training: the `t0_<d>` tasks at
equal rates, where T0 mixes in proportion to dataset size up to 500,000 examples; every template of an
example is a training example),
`t0_heldin_<category>_eval` and `t0_heldin_eval` (evaluation: `_rank` for choice datasets, generation
otherwise), `t0_heldout_<category>_rank` and `t0_heldout_rank` (`--config.mixtures=t0`), `t0_all_eval`.

**Splits.** `test` is the labelled split T0 reports on (`register(test_examples=N)` reads its first N).
Held-in `validation` is carved from TFDS `train`: an example is *reserved* when
`FarmHash64("<dataset>" + key) mod 10000 < reserve_bp`, where `key` is the example's grouping fields
(all questions about one passage fall on the same side) and `reserve_bp` reserves about 2,000 examples
(at most 10%); `validation` is the first `validation_examples` (default 256) reserved examples and
`train` is every unreserved one, so no expert ever trains on a validation example. Held-out `validation`
is the first `validation_examples` of a labelled split T0 does not report (nothing trains on held-out
datasets). Model selection reads `validation`, never `test`.
"""

_T0_DATA = """
**Real data.** Prepare the datasets once where the internet is reachable, then point `TFDS_DATA_DIR`
(or `--config.tfds_data_dir`, or `t0.register(tfds_data_dir=...)`) at the directory, e.g. a bucket:

```bash
for d in {names}; do
  tfds build $d --data_dir=gs://my-bucket/tensorflow_datasets
done
# StoryCloze: request the 2016 files from the dataset's authors, then
tfds build story_cloze/2016 --manual_dir=DIR --data_dir=gs://my-bucket/tensorflow_datasets
TFDS_DATA_DIR=gs://my-bucket/tensorflow_datasets mergejax-eval --checkpoint=PATH \\
  --config=configs/eval.py --config.mixtures=t0_all_eval --config.split=validation \\
  --config.inputs_length=512 --config.targets_length=128
```

A dataset that is not prepared fails on first use with one line naming it and the `tfds build` command.
The tests run this whole path (TFDS source, carve, templates, tokenization, rank classification,
generation, metrics, the evaluator) on `tfds.testing.mock_data` with fake examples built from each
builder's feature spec (`tests/test_t0.py`, `tests/t0_fakes.py`).

### Templates

Each template follows one of promptsource's original-task templates for the dataset (named by its
promptsource name and id in the table below; same fields, question, answer choices and target) in
mergejax's own words (`mergejax/tasks/t0_templates.py`; the template language is the Jinja subset of
`mergejax/tasks/t0_prompts.py`, checked against Jinja by `tests/test_t0_prompts.py`). `|||` separates the
inputs from the target; answer choices are listed after the prompt.
"""


def _code(text: str) -> str:
  """Template text on one line of markdown: newlines shown as ``\\n``."""
  return text.replace("\n", "\\n")


def _splits(d: t0.T0Dataset) -> str:
  if d.heldin:
    return f"train: `train` unreserved; validation: `train` reserved; test: `{d.test_split}`"
  return f"validation: `{d.validation_split}[:N]`; test: `{d.test_split}`"


def render_t0() -> str:
  """The real T0 suite's section: datasets, TFDS names, splits, templates."""
  out = [_T0_HEADER, "| category | dataset | evaluated as | TFDS name | splits | scoring | templates | T0 mixture |",
         "|---|---|---|---|---|---|---|---|"]
  for d in t0.DATASETS:
    group = "held-in" if d.heldin else "held-out"
    out.append(f"| {d.category} ({group}) | {d.name} | `{d.eval_task_name}` | `{d.tfds_name}` | {_splits(d)} | "
               f"{d.scoring} | {len(d.templates)} | {_cell(d.t0)} |")
  names = " ".join(n.split(":")[0] for n in t0.tfds_names().values())
  out.append(_T0_DATA.format(names=names))
  for key, templates in t0_templates.TEMPLATES.items():
    out.append(f"**{key}** (`promptsource/templates/{t0_templates.SOURCES[key]}`)\n")
    for t in templates:
      choices = f" Choices: `{_code(t.answer_choices)}`." if t.answer_choices else ""
      note = f" ({t.note})" if t.note else ""
      out.append(f"- {t.name.strip()} (`{t.id}`): `{_code(t.jinja)}`{choices}{note}")
    out.append("")
  return "\n".join(out) + "\n"


def write(path: str | os.PathLike) -> pathlib.Path:
  return files.atomic_write(path, render())


def main(argv):
  del argv
  print(f"wrote {write(flags.FLAGS.out)}")


if __name__ == "__main__":
  flags.DEFINE_string("out", "docs/TASKS.md", "Output markdown file.")
  app.run(main)
