"""A mini world: a seeded fictional encyclopedia of people, companies, cities, countries and works.

Names are invented one- or two-syllable words, so no fact can be guessed or remembered from pretraining. Each
entity has one short article whose sentences state its facts; a question follows one to three facts (a chain of
pages) from a start entity. The templates below are the world's whole language: its questions, the noun phrases
that chain them, and the goals and restatements the scripted expert (teacher.py) uses.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

from litere.env import SETTINGS_META_KEY, EnvSettings, PageStore
from litere.env.text import terms
from litere.world.names import NameDrawer

# relation: (subject kind, object kind or None for a literal)
RELATIONS = {
    "birth_city": ("person", "city"), "birth_year": ("person", None), "employer": ("person", "company"),
    "founder": ("company", "person"), "founded": ("company", None), "hq": ("company", "city"),
    "employees": ("company", None), "country": ("city", "country"), "population": ("city", None),
    "mayor": ("city", "person"), "capital": ("country", "city"), "currency": ("country", None),
    "author": ("work", "person"), "released": ("work", None),
}
# the question asking for relation r of a noun phrase
QUESTION = {
    "birth_city": "In which city was {} born?", "birth_year": "In which year was {} born?",
    "employer": "Which company does {} work for?", "founder": "Who founded {}?",
    "founded": "In which year was {} founded?", "hq": "In which city are the headquarters of {}?",
    "employees": "How many employees does {} have?", "country": "In which country is {}?",
    "population": "What is the population of {}?", "mayor": "Who is the mayor of {}?",
    "capital": "What is the capital of {}?", "currency": "What is the currency of {}?",
    "author": "Who created {}?", "released": "In which year was {} released?",
}
# a noun phrase for the entity that relation r leads to
NOUN_PHRASE = {
    "birth_city": "the city where {} was born", "employer": "the company {} works for",
    "founder": "the founder of {}", "hq": "the headquarters city of {}", "country": "the country {} is in",
    "mayor": "the mayor of {}", "capital": "the capital of {}", "author": "the creator of {}",
}
# how a person's article mentions the entities whose facts point at the person
MENTION = {"founder": "{} started {}.", "mayor": "{} is the mayor of {}.", "author": "{} made {}."}
OCCUPATIONS = ["painter", "farmer", "teacher", "doctor", "engineer", "pilot", "chef", "lawyer", "writer", "singer",
               "nurse", "architect", "sailor", "potter", "tailor", "judge"]
HOBBIES = ["chess", "sailing", "painting", "cycling", "gardening", "music", "hiking", "fishing", "cooking", "poetry"]
COMPANY_KINDS = {"Foods": "food", "Motors": "car", "Press": "publishing", "Bank": "banking", "Media": "media",
                 "Energy": "energy", "Games": "games", "Mining": "mining", "Airlines": "airline", "Labs": "research",
                 "Textiles": "textile", "Shipping": "shipping"}
CITY_FEATURES = ["bridges", "markets", "parks", "harbour", "festivals", "museums", "gardens", "towers", "canals"]
WORK_KINDS = ["novel", "film", "album", "play", "painting", "opera"]
WORK_NOUNS = ["Road", "Song", "Tide", "Garden", "Winter", "Glass", "Crown", "Mirror", "Lantern", "Harvest",
              "Island", "Storm", "Feather", "Bell", "Shadow", "Orchard"]
# what the expert looks for on a page (worded like the page's sentence, for the extractive visit)
GOAL = {
    "birth_city": "the city where {} was born", "birth_year": "the year {} was born",
    "employer": "the company {} works for", "founder": "who founded {}", "founded": "the year {} was founded",
    "hq": "the headquarters city of {}", "employees": "the number of employees of {}",
    "country": "the country {} is in", "population": "the population of {}", "mayor": "the mayor of {}",
    "capital": "the capital of {}", "currency": "the currency of {}", "author": "who created {}",
    "released": "the year {} was released",
}
# the expert's restatement of a fact it read: (subject, value)
FACT = {
    "birth_city": "{} was born in {}", "birth_year": "{} was born in {}", "employer": "{} works for {}",
    "founder": "{} was founded by {}", "founded": "{} was founded in {}", "hq": "the headquarters of {} are in {}",
    "employees": "{} has {} employees", "country": "{} is in {}", "population": "{} has a population of {}",
    "mayor": "the mayor of {} is {}", "capital": "the capital of {} is {}",
    "currency": "the currency of {} is the {}", "author": "{} was created by {}", "released": "{} was released in {}",
}
# words of the templates above: never used as names
RESERVED = frozenset(terms(" ".join([*QUESTION.values(), *NOUN_PHRASE.values(), *GOAL.values(), *FACT.values(),
                                     *MENTION.values(),
                                     *OCCUPATIONS, *HOBBIES, *COMPANY_KINDS, *COMPANY_KINDS.values(),
                                     *CITY_FEATURES, *WORK_KINDS, *WORK_NOUNS,
                                     "is a company city country with cities known for its enjoys employees "
                                     "headquarters of are in was born founded by created released mayor "
                                     "capital currency the population has answer result page question"])))


@dataclass(frozen=True)
class WorldSize:
    people: int = 120
    companies: int = 40
    cities: int = 30
    countries: int = 6
    works: int = 40


@dataclass
class Entity:
    kind: str
    name: str
    url: str
    facts: dict = field(default_factory=dict)         # relation or attribute -> entity name or literal
    sentences: list = field(default_factory=list)     # the article, in order
    fact_sentence: dict = field(default_factory=dict)   # relation -> the sentence stating it

    @property
    def mention(self) -> str:
        """How a question names the entity (a work's title alone could be anything)."""
        return f"the {self.facts['kind']} {self.name}" if self.kind == "work" else self.name


@dataclass(frozen=True)
class WorldQuestion:
    start: str                  # entity name
    chain: tuple[str, ...]      # relations followed from the start entity
    text: str
    answer: str

    @property
    def data_source(self) -> str:
        return "world-direct" if len(self.chain) == 1 else f"world-{len(self.chain)}hop"


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def train_world_seed(seed: int, index: int) -> int:
    """The seed of training world `index` of a build with `seed` (the evaluation world uses `seed` itself)."""
    return seed * 1_000_003 + index


def world_rng(pool: str, seed: int) -> random.Random:
    return random.Random(f"litere-world:{pool}:{seed}")   # string seeds hash the same in every process


class World:
    """One generated world; the same (pool, seed, size, url_prefix) always gives the same world."""

    def __init__(self, seed: int, pool: str = "train", size: WorldSize = WorldSize(), url_prefix: str = "w/"):
        self.seed, self.pool, self.size, self.url_prefix = seed, pool, size, url_prefix
        self.entities: dict[str, Entity] = {}
        self._generate(world_rng(pool, seed))

    def _add(self, entity_kind: str, name: str, **facts) -> Entity:
        entity = Entity(entity_kind, name, self.url_prefix + name.lower().replace(" ", "-"), dict(facts))
        self.entities[name] = entity
        return entity

    def of_kind(self, kind: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == kind]

    def _generate(self, rng: random.Random) -> None:
        s = self.size
        names = NameDrawer(self.pool, rng, RESERVED)
        countries = [self._add("country", names.draw(), currency=names.draw()) for _ in range(s.countries)]
        cities = [self._add("city", names.draw(), population=rng.randrange(2_000, 900_000, 10),
                            feature=rng.choice(CITY_FEATURES)) for _ in range(s.cities)]
        for i, city in enumerate(cities):   # every country has at least one city; its first one is the capital
            country = countries[i] if i < len(countries) else rng.choice(countries)
            city.facts["country"] = country.name
            country.facts.setdefault("capital", city.name)
        people = [self._add("person", f"{names.draw()} {names.draw()}", birth_city=rng.choice(cities).name,
                            birth_year=rng.randint(1930, 2000), occupation=rng.choice(OCCUPATIONS),
                            hobby=rng.choice(HOBBIES)) for _ in range(s.people)]
        suffixes = list(COMPANY_KINDS)
        companies = []
        for _ in range(s.companies):
            founder = rng.choice(people)
            born = founder.facts["birth_year"]
            companies.append(self._add("company", f"{names.draw()} {rng.choice(suffixes)}", founder=founder.name,
                                       founded=rng.randint(born + 20, min(2020, born + 70)),
                                       hq=rng.choice(cities).name, employees=rng.randint(10, 9000)))
        for person in people:
            person.facts["employer"] = rng.choice(companies).name
        for city, mayor in zip(cities, rng.sample(people, len(cities))):
            city.facts["mayor"] = mayor.name
        for _ in range(s.works):
            author = rng.choice(people)
            self._add("work", f"{names.draw()} {rng.choice(WORK_NOUNS)}", kind=rng.choice(WORK_KINDS),
                      author=author.name, released=rng.randint(author.facts["birth_year"] + 15, 2024))
        mentions: dict[str, list[tuple[str, str]]] = {}
        for entity in self.entities.values():
            for relation in MENTION:
                if relation in entity.facts:
                    mentions.setdefault(entity.facts[relation], []).append((relation, entity.name))
        for entity in self.entities.values():
            self._write_article(entity, mentions)

    def _write_article(self, e: Entity, mentions: dict[str, list[tuple[str, str]]]) -> None:
        f, n = e.facts, e.name

        def say(text: str, relation: str | None = None) -> None:
            e.sentences.append(text)
            if relation:
                e.fact_sentence[relation] = text

        if e.kind == "person":
            say(f"{n} is {_a(f['occupation'])}.")
            say(f"{n} was born in {f['birth_city']} in {f['birth_year']}.", "birth_city")
            e.fact_sentence["birth_year"] = e.sentences[-1]
            say(f"{n} works for {f['employer']}.", "employer")
            say(f"{n} enjoys {f['hobby']}.")
            for relation, other in mentions.get(n, ()):   # mentions elsewhere: distractors for search and reading
                say(MENTION[relation].format(n, other))
        elif e.kind == "company":
            say(f"{n} is {_a(COMPANY_KINDS[n.split()[-1]])} company.")
            say(f"{n} was founded in {f['founded']} by {f['founder']}.", "founder")
            e.fact_sentence["founded"] = e.sentences[-1]
            say(f"The headquarters of {n} are in {f['hq']}.", "hq")
            say(f"{n} has {f['employees']} employees.", "employees")
        elif e.kind == "city":
            say(f"{n} is a city in the country of {f['country']}.", "country")
            say(f"{n} has a population of {f['population']}.", "population")
            say(f"The mayor of {n} is {f['mayor']}.", "mayor")
            say(f"{n} is known for its {f['feature']}.")
        elif e.kind == "country":
            cities = sum(1 for c in self.entities.values() if c.facts.get("country") == n)
            say(f"{n} is a country with {cities} cities.")
            say(f"The capital of {n} is {f['capital']}.", "capital")
            say(f"The currency of {n} is the {f['currency']}.", "currency")
        else:
            say(f"{n} is {_a(f['kind'])} created by {f['author']}.", "author")
            say(f"{n} was released in {f['released']}.", "released")

    def pages(self) -> list[tuple[str, str, str]]:
        """(url, title, text) of every article, in generation order."""
        return [(e.url, e.name, " ".join(e.sentences)) for e in self.entities.values()]

    def store(self, settings: EnvSettings, path: str = ":memory:") -> PageStore:
        store = PageStore(path)
        store.add_pages(self.pages())
        store.set_meta(SETTINGS_META_KEY, settings.to_dict())
        return store

    def follow(self, start: str, chain: tuple[str, ...]) -> list[str]:
        """The values met along a chain of relations (the last one is the answer)."""
        values, current = [], start
        for relation in chain:
            current = str(self.entities[current].facts[relation])
            values.append(current)
        return values

    def candidates(self, hops: int) -> list[tuple[str, tuple[str, ...]]]:
        """Every (start entity, relation chain) of `hops` facts, in a fixed order."""
        return [(e.name, chain) for e in self.entities.values() for chain in _chains(e.kind, hops)]

    def question(self, start: str, chain: tuple[str, ...]) -> WorldQuestion | None:
        """The question following `chain` from `start`, or None when an answer or step would repeat an entity
        already on the chain (such a question answers itself)."""
        values = self.follow(start, chain)
        if len(set(values)) < len(values) or start in values:
            return None
        phrase = self.entities[start].mention
        for relation in chain[:-1]:
            phrase = NOUN_PHRASE[relation].format(phrase)
        return WorldQuestion(start, chain, QUESTION[chain[-1]].format(phrase), values[-1])

    def questions(self, hops: int) -> list[WorldQuestion]:
        return [q for q in (self.question(*c) for c in self.candidates(hops)) if q is not None]


@lru_cache(maxsize=None)
def _chains(kind: str, hops: int) -> tuple[tuple[str, ...], ...]:
    """Relation chains of exactly `hops` facts starting from an entity of `kind`."""
    out = []
    for relation, (subject, obj) in RELATIONS.items():
        if subject != kind:
            continue
        if hops == 1:
            out.append((relation,))
        elif obj is not None:
            out.extend((relation, *rest) for rest in _chains(obj, hops - 1))
    return tuple(out)
