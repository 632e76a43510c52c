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


# ---------------------------------------------------------------------------------------- held-in
#
# Every held-in dataset mixes items of graded difficulty: part of each can be answered from one cue a
# tiny model learns within an expert's budget, the rest needs a second skill (copying a span from the
# input, resolving a pronoun, reading a contrast), so experts of both sizes land between chance and the
# ceiling. Several datasets train a skill a held-out task needs (the world's causal design, `FEEDS`).


def _graded(rng: random.Random, answer: str, easy: str, hard: str, both: str) -> tuple[tuple[str, ...], int]:
  """Four choices: the answer, one that differs in an easy feature, one in a hard feature (a span to
  copy from the input), one in both. A model that has learned only the easy feature scores 50%."""
  choices = [answer, easy, hard, both]
  rng.shuffle(choices)
  return tuple(choices), choices.index(answer)


def _others(pool, *exclude):
  return [x for x in pool if x not in exclude]


@_register("mj_mcqa_social", "heldin", "mcqa")
def mcqa_social(world, rng):
  """Commonsense multiple-choice QA about everyday situations (Social IQa-like, 4 listed options): what
  someone will do next, why they did something, how they feel. Trains the scripts that held-out
  sentence completion and entailment need."""
  n = rng.choice(facts.FEMALE + facts.MALE)
  pr = facts.pronoun(n)
  need, act, situation = rng.choice(facts.SCRIPTS)
  kind = rng.randrange(3)
  if kind == 0:
    q, ans, pool = f"context: {n} {situation}. question: what will {n} do next?", act, [a for _, a, _ in facts.SCRIPTS]
  elif kind == 1:
    q, ans = f"context: {n} {act}. question: why did {n} do this?", f"because {pr} felt {need}"
    pool = [f"because {pr} felt {x}" for x, _, _ in facts.SCRIPTS]
  else:
    q, ans, pool = f"context: {n} {situation}. question: how does {n} feel now?", need, [x for x, _, _ in facts.SCRIPTS]
  choices, label = _choice(rng, ans, pool, 4)
  return Example(f"{q} {_opts(choices)} the best answer is", ans, choices, label)


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
  """Extractive QA over a short made-up profile (the answer is a span of the context). Graded choices:
  the answer, a span of the context of the wrong kind (a job for "where"), an answer of the right kind
  that the context does not hold, and one of the wrong kind that it does not hold: the question's kind
  is the easy cue, finding the span in the context the hard one."""
  name = rng.choice(facts.FEMALE + facts.MALE)
  city, job, thing, color = (rng.choice(facts.CITIES), rng.choice(facts.JOBS), rng.choice(facts.THINGS).name,
                             rng.choice(facts.COLORS))
  pr = facts.pronoun(name)
  ctx = f"{name} moved to {city} last year. {pr} is a {job} and owns a {color} {thing}."
  city2, job2 = rng.choice(_others(facts.CITIES, city)), rng.choice(_others(facts.JOBS, job))
  own, own2 = f"a {color} {thing}", (f"a {rng.choice(_others(facts.COLORS, color))} {thing}" if rng.random() < 0.5
                                     else f"a {color} {rng.choice(_others([t.name for t in facts.THINGS], thing))}")
  kind = rng.randrange(3)
  if kind == 0:
    q, (ans, easy, hard, both) = f"where did {name} move?", (city, job, city2, job2)
  elif kind == 1:
    q, (ans, easy, hard, both) = f"what does {name} do for work?", (job, city, job2, city2)
  else:
    q, (ans, easy, hard, both) = f"what does {name} own?", (own, f"a {job}", own2, f"a {job2}")
  choices, label = _graded(rng, ans, easy, hard, both)
  return Example(f"read the text and answer. text: {ctx} question: {q}", ans, choices, label)


@_register("mj_exqa_quoref", "heldin", "extractive_qa")
def exqa_quoref(world, rng):
  """Extractive QA that needs coreference (Quoref-like): a woman and a man each pick up a thing, named
  in half of the passages and referred to by pronoun in the other half; which of them picked up the
  asked thing? Choices: both names of the passage and two names it does not mention. Trains the
  pronoun resolution by gender that held-out coreference needs."""
  f, m = rng.choice(facts.FEMALE), rng.choice(facts.MALE)
  a, b = (f, m) if rng.random() < 0.5 else (m, f)
  t1, t2 = (t.name for t in rng.sample(facts.THINGS, 2))
  pl = rng.choice(facts.LANDMARKS)
  if rng.random() < 0.5:
    x, y = a, b
  else:
    x, y = facts.pronoun(a), facts.pronoun(b)
  passage = f"{a} and {b} met at the {pl}. {x} picked up a {t1} and {y} picked up a {t2}."
  who, thing = (a, t1) if rng.random() < 0.5 else (b, t2)
  other = rng.sample(_others(facts.FEMALE + facts.MALE, a, b), 2)
  choices = [a, b] + other
  rng.shuffle(choices)
  return Example(f"passage: {passage} question: who picked up the {thing}? answer with a name from the passage:",
                 who, tuple(choices), choices.index(who))


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
  """Closed-book QA about people and cities (4 choices, not listed in the question). Trains recall of
  the people's facts, which held-out commitment NLI partly rests on (committed facts are true)."""
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
  return _ex(f"q: {q} a:", ans, pool, 4, rng)


