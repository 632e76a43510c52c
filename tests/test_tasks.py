"""Behavioural tests of the synthetic T0-like suite (mergejax.tasks): registry, determinism, split
disjointness, sizes, lengths, rank classification and metrics through seqio."""

import collections
import re

import numpy as np
import pytest
import seqio

from mergejax import tasks
from mergejax.tasks import generators
from mergejax.tasks import metrics
from mergejax.tasks import registry
from mergejax.tasks import splits
from mergejax.tasks import facts
from mergejax.training import recipes

SMALL = splits.SuiteConfig(num_train=300, num_validation=16, num_test=32, num_pretrain=300)
EVAL_TASKS = [n for n, s in generators.SPECS.items() if s.group in ("heldin", "heldout")]


@pytest.fixture
def small_suite():
  old = splits.get_config()
  splits.configure(**{f: getattr(SMALL, f) for f in ("num_train", "num_validation", "num_test", "num_pretrain")})
  yield splits.get_config()
  splits.configure(**{f: getattr(old, f) for f in ("num_train", "num_validation", "num_test", "num_pretrain")})


def test_contract_names_and_categories():
  assert tasks.HELDIN_CATEGORIES == ("mcqa", "extractive_qa", "closed_book_qa", "sentiment", "topic",
                                 "struct_to_text", "summarization", "paraphrase")
  assert tasks.HELDOUT_CATEGORIES == ("sentence_completion", "nli", "coreference", "word_sense")
  for c in tasks.HELDIN_CATEGORIES:
    assert len(tasks.heldin_tasks(c)) == 2
  assert len(tasks.heldout_tasks()) == 7
  assert sum(len(tasks.heldout_tasks(c)) for c in tasks.HELDOUT_CATEGORIES) == 7
  mixtures = set(seqio.MixtureRegistry.names())
  expected = {"mj_pretrain", "mj_instruct", "mj_heldin", "mj_heldout", "mj_heldin_rank", "mj_heldout_rank"}
  for group, cats in (("heldin", tasks.HELDIN_CATEGORIES), ("heldout", tasks.HELDOUT_CATEGORIES)):
    expected |= {f"mj_{group}_{c}" for c in cats} | {f"mj_{group}_{c}_rank" for c in cats}
  assert expected <= mixtures
  heldin = {t.name for t in seqio.get_mixture_or_task("mj_heldin").tasks}
  heldout = {t.name for t in seqio.get_mixture_or_task("mj_heldout").tasks}
  instruct = {t.name for t in seqio.get_mixture_or_task("mj_instruct").tasks}
  assert len(heldin) == 16 and len(heldout) == 7 and len(instruct) >= 8
  assert not (heldin & heldout) and not (instruct & (heldin | heldout))
  trained = {t.name for t in seqio.get_mixture_or_task(recipes.mixture_name("instruction_tune")).tasks}
  assert trained == instruct | {"mj_corpus"}  # instruction tuning rehearses the corpus
  assert {t.name for t in seqio.get_mixture_or_task("mj_heldout_rank").tasks} == {t + "_rank" for t in heldout}
  for t in heldin | heldout:
    assert tasks.is_choice_task(t) and tasks.is_choice_task(t + "_rank")
  assert not tasks.is_choice_task("mj_it_copy")
  with pytest.raises(ValueError, match="unknown category"):
    tasks.heldin_tasks("nli")
  with pytest.raises(KeyError, match="unknown synthetic task"):
    tasks.is_choice_task("nope")


def test_registration_is_idempotent():
  n_tasks, n_mix = len(seqio.TaskRegistry.names()), len(seqio.MixtureRegistry.names())
  registry.register_all()
  import importlib
  importlib.reload(tasks)
  assert (len(seqio.TaskRegistry.names()), len(seqio.MixtureRegistry.names())) == (n_tasks, n_mix)


def test_vocabulary_shipped_and_round_trips():
  vocab = tasks.get_vocabulary()
  assert vocab.pad_id == 0 and vocab.eos_id == 1 and vocab.unk_id == 2
  assert 512 <= vocab.vocab_size <= 2048
  for name in generators.SPECS:  # the shipped model is fixed: every task's text, old or new, encodes without UNK
    for ex in splits.examples(name, "validation", SMALL)[:5]:
      for text in (ex.inputs, ex.targets) + ex.choices:
        ids = vocab.encode(text)
        assert 2 not in ids, text  # no unknown pieces
        assert vocab.decode(ids) == text


