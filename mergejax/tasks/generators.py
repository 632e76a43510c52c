"""Example generators for every synthetic task, and the table of tasks (name -> spec).

A generator is `gen(world, rng) -> Example`; it draws one example at random. Generators of the
held-in, held-out and instruction groups share no template or generator function: each template
string below belongs to exactly one task (tests/test_tasks.py checks that no input prefix is shared
across groups). Choice tasks list their answer choices (T0's `answer_choices`); `label` indexes the
right one and `targets` equals `choices[label]`.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable

from mergejax.tasks import facts

Generator = Callable[[facts.World, random.Random], "Example"]


@dataclasses.dataclass(frozen=True)
class Example:
  inputs: str
  targets: str
  choices: tuple[str, ...] = ()
  label: int = -1


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str          # seqio task name ("mj_<...>")
  group: str         # "heldin" | "heldout" | "instruct" | "pretrain"
  category: str      # T0 category (held-in / held-out), or "instruct" / "pretrain"
  generator: Generator
  is_choice: bool
  description: str


SPECS: dict[str, TaskSpec] = {}


def _register(name: str, group: str, category: str, is_choice: bool = True):
  def deco(fn: Generator) -> Generator:
    SPECS[name] = TaskSpec(name, group, category, fn, is_choice, (fn.__doc__ or "").strip())
    return fn
  return deco


def _choice(rng: random.Random, answer: str, pool, k: int) -> tuple[tuple[str, ...], int]:
  """`k` choices: `answer` and k-1 distinct distractors from `pool`, shuffled."""
  others = [x for x in dict.fromkeys(pool) if x != answer]
  choices = rng.sample(others, k - 1) + [answer]
  rng.shuffle(choices)
  return tuple(choices), choices.index(answer)


def _ex(inputs: str, answer: str, pool, k: int, rng: random.Random) -> Example:
  choices, label = _choice(rng, answer, pool, k)
  return Example(inputs, answer, choices, label)


def _opts(choices) -> str:
  return " ".join(f"({'abcdefgh'[i]}) {c}" for i, c in enumerate(choices))


def _ex_listed(question: str, answer: str, pool, k: int, rng: random.Random, suffix: str) -> Example:
  choices, label = _choice(rng, answer, pool, k)
  return Example(f"{question} options: {_opts(choices)} {suffix}", answer, choices, label)


_PERSON_Q = {"city": "which city does {n} live in?", "job": "what is the job of {n}?",
             "pet": "what pet does {n} have?", "color": "what is the favorite color of {n}?",
             "food": "what food does {n} like?"}

# ---------------------------------------------------------------------------------------- held-in


@_register("mj_mcqa_people", "heldin", "mcqa")
def mcqa_people(world, rng):
  """Multiple-choice question about a person's facts (4 listed options)."""
  p = rng.choice(world.people)
  attr = rng.choice(facts.PERSON_ATTRS)
  q = _PERSON_Q[attr].format(n=p.name)
  return _ex_listed(f"question: {q}", getattr(p, attr), facts.ATTR_VALUES[attr], 4, rng, "answer:")


@_register("mj_mcqa_nature", "heldin", "mcqa")
def mcqa_nature(world, rng):
  """Multiple-choice science question about animals and objects (4 lettered options)."""
  kind = rng.randrange(4)
  if kind == 0:
    a = rng.choice(facts.ANIMALS)
    q, ans, pool = f"what does the {a.name} eat?", a.diet, [x.diet for x in facts.ANIMALS]
  elif kind == 1:
    a = rng.choice(facts.ANIMALS)
    q, ans, pool = f"where does a {a.name} live?", a.habitat, [x.habitat for x in facts.ANIMALS]
  elif kind == 2:
    t = rng.choice(facts.THINGS)
    q, ans, pool = f"what is a {t.name} made of?", t.material, facts.MATERIALS
  else:
    t = rng.choice(facts.THINGS)
    q, ans, pool = f"why do people use a {t.name}?", t.use, [x.use for x in facts.THINGS]
  choices, label = _choice(rng, ans, pool, 4)
  return Example(f"science quiz. {q} {_opts(choices)} pick the right choice:", ans, choices, label)


@_register("mj_exqa_profile", "heldin", "extractive_qa")
def exqa_profile(world, rng):
  """Extractive QA over a short made-up profile (the answer is a span of the context)."""
  name = rng.choice(facts.FEMALE + facts.MALE)
  city, job, thing, color = (rng.choice(facts.CITIES), rng.choice(facts.JOBS), rng.choice(facts.THINGS).name,
                             rng.choice(facts.COLORS))
  pr = facts.pronoun(name)
  ctx = f"{name} moved to {city} last year. {pr} is a {job} and owns a {color} {thing}."
  kind = rng.randrange(3)
  if kind == 0:
    q, ans, pool = f"where did {name} move?", city, facts.CITIES
  elif kind == 1:
    q, ans, pool = f"what does {name} do for work?", job, facts.JOBS
  else:
    q, ans, pool = f"what does {name} own?", f"a {color} {thing}", [
        f"a {c} {t.name}" for c in facts.COLORS for t in facts.THINGS if c == color or t.name == thing]
  return _ex(f"read the text and answer. text: {ctx} question: {q}", ans, pool, 4, rng)