@_register("mj_cbqa_sounds", "heldin", "closed_book_qa")
def cbqa_sounds(world, rng):
  """Closed-book trivia about animal sounds, in both directions (4 choices, not listed): which animal
  makes a sound, which sound an animal makes. Trains the recall of sounds that held-out coreference
  (mj_coref_blank) needs."""
  a = rng.choice(facts.ANIMALS)
  n = rng.choice(facts.FEMALE + facts.MALE)
  if rng.random() < 0.5:
    q = rng.choice([f"{n} heard an animal that {a.sound}. which animal was it?",
                    f"out on a walk, {n} heard something that {a.sound}. what animal was that?",
                    f"which animal did {n} hear, if it {a.sound}?"])
    return _ex(f"trivia: {q}", a.name, [x.name for x in facts.ANIMALS if x.sound != a.sound] + [a.name], 4, rng)
  q = rng.choice([f"{n} keeps a {a.name}. what does it do when it makes a sound?",
                  f"{n} walked past a {a.name}. the {a.name} usually does what?",
                  f"what noise would {n} hear from a {a.name}?"])
  return _ex(f"trivia: {q}", a.sound, [x.sound for x in facts.ANIMALS], 4, rng)


@_register("mj_sent_review", "heldin", "sentiment")
def sent_review(world, rng):
  """Binary product-review sentiment (positive / negative). In half the reviews both opinion words agree;
  in the other half the first impression is the opposite of the final verdict, which decides."""
  t = rng.choice(facts.THINGS).name
  label = rng.randrange(2)
  words, opposite = (facts.POS_WORDS, facts.NEG_WORDS) if label == 0 else (facts.NEG_WORDS, facts.POS_WORDS)
  if rng.random() < 0.5:
    a, b = rng.sample(words, 2)
    review = f"this {t} is {a}. the quality is {b}."
  else:
    review = f"at first this {t} looked {rng.choice(opposite)}, but after a week it is {rng.choice(words)}."
  choices = ("positive", "negative")
  return Example(f"review: {review} is this review positive or negative?", choices[label], choices, label)


@_register("mj_sent_stars", "heldin", "sentiment")
def sent_stars(world, rng):
  """Five-class star rating of a restaurant visit, set by the intensity word about the meal; half the
  reviews also rate the waiter, with a word of another class."""
  name = rng.choice(facts.FEMALE + facts.MALE)
  city = rng.choice(facts.CITIES)
  food = rng.choice(facts.FOODS)
  label = rng.randrange(5)
  word = rng.choice(facts.STAR_WORDS[label][1])
  if rng.random() < 0.5:
    text = f"{name} ate {food} at a cafe in {city}. the meal was {word}."
  else:
    other = rng.choice(rng.choice([w for i, (_, w) in enumerate(facts.STAR_WORDS) if i != label]))
    text = f"{name} ate {food} at a cafe in {city}. the waiter was {other}, but the meal was {word}."
  choices = tuple(s for s, _ in facts.STAR_WORDS)
  return Example(f"{text} how many stars would this visit get, from one to five?", choices[label],
                 choices, label)


def _topic_example(rng: random.Random) -> tuple[str, tuple[str, ...], tuple[str, ...], int]:
  """A topic (facts.TOPICS), one or two of its cue words (facts.TOPIC_CUES), and four topics to choose
  from: (topic, cues, choices, label)."""
  topic = rng.choice(facts.TOPICS)
  cues = tuple(rng.sample(facts.TOPIC_CUES[topic], 2 if rng.random() < 0.5 else 1))
  choices, label = _choice(rng, topic, facts.TOPICS, 4)
  return topic, cues, choices, label


@_register("mj_topic_news", "heldin", "topic")
def topic_news(world, rng):
  """News topic classification (AG News-like): the topic is set by one or two cue words (4 of the 7
  topics as choices). Cue words are the word-sense cues (facts.SENSE_TOPIC), so the topic expert learns
  part of what held-out word sense disambiguation needs."""
  _, cues, choices, label = _topic_example(rng)
  city = rng.choice(facts.CITIES)
  stuff = f"the {cues[0]} and the {cues[-1]}" if len(cues) == 2 else f"the {cues[0]}"
  when = rng.choice(("today", "yesterday", "this week") + facts.DAYS)
  text = rng.choice([f"a report from {city} {when} was all about {stuff}.",
                     f"people in {city} talked about {stuff} {when}.",
                     f"{when}, the paper in {city} wrote about {stuff}."])
  return Example(f"news: {text} which topic is this news story? {', '.join(choices)}.", choices[label], choices,
                 label)


