"""The synthetic world: people, cities, animals, objects and their relations, and a corpus about it.

Everything is a pure function of an integer seed. The *lexicon* (names, animals, objects, word senses,
scripts) is fixed, so the shipped SentencePiece vocabulary covers every seed; the seed decides which
``NUM_PEOPLE`` of the 40 names are the world's people and the relations (who lives where, works as
what, owns which pet, likes which food, is friends with whom; which city lies in which country and
is known for what).

The pretraining corpus (``corpus_document``) states these facts in plain sentences, together with
general knowledge the held-out tasks need (animal sounds and sizes, what people do when hungry or
tired, both senses of ambiguous words, pronoun use by gender).
"""

from __future__ import annotations

import dataclasses
import functools
import random
import zlib

FEMALE = ("mira", "lena", "sara", "nora", "tina", "ella", "rosa", "ida", "vera", "lisa", "anna",
          "kira", "maya", "zoe", "ruth", "lucy", "nina", "olga", "dana", "emma")
MALE = ("tom", "ben", "leo", "max", "sam", "paul", "omar", "ivan", "hugo", "erik", "noah", "finn",
        "carl", "adam", "dave", "jack", "luke", "mark", "otto", "ray")
CITIES = ("tolvan", "brisk", "morrow", "kelby", "ostra", "lunmar", "pellow", "garrick", "vessa",
          "hollin", "rimbo", "sandor", "quill", "arvik", "dunmore", "fenwick")
COUNTRIES = ("norland", "esteria", "valdor", "kessia")
LANDMARKS = ("castle", "bridge", "tower", "harbor", "market", "lake", "river", "museum")
WEATHER = ("rainy", "sunny", "snowy", "windy")
JOBS = ("baker", "doctor", "teacher", "farmer", "pilot", "painter", "singer", "driver", "nurse",
        "cook", "builder", "fisher")
WORKPLACE = {"baker": "bakery", "doctor": "hospital", "teacher": "school", "farmer": "farm",
             "pilot": "airport", "painter": "studio", "singer": "theater", "driver": "garage",
             "nurse": "clinic", "cook": "kitchen", "builder": "workshop", "fisher": "boat"}
COLORS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple")
FOODS = ("bread", "soup", "rice", "apples", "cheese", "fish", "cake", "eggs", "beans", "pears")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

SIZE_ORDER = ("tiny", "small", "medium", "large", "huge")
# People with facts in a world (half women, half men, drawn from the names above). Small enough that
# the tiny default models can memorize their facts from the corpus within the pretraining budget;
# every name still occurs in the corpus (stories, opinions) with its pronoun.
NUM_PEOPLE = 20


@dataclasses.dataclass(frozen=True)
class Animal:
  name: str
  sound: str       # third person verb: "barks"
  size: str        # one of SIZE_ORDER
  habitat: str
  diet: str


ANIMALS = (
    Animal("dog", "barks", "medium", "house", "meat"),
    Animal("cat", "meows", "small", "house", "fish"),
    Animal("cow", "moos", "large", "farm", "grass"),
    Animal("duck", "quacks", "small", "pond", "seeds"),
    Animal("lion", "roars", "large", "savanna", "meat"),
    Animal("owl", "hoots", "small", "forest", "mice"),
    Animal("sheep", "bleats", "medium", "farm", "grass"),
    Animal("horse", "neighs", "large", "farm", "hay"),
    Animal("frog", "croaks", "tiny", "pond", "insects"),
    Animal("bee", "buzzes", "tiny", "garden", "nectar"),
    Animal("snake", "hisses", "medium", "desert", "mice"),
    Animal("wolf", "howls", "medium", "forest", "meat"),
    Animal("pig", "oinks", "medium", "farm", "scraps"),
    Animal("mouse", "squeaks", "tiny", "field", "seeds"),
    Animal("elephant", "trumpets", "huge", "savanna", "leaves"),
    Animal("crow", "caws", "small", "field", "insects"),
)
ANIMAL_BY_NAME = {a.name: a for a in ANIMALS}