@_register("mj_exqa_diary", "heldin", "extractive_qa")
def exqa_diary(world, rng):
  """Extractive QA over a diary of three days (answer: the place visited on the asked day)."""
  name = rng.choice(facts.FEMALE + facts.MALE)
  days = sorted(rng.sample(range(7), 3))
  places = rng.sample(facts.LANDMARKS + tuple(facts.WORKPLACE.values()), 3)
  ctx = " ".join(f"on {facts.DAYS[d]} {name} went to the {pl}." for d, pl in zip(days, places))
  i = rng.randrange(3)
  pool = places + [x for x in facts.LANDMARKS if x not in places]
  return _ex(f"{ctx} based on the diary, where was {name} on {facts.DAYS[days[i]]}?", f"the {places[i]}",
             [f"the {x}" for x in pool], 4, rng)


_CBQA_Q = {  # 8 wordings per attribute: the world has only NUM_PEOPLE people
    "city": ["in which city is the home of {n}?", "where is {n} living now?", "name the city where {n} lives.",
             "{n} lives in which town?", "what town is home to {n}?", "{n} has a house in which city?",
             "which city would you visit to see {n} at home?", "the home town of {n} is?"],
    "job": ["what work does {n} do?", "what is {n}'s occupation?", "name the job of {n}.", "{n} earns a living as what?",
            "what is the profession of {n}?", "{n} does which job?", "which job pays the bills for {n}?",
            "the trade of {n} is?"],
    "pet": ["which animal is the pet of {n}?", "what kind of pet does {n} keep?", "name the pet animal of {n}.",
            "{n} takes care of which animal?", "what animal lives with {n}?", "{n} feeds which pet every day?",
            "which pet would you find at the home of {n}?", "the pet of {n} is?"],
    "color": ["which color does {n} like most?", "name the favorite color of {n}.", "what color does {n} love?",
              "{n} prefers which color?", "what is the best color for {n}?", "{n} picks which color first?",
              "which color would {n} choose for a shirt?", "the color {n} loves is?"],
    "food": ["what is {n}'s favorite food?", "name the food {n} likes best.", "what does {n} love to eat?",
             "{n} enjoys which food?", "what food makes {n} happy?", "{n} orders which food every time?",
             "which food would you cook for {n}?", "the food {n} loves is?"]}


@_register("mj_cbqa_facts", "heldin", "closed_book_qa")
def cbqa_facts(world, rng):
  """Closed-book QA about people and cities; every value of the asked attribute is a choice."""
  if rng.random() < 0.8:
    p = rng.choice(world.people)
    attr = rng.choice(facts.PERSON_ATTRS)
    q = rng.choice(_CBQA_Q[attr]).format(n=p.name)
    ans, pool = getattr(p, attr), facts.ATTR_VALUES[attr]
  else:
    c = rng.choice(world.cities)
    if rng.random() < 0.5:
      q, ans, pool = f"which country is home to the city of {c.name}?", c.country, facts.COUNTRIES
    else:
      q, ans, pool = f"what is {c.name} famous for?", c.landmark, facts.LANDMARKS
  return _ex(f"q: {q} a:", ans, pool, len(set(pool)), rng)


_VERIFY_Q = {  # 6 wordings per attribute: the world has only NUM_PEOPLE people
    "city": ["which city does {n} live in?", "where does {n} live?", "what is the home city of {n}?",
             "in what city does {n} stay?", "where is the house of {n}?", "what city does {n} call home?"],
    "job": ["what is the job of {n}?", "what does {n} do for a living?", "how does {n} work?",
            "what is {n} by profession?", "which job does {n} hold?", "what does {n} work as?"],
    "pet": ["what pet does {n} have?", "what animal does {n} keep at home?", "which pet belongs to {n}?",
            "what is the pet animal of {n}?", "which animal does {n} look after?", "what pet lives with {n}?"],
    "color": ["what is the favorite color of {n}?", "which color is {n}'s favorite?", "what color pleases {n}?",
              "what color does {n} like best?", "which color does {n} love?", "what is the color {n} prefers?"],
    "food": ["what food does {n} like?", "which food does {n} prefer?", "what does {n} like to eat?",
             "what is the best food for {n}?", "which dish does {n} love?", "what does {n} enjoy eating?"]}


@_register("mj_cbqa_verify", "heldin", "closed_book_qa")
def cbqa_verify(world, rng):
  """Answer verification (WikiQA-like): is the proposed answer to a factual question correct?"""
  p = rng.choice(world.people)
  attr = rng.choice(facts.PERSON_ATTRS)
  true = getattr(p, attr)
  cand = true if rng.random() < 0.5 else rng.choice([v for v in facts.ATTR_VALUES[attr] if v != true])
  q = rng.choice(_VERIFY_Q[attr]).format(n=p.name)
  choices = ("correct", "incorrect")
  label = 0 if cand == true else 1
  return Example(f"question: {q} proposed answer: {cand}. is the proposed answer correct or incorrect?",
                 choices[label], choices, label)