@_register("mj_topic_ask", "heldin", "topic")
def topic_ask(world, rng):
  """Question topic classification (Yahoo Answers-like), set by one or two cue words."""
  _, cues, choices, label = _topic_example(rng)
  n = rng.choice(facts.FEMALE + facts.MALE)
  stuff = f"the {cues[0]} or the {cues[-1]}" if len(cues) == 2 else f"the {cues[0]}"
  q = rng.choice([f"where can i find out more about {stuff}?", f"is it hard to draw {stuff}?",
                  f"what should i know about {stuff}?", f"who can tell me about {stuff}?"])
  return Example(f"{n} asked the forum: {q} pick the forum section: {' or '.join(choices)}.", choices[label],
                 choices, label)


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
  """Headline generation for a three-sentence news story (Gigaword-like). Wrong headlines name another
  event, another city (the city must be copied from the article), or both."""
  n, c, d = rng.choice(facts.FEMALE + facts.MALE), rng.choice(facts.CITIES), rng.choice(facts.DAYS)
  i = rng.randrange(len(_EVENTS))
  head, body = _EVENTS[i]
  other_head = rng.choice(_others([h for h, _ in _EVENTS], head))
  c2 = rng.choice(_others(facts.CITIES, c))
  choices, label = _graded(rng, head.format(n=n, c=c), other_head.format(n=n, c=c), head.format(n=n, c=c2),
                           other_head.format(n=n, c=c2))
  return Example(f"article: {body.format(n=n, c=c, d=d)} headline:", choices[label], choices, label)


_DIALOGS = (("{a}: shall we meet at the {pl} on {d}? {b}: yes, see you at the {pl}.",
             "{a} and {b} will meet at the {pl} on {d}."),
            ("{a}: i left my bag at the {pl}. {b}: i will bring it to you on {d}.",
             "{b} will bring the bag from the {pl} on {d}."),
            ("{a}: the {pl} is closed on {d}. {b}: then we go another day.",
             "the {pl} is closed on {d}, so they will go another day."))


@_register("mj_sum_dialog", "heldin", "summarization")
def sum_dialog(world, rng):
  """One-sentence summary of a short dialogue (SAMSum-like). Wrong summaries tell another kind of
  dialogue, another place (to be copied from the dialogue), or both."""
  a, b = rng.sample(facts.FEMALE + facts.MALE, 2)
  d, pl = rng.choice(facts.DAYS), rng.choice(facts.LANDMARKS)
  dlg, summ = rng.choice(_DIALOGS)
  other = rng.choice(_others([s for _, s in _DIALOGS], summ))
  pl2 = rng.choice(_others(facts.LANDMARKS, pl))
  choices, label = _graded(rng, summ.format(a=a, b=b, pl=pl, d=d), other.format(a=a, b=b, pl=pl, d=d),
                           summ.format(a=a, b=b, pl=pl2, d=d), other.format(a=a, b=b, pl=pl2, d=d))
  return Example(f"dialogue: {dlg.format(a=a, b=b, pl=pl, d=d)} summarize the dialogue:", choices[label], choices,
                 label)


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
  """Do two sentences about a person state the same fact (MRPC-like)? same / different. Two thirds of
  the different pairs negate the first sentence, one third changes its value."""
  n = rng.choice(facts.FEMALE + facts.MALE)
  attr = rng.choice(tuple(_PARA))
  v = rng.choice(facts.ATTR_VALUES[attr])
  t1, t2 = rng.sample(_PARA[attr], 2)
  label = rng.randrange(2)
  if label == 0:
    s2 = t2.format(n=n, v=v)
  elif rng.random() < 1 / 3:  # a different value
    s2 = t2.format(n=n, v=rng.choice([x for x in facts.ATTR_VALUES[attr] if x != v]))
  else:  # the negation
    s2 = rng.choice(_PARA_NEG[attr]).format(n=n, v=v)
  choices = ("same", "different")
  return Example(f"sentence a: {t1.format(n=n, v=v)} sentence b: {s2} "
                 "do a and b mean the same or different things?", choices[label], choices, label)


_QQP = {"city": ["where does {n} live?", "in which town is the house of {n}?", "what is the home city of {n}?"],
        "job": ["what does {n} do for a living?", "what is the occupation of {n}?", "how does {n} earn money?"],
        "pet": ["what pet does {n} have?", "which animal does {n} keep at home?", "what is the pet of {n}?"],
        "food": ["what does {n} like to eat?", "which food does {n} enjoy most?", "what is the favorite dish of {n}?"]}