@dataclasses.dataclass(frozen=True)
class Thing:
  name: str
  material: str
  size: str
  use: str         # "to drink tea"


THINGS = (
    Thing("cup", "glass", "small", "to drink tea"),
    Thing("lamp", "metal", "small", "to give light"),
    Thing("chair", "wood", "medium", "to sit on"),
    Thing("table", "wood", "large", "to eat at"),
    Thing("bag", "cloth", "small", "to carry things"),
    Thing("coat", "wool", "medium", "to stay warm"),
    Thing("book", "paper", "small", "to read stories"),
    Thing("key", "metal", "tiny", "to open doors"),
    Thing("clock", "metal", "small", "to tell the time"),
    Thing("box", "paper", "medium", "to store things"),
    Thing("bottle", "glass", "small", "to hold water"),
    Thing("hat", "wool", "small", "to cover the head"),
    Thing("bed", "wood", "large", "to sleep in"),
    Thing("spoon", "metal", "tiny", "to eat soup"),
    Thing("boat", "wood", "huge", "to cross the water"),
    Thing("kite", "paper", "medium", "to play in the wind"),
)
THING_BY_NAME = {t.name: t for t in THINGS}
MATERIALS = tuple(sorted({t.material for t in THINGS}))

# Scripts: a situation causes a need, and a person acts on the need (sentence completion,
# cause / effect). (need, action, situation).
SCRIPTS = (
    ("hungry", "ate a big meal", "had skipped lunch"),
    ("thirsty", "drank a glass of water", "had eaten very salty chips"),
    ("tired", "went to bed early", "had worked for fourteen hours"),
    ("cold", "put on a warm coat", "had waited outside in the snow"),
    ("bored", "read a funny book", "had nothing to do all afternoon"),
    ("dirty", "took a long bath", "had fallen into the mud"),
    ("sick", "went to see a doctor", "had a fever and a cough"),
    ("lost", "asked for directions", "could not find the way home"),
    ("sad", "called an old friend", "had heard some bad news"),
    ("late", "ran to catch the bus", "had woken up after the alarm"),
    ("hot", "opened all the windows", "had sat in the sun all day"),
    ("lonely", "visited a neighbor", "had not seen anyone for a week"),
)

OPPOSITES = (("big", "small"), ("hot", "cold"), ("fast", "slow"), ("happy", "sad"), ("old", "new"),
             ("long", "short"), ("light", "dark"), ("early", "late"), ("full", "empty"),
             ("loud", "quiet"), ("wet", "dry"), ("high", "low"), ("open", "closed"),
             ("clean", "dirty"), ("strong", "weak"), ("rich", "poor"))