def test_generation_is_deterministic_and_seeded():
  a = {n: splits.examples(n, "test", SMALL) for n in generators.SPECS}
  splits.clear_cache()
  facts.make_world.cache_clear()
  b = {n: splits.examples(n, "test", SMALL) for n in generators.SPECS}
  assert a == b
  other = splits.SuiteConfig(**{**SMALL.__dict__, "seed": 1})
  assert facts.make_world(0) != facts.make_world(1)
  assert splits.examples("mj_cbqa_facts", "test", other) != a["mj_cbqa_facts"]


@pytest.mark.parametrize("name", list(generators.SPECS))
def test_splits_never_share_an_example(name):
  d = {s: splits.examples(name, s, SMALL) for s in splits.SPLITS}
  keys = {s: {(e.inputs, e.targets) for e in d[s]} for s in splits.SPLITS}
  for s in splits.SPLITS:
    assert len(keys[s]) == len(d[s]), f"{name}/{s} has duplicates"
  assert not keys["train"] & keys["validation"]
  assert not keys["train"] & keys["test"]
  assert not keys["validation"] & keys["test"]
  if generators.SPECS[name].group != "pretrain":  # the same question never appears in two splits
    inputs = {s: {e.inputs for e in d[s]} for s in splits.SPLITS}
    assert not (inputs["train"] & inputs["test"]) and not (inputs["train"] & inputs["validation"])


def test_counts_are_configurable(small_suite):
  for name in ("mj_sent_review", "mj_para_qqp", "mj_corpus"):
    assert len(tasks.examples(name, "validation")) == 16
    assert len(tasks.examples(name, "test")) == 32
  assert len(tasks.examples("mj_sent_stars", "validation")) == 15  # balanced over 5 labels
  # Held-out tasks get heldout_validation_factor (2) times the validation examples, the same test.
  assert len(tasks.examples("mj_sc_story", "validation")) == 32
  assert len(tasks.examples("mj_sc_story", "test")) == 32
  assert len(tasks.examples("mj_corpus", "train")) == 300
  assert len(tasks.examples("mj_sent_review", "train")) == 300
  # Default sizes: every held-in/held-out task has substantial eval splits.
  for name in EVAL_TASKS:
    assert len(splits.examples(name, "test", splits.SuiteConfig())) >= 40, name
  with pytest.raises(ValueError, match="unknown split"):
    tasks.examples("mj_sent_review", "dev")


@pytest.mark.parametrize("name", list(generators.SPECS))
def test_examples_are_well_formed_and_short(name):
  vocab = tasks.get_vocabulary()
  spec = generators.SPECS[name]
  exs = splits.examples(name, "validation", SMALL) + splits.examples(name, "train", SMALL)[:100]
  assert exs
  answers = collections.Counter()
  for ex in exs:
    assert len(vocab.encode(ex.inputs)) <= 96, ex.inputs
    max_targets = 64 if spec.group == "pretrain" else 24  # corpus documents are "targets" too
    assert len(vocab.encode(ex.targets)) + 1 <= max_targets, ex.targets
    if spec.is_choice:
      assert len(ex.choices) >= 2 and len(set(ex.choices)) == len(ex.choices), ex
      assert 0 <= ex.label < len(ex.choices) and ex.choices[ex.label] == ex.targets
      assert all(len(vocab.encode(c)) + 1 <= 24 for c in ex.choices)
      answers[ex.label] += 1
    else:
      assert ex.choices == () and ex.label == -1
  if spec.is_choice:  # the right answer is not always in the same position
    assert len(answers) >= 2, (name, answers)


def test_eval_tasks_are_label_balanced():
  """A constant answer scores chance: every label is equally frequent in each eval split."""
  for name in EVAL_TASKS:
    for split in ("validation", "test"):
      exs = splits.examples(name, split, splits.SuiteConfig())
      if len({len(e.choices) for e in exs}) == 1:
        counts = collections.Counter(e.label for e in exs)
        assert len(counts) == len(exs[0].choices) and len(set(counts.values())) == 1, (name, split, counts)