# Non-duplicates that ask for the reason behind the fact: "why" in question two is the one cue an
# expert learns within its budget (as a negation is for `mj_para_mrpc`).
_QQP_WHY = {"city": ["why does {n} live there?", "why did {n} move to that town?"],
            "job": ["why does {n} do that job?", "why did {n} choose that work?"],
            "pet": ["why does {n} keep that pet?", "why did {n} get that animal?"],
            "food": ["why does {n} like that food?", "why does {n} eat that dish?"]}


@_register("mj_para_qqp", "heldin", "paraphrase")
def para_qqp(world, rng):
  """Duplicate question detection (QQP-like): do two questions ask the same thing? yes / no. Two thirds
  of the non-duplicates ask why the fact holds (one cue: "why"); one third ask about another fact of the
  same person (the two questions' topics must be compared)."""
  n = rng.choice(facts.FEMALE + facts.MALE)
  attr = rng.choice(tuple(_QQP))
  q1, q2 = rng.sample(_QQP[attr], 2)
  label = rng.randrange(2)
  if label == 1:
    if rng.random() < 2 / 3:
      q2 = rng.choice(_QQP_WHY[attr])
    else:
      q2 = rng.choice(_QQP[rng.choice(_others(tuple(_QQP), attr))])
  choices = ("yes", "no")
  return Example(f"question one: {q1.format(n=n)} question two: {q2.format(n=n)} are these two questions "
                 "duplicates? yes or no.", choices[label], choices, label)

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
                  f"read: {sent} pick the sense of {word}: {choices[0]} or {choices[1]}. answer:",
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


# Instruction tasks in the formats of the held-in categories, over other data (Flan-v2 holds many
# T0-like task types from datasets other than T0's): they teach the formats (listed options, answers
# copied from a passage, trivia, sentiment and topic labels, data to text, titles, same-meaning
# judgements), never a held-in dataset, so the instruction-tuned base starts ahead of the pretrained one
# on held-in formats, as PaLM-2-IT does. `IT_FORMATS` maps each to the held-in category it mirrors.


# The held-in templates over other data (Flan holds the promptsource templates of T0's tasks applied to
# many datasets): each format task below draws `HELDIN_FRAME_SHARE` of its examples in the prompt frames
# of its category's held-in datasets (their question, answer words and option layout), filled with other
# entities (animals, objects, places, foods, days), never a held-in input. Without them the xs IT base
# meets each held-in frame as new wording and answers it with one constant answer (docs/WORLD.md).
HELDIN_FRAME_SHARE = 0.75


def _antonyms(rng) -> tuple[str, str]:
  """A word and its opposite (`facts.OPPOSITES`), either way round."""
  a, b = rng.choice(facts.OPPOSITES)
  return (b, a) if rng.random() < 0.5 else (a, b)


def _frame_mcqa(world, rng):
  n = rng.choice(facts.FEMALE + facts.MALE)
  if rng.random() < 0.5:  # mj_mcqa_social's frame
    if rng.random() < 0.5:
      j = rng.choice(facts.JOBS)
      q, ans, pool = (f"context: {n} is a {j}. question: where will {n} go in the morning?", facts.WORKPLACE[j],
                      facts.WORKPLACE.values())
    else:
      t = rng.choice(facts.THINGS)
      q, ans, pool = f"context: {n} took a {t.name}. question: why did {n} take it?", t.use, [x.use for x in facts.THINGS]
    choices, label = _choice(rng, ans, pool, 4)
    return Example(f"{q} {_opts(choices)} the best answer is", ans, choices, label)
  if rng.random() < 0.5:  # mj_mcqa_nature's frame
    a = rng.choice(facts.ANIMALS)
    q, ans, pool = f"what sound does a {a.name} make?", a.sound, [x.sound for x in facts.ANIMALS]
  else:
    a, b = _antonyms(rng)
    q, ans, pool = f"which word means the opposite of {a}?", b, [x for pair in facts.OPPOSITES for x in pair if x != a]
  choices, label = _choice(rng, ans, pool, 4)
  return Example(f"science quiz. {q} {_opts(choices)} pick the right choice:", ans, choices, label)