# Ambiguous words (word sense): word -> two senses, each (gloss, cue words). A sentence that uses the
# word beside one of a sense's cues ("the bat ... the cave") has that sense; the cues are unique
# across the table and no gloss contains a cue (no answer by copying). Corpus, instruction tuning and
# the held-out task share the cues but not the sentence frames (SENSE_FRAMES), so a sense is known by
# association with its cues, not by memorized sentences (fixed context sentences are memorized and
# do not generalize to new ones).
SENSES = {
    "bat": (("an animal", ("cave", "insects", "wings", "barn")),
            ("a stick for games", ("ball", "score", "coach", "glove"))),
    "bank": (("a place for money", ("coins", "loan", "gold", "safe")),
             ("the side of a river", ("stream", "mud", "reeds", "shore"))),
    "bark": (("the sound of a dog", ("puppy", "growl", "leash", "collar")),
             ("the skin of a tree", ("oak", "trunk", "moss", "beetles"))),
    "spring": (("a season", ("winter", "planting", "april", "flowers")),
               ("a source of water", ("rock", "woods", "thirst", "pebbles"))),
    "ring": (("jewelry for a finger", ("stone", "diamond", "silver", "wedding")),
             ("the sound of a bell or phone", ("doorbell", "alarm", "hall", "chime"))),
    "seal": (("a sea animal", ("zoo", "ice", "beach", "waves")),
             ("a mark that closes a letter", ("wax", "king", "stamp", "parcel"))),
    "match": (("a stick that makes fire", ("candle", "flame", "stove", "sparks")),
              ("a game between teams", ("goal", "referee", "stadium", "tickets"))),
    "pen": (("a tool for writing", ("ink", "desk", "diary", "notebook")),
            ("a place for farm animals", ("sheep", "pigs", "fence", "goats"))),
}
SENSE_WORDS = tuple(SENSES)
# Sentence frames of the word-sense data ("{w}" the ambiguous word, "{c}" and "{d}" cues of one sense,
# "{n}" a name, "{p}" its pronoun), one disjoint set per use: the corpus, instruction tuning
# (mj_it_sense; two cues per sentence: at xs one cue per sentence was learned to only 0.63-0.66 in
# distribution, two to 0.75-0.78) and the held-out task (mj_wsd_gloss; one cue), so no held-out
# sentence occurs in training data (tested).
SENSE_FRAMES = {
    "corpus": ("{n} spotted the {w} close to the {c}.", "the {c} and the {w} were in the same place.",
               "{n} asked about the {w} and the {c}.", "there was a {w} by the {c}."),
    "instruct": ("{n} saw the {w} by the {c}, with the {d}.", "the {w} was right next to the {c}, with the {d}.",
                 "{n} told a story about the {c} and the {w}, with the {d}.",
                 "near the {c}, {p} found the {w}, with the {d}.",
                 "{n} drew a picture of the {w} and the {c}, with the {d}."),
    "heldout": ("{n} thought of the {c} when {p} noticed the {w}.", "the {c} reminded {n} of the {w}.",
                "{n} wrote a note about the {w} and the {c}.", "beside the {w}, {n} kept the {c}."),
}

# Commitment phrases of the NLI tasks (CommitmentBank's speaker commitment, de Marneffe et al. 2019):
# a speaker who "<phrase> <fact>" is committed to the fact (yes), to its negation (no), or to neither
# (maybe). Shared by the held-out mj_nli_cb and the instruction task mj_it_commit that teaches them.
COMMIT_CUES = (("found that", "saw that", "knows that"),
               ("said it is wrong that", "said it is not true that", "said it is incorrect that"),
               ("asked if", "wonders whether", "may think that"))

POS_WORDS = ("great", "lovely", "wonderful", "excellent", "perfect", "pleasant", "amazing", "nice")
NEG_WORDS = ("awful", "terrible", "broken", "horrible", "useless", "poor", "ugly", "disappointing")
STAR_WORDS = (("one", ("terrible", "awful", "horrible")), ("two", ("poor", "bad", "weak")),
              ("three", ("okay", "average", "fine")), ("four", ("good", "nice", "pleasant")),
              ("five", ("excellent", "amazing", "perfect")))


def pronoun(name: str) -> str:
  return "she" if name in FEMALE else "he"


def possessive(name: str) -> str:
  return "her" if name in FEMALE else "his"


def sub_seed(seed: int, *parts: object) -> int:
  """A stable integer seed for a named stream (crc32 of the parts; identical in every run)."""
  return zlib.crc32("/".join([str(seed)] + [str(p) for p in parts]).encode()) & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class Person:
  name: str
  city: str
  job: str
  pet: str
  color: str
  food: str
  friend: str


@dataclasses.dataclass(frozen=True)
class City:
  name: str
  country: str
  landmark: str
  weather: str


@dataclasses.dataclass(frozen=True)
class World:
  """All relations of one generated world."""
  seed: int
  people: tuple[Person, ...]
  cities: tuple[City, ...]

  @functools.cached_property
  def person(self) -> dict[str, Person]:
    return {p.name: p for p in self.people}

  @functools.cached_property
  def city(self) -> dict[str, City]:
    return {c.name: c for c in self.cities}