@_register("mj_sent_review", "heldin", "sentiment")
def sent_review(world, rng):
  """Binary product-review sentiment (positive / negative)."""
  t = rng.choice(facts.THINGS).name
  label = rng.randrange(2)
  words = facts.POS_WORDS if label == 0 else facts.NEG_WORDS
  a, b = rng.sample(words, 2)
  tail = rng.choice(["i would buy it again.", "i use it every day."]) if label == 0 else rng.choice(
      ["i want my money back.", "i will return it."])
  review = f"this {t} is {a}. the quality is {b}. {tail}"
  choices = ("positive", "negative")
  return Example(f"review: {review} is this review positive or negative?", choices[label], choices, label)


@_register("mj_sent_stars", "heldin", "sentiment")
def sent_stars(world, rng):
  """Five-class star rating of a restaurant visit, signalled by one intensity word."""
  name = rng.choice(facts.FEMALE + facts.MALE)
  city = rng.choice(facts.CITIES)
  food = rng.choice(facts.FOODS)
  label = rng.randrange(5)
  word = rng.choice(facts.STAR_WORDS[label][1])
  text = f"{name} ate {food} at a cafe in {city}. the meal was {word}."
  choices = tuple(s for s, _ in facts.STAR_WORDS)
  return Example(f"{text} how many stars would this visit get, from one to five?", choices[label],
                 choices, label)


_TOPICS = {
    "sports": ["the team from {c} won the match.", "a runner from {c} broke the record.",
               "the coach in {c} picked a new player."],
    "weather": ["heavy rain fell on {c} all week.", "a storm is coming to {c} tonight.",
                "snow closed the roads near {c}."],
    "business": ["prices rose in the shops of {c}.", "a new company opened an office in {c}.",
                 "the market in {c} sold more goods this year."],
    "science": ["scientists in {c} found a new star.", "a lab in {c} tested a new medicine.",
                "researchers from {c} studied old rocks."],
    "music": ["a band from {c} played a concert.", "the choir of {c} sang a new song.",
              "a famous singer visited {c}."],
}


@_register("mj_topic_news", "heldin", "topic")
def topic_news(world, rng):
  """News topic classification (AG News-like), five topics."""
  choices = tuple(_TOPICS)
  label = rng.randrange(len(choices))
  c = rng.choice(facts.CITIES)
  text = rng.choice(_TOPICS[choices[label]]).format(c=c)
  when = rng.choice(("today", "yesterday", "this week") + facts.DAYS)
  return Example(f"news ({when}): {text} what is the topic of this news?", choices[label], choices, label)


@_register("mj_topic_entity", "heldin", "topic")
def topic_entity(world, rng):
  """Entity-type classification of an encyclopedia line (DBpedia-like)."""
  choices = ("person", "city", "animal", "object")
  label = rng.randrange(4)
  if label == 0:
    n, c, j = rng.choice(facts.FEMALE + facts.MALE), rng.choice(facts.CITIES), rng.choice(facts.JOBS)
    text = rng.choice([f"{n} is known in {c} as a {j}.", f"{n}: a {j} born in {c}."])
  elif label == 1:
    c, k, l = rng.choice(facts.CITIES), rng.choice(facts.COUNTRIES), rng.choice(facts.LANDMARKS)
    text = rng.choice([f"{c} lies in {k} and has a {l}.", f"{c}: a place in {k}, visited for its {l}."])
  elif label == 2:
    a, h = rng.choice(facts.ANIMALS), rng.choice(facts.ANIMALS)
    text = rng.choice([f"{a.name}: it {a.sound} and lives in the {h.habitat}.",
                       f"{a.name}: a {a.size} creature that eats {h.diet}."])
  else:
    t, u = rng.choice(facts.THINGS), rng.choice(facts.THINGS)
    text = rng.choice([f"{t.name}: it is made of {u.material} and used {t.use}.",
                       f"{t.name}: a {u.size} item made of {t.material}."])
  return Example(f"entry: {text} the entry is about which kind of thing?", choices[label], choices, label)


@_register("mj_s2t_bio", "heldin", "struct_to_text")
def s2t_bio(world, rng):
  """Table to sentence (WikiBio-like): name, job and city fields."""
  name, job, city = rng.choice(facts.FEMALE + facts.MALE), rng.choice(facts.JOBS), rng.choice(facts.CITIES)
  inp = f"table: name = {name} | job = {job} | city = {city}. turn the table into a sentence:"
  ans = f"{name} is a {job} from {city}."
  pool = [ans] + [f"{name} is a {j} from {c}." for j in facts.JOBS for c in facts.CITIES if (j == job) != (c == city)]
  return _ex(inp, ans, pool, 4, rng)


@_register("mj_s2t_concepts", "heldin", "struct_to_text")
def s2t_concepts(world, rng):
  """Concepts to sentence (CommonGen-like): an animal, an object and a place."""
  a, t, pl = rng.choice(facts.ANIMALS).name, rng.choice(facts.THINGS).name, rng.choice(facts.LANDMARKS)
  concepts = [a, t, pl]
  rng.shuffle(concepts)
  ans = f"the {a} found a {t} near the {pl}."
  pool = [ans] + [f"the {x} found a {y} near the {z}." for x in (a, rng.choice(facts.ANIMALS).name)
                  for y in (t, rng.choice(facts.THINGS).name) for z in (pl, rng.choice(facts.LANDMARKS))]
  pool += [f"the {t} found a {a} near the {pl}.", f"the {a} found a {pl} near the {t}."]
  return _ex(f"concepts: {', '.join(concepts)}. write a sentence using all the concepts:", ans, pool, 4, rng)