def _frame_extractive(world, rng):
  if rng.random() < 0.5:  # mj_exqa_quoref's frame: people and foods, named or by pronoun
    a, b, _, _ = _mixed_pair(rng)
    f1, f2 = rng.sample(facts.FOODS, 2)
    pl = rng.choice(facts.LANDMARKS)
    x, y = (a, b) if rng.random() < 0.5 else (facts.pronoun(a), facts.pronoun(b))
    verb = rng.choice(("picked up", "ate", "bought"))
    who, food = (a, f1) if rng.random() < 0.5 else (b, f2)
    choices = [a, b] + rng.sample(_others(facts.FEMALE + facts.MALE, a, b), 2)
    rng.shuffle(choices)
    return Example(f"passage: {a} and {b} sat by the {pl}. {x} {verb} the {f1} and {y} {verb} the {f2}. question: "
                   f"who {verb} the {food}? answer with a name from the passage:", who, tuple(choices), choices.index(who))
  # mj_exqa_profile's frame: a visit, with graded choices (the question's kind easy, the span hard)
  n = rng.choice(facts.FEMALE + facts.MALE)
  pl, food, an = rng.choice(facts.LANDMARKS), rng.choice(facts.FOODS), rng.choice(facts.ANIMALS).name
  pl2, food2 = rng.choice(_others(facts.LANDMARKS, pl)), rng.choice(_others(facts.FOODS, food))
  an2 = rng.choice(_others([x.name for x in facts.ANIMALS], an))
  ctx = f"{n} went to the {pl} on {rng.choice(facts.DAYS)}. {facts.pronoun(n)} bought {food} and saw a {an}."
  kind = rng.randrange(3)
  if kind == 0:
    q, (ans, easy, hard, both) = f"where did {n} go?", (f"the {pl}", food, f"the {pl2}", food2)
  elif kind == 1:
    q, (ans, easy, hard, both) = f"what did {n} buy?", (food, f"the {pl}", food2, f"the {pl2}")
  else:
    q, (ans, easy, hard, both) = f"which animal did {n} see?", (f"a {an}", food, f"a {an2}", food2)
  choices, label = _graded(rng, ans, easy, hard, both)
  return Example(f"read the text and answer. text: {ctx} question: {q}", ans, choices, label)


def _frame_closed_book(world, rng):
  n = rng.choice(facts.FEMALE + facts.MALE)
  if rng.random() < 0.5:  # mj_cbqa_facts's frame
    j = rng.choice(facts.JOBS)
    q = rng.choice([f"where does a {j} go to work?", f"a {j} works in which place?", f"name the workplace of a {j}."])
    return _ex(f"q: {q} a:", facts.WORKPLACE[j], facts.WORKPLACE.values(), 4, rng)
  t = rng.choice(facts.THINGS)  # mj_cbqa_sounds's frame
  q = rng.choice([f"{n} found a {t.name}. what is it made of?", f"{n} built a {t.name}. which material did it take?"])
  return _ex(f"trivia: {q}", t.material, facts.MATERIALS, 4, rng)


def _frame_sentiment(world, rng):
  """mj_sent_review's frame over places, foods and animals (its two review kinds: agreeing opinion words,
  and a first impression reversed by the verdict)."""
  label = rng.randrange(2)
  words, opposite = (facts.POS_WORDS, facts.NEG_WORDS) if label == 0 else (facts.NEG_WORDS, facts.POS_WORDS)
  x = rng.choice([f"the {rng.choice(facts.LANDMARKS)}", f"the {rng.choice(facts.FOODS)}",
                  f"the {rng.choice(facts.ANIMALS).name} show"])
  if rng.random() < 0.5:
    a, b = rng.sample(words, 2)
    review = rng.choice([f"{x} was {a}. the visit was {b}.", f"we found {x} {a}, and the day was {b}."])
  else:
    review = rng.choice([f"at first {x} seemed {rng.choice(opposite)}, but in the end it was {rng.choice(words)}.",
                         f"{x} sounded {rng.choice(opposite)} at first, but it turned out {rng.choice(words)}."])
  choices = ("positive", "negative")
  return Example(f"review: {review} is this review positive or negative?", choices[label], choices, label)


def _frame_topic(world, rng, text, label, choices):
  listed = list(choices)
  rng.shuffle(listed)
  if rng.random() < 0.5:  # mj_topic_news's frame
    return Example(f"news: {text} which topic is this news story? {', '.join(listed)}.", choices[label], choices, label)
  n = rng.choice(facts.FEMALE + facts.MALE)  # mj_topic_ask's frame
  q = rng.choice([f"what should i know about this: {text}", f"who can tell me more? {text}"])
  return Example(f"{n} asked the forum: {q} pick the forum section: {' or '.join(listed)}.", choices[label], choices,
                 label)


def _frame_struct(world, rng):
  n, n2 = rng.sample(facts.FEMALE + facts.MALE, 2)
  food, d = rng.choice(facts.FOODS), rng.choice(facts.DAYS)
  food2, d2 = rng.choice(_others(facts.FOODS, food)), rng.choice(_others(facts.DAYS, d))
  if rng.random() < 0.5:  # mj_s2t_bio's frame
    choices, label = _graded(rng, f"{n} eats {food} on {d}.", f"{n} eats {food2} on {d}.", f"{n} eats {food} on {d2}.",
                             f"{n} eats {food2} on {d2}.")
    return Example(f"table: name = {n} | food = {food} | day = {d}. turn the table into a sentence:", choices[label],
                   choices, label)
  concepts = [n, food, d]  # mj_s2t_concepts's frame
  rng.shuffle(concepts)
  choices, label = _graded(rng, f"{n} ate {food} on {d}.", f"{n2} ate {food} on {d}.", f"{n} ate {food2} on {d}.",
                           f"{n2} ate {food2} on {d}.")
  return Example(f"concepts: {', '.join(concepts)}. write a sentence using all the concepts:", choices[label], choices,
                 label)