PERSON_ATTRS = ("city", "job", "pet", "color", "food")
ATTR_VALUES = {"city": CITIES, "job": JOBS, "pet": tuple(a.name for a in ANIMALS), "color": COLORS,
               "food": FOODS}


@functools.lru_cache(maxsize=8)
def make_world(seed: int = 0) -> World:
  """Generates the world for `seed` (deterministic; cached)."""
  rng = random.Random(sub_seed(seed, "world"))
  countries = [COUNTRIES[i % len(COUNTRIES)] for i in range(len(CITIES))]
  rng.shuffle(countries)
  cities = tuple(City(c, countries[i], rng.choice(LANDMARKS), rng.choice(WEATHER))
                 for i, c in enumerate(CITIES))
  names = rng.sample(FEMALE, NUM_PEOPLE // 2) + rng.sample(MALE, NUM_PEOPLE - NUM_PEOPLE // 2)
  friends = names[:]
  while True:  # a derangement: nobody is their own friend
    rng.shuffle(friends)
    if all(a != b for a, b in zip(names, friends)):
      break
  people = tuple(
      Person(n, rng.choice(CITIES), rng.choice(JOBS), rng.choice(ANIMALS).name, rng.choice(COLORS),
             rng.choice(FOODS), f) for n, f in zip(names, friends))
  return World(seed, people, cities)


def person_facts(world: World, name: str, rng: random.Random) -> list[str]:
  """Plain sentences stating a person's facts, pronouns after the first mention."""
  p, pr, po = world.person[name], pronoun(name), possessive(name)
  facts = [
      rng.choice([f"{name} lives in {p.city}.", f"{name} lives in the city of {p.city}."]),
      rng.choice([f"{pr} works as a {p.job}.", f"{pr} is a {p.job}."]),
      rng.choice([f"{pr} has a pet {p.pet}.", f"{po} pet is a {p.pet}."]),
      rng.choice([f"{po} favorite color is {p.color}.", f"{pr} likes the color {p.color}."]),
      rng.choice([f"{pr} likes to eat {p.food}.", f"{po} favorite food is {p.food}."]),
      rng.choice([f"{pr} is a friend of {p.friend}.", f"{po} best friend is {p.friend}."]),
  ]
  first, rest = facts[0], facts[1:]
  rng.shuffle(rest)
  return [first] + rest[: rng.randint(2, 5)]


def city_facts(world: World, name: str, rng: random.Random) -> list[str]:
  c = world.city[name]
  facts = [f"{name} is a city in {c.country}.", f"{name} is known for its {c.landmark}.",
           f"the weather in {name} is often {c.weather}."]
  residents = [p.name for p in world.people if p.city == name]
  if residents:
    facts.append(f"{rng.choice(residents)} lives in {name}.")
  rng.shuffle(facts)
  return facts


def animal_facts(a: Animal, rng: random.Random) -> list[str]:
  facts = [f"the {a.name} is a {a.size} animal.", f"the {a.name} {a.sound}.",
           f"a {a.name} lives in the {a.habitat}.", f"the {a.name} eats {a.diet}.",
           f"you can hear a {a.name} when it {a.sound}.", f"the animal that {a.sound} is the {a.name}."]
  rng.shuffle(facts)
  return facts[:4]


def thing_facts(t: Thing, rng: random.Random) -> list[str]:
  facts = [f"a {t.name} is made of {t.material}.", f"people use a {t.name} {t.use}.",
           f"the {t.name} is a {t.size} object.", f"a {t.name} is useful {t.use}."]
  rng.shuffle(facts)
  return facts[:3]


def job_facts(job: str, rng: random.Random) -> list[str]:
  w = WORKPLACE[job]
  return [rng.choice([f"a {job} works in a {w}.", f"every {job} goes to the {w} to work."])]


def script_story(world: World, rng: random.Random) -> list[str]:
  del world  # stories are about anyone with a name
  name = rng.choice(FEMALE + MALE)
  need, act, situation = rng.choice(SCRIPTS)
  pr = pronoun(name)
  r = rng.random()
  if r < 0.35:
    return [rng.choice([f"{name} {situation}, and {pr} felt {need}.",
                        f"{name} {situation}. {pr} was {need}.",
                        f"when someone {situation}, they get {need}."])]
  if r < 0.7:
    return [rng.choice([f"{name} was {need}, so {pr} {act}.",
                        f"because {name} felt {need}, {pr} {act}.",
                        f"one day {name} was very {need}. {pr} {act}."])]
  # the whole script, situation -> need -> action (the corpus never states the action first: going
  # back from an action to its cause is taught by instruction tuning, mj_it_why)
  return [rng.choice([f"{name} {situation}, so {pr} {act}.",
                      f"{name} {situation}. {pr} felt {need} and {act}."])]


def sense_sentence(use: str, word: str, cues: tuple[str, ...], name: str, rng: random.Random) -> str:
  """A sentence of `SENSE_FRAMES[use]` with the ambiguous `word` beside `cues` (one, or two for
  frames with "{d}")."""
  return rng.choice(SENSE_FRAMES[use]).format(w=word, c=cues[0], d=cues[-1], n=name, p=pronoun(name))


def opinion(world: World, rng: random.Random) -> list[str]:
  del world
  name = rng.choice(FEMALE + MALE)
  thing = rng.choice(THINGS).name
  if rng.random() < 0.5:
    w = rng.choice(POS_WORDS)
    return [f"{name} said the {thing} was {w}.", f"{pronoun(name)} was happy with it."]
  w = rng.choice(NEG_WORDS)
  return [f"{name} said the {thing} was {w}.", f"{pronoun(name)} was unhappy with it."]


def corpus_document(world: World, rng: random.Random) -> str:
  """One pretraining document: a few plain sentences about the world (about 20-60 tokens)."""
  kind = rng.random()
  if kind < 0.35:
    sents = person_facts(world, rng.choice(world.people).name, rng)
  elif kind < 0.5:
    sents = city_facts(world, rng.choice(CITIES), rng)
  elif kind < 0.62:
    sents = animal_facts(rng.choice(ANIMALS), rng)
  elif kind < 0.72:
    sents = thing_facts(rng.choice(THINGS), rng) + job_facts(rng.choice(JOBS), rng)
  elif kind < 0.82:
    sents = script_story(world, rng) + script_story(world, rng)
  elif kind < 0.92:
    word = rng.choice(SENSE_WORDS)
    names = [p.name for p in rng.sample(world.people, 2)]
    r = rng.random()
    if r < 1 / 3:  # two sentences of one sense (two of its cues), then what the word means there
      gloss, cues = SENSES[word][rng.randrange(2)]
      sents = [sense_sentence("corpus", word, (c,), n, rng) for c, n in zip(rng.sample(cues, 2), names)]
      sents.append(f"in both, {word} means {gloss}.")
    elif r < 2 / 3:  # one sentence of each sense, each glossed
      sents = []
      for (gloss, cues), n in zip(rng.sample(SENSES[word], 2), names):
        sents += [sense_sentence("corpus", word, (rng.choice(cues),), n, rng), f"here {word} means {gloss}."]
    else:  # the association itself
      gloss, cues = SENSES[word][rng.randrange(2)]
      c1, c2 = rng.sample(cues, 2)
      sents = [f"a {word} that goes with the {c1} or the {c2} is {gloss}."]
  else:
    sents = opinion(world, rng)
    a, b = rng.choice(OPPOSITES)
    sents.append(f"{a} is the opposite of {b}.")
  return " ".join(sents)