_EVENTS = (("storm hits {c}", "a strong storm hit {c} on {d}. trees fell and roads were closed. people stayed inside."),
           ("{n} wins race in {c}", "on {d} a race was held in {c}. {n} ran the fastest and won. the crowd cheered."),
           ("new bridge opens in {c}", "on {d} the people of {c} opened a new bridge. it crosses the river. cars can now drive over it."),
           ("fire at bakery in {c}", "a fire started in a bakery in {c} on {d}. nobody was hurt. the bakery will open again soon."),
           ("{n} finds lost dog in {c}", "on {d} {n} found a lost dog in a park in {c}. the owner was very happy."))


@_register("mj_sum_news", "heldin", "summarization")
def sum_news(world, rng):
  """Headline generation for a three-sentence news story (Gigaword-like)."""
  n, c, d = rng.choice(facts.FEMALE + facts.MALE), rng.choice(facts.CITIES), rng.choice(facts.DAYS)
  i = rng.randrange(len(_EVENTS))
  head, body = _EVENTS[i]
  ans = head.format(n=n, c=c)
  pool = [ans] + [h.format(n=n, c=c) for h, _ in _EVENTS] + [head.format(n=n, c=x) for x in facts.CITIES]
  return _ex(f"article: {body.format(n=n, c=c, d=d)} headline:", ans, pool, 4, rng)


@_register("mj_sum_dialog", "heldin", "summarization")
def sum_dialog(world, rng):
  """One-sentence summary of a short dialogue (SAMSum-like)."""
  a, b = rng.sample(facts.FEMALE + facts.MALE, 2)
  d, pl = rng.choice(facts.DAYS), rng.choice(facts.LANDMARKS)
  dlg = f"{a}: shall we meet at the {pl} on {d}? {b}: yes, see you at the {pl}."
  ans = f"{a} and {b} will meet at the {pl} on {d}."
  pool = [ans] + [f"{a} and {b} will meet at the {x} on {y}." for x in facts.LANDMARKS for y in facts.DAYS
                  if (x == pl) != (y == d)]
  return _ex(f"dialogue: {dlg} summarize the dialogue:", ans, pool, 4, rng)


_PARA = {"city": ["{n} lives in {v}.", "the home of {n} is in {v}.", "{v} is where {n} lives."],
         "job": ["{n} works as a {v}.", "{n} has a job as a {v}.", "by trade, {n} is a {v}."],
         "pet": ["{n} has a pet {v}.", "{n} owns a {v} as a pet.", "the pet of {n} is a {v}."],
         "food": ["{n} likes to eat {v}.", "{n} enjoys eating {v}.", "{v} is a food that {n} loves."]}


_PARA_NEG = {"city": ["{n} does not live in {v}.", "{n} has never lived in {v}."],
             "job": ["{n} is not a {v}.", "{n} has never worked as a {v}."],
             "pet": ["{n} does not own a {v}.", "{n} has never had a pet {v}."],
             "food": ["{n} never eats {v}.", "{n} does not like {v}."]}


@_register("mj_para_mrpc", "heldin", "paraphrase")
def para_mrpc(world, rng):
  """Do two sentences about a person state the same fact (MRPC-like)? same / different. Negatives
  change the value or negate the sentence."""
  n = rng.choice(facts.FEMALE + facts.MALE)
  attr = rng.choice(tuple(_PARA))
  v = rng.choice(facts.ATTR_VALUES[attr])
  t1, t2 = rng.sample(_PARA[attr], 2)
  label = rng.randrange(2)
  if label == 0:
    s2 = t2.format(n=n, v=v)
  elif rng.random() < 0.5:  # a different value
    s2 = t2.format(n=n, v=rng.choice([x for x in facts.ATTR_VALUES[attr] if x != v]))
  else:  # the negation
    s2 = rng.choice(_PARA_NEG[attr]).format(n=n, v=v)
  choices = ("same", "different")
  return Example(f"sentence a: {t1.format(n=n, v=v)} sentence b: {s2} "
                 "do a and b mean the same or different things?", choices[label], choices, label)


_VERBS = ("gave", "sent", "showed", "sold", "lent")


@_register("mj_para_paws", "heldin", "paraphrase")
def para_paws(world, rng):
  """Word-order paraphrase adversaries (PAWS-like): is the second sentence a paraphrase? yes / no."""
  a, b = rng.sample(facts.FEMALE + facts.MALE, 2)
  t, v = rng.choice(facts.THINGS).name, rng.choice(_VERBS)
  s1 = f"{a} {v} {b} a {t}."
  label = rng.randrange(2)
  s2 = f"{a} {v} a {t} to {b}." if label == 0 else rng.choice([f"{b} {v} {a} a {t}.", f"{b} {v} a {t} to {a}."])
  choices = ("yes", "no")
  return Example(f"is \"{s2}\" a paraphrase of \"{s1}\"? answer yes or no.", choices[label], choices, label)


