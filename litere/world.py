"""The bundled mini world: seeded fictional encyclopedias, questions over them and teacher trajectories.

A world holds people, companies, cities, countries and works with invented one- or two-syllable names, so no
fact can be guessed or remembered from pretraining. Each entity has one short article whose sentences state
its facts; a question follows one to three facts (a chain of pages) and a scripted expert answers it with the
real tools (search, visit, answer). Training uses many small fresh worlds so that memorising cannot pay; the
evaluation world draws its names from a pool no training world uses.

mask_url is null for world questions: the original masks the page a question was written from, but here the
article stating a fact is the only evidence for it, so masking it would make the question unanswerable.

    python -m litere.world build OUT [--seed S] [--worlds N] [--trajectories N] [--eval-questions N] ...
writes OUT/manifest.json, train_corpus.jsonl, train_questions.jsonl, train_sft.jsonl, train_dbs/wNNNN.db,
eval_corpus.jsonl, eval_questions.jsonl, eval_sft.jsonl and eval.db (see `build`).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from litere.env import SETTINGS_META_KEY, EnvSettings, LocalEnv, PageStore, ingest
from litere.env.text import terms
from litere.tokenizer import SYSTEM_PROMPT
from litere.world_names import NameDrawer
from litere.world_teacher import FACT, GOAL, teach

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
class Question:
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

    def question(self, start: str, chain: tuple[str, ...]) -> Question | None:
        """The question following `chain` from `start`, or None when an answer or step would repeat an entity
        already on the chain (such a question answers itself)."""
        values = self.follow(start, chain)
        if len(set(values)) < len(values) or start in values:
            return None
        phrase = self.entities[start].mention
        for relation in chain[:-1]:
            phrase = NOUN_PHRASE[relation].format(phrase)
        return Question(start, chain, QUESTION[chain[-1]].format(phrase), values[-1])

    def questions(self, hops: int) -> list[Question]:
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


# -- building the data set -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    worlds: int = 240
    trajectories: int = 150               # per training world
    eval_questions: int = 300
    mix: tuple[float, float, float] = (0.6, 0.3, 0.1)   # direct, 2-hop, 3-hop
    size: WorldSize = WorldSize()
    settings: EnvSettings = EnvSettings.compact()
    url_prefix: str = "w/"
    train_dbs: bool = True
    workers: int = 2

    def to_dict(self) -> dict:
        """The settings that shape the data (the worker count does not)."""
        d = asdict(self)
        d["settings"] = self.settings.to_dict()
        del d["workers"]
        return d


@dataclass(frozen=True)
class _Job:
    config: BuildConfig
    out: str
    pool: str
    seed: int
    tag: str
    wanted: int
    env_ref: str | None     # the questions' "env" field
    save_db: bool           # write the world's page store to out/env_ref


def _quotas(total: int, mix: tuple[float, float, float]) -> dict[int, int]:
    counts = [int(total * m) for m in mix]
    counts[0] += total - sum(counts)
    return dict(zip((1, 2, 3), counts))


def _run_job(job: _Job) -> dict:
    """Everything one world contributes, as JSON lines (runs in a worker process)."""
    config = job.config
    world = World(job.seed, job.pool, config.size, config.url_prefix)
    store = world.store(config.settings)
    env = LocalEnv(store, config.settings)
    rng = random.Random(f"litere-questions:{job.pool}:{job.seed}")
    out = {"pages": [], "questions": [], "sft": [], "teacher_failed": 0}
    for url, title, text in world.pages():
        record = {"url": url, "title": title, "doc": text}
        if job.pool == "train":
            record["world"] = job.tag
        out["pages"].append(json.dumps(record, ensure_ascii=False))
    for hops, quota in _quotas(job.wanted, config.mix).items():
        candidates = world.candidates(hops)
        rng.shuffle(candidates)
        made = 0
        for start, chain in candidates:
            if made == quota:
                break
            q = world.question(start, chain)
            if q is None:
                continue
            messages = teach(world, env, q, rng)
            if messages is None:
                out["teacher_failed"] += 1
                continue
            qid = f"{job.tag}-q{len(out['questions']):04d}"
            row = {"id": qid, "question": q.text, "answers": [q.answer], "data_source": q.data_source,
                   "mask_url": None}
            if job.env_ref is not None:
                row["env"] = job.env_ref
            out["questions"].append(json.dumps(row, ensure_ascii=False))
            out["sft"].append(json.dumps({"id": qid, "data_source": q.data_source, "world": job.tag,
                                          "answers": [q.answer], "messages": messages}, ensure_ascii=False))
            made += 1
    if job.save_db:
        store.save_as(Path(job.out) / job.env_ref)
    store.close()
    return out


def build(config: BuildConfig, out: str | Path, *, log=sys.stderr) -> dict:
    """Write the training worlds, the evaluation world and a manifest under `out`; returns the manifest.

    out/train_corpus.jsonl     pages of every training world ({url, title, doc, world}); worlds reuse names,
                               so this file is for reading and tokenizer training, not for one search index
    out/train_questions.jsonl  {id, question, answers, data_source, mask_url: null, env: train_dbs/wNNNN.db}
    out/train_sft.jsonl        teacher trajectories ({id, data_source, world, answers, messages})
    out/train_dbs/wNNNN.db     one page store per training world (unless train_dbs is off)
    out/eval_corpus.jsonl, eval_questions.jsonl (env: eval.db), eval_sft.jsonl (held-out loss), eval.db
    out/manifest.json          the build settings, env settings (also recorded in every store) and counts
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config.train_dbs:
        (out / "train_dbs").mkdir(exist_ok=True)
    start = time.monotonic()
    jobs = [_Job(config, str(out), "eval", config.seed, "eval", config.eval_questions, "eval.db", False)]
    for i in range(config.worlds):
        db = f"train_dbs/w{i:04d}.db" if config.train_dbs else None
        jobs.append(_Job(config, str(out), "train", train_world_seed(config.seed, i), f"w{i:04d}",
                         config.trajectories, db, config.train_dbs))
    counts = {"train_pages": 0, "train_questions": 0, "eval_pages": 0, "eval_questions": 0, "teacher_failed": 0}
    files = {name: open(out / f"{name}.jsonl", "w", encoding="utf-8") for name in
             ("train_corpus", "train_questions", "train_sft", "eval_corpus", "eval_questions", "eval_sft")}
    try:
        with multiprocessing.Pool(config.workers) if config.workers > 1 else _InProcess() as pool:
            for done, (job, result) in enumerate(zip(jobs, pool.imap(_run_job, jobs, chunksize=4)), 1):
                split = job.pool
                for key, name in (("pages", "corpus"), ("questions", "questions"), ("sft", "sft")):
                    files[f"{split}_{name}"].writelines(line + "\n" for line in result[key])
                counts[f"{split}_pages"] += len(result["pages"])
                counts[f"{split}_questions"] += len(result["questions"])
                counts["teacher_failed"] += result["teacher_failed"]
                if log and (done % 20 == 0 or done == len(jobs)):
                    log.write(f"\rworlds {done}/{len(jobs)}  {time.monotonic() - start:.1f}s")
                    log.flush()
    finally:
        for f in files.values():
            f.close()
    if log:
        log.write("\n")
    eval_db = out / "eval.db"
    eval_db.unlink(missing_ok=True)
    with PageStore(eval_db) as store:
        ingest(store, [out / "eval_corpus.jsonl"], progress=False)
        store.set_meta(SETTINGS_META_KEY, config.settings.to_dict())
    manifest = {"format": 1, "build": config.to_dict(), "env_settings": config.settings.to_dict(),
                "world_seeds": {"eval": config.seed,
                                "train": [train_world_seed(config.seed, i) for i in range(config.worlds)]},
                "name_pools": "training worlds draw names from the 'train' pool, the evaluation world from the "
                              "disjoint 'eval' pool (litere.world_names)",
                "mask_url": None, "counts": counts,
                "files": {"train_corpus": "train_corpus.jsonl", "train_questions": "train_questions.jsonl",
                          "train_sft": "train_sft.jsonl", "train_dbs": "train_dbs" if config.train_dbs else None,
                          "eval_corpus": "eval_corpus.jsonl", "eval_questions": "eval_questions.jsonl",
                          "eval_sft": "eval_sft.jsonl", "eval_db": "eval.db"}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if log:
        log.write(f"built {config.worlds} training worlds ({counts['train_questions']:,} trajectories) and the "
                  f"evaluation world ({counts['eval_questions']:,} questions) in {time.monotonic() - start:.1f}s "
                  f"under {out}\n")
    return manifest


class _InProcess:
    """The Pool interface used by build, without processes."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, items, chunksize=1):
        return map(fn, items)


def load_manifest(out: str | Path) -> dict:
    path = Path(out) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (build the world with python -m litere.world build)")
    return json.loads(path.read_text())


def training_texts(out: str | Path) -> Iterator[str]:
    """The texts a tokenizer for the demo should learn from: the system prompt once, then every other message
    of the training trajectories (evaluation names stay unseen, as they must)."""
    yield SYSTEM_PROMPT
    with open(Path(out) / "train_sft.jsonl", encoding="utf-8") as f:
        for line in f:
            for message in json.loads(line)["messages"]:
                if message["role"] != "system":
                    yield message["content"]


def _parse_mix(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"--mix needs three non-negative fractions summing to 1, got {text!r}")
    return parts[0], parts[1], parts[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litere.world", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build training worlds, trajectories and the evaluation world")
    p.add_argument("out")
    d = BuildConfig()
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--worlds", type=int, default=d.worlds, help="training worlds")
    p.add_argument("--trajectories", type=int, default=d.trajectories, help="teacher trajectories per world")
    p.add_argument("--eval-questions", type=int, default=d.eval_questions)
    p.add_argument("--mix", type=_parse_mix, default=d.mix, help="direct,2-hop,3-hop fractions (0.6,0.3,0.1)")
    for name, value in asdict(d.size).items():
        p.add_argument(f"--{name}", type=int, default=value, help=f"{name} per world")
    p.add_argument("--results", type=int, default=d.settings.results_per_query, help="search results per query")
    p.add_argument("--snippet-words", type=int, default=d.settings.snippet_words)
    p.add_argument("--visit-sentences", type=int, default=d.settings.visit_sentences)
    p.add_argument("--summary-sentences", type=int, default=d.settings.summary_sentences)
    p.add_argument("--url-prefix", default=d.url_prefix)
    p.add_argument("--no-train-dbs", action="store_true", help="no page store per training world")
    p.add_argument("--workers", type=int, default=min(2, multiprocessing.cpu_count()))
    args = parser.parse_args(argv)
    settings = d.settings.updated(results_per_query=args.results, snippet_words=args.snippet_words,
                                  visit_sentences=args.visit_sentences, summary_sentences=args.summary_sentences)
    config = BuildConfig(seed=args.seed, worlds=args.worlds, trajectories=args.trajectories,
                         eval_questions=args.eval_questions, mix=args.mix,
                         size=WorldSize(**{k: getattr(args, k) for k in asdict(d.size)}), settings=settings,
                         url_prefix=args.url_prefix, train_dbs=not args.no_train_dbs, workers=args.workers)
    build(config, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