_IT_EVENTS = (("{a} seen near {c}", "a wild {a} was seen near {c} on {d}. people took photos. then it went back to the woods."),
              ("market opens in {c}", "on {d} a new market opened in {c}. people came to buy food. it will open every week."),
              ("river floods streets of {c}", "after heavy rain on {d} the river in {c} rose. water filled the streets. shops were closed."),
              ("school in {c} wins prize", "on {d} a school in {c} won a prize for its garden. the children planted flowers."))
_IT_DIALOGS = (("{a}: i will cook {x} on {d}. {b}: great, i will bring drinks.", "{a} will cook {x} on {d}."),
               ("{a}: did you buy {x}? {b}: not yet, i will buy {x} on {d}.", "{b} will buy {x} on {d}."),
               ("{a}: i do not like {x}. {b}: then we eat something else on {d}.",
                "{a} does not like {x}, so they will eat something else."))


def _frame_summary(world, rng):
  n, d = rng.choice(facts.FEMALE + facts.MALE), rng.choice(facts.DAYS)
  if rng.random() < 0.5:  # mj_sum_news's frame: the city must be copied
    c, an = rng.choice(facts.CITIES), rng.choice(facts.ANIMALS).name
    head, body = rng.choice(_IT_EVENTS)
    other = rng.choice(_others([h for h, _ in _IT_EVENTS], head))
    c2 = rng.choice(_others(facts.CITIES, c))
    choices, label = _graded(rng, head.format(a=an, c=c), other.format(a=an, c=c), head.format(a=an, c=c2),
                             other.format(a=an, c=c2))
    return Example(f"article: {body.format(a=an, c=c, d=d)} headline:", choices[label], choices, label)
  a, b = rng.sample(facts.FEMALE + facts.MALE, 2)  # mj_sum_dialog's frame: the food must be copied
  x, x2 = rng.sample(facts.FOODS, 2)
  dlg, summ = rng.choice(_IT_DIALOGS)
  other = rng.choice(_others([s for _, s in _IT_DIALOGS], summ))
  choices, label = _graded(rng, summ.format(a=a, b=b, x=x, d=d), other.format(a=a, b=b, x=x, d=d),
                           summ.format(a=a, b=b, x=x2, d=d), other.format(a=a, b=b, x=x2, d=d))
  return Example(f"dialogue: {dlg.format(a=a, b=b, x=x, d=d)} summarize the dialogue:", choices[label], choices, label)


_IT_PARA = {"home": ["the {a} lives in the {v}.", "the home of the {a} is the {v}.", "the {v} is where the {a} lives."],
            "food": ["the {a} eats {v}.", "the food of the {a} is {v}.", "{v} is what the {a} eats."]}
_IT_PARA_NEG = {"home": ["the {a} does not live in the {v}.", "the {a} has never lived in the {v}."],
                "food": ["the {a} never eats {v}.", "the {a} does not eat {v}."]}
_IT_QQP = {"home": ["where does the {a} live?", "what is the home of the {a}?", "in which place is the {a} found?"],
           "food": ["what does the {a} eat?", "what is the food of the {a}?", "which food does the {a} need?"]}
_IT_QQP_WHY = {"home": ["why does the {a} live there?", "why is the {a} found in that place?"],
               "food": ["why does the {a} eat that?", "why does the {a} need that food?"]}


def _frame_paraphrase(world, rng, label):
  """The paraphrase frames over animals; `label` 0 is the same meaning."""
  an = rng.choice(facts.ANIMALS)
  attr = rng.choice(("home", "food"))
  values = sorted({x.habitat for x in facts.ANIMALS}) if attr == "home" else sorted({x.diet for x in facts.ANIMALS})
  v = an.habitat if attr == "home" else an.diet
  if rng.random() < 0.5:  # mj_para_mrpc's frame
    t1, t2 = rng.sample(_IT_PARA[attr], 2)
    if label == 0:
      s2 = t2.format(a=an.name, v=v)
    elif rng.random() < 1 / 3:
      s2 = t2.format(a=an.name, v=rng.choice(_others(values, v)))
    else:
      s2 = rng.choice(_IT_PARA_NEG[attr]).format(a=an.name, v=v)
    choices = ("same", "different")
    return Example(f"sentence a: {t1.format(a=an.name, v=v)} sentence b: {s2} do a and b mean the same or different "
                   "things?", choices[label], choices, label)
  q1, q2 = rng.sample(_IT_QQP[attr], 2)  # mj_para_qqp's frame
  if label == 1:
    q2 = rng.choice(_IT_QQP_WHY[attr]) if rng.random() < 2 / 3 else rng.choice(_IT_QQP[rng.choice(_others(tuple(_IT_QQP), attr))])
  choices = ("yes", "no")
  return Example(f"question one: {q1.format(a=an.name)} question two: {q2.format(a=an.name)} are these two questions "
                 "duplicates? yes or no.", choices[label], choices, label)