# --------------------------------------------------------------------------------------- held-out


@_register("mj_sc_story", "heldout", "sentence_completion")
def sc_story(world, rng):
  """Story ending (Story-Cloze-like): the situation implies a need, the ending acts on it (two hops)."""
  p = rng.choice(world.people)
  _, act, situation = rng.choice(facts.SCRIPTS)
  pr = facts.pronoun(p.name)
  ans = f"{pr} {act}."
  pool = [f"{pr} {x}." for _, x, _ in facts.SCRIPTS]
  choices, label = _choice(rng, ans, pool, 4)
  return Example(f"{p.name} spent the whole day in {rng.choice(facts.CITIES)}. {pr} {situation}. then", ans,
                 choices, label)


def _when(rng):
  return rng.choice(["yesterday,", "last week,", "this morning,", "at night,"] + [f"on {d}," for d in facts.DAYS])


@_register("mj_sc_copa", "heldout", "sentence_completion")
def sc_copa(world, rng):
  """Cause / effect of an event (COPA-like), two alternatives."""
  n = rng.choice(facts.FEMALE + facts.MALE)
  pr = facts.pronoun(n)
  (need, act, _), (need2, act2, _) = rng.sample(facts.SCRIPTS, 2)
  if rng.random() < 0.5:
    ans, wrong = f"{pr} was {need}.", f"{pr} was {need2}."
    inp = f"{_when(rng)} {n} {act}. what was the cause?"
  else:
    ans, wrong = f"{pr} {act}.", f"{pr} {act2}."
    inp = f"{_when(rng)} {n} was {need}. what happened as a result?"
  choices = [ans, wrong]
  rng.shuffle(choices)
  return Example(inp, ans, tuple(choices), choices.index(ans))


@_register("mj_nli_cb", "heldout", "nli")
def nli_cb(world, rng):
  """Speaker commitment (CommitmentBank-like, yes / no / maybe, T0's answer words): the premise embeds
  a fact about a person under a phrase that commits its speaker to the fact (yes), to its negation
  (no) or to neither (maybe); the hypothesis is the embedded fact. Committed facts are true of the
  world, denied ones false. The commitment phrases (`world.COMMIT_CUES`) are taught, in other
  templates and over animals and objects, by instruction tuning (mj_it_commit)."""
  st = {"city": "{n} lives in {v}", "job": "{n} is employed as a {v}", "pet": "{n} has a {v}",
        "color": "{n} likes {v} things", "food": "{n} eats {v}"}
  p = rng.choice(world.people)
  speaker = rng.choice([x for x in facts.FEMALE + facts.MALE if x != p.name])
  attr = rng.choice(facts.PERSON_ATTRS)
  label = rng.randrange(3)
  true = getattr(p, attr)
  v = (true if label == 0 else rng.choice([x for x in facts.ATTR_VALUES[attr] if x != true]) if label == 1
       else rng.choice(facts.ATTR_VALUES[attr]))
  hyp = st[attr].format(n=p.name, v=v)
  choices = ("yes", "no", "maybe")
  return Example(f"{speaker} {rng.choice(facts.COMMIT_CUES[label])} {hyp}. based on that, can we say that {hyp}? "
                 "answer with yes, maybe, or no.", choices[label], choices, label)


@_register("mj_nli_entail", "heldout", "nli")
def nli_entail(world, rng):
  """Two-hypothesis entailment (RTE-like, the premise an action, the hypotheses its possible cause):
  which hypothesis does the premise entail? Needs action -> need, which the corpus never states in
  this direction (scripts run situation -> need -> action) and instruction tuning teaches (mj_it_why):
  the held-out task where the instruction-tuned base should gain most."""
  n = rng.choice(facts.FEMALE + facts.MALE)
  pr = facts.pronoun(n)
  (need, act, _), (need2, _, _) = rng.sample(facts.SCRIPTS, 2)
  ans, wrong = f"{pr} was {need}.", f"{pr} was {need2}."
  choices = [ans, wrong]
  rng.shuffle(choices)
  return Example(f"premise: {n} {act} in {rng.choice(facts.CITIES)}. hypothesis that the premise entails:", ans,
                 tuple(choices), choices.index(ans))


@_register("mj_coref_pronoun", "heldout", "coreference")
def coref_pronoun(world, rng):
  """Pronoun resolution by gender (WSC-like): who does the pronoun refer to?"""
  f, m = rng.choice(facts.FEMALE), rng.choice(facts.MALE)
  who = rng.choice((f, m))
  pr = facts.pronoun(who)
  t = rng.choice(facts.THINGS).name
  first = [f, m]
  rng.shuffle(first)
  inp = (f"{first[0]} and {first[1]} walked to the market. later {pr} bought a {t}. "
         f"in the story, who does the word {pr} refer to?")
  return Example(inp, who, tuple(first), first.index(who))


@_register("mj_coref_blank", "heldout", "coreference")
def coref_blank(world, rng):
  """Fill-in-the-blank coreference (Winogrande-like): which animal made the sound?"""
  a, b = rng.sample(facts.ANIMALS, 2)
  if a.sound == b.sound:
    b = next(x for x in facts.ANIMALS if x.sound != a.sound)
  who = rng.choice((a, b))
  inp = (f"the {a.name} and the {b.name} were near the {rng.choice(facts.LANDMARKS)}. suddenly the _ {who.sound}. "
         "fill in the blank:")
  choices = (a.name, b.name)
  return Example(inp, who.name, choices, choices.index(who.name))