def test_instruction_tasks_are_label_balanced_in_training():
  """Instruction tuning teaches skills, not a constant answer: in every IT choice task with a fixed
  number of choices, each label is equally frequent in train (true facts are rarer than false ones,
  so an unbalanced yes / no task would teach "no")."""
  for name in tasks.instruct_tasks():
    exs = splits.examples(name, "train", SMALL)
    if tasks.is_choice_task(name) and len({len(e.choices) for e in exs}) == 1:
      counts = collections.Counter(e.label for e in exs)
      assert len(counts) == len(exs[0].choices) and len(set(counts.values())) == 1, (name, counts)


def test_world_has_few_gender_balanced_people():
  """Few enough people that tiny models can memorize their facts; friends are among them."""
  w = facts.make_world(0)
  names = [p.name for p in w.people]
  assert len(set(names)) == len(names) == facts.NUM_PEOPLE < len(facts.FEMALE + facts.MALE)
  assert sum(n in facts.FEMALE for n in names) == facts.NUM_PEOPLE // 2
  assert {p.friend for p in w.people} == set(names) and all(p.friend != p.name for p in w.people)
  assert {p.name for p in facts.make_world(1).people} != set(names)


def test_labels_are_a_function_of_the_input():
  """No input has two different answers (the tasks are learnable, not noisy)."""
  for name in EVAL_TASKS:
    seen = {}
    for s in splits.SPLITS:
      for ex in splits.examples(name, s, SMALL):
        assert seen.setdefault(ex.inputs, ex.targets) == ex.targets, (name, ex.inputs)


_ENTITIES = (set(facts.FEMALE + facts.MALE + facts.CITIES + facts.COUNTRIES + facts.JOBS + facts.COLORS + facts.FOODS
                 + facts.LANDMARKS + facts.DAYS) | {a.name for a in facts.ANIMALS} | {t.name for t in facts.THINGS}
             | {"commitcue"})


def _masked_words(text):
  """The words of ``text`` with the world's entities as <x>."""
  return ["<x>" if t in _ENTITIES else t for t in re.findall(r"[a-z']+", text)]


def _template_ngrams(name, n=4, min_frac=0.2):
  """The fixed wording of a task: word n-grams (entities masked) found in >= min_frac of its inputs.
  The commitment phrases (world.COMMIT_CUES) are masked like entities: they are the content the NLI
  tasks are about (as "lives in" is for closed-book QA), shared on purpose, not a template."""
  cues = sorted((c for cs in facts.COMMIT_CUES for c in cs), key=len, reverse=True)
  exs = splits.examples(name, "train", SMALL)
  counts = collections.Counter()
  for ex in exs:
    text = ex.inputs
    for c in cues:
      text = text.replace(f" {c} ", " commitcue ")
    toks = _masked_words(text)
    counts.update({tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)})
  return {g for g, c in counts.items() if c >= min_frac * len(exs) and g.count("<x>") <= 1}


def test_heldout_templates_are_not_shared_with_training_tasks():
  """No template 4-gram of a held-out task occurs in the templates of held-in or instruction tasks:
  held-out formats are new to every trained model."""
  train_templates = set()
  for name, spec in generators.SPECS.items():
    if spec.group in ("heldin", "instruct"):
      train_templates |= _template_ngrams(name)
  for name in tasks.heldout_tasks():
    mine = _template_ngrams(name)
    assert mine, name
    assert not mine & train_templates, (name, sorted(mine & train_templates)[:5])