@_register("mj_it_options", "instruct", "instruct")
def it_options(world, rng):
  """Questions with listed options about workplaces, countries and antonyms (multiple-choice format)."""
  if rng.random() < HELDIN_FRAME_SHARE:
    return _frame_mcqa(world, rng)
  kind = rng.randrange(3)
  if kind == 0:
    j = rng.choice(facts.JOBS)
    q, ans, pool = f"where does a {j} go to work?", facts.WORKPLACE[j], facts.WORKPLACE.values()
  elif kind == 1:
    c = rng.choice(world.cities)
    q, ans, pool = f"in which country is {c.name}?", c.country, facts.COUNTRIES
  else:
    a, b = _antonyms(rng)
    q, ans, pool = f"what is the opposite of {a}?", b, [x for pair in facts.OPPOSITES for x in pair if x != a]
  choices, label = _choice(rng, ans, pool, 4)
  return Example(f"{q} choose from: {_opts(choices)}. answer:", ans, choices, label)


@_register("mj_it_passage", "instruct", "instruct")
def it_passage(world, rng):
  """Answer with a word of a passage about two animals (extractive format)."""
  if rng.random() < HELDIN_FRAME_SHARE:
    return _frame_extractive(world, rng)
  a1, a2 = (a.name for a in rng.sample(facts.ANIMALS, 2))
  t1, t2 = (t.name for t in rng.sample(facts.THINGS, 2))
  pl = rng.choice(facts.LANDMARKS)
  passage = f"a {a1} and a {a2} came to the {pl}. the {a1} carried a {t1}, the {a2} carried a {t2}."
  who, thing = (a1, t1) if rng.random() < 0.5 else (a2, t2)
  choices = [a1, a2] + rng.sample(_others([a.name for a in facts.ANIMALS], a1, a2), 2)
  rng.shuffle(choices)
  return Example(f"{passage} which animal carried the {thing}? copy the answer from the passage:", who,
                 tuple(choices), choices.index(who))


@_register("mj_it_trivia", "instruct", "instruct")
def it_trivia(world, rng):
  """Trivia about objects and workplaces, answers not listed (closed-book format)."""
  if rng.random() < HELDIN_FRAME_SHARE:
    return _frame_closed_book(world, rng)
  n = rng.choice(facts.FEMALE + facts.MALE)
  kind = rng.randrange(3)
  if kind == 0:
    t = rng.choice(facts.THINGS)
    return _ex(f"trivia: {n} has a {t.name}. what is it made of?", t.material, facts.MATERIALS, 4, rng)
  if kind == 1:
    t = rng.choice(facts.THINGS)
    return _ex(f"trivia: why would {n} need a {t.name}?", t.use, [x.use for x in facts.THINGS], 4, rng)
  j = rng.choice(facts.JOBS)
  return _ex(f"trivia: {n} is a {j}. in which place does {facts.pronoun(n)} work?", facts.WORKPLACE[j],
             facts.WORKPLACE.values(), 4, rng)


@_register("mj_it_mood", "instruct", "instruct")
def it_mood(world, rng):
  """Is a reported opinion positive or negative (sentiment format, other texts)?"""
  if rng.random() < HELDIN_FRAME_SHARE:
    return _frame_sentiment(world, rng)
  n = rng.choice(facts.FEMALE + facts.MALE)
  t = rng.choice(facts.THINGS).name
  label = rng.randrange(2)
  w = rng.choice(facts.POS_WORDS if label == 0 else facts.NEG_WORDS)
  choices = ("positive", "negative")
  return Example(f"{n} told a friend that the {t} was {w}. was {n} positive or negative about it?",
                 choices[label], choices, label)


@_register("mj_it_category", "instruct", "instruct")
def it_category(world, rng):
  """Which kind of thing a sentence is about: a person, a place, an animal or an object (topic format)."""
  choices = ("a person", "a place", "an animal", "an object")
  label = rng.randrange(4)
  if label == 0:
    sent = facts.person_facts(world, rng.choice(world.people).name, rng)[0]
  elif label == 1:
    sent = rng.choice([x for x in facts.city_facts(world, rng.choice(facts.CITIES), rng) if " lives in " not in x])
  elif label == 2:
    sent = facts.animal_facts(rng.choice(facts.ANIMALS), rng)[0]
  else:
    sent = facts.thing_facts(rng.choice(facts.THINGS), rng)[0]
  if rng.random() < HELDIN_FRAME_SHARE:
    return _frame_topic(world, rng, sent, label, choices)
  return Example(f"text: {sent} what is the text about? a person, a place, an animal or an object?",
                 choices[label], choices, label)