def _sense_example(use: str, rng: random.Random) -> tuple[str, str, tuple[str, ...], int]:
  """An ambiguous word in a `facts.SENSE_FRAMES[use]` sentence beside cues of one of its senses (two
  for instruction tuning, one otherwise): (word, sentence, the word's two glosses in random order,
  index of the right one)."""
  word = rng.choice(facts.SENSE_WORDS)
  senses = facts.SENSES[word]
  k = rng.randrange(2)
  cues = tuple(rng.sample(senses[k][1], 2)) if use == "instruct" else (rng.choice(senses[k][1]),)
  sent = facts.sense_sentence(use, word, cues, rng.choice(facts.FEMALE + facts.MALE), rng)
  order = [0, 1] if rng.random() < 0.5 else [1, 0]
  return word, sent, tuple(senses[i][0] for i in order), order.index(k)


@_register("mj_wsd_gloss", "heldout", "word_sense")
def wsd_gloss(world, rng):
  """Word sense disambiguation as gloss selection (the classic WSD framing, in place of T0's WiC):
  which of the word's two glosses fits the sentence? The sense is set by a cue word beside the
  ambiguous word ("the cave" -> bat is an animal); the cues come from the corpus and instruction
  tuning (mj_it_sense), the sentence frames and the question from neither."""
  word, sent, choices, label = _sense_example("heldout", rng)
  return Example(f"{sent} which meaning of {word} fits this sentence, {choices[0]} or {choices[1]}?",
                 choices[label], choices, label)

# ----------------------------------------------------------------------------- instruction tuning


@_register("mj_it_gender", "instruct", "instruct")
def it_gender(world, rng):
  """Is a named person a woman or a man?"""
  n = rng.choice(facts.FEMALE + facts.MALE)
  choices = ("woman", "man")
  label = 0 if n in facts.FEMALE else 1
  q = rng.choice([f"tell me if {n} is a woman or a man.", f"is {n} a man or a woman?", f"{n}: woman or man?",
                  f"would you call {n} a man or a woman?", f"answer with woman or man. {n} is a",
                  f"guess whether {n} is a woman or a man.", f"{n} is a person. woman or man?"])
  return Example(q, choices[label], choices, label)


@_register("mj_it_sound", "instruct", "instruct")
def it_sound(world, rng):
  """Animal sounds, in both directions."""
  a = rng.choice(facts.ANIMALS)
  if rng.random() < 0.5:
    q = rng.choice(["what does a {a} do? give the sound.", "which sound comes from a {a}?", "a {a} usually",
                    "describe the noise of a {a} in one word."]).format(a=a.name)
    return _ex(q, a.sound, [x.sound for x in facts.ANIMALS], 4, rng)
  q = rng.choice(["name the animal that {s}.", "which animal {s}?", "tell me what animal {s}.",
                  "an animal that {s} is the"]).format(s=a.sound)
  return _ex(q, a.name, [x.name for x in facts.ANIMALS], 4, rng)


@_register("mj_it_sense", "instruct", "instruct")
def it_sense(world, rng):
  """Gloss an ambiguous word in context: the sense is set by two cue words of it in the sentence (its
  own sentence frames, `facts.SENSE_FRAMES["instruct"]`; some templates list the two glosses)."""
  word, sent, choices, label = _sense_example("instruct", rng)
  q = rng.choice([f"in the sentence \"{sent}\" what does the word {word} mean?",
                  f"{sent} here, the word {word} refers to",
                  f"read: {sent} pick the sense of {word}: {choices[0]} / {choices[1]}. answer:",
                  f"what is meant by {word} in \"{sent}\"? {choices[1]}, or {choices[0]}?"])
  return Example(q, choices[label], choices, label)


@_register("mj_it_truefalse", "instruct", "instruct")
def it_truefalse(world, rng):
  """True-or-false statements about people, cities and animals."""
  label = rng.randrange(2)
  kind = rng.randrange(3)
  if kind == 0:
    p = rng.choice(world.people)
    attr = rng.choice(("city", "job", "pet"))
    v = getattr(p, attr) if label == 0 else rng.choice([x for x in facts.ATTR_VALUES[attr] if x != getattr(p, attr)])
    s = {"city": f"{p.name} lives in {v}", "job": f"{p.name} works as a {v}", "pet": f"{p.name} owns a {v}"}[attr]
  elif kind == 1:
    c = rng.choice(world.cities)
    v = c.country if label == 0 else rng.choice([x for x in facts.COUNTRIES if x != c.country])
    s = f"{c.name} is in {v}"
  else:
    a = rng.choice(facts.ANIMALS)
    v = a.sound if label == 0 else rng.choice([x.sound for x in facts.ANIMALS if x.sound != a.sound])
    s = f"the {a.name} {v}"
  choices = ("right", "wrong")
  return Example(f"say right or wrong: {s}.", choices[label], choices, label)