def test_corpus_teaches_what_heldout_tasks_need():
  world = facts.make_world(0)
  corpus = " ".join(e.targets for e in splits.examples("mj_corpus", "train", splits.SuiteConfig()))
  for c in world.cities:
    assert f"{c.name} is a city in {c.country}." in corpus
  for a in facts.ANIMALS:
    assert f"the {a.name} {a.sound}." in corpus
  for job, place in facts.WORKPLACE.items():
    assert f"a {job} works in a {place}." in corpus or f"every {job} goes to the {place}" in corpus
  for name in facts.FEMALE + facts.MALE:  # each name is used with its pronoun
    pr = facts.pronoun(name)
    assert re.search(rf"\b{name}\b[^.]*\. {pr} ", corpus), name
  for need, act, situation in facts.SCRIPTS:
    assert f"{need}, so" in corpus and act in corpus and f"{situation}, and" in corpus
    assert f"{situation}, so " in corpus  # situation -> action (held-out story endings)
    # action -> need (mj_nli_entail, the cause half of mj_sc_copa) is never stated: only
    # instruction tuning (mj_it_why) teaches it, so it separates the instruction-tuned base.
    assert not re.search(rf"{act}[^.]*\. \w+ (was|felt) {need}\.", corpus), act
    assert f"{act} because" not in corpus
  for p in world.people:  # every person's facts
    assert re.search(rf"{p.name} lives in (the city of )?{p.city}\.", corpus), p.name
  sentences = re.split(r"(?<=\.) ", corpus)
  for word, senses in facts.SENSES.items():
    for gloss, cues in senses:  # every cue occurs beside its word, and the corpus names the sense
      assert f"{word} means {gloss}." in corpus, (word, gloss)
      for cue in cues:
        assert any(f"the {word}" in x and f"the {cue}" in x for x in sentences), (word, cue)
        assert re.search(rf"a {word} that goes with the (\w+ or the )?{cue}\b[^.]* is {gloss}\.", corpus), cue


def test_instruction_tuning_holds_every_heldin_format_over_other_data():
  """Like Flan for PaLM-2-IT: one instruction task in the format of each held-in category
  (generators.IT_FORMATS), none of them a held-in dataset, no input shared with a held-in dataset."""
  assert sorted(generators.IT_FORMATS.values()) == sorted(tasks.HELDIN_CATEGORIES)
  instruct = {t.name for t in seqio.get_mixture_or_task("mj_instruct").tasks}
  assert set(generators.IT_FORMATS) <= instruct
  heldin_inputs = {e.inputs for c in tasks.HELDIN_CATEGORIES for t in tasks.heldin_tasks(c)
                   for s in splits.SPLITS for e in splits.examples(t, s, SMALL)}
  for name in generators.IT_FORMATS:
    assert generators.SPECS[name].group == "instruct"
    assert not {e.inputs for e in splits.examples(name, "train", SMALL)} & heldin_inputs, name


def _openings(name, min_frac):
  """The first word (entities masked) that opens at least min_frac of a task's train inputs."""
  exs = splits.examples(name, "train", SMALL)
  counts = collections.Counter(tuple(_masked_words(e.inputs)[:1]) for e in exs)
  return {g for g, c in counts.items() if c >= min_frac * len(exs)}


def test_instruction_tuning_holds_the_heldin_prompt_frames_over_other_data():
  """As Flan holds T0's templates applied to other datasets: the prompt frame of each held-in dataset
  (its opening label and its fixed question wording) recurs in the instruction task of its category's
  format, whose inputs are not held-in inputs (test above). The five-way star rating (mj_sent_stars)
  is the one frame left out: its answer words are not positive / negative."""
  it_task = {c: t for t, c in generators.IT_FORMATS.items()}
  for c in tasks.HELDIN_CATEGORIES:
    opens, grams = _openings(it_task[c], 0.05), _template_ngrams(it_task[c], min_frac=0.05)
    for name in set(tasks.heldin_tasks(c)) - {"mj_sent_stars"}:
      assert _openings(name, 0.3) <= opens, (name, _openings(name, 0.3))
      mine = _template_ngrams(name, min_frac=0.9)
      assert len(mine & grams) >= len(mine) / 3, (name, sorted(mine - grams)[:5])