@_register("mj_it_describe", "instruct", "instruct")
def it_describe(world, rng):
  """Data fields about a pet written as a sentence (data-to-text format)."""
  if rng.random() < HELDIN_FRAME_SHARE:
    return _frame_struct(world, rng)
  n, n2 = rng.sample(facts.FEMALE + facts.MALE, 2)
  a, b = rng.sample(facts.ANIMALS, 2)
  choices, label = _graded(rng, f"the {a.name} of {n} {a.sound}.", f"the {b.name} of {n} {b.sound}.",
                           f"the {a.name} of {n2} {a.sound}.", f"the {b.name} of {n2} {b.sound}.")
  return Example(f"data: owner = {n} | pet = {a.name}. write the data as one sentence:", choices[label], choices,
                 label)


@_register("mj_it_title", "instruct", "instruct")
def it_title(world, rng):
  """A title for a two-sentence story (summarization format)."""
  if rng.random() < HELDIN_FRAME_SHARE:
    return _frame_summary(world, rng)
  n = rng.choice(facts.FEMALE + facts.MALE)
  need, act, situation = rng.choice(facts.SCRIPTS)
  _, act2, _ = rng.choice([s for s in facts.SCRIPTS if s[1] != act])
  n2 = rng.choice(_others(facts.FEMALE + facts.MALE, n))
  choices, label = _graded(rng, f"{n} {act}", f"{n} {act2}", f"{n2} {act}", f"{n2} {act2}")
  return Example(f"story: {n} {situation}. {facts.pronoun(n)} felt {need} and {act}. a good title for the story:",
                 choices[label], choices, label)


@_register("mj_it_same", "instruct", "instruct")
def it_same(world, rng):
  """Do two sentences about an object say the same? yes / no (same-meaning format; antonyms and negation)."""
  t = rng.choice(facts.THINGS).name
  a, b = _antonyms(rng)
  label = rng.randrange(2)
  if rng.random() < HELDIN_FRAME_SHARE:
    return _frame_paraphrase(world, rng, label)
  second = (rng.choice([f"the {t} is not {b}.", f"the {t} is really {a}."]) if label == 0
            else rng.choice([f"the {t} is {b}.", f"the {t} is not {a}."]))
  choices = ("yes", "no")
  return Example(f"first: the {t} is {a}. second: {second} do the first and the second say the same? yes or no.",
                 choices[label], choices, label)


@_register("mj_it_copy", "instruct", "instruct", is_choice=False)
def it_copy(world, rng):
  """Repeat a list of words in reverse order (generation only)."""
  pool = facts.CITIES + facts.JOBS + facts.COLORS + facts.FOODS
  words = rng.sample(pool, rng.randint(2, 4))
  return Example(f"write these words in reverse order: {' '.join(words)}", " ".join(reversed(words)))


# --------------------------------------------------------------------------------------- pretrain


@_register("mj_corpus", "pretrain", "pretrain", is_choice=False)
def corpus(world, rng):
  """Plain sentences about the world (inputs empty)."""
  return Example("", facts.corpus_document(world, rng))


HELDIN_CATEGORIES = ("mcqa", "extractive_qa", "closed_book_qa", "sentiment", "topic",
                     "struct_to_text", "summarization", "paraphrase")
HELDOUT_CATEGORIES = ("sentence_completion", "nli", "coreference", "word_sense")

# The held-in category whose format each instruction task mirrors (over other data).
IT_FORMATS = {"mj_it_options": "mcqa", "mj_it_passage": "extractive_qa", "mj_it_trivia": "closed_book_qa",
              "mj_it_mood": "sentiment", "mj_it_category": "topic", "mj_it_describe": "struct_to_text",
              "mj_it_title": "summarization", "mj_it_same": "paraphrase"}

# The world's causal design: held-in datasets that train a skill a held-out dataset needs, with the
# skill (docs/WORLD.md). Merging their experts can transfer to those held-out tasks; every other
# held-in dataset shares no skill with a held-out one and can only interfere there.
FEEDS = {
    "mj_mcqa_social": (("mj_sc_story", "mj_sc_copa", "mj_nli_entail"),
                       "the scripts: situation -> action, and action -> need"),
    "mj_exqa_quoref": (("mj_coref_pronoun",), "resolving a pronoun to one of two names by gender"),
    "mj_cbqa_sounds": (("mj_coref_blank",), "which animal makes which sound"),
    "mj_cbqa_facts": (("mj_nli_cb",), "the people's facts (committed facts are true, denied ones false)"),
    "mj_topic_news": (("mj_wsd_gloss",), "the topic of a sense's cue words"),
    "mj_topic_ask": (("mj_wsd_gloss",), "the topic of a sense's cue words"),
}


def names(group: str, category: str | None = None) -> list[str]:
  return [s.name for s in SPECS.values() if s.group == group and (category is None or s.category == category)]