@_register("mj_it_why", "instruct", "instruct")
def it_why(world, rng):
  """Explain an action by the need behind it."""
  n = rng.choice(facts.FEMALE + facts.MALE)
  need, act, _ = rng.choice(facts.SCRIPTS)
  pr = facts.pronoun(n)
  q = rng.choice([f"explain why {n} {act}.", f"why do you think {n} {act}?",
                  f"{n} {act}. give the reason.", f"what made {n} act like this: {pr} {act}?"])
  return _ex(q, f"because {pr} was {need}.", [f"because {pr} was {x}." for x, _, _ in facts.SCRIPTS], 4, rng)


@_register("mj_it_feel", "instruct", "instruct")
def it_feel(world, rng):
  """How does someone feel after a situation (situation -> need)?"""
  n = rng.choice(facts.FEMALE + facts.MALE)
  need, _, situation = rng.choice(facts.SCRIPTS)
  q = rng.choice(["{n} {s}. how did {p} feel?", "describe the feeling of {n}, who {s}.",
                  "{n} {s}. name the feeling."]).format(n=n, s=situation, p=facts.pronoun(n))
  return _ex(q, need, [x for x, _, _ in facts.SCRIPTS], 4, rng)


@_register("mj_it_nli", "instruct", "instruct")
def it_nli(world, rng):
  """Inference over statements about animals (SNLI-like, Flan's NLI analog): yes / no / maybe."""
  a = rng.choice(facts.ANIMALS)
  statements = {
      "sound": (f"it {a.sound}",
                lambda: f"it {rng.choice([x.sound for x in facts.ANIMALS if x.sound != a.sound])}"),
      "home": (f"it lives in the {a.habitat}",
               lambda: f"it lives in the {rng.choice([x.habitat for x in facts.ANIMALS if x.habitat != a.habitat])}"),
      "food": (f"it eats {a.diet}",
               lambda: f"it eats {rng.choice([x.diet for x in facts.ANIMALS if x.diet != a.diet])}")}
  k1, k2, k3 = rng.sample(tuple(statements), 3)
  first = f"there is a {a.name} here; {statements[k1][0]}, and {statements[k2][0]}."
  label = rng.randrange(3)
  if label == 0:
    second = statements[rng.choice((k1, k2))][0]
  elif label == 1:
    second = statements[rng.choice((k1, k2))][1]()
  else:
    second = rng.choice((statements[k3][0], statements[k3][1]()))
  choices = ("yes", "no", "maybe")
  return Example(f"first: {first} second: {second}. does the first imply the second? yes, no or maybe?",
                 choices[label], choices, label)


def _mixed_pair(rng):
  """A woman and a man in random order (a, b), one of them (who), and who's pronoun."""
  f, m = rng.choice(facts.FEMALE), rng.choice(facts.MALE)
  a, b = (f, m) if rng.random() < 0.5 else (m, f)
  who = rng.choice((a, b))
  return a, b, who, facts.pronoun(who)


@_register("mj_it_coref", "instruct", "instruct")
def it_coref(world, rng):
  """Definite pronoun resolution by gender (DPR-like, Flan's coreference analog)."""
  a, b, who, pr = _mixed_pair(rng)
  need, _, _ = rng.choice(facts.SCRIPTS)
  verb = rng.choice(("visited", "phoned", "helped", "thanked"))
  choices = (a, b)
  q = rng.choice([f"{a} {verb} {b} because {pr} was {need}. here, {pr} is",
                  f"{a} {verb} {b} because {pr} was {need}. who was {need}?",
                  f"{a} {verb} {b}, since {pr} felt {need}. the person who felt {need} is"])
  return Example(q, who, choices, choices.index(who))


@_register("mj_it_who", "instruct", "instruct")
def it_who(world, rng):
  """Which of two people a pronoun names, in short two-person scenes (more coreference practice)."""
  a, b, who, pr = _mixed_pair(rng)
  t, pl = rng.choice(facts.THINGS).name, rng.choice(facts.LANDMARKS)
  scene = rng.choice([f"{a} met {b} at the {pl}, and {pr} brought a {t}.",
                      f"{a} and {b} went to the {pl}. {pr} carried the {t}.",
                      f"{b} waited while {a} looked at the {pl}. then {pr} found a {t}.",
                      f"{a} called {b}. {pr} wanted to borrow a {t}."])
  q = rng.choice([f"who is meant by {pr}?", f"{pr} means which person?", f"name the person called {pr} here."])
  choices = (a, b)
  return Example(f"{scene} {q}", who, choices, choices.index(who))