def test_heldin_datasets_train_skills_heldout_tasks_need():
  """The world's causal design (generators.FEEDS, docs/WORLD.md): each source is a held-in dataset,
  each target a held-out one, and the shared skill is in the data."""
  for src, (targets, skill) in generators.FEEDS.items():
    assert generators.SPECS[src].group == "heldin" and skill
    assert targets and all(generators.SPECS[t].group == "heldout" for t in targets)
  assert {t for ts, _ in generators.FEEDS.values() for t in ts} == set(tasks.heldout_tasks())
  # Topic -> word sense: the two senses of every ambiguous word belong to different topics, and topic
  # classification labels a text by the topic of its cue words, so it teaches which sense a cue signals.
  for word, senses in facts.SENSES.items():
    assert facts.SENSE_TOPIC[senses[0][0]] != facts.SENSE_TOPIC[senses[1][0]], word
  cue_topic = {c: t for t, cues in facts.TOPIC_CUES.items() for c in cues}
  assert set(cue_topic) == {c for senses in facts.SENSES.values() for _, cues in senses for c in cues}
  for name in ("mj_topic_news", "mj_topic_ask"):
    for e in splits.examples(name, "train", SMALL):
      found = {cue_topic[c] for c in cue_topic if re.search(rf"\bthe {c}\b", e.inputs)}
      assert found == {e.targets}, e.inputs
  # Sounds -> fill-in-the-blank coreference: closed-book trivia asks about every animal's sound.
  asked = " ".join(e.inputs + " " + e.targets for e in splits.examples("mj_cbqa_sounds", "train", SMALL))
  assert all(a.sound in asked and a.name in asked for a in facts.ANIMALS)
  # Quoref-like QA -> pronoun resolution: half its passages refer to the two people by pronoun.
  quoref = splits.examples("mj_exqa_quoref", "train", SMALL)
  by_pronoun = sum(bool(re.search(r"\. (she|he) picked up", e.inputs)) for e in quoref)
  assert 0.35 < by_pronoun / len(quoref) < 0.65


def test_commitment_nli_label_is_set_by_the_commitment_phrase():
  """mj_nli_cb (held-out) and mj_it_commit (instruction tuning): the answer is the class of the phrase
  that embeds the fact (CommitmentBank's speaker commitment); the hypothesis is the embedded fact,
  true of the world when committed to, false when denied."""
  world = facts.make_world(0)
  fields = {"lives in": "city", "is employed as a": "job", "has a": "pet", "likes": "color", "eats": "food"}
  for name in ("mj_nli_cb", "mj_it_commit"):
    for ex in splits.examples(name, "train", SMALL):
      classes = {k for k, cues in enumerate(facts.COMMIT_CUES) for c in cues if f" {c} " in f" {ex.inputs} "}
      assert classes == {ex.label}, (name, ex)
      assert ex.choices == ("yes", "no", "maybe") and ex.targets == ex.choices[ex.label]
  seen = collections.Counter()
  for ex in splits.examples("mj_nli_cb", "train", SMALL):
    m = re.match(r"(\w+) (.+?) (\w+) (lives in|is employed as a|has a|likes|eats) (\w+)[ .]", ex.inputs)
    assert m and m.group(2) in facts.COMMIT_CUES[ex.label], ex.inputs
    hyp = ex.inputs.split(". based on that, can we say that ")[1].split("?")[0]
    assert ex.inputs.startswith(f"{m.group(1)} {m.group(2)} {hyp}.")
    true = getattr(world.person[m.group(3)], fields[m.group(4)]) == m.group(5)
    if ex.label < 2:
      assert true == (ex.label == 0), ex.inputs
    seen[(ex.label, true)] += 1
  assert seen[(2, True)] and seen[(2, False)]  # "maybe" is not decided by the world


def _sense_of_sentence(word, sentence):
  """The senses (indices) of `word` whose cues occur in `sentence`."""
  toks = set(re.findall(r"[a-z]+", sentence))
  return {k for k, (_, cues) in enumerate(facts.SENSES[word]) if toks & set(cues)}


def test_word_sense_label_is_set_by_the_cue_word():
  """mj_wsd_gloss (held-out) and mj_it_sense: the sentence holds the ambiguous word and one cue of one
  of its senses; the answer is that sense's gloss, the choices the word's two glosses."""
  cues = [c for senses in facts.SENSES.values() for _, cs in senses for c in cs]
  assert len(cues) == len(set(cues)) == 4 * 2 * len(facts.SENSES)  # unique across the table
  glosses = " ".join(g for senses in facts.SENSES.values() for g, _ in senses)
  assert not set(re.findall(r"[a-z]+", glosses)) & set(cues)  # no answer by copying a cue
  for name in ("mj_wsd_gloss", "mj_it_sense"):
    labels = collections.Counter()
    for ex in splits.examples(name, "train", SMALL):
      words = [w for w in facts.SENSE_WORDS if re.search(rf"\b{w}\b", ex.inputs)]
      assert len(words) == 1, ex.inputs
      senses = facts.SENSES[words[0]]
      assert set(ex.choices) == {g for g, _ in senses}, ex
      sentence = ex.inputs
      for g, _ in senses:  # the glosses listed as options
        sentence = sentence.replace(g, "")
      k = _sense_of_sentence(words[0], sentence)
      assert k == {[g for g, _ in senses].index(ex.targets)}, ex.inputs
      labels[ex.label] += 1
    assert labels[0] and labels[1]