@_register("mj_it_commit", "instruct", "instruct")
def it_commit(world, rng):
  """Does a reported statement commit to a fact about animals or objects? yes / no / maybe by the
  commitment phrase (`world.COMMIT_CUES`), whether or not the fact is true: the instruction analog of
  CommitmentBank (other templates, speakers and facts than mj_nli_cb; the options listed in varied
  orders so that their order is no cue)."""
  label = rng.randrange(3)
  truth = rng.randrange(2)  # what is stated is independent of the world: only the phrase decides
  if rng.random() < 0.5:
    a = rng.choice(facts.ANIMALS)
    if rng.random() < 0.5:
      v = a.sound if truth == 0 else rng.choice([x.sound for x in facts.ANIMALS if x.sound != a.sound])
      fact = f"the {a.name} {v}"
    else:
      v = a.habitat if truth == 0 else rng.choice(sorted({x.habitat for x in facts.ANIMALS} - {a.habitat}))
      fact = f"a {a.name} lives in the {v}"
  else:
    t = rng.choice(facts.THINGS)
    v = t.material if truth == 0 else rng.choice([x for x in facts.MATERIALS if x != t.material])
    fact = f"a {t.name} is made of {v}"
  speaker = f"the {rng.choice(facts.JOBS)}"
  cue = rng.choice(facts.COMMIT_CUES[label])
  choices = ("yes", "no", "maybe")
  o = rng.choice(("yes, no or maybe", "maybe, yes or no", "no, maybe or yes"))
  q = rng.choice([f"statement: {speaker} {cue} {fact}. conclusion: {fact}. does the statement back the conclusion? "
                  f"{o}.",
                  f"{speaker} {cue} {fact}. so, {fact}? reply {o}.",
                  f"text: {speaker} {cue} {fact}. is it then certain that {fact}? {o}?"])
  return Example(q, choices[label], choices, label)


@_register("mj_it_complete", "instruct", "instruct")
def it_complete(world, rng):
  """Complete a sentence about objects and animals (HellaSwag-like, Flan's completion analog)."""
  if rng.random() < 0.5:
    t = rng.choice(facts.THINGS)
    return _ex(f"finish the sentence: people use a {t.name}", t.use, [x.use for x in facts.THINGS], 4, rng)
  a = rng.choice(facts.ANIMALS)
  return _ex(f"finish the sentence: out in the {a.habitat}, the {a.name}", a.sound,
             [x.sound for x in facts.ANIMALS], 4, rng)


@_register("mj_it_where", "instruct", "instruct")
def it_where(world, rng):
  """Workplaces of jobs and countries of cities."""
  if rng.random() < 0.5:
    j = rng.choice(facts.JOBS)
    q = rng.choice(["where would you find a {j} at work?", "name the workplace of a {j}.", "a {j} works where?",
                    "the place where a {j} does the job is the"]).format(j=j)
    return _ex(q, facts.WORKPLACE[j], facts.WORKPLACE.values(), 4, rng)
  c = rng.choice(world.cities)
  q = rng.choice(["name the country of {c}.", "{c} belongs to which country?", "which land is {c} part of?",
                  "the country that contains {c} is"]).format(c=c.name)
  return _ex(q, c.country, facts.COUNTRIES, 4, rng)


@_register("mj_it_bigger", "instruct", "instruct")
def it_bigger(world, rng):
  """Which of two animals or objects is bigger?"""
  items = [(a.name, a.size) for a in facts.ANIMALS] + [(t.name, t.size) for t in facts.THINGS]
  while True:
    (x, sx), (y, sy) = rng.sample(items, 2)
    if sx != sy:
      break
  ans = x if facts.SIZE_ORDER.index(sx) > facts.SIZE_ORDER.index(sy) else y
  choices = (x, y)
  return Example(f"which is bigger, a {x} or a {y}?", ans, choices, choices.index(ans))


@_register("mj_it_opposite", "instruct", "instruct")
def it_opposite(world, rng):
  """Antonyms."""
  a, b = rng.choice(facts.OPPOSITES)
  if rng.random() < 0.5:
    a, b = b, a
  q = rng.choice(["give the opposite of the word {a}.", "what means the reverse of {a}?", "antonym of {a}:",
                  "the opposite of {a} is"]).format(a=a)
  return _ex(q, b, [x for pair in facts.OPPOSITES for x in pair if x != a], 4, rng)


@_register("mj_it_copy", "instruct", "instruct", is_choice=False)
def it_copy(world, rng):
  """Repeat a list of words in reverse order (generation only)."""
  pool = facts.CITIES + facts.JOBS + facts.COLORS + facts.FOODS
  words = rng.sample(pool, rng.randint(2, 4))
  return Example(f"write these words in reverse order: {' '.join(words)}", " ".join(reversed(words)))


@_register("mj_it_friend", "instruct", "instruct")
def it_friend(world, rng):
  """Whose friend is whom: name the best friend of a person."""
  p = rng.choice(world.people)
  q = rng.choice(["who is the best friend of {n}?", "name the friend of {n}.", "{n} is best friends with whom?",
                  "the best friend of {n} is"]).format(n=p.name)
  return _ex(q, p.friend, facts.FEMALE + facts.MALE, 4, rng)


# --------------------------------------------------------------------------------------- pretrain


@_register("mj_corpus", "pretrain", "pretrain", is_choice=False)
def corpus(world, rng):
  """Plain sentences about the world (inputs empty)."""
  return Example("", facts.corpus_document(world, rng))


HELDIN_CATEGORIES = ("mcqa", "extractive_qa", "closed_book_qa", "sentiment", "topic",
                     "struct_to_text", "summarization", "paraphrase")
HELDOUT_CATEGORIES = ("sentence_completion", "nli", "coreference", "word_sense")


def names(group: str, category: str | None = None) -> list[str]:
  return [s.name for s in SPECS.values() if s.group == group and (category is None or s.category == category)]