def test_heldout_word_sense_inputs_never_occur_in_training_data():
  """No held-out word-sense sentence (any split) occurs in an instruction example or a corpus document:
  they share the cue words, not the sentences (disjoint frames, facts.SENSE_FRAMES)."""
  frames = {use: set(f) for use, f in facts.SENSE_FRAMES.items()}
  assert not (frames["heldout"] & frames["instruct"]) and not (frames["heldout"] & frames["corpus"])
  cfg = splits.SuiteConfig()  # the defaults: what the world trains and evaluates on
  heldout = [ex.inputs.split(" which meaning of ")[0]
             for s in splits.SPLITS for ex in splits.examples("mj_wsd_gloss", s, cfg)]
  assert len(heldout) == cfg.num_train + 2 * cfg.num_validation + cfg.num_test
  assert all(h.endswith(".") for h in heldout)
  training = " | ".join([ex.inputs for name in tasks.instruct_tasks() for s in splits.SPLITS
                         for ex in splits.examples(name, s, cfg)]
                        + [ex.targets for ex in splits.examples("mj_corpus", "train", cfg)])
  assert not [h for h in heldout if h in training][:3]
  for f in facts.SENSE_FRAMES["heldout"]:  # nor any other sentence of a held-out frame
    pat = re.escape(f).replace(r"\{n\}", r"[a-z]+").replace(r"\{p\}", r"[a-z]+")
    pat = pat.replace(r"\{w\}", "(" + "|".join(facts.SENSE_WORDS) + ")").replace(r"\{c\}", r"[a-z]+")
    assert not re.search(rf"\b{pat}", training), f


def test_instruction_mixture_rates():
  """mj_it_commit is sampled at 4x, mj_it_sense and the held-in format tasks at 2x the other instruction tasks."""
  mix = seqio.get_mixture_or_task("mj_instruct")
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert "mj_corpus" not in rates  # the instruction tasks alone; instruction tuning adds the corpus
  assert rates["mj_it_commit"] == pytest.approx(4 * rates["mj_it_why"])
  doubled = {"mj_it_sense", *generators.IT_FORMATS}
  assert all(rates[t] == pytest.approx(2 * rates["mj_it_why"]) for t in doubled)
  assert {r for t, r in rates.items() if t not in doubled | {"mj_it_commit"}} == {rates["mj_it_why"]}


def test_instruction_tuning_data_replays_the_corpus_at_the_stated_share():
  """The rows the instruction-tuned base actually trains on: INSTRUCT_REPLAY_SHARE of them are corpus
  documents (empty inputs), the rest instruction examples at their own relative rates."""
  mixture = recipes.mixture_name("instruction_tune")
  ds = seqio.get_mixture_or_task(mixture).get_dataset(
      dict(recipes.FEATURE_LENGTHS), split="train", shuffle=True, seed=recipes.data_seed(0, "instruction_tune"))
  n = 4000
  corpus = sum(int(len(ex["inputs"]) == 0) for ex in ds.take(n).as_numpy_iterator())
  share = corpus / n
  se = (recipes.INSTRUCT_REPLAY_SHARE * (1 - recipes.INSTRUCT_REPLAY_SHARE) / n) ** 0.5
  assert abs(share - recipes.INSTRUCT_REPLAY_SHARE) < 4 * se, (share, recipes.INSTRUCT_REPLAY_SHARE)
  assert all(ex.inputs for t in tasks.instruct_tasks() for ex in splits.examples(t, "validation"))


def test_seqio_plain_task_tokenizes_with_eos():
  task = seqio.get_mixture_or_task("mj_sent_stars")
  ex = next(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
  vocab = tasks.get_vocabulary()
  assert ex["targets"][-1] == 1 and vocab.decode(ex["targets"].tolist()) == ex["targets_pretokenized"].decode()
  assert 1 not in ex["inputs"].tolist()
  assert ex["label"] >= 0 and ex["choices"].tolist()[ex["label"]] == ex["targets_pretokenized"]


def test_pretrain_and_training_mixtures_feed_a_decoder_converter(small_suite):
  ex = next(seqio.get_mixture_or_task("mj_corpus").get_dataset(None, split="train", shuffle=False).as_numpy_iterator())
  assert ex["inputs"].size == 0 and ex["targets"].size > 5
  ds = seqio.get_dataset("mj_heldin_topic", task_feature_lengths={"inputs": 96, "targets": 24}, dataset_split="train",
                         shuffle=True, seed=0, batch_size=4, verbose=False,
                         feature_converter=seqio.DecoderFeatureConverter(pack=False))
  batch = next(ds.as_numpy_iterator())
  assert batch["decoder_target_tokens"].shape == (4, 120)
  assert batch["decoder_loss_weights"].sum() > 0


def test_rank_variant_expands_choices():
  task = seqio.get_mixture_or_task("mj_sent_stars_rank")
  rows = list(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
  raw = splits.examples("mj_sent_stars", "validation")
  assert len(rows) == sum(len(e.choices) for e in raw)
  by_ex = collections.defaultdict(list)
  for r in rows:
    by_ex[int(r["idx"][0])].append(r)
  for i, e in enumerate(raw):
    got = by_ex[i]
    assert [int(r["idx"][1]) for r in got] == list(range(len(e.choices)))
    assert [r["targets_pretokenized"].decode() for r in got] == list(e.choices)
    assert [bool(r["is_correct"]) for r in got] == [j == e.label for j in range(len(e.choices))]
    assert all(r["inputs_pretokenized"].decode() == e.inputs for r in got)


def _rows(ds) -> list[dict]:
  return [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def test_preprocessors_are_traced_as_written_and_build_the_same_examples(monkeypatch):
  """The registry's preprocessors and the evaluator's feature converter skip AutoGraph's rewrite (a fifth
  to a third of building an evaluator) and build exactly the examples that the rewritten ones build."""
  from tensorflow.python.autograph.impl import api as autograph_api  # pylint: disable=g-import-not-at-top
  from mergejax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  converted = []
  real = autograph_api.converted_call

  def spy(f, *args, **kwargs):
    converted.append(getattr(f, "__qualname__", repr(f)))
    return real(f, *args, **kwargs)
  monkeypatch.setattr(autograph_api, "converted_call", spy)
  task = seqio.get_mixture_or_task("mj_sent_stars_rank")
  assert all(hasattr(p, "__wrapped__") for p in task.preprocessors)
  rows = _rows(task.get_dataset(None, split="validation", shuffle=False))
  assert not [q for q in converted if "rank_classification" in q or "tokenize" in q], converted
  rewritten = seqio.Task("mj_test_sent_stars_rank_autograph", source=task.source, output_features=task.output_features,
                         preprocessors=[p.__wrapped__ for p in task.preprocessors])
  assert _rows(rewritten.get_dataset(None, split="validation", shuffle=False)) == rows
  assert [q for q in converted if "rank_classification" in q]  # the spy sees AutoGraph where it runs

  lengths = {"inputs": 96, "targets": 24}
  plain = evaluator._UnpackedFeatureConverter(apply_length_check=False)
  ds = task.get_dataset(lengths, split="validation", shuffle=False)
  converted.clear()
  features = _rows(plain(ds, lengths))
  assert not converted, converted
  autograph = seqio.DecoderFeatureConverter(pack=False, apply_length_check=False)
  assert _rows(autograph(task.get_dataset(lengths, split="validation", shuffle=False), lengths)) == features
  assert converted


def test_a_preprocessor_that_needs_autograph_fails_loudly_when_traced_as_written():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mergejax.tasks import preprocessors  # pylint: disable=g-import-not-at-top

  def halve_until_small(dataset):
    def fn(ex):
      x = ex["x"]
      while x > 4:  # Python control flow on a tensor: only AutoGraph can stage it
        x = x // 2
      return {"x": x}
    return dataset.map(fn)
  ds = tf.data.Dataset.from_tensor_slices({"x": tf.constant([3, 40], tf.int64)})
  assert [int(e["x"]) for e in halve_until_small(ds).as_numpy_iterator()] == [3, 2]
  with pytest.raises(TypeError, match="symbolic"):
    preprocessors.as_written(halve_until_small)(ds)


def test_metrics_values():
  assert metrics.exact_match(["The cat.", "a dog"], ["cat", "dog!"]) == {"exact_match": 100.0}
  assert metrics.exact_match(["cat"], ["dog"]) == {"exact_match": 0.0}
  assert metrics.token_f1(["red blue green"], ["red blue"])["f1"] == pytest.approx(100 * 0.8)
  # LCS("a b c d", "a c d e") = 3 (articles removed: use non-article tokens)
  assert metrics.rouge_l(["x y z w"], ["x z w v"])["rouge_l"] == pytest.approx(75.0)
  targets = [((0, 0), False), ((0, 1), True), ((1, 0), True), ((1, 1), False), ((2, 0), False), ((2, 1), True)]
  assert metrics.rank_accuracy(targets, [0.1, 0.5, -1.0, -2.0, 3.0, 1.0]) == {"accuracy": pytest.approx(200 / 3)}
  with pytest.raises(ValueError, match="no correct choice"):
    metrics.rank_accuracy([((0, 0), False), ((0, 1), False)], [1.0, 2.0])
  with pytest.raises(ValueError, match="targets"):
    metrics.exact_match(["a"], [])


def _oracle_evaluation(task_name, oracle_sign):
  """Runs seqio.Evaluator on a _rank task with a score_fn that knows the answers."""
  raw = splits.examples(task_name.removesuffix("_rank"), "validation")
  vocab = tasks.get_vocabulary()
  correct = {(tuple(vocab.encode(e.inputs)), tuple(vocab.encode(c))): j == e.label
             for e in raw for j, c in enumerate(e.choices)}
  evaluator = seqio.Evaluator(task_name, feature_converter=seqio.DecoderFeatureConverter(pack=False),
                              eval_split="validation", use_memory_cache=True, async_compute_metrics=False)

  def score_fn(ds):
    out = []
    for i, ex in ds:
      tgt, inp_mask = np.asarray(ex["decoder_target_tokens"]), np.asarray(ex["decoder_causal_attention"])
      n_in = int(inp_mask.sum()) - 1  # causal_attention covers inputs + first target position
      toks = [int(t) for t in tgt if t]
      inputs, target = tuple(toks[:n_in]), tuple(toks[n_in:-1])
      out.append((i, oracle_sign * (1.0 if correct[(inputs, target)] else 0.0)))
    return out

  results, _ = evaluator.evaluate(compute_metrics=True, score_fn=score_fn, predict_fn=lambda ds: [])
  return results.result()[task_name]["accuracy"]


def test_rank_accuracy_through_seqio_evaluator():
  assert _oracle_evaluation("mj_nli_cb_rank", +1.0) == pytest.approx(100.0)
  assert _oracle_evaluation("mj_nli_cb_rank", -1.0) == pytest.approx(0.0)


def test_generation_metrics_through_seqio_evaluator():
  task = "mj_s2t_bio"
  raw = splits.examples(task, "validation")
  vocab = tasks.get_vocabulary()
  evaluator = seqio.Evaluator(task, feature_converter=seqio.DecoderFeatureConverter(pack=False),
                              eval_split="validation", use_memory_cache=True, async_compute_metrics=False)
  half = len(raw) // 2

  def predict_fn(ds):
    out = []
    for i, _ in ds:
      text = raw[i].targets if i < half else "nothing to see"
      ids = vocab.encode(text) + [1]
      out.append((i, np.pad(ids, (0, 24 - len(ids))).tolist()))
    return out

  results, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn, score_fn=lambda ds: [])
  m = results.result()[task]
  assert m["exact_match"] == pytest.approx(100.0 * half / len(raw))
  assert half / len(raw) * 100 <= m["rouge_l"] < 100
